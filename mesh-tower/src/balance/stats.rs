//! Per-endpoint load the balancer reads: requests in flight and round-robin cursors.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::uri::Authority;
use tokio::time::Instant;

/// Maps looked up on every request: foldhash rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Requests in flight per endpoint and round-robin positions per destination, shared by every
/// balancer of one mesh.
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
/// Entries are kept when endpoints go away, about a hundred bytes each; call
/// [`prune_idle`](Self::prune_idle) after a configuration change to drop the counters that
/// have nothing in flight and the cursors (round-robin then restarts at the first endpoint).
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
    /// Time zero for [`EndpointLoad`]'s down-until marks.
    epoch: Instant,
    /// Hosts whose `consistentHash` fallback was logged already.
    consistent_hash_logged: Mutex<HashSet<String>>,
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
}

/// The first pause after a connect failure; it doubles with each consecutive failure.
pub(super) const CONNECT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest pause.
pub(super) const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl EndpointLoad {
    fn new(epoch: Instant, address: &str, port: u16) -> Self {
        Self {
            epoch,
            authority: Authority::try_from(super::service::authority(address, port)).ok(),
            in_flight: AtomicU64::new(0),
            connect_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
        }
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
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
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

/// The counters, as published.
#[derive(Clone, Default)]
pub(super) struct Maps {
    in_flight: HashMap<String, HashMap<u16, Arc<EndpointLoad>>>,
    cursors: HashMap<String, HashMap<String, Arc<AtomicU64>>>,
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
            consistent_hash_logged: Mutex::default(),
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

    /// Milliseconds since these statistics were created (tokio time, so tests can pause it).
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// True while `address:port` is avoided after connect failures.
    pub fn is_down(&self, address: &str, port: u16) -> bool {
        self.read().is_down(address, port, self.now_ms())
    }

    /// Drops the counters with nothing in flight and every round-robin cursor.
    pub fn prune_idle(&self) {
        self.update(|maps| {
            maps.in_flight.retain(|_, ports| {
                // A counter referenced only by the published maps (the old and this copy) and
                // at zero has no request in flight. A request that loaded the old maps just
                // before may still count into a dropped counter; the endpoint then gets a new
                // one on its next pick, and least-request misjudges its load for one request.
                ports.retain(|_, c| Arc::strong_count(c) > 2 || c.in_flight() > 0);
                !ports.is_empty()
            });
            maps.cursors.clear();
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
        self.update(|maps| {
            maps.in_flight
                .entry(address.to_owned())
                .or_default()
                .entry(port)
                .or_insert_with(|| Arc::new(EndpointLoad::new(epoch, address, port)))
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

    /// True the first time it is called for `host` (so a fallback is logged once per host).
    pub(super) fn first_consistent_hash_fallback(&self, host: &str) -> bool {
        let mut logged = self
            .inner
            .consistent_hash_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !logged.contains(host) && logged.insert(host.to_owned())
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

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
