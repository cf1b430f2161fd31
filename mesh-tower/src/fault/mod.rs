//! Fault injection: delay and abort a share of requests, as Istio's `HTTPFaultInjection`.
//!
//! The delay and the abort are drawn independently, each with its own percentage
//! ([`PerMillion`], a uniform draw in `0..1_000_000`):
//!
//! - **Delay**: the request waits `fixedDelay` ([`tokio::time::sleep`]) before it goes on, and
//!   the response gets the [`DelayInjected`](crate::flags::ResponseFlag::DelayInjected) flag
//!   (`DI`).
//! - **Abort**: the inner service is never called. The layer answers with the configured HTTP
//!   status, body `fault filter abort` and `content-type: text/plain` (Envoy's local reply
//!   text). For a gRPC abort (`grpcStatus`), or any abort of a gRPC request
//!   (`content-type: application/grpc…`), it answers HTTP 200 with `content-type:
//!   application/grpc`, `grpc-status` and `grpc-message: fault filter abort` headers and an
//!   empty body (a trailers-only gRPC response); an HTTP status is turned into a gRPC code as
//!   Envoy does ([`grpc_code_for_http`]). The response gets the
//!   [`FaultInjected`](crate::flags::ResponseFlag::FaultInjected) flag (`FI`).
//!
//! When both are drawn the delay comes first, then the abort (as in Envoy), and the response
//! carries both flags.
//!
//! # Policy
//!
//! [`FaultLayer::from_target`] reads each request's policy from `route.fault` of the
//! [`Target`](crate::target::Target) in its extensions; a request without a `Target` or
//! without a fault policy passes through untouched. [`FaultLayer::new`] injects one static
//! policy into every request, for use without the route layer.
//!
//! # Stack position
//!
//! The fault layer sits **above** the retry layer, so an injected abort is never retried (in
//! Envoy too the fault filter answers before the router retries anything), and **below** the
//! route timeout layer, so an injected delay counts against the route timeout (see
//! [`timeout`](crate::timeout)).
//!
//! # Readiness
//!
//! `poll_ready` passes the inner service's readiness through, so back-pressure reaches the
//! caller. A delayed request must not hold the inner service's readiness (a concurrency permit,
//! a buffer slot) while it sleeps, so it does not use the service that was polled ready:
//! `call` clones the inner service and the response future drives *that clone* to readiness
//! after the sleep, then calls it. The original service stays ready for the next request. An
//! aborted request never touches the inner service at all. A request that is neither delayed
//! nor aborted is passed to the service that was polled ready, as usual.
//!
//! # Clone
//!
//! The inner service must be `Clone` (delayed requests use a clone, see above); wrap a
//! non-`Clone` service in [`tower::buffer::Buffer`].
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_core::policy::fault::{AbortWith, FaultPolicy, PerMillion};
//! use mesh_tower::{body, fault::FaultLayer, flags::{ResponseFlag, ResponseFlags}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! // Abort every request with 503; delay 10 % of them by 2 s first.
//! let policy = FaultPolicy {
//!     delay: Some((Duration::from_secs(2), PerMillion::from_percent(10.0))),
//!     abort: Some((AbortWith::Http(503), PerMillion::ALL)),
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(FaultLayer::new(policy))
//!     .service_fn(|_req: http::Request<body::Body>| async {
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! # tokio::time::pause();
//! let res = svc.oneshot(http::Request::new(body::empty())).await?;
//! assert_eq!(res.status(), 503);
//! assert!(ResponseFlags::of(&res).contains(ResponseFlag::FaultInjected));
//! # Ok(())
//! # }
//! ```
//!
//! [`PerMillion`]: mesh_core::policy::fault::PerMillion

pub mod future;
mod layer;
mod service;

pub use self::{
    layer::FaultLayer,
    service::{Fault, grpc_code_for_http},
};

/// The body (and `grpc-message`) of an injected abort: Envoy's text.
pub const ABORT_BODY: &str = "fault filter abort";

#[cfg(test)]
mod tests;
