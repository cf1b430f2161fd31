//! The upstream connection: the leaf service of the outbound stack, which sends a request to
//! the address in its URI with hyper-util's pooling client.
//!
//! [`Connect`] holds two [`hyper_util::client::legacy::Client`]s that pool connections by
//! `scheme://authority` (the balancer puts the endpoint's `address:port` there): one speaks
//! HTTP/1.1 and one HTTP/2 with prior knowledge (h2c). A request whose
//! [`version`](http::Request::version) is `HTTP/2` (tonic sets it on every gRPC request) goes
//! to the HTTP/2 client, multiplexed on one connection per endpoint; any other to the
//! HTTP/1.1 client. Connections are TCP with `TCP_NODELAY`.
//!
//! # Mutual TLS
//!
//! Built with [`ConnectBuilder::mutual_tls`], the connections go through the mesh's
//! [`MtlsConnector`]: for each new connection a lookup (the mesh's is
//! [`tls::policy::upstream_tls`](crate::tls::policy::upstream_tls) on the current snapshot)
//! says whether the endpoint's `address:port` gets mutual TLS (and which identities it may
//! present) or plaintext. The pools are keyed by `scheme://authority` with the scheme always
//! `http`, so one endpoint is either TLS or plaintext for as long as its pooled connections
//! live; a policy change applies to new connections. The HTTP/1.1 client offers only
//! `http/1.1` with ALPN and the HTTP/2 client only `h2`, so the protocol is the same as in
//! plaintext. A refused handshake or a secure-naming failure is a connect failure
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
//! The idle timeout is hyper-util's default rather than Istio's hour: a client that keeps an
//! idle connection longer than the server does races the server's close on reuse, and many
//! servers close idle connections after a minute or less.
//!
//! # DestinationRule connection settings
//!
//! A request carrying [`ConnectionSettings`] in its extensions (the
//! [`breaker`](crate::breaker) layer puts them there from the destination's
//! `trafficPolicy.connectionPool`) goes over pools built for those settings. hyper-util
//! configures pools per client, so there is one pair of clients per distinct settings,
//! shared by every destination with the same settings, built on first use (a small cache,
//! read without a lock). Requests without settings use the default clients: the only cost on
//! their path is one look into the request's extensions.
//!
//! | Istio field | here |
//! |---|---|
//! | `tcp.connectTimeout` | the connect (and mutual-TLS handshake) timeout |
//! | `tcp.tcpKeepalive` | `SO_KEEPALIVE` with `time` ([`DEFAULT_KEEPALIVE_TIME`] when unset: one value must be given to the socket), `interval`, `probes` |
//! | `http.idleTimeout`, else `tcp.idleTimeout` | the pooled idle timeout; `0s` keeps idle connections |
//! | `http.maxRequestsPerConnection: 1` | HTTP/1.1 requests carry `Connection: close` and are never pooled |
//! | `http.maxRequestsPerConnection: N` | an HTTP/1.1 connection is closed once idle after its N-th response |
//! | `tcp.maxConnectionDuration` | an HTTP/1.1 connection is closed once idle after it is this old (Envoy drains it, waiting for requests in flight, too) |
//! | `http.maxConcurrentStreams` | HTTP/2: advertised in SETTINGS and used as the initial limit on streams to the server until its SETTINGS arrive; beyond the server's limit streams wait in h2 for a free one (one connection per endpoint) |
//! | `http.h2UpgradePolicy` | not applied: the protocol follows the request (HTTP/2 requests, e.g. gRPC, go over h2c, others over HTTP/1.1) as with `DO_NOT_UPGRADE`; `UPGRADE` would need to know the endpoint speaks h2c, and an HTTP/1.1 server without it would fail every request |
//! | `http.useClientProtocol` | what the mesh does anyway: the protocol follows the request |
//! | `tcp.maxConnections`, `http.http1MaxPendingRequests`, `http.http2MaxRequests`, `http.maxRetries` | the [`breaker`](crate::breaker) layer |
//!
//! An HTTP/1.1 connection is closed "once idle": when its last response has ended and no
//! request was written since, the connection's reader sees the end of the stream and hyper
//! closes it; a request the pool handed out at that moment is given back unsent and
//! hyper-util sends it on a new connection. `maxRequestsPerConnection` and
//! `maxConnectionDuration` do not apply to HTTP/2 connections, which are shared by
//! concurrent streams.
//!
//! # Errors
//!
//! Retries decide on the kind of failure, so hyper's errors are mapped precisely:
//!
//! | hyper / hyper-util condition | error |
//! |---|---|
//! | [`Error::is_connect`]: refused, unreachable, DNS failure, connect timeout | [`UpstreamConnectFailure`] |
//! | [`hyper::Error::is_canceled`]: the connection closed before the request was written (hyper gives the request back; it retries it itself on a pooled connection) | [`UpstreamReset`] `{ refused: true }` |
//! | [`hyper::Error::is_incomplete_message`] (EOF before a response) on a connection that carried a response before | [`UpstreamReset`] `{ refused: true }` |
//! | HTTP/2 `RST_STREAM(REFUSED_STREAM)` received | [`UpstreamReset`] `{ refused: true }` |
//! | HTTP/2 `GOAWAY(NO_ERROR)` received, for a stream above its last stream id (not processed) | [`UpstreamReset`] `{ refused: true }` |
//! | [`hyper::Error::is_incomplete_message`] on a new connection | [`UpstreamReset`] `{ refused: false }` |
//! | any other HTTP/2 stream or connection error; the socket reset, aborted or broken; [`hyper::Error::is_closed`] | [`UpstreamReset`] `{ refused: false }` |
//! | anything else (a malformed response, the request body failing, an unsupported request) | the error itself |
//!
//! "Pooled" is known from a tag the connector attaches to each connection, counting the
//! responses it carried. An EOF in the middle of a response *head* on a pooled connection
//! cannot be told apart from an EOF before any byte at this level, and counts as refused.
//! hyper reports HTTP/2 reasons only as an `h2::Error` source, and h2 is not a direct
//! dependency: the two HTTP/2 cases are recognized by h2's error text (pinned by tests
//! against a raw HTTP/2 peer). Errors reading the response *body* surface from the body.
//!
//! # Readiness
//!
//! Always ready: hyper-util's client queues requests for a connection itself.
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
//! [`Error::is_connect`]: hyper_util::client::legacy::Error::is_connect
//! [`UpstreamConnectFailure`]: crate::error::UpstreamConnectFailure
//! [`UpstreamReset`]: crate::error::UpstreamReset

