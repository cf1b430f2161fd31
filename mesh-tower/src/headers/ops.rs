use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderMap;
use mesh_core::snapshot::route;
use tower::{Layer, Service};

use super::{DestinationHeaders, future::ResponseFuture};
use crate::target::Target;

/// Where a [`HeaderOps`] service finds the operations of a request.
#[derive(Clone, Debug)]
enum Policy {
    Static(Arc<route::HeaderOps>),
    FromTarget,
}

/// Applies Istio header operations to requests and responses; see the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct HeaderOpsLayer {
    policy: Policy,
}

/// The header operations service; see the [module docs](super).
///
/// Not to be confused with [`mesh_core::snapshot::route::HeaderOps`], the operations it
/// applies.
#[derive(Clone, Debug)]
pub struct HeaderOps<S> {
    inner: S,
    policy: Policy,
}

/// The response-side operations a [`ResponseFuture`] applies when the response arrives.
#[derive(Debug)]
pub(super) enum ResponseOps {
    /// Nothing to do.
    None,
    /// One static set.
    Static(Arc<route::HeaderOps>),
    /// The destination's, then the route's.
    Target {
        destination: Option<route::HeaderOps>,
        route: Option<Arc<route::Route>>,
    },
}

// === impl HeaderOpsLayer ===

impl HeaderOpsLayer {
    /// Applies `ops` to every request and response (and nothing else: a request's
    /// [`DestinationHeaders`] are ignored).
    pub fn new(ops: route::HeaderOps) -> Self {
        Self {
            policy: Policy::Static(Arc::new(ops)),
        }
    }

    /// Applies each request's destination operations ([`DestinationHeaders`] in its
    /// extensions) and then its route's (`route.headers` of its [`Target`]).
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for HeaderOpsLayer {
    type Service = HeaderOps<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeaderOps {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl HeaderOps ===

impl<S> HeaderOps<S> {
    /// Applies `ops` to every request sent to `inner` and its response.
    pub fn new(inner: S, ops: route::HeaderOps) -> Self {
        HeaderOpsLayer::new(ops).layer(inner)
    }

    /// Applies each request's destination and route operations.
    pub fn from_target(inner: S) -> Self {
        HeaderOpsLayer::from_target().layer(inner)
    }

    /// A [`HeaderOpsLayer`] applying `ops` to every request and response.
    pub fn layer(ops: route::HeaderOps) -> HeaderOpsLayer {
        HeaderOpsLayer::new(ops)
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

impl<S, B, RB> Service<http::Request<B>> for HeaderOps<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ops = match &self.policy {
            Policy::Static(ops) => {
                apply_request(req.headers_mut(), ops);
                if has_response_ops(ops) {
                    ResponseOps::Static(ops.clone())
                } else {
                    ResponseOps::None
                }
            }
            Policy::FromTarget => {
                // Nothing to do (the common case): leave the request where it is.
                let ext = req.extensions();
                if ext.get::<DestinationHeaders>().is_none()
                    && ext
                        .get::<Target>()
                        .and_then(|t| t.route.as_ref())
                        .is_none_or(|r| r.headers.is_empty())
                {
                    return ResponseFuture::new(self.inner.call(req), ResponseOps::None);
                }
                // Split the request so the extensions can be read while the headers change.
                let (mut parts, body) = req.into_parts();
                let destination = parts.extensions.get::<DestinationHeaders>().map(|d| &d.0);
                let route = parts
                    .extensions
                    .get::<Target>()
                    .and_then(|t| t.route.as_ref());
                if let Some(d) = destination {
                    apply_request(&mut parts.headers, d);
                }
                if let Some(r) = route {
                    apply_request(&mut parts.headers, &r.headers);
                }
                let destination = destination.filter(|d| has_response_ops(d)).cloned();
                let route = route.filter(|r| has_response_ops(&r.headers)).cloned();
                req = http::Request::from_parts(parts, body);
                if destination.is_none() && route.is_none() {
                    ResponseOps::None
                } else {
                    ResponseOps::Target { destination, route }
                }
            }
        };
        ResponseFuture::new(self.inner.call(req), ops)
    }
}

// === impl ResponseOps ===

impl ResponseOps {
    /// Applies the operations to a response's headers.
    pub(super) fn apply(&self, headers: &mut HeaderMap) {
        match self {
            Self::None => {}
            Self::Static(ops) => apply_response(headers, ops),
            Self::Target { destination, route } => {
                if let Some(d) = destination {
                    apply_response(headers, d);
                }
                if let Some(r) = route {
                    apply_response(headers, &r.headers);
                }
            }
        }
    }
}

fn has_response_ops(ops: &route::HeaderOps) -> bool {
    !(ops.response_set.is_empty() && ops.response_add.is_empty() && ops.response_remove.is_empty())
}

fn apply_request(headers: &mut HeaderMap, ops: &route::HeaderOps) {
    apply(
        headers,
        &ops.request_remove,
        &ops.request_set,
        &ops.request_add,
    );
}

fn apply_response(headers: &mut HeaderMap, ops: &route::HeaderOps) {
    apply(
        headers,
        &ops.response_remove,
        &ops.response_set,
        &ops.response_add,
    );
}

/// Envoy's order: remove, then overwrite, then append.
fn apply(
    headers: &mut HeaderMap,
    remove: &[http::HeaderName],
    set: &[(http::HeaderName, http::HeaderValue)],
    add: &[(http::HeaderName, http::HeaderValue)],
) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value) in set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in add {
        headers.append(name.clone(), value.clone());
    }
}
