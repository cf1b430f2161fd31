//! Trace context propagation: W3C Trace Context and Zipkin's B3, plus `x-request-id`.
//!
//! Istio's proxies join the spans of one request across services by the headers the
//! application forwards: `traceparent` and `tracestate` (W3C), the B3 headers `x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags` (or the single `b3`), and
//! `x-request-id`. This module reads and writes them.
//!
//! # Precedence
//!
//! [`extract`] takes the first valid context of:
//!
//! 1. W3C `traceparent` (with `tracestate` when that is valid);
//! 2. B3 single header `b3`;
//! 3. B3 multi headers `x-b3-*`.
//!
//! W3C comes first because it is the standard and the OpenTelemetry default; the single `b3`
//! header comes before the multi headers as in openzipkin's B3 specification. An invalid
//! source is skipped, not an error: a malformed `traceparent` falls back to B3, and with
//! nothing valid the caller starts a new trace ([`TraceContext::new_root`]), keeping a bare
//! sampling decision (`b3: 0`, `x-b3-sampled: 0` without ids) from [`sampling_decision`].
//!
//! # What is written
//!
//! [`inject`] always writes both W3C (`traceparent`, and `tracestate` when the context carries
//! one) and B3 multi headers, whatever the context was read from, and removes a stale single
//! `b3` header. Envoy's tracers write one format each; writing both means an application that
//! forwards either set keeps the trace, which is what Istio's documentation asks
//! applications to forward. B3 trace ids that fit in 64 bits are written as 16 hex digits, so
//! a 64-bit B3 trace keeps its id.
//!
//! # Parsing rules
//!
//! - `traceparent`: version `00` is exactly `00-{32 hex}-{16 hex}-{2 hex}`, lower-case only;
//!   the trace id and the span id must not be all zeros; version `ff` is invalid. A higher
//!   version is read as W3C says: its first 55 characters have the version 00 layout, and
//!   anything after them must start with `-`. Only the `sampled` bit of the flags is kept.
//!   Several `traceparent` headers are invalid.
//! - `tracestate`: kept as an opaque value when it is valid: at most 512 characters and 32
//!   list members, every member `key=value` with the specification's key and value syntax,
//!   no key twice. An invalid `tracestate` is dropped, the `traceparent` kept. Several
//!   `tracestate` headers are joined with `,` (the only case that allocates).
//! - B3: trace ids are 16 or 32 hex digits, span ids 16, not all zeros (an all-zero parent is
//!   read as no parent); upper-case hex is accepted as Envoy does. `x-b3-sampled` is `1`, `0`,
//!   or the legacy `true` / `false`; `x-b3-flags: 1` means debug, which implies sampled. The
//!   single header is `{trace}-{span}`, optionally `-{0|1|d}` and then `-{parent}`, or only
//!   `0`, `1` or `d`. Any other value makes that source invalid.
//!
//! Extracting allocates nothing (a `tracestate` is kept by cloning its `HeaderValue`).
//!
//! # Examples
//!
//! ```
//! use http::HeaderMap;
//! use mesh_tower::telemetry::propagation::{extract, inject, TraceContext};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(
//!     "traceparent",
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
//! );
//! let parent = extract(&headers).unwrap_or_else(|| TraceContext::new_root(false));
//! assert_eq!(parent.sampled, Some(true));
//!
//! let span = parent.child();
//! let mut outgoing = HeaderMap::new();
//! inject(&span, &mut outgoing);
//! assert_eq!(outgoing["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(outgoing["x-b3-parentspanid"], "00f067aa0ba902b7");
//! # Ok::<_, mesh_tower::BoxError>(())
//! ```

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

#[cfg(test)]
mod tests;

/// `traceparent` (W3C).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3`: B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags`.
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Most characters a `tracestate` may have to be kept.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Most list members a `tracestate` may have to be kept.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

// === TraceContext ===