mod classify;
pub mod future;
mod io;
mod settings;

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, Version, uri::Authority};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::BoxError;

pub use self::settings::{ConnectionSettings, DEFAULT_KEEPALIVE_TIME, TcpKeepalive};
use self::{
    future::ResponseFuture,
    io::{ConnLimits, Connector},
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
    /// Behind one `Arc`: a hyper client holds large configuration structs, and the stack
    /// clones its inner service per request (retries, readiness), so a clone must be cheap.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pools of destinations without connection settings.
    default: Clients,
    /// How to build more pools.
    base: ConnectBuilder,
    /// Pools per distinct connection settings (copied on insert; read without a lock).
    custom: ArcSwap<foldhash::HashMap<ConnectionSettings, Arc<Clients>>>,
    /// Serializes inserts into `custom`.
    inserting: Mutex<()>,
}

#[derive(Debug)]
enum Clients {
    Plain {
        http1: Client<Connector, Body>,
        http2: Client<Connector, Body>,
    },
    Mtls {
        http1: Client<Connector<MtlsConnector>, Body>,
        http2: Client<Connector<MtlsConnector>, Body>,
    },
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
        matches!(self.inner.default, Clients::Mtls { .. })
    }

    /// How many sets of pools with their own [`ConnectionSettings`] exist.
    pub fn custom_pools(&self) -> usize {
        self.inner.custom.load().len()
    }
}

