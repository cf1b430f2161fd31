//! Per-endpoint load the balancer reads: requests in flight, round-robin cursors,
//! first-seen times, outlier-detection state and consistent-hash tables.

use std::{
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::uri::Authority;
use mesh_core::policy::{
    hash::xxh64,
    outlier::{Outcome, OutlierPolicy, OutlierState},
};
use tokio::time::Instant;

use super::hash::CachedTable;

/// Maps looked up on every request: foldhash rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Requests in flight per endpoint and round-robin positions per destination, shared by every
/// balancer of one mesh; also each endpoint's outlier-detection state (ejections), when first
/// seen (for warmup) and the consistent-hash tables of each destination.
///
/// Create one per `Mesh` (or per process) and pass clones to each [`BalanceLayer`]: clones
/// share the same counters, so LEAST_REQUEST sees the load that every stack puts on an
/// endpoint.
///
/// # Concurrency
///
/// The counters are atomics in maps published through an [`ArcSwap`]: a request loads the
/// current maps without a lock (no shared cache line is written), reads the candidates'
/// counters, advances its round-robin cursor and clones the chosen endpoint's counter (an
/// `Arc`); incrementing and decrementing happen on the atomic. The maps are copied and
/// republished only the first time an endpoint or a destination is seen. Maps are nested (`address → port → counter`, `host → subset →
/// cursor`) so lookups borrow `&str` keys and allocate nothing.
///
/// # Memory
///
/// Entries are kept when endpoints go away, about two hundred bytes each; call
/// [`prune_idle`](Self::prune_idle) after a configuration change to drop the counters that
/// have nothing in flight and are not ejected, the cursors (round-robin then restarts at the
/// first endpoint) and the consistent-hash tables (rebuilt identically on the next request).
/// A pruned endpoint starts its warmup and its ejection multiplier over.
///
/// [`BalanceLayer`]: super::BalanceLayer
#[derive(Clone, Default)]
pub struct EndpointStats {
    inner: Arc<Inner>,
}

struct Inner {
    maps: ArcSwap<Maps>,
    /// Serializes the writers (copy, change, publish).
    write: Mutex<()>,
    /// Time zero for [`EndpointLoad`]'s down-until marks, first-seen times and outlier
    /// detection (whose sweep ticks are multiples of `interval` since then).
    epoch: Instant,
    /// The hash of the caller's own address, for `useSourceIp` when a request does not
    /// carry its peer's address.
    source_hash: u64,
    /// Ejections counted by endpoints [`EndpointStats::prune_idle`] dropped: the total stays
    /// monotonic, as a Prometheus counter must (a decrease reads as a reset).
    pruned_ejections: AtomicU64,
    /// When the last ejection made so far ends (milliseconds since `epoch`; shared with every
    /// [`EndpointLoad`]): before then some endpoint may be ejected, after it none is.
    ejections_end_ms: Arc<AtomicU64>,
}

/// What the balancer tracks per endpoint: requests in flight, and whether connecting to it
/// failed recently.
#[derive(Debug)]
pub(super) struct EndpointLoad {
    /// The stats' time zero.
    epoch: Instant,
    /// `address:port` as a URI authority, built once (`None` if the address cannot be one).
    authority: Option<Authority>,
    in_flight: AtomicU64,
    /// Consecutive connect failures.
    connect_failures: AtomicU32,
    /// Until when (milliseconds since the stats were created) the endpoint is avoided; 0 when
    /// it is not.
    down_until_ms: AtomicU64,
    /// When the balancer first saw the endpoint (milliseconds since the stats were created).
    first_seen_ms: u64,
    /// Until when the endpoint is ejected by outlier detection (milliseconds since the stats
    /// were created; 0 when it never was). Read without a lock when picking.
    ejected_until_ms: AtomicU64,
    /// The statistics' [`Inner::ejections_end_ms`], raised by each ejection.
    ejections_end_ms: Arc<AtomicU64>,
    /// Outlier detection's counters; locked only for destinations that configure it.
    outlier: Mutex<OutlierState>,
}

/// The first pause after a connect failure; it doubles with each consecutive failure.
pub(super) const CONNECT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest pause.
pub(super) const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl EndpointLoad {
    fn new(epoch: Instant, address: &str, port: u16, ejections_end_ms: Arc<AtomicU64>) -> Self {
        Self {
            epoch,
            authority: Authority::try_from(super::service::authority(address, port)).ok(),
            in_flight: AtomicU64::new(0),
            connect_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            first_seen_ms: millis(epoch.elapsed()),
            ejected_until_ms: AtomicU64::new(0),
            ejections_end_ms,
            outlier: Mutex::default(),
        }
    }

    /// When the balancer first saw the endpoint (milliseconds since the stats' epoch).
    pub(super) fn first_seen_ms(&self) -> u64 {
        self.first_seen_ms
    }

    /// True while outlier detection has the endpoint ejected.
    pub(super) fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Records an outcome for outlier detection at `now_ms`. When a count is reached,
    /// `may_eject` is asked (it counts the destination's ejected endpoints) and the
    /// endpoint is ejected if it allows.
    pub(super) fn record_outcome(
        &self,
        policy: &OutlierPolicy,
        outcome: Outcome,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) {
        let now = Duration::from_millis(now_ms);
        let mut state = self.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reason) = state.record(policy, outcome, now) else {
            return;
        };
        if !may_eject() {
            tracing::debug!(
                endpoint = ?self.authority,
                ?reason,
                "outlier detection: ejection refused by maxEjectionPercent"
            );
            return;
        }
        let until = state.eject(policy, now);
        self.ejected_until_ms
            .store(millis(until), Ordering::Relaxed);
        self.ejections_end_ms
            .fetch_max(millis(until), Ordering::Relaxed);
        tracing::debug!(
            endpoint = ?self.authority,
            ?reason,
            until_ms = millis(until),
            "outlier detection: endpoint ejected"
        );
    }

    /// How many times outlier detection ejected the endpoint.
    pub(super) fn ejections(&self) -> u64 {
        self.outlier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ejections()
    }

    /// `address:port` as a URI authority; `None` if the address cannot be one.
    pub(super) fn authority(&self) -> Option<&Authority> {
        self.authority.as_ref()
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True if a connect failure marked the endpoint down (it may have expired since).
    pub(super) fn marked_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) != 0
    }

    /// True while the endpoint is avoided after connect failures.
    pub(super) fn is_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Records a connect failure: the endpoint is avoided for a backoff that doubles with
    /// each consecutive failure (0.5 s, 1 s, 2 s … 30 s).
    pub(super) fn connect_failed(&self) {
        let now_ms = millis(self.epoch.elapsed());
        let n = self
            .connect_failures
            .fetch_add(1, Ordering::Relaxed)
            .min(16);
        let backoff = CONNECT_BACKOFF_BASE
            .saturating_mul(1 << n)
            .min(CONNECT_BACKOFF_MAX);
        let until = now_ms + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX / 2);
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Records a response: the endpoint is healthy again.
    pub(super) fn responded(&self) {
        if self.connect_failures.swap(0, Ordering::Relaxed) > 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// Milliseconds in `d`, saturating well below `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Consistent-hash tables by host → subset (`""` for none) → service port.
type Tables = HashMap<String, HashMap<String, HashMap<u16, Arc<CachedTable>>>>;

/// The counters, as published.
#[derive(Clone, Default)]
pub(super) struct Maps {
    in_flight: HashMap<String, HashMap<u16, Arc<EndpointLoad>>>,
    cursors: HashMap<String, HashMap<String, Arc<AtomicU64>>>,
    tables: Tables,
}

impl Maps {
    /// Requests in flight to `address:port`.
    pub(super) fn in_flight(&self, address: &str, port: u16) -> u64 {
        self.counter_ref(address, port).map_or(0, |c| c.in_flight())
    }

    /// True while `address:port` is avoided after connect failures.
    pub(super) fn is_down(&self, address: &str, port: u16, now_ms: u64) -> bool {
        self.counter_ref(address, port)
            .is_some_and(|c| c.is_down(now_ms))
    }

    /// The load of `address:port`, if it exists.
    pub(super) fn counter_ref(&self, address: &str, port: u16) -> Option<&Arc<EndpointLoad>> {
        self.in_flight.get(address)?.get(&port)
    }

    /// The consistent-hash table cached for a destination.
    pub(super) fn table(
        &self,
        host: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Option<&Arc<CachedTable>> {
        self.tables.get(host)?.get(subset.unwrap_or(""))?.get(&port)
    }

    /// Advances the round-robin cursor of `host`/`subset`, returning its previous value.
    pub(super) fn next_cursor(&self, host: &str, subset: Option<&str>) -> Option<u64> {
        let cursor = self.cursors.get(host)?.get(subset.unwrap_or(""))?;
        Some(cursor.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            maps: ArcSwap::default(),
            write: Mutex::default(),
            epoch: Instant::now(),
            // No address known: a random one per mesh, so every request of this workload
            // hashes alike (as a sidecar sees one source IP) while workloads differ.
            source_hash: rand::random(),
            pruned_ejections: AtomicU64::new(0),
            ejections_end_ms: Arc::default(),
        }
    }
}

// === impl EndpointStats ===

impl EndpointStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests in flight to `address:port` (sent, response not yet received).
    pub fn in_flight(&self, address: &str, port: u16) -> u64 {
        self.read().in_flight(address, port)
    }

    /// Statistics for a workload whose own address is `ip`: consistent hashing on
    /// `useSourceIp` hashes it for requests that do not carry a
    /// [`PeerAddr`](crate::server::PeerAddr) (see the [module docs](super)).
    pub fn with_source_ip(ip: IpAddr) -> Self {
        Self {
            inner: Arc::new(Inner {
                source_hash: hash_ip(ip),
                ..Inner::default()
            }),
        }
    }

    /// The `useSourceIp` hash of the workload itself.
    pub(super) fn source_hash(&self) -> u64 {
        self.inner.source_hash
    }

    /// Milliseconds since these statistics were created (tokio time, so tests can pause it).
    pub(super) fn now_ms(&self) -> u64 {
        millis(self.inner.epoch.elapsed())
    }

    /// True while outlier detection has `address:port` ejected.
    pub fn ejected(&self, address: &str, port: u16) -> bool {
        let now = self.now_ms();
        self.read()
            .counter_ref(address, port)
            .is_some_and(|c| c.is_ejected(now))
    }

    /// How many times outlier detection ejected `address:port`.
    pub fn ejections(&self, address: &str, port: u16) -> u64 {
        self.read()
            .counter_ref(address, port)
            .map_or(0, |c| c.ejections())
    }

    /// How many ejections outlier detection made, over every endpoint these statistics have
    /// tracked (those [`prune_idle`](Self::prune_idle) dropped included): it never decreases.
    pub fn total_ejections(&self) -> u64 {
        // Under the writers' lock, so that no prune runs between reading the maps and the
        // pruned count (either order could count a pruned endpoint twice or not at all, and
        // the total would go back down on the next read).
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tracked: u64 = self
            .read()
            .in_flight
            .values()
            .flat_map(|ports| ports.values())
            .map(|c| c.ejections())
            .sum();
        tracked + self.inner.pruned_ejections.load(Ordering::Relaxed)
    }

    /// False if no endpoint these statistics track can be ejected at `now_ms` (every ejection
    /// made so far has ended): the balancer then need not check each endpoint.
    pub(super) fn may_have_ejections(&self, now_ms: u64) -> bool {
        now_ms < self.inner.ejections_end_ms.load(Ordering::Relaxed)
    }

    /// True while `address:port` is avoided after connect failures.
    pub fn is_down(&self, address: &str, port: u16) -> bool {
        self.read().is_down(address, port, self.now_ms())
    }

    /// Drops the counters with nothing in flight that are not ejected, every round-robin
    /// cursor and every consistent-hash table.
    pub fn prune_idle(&self) {
        let now = self.now_ms();
        let pruned = &self.inner.pruned_ejections;
        self.update(|maps| {
            maps.in_flight.retain(|_, ports| {
                // A counter referenced only by the published maps (the old and this copy) and
                // at zero has no request in flight. A request that loaded the old maps just
                // before may still count into a dropped counter; the endpoint then gets a new
                // one on its next pick, and least-request misjudges its load for one request.
                ports.retain(|_, c| {
                    let keep = Arc::strong_count(c) > 2 || c.in_flight() > 0 || c.is_ejected(now);
                    if !keep {
                        pruned.fetch_add(c.ejections(), Ordering::Relaxed);
                    }
                    keep
                });
                !ports.is_empty()
            });
            maps.cursors.clear();
            maps.tables.clear();
        });
    }

    /// Copies the maps, changes the copy and publishes it (one writer at a time).
    fn update<T>(&self, change: impl FnOnce(&mut Maps) -> T) -> T {
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut maps = Maps::clone(&self.inner.maps.load());
        let out = change(&mut maps);
        self.inner.maps.store(Arc::new(maps));
        out
    }

    /// The current maps, without a lock.
    pub(super) fn read(&self) -> arc_swap::Guard<Arc<Maps>> {
        self.inner.maps.load()
    }

    /// The counter of `address:port`, created if needed (takes the write lock).
    pub(super) fn counter_or_insert(&self, address: &str, port: u16) -> Arc<EndpointLoad> {
        let epoch = self.inner.epoch;
        let end = &self.inner.ejections_end_ms;
        self.update(|maps| {
            maps.in_flight
                .entry(address.to_owned())
                .or_default()
                .entry(port)
                .or_insert_with(|| Arc::new(EndpointLoad::new(epoch, address, port, end.clone())))
                .clone()
        })
    }

    /// Advances the cursor of `host`/`subset`, created if needed (takes the write lock).
    pub(super) fn next_cursor_or_insert(&self, host: &str, subset: Option<&str>) -> u64 {
        self.update(|maps| {
            maps.cursors
                .entry(host.to_owned())
                .or_default()
                .entry(subset.unwrap_or("").to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed)
        })
    }

    /// Creates the counters of `endpoints` (`address`, port) that do not exist yet, in one
    /// update (warmup needs to know when each endpoint was first seen).
    pub(super) fn insert_counters<'a>(&self, missing: impl IntoIterator<Item = (&'a str, u16)>) {
        let epoch = self.inner.epoch;
        let end = &self.inner.ejections_end_ms;
        self.update(|maps| {
            for (address, port) in missing {
                maps.in_flight
                    .entry(address.to_owned())
                    .or_default()
                    .entry(port)
                    .or_insert_with(|| {
                        Arc::new(EndpointLoad::new(epoch, address, port, end.clone()))
                    });
            }
        });
    }

    /// Publishes the consistent-hash table of a destination.
    pub(super) fn insert_table(
        &self,
        host: &str,
        subset: Option<&str>,
        port: u16,
        table: Arc<CachedTable>,
    ) {
        self.update(|maps| {
            maps.tables
                .entry(host.to_owned())
                .or_default()
                .entry(subset.unwrap_or("").to_owned())
                .or_default()
                .insert(port, table);
        });
    }
}

impl fmt::Debug for EndpointStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let maps = self.read();
        f.debug_struct("EndpointStats")
            .field(
                "endpoints",
                &maps.in_flight.values().map(HashMap::len).sum::<usize>(),
            )
            .field(
                "destinations",
                &maps.cursors.values().map(HashMap::len).sum::<usize>(),
            )
            .finish()
    }
}

/// One request in flight to an endpoint: increments the endpoint's counter when created and
/// decrements it when dropped (response received, failed, or the future dropped).
#[derive(Debug)]
pub(super) struct InFlight(Arc<EndpointLoad>);

impl InFlight {
    pub(super) fn start(counter: Arc<EndpointLoad>) -> Self {
        counter.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }

    /// The endpoint's load.
    pub(super) fn load(&self) -> &EndpointLoad {
        &self.0
    }
}

/// The `useSourceIp` hash of an address (its octets).
pub(super) fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => xxh64(&v4.octets(), 0),
        IpAddr::V6(v6) => xxh64(&v6.octets(), 0),
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
