//! Serving inbound traffic: HTTP/1.1 and HTTP/2 on one listener, with graceful shutdown.
//!
//! [`serve`] accepts connections and hands each request to a tower service (an axum `Router`,
//! a tonic server, a `service_fn`), with the body boxed as [`Body`]. On shutdown it stops
//! accepting, asks open connections to close (HTTP/2 `GOAWAY`, `Connection: close` on
//! HTTP/1.1 after the response in flight), and waits for requests in flight up to a deadline.
//! [`Mesh::serve`](crate::mesh::Mesh::serve) adds the mesh's part: it deregisters the workload
//! first, so callers stop choosing it before it stops accepting.
//!
//! [`serve_tls`] does the same with mutual TLS ([`InboundTls`]): each accepted socket is
//! handshaken in its own task (the accept loop never waits for a peer), with the mode
//! PeerAuthentication gives at that moment (STRICT, PERMISSIVE or DISABLE); the client's
//! verified [`PeerIdentity`] goes into each request's extensions. A refused or failed
//! handshake ends that connection only: it is logged at debug level with the peer's address
//! and counted ([`InboundTlsStats`]). On shutdown, connections still handshaking are served
//! nothing and closed; established ones drain as plaintext ones do.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body::Body as HttpBody;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use mesh_core::BoxError;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::{
    body::{self, Body},
    tls::{Accepted, InboundMode, PeerIdentity, TlsAcceptor},
};

/// How [`serve`] shuts down.
#[derive(Clone, Copy, Debug)]
pub struct ShutdownOptions {
    /// How long requests in flight may take to finish after shutdown starts; connections still
    /// open after it are closed.
    pub deadline: Duration,
}

impl Default for ShutdownOptions {
    fn default() -> Self {
        // Istio's terminationDrainDuration.
        Self {
            deadline: Duration::from_secs(5),
        }
    }
}

/// What happened during a [`serve`] run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections accepted.
    pub connections: usize,
    /// True if every connection closed before the deadline.
    pub drained: bool,
}

/// The peer address of an inbound request, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Mutual TLS for [`serve_tls`]: the acceptor (the workload's current certificate) and the
/// PeerAuthentication mode, asked once per connection so policy changes apply to the next
/// connection. Cheap to clone.
#[derive(Clone)]
pub struct InboundTls {
    acceptor: TlsAcceptor,
    mode: Arc<dyn Fn() -> InboundMode + Send + Sync>,
    stats: Arc<InboundTlsStats>,
}

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls")
            .field("acceptor", &self.acceptor)
            .field("mode", &(self.mode)())
            .field("stats", &self.stats)
            .finish()
    }
}

impl InboundTls {
    /// Accepts with `acceptor` in the mode `mode` returns when a connection arrives.
    pub fn new(
        acceptor: TlsAcceptor,
        mode: impl Fn() -> InboundMode + Send + Sync + 'static,
    ) -> Self {
        Self {
            acceptor,
            mode: Arc::new(mode),
            stats: Arc::default(),
        }
    }

    /// Counts into `stats` (e.g. shared by several listeners) instead of fresh counters.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<InboundTlsStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The counters of accepted and refused connections, shared by the clones.
    pub fn stats(&self) -> &Arc<InboundTlsStats> {
        &self.stats
    }
}

/// Counters of [`serve_tls`]: connections by outcome of protocol detection and handshake.
#[derive(Debug, Default)]
pub struct InboundTlsStats {
    tls: std::sync::atomic::AtomicU64,
    plaintext: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl InboundTlsStats {
    /// Connections that completed the mutual-TLS handshake.
    pub fn tls(&self) -> u64 {
        self.tls.load(Ordering::Relaxed)
    }

    /// Connections served in plaintext (PERMISSIVE or DISABLE).
    pub fn plaintext(&self) -> u64 {
        self.plaintext.load(Ordering::Relaxed)
    }

    /// Connections refused: plaintext on a STRICT port, failed or timed-out handshakes,
    /// peers closing before a byte.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
///
/// Requests reach `app` as `http::Request<Body>` with a [`PeerAddr`] extension. Errors from
/// `app` close the connection (hyper's behaviour); return error responses instead.
///
/// # Errors
/// Only if accepting fails in a way that is not per-connection (the listener is gone).
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    options: ShutdownOptions,
) -> std::io::Result<ServeSummary>
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_with(listener, app, shutdown, options, None).await
}

