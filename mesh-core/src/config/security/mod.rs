//! `security.istio.io` resources: PeerAuthentication, AuthorizationPolicy, RequestAuthentication.
//!
//! The types are Istio's `security.istio.io/v1` (and `v1beta1`, the same schema) specs, field
//! for field. Each has a [`Validate`] impl beside it that reports
//! what Istio's validating webhook rejects, plus the places where this mesh deliberately
//! differs:
//!
//! - an unknown `when.key` in an AuthorizationPolicy is an **error** (Istio documents that
//!   unsupported keys are silently ignored; a typo there silently widens or narrows a policy);
//! - valid Istio the mesh does not implement (the `CUSTOM` action, JWT-based matching,
//!   RequestAuthentication as a whole, …) loads, with a `MESH0001`
//!   [`unsupported`](crate::validate::Checker::unsupported) warning on the field.
//!
//! # Examples
//! ```
//! use mesh_core::config::{load_str, Spec, security::authorization_policy::Action};
//! use mesh_core::validate::check_resource;
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: { name: ratings-deny-post, namespace: default }
//! spec:
//!   selector: { matchLabels: { app: ratings } }
//!   action: DENY
//!   rules:
//!   - to:
//!     - operation: { methods: ["POST"], paths: ["/ratings/*"] }
//! "#;
//! let loaded = load_str(yaml, None);
//! assert!(loaded.findings.is_empty());
//! let Spec::AuthorizationPolicy(ap) = &loaded.resources[0].spec else { unreachable!() };
//! assert_eq!(ap.action(), Action::Deny);
//! assert!(check_resource(&loaded.resources[0]).is_empty());
//! # Ok::<_, mesh_core::BoxError>(())
//! ```

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;

use std::net::IpAddr;

pub use self::{
    authorization_policy::AuthorizationPolicy, peer_authentication::PeerAuthentication,
    request_authentication::RequestAuthentication,
};
use crate::{
    config::common::{TargetRef, WorkloadSelector},
    validate::{Checker, Validate},
};

/// The kinds a `targetRef`/`targetRefs` entry may name, as `(group, kind)`; the core group is
/// written `""`.
const TARGET_KINDS: &[(&str, &str)] = &[
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// Checks a policy's scope: `selector`, `targetRef` and `targetRefs` are mutually exclusive,
/// and each is well-formed.
fn check_scope(
    cx: &mut Checker<'_>,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&TargetRef>,
    target_refs: &[TargetRef],
) {
    if let Some(selector) = selector {
        cx.field("selector", selector);
        if selector.match_labels.is_empty() {
            cx.at("selector")
                .warning("workload selector specified without labels; it selects every workload");
        }
    }
    if let Some(target_ref) = target_ref {
        check_target_ref(&mut cx.at("targetRef"), target_ref);
    }
    {
        let mut refs = cx.at("targetRefs");
        for (i, target_ref) in target_refs.iter().enumerate() {
            check_target_ref(&mut refs.index(i), target_ref);
        }
    }
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        let key = if target_refs.is_empty() {
            "targetRef"
        } else {
            "targetRefs"
        };
        cx.at(key)
            .error("only one of selector, targetRef or targetRefs may be set");
    }
}

/// Checks one `targetRef`: kind and name set, a kind Istio policies can attach to, and no
/// namespace (Istio does not support cross-namespace references).
fn check_target_ref(cx: &mut Checker<'_>, target_ref: &TargetRef) {
    target_ref.validate(cx);
    if !target_ref.kind.is_empty() {
        let group = match target_ref.group.as_str() {
            "core" => "",
            g => g,
        };
        if !TARGET_KINDS
            .iter()
            .any(|(g, k)| *g == group && *k == target_ref.kind)
        {
            cx.at("kind").error(format!(
                "a policy can target only a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io); got {:?} in group {:?}",
                target_ref.kind, target_ref.group
            ));
        }
    }
    if !target_ref.namespace.is_empty() {
        cx.at("namespace")
            .error("must not be set: cross-namespace references are not supported");
    }
}

/// Reports an error at each empty string in `values` (found at `key`).
fn check_non_empty(cx: &mut Checker<'_>, key: &str, values: &[String]) {
    let mut cx = cx.at(key);
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            cx.index(i).error("empty value not allowed");
        }
    }
}

