//! The inbound side: [`server_config`], [`TlsAcceptor`] and PERMISSIVE protocol detection.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use mesh_core::config::security::peer_authentication::MtlsMode;
use rustls::{
    ServerConfig,
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use super::{
    Alpn, DEFAULT_HANDSHAKE_TIMEOUT, IdentityWatch, PeerIdentity, TlsError, alpn_protocols,
    provider, verify::SpiffeClientVerifier,
};

/// Builds the server configuration for mutual TLS: the certificate is the one current in
/// `source` at each handshake, client certificates are required and verified against the
/// current trust bundle (one SPIFFE URI SAN in the local trust domain), ALPN `h2` and
/// `http/1.1`, TLS 1.3 and 1.2, no session resumption.
///
/// Until `source` holds a certificate, every handshake fails.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions for the crypto provider
/// (not expected with ring).
pub fn server_config(source: IdentityWatch) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(source.clone())))
        .with_cert_resolver(Arc::new(CurrentCert(source)));
    config.alpn_protocols = alpn_protocols();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Hands rustls the certificate current in the watch channel; `None` (no certificate yet)
/// fails the handshake.
#[derive(Debug)]
struct CurrentCert(IdentityWatch);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.borrow();
        let cert = current.as_ref().map(|id| id.certified_key().clone());
        if cert.is_none() {
            tracing::debug!("TLS handshake refused: no workload certificate yet");
        }
        cert
    }
}

// === InboundMode ===

/// How a port treats inbound connections: PeerAuthentication's mTLS mode, resolved
/// (`UNSET` has been replaced by its parent's mode or the default, PERMISSIVE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InboundMode {
    /// Mutual TLS only; plaintext is refused.
    Strict,
    /// Mutual TLS and plaintext on the same port, told apart by the first bytes.
    #[default]
    Permissive,
    /// Plaintext only; nothing is inspected (a TLS client gets its ClientHello read as
    /// plaintext by the application, as in Istio).
    Disable,
}

impl From<MtlsMode> for InboundMode {
    /// `UNSET` becomes PERMISSIVE, Istio's default.
    fn from(mode: MtlsMode) -> Self {
        match mode {
            MtlsMode::Strict => Self::Strict,
            MtlsMode::Disable => Self::Disable,
            MtlsMode::Permissive | MtlsMode::Unset => Self::Permissive,
        }
    }
}

// === Accepted ===

/// An accepted inbound connection.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per connection and consumed at once
pub enum Accepted {
    /// Mutual TLS; the client's verified identity.
    Tls(TlsStream<TcpStream>, PeerIdentity),
    /// Plaintext (PERMISSIVE or DISABLE).
    Plaintext(TcpStream),
}

impl Accepted {
    /// The peer's verified identity, for TLS connections.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        match self {
            Self::Tls(_, peer) => Some(peer),
            Self::Plaintext(_) => None,
        }
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(..))
    }

    /// One I/O type for both kinds, for serving them with the same code, and the peer's
    /// identity (TLS only).
    pub fn into_io(self) -> (ServerIo, Option<PeerIdentity>) {
        match self {
            Self::Tls(stream, peer) => (ServerIo(ServerInner::Tls(Box::new(stream))), Some(peer)),
            Self::Plaintext(tcp) => (ServerIo(ServerInner::Plain(tcp)), None),
        }
    }
}

/// An accepted connection, TLS or plaintext, as one [`AsyncRead`] + [`AsyncWrite`] type
/// (wrap it in [`hyper_util::rt::TokioIo`] to serve it with hyper).
#[derive(Debug)]
pub struct ServerIo(ServerInner);

#[derive(Debug)]
enum ServerInner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerIo {
    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.0, ServerInner::Tls(_))
    }

    /// The application protocol negotiated with ALPN (TLS only, and only if the client
    /// offered ALPN).
    pub fn alpn(&self) -> Option<Alpn> {
        match &self.0 {
            ServerInner::Tls(tls) => tls.get_ref().1.alpn_protocol().and_then(Alpn::from_bytes),
            ServerInner::Plain(_) => None,
        }
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.0 {
            ServerInner::Tls(tls) => tls.get_ref().0,
            ServerInner::Plain(tcp) => tcp,
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ServerInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerInner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            ServerInner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerInner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ServerInner::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerInner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ServerInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerInner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            ServerInner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerInner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            ServerInner::Plain(s) => s.is_write_vectored(),
            ServerInner::Tls(s) => s.is_write_vectored(),
        }
    }
}

// === TlsAcceptor ===

