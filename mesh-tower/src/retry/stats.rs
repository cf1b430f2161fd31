//! Counters for telemetry.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the retry layer did, counted since it was built (Envoy's `upstream_rq_retry`,
/// `upstream_rq_retry_overflow` and `upstream_rq_retry_limit_exceeded`).
///
/// The layer holds it in an `Arc` ([`RetryLayer::stats`](super::RetryLayer::stats)); share
/// one between layers with [`RetryLayer::with_stats`](super::RetryLayer::with_stats).
#[derive(Debug, Default)]
pub struct RetryStats {
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    limit_exceeded: AtomicU64,
}

impl RetryStats {
    /// New counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries sent (not counting first tries).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries wanted but refused because the destination's retry budget was spent.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    /// Retries wanted but refused because the policy's `attempts` were used up.
    pub fn limit_exceeded(&self) -> u64 {
        self.limit_exceeded.load(Ordering::Relaxed)
    }

    pub(super) fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_limit_exceeded(&self) {
        self.limit_exceeded.fetch_add(1, Ordering::Relaxed);
    }
}
