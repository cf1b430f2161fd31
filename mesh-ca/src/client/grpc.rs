//! [`GrpcCa`]: a [`CaClient`] over gRPC and TLS, istio-agent's side of
//! `IstioCertificateService/CreateCertificate`.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::{BoxFuture, CaClient, ClientError};
use crate::{
    CertBundle, Error,
    authority::parse_certs,
    csr::CsrPem,
    grpc::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    identity::Identity,
    rotation::WorkloadCert,
};

/// The server name checked against the CA's certificate unless told otherwise.
pub const DEFAULT_CA_SERVER_NAME: &str = "mesh-ca";

/// How long connecting to the CA may take.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate this close to its end is not used to authenticate any more.
const CERT_MARGIN: Duration = Duration::from_secs(5);

/// Where the current workload certificate comes from, for mTLS renewal.
enum CertSource {
    None,
    Fixed(Arc<WorkloadCert>),
    Follow(watch::Receiver<Option<Arc<WorkloadCert>>>),
}

impl CertSource {
    fn current(&self) -> Option<Arc<WorkloadCert>> {
        match self {
            CertSource::None => None,
            CertSource::Fixed(cert) => Some(Arc::clone(cert)),
            CertSource::Follow(rx) => rx.borrow().clone(),
        }
    }
}

/// A [`CaClient`] that asks a remote CA (`mesh-ca serve`, or istiod) over gRPC and TLS.
///
/// The server's certificate must chain to the configured root and name the configured DNS
/// name ([`DEFAULT_CA_SERVER_NAME`], `mesh-ca`, unless [`with_server_name`](Self::with_server_name)
/// says otherwise). The caller authenticates
///
/// * with its **current workload certificate** over mTLS when it has one for the identity
///   asked for that is still valid (renewal; see [`follow`](Self::follow) and
///   [`with_workload_cert`](Self::with_workload_cert)); if the CA refuses it
///   (`UNAUTHENTICATED`) or the connection fails and a token is configured, the request is
///   made once more with the token;
/// * otherwise with its **bootstrap token** (`authorization: Bearer …`).
///
/// One HTTP/2 connection is kept for token calls and one per client certificate (replaced
/// when the certificate changes); both connect lazily and reconnect on their own.
///
/// gRPC errors map to [`ClientError`]: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED`,
/// `RESOURCE_EXHAUSTED`, `ABORTED`, `UNKNOWN` and connection failures are
/// [`ClientError::Unavailable`] (retry); the rest, such as `UNAUTHENTICATED` and
/// `INVALID_ARGUMENT`, are [`ClientError::Rejected`]. A response that is not a chain ending
/// at the configured root is [`ClientError::InvalidResponse`].
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use mesh_ca::client::GrpcCa;
/// use mesh_ca::rotation::{CertManager, CertManagerConfig};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = std::fs::read_to_string("cacerts/root-cert.pem")?;
/// let ca = Arc::new(GrpcCa::new("127.0.0.1:15012", &root)?.with_token(std::env::var("CA_TOKEN")?));
/// let id = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let manager = CertManager::start(id, ca.clone(), CertManagerConfig::default())?;
/// ca.follow(manager.receiver()); // renewals authenticate with the current certificate
/// let cert = manager.ready().await.ok_or("stopped")?;
/// # Ok(())
/// # }
/// ```
pub struct GrpcCa {
    uri: String,
    roots_pem: String,
    root_ders: Vec<Vec<u8>>,
    server_name: String,
    connect_timeout: Duration,
    token: Mutex<Option<String>>,
    cert: Mutex<CertSource>,
    token_channel: Mutex<Option<Channel>>,
    /// The channel authenticated with a client certificate, and that certificate's serial.
    mtls_channel: Mutex<Option<(String, Channel)>>,
}

