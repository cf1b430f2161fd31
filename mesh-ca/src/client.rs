//! The workload's side of the signing API: a [`CaClient`] turns a CSR into a certificate.
//!
//! [`CertManager`](crate::rotation::CertManager) asks a `CaClient` for every certificate it
//! publishes. The trait is object safe (its method returns a [`BoxFuture`]) so a manager holds
//! an `Arc<dyn CaClient>` and does not care where certificates come from:
//!
//! | client | where it signs |
//! |---|---|
//! | [`LocalCa`] | an in-process [`CertificateAuthority`]: the embedded default, no server |
//! | [`GrpcCa`] | a remote `istio.v1.auth.IstioCertificateService` over TLS (`mesh-ca serve`, istiod), authenticated by bootstrap token or, for renewals, by the current certificate (mTLS) |
//! | `ScriptedCa` (feature `test-util`) | a local CA that can be told to fail or be down |
//!
//! # Errors
//! A client reports [`ClientError`]: the CA refused the request ([`ClientError::Ca`]), could
//! not be reached ([`ClientError::Unavailable`]), refused a remote call
//! ([`ClientError::Rejected`], with its gRPC code), or answered with something unusable
//! ([`ClientError::InvalidResponse`]). [`ClientError::is_retryable`] tells transient
//! failures apart; the manager treats every error the same way: it keeps the certificate it
//! has and retries with backoff.
//!
//! # Examples
//! ```
//! use std::{sync::Arc, time::Duration};
//! use mesh_ca::{CaOptions, CertificateAuthority, csr, identity::Identity};
//! use mesh_ca::client::{CaClient, LocalCa};
//! use mesh_ca::key::{KeyAlgorithm, KeyPair};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = Arc::new(CertificateAuthority::self_signed(&CaOptions::root())?);
//! let client: Arc<dyn CaClient> = Arc::new(LocalCa::new(ca));
//!
//! let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
//! let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)?;
//! let bundle = client.sign(&csr::generate(&id, &key)?, &id, Duration::from_secs(3600)).await?;
//! assert_eq!(bundle.identity, id);
//! # Ok(())
//! # }
//! ```

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{CertBundle, CertificateAuthority, Error, csr::CsrPem, identity::Identity};

mod grpc;

pub use grpc::{DEFAULT_CA_SERVER_NAME, GrpcCa};

/// A boxed, sendable future: what [`CaClient::sign`] returns so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a [`CaClient`] could not return a certificate.
///
/// `Clone` so that the last error can be kept and shown (see
/// [`CertManager::last_error`](crate::rotation::CertManager::last_error)).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The CA refused or failed to sign the request (bad CSR, TTL too long, CA expired…).
    #[error(transparent)]
    Ca(#[from] Error),

    /// The CA could not be reached, or is not serving.
    #[error("the CA is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },

    /// The CA did not answer in time.
    #[error("the CA did not answer within {}", crate::error::go_duration(*after))]
    Timeout {
        /// How long the client waited.
        after: Duration,
    },

    /// A remote CA refused the call: `code` is its gRPC status code (`UNAUTHENTICATED`,
    /// `INVALID_ARGUMENT`, …) and `message` its explanation.
    #[error("the CA refused the request ({code:?}): {message}")]
    Rejected {
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },

    /// The CA answered with a certificate the workload cannot use (another identity,
    /// another public key, already expired).
    #[error("the CA returned an unusable certificate: {reason}")]
    InvalidResponse {
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: the CA was unreachable or slow.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. } | ClientError::Timeout { .. }
        )
    }
}

/// Signs certificate signing requests for workloads: the client side of istiod's
/// `IstioCertificateService/CreateCertificate`.
///
/// Implementations are shared as `Arc<dyn CaClient>` by a
/// [`CertManager`](crate::rotation::CertManager) and may be called from many tasks at once.
pub trait CaClient: Send + Sync + 'static {
    /// Asks the CA to sign `csr` for `identity`, valid for `ttl` (zero asks for the CA's
    /// default, 24 h). Returns the chain leaf first, root last.
    ///
    /// A remote CA authenticates the caller and puts the authenticated identity in the
    /// certificate; `identity` is what the workload expects to get.
    fn sign<'a>(
        &'a self,
        csr: &'a CsrPem,
        identity: &'a Identity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertBundle, ClientError>>;
}

