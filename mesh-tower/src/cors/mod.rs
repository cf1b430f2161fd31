//! CORS: Istio's `corsPolicy`, answered as Envoy's CORS filter does.
//!
//! For a request whose `Origin` header matches one of `allowOrigins` (a list of
//! [`StringMatcher`]s):
//!
//! - a **preflight** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!   directly, without calling the inner service: `200` with `Access-Control-Allow-Origin`
//!   (the request's origin, echoed), `Access-Control-Allow-Methods` and
//!   `Access-Control-Allow-Headers` (the lists joined with `,`, as Istio configures Envoy; left
//!   out when empty), `Access-Control-Max-Age` (whole seconds, when set) and
//!   `Access-Control-Allow-Credentials: true` (when `allowCredentials` is true);
//! - any other request goes on, and its response gets `Access-Control-Allow-Origin` (echoed),
//!   `Access-Control-Expose-Headers` (when not empty) and
//!   `Access-Control-Allow-Credentials: true` (when allowed), replacing any the upstream set.
//!
//! A request without `Origin`, or whose origin does not match, gets no CORS headers. An
//! unmatched preflight is forwarded to the upstream when `unmatchedPreflights` is `FORWARD`
//! (the default) and answered `200` without CORS headers when it is `IGNORE`.
//!
//! Every response of a route with a CORS policy gets `Vary: Origin` (unless its `Vary` already
//! covers it), because whether it carries CORS headers depends on the `Origin` header; a cache
//! must not serve one origin's answer to another. Envoy does not add it; the mesh does, so
//! shared caches behave.
//!
//! # Policy
//!
//! [`CorsLayer::from_target`] reads `route.cors` of the [`Target`] in
//! each request's extensions; a request without a `Target` or without a policy passes through
//! untouched. [`CorsLayer::new`] applies one static policy to every request.
//!
//! # Readiness
//!
//! Readiness is the inner service's. A preflight answered here does not use the inner
//! service, which stays ready for the next request.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_core::snapshot::{matcher::StringMatcher, route::Cors};
//! use mesh_tower::{body, cors::CorsLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let policy = Cors {
//!     allow_origins: vec![StringMatcher::Exact("https://example.com".into())],
//!     allow_methods: vec!["GET".into(), "POST".into()],
//!     allow_headers: vec!["x-user".into()],
//!     expose_headers: vec![],
//!     max_age: Some(Duration::from_secs(86_400)),
//!     allow_credentials: None,
//!     forward_unmatched_preflights: true,
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(CorsLayer::new(policy))
//!     .service_fn(|_req: http::Request<body::Body>| async {
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     });
//! let preflight = http::Request::options("http://reviews:9080/")
//!     .header("origin", "https://example.com")
//!     .header("access-control-request-method", "POST")
//!     .body(body::empty())?;
//! let res = svc.oneshot(preflight).await?;
//! assert_eq!(res.headers()["access-control-allow-origin"], "https://example.com");
//! assert_eq!(res.headers()["access-control-allow-methods"], "GET,POST");
//! assert_eq!(res.headers()["access-control-max-age"], "86400");
//! # Ok(())
//! # }
//! ```
//!
//! [`StringMatcher`]: mesh_core::snapshot::matcher::StringMatcher

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{
    HeaderMap, HeaderValue, Method,
    header::{
        ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
    },
};
use mesh_core::snapshot::route;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    body::{self, Body},
    target::Target,
};

/// Where a [`Cors`] service finds the policy of a request.
#[derive(Clone, Debug)]
enum Policy {
    Static(Arc<route::Cors>),
    FromTarget,
}

/// Answers CORS preflights and adds CORS headers to responses; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct CorsLayer {
    policy: Policy,
}

/// The CORS service; see the [module docs](self).
///
/// Not to be confused with [`mesh_core::snapshot::route::Cors`], the policy it applies.
#[derive(Clone, Debug)]
pub struct Cors<S> {
    inner: S,
    policy: Policy,
}

/// What to add to a forwarded request's response.
#[derive(Debug)]
struct Decorate {
    /// The CORS headers, for a matched origin.
    allow: Option<Allow>,
}

/// The CORS headers of a matched, non-preflight request's response.
#[derive(Debug)]
struct Allow {
    origin: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
}

// === impl CorsLayer ===

impl CorsLayer {
    /// Applies `policy` to every request.
    pub fn new(policy: route::Cors) -> Self {
        Self {
            policy: Policy::Static(Arc::new(policy)),
        }
    }

