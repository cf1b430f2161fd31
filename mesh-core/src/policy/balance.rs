//! Load balancing: the algorithm a DestinationRule asks for and the pure choice of an endpoint.
//!
//! [`pick`] is what `mesh_tower::balance` calls per request. It is a pure function: the
//! caller passes the candidates' in-flight counts and weights, which candidates to avoid (the
//! endpoints a retry already tried), the round-robin cursor and a source of random numbers,
//! so every algorithm is tested here without a service, a clock or a global RNG.
//!
//! | Istio `simple`             | [`Algorithm`]                 |
//! |----------------------------|-------------------------------|
//! | unset, `UNSPECIFIED`       | [`Algorithm::LeastRequest`] (Istio's default) |
//! | `LEAST_REQUEST`            | [`Algorithm::LeastRequest`]   |
//! | `LEAST_CONN` (deprecated)  | [`Algorithm::LeastRequest`]   |
//! | `ROUND_ROBIN`              | [`Algorithm::RoundRobin`]     |
//! | `RANDOM`                   | [`Algorithm::Random`]         |
//! | `PASSTHROUGH`              | [`Algorithm::LeastRequest`] (see below) |
//! | `consistentHash`           | [`Balancing::ConsistentHash`]: ring hash or Maglev ([`hash`](super::hash)) |
//!
//! `PASSTHROUGH` makes Envoy forward to the address the caller connected to (an
//! `ORIGINAL_DST` cluster). An in-process client has no intercepted original destination: the
//! application addressed a *name*, so we balance over that name's endpoints with the default
//! algorithm instead. Requests for hosts the registry does not know are passed through as
//! written by the balancer regardless of the algorithm (Istio's `ALLOW_ANY`).
//!
//! [`balancing`] reads a whole `loadBalancer` block: the simple algorithm with its
//! [`Warmup`], or consistent hashing with its [`HashKey`] (header, cookie, source IP or query
//! parameter) and [`HashTable`] (ring hash or Maglev). It borrows from the snapshot, so
//! reading it per request allocates nothing.
//!
//! # Warmup (slow start)
//!
//! With `warmup` (or the deprecated `warmupDurationSecs`), ROUND_ROBIN and LEAST_REQUEST
//! scale the weight of an endpoint the balancer has known for less than `duration` by
//! Envoy's slow-start factor, `max(minimumPercent / 100, (age / duration)^(1 / aggression))`
//! ([`Warmup::factor`]). RANDOM and consistent hashing ignore it, as in Envoy (validation
//! warns).
//!
//! # Weights
//!
//! Endpoint weights (WorkloadEntry `weight`, default 1; a weight of 0 counts as 1) are used
//! as follows. When all candidates have the same weight every algorithm is exactly Envoy's.
//! When they differ we keep it simple:
//!
//! - **LEAST_REQUEST**: Envoy switches from power-of-two-choices to an EDF scheduler over
//!   `weight / (active + 1)`. We keep power of two choices but draw the two candidates at
//!   random *in proportion to their weights, with replacement* (drawing two distinct ones
//!   would always compare the same pair when there are two endpoints and lose the weights);
//!   fewer in-flight requests wins, ties are broken at random. Idle endpoints then receive
//!   traffic in proportion to their weights, and load still steers requests away.
//! - **ROUND_ROBIN**: endpoint *i* is chosen `weight_i / gcd` times per cycle of
//!   `Σ weight / gcd` requests, interleaved: the cycle is visited with a stride coprime with
//!   its length (Envoy interleaves with an EDF scheduler; the shares are the same, and no
//!   endpoint receives long runs of consecutive requests when warmup makes weights uneven).
//! - **RANDOM**: uniform, weights ignored, as Envoy's random load balancer does.
//!
//! # Examples
//! ```
//! use mesh_core::policy::balance::{Algorithm, Candidate, pick};
//! let candidates = [Candidate::new(7, 1), Candidate::new(0, 1)];
//! // Power of two choices with two candidates compares both: the idle one wins.
//! let mut draws = [1, 0, 0].into_iter();
//! let mut random = |_bound: u64| draws.next().unwrap_or(0);
//! let picked = pick(Algorithm::LeastRequest, &candidates, |_| false, 0, &mut random);
//! assert_eq!(picked, Some(1));
//! ```

use std::time::Duration;

