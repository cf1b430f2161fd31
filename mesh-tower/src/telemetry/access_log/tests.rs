use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn at_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// 2026-11-27T05:08:24.123Z
fn istio_time() -> SystemTime {
    let days = days_from_civil(2026, 11, 27);
    at_ms((days * 86_400 + 5 * 3600 + 8 * 60 + 24) * 1000 + 123)
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// A request as Istio's docs show one through the sidecar of productpage.
fn full_entry() -> AccessLogEntry<'static> {
    let mut flags = ResponseFlags::default();
    flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
    flags.insert(ResponseFlag::UpstreamConnectionFailure);
    let mut e = AccessLogEntry::new(istio_time());
    e.method = Some("GET".into());
    e.path = Some("/reviews/0".into());
    e.protocol = Some(http::Version::HTTP_11);
    e.response_code = 503;
    e.response_flags = Cow::Owned(flags);
    e.response_code_details =
        Some("upstream_reset_before_response_started{connection_failure}".into());
    e.connection_termination_details = None;
    e.upstream_transport_failure_reason = Some("delayed_connect_error:_111".into());
    e.bytes_received = 0;
    e.bytes_sent = 91;
    e.duration_ms = 27;
    e.upstream_service_time_ms = Some(14);
    e.x_forwarded_for = None;
    e.user_agent = Some("curl/8.5.0".into());
    e.request_id = Some("6ba7b810-9dad-41d1-80b4-00c04fd430c8".into());
    e.authority = Some("reviews:9080".into());
    e.upstream_host = Some("10.44.1.27:9080".into());
    e.upstream_cluster = Some("outbound|9080|v1|reviews.default.svc.cluster.local".into());
    e.upstream_local_address = addr("10.44.1.25:41358");
    e.downstream_local_address = addr("10.96.12.7:9080");
    e.downstream_remote_address = addr("10.44.1.25:52314");
    e.requested_server_name = None;
    e.route_name = Some("default".into());
    e
}

// === text ===

#[test]
fn writes_istio_default_text_format() {
    let mut line = String::new();
    full_entry().write_text(&mut line);
    assert_eq!(
        line,
        "[2026-11-27T05:08:24.123Z] \"GET /reviews/0 HTTP/1.1\" 503 UF,URX \
         upstream_reset_before_response_started{connection_failure} - \
         \"delayed_connect_error:_111\" 0 91 27 14 \"-\" \"curl/8.5.0\" \
         \"6ba7b810-9dad-41d1-80b4-00c04fd430c8\" \"reviews:9080\" \"10.44.1.27:9080\" \
         outbound|9080|v1|reviews.default.svc.cluster.local 10.44.1.25:41358 10.96.12.7:9080 \
         10.44.1.25:52314 - default\n"
    );
}

#[test]
fn writes_dashes_for_missing_values() {
    let mut line = String::new();
    AccessLogEntry::new(UNIX_EPOCH).write_text(&mut line);
    assert_eq!(
        line,
        "[1970-01-01T00:00:00.000Z] \"- - -\" 0 - - - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" - - - - - -\n"
    );
}

#[test]
fn appends_to_the_callers_buffer() {
    let mut out = String::from("before\n");
    let entry = full_entry();
    entry.write_text(&mut out);
    entry.write_json(&mut out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "before");
    let capacity = out.capacity();
    out.clear();
    entry.write_text(&mut out);
    assert_eq!(out.capacity(), capacity, "a warm buffer is reused");
}

#[test]
fn formats_http_versions_as_envoy() {
    for (version, text) in [
        (http::Version::HTTP_10, "HTTP/1.0"),
        (http::Version::HTTP_11, "HTTP/1.1"),
        (http::Version::HTTP_2, "HTTP/2"),
        (http::Version::HTTP_3, "HTTP/3"),
    ] {
        assert_eq!(protocol_str(Some(version)), Some(text));
        assert_eq!(parse_protocol(text), Some(version));
    }
    assert_eq!(protocol_str(None), None);
}