/// The position of a request in a trace: which trace, which span, its parent, and whether
/// the trace is sampled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (a 64-bit B3 id is in the last 8 bytes); never all zeros.
    pub trace_id: [u8; 16],
    /// The span id; never all zeros.
    pub span_id: [u8; 8],
    /// The parent span, when known (B3 carries it; W3C does not).
    pub parent_span_id: Option<[u8; 8]>,
    /// The sampling decision; `None` defers it to the receiver (B3 only: W3C always decides).
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1`, `b3: …-d`): sample and keep, whatever the sampler says.
    pub debug: bool,
    /// The W3C `tracestate`, opaque, when it was valid.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The first span of a new trace, with random ids.
    pub fn new_root(sampled: bool) -> Self {
        Self {
            trace_id: random_nonzero_u128().to_be_bytes(),
            span_id: random_nonzero_u64().to_be_bytes(),
            parent_span_id: None,
            sampled: Some(sampled),
            debug: false,
            tracestate: None,
        }
    }

    /// A new span of the same trace, child of this one: same trace id, sampling and
    /// `tracestate`, a random span id, and this span as its parent.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: random_nonzero_u64().to_be_bytes(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
            debug: self.debug,
            tracestate: self.tracestate.clone(),
        }
    }

    /// True if the trace is sampled (debug counts as sampled).
    pub fn is_sampled(&self) -> bool {
        self.debug || self.sampled == Some(true)
    }

    /// The trace id as lower-case hex (32 digits), formatted without allocating.
    pub fn trace_id_hex(&self) -> Hex<'_> {
        Hex(&self.trace_id)
    }

    /// The span id as lower-case hex (16 digits), formatted without allocating.
    pub fn span_id_hex(&self) -> Hex<'_> {
        Hex(&self.span_id)
    }

    /// The W3C `traceparent` value (version 00): flags `01` when sampled, else `00`.
    pub fn traceparent(&self) -> HeaderValue {
        owned_header(self.traceparent_bytes())
    }

    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut buf = [0u8; 55];
        self.write_traceparent(&mut buf);
        buf
    }

    /// Writes the `traceparent` value into `buf` (55 bytes).
    fn write_traceparent(&self, buf: &mut [u8]) {
        buf[..3].copy_from_slice(b"00-");
        encode_hex(&self.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        encode_hex(&self.span_id, &mut buf[36..52]);
        buf[52] = b'-';
        buf[53] = b'0';
        buf[54] = if self.is_sampled() { b'1' } else { b'0' };
    }
}

/// Bytes shown as lower-case hex by `Display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

// === extract ===

/// The trace context of incoming `headers`: W3C first, then B3 single, then B3 multi (see
/// the [module docs](self) for why and for the parsing rules). `None` when no source is valid.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    TraceHeaders::of(headers).extract()
}

/// The context of a single valid `traceparent`, with the `tracestate` when that is valid.
pub fn extract_w3c(headers: &HeaderMap) -> Option<TraceContext> {
    TraceHeaders::of(headers).extract_w3c()
}

/// The context of the B3 single header `b3`, when it carries ids.
pub fn extract_b3_single(headers: &HeaderMap) -> Option<TraceContext> {
    TraceHeaders::of(headers).extract_b3_single()
}

/// The context of the B3 multi headers `x-b3-*`.
pub fn extract_b3_multi(headers: &HeaderMap) -> Option<TraceContext> {
    TraceHeaders::of(headers).extract_b3_multi()
}

/// A sampling decision carried without a trace context (`b3: 0`, `b3: d`, `x-b3-sampled: 0`
/// or `x-b3-flags: 1` without valid ids), for the caller's new root span; `None` when the
/// headers carry no decision or [`extract`] finds a context (whose decision wins).
pub fn sampling_decision(headers: &HeaderMap) -> Option<bool> {
    let found = TraceHeaders::of(headers);
    if found.extract().is_some() {
        return None;
    }
    found.bare_sampling_decision()
}

