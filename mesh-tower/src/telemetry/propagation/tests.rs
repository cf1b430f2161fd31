use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;

const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

// openzipkin/b3-propagation README examples.
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";
const B3_PARENT: &str = "05e3ac9a4f6e3b90";
/// Every header the trace context is read from, for the property tests.
const TRACE_HEADER_NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn hex16(s: &str) -> [u8; 16] {
    decode_hex::<16>(s.as_bytes()).unwrap()
}

fn hex8(s: &str) -> [u8; 8] {
    decode_hex::<8>(s.as_bytes()).unwrap()
}

// === W3C ===

#[test]
fn reads_the_w3c_example() {
    let ctx = extract(&headers(&[("traceparent", W3C_EXAMPLE)])).unwrap();
    assert_eq!(ctx.trace_id, TRACE);
    assert_eq!(ctx.span_id, SPAN);
    assert_eq!(ctx.parent_span_id, None);
    assert_eq!(ctx.sampled, Some(true));
    assert!(!ctx.debug);
    assert_eq!(ctx.tracestate, None);
    assert_eq!(
        ctx.trace_id_hex().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(ctx.span_id_hex().to_string(), "00f067aa0ba902b7");
    assert_eq!(ctx.traceparent(), W3C_EXAMPLE);

    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let ctx = extract(&headers(&[("traceparent", unsampled)])).unwrap();
    assert_eq!(ctx.sampled, Some(false));
    assert_eq!(ctx.traceparent(), unsampled);
}

#[test]
fn keeps_only_the_sampled_flag() {
    let ctx = extract(&headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
    )]))
    .unwrap();
    assert_eq!(ctx.sampled, Some(true));
    assert_eq!(ctx.traceparent(), W3C_EXAMPLE);
    let ctx = extract(&headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe",
    )]))
    .unwrap();
    assert_eq!(ctx.sampled, Some(false));
}

#[test]
fn rejects_malformed_traceparents() {
    let cases = [
        "",
        "00",
        // Upper case.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // All-zero ids.
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // Wrong lengths.
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // Version 00 has nothing after the flags.
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        // Version ff is invalid.
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // Separators and characters.
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // A future version must separate later fields with `-`.
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what",
    ];
    for value in cases {
        assert_eq!(parse_traceparent(value.as_bytes()), None, "{value:?}");
        if let Ok(v) = HeaderValue::from_str(value) {
            let mut map = HeaderMap::new();
            map.insert(TRACEPARENT, v);
            assert_eq!(extract(&map), None, "{value:?}");
        }
    }
}

#[test]
fn reads_future_versions_per_spec() {
    for value in [
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
    ] {
        assert_eq!(
            parse_traceparent(value.as_bytes()),
            Some((TRACE, SPAN, 1)),
            "{value}"
        );
    }
    // Future versions still need valid ids.
    assert_eq!(
        parse_traceparent(b"cc-00000000000000000000000000000000-00f067aa0ba902b7-01-x"),
        None
    );
}

#[test]
fn rejects_several_traceparents() {
    let map = headers(&[("traceparent", W3C_EXAMPLE), ("traceparent", W3C_EXAMPLE)]);
    assert_eq!(extract_w3c(&map), None);
}

// === tracestate ===

#[test]
fn keeps_a_valid_tracestate_as_is() {
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let map = headers(&[("traceparent", W3C_EXAMPLE), ("tracestate", state)]);
    let ctx = extract(&map).unwrap();
    assert_eq!(ctx.tracestate.as_ref().unwrap(), state);
    let ctx = ctx.child();
    let mut out = HeaderMap::new();
    inject(&ctx, &mut out);
    assert_eq!(out[TRACESTATE], state);
}

