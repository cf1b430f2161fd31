//! Schema validation of the networking kinds.
//!
//! What Istio's validating webhook (and the Kubernetes API server, for Istio's CRDs) rejects or
//! warns about, one resource at a time: required fields, ranges, one-of rules, host and label
//! syntax, regexes. Every problem is reported at the exact field (`spec.http[0].route[1].weight`)
//! with a message that says what is expected and what was found. Fields the mesh accepts but
//! does not implement are reported as [`codes::UNSUPPORTED_FIELD`] warnings, deprecated ones as
//! [`codes::DEPRECATED`] warnings.
//!
//! Checks that need other resources (a subset no DestinationRule defines, a host no service
//! has) are analysis, in [`crate::validate::analysis`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration as StdDuration,
};

use super::{
    DestinationRule, Gateway, ServiceEntry, VirtualService, WorkloadEntry,
    destination_rule::{
        ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb,
        H2UpgradePolicy, HttpCookie, HttpSettings, LoadBalancerSettings, MagLev, OutlierDetection,
        PortTrafficPolicy, ProxyProtocol, RetryBudget, SimpleLb, Subset, TcpKeepalive, TcpSettings,
        TrafficPolicy, TunnelSettings, WarmupConfiguration,
    },
    gateway::{Port, Server, ServerTlsMode, ServerTlsSettings},
    service_entry::{LabelSelector, Resolution, ServicePort},
    virtual_service::{
        Abort, CorsPolicy, Delay, Delegate, Destination, HeaderOperations, Headers,
        HttpDirectResponse, HttpFaultInjection, HttpMatchRequest, HttpMirrorPolicy, HttpRedirect,
        HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination, L4MatchAttributes,
        RouteDestination, TcpRoute, TlsMatchAttributes, TlsRoute,
    },
};
use crate::{
    config::common::{StringMatch, check_port},
    duration::Duration,
    policy::hash::{MAGLEV_MAX_TABLE_SIZE, is_prime},
    validate::{Checker, Validate},
};

// === VirtualService ===

impl Validate for VirtualService {
    fn validate(&self, cx: &mut Checker<'_>) {
        // A VirtualService without hosts is a delegate (Istio's rule): it may only carry HTTP
        // routes and no gateways. The mesh does not implement delegation.
        let delegate = self.hosts.is_empty();
        if delegate {
            if !self.gateways.is_empty() || !self.tls.is_empty() || !self.tcp.is_empty() {
                cx.at("hosts").error(
                    "at least one host is required (a VirtualService without hosts is a \
                     delegate, which must have no gateways and no tls or tcp routes)",
                );
            } else {
                cx.at("hosts").unsupported(
                    "a VirtualService without hosts is a delegate, and the mesh does not \
                     implement delegation",
                );
            }
        }

        let applies_to_mesh = self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh");
        let mut all_hosts_valid = true;
        {
            let mut hosts = cx.at("hosts");
            for (i, host) in self.hosts.iter().enumerate() {
                if host.parse::<IpAddr>().is_ok() {
                    continue;
                }
                if let Err(why) = check_wildcard_domain(host) {
                    hosts.index(i).error(why);
                    all_hosts_valid = false;
                } else if host == "*" && applies_to_mesh {
                    hosts.index(i).warning(
                        "the wildcard host \"*\" is not allowed for a VirtualService bound to \
                         the mesh gateway (Istio rejects it); name the hosts, or bind the \
                         VirtualService to a gateway",
                    );
                }
            }
            if all_hosts_valid {
                for (j, b) in self.hosts.iter().enumerate() {
                    if let Some((i, a)) = self.hosts[..j]
                        .iter()
                        .enumerate()
                        .find(|(_, a)| hosts_overlap(a, b))
                    {
                        hosts.index(j).error(format!(
                            "duplicate host: {b:?} overlaps {a:?} (hosts[{i}]); each host may \
                             appear once"
                        ));
                    }
                }
            }
        }

        check_gateway_names(cx, "gateways", &self.gateways);

        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            cx.at("http")
                .error("at least one of http, tls or tcp routes is required, found none");
        }
        {
            let mut http = cx.at("http");
            for (i, route) in self.http.iter().enumerate() {
                let mut c = http.index(i);
                route.validate(&mut c);
                if delegate && route.delegate.is_some() {
                    c.at("delegate").error(
                        "a delegate VirtualService cannot delegate again; delegation is one \
                         level only",
                    );
                }
            }
        }
        if !self.tls.is_empty() {
            cx.at("tls")
                .unsupported("TLS routes are not implemented; the mesh routes HTTP only");
            cx.each("tls", &self.tls);
        }
        if !self.tcp.is_empty() {
            cx.at("tcp")
                .unsupported("TCP routes are not implemented; the mesh routes HTTP only");
            cx.each("tcp", &self.tcp);
        }
        check_export_to(cx, "exportTo", &self.export_to, false);
    }
}

/// True if two VirtualService hosts overlap (equal, or one wildcard covers the other), as
/// Istio's `host.Name.Matches` decides.
fn hosts_overlap(a: &str, b: &str) -> bool {
    let a = a.to_ascii_lowercase();
    let b = b.to_ascii_lowercase();
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a == b,
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
    }
}

impl Validate for HttpRoute {
    fn validate(&self, cx: &mut Checker<'_>) {
        let mut actions = Vec::new();
        if !self.route.is_empty() {
            actions.push("route");
        }
        if self.redirect.is_some() {
            actions.push("redirect");
        }
        if self.direct_response.is_some() {
            actions.push("directResponse");
        }
        if self.delegate.is_some() {
            actions.push("delegate");
        }
        match actions.len() {
            0 => cx.error(
                "one of route, redirect, directResponse or delegate is required, found none",
            ),
            1 => {}
            _ => cx.error(format!(
                "only one of route, redirect, directResponse or delegate may be set, found {}",
                actions.join(" and ")
            )),
        }
        if self.redirect.is_some() {
            if self.rewrite.is_some() {
                cx.at("rewrite").error(
                    "rewrite cannot be combined with redirect; set the new path in the redirect",
                );
            }
            if self.fault.is_some() {
                cx.at("fault")
                    .error("fault cannot be combined with redirect");
            }
        }

        cx.each("match", &self.matches);

        {
            let mut route = cx.at("route");
            let mut total = 0i64;
            for (j, dest) in self.route.iter().enumerate() {
                dest.validate(&mut route.index(j));
                total += i64::from(dest.weight.unwrap_or(0).max(0));
            }
            check_weight_sum(&mut route, self.route.len(), total);
        }

        cx.field("redirect", &self.redirect);
        cx.field("directResponse", &self.direct_response);
        cx.field("delegate", &self.delegate);
        cx.field("rewrite", &self.rewrite);
        check_duration(cx, "timeout", self.timeout);
        cx.field("retries", &self.retries);
        cx.field("fault", &self.fault);

        if self.mirror.is_some() && !self.mirrors.is_empty() {
            cx.at("mirror")
                .error("mirror and mirrors are mutually exclusive; use mirrors");
        }
        cx.field("mirror", &self.mirror);
        cx.each("mirrors", &self.mirrors);
        cx.field("mirrorPercentage", &self.mirror_percentage);
        if let Some(p) = self.mirror_percent {
            cx.at("mirrorPercent").deprecated("mirrorPercentage");
            if p > 100 {
                cx.at("mirrorPercent")
                    .error(format!("percentage must be between 0 and 100, got {p}"));
            }
        }
        if (self.mirror_percentage.is_some() || self.mirror_percent.is_some())
            && self.mirror.is_none()
        {
            let key = if self.mirror_percentage.is_some() {
                "mirrorPercentage"
            } else {
                "mirrorPercent"
            };
            cx.at(key).warning(if self.mirrors.is_empty() {
                "has no effect without mirror"
            } else {
                "applies to mirror only; set the percentage of each entry of mirrors instead"
            });
        }

        cx.field("corsPolicy", &self.cors_policy);
        cx.field("headers", &self.headers);

        // The authority may be rewritten in one place only.
        let rewrites_authority = self
            .rewrite
            .as_ref()
            .is_some_and(|r| r.authority.as_deref().is_some_and(|a| !a.is_empty()));
        if let Some(request) = self.headers.as_ref().and_then(|h| h.request.as_ref()) {
            let mut seen = rewrites_authority;
            for (op, map) in [("set", &request.set), ("add", &request.add)] {
                for name in map.keys().filter(|n| is_authority_header(n)) {
                    if seen {
                        cx.at("headers")
                            .at("request")
                            .at(op)
                            .at(name)
                            .error("the authority is rewritten more than once (rewrite.authority or another :authority/host header operation already sets it)");
                    }
                    seen = true;
                }
            }
        }
    }
}

/// With several destinations, at least one must get traffic.
fn check_weight_sum(cx: &mut Checker<'_>, destinations: usize, total: i64) {
    if destinations > 1 && total == 0 {
        cx.error(format!(
            "the weights of the {destinations} destinations add up to 0; at least one weight \
             must be greater than 0 (each destination gets weight / sum of weights)"
        ));
    }
}