impl Inner {
    /// The pools for `settings`, built on first use.
    fn clients_for(&self, settings: &ConnectionSettings) -> Arc<Clients> {
        if let Some(c) = self.custom.load().get(settings) {
            return c.clone();
        }
        let _guard = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.custom.load_full();
        if let Some(c) = current.get(settings) {
            return c.clone();
        }
        let clients = Arc::new(self.base.clients(Some(settings)));
        let mut next = if current.len() >= MAX_CUSTOM_POOLS {
            foldhash::HashMap::default()
        } else {
            (*current).clone()
        };
        next.insert(settings.clone(), clients.clone());
        self.custom.store(Arc::new(next));
        clients
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
        let endpoint = req.uri().authority().cloned();
        let h2 = req.version() == Version::HTTP_2;
        // Destinations with connection settings (from their DestinationRule) have pools of
        // their own; the others use the default pools.
        let custom = match req.extensions().get::<ConnectionSettings>() {
            None => None,
            Some(settings) => Some((
                self.inner.clients_for(settings),
                !h2 && settings.one_request_per_connection(),
            )),
        };
        let custom = custom.map(|(clients, close)| {
            if close {
                // `maxRequestsPerConnection: 1`: no keep-alive.
                req.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            clients
        });
        let clients = custom.as_deref().unwrap_or(&self.inner.default);
        let future = match clients {
            Clients::Plain { http1, http2 } => {
                if h2 {
                    http2.request(req)
                } else {
                    http1.request(req)
                }
            }
            Clients::Mtls { http1, http2 } => {
                if h2 {
                    http2.request(req)
                } else {
                    http1.request(req)
                }
            }
        };
        ResponseFuture::new(future, endpoint)
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
        let default = self.clients(None);
        Connect {
            inner: Arc::new(Inner {
                default,
                base: self,
                custom: ArcSwap::default(),
                inserting: Mutex::new(()),
            }),
        }
    }

    /// The HTTP/1.1 and HTTP/2 clients, with a destination's settings if given.
    fn clients(&self, settings: Option<&ConnectionSettings>) -> Clients {
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
        // Limits on the life of HTTP/1.1 connections (one request per connection is done
        // with `Connection: close` instead).
        let limits = settings.map_or_else(ConnLimits::default, |s| ConnLimits {
            max_requests: s
                .get_max_requests_per_connection()
                .map(|n| u64::from(n.get()))
                .filter(|n| *n > 1),
            max_duration: s.get_max_connection_duration(),
        });
        let max_streams = settings.and_then(ConnectionSettings::get_max_concurrent_streams);
        let builder = |http2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2_only);
            if let Some(max) = max_streams.filter(|_| http2_only) {
                b.http2_initial_max_send_streams(usize::try_from(max).unwrap_or(usize::MAX))
                    .http2_max_concurrent_streams(max);
            }
            if settings.is_some_and(ConnectionSettings::one_request_per_connection) && !http2_only {
                b.pool_max_idle_per_host(0);
            }
            b
        };
        match &self.mtls {
            None => {
                let connector = Connector::new(tcp);
                Clients::Plain {
                    http1: builder(false).build(connector.clone().with_limits(limits)),
                    http2: builder(true).build(connector),
                }
            }
            Some((identity, lookup)) => {
                let mut tls = TlsConnector::new(identity.clone());
                if let Some(timeout) = connect_timeout {
                    tls = tls.handshake_timeout(timeout);
                }
                let connector = |alpn: &'static [Alpn]| {
                    let lookup = lookup.clone();
                    Connector::new(MtlsConnector::with_connector(
                        tcp.clone(),
                        tls.clone().alpn(alpn),
                        move |a: &Authority| lookup(a),
                    ))
                };
                Clients::Mtls {
                    http1: builder(false).build(connector(&[Alpn::Http11]).with_limits(limits)),
                    http2: builder(true).build(connector(&[Alpn::H2])),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