impl fmt::Debug for GrpcCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_token = lock(&self.token).is_some();
        let cert = lock(&self.cert).current().map(|c| c.serial().to_owned());
        f.debug_struct("GrpcCa")
            .field("uri", &self.uri)
            .field("server_name", &self.server_name)
            .field("token", &if has_token { "<redacted>" } else { "none" })
            .field("cert_serial", &cert)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GrpcCa {
    /// A client for the CA at `address` (`host:port` or `https://host:port`) that trusts the
    /// roots in `root_cert_pem` (the CA's `root-cert.pem`).
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for an address that is not `host:port` or uses `http://`;
    /// [`Error::InvalidCertificate`] if `root_cert_pem` holds no certificate.
    pub fn new(address: &str, root_cert_pem: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let uri = if address.starts_with("https://") {
            address.to_owned()
        } else if address.contains("://") {
            return Err(invalid(
                "the CA is only reached over TLS: use https:// or host:port",
            ));
        } else {
            format!("https://{address}")
        };
        Endpoint::from_shared(uri.clone()).map_err(|e| invalid(&e.to_string()))?;
        let root_ders = parse_certs(root_cert_pem, "the CA root certificate")?;
        Ok(Self {
            uri,
            roots_pem: root_cert_pem.to_owned(),
            root_ders,
            server_name: DEFAULT_CA_SERVER_NAME.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            token: Mutex::new(None),
            cert: Mutex::new(CertSource::None),
            token_channel: Mutex::new(None),
            mtls_channel: Mutex::new(None),
        })
    }

    /// Checks the CA's certificate for this DNS name instead of `mesh-ca`.
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// How long connecting (TCP and TLS) may take; default 5 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates with this bootstrap token when no valid workload certificate is at hand.
    #[must_use]
    pub fn with_token(self, token: impl Into<String>) -> Self {
        self.set_token(Some(token.into()));
        self
    }

    /// Authenticates renewals with this certificate (while it is valid).
    #[must_use]
    pub fn with_workload_cert(self, cert: Arc<WorkloadCert>) -> Self {
        *lock(&self.cert) = CertSource::Fixed(cert);
        self
    }

    /// Replaces the bootstrap token (or removes it).
    pub fn set_token(&self, token: Option<String>) {
        *lock(&self.token) = token;
    }

    /// Authenticates renewals with the latest certificate published on `rx` (a
    /// [`CertManager::receiver`](crate::rotation::CertManager::receiver)), while it is valid.
    pub fn follow(&self, rx: watch::Receiver<Option<Arc<WorkloadCert>>>) {
        *lock(&self.cert) = CertSource::Follow(rx);
    }

    /// The certificate the next request for `identity` would authenticate with, if any.
    pub fn renewal_cert(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        let cert = lock(&self.cert).current()?;
        let now = SystemTime::now();
        let usable = cert.identity() == identity
            && cert.bundle.not_before <= now
            && cert
                .not_after()
                .duration_since(now)
                .is_ok_and(|left| left > CERT_MARGIN);
        usable.then_some(cert)
    }

    fn endpoint(&self, identity: Option<&WorkloadCert>) -> Result<Endpoint, ClientError> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.roots_pem))
            .domain_name(self.server_name.clone());
        if let Some(cert) = identity {
            let chain = &cert.bundle.chain;
            // Leaf and intermediates; the server has the root.
            let end = chain.len().saturating_sub(1).max(1).min(chain.len());
            let presented = chain[..end].concat();
            tls = tls.identity(tonic::transport::Identity::from_pem(
                presented,
                cert.key.expose_secret(),
            ));
        }
        Endpoint::from_shared(self.uri.clone())
            .and_then(|e| e.tls_config(tls))
            .map(|e| e.connect_timeout(self.connect_timeout).tcp_nodelay(true))
            .map_err(|e| ClientError::Unavailable {
                reason: format!("cannot set up TLS to {}: {}", self.uri, error_chain(&e)),
            })
    }

    fn token_channel(&self) -> Result<Channel, ClientError> {
        let mut slot = lock(&self.token_channel);
        if let Some(channel) = slot.as_ref() {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(None)?.connect_lazy();
        *slot = Some(channel.clone());
        Ok(channel)
    }

    fn mtls_channel(&self, cert: &WorkloadCert) -> Result<Channel, ClientError> {
        let mut slot = lock(&self.mtls_channel);
        if let Some((serial, channel)) = slot.as_ref()
            && serial == cert.serial()
        {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(Some(cert))?.connect_lazy();
        *slot = Some((cert.serial().to_owned(), channel.clone()));
        Ok(channel)
    }

    async fn call(
        &self,
        channel: Channel,
        csr: &CsrPem,
        ttl: Duration,
        token: Option<&str>,
    ) -> Result<CertBundle, ClientError> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.as_str().to_owned(),
            subject_id: String::new(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                ClientError::Ca(Error::TokenMalformed {
                    reason: "it cannot be sent as a header value",
                })
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|status| self.map_status(&status))?;
        let chain = response.into_inner().cert_chain;
        let bundle = CertBundle::from_chain(&chain).map_err(|e| ClientError::InvalidResponse {
            reason: format!("{}: {e}", self.uri),
        })?;
        let last = parse_certs(bundle.root_pem(), "the returned root").map_err(|e| {
            ClientError::InvalidResponse {
                reason: e.to_string(),
            }
        })?;
        if !last.iter().all(|der| self.root_ders.contains(der)) {
            return Err(ClientError::InvalidResponse {
                reason: format!(
                    "{}: the returned chain does not end at the configured root",
                    self.uri
                ),
            });
        }
        Ok(bundle)
    }

    fn map_status(&self, status: &Status) -> ClientError {
        map_status(&self.uri, status)
    }
}