impl Validate for HttpRouteDestination {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.field("destination", &self.destination);
        check_weight(cx, self.weight);
        cx.field("headers", &self.headers);
    }
}

impl Validate for RouteDestination {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.field("destination", &self.destination);
        check_weight(cx, self.weight);
    }
}

fn check_weight(cx: &mut Checker<'_>, weight: Option<i32>) {
    if let Some(w) = weight
        && w < 0
    {
        cx.at("weight")
            .error(format!("weight must be 0 or greater, got {w}"));
    }
}

impl Validate for Destination {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.host.is_empty() {
            cx.at("host").error(
                "required field is missing or empty: the destination's service host, e.g. \"reviews\"",
            );
        } else if self.host == "*" {
            cx.at("host")
                .error("a destination host cannot be the wildcard \"*\"; name a service");
        } else if let Err(why) = check_wildcard_domain(&self.host) {
            cx.at("host").error(why);
        }
        if let Some(subset) = &self.subset {
            if subset.is_empty() {
                cx.at("subset")
                    .error("subset name must not be empty; remove the field to use every endpoint");
            } else if !is_dns_label(subset) {
                cx.at("subset").error(format!(
                    "{subset:?} is not a valid subset name: letters, digits and '-', at most 63 \
                     characters, starting and ending with a letter or digit"
                ));
            }
        }
        cx.field("port", &self.port);
    }
}

impl Validate for HttpMirrorPolicy {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.field("destination", &self.destination);
        cx.field("percentage", &self.percentage);
    }
}

impl Validate for HttpMatchRequest {
    fn validate(&self, cx: &mut Checker<'_>) {
        if is_empty_match(self) {
            cx.error(
                "an empty match is not allowed; set at least one condition (uri, headers, …), \
                 or remove the match to match every request",
            );
            return;
        }
        for (key, m) in [
            ("uri", &self.uri),
            ("scheme", &self.scheme),
            ("method", &self.method),
            ("authority", &self.authority),
        ] {
            if let Some(m) = m {
                check_string_match(cx, key, m, MatchRules::Required);
            }
        }
        check_header_matches(cx, "headers", &self.headers);
        check_header_matches(cx, "withoutHeaders", &self.without_headers);
        {
            let mut params = cx.at("queryParams");
            for (name, m) in &self.query_params {
                if name.is_empty() {
                    params
                        .at(name)
                        .error("query parameter name must not be empty");
                }
                check_string_match(&mut params, name, m, MatchRules::PresenceAllowed);
            }
        }
        if let Some(port) = self.port {
            check_port(cx, "port", port);
        }
        check_labels(cx, "sourceLabels", &self.source_labels);
        check_gateway_names(cx, "gateways", &self.gateways);
        if let Some(ns) = &self.source_namespace
            && !is_dns_label(ns)
        {
            cx.at("sourceNamespace")
                .error(format!("{ns:?} is not a valid namespace name"));
        }
        if self.stat_prefix.is_some() {
            cx.at("statPrefix")
                .unsupported("Envoy per-route stats prefixes do not apply to the mesh");
        }
    }
}

fn is_empty_match(m: &HttpMatchRequest) -> bool {
    m.name.is_none()
        && m.uri.is_none()
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.gateways.is_empty()
        && m.query_params.is_empty()
        && m.ignore_uri_case.is_none()
        && m.without_headers.is_empty()
        && m.source_namespace.is_none()
        && m.stat_prefix.is_none()
}

/// Where a `StringMatch` is used decides what it may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MatchRules {
    /// `uri`, `scheme`, `method`, `authority`, CORS origins: exactly one non-empty
    /// alternative.
    Required,
    /// Header and query parameter values: `{}` checks presence.
    PresenceAllowed,
}

/// Checks the `StringMatch` at `key`: one alternative (or none where presence is allowed), a
/// non-empty prefix or regex, a regex that compiles and is at most 1024 characters.
fn check_string_match(cx: &mut Checker<'_>, key: &str, m: &StringMatch, rules: MatchRules) {
    check_string_match_here(&mut cx.at(key), m, rules);
}

/// [`check_string_match`] on a checker already positioned at the match.
fn check_string_match_here(c: &mut Checker<'_>, m: &StringMatch, rules: MatchRules) {
    if m.is_empty() {
        if rules == MatchRules::Required {
            c.error("exactly one of exact, prefix or regex is required, found none");
        }
        return;
    }
    m.validate(c);
    if rules == MatchRules::Required && m.prefix.as_deref() == Some("") {
        c.at("prefix")
            .error("prefix must not be empty (an empty prefix matches everything; remove the match instead)");
    }
    if let Some(re) = &m.regex {
        if re.is_empty() {
            c.at("regex").error("regex must not be empty");
        } else if re.len() > 1024 {
            c.at("regex").error(format!(
                "regex is too long: at most 1024 characters, found {}",
                re.len()
            ));
        }
    }
}

fn check_header_matches(cx: &mut Checker<'_>, key: &str, headers: &BTreeMap<String, StringMatch>) {
    let mut c = cx.at(key);
    for (name, m) in headers {
        if name.starts_with("@request.auth.claims") {
            c.at(name)
                .unsupported("routing on JWT claims is not implemented");
        } else if name.is_empty() {
            c.at(name).error("header name must not be empty");
        } else if !is_istio_header_name(name) {
            c.at(name).error(format!(
                "{name:?} is not a valid header name: letters, digits, '-' and '_' only"
            ));
        } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
            c.at(name).error(format!(
                "header names must be lowercase: write {:?}, found {name:?}",
                name.to_ascii_lowercase()
            ));
        } else if matches!(name.as_str(), "uri" | "scheme" | "method" | "authority") {
            c.at(name).warning(format!(
                "a header named {name:?} is ignored here (Istio ignores it); use match.{name}"
            ));
        }
        check_string_match(&mut c, name, m, MatchRules::PresenceAllowed);
    }
}

impl Validate for HttpRedirect {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.uri.is_none()
            && self.prefix_rewrite.is_none()
            && self.authority.is_none()
            && self.port.is_none()
            && self.derive_port.is_none()
            && self.scheme.is_none()
        {
            cx.error(
                "a redirect must set at least one of uri, prefixRewrite, authority, scheme, \
                 port or derivePort, found none",
            );
        }
        if self.uri.is_some() && self.prefix_rewrite.is_some() {
            cx.error("uri and prefixRewrite are mutually exclusive, found both");
        }
        if self.port.is_some() && self.derive_port.is_some() {
            cx.error("port and derivePort are mutually exclusive, found both");
        }
        if let Some(port) = self.port {
            check_port(cx, "port", port);
        }
        if let Some(code) = self.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            cx.at("redirectCode").error(format!(
                "redirect code must be one of 301, 302, 303, 307 or 308, got {code}"
            ));
        }
        if let Some(scheme) = &self.scheme
            && scheme != "http"
            && scheme != "https"
        {
            cx.at("scheme").error(format!(
                "redirect scheme must be \"http\" or \"https\", got {scheme:?}"
            ));
        }
    }
}

impl Validate for HttpDirectResponse {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.status == 0 {
            cx.at("status")
                .error("required field is missing: an HTTP status between 200 and 599");
        } else if !(200..=599).contains(&self.status) {
            cx.at("status").error(format!(
                "status must be between 200 and 599, got {}",
                self.status
            ));
        }
        let Some(body) = &self.body else {
            return;
        };
        let mut c = cx.at("body");
        match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => {
                c.error("only one of string or bytes may be set, found both");
            }
            (None, None) => c.error("one of string or bytes is required, found none"),
            _ => {}
        }
        let mut size = body.string.as_ref().map_or(0, String::len);
        if let Some(bytes) = &body.bytes {
            match crate::snapshot::route::decode_base64(bytes).map(|b| b.len()) {
                Some(n) => size = size.max(n),
                None => c.at("bytes").error(
                    "bytes must be base64 (standard or URL-safe alphabet, optional '=' padding)",
                ),
            }
        }
        if size > 1024 * 1024 {
            c.error(format!("the body must be at most 1MiB, found {size} bytes"));
        } else if size > 100 * 1024 {
            c.warning(format!(
                "a large body ({size} bytes) is kept in memory by every proxy; keep direct responses small"
            ));
        }
    }
}

impl Validate for Delegate {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.unsupported("delegation to another VirtualService is not implemented");
        if self.name.is_empty() {
            cx.at("name")
                .error("required field is missing or empty: the delegate VirtualService's name");
        } else if !crate::config::is_dns1123_subdomain(&self.name) {
            cx.at("name")
                .error(format!("{:?} is not a valid resource name", self.name));
        }
        if let Some(ns) = &self.namespace
            && !crate::config::is_dns1123_label(ns)
        {
            cx.at("namespace")
                .error(format!("{ns:?} is not a valid namespace name"));
        }
    }
}

