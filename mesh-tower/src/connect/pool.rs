//! The connection pools of one set of [`ConnectionSettings`](super::ConnectionSettings): per
//! endpoint (`address:port`), a stack of idle HTTP/1.1 connections and one shared HTTP/2
//! connection.
//!
//! The balancer has already picked the endpoint, so the pool is a map from the endpoint's
//! `address:port` to its connections: one lookup (foldhash, no allocation) under a mutex,
//! then the endpoint's own mutex. An HTTP/1.1 connection is out of the pool while it carries
//! a request, and goes back (most recently used first) when its response body has ended; the
//! body wrapper does that, without a task. HTTP/2 connections are shared: each request
//! clones the sender. An HTTP/1.1 connection dialed for a request that is given up before it
//! is ready (a timeout, a caller gone) still joins the pool. A sweep task per pool (started
//! with the first endpoint, ended when no endpoint is left) closes idle connections past the
//! idle timeout or the maximum duration and forgets endpoints without connections.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt, future::Shared};
use http::{
    HeaderValue, Method, Request, Response, Uri,
    header::HOST,
    uri::{Authority, Scheme},
};
use http_body::{Body as _, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::TokioExecutor;
use mesh_core::BoxError;
use tokio::{task::JoinHandle, time::Instant};

use super::{
    DEFAULT_POOL_IDLE_TIMEOUT,
    classify::{classify, connect_failure},
    dial::Dial,
    future::ResponseFuture,
};
use crate::{
    body::{self, Body},
    tls::PeerIdentity,
};

/// How connections of one pool live.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Limits {
    /// Idle connections older than this are closed.
    pub(super) idle_timeout: Option<Duration>,
    /// HTTP/1.1: closed after this many responses (more than one).
    pub(super) max_requests: Option<u64>,
    /// HTTP/1.1: not reused once this old.
    pub(super) max_duration: Option<Duration>,
    /// HTTP/1.1: one request per connection (`Connection: close`), never pooled.
    pub(super) one_per_connection: bool,
}

impl Limits {
    /// True if a connection that carried `conn.responses` may carry another.
    fn reusable(&self, conn: &Conn1) -> bool {
        !self.one_per_connection
            && self.max_requests.is_none_or(|max| conn.responses < max)
            && self
                .max_duration
                .is_none_or(|max| conn.created.elapsed() < max)
    }

    /// True if idle connections have to be checked against the clock.
    fn timed(&self) -> bool {
        self.idle_timeout.is_some() || self.max_duration.is_some()
    }

    /// True if an idle connection is past a limit at `now`.
    fn expired(&self, idle: &Idle, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|t| now.saturating_duration_since(idle.since) >= t)
            || self
                .max_duration
                .is_some_and(|d| now.saturating_duration_since(idle.conn.created) >= d)
    }

    /// How often the sweep runs: the shortest limit (idle connections then live at most
    /// twice their limit), at least every millisecond.
    fn sweep_period(&self) -> Duration {
        let limit = match (self.idle_timeout, self.max_duration) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
        };
        limit.max(Duration::from_millis(1))
    }
}

/// The pools of one set of settings, shared by [`Connect`](super::Connect)'s clones.
pub(super) struct Pool {
    /// Opens HTTP/1.1 connections (offers only `http/1.1` with ALPN).
    http1_dial: Box<dyn Dial>,
    /// Opens HTTP/2 connections (offers only `h2` with ALPN).
    http2_dial: Box<dyn Dial>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    limits: Limits,
    endpoints: Mutex<Endpoints>,
    /// Requests a pooled connection gave back unsent, sent again on a new connection.
    resent: AtomicU64,
}

#[derive(Default)]
struct Endpoints {
    map: foldhash::HashMap<Arc<str>, Arc<Endpoint>>,
    /// The sweep task, while there are endpoints.
    sweeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.limits)
            .field("endpoints", &lock(&self.endpoints).map.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let endpoints = self
            .endpoints
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sweeper) = endpoints.sweeper.take() {
            sweeper.abort();
        }
    }
}

