//! Header operations and URI/authority rewrites: what a route does to a request it forwards.
//!
//! Two layers live here, because both only edit the request (and, for headers, the
//! response) on its way through:
//!
//! - [`HeaderOpsLayer`]: Istio's `headers` `{request, response} {set, add, remove}`. On the
//!   request before the inner service is called, on the response when it comes back:
//!   `remove` first, then `set` (overwrite), then `add` (append another value: Envoy appends a
//!   new header value, which HTTP treats as the same as Istio's "comma-joined").
//!   [`HeaderOpsLayer::from_target`] applies the chosen destination's operations
//!   ([`DestinationHeaders`], put into the request's extensions by the route layer) and then the
//!   route's (`route.headers`), so on a conflict the route's `set` wins, as in Envoy, where
//!   headers of a weighted cluster are applied before those of the enclosing route.
//! - [`RewriteLayer`]: Istio's `rewrite`. The path becomes
//!   [`Route::rewrite_path`](mesh_core::snapshot::Route::rewrite_path) of the match entry that
//!   matched (a `uri` rewrite replaces the matched prefix, or the whole path for other
//!   matches; `uriRegexRewrite` substitutes capture groups), keeping the query string; the
//!   original path and query go into `x-envoy-original-path`, as Envoy does. `authority`
//!   replaces the URI authority and the `Host` header. The routing decision was made before
//!   this layer (the [`Target`] names the destination), so an authority rewrite only changes
//!   what the upstream sees, never where the request goes.
//!
//! Both layers are always as ready as the inner service and never fail on their own: a
//! rewrite that would produce an invalid URI or header is skipped (logged at debug), a
//! request without a [`Target`] under a `from_target` layer passes through untouched.
//!
//! # Examples
//! ```
//! use mesh_core::snapshot::route::HeaderOps;
//! use mesh_tower::{body, headers::HeaderOpsLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let ops = HeaderOps {
//!     request_set: vec![("x-version".parse()?, "v2".parse()?)],
//!     response_remove: vec!["server".parse()?],
//!     ..HeaderOps::default()
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(HeaderOpsLayer::new(ops))
//!     .service_fn(|req: http::Request<body::Body>| async move {
//!         assert_eq!(req.headers()["x-version"], "v2");
//!         let mut res = http::Response::new(body::empty());
//!         res.headers_mut().insert("server", "app".parse()?);
//!         Ok::<_, mesh_core::BoxError>(res)
//!     });
//! let res = svc.oneshot(http::Request::new(body::empty())).await?;
//! assert!(res.headers().get("server").is_none());
//! # Ok(())
//! # }
//! ```
//!
//! A static rewrite:
//! ```
//! use mesh_core::snapshot::route::Rewrite;
//! use mesh_tower::{body, headers::RewriteLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let rewrite = Rewrite {
//!     uri: Some("/v2/".into()),
//!     authority: Some("reviews-v2:9080".into()),
//!     uri_regex: None,
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(RewriteLayer::new(rewrite, Some("/v1/".into())))
//!     .service_fn(|req: http::Request<body::Body>| async move {
//!         assert_eq!(req.uri().to_string(), "http://reviews-v2:9080/v2/ratings?x=1");
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! let req = http::Request::get("http://reviews:9080/v1/ratings?x=1").body(body::empty())?;
//! svc.oneshot(req).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Target`]: crate::target::Target

pub mod future;
mod ops;
mod rewrite;

pub use self::{
    ops::{HeaderOps, HeaderOpsLayer},
    rewrite::{Rewrite, RewriteLayer},
};
/// The header operations of the destination the route layer picked, in a request's
/// extensions (defined in [`target`](crate::target), re-exported here).
pub use crate::target::DestinationHeaders;

/// The header Envoy records a rewritten request's original path (and query) in.
pub const ORIGINAL_PATH: http::HeaderName = http::HeaderName::from_static("x-envoy-original-path");

#[cfg(test)]
mod tests;