impl Validate for HttpRewrite {
    fn validate(&self, cx: &mut Checker<'_>) {
        let uri = self.uri.as_deref().is_some_and(|s| !s.is_empty());
        let authority = self.authority.as_deref().is_some_and(|s| !s.is_empty());
        if !uri && !authority && self.uri_regex_rewrite.is_none() {
            cx.error(
                "a rewrite must set at least one of uri, uriRegexRewrite or authority, found none",
            );
        }
        if uri && self.uri_regex_rewrite.is_some() {
            cx.error("uri and uriRegexRewrite are mutually exclusive, found both");
        }
        if let Some(re) = &self.uri_regex_rewrite {
            let mut c = cx.at("uriRegexRewrite");
            if re.pattern.is_empty() {
                c.at("match")
                    .error("required field is missing or empty: the regex to rewrite");
            } else if re.pattern.len() > 1024 {
                c.at("match").error(format!(
                    "regex is too long: at most 1024 characters, found {}",
                    re.pattern.len()
                ));
            } else {
                c.regex("match", &re.pattern);
            }
            if re.rewrite.is_empty() {
                c.at("rewrite")
                    .error("required field is missing or empty: the replacement (capture groups as \\1, \\2, …)");
            }
        }
    }
}

/// The retry conditions Envoy understands (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl Validate for HttpRetry {
    fn validate(&self, cx: &mut Checker<'_>) {
        let attempts = self.attempts.unwrap_or(0);
        if attempts < 0 {
            cx.at("attempts")
                .error(format!("attempts must be 0 or greater, got {attempts}"));
        } else if attempts == 0 {
            let mut set = Vec::new();
            if self.per_try_timeout.is_some() {
                set.push("perTryTimeout");
            }
            if self.retry_on.is_some() {
                set.push("retryOn");
            }
            if self.retry_remote_localities.is_some() {
                set.push("retryRemoteLocalities");
            }
            if !set.is_empty() {
                let found = if self.attempts.is_some() {
                    "0"
                } else {
                    "unset (0)"
                };
                cx.at("attempts").error(format!(
                    "attempts is {found}, which disables retries, but the policy sets {}; set \
                     attempts to 1 or more",
                    set.join(" and ")
                ));
            }
        }
        check_duration(cx, "perTryTimeout", self.per_try_timeout);
        if let Some(retry_on) = &self.retry_on {
            for item in retry_on.split(',') {
                let item = item.trim();
                let status = item
                    .parse::<u16>()
                    .is_ok_and(|code| (100..=599).contains(&code));
                if !status && !RETRY_ON.contains(&item) {
                    cx.at("retryOn").error(format!(
                        "{item:?} is not a retry condition: expected an HTTP status code \
                         (100-599) or one of {}",
                        RETRY_ON.join(", ")
                    ));
                }
            }
        }
        check_duration(cx, "backoff", self.backoff);
        if self.retry_remote_localities.is_some() {
            cx.at("retryRemoteLocalities")
                .unsupported("the mesh has no localities; every endpoint is local");
        }
    }
}

impl Validate for HttpFaultInjection {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.delay.is_none() && self.abort.is_none() {
            cx.error("at least one of delay or abort is required, found neither");
        }
        cx.field("delay", &self.delay);
        cx.field("abort", &self.abort);
    }
}

/// Checks the deprecated integer `percent` (0–100) at `key`.
fn check_deprecated_percent(cx: &mut Checker<'_>, key: &str, value: Option<i32>, has_new: bool) {
    let Some(p) = value else {
        return;
    };
    let mut c = cx.at(key);
    c.deprecated("percentage");
    if !(0..=100).contains(&p) {
        c.error(format!("percentage must be between 0 and 100, got {p}"));
    }
    if has_new {
        c.warning("ignored: percentage is set too and takes precedence");
    }
}

impl Validate for Delay {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.fixed_delay.is_none() && self.exponential_delay.is_none() {
            cx.at("fixedDelay")
                .error("required field is missing: the delay to inject, e.g. \"7s\"");
        }
        if self.exponential_delay.is_some() {
            cx.at("exponentialDelay")
                .error("exponentialDelay is not supported (Istio rejects it too); use fixedDelay");
        }
        check_duration(cx, "fixedDelay", self.fixed_delay);
        cx.field("percentage", &self.percentage);
        check_deprecated_percent(cx, "percent", self.percent, self.percentage.is_some());
    }
}

use crate::policy::fault::GRPC_CODES;

impl Validate for Abort {
    fn validate(&self, cx: &mut Checker<'_>) {
        let mut kinds = Vec::new();
        if self.http_status.is_some() {
            kinds.push("httpStatus");
        }
        if self.grpc_status.is_some() {
            kinds.push("grpcStatus");
        }
        if self.http2_error.is_some() {
            kinds.push("http2Error");
        }
        match kinds.len() {
            0 => cx.error("one of httpStatus, grpcStatus or http2Error is required, found none"),
            1 => {}
            _ => cx.error(format!(
                "only one of httpStatus, grpcStatus or http2Error may be set, found {}",
                kinds.join(" and ")
            )),
        }
        if let Some(status) = self.http_status
            && !(200..=599).contains(&status)
        {
            cx.at("httpStatus").error(format!(
                "HTTP status must be between 200 and 599, got {status}"
            ));
        }
        if let Some(code) = &self.grpc_status
            && !GRPC_CODES.contains(&code.as_str())
        {
            let message = match code.trim().parse::<usize>() {
                Ok(n) => match GRPC_CODES.get(n) {
                    Some(name) => format!(
                        "grpcStatus must be a status code name, not a number: write \
                             {name:?} instead of {code:?}"
                    ),
                    None => format!(
                        "grpcStatus must be a status code name such as \"UNAVAILABLE\", \
                             not a number, got {code:?}"
                    ),
                },
                Err(_) => format!(
                    "{code:?} is not a gRPC status code name: expected one of {}",
                    GRPC_CODES.join(", ")
                ),
            };
            cx.at("grpcStatus").error(message);
        }
        if self.http2_error.is_some() {
            cx.at("http2Error").unsupported(
                "HTTP/2 error aborts are not implemented (Istio does not implement them either)",
            );
        }
        cx.field("percentage", &self.percentage);
        check_deprecated_percent(cx, "percent", self.percent, self.percentage.is_some());
    }
}

/// The methods a CORS policy may allow (Go's `net/http` method constants, as Istio checks).
const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

impl Validate for CorsPolicy {
    fn validate(&self, cx: &mut Checker<'_>) {
        {
            let mut origins = cx.at("allowOrigins");
            for (i, origin) in self.allow_origins.iter().enumerate() {
                if origin.exact.as_deref() == Some("") {
                    origins
                        .index(i)
                        .at("exact")
                        .error("an allowed origin must not be empty");
                }
                check_string_match_here(&mut origins.index(i), origin, MatchRules::Required);
            }
        }
        if !self.allow_origin.is_empty() {
            cx.at("allowOrigin").deprecated("allowOrigins");
        }
        {
            let mut methods = cx.at("allowMethods");
            for (i, method) in self.allow_methods.iter().enumerate() {
                if !HTTP_METHODS.contains(&method.as_str()) {
                    methods.index(i).error(format!(
                        "{method:?} is not a supported HTTP method: expected one of {}",
                        HTTP_METHODS.join(", ")
                    ));
                }
            }
        }
        for key in ["allowHeaders", "exposeHeaders"] {
            let names = if key == "allowHeaders" {
                &self.allow_headers
            } else {
                &self.expose_headers
            };
            let mut c = cx.at(key);
            for (i, name) in names.iter().enumerate() {
                if name != "*" && !is_istio_header_name(name) {
                    c.index(i).error(format!(
                        "{name:?} is not a valid header name: \"*\", or letters, digits, '-' and '_'"
                    ));
                }
            }
        }
        if let Some(max_age) = self.max_age {
            check_duration(cx, "maxAge", Some(max_age));
            if max_age.as_std().subsec_nanos() != 0 {
                cx.at("maxAge").error(format!(
                    "maxAge must be a whole number of seconds, got {max_age}"
                ));
            }
        }
    }
}

impl Validate for Headers {
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(ops) = &self.request {
            check_header_ops(&mut cx.at("request"), ops, true);
        }
        if let Some(ops) = &self.response {
            check_header_ops(&mut cx.at("response"), ops, false);
        }
    }
}

fn check_header_ops(cx: &mut Checker<'_>, ops: &HeaderOperations, request: bool) {
    for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
        let mut c = cx.at(op);
        for (name, value) in map {
            let mut h = c.at(name);
            if name.is_empty() {
                h.error("header name must not be empty");
            } else if request && is_authority_header(name) {
                // Setting `:authority` or `host` on the request rewrites the authority.
            } else if name.starts_with(':') {
                h.error(format!(
                    "pseudo-header {name:?} cannot be {}",
                    if op == "set" { "set" } else { "added" }
                ));
            } else if name.eq_ignore_ascii_case("host") {
                h.error("the host header cannot be set on a response");
            } else if !is_token(name) {
                h.error(format!(
                    "{name:?} is not a valid header name: letters, digits and !#$%&'*+-.^_`|~ only"
                ));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                h.error("header value must not contain control characters (line breaks included)");
            }
        }
    }
    let mut c = cx.at("remove");
    for (i, name) in ops.remove.iter().enumerate() {
        if name.is_empty() {
            c.index(i).error("header name must not be empty");
        } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            c.index(i).error(format!(
                "{name:?} cannot be removed (pseudo-headers and host are required by HTTP)"
            ));
        } else if !is_token(name) {
            c.index(i).error(format!(
                "{name:?} is not a valid header name: letters, digits and !#$%&'*+-.^_`|~ only"
            ));
        }
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