/// The connections to one endpoint.
struct Endpoint {
    /// `address:port`.
    key: Arc<str>,
    /// The `Host` header of HTTP/1.1 requests without one: the authority, without the
    /// default port.
    host: Option<HeaderValue>,
    limits: Limits,
    state: Mutex<State>,
    /// The HTTP/2 connection carried a request since the last sweep.
    http2_used: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    http2: Http2Slot,
    /// Since when the sweeps have seen no request start on the HTTP/2 connection.
    http2_unused_since: Option<Instant>,
}

/// An HTTP/1.1 connection.
struct Conn1 {
    tx: http1::SendRequest<Body>,
    peer: Option<PeerIdentity>,
    created: Instant,
    /// Responses received on it.
    responses: u64,
    /// The last request had a body: hyper may still be writing it after the response (a
    /// server may answer before reading it all).
    uploading: bool,
}

struct Idle {
    conn: Conn1,
    /// When it went idle.
    since: Instant,
}

/// The shared HTTP/2 connection to an endpoint.
#[derive(Clone)]
struct Conn2 {
    tx: http2::SendRequest<Body>,
    peer: Option<PeerIdentity>,
    id: u64,
}

type Dialing2 = Shared<Pin<Box<dyn Future<Output = Result<Conn2, SharedError>> + Send>>>;

#[derive(Default)]
enum Http2Slot {
    #[default]
    Empty,
    /// A connect attempt that concurrent requests share.
    Connecting(Dialing2),
    Ready(Conn2),
}

/// A connect error shared by the requests that waited for the same attempt; its source is
/// the error itself, so `cause_ref` finds what failed.
#[derive(Clone, Debug)]
struct SharedError(Arc<BoxError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Numbers HTTP/2 connections, to tell the one in a slot from a replaced one.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

// === impl Pool ===

impl Pool {
    pub(super) fn new(
        http1_dial: Box<dyn Dial>,
        http2_dial: Box<dyn Dial>,
        http1: http1::Builder,
        http2: http2::Builder<TokioExecutor>,
        limits: Limits,
    ) -> Self {
        Self {
            http1_dial,
            http2_dial,
            http1,
            http2,
            limits,
            endpoints: Mutex::default(),
            resent: AtomicU64::new(0),
        }
    }

    /// Sends `req` to the endpoint in its URI, over HTTP/2 if `h2`, else HTTP/1.1.
    pub(super) fn send(self: &Arc<Self>, req: Request<Body>, h2: bool) -> ResponseFuture {
        let uri = req.uri();
        let Some(authority) = uri.authority() else {
            let err = format!("cannot send a request to {uri}: the URI has no authority");
            return ResponseFuture::failed(err.into());
        };
        // `CONNECT host:port` is in authority form: no scheme.
        let authority_form = req.method() == Method::CONNECT && uri.scheme().is_none();
        if !authority_form && uri.scheme() != Some(&Scheme::HTTP) {
            let err = match uri.scheme() {
                None => format!("cannot send a request to {uri}: the URI has no scheme").into(),
                Some(_) => connect_failure(
                    format!("invalid URL {uri}: the scheme is not http").into(),
                    authority.as_str(),
                ),
            };
            return ResponseFuture::failed(err);
        }
        let endpoint = self.endpoint(authority.as_str());
        let pool = self.clone();
        if h2 {
            ResponseFuture::new(send_http2(pool, endpoint, req))
        } else {
            ResponseFuture::new(send_http1(pool, endpoint, req))
        }
    }

    /// The endpoint's connections, added on first use.
    fn endpoint(self: &Arc<Self>, key: &str) -> Arc<Endpoint> {
        let mut endpoints = lock(&self.endpoints);
        if let Some(endpoint) = endpoints.map.get(key).cloned() {
            // The sweep ends with the runtime it ran on: started again on this one.
            if endpoints
                .sweeper
                .as_ref()
                .is_none_or(JoinHandle::is_finished)
            {
                endpoints.sweeper = self.spawn_sweeper();
            }
            return endpoint;
        }
        let key: Arc<str> = key.into();
        let endpoint = Arc::new(Endpoint {
            key: key.clone(),
            host: host_header(&key),
            limits: self.limits,
            state: Mutex::default(),
            http2_used: AtomicBool::new(false),
        });
        endpoints.map.insert(key, endpoint.clone());
        if endpoints
            .sweeper
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
        {
            endpoints.sweeper = self.spawn_sweeper();
        }
        endpoint
    }

    /// Starts the sweep on the current Tokio runtime (none outside a runtime: idle
    /// connections are then checked only when taken).
    fn spawn_sweeper(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pool = Arc::downgrade(self);
        let period = self.limits.sweep_period();
        Some(runtime.spawn(sweep(pool, period)))
    }

    /// Closes expired and closed connections and forgets unused endpoints; false once no
    /// endpoint is left (the sweep then ends, and the next endpoint starts another).
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut endpoints = lock(&self.endpoints);
        // Anything else holding an endpoint (a request, a response body) may still put a
        // connection back: only endpoints held by the map alone are forgotten.
        endpoints
            .map
            .retain(|_, endpoint| !endpoint.sweep(now) || Arc::strong_count(endpoint) > 1);
        if endpoints.map.is_empty() {
            endpoints.sweeper = None;
            return false;
        }
        true
    }

    /// How many endpoints have connections (or requests in flight).
    #[cfg(test)]
    pub(super) fn endpoints(&self) -> usize {
        lock(&self.endpoints).map.len()
    }

    /// How many idle HTTP/1.1 connections the pool holds, over every endpoint.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        lock(&self.endpoints)
            .map
            .values()
            .map(|e| lock(&e.state).idle.len())
            .sum()
    }

    /// How many requests a pooled connection gave back unsent (the keep-alive race).
    #[cfg(test)]
    pub(super) fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }
}

