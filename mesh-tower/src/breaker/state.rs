//! The counters: one [`Cluster`] per destination host, subset and port, shared by every
//! stack of a mesh.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use mesh_core::config::networking::destination_rule::ConnectionPoolSettings;
use mesh_core::snapshot::Snapshot;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::{PoolLimits, connection_pool_settings};
use crate::{
    error::{OverflowLimit, UpstreamOverflow},
    target::Target,
};

/// The circuit breakers of every cluster, shared by the outbound stacks of one mesh (Envoy
/// keeps one set of counters per cluster for all its listeners).
///
/// A cluster is a destination host, subset and service port, as Envoy's
/// `outbound|port|subset|host`; one is created the first time a request goes to a
/// destination whose DestinationRule limits it. Clusters without limits have no state.
///
/// # Clone
///
/// Clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct CircuitBreakers {
    inner: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// host → its clusters (a short list: subsets × ports); copied on insert.
    clusters: ArcSwap<foldhash::HashMap<Arc<str>, Vec<Arc<Cluster>>>>,
    inserting: Mutex<()>,
    /// Requests refused because a limit was reached (for telemetry).
    overflows: std::sync::atomic::AtomicU64,
}

/// The limits and counters of one cluster.
#[derive(Debug)]
pub(super) struct Cluster {
    subset: Option<Arc<str>>,
    port: u16,
    /// `outbound|port|subset|host`, for errors.
    name: String,
    limits: PoolLimits,
    requests: Option<Arc<Semaphore>>,
    connections: Option<Arc<Semaphore>>,
    /// Present when `connections` is (pending requests only exist then).
    pending: Option<Arc<Semaphore>>,
    retries: Option<Arc<Semaphore>>,
}

/// What a cluster's circuit breakers hold right now (for tests, metrics and debugging).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Requests admitted and not finished (counted against `http2MaxRequests`).
    pub active_requests: usize,
    /// HTTP/1.1 requests holding a connection slot (`maxConnections`).
    pub active_connections: usize,
    /// Requests waiting for a connection slot.
    pub pending_requests: usize,
    /// Retries in flight (`maxRetries`).
    pub active_retries: usize,
}

/// The slots a request holds until its response ends (or it is dropped).
#[derive(Debug, Default)]
pub(super) struct Permits {
    _request: Option<OwnedSemaphorePermit>,
    _retry: Option<OwnedSemaphorePermit>,
    /// A retry slot the retry layer took.
    _held_retry: Option<RetryPermit>,
    pub(super) connection: Option<OwnedSemaphorePermit>,
}

/// The retry slot a try needs.
#[derive(Debug)]
pub(super) enum RetrySlot {
    /// A first try: none.
    None,
    /// A retry: take one, or overflow.
    Take,
    /// A retry whose slot the retry layer took before retrying.
    Held(RetryPermit),
}

/// A retry slot under `maxRetries`, taken by the [`retry`](crate::retry) layer when it
/// decides to retry (as Envoy checks the limit then, and returns the response it has when
/// the limit is reached), carried in the retry's extensions to the breaker, which holds it
/// while the retry is in flight.
#[derive(Clone, Debug)]
pub(crate) struct RetryPermit(
    #[expect(dead_code, reason = "held for its drop")] Arc<OwnedSemaphorePermit>,
);

/// Whether a retry may be made under its cluster's `maxRetries`.
#[derive(Debug)]
pub(crate) enum RetryAdmission {
    /// The destination does not limit retries.
    Unlimited,
    /// A slot was taken; put the permit in the retry's extensions.
    Admitted(RetryPermit),
    /// Every slot is taken: do not retry.
    Overflow,
}

/// Waits for a connection slot.
pub(super) type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The breaker's answer to a request.
pub(super) enum Admission {
    /// Go ahead, holding these.
    Admitted(Permits),
    /// Wait for a connection slot, holding these and a pending slot.
    Pending {
        permits: Permits,
        pending: OwnedSemaphorePermit,
        acquire: Acquire,
    },
    /// A limit is reached.
    Overflow(UpstreamOverflow),
}

