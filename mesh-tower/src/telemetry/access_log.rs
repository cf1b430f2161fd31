//! Istio's access log: one line per request, in Envoy's default TEXT format or Istio's JSON
//! encoding, written by a background task.
//!
//! An [`AccessLogEntry`] holds what Istio's default format prints. It borrows its strings
//! (header values, the route name, the cluster name) from the request it describes, so
//! building one copies nothing; [`AccessLogEntry::write_text`] and
//! [`AccessLogEntry::write_json`] append the line to a buffer the caller owns and reuses.
//!
//! [`AccessLogSink`] takes lines off the request path: [`AccessLogSink::log`] formats the entry
//! into a pooled buffer and hands it to a bounded queue; a writer task batches the queued lines
//! into one write and flushes. When the queue is full the line is dropped and counted
//! ([`AccessLogStats::dropped`]); a request never waits for the log.
//!
//! # Format
//!
//! The text format is Istio's default (`EnvoyTextLogFormat`, 1.9+):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS%
//! %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED%
//! %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS%
//! %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```
//!
//! on one line, ending with a newline. As in Envoy, a missing value prints `-`, `%START_TIME%`
//! is RFC 3339 UTC with milliseconds (`2026-11-27T05:08:24.123Z`, clamped to years 0000–9999)
//! and values are written as they are, with two safety rules Envoy does not need because its
//! values come from parsed HTTP messages:
//!
//! - ASCII control characters (a newline could forge a log line) are written as `_`;
//! - in unquoted fields, spaces are written as `_` too (Envoy does this for the response code
//!   details and the transport failure reason), and an empty value as `-`.
//!
//! The JSON encoding has the same fields under Envoy's key names (`start_time`, `method`, ...,
//! `route_name`). As Envoy's JSON formatter does for a lone command operator, counters are
//! numbers (`response_code`, `bytes_received`, `bytes_sent`, `duration`), header values and
//! names are strings (`upstream_service_time` is the header's value, `"14"`), a missing value
//! is `null`, and `response_flags` is `"-"` when there are none.
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use mesh_tower::telemetry::access_log::AccessLogEntry;
//!
//! let mut entry = AccessLogEntry::new(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700));
//! entry.method = Some("GET".into());
//! entry.path = Some("/productpage".into());
//! entry.protocol = Some(http::Version::HTTP_11);
//! entry.response_code = 200;
//!
//! let mut line = String::new();
//! entry.write_text(&mut line);
//! assert!(line.starts_with(r#"[1970-01-01T00:00:01.700Z] "GET /productpage HTTP/1.1" 200 - "#));
//!
//! let parsed = AccessLogEntry::parse_text(&line)?;
//! assert_eq!(parsed, entry);
//! # Ok::<_, mesh_tower::telemetry::access_log::ParseError>(())
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::flags::{ResponseFlag, ResponseFlags};

#[cfg(test)]
mod tests;

// === AccessLogEntry ===