#[test]
fn validates_tracestate() {
    let long_key = format!("a{}", "b".repeat(255));
    let too_long_key = format!("a{}", "b".repeat(256));
    let members_32: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    let members_33: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let at_limit = format!("a={}", "x".repeat(256));
    let valid = [
        "rojo=00f067aa0ba902b7",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE",
        "a=1,,b=2",
        "fw529a3039@dt=FW4;0;0;0;0;0;0;0",
        "0tenant@sys=value",
        "a/b*c_d-e=value with spaces",
        "k=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
        long_key.as_str(),
        &members_32.join(","),
    ];
    for v in valid {
        let v = if v == long_key {
            format!("{v}=1")
        } else {
            v.to_owned()
        };
        assert!(is_valid_tracestate(v.as_bytes()), "{v:?}");
    }
    let invalid = [
        "",
        " , ",
        "rojo",
        "Rojo=1",
        "1abc=1",
        "rojo=",
        "rojo=a,rojo=b",
        "ro jo=1",
        "rojo=a=b",
        "rojo=\u{7f}",
        "@sys=1",
        "tenant@=1",
        "tenant@Sys=1",
        "tenant@abcdefghijklmno=1",
        &members_33.join(","),
        &format!("{too_long_key}=1"),
        &format!("{at_limit}x"),
        &format!("{},z=1", "k=1,".repeat(128)),
    ];
    for v in invalid {
        assert!(!is_valid_tracestate(v.as_bytes()), "{v:?}");
    }
    assert!(is_valid_tracestate(at_limit.as_bytes()));
    // Exactly 512 characters is kept, 513 is not.
    let value_512 = format!("a={}", "x".repeat(254));
    let state_512 = format!("{value_512},b={}", "y".repeat(253));
    assert_eq!(state_512.len(), 512);
    assert!(is_valid_tracestate(state_512.as_bytes()));
    assert!(!is_valid_tracestate(format!("{state_512}y").as_bytes()));
}

#[test]
fn drops_an_invalid_tracestate_and_keeps_the_trace() {
    let map = headers(&[("traceparent", W3C_EXAMPLE), ("tracestate", "Rojo=1")]);
    let ctx = extract(&map).unwrap();
    assert_eq!(ctx.trace_id, TRACE);
    assert_eq!(ctx.tracestate, None);
}

#[test]
fn ignores_tracestate_without_traceparent() {
    let map = headers(&[
        ("tracestate", "rojo=1"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
    ]);
    assert_eq!(extract(&map).unwrap().tracestate, None);
}

#[test]
fn joins_several_tracestate_headers() {
    let map = headers(&[
        ("traceparent", W3C_EXAMPLE),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let ctx = extract(&map).unwrap();
    assert_eq!(
        ctx.tracestate.unwrap(),
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    let map = headers(&[
        ("traceparent", W3C_EXAMPLE),
        ("tracestate", "rojo=1"),
        ("tracestate", "rojo=2"),
    ]);
    assert_eq!(extract(&map).unwrap().tracestate, None);
}

// === B3 ===

#[test]
fn reads_b3_multi_headers() {
    let map = headers(&[
        ("X-B3-TraceId", B3_TRACE),
        ("X-B3-ParentSpanId", B3_PARENT),
        ("X-B3-SpanId", B3_SPAN),
        ("X-B3-Sampled", "1"),
    ]);
    let ctx = extract(&map).unwrap();
    assert_eq!(ctx.trace_id, hex16(B3_TRACE));
    assert_eq!(ctx.span_id, hex8(B3_SPAN));
    assert_eq!(ctx.parent_span_id, Some(hex8(B3_PARENT)));
    assert_eq!(ctx.sampled, Some(true));
    assert!(!ctx.debug);
}

#[test]
fn reads_b3_sampling_values() {
    for (value, sampled) in [
        ("1", Some(true)),
        ("0", Some(false)),
        ("true", Some(true)),
        ("false", Some(false)),
    ] {
        let map = headers(&[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", value),
        ]);
        assert_eq!(extract(&map).unwrap().sampled, sampled, "{value}");
    }
    let deferred = headers(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN)]);
    assert_eq!(extract(&deferred).unwrap().sampled, None);
    let invalid = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "yes"),
    ]);
    assert_eq!(extract(&invalid), None);
}