#[test]
fn sanitizes_controls_and_spaces_in_text() {
    let mut e = AccessLogEntry::new(UNIX_EPOCH);
    e.user_agent = Some("evil\n[1970-01-01T00:00:00.000Z] forged".into());
    e.route_name = Some("my route".into());
    e.response_code_details = Some(String::new().into());
    let mut line = String::new();
    e.write_text(&mut line);
    assert_eq!(line.matches('\n').count(), 1, "{line}");
    assert!(
        line.contains("\"evil_[1970-01-01T00:00:00.000Z] forged\""),
        "{line}"
    );
    assert!(line.ends_with(" my_route\n"), "{line}");
    let parsed = AccessLogEntry::parse_text(&line).unwrap();
    assert_eq!(parsed.route_name.as_deref(), Some("my_route"));
    assert_eq!(parsed.response_code_details, None);
}

#[test]
fn parses_a_line_back() {
    let entry = full_entry();
    let mut line = String::new();
    entry.write_text(&mut line);
    assert_eq!(AccessLogEntry::parse_text(&line).unwrap(), entry);
    // Without the newline, and with a CRLF.
    assert_eq!(AccessLogEntry::parse_text(line.trim_end()).unwrap(), entry);
    let crlf = format!("{}\r\n", line.trim_end());
    assert_eq!(AccessLogEntry::parse_text(&crlf).unwrap(), entry);
}

