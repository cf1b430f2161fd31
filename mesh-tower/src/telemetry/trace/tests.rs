use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::{
    body::{self, Body},
    telemetry::propagation::{self, TRACEPARENT, X_B3_SAMPLED, X_REQUEST_ID},
};

/// What an application received: its headers and the trace it ran in.
type Seen = Arc<std::sync::Mutex<Vec<(http::HeaderMap, Option<RequestTrace>)>>>;

fn tracing(sampling: f64, exporter: &InMemorySpanExporter) -> Tracing {
    Tracing::builder()
        .canonical_service("reviews")
        .namespace("default")
        .service_host("reviews.default.svc.cluster.local")
        .sampling(sampling)
        .simple_exporter(exporter.clone())
        .build()
        .unwrap()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// An application answering `status` with `body`, recording the headers it received and
/// the trace it ran in.
fn app(
    status: StatusCode,
    body: &'static str,
    seen: Seen,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let headers = req.headers().clone();
            let _ = req.into_body().collect().await;
            seen.lock().unwrap().push((headers, current()));
            let mut res = Response::new(body::full(body));
            *res.status_mut() = status;
            Ok(res)
        }
    })
}

#[test]
fn the_protocol_follows_the_endpoint() {
    assert_eq!(
        OtlpProtocol::of("http://collector:4317"),
        OtlpProtocol::Grpc
    );
    assert_eq!(
        OtlpProtocol::of("http://collector:4318/v1/traces"),
        OtlpProtocol::HttpProtobuf
    );
    assert_eq!(
        OtlpProtocol::of("http://collector:4318"),
        OtlpProtocol::HttpProtobuf
    );
    assert_eq!(
        OtlpProtocol::of("https://otlp.example.com/v1/traces"),
        OtlpProtocol::HttpProtobuf
    );
    assert_eq!(
        OtlpProtocol::of("http://jaeger-collector:14250"),
        OtlpProtocol::Grpc
    );
}

#[test]
fn sampling_is_a_clamped_percentage() {
    let t = Tracing::builder().build().unwrap();
    assert_eq!(t.sampling(), DEFAULT_SAMPLING);
    assert!(!t.is_exporting());
    let never = Tracing::builder().sampling(-3.0).build().unwrap();
    assert_eq!(never.sampling(), 0.0);
    assert!((0..1000).all(|_| !never.sample()));
    let always = Tracing::builder().sampling(250.0).build().unwrap();
    assert_eq!(always.sampling(), 100.0);
    assert!((0..1000).all(|_| always.sample()));
    let nan = Tracing::builder().sampling(f64::NAN).build().unwrap();
    assert_eq!(nan.sampling(), DEFAULT_SAMPLING);
    let half = Tracing::builder().sampling(50.0).build().unwrap();
    let sampled = (0..10_000).filter(|_| half.sample()).count();
    assert!((4_000..6_000).contains(&sampled), "{sampled}");
}

