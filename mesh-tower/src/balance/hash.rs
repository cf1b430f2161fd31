//! Consistent hashing in the balancer: the request's hash key and the cached tables.

use std::sync::{Arc, Weak};

use http::{
    HeaderValue, Request,
    header::{COOKIE, SET_COOKIE},
};
use mesh_core::{
    config::networking::destination_rule::HttpCookie,
    policy::{
        balance::HashKey,
        hash::{ConsistentTable, HashTable, xxh64},
    },
    snapshot::{Endpoint, Snapshot},
};

use super::{EndpointStats, stats::hash_ip};
use crate::{body::Body, server::PeerAddr};

/// A destination's ring or Maglev table, with what it was built from.
///
/// It is reused while the request's snapshot and endpoint list are the very ones it was
/// built for (a pointer comparison: the `Weak` keeps the snapshot's allocation, so the
/// address cannot be reused by another snapshot), and after a configuration change if the
/// endpoints are the same (`address:port` and weight, in order).
pub(crate) struct CachedTable {
    snapshot: Weak<Snapshot>,
    /// The address of the endpoint list (only compared, never dereferenced).
    endpoints: usize,
    len: usize,
    kind: HashTable,
    keys: Vec<(String, u32)>,
    pub(super) table: Arc<ConsistentTable>,
}

impl CachedTable {
    /// True if the table was built for exactly this snapshot's `endpoints` with `kind`.
    pub(super) fn built_for(
        &self,
        snapshot: &Arc<Snapshot>,
        endpoints: &[Arc<Endpoint>],
        kind: HashTable,
    ) -> bool {
        self.kind == kind
            && std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(snapshot))
            && self.endpoints == endpoints.as_ptr() as usize
            && self.len == endpoints.len()
    }

    /// A table for `snapshot`'s `endpoints` (`keys`: their `address:port` and weight),
    /// reusing `previous`'s when the endpoints are the same.
    pub(super) fn new(
        snapshot: &Arc<Snapshot>,
        endpoints: &[Arc<Endpoint>],
        kind: HashTable,
        keys: Vec<(String, u32)>,
        previous: Option<&CachedTable>,
    ) -> Self {
        let table = match previous.filter(|p| p.kind == kind && p.keys == keys) {
            Some(p) => p.table.clone(),
            None => Arc::new(ConsistentTable::build(kind, &keys)),
        };
        Self {
            snapshot: Arc::downgrade(snapshot),
            endpoints: endpoints.as_ptr() as usize,
            len: endpoints.len(),
            kind,
            keys,
            table,
        }
    }
}

/// The hash of a request's key, and the cookie to set on the response when one was
/// generated. `None` when the request has no value for the key: the balancer then draws a
/// random hash, as Envoy does.
pub(super) fn request_hash(
    key: Option<HashKey<'_>>,
    req: &Request<Body>,
    stats: &EndpointStats,
) -> (Option<u64>, Option<HeaderValue>) {
    let Some(key) = key else {
        return (None, None);
    };
    match key {
        HashKey::Header(name) => (
            req.headers().get(name).map(|v| xxh64(v.as_bytes(), 0)),
            None,
        ),
        HashKey::QueryParameter(name) => (
            req.uri()
                .query()
                .and_then(|q| query_value(q, name))
                .map(|v| xxh64(v.as_bytes(), 0)),
            None,
        ),
        HashKey::SourceIp => (
            Some(
                req.extensions()
                    .get::<PeerAddr>()
                    .map_or_else(|| stats.source_hash(), |p| hash_ip(p.0.ip())),
            ),
            None,
        ),
        HashKey::Cookie(cookie) => match cookie_value(req, &cookie.name) {
            Some(v) => (Some(xxh64(v.as_bytes(), 0)), None),
            // Envoy generates a cookie only when a ttl is configured, from the downstream
            // connection's address, so a request's retries and the requests that race on
            // one connection get the same value. A request without one (the mesh's own
            // client, not a gateway) gets a random value.
            None if cookie.ttl.is_some() => {
                let seed = match req.extensions().get::<PeerAddr>() {
                    Some(peer) => xxh64(peer.0.to_string().as_bytes(), 0),
                    None => rand::random::<u64>(),
                };
                let value = format!("{seed:016x}");
                (Some(xxh64(value.as_bytes(), 0)), set_cookie(cookie, &value))
            }
            None => (None, None),
        },
    }
}