// === impl CircuitBreakers ===

impl CircuitBreakers {
    /// No clusters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tries refused because a cluster's limit was reached, since these breakers were
    /// created, summed over clusters: requests over a connection, pending or request limit
    /// (Envoy's `upstream_rq_pending_overflow`) and retries over `maxRetries` (Envoy's
    /// `upstream_rq_retry_overflow`).
    pub fn overflows(&self) -> u64 {
        self.inner
            .overflows
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one overflow.
    pub(super) fn record_overflow(&self) {
        self.inner
            .overflows
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// True if some DestinationRule in `snapshot` has a `connectionPool` (the snapshot knows
    /// it from its build).
    pub(super) fn any_pool(&self, snapshot: &Arc<Snapshot>) -> bool {
        snapshot.has_connection_pools()
    }

    /// The cluster for `host`, `subset` and `port` with `limits`; created (or replaced, if
    /// the configuration changed its limits: requests in flight keep their old slots) on
    /// first use.
    pub(super) fn cluster(
        &self,
        host: &Arc<str>,
        subset: Option<&Arc<str>>,
        port: u16,
        limits: PoolLimits,
    ) -> Arc<Cluster> {
        let find = |list: &Vec<Arc<Cluster>>| {
            list.iter()
                .find(|c| c.port == port && c.subset.as_deref() == subset.map(|s| &**s))
                .filter(|c| c.limits == limits)
                .cloned()
        };
        if let Some(c) = self.inner.clusters.load().get(&**host).and_then(find) {
            return c;
        }
        let _guard = self
            .inner
            .inserting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.inner.clusters.load_full();
        if let Some(c) = current.get(&**host).and_then(find) {
            return c;
        }
        let cluster = Arc::new(Cluster::new(host, subset.cloned(), port, limits));
        let mut next = (*current).clone();
        let list = next.entry(host.clone()).or_default();
        list.retain(|c| !(c.port == port && c.subset.as_deref() == subset.map(|s| &**s)));
        list.push(cluster.clone());
        self.inner.clusters.store(Arc::new(next));
        cluster
    }

    /// `target`'s DestinationRule `connectionPool` (for its subset and port), if it has one.
    pub(super) fn pool_of<'t>(&self, target: &'t Target) -> Option<&'t ConnectionPoolSettings> {
        if !self.any_pool(&target.snapshot) {
            return None;
        }
        target
            .snapshot
            .destination_policy(&target.host)
            .and_then(|p| connection_pool_settings(p, target.subset.as_deref(), target.port))
    }

    /// The cluster `target` counts in under `pool`; `None` when `pool` sets no limits.
    pub(super) fn cluster_under(
        &self,
        target: &Target,
        pool: &ConnectionPoolSettings,
    ) -> Option<Arc<Cluster>> {
        let limits = PoolLimits::from_istio(pool);
        (!limits.is_unlimited())
            .then(|| self.cluster(&target.host, target.subset.as_ref(), target.port, limits))
    }

    /// Takes a retry slot of `target`'s cluster for a retry about to be made.
    pub(crate) fn admit_retry(&self, target: &Target) -> RetryAdmission {
        let Some(cluster) = self
            .pool_of(target)
            .and_then(|pool| self.cluster_under(target, pool))
        else {
            return RetryAdmission::Unlimited;
        };
        match cluster.take_retry() {
            Ok(None) => RetryAdmission::Unlimited,
            Ok(Some(permit)) => RetryAdmission::Admitted(RetryPermit(Arc::new(permit))),
            Err(()) => {
                tracing::debug!(cluster = %cluster.name, "retry over maxRetries: not retried");
                self.record_overflow();
                RetryAdmission::Overflow
            }
        }
    }