pub use super::hash::HashTable;
use crate::{
    config::networking::destination_rule::{
        ConsistentHashLb, HttpCookie, LoadBalancerSettings, SimpleLb, WarmupConfiguration,
    },
    snapshot::DestinationPolicy,
};

/// A load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Rotate through the endpoints (`ROUND_ROBIN`).
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight
    /// (`LEAST_REQUEST`, Istio's default).
    #[default]
    LeastRequest,
    /// A uniformly random endpoint (`RANDOM`).
    Random,
}

impl Algorithm {
    /// The algorithm for Istio's `simple` field (see the [module table](self)).
    pub fn from_simple(simple: SimpleLb) -> Self {
        match simple {
            SimpleLb::RoundRobin => Self::RoundRobin,
            SimpleLb::Random => Self::Random,
            // UNSPECIFIED means Istio's default; LEAST_CONN is its deprecated alias; PASSTHROUGH
            // has no original destination to pass through to in-process (module docs).
            SimpleLb::Unspecified
            | SimpleLb::LeastConn
            | SimpleLb::LeastRequest
            | SimpleLb::Passthrough => Self::LeastRequest,
        }
    }

    /// The simple algorithm of a `loadBalancer` block: `simple` if set, else LEAST_REQUEST.
    /// See [`balancing`] for the whole block, consistent hashing included.
    ///
    /// # Examples
    /// ```
    /// use mesh_core::config::networking::destination_rule::{LoadBalancerSettings, SimpleLb};
    /// use mesh_core::policy::balance::Algorithm;
    /// assert_eq!(Algorithm::from_settings(None), Algorithm::LeastRequest);
    /// let lb = LoadBalancerSettings { simple: Some(SimpleLb::RoundRobin), ..Default::default() };
    /// assert_eq!(Algorithm::from_settings(Some(&lb)), Algorithm::RoundRobin);
    /// ```
    pub fn from_settings(lb: Option<&LoadBalancerSettings>) -> Self {
        lb.and_then(|lb| lb.simple)
            .map_or(Self::LeastRequest, Self::from_simple)
    }

    /// Istio's name for the algorithm.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "ROUND_ROBIN",
            Self::LeastRequest => "LEAST_REQUEST",
            Self::Random => "RANDOM",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True if `lb` asks for consistent hashing (and no `simple` algorithm).
pub fn wants_consistent_hash(lb: Option<&LoadBalancerSettings>) -> bool {
    lb.is_some_and(|lb| lb.simple.is_none() && lb.consistent_hash.is_some())
}

/// How a destination is balanced: a `loadBalancer` block read per request, borrowing from
/// the snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Balancing<'a> {
    /// A simple algorithm, with slow start for new endpoints if configured (ROUND_ROBIN and
    /// LEAST_REQUEST only).
    Simple {
        /// The algorithm.
        algorithm: Algorithm,
        /// Slow start.
        warmup: Option<Warmup>,
    },
    /// Consistent hashing.
    ConsistentHash {
        /// What is hashed; `None` when the block names no usable key (`useSourceIp: false`):
        /// every request then gets a random hash, as Envoy does when it computes no hash.
        key: Option<HashKey<'a>>,
        /// Ring hash or Maglev.
        table: HashTable,
    },
}

