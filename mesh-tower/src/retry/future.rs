//! [`ResponseFuture`] and the retry loop behind it.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Extensions, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
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
    breaker::RetryAdmission,
    error::{PerTryTimeout, UpstreamConnectFailure, UpstreamReset},
    flags::{ResponseFlag, ResponseFlags},
    target::{DestinationHeaders, PickedEndpoint, Target, TimeoutSignal, TriedEndpoints},
    telemetry::layer::RouteSlot,
};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Retry`](super::Retry): the inner future itself when the
    /// request cannot be retried; the first try polled in place, with what a retry needs kept
    /// aside, for a request whose body needs no buffering; else the retry loop.
    pub struct ResponseFuture<S, F> {
        #[pin]
        kind: Kind<S, F>,
        // Counts the request as active until it completes (the retry loop holds its own).
        active: Option<RequestGuard>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, F> {
        Once { #[pin] future: F },
        // `rest` is boxed: inline it would make this future (and every future wrapping it,
        // moved once per layer on every call) hundreds of bytes larger.
        First { #[pin] future: F, rest: Option<Box<FirstTry<S>>> },
        Retrying { future: BoxFuture },
    }
}

/// What the retries of a request whose first try is in flight need.
pub(super) struct FirstTry<S> {
    pub(super) svc: S,
    pub(super) template: Template,
    pub(super) policy: PolicyRef,
    pub(super) shared: Arc<Shared>,
    /// The first try's per-try timeout, if the policy has one.
    pub(super) per_try: Option<PerTry>,
}

/// A try's per-try timeout: the timer, and the signal that tells the balancer the try was
/// cut (outlier detection counts it).
pub(super) struct PerTry {
    sleep: Pin<Box<tokio::time::Sleep>>,
    signal: TimeoutSignal,
}

impl PerTry {
    /// Starts the timer of a try whose request has `extensions`: the signal goes into them,
    /// nested in the route timeout's signal if there is one.
    pub(super) fn start(limit: Duration, extensions: &mut Extensions) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(limit)),
            signal: try_signal(extensions),
        }
    }
}

/// The signal of a timed try, put into its request's `extensions` (nested in the route
/// timeout's signal if there is one): it tells the balancer when the try's timeout cuts it
/// (outlier detection).
fn try_signal(extensions: &mut Extensions) -> TimeoutSignal {
    let signal = TimeoutSignal::within(extensions.get::<TimeoutSignal>());
    extensions.insert(signal.clone());
    signal
}

impl<S, F> ResponseFuture<S, F> {
    pub(super) fn once(future: F, active: Option<RequestGuard>) -> Self {
        Self {
            kind: Kind::Once { future },
            active,
        }
    }

    /// The first try `future` is in flight; `rest` holds what retries need.
    pub(super) fn first(future: F, rest: FirstTry<S>, active: RequestGuard) -> Self {
        Self {
            kind: Kind::First {
                future,
                rest: Some(Box::new(rest)),
            },
            active: Some(active),
        }
    }

    pub(super) fn retrying(future: BoxFuture) -> Self {
        Self {
            kind: Kind::Retrying { future },
            active: None,
        }
    }
}

impl<S, F> fmt::Debug for ResponseFuture<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Once { .. } => "once",
            Kind::First { .. } => "first try",
            Kind::Retrying { .. } => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<S, F, E> Future for ResponseFuture<S, F>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let out = match this.kind.as_mut().project() {
                KindProj::Once { future } => std::task::ready!(future.poll(cx)).map_err(Into::into),
                KindProj::Retrying { future } => std::task::ready!(future.as_mut().poll(cx)),
                KindProj::First { future, rest } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => {
                            let Some(per_try) = rest.as_mut().and_then(|r| r.per_try.as_mut())
                            else {
                                return Poll::Pending;
                            };
                            std::task::ready!(per_try.sleep.as_mut().poll(cx));
                            // While the try is still alive: the balancer counts the cut when
                            // it is dropped (on a retry, or with this future).
                            per_try.signal.fire();
                            Err(PerTryTimeout(()).into())
                        }
                    };
                    let Some(first) = rest.take() else {
                        return Poll::Ready(result);
                    };
                    // The common case: nothing to retry, decided without the loop.
                    let policy = first.policy.get();
                    if policy.max_retries() == 0
                        || !policy.retriable(&first.template.method, &classify::outcome(&result))
                    {
                        result
                    } else {
                        let Some(active) = this.active.take() else {
                            return Poll::Ready(result);
                        };
                        let FirstTry {
                            svc,
                            template,
                            policy,
                            shared,
                            per_try: _,
                        } = *first;
                        let method = template.method.clone();
                        let retrying = Box::pin(retry_after(
                            svc,
                            Some(template),
                            policy,
                            shared,
                            active,
                            method,
                            result,
                        ));
                        this.kind.set(Kind::Retrying { future: retrying });
                        continue;
                    }
                }
            };
            this.active.take();
            return Poll::Ready(out);
        }
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
    let policy_ref = policy;
    let policy = policy_ref.get();
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
    // Which endpoints were tried: the balancer records its picks in a `TriedEndpoints`. The
    // first try's endpoint is also known from its outcome (the response's `PickedEndpoint`,
    // the connect or reset error's endpoint), except when a per-try timeout drops the try:
    // only then does the first try need the shared list; otherwise it is created for the
    // first retry, which saves an allocation and a map insert on every request.
    let avoid = policy.ignore_previous_hosts();
    let template = replay.map(|replay| {
        if avoid && per_try.is_some() && parts.extensions.get::<TriedEndpoints>().is_none() {
            parts.extensions.insert(TriedEndpoints::default());
        }
        Template::new(&parts, replay)
    });
    let method = parts.method.clone();

    let req = Request::from_parts(parts, first_body);
    let first = try_once(&mut svc, req, false, per_try).await;
    retry_after(svc, template, policy_ref, shared, active, method, first).await
}

/// The retry loop after the first try gave `result`: retries while the policy, the tries
/// left and the budget allow, and returns the last outcome.
pub(super) async fn retry_after<S>(
    mut svc: S,
    mut template: Option<Template>,
    policy: PolicyRef,
    shared: Arc<Shared>,
    active: RequestGuard,
    method: Method,
    mut result: Result<Response<Body>, BoxError>,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let policy = policy.get();
    let max_retries = policy.max_retries();
    let per_try = policy.per_try_timeout();
    let avoid = policy.ignore_previous_hosts();
    let mut retries = 0;
    let mut in_flight: Option<RetryGuard> = None;
    loop {
        // The retry (if this was one) is over.
        drop(in_flight.take());

        let Some(template) = &mut template else {
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
        // The destination's `maxRetries`, checked now, while the response is at hand.
        let permit = match (&shared.breakers, template.extensions.target()) {
            (Some(breakers), Some(target)) => match breakers.admit_retry(target) {
                RetryAdmission::Unlimited => None,
                RetryAdmission::Admitted(permit) => Some(permit),
                RetryAdmission::Overflow => return retry_overflow(result),
            },
            _ => None,
        };
        if avoid {
            template.track_tries(&result);
        }
        drop(result);

        retries += 1;
        shared.stats.record_retry();
        let pause = draw_backoff(backoff_ceiling(retries, policy.backoff()));
        tracing::debug!(retry = retries, ?pause, "retrying request");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut req = template.request();
        if let Some(permit) = permit {
            req.extensions_mut().insert(permit);
        }
        result = try_once(&mut svc, req, true, per_try).await;
    }
}

/// The outcome at hand when `maxRetries` stops a retry: a response gets the `UO` flag (as
/// Envoy's router sets it); an error is returned as it is.
fn retry_overflow(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    result.map(|mut res| {
        ResponseFlags::add_to(&mut res, ResponseFlag::UpstreamOverflow);
        res
    })
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
    let mut req = req;
    let signal = per_try.map(|_| try_signal(req.extensions_mut()));
    let once = async {
        if wait_ready {
            svc.ready().await.map_err(Into::into)?;
        }
        svc.call(req).await.map_err(Into::into)
    };
    let (Some(limit), Some(signal)) = (per_try, signal) else {
        return once.await;
    };
    tokio::pin!(once);
    match tokio::time::timeout(limit, once.as_mut()).await {
        Ok(result) => result,
        Err(_) => {
            // Fired while the try is still alive: the balancer counts the cut when the
            // try is dropped, on return.
            signal.fire();
            Err(PerTryTimeout(()).into())
        }
    }
}

/// Marks the last response of a request whose retries ran out (`URX`).
fn exhausted(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    result.map(|mut res| {
        ResponseFlags::add_to(&mut res, ResponseFlag::UpstreamRetryLimitExceeded);
        res
    })
}

/// The endpoint a failed try went to, from the connect or reset error in `e`'s chain.
fn failed_endpoint<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a str> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<UpstreamConnectFailure>() {
            return Some(&f.endpoint);
        }
        if let Some(r) = err.downcast_ref::<UpstreamReset>() {
            return Some(&r.endpoint);
        }
        cur = err.source();
    }
    None
}

/// A uniformly random pause below `ceiling`.
fn draw_backoff(ceiling: Duration) -> Duration {
    if ceiling.is_zero() {
        return ceiling;
    }
    jittered(ceiling, rand::rng().random::<f64>())
}

/// A request's headers, in order and with repeated names as they were: a copy that costs no
/// allocation for a few headers (a `HeaderMap` clone allocates twice), rebuilt into a map only
/// when the request is retried.
type HeaderList = smallvec::SmallVec<[(HeaderName, HeaderValue); 4]>;

/// What every try of a request is built from.
pub(super) struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderList,
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
        /// The outbound telemetry layer's slot for the route decision.
        route_slot: Option<RouteSlot>,
        /// The route timeout's signal.
        timeout: Option<TimeoutSignal>,
    },
    /// Others as well (the caller's): the whole map, copied.
    All(Extensions),
}

impl ReplayExtensions {
    fn capture(extensions: &Extensions) -> Self {
        let target = extensions.get::<Target>().cloned();
        let headers = extensions.get::<DestinationHeaders>().cloned();
        let tried = extensions.get::<TriedEndpoints>().cloned();
        let route_slot = extensions.get::<RouteSlot>().cloned();
        let timeout = extensions.get::<TimeoutSignal>().cloned();
        let ours = usize::from(target.is_some())
            + usize::from(headers.is_some())
            + usize::from(tried.is_some())
            + usize::from(route_slot.is_some())
            + usize::from(timeout.is_some());
        if ours == extensions.len() {
            Self::Mesh {
                target,
                headers,
                tried,
                route_slot,
                timeout,
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

    fn tried(&self) -> Option<&TriedEndpoints> {
        match self {
            Self::Mesh { tried, .. } => tried.as_ref(),
            Self::All(extensions) => extensions.get::<TriedEndpoints>(),
        }
    }

    fn set_tried(&mut self, list: TriedEndpoints) {
        match self {
            Self::Mesh { tried, .. } => *tried = Some(list),
            Self::All(extensions) => {
                extensions.insert(list);
            }
        }
    }

    fn to_extensions(&self) -> Extensions {
        match self {
            Self::Mesh {
                target,
                headers,
                tried,
                route_slot,
                timeout,
            } => {
                let mut extensions = Extensions::new();
                if let Some(s) = route_slot {
                    extensions.insert(s.clone());
                }
                if let Some(s) = timeout {
                    extensions.insert(s.clone());
                }
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
    pub(super) fn new(parts: &http::request::Parts, body: Replay) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            extensions: ReplayExtensions::capture(&parts.extensions),
            body,
        }
    }

    /// Makes sure the next tries share a [`TriedEndpoints`], seeded with the endpoint of the
    /// try that produced `result` when the list was not there yet.
    fn track_tries(&mut self, result: &Result<Response<Body>, BoxError>) {
        if self.extensions.tried().is_some() {
            return;
        }
        let tried = TriedEndpoints::default();
        match result {
            Ok(res) => {
                if let Some(picked) = res.extensions().get::<PickedEndpoint>() {
                    tried.record_authority(&picked.authority);
                }
            }
            Err(e) => {
                if let Some(endpoint) = failed_endpoint(e.as_ref()) {
                    tried.record(endpoint);
                }
            }
        }
        self.extensions.set_tried(tried);
    }

    /// A copy of the request for one more try.
    fn request(&self) -> Request<Body> {
        let mut req = Request::new(self.body.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        let headers = req.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
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
