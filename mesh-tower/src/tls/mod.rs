//! Mutual TLS between workloads with SPIFFE identities, as Istio does it, on rustls (ring).
//!
//! # Pieces
//!
//! - [`TlsIdentity`]: the workload's certificate chain, private key and trust bundle, built
//!   from PEM ([`TlsIdentity::from_pem`]) or DER. The live source is an [`IdentityWatch`],
//!   a `watch::Receiver<Option<Arc<TlsIdentity>>>` fed from the workload's certificate
//!   manager. Every handshake, on both sides, reads the current value: a rotated
//!   certificate is used for the next connection while established connections carry on,
//!   and a rotated trust bundle applies to the next handshake.
//! - Inbound: [`server_config`] and [`TlsAcceptor`]. The certificate resolver answers each
//!   ClientHello with the current certificate, or with nothing until the first one arrives,
//!   which fails the handshake (fail closed). Client certificates are required and must
//!   chain to the current bundle (rustls' `WebPkiClientVerifier`, built once per
//!   [`TlsIdentity`]) and carry exactly one SPIFFE URI SAN in the local trust domain.
//!   [`TlsAcceptor::accept_with_mode`] applies PeerAuthentication's mode ([`InboundMode`]).
//! - Outbound: [`client_config`], [`TlsConnector`] and, for hyper-util's pooling client,
//!   [`MtlsConnector`]. The server's chain is verified with webpki against the current bundle
//!   (its DNS names are ignored), then its SPIFFE id must be one of the
//!   [`ExpectedIdentities`] of the destination: secure naming.
//! - Both sides offer ALPN `h2` and `http/1.1`, TLS 1.3 and 1.2.
//! - Policy: [`policy::inbound_mode`] (PeerAuthentication for a workload and port) and
//!   [`policy::upstream_tls`] (DestinationRule `tls`, auto-mTLS and the expected identities
//!   of an endpoint), read from a [`Snapshot`](mesh_core::snapshot::Snapshot). The
//!   [`Mesh`](crate::mesh::Mesh) wires them into [`Connect`](crate::connect::Connect) and
//!   [`serve_tls`](crate::server::serve_tls).
//! - [`watch_credentials`] turns a certificate manager's channel into an [`IdentityWatch`].
//! - [`originate`]: TLS to servers outside the mesh (DestinationRule `tls.mode` `SIMPLE` and
//!   `MUTUAL`, with certificate files), done by the same [`MtlsConnector`]; a mesh without
//!   an identity of its own originates TLS too.
//!
//! # Following Istio
//!
//! - **Identity** is the one URI SAN of the leaf, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
//!   ([`mesh_core::identity::Identity`]); subject and DNS names play no part. rustls' stock
//!   server verifier always fails the DNS name check on such certificates, hence the custom
//!   `ServerCertVerifier` (chain with webpki, then the SPIFFE id).
//! - **Secure naming**: a client accepts a server only if its identity is one of the service
//!   accounts that back the destination (Istio's `subjectAltNames` from WorkloadEntry
//!   `serviceAccount` / ServiceEntry `subjectAltNames`); the error names expected and
//!   presented identities.
//! - **PERMISSIVE** serves mutual TLS and plaintext on one port. Envoy's `tls_inspector`
//!   parses the ClientHello; here the first bytes are peeked (`TcpStream::peek`, nothing
//!   consumed) and a TLS handshake record header (`0x16 0x03 0x00..=0x04`) means TLS.
//!   STRICT refuses everything else with [`TlsError::PlaintextRefused`]; DISABLE looks at
//!   nothing.
//! - **Several roots** at once in the trust bundle, so a root can be rotated with
//!   overlapping bundles.
//!
//! # Differences
//!
//! - ALPN is `h2`/`http/1.1`, not Istio's `istio-peer-exchange`/`istio` tokens: there is no
//!   metadata exchange, and peers may be plain TLS clients (`openssl s_client`).
//! - The client sends no SNI (Istio sends `outbound_.<port>_._.<host>`), as nothing routes
//!   on it here.
//! - Session resumption is off on both sides, so every connection is verified against the
//!   current bundle and expected identities; connections are pooled and long-lived, so the
//!   cost is one full handshake per connection.
//! - The TLS path of PERMISSIVE also requires a client certificate (Istio's mTLS filter
//!   chain does too; it additionally passes other TLS through, which is not done here).
//! - [`ExpectedIdentities::any_in_trust_domain`] (Istio's behaviour when a destination lists
//!   no service accounts) still requires the local trust domain; an empty
//!   [`ExpectedIdentities::one_of`] accepts no server at all.
//! - A server-first protocol on a PERMISSIVE port never sends a first byte: detection waits
//!   until the handshake timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`]) and fails, as Envoy does
//!   without a detection timeout.
//! - With TLS 1.3 the client's handshake completes before the server has checked the
//!   client certificate, so a refused client certificate surfaces as a reset on the first
//!   read (503 `UC`), not as a connect failure (`UF`); Envoy reports it the same way.
//! - No CA names are sent in the CertificateRequest (the bundle rotates); clients send their
//!   one certificate anyway.
//!
//! # Errors
//!
//! [`TlsError`] names the peer's address in every connection error; secure naming and
//! SPIFFE refusals get their own variants, everything rustls reports is
//! [`TlsError::Handshake`] with rustls' error as the source ([`TlsError::rustls_error`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use mesh_tower::tls::{TlsAcceptor, TlsConnector, TlsIdentity};
//!
//! // Until the certificate manager publishes, both sides fail closed.
//! let (publish, source) = tokio::sync::watch::channel(None::<Arc<TlsIdentity>>);
//! let acceptor = TlsAcceptor::new(source.clone())?;
//! let connector = TlsConnector::new(source);
//! # drop((publish, acceptor, connector));
//! # Ok::<_, mesh_tower::tls::TlsError>(())
//! ```