#[test]
fn bad_endpoints_and_missing_runtimes_are_errors_naming_the_endpoint() {
    let err = Tracing::builder()
        .otlp("collector:4317")
        .build()
        .unwrap_err();
    assert!(matches!(err, TracingError::NoRuntime), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for bad in ["not a url", "collector:4317", "ftp://collector:4317"] {
            let err = Tracing::builder().otlp(bad).build().unwrap_err();
            assert!(matches!(err, TracingError::Endpoint { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        // Both protocols build (connections are lazy).
        for good in ["http://127.0.0.1:4317", "http://127.0.0.1:4318/v1/traces"] {
            let t = Tracing::builder().otlp(good).build().unwrap();
            assert!(t.is_exporting());
        }
    });
}

#[tokio::test]
async fn spans_carry_the_ids_of_the_trace_context() {
    let exporter = InMemorySpanExporter::default();
    let t = tracing(100.0, &exporter);
    let root = propagation::TraceContext::new_root(true);
    let child = root.child();
    for ctx in [&root, &child] {
        let span = t
            .start(ctx, SpanKind::Internal, || "x".into(), |_| {})
            .unwrap();
        t.end(span);
    }
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].span_context.trace_id().to_bytes(), root.trace_id);
    assert_eq!(spans[0].span_context.span_id().to_bytes(), root.span_id);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_eq!(spans[1].span_context.trace_id().to_bytes(), root.trace_id);
    assert_eq!(spans[1].span_context.span_id().to_bytes(), child.span_id);
    assert_eq!(spans[1].parent_span_id.to_bytes(), root.span_id);
    // Not sampled: nothing is built.
    let unsampled = propagation::TraceContext::new_root(false);
    assert!(
        t.start(
            &unsampled,
            SpanKind::Internal,
            || "x".into(),
            |_| { panic!("attributes are not computed for an unsampled span") }
        )
        .is_none()
    );
    // No exporter: nothing is built either.
    assert!(
        Tracing::disabled()
            .start(&root, SpanKind::Internal, || "x".into(), |_| {})
            .is_none()
    );
}

#[tokio::test]
async fn inbound_records_a_server_span_when_the_body_ends() {
    let exporter = InMemorySpanExporter::default();
    let seen = Arc::default();
    let t = tracing(100.0, &exporter);
    let svc = TraceLayer::inbound(t.clone()).port(9080).layer(app(
        StatusCode::OK,
        "hello",
        Arc::clone(&seen),
    ));
    let req = Request::post("/reviews/1")
        .header("host", "reviews:9080")
        .header("user-agent", "curl/8")
        .body(body::full("12345678"))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "not before the body ends"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"hello");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.name, "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(attr(span, "http.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(span, "http.url").as_deref(),
        Some("http://reviews:9080/reviews/1")
    );
    assert_eq!(attr(span, "user_agent").as_deref(), Some("curl/8"));
    assert_eq!(attr(span, "request_size").as_deref(), Some("8"));
    assert_eq!(attr(span, "response_size").as_deref(), Some("5"));
    assert_eq!(
        attr(span, "upstream_cluster").as_deref(),
        Some("inbound|9080||")
    );
    assert_eq!(
        attr(span, "istio.canonical_service").as_deref(),
        Some("reviews")
    );

    // The application ran inside the span's scope, with the span in its headers.
    let seen = seen.lock().unwrap();
    let (headers, current) = &seen[0];
    let current = current.clone().expect("the task-local is set");
    assert_eq!(
        current.context.span_id,
        span.span_context.span_id().to_bytes()
    );
    assert_eq!(current.request_id.as_ref(), headers.get(X_REQUEST_ID));
    assert_eq!(headers[TRACEPARENT], current.context.traceparent());
}

#[tokio::test]
async fn server_errors_and_app_failures_mark_the_span() {
    let exporter = InMemorySpanExporter::default();
    let t = tracing(100.0, &exporter);
    let svc = TraceLayer::inbound(t.clone()).layer(app(
        StatusCode::SERVICE_UNAVAILABLE,
        "",
        Arc::default(),
    ));
    let res = svc
        .oneshot(
            Request::get("http://reviews:9080/")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    // An empty body ends the span with the head.
    drop(res);
    let failing = TraceLayer::inbound(t.clone()).layer(service_fn(|_req: Request<Body>| async {
        Err::<Response<Body>, _>("boom")
    }));
    let err = failing
        .oneshot(
            Request::get("http://reviews:9080/")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, "boom");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(attr(&spans[0], "http.status_code").as_deref(), Some("503"));
    assert_eq!(attr(&spans[0], "error").as_deref(), Some("true"));
    assert!(matches!(spans[0].status, Status::Error { .. }));
    assert_eq!(
        spans[1].status,
        Status::error("boom"),
        "the failure is the span's status"
    );
}

#[tokio::test]
async fn a_dropped_body_ends_the_span() {
    let exporter = InMemorySpanExporter::default();
    let t = tracing(100.0, &exporter);
    let svc =
        TraceLayer::inbound(t.clone()).layer(app(StatusCode::OK, "never read", Arc::default()));
    let res = svc
        .oneshot(
            Request::get("http://reviews:9080/")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    drop(res);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "response_size").as_deref(), Some("0"));
}