/// Maps with at most this many names are scanned once for the trace headers; larger ones
/// are looked up name by name.
const SCAN_MAX_KEYS: usize = 24;

/// The trace headers of a request, found in one pass over its header names (a hashed
/// lookup each would cost more for the few headers most requests have, and the B3 multi
/// headers alone are five). Each field is the first value of its header, as
/// [`HeaderMap::get`] gives it.
#[derive(Clone, Copy)]
pub(crate) struct TraceHeaders<'a> {
    headers: &'a HeaderMap,
    traceparent: Option<&'a HeaderValue>,
    /// More than one `traceparent` (invalid).
    traceparent_repeated: bool,
    tracestate: Option<&'a HeaderValue>,
    /// More than one `tracestate` (joined with `,`).
    tracestate_repeated: bool,
    b3: Option<&'a HeaderValue>,
    trace_id: Option<&'a HeaderValue>,
    /// More than one `x-b3-traceid`.
    trace_id_repeated: bool,
    span_id: Option<&'a HeaderValue>,
    parent_span_id: Option<&'a HeaderValue>,
    sampled: Option<&'a HeaderValue>,
    /// More than one `x-b3-sampled`.
    sampled_repeated: bool,
    flags: Option<&'a HeaderValue>,
    /// The first `x-request-id`.
    request_id: Option<&'a HeaderValue>,
}

impl<'a> TraceHeaders<'a> {
    /// Finds the trace headers of `headers`.
    pub(crate) fn of(headers: &'a HeaderMap) -> Self {
        let mut found = Self {
            headers,
            traceparent: None,
            traceparent_repeated: false,
            tracestate: None,
            tracestate_repeated: false,
            b3: None,
            trace_id: None,
            trace_id_repeated: false,
            span_id: None,
            parent_span_id: None,
            sampled: None,
            sampled_repeated: false,
            flags: None,
            request_id: None,
        };
        if headers.keys_len() <= SCAN_MAX_KEYS {
            // `iter` gives every value, in order: keep the first of each name.
            for (name, value) in headers {
                let (slot, repeated) = match name.as_str() {
                    "traceparent" => (
                        &mut found.traceparent,
                        Some(&mut found.traceparent_repeated),
                    ),
                    "tracestate" => (&mut found.tracestate, Some(&mut found.tracestate_repeated)),
                    "b3" => (&mut found.b3, None),
                    "x-b3-traceid" => (&mut found.trace_id, Some(&mut found.trace_id_repeated)),
                    "x-b3-spanid" => (&mut found.span_id, None),
                    "x-b3-parentspanid" => (&mut found.parent_span_id, None),
                    "x-b3-sampled" => (&mut found.sampled, Some(&mut found.sampled_repeated)),
                    "x-b3-flags" => (&mut found.flags, None),
                    "x-request-id" => (&mut found.request_id, None),
                    _ => continue,
                };
                match (slot.is_some(), repeated) {
                    (false, _) => *slot = Some(value),
                    (true, Some(repeated)) => *repeated = true,
                    (true, None) => {}
                }
            }
        } else {
            let mut traceparents = headers.get_all(TRACEPARENT).iter();
            found.traceparent = traceparents.next();
            found.traceparent_repeated = traceparents.next().is_some();
            let mut tracestates = headers.get_all(TRACESTATE).iter();
            found.tracestate = tracestates.next();
            found.tracestate_repeated = tracestates.next().is_some();
            found.b3 = headers.get(B3);
            let mut trace_ids = headers.get_all(X_B3_TRACEID).iter();
            found.trace_id = trace_ids.next();
            found.trace_id_repeated = trace_ids.next().is_some();
            found.span_id = headers.get(X_B3_SPANID);
            found.parent_span_id = headers.get(X_B3_PARENTSPANID);
            let mut sampled = headers.get_all(X_B3_SAMPLED).iter();
            found.sampled = sampled.next();
            found.sampled_repeated = sampled.next().is_some();
            found.flags = headers.get(X_B3_FLAGS);
            found.request_id = headers.get(X_REQUEST_ID);
        }
        found
    }

