//! The upstream connection: the leaf service of the outbound stack, which sends a request to
//! the address in its URI over a pooled connection.
//!
//! The balancer has already picked the endpoint and put its `address:port` into the URI's
//! authority, so [`Connect`] keeps a lean pool per endpoint, keyed by that authority (one
//! hash lookup, no allocation), built on hyper's `client::conn` (each connection's driver on
//! a Tokio task of its own). A request whose [`version`](http::Request::version) is `HTTP/2`
//! (tonic sets it on every gRPC request) goes over HTTP/2 with prior knowledge (h2c),
//! multiplexed on one connection per endpoint; HTTP/1.1 and HTTP/1.0 requests over HTTP/1.1;
//! other versions fail. Connections are TCP with `TCP_NODELAY`. The URI's scheme must be
//! `http` (TLS is the mesh's business, below).
//!
//! # Pooling
//!
//! - **HTTP/1.1**: a connection carries one request at a time. It goes back to its
//!   endpoint's idle list when its response body has ended (read to its end, or, for a body
//!   of known length, dropped after its last byte; at once for a response without body); a
//!   body dropped before its end does not give it back, and hyper closes it. A connection
//!   still writing its request's body (the server answered before reading it all) goes back
//!   only once hyper has written it, so no request waits behind an upload. A request takes the most recently used idle
//!   connection that is still open, waiting for hyper to be ready on it, and opens a new
//!   connection when there is none (the number of connections is the
//!   [`breaker`](crate::breaker)'s business). The request gets a `Host` header from its URI
//!   when it has none, and is written in origin form (`/path?query`; authority form for
//!   `CONNECT`, whose URI may then be a bare `host:port`). A `101 Switching Protocols`
//!   (WebSocket) or a successful `CONNECT` hands the connection to the caller
//!   ([`hyper::upgrade::on`]) and it never returns to the pool.
//! - **The keep-alive race**: when a server closes an idle connection just as a request is
//!   handed to it, hyper gives the request back unsent if it saw the close first, and the
//!   request goes on a new connection. A request already written fails as refused (see
//!   Errors), for the [`retry`](crate::retry) layer to send again.
//! - **HTTP/2**: one connection per endpoint, shared by concurrent requests; concurrent
//!   first requests share one connect attempt (which runs on a task of its own, so it
//!   completes within the connect timeout even when they are all cancelled), and a closed connection (GOAWAY, or the socket
//!   closed) is replaced on next use. A request that the closed connection gave back unsent
//!   goes on the new one.
//! - **Idle connections** are closed after the idle timeout: checked when a connection is
//!   taken, and by a sweep task per set of pools that runs every idle timeout (or maximum
//!   connection duration, when shorter) while the pools have endpoints (so an idle connection lives between one and two idle timeouts when no
//!   request comes). An HTTP/2 connection is closed once the sweeps have seen no request
//!   start on it for the idle timeout (it lives one to three idle timeouts after its last
//!   request); streams still in flight finish before hyper closes it. Endpoints without
//!   connections are forgotten.
//! - Responses on a mutual-TLS connection carry the server's
//!   [`PeerIdentity`](crate::tls::PeerIdentity) in their extensions.
//!
//! # Mutual TLS
//!
//! Built with [`ConnectBuilder::mutual_tls`], the connections go through the mesh's
//! [`MtlsConnector`]: for each new connection a lookup (the mesh's is
//! [`tls::policy::upstream_tls`](crate::tls::policy::upstream_tls) on the current snapshot)
//! says whether the endpoint's `address:port` gets mutual TLS (and which identities it may
//! present) or plaintext. The pools are keyed by the authority alone, so one endpoint is
//! either TLS or plaintext for as long as its pooled connections live; a policy change
//! applies to new connections. HTTP/1.1 connections offer only `http/1.1` with ALPN and
//! HTTP/2 connections only `h2`, so the protocol is the same as in plaintext. A refused handshake or a secure-naming failure is a connect failure
//! ([`UpstreamConnectFailure`], `503 UF`) whose source is the [`TlsError`] naming the peer;
//! retries then prefer another endpoint.
//!
//! [`MtlsConnector`]: crate::tls::MtlsConnector
//! [`TlsError`]: crate::tls::TlsError
//!
//! | setting | default | Istio / Envoy |
//! |---|---|---|
//! | connect timeout | 10 s ([`DEFAULT_CONNECT_TIMEOUT`]) | `connectTimeout` 10 s |
//! | idle pooled connection closed after | 90 s ([`DEFAULT_POOL_IDLE_TIMEOUT`]) | `idleTimeout` 1 h |
//!
//! The idle timeout is hyper-util's pool default rather than Istio's hour: a client that keeps an
//! idle connection longer than the server does races the server's close on reuse, and many
//! servers close idle connections after a minute or less.
//!
//! # DestinationRule connection settings
//!
//! A request carrying [`ConnectionSettings`] in its extensions (the
//! [`breaker`](crate::breaker) layer puts them there from the destination's
//! `trafficPolicy.connectionPool`) goes over pools built for those settings: one set of
//! pools per distinct settings, shared by every destination with the same settings, built on
//! first use (a small cache, read without a lock). Requests without settings use the default
//! pools: the only cost on their path is one look into the request's extensions.
//!
//! | Istio field | here |
//! |---|---|
//! | `tcp.connectTimeout` | the connect (and mutual-TLS handshake) timeout |
//! | `tcp.tcpKeepalive` | `SO_KEEPALIVE` with `time` ([`DEFAULT_KEEPALIVE_TIME`] when unset: one value must be given to the socket), `interval`, `probes` |
//! | `http.idleTimeout`, else `tcp.idleTimeout` | the pooled idle timeout; `0s` keeps idle connections |
//! | `http.maxRequestsPerConnection: 1` | HTTP/1.1 requests carry `Connection: close` and are never pooled |
//! | `http.maxRequestsPerConnection: N` | an HTTP/1.1 connection is closed (not given back to the pool) when its N-th response ends |
//! | `tcp.maxConnectionDuration` | an HTTP/1.1 connection is not given back to the pool, and an idle one is closed, once it is this old (Envoy drains it, waiting for requests in flight, too) |
//! | `http.maxConcurrentStreams` | HTTP/2: advertised in SETTINGS and used as the initial limit on streams to the server until its SETTINGS arrive; beyond the server's limit streams wait in h2 for a free one (one connection per endpoint) |
//! | `http.h2UpgradePolicy` | not applied: the protocol follows the request (HTTP/2 requests, e.g. gRPC, go over h2c, others over HTTP/1.1) as with `DO_NOT_UPGRADE`; `UPGRADE` would need to know the endpoint speaks h2c, and an HTTP/1.1 server without it would fail every request |
//! | `http.useClientProtocol` | what the mesh does anyway: the protocol follows the request |
//! | `tcp.maxConnections`, `http.http1MaxPendingRequests`, `http.http2MaxRequests`, `http.maxRetries` | the [`breaker`](crate::breaker) layer |
//!
//! A connection at its limit is closed by hyper once its last response has ended (the pool
//! drops its sender), so requests in flight are never cut. `maxRequestsPerConnection` and
//! `maxConnectionDuration` do not apply to HTTP/2 connections, which are shared by
//! concurrent streams.
//!
//! # Errors
//!
//! Retries decide on the kind of failure, so hyper's errors are mapped precisely:
//!
//! | condition | error |
//! |---|---|
//! | establishing the connection failed: refused, unreachable, DNS failure, connect timeout, TLS handshake or secure naming, an `https` URI | [`UpstreamConnectFailure`] (its source is the connector's error) |
//! | [`hyper::Error::is_canceled`]: the connection closed before the request was written (on a pooled connection the pool sends it on a new one first) | [`UpstreamReset`] `{ refused: true }` |
//! | [`hyper::Error::is_incomplete_message`] (EOF before a response) on a connection that carried a response before | [`UpstreamReset`] `{ refused: true }` |
//! | HTTP/1.1: the socket reset, aborted or broken (`ECONNRESET`, `EPIPE`) on a connection that carried a response before: the same race, when the server's TCP reset arrives before its end of stream is read | [`UpstreamReset`] `{ refused: true }` |
//! | HTTP/2 `RST_STREAM(REFUSED_STREAM)` received | [`UpstreamReset`] `{ refused: true }` |
//! | HTTP/2 `GOAWAY(NO_ERROR)` received, for a stream above its last stream id (not processed) | [`UpstreamReset`] `{ refused: true }` |
//! | [`hyper::Error::is_incomplete_message`] on a new connection | [`UpstreamReset`] `{ refused: false }` |
//! | any other HTTP/2 stream or connection error; the socket reset, aborted or broken; [`hyper::Error::is_closed`] | [`UpstreamReset`] `{ refused: false }` |
//! | anything else (a malformed response, the request body failing, an unsupported request) | the error itself |
//!
//! "Pooled" means the connection was taken from the idle list (it carried a response
//! before). An EOF or a reset in the middle of a response *head* on a pooled connection
//! cannot be told apart from one before any byte at this level, and counts as refused; so
//! does a pooled connection's server crashing while handling the request (rare next to the
//! idle-close race, and the price of retrying that race under the default policy).
//! hyper reports HTTP/2 reasons only as an `h2::Error` source, and h2 is not a direct
//! dependency: the two HTTP/2 cases are recognized by h2's error text (pinned by tests
//! against a raw HTTP/2 peer). Errors reading the response *body* surface from the body.
//!
//! # Readiness
//!
//! Always ready: a request waits for its connection in its response future.
//!
//! # Examples
//!
//! ```no_run
//! use mesh_tower::{body, connect::Connect};
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), mesh_core::BoxError> {
//! let connect = Connect::builder()
//!     .connect_timeout(std::time::Duration::from_secs(2))
//!     .build();
//! let req = http::Request::get("http://127.0.0.1:9080/health").body(body::empty())?;
//! let res = connect.oneshot(req).await?;
//! assert!(res.status().is_success());
//! # Ok(())
//! # }
//! ```
//!
//! [`UpstreamConnectFailure`]: crate::error::UpstreamConnectFailure
//! [`UpstreamReset`]: crate::error::UpstreamReset

mod classify;
mod dial;
pub mod future;
mod pool;
mod settings;

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, Version, uri::Authority};
use hyper::client::conn::{http1, http2};
use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::BoxError;