#[tokio::test]
async fn inbound_obeys_the_callers_decision_and_decides_deferred_ones() {
    let exporter = InMemorySpanExporter::default();
    let seen = Arc::default();
    // Sampling 0 %: only the headers can make a span.
    let svc = TraceLayer::inbound(tracing(0.0, &exporter)).layer(app(
        StatusCode::OK,
        "",
        Arc::clone(&seen),
    ));
    let send = |headers: &[(&str, &str)]| {
        let mut req = Request::get("http://reviews:9080/")
            .body(body::empty())
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        svc.clone().oneshot(req)
    };
    // B3 debug: sampled whatever the percentage.
    send(&[
        ("x-b3-traceid", "0af7651916cd43dd"),
        ("x-b3-spanid", "b7ad6b7169203331"),
        ("x-b3-flags", "1"),
    ])
    .await
    .unwrap();
    // Deferred (no x-b3-sampled): our 0 % decides.
    send(&[
        ("x-b3-traceid", "0af7651916cd43dd"),
        ("x-b3-spanid", "b7ad6b7169203331"),
    ])
    .await
    .unwrap();
    // A bare `b3: 1` starts a sampled root.
    send(&[("b3", "1")]).await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    // A 64-bit B3 trace id keeps its value.
    assert_eq!(
        spans[0].span_context.trace_id(),
        TraceId::from_hex("00000000000000000af7651916cd43dd").unwrap()
    );
    assert_eq!(spans[1].parent_span_id, SpanId::INVALID);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0["x-b3-flags"], "1");
    assert_eq!(
        seen[1].0[X_B3_SAMPLED], "0",
        "the decision made is propagated"
    );
    assert_eq!(seen[1].0["x-b3-traceid"], "0af7651916cd43dd");
}

/// The outbound layer over a leaf that records what it was sent.
fn recording_client(
    t: Tracing,
    seen: &Seen,
) -> Trace<
    impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone,
> {
    TraceLayer::outbound(t).layer(app(StatusCode::OK, "ok", Arc::clone(seen)))
}

#[tokio::test]
async fn outbound_parent_precedence_extension_then_scope_then_headers() {
    let exporter = InMemorySpanExporter::default();
    let seen = Seen::default();
    let client = recording_client(tracing(100.0, &exporter), &seen);
    let in_ext = RequestTrace {
        context: propagation::TraceContext::new_root(true),
        request_id: Some(HeaderValue::from_static("from-extension")),
    };
    let in_scope = RequestTrace {
        context: propagation::TraceContext::new_root(true),
        request_id: Some(HeaderValue::from_static("from-scope")),
    };
    let in_headers = propagation::TraceContext::new_root(true);
    let request = || {
        let mut req = Request::get("http://ratings:9080/ratings/0")
            .body(body::empty())
            .unwrap();
        propagation::inject(&in_headers, req.headers_mut());
        req
    };

    // 1. The extension wins over the scope and the headers.
    let mut req = request();
    req.extensions_mut().insert(in_ext.clone());
    let res = scope(Some(in_scope.clone()), client.clone().oneshot(req)).await;
    drop(res);
    // 2. The scope wins over the headers.
    let res = scope(Some(in_scope.clone()), client.clone().oneshot(request())).await;
    drop(res);
    // 3. Headers forwarded by hand.
    drop(client.clone().oneshot(request()).await);
    // 4. A TraceContext in the extensions.
    let mut req = Request::get("http://ratings:9080/")
        .body(body::empty())
        .unwrap();
    req.extensions_mut().insert(in_headers.clone());
    drop(client.clone().oneshot(req).await);
    // 5. Nothing: a new root.
    drop(
        client
            .clone()
            .oneshot(
                Request::get("http://ratings:9080/")
                    .body(body::empty())
                    .unwrap(),
            )
            .await,
    );

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 5);
    let parents = [
        Some(&in_ext.context),
        Some(&in_scope.context),
        Some(&in_headers),
        Some(&in_headers),
        None,
    ];
    let seen = seen.lock().unwrap();
    for (i, (span, parent)) in spans.iter().zip(parents).enumerate() {
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(
            span.name, "ratings:9080/*",
            "named after the authority without RecordTarget"
        );
        assert_eq!(
            attr(span, "upstream_cluster").as_deref(),
            Some("outbound|9080||ratings")
        );
        let headers = &seen[i].0;
        // The headers name the client span.
        assert_eq!(
            propagation::extract(headers).unwrap().span_id,
            span.span_context.span_id().to_bytes()
        );
        match parent {
            Some(p) => {
                assert_eq!(span.span_context.trace_id().to_bytes(), p.trace_id, "{i}");
                assert_eq!(span.parent_span_id.to_bytes(), p.span_id, "{i}");
            }
            None => assert_eq!(span.parent_span_id, SpanId::INVALID),
        }
    }
    assert_eq!(seen[0].0[X_REQUEST_ID], "from-extension");
    assert_eq!(seen[1].0[X_REQUEST_ID], "from-scope");
    assert_eq!(seen[2].0[X_REQUEST_ID].len(), 36, "a new id");
}

