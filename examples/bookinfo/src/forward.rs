//! The headers every Bookinfo service copies from the request it serves onto the requests it
//! makes, as Istio asks applications to (Istio's sidecars cannot join an inbound request to
//! the outbound requests it causes; only the application knows).
//!
//! The list is the union of what Istio's Bookinfo services forward (productpage's
//! `getForwardHeaders`, reviews' `headers_to_propagate`, details' `get_forward_headers`):
//! the request id, the W3C, B3, Lightstep, Datadog, Cloud Trace, gRPC and SkyWalking trace
//! contexts, and the application's own `end-user`, `user-agent`, `cookie`, `authorization`
//! and `jwt`.
//!
//! ```
//! use http::HeaderMap;
//! let mut incoming = HeaderMap::new();
//! incoming.insert("x-request-id", "5f1c".parse().unwrap());
//! incoming.insert("host", "productpage:9080".parse().unwrap());
//! let out = bookinfo::forward::propagated(&incoming);
//! assert_eq!(out.get("x-request-id").unwrap(), "5f1c");
//! assert!(out.get("host").is_none());
//! ```

use std::{
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header: in Istio's access logs, and what consistent trace sampling keys on.
pub const REQUEST_ID: &str = "x-request-id";

/// The header carrying the signed-in user, which Istio's routing tasks match on.
pub const END_USER: &str = "end-user";

/// The headers forwarded by name, in Istio's order.
pub const FORWARDED: &[&str] = &[
    // Every application should propagate x-request-id.
    REQUEST_ID,
    // Lightstep.
    "x-ot-span-context",
    // W3C Trace Context.
    "traceparent",
    "tracestate",
    // Cloud Trace.
    "x-cloud-trace-context",
    // gRPC binary trace context.
    "grpc-trace-bin",
    // B3, multi-header and single-header.
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    // SkyWalking.
    "sw8",
    // Application-specific headers.
    END_USER,
    "user-agent",
    // Context and session.
    "cookie",
    "authorization",
    "jwt",
];

/// Headers forwarded by prefix: Datadog's (`x-datadog-trace-id`, `x-datadog-parent-id`,
/// `x-datadog-sampling-priority`, `x-datadog-origin`, …).
pub const FORWARDED_PREFIXES: &[&str] = &["x-datadog-"];

/// Whether a header of this name is forwarded.
pub fn is_forwarded(name: &HeaderName) -> bool {
    let name = name.as_str();
    FORWARDED.contains(&name) || FORWARDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The headers of `incoming` to send on the outbound requests its handling makes: every
/// [forwarded](is_forwarded) header, with all its values, and nothing else.
pub fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        if is_forwarded(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Adds an `x-request-id` to `headers` unless they have one; returns the request id.
///
/// Istio's ingress gateway generates it for requests entering the mesh; productpage, the
/// entry point of Bookinfo, does it here so requests that reach it directly get one too.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        return id.clone();
    }
    let id = HeaderValue::from_str(&request_id()).unwrap_or(HeaderValue::from_static("0"));
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// A fresh request id, shaped as a random (version 4) UUID:
/// `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, lower-case hex.
pub fn request_id() -> String {
    let hi = random_u64();
    let lo = random_u64();
    // Version 4 in the 13th hex digit, variant 10xx in the 17th.
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// 64 random bits: the standard library's randomly keyed SipHash over a counter and the
/// clock. Not for cryptography; plenty for request ids and Bookinfo's coin flips.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(now.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn forwards_trace_context_user_and_session_headers() {
        let incoming = map(&[
            ("x-request-id", "r1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "0"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-ot-span-context", "ot"),
            (
                "x-cloud-trace-context",
                "105445aa7843bc8bf206b12000100000/1;o=1",
            ),
            ("grpc-trace-bin", "AAA"),
            ("sw8", "1-abc"),
            ("x-datadog-trace-id", "1"),
            ("x-datadog-parent-id", "2"),
            ("x-datadog-sampling-priority", "1"),
            ("end-user", "jason"),
            ("user-agent", "curl/8"),
            ("cookie", "session=jason"),
            ("authorization", "Bearer x"),
            ("jwt", "j"),
        ]);
        let out = propagated(&incoming);
        assert_eq!(out, incoming);
    }

    #[test]
    fn drops_everything_else() {
        let incoming = map(&[
            ("host", "productpage:9080"),
            ("content-length", "3"),
            ("content-type", "text/plain"),
            ("accept", "*/*"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive"),
            ("x-b3", "not-b3"),
            ("x-datadog", "no dash"),
            ("end-users", "nope"),
            ("x-request-id", "kept"),
        ]);
        let out = propagated(&incoming);
        assert_eq!(out, map(&[("x-request-id", "kept")]));
    }

    #[test]
    fn keeps_every_value_of_a_repeated_header() {
        let incoming = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("accept", "x")]);
        let out = propagated(&incoming);
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn request_ids_look_like_v4_uuids_and_differ() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = request_id();
            let parts: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert_eq!(id.as_bytes()[14], b'4', "{id}");
            assert!(
                matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn ensure_request_id_keeps_an_existing_id() {
        let mut h = map(&[("x-request-id", "given")]);
        assert_eq!(ensure_request_id(&mut h), "given");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(h.get("x-request-id"), Some(&id));
        assert_eq!(id.len(), 36);
    }
}
