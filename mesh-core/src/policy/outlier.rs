//! Outlier detection: ejecting endpoints that keep failing, with Envoy's semantics.
//!
//! [`OutlierPolicy`] is a DestinationRule's `outlierDetection` with Istio's defaults;
//! [`OutlierState`] is the pure per-endpoint state machine that `mesh_tower::balance` feeds
//! with each response's [`Outcome`]. Time is passed in as the [`Duration`] since the
//! detector's epoch, so everything here is tested without a clock.
//!
//! # Semantics (Envoy's, as Istio configures it)
//!
//! - **Consecutive 5xx** (`consecutive5xxErrors`, default 5, 0 disables): that many 5xx
//!   responses in a row eject the endpoint. Any other response resets the count.
//! - **Consecutive gateway errors** (`consecutiveGatewayErrors`, off by default): the same
//!   for 502, 503 and 504; a non-gateway response resets it.
//! - **Local-origin failures** (connect failures, resets, timeouts): unless
//!   `splitExternalLocalOriginErrors` is set, they count as a 503 (connect failures and
//!   resets) or a 504 (timeouts), as Envoy maps them. When split, they only count towards
//!   `consecutiveLocalOriginFailures` (default 5), and any response resets that count.
//! - **Ejection** happens at once when a count is reached, and the count starts over (also
//!   when the ejection is refused). It is refused when it would eject more than
//!   `maxEjectionPercent` (default 10 %) of the destination's endpoints, except that one
//!   endpoint may always be ejected when none is ([`may_eject`]).
//! - **Ejection time**: `baseEjectionTime` (default 30 s) × the number of times the
//!   endpoint was ejected, at most [`DEFAULT_MAX_EJECTION_TIME`] (300 s, Envoy's
//!   `max_ejection_time`, or the base time if larger). The multiplier goes down by one for
//!   every `interval` (default 10 s) the endpoint stays healthy after it returns.
//! - **Return**: Envoy checks ejected endpoints at every `interval` tick, so an endpoint
//!   returns at the first tick (multiples of `interval` since the detector's epoch) at or
//!   after the end of its ejection time. We compute that instant when ejecting instead of
//!   running a timer; the observable behaviour is the same.
//! - **Panic** (`minHealthPercent`, default 0 %): when fewer than that share of the
//!   endpoints are healthy, ejections are ignored and every endpoint is used
//!   ([`panic_mode`]). With 0 % there is no panic mode: when every endpoint is ejected the
//!   destination has no healthy upstream (503), as in Envoy.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_core::policy::outlier::{OutlierPolicy, OutlierState, Outcome};
//! let policy = OutlierPolicy::default().consecutive_5xx(2);
//! let mut state = OutlierState::default();
//! let now = Duration::ZERO;
//! assert_eq!(state.record(&policy, Outcome::Response(500), now), None);
//! assert!(state.record(&policy, Outcome::Response(500), now).is_some()); // eject it
//! let until = state.eject(&policy, now);
//! assert_eq!(until, Duration::from_secs(30));
//! assert!(state.is_ejected(Duration::from_secs(29)));
//! assert!(!state.is_ejected(until));
//! ```

use std::time::Duration;

use crate::{config::networking::destination_rule::OutlierDetection, snapshot::DestinationPolicy};

/// Istio's default `consecutive5xxErrors`.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Istio's default `consecutiveLocalOriginFailures`.
pub const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN: u32 = 5;
/// Istio's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's default `baseEjectionTime`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time` (Istio does not expose it).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Istio's default `maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Istio's default `minHealthPercent` (no panic mode).
pub const DEFAULT_MIN_HEALTH_PERCENT: u32 = 0;

/// A validated `outlierDetection` block, with Istio's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutlierPolicy {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    split_local_origin: bool,
    consecutive_local_origin: u32,
    interval: Duration,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u32,
    min_health_percent: u32,
}