/// What a consistent-hash load balancer hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKey<'a> {
    /// The value of this request header (`httpHeaderName`).
    Header(&'a str),
    /// The value of this cookie (`httpCookie`); generated and set on the response when the
    /// request has none and a `ttl` is given.
    Cookie(&'a HttpCookie),
    /// The caller's IP address (`useSourceIp: true`).
    SourceIp,
    /// The value of this query parameter (`httpQueryParameterName`).
    QueryParameter(&'a str),
}

impl<'a> HashKey<'a> {
    /// The key a `consistentHash` block names, if any (validation requires exactly one).
    pub fn from_settings(ch: &'a ConsistentHashLb) -> Option<Self> {
        if let Some(h) = ch.http_header_name.as_deref() {
            return Some(Self::Header(h));
        }
        if let Some(c) = &ch.http_cookie {
            return Some(Self::Cookie(c));
        }
        if ch.use_source_ip == Some(true) {
            return Some(Self::SourceIp);
        }
        ch.http_query_parameter_name
            .as_deref()
            .map(Self::QueryParameter)
    }
}

/// The balancing a `loadBalancer` block asks for (LEAST_REQUEST without one).
///
/// # Examples
/// ```
/// use mesh_core::config::networking::destination_rule::{ConsistentHashLb, LoadBalancerSettings};
/// use mesh_core::policy::balance::{Algorithm, Balancing, HashKey, HashTable, balancing};
/// assert_eq!(balancing(None), Balancing::Simple { algorithm: Algorithm::LeastRequest, warmup: None });
/// let lb = LoadBalancerSettings {
///     consistent_hash: Some(ConsistentHashLb { http_header_name: Some("x-user".into()), ..Default::default() }),
///     ..Default::default()
/// };
/// assert_eq!(
///     balancing(Some(&lb)),
///     Balancing::ConsistentHash { key: Some(HashKey::Header("x-user")), table: HashTable::default() },
/// );
/// ```
pub fn balancing(lb: Option<&LoadBalancerSettings>) -> Balancing<'_> {
    if let Some(lb) = lb
        && lb.simple.is_none()
        && let Some(ch) = &lb.consistent_hash
    {
        return Balancing::ConsistentHash {
            key: HashKey::from_settings(ch),
            table: HashTable::from_settings(ch),
        };
    }
    let algorithm = Algorithm::from_settings(lb);
    let warmup = match algorithm {
        Algorithm::RoundRobin | Algorithm::LeastRequest => lb.and_then(Warmup::from_settings),
        Algorithm::Random => None,
    };
    Balancing::Simple { algorithm, warmup }
}

/// Istio's default `warmup.minimumPercent`.
pub const DEFAULT_WARMUP_MINIMUM_PERCENT: f64 = 10.0;
/// Istio's default `warmup.aggression`.
pub const DEFAULT_WARMUP_AGGRESSION: f64 = 1.0;

/// Slow start: new endpoints receive a growing share of traffic for `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Warmup {
    duration: Duration,
    /// `minimumPercent`, in parts per million of the weight.
    minimum_ppm: u32,
    /// `aggression`, in thousandths.
    aggression_milli: u32,
}

impl Warmup {
    /// Slow start over `duration`, starting at `minimum_percent` % of the weight, with the
    /// curve's `aggression` (1.0 is linear). Invalid numbers (rejected by validation) become
    /// the defaults; a zero duration means no slow start (`None`).
    pub fn new(duration: Duration, minimum_percent: f64, aggression: f64) -> Option<Self> {
        if duration.is_zero() {
            return None;
        }
        let minimum_percent = if minimum_percent.is_finite() {
            minimum_percent.clamp(0.0, 100.0)
        } else {
            DEFAULT_WARMUP_MINIMUM_PERCENT
        };
        let aggression = if aggression.is_finite() && aggression > 0.0 {
            aggression.min(1_000_000.0)
        } else {
            DEFAULT_WARMUP_AGGRESSION
        };
        Some(Self {
            duration,
            minimum_ppm: (minimum_percent * 10_000.0).round() as u32,
            aggression_milli: ((aggression * 1_000.0).round() as u32).max(1),
        })
    }

    /// The slow start of a `loadBalancer` block: `warmup`, else the deprecated
    /// `warmupDurationSecs` with the default minimum and aggression.
    pub fn from_settings(lb: &LoadBalancerSettings) -> Option<Self> {
        match (&lb.warmup, lb.warmup_duration_secs) {
            (Some(w), _) => Self::from_config(w),
            (None, Some(d)) => Self::new(
                d.as_std(),
                DEFAULT_WARMUP_MINIMUM_PERCENT,
                DEFAULT_WARMUP_AGGRESSION,
            ),
            (None, None) => None,
        }
    }

    /// The slow start of a `warmup` block (`None` without a duration).
    pub fn from_config(w: &WarmupConfiguration) -> Option<Self> {
        Self::new(
            w.duration?.as_std(),
            w.minimum_percent.unwrap_or(DEFAULT_WARMUP_MINIMUM_PERCENT),
            w.aggression.unwrap_or(DEFAULT_WARMUP_AGGRESSION),
        )
    }

