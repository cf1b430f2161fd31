use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, StatusCode};
use mesh_core::{
    BoxError,
    policy::fault::{AbortWith, FaultPolicy},
};
use tower::Service;

use super::{ABORT_BODY, FaultLayer, future::ResponseFuture, layer::Policy};
use crate::{
    body::{self, Body},
    flags::{ResponseFlag, ResponseFlags},
    target::Target,
};

/// Injects delays and aborts into a share of requests; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    policy: Policy,
}

/// What the draws decided for one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) delay: Option<Duration>,
    pub(super) abort: Option<Abort>,
}

/// How an aborted request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Abort {
    /// An HTTP status with Envoy's text body.
    Http(StatusCode),
    /// A trailers-only gRPC response with this `grpc-status`.
    Grpc(u8),
}

// === impl Fault ===

impl<S> Fault<S> {
    /// Injects `policy` into every request sent to `inner`.
    pub fn new(inner: S, policy: FaultPolicy) -> Self {
        Self::with_policy(inner, Policy::Static(Arc::new(policy)))
    }

    /// Injects the fault policy of each request's route into requests sent to `inner`.
    pub fn from_target(inner: S) -> Self {
        Self::with_policy(inner, Policy::FromTarget)
    }

    /// A [`FaultLayer`] injecting `policy` into every request.
    pub fn layer(policy: FaultPolicy) -> FaultLayer {
        FaultLayer::new(policy)
    }

    pub(super) fn with_policy(inner: S, policy: Policy) -> Self {
        Self { inner, policy }
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

impl<S, B> Service<http::Request<B>> for Fault<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S, http::Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let policy = match &self.policy {
            Policy::Static(p) => Some(&**p),
            Policy::FromTarget => req
                .extensions()
                .get::<Target>()
                .and_then(Target::route)
                .and_then(|r| r.fault.as_ref()),
        };
        let decision = match policy {
            Some(p) => decide(p, crate::rescue::is_grpc(&req), || {
                fastrand::u32(0..1_000_000)
            }),
            None => Decision::default(),
        };
        match decision {
            Decision {
                delay: None,
                abort: None,
            } => ResponseFuture::called(self.inner.call(req)),
            Decision {
                delay: None,
                abort: Some(abort),
            } => {
                tracing::debug!(?abort, "fault: aborting request");
                ResponseFuture::aborted(abort_response(abort, false))
            }
            Decision {
                delay: Some(delay),
                abort,
            } => {
                tracing::debug!(?delay, ?abort, "fault: delaying request");
                // The service polled ready stays in `self` for the next request; the delayed
                // request drives a clone to readiness after its sleep.
                let then = match abort {
                    Some(abort) => Err(abort),
                    None => Ok((self.inner.clone(), req)),
                };
                ResponseFuture::delayed(delay, then)
            }
        }
    }
}

/// Draws the delay and the abort for one request, independently: `draw` returns a uniform
/// number in `0..1_000_000` and is called once for each part the policy has.
pub(super) fn decide(policy: &FaultPolicy, grpc: bool, mut draw: impl FnMut() -> u32) -> Decision {
    let delay = policy
        .delay
        .as_ref()
        .and_then(|(d, share)| share.hit(draw()).then_some(*d));
    let abort = policy.abort.as_ref().and_then(|(with, share)| {
        share.hit(draw()).then(|| match with {
            AbortWith::Grpc(code, _) => Abort::Grpc(*code),
            AbortWith::Http(status) => {
                // Validation keeps the status in 200..600; anything else answers 503 rather
                // than failing the request in another way.
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                if grpc {
                    Abort::Grpc(grpc_code_for_http(status))
                } else {
                    Abort::Http(status)
                }
            }
        })
    });
    Decision { delay, abort }
}

/// The response of an aborted request; `delayed` adds the `DI` flag.
pub(super) fn abort_response(abort: Abort, delayed: bool) -> http::Response<Body> {
    let mut res = match abort {
        Abort::Http(status) => {
            let mut res = http::Response::new(body::full(ABORT_BODY));
            *res.status_mut() = status;
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            res
        }
        Abort::Grpc(code) => {
            let mut res = http::Response::new(body::empty());
            let h = res.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            h.insert("grpc-message", HeaderValue::from_static(ABORT_BODY));
            res
        }
    };
    ResponseFlags::add_to(&mut res, ResponseFlag::FaultInjected);
    if delayed {
        ResponseFlags::add_to(&mut res, ResponseFlag::DelayInjected);
    }
    res
}

/// The gRPC status code Envoy answers a gRPC request with for an HTTP status
/// (`Grpc::Utility::httpToGrpcStatus`): 400 → 13 INTERNAL, 401 → 16 UNAUTHENTICATED,
/// 403 → 7 PERMISSION_DENIED, 404 → 12 UNIMPLEMENTED, 429/502/503/504 → 14 UNAVAILABLE,
/// anything else → 2 UNKNOWN.
pub fn grpc_code_for_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}
