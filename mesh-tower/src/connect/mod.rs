//! The upstream connection: the leaf service of the outbound stack, which sends a request to
//! the address in its URI with hyper-util's pooling client.
//!
//! [`Connect`] holds two [`hyper_util::client::legacy::Client`]s that pool connections by
//! `scheme://authority` (the balancer puts the endpoint's `address:port` there): one speaks
//! HTTP/1.1 and one HTTP/2 with prior knowledge (h2c). A request whose
//! [`version`](http::Request::version) is `HTTP/2` (tonic sets it on every gRPC request) goes
//! to the HTTP/2 client, multiplexed on one connection per endpoint; any other to the
//! HTTP/1.1 client. Connections are plain TCP with `TCP_NODELAY` (mutual TLS comes later).
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

use http::{Request, Response, Version};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh_core::BoxError;

use self::{future::ResponseFuture, io::Connector};
use crate::body::Body;

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
struct Clients {
    http1: Client<Connector, Body>,
    http2: Client<Connector, Body>,
}

/// Configures a [`Connect`]; the last call of a setter wins.
#[must_use]
#[derive(Clone, Debug)]
pub struct ConnectBuilder {
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
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
        }
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
        let client = if req.version() == Version::HTTP_2 {
            &self.clients.http2
        } else {
            &self.clients.http1
        };
        ResponseFuture::new(client.request(req), endpoint)
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

    /// Builds the connector. It spawns its connection tasks on the Tokio runtime it is used
    /// from.
    pub fn build(self) -> Connect {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(self.connect_timeout);
        let connector = Connector(tcp);
        let client = |http2_only: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(self.pool_idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2_only)
                .build(connector.clone())
        };
        Connect {
            clients: std::sync::Arc::new(Clients {
                http1: client(false),
                http2: client(true),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