pub use self::settings::{ConnectionSettings, DEFAULT_KEEPALIVE_TIME, TcpKeepalive};
use self::{
    dial::Dial,
    future::ResponseFuture,
    pool::{Limits, Pool},
};
use crate::{
    body::Body,
    tls::{Alpn, IdentityWatch, MtlsConnector, TlsConnector, UpstreamTls},
};

/// How long establishing a connection may take (Istio's `connectTimeout` default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unused pooled connection is kept (hyper-util's default).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How many distinct [`ConnectionSettings`] get pools of their own; beyond, the cache starts
/// over (pools in use keep working until their requests end).
const MAX_CUSTOM_POOLS: usize = 64;

/// Sends requests to the address in their URI over pooled HTTP/1.1 or HTTP/2 connections.
/// See the [module docs](self).
///
/// # Clone
///
/// Clones share the connection pools.
#[derive(Clone, Debug)]
pub struct Connect {
    /// Behind one `Arc`: the stack clones its inner service per request (retries,
    /// readiness), so a clone must be cheap.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pools of destinations without connection settings.
    default: Arc<Pool>,
    /// How to build more pools.
    base: ConnectBuilder,
    /// Pools per distinct connection settings (copied on insert; read without a lock).
    custom: ArcSwap<foldhash::HashMap<ConnectionSettings, Arc<Pool>>>,
    /// Serializes inserts into `custom`.
    inserting: Mutex<()>,
}