/// What Istio's default access log prints about one request.
///
/// Strings are [`Cow`]s: borrowed from the request when logging, owned when parsed back
/// ([`AccessLogEntry::parse_text`]) or kept ([`AccessLogEntry::into_owned`]). `None` prints
/// `-` in text and `null` in JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessLogEntry<'a> {
    /// When the request started (`%START_TIME%`).
    pub start_time: SystemTime,
    /// The request method (`%REQ(:METHOD)%`).
    pub method: Option<Cow<'a, str>>,
    /// The original path, before any rewrite (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`).
    pub path: Option<Cow<'a, str>>,
    /// The HTTP version of the downstream request (`%PROTOCOL%`).
    pub protocol: Option<http::Version>,
    /// The response status (`%RESPONSE_CODE%`); `0` when no response was sent, as in Envoy.
    pub response_code: u16,
    /// Why the request ended as it did (`%RESPONSE_FLAGS%`; `-` when none).
    pub response_flags: Cow<'a, ResponseFlags>,
    /// Envoy's response code details (`via_upstream`, `route_not_found`, ...).
    pub response_code_details: Option<Cow<'a, str>>,
    /// Why the connection was closed, when the mesh closed it.
    pub connection_termination_details: Option<Cow<'a, str>>,
    /// Why the upstream connection failed (a TLS error, ...).
    pub upstream_transport_failure_reason: Option<Cow<'a, str>>,
    /// Request body bytes received (`%BYTES_RECEIVED%`).
    pub bytes_received: u64,
    /// Response body bytes sent (`%BYTES_SENT%`).
    pub bytes_sent: u64,
    /// Milliseconds from the start of the request to the end of the response (`%DURATION%`).
    pub duration_ms: u64,
    /// Milliseconds the upstream took, as its `x-envoy-upstream-service-time` says.
    pub upstream_service_time_ms: Option<u64>,
    /// The request's `x-forwarded-for`.
    pub x_forwarded_for: Option<Cow<'a, str>>,
    /// The request's `user-agent`.
    pub user_agent: Option<Cow<'a, str>>,
    /// The request's `x-request-id`.
    pub request_id: Option<Cow<'a, str>>,
    /// The request's `:authority` (`Host`).
    pub authority: Option<Cow<'a, str>>,
    /// The endpoint the request was sent to (`%UPSTREAM_HOST%`, `10.0.0.7:9080`).
    pub upstream_host: Option<Cow<'a, str>>,
    /// The upstream cluster (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<Cow<'a, str>>,
    /// The local address of the upstream connection.
    pub upstream_local_address: Option<SocketAddr>,
    /// The local address of the downstream connection.
    pub downstream_local_address: Option<SocketAddr>,
    /// The peer address of the downstream connection (see [`crate::server::PeerAddr`]).
    pub downstream_remote_address: Option<SocketAddr>,
    /// The SNI of the downstream TLS connection.
    pub requested_server_name: Option<Cow<'a, str>>,
    /// The name of the route that matched (`%ROUTE_NAME%`).
    pub route_name: Option<Cow<'a, str>>,
}

/// An [`AccessLogEntry`] that owns its strings.
pub type OwnedAccessLogEntry = AccessLogEntry<'static>;

impl<'a> AccessLogEntry<'a> {
    /// An entry for a request started at `start_time`, with every other field missing or zero.
    pub fn new(start_time: SystemTime) -> Self {
        Self {
            start_time,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: Cow::Owned(ResponseFlags::default()),
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_service_time_ms: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            route_name: None,
        }
    }

    /// Copies the borrowed strings, so the entry outlives the request.
    pub fn into_owned(self) -> OwnedAccessLogEntry {
        fn own(s: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            s.map(|s| Cow::Owned(s.into_owned()))
        }
        AccessLogEntry {
            start_time: self.start_time,
            method: own(self.method),
            path: own(self.path),
            protocol: self.protocol,
            response_code: self.response_code,
            response_flags: Cow::Owned(self.response_flags.into_owned()),
            response_code_details: own(self.response_code_details),
            connection_termination_details: own(self.connection_termination_details),
            upstream_transport_failure_reason: own(self.upstream_transport_failure_reason),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: self.duration_ms,
            upstream_service_time_ms: self.upstream_service_time_ms,
            x_forwarded_for: own(self.x_forwarded_for),
            user_agent: own(self.user_agent),
            request_id: own(self.request_id),
            authority: own(self.authority),
            upstream_host: own(self.upstream_host),
            upstream_cluster: own(self.upstream_cluster),
            upstream_local_address: self.upstream_local_address,
            downstream_local_address: self.downstream_local_address,
            downstream_remote_address: self.downstream_remote_address,
            requested_server_name: own(self.requested_server_name),
            route_name: own(self.route_name),
        }
    }