    /// The warm-up window.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The share of its weight an endpoint known for `age` gets: Envoy's
    /// `max(minimumPercent / 100, (age / duration)^(1 / aggression))`, and 1 once `age`
    /// reaches `duration`.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use mesh_core::policy::balance::Warmup;
    /// let w = Warmup::new(Duration::from_secs(100), 10.0, 1.0).unwrap();
    /// assert_eq!(w.factor(Duration::ZERO), 0.1);
    /// assert_eq!(w.factor(Duration::from_secs(50)), 0.5);
    /// assert_eq!(w.factor(Duration::from_secs(100)), 1.0);
    /// ```
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.duration {
            return 1.0;
        }
        let bias = age.as_secs_f64() / self.duration.as_secs_f64();
        let aggression = f64::from(self.aggression_milli) / 1_000.0;
        let minimum = f64::from(self.minimum_ppm) / 1_000_000.0;
        bias.powf(1.0 / aggression).max(minimum).min(1.0)
    }

    /// `weight` (0 counts as 1) scaled by [`factor`](Self::factor), in thousandths: the
    /// weight to give [`pick`] for an endpoint known for `age` (at least 1). Fully warm
    /// endpoints of equal weight keep equal weights.
    pub fn weight(&self, weight: u32, age: Duration) -> u32 {
        let scaled = f64::from(weight.max(1)) * self.factor(age) * 1_000.0;
        scaled.round().clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// The `loadBalancer` settings that apply to traffic for `subset` on service port `port`,
/// merged as Istio merges a DestinationRule (pilot's `MergeTrafficPolicy`):
///
/// 1. the rule's `trafficPolicy.loadBalancer`, replaced by the rule's `portLevelSettings`
///    entry for `port` if there is one (port-level settings replace, they do not inherit:
///    an entry without `loadBalancer` means the default algorithm);
/// 2. the subset's `trafficPolicy.loadBalancer`, if set, overrides that;
/// 3. the subset's `portLevelSettings` entry for `port`, if any, replaces both.
///
/// Borrowing instead of cloning the merged `TrafficPolicy` keeps the request path free of
/// allocations.
pub fn load_balancer_settings<'a>(
    policy: &'a DestinationPolicy,
    subset: Option<&str>,
    port: u16,
) -> Option<&'a LoadBalancerSettings> {
    super::traffic_setting(
        policy,
        subset,
        port,
        |tp| tp.load_balancer.as_ref(),
        |p| p.load_balancer.as_ref(),
    )
}

/// What [`pick`] knows about one candidate endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Requests sent to the endpoint that have not been answered yet.
    pub in_flight: u64,
    /// The endpoint's load-balancing weight (0 counts as 1).
    pub weight: u32,
}

impl Candidate {
    /// A candidate with `in_flight` requests outstanding and weight `weight`.
    pub const fn new(in_flight: u64, weight: u32) -> Self {
        Self { in_flight, weight }
    }

    fn weight(self) -> u64 {
        u64::from(self.weight.max(1))
    }
}

/// Chooses one of `candidates` with `algorithm`; returns its index, or `None` if there are
/// no candidates.
///
/// - `excluded(i)`: candidate `i` should be avoided (already tried by an earlier attempt of
///   the same request). Exclusion only applies while at least one candidate is not
///   excluded; when every candidate is excluded, all of them are eligible again (Envoy's
///   `previous_hosts` predicate gives up the same way after its attempts).
/// - `cursor`: the round-robin position, a counter the caller increments per request (per
///   destination); ignored by the other algorithms.
/// - `random(bound)`: a uniformly random number in `0..bound` (`bound >= 1`); out-of-range
///   answers are reduced modulo `bound`.
///
/// See the [module docs](self) for each algorithm and how weights are used.
pub fn pick<E, R>(
    algorithm: Algorithm,
    candidates: &[Candidate],
    excluded: E,
    cursor: u64,
    random: &mut R,
) -> Option<usize>
where
    E: Fn(usize) -> bool,
    R: FnMut(u64) -> u64,
{
    let eligible = Eligible::new(candidates.len(), excluded)?;
    let len = eligible.len();
    let mut draw = |bound: u64| {
        let bound = bound.max(1);
        random(bound) % bound
    };
    let weight = |k: usize| candidates[eligible.index(k)].weight();
    let equal_weights = (1..len).all(|k| weight(k) == weight(0));

    let chosen = match algorithm {
        Algorithm::Random => eligible.index(draw(len as u64) as usize),
        Algorithm::RoundRobin if equal_weights => eligible.index((cursor % len as u64) as usize),
        Algorithm::RoundRobin => {
            let divisor = (0..len).map(weight).fold(0, gcd).max(1);
            let total: u64 = (0..len).map(|k| weight(k) / divisor).sum();
            let point = interleave(cursor % total, total);
            eligible.index(by_weight(len, |k| weight(k) / divisor, point))
        }
        Algorithm::LeastRequest if len == 1 => eligible.index(0),
        Algorithm::LeastRequest => {
            let (a, b) = if equal_weights {
                // Two distinct candidates, uniformly.
                let a = draw(len as u64) as usize;
                let mut b = draw(len as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                (a, b)
            } else {
                // Two draws in proportion to weight, with replacement (module docs).
                let total: u64 = (0..len).map(weight).sum();
                let a = by_weight(len, weight, draw(total));
                let b = by_weight(len, weight, draw(total));
                (a, b)
            };
            let (a, b) = (eligible.index(a), eligible.index(b));
            match candidates[a].in_flight.cmp(&candidates[b].in_flight) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal if draw(2) == 0 => a,
                std::cmp::Ordering::Equal => b,
            }
        }
    };
    Some(chosen)
}