    /// True if the request carries a trace context to continue (a `traceparent`, a `b3` or
    /// an `x-b3-traceid`, valid or not).
    pub(crate) fn has_context(&self) -> bool {
        self.traceparent.is_some() || self.b3.is_some() || self.trace_id.is_some()
    }

    /// The headers [`inject`] may have to remove (`tracestate`, `x-b3-parentspanid`,
    /// `x-b3-flags`, `x-b3-sampled`, `b3`) that are present: only those are looked up
    /// again (a removal costs a hashed lookup, present or not).
    pub(crate) fn stale(&self) -> Stale {
        // A lone `x-b3-traceid` or `x-b3-sampled` whose bytes are what inject would write
        // (the trace id of a child span, the caller's decision) is left as it is.
        let trace_id = match self.trace_id {
            Some(v) if !self.trace_id_repeated && v.len() <= 32 => {
                let mut bytes = [0u8; 32];
                bytes[..v.len()].copy_from_slice(v.as_bytes());
                Some((bytes, v.len() as u8))
            }
            _ => None,
        };
        let sampled_value = match self.sampled.map(HeaderValue::as_bytes) {
            Some(&[byte]) if !self.sampled_repeated => Some(byte),
            _ => None,
        };
        Stale {
            tracestate: self.tracestate.is_some(),
            parent_span_id: self.parent_span_id.is_some(),
            flags: self.flags.is_some(),
            sampled: self.sampled.is_some(),
            b3: self.b3.is_some(),
            trace_id,
            sampled_value,
        }
    }

    /// The request's `x-request-id`, when it has one.
    pub(crate) fn request_id(&self) -> Option<&'a HeaderValue> {
        self.request_id
    }

    /// [`extract`].
    pub(crate) fn extract(&self) -> Option<TraceContext> {
        if !self.has_context() {
            return None;
        }
        self.extract_w3c()
            .or_else(|| self.extract_b3_single())
            .or_else(|| self.extract_b3_multi())
    }

    fn extract_w3c(&self) -> Option<TraceContext> {
        let value = self.traceparent?;
        if self.traceparent_repeated {
            return None;
        }
        let (trace_id, span_id, flags) = parse_traceparent(value.as_bytes())?;
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: Some(flags & 1 == 1),
            debug: false,
            tracestate: self.extract_tracestate(),
        })
    }

    /// The valid `tracestate` (several headers joined with `,`).
    fn extract_tracestate(&self) -> Option<HeaderValue> {
        let first = self.tracestate?;
        let value = if self.tracestate_repeated {
            let mut joined = Vec::new();
            for (i, v) in self.headers.get_all(TRACESTATE).iter().enumerate() {
                if i > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(v.as_bytes());
                if joined.len() > MAX_TRACESTATE_LEN {
                    return None;
                }
            }
            HeaderValue::from_bytes(&joined).ok()?
        } else {
            first.clone()
        };
        is_valid_tracestate(value.as_bytes()).then_some(value)
    }

    fn extract_b3_single(&self) -> Option<TraceContext> {
        match parse_b3_single(self.b3?.as_bytes())? {
            B3Single::Context(ctx) => Some(ctx),
            B3Single::SamplingOnly { .. } => None,
        }
    }

    fn extract_b3_multi(&self) -> Option<TraceContext> {
        let trace_id = parse_b3_trace_id(self.trace_id?.as_bytes())?;
        let span_id = parse_b3_span_id(self.span_id?.as_bytes())?;
        let parent_span_id = match self.parent_span_id {
            None => None,
            Some(v) => parse_b3_parent(v.as_bytes())?,
        };
        let debug = self.debug();
        let sampled = match self.sampled {
            None => None,
            Some(v) => Some(parse_b3_sampled(v.as_bytes())?),
        };
        Some(TraceContext {
            trace_id,
            span_id,
            parent_span_id,
            sampled: if debug { Some(true) } else { sampled },
            debug,
            tracestate: None,
        })
    }

    fn debug(&self) -> bool {
        self.flags.is_some_and(|v| v == "1")
    }

    /// [`sampling_decision`] for headers [`extract`] found no context in.
    pub(crate) fn bare_sampling_decision(&self) -> Option<bool> {
        if let Some(B3Single::SamplingOnly { sampled }) =
            self.b3.and_then(|v| parse_b3_single(v.as_bytes()))
        {
            return Some(sampled);
        }
        if self.debug() {
            return Some(true);
        }
        self.sampled.and_then(|v| parse_b3_sampled(v.as_bytes()))
    }
}