#[test]
fn parses_user_agents_with_quotes() {
    let mut e = full_entry();
    e.user_agent = Some(r#"a" "b" "c"#.into());
    e.x_forwarded_for = Some("".into());
    e.request_id = Some("".into());
    let mut line = String::new();
    e.write_text(&mut line);
    assert_eq!(AccessLogEntry::parse_text(&line).unwrap(), e);
}

#[test]
fn rejects_malformed_lines() {
    let mut good = String::new();
    full_entry().write_text(&mut good);
    let cases = [
        String::new(),
        "-".to_owned(),
        "[".to_owned(),
        "[2026-11-27T05:08:24.123Z]".to_owned(),
        good.replace("2026-11-27T05:08:24.123Z", "2026-13-27T05:08:24.123Z"),
        good.replace("2026-11-27T05:08:24.123Z", "2026-02-29T05:08:24.123Z"),
        good.replace("2026-11-27T05:08:24.123Z", "2026-11-27 05:08:24.123Z"),
        good.replace("2026-11-27T05:08:24.123Z", "2026-11-27T05:08:24Z"),
        good.replace(" 503 ", " 70000 "),
        good.replace(" 503 ", " -1 "),
        good.replace("UF,URX", "UF,XX"),
        good.replace("HTTP/1.1", "HTTP/1.2"),
        good.replace(" 91 ", " +91 "),
        good.replace("10.44.1.25:41358", "10.44.1.25"),
        good.replace(" default\n", "\n"),
        good.replace("\"-\"", "-"),
        good[..good.len() / 2].to_owned(),
    ];
    for line in cases {
        assert!(
            AccessLogEntry::parse_text(&line).is_err(),
            "accepted {line:?}"
        );
    }
}

#[test]
fn parses_every_known_flag() {
    for flag in KNOWN_FLAGS {
        let mut e = AccessLogEntry::new(UNIX_EPOCH);
        e.response_flags.to_mut().insert(flag);
        let mut line = String::new();
        e.write_text(&mut line);
        assert!(line.contains(&format!(" 0 {} ", flag.code())), "{line}");
        assert_eq!(AccessLogEntry::parse_text(&line).unwrap(), e);
    }
    let mut all = AccessLogEntry::new(UNIX_EPOCH);
    for flag in KNOWN_FLAGS {
        all.response_flags.to_mut().insert(flag);
    }
    let mut line = String::new();
    all.write_text(&mut line);
    assert_eq!(AccessLogEntry::parse_text(&line).unwrap(), all);
    // The same text as `ResponseFlags`' `Display`.
    let mut flags = String::new();
    write_flags(&mut flags, &all.response_flags);
    assert_eq!(flags, all.response_flags.to_string());
}

// === time ===

#[test]
fn formats_start_time_as_rfc3339_millis() {
    let cases = [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_700, "1970-01-01T00:00:01.700Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (1_709_164_799_999, "2024-02-28T23:59:59.999Z"),
        (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
        (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (-86_400_000, "1969-12-31T00:00:00.000Z"),
        (MIN_MS, "0000-01-01T00:00:00.000Z"),
        (MAX_MS, "9999-12-31T23:59:59.999Z"),
    ];
    for (ms, text) in cases {
        let mut out = String::new();
        write_time(&mut out, at_ms(ms));
        assert_eq!(out, text, "{ms}");
        assert_eq!(parse_time(text), Some(at_ms(ms)), "{text}");
    }
    let mut out = String::new();
    write_time(&mut out, istio_time());
    assert_eq!(out, "2026-11-27T05:08:24.123Z");
}

#[test]
fn truncates_to_milliseconds_and_clamps() {
    let mut out = String::new();
    write_time(&mut out, UNIX_EPOCH + Duration::from_micros(1_999));
    assert_eq!(out, "1970-01-01T00:00:00.001Z");
    out.clear();
    write_time(&mut out, UNIX_EPOCH - Duration::from_micros(1_500));
    assert_eq!(out, "1969-12-31T23:59:59.998Z");
    out.clear();
    write_time(&mut out, at_ms(MAX_MS) + Duration::from_secs(86_400 * 400));
    assert_eq!(out, "9999-12-31T23:59:59.999Z");
}

#[test]
fn civil_dates_round_trip() {
    let mut expected = (1969, 12, 31);
    for days in -1..200_000 {
        let (y, m, d) = civil_from_days(days);
        if days >= 0 {
            // The next calendar day after `expected`.
            let (ey, em, ed) = expected;
            let leap = ey % 4 == 0 && (ey % 100 != 0 || ey % 400 == 0);
            let len = match em {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = if ed < len {
                (ey, em, ed + 1)
            } else if em < 12 {
                (ey, em + 1, 1)
            } else {
                (ey + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "{days}");
        } else {
            assert_eq!((y, m, d), expected);
        }
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

// === JSON ===

const JSON_KEYS: [&str; 24] = [
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "route_name",
];

fn json_string(s: &Option<Cow<'_, str>>) -> Value {
    s.as_deref()
        .map_or(Value::Null, |s| Value::String(s.to_owned()))
}

fn json_addr(a: Option<SocketAddr>) -> Value {
    a.map_or(Value::Null, |a| Value::String(a.to_string()))
}

/// What `write_json` must produce for `e`, built independently with serde_json.
fn expected_json(e: &AccessLogEntry<'_>) -> Value {
    let mut time = String::new();
    write_time(&mut time, e.start_time);
    serde_json::json!({
        "start_time": time,
        "method": json_string(&e.method),
        "path": json_string(&e.path),
        "protocol": protocol_str(e.protocol),
        "response_code": e.response_code,
        "response_flags": e.response_flags.to_string(),
        "response_code_details": json_string(&e.response_code_details),
        "connection_termination_details": json_string(&e.connection_termination_details),
        "upstream_transport_failure_reason": json_string(&e.upstream_transport_failure_reason),
        "bytes_received": e.bytes_received,
        "bytes_sent": e.bytes_sent,
        "duration": e.duration_ms,
        "upstream_service_time": e.upstream_service_time_ms.map(|ms| ms.to_string()),
        "x_forwarded_for": json_string(&e.x_forwarded_for),
        "user_agent": json_string(&e.user_agent),
        "request_id": json_string(&e.request_id),
        "authority": json_string(&e.authority),
        "upstream_host": json_string(&e.upstream_host),
        "upstream_cluster": json_string(&e.upstream_cluster),
        "upstream_local_address": json_addr(e.upstream_local_address),
        "downstream_local_address": json_addr(e.downstream_local_address),
        "downstream_remote_address": json_addr(e.downstream_remote_address),
        "requested_server_name": json_string(&e.requested_server_name),
        "route_name": json_string(&e.route_name),
    })
}

#[test]
fn writes_istio_json_encoding() {
    let mut line = String::new();
    full_entry().write_json(&mut line);
    assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
    assert!(line.starts_with(
        "{\"start_time\":\"2026-11-27T05:08:24.123Z\",\"method\":\"GET\",\"path\":\"/reviews/0\",\
         \"protocol\":\"HTTP/1.1\",\"response_code\":503,\"response_flags\":\"UF,URX\","
    ));
    assert!(
        line.contains(",\"upstream_service_time\":\"14\","),
        "{line}"
    );
    assert!(line.contains(",\"x_forwarded_for\":null,"), "{line}");
    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value, expected_json(&full_entry()));
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_keys = JSON_KEYS.to_vec();
    expected_keys.sort_unstable();
    assert_eq!(keys, expected_keys);
}

#[test]
fn writes_nulls_and_dash_flags_in_json() {
    let mut line = String::new();
    AccessLogEntry::new(UNIX_EPOCH).write_json(&mut line);
    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["response_flags"], "-");
    assert_eq!(value["response_code"], 0);
    for key in JSON_KEYS {
        let v = &value[key];
        match key {
            "start_time" | "response_flags" | "response_code" | "bytes_received" | "bytes_sent"
            | "duration" => assert!(!v.is_null(), "{key}"),
            _ => assert!(v.is_null(), "{key}: {v}"),
        }
    }
}

#[test]
fn escapes_json_strings() {
    let mut e = AccessLogEntry::new(UNIX_EPOCH);
    let nasty =
        "quote\" backslash\\ nl\n cr\r tab\t bs\u{8} ff\u{c} nul\u{0} us\u{1f} del\u{7f} é ✓ 😀";
    e.user_agent = Some(nasty.into());
    let mut line = String::new();
    e.write_json(&mut line);
    assert_eq!(line.matches('\n').count(), 1, "{line}");
    assert!(
        line.contains(r#"quote\" backslash\\ nl\n cr\r tab\t bs\b ff\f nul\u0000 us\u001f"#),
        "{line}"
    );
    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["user_agent"], nasty);
}

// === property tests ===

/// A value for an unquoted field: no spaces or controls, not empty, not `-`.
fn token() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(
        "[!-~é✓]{1,24}"
            .prop_filter("`-` reads as missing", |s| s != "-")
            .prop_map(Cow::Owned),
    )
}

/// A method: a token inside the quoted request line, so without quotes.
fn method() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(
        "[!#-~é✓]{1,12}"
            .prop_filter("`-` reads as missing", |s| s != "-")
            .prop_map(Cow::Owned),
    )
}

/// A value for a quoted field: no quotes or controls, not `-`.
fn quoted() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(
        "[ !#-~é✓]{0,24}"
            .prop_filter("`-` reads as missing", |s| s != "-")
            .prop_map(Cow::Owned),
    )
}

/// Anything printable, quotes included (the user agent).
fn printable() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(
        "[ -~é✓]{0,32}"
            .prop_filter("`-` reads as missing", |s| s != "-")
            .prop_map(Cow::Owned),
    )
}

fn any_string() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    proptest::option::of(any::<String>().prop_map(Cow::Owned))
}

