//! Outlier detection in the balancer: what a response future reports, and where.

use std::sync::Arc;

use mesh_core::{
    BoxError,
    policy::outlier::{LocalOrigin, Outcome, OutlierPolicy, may_eject},
    snapshot::Endpoint,
};

use super::{EndpointStats, stats::EndpointLoad};
use crate::{
    error::{PerTryTimeout, RouteTimeout, UpstreamConnectFailure, UpstreamReset, cause_ref},
    target::Target,
};

/// What a response future needs to report to outlier detection: only present for
/// destinations whose DestinationRule configures `outlierDetection`.
#[derive(Debug)]
pub(super) struct OutlierCtx {
    pub(super) policy: OutlierPolicy,
    /// The destination, to count its ejected endpoints when ejecting one more.
    pub(super) peers: Peers,
    pub(super) stats: EndpointStats,
}

/// The endpoints of a destination.
#[derive(Debug)]
pub(super) enum Peers {
    /// The target's destination in its snapshot.
    Target(Target),
    /// A fixed list, connected to at `port` (or each endpoint's only port).
    Fixed {
        endpoints: Arc<[Arc<Endpoint>]>,
        port: u16,
    },
}

impl OutlierCtx {
    /// Records `outcome` for the endpoint `load`, ejecting it if a count is reached and
    /// `maxEjectionPercent` allows.
    pub(super) fn record(&self, load: &EndpointLoad, outcome: Outcome) {
        let now = self.stats.now_ms();
        load.record_outcome(&self.policy, outcome, now, || {
            let (ejected, total) = super::service::count_ejected(&self.stats, &self.peers, now);
            may_eject(&self.policy, ejected, total)
        });
    }
}

/// The outcome an error stands for: connect failures, resets and timeouts are local-origin
/// failures; other errors (a layer's own refusal, such as a circuit breaker's overflow) are
/// not the endpoint's doing and are not counted, as in Envoy.
pub(super) fn outcome_of_error(err: &BoxError) -> Option<Outcome> {
    let err: &(dyn std::error::Error + 'static) = &**err;
    let local = if cause_ref::<UpstreamConnectFailure>(err).is_some() {
        LocalOrigin::ConnectFailed
    } else if cause_ref::<UpstreamReset>(err).is_some() {
        LocalOrigin::Reset
    } else if cause_ref::<PerTryTimeout>(err).is_some()
        || cause_ref::<RouteTimeout>(err).is_some()
        || cause_ref::<tokio::time::error::Elapsed>(err).is_some()
        || cause_ref::<std::io::Error>(err)
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    {
        LocalOrigin::Timeout
    } else {
        return None;
    };
    Some(Outcome::LocalOrigin(local))
}