impl<T: CaClient + ?Sized> CaClient for Arc<T> {
    fn sign<'a>(
        &'a self,
        csr: &'a CsrPem,
        identity: &'a Identity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertBundle, ClientError>> {
        (**self).sign(csr, identity, ttl)
    }
}

/// A [`CaClient`] backed by an in-process [`CertificateAuthority`]: the embedded default,
/// with no server and nothing on the network.
///
/// The identity is trusted as given (the process is its own CA). Signing is a few hundred
/// microseconds of CPU and runs inline on the calling task.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use mesh_ca::{CaOptions, CertificateAuthority, client::LocalCa};
///
/// let ca = LocalCa::new(Arc::new(CertificateAuthority::self_signed(&CaOptions::root())?));
/// assert!(ca.authority().root_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LocalCa {
    ca: Arc<CertificateAuthority>,
}

impl LocalCa {
    /// Wraps a CA.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self { ca }
    }

    /// The CA that signs.
    pub fn authority(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").field("ca", &self.ca).finish()
    }
}

impl CaClient for LocalCa {
    fn sign<'a>(
        &'a self,
        csr: &'a CsrPem,
        identity: &'a Identity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertBundle, ClientError>> {
        Box::pin(async move { Ok(self.ca.sign(csr, identity, ttl)?) })
    }
}

#[cfg(any(test, feature = "test-util"))]
pub use scripted::ScriptedCa;

#[cfg(any(test, feature = "test-util"))]
mod scripted {
    use std::{
        fmt,
        sync::{
            Arc, Mutex, PoisonError,
            atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        },
        time::Duration,
    };

    use super::{BoxFuture, CaClient, ClientError};
    use crate::{
        CaOptions, CertBundle, CertificateAuthority, Error, csr::CsrPem, identity::Identity,
    };

