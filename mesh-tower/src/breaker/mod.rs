//! Circuit breaking: a DestinationRule's `trafficPolicy.connectionPool` limits, enforced per
//! cluster as Envoy's circuit breakers do.
//!
//! A *cluster* is what Envoy calls `outbound|port|subset|host`: a destination host, the
//! subset the route chose and the service port. Its limits come from the DestinationRule,
//! merged as Istio merges it ([`connection_pool_settings`]): the rule's `connectionPool`;
//! a `portLevelSettings` entry for the port *replaces* it; the subset's policy (only when a
//! route targets the subset) replaces that; the subset's port-level entry replaces all.
//! Clusters share nothing: a full `reviews` v1 does not slow `reviews` v2.
//!
//! | Istio field | Envoy threshold | here | unset |
//! |---|---|---|---|
//! | `http.http2MaxRequests` | `max_requests` | requests in flight (HTTP/1.1 and HTTP/2, pending ones included); one more fails at once | unlimited |
//! | `tcp.maxConnections` | `max_connections` | HTTP/1.1 requests in flight: each occupies a connection until its response body ends; one more waits as *pending* | unlimited |
//! | `http.http1MaxPendingRequests` | `max_pending_requests` | requests waiting for a connection slot (first come, first served); one more fails at once | unlimited |
//! | `http.maxRetries` | `max_retries` | retries in flight; one more fails at once | unlimited |
//!
//! The connection side of `connectionPool` (`connectTimeout`, `tcpKeepalive`, `idleTimeout`,
//! `maxRequestsPerConnection`, `maxConnectionDuration`, `maxConcurrentStreams`) is applied
//! by [`connect`](crate::connect): this layer resolves it with the limits and hands it down
//! in the request's extensions as a [`ConnectionSettings`].
//!
//! Slots are held by the response future and then by the response body, and given back when
//! the body ends or either is dropped (RAII): a request that times out above, or a caller
//! that goes away, never leaks a slot. A pending request waits until a slot frees, bounded
//! only by the timeouts above it (the route timeout and the per-try timeout, as Envoy bounds
//! pending requests by the route timeout).
//!
//! Each try counts: the layer sits below [`retry`](crate::retry), so a retry takes its own
//! slots (and a retry slot: a try is a retry when the request's
//! [`TriedEndpoints`] already lists an endpoint, so
//! `maxRetries` applies when `retryIgnorePreviousHosts` is on, the default). When the
//! [`retry`](crate::retry) layer shares the breakers
//! ([`RetryLayer::with_breakers`](crate::retry::RetryLayer::with_breakers), as the mesh's
//! client does), it takes the retry slot when it decides to retry, as Envoy does: a retry
//! over `maxRetries` is not made, and the caller gets the response it has, with the `UO`
//! flag.
//!
//! A request whose destination has no limits costs one pointer comparison while no
//! DestinationRule of the snapshot has a `connectionPool`, and one lookup of the
//! destination's rule otherwise.
//!
//! # Differences from Envoy
//!
//! - `maxConnections` limits HTTP/1.1 *requests in flight* to the cluster rather than
//!   connections: the connection pool ([`connect`](crate::connect)) opens a connection per
//!   concurrent HTTP/1.1 request, so bounding concurrent requests bounds busy connections (idle pooled
//!   connections are not counted). HTTP/2 requests multiplex on one connection per endpoint
//!   and are not limited by it.
//!
//! # Errors
//!
//! A request over a limit fails at once with
//! [`UpstreamOverflow`](crate::error::UpstreamOverflow), which
//! [`rescue`](crate::rescue) answers with `503`, flag `UO`, body `upstream connect error or
//! disconnect/reset before headers. reset reason: overflow` and `x-envoy-overloaded: true`,
//! as Envoy does. The retry layer does not retry it (Envoy does not retry an overflow).
//! Errors of the inner service pass through.
//!
//! # Readiness
//!
//! Ready when the inner service is: the limits depend on each request's destination, known
//! only in `call`, so a pending request waits in the response future, not in `poll_ready`.
//!
//! # Examples
//!
//! ```
//! use mesh_tower::breaker::{CircuitBreakerLayer, CircuitBreakers, PoolLimits};
//!
//! // Per request, from the route layer's `Target`, with the mesh's shared counters:
//! let breakers = CircuitBreakers::new();
//! let per_destination = CircuitBreakerLayer::from_target().with_breakers(breakers);
//!
//! // Fixed limits for every request, without the route layer (Istio's circuit-breaking task):
//! let fixed = CircuitBreakerLayer::new(
//!     PoolLimits::UNLIMITED.max_connections(1).max_pending_requests(1),
//! );
//! # let _ = (per_destination, fixed);
//! ```
//!
//! [`ConnectionSettings`]: crate::connect::ConnectionSettings

