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
//! | `consistentHash` (any)     | [`Algorithm::LeastRequest`] (not supported yet) |
//!
//! `PASSTHROUGH` makes Envoy forward to the address the caller connected to (an
//! `ORIGINAL_DST` cluster). An in-process client has no intercepted original destination: the
//! application addressed a *name*, so we balance over that name's endpoints with the default
//! algorithm instead. Requests for hosts the registry does not know are passed through as
//! written by the balancer regardless of the algorithm (Istio's `ALLOW_ANY`).
//!
//! Consistent hashing (`consistentHash`: header, cookie, source IP or query parameter, ring
//! hash or Maglev) is not implemented yet; a DestinationRule asking for it gets
//! LEAST_REQUEST, and the balancer logs that once per host at debug level.
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
//! - **ROUND_ROBIN**: endpoint *i* is chosen `weight_i / gcd` times per cycle, consecutively
//!   (Envoy interleaves them with EDF; the shares are the same).
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

use crate::{
    config::networking::destination_rule::{LoadBalancerSettings, SimpleLb, TrafficPolicy},
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

    /// The algorithm for a `loadBalancer` block: `simple` if set, else LEAST_REQUEST (also
    /// when `consistentHash` is asked for, which is not supported yet).
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

/// True if `lb` asks for consistent hashing (and no `simple` algorithm), which
/// [`Algorithm::from_settings`] answers with LEAST_REQUEST for now.
pub fn wants_consistent_hash(lb: Option<&LoadBalancerSettings>) -> bool {
    lb.is_some_and(|lb| lb.simple.is_none() && lb.consistent_hash.is_some())
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
/// Borrowing instead of cloning the merged [`TrafficPolicy`] keeps the request path free of
/// allocations.
pub fn load_balancer_settings<'a>(
    policy: &'a DestinationPolicy,
    subset: Option<&str>,
    port: u16,
) -> Option<&'a LoadBalancerSettings> {
    let base = policy
        .traffic_policy
        .as_ref()
        .and_then(|tp| at_port(tp, port).unwrap_or(tp.load_balancer.as_ref()));
    let Some(sub) = subset
        .and_then(|s| policy.subsets.get(s))
        .and_then(|s| s.traffic_policy.as_ref())
    else {
        return base;
    };
    if let Some(lb) = at_port(sub, port) {
        return lb;
    }
    sub.load_balancer.as_ref().or(base)
}

/// The load balancer of `tp`'s port-level entry for `port`: `None` if there is no entry,
/// `Some(None)` if the entry does not set one.
fn at_port(tp: &TrafficPolicy, port: u16) -> Option<Option<&LoadBalancerSettings>> {
    tp.port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        .map(|p| p.load_balancer.as_ref())
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
            eligible.index(by_weight(len, |k| weight(k) / divisor, cursor % total))
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
    fn consistent_hash_falls_back_to_least_request() {
        let lb = LoadBalancerSettings {
            consistent_hash: Some(Default::default()),
            ..Default::default()
        };
        assert!(wants_consistent_hash(Some(&lb)));
        assert_eq!(Algorithm::from_settings(Some(&lb)), Algorithm::LeastRequest);
        let simple = LoadBalancerSettings {
            simple: Some(SimpleLb::Random),
            ..Default::default()
        };
        assert!(!wants_consistent_hash(Some(&simple)));
        assert!(!wants_consistent_hash(None));
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