fn socket_addr() -> impl Strategy<Value = Option<SocketAddr>> {
    // Flow info is not part of an address's text.
    proptest::option::of(any::<SocketAddr>().prop_map(|mut a| {
        if let SocketAddr::V6(v6) = &mut a {
            v6.set_flowinfo(0);
        }
        a
    }))
}

fn protocol() -> impl Strategy<Value = Option<http::Version>> {
    proptest::option::of(proptest::sample::select(vec![
        http::Version::HTTP_09,
        http::Version::HTTP_10,
        http::Version::HTTP_11,
        http::Version::HTTP_2,
        http::Version::HTTP_3,
    ]))
}

fn flags() -> impl Strategy<Value = ResponseFlags> {
    proptest::collection::vec(proptest::sample::select(KNOWN_FLAGS.to_vec()), 0..4).prop_map(
        |list| {
            let mut flags = ResponseFlags::default();
            for f in list {
                flags.insert(f);
            }
            flags
        },
    )
}

prop_compose! {
    fn entry(strings: fn() -> BoxedStrategy<Option<Cow<'static, str>>>, ua: fn() -> BoxedStrategy<Option<Cow<'static, str>>>)
        (
            ms in MIN_MS..=MAX_MS,
            method in method(),
            path in strings(),
            protocol in protocol(),
            response_code in any::<u16>(),
            response_flags in flags(),
            details in token(),
            termination in token(),
            reason in strings(),
            counters in any::<(u64, u64, u64, Option<u64>)>(),
            x_forwarded_for in strings(),
            user_agent in ua(),
            request_id in strings(),
            authority in strings(),
            upstream_host in strings(),
            upstream_cluster in token(),
            addrs in (socket_addr(), socket_addr(), socket_addr()),
            requested_server_name in token(),
            route_name in token(),
        ) -> AccessLogEntry<'static> {
        let mut e = AccessLogEntry::new(at_ms(ms));
        e.method = method;
        e.path = path;
        e.protocol = protocol;
        e.response_code = response_code;
        e.response_flags = Cow::Owned(response_flags);
        e.response_code_details = details;
        e.connection_termination_details = termination;
        e.upstream_transport_failure_reason = reason;
        (e.bytes_received, e.bytes_sent, e.duration_ms, e.upstream_service_time_ms) = counters;
        e.x_forwarded_for = x_forwarded_for;
        e.user_agent = user_agent;
        e.request_id = request_id;
        e.authority = authority;
        e.upstream_host = upstream_host;
        e.upstream_cluster = upstream_cluster;
        (e.upstream_local_address, e.downstream_local_address, e.downstream_remote_address) = addrs;
        e.requested_server_name = requested_server_name;
        e.route_name = route_name;
        e
    }
}