    /// What the circuit breakers of a cluster hold, if it has any.
    pub fn usage(&self, host: &str, subset: Option<&str>, port: u16) -> Option<Usage> {
        self.inner
            .clusters
            .load()
            .get(host)?
            .iter()
            .find(|c| c.port == port && c.subset.as_deref() == subset)
            .map(|c| c.usage())
    }
}

// === impl Cluster ===

/// A semaphore with `max` permits (tokio's maximum if larger).
fn semaphore(max: u32) -> Arc<Semaphore> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))
}

impl Cluster {
    pub(super) fn new(host: &str, subset: Option<Arc<str>>, port: u16, limits: PoolLimits) -> Self {
        let name = crate::target::cluster_name(port, subset.as_deref(), host);
        let connections = limits.get_max_connections().map(semaphore);
        Self {
            subset,
            port,
            name,
            limits,
            requests: limits.get_max_requests().map(semaphore),
            pending: connections
                .as_ref()
                .map(|_| semaphore(limits.get_max_pending_requests().unwrap_or(u32::MAX))),
            connections,
            retries: limits.get_max_retries().map(semaphore),
        }
    }

    fn overflow(&self, limit: OverflowLimit) -> Admission {
        tracing::debug!(cluster = %self.name, %limit, "circuit breaker overflow");
        Admission::Overflow(UpstreamOverflow {
            cluster: self.name.clone(),
            limit,
        })
    }

    /// Takes the slots a request needs: a request slot, a retry slot for a retry, and for
    /// HTTP/1.1 a connection slot, or a pending slot to wait for one.
    pub(super) fn admit(&self, http1: bool, retry: RetrySlot) -> Admission {
        let take = |s: &Option<Arc<Semaphore>>| match s {
            None => Ok(None),
            Some(s) => s.clone().try_acquire_owned().map(Some),
        };
        let (retry, held_retry) = match retry {
            RetrySlot::None => (None, None),
            RetrySlot::Held(permit) => (None, Some(permit)),
            RetrySlot::Take => match self.take_retry() {
                Ok(permit) => (permit, None),
                Err(()) => return self.overflow(OverflowLimit::MaxRetries),
            },
        };
        let Ok(request) = take(&self.requests) else {
            return self.overflow(OverflowLimit::MaxRequests);
        };
        let mut permits = Permits {
            _request: request,
            _retry: retry,
            _held_retry: held_retry,
            connection: None,
        };
        let (Some(connections), true) = (&self.connections, http1) else {
            return Admission::Admitted(permits);
        };
        // A free slot goes to the requests already waiting first: the semaphore is fair, and
        // hands released slots to waiters before `try_acquire` can see them.
        if let Ok(c) = connections.clone().try_acquire_owned() {
            permits.connection = Some(c);
            return Admission::Admitted(permits);
        }
        let Some(Ok(pending)) = self.pending.as_ref().map(|p| p.clone().try_acquire_owned()) else {
            return self.overflow(OverflowLimit::MaxPendingRequests);
        };
        Admission::Pending {
            permits,
            pending,
            acquire: Box::pin(connections.clone().acquire_owned()),
        }
    }

    /// A retry slot: `Ok(None)` if the cluster does not limit retries, `Err(())` if every
    /// slot is taken.
    fn take_retry(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.retries {
            None => Ok(None),
            Some(s) => s.clone().try_acquire_owned().map(Some).map_err(|_| ()),
        }
    }

    fn usage(&self) -> Usage {
        let used = |s: &Option<Arc<Semaphore>>, max: Option<u32>| {
            s.as_ref().zip(max).map_or(0, |(s, max)| {
                usize::try_from(max)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS)
                    .saturating_sub(s.available_permits())
            })
        };
        let l = &self.limits;
        Usage {
            active_requests: used(&self.requests, l.get_max_requests()),
            active_connections: used(&self.connections, l.get_max_connections()),
            pending_requests: used(
                &self.pending,
                self.pending
                    .as_ref()
                    .map(|_| l.get_max_pending_requests().unwrap_or(u32::MAX)),
            ),
            active_retries: used(&self.retries, l.get_max_retries()),
        }
    }
}