/// Accepts inbound connections: mutual TLS with the workload's current certificate, and
/// plaintext where the port's [`InboundMode`] allows it.
///
/// Cheap to clone (the configuration is shared). Protocol detection and the handshake
/// together are bounded by a timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set).
///
/// ```no_run
/// use std::sync::Arc;
/// use mesh_tower::tls::{Accepted, InboundMode, TlsAcceptor, TlsIdentity};
///
/// # async fn run(identity: TlsIdentity) -> Result<(), Box<dyn std::error::Error>> {
/// let (_publish, source) = tokio::sync::watch::channel(Some(Arc::new(identity)));
/// let acceptor = TlsAcceptor::new(source)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (tcp, _) = listener.accept().await?;
/// match acceptor.accept_with_mode(tcp, InboundMode::Permissive).await? {
///     Accepted::Tls(_stream, peer) => println!("mTLS from {}", peer.identity),
///     Accepted::Plaintext(_tcp) => println!("plaintext"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    source: IdentityWatch,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field(
                "identity",
                &self
                    .source
                    .borrow()
                    .as_ref()
                    .map(|id| id.identity().to_string()),
            )
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor presenting the certificate current in `source` (see [`server_config`]).
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn new(source: IdentityWatch) -> Result<Self, TlsError> {
        let config = server_config(source.clone())?;
        Ok(Self::from_config(source, Arc::new(config)))
    }

    /// An acceptor with a configuration made by [`server_config`] and changed by the caller
    /// (cipher suites, key log, …). `source` must be the one the configuration reads; it
    /// is used to report [`TlsError::NoCertificate`].
    pub fn from_config(source: IdentityWatch, config: Arc<ServerConfig>) -> Self {
        Self {
            inner: tokio_rustls::TlsAcceptor::from(config),
            source,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Sets how long protocol detection plus the TLS handshake may take.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Accepts a mutual-TLS connection (STRICT): a plaintext client is refused with
    /// [`TlsError::PlaintextRefused`].
    ///
    /// # Errors
    /// As [`TlsAcceptor::accept_with_mode`].
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, PeerIdentity), TlsError> {
        let peer = peer_addr(&tcp)?;
        match self.accept_with_mode(tcp, InboundMode::Strict).await? {
            Accepted::Tls(stream, identity) => Ok((stream, identity)),
            // STRICT never yields plaintext; kept total rather than panicking.
            Accepted::Plaintext(_) => Err(TlsError::PlaintextRefused { peer }),
        }
    }

    /// Accepts a connection as `mode` says:
    ///
    /// - `Strict`: the first bytes must be a TLS handshake record, then mutual TLS.
    /// - `Permissive`: a TLS handshake record leads to mutual TLS; anything else is returned
    ///   untouched as [`Accepted::Plaintext`] (the peeked bytes are still unread).
    /// - `Disable`: returned as plaintext at once, nothing read.
    ///
    /// # Errors
    /// [`TlsError::PlaintextRefused`] (STRICT), [`TlsError::ClosedEarly`],
    /// [`TlsError::HandshakeTimeout`], [`TlsError::NoCertificate`] (no certificate yet),
    /// [`TlsError::PeerRejected`] (bad SPIFFE id), [`TlsError::Handshake`] (chain does not
    /// verify, expired, no client certificate, …), [`TlsError::Io`].
    pub async fn accept_with_mode(
        &self,
        tcp: TcpStream,
        mode: InboundMode,
    ) -> Result<Accepted, TlsError> {
        if mode == InboundMode::Disable {
            return Ok(Accepted::Plaintext(tcp));
        }
        let peer = peer_addr(&tcp)?;
        let accepting = async {
            match detect(&tcp)
                .await
                .map_err(|source| TlsError::Io { peer, source })?
            {
                Detected::Eof => return Err(TlsError::ClosedEarly { peer }),
                Detected::Plaintext if mode == InboundMode::Strict => {
                    tracing::debug!(%peer, "plaintext connection refused (STRICT)");
                    return Err(TlsError::PlaintextRefused { peer });
                }
                Detected::Plaintext => return Ok(Accepted::Plaintext(tcp)),
                Detected::Tls => {}
            }
            let stream = self
                .inner
                .accept(tcp)
                .await
                .map_err(|e| self.handshake_error(peer, e))?;
            let identity = PeerIdentity::from_certs(stream.get_ref().1.peer_certificates())
                .map_err(|reason| TlsError::PeerRejected { peer, reason })?;
            Ok(Accepted::Tls(stream, identity))
        };
        match tokio::time::timeout(self.handshake_timeout, accepting).await {
            Ok(result) => result,
            Err(_) => Err(TlsError::HandshakeTimeout {
                peer,
                timeout: self.handshake_timeout,
            }),
        }
    }

    fn handshake_error(&self, peer: SocketAddr, e: io::Error) -> TlsError {
        if self.source.borrow().is_none() {
            return TlsError::NoCertificate { peer };
        }
        TlsError::from_handshake(peer, e)
    }
}

pub(crate) fn peer_addr(tcp: &TcpStream) -> Result<SocketAddr, TlsError> {
    tcp.peer_addr().map_err(TlsError::NoPeerAddr)
}

// === detection ===

/// What the first bytes of a connection look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detected {
    /// A TLS handshake record (a ClientHello).
    Tls,
    /// Anything else.
    Plaintext,
    /// The peer closed before sending a byte.
    Eof,
}

/// Classifies the first bytes of a connection; `None` when more bytes are needed.
///
/// A TLS record header is content type 22 (handshake), then the record version: major 3,
/// minor 0–4 (SSL 3.0 to TLS 1.3 records; ClientHellos use 3.1 in practice). Plaintext
/// HTTP starts with an ASCII method or the HTTP/2 preface, so one byte usually decides.
pub(crate) fn classify(first: &[u8]) -> Option<Detected> {
    match first {
        [] => Some(Detected::Eof),
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, minor, ..] if *minor <= 0x04 => Some(Detected::Tls),
        _ => Some(Detected::Plaintext),
    }
}

/// Peeks (without consuming) until the first bytes classify.
async fn detect(tcp: &TcpStream) -> io::Result<Detected> {
    let mut buf = [0u8; 3];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if let Some(detected) = classify(buf.get(..n).unwrap_or_default()) {
            return Ok(detected);
        }
        // A record header split across segments: peek returns at once while the first
        // bytes are buffered, so wait a little instead of spinning. The caller's timeout
        // bounds the loop.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