/// True for a value Istio's authorization string matching accepts: exact (`abc`), prefix
/// (`abc*`), suffix (`*abc`) or presence (`*`). A `*` anywhere else (`a*b`, `*a*`, `**`) is
/// not a wildcard Istio understands.
pub(crate) fn is_valid_wildcard(value: &str) -> bool {
    match value.matches('*').count() {
        0 => true,
        1 => value.starts_with('*') || value.ends_with('*'),
        _ => false,
    }
}

/// Checks each value of a string-matched field (found at `key`): not empty, and `*` only as
/// a prefix, a suffix, or the whole value.
fn check_wildcards(cx: &mut Checker<'_>, key: &str, values: &[String]) {
    let mut cx = cx.at(key);
    for (i, v) in values.iter().enumerate() {
        check_wildcard_value(&mut cx.index(i), v);
    }
}

/// Checks one string-matched value at the checker's position.
fn check_wildcard_value(cx: &mut Checker<'_>, value: &str) {
    if value.is_empty() {
        cx.error("empty value not allowed");
    } else if !is_valid_wildcard(value) {
        cx.error(format!(
            "{value:?}: '*' is only allowed as the whole value (presence), a prefix (\"*abc\") or a suffix (\"abc*\")"
        ));
    }
}

/// Parses an IP address (`10.1.2.3`, `2001:db8::1`) or CIDR range (`10.0.0.0/16`), as Istio's
/// `ipBlocks` and `source.ip` accept them. Returns the address and prefix length (32 or 128
/// for a bare address).
pub(crate) fn parse_ip_block(value: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match value.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (value, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address or CIDR range"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(p) => {
            let valid_digits = !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'));
            match p.parse::<u8>() {
                Ok(n) if valid_digits && n <= max => n,
                _ => {
                    return Err(format!(
                        "{value:?} is not a valid CIDR range: the prefix length must be 0-{max}"
                    ));
                }
            }
        }
    };
    Ok((ip, len))
}

/// Checks each value (found at `key`) is an IP address or CIDR range.
fn check_ip_blocks(cx: &mut Checker<'_>, key: &str, values: &[String]) {
    let mut cx = cx.at(key);
    for (i, v) in values.iter().enumerate() {
        check_ip_value(&mut cx.index(i), v);
    }
}

/// Checks one IP or CIDR value at the checker's position.
fn check_ip_value(cx: &mut Checker<'_>, value: &str) {
    if value.is_empty() {
        cx.error("empty value not allowed");
    } else if let Err(e) = parse_ip_block(value) {
        cx.error(e);
    }
}

/// Parses a port written as a decimal string (`"8080"`), as Istio's authorization `ports` and
/// PeerAuthentication's `portLevelMtls` keys are: 1–65535, digits only.
pub(crate) fn parse_port(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Checks each value (found at `key`) is a port number.
fn check_ports(cx: &mut Checker<'_>, key: &str, values: &[String]) {
    let mut cx = cx.at(key);
    for (i, v) in values.iter().enumerate() {
        check_port_value(&mut cx.index(i), v);
    }
}

/// Checks one port value at the checker's position.
fn check_port_value(cx: &mut Checker<'_>, value: &str) {
    if parse_port(value).is_none() {
        cx.error(format!(
            "{value:?} is not a port: expected a number between 1 and 65535, written as a string"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_only_at_the_ends() {
        for ok in ["abc", "*", "abc*", "*abc", "/ratings/*", "*.example.com"] {
            assert!(is_valid_wildcard(ok), "{ok}");
        }
        for bad in ["a*b", "*a*", "**", "/api/*/x", "a**"] {
            assert!(!is_valid_wildcard(bad), "{bad}");
        }
    }

    #[test]
    fn parses_ips_and_cidrs() {
        assert_eq!(
            parse_ip_block("10.1.2.3"),
            Ok(("10.1.2.3".parse().unwrap(), 32))
        );
        assert_eq!(
            parse_ip_block("10.0.0.0/16"),
            Ok(("10.0.0.0".parse().unwrap(), 16))
        );
        assert_eq!(
            parse_ip_block("2001:db8::/32"),
            Ok(("2001:db8::".parse().unwrap(), 32))
        );
        assert_eq!(parse_ip_block("::1").map(|(_, l)| l), Ok(128));
        assert_eq!(parse_ip_block("0.0.0.0/0").map(|(_, l)| l), Ok(0));
        for bad in [
            "",
            "10.0.0.256",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0.0/a",
            "example.com",
            "10.0.0.0/8/8",
        ] {
            assert!(parse_ip_block(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_port_strings() {
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["", "0", "65536", "-1", "+80", "80a", " 80", "http"] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }
}