impl Default for OutlierPolicy {
    /// An empty `outlierDetection: {}` block: Istio's defaults.
    fn default() -> Self {
        Self {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            consecutive_gateway: 0,
            split_local_origin: false,
            consecutive_local_origin: DEFAULT_CONSECUTIVE_LOCAL_ORIGIN,
            interval: DEFAULT_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent: DEFAULT_MIN_HEALTH_PERCENT,
        }
    }
}

impl From<&OutlierDetection> for OutlierPolicy {
    fn from(od: &OutlierDetection) -> Self {
        Self::from_config(od)
    }
}

impl OutlierPolicy {
    /// The policy for an `outlierDetection` block, as Istio translates it to Envoy: the
    /// deprecated `consecutiveErrors` means gateway errors (and turns consecutive 5xx off);
    /// `consecutiveGatewayErrors` and `consecutive5xxErrors` override it. Out-of-range
    /// values (rejected by validation) are clamped.
    pub fn from_config(od: &OutlierDetection) -> Self {
        let mut p = Self::default();
        if let Some(n) = od.consecutive_errors.filter(|n| *n > 0) {
            p.consecutive_gateway = n.unsigned_abs();
            p.consecutive_5xx = 0;
        }
        if let Some(n) = od.consecutive_gateway_errors {
            p.consecutive_gateway = n;
        }
        if let Some(n) = od.consecutive_5xx_errors {
            p.consecutive_5xx = n;
        }
        p.split_local_origin = od.split_external_local_origin_errors == Some(true);
        if let Some(n) = od.consecutive_local_origin_failures {
            p.consecutive_local_origin = n;
        }
        if let Some(d) = od.interval {
            p.interval = d.as_std();
        }
        if let Some(d) = od.base_ejection_time {
            p.base_ejection_time = d.as_std();
        }
        if let Some(n) = od.max_ejection_percent {
            p.max_ejection_percent = n.clamp(0, 100).unsigned_abs();
        }
        if let Some(n) = od.min_health_percent {
            p.min_health_percent = n.clamp(0, 100).unsigned_abs();
        }
        p
    }

    /// Sets `consecutive5xxErrors` (0 disables).
    #[must_use]
    pub fn consecutive_5xx(mut self, n: u32) -> Self {
        self.consecutive_5xx = n;
        self
    }

    /// Sets `consecutiveGatewayErrors` (0 disables).
    #[must_use]
    pub fn consecutive_gateway(mut self, n: u32) -> Self {
        self.consecutive_gateway = n;
        self
    }

    /// Sets `splitExternalLocalOriginErrors` and `consecutiveLocalOriginFailures`.
    #[must_use]
    pub fn split_local_origin(mut self, consecutive: u32) -> Self {
        self.split_local_origin = true;
        self.consecutive_local_origin = consecutive;
        self
    }

    /// Sets `interval`.
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// Sets `baseEjectionTime`.
    #[must_use]
    pub fn base_ejection_time(mut self, d: Duration) -> Self {
        self.base_ejection_time = d;
        self
    }

    /// Sets `maxEjectionPercent` (at most 100).
    #[must_use]
    pub fn max_ejection_percent(mut self, p: u32) -> Self {
        self.max_ejection_percent = p.min(100);
        self
    }

    /// Sets `minHealthPercent` (at most 100).
    #[must_use]
    pub fn min_health_percent(mut self, p: u32) -> Self {
        self.min_health_percent = p.min(100);
        self
    }

    /// The interval between Envoy's ejection sweeps (at least 1 ms).
    pub fn get_interval(&self) -> Duration {
        self.interval.max(Duration::from_millis(1))
    }

    /// How long an endpoint ejected for the `times`-th time in a row stays out (before
    /// rounding up to the next sweep).
    pub fn ejection_time(&self, times: u32) -> Duration {
        let max = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time
            .saturating_mul(times.max(1))
            .min(max)
    }

    /// `minHealthPercent`.
    pub fn get_min_health_percent(&self) -> u32 {
        self.min_health_percent
    }

    /// `maxEjectionPercent`.
    pub fn get_max_ejection_percent(&self) -> u32 {
        self.max_ejection_percent
    }
}