impl Validate for TlsRoute {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.matches.is_empty() {
            cx.at("match")
                .error("a TLS route needs at least one match with sniHosts, found none");
        }
        cx.each("match", &self.matches);
        check_route_destinations(cx, &self.route);
    }
}

impl Validate for TcpRoute {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.each("match", &self.matches);
        check_route_destinations(cx, &self.route);
    }
}

fn check_route_destinations(cx: &mut Checker<'_>, route: &[RouteDestination]) {
    let mut c = cx.at("route");
    if route.is_empty() {
        c.error("at least one destination is required, found none");
    }
    let mut total = 0i64;
    for (j, dest) in route.iter().enumerate() {
        dest.validate(&mut c.index(j));
        total += i64::from(dest.weight.unwrap_or(0).max(0));
    }
    check_weight_sum(&mut c, route.len(), total);
}

impl Validate for TlsMatchAttributes {
    fn validate(&self, cx: &mut Checker<'_>) {
        {
            let mut sni = cx.at("sniHosts");
            if self.sni_hosts.is_empty() {
                sni.error("at least one SNI host is required, found none");
            }
            for (i, host) in self.sni_hosts.iter().enumerate() {
                if host.parse::<IpAddr>().is_ok() {
                    sni.index(i).warning(format!(
                        "{host:?} is an IP address; SNI carries host names and most clients never send an IP"
                    ));
                } else if let Err(why) = check_wildcard_domain(host) {
                    sni.index(i).error(why);
                }
            }
        }
        check_l4_match(
            cx,
            &self.destination_subnets,
            self.port,
            &self.source_labels,
            &self.gateways,
            self.source_namespace.as_deref(),
        );
    }
}

impl Validate for L4MatchAttributes {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_l4_match(
            cx,
            &self.destination_subnets,
            self.port,
            &self.source_labels,
            &self.gateways,
            self.source_namespace.as_deref(),
        );
    }
}

fn check_l4_match(
    cx: &mut Checker<'_>,
    subnets: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: Option<&str>,
) {
    {
        let mut c = cx.at("destinationSubnets");
        for (i, subnet) in subnets.iter().enumerate() {
            if let Err(why) = check_ip_or_cidr(subnet) {
                c.index(i).error(why);
            }
        }
    }
    if let Some(port) = port {
        check_port(cx, "port", port);
    }
    check_labels(cx, "sourceLabels", source_labels);
    check_gateway_names(cx, "gateways", gateways);
    if let Some(ns) = source_namespace
        && !is_dns_label(ns)
    {
        cx.at("sourceNamespace")
            .error(format!("{ns:?} is not a valid namespace name"));
    }
}

// === DestinationRule ===

impl Validate for DestinationRule {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.host.is_empty() {
            cx.at("host").error(
                "required field is missing or empty: the service the rule applies to, e.g. \"reviews\"",
            );
        } else if let Err(why) = check_wildcard_domain(&self.host) {
            cx.at("host").error(why);
        }
        cx.field("trafficPolicy", &self.traffic_policy);
        {
            let mut subsets = cx.at("subsets");
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, subset) in self.subsets.iter().enumerate() {
                let mut c = subsets.index(i);
                subset.validate(&mut c);
                if subset.name.is_empty() {
                    continue;
                }
                if let Some(first) = seen.get(subset.name.as_str()) {
                    c.at("name").error(format!(
                        "duplicate subset name {:?}: subsets[{first}] has the same name",
                        subset.name
                    ));
                } else {
                    seen.insert(&subset.name, i);
                }
            }
        }
        check_export_to(cx, "exportTo", &self.export_to, false);
        if let Some(selector) = &self.workload_selector {
            cx.field("workloadSelector", selector);
            if selector.match_labels.is_empty() {
                cx.at("workloadSelector").warning(
                    "a workload selector without labels selects every workload in the namespace",
                );
            }
        }
    }
}

impl Validate for Subset {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.name.is_empty() {
            cx.at("name")
                .error("required field is missing or empty: the subset's name, e.g. \"v1\"");
        } else if !is_dns_label(&self.name) {
            cx.at("name").error(format!(
                "{:?} is not a valid subset name: letters, digits and '-', at most 63 \
                 characters, starting and ending with a letter or digit",
                self.name
            ));
        }
        check_labels(cx, "labels", &self.labels);
        cx.field("trafficPolicy", &self.traffic_policy);
    }
}

impl Validate for TrafficPolicy {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
            && self.port_level_settings.is_empty()
            && self.tunnel.is_none()
            && self.proxy_protocol.is_none()
            && self.retry_budget.is_none()
        {
            cx.error("a traffic policy must set at least one field, found none");
        }
        if self.tunnel.is_some() && self.proxy_protocol.is_some() {
            cx.error("tunnel and proxyProtocol are mutually exclusive, found both");
        }
        cx.field("loadBalancer", &self.load_balancer);
        cx.field("connectionPool", &self.connection_pool);
        cx.field("outlierDetection", &self.outlier_detection);
        cx.field("tls", &self.tls);
        cx.each("portLevelSettings", &self.port_level_settings);
        if self.tunnel.is_some() {
            cx.at("tunnel")
                .unsupported("tunnelling upstream connections is not implemented");
        }
        cx.field("tunnel", &self.tunnel);
        if self.proxy_protocol.is_some() {
            cx.at("proxyProtocol")
                .unsupported("sending the PROXY protocol upstream is not implemented");
        }
        cx.field("proxyProtocol", &self.proxy_protocol);
        cx.field("retryBudget", &self.retry_budget);
    }
}

impl Validate for PortTrafficPolicy {
    fn validate(&self, cx: &mut Checker<'_>) {
        match &self.port {
            None => cx.at("port").error(
                "required field is missing: the port the policy applies to, e.g. {number: 9080}",
            ),
            Some(port) => cx.field("port", port),
        }
        if self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
        {
            cx.error(
                "a port traffic policy must set at least one of loadBalancer, connectionPool, \
                 outlierDetection or tls, found none",
            );
        }
        cx.field("loadBalancer", &self.load_balancer);
        cx.field("connectionPool", &self.connection_pool);
        cx.field("outlierDetection", &self.outlier_detection);
        cx.field("tls", &self.tls);
    }
}

impl Validate for LoadBalancerSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.simple.is_some() && self.consistent_hash.is_some() {
            cx.error("simple and consistentHash are mutually exclusive, found both");
        }
        if self.simple == Some(SimpleLb::LeastConn) {
            cx.at("simple").deprecated("LEAST_REQUEST");
        }
        cx.field("consistentHash", &self.consistent_hash);
        if self.locality_lb_setting.is_some() && self.zone_aware_lb_setting.is_some() {
            cx.error("localityLbSetting and zoneAwareLbSetting are mutually exclusive, found both");
        }
        if self.locality_lb_setting.is_some() {
            cx.at("localityLbSetting")
                .unsupported("the mesh has no localities; locality load balancing does not apply");
        }
        if self.zone_aware_lb_setting.is_some() {
            cx.at("zoneAwareLbSetting")
                .unsupported("the mesh has no zones; zone-aware load balancing does not apply");
        }
        if let Some(warmup) = &self.warmup {
            cx.field("warmup", warmup);
            let applies = self.consistent_hash.is_none()
                && matches!(
                    self.simple,
                    None | Some(
                        SimpleLb::Unspecified | SimpleLb::RoundRobin | SimpleLb::LeastRequest
                    )
                );
            if !applies {
                cx.at("warmup").warning(
                    "warmup only applies to ROUND_ROBIN and LEAST_REQUEST load balancing; it is ignored here",
                );
            }
        }
        if let Some(d) = self.warmup_duration_secs {
            cx.at("warmupDurationSecs").deprecated("warmup.duration");
            check_duration(cx, "warmupDurationSecs", Some(d));
        }
    }
}

impl Validate for WarmupConfiguration {
    fn validate(&self, cx: &mut Checker<'_>) {
        match self.duration {
            None => cx
                .at("duration")
                .error("required field is missing: the warm-up window, e.g. \"60s\""),
            Some(d) => check_duration(cx, "duration", Some(d)),
        }
        if let Some(p) = self.minimum_percent {
            cx.percent("minimumPercent", p);
        }
        if let Some(a) = self.aggression
            && (a.is_nan() || a < 1.0)
        {
            cx.at("aggression")
                .error(format!("aggression must be 1.0 or greater, got {a}"));
        }
    }
}

