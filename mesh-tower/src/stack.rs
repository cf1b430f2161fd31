//! The outbound stack, composed from the layers in the order Envoy applies them.
//!
//! ```text
//! rescue            errors → Envoy-style local replies (404 NR, 503 UH/UF/UC/UO, 504 UT)
//! route             VirtualService match, weighted destination → Target
//! cors              preflights answered, CORS response headers
//! respond           redirect, direct response
//! rewrite, headers  path/authority rewrite; request and response header operations
//! timeout           the route timeout (includes injected delays and every retry)
//! fault             injected delays and aborts (above retry: aborts are never retried)
//! mirror            fire-and-forget copies (after the fault: an aborted request is not
//!                   mirrored; never retried)
//! retry             retries, per-try timeout, back-off, budget
//! breaker           DestinationRule connectionPool limits per cluster (each try takes its
//!                   slots; overflow → 503 UO, not retried); hands the connection settings
//!                   down to connect
//! balance           endpoint choice (least request, round robin, random)
//! connect           HTTP/1.1 or HTTP/2 connection pools, plaintext or mutual TLS, per
//!                   DestinationRule connection settings
//! ```
//!
//! Every layer below `route` reads its policy from the request's
//! [`Target`], so the whole stack is built once per client and
//! follows configuration changes without being rebuilt. Requests whose rule has none of the
//! policies from `cors` to `mirror` (the default route, or a rule that only forwards) skip
//! those seven layers, and a rule whose only one is its timeout goes through `timeout` alone
//! ([`ByRoute`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::future::Either;
use mesh_core::{
    BoxError,
    snapshot::{Action, Snapshot},
};
use tower::{
    ServiceBuilder, ServiceExt,
    util::{BoxCloneSyncService, Oneshot},
};

use crate::{
    balance::{BalanceLayer, EndpointStats},
    body::Body,
    breaker::{CircuitBreakerLayer, CircuitBreakers},
    connect::Connect,
    cors::CorsLayer,
    fault::FaultLayer,
    headers::{HeaderOpsLayer, RewriteLayer},
    mirror::MirrorLayer,
    rescue::RescueLayer,
    respond::RespondLayer,
    retry::{RetryBudgets, RetryLayer, RetryStats},
    route::{Caller, RouteLayer},
    target::{DestinationHeaders, Target},
    timeout::RouteTimeoutLayer,
};

/// The state the outbound stacks of one mesh share: connection pools, in-flight counts,
/// circuit breakers, retry budgets and counters.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// Retry budgets, per destination host.
    pub retry_budgets: Arc<RetryBudgets>,
    /// Retry counters.
    pub retry_stats: Arc<RetryStats>,
    /// In-flight requests per endpoint (least request) and round-robin cursors.
    pub endpoint_stats: EndpointStats,
    /// Circuit breakers per cluster (DestinationRule `connectionPool`).
    pub breakers: CircuitBreakers,
    /// The connection pools.
    pub connect: Connect,
}

impl StackParts {
    /// Fresh state, with the given upstream connect timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with_connect(Connect::builder().connect_timeout(connect_timeout).build())
    }

    /// Fresh state over the given connection pools (e.g. built with
    /// [`ConnectBuilder::mutual_tls`](crate::connect::ConnectBuilder::mutual_tls)).
    pub fn with_connect(connect: Connect) -> Self {
        Self {
            retry_budgets: Arc::new(RetryBudgets::new()),
            retry_stats: Arc::new(RetryStats::new()),
            endpoint_stats: EndpointStats::new(),
            breakers: CircuitBreakers::new(),
            connect,
        }
    }
}

/// The layers every request goes through below the route: retries, circuit breakers,
/// balancing, `leaf`.
pub type Lower<L> = crate::retry::Retry<crate::breaker::CircuitBreaker<crate::balance::Balance<L>>>;

/// The route-policy layers, over [`Lower`].
pub type Policies<L> = crate::cors::Cors<
    crate::respond::Respond<
        crate::headers::Rewrite<
            crate::headers::HeaderOps<
                crate::timeout::Timeout<crate::fault::Fault<crate::mirror::Mirror<Lower<L>>>>,
            >,
        >,
    >,
>;

/// The whole outbound stack over `leaf` as a concrete type ([`outbound_stack`]): cloning it
/// and calling it box nothing.
pub type Outbound<L> = RescueService<crate::route::Route<ByRoute<Policies<L>, Lower<L>>>>;

type RescueService<S> = crate::rescue::Rescue<S>;