#[test]
fn reads_b3_debug_flag() {
    let map = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "1"),
    ]);
    let ctx = extract(&map).unwrap();
    assert!(ctx.debug);
    assert_eq!(ctx.sampled, Some(true));
    assert!(ctx.is_sampled());
    // Debug overrides a "not sampled".
    let map = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "1"),
        ("x-b3-sampled", "0"),
    ]);
    assert!(extract(&map).unwrap().is_sampled());
    // Other flag values are not debug.
    let map = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "0"),
    ]);
    assert!(!extract(&map).unwrap().debug);
}

#[test]
fn reads_64_bit_b3_trace_ids() {
    let map = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", B3_SPAN),
    ]);
    let ctx = extract(&map).unwrap();
    let mut expected = [0u8; 16];
    expected[8..].copy_from_slice(&hex8("a3ce929d0e0e4736"));
    assert_eq!(ctx.trace_id, expected);
    let mut out = HeaderMap::new();
    inject(&ctx, &mut out);
    assert_eq!(out[X_B3_TRACEID], "a3ce929d0e0e4736");
    assert_eq!(
        out[TRACEPARENT].to_str().unwrap()[3..35],
        *"0000000000000000a3ce929d0e0e4736"
    );
}

#[test]
fn accepts_upper_case_b3_like_envoy() {
    let map = headers(&[
        ("x-b3-traceid", &B3_TRACE.to_uppercase()),
        ("x-b3-spanid", &B3_SPAN.to_uppercase()),
    ]);
    assert_eq!(extract(&map).unwrap().trace_id, hex16(B3_TRACE));
}

#[test]
fn rejects_malformed_b3_multi_headers() {
    let cases: [&[(&str, &str)]; 10] = [
        &[("x-b3-traceid", B3_TRACE)],
        &[("x-b3-spanid", B3_SPAN)],
        &[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff"),
            ("x-b3-spanid", B3_SPAN),
        ],
        &[
            ("x-b3-traceid", "80f198ee56343ba8641"),
            ("x-b3-spanid", B3_SPAN),
        ],
        &[
            ("x-b3-traceid", "00000000000000000000000000000000"),
            ("x-b3-spanid", B3_SPAN),
        ],
        &[
            ("x-b3-traceid", "0000000000000000"),
            ("x-b3-spanid", B3_SPAN),
        ],
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", "0000000000000000"),
        ],
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", "e457b5a2e4d86bd"),
        ],
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", "e457b5a2e4d86bdz"),
        ],
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b9"),
        ],
    ];
    for case in cases {
        assert_eq!(extract(&headers(case)), None, "{case:?}");
    }
    // An all-zero parent is no parent.
    let map = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-parentspanid", "0000000000000000"),
    ]);
    assert_eq!(extract(&map).unwrap().parent_span_id, None);
}

#[test]
fn reads_b3_single_header() {
    let full = format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}");
    let ctx = extract(&headers(&[("b3", &full)])).unwrap();
    assert_eq!(ctx.trace_id, hex16(B3_TRACE));
    assert_eq!(ctx.span_id, hex8(B3_SPAN));
    assert_eq!(ctx.parent_span_id, Some(hex8(B3_PARENT)));
    assert_eq!(ctx.sampled, Some(true));

    let ctx = extract(&headers(&[("b3", &format!("{B3_TRACE}-{B3_SPAN}"))])).unwrap();
    assert_eq!((ctx.sampled, ctx.parent_span_id), (None, None));

    let ctx = extract(&headers(&[("b3", &format!("{B3_TRACE}-{B3_SPAN}-d"))])).unwrap();
    assert!(ctx.debug);
    assert_eq!(ctx.sampled, Some(true));

    let ctx = extract(&headers(&[("b3", &format!("{B3_TRACE}-{B3_SPAN}-0"))])).unwrap();
    assert_eq!(ctx.sampled, Some(false));

    let ctx = extract(&headers(&[(
        "b3",
        &format!("a3ce929d0e0e4736-{B3_SPAN}-1"),
    )]))
    .unwrap();
    assert_eq!(ctx.trace_id[..8], [0; 8]);
}