/// The sweep task: runs every `period` while the pool exists and has endpoints.
async fn sweep(pool: Weak<Pool>, period: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) if pool.sweep() => {}
            _ => return,
        }
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// The most recently used idle HTTP/1.1 connection that is open and within its limits.
    fn take_idle(&self) -> Option<Conn1> {
        let mut state = lock(&self.state);
        let now = if self.limits.timed() && !state.idle.is_empty() {
            Some(Instant::now())
        } else {
            None
        };
        while let Some(idle) = state.idle.pop() {
            if now.is_some_and(|now| self.limits.expired(&idle, now)) || idle.conn.tx.is_closed() {
                // Dropping the sender closes the connection.
                continue;
            }
            return Some(idle.conn);
        }
        None
    }

    /// Puts an HTTP/1.1 connection whose response has ended back. One still writing its
    /// request's body goes back once hyper is done with it, so that no request waits behind
    /// an upload (and a caller that sends its next request before finishing the body of the
    /// previous one does not wait for itself).
    fn put(self: &Arc<Self>, mut conn: Conn1) {
        if conn.tx.is_closed() {
            return;
        }
        if conn.uploading && !conn.tx.is_ready() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let endpoint = self.clone();
            runtime.spawn(async move {
                if std::future::poll_fn(|cx| conn.tx.poll_ready(cx))
                    .await
                    .is_ok()
                {
                    conn.uploading = false;
                    endpoint.put(conn);
                }
            });
            return;
        }
        let since = if self.limits.idle_timeout.is_some() {
            Instant::now()
        } else {
            conn.created
        };
        lock(&self.state).idle.push(Idle { conn, since });
    }

    /// The response to a request sent on `conn`: the server's identity goes into its
    /// extensions, and the connection goes back to the idle list when its body has ended
    /// (at once for a response without body), unless it reached a limit.
    fn respond(
        self: &Arc<Self>,
        mut conn: Conn1,
        res: Response<Incoming>,
        connect: bool,
    ) -> Response<Body> {
        conn.responses += 1;
        let (mut parts, incoming) = res.into_parts();
        if let Some(peer) = &conn.peer {
            parts.extensions.insert(peer.clone());
        }
        // A protocol switch or a tunnel: the connection is the caller's now
        // (`hyper::upgrade::on`), never reused.
        let upgraded = parts.status == http::StatusCode::SWITCHING_PROTOCOLS
            || (connect && parts.status.is_success());
        let body = if upgraded || !self.limits.reusable(&conn) {
            // Without a sender hyper closes the connection after this response.
            body::boxed(incoming)
        } else if incoming.is_end_stream() {
            self.put(conn);
            body::boxed(incoming)
        } else {
            body::boxed(PoolBody {
                body: incoming,
                back: Some((self.clone(), conn)),
            })
        };
        Response::from_parts(parts, body)
    }

    /// The shared HTTP/2 connection, opened on first use (concurrent first requests share one
    /// attempt) and replaced once closed. The flag is true for a new connection.
    async fn http2(&self, pool: &Pool) -> Result<(Conn2, bool), BoxError> {
        let dialing = {
            let mut state = lock(&self.state);
            match &state.http2 {
                Http2Slot::Ready(conn) if !conn.tx.is_closed() => {
                    self.http2_used.store(true, Ordering::Relaxed);
                    return Ok((conn.clone(), false));
                }
                Http2Slot::Connecting(dialing) if usable(dialing) => dialing.clone(),
                Http2Slot::Connecting(_) | Http2Slot::Ready(_) | Http2Slot::Empty => {
                    let dst = dst(&self.key);
                    let connecting = pool.http2_dial.http2(dst, &pool.http2);
                    // On a task of its own: the attempt goes on (within the connect timeout)
                    // when the requests waiting for it are cancelled, and the next request
                    // finds its outcome instead of resuming a stale attempt.
                    let task = tokio::spawn(async move {
                        let (tx, peer) = connecting.await.map_err(|e| SharedError(Arc::new(e)))?;
                        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
                        Ok(Conn2 { tx, peer, id })
                    });
                    let dialing: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                        task.await
                            .unwrap_or_else(|e| Err(SharedError(Arc::new(Box::new(e)))))
                    });
                    let dialing = dialing.shared();
                    state.http2 = Http2Slot::Connecting(dialing.clone());
                    dialing
                }
            }
        };
        let result = dialing.clone().await;
        let mut state = lock(&self.state);
        let current = matches!(&state.http2, Http2Slot::Connecting(d) if d.ptr_eq(&dialing));
        match result {
            Ok(conn) => {
                if current {
                    state.http2 = Http2Slot::Ready(conn.clone());
                }
                self.http2_used.store(true, Ordering::Relaxed);
                Ok((conn, true))
            }
            Err(err) => {
                if current {
                    state.http2 = Http2Slot::Empty;
                }
                Err(connect_failure(Box::new(err), &self.key))
            }
        }
    }

    /// Forgets the HTTP/2 connection `id` (it closed): the next request opens another.
    fn forget_http2(&self, id: u64) {
        let mut state = lock(&self.state);
        if matches!(&state.http2, Http2Slot::Ready(c) if c.id == id) {
            state.http2 = Http2Slot::Empty;
        }
    }

    /// Closes expired and closed connections; true if none is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        state
            .idle
            .retain(|idle| !self.limits.expired(idle, now) && !idle.conn.tx.is_closed());
        // An attempt whose requests were all cancelled: its outcome, kept.
        if let Http2Slot::Connecting(dialing) = &state.http2 {
            match dialing.peek() {
                Some(Ok(conn)) => state.http2 = Http2Slot::Ready(conn.clone()),
                Some(Err(_)) => state.http2 = Http2Slot::Empty,
                None => {}
            }
        }
        // Idle for the idle timeout: no request started on it since a sweep that long ago
        // (the sweep period may be shorter: the maximum connection duration).
        let used = self.http2_used.swap(false, Ordering::Relaxed);
        let since = if used {
            None
        } else {
            Some(*state.http2_unused_since.get_or_insert(now))
        };
        state.http2_unused_since = since;
        let idle = match (self.limits.idle_timeout, since) {
            (Some(timeout), Some(since)) => now.saturating_duration_since(since) >= timeout,
            _ => false,
        };
        if let Http2Slot::Ready(conn) = &state.http2
            && (conn.tx.is_closed() || idle)
        {
            // Streams in flight finish: hyper closes the connection after them.
            state.http2 = Http2Slot::Empty;
        }
        state.idle.is_empty() && matches!(state.http2, Http2Slot::Empty)
    }
}