/// [`outbound_over`] as a concrete type, for a caller that can name it (the mesh's own
/// client): no boxed service, no boxed future per request.
pub fn outbound_stack<S>(
    source: Arc<ArcSwap<Snapshot>>,
    caller: Caller,
    parts: &StackParts,
    leaf: S,
) -> Outbound<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    // Retries, circuit breakers, balancing and the connection: every request goes through
    // them.
    let lower = ServiceBuilder::new()
        .layer(
            RetryLayer::from_target()
                .with_budgets(parts.retry_budgets.clone())
                .with_stats(parts.retry_stats.clone())
                .with_breakers(parts.breakers.clone()),
        )
        .layer(CircuitBreakerLayer::from_target().with_breakers(parts.breakers.clone()))
        .layer(BalanceLayer::from_target(parts.endpoint_stats.clone()))
        .service(leaf);
    // The route's own policies: only requests whose rule has some go through these layers.
    let policies = ServiceBuilder::new()
        .layer(CorsLayer::from_target())
        .layer(RespondLayer::from_target())
        .layer(RewriteLayer::from_target())
        .layer(HeaderOpsLayer::from_target())
        .layer(RouteTimeoutLayer::from_target())
        .layer(FaultLayer::from_target())
        .layer(MirrorLayer::from_target())
        .service(lower.clone());
    ServiceBuilder::new()
        .layer(RescueLayer::new())
        .layer(RouteLayer::from_shared(source, caller))
        .service(ByRoute {
            policies: Arc::new(policies),
            plain: lower,
        })
}

/// The outbound client stack, routing with the snapshots in `source` for `caller`.
pub fn outbound(
    source: Arc<ArcSwap<Snapshot>>,
    caller: Caller,
    parts: &StackParts,
) -> BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError> {
    outbound_over(source, caller, parts, parts.connect.clone())
}

/// The outbound stack over another leaf service than the connection pools (for tests and
/// benchmarks: the leaf receives requests addressed to the chosen endpoint).
pub fn outbound_over<S>(
    source: Arc<ArcSwap<Snapshot>>,
    caller: Caller,
    parts: &StackParts,
    leaf: S,
) -> BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(outbound_stack(source, caller, parts, leaf))
}

/// Sends a request through the route-policy layers (CORS, redirects and direct responses,
/// rewrites, header operations, timeout, faults, mirrors) only when its [`Target`] has some
/// of them; a request on the default route, or on a rule that only forwards, goes straight to
/// the retry layer, and one on a rule whose only policy is a timeout through the timeout
/// layer alone. All three share the same retry, balancer and connection pools; skipping
/// seven layers that would do nothing saves their futures and request moves on every request.
#[derive(Clone, Debug)]
pub struct ByRoute<P, L> {
    /// Shared, and cloned only for a request that takes it: cloning the stack (once per
    /// request in tower) then clones the plain path alone.
    policies: Arc<P>,
    plain: L,
}

/// True if a layer between the route and the retry layer has something to do for `req`.
pub fn needs_route_policies<B>(req: &http::Request<B>) -> bool {
    route_policies(req) != RoutePolicies::None
}

/// Which of the route-policy layers a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoutePolicies {
    /// None: the request goes straight to the retry layer.
    None,
    /// Only the route timeout (the most common explicit rule: a timeout, with or without
    /// retries, which are below).
    Timeout,
    /// Others: every policy layer.
    All,
}

fn route_policies<B>(req: &http::Request<B>) -> RoutePolicies {
    let ext = req.extensions();
    if ext.get::<DestinationHeaders>().is_some() {
        return RoutePolicies::All;
    }
    let Some(target) = ext.get::<Target>() else {
        // No route decision: a request that bypassed the route layer takes every layer.
        return RoutePolicies::All;
    };
    let Some(route) = target.route() else {
        // The default route.
        return RoutePolicies::None;
    };
    if !matches!(route.action, Action::Forward(_))
        || route.fault.is_some()
        || !route.mirrors.is_empty()
        || route.rewrite.is_some()
        || !route.headers.is_empty()
        || route.cors.is_some()
    {
        RoutePolicies::All
    } else if route.timeout.is_some() {
        RoutePolicies::Timeout
    } else {
        RoutePolicies::None
    }
}