/// The candidates that may be picked: all of them, or the ones not excluded.
enum Eligible {
    All(usize),
    Only(Vec<usize>),
}

impl Eligible {
    /// `None` when there are no candidates. Allocates only when exclusion removes some, but
    /// not all, candidates (a retry).
    fn new(n: usize, excluded: impl Fn(usize) -> bool) -> Option<Self> {
        if n == 0 {
            return None;
        }
        let allowed = (0..n).filter(|&i| !excluded(i)).count();
        if allowed == n || allowed == 0 {
            return Some(Self::All(n));
        }
        Some(Self::Only((0..n).filter(|&i| !excluded(i)).collect()))
    }

    fn len(&self) -> usize {
        match self {
            Self::All(n) => *n,
            Self::Only(v) => v.len(),
        }
    }

    /// The candidate index of the `k`-th eligible candidate.
    fn index(&self, k: usize) -> usize {
        match self {
            Self::All(_) => k,
            Self::Only(v) => v[k],
        }
    }
}

/// The position `k` whose cumulative weight range contains `point` (`point < Σ weight`).
fn by_weight(len: usize, weight: impl Fn(usize) -> u64, mut point: u64) -> usize {
    for k in 0..len {
        let w = weight(k);
        if point < w {
            return k;
        }
        point -= w;
    }
    len - 1
}