    /// Applies each request's route policy (`route.cors` of its [`Target`]).
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cors {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Cors ===

impl<S> Cors<S> {
    /// Applies `policy` to every request sent to `inner`.
    pub fn new(inner: S, policy: route::Cors) -> Self {
        CorsLayer::new(policy).layer(inner)
    }

    /// Applies each request's route policy.
    pub fn from_target(inner: S) -> Self {
        CorsLayer::from_target().layer(inner)
    }

    /// A [`CorsLayer`] applying `policy` to every request.
    pub fn layer(policy: route::Cors) -> CorsLayer {
        CorsLayer::new(policy)
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

/// What the policy says about one request.
enum Decision {
    /// No policy: pass through untouched.
    PassThrough,
    /// Answer here.
    Respond(http::Response<Body>),
    /// Forward, then decorate the response.
    Forward(Decorate),
}

fn decide(policy: &route::Cors, headers: &HeaderMap, method: &Method) -> Decision {
    let origin = headers.get(ORIGIN);
    let preflight = method == Method::OPTIONS
        && origin.is_some()
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let matched = origin.filter(|o| {
        o.to_str()
            .is_ok_and(|o| policy.allow_origins.iter().any(|m| m.matches(o)))
    });
    match (preflight, matched) {
        (true, Some(origin)) => Decision::Respond(preflight_response(policy, origin.clone())),
        (true, None) if !policy.forward_unmatched_preflights => {
            let mut res = http::Response::new(body::empty());
            add_vary_origin(res.headers_mut());
            Decision::Respond(res)
        }
        (_, matched) => Decision::Forward(Decorate {
            allow: matched.map(|origin| Allow {
                origin: origin.clone(),
                expose: join(&policy.expose_headers),
                credentials: policy.allow_credentials == Some(true),
            }),
        }),
    }
}

fn preflight_response(policy: &route::Cors, origin: HeaderValue) -> http::Response<Body> {
    let mut res = http::Response::new(body::empty());
    let h = res.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if let Some(v) = join(&policy.allow_methods) {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = join(&policy.allow_headers) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(age) = policy.max_age {
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    if policy.allow_credentials == Some(true) {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    add_vary_origin(h);
    res
}

/// The list joined with `,` as Istio does; `None` when empty or not a valid header value.
fn join(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(",")).ok()
}

/// Adds `Vary: Origin` unless the response already varies on it (or on everything).
fn add_vary_origin(headers: &mut HeaderMap) {
    let covered = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    });
    if !covered {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

impl<S, B> Service<http::Request<B>> for Cors<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let policy = match &self.policy {
            Policy::Static(p) => Some(&**p),
            Policy::FromTarget => req
                .extensions()
                .get::<Target>()
                .and_then(Target::route)
                .and_then(|r| r.cors.as_ref()),
        };
        let decision = match policy {
            Some(p) => decide(p, req.headers(), req.method()),
            None => Decision::PassThrough,
        };
        match decision {
            Decision::PassThrough => ResponseFuture::forwarded(self.inner.call(req), None),
            Decision::Respond(res) => {
                tracing::trace!("cors: answering a preflight");
                ResponseFuture::answered(res)
            }
            Decision::Forward(d) => ResponseFuture::forwarded(self.inner.call(req), Some(d)),
        }
    }
}

pin_project! {
    /// The response of a [`Cors`] service: a preflight answer, or the inner response with
    /// CORS headers added.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Forwarded {
            #[pin]
            future: F,
            decorate: Option<Decorate>,
        },
        Answered {
            response: Option<http::Response<Body>>,
        },
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    fn forwarded(future: F, decorate: Option<Decorate>) -> Self {
        Self {
            state: State::Forwarded { future, decorate },
        }
    }

    fn answered(response: http::Response<Body>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forwarded { future, decorate } => {
                let mut res = ready!(future.poll(cx))?;
                if let Some(d) = decorate.take() {
                    let h = res.headers_mut();
                    if let Some(allow) = d.allow {
                        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow.origin);
                        if let Some(expose) = allow.expose {
                            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose);
                        }
                        if allow.credentials {
                            h.insert(
                                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                                HeaderValue::from_static("true"),
                            );
                        }
                    }
                    add_vary_origin(h);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Answered { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                // Polled after completion: never resolve again.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests;