#[test]
fn reads_b3_sampling_only_headers() {
    for (value, decision) in [("0", Some(false)), ("1", Some(true)), ("d", Some(true))] {
        let map = headers(&[("b3", value)]);
        assert_eq!(extract(&map), None, "{value}");
        assert_eq!(sampling_decision(&map), decision, "{value}");
    }
    assert_eq!(
        sampling_decision(&headers(&[("x-b3-sampled", "0")])),
        Some(false)
    );
    assert_eq!(
        sampling_decision(&headers(&[("x-b3-flags", "1")])),
        Some(true)
    );
    assert_eq!(sampling_decision(&HeaderMap::new()), None);
    // A context's own decision wins.
    let map = headers(&[("traceparent", W3C_EXAMPLE), ("b3", "0")]);
    assert_eq!(sampling_decision(&map), None);
    assert_eq!(extract(&map).unwrap().sampled, Some(true));
}

#[test]
fn rejects_malformed_b3_single_headers() {
    for value in [
        "",
        "2",
        "true",
        "-",
        B3_TRACE,
        &format!("{B3_TRACE}-"),
        &format!("{B3_TRACE}-{B3_SPAN}-"),
        &format!("{B3_TRACE}-{B3_SPAN}-true"),
        &format!("{B3_TRACE}-{B3_SPAN}-1-"),
        &format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}-"),
        &format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}-extra"),
        &format!("{B3_TRACE}-0000000000000000-1"),
        &format!("{B3_TRACE}-{B3_SPAN}-1-05e3ac9a4f6e3b9"),
        &format!("{B3_TRACE}x-{B3_SPAN}"),
    ] {
        let map = headers(&[("b3", value)]);
        assert_eq!(extract(&map), None, "{value:?}");
        assert_eq!(sampling_decision(&map), None, "{value:?}");
    }
}

// === precedence ===

#[test]
fn prefers_w3c_then_b3_single_then_b3_multi() {
    let single = format!("a3ce929d0e0e4736a3ce929d0e0e4736-{B3_SPAN}-0");
    let all = headers(&[
        ("traceparent", W3C_EXAMPLE),
        ("b3", &single),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
    ]);
    assert_eq!(extract(&all).unwrap().trace_id, TRACE);

    let mut no_w3c = all.clone();
    no_w3c.remove(TRACEPARENT);
    assert_eq!(
        extract(&no_w3c).unwrap().trace_id,
        hex16("a3ce929d0e0e4736a3ce929d0e0e4736")
    );

    let mut multi_only = no_w3c.clone();
    multi_only.remove(B3);
    assert_eq!(extract(&multi_only).unwrap().trace_id, hex16(B3_TRACE));
}