fn text_values() -> BoxedStrategy<Option<Cow<'static, str>>> {
    quoted().boxed()
}

fn user_agents() -> BoxedStrategy<Option<Cow<'static, str>>> {
    printable().boxed()
}

fn json_values() -> BoxedStrategy<Option<Cow<'static, str>>> {
    any_string().boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn text_round_trips(e in entry(text_values, user_agents)) {
        let mut line = String::new();
        e.write_text(&mut line);
        prop_assert_eq!(line.matches('\n').count(), 1);
        prop_assert_eq!(AccessLogEntry::parse_text(&line).unwrap(), e);
    }

    #[test]
    fn json_parses_to_the_same_values(e in entry(json_values, json_values)) {
        let mut line = String::new();
        e.write_json(&mut line);
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1);
        let value: Value = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(value, expected_json(&e));
    }

    #[test]
    fn text_is_one_line_whatever_the_values(e in entry(json_values, json_values)) {
        let mut line = String::new();
        e.write_text(&mut line);
        prop_assert_eq!(line.matches('\n').count(), 1);
        prop_assert!(!line.contains('\r'));
    }

    #[test]
    fn parse_never_panics(line in any::<String>()) {
        let _ = AccessLogEntry::parse_text(&line);
    }

    #[test]
    fn parse_never_panics_on_near_misses(e in entry(text_values, user_agents), cut in any::<proptest::sample::Index>(), byte in any::<char>()) {
        let mut line = String::new();
        e.write_text(&mut line);
        let mut at = cut.index(line.len());
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let _ = AccessLogEntry::parse_text(&line[..at]);
        line.insert(at, byte);
        let _ = AccessLogEntry::parse_text(&line);
    }
}

// === sink ===

/// The counters without a sender, so dropping the sink still ends the writer.
fn shared(sink: &AccessLogSink) -> Arc<Shared> {
    sink.inner.as_ref().unwrap().shared.clone()
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn file_config(path: &std::path::Path, encoding: AccessLogEncoding) -> AccessLogConfig {
    AccessLogConfig {
        encoding,
        target: AccessLogTarget::File(path.to_owned()),
    }
}

#[test]
fn default_config_is_istios() {
    let config = AccessLogConfig::default();
    assert_eq!(config.encoding, AccessLogEncoding::Text);
    assert_eq!(config.target, AccessLogTarget::Stdout);
}

#[tokio::test]
async fn file_sink_appends_lines_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    std::fs::write(&path, "existing\n").unwrap();
    let (sink, writer) =
        AccessLogSink::new(&file_config(&path, AccessLogEncoding::Text), 64).unwrap();
    let writer = tokio::spawn(writer.unwrap());
    let mut expected = vec!["existing".to_owned()];
    for i in 0..50 {
        let mut e = full_entry();
        e.bytes_sent = i;
        assert!(sink.log(&e));
        let mut line = String::new();
        e.write_text(&mut line);
        expected.push(line.trim_end().to_owned());
    }
    let clone = sink.clone();
    drop(sink);
    drop(clone);
    writer.await.unwrap();
    let text = read(&path);
    assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    for (i, line) in text.lines().skip(1).enumerate() {
        assert_eq!(
            AccessLogEntry::parse_text(line).unwrap().bytes_sent,
            i as u64
        );
    }
}