/// The `outlierDetection` that applies to traffic for `subset` on service port `port`,
/// with the precedence of [`load_balancer_settings`](super::balance::load_balancer_settings):
/// the rule's, replaced by its port-level entry for `port`, overridden by the subset's,
/// replaced by the subset's port-level entry. `None`: outlier detection is off.
pub fn outlier_detection<'a>(
    policy: &'a DestinationPolicy,
    subset: Option<&str>,
    port: u16,
) -> Option<&'a OutlierDetection> {
    super::traffic_setting(
        policy,
        subset,
        port,
        |tp| tp.outlier_detection.as_ref(),
        |p| p.outlier_detection.as_ref(),
    )
}

/// What became of one request to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint answered with this status code.
    Response(u16),
    /// The request failed before a response, on our side of the connection.
    LocalOrigin(LocalOrigin),
}

/// A local-origin failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalOrigin {
    /// Connecting failed.
    ConnectFailed,
    /// The connection was reset or closed before a response.
    Reset,
    /// No response in time.
    Timeout,
}

impl LocalOrigin {
    /// The status Envoy counts it as when local-origin errors are not split.
    pub const fn as_status(self) -> u16 {
        match self {
            Self::ConnectFailed | Self::Reset => 503,
            Self::Timeout => 504,
        }
    }
}

/// Why an endpoint should be ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// `consecutive5xxErrors` reached.
    Consecutive5xx,
    /// `consecutiveGatewayErrors` reached.
    ConsecutiveGateway,
    /// `consecutiveLocalOriginFailures` reached.
    ConsecutiveLocalOrigin,
}

/// One endpoint's outlier-detection state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local_origin: u32,
    /// When the current ejection ends (at a sweep tick).
    ejected_until: Option<Duration>,
    /// Envoy's `eject_time_backoff`: the ejection-time multiplier.
    backoff: u32,
    /// When the endpoint last returned (a sweep tick).
    returned_at: Option<Duration>,
    ejections: u64,
}

impl OutlierState {
    /// Records `outcome` at `now`. Returns why the endpoint should be ejected when a count is
    /// reached while it is not ejected; the caller checks [`may_eject`] and calls
    /// [`eject`](Self::eject). The count that was reached starts over either way.
    pub fn record(
        &mut self,
        policy: &OutlierPolicy,
        outcome: Outcome,
        now: Duration,
    ) -> Option<EjectReason> {
        self.refresh(now);
        let status = match outcome {
            Outcome::Response(status) => {
                // A response means the connection worked.
                self.consecutive_local_origin = 0;
                status
            }
            Outcome::LocalOrigin(_) if policy.split_local_origin => {
                self.consecutive_local_origin = self.consecutive_local_origin.saturating_add(1);
                let n = policy.consecutive_local_origin;
                if n > 0 && self.consecutive_local_origin >= n {
                    self.consecutive_local_origin = 0;
                    return (!self.is_ejected(now)).then_some(EjectReason::ConsecutiveLocalOrigin);
                }
                return None;
            }
            Outcome::LocalOrigin(l) => l.as_status(),
        };
        let mut reason = None;
        if (500..600).contains(&status) {
            if matches!(status, 502..=504) {
                self.consecutive_gateway = self.consecutive_gateway.saturating_add(1);
                let n = policy.consecutive_gateway;
                if n > 0 && self.consecutive_gateway >= n {
                    self.consecutive_gateway = 0;
                    reason = Some(EjectReason::ConsecutiveGateway);
                }
            } else {
                self.consecutive_gateway = 0;
            }
            self.consecutive_5xx = self.consecutive_5xx.saturating_add(1);
            let n = policy.consecutive_5xx;
            if n > 0 && self.consecutive_5xx >= n {
                self.consecutive_5xx = 0;
                reason = reason.or(Some(EjectReason::Consecutive5xx));
            }
        } else {
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
        }
        reason.filter(|_| !self.is_ejected(now))
    }