#[test]
fn falls_back_to_b3_when_w3c_is_invalid() {
    let map = headers(&[
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
    ]);
    assert_eq!(extract(&map).unwrap().trace_id, hex16(B3_TRACE));
    let map = headers(&[
        ("b3", "garbage"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
    ]);
    assert_eq!(extract(&map).unwrap().trace_id, hex16(B3_TRACE));
}

// === inject ===

#[test]
fn injects_w3c_and_b3_multi() {
    let ctx = TraceContext {
        trace_id: TRACE,
        span_id: SPAN,
        parent_span_id: Some(hex8(B3_PARENT)),
        sampled: Some(true),
        debug: false,
        tracestate: Some(HeaderValue::from_static("rojo=1")),
    };
    let mut out = headers(&[
        ("b3", "0"),
        ("x-b3-flags", "1"),
        ("x-b3-traceid", "stale"),
        ("traceparent", "stale"),
        ("other", "kept"),
    ]);
    inject(&ctx, &mut out);
    assert_eq!(out[TRACEPARENT], W3C_EXAMPLE);
    assert_eq!(out[TRACESTATE], "rojo=1");
    assert_eq!(out[X_B3_TRACEID], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(out[X_B3_SPANID], "00f067aa0ba902b7");
    assert_eq!(out[X_B3_PARENTSPANID], B3_PARENT);
    assert_eq!(out[X_B3_SAMPLED], "1");
    assert_eq!(out.get(X_B3_FLAGS), None);
    assert_eq!(out.get(B3), None);
    assert_eq!(out["other"], "kept");
    assert_eq!(out.get_all(TRACEPARENT).iter().count(), 1);
}

#[test]
fn injects_debug_and_deferred_sampling() {
    let mut ctx = TraceContext::new_root(false);
    ctx.sampled = None;
    let mut out = headers(&[
        ("x-b3-sampled", "1"),
        ("x-b3-parentspanid", B3_PARENT),
        ("tracestate", "a=1"),
    ]);
    inject(&ctx, &mut out);
    assert_eq!(out.get(X_B3_SAMPLED), None);
    assert_eq!(out.get(X_B3_PARENTSPANID), None);
    assert_eq!(out.get(TRACESTATE), None);
    assert!(out[TRACEPARENT].to_str().unwrap().ends_with("-00"));

    ctx.debug = true;
    inject(&ctx, &mut out);
    assert_eq!(out[X_B3_FLAGS], "1");
    assert_eq!(out.get(X_B3_SAMPLED), None);
    assert!(out[TRACEPARENT].to_str().unwrap().ends_with("-01"));
    // B3 alone reads back exactly.
    out.remove(TRACEPARENT);
    let back = extract(&out).unwrap();
    assert!(back.debug);
    assert_eq!(back.trace_id, ctx.trace_id);
}

// === ids ===

#[test]
fn new_roots_and_children() {
    let root = TraceContext::new_root(true);
    assert_ne!(root.trace_id, [0; 16]);
    assert_ne!(root.span_id, [0; 8]);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.sampled, Some(true));
    assert!(!TraceContext::new_root(false).is_sampled());
    assert_ne!(TraceContext::new_root(true).trace_id, root.trace_id);

    let child = root.child();
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(child.parent_span_id, Some(root.span_id));
    assert_ne!(child.span_id, root.span_id);
    assert_ne!(child.span_id, [0; 8]);
    assert_eq!(child.sampled, root.sampled);
    let grandchild = child.child();
    assert_eq!(grandchild.parent_span_id, Some(child.span_id));
}

#[test]
fn generates_uuid_v4_request_ids() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        let b = s.as_bytes();
        assert_eq!(b.len(), 36, "{s}");
        for (i, c) in b.iter().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(*c, b'-', "{s}");
            } else {
                assert!(c.is_ascii_digit() || (b'a'..=b'f').contains(c), "{s}");
            }
        }
        assert_eq!(b[14], b'4', "version: {s}");
        assert!(b"89ab".contains(&b[19]), "variant: {s}");
        assert!(seen.insert(s.to_owned()), "duplicate {s}");
    }
}