/// Which of the headers [`inject`] removes when the context has no value for them are in a
/// request ([`TraceHeaders::stale`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stale {
    tracestate: bool,
    parent_span_id: bool,
    flags: bool,
    sampled: bool,
    b3: bool,
    /// The bytes of a lone `x-b3-traceid` of at most 32 bytes, and their length.
    trace_id: Option<([u8; 32], u8)>,
    /// The byte of a lone one-byte `x-b3-sampled`.
    sampled_value: Option<u8>,
}

/// Parses a `traceparent` value: trace id, span id, flags.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version = decode_hex_lower::<1>(&v[0..2])?[0];
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        // A future version may append fields, after a `-`.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = nonzero(decode_hex_lower::<16>(&v[3..35])?)?;
    let span_id = nonzero(decode_hex_lower::<8>(&v[36..52])?)?;
    let flags = decode_hex_lower::<1>(&v[53..55])?[0];
    Some((trace_id, span_id, flags))
}

/// True if `v` is a `tracestate` worth keeping: W3C's syntax, at most
/// [`MAX_TRACESTATE_LEN`] characters and [`MAX_TRACESTATE_MEMBERS`] members, no duplicate
/// keys, at least one member.
pub fn is_valid_tracestate(v: &[u8]) -> bool {
    if v.len() > MAX_TRACESTATE_LEN {
        return false;
    }
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut count = 0;
    for member in v.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        if count == MAX_TRACESTATE_MEMBERS {
            return false;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !is_valid_tracestate_key(key)
            || !is_valid_tracestate_value(value)
            || keys[..count].contains(&key)
        {
            return false;
        }
        keys[count] = key;
        count += 1;
    }
    count > 0
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

fn is_valid_tracestate_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        // simple-key = lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key.iter().all(|&b| is_key_char(b))
        }
        // tenant-id "@" system-id
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.iter().all(|&b| is_key_char(b))
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(|&b| is_key_char(b))
        }
    }
}

fn is_valid_tracestate_value(value: &[u8]) -> bool {
    // value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr;
    // nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
    let nblk = |b: u8| matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    (1..=256).contains(&value.len())
        && value.last().is_some_and(|&b| nblk(b))
        && value.iter().all(|&b| b == b' ' || nblk(b))
}

enum B3Single {
    Context(TraceContext),
    SamplingOnly { sampled: bool },
}