    /// Ejects the endpoint at `now`; returns when it comes back: the first sweep tick at or
    /// after `now` plus the ejection time (module docs).
    pub fn eject(&mut self, policy: &OutlierPolicy, now: Duration) -> Duration {
        self.refresh(now);
        let interval = policy.get_interval();
        // The multiplier went down by one per interval the endpoint stayed healthy.
        if let Some(back) = self.returned_at.take() {
            let ticks = now.saturating_sub(back).as_nanos() / interval.as_nanos();
            self.backoff = self
                .backoff
                .saturating_sub(u32::try_from(ticks).unwrap_or(u32::MAX));
        }
        let max = policy.max_ejection_time.max(policy.base_ejection_time);
        if policy.base_ejection_time.saturating_mul(self.backoff) < max {
            self.backoff += 1;
        }
        let end = now.saturating_add(policy.ejection_time(self.backoff));
        let until = next_tick(end, interval);
        self.ejected_until = Some(until);
        self.ejections += 1;
        until
    }

    /// True while the endpoint is ejected.
    pub fn is_ejected(&self, now: Duration) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// When the current (or last) ejection ends.
    pub fn ejected_until(&self) -> Option<Duration> {
        self.ejected_until
    }

    /// How many times the endpoint was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections
    }

    /// Marks an ejection that has ended as a return.
    fn refresh(&mut self, now: Duration) {
        if let Some(until) = self.ejected_until
            && now >= until
        {
            self.ejected_until = None;
            self.returned_at = Some(until);
        }
    }
}

/// The first multiple of `interval` at or after `t`.
fn next_tick(t: Duration, interval: Duration) -> Duration {
    let i = interval.as_nanos().max(1);
    let ticks = t.as_nanos().div_ceil(i);
    u64::try_from(ticks.saturating_mul(i))
        .map(Duration::from_nanos)
        .unwrap_or(Duration::MAX)
}

/// True if one more of `total` endpoints may be ejected while `ejected` are: always when
/// none is, else if the share after ejecting stays within `maxEjectionPercent` (Envoy).
///
/// # Examples
/// ```
/// use mesh_core::policy::outlier::{OutlierPolicy, may_eject};
/// let p = OutlierPolicy::default(); // 10 %
/// assert!(may_eject(&p, 0, 3)); // the first ejection is always allowed
/// assert!(!may_eject(&p, 1, 3));
/// ```
pub fn may_eject(policy: &OutlierPolicy, ejected: usize, total: usize) -> bool {
    ejected == 0
        || (ejected as u128 + 1) * 100 <= u128::from(policy.max_ejection_percent) * total as u128
}