#[test]
fn keeps_or_creates_request_ids() {
    let mut map = headers(&[("x-request-id", "caller-chosen-id")]);
    assert_eq!(ensure_request_id(&mut map), "caller-chosen-id");
    assert_eq!(map[X_REQUEST_ID], "caller-chosen-id");

    let mut map = HeaderMap::new();
    let id = ensure_request_id(&mut map).clone();
    assert_eq!(id.len(), 36);
    assert_eq!(map[X_REQUEST_ID], id);
    assert_eq!(ensure_request_id(&mut map), id, "kept on a second call");

    let mut map = headers(&[("x-request-id", "")]);
    assert_eq!(ensure_request_id(&mut map).len(), 36);

    // An empty first id is replaced with every other value, whether the map has room for
    // an insert or is full.
    for full in [false, true] {
        let mut map = HeaderMap::new();
        map.append(X_REQUEST_ID, HeaderValue::from_static(""));
        map.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        let mut i = 0;
        while full && map.keys_len() < map.capacity() {
            map.insert(
                http::HeaderName::try_from(format!("x-f{i}")).unwrap(),
                HeaderValue::from_static("1"),
            );
            i += 1;
        }
        assert_eq!(map.keys_len() == map.capacity(), full);
        let id = ensure_request_id(&mut map).clone();
        assert_eq!(id.len(), 36);
        let all: Vec<_> = map.get_all(X_REQUEST_ID).iter().collect();
        assert_eq!(all, [&id], "full: {full}");
    }

    // A request that has its id, in a map filled to capacity (as hyper parses one): the
    // map is not grown (no reallocation and rehash per request).
    let mut map = HeaderMap::with_capacity(3);
    map.insert(X_REQUEST_ID, HeaderValue::from_static("forwarded"));
    for i in 1..map.capacity() {
        map.insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            HeaderValue::from_static("1"),
        );
    }
    let full = map.capacity();
    assert_eq!(map.len(), full);
    assert_eq!(ensure_request_id(&mut map), "forwarded");
    assert_eq!(map.capacity(), full, "grown for a lookup");
}

/// `propagate`, told what the trace layer tells it about `map`.
fn run(ctx: &TraceContext, map: &mut HeaderMap, inherited: Option<HeaderValue>) -> HeaderValue {
    let found = TraceHeaders::of(map);
    let seen = (found.stale(), found.request_id().cloned());
    propagate(ctx, map, seen, inherited)
}

#[test]
fn propagates_request_ids_with_the_trace_headers() {
    let ctx = TraceContext::new_root(true).child();
    let inherited = HeaderValue::from_static("inbound-request-id");

    // The caller's own id wins over the inbound request's.
    let mut map = headers(&[("x-request-id", "caller-chosen-id")]);
    let id = run(&ctx, &mut map, Some(inherited.clone()));
    assert_eq!(id, "caller-chosen-id");
    assert_eq!(map[X_REQUEST_ID], "caller-chosen-id");
    assert_eq!(extract(&map).unwrap().span_id, ctx.span_id);

    // Absent: the inbound request's.
    let mut map = HeaderMap::new();
    let id = run(&ctx, &mut map, Some(inherited.clone()));
    assert_eq!(id, inherited);
    assert_eq!(map[X_REQUEST_ID], inherited);

    // Absent and nothing inherited, or empty: a new UUID, the same in the map and returned.
    for mut map in [HeaderMap::new(), headers(&[("x-request-id", "")])] {
        let id = run(&ctx, &mut map, None);
        assert_eq!(id.len(), 36, "{id:?}");
        assert_eq!(id.as_bytes()[14], b'4', "{id:?}");
        assert_eq!(map[X_REQUEST_ID], id);
        assert_eq!(map["x-b3-parentspanid"].len(), 16);
        assert_eq!(map["traceparent"], ctx.traceparent());
    }
    let mut map = headers(&[("x-request-id", "")]);
    let id = run(&ctx, &mut map, Some(inherited.clone()));
    assert_eq!(
        id.len(),
        36,
        "an empty id is replaced by a new one, as before"
    );

    // Stale headers go, as with `inject`.
    let mut map = headers(&[("b3", "1"), ("x-b3-flags", "1")]);
    let stale = TraceHeaders::of(&map).stale();
    assert!(stale.b3 && stale.flags && !stale.sampled, "{stale:?}");
    run(&ctx, &mut map, None);
    assert!(
        !map.contains_key(B3) && !map.contains_key(X_B3_FLAGS),
        "{map:?}"
    );
    assert_eq!(map[X_B3_SAMPLED], "1");
}