    /// Appends the entry to `out` in Istio's default text format, ending with a newline.
    ///
    /// Allocates nothing beyond growing `out`.
    pub fn write_text(&self, out: &mut String) {
        out.push('[');
        write_time(out, self.start_time);
        out.push_str("] \"");
        push_token(out, self.method.as_deref());
        out.push(' ');
        push_raw(out, self.path.as_deref(), is_control);
        out.push(' ');
        out.push_str(protocol_str(self.protocol).unwrap_or("-"));
        out.push_str("\" ");
        push_u64(out, u64::from(self.response_code));
        out.push(' ');
        write_flags(out, &self.response_flags);
        out.push(' ');
        push_token(out, self.response_code_details.as_deref());
        out.push(' ');
        push_token(out, self.connection_termination_details.as_deref());
        out.push(' ');
        push_quoted(out, self.upstream_transport_failure_reason.as_deref());
        out.push(' ');
        push_u64(out, self.bytes_received);
        out.push(' ');
        push_u64(out, self.bytes_sent);
        out.push(' ');
        push_u64(out, self.duration_ms);
        out.push(' ');
        match self.upstream_service_time_ms {
            Some(ms) => push_u64(out, ms),
            None => out.push('-'),
        }
        out.push(' ');
        push_quoted(out, self.x_forwarded_for.as_deref());
        out.push(' ');
        push_quoted(out, self.user_agent.as_deref());
        out.push(' ');
        push_quoted(out, self.request_id.as_deref());
        out.push(' ');
        push_quoted(out, self.authority.as_deref());
        out.push(' ');
        push_quoted(out, self.upstream_host.as_deref());
        out.push(' ');
        push_token(out, self.upstream_cluster.as_deref());
        out.push(' ');
        push_addr(out, self.upstream_local_address);
        out.push(' ');
        push_addr(out, self.downstream_local_address);
        out.push(' ');
        push_addr(out, self.downstream_remote_address);
        out.push(' ');
        push_token(out, self.requested_server_name.as_deref());
        out.push(' ');
        push_token(out, self.route_name.as_deref());
        out.push('\n');
    }

    /// Appends the entry to `out` as one JSON object with Envoy's key names, ending with a
    /// newline.
    ///
    /// Allocates nothing beyond growing `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"start_time\":\"");
        write_time(out, self.start_time);
        out.push_str("\",\"method\":");
        push_json(out, self.method.as_deref());
        out.push_str(",\"path\":");
        push_json(out, self.path.as_deref());
        out.push_str(",\"protocol\":");
        push_json(out, protocol_str(self.protocol));
        out.push_str(",\"response_code\":");
        push_u64(out, u64::from(self.response_code));
        out.push_str(",\"response_flags\":\"");
        write_flags(out, &self.response_flags);
        out.push_str("\",\"response_code_details\":");
        push_json(out, self.response_code_details.as_deref());
        out.push_str(",\"connection_termination_details\":");
        push_json(out, self.connection_termination_details.as_deref());
        out.push_str(",\"upstream_transport_failure_reason\":");
        push_json(out, self.upstream_transport_failure_reason.as_deref());
        out.push_str(",\"bytes_received\":");
        push_u64(out, self.bytes_received);
        out.push_str(",\"bytes_sent\":");
        push_u64(out, self.bytes_sent);
        out.push_str(",\"duration\":");
        push_u64(out, self.duration_ms);
        out.push_str(",\"upstream_service_time\":");
        match self.upstream_service_time_ms {
            Some(ms) => {
                out.push('"');
                push_u64(out, ms);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"x_forwarded_for\":");
        push_json(out, self.x_forwarded_for.as_deref());
        out.push_str(",\"user_agent\":");
        push_json(out, self.user_agent.as_deref());
        out.push_str(",\"request_id\":");
        push_json(out, self.request_id.as_deref());
        out.push_str(",\"authority\":");
        push_json(out, self.authority.as_deref());
        out.push_str(",\"upstream_host\":");
        push_json(out, self.upstream_host.as_deref());
        out.push_str(",\"upstream_cluster\":");
        push_json(out, self.upstream_cluster.as_deref());
        out.push_str(",\"upstream_local_address\":");
        push_json_addr(out, self.upstream_local_address);
        out.push_str(",\"downstream_local_address\":");
        push_json_addr(out, self.downstream_local_address);
        out.push_str(",\"downstream_remote_address\":");
        push_json_addr(out, self.downstream_remote_address);
        out.push_str(",\"requested_server_name\":");
        push_json(out, self.requested_server_name.as_deref());
        out.push_str(",\"route_name\":");
        push_json(out, self.route_name.as_deref());
        out.push_str("}\n");
    }

