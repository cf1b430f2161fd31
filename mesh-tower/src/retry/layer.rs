//! [`RetryLayer`]: the retry configuration, cheap to clone.

use std::sync::Arc;

use mesh_core::policy::retry::{RetryBudget, RetryPolicy};
use tower::Layer;

use super::{RetryBudgets, RetryStats, service::Retry};
use crate::breaker::CircuitBreakers;

/// Where each request's policy comes from.
#[derive(Clone, Debug)]
pub(super) enum PolicySource {
    /// One policy for every request.
    Static(Arc<RetryPolicy>),
    /// The request's [`Target`](crate::target::Target): its route's `retries`, or the mesh
    /// default for the default route; requests without a target pass through.
    FromTarget,
}

/// What every [`Retry`] built by one layer shares.
#[derive(Clone, Debug)]
pub(super) struct Shared {
    pub(super) source: PolicySource,
    pub(super) budgets: Arc<RetryBudgets>,
    pub(super) stats: Arc<RetryStats>,
    /// Budget limits when the destination's DestinationRule sets none.
    pub(super) default_budget: RetryBudget,
    /// The circuit breakers whose `maxRetries` a retry must fit in.
    pub(super) breakers: Option<CircuitBreakers>,
}

/// Builds [`Retry`] services; see the [module docs](super).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use mesh_core::policy::retry::{RetryBudget, RetryPolicy};
/// use mesh_tower::retry::{RetryBudgets, RetryLayer};
///
/// // Per request, from the route layer's `Target`, with the mesh's shared budgets:
/// let budgets = Arc::new(RetryBudgets::new());
/// let per_route = RetryLayer::from_target().with_budgets(budgets);
///
/// // One static policy, without the route layer:
/// let standalone = RetryLayer::new(RetryPolicy::MeshDefault).with_default_budget(RetryBudget {
///     min_retry_concurrency: 10,
///     ..RetryBudget::default()
/// });
/// assert_eq!(standalone.stats().retries(), 0);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

// === impl RetryLayer ===

impl RetryLayer {
    fn with_source(source: PolicySource) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                budgets: Arc::default(),
                stats: Arc::default(),
                default_budget: RetryBudget::default(),
                breakers: None,
            }),
        }
    }

    /// Retries every request under `policy`. A request's [`Target`](crate::target::Target),
    /// if any, still picks the budget (its host's, with its DestinationRule's limits).
    pub fn new(policy: RetryPolicy) -> Self {
        Self::with_source(PolicySource::Static(Arc::new(policy)))
    }

    /// Retries each request under its [`Target`](crate::target::Target)'s route policy
    /// (`route.retries`; the mesh default for the default route). Requests without a
    /// `Target` pass through untouched.
    pub fn from_target() -> Self {
        Self::with_source(PolicySource::FromTarget)
    }

    /// Counts against `budgets` (share one registry between all layers of a mesh client)
    /// instead of a registry of the layer's own. The last call wins.
    pub fn with_budgets(mut self, budgets: Arc<RetryBudgets>) -> Self {
        Arc::make_mut(&mut self.shared).budgets = budgets;
        self
    }

    /// Counts into `stats` instead of counters of the layer's own. The last call wins.
    pub fn with_stats(mut self, stats: Arc<RetryStats>) -> Self {
        Arc::make_mut(&mut self.shared).stats = stats;
        self
    }

    /// The budget limits for destinations whose DestinationRule sets no `retryBudget`
    /// (default 20 % of active requests, at least 3). The last call wins.
    pub fn with_default_budget(mut self, limits: RetryBudget) -> Self {
        Arc::make_mut(&mut self.shared).default_budget = limits;
        self
    }

    /// Checks each retry against `maxRetries` of `breakers` (share them with the
    /// [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer) below) when deciding to
    /// retry, as Envoy does: a retry over the limit is not made, and the caller gets the
    /// response at hand with the `UO` flag (or the error at hand). Without this, the breaker
    /// refuses the retry itself, with its `503 UO`. The last call wins.
    pub fn with_breakers(mut self, breakers: CircuitBreakers) -> Self {
        Arc::make_mut(&mut self.shared).breakers = Some(breakers);
        self
    }

    /// The budget registry the layer counts against.
    pub fn budgets(&self) -> &Arc<RetryBudgets> {
        &self.shared.budgets
    }

    /// The layer's counters.
    pub fn stats(&self) -> &Arc<RetryStats> {
        &self.shared.stats
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}