/// The value of query parameter `name` (the first occurrence, not percent-decoded).
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of cookie `name` in the request's `Cookie` headers, without surrounding
/// double quotes (Envoy's parsing).
fn cookie_value<'r>(req: &'r Request<Body>, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
        .filter(|v| !v.is_empty())
}

/// Envoy's `Set-Cookie` for a generated hash cookie:
/// `name="value"; Max-Age=ttl; Path=path; attributes…; HttpOnly` (no `Max-Age` for a zero
/// ttl: a session cookie). `None` if the name, path or attributes are not header-safe.
fn set_cookie(cookie: &HttpCookie, value: &str) -> Option<HeaderValue> {
    use std::fmt::Write;
    let mut s = format!("{}=\"{value}\"", cookie.name);
    let ttl = cookie.ttl.map_or(0, |t| t.as_std().as_secs());
    if ttl > 0 {
        let _ = write!(s, "; Max-Age={ttl}");
    }
    if let Some(path) = cookie.path.as_deref().filter(|p| !p.is_empty()) {
        let _ = write!(s, "; Path={path}");
    }
    for attr in &cookie.attributes {
        let Some(name) = attr.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        match attr.get("value").and_then(|v| v.as_str()) {
            Some(v) if !v.is_empty() => {
                let _ = write!(s, "; {name}={v}");
            }
            _ => {
                let _ = write!(s, "; {name}");
            }
        }
    }
    s.push_str("; HttpOnly");
    HeaderValue::from_str(&s).ok()
}

/// Appends the generated cookie to a response.
pub(super) fn append_set_cookie(headers: &mut http::HeaderMap, value: HeaderValue) {
    headers.append(SET_COOKIE, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    /// The `httpCookie` of a DestinationRule with attributes (parsed, as the attributes are
    /// JSON values).
    fn cookie(ttl: Option<u64>, path: Option<&str>) -> HttpCookie {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: r, namespace: default }
spec:
  host: r
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie:
          name: session
          attributes: [{ name: SameSite, value: Lax }, { name: Secure }]
"#;
        let loaded = mesh_core::config::load_str(yaml, None);
        let snapshot = Snapshot::build(&loaded.resources).expect("snapshot builds");
        let policy = snapshot
            .destination_policy("r.default.svc.cluster.local")
            .expect("rule");
        let lb = policy
            .traffic_policy
            .as_ref()
            .and_then(|t| t.load_balancer.as_ref());
        let mut c = lb
            .and_then(|lb| lb.consistent_hash.as_ref())
            .and_then(|c| c.http_cookie.clone())
            .expect("cookie");
        c.ttl = ttl.map(mesh_core::duration::Duration::from_secs);
        c.path = path.map(Into::into);
        c
    }

    #[test]
    fn set_cookie_follows_envoy() {
        let v = set_cookie(&cookie(Some(3600), Some("/")), "abc").unwrap();
        assert_eq!(
            v,
            "session=\"abc\"; Max-Age=3600; Path=/; SameSite=Lax; Secure; HttpOnly"
        );
        let v = set_cookie(&cookie(Some(0), None), "abc").unwrap();
        assert_eq!(v, "session=\"abc\"; SameSite=Lax; Secure; HttpOnly");
    }

    #[test]
    fn reads_cookies_and_query_parameters() {
        let req = Request::get("http://x/?a=1&user=bob&user=eve")
            .header(COOKIE, "other=1; session=\"xyz\"")
            .body(body::empty())
            .unwrap();
        assert_eq!(cookie_value(&req, "session"), Some("xyz"));
        assert_eq!(cookie_value(&req, "missing"), None);
        assert_eq!(query_value(req.uri().query().unwrap(), "user"), Some("bob"));
        assert_eq!(query_value("flag&b=2", "flag"), Some(""));
        assert_eq!(query_value("b=2", "flag"), None);
    }
}