/// [`serve`] with mutual TLS: each connection is accepted as `tls` says (see the
/// [module docs](self)); requests over mutual TLS carry the client's [`PeerIdentity`] in
/// their extensions, next to [`PeerAddr`].
///
/// # Errors
/// As [`serve`].
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    options: ShutdownOptions,
    tls: InboundTls,
) -> std::io::Result<ServeSummary>
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_with(listener, app, shutdown, options, Some(tls)).await
}

async fn serve_with<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    options: ShutdownOptions,
    tls: Option<InboundTls>,
) -> std::io::Result<ServeSummary>
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) if is_per_connection(&e) => {
                        tracing::debug!(error = %e, "accept failed for one connection");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed; retrying in 100ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                connections.fetch_add(1, Ordering::Relaxed);
                if let Some(tls) = &tls {
                    let watcher = graceful.watcher();
                    tokio::spawn(serve_tls_connection(
                        stream,
                        peer,
                        tls.clone(),
                        app.clone(),
                        builder.clone(),
                        watcher,
                    ));
                    continue;
                }
                let app = app.clone();
                let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    handle(app.clone(), req.map(body::boxed), peer)
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(options.deadline, graceful.shutdown())
        .await
        .is_ok();
    if !drained {
        tracing::warn!(deadline = ?options.deadline, "connections still open after the shutdown deadline");
    }
    Ok(ServeSummary {
        connections: connections.load(Ordering::Relaxed),
        drained,
    })
}

/// Detects, handshakes and serves one connection of [`serve_tls`], in its own task.
async fn serve_tls_connection<S, B>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: InboundTls,
    app: S,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mode = (tls.mode)();
    let accepted = match tls.acceptor.accept_with_mode(stream, mode).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tls.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, %peer, ?mode, "inbound connection refused");
            return;
        }
    };
    let counter = match &accepted {
        Accepted::Tls(..) => &tls.stats.tls,
        Accepted::Plaintext(_) => &tls.stats.plaintext,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let (io, identity): (_, Option<PeerIdentity>) = accepted.into_io();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let ext = req.extensions_mut();
        ext.insert(PeerAddr(peer));
        if let Some(id) = &identity {
            ext.insert(id.clone());
        }
        handle(app.clone(), req.map(body::boxed), peer)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Header entries made room for in a header-less HTTP/1 response (see [`handle`]): a
/// typical request's few headers plus the ones the mesh adds inbound.
const INBOUND_HEADER_ROOM: usize = 12;

/// Calls the application; an application error becomes a 500 (hyper would close the
/// connection).
///
/// The application's body goes to hyper as it is (no boxing per response). The future is
/// written by hand: an `async` block awaiting the call would hold it twice (as the block's
/// capture and as the pinned future being awaited), and hyper moves this future into its
/// per-request slot (HTTP/1) or per-stream task (HTTP/2) on every request.
fn handle<S>(app: S, req: http::Request<Body>, peer: SocketAddr) -> Handle<S>
where
    S: Service<http::Request<Body>>,
{
    Handle {
        http1: req.version() <= http::Version::HTTP_11,
        call: app.oneshot(req),
        peer,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`handle`].
    struct Handle<S>
    where
        S: Service<http::Request<Body>>,
    {
        #[pin]
        call: tower::util::Oneshot<S, http::Request<Body>>,
        http1: bool,
        peer: SocketAddr,
    }
}

impl<S, B> Future for Handle<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = bytes::Bytes>,
{
    type Output = Result<http::Response<Either<B, Body>>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let res = match std::task::ready!(this.call.poll(cx)) {
            Ok(mut res) => {
                if *this.http1 && res.headers().capacity() == 0 {
                    // hyper's HTTP/1 server parses the next request of this connection into
                    // this response's header map (emptied once written), sized to that
                    // request's headers only; the inbound layers then add `x-request-id`
                    // (and trace headers), which would grow it: a reallocation and a rehash
                    // per request. A response without headers has no map allocated yet:
                    // make room here, once.
                    res.headers_mut().reserve(INBOUND_HEADER_ROOM);
                }
                res.map(Either::Left)
            }
            Err(e) => {
                let e: BoxError = e.into();
                tracing::warn!(error = %e, peer = %this.peer, "the service failed; answering 500");
                let mut res = http::Response::new(Either::Right(body::full("internal error")));
                *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                res
            }
        };
        std::task::Poll::Ready(Ok(res))
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}