/// `{trace}-{span}[-{0|1|d}[-{parent}]]`, or only `0`, `1`, `d`.
fn parse_b3_single(v: &[u8]) -> Option<B3Single> {
    let mut parts: [&[u8]; 4] = [&[]; 4];
    let mut n = 0;
    for part in v.split(|&b| b == b'-') {
        if n == parts.len() {
            return None;
        }
        parts[n] = part;
        n += 1;
    }
    // (sampled, debug)
    let sampling = |s: &[u8]| match s {
        b"0" => Some((false, false)),
        b"1" => Some((true, false)),
        b"d" => Some((true, true)),
        _ => None,
    };
    if n == 1 {
        let (sampled, _) = sampling(parts[0])?;
        return Some(B3Single::SamplingOnly { sampled });
    }
    let trace_id = parse_b3_trace_id(parts[0])?;
    let span_id = parse_b3_span_id(parts[1])?;
    let (sampled, debug) = match n {
        2 => (None, false),
        _ => {
            let (sampled, debug) = sampling(parts[2])?;
            (Some(sampled), debug)
        }
    };
    let parent_span_id = match n {
        4 => parse_b3_parent(parts[3])?,
        _ => None,
    };
    Some(B3Single::Context(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled,
        debug,
        tracestate: None,
    }))
}

fn parse_b3_trace_id(v: &[u8]) -> Option<[u8; 16]> {
    let id = match v.len() {
        32 => decode_hex::<16>(v)?,
        16 => {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&decode_hex::<8>(v)?);
            id
        }
        _ => return None,
    };
    nonzero(id)
}

fn parse_b3_span_id(v: &[u8]) -> Option<[u8; 8]> {
    if v.len() != 16 {
        return None;
    }
    nonzero(decode_hex::<8>(v)?)
}

/// A parent span id: `Some(None)` for all zeros (no parent), `None` if malformed.
fn parse_b3_parent(v: &[u8]) -> Option<Option<[u8; 8]>> {
    if v.len() != 16 {
        return None;
    }
    Some(nonzero(decode_hex::<8>(v)?))
}

fn parse_b3_sampled(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

// === inject ===

/// Writes `ctx` into outgoing `headers` as W3C (`traceparent`, `tracestate`) and B3 multi
/// headers, replacing any values there and removing a single `b3` header (see the
/// [module docs](self)).
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    let stale = TraceHeaders::of(headers).stale();
    write_trace_headers(ctx, headers, stale, RequestId::Untouched);
}

/// What [`propagate`] does with `x-request-id`.
enum RequestId {
    /// Leaves it alone (plain [`inject`]).
    Untouched,
    /// The request's own, kept.
    Kept(HeaderValue),
    /// Sets this one (the inbound request's, for an outbound call).
    Set(HeaderValue),
    /// Sets a new one.
    New,
}

/// [`ensure_request_id`] (an absent or empty `x-request-id` becomes `inherited`, when
/// given and the header is absent, else a new id) and then [`inject`], with one allocation
/// for every value written. `found` is what [`TraceHeaders::of`] found in `headers`: the
/// trace headers [`inject`] may remove ([`TraceHeaders::stale`]) and its `x-request-id`
/// ([`TraceHeaders::request_id`]). Returns the request's id.
pub(crate) fn propagate(
    ctx: &TraceContext,
    headers: &mut HeaderMap,
    (stale, existing): (Stale, Option<HeaderValue>),
    inherited: Option<HeaderValue>,
) -> HeaderValue {
    let id = match existing {
        Some(v) if !v.is_empty() => RequestId::Kept(v.clone()),
        Some(_) => RequestId::New,
        None => inherited.map_or(RequestId::New, RequestId::Set),
    };
    write_trace_headers(ctx, headers, stale, id).unwrap_or_else(|| HeaderValue::from_static(""))
}

/// Longest `traceparent`, B3 parent span id and request id together.
const VALUES_LEN: usize = 55 + 16 + 36;