impl Validate for ConsistentHashLb {
    fn validate(&self, cx: &mut Checker<'_>) {
        let mut keys = Vec::new();
        if self.http_header_name.is_some() {
            keys.push("httpHeaderName");
        }
        if self.http_cookie.is_some() {
            keys.push("httpCookie");
        }
        if self.use_source_ip.is_some() {
            keys.push("useSourceIp");
        }
        if self.http_query_parameter_name.is_some() {
            keys.push("httpQueryParameterName");
        }
        match keys.len() {
            0 => cx.error(
                "one hash key is required: httpHeaderName, httpCookie, useSourceIp or \
                 httpQueryParameterName, found none",
            ),
            1 => {}
            _ => cx.error(format!(
                "only one hash key may be set, found {}",
                keys.join(" and ")
            )),
        }
        if let Some(name) = &self.http_header_name
            && !is_istio_header_name(name)
        {
            cx.at("httpHeaderName").error(format!(
                "{name:?} is not a valid header name: letters, digits, '-' and '_' only"
            ));
        }
        if self.http_query_parameter_name.as_deref() == Some("") {
            cx.at("httpQueryParameterName")
                .error("query parameter name must not be empty");
        }
        cx.field("httpCookie", &self.http_cookie);
        if self.ring_hash.is_some() && self.maglev.is_some() {
            cx.error("ringHash and maglev are mutually exclusive, found both");
        }
        if self.minimum_ring_size.is_some() {
            cx.at("minimumRingSize")
                .deprecated("ringHash.minimumRingSize");
            if self.ring_hash.is_some() || self.maglev.is_some() {
                cx.at("minimumRingSize").error(
                    "minimumRingSize cannot be combined with ringHash or maglev; use ringHash.minimumRingSize",
                );
            }
        }
        cx.field("maglev", &self.maglev);
    }
}

impl Validate for HttpCookie {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.required_str("name", &self.name);
    }
}

impl Validate for MagLev {
    fn validate(&self, cx: &mut Checker<'_>) {
        let Some(size) = self.table_size else {
            return;
        };
        if size == 0 || size >= MAGLEV_MAX_TABLE_SIZE {
            cx.at("tableSize").error(format!(
                "tableSize must be a prime number below {MAGLEV_MAX_TABLE_SIZE}, got {size}"
            ));
        } else if !is_prime(size) {
            cx.at("tableSize").error(format!(
                "tableSize must be a prime number (e.g. 65537), got {size}"
            ));
        }
    }
}

impl Validate for ConnectionPoolSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.tcp.is_none() && self.http.is_none() {
            cx.error("a connection pool must set tcp or http, found neither");
        }
        cx.field("tcp", &self.tcp);
        cx.field("http", &self.http);
    }
}

fn check_non_negative(cx: &mut Checker<'_>, key: &str, value: Option<i32>) {
    if let Some(v) = value
        && v < 0
    {
        cx.at(key).error(format!("must be 0 or greater, got {v}"));
    }
}

impl Validate for TcpSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_non_negative(cx, "maxConnections", self.max_connections);
        check_duration(cx, "connectTimeout", self.connect_timeout);
        cx.field("tcpKeepalive", &self.tcp_keepalive);
        check_duration(cx, "maxConnectionDuration", self.max_connection_duration);
        check_duration(cx, "idleTimeout", self.idle_timeout);
    }
}

impl Validate for TcpKeepalive {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_duration(cx, "time", self.time);
        check_duration(cx, "interval", self.interval);
    }
}

impl Validate for HttpSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_non_negative(
            cx,
            "http1MaxPendingRequests",
            self.http1_max_pending_requests,
        );
        check_non_negative(cx, "http2MaxRequests", self.http2_max_requests);
        check_non_negative(
            cx,
            "maxRequestsPerConnection",
            self.max_requests_per_connection,
        );
        check_non_negative(cx, "maxRetries", self.max_retries);
        check_non_negative(cx, "maxConcurrentStreams", self.max_concurrent_streams);
        check_duration(cx, "idleTimeout", self.idle_timeout);
        if self.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && self.use_client_protocol == Some(true)
        {
            cx.at("useClientProtocol")
                .error("useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE");
        }
    }
}

impl Validate for OutlierDetection {
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(n) = self.consecutive_errors {
            cx.at("consecutiveErrors")
                .deprecated("consecutive5xxErrors or consecutiveGatewayErrors");
            if n < 0 {
                cx.at("consecutiveErrors")
                    .error(format!("must be 0 or greater, got {n}"));
            }
        }
        if self.split_external_local_origin_errors != Some(true)
            && self
                .consecutive_local_origin_failures
                .is_some_and(|n| n > 0)
        {
            cx.at("consecutiveLocalOriginFailures").error(
                "consecutiveLocalOriginFailures only applies when splitExternalLocalOriginErrors is true",
            );
        }
        if let (Some(gateway), Some(any)) =
            (self.consecutive_gateway_errors, self.consecutive_5xx_errors)
            && gateway > 0
            && any > 0
            && gateway >= any
        {
            cx.at("consecutiveGatewayErrors").warning(format!(
                "consecutiveGatewayErrors ({gateway}) has no effect: gateway errors are 5xx, so \
                 consecutive5xxErrors ({any}) ejects first"
            ));
        }
        check_duration(cx, "interval", self.interval);
        check_duration(cx, "baseEjectionTime", self.base_ejection_time);
        for (key, value) in [
            ("maxEjectionPercent", self.max_ejection_percent),
            ("minHealthPercent", self.min_health_percent),
        ] {
            if let Some(p) = value
                && !(0..=100).contains(&p)
            {
                cx.at(key)
                    .error(format!("percentage must be between 0 and 100, got {p}"));
            }
        }
    }
}

impl Validate for ClientTlsSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        let files = [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
            ("caCertificates", &self.ca_certificates),
            ("caCrl", &self.ca_crl),
        ];
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        match self.mode {
            Some(ClientTlsMode::IstioMutual) => {
                for (key, value) in files
                    .iter()
                    .copied()
                    .chain([("credentialName", &self.credential_name)])
                {
                    if set(value) {
                        cx.at(key).error(format!(
                            "{key} must not be set with mode ISTIO_MUTUAL (the mesh's own \
                             certificates are used); remove it or use mode MUTUAL"
                        ));
                    }
                }
                if self.insecure_skip_verify.is_some() {
                    cx.at("insecureSkipVerify")
                        .error("insecureSkipVerify must not be set with mode ISTIO_MUTUAL");
                }
            }
            Some(ClientTlsMode::Simple | ClientTlsMode::Mutual) if set(&self.credential_name) => {
                cx.at("credentialName").warning(
                    "credentialName names a Kubernetes secret, which the mesh does not read: \
                     connections to this destination are refused; give caCertificates, \
                     clientCertificate and privateKey files instead",
                );
                for (key, value) in files {
                    if set(value) {
                        cx.at(key).error(format!(
                            "{key} must not be set together with credentialName (the \
                             credential holds the certificates)"
                        ));
                    }
                }
            }
            Some(ClientTlsMode::Mutual) => {
                for (key, value) in [
                    ("clientCertificate", &self.client_certificate),
                    ("privateKey", &self.private_key),
                ] {
                    if !set(value) {
                        cx.at(key).error(format!(
                            "required field is missing: mode MUTUAL needs {key} (or credentialName)"
                        ));
                    }
                }
            }
            _ => {}
        }
        if self.insecure_skip_verify == Some(true) {
            match self.mode {
                Some(ClientTlsMode::Simple)
                    if set(&self.ca_certificates)
                        || set(&self.credential_name)
                        || !self.subject_alt_names.is_empty() =>
                {
                    cx.at("insecureSkipVerify").error(
                        "insecureSkipVerify cannot be combined with caCertificates, \
                         credentialName or subjectAltNames",
                    );
                }
                Some(ClientTlsMode::Mutual)
                    if set(&self.ca_certificates) || !self.subject_alt_names.is_empty() =>
                {
                    cx.at("insecureSkipVerify").error(
                        "insecureSkipVerify cannot be combined with caCertificates or subjectAltNames",
                    );
                }
                _ => {}
            }
        }
    }
}

impl Validate for TunnelSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(p) = &self.protocol
            && p != "CONNECT"
            && p != "POST"
        {
            cx.at("protocol").error(format!(
                "tunnel protocol must be \"CONNECT\" or \"POST\", got {p:?}"
            ));
        }
        if self.target_host.parse::<IpAddr>().is_err()
            && let Err(why) = check_fqdn(&self.target_host)
        {
            cx.at("targetHost").error(why);
        }
        check_port(cx, "targetPort", self.target_port);
    }
}

impl Validate for ProxyProtocol {
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(v) = &self.version
            && v != "V1"
            && v != "V2"
        {
            cx.at("version").error(format!(
                "PROXY protocol version must be \"V1\" or \"V2\", got {v:?}"
            ));
        }
    }
}

impl Validate for RetryBudget {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.field("percent", &self.percent);
    }
}

// === Gateway ===

