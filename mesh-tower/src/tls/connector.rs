//! A connector for hyper-util's legacy `Client` that upgrades connections to mutual TLS.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Uri, uri::Authority};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use mesh_core::BoxError;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::{
    Alpn, ExpectedIdentities, PeerIdentity, TlsConnector, TlsError,
    originate::{Originate, OriginateCache},
    server::peer_addr,
};

/// What a connection to a destination uses: DestinationRule `tls.mode` as far as the mesh
/// handles it here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// `ISTIO_MUTUAL`: mutual TLS with the workload certificate; the server must present
    /// one of these identities.
    Mutual(ExpectedIdentities),
    /// `DISABLE`: plaintext.
    Plaintext,
    /// `SIMPLE` or `MUTUAL`: TLS originated to a server outside the mesh, verified as the
    /// settings say (see [`Originate`]).
    Originate(Arc<Originate>),
    /// Do not connect: the policy asks for something the mesh does not do (e.g. DestinationRule
    /// `tls.credentialName`). The connection fails with [`TlsError::Unsupported`]
    /// carrying this reason, before any byte is sent.
    ///
    /// [`TlsError::Unsupported`]: super::TlsError::Unsupported
    Refuse(Arc<str>),
}

type Lookup = Arc<dyn Fn(&Authority) -> UpstreamTls + Send + Sync>;

/// A `Service<Uri>` connector for [`hyper_util::client::legacy::Client`]: connects TCP with
/// the inner connector (hyper-util's [`HttpConnector`] by default), asks `lookup` what the
/// URI's authority (the endpoint's `address:port`) needs, and runs the mutual-TLS handshake
/// when it says [`UpstreamTls::Mutual`].
///
/// The application keeps sending `http://` URIs; TLS is the mesh's business, as with a
/// sidecar. The connection reports `negotiated_h2` when ALPN chose `h2`, so the client speaks
/// HTTP/2 on it, and carries the server's [`PeerIdentity`] as an extra (hyper-util copies it
/// into each response's extensions). Handshake failures are connect errors
/// ([`hyper_util::client::legacy::Error::is_connect`]).
///
/// ```no_run
/// use std::sync::Arc;
/// use mesh_tower::tls::{ExpectedIdentities, MtlsConnector, TlsConnector, TlsIdentity, UpstreamTls};
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
///
/// # fn run(identity: TlsIdentity) -> Result<(), Box<dyn std::error::Error>> {
/// let (_publish, source) = tokio::sync::watch::channel(Some(Arc::new(identity)));
/// let reviews = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let expected = ExpectedIdentities::one_of([reviews]);
/// let connector = MtlsConnector::new(TlsConnector::new(source), move |_authority| {
///     UpstreamTls::Mutual(expected.clone())
/// });
/// let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
///     Client::builder(TokioExecutor::new()).build(connector);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MtlsConnector<C = HttpConnector> {
    inner: C,
    tls: TlsConnector,
    lookup: Lookup,
    originate: Arc<OriginateCache>,
}

impl<C: fmt::Debug> fmt::Debug for MtlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsConnector")
            .field("inner", &self.inner)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl MtlsConnector {
    /// A connector over hyper-util's [`HttpConnector`] with `TCP_NODELAY`.
    pub fn new(
        tls: TlsConnector,
        lookup: impl Fn(&Authority) -> UpstreamTls + Send + Sync + 'static,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Self::with_connector(http, tls, lookup)
    }
}

impl<C> MtlsConnector<C> {
    /// A connector over `inner`, a TCP connector such as a configured [`HttpConnector`].
    pub fn with_connector(
        inner: C,
        tls: TlsConnector,
        lookup: impl Fn(&Authority) -> UpstreamTls + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            tls,
            lookup: Arc::new(lookup),
            originate: Arc::default(),
        }
    }

    /// The inner TCP connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The inner TCP connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// The inner TCP connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<ClientIo>, BoxError>> + Send>>;

