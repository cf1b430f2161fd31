//! A small certificate authority for the mesh: istiod's Citadel role.
//!
//! CA files in Istio's `cacerts` layout ([`files`]), signing of workload certificates that
//! carry exactly one SPIFFE URI SAN ([`CertificateAuthority::sign`]), bootstrap tokens bound to
//! one identity ([`token`]), and a plain-words certificate inspector ([`inspect`]). The
//! `mesh-ca` binary wraps them: `root`, `intermediate`, `issue`, `inspect`, `token`, and
//! `serve` (the signing service over TLS).
//!
//! ```
//! use std::time::Duration;
//! use mesh_ca::{CaOptions, CertificateAuthority, identity::Identity, key::{KeyAlgorithm, KeyPair}};
//!
//! // istiod's self-signed mode: an in-memory root signs directly.
//! let ca = CertificateAuthority::self_signed(&CaOptions::root())?;
//! let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
//! let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)?; // stays in this process
//! let bundle = ca.issue(&id, &key, Duration::from_secs(3600))?;
//! assert_eq!(bundle.chain.len(), 2); // leaf, root
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! Crypto is ring's (through rcgen and x509-parser). ring cannot generate RSA keys, so RSA
//! CA keys are loaded from files made with OpenSSL (see [`key`]); CSRs with RSA keys are
//! signed either way.
//!
//! The workload side: [`rotation::CertManager`] keeps a workload's certificate fresh (key made
//! in memory, CSR, signed through a [`client::CaClient`], renewed at half life with jitter,
//! backoff while the CA is down, the old certificate served until a new one arrives), with
//! [`client::LocalCa`] as the embedded, in-process CA.
//!
//! The gRPC `IstioCertificateService` types (client stub and server trait) are generated into
//! [`grpc`]. [`server::CaService`] implements the service (callers authenticated by a
//! bootstrap token or, for renewals, by their current workload certificate over mTLS) and
//! [`server::CaServer`] serves it over TLS with a certificate of its own issued by the CA
//! (`mesh-ca serve`). [`client::GrpcCa`] is the matching [`client::CaClient`]: a
//! [`rotation::CertManager`] fetches its first certificate with a token and renews it over
//! mTLS.

pub mod authority;
pub mod client;
pub mod csr;
pub mod error;
pub mod files;
pub mod grpc;
pub use mesh_core::identity;
pub mod inspect;
pub mod key;
pub mod pem;
pub mod rotation;
pub mod server;
pub mod token;

pub use authority::{CaOptions, Cacerts, CertBundle, CertificateAuthority, RootCa};
pub use error::Error;