impl Validate for Gateway {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.servers.is_empty() {
            cx.at("servers")
                .error("at least one server is required, found none");
        }
        let mut servers = cx.at("servers");
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, server) in self.servers.iter().enumerate() {
            let mut c = servers.index(i);
            server.validate(&mut c);
            let Some(port) = &server.port else {
                continue;
            };
            if port.name.is_empty() {
                continue;
            }
            if let Some(first) = names.get(port.name.as_str()) {
                c.at("port").at("name").error(format!(
                    "duplicate port name {:?}: servers[{first}] uses it; port names must be unique",
                    port.name
                ));
            } else {
                names.insert(&port.name, i);
            }
        }
        drop(servers);
        check_labels(cx, "selector", &self.selector);
    }
}

/// Protocols Istio knows (`protocol.Parse`), lowercase.
const PROTOCOLS: &[&str] = &[
    "http",
    "https",
    "grpc",
    "grpc-web",
    "http2",
    "http_proxy",
    "tcp",
    "tls",
    "udp",
    "mongo",
    "redis",
    "mysql",
];

fn is_http_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http" | "http2" | "grpc" | "grpc-web" | "http_proxy"
    )
}

fn is_tls_protocol(p: &str) -> bool {
    matches!(p.to_ascii_lowercase().as_str(), "https" | "tls")
}

fn is_known_protocol(p: &str) -> bool {
    PROTOCOLS.contains(&p.to_ascii_lowercase().as_str())
}

impl Validate for Server {
    fn validate(&self, cx: &mut Checker<'_>) {
        {
            let mut hosts = cx.at("hosts");
            if self.hosts.is_empty() {
                hosts
                    .error("at least one host is required, e.g. \"*\" or \"bookinfo.example.com\"");
            }
            for (i, host) in self.hosts.iter().enumerate() {
                if let Err(why) = check_namespace_slash_host(host) {
                    hosts.index(i).error(why);
                }
            }
        }
        let port_ok = match &self.port {
            None => {
                cx.at("port").error(
                    "required field is missing: the server's port, e.g. {number: 80, name: http, protocol: HTTP}",
                );
                false
            }
            Some(port) => {
                cx.field("port", port);
                is_known_protocol(&port.protocol)
            }
        };
        if let Some(bind) = &self.bind {
            cx.at("bind")
                .unsupported("the mesh binds its own listeners; bind is ignored");
            if let Some(path) = bind.strip_prefix("unix://") {
                if let Err(why) = check_unix_path(path) {
                    cx.at("bind").error(why);
                }
            } else if bind.parse::<IpAddr>().is_err() {
                cx.at("bind").error(format!(
                    "bind must be an IP address or unix://PATH, got {bind:?}"
                ));
            }
        }
        if self.default_endpoint.is_some() {
            cx.at("defaultEndpoint")
                .unsupported("defaultEndpoint is deprecated in Istio and not implemented");
        }
        cx.field("tls", &self.tls);
        let (Some(port), true) = (&self.port, port_ok) else {
            return;
        };
        let protocol = port.protocol.to_ascii_uppercase();
        match &self.tls {
            None if is_tls_protocol(&protocol) => {
                cx.at("tls").error(format!(
                    "required field is missing: a server with protocol {protocol} needs tls settings (mode and credentials)"
                ));
            }
            Some(tls) if !is_tls_protocol(&protocol) => {
                let passthrough = matches!(
                    tls.mode,
                    None | Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)
                );
                let has_certs = [
                    &tls.server_certificate,
                    &tls.private_key,
                    &tls.ca_certificates,
                ]
                .iter()
                .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
                if is_http_protocol(&protocol) {
                    if !passthrough || has_certs {
                        cx.at("tls").error(format!(
                            "a plain-text {protocol} server can only set tls.httpsRedirect; use protocol HTTPS to terminate TLS"
                        ));
                    }
                } else {
                    cx.at("tls").error(format!(
                        "tls settings are only allowed on HTTPS and TLS servers, found protocol {protocol}"
                    ));
                }
            }
            _ => {}
        }
        if !is_http_protocol(&protocol)
            && self.tls.as_ref().and_then(|t| t.https_redirect) == Some(true)
        {
            cx.at("tls").at("httpsRedirect").warning(format!(
                "httpsRedirect only applies to HTTP servers, found protocol {protocol}"
            ));
        }
    }
}

impl Validate for Port {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_port(cx, "number", self.number);
        if self.protocol.is_empty() {
            cx.at("protocol").error(
                "required field is missing: one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS",
            );
        } else if !is_known_protocol(&self.protocol) {
            cx.at("protocol").error(format!(
                "unknown protocol {:?}: expected one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS",
                self.protocol
            ));
        }
        if self.name.is_empty() {
            cx.at("name")
                .warning("the port has no name; Istio's webhook requires one (e.g. \"http\")");
        }
        if self.target_port.is_some() {
            cx.at("targetPort")
                .error("targetPort has no effect on gateways; remove it");
        }
    }
}

impl Validate for ServerTlsSettings {
    fn validate(&self, cx: &mut Checker<'_>) {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let has_credential = set(&self.credential_name) || !self.credential_names.is_empty();
        match self.mode.unwrap_or(ServerTlsMode::Passthrough) {
            ServerTlsMode::IstioMutual => {
                for (key, value) in [
                    ("serverCertificate", &self.server_certificate),
                    ("privateKey", &self.private_key),
                    ("caCertificates", &self.ca_certificates),
                    ("credentialName", &self.credential_name),
                ] {
                    if set(value) {
                        cx.at(key).error(format!(
                            "{key} must not be set with mode ISTIO_MUTUAL (the mesh's own certificates are used)"
                        ));
                    }
                }
            }
            mode @ (ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)
                if (set(&self.server_certificate)
                    || set(&self.private_key)
                    || set(&self.ca_certificates)
                    || set(&self.ca_crl)
                    || has_credential) =>
            {
                let name = if mode == ServerTlsMode::Passthrough {
                    "PASSTHROUGH"
                } else {
                    "AUTO_PASSTHROUGH"
                };
                cx.warning(format!(
                        "mode {name} does not terminate TLS; the certificates are ignored{}",
                        if self.mode.is_none() {
                            " (mode is unset, which means PASSTHROUGH; set mode: SIMPLE to terminate TLS)"
                        } else {
                            ""
                        }
                    ));
            }
            ServerTlsMode::Simple if !has_credential => {
                for (key, value) in [
                    ("serverCertificate", &self.server_certificate),
                    ("privateKey", &self.private_key),
                ] {
                    if !set(value) {
                        cx.at(key).error(format!(
                            "required field is missing: mode SIMPLE needs credentialName, or serverCertificate and privateKey; {key} is missing"
                        ));
                    }
                }
            }
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual if !has_credential => {
                for (key, value) in [
                    ("serverCertificate", &self.server_certificate),
                    ("privateKey", &self.private_key),
                    ("caCertificates", &self.ca_certificates),
                ] {
                    if !set(value) {
                        cx.at(key).error(format!(
                            "required field is missing: mode MUTUAL needs credentialName, or serverCertificate, privateKey and caCertificates; {key} is missing"
                        ));
                    }
                }
            }
            _ => {}
        }
        if set(&self.ca_crl) {
            if has_credential {
                cx.at("caCrl").error(
                    "caCrl cannot be combined with credentialName; put the CRL in the credential",
                );
            } else if self.mode == Some(ServerTlsMode::Simple) {
                cx.at("caCrl")
                    .error("caCrl does not apply to mode SIMPLE (no client certificates)");
            }
        }
        for key in ["minProtocolVersion", "maxProtocolVersion"] {
            let value = if key == "minProtocolVersion" {
                &self.min_protocol_version
            } else {
                &self.max_protocol_version
            };
            if let Some(v) = value
                && !matches!(
                    v.as_str(),
                    "TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2" | "TLSV1_3"
                )
            {
                cx.at(key).error(format!(
                        "unknown TLS version {v:?}: expected one of TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3"
                    ));
            }
        }
    }
}

// === ServiceEntry ===