    /// Appends the entry to `out` in `encoding`.
    pub fn write(&self, encoding: AccessLogEncoding, out: &mut String) {
        match encoding {
            AccessLogEncoding::Text => self.write_text(out),
            AccessLogEncoding::Json => self.write_json(out),
        }
    }
}

impl AccessLogEntry<'static> {
    /// Parses a line written by [`AccessLogEntry::write_text`] (or by Envoy with Istio's
    /// default format); the trailing newline is optional.
    ///
    /// `-` reads as a missing value. Envoy does not escape quotes, so the format is ambiguous
    /// when a quoted value contains `" `; the parser reads the user agent (the value that
    /// carries arbitrary text in practice) exactly, whatever it contains, and expects no `" `
    /// inside the method, the path, the transport failure reason, `x-forwarded-for`, the request id, the
    /// authority or the upstream host.
    ///
    /// # Errors
    ///
    /// [`ParseError`] when the line does not have the format's shape or a field does not
    /// parse (the time, a number, a response flag this crate does not know, an address).
    pub fn parse_text(line: &str) -> Result<Self, ParseError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let rest = line
            .strip_prefix('[')
            .ok_or(ParseError::Shape("no `[` before the start time"))?;
        let (time, rest) = rest
            .split_once("] \"")
            .ok_or(ParseError::Shape("no `] \"` after the start time"))?;
        let start_time = parse_time(time).ok_or(ParseError::Field("start_time"))?;

        // The unquoted fields at the end, from the right.
        let mut right = rest.rsplitn(7, ' ');
        let mut next_right = || right.next().ok_or(ParseError::Shape("too few fields"));
        let route_name = next_right()?;
        let requested_server_name = next_right()?;
        let downstream_remote_address = next_right()?;
        let downstream_local_address = next_right()?;
        let upstream_local_address = next_right()?;
        let upstream_cluster = next_right()?;
        let rest = next_right()?;

        // The quoted header values with no `" ` in them, from the right.
        let rest = rest
            .strip_suffix('"')
            .ok_or(ParseError::Shape("no quote around the upstream host"))?;
        fn quoted(s: &str) -> Result<(&str, &str), ParseError> {
            s.rsplit_once("\" \"")
                .ok_or(ParseError::Shape("too few quoted fields"))
        }
        let (rest, upstream_host) = quoted(rest)?;
        let (rest, authority) = quoted(rest)?;
        let (rest, request_id) = quoted(rest)?;

        // The rest from the left: `METHOD PATH PROTOCOL" CODE FLAGS DETAILS TERMINATION
        // "REASON" RECEIVED SENT DURATION SERVICE_TIME "XFF" "USER-AGENT`.
        let (request, rest) = rest
            .split_once("\" ")
            .ok_or(ParseError::Shape("no quote after the protocol"))?;
        let (method, request) = request
            .split_once(' ')
            .ok_or(ParseError::Shape("no space after the method"))?;
        let (path, protocol) = request
            .rsplit_once(' ')
            .ok_or(ParseError::Shape("no space before the protocol"))?;
        let mut left = rest.splitn(5, ' ');
        let mut next_left = || left.next().ok_or(ParseError::Shape("too few fields"));
        let response_code = next_left()?;
        let response_flags = next_left()?;
        let response_code_details = next_left()?;
        let connection_termination_details = next_left()?;
        let rest = next_left()?;
        let (reason, rest) = rest
            .strip_prefix('"')
            .and_then(|r| r.split_once("\" "))
            .ok_or(ParseError::Shape(
                "no quotes around the transport failure reason",
            ))?;
        let mut left = rest.splitn(5, ' ');
        let mut next_left = || left.next().ok_or(ParseError::Shape("too few fields"));
        let bytes_received = next_left()?;
        let bytes_sent = next_left()?;
        let duration = next_left()?;
        let service_time = next_left()?;
        let rest = next_left()?;
        let (x_forwarded_for, user_agent) = rest
            .strip_prefix('"')
            .and_then(|r| r.split_once("\" \""))
            .ok_or(ParseError::Shape("no quotes around x-forwarded-for"))?;

        Ok(AccessLogEntry {
            start_time,
            method: owned(method),
            path: owned(path),
            protocol: match protocol {
                "-" => None,
                p => Some(parse_protocol(p).ok_or(ParseError::Field("protocol"))?),
            },
            response_code: response_code
                .parse()
                .map_err(|_| ParseError::Field("response_code"))?,
            response_flags: Cow::Owned(parse_flags(response_flags)?),
            response_code_details: owned(response_code_details),
            connection_termination_details: owned(connection_termination_details),
            upstream_transport_failure_reason: owned(reason),
            bytes_received: parse_u64(bytes_received, "bytes_received")?,
            bytes_sent: parse_u64(bytes_sent, "bytes_sent")?,
            duration_ms: parse_u64(duration, "duration")?,
            upstream_service_time_ms: match service_time {
                "-" => None,
                s => Some(parse_u64(s, "upstream_service_time")?),
            },
            x_forwarded_for: owned(x_forwarded_for),
            user_agent: owned(user_agent),
            request_id: owned(request_id),
            authority: owned(authority),
            upstream_host: owned(upstream_host),
            upstream_cluster: owned(upstream_cluster),
            upstream_local_address: parse_addr(upstream_local_address, "upstream_local_address")?,
            downstream_local_address: parse_addr(
                downstream_local_address,
                "downstream_local_address",
            )?,
            downstream_remote_address: parse_addr(
                downstream_remote_address,
                "downstream_remote_address",
            )?,
            requested_server_name: owned(requested_server_name),
            route_name: owned(route_name),
        })
    }
}

