//! [`Retry`]: the service.

use std::{
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body as _;
use mesh_core::{BoxError, policy::retry::RetryPolicy};
use tower::{Layer, Service};

use super::{
    body::Replay,
    future::{FirstTry, PerTry, PolicyRef, ResponseFuture, Template, run},
    layer::{PolicySource, RetryLayer, Shared},
};
use crate::{
    body::Body,
    target::{Target, TriedEndpoints},
};

/// Retries failed requests; see the [module docs](super).
///
/// # Clone
/// `call` clones the inner service: the clone that was polled ready sends the first try and
/// later tries of that request, the fresh clone stays for the next request.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

// === impl Retry ===

impl<S> Retry<S> {
    /// Retries requests to `inner` under one static `policy`
    /// (see [`RetryLayer::new`]).
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryLayer::new(policy).layer(inner)
    }

    /// A layer with one static `policy`; the same as [`RetryLayer::new`].
    pub fn layer(policy: RetryPolicy) -> RetryLayer {
        RetryLayer::new(policy)
    }

    pub(super) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let target = req.extensions().get::<Target>();
        let policy = match (&self.shared.source, target) {
            (PolicySource::Static(p), _) => PolicyRef::Static(p.clone()),
            (PolicySource::FromTarget, Some(t)) => match &t.route {
                Some(route) => PolicyRef::Route(route.clone()),
                None => PolicyRef::MeshDefault,
            },
            (PolicySource::FromTarget, None) => {
                return ResponseFuture::once(self.inner.call(req), None);
            }
        };
        // A mirrored copy is best effort: never retried, never counted against the budget.
        if req.extensions().get::<crate::mirror::Mirrored>().is_some() {
            return ResponseFuture::once(self.inner.call(req), None);
        }
        let budget = match target {
            Some(t) => self.shared.budgets.host(&t.host),
            None => self.shared.budgets.standalone().clone(),
        };
        let active = budget.start_request();
        let p = policy.get();
        if p.max_retries() == 0 && p.per_try_timeout().is_none() {
            return ResponseFuture::once(self.inner.call(req), Some(active));
        }
        let clone = self.inner.clone();
        let mut svc = mem::replace(&mut self.inner, clone);
        // A request without a body (most requests): the first try is polled in place, with
        // its per-try timer if the policy has one, and the retry loop is only started when a
        // retry is wanted.
        if req.body().is_end_stream() {
            let (mut parts, body) = req.into_parts();
            let per_try = p.per_try_timeout();
            // A try cut by its per-try timeout has no outcome to learn its endpoint from: the
            // balancer records it in a shared list instead, for the retries to avoid.
            if per_try.is_some()
                && p.max_retries() > 0
                && p.ignore_previous_hosts()
                && parts.extensions.get::<TriedEndpoints>().is_none()
            {
                parts.extensions.insert(TriedEndpoints::default());
            }
            let template = Template::new(&parts, Replay::default());
            let per_try = per_try.map(|limit| PerTry::start(limit, &mut parts.extensions));
            let future = svc.call(Request::from_parts(parts, body));
            let rest = FirstTry {
                svc,
                template,
                policy,
                shared: self.shared.clone(),
                per_try,
            };
            return ResponseFuture::first(future, rest, active);
        }
        ResponseFuture::retrying(Box::pin(run(svc, req, policy, self.shared.clone(), active)))
    }
}