impl<P, L> tower::Service<http::Request<Body>> for ByRoute<P, L>
where
    P: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
    P::Error: Into<BoxError>,
    L: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    L::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    // The policy path's future nests seven layers' futures, the timed path's holds a timer:
    // both boxed, so that the plain path's future (and every future wrapping it, up to the
    // caller's) stays small to move.
    type Future = Either<
        Pin<
            Box<
                futures_util::future::MapErr<
                    Oneshot<P, http::Request<Body>>,
                    fn(P::Error) -> BoxError,
                >,
            >,
        >,
        Either<
            Pin<Box<crate::timeout::future::ResponseFuture<L::Future>>>,
            futures_util::future::MapErr<L::Future, fn(L::Error) -> BoxError>,
        >,
    >;

    /// Ready when the plain path is; the policy path is driven to readiness by the request
    /// that takes it.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.plain.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use futures_util::TryFutureExt;
        match route_policies(&req) {
            RoutePolicies::All => {
                let policies = P::clone(&self.policies);
                Either::Left(Box::pin(
                    policies.oneshot(req).map_err(Into::into as fn(_) -> _),
                ))
            }
            // The timeout layer alone, straight over the plain path (polled ready): the
            // same order as in the policy path, where every layer between would pass the
            // request through.
            RoutePolicies::Timeout => Either::Right(Either::Left(Box::pin(
                crate::timeout::Timeout::from_target(&mut self.plain).call(req),
            ))),
            RoutePolicies::None => Either::Right(Either::Right(
                self.plain.call(req).map_err(Into::into as fn(_) -> _),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::config::load_str;

    fn target_for(yaml: &str, uri: &str) -> http::Request<()> {
        let loaded = load_str(yaml, None);
        let snapshot = Arc::new(Snapshot::build(&loaded.resources).unwrap());
        let mut req = http::Request::get(uri).body(()).unwrap();
        let (target, headers) =
            crate::route::decide(&snapshot, &Caller::new("default"), &req, 0).unwrap();
        req.extensions_mut().insert(target);
        if let Some(h) = headers {
            req.extensions_mut().insert(h);
        }
        req
    }

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /timed}}]
    timeout: 2s
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /tagged}}]
    route: [{destination: {host: reviews}, headers: {request: {set: {x-a: b}}}}]
  - route: [{destination: {host: reviews}}]
";

    #[test]
    fn only_rules_with_policies_take_the_policy_layers() {
        assert!(!needs_route_policies(&target_for(
            "",
            "http://reviews:9080/"
        )));
        assert!(!needs_route_policies(&target_for(
            VS,
            "http://reviews:9080/plain"
        )));
        for path in ["/slow", "/timed", "/tagged"] {
            let req = target_for(VS, &format!("http://reviews:9080{path}"));
            assert!(needs_route_policies(&req), "{path}");
        }
        // A rule whose only policy is its timeout takes the timeout layer alone.
        let timed = target_for(VS, "http://reviews:9080/timed");
        assert_eq!(route_policies(&timed), RoutePolicies::Timeout);
        for path in ["/slow", "/tagged"] {
            let req = target_for(VS, &format!("http://reviews:9080{path}"));
            assert_eq!(route_policies(&req), RoutePolicies::All, "{path}");
        }
        // A request that did not go through the route layer takes every layer.
        assert!(needs_route_policies(
            &http::Request::get("/").body(()).unwrap()
        ));
    }

    /// A rule whose only policy is a timeout (and retries, below it) takes the timeout layer
    /// alone: the upstream hangs, the caller gets Envoy's 504 `UT` when the timeout elapses,
    /// with no retry (a route timeout covers every try).
    #[tokio::test(start_paused = true)]
    async fn a_timeout_only_rule_answers_504_ut_when_the_upstream_hangs() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const RULES: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ratings-v1 }
spec: { address: 127.0.0.1, ports: { http: 20001 }, labels: { app: ratings } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - timeout: 3s
    retries: { attempts: 2, perTryTimeout: 5s, retryOn: 5xx }
    route: [{ destination: { host: ratings } }]
";
        let probe = target_for(RULES, "http://ratings:9080/ratings/0");
        assert_eq!(route_policies(&probe), RoutePolicies::Timeout);
        let loaded = load_str(RULES, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snapshot = Arc::new(Snapshot::build(&loaded.resources).unwrap());

        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let hangs = tower::service_fn(move |_req: http::Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<http::Response<Body>, BoxError>>()
        });
        let parts = StackParts::new(Duration::from_secs(1));
        let stack = outbound_over(
            Arc::new(ArcSwap::from(snapshot)),
            Caller::new("default"),
            &parts,
            hangs,
        );
        let start = tokio::time::Instant::now();
        let res = stack
            .oneshot(
                http::Request::get("http://ratings:9080/ratings/0")
                    .body(crate::body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(crate::flags::ResponseFlags::of(&res).to_string(), "UT");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one try, not retried");
    }
}
