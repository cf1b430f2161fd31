//! The outbound stack, composed from the layers in the order Envoy applies them.
//!
//! ```text
//! rescue            errors → Envoy-style local replies (404 NR, 503 UH/UF/UC, 504 UT)
//! route             VirtualService match, weighted destination → Target
//! cors              preflights answered, CORS response headers
//! respond           redirect, direct response
//! rewrite, headers  path/authority rewrite; request and response header operations
//! timeout           the route timeout (includes injected delays and every retry)
//! fault             injected delays and aborts (above retry: aborts are never retried)
//! mirror            fire-and-forget copies (after the fault: an aborted request is not
//!                   mirrored; never retried)
//! retry             retries, per-try timeout, back-off, budget
//! balance           endpoint choice (least request, round robin, random)
//! connect           HTTP/1.1 or HTTP/2 connection pools, plaintext or mutual TLS
//! ```
//!
//! Every layer below `route` reads its policy from the request's
//! [`Target`](crate::target::Target), so the whole stack is built once per client and
//! follows configuration changes without being rebuilt.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use mesh_core::{BoxError, snapshot::Snapshot};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::{
    balance::{BalanceLayer, EndpointStats},
    body::Body,
    connect::Connect,
    cors::CorsLayer,
    fault::FaultLayer,
    headers::{HeaderOpsLayer, RewriteLayer},
    mirror::MirrorLayer,
    rescue::RescueLayer,
    respond::RespondLayer,
    retry::{RetryBudgets, RetryLayer, RetryStats},
    route::{Caller, RouteLayer},
    timeout::RouteTimeoutLayer,
};

/// The state the outbound stacks of one mesh share: connection pools, in-flight counts,
/// retry budgets and counters.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// Retry budgets, per destination host.
    pub retry_budgets: Arc<RetryBudgets>,
    /// Retry counters.
    pub retry_stats: Arc<RetryStats>,
    /// In-flight requests per endpoint (least request) and round-robin cursors.
    pub endpoint_stats: EndpointStats,
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
            connect,
        }
    }
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
    let svc = ServiceBuilder::new()
        .layer(RescueLayer::new())
        .layer(RouteLayer::from_shared(source, caller))
        .layer(CorsLayer::from_target())
        .layer(RespondLayer::from_target())
        .layer(RewriteLayer::from_target())
        .layer(HeaderOpsLayer::from_target())
        .layer(RouteTimeoutLayer::from_target())
        .layer(FaultLayer::from_target())
        .layer(MirrorLayer::from_target())
        .layer(
            RetryLayer::from_target()
                .with_budgets(parts.retry_budgets.clone())
                .with_stats(parts.retry_stats.clone()),
        )
        .layer(BalanceLayer::from_target(parts.endpoint_stats.clone()))
        .service(leaf);
    BoxCloneSyncService::new(svc)
}