/// Decides per new connection whether an endpoint gets mutual TLS.
pub type UpstreamTlsLookup = std::sync::Arc<dyn Fn(&Authority) -> UpstreamTls + Send + Sync>;

/// Configures a [`Connect`]; the last call of a setter wins.
#[must_use]
#[derive(Clone)]
pub struct ConnectBuilder {
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    mtls: Option<(IdentityWatch, UpstreamTlsLookup)>,
}

impl std::fmt::Debug for ConnectBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectBuilder")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("mutual_tls", &self.mtls.is_some())
            .finish()
    }
}

// === impl Connect ===

impl Connect {
    /// A connector with the defaults ([`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder starting from the defaults.
    pub fn builder() -> ConnectBuilder {
        ConnectBuilder {
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            pool_idle_timeout: Some(DEFAULT_POOL_IDLE_TIMEOUT),
            mtls: None,
        }
    }

    /// True if connections may use mutual TLS (built with [`ConnectBuilder::mutual_tls`]).
    pub fn is_mutual_tls(&self) -> bool {
        self.inner.base.mtls.is_some()
    }

    /// How many sets of pools with their own [`ConnectionSettings`] exist.
    pub fn custom_pools(&self) -> usize {
        self.inner.custom.load().len()
    }
}

impl Inner {
    /// The pools for `settings`, built on first use.
    fn pool_for(&self, settings: &ConnectionSettings) -> Arc<Pool> {
        if let Some(c) = self.custom.load().get(settings) {
            return c.clone();
        }
        let _guard = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.custom.load_full();
        if let Some(c) = current.get(settings) {
            return c.clone();
        }
        let pool = Arc::new(self.base.pool(Some(settings)));
        let mut next = if current.len() >= MAX_CUSTOM_POOLS {
            foldhash::HashMap::default()
        } else {
            (*current).clone()
        };
        next.insert(settings.clone(), pool.clone());
        self.custom.store(Arc::new(next));
        pool
    }
}

impl Default for Connect {
    fn default() -> Self {
        Self::new()
    }
}