fn write_trace_headers(
    ctx: &TraceContext,
    headers: &mut HeaderMap,
    stale: Stale,
    id: RequestId,
) -> Option<HeaderValue> {
    // The values share one buffer (one allocation instead of one per header), and the B3
    // trace and span ids are the hex digits of the `traceparent` already there.
    let mut buf = [0u8; VALUES_LEN];
    ctx.write_traceparent(&mut buf[..55]);
    // A 64-bit trace id: its last 16 digits.
    let trace_id = if ctx.trace_id[..8] == [0; 8] {
        19..35
    } else {
        3..35
    };
    let span_id = 36..52;
    let mut end = 55;
    if let Some(parent) = ctx.parent_span_id {
        encode_hex(&parent, &mut buf[55..71]);
        end = 71;
    }
    let parent_end = end;
    if matches!(id, RequestId::New) {
        buf[end..end + 36].copy_from_slice(&request_id_bytes());
        end += 36;
    }
    let shared = bytes::Bytes::from_owner(buf);
    let value = |range: std::ops::Range<usize>| {
        HeaderValue::from_maybe_shared(shared.slice(range))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    };

    let request_id = match id {
        RequestId::Untouched => None,
        RequestId::Kept(id) => Some(id),
        RequestId::Set(id) => {
            headers.insert(X_REQUEST_ID, id.clone());
            Some(id)
        }
        RequestId::New => {
            let id = value(parent_end..end);
            headers.insert(X_REQUEST_ID, id.clone());
            Some(id)
        }
    };
    headers.insert(TRACEPARENT, value(0..55));
    match &ctx.tracestate {
        Some(state) => {
            headers.insert(TRACESTATE, state.clone());
        }
        None if stale.tracestate => {
            headers.remove(TRACESTATE);
        }
        None => {}
    }
    // Towards the next hop of a trace the trace id (and usually the decision) is the one
    // the request came with: an insert would only replace it with the same bytes.
    let same_trace_id = stale
        .trace_id
        .is_some_and(|(bytes, len)| bytes[..usize::from(len)] == buf[trace_id.clone()]);
    if !same_trace_id {
        headers.insert(X_B3_TRACEID, value(trace_id));
    }
    headers.insert(X_B3_SPANID, value(span_id));
    match ctx.parent_span_id {
        Some(_) => {
            headers.insert(X_B3_PARENTSPANID, value(55..parent_end));
        }
        None if stale.parent_span_id => {
            headers.remove(X_B3_PARENTSPANID);
        }
        None => {}
    }
    // Debug implies sampled: B3 sends only the flag.
    if ctx.debug {
        headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
        if stale.sampled {
            headers.remove(X_B3_SAMPLED);
        }
    } else {
        if stale.flags {
            headers.remove(X_B3_FLAGS);
        }
        match ctx.sampled {
            Some(sampled) => {
                let v = if sampled { "1" } else { "0" };
                if stale.sampled_value != Some(v.as_bytes()[0]) {
                    headers.insert(X_B3_SAMPLED, HeaderValue::from_static(v));
                }
            }
            None if stale.sampled => {
                headers.remove(X_B3_SAMPLED);
            }
            None => {}
        }
    }
    if stale.b3 {
        headers.remove(B3);
    }
    request_id
}

// === x-request-id ===