impl<C> tower::Service<Uri> for MtlsConnector<C>
where
    C: tower::Service<Uri, Response = TokioIo<TcpStream>>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = TokioIo<ClientIo>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(authority) = dst.authority() else {
            let err: BoxError = format!("cannot connect to {dst}: the URI has no authority").into();
            return Box::pin(std::future::ready(Err(err)));
        };
        let upstream = (self.lookup)(authority);
        if let UpstreamTls::Refuse(reason) = upstream {
            let err: BoxError = Box::new(super::TlsError::Unsupported {
                destination: authority.to_string(),
                reason: reason.to_string(),
            });
            tracing::debug!(error = %err, "upstream connection refused by policy");
            return Box::pin(std::future::ready(Err(err)));
        }
        let connecting = self.inner.call(dst);
        let tls = self.tls.clone();
        let cache = self.originate.clone();
        Box::pin(async move {
            let tcp = connecting.await.map_err(Into::into)?.into_inner();
            match upstream {
                UpstreamTls::Plaintext | UpstreamTls::Refuse(_) => {
                    Ok(TokioIo::new(ClientIo(ClientInner::Plain(tcp))))
                }
                UpstreamTls::Originate(originate) => {
                    let peer = peer_addr(&tcp)?;
                    let (stream, alpn) = originate_tls(&tls, &cache, &originate, tcp, peer)
                        .await
                        .inspect_err(
                        |e| tracing::debug!(error = %e, "upstream TLS origination failed"),
                    )?;
                    Ok(TokioIo::new(ClientIo(ClientInner::Originated {
                        stream: Box::new(stream),
                        alpn,
                    })))
                }
                UpstreamTls::Mutual(expected) => {
                    let peer = peer_addr(&tcp)?;
                    let (stream, alpn, server) =
                        tls.connect_to(tcp, peer, expected).await.inspect_err(
                            |e| tracing::debug!(error = %e, "upstream mTLS handshake failed"),
                        )?;
                    Ok(TokioIo::new(ClientIo(ClientInner::Tls {
                        stream: Box::new(stream),
                        alpn,
                        server,
                    })))
                }
            }
        })
    }
}

/// The TLS handshake of an originated connection, with the connector's handshake timeout
/// and ALPN protocols.
async fn originate_tls(
    tls: &TlsConnector,
    cache: &OriginateCache,
    originate: &Arc<Originate>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<(TlsStream<TcpStream>, Option<Alpn>), TlsError> {
    let config = cache.config(originate, tls.alpn_protocols())?;
    let name = originate.server_name()?;
    let connecting = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let timeout = tls.handshake_timeout_value();
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TlsError::from_handshake(peer, e)),
        Err(_) => return Err(TlsError::HandshakeTimeout { peer, timeout }),
    };
    let alpn = stream
        .get_ref()
        .1
        .alpn_protocol()
        .and_then(Alpn::from_bytes);
    Ok((stream, alpn))
}

// === ClientIo ===

/// An outbound connection made by [`MtlsConnector`]: mutual TLS or plaintext.
///
/// Implements hyper-util's [`Connection`] (so `TokioIo<ClientIo>` does too): `negotiated_h2`
/// when ALPN chose `h2`, the server's [`PeerIdentity`] as an extra, plus the TCP
/// connection's `HttpInfo`.
#[derive(Debug)]
pub struct ClientIo(ClientInner);

#[derive(Debug)]
enum ClientInner {
    Plain(TcpStream),
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        alpn: Option<Alpn>,
        server: PeerIdentity,
    },
    Originated {
        stream: Box<TlsStream<TcpStream>>,
        alpn: Option<Alpn>,
    },
}

impl ClientIo {
    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        !matches!(self.0, ClientInner::Plain(_))
    }

    /// The protocol ALPN chose (TLS only).
    pub fn alpn(&self) -> Option<Alpn> {
        match &self.0 {
            ClientInner::Tls { alpn, .. } | ClientInner::Originated { alpn, .. } => *alpn,
            ClientInner::Plain(_) => None,
        }
    }

    /// The server's verified identity (TLS only).
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        match &self.0 {
            ClientInner::Tls { server, .. } => Some(server),
            ClientInner::Plain(_) | ClientInner::Originated { .. } => None,
        }
    }
}

impl Connection for ClientIo {
    fn connected(&self) -> Connected {
        match &self.0 {
            ClientInner::Plain(tcp) => tcp.connected(),
            ClientInner::Tls {
                stream,
                alpn,
                server,
            } => {
                let connected = stream.get_ref().0.connected().extra(server.clone());
                if *alpn == Some(Alpn::H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
            ClientInner::Originated { stream, alpn } => {
                let connected = stream.get_ref().0.connected();
                if *alpn == Some(Alpn::H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ClientInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                Pin::new(stream.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            ClientInner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                Pin::new(stream.as_mut()).poll_write(cx, buf)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ClientInner::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                Pin::new(stream.as_mut()).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ClientInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                Pin::new(stream.as_mut()).poll_shutdown(cx)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            ClientInner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            ClientInner::Plain(s) => s.is_write_vectored(),
            ClientInner::Tls { stream, .. } | ClientInner::Originated { stream, .. } => {
                stream.is_write_vectored()
            }
        }
    }
}