#[tokio::test]
async fn json_file_sink_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let (sink, writer) =
        AccessLogSink::new(&file_config(&path, AccessLogEncoding::Json), 8).unwrap();
    let writer = tokio::spawn(writer.unwrap());
    assert!(sink.log(&full_entry()));
    let shared = shared(&sink);
    drop(sink);
    writer.await.unwrap();
    let text = read(&path);
    let value: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(value, expected_json(&full_entry()));
    assert_eq!(shared.stats().written, 1);
}

#[tokio::test(start_paused = true)]
async fn full_queue_drops_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let (sink, writer) =
        AccessLogSink::new(&file_config(&path, AccessLogEncoding::Text), 2).unwrap();
    let writer = writer.unwrap();
    // The writer is not running: the queue fills and further lines are dropped at once.
    let results: Vec<bool> = (0..5).map(|_| sink.log(&full_entry())).collect();
    assert_eq!(results, [true, true, false, false, false]);
    assert_eq!(
        sink.stats(),
        AccessLogStats {
            written: 0,
            dropped: 3,
            failed: 0
        }
    );
    let shared = shared(&sink);
    drop(sink);
    writer.await;
    assert_eq!(read(&path).lines().count(), 2);
    assert_eq!(shared.stats().written, 2);
    assert_eq!(shared.stats().dropped, 3);
}

#[test]
fn lines_are_dropped_when_the_writer_is_gone() {
    let (sink, writer) = AccessLogSink::from_writer(tokio::io::sink(), AccessLogEncoding::Text, 4);
    drop(writer);
    assert!(!sink.log(&full_entry()));
    assert_eq!(sink.stats().dropped, 1);
}

#[tokio::test]
async fn buffers_are_reused() {
    let (sink, writer) = AccessLogSink::from_writer(tokio::io::sink(), AccessLogEncoding::Text, 16);
    let writer = tokio::spawn(writer);
    assert!(sink.log(&full_entry()));
    // Let the writer take the line and return its buffer.
    let shared = sink.inner.as_ref().unwrap().shared.clone();
    for _ in 0..100 {
        if shared.written.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(sink.stats().written, 1);
    let pooled = shared.pool.lock().unwrap().len();
    assert_eq!(pooled, 1);
    assert!(sink.log(&full_entry()));
    drop(sink);
    writer.await.unwrap();
    assert_eq!(shared.written.load(Ordering::Relaxed), 2);
}

/// A writer whose writes fail, as a full disk does.
struct Failing;

impl AsyncWrite for Failing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::other("disk full")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn failed_writes_are_counted_and_the_writer_goes_on() {
    let (sink, writer) = AccessLogSink::from_writer(Failing, AccessLogEncoding::Json, 16);
    for _ in 0..3 {
        assert!(sink.log(&full_entry()));
    }
    let shared = shared(&sink);
    drop(sink);
    writer.await;
    assert_eq!(shared.stats().failed, 3);
    assert_eq!(shared.stats().written, 0);
}

#[tokio::test]
async fn off_logs_nothing() {
    let (sink, writer) = AccessLogSink::new(
        &AccessLogConfig {
            encoding: AccessLogEncoding::Text,
            target: AccessLogTarget::Off,
        },
        16,
    )
    .unwrap();
    assert!(writer.is_none());
    assert!(sink.is_off());
    assert!(!sink.log(&full_entry()));
    assert_eq!(sink.stats(), AccessLogStats::default());
    assert!(AccessLogSink::off().is_off());
}

#[tokio::test]
async fn spawn_writes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let sink = AccessLogSink::spawn(&file_config(&path, AccessLogEncoding::Text)).unwrap();
    assert!(sink.log(&full_entry()));
    for _ in 0..1000 {
        if sink.stats().written == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(sink.stats().written, 1);
    let text = read(&path);
    assert_eq!(AccessLogEntry::parse_text(&text).unwrap(), full_entry());
}

#[test]
fn spawn_needs_a_runtime_and_a_writable_file() {
    let err = AccessLogSink::spawn(&AccessLogConfig::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/access.log");
    assert!(AccessLogSink::new(&file_config(&missing, AccessLogEncoding::Text), 1).is_err());
}
