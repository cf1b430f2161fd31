use std::sync::Arc;

use mesh_core::policy::fault::FaultPolicy;
use tower::Layer;

use super::Fault;

/// Where a [`Fault`] service finds the policy of a request.
#[derive(Clone, Debug)]
pub(super) enum Policy {
    /// The same policy for every request.
    Static(Arc<FaultPolicy>),
    /// `route.fault` of the request's [`Target`](crate::target::Target).
    FromTarget,
}

/// Injects delays and aborts into a share of requests; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct FaultLayer {
    policy: Policy,
}

// === impl FaultLayer ===

impl FaultLayer {
    /// Injects `policy` into every request.
    pub fn new(policy: FaultPolicy) -> Self {
        Self {
            policy: Policy::Static(Arc::new(policy)),
        }
    }

    /// Injects the fault policy of each request's route (`route.fault` of its
    /// [`Target`](crate::target::Target)); requests without one pass through.
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault::with_policy(inner, self.policy.clone())
    }
}