    /// A scripted [`CaClient`] for tests (feature `test-util`): signs with a real in-process
    /// CA, but can be told to fail the next N calls or to be down until switched back, and
    /// counts and timestamps (with `tokio::time`, so paused time works) every call.
    ///
    /// # Examples
    /// ```
    /// use mesh_ca::client::ScriptedCa;
    ///
    /// let ca = ScriptedCa::self_signed()?;
    /// ca.fail_next(2); // the next two calls fail
    /// ca.set_down(true); // every call fails until `set_down(false)`
    /// assert_eq!(ca.calls(), 0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub struct ScriptedCa {
        ca: Arc<CertificateAuthority>,
        fail_next: AtomicU32,
        down: AtomicBool,
        calls: AtomicU64,
        issued: AtomicU64,
        latency: Mutex<Duration>,
        call_times: Mutex<Vec<tokio::time::Instant>>,
        ttls: Mutex<Vec<Duration>>,
    }

    impl ScriptedCa {
        /// Signs with `ca` while up.
        pub fn new(ca: Arc<CertificateAuthority>) -> Self {
            Self {
                ca,
                fail_next: AtomicU32::new(0),
                down: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                issued: AtomicU64::new(0),
                latency: Mutex::new(Duration::ZERO),
                call_times: Mutex::new(Vec::new()),
                ttls: Mutex::new(Vec::new()),
            }
        }

        /// Signs with a fresh self-signed in-memory root.
        ///
        /// # Errors
        /// As [`CertificateAuthority::self_signed`].
        pub fn self_signed() -> Result<Self, Error> {
            Ok(Self::new(Arc::new(CertificateAuthority::self_signed(
                &CaOptions::root(),
            )?)))
        }

        /// The CA that signs.
        pub fn authority(&self) -> &Arc<CertificateAuthority> {
            &self.ca
        }

        /// Makes the next `n` calls fail with [`ClientError::Unavailable`] (replaces any
        /// earlier count).
        pub fn fail_next(&self, n: u32) {
            self.fail_next.store(n, Ordering::SeqCst);
        }

        /// Takes the CA down (every call fails) or brings it back up.
        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        /// Whether the CA is down.
        pub fn is_down(&self) -> bool {
            self.down.load(Ordering::SeqCst)
        }

        /// Delays every answer by `latency` (`tokio::time::sleep`), to exercise timeouts.
        pub fn set_latency(&self, latency: Duration) {
            *self.latency.lock().unwrap_or_else(PoisonError::into_inner) = latency;
        }

        /// How many calls were made, failed or not.
        pub fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }

        /// How many certificates were issued.
        pub fn issued(&self) -> u64 {
            self.issued.load(Ordering::SeqCst)
        }

        /// When each call was made, on tokio's clock.
        pub fn call_times(&self) -> Vec<tokio::time::Instant> {
            self.call_times
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// The TTL each call asked for.
        pub fn requested_ttls(&self) -> Vec<Duration> {
            self.ttls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn should_fail(&self) -> Option<ClientError> {
            if self.down.load(Ordering::SeqCst) {
                return Some(ClientError::Unavailable {
                    reason: "scripted: the CA is down".to_owned(),
                });
            }
            let failed = self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            failed.then(|| ClientError::Unavailable {
                reason: "scripted: failing this call".to_owned(),
            })
        }
    }

    impl fmt::Debug for ScriptedCa {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ScriptedCa")
                .field("ca", &self.ca)
                .field("down", &self.is_down())
                .field("fail_next", &self.fail_next.load(Ordering::SeqCst))
                .field("calls", &self.calls())
                .field("issued", &self.issued())
                .finish()
        }
    }

    impl CaClient for ScriptedCa {
        fn sign<'a>(
            &'a self,
            csr: &'a CsrPem,
            identity: &'a Identity,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<CertBundle, ClientError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.call_times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(tokio::time::Instant::now());
                self.ttls
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(ttl);
                let latency = *self.latency.lock().unwrap_or_else(PoisonError::into_inner);
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                if let Some(err) = self.should_fail() {
                    return Err(err);
                }
                let bundle = self.ca.sign(csr, identity, ttl)?;
                self.issued.fetch_add(1, Ordering::SeqCst);
                Ok(bundle)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        csr,
        key::{KeyAlgorithm, KeyPair},
    };

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn local_ca_signs_through_a_trait_object() {
        let ca = Arc::new(CertificateAuthority::self_signed(&crate::CaOptions::root()).unwrap());
        let client: Arc<dyn CaClient> = Arc::new(LocalCa::new(ca));
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = csr::generate(&id(), &key).unwrap();
        let bundle = client
            .sign(&csr, &id(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(bundle.identity, id());
        assert_eq!(bundle.chain.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn local_ca_reports_ca_errors() {
        let ca = Arc::new(CertificateAuthority::self_signed(&crate::CaOptions::root()).unwrap());
        let client = LocalCa::new(ca);
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = csr::generate(&id(), &key).unwrap();
        let err = client
            .sign(&csr, &id(), Duration::from_secs(91 * 86_400))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Ca(Error::TtlTooLong { .. })),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_ca_fails_n_times_then_while_down() {
        let ca = ScriptedCa::self_signed().unwrap();
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = csr::generate(&id(), &key).unwrap();
        let ttl = Duration::from_secs(60);
        ca.fail_next(2);
        assert!(ca.sign(&csr, &id(), ttl).await.is_err());
        assert!(ca.sign(&csr, &id(), ttl).await.is_err());
        assert!(ca.sign(&csr, &id(), ttl).await.is_ok());
        ca.set_down(true);
        let err = ca.sign(&csr, &id(), ttl).await.unwrap_err();
        assert!(err.to_string().contains("unavailable"), "{err}");
        ca.set_down(false);
        assert!(ca.sign(&csr, &id(), ttl).await.is_ok());
        assert_eq!(ca.calls(), 5);
        assert_eq!(ca.issued(), 2);
        assert_eq!(ca.requested_ttls(), vec![ttl; 5]);
        assert_eq!(ca.call_times().len(), 5);
    }
}
