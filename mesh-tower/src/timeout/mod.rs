//! The route timeout: a bound on the whole request, retries and back-offs included.
//!
//! Istio's `HTTPRoute.timeout` (no timeout unless set). The clock starts when the request
//! enters this layer and stops when the response *headers* arrive (a streaming response body
//! is not timed, as Envoy's route timeout). When it elapses first, the request fails with
//! [`RouteTimeout`], which [`rescue`](crate::rescue) turns into a 504 with the `UT` flag, and the
//! inner future (with every try still in flight) is dropped.
//!
//! # Policy
//!
//! [`RouteTimeoutLayer::from_target`] reads `route.timeout` of the
//! [`Target`] in each request's extensions; a request without a
//! `Target` or without a timeout is not timed. [`RouteTimeoutLayer::new`] applies one static
//! timeout to every request.
//!
//! # Injected delays count
//!
//! This layer sits **above** the [`fault`](crate::fault) layer, so an injected delay is part of
//! what it times: a 7 s fault delay under a 3 s route timeout fails with [`RouteTimeout`] after
//! 3 s. Envoy starts the route timeout in the router filter, *after* the fault filter, so there
//! the caller waits the full 7 s and then the request still has its 3 s. The mesh counts the
//! delay on purpose: the route timeout is the bound on what the caller waits, which is what a
//! fault-injection test of the caller's timeout handling wants to exercise. (Istio also notes
//! that timeouts and retries are not enabled when faults are configured on the client side;
//! the mesh keeps both.)
//!
//! # Readiness
//!
//! Readiness is the inner service's; the timeout starts at `call`, so time waiting for
//! readiness is not counted.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_tower::{body, error::RouteTimeout, timeout::RouteTimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # tokio::time::pause();
//! let svc = ServiceBuilder::new()
//!     .layer(RouteTimeoutLayer::new(Duration::from_secs(3)))
//!     .service_fn(|_req: http::Request<body::Body>| async {
//!         tokio::time::sleep(Duration::from_secs(10)).await;
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! let err = svc.oneshot(http::Request::new(body::empty())).await.unwrap_err();
//! assert!(err.is::<RouteTimeout>());
//! # }
//! ```

use std::{
    task::{Context, Poll},
    time::Duration,
};

use mesh_core::BoxError;
use tower::{Layer, Service};

use crate::{
    error::RouteTimeout,
    target::{Target, TimeoutSignal},
};

pub mod future;

use self::future::ResponseFuture;

/// Where a [`Timeout`] service finds the timeout of a request.
#[derive(Clone, Copy, Debug)]
enum Policy {
    Static(Duration),
    FromTarget,
}

/// Bounds each request by its route timeout; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct RouteTimeoutLayer {
    policy: Policy,
}

/// The route timeout service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    policy: Policy,
}

// === impl RouteTimeoutLayer ===

impl RouteTimeoutLayer {
    /// Bounds every request by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            policy: Policy::Static(timeout),
        }
    }

    /// Bounds each request by its route's `timeout` (`route.timeout` of its
    /// [`Target`]); requests without one are not timed.
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for RouteTimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            policy: self.policy,
        }
    }
}

// === impl Timeout ===

impl<S> Timeout<S> {
    /// Bounds every request sent to `inner` by `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        RouteTimeoutLayer::new(timeout).layer(inner)
    }

    /// Bounds each request sent to `inner` by its route's timeout.
    pub fn from_target(inner: S) -> Self {
        RouteTimeoutLayer::from_target().layer(inner)
    }

    /// A [`RouteTimeoutLayer`] bounding every request by `timeout`.
    pub fn layer(timeout: Duration) -> RouteTimeoutLayer {
        RouteTimeoutLayer::new(timeout)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for Timeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = match self.policy {
            Policy::Static(t) => Some(t),
            Policy::FromTarget => req
                .extensions()
                .get::<Target>()
                .and_then(Target::route)
                .and_then(|r| r.timeout),
        };
        let Some(timeout) = timeout else {
            return ResponseFuture::new(self.inner.call(req), None, None);
        };
        let mut req = req;
        let signal = TimeoutSignal::default();
        req.extensions_mut().insert(signal.clone());
        ResponseFuture::new(self.inner.call(req), Some(timeout), Some(signal))
    }
}

/// The error a request fails with when its route timeout elapses.
pub(crate) fn elapsed() -> BoxError {
    RouteTimeout(()).into()
}

#[cfg(test)]
mod tests;