/// A new random `x-request-id`: a UUID v4 (`6ba7b810-9dad-41d1-80b4-00c04fd430c8`) from the
/// per-thread generator. Every inbound request without an id gets one, so ids are made
/// 32 at a time into one buffer per thread and handed out as shared slices
/// of it: one allocation per chunk instead of one per id.
pub fn new_request_id() -> HeaderValue {
    let id = ID_CHUNK.with_borrow_mut(|chunk| {
        if chunk.is_empty() {
            let mut ids = Vec::with_capacity(REQUEST_ID_LEN * IDS_PER_CHUNK);
            for _ in 0..IDS_PER_CHUNK {
                ids.extend_from_slice(&request_id_bytes());
            }
            *chunk = bytes::Bytes::from(ids);
        }
        chunk.split_to(REQUEST_ID_LEN)
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Characters in a request id made by [`new_request_id`].
const REQUEST_ID_LEN: usize = 36;
/// Request ids [`new_request_id`] makes per allocation.
const IDS_PER_CHUNK: usize = 32;

thread_local! {
    /// The ids [`new_request_id`] has made on this thread and not handed out yet.
    static ID_CHUNK: std::cell::RefCell<bytes::Bytes> = const {
        std::cell::RefCell::new(bytes::Bytes::new())
    };
}

/// A new UUID v4, formatted.
fn request_id_bytes() -> [u8; REQUEST_ID_LEN] {
    let mut b = ((u128::from(fast_u64()) << 64) | u128::from(fast_u64())).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut hex = [0u8; 32];
    encode_hex(&b, &mut hex);
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

/// The request's `x-request-id`: kept when present and not empty (Envoy preserves the id a
/// caller sends, whatever its form), otherwise a new one ([`new_request_id`]) is inserted.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    // `HeaderMap::entry` finds the slot with one hashed lookup, but makes room for an insert
    // first: on a full map (the map hyper parses a request into is sized to its headers) a
    // request that has its id would grow (reallocate and rehash) the map for nothing. So:
    // `entry` when there is room, else a lookup before any insert.
    if headers.keys_len() < headers.capacity() {
        return match headers.entry(X_REQUEST_ID) {
            http::header::Entry::Vacant(e) => e.insert(new_request_id()),
            http::header::Entry::Occupied(mut e) => {
                if e.get().is_empty() {
                    // Every value replaced, as `insert` does.
                    e.insert(new_request_id());
                }
                e.into_mut()
            }
        };
    }
    if headers.get(X_REQUEST_ID).is_none_or(HeaderValue::is_empty) {
        headers.insert(X_REQUEST_ID, new_request_id());
    }
    &headers[X_REQUEST_ID]
}

// === hex and ids ===

/// 64 random bits from the per-thread wyrand generator of `fastrand` (seeded per thread
/// from std's randomly keyed hasher): ids only need to be unique and unpredictable enough not
/// to collide, and this costs a multiplication instead of a ChaCha block. Not for secrets.
pub(crate) fn fast_u64() -> u64 {
    fastrand::u64(..)
}

fn random_nonzero_u64() -> u64 {
    loop {
        let id = fast_u64();
        if id != 0 {
            return id;
        }
    }
}

fn random_nonzero_u128() -> u128 {
    loop {
        let id = (u128::from(fast_u64()) << 64) | u128::from(fast_u64());
        if id != 0 {
            return id;
        }
    }
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    (id != [0; N]).then_some(id)
}

/// The value of each hex digit, `0xff` for any other byte.
const fn hex_values(upper_ok: bool) -> [u8; 256] {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        let digit = b"0123456789abcdef"[i];
        table[digit as usize] = i as u8;
        if upper_ok {
            table[digit.to_ascii_uppercase() as usize] = i as u8;
        }
        i += 1;
    }
    table
}

/// Lower-case hex digits (W3C).
static HEX_LOWER: [u8; 256] = hex_values(false);
/// Hex digits of either case (B3, as Envoy reads it).
static HEX_ANY_CASE: [u8; 256] = hex_values(true);

/// Decodes exactly `N` bytes of hex digits (one table lookup per digit: ids are decoded on
/// every traced request).
fn decode<const N: usize>(v: &[u8], digits: &[u8; 256]) -> Option<[u8; N]> {
    if v.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0;
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        let (high, low) = (digits[usize::from(pair[0])], digits[usize::from(pair[1])]);
        invalid |= high | low;
        *o = (high << 4) | (low & 0x0f);
    }
    // A digit is at most 0x0f; anything else was 0xff.
    (invalid <= 0x0f).then_some(out)
}

/// Lower-case hex only (W3C).
fn decode_hex_lower<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    decode(v, &HEX_LOWER)
}

/// Either case (B3, as Envoy reads it).
fn decode_hex<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    decode(v, &HEX_ANY_CASE)
}

/// The two lower-case hex digits of every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    table
};

fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// A header value owning `bytes` (known to be visible ASCII): one allocation, and clones
/// (the request id is kept in the request's trace, for instance) only count references.
fn owned_header<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}