impl Validate for ServiceEntry {
    fn validate(&self, cx: &mut Checker<'_>) {
        let resolution = self.resolution.unwrap_or(Resolution::None);
        {
            let mut hosts = cx.at("hosts");
            if self.hosts.is_empty() {
                hosts.error("at least one host is required, e.g. \"api.example.com\"");
            }
            for (i, host) in self.hosts.iter().enumerate() {
                if host == "*" {
                    hosts
                        .index(i)
                        .error("the wildcard host \"*\" is not allowed in a ServiceEntry; use a domain such as \"*.example.com\"");
                } else if let Err(why) = check_wildcard_domain(host) {
                    hosts.index(i).error(why);
                } else {
                    let first = host.split('.').next().unwrap_or_default();
                    if first.starts_with('*') && first != "*" {
                        hosts.index(i).warning(format!(
                            "partial wildcard {host:?} is treated as {:?}",
                            format!("*.{}", host.split_once('.').map_or("", |(_, r)| r))
                        ));
                    }
                    if self.endpoints.is_empty()
                        && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                        && host.starts_with('*')
                    {
                        hosts.index(i).error(format!(
                            "resolution {} needs fully-qualified hosts when no endpoints are given, found the wildcard {host:?}",
                            resolution_name(resolution)
                        ));
                    }
                }
            }
        }
        {
            let mut addresses = cx.at("addresses");
            for (i, address) in self.addresses.iter().enumerate() {
                if let Err(why) = check_ip_or_cidr(address) {
                    addresses.index(i).error(why);
                } else if address.contains('/')
                    && !matches!(resolution, Resolution::None | Resolution::Static)
                {
                    addresses.index(i).error(format!(
                        "CIDR addresses need resolution NONE or STATIC, found {}",
                        resolution_name(resolution)
                    ));
                }
            }
        }
        let mut port_names: BTreeSet<&str> = BTreeSet::new();
        {
            let mut ports = cx.at("ports");
            let mut numbers: BTreeMap<u32, usize> = BTreeMap::new();
            let mut names: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, port) in self.ports.iter().enumerate() {
                let mut c = ports.index(i);
                port.validate(&mut c);
                if let Some(first) = numbers.get(&port.number) {
                    c.at("number").error(format!(
                        "duplicate port number {}: ports[{first}] uses it",
                        port.number
                    ));
                } else {
                    numbers.insert(port.number, i);
                }
                if !port.name.is_empty() {
                    if let Some(first) = names.get(port.name.as_str()) {
                        c.at("name").error(format!(
                            "duplicate port name {:?}: ports[{first}] uses it",
                            port.name
                        ));
                    } else {
                        names.insert(&port.name, i);
                    }
                }
                if port.target_port.is_some() && resolution == Resolution::None {
                    c.at("targetPort")
                        .warning("targetPort has no effect with resolution NONE");
                }
            }
            port_names.extend(names.keys());
            if resolution != Resolution::None
                && self.hosts.len() > 1
                && let Some(i) = self.ports.iter().position(|p| {
                    let proto = p.protocol.as_deref().unwrap_or("");
                    !is_http_protocol(proto) && !is_tls_protocol(proto)
                })
            {
                ports.index(i).at("protocol").error(format!(
                        "with several hosts and resolution {}, every port must be HTTP- or TLS-based (plain TCP cannot tell the hosts apart), found {:?}",
                        resolution_name(resolution),
                        self.ports[i].protocol.as_deref().unwrap_or("")
                    ));
            }
        }

        if self.workload_selector.is_some() && !self.endpoints.is_empty() {
            cx.at("workloadSelector")
                .error("workloadSelector and endpoints are mutually exclusive, found both");
        }
        match resolution {
            Resolution::None => {
                if !self.endpoints.is_empty() {
                    cx.at("endpoints")
                        .error("endpoints must be empty with resolution NONE (the caller's destination address is used)");
                }
                if self.workload_selector.is_some() {
                    cx.at("workloadSelector")
                        .warning("workloadSelector has no effect with resolution NONE");
                }
            }
            Resolution::Static => {
                let mut endpoints = cx.at("endpoints");
                for (i, endpoint) in self.endpoints.iter().enumerate() {
                    check_workload_entry(
                        &mut endpoints.index(i),
                        endpoint,
                        Some(&port_names),
                        false,
                    );
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                if resolution == Resolution::DynamicDns {
                    cx.at("resolution")
                        .unsupported("DYNAMIC_DNS resolution is not implemented");
                }
                if resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
                    cx.at("endpoints").error(format!(
                        "resolution DNS_ROUND_ROBIN allows at most one endpoint, found {}",
                        self.endpoints.len()
                    ));
                }
                let mut endpoints = cx.at("endpoints");
                for (i, endpoint) in self.endpoints.iter().enumerate() {
                    check_workload_entry(
                        &mut endpoints.index(i),
                        endpoint,
                        Some(&port_names),
                        true,
                    );
                }
                drop(endpoints);
                if self.workload_selector.is_some() {
                    cx.at("workloadSelector").warning(format!(
                        "workloadSelector has no effect with resolution {}",
                        resolution_name(resolution)
                    ));
                }
            }
        }
        if let Some(selector) = &self.workload_selector {
            cx.field("workloadSelector", selector);
        }
        check_export_to(cx, "exportTo", &self.export_to, true);
    }
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

impl Validate for ServicePort {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_port(cx, "number", self.number);
        if self.name.is_empty() {
            cx.at("name")
                .error("required field is missing or empty: the port's name, e.g. \"http\"");
        } else if !is_dns_label(&self.name) {
            cx.at("name").error(format!(
                "{:?} is not a valid port name: letters, digits and '-', at most 63 characters",
                self.name
            ));
        }
        if let Some(p) = &self.protocol
            && !p.is_empty()
            && !is_known_protocol(p)
        {
            cx.at("protocol").error(format!(
                    "unknown protocol {p:?}: expected one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, TCP, TLS, UDP, MONGO, REDIS or MYSQL"
                ));
        }
        if let Some(t) = self.target_port {
            check_port(cx, "targetPort", t);
        }
    }
}

impl Validate for LabelSelector {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.labels.is_empty() {
            cx.at("labels").warning(
                "a workload selector without labels selects every workload in the namespace",
            );
        }
        check_labels(cx, "labels", &self.labels);
        let mut labels = cx.at("labels");
        for (k, v) in &self.labels {
            if k.contains('*') || v.contains('*') {
                labels
                    .at(k)
                    .error("wildcards are not allowed in a workload selector");
            }
        }
    }
}

// === WorkloadEntry ===

impl Validate for WorkloadEntry {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_workload_entry(cx, self, None, true);
    }
}

/// Checks a WorkloadEntry, standalone or as a ServiceEntry endpoint (then `service_ports`
/// are the ServiceEntry's port names and `allow_fqdn` says whether the address may be a DNS
/// name: not for STATIC resolution).
fn check_workload_entry(
    cx: &mut Checker<'_>,
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let address = we.address.as_str();
    if address.is_empty() {
        if we.network.is_empty() {
            cx.at("address").error(
                "required field is missing or empty: the workload's IP address or DNS name (or set network)",
            );
        } else {
            cx.at("address").warning(format!(
                "no address: the workload is reachable only through the gateway of network {:?}",
                we.network
            ));
        }
    } else if let Some(path) = address.strip_prefix("unix://") {
        if let Err(why) = check_unix_path(path) {
            cx.at("address").error(why);
        }
        if !we.ports.is_empty() {
            cx.at("ports").error(format!(
                "a unix socket endpoint ({address}) must not have ports"
            ));
        }
    } else if address.parse::<IpAddr>().is_err() {
        if !allow_fqdn {
            cx.at("address").error(format!(
                "{address:?} is not an IP address; resolution STATIC needs IP addresses (or unix://PATH)"
            ));
        } else if check_fqdn(address).is_err() {
            cx.at("address")
                .error(format!("{address:?} is not a valid IP address or DNS name"));
        }
    }
    {
        let mut ports = cx.at("ports");
        for (name, port) in &we.ports {
            let mut c = ports.at(name);
            if !is_dns_label(name) {
                c.error(format!(
                    "{name:?} is not a valid port name: letters, digits and '-', at most 63 characters"
                ));
            } else if service_ports.is_some_and(|names| !names.contains(name.as_str())) {
                c.error(format!(
                    "port {name:?} is not one of the ServiceEntry's ports"
                ));
            }
            if !(1..=65535).contains(port) {
                c.error(format!(
                    "port number must be between 1 and 65535, got {port}"
                ));
            }
        }
    }
    check_labels(cx, "labels", &we.labels);
    if !we.service_account.is_empty() && !crate::config::is_dns1123_subdomain(&we.service_account) {
        cx.at("serviceAccount").error(format!(
            "{:?} is not a valid service account name: lowercase letters, digits, '-' and '.'",
            we.service_account
        ));
    }
}

// === shared syntax checks ===

/// Checks a duration Istio requires to be at least 1 ms and whole milliseconds.
fn check_duration(cx: &mut Checker<'_>, key: &str, value: Option<Duration>) {
    let Some(d) = value else {
        return;
    };
    let std = d.as_std();
    if std < StdDuration::from_millis(1) {
        cx.min_1ms(key, d);
    } else if std.subsec_nanos() % 1_000_000 != 0 {
        cx.at(key).error(format!(
            "duration must be a whole number of milliseconds, got {d}"
        ));
    }
}

/// Istio's DNS-1123 label: letters (either case), digits and `-`, 1–63 characters, starting
/// and ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A first label that may carry a wildcard: `*`, `*foo`, `*-foo` or a plain label.
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns_label(rest)
}

fn check_dns_preconditions(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty host name is not allowed".to_owned());
    }
    if name.len() > 255 {
        return Err(format!(
            "host name is too long: at most 255 characters, found {}",
            name.len()
        ));
    }
    Ok(())
}