/// Envoy's `%PROTOCOL%` for an HTTP version (`HTTP/1.1`, `HTTP/2`); `None` for a version
/// `http` may add later.
pub fn protocol_str(version: Option<http::Version>) -> Option<&'static str> {
    match version? {
        http::Version::HTTP_09 => Some("HTTP/0.9"),
        http::Version::HTTP_10 => Some("HTTP/1.0"),
        http::Version::HTTP_11 => Some("HTTP/1.1"),
        http::Version::HTTP_2 => Some("HTTP/2"),
        http::Version::HTTP_3 => Some("HTTP/3"),
        _ => None,
    }
}

fn parse_protocol(s: &str) -> Option<http::Version> {
    Some(match s {
        "HTTP/0.9" => http::Version::HTTP_09,
        "HTTP/1.0" => http::Version::HTTP_10,
        "HTTP/1.1" => http::Version::HTTP_11,
        "HTTP/2" => http::Version::HTTP_2,
        "HTTP/3" => http::Version::HTTP_3,
        _ => return None,
    })
}

/// A line that [`AccessLogEntry::parse_text`] could not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line does not have the shape of Istio's default format.
    #[error("access log line does not have Istio's format: {0}")]
    Shape(&'static str),
    /// A field has the wrong syntax (named by its JSON key).
    #[error("invalid `{0}` in access log line")]
    Field(&'static str),
}

// === formatting helpers ===

/// Every flag this crate defines, to read `%RESPONSE_FLAGS%` back.
const KNOWN_FLAGS: [ResponseFlag; 12] = [
    ResponseFlag::NoHealthyUpstream,
    ResponseFlag::UpstreamConnectionFailure,
    ResponseFlag::UpstreamOverflow,
    ResponseFlag::NoRouteFound,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::UpstreamRequestTimeout,
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::UpstreamRemoteReset,
    ResponseFlag::DownstreamConnectionTermination,
    ResponseFlag::DelayInjected,
    ResponseFlag::FaultInjected,
    ResponseFlag::RateLimited,
];

/// Envoy's `%RESPONSE_FLAGS%`: codes joined by `,`, or `-`. (`ResponseFlags`' `Display`
/// collects into a `Vec`; this writes straight into `out`.)
fn write_flags(out: &mut String, flags: &ResponseFlags) {
    if flags.is_empty() {
        out.push('-');
        return;
    }
    for (i, flag) in flags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(flag.code());
    }
}

