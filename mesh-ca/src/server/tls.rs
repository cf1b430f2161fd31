//! [`CaServer`]: the signing service over TLS, with its own certificate issued by the CA.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{CaMetrics, CaService};
use crate::{
    CertificateAuthority, Error,
    authority::parse_certs,
    grpc::istio_certificate_service_server::IstioCertificateServiceServer,
    identity::{DEFAULT_TRUST_DOMAIN, Identity},
    key::{KeyAlgorithm, KeyPair},
};

/// The DNS names the server's certificate always carries.
pub const DEFAULT_SERVER_DNS_NAMES: [&str; 2] = ["localhost", "mesh-ca"];

/// How long a TLS handshake may take before the connection is dropped.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get to finish after the shutdown signal.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long to wait before trying again when renewing the server certificate failed.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// How a [`CaServer`] names itself and whom it accepts.
///
/// # Examples
/// ```
/// use mesh_ca::server::ServerOptions;
///
/// let options = ServerOptions::default().with_dns_name("ca.example.internal");
/// assert_eq!(options.dns_names(), ["localhost", "mesh-ca", "ca.example.internal"]);
/// assert_eq!(
///     options.server_identity()?.to_string(),
///     "spiffe://cluster.local/ns/istio-system/sa/mesh-ca"
/// );
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The trust domain: mTLS callers must belong to it, and the server's own SPIFFE id is in
    /// it (default `cluster.local`).
    pub trust_domain: String,
    /// DNS names for the server certificate besides `localhost` and `mesh-ca`.
    pub extra_dns_names: Vec<String>,
    /// The server certificate's SPIFFE id; by default
    /// `spiffe://<trust-domain>/ns/istio-system/sa/mesh-ca`.
    pub identity: Option<Identity>,
    /// The server certificate's lifetime (renewed at half of it); default 24 h.
    pub cert_ttl: Duration,
    /// How long a client may take to complete the TLS handshake; default 10 s.
    pub handshake_timeout: Duration,
    /// After the shutdown signal, how long calls in flight and open connections get to
    /// finish before they are closed; default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            extra_dns_names: Vec::new(),
            identity: None,
            cert_ttl: crate::authority::DEFAULT_WORKLOAD_CERT_TTL,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServerOptions {
    /// Sets the trust domain.
    #[must_use]
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = trust_domain.into();
        self
    }

    /// Adds a DNS name to the server certificate.
    #[must_use]
    pub fn with_dns_name(mut self, name: impl Into<String>) -> Self {
        self.extra_dns_names.push(name.into());
        self
    }

    /// All DNS names of the server certificate: `localhost`, `mesh-ca`, then the extra ones
    /// (without repeats).
    pub fn dns_names(&self) -> Vec<String> {
        let mut names: Vec<String> = DEFAULT_SERVER_DNS_NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .collect();
        for name in &self.extra_dns_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The server certificate's SPIFFE id.
    ///
    /// # Errors
    /// [`Error::Identity`] when the trust domain is not a valid SPIFFE trust domain.
    pub fn server_identity(&self) -> Result<Identity, Error> {
        match &self.identity {
            Some(id) => Ok(id.clone()),
            None => Ok(Identity::new(
                self.trust_domain.clone(),
                "istio-system",
                "mesh-ca",
            )?),
        }
    }
}

// === The server certificate ===

/// Issues the server's certificate and hands it to rustls, renewing it at half its lifetime
/// (on the first handshake after that point).
struct ServerCert {
    ca: Arc<CertificateAuthority>,
    dns_names: Vec<String>,
    identity: Identity,
    ttl: Duration,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    chain_pem: Vec<String>,
    renew_at: SystemTime,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("identity", &self.identity.to_string())
            .field("dns_names", &self.dns_names)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServerCert {
    fn new(
        ca: Arc<CertificateAuthority>,
        dns_names: Vec<String>,
        identity: Identity,
        ttl: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let first = issue(
            &ca,
            &dns_names,
            &identity,
            ttl,
            &provider,
            SystemTime::now(),
        )?;
        Ok(Self {
            ca,
            dns_names,
            identity,
            ttl,
            provider,
            current: RwLock::new(first),
        })
    }

    fn issue(&self, now: SystemTime) -> Result<Current, Error> {
        issue(
            &self.ca,
            &self.dns_names,
            &self.identity,
            self.ttl,
            &self.provider,
            now,
        )
    }

    fn chain_pem(&self) -> Vec<String> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .chain_pem
            .clone()
    }
}

/// A new key and server certificate (leaf and intermediates; the root is the client's).
fn issue(
    ca: &CertificateAuthority,
    dns_names: &[String],
    identity: &Identity,
    ttl: Duration,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Current, Error> {
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)?;
    let bundle = ca.issue_server_cert_at(&key, dns_names, identity, ttl, now)?;
    let mut ders = Vec::with_capacity(bundle.chain.len());
    for pem in &bundle.chain[..bundle.chain.len().saturating_sub(1)] {
        ders.extend(
            parse_certs(pem, "the server certificate")?
                .into_iter()
                .map(CertificateDer::from),
        );
    }
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_der().to_vec()));
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| Error::tls(format!("rustls refused the server key: {e}")))?;
    let lifetime = bundle
        .not_after
        .duration_since(now)
        .unwrap_or(Duration::ZERO);
    tracing::info!(
        %identity,
        dns = ?dns_names,
        serial = %bundle.serial,
        not_after = %crate::inspect::rfc3339(bundle.not_after),
        "server certificate issued"
    );
    Ok(Current {
        key: Arc::new(CertifiedKey::new(ders, signing)),
        chain_pem: bundle.chain,
        renew_at: now + lifetime / 2,
    })
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            if now < current.renew_at {
                return Some(Arc::clone(&current.key));
            }
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if now >= current.renew_at {
            match self.issue(now) {
                Ok(new) => *current = new,
                Err(err) => {
                    tracing::error!(%err, "renewing the server certificate failed; keeping the current one");
                    current.renew_at = now + RENEW_RETRY;
                }
            }
        }
        Some(Arc::clone(&current.key))
    }
}

