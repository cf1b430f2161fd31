//! Host names: short names, FQDNs and wildcards, resolved the way Istio resolves them.
//!
//! A short name in a rule (`reviews`) means `reviews.<rule's namespace>.svc.<domain>`; a name
//! with a dot is taken as written. A caller's request for `reviews` is resolved with the
//! Kubernetes DNS search path of the caller's namespace (`reviews.<ns>.svc.<domain>`,
//! `reviews.svc.<domain>`, `reviews.<domain>`), so `http://reviews:9080/` works from any
//! workload in the same namespace, as it does under Kubernetes.

/// The cluster domain suffix Istio uses by default.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// Resolves a host written in a rule of namespace `ns` to its FQDN: `reviews` →
/// `reviews.ns.svc.cluster.local`; names with a dot, wildcards and IPs are returned as written
/// (lowercased).
///
/// # Examples
/// ```
/// use mesh_core::host::resolve_rule_host;
/// assert_eq!(resolve_rule_host("reviews", "default", "cluster.local"), "reviews.default.svc.cluster.local");
/// assert_eq!(resolve_rule_host("httpbin.org", "default", "cluster.local"), "httpbin.org");
/// assert_eq!(resolve_rule_host("*", "default", "cluster.local"), "*");
/// ```
pub fn resolve_rule_host(host: &str, ns: &str, domain: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('.') || host.starts_with('*') || host.contains(':') || host.is_empty() {
        host
    } else {
        format!("{host}.{ns}.svc.{domain}")
    }
}

/// The names a caller in namespace `ns` may mean by `host`, most specific first: the Kubernetes
/// DNS search path, then the name as written.
pub fn search_path(host: &str, ns: &str, domain: &str) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.ends_with(domain) || host.parse::<std::net::IpAddr>().is_ok() {
        return vec![host];
    }
    let mut out = Vec::with_capacity(4);
    out.push(format!("{host}.{ns}.svc.{domain}"));
    if host.contains('.') {
        out.push(format!("{host}.svc.{domain}"));
        out.push(format!("{host}.{domain}"));
    }
    out.push(host);
    out
}

/// Splits `authority` (`reviews:9080`, `[::1]:80`, `reviews`) into host and port.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal.
        if let Some((h, p)) = rest.split_once(']') {
            let port = p.strip_prefix(':').and_then(|p| p.parse().ok());
            return (h, port);
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// True if the rule host `pattern` (an FQDN or a wildcard `*.suffix` or `*`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The namespace of an FQDN of the form `name.ns.svc.<domain>`, if it has that form.
pub fn namespace_of(fqdn: &str, domain: &str) -> Option<String> {
    let rest = fqdn.strip_suffix(domain)?.strip_suffix(".svc.")?;
    let (_, ns) = rest.rsplit_once('.')?;
    Some(ns.to_owned())
}

/// The short service name of an FQDN of the form `name.ns.svc.<domain>`.
pub fn short_name(fqdn: &str, domain: &str) -> String {
    match namespace_of(fqdn, domain) {
        Some(_) => fqdn.split('.').next().unwrap_or(fqdn).to_owned(),
        None => fqdn.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_follows_kubernetes_dns() {
        assert_eq!(
            search_path("reviews", "default", DEFAULT_DOMAIN),
            ["reviews.default.svc.cluster.local", "reviews"]
        );
        assert_eq!(
            search_path("reviews.prod", "default", DEFAULT_DOMAIN),
            [
                "reviews.prod.default.svc.cluster.local",
                "reviews.prod.svc.cluster.local",
                "reviews.prod.cluster.local",
                "reviews.prod"
            ]
        );
        assert_eq!(
            search_path("reviews.prod.svc.cluster.local", "x", DEFAULT_DOMAIN),
            ["reviews.prod.svc.cluster.local"]
        );
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_authority("reviews"), ("reviews", None));
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_authority("a:b"), ("a:b", None));
    }

    #[test]
    fn wildcard_hosts() {
        assert!(host_matches("*", "anything"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches(
            "Reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
    }

    #[test]
    fn fqdn_parts() {
        assert_eq!(
            namespace_of("reviews.prod.svc.cluster.local", DEFAULT_DOMAIN).as_deref(),
            Some("prod")
        );
        assert_eq!(
            short_name("reviews.prod.svc.cluster.local", DEFAULT_DOMAIN),
            "reviews"
        );
        assert_eq!(namespace_of("httpbin.org", DEFAULT_DOMAIN), None);
    }
}