impl tower::Service<Request<Body>> for Connect {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let h2 = match req.version() {
            Version::HTTP_2 => true,
            Version::HTTP_11 | Version::HTTP_10 => false,
            other => {
                let err =
                    format!("cannot send an {other:?} request: the mesh speaks HTTP/1 and HTTP/2");
                return ResponseFuture::failed(err.into());
            }
        };
        // Destinations with connection settings (from their DestinationRule) have pools of
        // their own; the others use the default pools.
        let Some(settings) = req.extensions().get::<ConnectionSettings>() else {
            return self.inner.default.send(req, h2);
        };
        let pool = self.inner.pool_for(settings);
        if !h2 && settings.one_request_per_connection() {
            // `maxRequestsPerConnection: 1`: no keep-alive.
            req.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        pool.send(req, h2)
    }
}

// === impl ConnectBuilder ===

impl ConnectBuilder {
    /// How long establishing a TCP connection may take; `None` waits for the operating
    /// system. A connection that is not established in time fails with
    /// [`UpstreamConnectFailure`](crate::error::UpstreamConnectFailure). A destination's
    /// `connectTimeout` ([`ConnectionSettings`]) overrides it.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How long an unused pooled connection is kept open; `None` keeps it until the server
    /// closes it. A destination's `idleTimeout` ([`ConnectionSettings`]) overrides it.
    pub fn pool_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = timeout.into();
        self
    }

    /// Connects with mutual TLS where `lookup` says so, presenting the certificate current
    /// in `identity` at each handshake (see the [module docs](self)). Without it every
    /// connection is plaintext.
    pub fn mutual_tls(
        mut self,
        identity: IdentityWatch,
        lookup: impl Fn(&Authority) -> UpstreamTls + Send + Sync + 'static,
    ) -> Self {
        self.mtls = Some((identity, std::sync::Arc::new(lookup)));
        self
    }

    /// Builds the connector. It spawns its connection tasks on the Tokio runtime it is used
    /// from.
    pub fn build(self) -> Connect {
        let default = Arc::new(self.pool(None));
        Connect {
            inner: Arc::new(Inner {
                default,
                base: self,
                custom: ArcSwap::default(),
                inserting: Mutex::new(()),
            }),
        }
    }

    /// The pools, with a destination's settings if given.
    fn pool(&self, settings: Option<&ConnectionSettings>) -> Pool {
        let connect_timeout = settings
            .and_then(ConnectionSettings::get_connect_timeout)
            .or(self.connect_timeout);
        let idle_timeout = settings
            .and_then(ConnectionSettings::get_idle_timeout)
            .unwrap_or(self.pool_idle_timeout);
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(connect_timeout);
        if let Some(ka) = settings.and_then(ConnectionSettings::get_keepalive) {
            tcp.set_keepalive(Some(ka.time.unwrap_or(DEFAULT_KEEPALIVE_TIME)));
            tcp.set_keepalive_interval(ka.interval);
            tcp.set_keepalive_retries(ka.probes);
        }
        let limits = Limits {
            idle_timeout,
            max_requests: settings
                .and_then(ConnectionSettings::get_max_requests_per_connection)
                .map(|n| u64::from(n.get()))
                .filter(|n| *n > 1),
            max_duration: settings.and_then(ConnectionSettings::get_max_connection_duration),
            one_per_connection: settings
                .is_some_and(ConnectionSettings::one_request_per_connection),
        };
        let h1 = http1::Builder::new();
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        if let Some(max) = settings.and_then(ConnectionSettings::get_max_concurrent_streams) {
            h2.initial_max_send_streams(usize::try_from(max).unwrap_or(usize::MAX))
                .max_concurrent_streams(max);
        }
        let (http1_dial, http2_dial): (Box<dyn Dial>, Box<dyn Dial>) = match &self.mtls {
            None => (Box::new(tcp.clone()), Box::new(tcp)),
            Some((identity, lookup)) => {
                let mut tls = TlsConnector::new(identity.clone());
                if let Some(timeout) = connect_timeout {
                    tls = tls.handshake_timeout(timeout);
                }
                let connector = |alpn: &'static [Alpn]| {
                    let lookup = lookup.clone();
                    MtlsConnector::with_connector(
                        tcp.clone(),
                        tls.clone().alpn(alpn),
                        move |a: &Authority| lookup(a),
                    )
                };
                (
                    Box::new(connector(&[Alpn::Http11])),
                    Box::new(connector(&[Alpn::H2])),
                )
            }
        };
        Pool::new(http1_dial, http2_dial, h1, h2, limits)
    }
}

#[cfg(test)]
mod tests;
