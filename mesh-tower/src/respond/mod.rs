//! Redirects and direct responses: routes that answer instead of forwarding.
//!
//! For a route whose action is [`Action::Redirect`], the layer answers with the redirect's
//! status (301 unless set) and a `Location` built as Envoy builds it ([`redirect_location`]).
//! For [`Action::DirectResponse`] it answers with the status and body, with
//! `content-type: text/plain` when the body is not empty. Neither calls the inner service;
//! requests of forwarding routes go on untouched.
//!
//! # Policy
//!
//! [`RespondLayer::from_target`] reads `route.action` of the
//! [`Target`] in each request's extensions; a request without a
//! `Target` passes through. [`RespondLayer::redirect`] and [`RespondLayer::direct_response`]
//! answer every request the same way, for use without the route layer.
//!
//! # Readiness
//!
//! Readiness is the inner service's; a request answered here leaves it ready for the next.
//!
//! # Examples
//! ```
//! use mesh_core::snapshot::route::Redirect;
//! use mesh_tower::{body, respond::RespondLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let redirect = Redirect {
//!     uri: Some("/v1/bookRatings".into()),
//!     prefix_rewrite: None,
//!     authority: Some("newratings.default.svc.cluster.local".into()),
//!     port: None,
//!     derive_port: None,
//!     scheme: Some("https".into()),
//!     code: 301,
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(RespondLayer::redirect(redirect))
//!     .service_fn(|_req: http::Request<body::Body>| async {
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! let req = http::Request::get("http://ratings:9080/v1/getProductRatings?id=1")
//!     .body(body::empty())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 301);
//! assert_eq!(
//!     res.headers()["location"],
//!     "https://newratings.default.svc.cluster.local/v1/bookRatings?id=1",
//! );
//! # Ok(())
//! # }
//! ```
//!
//! A direct response:
//! ```
//! use mesh_tower::{body, respond::RespondLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(RespondLayer::direct_response(http::StatusCode::SERVICE_UNAVAILABLE, "down for maintenance"))
//!     .service_fn(|_req: http::Request<body::Body>| async {
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! let res = svc.oneshot(http::Request::new(body::empty())).await?;
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["content-type"], "text/plain");
//! # Ok(())
//! # }
//! ```
//!
//! [`Action::Redirect`]: mesh_core::snapshot::Action::Redirect
//! [`Action::DirectResponse`]: mesh_core::snapshot::Action::DirectResponse

mod location;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::{self, Either, Ready};
use http::{HeaderValue, StatusCode};
use mesh_core::snapshot::{Action, route::Redirect};
use tower::{Layer, Service};

pub use self::location::{redirect_location, redirect_location_with_prefix};
use crate::{
    body::{self, Body},
    target::Target,
};

/// How a [`Respond`] service answers.
#[derive(Clone, Debug)]
enum Policy {
    Redirect(Arc<Redirect>),
    Direct { status: StatusCode, body: Bytes },
    FromTarget,
}

/// Answers requests of redirect and direct-response routes; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RespondLayer {
    policy: Policy,
}

/// The respond service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
    policy: Policy,
}

/// The response future of a [`Respond`] service: the inner service's, or the answer.
pub type ResponseFuture<F, E> = Either<F, Ready<Result<http::Response<Body>, E>>>;

// === impl RespondLayer ===

impl RespondLayer {
    /// Answers every request with `redirect`. A `prefix_rewrite` replaces the leading `/` of
    /// the path, as for an Istio rule without a `uri` match (see
    /// [`redirect_location_with_prefix`]).
    pub fn redirect(redirect: Redirect) -> Self {
        Self {
            policy: Policy::Redirect(Arc::new(redirect)),
        }
    }

    /// Answers every request with `status` and `body`.
    pub fn direct_response(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            policy: Policy::Direct {
                status,
                body: body.into(),
            },
        }
    }

    /// Answers the requests whose route (`route.action` of their [`Target`]) is a redirect
    /// or a direct response; forwards the others.
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Respond {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Respond ===

impl<S> Respond<S> {
    /// Answers the requests sent to `inner` whose route is a redirect or a direct response.
    pub fn from_target(inner: S) -> Self {
        RespondLayer::from_target().layer(inner)
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

impl<S, B> Service<http::Request<B>> for Respond<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = match &self.policy {
            Policy::Redirect(r) => Some(redirect_response(
                r.code,
                &location::redirect_location_with_prefix(r, Some("/"), &req),
            )),
            Policy::Direct { status, body } => Some(direct_response(*status, body.clone())),
            Policy::FromTarget => {
                let target = req.extensions().get::<Target>();
                match target.and_then(|t| t.route().map(|r| (t, r))) {
                    Some((t, route)) => match &route.action {
                        Action::Redirect(r) => Some(redirect_response(
                            r.code,
                            &redirect_location(r, route, t.match_index, &req),
                        )),
                        Action::DirectResponse { status, body } => Some(direct_response(
                            StatusCode::from_u16(*status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                            Bytes::from_owner(body.clone()),
                        )),
                        Action::Forward(_) | Action::Delegate(_) => None,
                    },
                    None => None,
                }
            }
        };
        match answer {
            Some(res) => Either::Right(future::ready(Ok(res))),
            None => Either::Left(self.inner.call(req)),
        }
    }
}

fn redirect_response(code: u16, location: &str) -> http::Response<Body> {
    let mut res = http::Response::new(body::empty());
    match HeaderValue::from_str(location) {
        Ok(v) => {
            *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            res.headers_mut().insert(http::header::LOCATION, v);
        }
        Err(_) => {
            tracing::debug!(
                location,
                "respond: the redirect location is not a valid header"
            );
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    res
}

fn direct_response(status: StatusCode, bytes: Bytes) -> http::Response<Body> {
    let empty = bytes.is_empty();
    let mut res = http::Response::new(body::full(bytes));
    *res.status_mut() = status;
    if !empty {
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    res
}

#[cfg(test)]
mod tests;