fn parse_flags(s: &str) -> Result<ResponseFlags, ParseError> {
    let mut flags = ResponseFlags::default();
    if s == "-" {
        return Ok(flags);
    }
    for code in s.split(',') {
        let flag = KNOWN_FLAGS
            .iter()
            .find(|f| f.code() == code)
            .ok_or(ParseError::Field("response_flags"))?;
        flags.insert(*flag);
    }
    Ok(flags)
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn is_control_or_space(b: u8) -> bool {
    b <= 0x20 || b == 0x7f
}

/// Writes `s` with every byte `bad` says is unsafe replaced by `_` (the bad bytes are ASCII,
/// so the slices between them are on character boundaries); `-` when missing.
fn push_raw(out: &mut String, s: Option<&str>, bad: fn(u8) -> bool) {
    let Some(s) = s else {
        out.push('-');
        return;
    };
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if bad(b) {
            out.push_str(&s[start..i]);
            out.push('_');
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
}

/// An unquoted field: `-` when missing or empty, spaces and controls as `_`.
fn push_token(out: &mut String, s: Option<&str>) {
    push_raw(out, s.filter(|s| !s.is_empty()), is_control_or_space);
}

/// A quoted field: `"-"` when missing, controls as `_`.
fn push_quoted(out: &mut String, s: Option<&str>) {
    out.push('"');
    push_raw(out, s, is_control);
    out.push('"');
}

fn push_addr(out: &mut String, addr: Option<SocketAddr>) {
    match addr {
        // Writing to a `String` cannot fail.
        Some(addr) => {
            let _ = write!(out, "{addr}");
        }
        None => out.push('-'),
    }
}

fn push_json_addr(out: &mut String, addr: Option<SocketAddr>) {
    match addr {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.push_str("null"),
    }
}

/// A JSON string (escaped per RFC 8259), or `null`.
fn push_json(out: &mut String, s: Option<&str>) {
    let Some(s) = s else {
        out.push_str("null");
        return;
    };
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Writes `n` in decimal without going through `fmt`.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

/// Writes `n` (< 10^width) with leading zeros.
fn push_padded(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width.saturating_sub(1));
    while div > 0 {
        out.push(char::from(b'0' + ((n / div) % 10) as u8));
        div /= 10;
    }
}

/// 0000-01-01T00:00:00.000Z in milliseconds since the Unix epoch.
const MIN_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z in milliseconds since the Unix epoch.
const MAX_MS: i64 = 253_402_300_799_999;

/// `%START_TIME%`: RFC 3339 UTC with milliseconds, clamped to years 0000–9999.
fn write_time(out: &mut String, t: SystemTime) {
    let ms: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(MAX_MS),
        Err(e) => {
            // Round down: 1.5 ms before the epoch is in millisecond -2.
            let d = e.duration();
            let whole = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
            i64::try_from(whole).map_or(MIN_MS, |w| -w)
        }
    };
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000) as u32;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    push_padded(out, year as u32, 4);
    out.push('-');
    push_padded(out, month, 2);
    out.push('-');
    push_padded(out, day, 2);
    out.push('T');
    push_padded(out, sod / 3600, 2);
    out.push(':');
    push_padded(out, sod / 60 % 60, 2);
    out.push(':');
    push_padded(out, sod % 60, 2);
    out.push('.');
    push_padded(out, milli, 3);
    out.push('Z');
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second, milli) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let secs = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second);
    let ms = secs * 1000 + i64::from(milli);
    if ms >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_millis(ms.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_millis(ms.unsigned_abs()))
    }
}

