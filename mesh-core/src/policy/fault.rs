//! The validated fault-injection policy.

use std::time::Duration;

use crate::config::{common::Percent, networking::virtual_service::HttpFaultInjection};

/// A share of requests, in parts per million (100 % = 1,000,000), so policies are `Eq + Hash`
/// and keep Istio's 0.0001 % resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PerMillion(pub u32);

impl PerMillion {
    /// All requests.
    pub const ALL: Self = Self(1_000_000);

    /// From a percentage (clamped to 0–100).
    pub fn from_percent(p: f64) -> Self {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        Self((p * 10_000.0).round() as u32)
    }

    /// Istio's rule for fault and mirror percentages: `percentage.value` if set, else the
    /// deprecated integer `percent`, else `absent`.
    pub fn from_istio(percentage: Option<&Percent>, percent: Option<i32>, absent: Self) -> Self {
        match (percentage, percent) {
            (Some(p), _) => Self::from_percent(p.value),
            (None, Some(p)) => Self::from_percent(f64::from(p)),
            (None, None) => absent,
        }
    }

    /// True if a uniformly random `draw` in `0..1_000_000` falls in this share.
    pub fn hit(self, draw: u32) -> bool {
        draw < self.0
    }

    /// The share as a percentage.
    pub fn as_percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// A validated fault policy: an independent delay and abort.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultPolicy {
    /// Delay this share of requests by this long.
    pub delay: Option<(Duration, PerMillion)>,
    /// Abort this share of requests.
    pub abort: Option<(AbortWith, PerMillion)>,
}

/// What an injected abort answers with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AbortWith {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status (code number and Istio's name for it).
    Grpc(u8, String),
}

/// gRPC status names, by code.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl FaultPolicy {
    /// Builds the policy from Istio's `HTTPFaultInjection`. Percentages left unset mean no
    /// request is faulted, as in Istio. Unusable parts (an unknown gRPC name, a delay without
    /// `fixedDelay`) are dropped; validation reports them before a snapshot is built.
    pub fn from_config(cfg: &HttpFaultInjection) -> Self {
        let delay = cfg.delay.as_ref().and_then(|d| {
            let fixed = d.fixed_delay?;
            Some((
                fixed.as_std(),
                PerMillion::from_istio(d.percentage.as_ref(), d.percent, PerMillion(0)),
            ))
        });
        let abort = cfg.abort.as_ref().and_then(|a| {
            let with = match (a.http_status, &a.grpc_status) {
                (Some(code), _) => AbortWith::Http(u16::try_from(code).ok()?),
                (None, Some(name)) => {
                    let code = GRPC_CODES.iter().position(|n| n == name)?;
                    AbortWith::Grpc(code as u8, name.clone())
                }
                _ => return None,
            };
            Some((
                with,
                PerMillion::from_istio(a.percentage.as_ref(), a.percent, PerMillion(0)),
            ))
        });
        Self { delay, abort }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_million_from_both_spellings() {
        let p = Percent { value: 12.5 };
        assert_eq!(
            PerMillion::from_istio(Some(&p), Some(100), PerMillion(0)),
            PerMillion(125_000)
        );
        assert_eq!(
            PerMillion::from_istio(None, Some(100), PerMillion(0)),
            PerMillion::ALL
        );
        assert_eq!(
            PerMillion::from_istio(None, None, PerMillion(7)),
            PerMillion(7)
        );
        assert!(PerMillion::ALL.hit(999_999));
        assert!(!PerMillion(0).hit(0));
        assert_eq!(PerMillion::from_percent(0.0001), PerMillion(1));
    }
}