// === CaServer ===

/// The signing service over TLS: what `mesh-ca serve` runs.
///
/// The server's own certificate is issued by the CA when the server is made (see
/// [`ServerOptions`]); client certificates are requested, not required (see the
/// [module docs](super) for how callers are authenticated).
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use mesh_ca::{CertificateAuthority, server::{CaServer, ServerOptions}};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = Arc::new(CertificateAuthority::load("cacerts/")?);
/// let server = CaServer::bind("127.0.0.1:15012", ca, ServerOptions::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.serve_with_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(())
/// # }
/// ```
pub struct CaServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: CaService,
    tls: Arc<ServerConfig>,
    cert: Arc<ServerCert>,
    handshake_timeout: Duration,
    shutdown_grace: Duration,
}

impl fmt::Debug for CaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaServer")
            .field("local_addr", &self.local_addr)
            .field("service", &self.service)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl CaServer {
    /// Binds `addr` (port 0 picks a free port: see [`local_addr`](Self::local_addr)) and
    /// prepares TLS.
    ///
    /// # Errors
    /// [`Error::Listen`] when the address cannot be bound (in use, not local); as
    /// [`from_listener`](Self::from_listener).
    pub async fn bind(
        addr: impl tokio::net::ToSocketAddrs + fmt::Display,
        ca: Arc<CertificateAuthority>,
        options: ServerOptions,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(&addr).await.map_err(|e| Error::Listen {
            addr: addr.to_string(),
            source: Arc::new(e),
        })?;
        Self::from_listener(listener, ca, options)
    }

    /// Serves on an already bound listener.
    ///
    /// # Errors
    /// [`Error::Identity`] for an invalid trust domain; [`Error::InvalidCertificate`] for bad
    /// DNS names; [`Error::Tls`] when rustls refuses the trust bundle or key.
    pub fn from_listener(
        listener: TcpListener,
        ca: Arc<CertificateAuthority>,
        options: ServerOptions,
    ) -> Result<Self, Error> {
        let local_addr = listener.local_addr().map_err(|e| Error::Listen {
            addr: "the listener".to_owned(),
            source: Arc::new(e),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = options.server_identity()?;
        let cert = Arc::new(ServerCert::new(
            Arc::clone(&ca),
            options.dns_names(),
            identity,
            options.cert_ttl,
            Arc::clone(&provider),
        )?);

        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(
            parse_certs(ca.trust_bundle_pem(), "root-cert.pem")?
                .into_iter()
                .map(CertificateDer::from),
        );
        if added == 0 {
            return Err(Error::tls("no root of root-cert.pem is usable by rustls"));
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::tls(format!("client certificate verifier: {e}")))?;
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        tls.alpn_protocols = vec![b"h2".to_vec()];

        let service = CaService::new(ca).with_trust_domain(options.trust_domain);
        Ok(Self {
            listener,
            local_addr,
            service,
            tls: Arc::new(tls),
            cert,
            handshake_timeout: options.handshake_timeout,
            shutdown_grace: options.shutdown_grace,
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The service's counters.
    pub fn metrics(&self) -> Arc<CaMetrics> {
        self.service.metrics()
    }

    /// The gRPC service.
    pub fn service(&self) -> &CaService {
        &self.service
    }

    /// The server's current certificate chain, leaf first, root last (PEM).
    pub fn server_cert_chain(&self) -> Vec<String> {
        self.cert.chain_pem()
    }

    /// The server certificate's SPIFFE id.
    pub fn server_identity(&self) -> &Identity {
        &self.cert.identity
    }

    /// The server certificate's DNS names.
    pub fn server_dns_names(&self) -> &[String] {
        &self.cert.dns_names
    }

    /// Serves until the process ends.
    ///
    /// # Errors
    /// As [`serve_with_shutdown`](Self::serve_with_shutdown).
    pub async fn serve(self) -> Result<(), Error> {
        self.serve_with_shutdown(std::future::pending()).await
    }

    /// Serves until `signal` resolves, then stops accepting connections and lets the calls
    /// in flight finish; connections still open after
    /// [`shutdown_grace`](ServerOptions::shutdown_grace) are closed.
    ///
    /// Connections are accepted and their TLS handshakes run on their own tasks (a slow or
    /// failing client holds up nobody); failed handshakes are logged and dropped.
    ///
    /// # Errors
    /// [`Error::Serve`] if the gRPC server fails.
    pub async fn serve_with_shutdown(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(
            self.listener,
            TlsAcceptor::from(self.tls),
            self.handshake_timeout,
            tx,
        ));
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            signal.await;
            let _ = fired_tx.send(());
        };
        let serve = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(self.service))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), signal);
        let grace = self.shutdown_grace;
        let grace_over = async move {
            if fired_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            result = serve => result,
            () = grace_over => {
                tracing::warn!(grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), "connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        accept.abort();
        result.map_err(|e| Error::Serve {
            reason: error_chain(&e),
        })
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type Accepted = Result<TlsStream<TcpStream>, std::io::Error>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Accepted>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(err)) => {
                    tracing::info!(%peer, %err, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}