fn owned(s: &str) -> Option<Cow<'static, str>> {
    (s != "-").then(|| Cow::Owned(s.to_owned()))
}

fn parse_u64(s: &str, field: &'static str) -> Result<u64, ParseError> {
    // `u64::from_str` accepts a leading `+`; Envoy never writes one.
    if s.starts_with('+') {
        return Err(ParseError::Field(field));
    }
    s.parse().map_err(|_| ParseError::Field(field))
}

fn parse_addr(s: &str, field: &'static str) -> Result<Option<SocketAddr>, ParseError> {
    match s {
        "-" => Ok(None),
        s => s.parse().map(Some).map_err(|_| ParseError::Field(field)),
    }
}

// === AccessLogConfig ===

/// How lines are encoded: Istio's `accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessLogEncoding {
    /// Istio's default text format (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where lines go: Istio's `accessLogFile` (`/dev/stdout` by default, empty for off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessLogTarget {
    /// The process's standard output (the default).
    #[default]
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
    /// No access log.
    Off,
}

/// The access log's configuration; the default is Istio's: text to standard output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessLogConfig {
    /// How lines are encoded.
    pub encoding: AccessLogEncoding,
    /// Where lines go.
    pub target: AccessLogTarget,
}

// === AccessLogSink ===

/// Lines the queue holds by default before new lines are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Lines the writer takes from the queue for one write.
const MAX_BATCH: usize = 256;

/// Buffers larger than this are not kept for reuse.
const MAX_POOLED_LINE: usize = 16 * 1024;

/// Hands access log lines to a background writer without ever making a request wait.
///
/// [`AccessLogSink::log`] formats the entry into a buffer taken from a pool and queues it on
/// a bounded channel; the writer ([`AccessLogWriter`]) takes the lines in batches, writes each
/// batch with one call, flushes, and returns the buffers to the pool, so logging allocates
/// nothing once the pool is warm. When the queue is full the line is dropped and counted.
///
/// # Clone
///
/// Clones share the queue and the counters. The writer ends once every clone is dropped and
/// the queue is written out.
#[derive(Clone, Debug)]
pub struct AccessLogSink {
    inner: Option<SinkInner>,
}

#[derive(Clone, Debug)]
struct SinkInner {
    tx: mpsc::Sender<String>,
    encoding: AccessLogEncoding,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    pool: Mutex<Vec<String>>,
    pool_limit: usize,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Counters of an [`AccessLogSink`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessLogStats {
    /// Lines written (and flushed) by the writer.
    pub written: u64,
    /// Lines dropped because the queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Lines lost because writing them failed.
    pub failed: u64,
}

/// The writer of an [`AccessLogSink`]: a future that writes queued lines until every sink
/// clone is dropped, then resolves. [`AccessLogSink::spawn`] spawns it on the current tokio
/// runtime; [`AccessLogSink::new`] gives it to the caller to spawn.
#[must_use = "the writer does nothing unless spawned or awaited"]
pub struct AccessLogWriter {
    fut: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl std::fmt::Debug for AccessLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogWriter").finish_non_exhaustive()
    }
}

impl Future for AccessLogWriter {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.fut.as_mut().poll(cx)
    }
}