mod future;
mod limits;
mod state;

#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, Version};
use mesh_core::BoxError;
use tower::{Layer, Service};

use self::state::{Admission, Cluster, RetrySlot};
pub(crate) use self::state::{RetryAdmission, RetryPermit};
pub use self::{
    future::ResponseFuture,
    limits::{PoolLimits, connection_pool_settings},
    state::{CircuitBreakers, Usage},
};
use crate::{
    body::Body,
    connect::ConnectionSettings,
    target::{Target, TriedEndpoints},
};

/// Where a breaker's limits come from.
#[derive(Clone, Debug)]
enum Mode {
    /// The request's [`Target`]: its destination's DestinationRule.
    Target,
    /// One cluster for every request.
    Fixed(Arc<Cluster>),
}

/// Builds [`CircuitBreaker`] services; see the [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct CircuitBreakerLayer {
    breakers: CircuitBreakers,
    mode: Mode,
}

/// Limits the requests in flight to each cluster; see the [module docs](self).
///
/// # Clone
///
/// Clones share the counters. A request that has to wait for a slot takes the service that
/// was polled ready and leaves a clone in its place, so the inner service must be `Clone`.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    breakers: CircuitBreakers,
    mode: Mode,
}

// === impl CircuitBreakerLayer ===

impl CircuitBreakerLayer {
    /// Limits each request by its [`Target`]'s DestinationRule `connectionPool` (for its
    /// subset and port), with counters of its own; requests without a `Target`, or whose
    /// destination sets no limits, pass through. Share the mesh's counters with
    /// [`with_breakers`](Self::with_breakers).
    pub fn from_target() -> Self {
        Self {
            breakers: CircuitBreakers::new(),
            mode: Mode::Target,
        }
    }

    /// Limits every request with `limits`, as one cluster shared by all services this layer
    /// makes.
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            breakers: CircuitBreakers::new(),
            mode: Mode::Fixed(Arc::new(Cluster::new("fixed", None, 0, limits))),
        }
    }

    /// Counts in `breakers` (shared by every stack of a mesh). The last call wins.
    pub fn with_breakers(mut self, breakers: CircuitBreakers) -> Self {
        self.breakers = breakers;
        self
    }

    /// The counters of the clusters of [`from_target`](Self::from_target).
    pub fn breakers(&self) -> &CircuitBreakers {
        &self.breakers
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breakers: self.breakers.clone(),
            mode: self.mode.clone(),
        }
    }
}

// === impl CircuitBreaker ===

impl<S> CircuitBreaker<S> {
    /// Limits `inner`'s requests with `limits` (see [`CircuitBreakerLayer::new`]).
    pub fn new(inner: S, limits: PoolLimits) -> Self {
        CircuitBreakerLayer::new(limits).layer(inner)
    }

    /// The layer reading limits from each request's [`Target`].
    pub fn layer() -> CircuitBreakerLayer {
        CircuitBreakerLayer::from_target()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cluster limiting `req`, if any; puts the destination's connection settings into
    /// `req`'s extensions.
    fn cluster_for(&self, req: &mut Request<Body>) -> Option<Arc<Cluster>> {
        let target = match &self.mode {
            Mode::Fixed(cluster) => return Some(cluster.clone()),
            Mode::Target => req.extensions().get::<Target>()?,
        };
        let pool = self.breakers.pool_of(target)?;
        let cluster = self.breakers.cluster_under(target, pool);
        if let Some(settings) = ConnectionSettings::from_istio(pool) {
            req.extensions_mut().insert(settings);
        }
        cluster
    }
}

/// True if this try follows another one of the same request.
fn is_retry(req: &Request<Body>) -> bool {
    req.extensions()
        .get::<TriedEndpoints>()
        .is_some_and(|t| !t.is_empty())
}

impl<S> Service<Request<Body>> for CircuitBreaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(cluster) = self.cluster_for(&mut req) else {
            return ResponseFuture::called(self.inner.call(req), None);
        };
        let http1 = req.version() != Version::HTTP_2;
        let retry = match req.extensions_mut().remove::<RetryPermit>() {
            Some(permit) => RetrySlot::Held(permit),
            None if is_retry(&req) => RetrySlot::Take,
            None => RetrySlot::None,
        };
        match cluster.admit(http1, retry) {
            Admission::Admitted(permits) => {
                ResponseFuture::called(self.inner.call(req), Some(permits))
            }
            Admission::Pending {
                permits,
                pending,
                acquire,
            } => {
                // The service polled ready goes with the request; a clone stays.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(acquire, pending, permits, ready, req)
            }
            Admission::Overflow(overflow) => {
                self.breakers.record_overflow();
                ResponseFuture::failed(overflow.into())
            }
        }
    }
}