#[tokio::test]
async fn a_routed_call_that_fails_is_named_after_its_route() {
    let exporter = InMemorySpanExporter::default();
    let t = tracing(100.0, &exporter);
    let target = crate::target::Target {
        snapshot: Arc::new(mesh_core::snapshot::Snapshot::default()),
        route: None,
        match_index: None,
        host: Arc::from("reviews.default.svc.cluster.local"),
        subset: Some(Arc::from("v2")),
        port: 9080,
    };
    // The route's decision reaches the leaf, which fails before any response.
    let leaf = RecordTarget::new(service_fn(|_req: Request<Body>| async {
        Err::<Response<Body>, _>("connection refused")
    }));
    let client = TraceLayer::outbound(t.clone()).layer(
        tower::ServiceBuilder::new()
            .map_request(move |mut req: Request<Body>| {
                req.extensions_mut().insert(target.clone());
                req
            })
            .service(leaf),
    );
    let err = client
        .oneshot(
            Request::get("http://reviews:9080/reviews/0")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, "connection refused");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(
        attr(span, "upstream_cluster").as_deref(),
        Some("outbound|9080|v2|reviews.default.svc.cluster.local")
    );
    assert_eq!(attr(span, "request_size").as_deref(), Some("0"));
    assert_eq!(span.status, Status::error("connection refused"));
}

#[tokio::test]
async fn an_id_the_application_sets_wins_and_unsampled_calls_build_nothing() {
    let exporter = InMemorySpanExporter::default();
    let seen = Seen::default();
    let client = recording_client(tracing(0.0, &exporter), &seen);
    let parent = RequestTrace {
        context: propagation::TraceContext::new_root(false),
        request_id: Some(HeaderValue::from_static("inbound-id")),
    };
    let req = Request::get("http://ratings:9080/")
        .header("x-request-id", "app-id")
        .body(body::empty())
        .unwrap();
    drop(scope(Some(parent.clone()), client.oneshot(req)).await);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0[X_REQUEST_ID], "app-id");
    let sent = propagation::extract(&seen[0].0).unwrap();
    assert_eq!(sent.trace_id, parent.context.trace_id);
    assert_eq!(sent.parent_span_id, None, "W3C carries no parent");
    assert_eq!(seen[0].0["x-b3-parentspanid"], {
        let mut h = http::HeaderMap::new();
        propagation::inject(&parent.context, &mut h);
        h["x-b3-spanid"].clone()
    });
    assert_eq!(sent.sampled, Some(false));
}

