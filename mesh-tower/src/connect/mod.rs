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

use std::{
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response, Version, uri::Authority};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::BoxError;

use self::{future::ResponseFuture, io::Connector};
use crate::{
    body::Body,
    tls::{Alpn, IdentityWatch, MtlsConnector, TlsConnector, UpstreamTls},
};

/// How long establishing a connection may take (Istio's `connectTimeout` default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unused pooled connection is kept (hyper-util's default).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
    clients: std::sync::Arc<Clients>,
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
        matches!(*self.clients, Clients::Mtls { .. })
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let endpoint = req.uri().authority().cloned();
        let h2 = req.version() == Version::HTTP_2;
        let future = match &*self.clients {
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
    /// [`UpstreamConnectFailure`](crate::error::UpstreamConnectFailure).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How long an unused pooled connection is kept open; `None` keeps it until the server
    /// closes it.
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
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(self.connect_timeout);
        let builder = |http2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(self.pool_idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2_only);
            b
        };
        let clients = match self.mtls {
            None => {
                let connector = Connector(tcp);
                Clients::Plain {
                    http1: builder(false).build(connector.clone()),
                    http2: builder(true).build(connector),
                }
            }
            Some((identity, lookup)) => {
                let mut tls = TlsConnector::new(identity);
                if let Some(timeout) = self.connect_timeout {
                    tls = tls.handshake_timeout(timeout);
                }
                let connector = |alpn: &'static [Alpn]| {
                    let lookup = lookup.clone();
                    Connector(MtlsConnector::with_connector(
                        tcp.clone(),
                        tls.clone().alpn(alpn),
                        move |a: &Authority| lookup(a),
                    ))
                };
                Clients::Mtls {
                    http1: builder(false).build(connector(&[Alpn::Http11])),
                    http2: builder(true).build(connector(&[Alpn::H2])),
                }
            }
        };
        Connect {
            clients: std::sync::Arc::new(clients),
        }
    }
}

#[cfg(test)]
mod tests;