/// True if so few of `total` endpoints are `healthy` that ejections are ignored
/// (`minHealthPercent`; Envoy's panic threshold).
pub fn panic_mode(policy: &OutlierPolicy, healthy: usize, total: usize) -> bool {
    total > 0 && (healthy as u128) * 100 < u128::from(policy.min_health_percent) * total as u128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::load_str, config::networking::destination_rule::OutlierDetection,
        duration::Duration as GoDuration, snapshot::Snapshot,
    };

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn fail(state: &mut OutlierState, p: &OutlierPolicy, code: u16, n: u32, now: Duration) -> u32 {
        (0..n)
            .filter(|_| state.record(p, Outcome::Response(code), now).is_some())
            .count() as u32
    }

    #[test]
    fn istio_defaults_and_translation() {
        let p = OutlierPolicy::from_config(&OutlierDetection::default());
        assert_eq!(p, OutlierPolicy::default());
        assert_eq!(p.consecutive_5xx, 5);
        assert_eq!(p.consecutive_gateway, 0);
        assert_eq!(p.interval, S(10));
        assert_eq!(p.base_ejection_time, S(30));
        assert_eq!(p.max_ejection_percent, 10);
        assert_eq!(p.min_health_percent, 0);
        let od = OutlierDetection {
            consecutive_errors: Some(3),
            ..Default::default()
        };
        let p = OutlierPolicy::from_config(&od);
        assert_eq!((p.consecutive_gateway, p.consecutive_5xx), (3, 0));
        let od = OutlierDetection {
            consecutive_errors: Some(3),
            consecutive_5xx_errors: Some(7),
            consecutive_gateway_errors: Some(2),
            split_external_local_origin_errors: Some(true),
            consecutive_local_origin_failures: Some(4),
            interval: Some(GoDuration::from_secs(1)),
            base_ejection_time: Some(GoDuration::from_secs(3)),
            max_ejection_percent: Some(250),
            min_health_percent: Some(-5),
        };
        let p = OutlierPolicy::from(&od);
        assert_eq!((p.consecutive_gateway, p.consecutive_5xx), (2, 7));
        assert!(p.split_local_origin);
        assert_eq!(p.consecutive_local_origin, 4);
        assert_eq!((p.interval, p.base_ejection_time), (S(1), S(3)));
        assert_eq!((p.max_ejection_percent, p.min_health_percent), (100, 0));
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets() {
        let p = OutlierPolicy::default();
        let mut s = OutlierState::default();
        assert_eq!(fail(&mut s, &p, 500, 4, S(0)), 0);
        assert_eq!(s.record(&p, Outcome::Response(200), S(0)), None);
        assert_eq!(fail(&mut s, &p, 500, 4, S(0)), 0);
        assert_eq!(
            s.record(&p, Outcome::Response(503), S(0)),
            Some(EjectReason::Consecutive5xx)
        );
        // 4xx are successes for outlier detection.
        let mut s = OutlierState::default();
        assert_eq!(fail(&mut s, &p, 404, 50, S(0)), 0);
        // 0 disables.
        let off = p.consecutive_5xx(0);
        assert_eq!(fail(&mut s, &off, 500, 50, S(0)), 0);
    }

    #[test]
    fn gateway_errors_count_separately() {
        let p = OutlierPolicy::default()
            .consecutive_5xx(0)
            .consecutive_gateway(3);
        let mut s = OutlierState::default();
        assert_eq!(fail(&mut s, &p, 500, 10, S(0)), 0);
        assert_eq!(fail(&mut s, &p, 502, 2, S(0)), 0);
        // A non-gateway 5xx resets the gateway count.
        assert_eq!(fail(&mut s, &p, 500, 1, S(0)), 0);
        assert_eq!(fail(&mut s, &p, 504, 2, S(0)), 0);
        assert_eq!(
            s.record(&p, Outcome::Response(503), S(0)),
            Some(EjectReason::ConsecutiveGateway)
        );
    }

    #[test]
    fn local_origin_failures_count_as_5xx_unless_split() {
        let p = OutlierPolicy::default().consecutive_5xx(3);
        let mut s = OutlierState::default();
        let conn = Outcome::LocalOrigin(LocalOrigin::ConnectFailed);
        assert_eq!(s.record(&p, conn, S(0)), None);
        assert_eq!(s.record(&p, conn, S(0)), None);
        assert_eq!(s.record(&p, conn, S(0)), Some(EjectReason::Consecutive5xx));
        // Timeouts are 504s: gateway errors.
        let gw = OutlierPolicy::default().consecutive_gateway(1);
        let timeout = Outcome::LocalOrigin(LocalOrigin::Timeout);
        assert_eq!(
            OutlierState::default().record(&gw, timeout, S(0)),
            Some(EjectReason::ConsecutiveGateway)
        );

        let split = OutlierPolicy::default()
            .consecutive_5xx(3)
            .split_local_origin(2);
        let mut s = OutlierState::default();
        assert_eq!(s.record(&split, conn, S(0)), None);
        // A response (even a 500) resets the local-origin count, and does not add to it.
        assert_eq!(fail(&mut s, &split, 500, 2, S(0)), 0);
        assert_eq!(s.record(&split, conn, S(0)), None);
        assert_eq!(
            s.record(&split, Outcome::LocalOrigin(LocalOrigin::Reset), S(0)),
            Some(EjectReason::ConsecutiveLocalOrigin)
        );
        // Local-origin failures did not count as 5xx: one more 500 makes three.
        assert_eq!(fail(&mut s, &split, 500, 1, S(0)), 1);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_returns_at_a_tick() {
        let p = OutlierPolicy::default();
        let mut s = OutlierState::default();
        // Ejected at 0.5 s for 30 s: back at the 40 s sweep (ticks every 10 s).
        assert_eq!(s.eject(&p, Duration::from_millis(500)), S(40));
        assert!(s.is_ejected(S(39)));
        assert!(!s.is_ejected(S(40)));
        // Failing again right away: 2 × 30 s.
        assert_eq!(s.eject(&p, S(40)), S(100));
        assert_eq!(s.eject(&p, S(100)), S(190));
        assert_eq!(s.ejections(), 3);
        // Capped at 300 s.
        let mut t = S(190);
        for _ in 0..20 {
            t = s.eject(&p, t);
        }
        assert_eq!(s.ejected_until(), Some(t));
        assert_eq!(s.eject(&p, t), t + S(300));
    }

    #[test]
    fn the_multiplier_decays_while_healthy() {
        let p = OutlierPolicy::default();
        let mut s = OutlierState::default();
        assert_eq!(s.eject(&p, S(0)), S(30));
        assert_eq!(s.eject(&p, S(30)), S(90)); // backoff 2
        // Healthy for 25 s after returning at 90 s: two sweeps, multiplier 2 → 0, then 1.
        assert_eq!(s.eject(&p, S(115)), S(150));
        // A failure while ejected does not eject again.
        assert_eq!(
            fail(
                &mut s,
                &OutlierPolicy::default().consecutive_5xx(1),
                500,
                3,
                S(120)
            ),
            0
        );
    }

    #[test]
    fn max_ejection_percent_allows_at_least_one() {
        let p = OutlierPolicy::default();
        assert!(may_eject(&p, 0, 1));
        assert!(may_eject(&p, 0, 100));
        assert!(!may_eject(&p, 1, 3));
        assert!(may_eject(&p, 9, 100));
        assert!(!may_eject(&p, 10, 100));
        let all = p.max_ejection_percent(100);
        assert!(may_eject(&all, 2, 3));
        let third = p.max_ejection_percent(34);
        assert!(may_eject(&third, 0, 3));
        assert!(!may_eject(&third, 1, 3));
        let two_thirds = p.max_ejection_percent(67);
        assert!(may_eject(&two_thirds, 1, 3));
        assert!(!may_eject(&two_thirds, 2, 3));
    }

    #[test]
    fn panic_below_min_health_percent() {
        let p = OutlierPolicy::default();
        assert!(!panic_mode(&p, 0, 3));
        let p = p.min_health_percent(50);
        assert!(!panic_mode(&p, 2, 3));
        assert!(panic_mode(&p, 1, 3));
        assert!(!panic_mode(&p, 0, 0));
    }

    #[test]
    fn resolves_subset_and_port_level_outlier_detection() {
        let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 1 }
    portLevelSettings:
    - port: { number: 9090 }
      loadBalancer: { simple: RANDOM }
  subsets:
  - name: v1
    labels: { version: v1 }
    trafficPolicy: { outlierDetection: { consecutive5xxErrors: 2 } }
  - name: v2
    labels: { version: v2 }
"#;
        let loaded = load_str(rule, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snapshot = Snapshot::build(&loaded.resources).expect("snapshot builds");
        let policy = snapshot
            .destination_policy("reviews.default.svc.cluster.local")
            .expect("rule applies");
        let n = |subset, port| {
            outlier_detection(policy, subset, port).map(|od| od.consecutive_5xx_errors)
        };
        assert_eq!(n(None, 9080), Some(Some(1)));
        assert_eq!(n(None, 9090), None);
        assert_eq!(n(Some("v1"), 9080), Some(Some(2)));
        assert_eq!(n(Some("v1"), 9090), Some(Some(2)));
        assert_eq!(n(Some("v2"), 9080), Some(Some(1)));
    }
}
