use std::sync::Arc;

use mesh_core::{
    policy::{balance::Algorithm, outlier::OutlierPolicy},
    snapshot::Endpoint,
};

use super::{EndpointStats, service::Mode};

/// Wraps a service (normally [`Connect`](crate::connect::Connect)) in a [`Balance`].
///
/// [`Balance`]: super::Balance
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    pub(super) stats: EndpointStats,
    pub(super) mode: Mode,
}

// === impl BalanceLayer ===

impl BalanceLayer {
    /// Balances each request over the endpoints of its [`Target`](crate::target::Target)
    /// with the algorithm its DestinationRule asks for; requests without a `Target` pass
    /// through untouched. `stats` is shared with every other balancer of the mesh.
    pub fn from_target(stats: EndpointStats) -> Self {
        Self {
            stats,
            mode: Mode::Target,
        }
    }

    /// Balances every request over a fixed list of endpoints with `algorithm`, without a
    /// [`Target`](crate::target::Target). The port connected to is the endpoint's only port,
    /// else the port the request addresses. Services made by this layer share one
    /// [`EndpointStats`].
    pub fn new(endpoints: impl IntoIterator<Item = Arc<Endpoint>>, algorithm: Algorithm) -> Self {
        Self {
            stats: EndpointStats::new(),
            mode: Mode::Fixed {
                endpoints: endpoints.into_iter().collect(),
                algorithm,
                outlier: None,
            },
        }
    }

    /// Ejects failing endpoints of a fixed list with `policy` (see the
    /// [module docs](super#outlier-detection)); with [`from_target`](Self::from_target) the
    /// DestinationRule decides and this does nothing. The last call wins.
    ///
    /// # Examples
    /// ```
    /// use mesh_core::policy::{balance::Algorithm, outlier::OutlierPolicy};
    /// use mesh_tower::balance::BalanceLayer;
    /// let layer = BalanceLayer::new([], Algorithm::RoundRobin)
    ///     .outlier_detection(OutlierPolicy::default().consecutive_5xx(3));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn outlier_detection(mut self, policy: OutlierPolicy) -> Self {
        if let Mode::Fixed { outlier, .. } = &mut self.mode {
            *outlier = Some(policy);
        }
        self
    }

    /// The load statistics the balancers made by this layer share.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }
}
