//! [`ResponseFuture`] and the retry loop behind it.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use mesh_core::{
    BoxError,
    policy::retry::{RetryBudget, RetryPolicy, backoff_ceiling, jittered},
    snapshot::Route,
};
use pin_project_lite::pin_project;
use rand::RngExt;
use tower::{Service, ServiceExt};

use super::{
    MAX_REPLAY_BODY,
    body::{Prepared, Replay, prepare},
    budget::{RequestGuard, RetryGuard},
    classify,
    layer::Shared,
};
use crate::{
    body::Body,
    error::PerTryTimeout,
    flags::{ResponseFlag, ResponseFlags},
    target::{DestinationHeaders, Target, TriedEndpoints},
};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Retry`](super::Retry): the inner future itself when the
    /// request cannot be retried, else the retry loop.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        // Counts the request as active until it completes (the retry loop holds its own).
        active: Option<RequestGuard>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Once { #[pin] future: F },
        Retrying { future: BoxFuture },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn once(future: F, active: Option<RequestGuard>) -> Self {
        Self {
            kind: Kind::Once { future },
            active,
        }
    }

    pub(super) fn retrying(future: BoxFuture) -> Self {
        Self {
            kind: Kind::Retrying { future },
            active: None,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Once { .. } => "once",
            Kind::Retrying { .. } => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.kind.project() {
            KindProj::Once { future } => std::task::ready!(future.poll(cx)).map_err(Into::into),
            KindProj::Retrying { future } => std::task::ready!(future.as_mut().poll(cx)),
        };
        this.active.take();
        Poll::Ready(out)
    }
}

/// The policy of one request, without copying it out of its route.
pub(super) enum PolicyRef {
    Static(Arc<RetryPolicy>),
    Route(Arc<Route>),
    MeshDefault,
}

static MESH_DEFAULT: RetryPolicy = RetryPolicy::MeshDefault;

impl PolicyRef {
    pub(super) fn get(&self) -> &RetryPolicy {
        match self {
            Self::Static(p) => p,
            Self::Route(r) => &r.retries,
            Self::MeshDefault => &MESH_DEFAULT,
        }
    }
}

/// Sends `req` to `svc` (polled ready already) and retries it while the policy, the tries
/// left and the budget allow.
pub(super) async fn run<S>(
    mut svc: S,
    req: Request<Body>,
    policy: PolicyRef,
    shared: Arc<Shared>,
    active: RequestGuard,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let policy = policy.get();
    let max_retries = policy.max_retries();
    let per_try = policy.per_try_timeout();

    let (mut parts, body) = req.into_parts();
    let (first_body, replay) = if max_retries == 0 {
        (body, None)
    } else {
        match prepare(body, &parts.headers, MAX_REPLAY_BODY).await? {
            Prepared::Replay(replay) => (replay.body(), Some(replay)),
            Prepared::Once(body) => (body, None),
        }
    };
    let template = replay.map(|replay| {
        if policy.ignore_previous_hosts() && parts.extensions.get::<TriedEndpoints>().is_none() {
            parts.extensions.insert(TriedEndpoints::default());
        }
        Template::new(&parts, replay)
    });
    let method = parts.method.clone();

    let mut req = Request::from_parts(parts, first_body);
    let mut retries = 0;
    let mut in_flight: Option<RetryGuard> = None;
    loop {
        let result = try_once(&mut svc, req, retries > 0, per_try).await;
        // The retry (if this was one) is over.
        drop(in_flight.take());

        let Some(template) = &template else {
            return result;
        };
        if !policy.retriable(&method, &classify::outcome(&result)) {
            return result;
        }
        if retries >= max_retries {
            shared.stats.record_limit_exceeded();
            return exhausted(result);
        }
        let limits = template.budget_limits(shared.default_budget);
        let Some(guard) = active.budget().try_start_retry(&limits) else {
            shared.stats.record_budget_exhausted();
            return exhausted(result);
        };
        in_flight = Some(guard);
        drop(result);

        retries += 1;
        shared.stats.record_retry();
        let pause = draw_backoff(backoff_ceiling(retries, policy.backoff()));
        tracing::debug!(retry = retries, ?pause, "retrying request");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        req = template.request();
    }
}

/// One try: waits for readiness (on retries), calls, and bounds both by the per-try timeout.
async fn try_once<S>(
    svc: &mut S,
    req: Request<Body>,
    wait_ready: bool,
    per_try: Option<Duration>,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    let once = async {
        if wait_ready {
            svc.ready().await.map_err(Into::into)?;
        }
        svc.call(req).await.map_err(Into::into)
    };
    match per_try {
        Some(limit) => tokio::time::timeout(limit, once)
            .await
            .unwrap_or_else(|_| Err(PerTryTimeout(()).into())),
        None => once.await,
    }
}

/// Marks the last response of a request whose retries ran out (`URX`).
fn exhausted(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    result.map(|mut res| {
        ResponseFlags::add_to(&mut res, ResponseFlag::UpstreamRetryLimitExceeded);
        res
    })
}

/// A uniformly random pause below `ceiling`.
fn draw_backoff(ceiling: Duration) -> Duration {
    if ceiling.is_zero() {
        return ceiling;
    }
    jittered(ceiling, rand::rng().random::<f64>())
}

/// What every try of a request is built from.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: ReplayExtensions,
    body: Replay,
}

/// The extensions every retry gets.
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant is the common one; boxing it would allocate per request"
)]
enum ReplayExtensions {
    /// Only the mesh's own (the common case): kept as values and put back for each retry,
    /// so a request that is never retried never copies its extension map.
    Mesh {
        target: Option<Target>,
        headers: Option<DestinationHeaders>,
        tried: Option<TriedEndpoints>,
    },
    /// Others as well (the caller's): the whole map, copied.
    All(Extensions),
}

impl ReplayExtensions {
    fn capture(extensions: &Extensions) -> Self {
        let target = extensions.get::<Target>().cloned();
        let headers = extensions.get::<DestinationHeaders>().cloned();
        let tried = extensions.get::<TriedEndpoints>().cloned();
        let ours = usize::from(target.is_some())
            + usize::from(headers.is_some())
            + usize::from(tried.is_some());
        if ours == extensions.len() {
            Self::Mesh {
                target,
                headers,
                tried,
            }
        } else {
            Self::All(extensions.clone())
        }
    }

    fn target(&self) -> Option<&Target> {
        match self {
            Self::Mesh { target, .. } => target.as_ref(),
            Self::All(extensions) => extensions.get::<Target>(),
        }
    }

    fn to_extensions(&self) -> Extensions {
        match self {
            Self::Mesh {
                target,
                headers,
                tried,
            } => {
                let mut extensions = Extensions::new();
                if let Some(t) = target {
                    extensions.insert(t.clone());
                }
                if let Some(h) = headers {
                    extensions.insert(h.clone());
                }
                if let Some(t) = tried {
                    extensions.insert(t.clone());
                }
                extensions
            }
            Self::All(extensions) => extensions.clone(),
        }
    }
}

impl Template {
    fn new(parts: &http::request::Parts, body: Replay) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: ReplayExtensions::capture(&parts.extensions),
            body,
        }
    }

    /// A copy of the request for one more try.
    fn request(&self) -> Request<Body> {
        let mut req = Request::new(self.body.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.to_extensions();
        req
    }

    /// The destination's budget limits: its DestinationRule's `retryBudget` (for the target's
    /// subset), else `default`.
    fn budget_limits(&self, default: RetryBudget) -> RetryBudget {
        let Some(target) = self.extensions.target() else {
            return default;
        };
        target
            .snapshot
            .traffic_policy(&target.host, target.subset.as_deref())
            .and_then(|tp| tp.retry_budget)
            .map_or(default, |b| RetryBudget::from_config(Some(&b)))
    }
}