/// True if a request may wait for (or take the outcome of) this HTTP/2 connect attempt: it
/// is still running, or it gave a connection that is still open.
fn usable(dialing: &Dialing2) -> bool {
    match dialing.peek() {
        None => true,
        Some(Ok(conn)) => !conn.tx.is_closed(),
        Some(Err(_)) => false,
    }
}

/// The URI a connector connects to for `key` (`address:port`).
fn dst(key: &str) -> Uri {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(key)
        .path_and_query("/")
        .build()
        .unwrap_or_default()
}

/// The `Host` header for an endpoint's authority (`address:port`): the authority without
/// user information and without the default port, as hyper-util's client writes it.
fn host_header(authority: &str) -> Option<HeaderValue> {
    let authority: Authority = authority.parse().ok()?;
    let host = authority.host();
    let value = match authority.port_u16() {
        None | Some(80) => host.to_owned(),
        Some(port) => format!("{host}:{port}"),
    };
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// Makes an HTTP/1.1 request what hyper's connection writes: the endpoint's `Host` header
/// when it has none, and the URI in origin form (authority form for `CONNECT`).
fn http1_form(req: &mut Request<Body>, host: Option<&HeaderValue>) {
    let uri = std::mem::take(req.uri_mut());
    // Not `entry`: it makes room for an insert even when `Host` is there (set by the
    // balancer, usually), which grows a full map for nothing.
    if let Some(host) = host
        && !req.headers().contains_key(HOST)
    {
        req.headers_mut().insert(HOST, host.clone());
    }
    let mut parts = uri.into_parts();
    let mut form = http::uri::Parts::default();
    if req.method() == Method::CONNECT {
        form.authority = parts.authority.take();
    } else {
        form.path_and_query = parts.path_and_query.take().filter(|p| p.as_str() != "/");
        if form.path_and_query.is_none() {
            *req.uri_mut() = Uri::default();
            return;
        }
    }
    *req.uri_mut() = Uri::from_parts(form).unwrap_or_default();
}

async fn send_http1(
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    mut req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    http1_form(&mut req, endpoint.host.as_ref());
    let connect = req.method() == Method::CONNECT;
    let uploading = !req.body().is_end_stream();
    while let Some(mut conn) = endpoint.take_idle() {
        conn.uploading = uploading;
        // Its last response has ended; hyper is ready for the next request once it has
        // read that response to its end, or fails if the connection closed meanwhile.
        if !conn.tx.is_ready()
            && std::future::poll_fn(|cx| conn.tx.poll_ready(cx))
                .await
                .is_err()
        {
            continue;
        }
        match conn.tx.try_send_request(req).await {
            Ok(res) => return Ok(endpoint.respond(conn, res, connect)),
            Err(mut err) => match err.take_message() {
                // The keep-alive race: the server closed the connection before hyper
                // wrote the request. Send it on a new connection.
                Some(unsent) => {
                    tracing::debug!(
                        endpoint = %endpoint.key,
                        "pooled connection closed before the request was written; retrying on a new connection"
                    );
                    pool.resent.fetch_add(1, Ordering::Relaxed);
                    req = unsent;
                    break;
                }
                None => return Err(classify(err.into_error(), &endpoint.key, true)),
            },
        }
    }
    let dialing = KeepIfCancelled {
        dialing: Some(pool.http1_dial.http1(dst(&endpoint.key), &pool.http1)),
        endpoint: endpoint.clone(),
    };
    let (mut tx, peer) = dialing
        .await
        .map_err(|e| connect_failure(e, &endpoint.key))?;
    let created = Instant::now();
    let res = tx
        .send_request(req)
        .await
        .map_err(|e| classify(e, &endpoint.key, false))?;
    let conn = Conn1 {
        tx,
        peer,
        created,
        responses: 0,
        uploading,
    };
    Ok(endpoint.respond(conn, res, connect))
}

/// A new HTTP/1.1 connection being opened for a request. If the request is given up
/// before the connection is ready (its caller or a timeout dropped it), the dial goes on in a
/// task and the connection joins the pool: the next request uses it instead of dialing
/// again (as Envoy's pools finish a connection whose request went away).
struct KeepIfCancelled {
    dialing: Option<Dialing1>,
    endpoint: Arc<Endpoint>,
}

type Dialing1 = super::dial::Dialing<http1::SendRequest<Body>>;

impl Future for KeepIfCancelled {
    type Output = Result<super::dial::Dialed<http1::SendRequest<Body>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(dialing) = self.dialing.as_mut() else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let out = ready!(dialing.as_mut().poll(cx));
        self.dialing = None;
        Poll::Ready(out)
    }
}

