//! Retry failed requests: Istio's `HTTPRetry` with Envoy's `retry_on` vocabulary, a per-try
//! timeout, fully jittered exponential back-off and a per-destination retry budget.
//!
//! [`Retry`] sends a request to the inner service (the balancer) and looks at what came back:
//! a response, or an error it recognizes in the source chain
//! ([`UpstreamConnectFailure`], [`UpstreamReset`], [`PerTryTimeout`]). If the request's
//! [`RetryPolicy`] calls that outcome retriable ([`RetryPolicy::retriable`]), tries are left
//! and the destination's budget allows it, it sleeps a jittered back-off and sends the request
//! again. Otherwise it returns what it got: the last response as is, or the last error.
//!
//! # Policy
//!
//! [`RetryLayer::from_target`] reads the policy of each request from the
//! [`Target`](crate::target::Target) the route layer put into its extensions:
//! `route.retries`, or [`RetryPolicy::MeshDefault`] for the default route (no VirtualService
//! rule matched). A request without a `Target` passes through untouched.
//! [`RetryLayer::new`] uses one static policy for every request, for use without the route
//! layer.
//!
//! - **Tries**: `attempts` retries after the first try; `attempts: 0` disables retries.
//! - **Per-try timeout**: `perTryTimeout` bounds every try, the first included, until the
//!   response headers arrive (a streaming response body is not timed); when it elapses the
//!   try fails with [`PerTryTimeout`], which `5xx`, `gateway-error` and `reset` retry. The
//!   route timeout (the timeout layer above this one) bounds all tries and back-offs together.
//! - **Conditions**: Envoy's, listed in [`RetryOn::matches`]. gRPC conditions read
//!   `grpc-status` from the response *headers* only (a trailers-only gRPC answer), as Envoy
//!   does: a status in the trailers arrives after the response was already passed on.
//!   Unrecognized errors are never retried.
//! - **Back-off**: before retry `n` the layer sleeps a uniformly random duration below
//!   [`backoff_ceiling`]`(n, base)` = `min((2^n − 1) × base, 10 × base)`, `base` = the policy's
//!   `backoff` (25 ms unless set), so 250 ms at most by default.
//! - **Other endpoints**: unless `retryIgnorePreviousHosts: false`, the retries' request
//!   extensions get a [`TriedEndpoints`] (or keep the one already there) that every try shares,
//!   seeded with the first try's endpoint (from its response's
//!   [`PickedEndpoint`](crate::target::PickedEndpoint) or its connect or reset error); the
//!   balancer records its picks there and prefers endpoints not tried yet. With a per-try
//!   timeout the first try gets it too, as a timed-out try leaves no outcome to read.
//! - **Outcome**: when a retry was wanted but the tries or the budget ran out, the last
//!   response gets the [`UpstreamRetryLimitExceeded`](crate::flags::ResponseFlag::UpstreamRetryLimitExceeded)
//!   flag (`URX`), as Envoy sets it. An error is returned as it came.
//!
//! # Differences from Istio
//!
//! Without a `retries` block Istio retries twice on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503 as
//! the status code, for every method. A POST that reached the application and got a 503 is
//! sent again, and a non-idempotent operation may run twice. The mesh's default
//! ([`mesh_default_retriable`]) also retries twice, but only:
//!
//! - failures where the request never reached the application: a connect failure
//!   ([`UpstreamConnectFailure`]) or a refused stream ([`UpstreamReset`] with `refused`: HTTP/2
//!   `REFUSED_STREAM`, or a pooled connection closed before the request was written), for any
//!   method;
//! - a 503 response for idempotent methods only (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
//!
//! gRPC `UNAVAILABLE` and `CANCELLED` are not retried by default (every gRPC call is a POST
//! that reached the application). An explicit `retries` block is obeyed exactly as written,
//! and one without `retryOn` gets Istio's list, so the Istio behaviour is one line of YAML
//! away.
//!
//! # Bodies
//!
//! A retry resends the request, so the body must be kept. A body whose size is known to be
//! at most [`MAX_REPLAY_BODY`] (64 KiB, from the body's size hint or `content-length`) is
//! read whole before the first try and replayed byte for byte (trailers included) on every
//! try. Any other body (streaming, unknown size, or larger) is sent once, without retries:
//! Envoy similarly stops retrying a request whose body overflowed its buffer. Reading the body
//! first means the first try starts once the client has sent the whole (small) body.
//!
//! # Retry budget
//!
//! A budget, not just a count, stops a retry storm: when an upstream fails every request,
//! each of `N` concurrent callers retrying twice would triple its load. Per destination host
//! (one budget for requests without a [`Target`](crate::target::Target)), a retry may start
//! only while the retries in flight stay below `max(min_retry_concurrency, percent × active
//! requests)`: 20 % and 3 by default, overridden by the DestinationRule's
//! `trafficPolicy.retryBudget` ([`RetryBudget`]). A request is active from `call` until its
//! response future completes; a retry is in flight from the decision to retry (its back-off
//! included) until its try completes. The counters live in a shared [`RetryBudgets`]
//! registry (one per mesh), [`RetryStats`] counts retries and refusals for telemetry.
//!
//! # Readiness and `Clone`
//!
//! `poll_ready` is the inner service's. The first try goes to the service that was polled
//! ready (`call` swaps in a clone for the next request, as tower recommends); later tries
//! wait for that service's readiness again, within the per-try timeout.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_core::policy::retry::{ExplicitRetry, RetryOn, RetryPolicy};
//! use mesh_tower::{body, retry::RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let policy = RetryPolicy::Explicit(ExplicitRetry {
//!     attempts: 3,
//!     per_try_timeout: Some(Duration::from_secs(2)),
//!     retry_on: RetryOn::parse("gateway-error,connect-failure")?,
//!     backoff: Duration::from_millis(25),
//!     retry_ignore_previous_hosts: true,
//! });
//! let layer = RetryLayer::new(policy);
//! let stats = layer.stats().clone();
//!
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(move |_req| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 503 } else { 200 }; // fails once
//!         let res = http::Response::builder().status(status).body(body::empty())?;
//!         Ok::<_, mesh_core::BoxError>(res)
//!     }
//! }));
//!
//! let res = svc.oneshot(http::Request::new(body::full("hello"))).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(stats.retries(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`RetryPolicy`]: mesh_core::policy::retry::RetryPolicy
//! [`RetryPolicy::retriable`]: mesh_core::policy::retry::RetryPolicy::retriable
//! [`RetryPolicy::MeshDefault`]: mesh_core::policy::retry::RetryPolicy::MeshDefault
//! [`RetryOn::matches`]: mesh_core::policy::retry::RetryOn::matches
//! [`RetryBudget`]: mesh_core::policy::retry::RetryBudget
//! [`backoff_ceiling`]: mesh_core::policy::retry::backoff_ceiling
//! [`mesh_default_retriable`]: mesh_core::policy::retry::mesh_default_retriable
//! [`UpstreamConnectFailure`]: crate::error::UpstreamConnectFailure
//! [`UpstreamReset`]: crate::error::UpstreamReset
//! [`PerTryTimeout`]: crate::error::PerTryTimeout
//! [`TriedEndpoints`]: crate::target::TriedEndpoints

mod body;
mod budget;
mod classify;
pub mod future;
mod layer;
mod service;
mod stats;

pub use self::{
    body::MAX_REPLAY_BODY,
    budget::{HostBudget, RetryBudgets},
    layer::RetryLayer,
    service::Retry,
    stats::RetryStats,
};

#[cfg(test)]
mod tests;
