//! Validated policy types built from Istio's fields: what the layers are configured with.
//!
//! Ratios are integers (parts per million) so policies derive `Eq + Hash` and an old and a new
//! snapshot can be compared.

pub mod authz;
pub mod balance;
pub mod fault;
pub mod hash;
pub mod outlier;
pub mod peer_authn;
pub mod retry;

use crate::{
    config::networking::destination_rule::{PortTrafficPolicy, TrafficPolicy},
    snapshot::DestinationPolicy,
};

/// One setting of a DestinationRule (`loadBalancer`, `connectionPool`, `outlierDetection`)
/// for traffic to `subset` on service port `port`, with Istio's precedence:
///
/// 1. the rule's `trafficPolicy` setting, replaced by the rule's `portLevelSettings` entry
///    for `port` if there is one (an entry without the setting means none: port-level
///    settings replace, they do not inherit);
/// 2. the subset's `trafficPolicy` setting, if set, overrides that;
/// 3. the subset's `portLevelSettings` entry for `port`, if any, replaces both.
///
/// `of` and `of_port` read the setting from a traffic policy and from a port-level entry.
/// Borrowing instead of merging the [`TrafficPolicy`] keeps the request path free of
/// allocations.
pub fn traffic_setting<'a, T>(
    policy: &'a DestinationPolicy,
    subset: Option<&str>,
    port: u16,
    of: fn(&TrafficPolicy) -> Option<&T>,
    of_port: fn(&PortTrafficPolicy) -> Option<&T>,
) -> Option<&'a T> {
    let at_port = |tp: &'a TrafficPolicy| {
        tp.port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
            .map(of_port)
    };
    let base = policy
        .traffic_policy
        .as_ref()
        .and_then(|tp| at_port(tp).unwrap_or_else(|| of(tp)));
    let Some(sub) = subset
        .and_then(|s| policy.subsets.get(s))
        .and_then(|s| s.traffic_policy.as_ref())
    else {
        return base;
    };
    if let Some(setting) = at_port(sub) {
        return setting;
    }
    of(sub).or(base)
}