impl Drop for KeepIfCancelled {
    fn drop(&mut self) {
        let Some(dialing) = self.dialing.take() else {
            return;
        };
        // Outside a runtime (nothing could drive it) the dial is dropped.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        runtime.spawn(async move {
            match dialing.await {
                Ok((tx, peer)) => endpoint.put(Conn1 {
                    tx,
                    peer,
                    created: Instant::now(),
                    responses: 0,
                    uploading: false,
                }),
                Err(e) => tracing::debug!(
                    endpoint = %endpoint.key,
                    error = %e,
                    "connection dialed for a request given up failed"
                ),
            }
        });
    }
}

async fn send_http2(
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let (mut conn, new) = endpoint.http2(&pool).await?;
    let res = match conn.tx.try_send_request(req).await {
        Ok(res) => res,
        Err(mut err) => match err.take_message() {
            // The shared connection closed (GOAWAY) before the request went out: open
            // another for it.
            Some(unsent) if !new => {
                pool.resent.fetch_add(1, Ordering::Relaxed);
                endpoint.forget_http2(conn.id);
                let (next, _) = endpoint.http2(&pool).await?;
                conn = next;
                conn.tx
                    .send_request(unsent)
                    .await
                    .map_err(|e| classify(e, &endpoint.key, false))?
            }
            _ => {
                let err = err.into_error();
                if conn.tx.is_closed() {
                    endpoint.forget_http2(conn.id);
                }
                return Err(classify(err, &endpoint.key, !new));
            }
        },
    };
    let (mut parts, incoming) = res.into_parts();
    if let Some(peer) = &conn.peer {
        parts.extensions.insert(peer.clone());
    }
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

pin_project_lite::pin_project! {
    /// An HTTP/1.1 response body that puts its connection back into the pool when it ends
    /// (its last frame was read, or it is dropped after that). Dropped before its end, the
    /// connection is not reused: hyper closes it.
    struct PoolBody {
        #[pin]
        body: Incoming,
        back: Option<(Arc<Endpoint>, Conn1)>,
    }

    impl PinnedDrop for PoolBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((endpoint, conn)) = this.back.take()
                && this.body.is_end_stream()
            {
                endpoint.put(conn);
            }
        }
    }
}

impl http_body::Body for PoolBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            // The end: the last frame, or nothing more.
            Some(Ok(_)) | None => {
                if let Some((endpoint, conn)) = this.back.take() {
                    endpoint.put(conn);
                }
            }
            // The connection failed.
            Some(Err(_)) => drop(this.back.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_shared_connect_error_has_the_error_itself_as_its_source() {
        let err = SharedError(Arc::new(Box::new(std::io::Error::other("refused"))));
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(err.to_string(), "refused");
    }
}