#[tokio::test]
async fn the_applications_own_spans_share_the_exporter() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    let exporter = InMemorySpanExporter::default();
    let t = tracing(100.0, &exporter);
    let ctx = propagation::TraceContext::new_root(true);
    t.end(
        t.start(&ctx, SpanKind::Server, || "mesh".into(), |_| {})
            .unwrap(),
    );
    let mut own = t.provider().unwrap().tracer("app").start("render");
    own.end();
    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<_> = spans
        .iter()
        .map(|s| (s.name.as_ref(), s.instrumentation_scope.name()))
        .collect();
    assert_eq!(names, [("mesh", "mesh-tower"), ("render", "app")]);
}

#[test]
fn current_is_none_outside_a_scope() {
    assert_eq!(current(), None);
}

#[tokio::test]
async fn batch_export_flushes_on_demand_and_stops_on_shutdown() {
    let exporter = InMemorySpanExporter::default();
    let t = Tracing::builder()
        .sampling(100.0)
        .exporter(exporter.clone())
        .build()
        .unwrap();
    let ctx = propagation::TraceContext::new_root(true);
    t.end(
        t.start(&ctx, SpanKind::Internal, || "a".into(), |_| {})
            .unwrap(),
    );
    t.force_flush().await.unwrap();
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    t.shutdown().await.unwrap();
    assert!(exporter.is_shutdown_called());
    t.end(
        t.start(&ctx, SpanKind::Internal, || "b".into(), |_| {})
            .unwrap(),
    );
    assert!(t.shutdown().await.is_err(), "shut down twice");
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "nothing is exported after shutdown"
    );
}

/// Without an exporter, a request carrying a context goes through with that context
/// unchanged (its headers as they came, the caller's span as the task-local parent: no span
/// of ours that no backend would ever see) and one without gets only its `x-request-id`,
/// whether it has a few headers or many (the layer looks for the trace headers by scanning a
/// few names, by lookups among many).
#[tokio::test]
async fn without_an_exporter_a_context_goes_through_unchanged() {
    let seen = Seen::default();
    let svc = TraceLayer::inbound(Tracing::disabled())
        .port(9080)
        .layer(app(StatusCode::OK, "ok", seen.clone()));
    let parents = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1"),
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
    ];
    for extra in [0, 30] {
        for parent in [None, Some(parents[0]), Some(parents[1]), Some(parents[2])] {
            let mut req = Request::get("/").body(body::empty()).unwrap();
            for i in 0..extra {
                req.headers_mut().insert(
                    http::HeaderName::try_from(format!("x-extra-{i}")).unwrap(),
                    "1".parse().unwrap(),
                );
            }
            if let Some((name, value)) = parent {
                req.headers_mut().insert(name, value.parse().unwrap());
                if name == "x-b3-traceid" {
                    req.headers_mut()
                        .insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().unwrap());
                }
            }
            let res = svc.clone().oneshot(req).await.unwrap();
            let _ = res.into_body().collect().await;
            let (headers, trace) = seen.lock().unwrap().pop().unwrap();
            assert_eq!(headers[X_REQUEST_ID].len(), 36, "{parent:?}");
            match parent {
                None => {
                    assert!(trace.is_none(), "untraced: no task-local trace");
                    assert!(!headers.contains_key(TRACEPARENT), "nothing injected");
                }
                Some((name, value)) => {
                    let trace =
                        trace.unwrap_or_else(|| panic!("{name} continued ({extra} extra headers)"));
                    let (want_trace, want_span) = if name == "traceparent" {
                        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
                    } else {
                        ("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312")
                    };
                    assert_eq!(
                        trace.context.trace_id_hex().to_string(),
                        want_trace,
                        "{name}"
                    );
                    assert_eq!(
                        trace.context.span_id_hex().to_string(),
                        want_span,
                        "{name}: the caller's span is the parent"
                    );
                    assert_eq!(headers[name], value, "{name} as it came");
                    assert_eq!(
                        headers.contains_key(TRACEPARENT),
                        name == "traceparent",
                        "{name}: nothing injected"
                    );
                }
            }
        }
    }
}