/// Position `i` of a cycle of `total`, visited with a stride coprime with `total` near
/// `total × 0.618` so that each endpoint's share is spread over the cycle (a permutation of
/// `0..total`).
fn interleave(i: u64, total: u64) -> u64 {
    if total <= 2 {
        return i;
    }
    let mut stride = (total as f64 * 0.618_033_988_75) as u64;
    stride = stride.clamp(1, total - 1);
    while gcd(stride, total) != 1 {
        stride += 1;
    }
    ((u128::from(i) * u128::from(stride)) % u128::from(total)) as u64
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{config::load_str, snapshot::Snapshot};

    /// SplitMix64: a small seeded generator, so the statistical tests are deterministic
    /// (mesh-core does not depend on `rand`).
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn idle(n: usize) -> Vec<Candidate> {
        vec![Candidate::new(0, 1); n]
    }

    /// Picks `runs` times with a seeded generator and counts the picks per index.
    fn histogram(
        algorithm: Algorithm,
        candidates: &[Candidate],
        excluded: impl Fn(usize) -> bool + Copy,
        runs: u64,
    ) -> Vec<u64> {
        let mut rng = SplitMix(0x5eed);
        let mut counts = vec![0; candidates.len()];
        for cursor in 0..runs {
            let i = pick(algorithm, candidates, excluded, cursor, &mut |b| {
                rng.below(b)
            })
            .expect("candidates are not empty");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn maps_istio_simple_algorithms() {
        let table = [
            (SimpleLb::Unspecified, Algorithm::LeastRequest),
            (SimpleLb::LeastConn, Algorithm::LeastRequest),
            (SimpleLb::LeastRequest, Algorithm::LeastRequest),
            (SimpleLb::Passthrough, Algorithm::LeastRequest),
            (SimpleLb::RoundRobin, Algorithm::RoundRobin),
            (SimpleLb::Random, Algorithm::Random),
        ];
        for (simple, want) in table {
            assert_eq!(Algorithm::from_simple(simple), want, "{simple:?}");
        }
        assert_eq!(Algorithm::from_settings(None), Algorithm::LeastRequest);
        assert_eq!(Algorithm::default(), Algorithm::LeastRequest);
        assert_eq!(Algorithm::RoundRobin.to_string(), "ROUND_ROBIN");
    }

    #[test]
    fn consistent_hash_is_its_own_balancing() {
        let ch = ConsistentHashLb {
            http_cookie: Some(HttpCookie {
                name: "session".into(),
                ..Default::default()
            }),
            maglev: Some(Default::default()),
            ..Default::default()
        };
        let lb = LoadBalancerSettings {
            consistent_hash: Some(ch.clone()),
            ..Default::default()
        };
        assert!(wants_consistent_hash(Some(&lb)));
        let Balancing::ConsistentHash { key, table } = balancing(Some(&lb)) else {
            panic!("consistent hash expected");
        };
        assert_eq!(key, Some(HashKey::Cookie(ch.http_cookie.as_ref().unwrap())));
        assert_eq!(table, HashTable::Maglev { table_size: 65_537 });
        let simple = LoadBalancerSettings {
            simple: Some(SimpleLb::Random),
            ..Default::default()
        };
        assert!(!wants_consistent_hash(Some(&simple)));
        assert!(!wants_consistent_hash(None));
        // Each key; `useSourceIp: false` names none.
        let key = |ch: ConsistentHashLb| HashKey::from_settings(&ch).map(|k| format!("{k:?}"));
        let header = ConsistentHashLb {
            http_header_name: Some("x-user".into()),
            ..Default::default()
        };
        assert_eq!(key(header).as_deref(), Some("Header(\"x-user\")"));
        let ip = |on| ConsistentHashLb {
            use_source_ip: Some(on),
            ..Default::default()
        };
        assert_eq!(key(ip(true)).as_deref(), Some("SourceIp"));
        assert_eq!(key(ip(false)), None);
        let query = ConsistentHashLb {
            http_query_parameter_name: Some("u".into()),
            ..Default::default()
        };
        assert_eq!(key(query).as_deref(), Some("QueryParameter(\"u\")"));
    }

    #[test]
    fn warmup_applies_to_round_robin_and_least_request_only() {
        let w = WarmupConfiguration {
            duration: Some(crate::duration::Duration::from_secs(60)),
            ..Default::default()
        };
        let lb = |simple| LoadBalancerSettings {
            simple,
            warmup: Some(w.clone()),
            ..Default::default()
        };
        let warm = Warmup::new(Duration::from_secs(60), 10.0, 1.0);
        for simple in [
            None,
            Some(SimpleLb::RoundRobin),
            Some(SimpleLb::LeastRequest),
        ] {
            let Balancing::Simple { warmup, .. } = balancing(Some(&lb(simple))) else {
                panic!("simple expected");
            };
            assert_eq!(warmup, warm, "{simple:?}");
        }
        let Balancing::Simple { warmup, .. } = balancing(Some(&lb(Some(SimpleLb::Random)))) else {
            panic!("simple expected");
        };
        assert_eq!(warmup, None);
        let deprecated = LoadBalancerSettings {
            warmup_duration_secs: Some(crate::duration::Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(Warmup::from_settings(&deprecated), warm);
        assert_eq!(Warmup::from_config(&WarmupConfiguration::default()), None);
    }

    #[test]
    fn warmup_follows_envoys_formula() {
        let s = Duration::from_secs;
        let linear = Warmup::new(s(100), 10.0, 1.0).unwrap();
        assert_eq!(linear.duration(), s(100));
        assert_eq!(linear.factor(s(0)), 0.1);
        assert_eq!(linear.factor(s(5)), 0.1);
        assert!((linear.factor(s(25)) - 0.25).abs() < 1e-9);
        assert_eq!(linear.factor(s(100)), 1.0);
        assert_eq!(linear.factor(s(1_000)), 1.0);
        // aggression 2: sqrt curve.
        let steep = Warmup::new(s(100), 0.0, 2.0).unwrap();
        assert!((steep.factor(s(25)) - 0.5).abs() < 1e-9);
        assert_eq!(steep.factor(s(0)), 0.0);
        // Scaled weights: at least 1, equal when warm.
        assert_eq!(steep.weight(3, s(0)), 1);
        assert_eq!(linear.weight(3, s(50)), 1_500);
        assert_eq!(linear.weight(0, s(100)), linear.weight(1, s(200)));
        // Invalid numbers fall back to the defaults; a zero duration is no warmup.
        let odd = Warmup::new(s(10), f64::NAN, -1.0).unwrap();
        assert_eq!(odd, Warmup::new(s(10), 10.0, 1.0).unwrap());
        assert_eq!(Warmup::new(Duration::ZERO, 10.0, 1.0), None);
    }

    #[test]
    fn weighted_round_robin_interleaves() {
        let candidates = [Candidate::new(0, 1_000), Candidate::new(0, 137)];
        let picks: Vec<usize> = (0..1_137)
            .map(|c| pick(Algorithm::RoundRobin, &candidates, |_| false, c, &mut |_| 0).unwrap())
            .collect();
        // Exact shares per cycle.
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 137);
        // No long runs of the heavy endpoint.
        let longest = picks
            .split(|i| *i == 1)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest <= 16, "{longest}");
        for total in 1..200 {
            let mut seen: Vec<u64> = (0..total).map(|i| interleave(i, total)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..total).collect::<Vec<_>>());
        }
    }

    const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: { simple: RANDOM }
    portLevelSettings:
    - port: { number: 9080 }
      loadBalancer: { simple: ROUND_ROBIN }
    - port: { number: 9090 }
      connectionPool: { tcp: { maxConnections: 10 } }
  subsets:
  - name: v1
    labels: { version: v1 }
    trafficPolicy: { loadBalancer: { simple: LEAST_REQUEST } }
  - name: v2
    labels: { version: v2 }
    trafficPolicy:
      portLevelSettings:
      - port: { number: 8080 }
        loadBalancer: { simple: ROUND_ROBIN }
  - name: v3
    labels: { version: v3 }
"#;

    #[test]
    fn merges_rule_subset_and_port_level_load_balancers_as_istio() {
        let loaded = load_str(RULE, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snapshot = Snapshot::build(&loaded.resources).expect("snapshot builds");
        let policy = snapshot
            .destination_policy("reviews.default.svc.cluster.local")
            .expect("rule applies");
        let table = [
            (None, 8080, Algorithm::Random),
            (None, 9080, Algorithm::RoundRobin),
            // A port-level entry without `loadBalancer` means the default, not the rule's.
            (None, 9090, Algorithm::LeastRequest),
            (Some("v1"), 8080, Algorithm::LeastRequest),
            (Some("v1"), 9080, Algorithm::LeastRequest),
            (Some("v2"), 8080, Algorithm::RoundRobin),
            (Some("v2"), 9080, Algorithm::RoundRobin),
            (Some("v2"), 7000, Algorithm::Random),
            (Some("v3"), 7000, Algorithm::Random),
            (Some("unknown"), 7000, Algorithm::Random),
        ];
        for (subset, port, want) in table {
            let lb = load_balancer_settings(policy, subset, port);
            assert_eq!(Algorithm::from_settings(lb), want, "{subset:?} port {port}");
        }
    }

    #[test]
    fn no_candidates_picks_nothing() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
        ] {
            assert_eq!(pick(algorithm, &[], |_| false, 0, &mut |_| 0), None);
        }
    }

    #[test]
    fn a_single_candidate_is_always_picked() {
        let one = [Candidate::new(100, 3)];
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
        ] {
            for cursor in 0..5 {
                assert_eq!(
                    pick(algorithm, &one, |_| true, cursor, &mut |b| b - 1),
                    Some(0)
                );
            }
        }
    }

    #[test]
    fn random_is_uniform_within_tolerance() {
        let counts = histogram(Algorithm::Random, &idle(4), |_| false, 10_000);
        // Expected 2,500 each; one standard deviation is ~43.
        for (i, c) in counts.iter().enumerate() {
            assert!((2_300..=2_700).contains(c), "index {i}: {counts:?}");
        }
    }

    #[test]
    fn random_ignores_weights() {
        let candidates = [Candidate::new(0, 9), Candidate::new(0, 1)];
        let counts = histogram(Algorithm::Random, &candidates, |_| false, 10_000);
        assert!((4_700..=5_300).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn round_robin_cycles_through_candidates() {
        let picks: Vec<usize> = (0..7)
            .map(|c| pick(Algorithm::RoundRobin, &idle(3), |_| false, c, &mut |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_repeats_heavier_candidates_by_weight() {
        let candidates = [Candidate::new(0, 4), Candidate::new(0, 2)];
        let picks: Vec<usize> = (0..6)
            .map(|c| pick(Algorithm::RoundRobin, &candidates, |_| false, c, &mut |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 1]);
        // Equal weights other than 1 still rotate one by one.
        let equal = [Candidate::new(0, 5); 3];
        let picks: Vec<usize> = (0..3)
            .map(|c| pick(Algorithm::RoundRobin, &equal, |_| false, c, &mut |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_excluded_candidates() {
        let picks: Vec<usize> = (0..4)
            .map(|c| pick(Algorithm::RoundRobin, &idle(3), |i| i == 1, c, &mut |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let candidates = [Candidate::new(5, 1), Candidate::new(0, 1)];
        let counts = histogram(Algorithm::LeastRequest, &candidates, |_| false, 1_000);
        assert_eq!(counts, [0, 1_000]);
    }

    #[test]
    fn least_request_compares_two_random_candidates() {
        // Index 1 wins every pair it is drawn in (2 of the 3 pairs); the pair (0, 2) is a tie.
        let candidates = [
            Candidate::new(9, 1),
            Candidate::new(0, 1),
            Candidate::new(9, 1),
        ];
        let counts = histogram(Algorithm::LeastRequest, &candidates, |_| false, 9_000);
        assert!((5_700..=6_300).contains(&counts[1]), "{counts:?}");
        assert!((1_300..=1_700).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn least_request_breaks_ties_at_random() {
        let counts = histogram(Algorithm::LeastRequest, &idle(2), |_| false, 10_000);
        assert!((4_700..=5_300).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn least_request_follows_weights_when_idle() {
        let candidates = [Candidate::new(0, 3), Candidate::new(0, 1)];
        let counts = histogram(Algorithm::LeastRequest, &candidates, |_| false, 10_000);
        // 3:1 → 7,500 expected.
        assert!((7_200..=7_800).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn exclusion_applies_while_another_candidate_remains() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
        ] {
            let counts = histogram(algorithm, &idle(3), |i| i != 2, 300);
            assert_eq!(counts, [0, 0, 300], "{algorithm}");
            // Everything excluded: everything is eligible again.
            let counts = histogram(algorithm, &idle(3), |_| true, 300);
            assert!(counts.iter().all(|c| *c > 0), "{algorithm}: {counts:?}");
        }
    }

    #[test]
    fn out_of_range_random_numbers_are_reduced() {
        let picked = pick(Algorithm::Random, &idle(3), |_| false, 0, &mut |_| u64::MAX);
        assert!(picked.is_some_and(|i| i < 3));
        let picked = pick(Algorithm::LeastRequest, &idle(3), |_| false, 0, &mut |_| 7);
        assert!(picked.is_some_and(|i| i < 3));
    }

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::RoundRobin),
            Just(Algorithm::LeastRequest),
            Just(Algorithm::Random),
        ]
    }

    proptest! {
        #[test]
        fn picks_an_eligible_candidate(
            algorithm in algorithm(),
            candidates in prop::collection::vec((0u64..20, 0u32..5), 1..10),
            excluded in prop::collection::hash_set(0usize..10, 0..10),
            cursor in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let candidates: Vec<Candidate> =
                candidates.into_iter().map(|(f, w)| Candidate::new(f, w)).collect();
            let mut rng = SplitMix(seed);
            let is_excluded = |i: usize| excluded.contains(&i);
            let i = pick(algorithm, &candidates, is_excluded, cursor, &mut |b| rng.below(b));
            let i = i.expect("candidates are not empty");
            prop_assert!(i < candidates.len());
            let any_allowed = (0..candidates.len()).any(|j| !is_excluded(j));
            prop_assert!(!any_allowed || !is_excluded(i));
        }

        #[test]
        fn least_request_never_picks_the_single_busiest(
            in_flight in prop::collection::vec(0u64..20, 2..10),
            seed in any::<u64>(),
        ) {
            let candidates: Vec<Candidate> =
                in_flight.iter().map(|f| Candidate::new(*f, 1)).collect();
            let mut rng = SplitMix(seed);
            let i = pick(Algorithm::LeastRequest, &candidates, |_| false, 0, &mut |b| rng.below(b))
                .expect("candidates are not empty");
            let max = *in_flight.iter().max().expect("not empty");
            let busiest: HashSet<usize> =
                (0..in_flight.len()).filter(|j| in_flight[*j] == max).collect();
            prop_assert!(busiest.len() > 1 || !busiest.contains(&i));
        }
    }
}