/// Maps a gRPC status to a [`ClientError`] (see [`GrpcCa`]).
fn map_status(uri: &str, status: &Status) -> ClientError {
    let mut message = status.message().to_owned();
    if let Some(source) = std::error::Error::source(status) {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&error_chain(source));
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unknown => ClientError::Unavailable {
            reason: format!("{uri}: {:?}: {message}", status.code()),
        },
        code => ClientError::Rejected { code, message },
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl CaClient for GrpcCa {
    fn sign<'a>(
        &'a self,
        csr: &'a CsrPem,
        identity: &'a Identity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertBundle, ClientError>> {
        Box::pin(async move {
            let token = lock(&self.token).clone();
            if let Some(cert) = self.renewal_cert(identity) {
                let result = self.call(self.mtls_channel(&cert)?, csr, ttl, None).await;
                let retry_with_token = token.is_some()
                    && matches!(
                        &result,
                        Err(ClientError::Unavailable { .. }
                            | ClientError::Rejected {
                                code: Code::Unauthenticated,
                                ..
                            })
                    );
                if !retry_with_token {
                    return result;
                }
                if let Err(err) = &result {
                    tracing::warn!(%identity, %err, "renewal with the workload certificate failed; trying the bootstrap token");
                }
            }
            let channel = self.token_channel()?;
            self.call(channel, csr, ttl, token.as_deref()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ca = crate::CertificateAuthority::self_signed(&crate::CaOptions::root()).unwrap();
        let root = ca.root_cert_pem();
        assert_eq!(
            GrpcCa::new("127.0.0.1:15012", root).unwrap().uri,
            "https://127.0.0.1:15012"
        );
        assert_eq!(
            GrpcCa::new("https://mesh-ca:15012", root).unwrap().uri,
            "https://mesh-ca:15012"
        );
        let err = GrpcCa::new("http://127.0.0.1:15012", root).unwrap_err();
        assert!(err.to_string().contains("only reached over TLS"), "{err}");
        assert!(GrpcCa::new("127.0.0.1:15012", "not a pem").is_err());
        let debug = format!(
            "{:?}",
            GrpcCa::new("127.0.0.1:1", root)
                .unwrap()
                .with_token("secret-token")
        );
        assert!(!debug.contains("secret-token"), "{debug}");
    }

    #[test]
    fn status_mapping() {
        let unavailable = map_status("u", &Status::unavailable("down"));
        assert!(unavailable.is_retryable(), "{unavailable}");
        let denied = map_status(
            "u",
            &Status::unauthenticated("request authenticate failure"),
        );
        assert!(!denied.is_retryable());
        assert!(
            matches!(
                &denied,
                ClientError::Rejected {
                    code: Code::Unauthenticated,
                    ..
                }
            ),
            "{denied:?}"
        );
        let invalid = map_status("u", &Status::invalid_argument("bad CSR"));
        assert!(invalid.to_string().contains("bad CSR"), "{invalid}");
    }
}