mod client;
mod connector;
mod error;
mod identity;
pub mod originate;
pub mod policy;
mod server;
mod verify;

#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use rustls::{SupportedProtocolVersion, crypto::CryptoProvider};

pub use self::{
    client::{TlsConnector, client_config},
    connector::{ClientIo, MtlsConnector, UpstreamTls},
    error::TlsError,
    identity::{ExpectedIdentities, IdentityWatch, PeerIdentity, TlsIdentity},
    originate::Originate,
    server::{Accepted, InboundMode, ServerIo, TlsAcceptor, server_config},
};

/// Feeds an [`IdentityWatch`] from another watch channel of credentials, such as a
/// certificate manager's (`mesh_ca::rotation::CertManager::receiver`), converting each
/// published value with `convert` (e.g. [`TlsIdentity::from_pem`] on the chain, key and
/// trust bundle).
///
/// A value that does not convert is logged and skipped: the previous identity stays in use
/// (a handshake with it fails once it has expired). The forwarding task ends when `source`
/// closes or every receiver of the result is dropped; receivers keep the last identity.
///
/// # Panics
/// Outside a Tokio runtime (the forwarding task is spawned on the current one).
pub fn watch_credentials<T, F>(
    mut source: tokio::sync::watch::Receiver<Option<Arc<T>>>,
    convert: F,
) -> IdentityWatch
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Result<TlsIdentity, TlsError> + Send + 'static,
{
    let convert_logged = move |t: &T| match convert(t) {
        Ok(id) => {
            tracing::debug!(identity = %id.identity(), serial = id.serial(), "workload certificate loaded");
            Some(Arc::new(id))
        }
        Err(e) => {
            tracing::warn!(error = %e, "a new workload certificate is unusable; keeping the previous one");
            None
        }
    };
    let first = source.borrow_and_update().clone();
    let initial = first.as_deref().and_then(&convert_logged);
    let (tx, rx) = tokio::sync::watch::channel(initial);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = source.changed() => if changed.is_err() { break },
                () = tx.closed() => break,
            }
            let next = source.borrow_and_update().clone();
            if let Some(id) = next.as_deref().and_then(&convert_logged) {
                tx.send_replace(Some(id));
            }
        }
    });
    rx
}

/// How long protocol detection plus the TLS handshake may take by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS 1.3 first, then 1.2 (Istio's default minimum).
const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// An application protocol chosen with ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// `h2`: HTTP/2.
    H2,
    /// `http/1.1`.
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http11 => b"http/1.1",
        }
    }

    /// Reads an ALPN identifier; `None` for other protocols.
    pub fn from_bytes(id: &[u8]) -> Option<Self> {
        match id {
            b"h2" => Some(Self::H2),
            b"http/1.1" => Some(Self::Http11),
            _ => None,
        }
    }
}

/// What both sides offer, in order of preference.
fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![
        Alpn::H2.as_bytes().to_vec(),
        Alpn::Http11.as_bytes().to_vec(),
    ]
}

/// The one crypto provider: ring, passed explicitly (no process-wide default is installed
/// or needed).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