/// Checks the dot-separated labels of `labels` (part of `domain`): each a DNS label, the last
/// one not all digits; a trailing dot is allowed.
fn check_dns_labels(domain: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    let last = parts.len() - 1;
    let tld = if parts[last].is_empty() && last > 0 {
        parts[last - 1]
    } else {
        parts[last]
    };
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{domain:?} is not a valid host name: the top-level label {tld:?} is all digits"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == last && label.is_empty() && i > 0 {
            return Ok(());
        }
        if !is_dns_label(label) {
            return Err(format!(
                "{domain:?} is not a valid host name: label {label:?} must be 1-63 letters, digits or '-', starting and ending with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// A DNS name whose first label may be a wildcard (`*`, `*.example.com`), as Istio's
/// `ValidateWildcardDomain` accepts.
fn check_wildcard_domain(domain: &str) -> Result<(), String> {
    check_dns_preconditions(domain)?;
    match domain.split_once('.') {
        None if is_wildcard_label(domain) => Ok(()),
        Some((first, rest)) if is_wildcard_label(first) => check_dns_labels(domain, rest),
        _ => {
            let first = domain.split('.').next().unwrap_or_default();
            Err(format!(
                "{domain:?} is not a valid host name: label {first:?} must be \"*\", a wildcard prefix such as \"*.example.com\", or 1-63 letters, digits or '-'"
            ))
        }
    }
}

/// A DNS name without wildcards.
fn check_fqdn(name: &str) -> Result<(), String> {
    check_dns_preconditions(name)?;
    check_dns_labels(name, name)
}

/// An IP address or a CIDR block.
fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/16\")");
    match s.split_once('/') {
        None => s.parse::<IpAddr>().map(|_| ()).map_err(|_| bad()),
        Some((ip, bits)) => {
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match bits.parse::<u8>() {
                Ok(b) if b <= max && !bits.starts_with('+') => Ok(()),
                _ => Err(bad()),
            }
        }
    }
}

/// The path of a `unix://` address: absolute and naming a file, or an abstract socket (`@`).
fn check_unix_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the unix socket path must not be empty".to_owned());
    }
    if path.starts_with('@') || (path.starts_with('/') && !path.ends_with('/')) {
        Ok(())
    } else {
        Err(format!("{path:?} is not an absolute path to a socket file"))
    }
}

/// A Gateway server host: `[namespace/]host` where namespace is `*`, `.` or a name and host
/// is `*` or a (wildcard) DNS name.
fn check_namespace_slash_host(value: &str) -> Result<(), String> {
    let Some((ns, host)) = value.split_once('/') else {
        return check_wildcard_domain(value);
    };
    if ns.is_empty() || host.is_empty() {
        return Err(format!(
            "expected namespace/host with neither part empty, found {value:?}"
        ));
    }
    if ns != "*" && ns != "." && !is_dns_label(ns) {
        return Err(format!(
            "{ns:?} is not a valid namespace in {value:?}: expected \"*\", \".\" or a namespace name"
        ));
    }
    if host == "*" {
        return Ok(());
    }
    check_wildcard_domain(host)
}

/// Gateway references: `mesh`, `name`, or `namespace/name`.
fn check_gateway_names(cx: &mut Checker<'_>, key: &str, names: &[String]) {
    let mut c = cx.at(key);
    for (i, gateway) in names.iter().enumerate() {
        let mut g = c.index(i);
        if gateway.is_empty() {
            g.error("gateway name must not be empty: expected \"mesh\", a name or namespace/name");
            continue;
        }
        match gateway.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    g.error(format!(
                        "expected namespace/name with neither part empty, found {gateway:?}"
                    ));
                } else if !is_dns_label(ns) {
                    g.error(format!(
                        "{ns:?} is not a valid namespace name in {gateway:?}"
                    ));
                } else if !is_dns_label(name) {
                    g.error(format!(
                        "{name:?} is not a valid gateway name in {gateway:?}"
                    ));
                }
            }
            None => {
                if let Err(why) = check_fqdn(gateway) {
                    g.error(why);
                } else if let Some((name, rest)) = gateway.split_once('.') {
                    let ns = rest.split('.').next().unwrap_or_default();
                    g.warning(format!(
                        "legacy gateway reference {gateway:?}; prefer namespace/name: \"{ns}/{name}\""
                    ));
                }
            }
        }
    }
}

/// `exportTo`: `.`, `*`, (for a ServiceEntry) `~`, or namespace names, without duplicates.
fn check_export_to(cx: &mut Checker<'_>, key: &str, values: &[String], service_entry: bool) {
    let mut c = cx.at(key);
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        let v = value.as_str();
        let valid = v == "." || v == "*" || (service_entry && v == "~") || is_dns_label(v);
        if !valid {
            c.index(i).error(format!(
                "exportTo entries must be \".\" (this namespace), \"*\" (all){} or a namespace name, found {v:?}",
                if service_entry { ", \"~\" (none)" } else { "" }
            ));
        } else if !seen.insert(v) {
            c.index(i).error(format!("duplicate exportTo entry {v:?}"));
        }
    }
    if values.len() > 1 {
        if seen.contains("*") {
            c.error("\"*\" (all namespaces) cannot be combined with other exportTo entries");
        }
        if seen.contains("~") {
            c.error("\"~\" (no namespace) cannot be combined with other exportTo entries");
        }
    }
}

/// Kubernetes label syntax, as Istio checks it: a key is an optional DNS prefix and `/` and a
/// name of at most 63 letters, digits, `-`, `_` and `.`, starting and ending alphanumeric; a
/// value is empty or such a name.
fn check_labels(cx: &mut Checker<'_>, key: &str, labels: &BTreeMap<String, String>) {
    let mut c = cx.at(key);
    for (k, v) in labels {
        let key_ok = match k.rsplit_once('/') {
            Some((prefix, name)) => {
                !prefix.is_empty()
                    && prefix.len() <= 253
                    && prefix.split('.').all(is_dns_label)
                    && is_qualified_name(name)
            }
            None => is_qualified_name(k),
        };
        if !key_ok {
            c.at(k).error(format!(
                "invalid label key {k:?}: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ));
        }
        if !v.is_empty() && !is_qualified_name(v) {
            c.at(k).error(format!(
                "invalid value {v:?} for label {k:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ));
        }
    }
}

fn is_qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Istio's header name syntax for matches: letters, digits, `-` and `_`.
fn is_istio_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An HTTP token (RFC 9110 `tchar`s), what a header name is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "*",
            "*.example.com",
            "*foo.example.com",
            "istio.io.",
            "Reviews",
        ] {
            assert!(check_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "foo_bar", "a..b", "*.*.com", "-a.com", "a.123", "foo.*", "a b",
        ] {
            assert!(check_wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(check_fqdn("*.example.com").is_err());
        assert!(hosts_overlap("*.com", "foo.com"));
        assert!(hosts_overlap("*.foo.com", "*.com"));
        assert!(!hosts_overlap("*.foo.com", "foo.com"));
        assert!(hosts_overlap("Reviews", "reviews"));
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
    }

    #[test]
    fn gateway_errors_at_or_above_5xx_are_ineffective() {
        let dr = |od: &str| {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: r, namespace: default }}\nspec: {{ host: r, trafficPolicy: {{ outlierDetection: {od} }} }}\n"
            );
            let loaded = crate::config::load_str(&yaml, None);
            crate::validate::validate_all(&loaded.resources)
                .0
                .iter()
                .filter_map(|f| f.field.as_ref().map(|p| p.as_str().to_owned()))
                .collect::<Vec<_>>()
        };
        let path = "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors";
        assert_eq!(
            dr("{ consecutive5xxErrors: 3, consecutiveGatewayErrors: 3 }"),
            [path]
        );
        assert!(dr("{ consecutive5xxErrors: 5, consecutiveGatewayErrors: 2 }").is_empty());
        assert!(dr("{ consecutive5xxErrors: 0, consecutiveGatewayErrors: 2 }").is_empty());
    }

    #[test]
    fn tls_origination_from_a_kubernetes_secret_is_reported() {
        let fields = |tls: &str| {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: r, namespace: default }}\nspec: {{ host: r, trafficPolicy: {{ tls: {tls} }} }}\n"
            );
            let loaded = crate::config::load_str(&yaml, None);
            crate::validate::validate_all(&loaded.resources)
                .0
                .iter()
                .map(|f| {
                    (
                        f.field.as_ref().map(|p| p.as_str().to_owned()),
                        f.message.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let found = fields("{ mode: SIMPLE, credentialName: api-cert }");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0.as_deref(),
            Some("spec.trafficPolicy.tls.credentialName")
        );
        assert!(found[0].1.contains("files"), "{found:?}");
        // Files are what the mesh reads: nothing to report.
        assert!(fields("{ mode: SIMPLE, caCertificates: /etc/certs/ca.pem }").is_empty());
    }

    #[test]
    fn cidrs_and_labels() {
        assert!(check_ip_or_cidr("10.0.0.0/16").is_ok());
        assert!(check_ip_or_cidr("::1").is_ok());
        assert!(check_ip_or_cidr("10.0.0.0/33").is_err());
        assert!(check_ip_or_cidr("example.com").is_err());
        assert!(is_qualified_name("app.kubernetes_io-x"));
        assert!(!is_qualified_name("-x"));
        assert!(check_namespace_slash_host("./*.example.com").is_ok());
        assert!(check_namespace_slash_host("*/*").is_ok());
        assert!(check_namespace_slash_host("/x").is_err());
    }
}