impl AccessLogSink {
    /// A sink that logs nothing.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// A sink for `config`, with its writer spawned on the current tokio runtime and a queue of
    /// [`DEFAULT_QUEUE_CAPACITY`] lines.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened for appending, or when called outside a tokio runtime.
    pub fn spawn(config: &AccessLogConfig) -> io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (sink, writer) = Self::new(config, DEFAULT_QUEUE_CAPACITY)?;
        if let Some(writer) = writer {
            handle.spawn(writer);
        }
        Ok(sink)
    }

    /// A sink for `config` with a queue of `capacity` lines (at least one), and its writer for
    /// the caller to spawn; `None` when the target is [`AccessLogTarget::Off`].
    ///
    /// # Errors
    ///
    /// When the file cannot be opened for appending.
    pub fn new(
        config: &AccessLogConfig,
        capacity: usize,
    ) -> io::Result<(Self, Option<AccessLogWriter>)> {
        Ok(match &config.target {
            AccessLogTarget::Off => (Self::off(), None),
            AccessLogTarget::Stdout => {
                let (sink, writer) =
                    Self::from_writer(tokio::io::stdout(), config.encoding, capacity);
                (sink, Some(writer))
            }
            AccessLogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                let (sink, writer) =
                    Self::from_writer(tokio::fs::File::from_std(file), config.encoding, capacity);
                (sink, Some(writer))
            }
        })
    }

    /// A sink writing to any async writer (a socket, a pipe, a test buffer), with a queue of
    /// `capacity` lines (at least one).
    pub fn from_writer<W>(
        writer: W,
        encoding: AccessLogEncoding,
        capacity: usize,
    ) -> (Self, AccessLogWriter)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            pool_limit: capacity.min(MAX_BATCH * 4),
            ..Shared::default()
        });
        let writer = AccessLogWriter {
            fut: Box::pin(write_lines(rx, writer, shared.clone())),
        };
        let sink = Self {
            inner: Some(SinkInner {
                tx,
                encoding,
                shared,
            }),
        };
        (sink, writer)
    }

    /// True if this sink logs nothing.
    pub fn is_off(&self) -> bool {
        self.inner.is_none()
    }

    /// Queues `entry` for writing; false if it was dropped (queue full, writer gone, or off).
    ///
    /// Never waits: formatting goes into a pooled buffer and the queue is tried once.
    pub fn log(&self, entry: &AccessLogEntry<'_>) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        // A full queue drops the line before paying for formatting it.
        if inner.tx.capacity() == 0 {
            inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut line = inner.shared.take_buffer();
        entry.write(inner.encoding, &mut line);
        match inner.tx.try_send(line) {
            Ok(()) => true,
            Err(
                mpsc::error::TrySendError::Full(line) | mpsc::error::TrySendError::Closed(line),
            ) => {
                inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
                inner.shared.recycle(line);
                false
            }
        }
    }

    /// The sink's counters (zero when off).
    pub fn stats(&self) -> AccessLogStats {
        self.inner
            .as_ref()
            .map_or_else(AccessLogStats::default, |inner| inner.shared.stats())
    }
}

impl Shared {
    fn stats(&self) -> AccessLogStats {
        AccessLogStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn take_buffer(&self) -> String {
        self.pool
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_else(|| String::with_capacity(512))
    }

    fn recycle(&self, mut line: String) {
        if line.capacity() > MAX_POOLED_LINE {
            return;
        }
        line.clear();
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < self.pool_limit
        {
            pool.push(line);
        }
    }
}

/// The writer loop: batch, write once, flush, recycle the buffers. A failed write loses its
/// batch (counted) and the loop goes on, so the queue keeps draining.
async fn write_lines<W>(mut rx: mpsc::Receiver<String>, mut writer: W, shared: Arc<Shared>)
where
    W: AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut bytes: Vec<u8> = Vec::with_capacity(64 * 1024);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let lines = batch.len() as u64;
        for line in batch.drain(..) {
            bytes.extend_from_slice(line.as_bytes());
            shared.recycle(line);
        }
        let result = async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        }
        .await;
        match result {
            Ok(()) => shared.written.fetch_add(lines, Ordering::Relaxed),
            Err(_) => shared.failed.fetch_add(lines, Ordering::Relaxed),
        };
        bytes.clear();
        if bytes.capacity() > 1024 * 1024 {
            bytes.shrink_to(64 * 1024);
        }
    }
    let _ = writer.shutdown().await;
}