// === properties ===

fn context() -> impl Strategy<Value = TraceContext> {
    (
        any::<u128>().prop_filter("non-zero", |v| *v != 0),
        any::<u64>().prop_filter("non-zero", |v| *v != 0),
        proptest::option::of(any::<u64>().prop_filter("non-zero", |v| *v != 0)),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::of("[a-z][a-z0-9]{0,8}=[a-zA-Z0-9]{1,16}"),
    )
        .prop_map(
            |(trace, span, parent, sampled, debug, state)| TraceContext {
                trace_id: trace.to_be_bytes(),
                span_id: span.to_be_bytes(),
                parent_span_id: parent.map(u64::to_be_bytes),
                sampled: if debug { Some(true) } else { sampled },
                debug,
                tracestate: state.map(|s| HeaderValue::from_str(&s).unwrap()),
            },
        )
}

proptest! {
    #[test]
    fn w3c_round_trips(ctx in context()) {
        let mut out = HeaderMap::new();
        inject(&ctx, &mut out);
        let back = extract(&out).unwrap();
        prop_assert_eq!(back.trace_id, ctx.trace_id);
        prop_assert_eq!(back.span_id, ctx.span_id);
        prop_assert_eq!(back.sampled, Some(ctx.is_sampled()));
        prop_assert_eq!(back.tracestate, ctx.tracestate);
        prop_assert_eq!(back.parent_span_id, None);
    }

    #[test]
    fn injecting_over_old_trace_headers_leaves_only_the_new_ones(
        ctx in context(),
        old in proptest::collection::vec(
            (proptest::sample::select(TRACE_HEADER_NAMES.to_vec()), "[0-9a-f-]{1,40}"),
            0..10,
        ),
    ) {
        // Whatever trace headers a request had, `inject` leaves exactly those it writes
        // into an empty map (the stale ones removed, the others replaced).
        let mut clean = HeaderMap::new();
        inject(&ctx, &mut clean);
        let mut over = HeaderMap::new();
        over.insert("x-other", HeaderValue::from_static("kept"));
        for (name, value) in &old {
            over.append(*name, HeaderValue::from_str(value).unwrap());
        }
        inject(&ctx, &mut over);
        for name in TRACE_HEADER_NAMES {
            let a: Vec<_> = clean.get_all(name).iter().collect();
            let b: Vec<_> = over.get_all(name).iter().collect();
            prop_assert_eq!(a, b, "{}", name);
        }
        prop_assert_eq!(&over["x-other"], "kept");
    }

    #[test]
    fn injecting_a_child_over_its_callers_headers_leaves_only_the_childs(
        parent in context(),
        uppercase in any::<bool>(),
        repeated in any::<bool>(),
    ) {
        // The next hop of a trace: the trace id and the decision are the caller's, and the
        // headers that already say so are left alone; the result is still exactly what
        // injecting into an empty map gives, also when the caller wrote them otherwise (in
        // capitals) or more than once.
        let child = parent.child();
        let mut clean = HeaderMap::new();
        inject(&child, &mut clean);
        let mut over = HeaderMap::new();
        inject(&parent, &mut over);
        if uppercase {
            let upper = over[X_B3_TRACEID].to_str().unwrap().to_ascii_uppercase();
            over.insert(X_B3_TRACEID, HeaderValue::from_str(&upper).unwrap());
        }
        if repeated {
            let (id, sampled) = (over[X_B3_TRACEID].clone(), over.get(X_B3_SAMPLED).cloned());
            over.append(X_B3_TRACEID, id);
            if let Some(sampled) = sampled {
                over.append(X_B3_SAMPLED, sampled);
            }
        }
        inject(&child, &mut over);
        for name in TRACE_HEADER_NAMES {
            let a: Vec<_> = clean.get_all(name).iter().collect();
            let b: Vec<_> = over.get_all(name).iter().collect();
            prop_assert_eq!(a, b, "{}", name);
        }
    }

    #[test]
    fn b3_round_trips(ctx in context()) {
        let mut out = HeaderMap::new();
        inject(&ctx, &mut out);
        out.remove(TRACEPARENT);
        let back = extract(&out).unwrap();
        prop_assert_eq!(back, TraceContext { tracestate: None, ..ctx });
    }

    #[test]
    fn b3_single_reads_what_multi_says(ctx in context()) {
        let sampling = match (ctx.debug, ctx.sampled) {
            (true, _) => "-d",
            (false, Some(true)) => "-1",
            (false, Some(false)) => "-0",
            (false, None) => "",
        };
        let parent = match (ctx.parent_span_id, sampling.is_empty()) {
            (Some(p), false) => format!("-{}", Hex(&p)),
            _ => String::new(),
        };
        let single = format!("{}-{}{sampling}{parent}", Hex(&ctx.trace_id), Hex(&ctx.span_id));
        let back = extract(&headers(&[("b3", &single)])).unwrap();
        prop_assert_eq!(back.trace_id, ctx.trace_id);
        prop_assert_eq!(back.span_id, ctx.span_id);
        prop_assert_eq!(back.sampled, ctx.sampled);
        prop_assert_eq!(back.debug, ctx.debug);
        prop_assert_eq!(back.parent_span_id, if sampling.is_empty() { None } else { ctx.parent_span_id });
    }

    #[test]
    fn extract_never_panics(
        values in proptest::collection::vec(
            (proptest::sample::select(TRACE_HEADER_NAMES.to_vec()), proptest::collection::vec(any::<u8>(), 0..80)),
            0..8,
        )
    ) {
        let mut map = HeaderMap::new();
        for (name, bytes) in values {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                map.append(name, v);
            }
        }
        let _ = extract(&map);
        let _ = sampling_decision(&map);
    }

    #[test]
    fn scanning_and_looking_up_agree(
        values in proptest::collection::vec(
            (proptest::sample::select(TRACE_HEADER_NAMES.to_vec()), proptest::sample::select(vec![
                W3C_EXAMPLE, "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7", B3_TRACE, B3_SPAN, B3_PARENT,
                "0", "1", "d", "true", "garbage",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            ])),
            0..8,
        )
    ) {
        let mut small = HeaderMap::new();
        for (name, value) in &values {
            small.append(*name, HeaderValue::from_static(value));
        }
        // Enough other names that the map is looked up rather than scanned.
        let mut large = small.clone();
        for i in 0..=SCAN_MAX_KEYS {
            large.insert(
                http::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        prop_assert!(large.keys_len() > SCAN_MAX_KEYS);
        let (a, b) = (TraceHeaders::of(&small), TraceHeaders::of(&large));
        prop_assert_eq!(a.extract(), b.extract());
        prop_assert_eq!(a.bare_sampling_decision(), b.bare_sampling_decision());
        prop_assert_eq!(a.has_context(), b.has_context());
        prop_assert_eq!(a.stale(), b.stale());
        prop_assert_eq!(a.request_id(), b.request_id());
        prop_assert_eq!(sampling_decision(&small), sampling_decision(&large));
    }

    #[test]
    fn near_miss_traceparents_never_panic(cut in 0usize..60, byte in any::<u8>()) {
        let mut v = W3C_EXAMPLE.as_bytes().to_vec();
        v.truncate(cut.min(v.len()));
        let _ = parse_traceparent(&v);
        v.push(byte);
        let _ = parse_traceparent(&v);
        let _ = is_valid_tracestate(&v);
    }
}

#[test]
fn threads_draw_different_ids() {
    let per_thread: Vec<Vec<String>> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                (0..100)
                    .map(|_| new_request_id().to_str().unwrap().to_owned())
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let all: std::collections::HashSet<&String> = per_thread.iter().flatten().collect();
    assert_eq!(all.len(), 400);
}
