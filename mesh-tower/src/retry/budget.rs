//! The retry budgets' shared state: active requests and retries per destination host.

use arc_swap::ArcSwap;
use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use mesh_core::policy::retry::RetryBudget;

/// Looked up on every request: foldhash rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Hosts kept without in-flight requests before idle entries are dropped.
const IDLE_HOSTS: usize = 1024;

/// The retry budget state of every destination host, created on first use.
///
/// One registry per mesh client: every [`RetryLayer`](super::RetryLayer) built with the
/// same registry ([`RetryLayer::with_budgets`](super::RetryLayer::with_budgets)) counts against
/// the same budgets. Requests without a [`Target`](crate::target::Target) share one
/// [`standalone`](Self::standalone) budget.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use mesh_tower::retry::{RetryBudgets, RetryLayer};
/// let budgets = Arc::new(RetryBudgets::new());
/// let layer = RetryLayer::from_target().with_budgets(budgets.clone());
/// assert!(budgets.get("reviews.default.svc.cluster.local").is_none()); // no request yet
/// ```
#[derive(Debug, Default)]
pub struct RetryBudgets {
    /// Read on every request without a lock (copied on the rare insert).
    hosts: ArcSwap<HashMap<String, Arc<HostBudget>>>,
    /// Serializes inserts.
    insert: Mutex<()>,
    standalone: Arc<HostBudget>,
}

impl RetryBudgets {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The budget state of `host`, if a request to it was seen (and it was not dropped while
    /// idle).
    pub fn get(&self, host: &str) -> Option<Arc<HostBudget>> {
        self.hosts.load().get(host).cloned()
    }

    /// The budget state shared by requests without a destination host.
    pub fn standalone(&self) -> &Arc<HostBudget> {
        &self.standalone
    }

    /// The budget state of `host`, created on first use.
    pub(super) fn host(&self, host: &str) -> Arc<HostBudget> {
        if let Some(b) = self.get(host) {
            return b;
        }
        let _insert = self.insert.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = self.get(host) {
            return b;
        }
        let mut hosts = HashMap::clone(&self.hosts.load());
        if hosts.len() >= IDLE_HOSTS {
            // Only guards (and readers of an older map, briefly) hold other references; an
            // entry without any has zero counters and is recreated on its next use.
            hosts.retain(|_, b| Arc::strong_count(b) > 2);
        }
        let budget = hosts.entry(host.to_owned()).or_default().clone();
        self.hosts.store(Arc::new(hosts));
        budget
    }
}

/// The active requests and retries of one destination.
#[derive(Debug, Default)]
pub struct HostBudget {
    active_requests: AtomicU64,
    active_retries: AtomicU64,
}

impl HostBudget {
    /// Requests in flight (from `call` until the response future completes).
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Acquire)
    }

    /// Retries in flight (from the decision to retry until that try completes).
    pub fn active_retries(&self) -> u64 {
        self.active_retries.load(Ordering::Acquire)
    }

    /// Counts a request as active until the guard drops.
    pub(super) fn start_request(self: Arc<Self>) -> RequestGuard {
        self.active_requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self)
    }

    /// Counts a retry as in flight until the guard drops, if `limits` allow one more.
    pub(super) fn try_start_retry(self: &Arc<Self>, limits: &RetryBudget) -> Option<RetryGuard> {
        let active_requests = self.active_requests();
        self.active_retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |retries| {
                limits
                    .allows(active_requests, retries)
                    .then_some(retries + 1)
            })
            .ok()
            .map(|_| RetryGuard(self.clone()))
    }
}

/// An active request; decrements the count on drop.
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<HostBudget>);

impl RequestGuard {
    /// The destination's budget state.
    pub(super) fn budget(&self) -> &Arc<HostBudget> {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight; decrements the count on drop.
#[derive(Debug)]
pub(super) struct RetryGuard(Arc<HostBudget>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_budget_refuses_beyond_the_floor() {
        let budgets = RetryBudgets::new();
        let b = budgets.host("a");
        assert!(Arc::ptr_eq(&b, &budgets.host("a")));
        let requests: Vec<_> = (0..10).map(|_| b.clone().start_request()).collect();
        assert_eq!(b.active_requests(), 10);
        let limits = RetryBudget::default();
        let retries: Vec<_> = (0..5).filter_map(|_| b.try_start_retry(&limits)).collect();
        assert_eq!(retries.len(), 3);
        assert_eq!(b.active_retries(), 3);
        drop(retries);
        assert_eq!(b.active_retries(), 0);
        assert!(b.try_start_retry(&limits).is_some());
        drop(requests);
        assert_eq!(b.active_requests(), 0);
        assert!(budgets.get("b").is_none());
    }

    #[test]
    fn idle_hosts_are_dropped_when_many() {
        let budgets = RetryBudgets::new();
        let busy = budgets.host("busy");
        let _guard = busy.clone().start_request();
        drop(busy);
        for i in 0..IDLE_HOSTS + 10 {
            let _ = budgets.host(&format!("h{i}"));
        }
        let len = budgets.hosts.load().len();
        assert!(len <= IDLE_HOSTS, "{len}");
        assert_eq!(budgets.get("busy").unwrap().active_requests(), 1);
    }
}
