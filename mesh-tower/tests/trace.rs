//! Distributed tracing across three hops on loopback (gateway → productpage → reviews), each
//! served by `server::serve` behind the inbound trace layer and calling the next hop through
//! the outbound stack behind the outbound trace layer, with no header copying in the apps;
//! and export through the real OTLP gRPC exporter to an in-process collector.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use mesh_core::{
    BoxError,
    config::load_str,
    snapshot::Snapshot,
    store::{FileStore, Store},
};
use mesh_tower::{
    body::{self, Body},
    mesh::Workload,
    route::Caller,
    server::{self, ShutdownOptions},
    stack::{self, StackParts},
    telemetry::trace::{self, RecordTarget, TraceLayer, Tracing, TracingBuilder},
};
use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, Status, TraceId},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tokio::{net::TcpListener, sync::oneshot};
use tower::{Layer, ServiceExt, service_fn};

const HOPS: [&str; 3] = ["gateway", "productpage", "reviews"];

/// How the middle hop (productpage) makes its call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    /// Straight from the handler: the trace layer's task-local carries the context.
    Implicit,
    /// From a spawned task (no task-local), copying the trace headers by hand as Istio's
    /// documentation asks applications without a mesh library to do.
    ByHand,
    /// From a spawned task carrying the context with `trace::scope`.
    Scoped,
}

/// The three hops, serving.
struct Chain {
    gateway: SocketAddr,
    tracings: Vec<Tracing>,
    /// The headers each hop's application received, by hop.
    seen: Arc<Mutex<Vec<(&'static str, HeaderMap)>>>,
    stops: Vec<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Chain {
    async fn start(
        sampling: f64,
        forwarding: Forwarding,
        exporter: impl Fn(TracingBuilder) -> TracingBuilder,
    ) -> Self {
        let mut listeners = Vec::new();
        for _ in HOPS {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();

        // The registry: a temp-dir store with a WorkloadEntry per service.
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
        let mut yaml = String::new();
        for (name, addr) in HOPS.iter().zip(&addrs) {
            yaml.push_str(&format!(
                "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: {name}-v1, namespace: default }}
spec: {{ address: 127.0.0.1, ports: {{ http: {port} }}, labels: {{ app: {name}, version: v1 }} }}
---
",
                port = addr.port()
            ));
        }
        let loaded = load_str(&yaml, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        store.apply(loaded.resources).await.unwrap();
        let listing = store.list().await.unwrap();
        let snapshot = Arc::new(Snapshot::build(&listing.resources).unwrap());
        let source = Arc::new(ArcSwap::new(snapshot));

        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tracings = Vec::new();
        let mut stops = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let name = HOPS[i];
            let workload = Workload::new(format!("{name}-v1"), "default")
                .label("app", name)
                .label("version", "v1")
                .address(addrs[i]);
            let tracing = exporter(
                Tracing::builder()
                    .workload(&workload)
                    .mesh_id("cluster.local")
                    .sampling(sampling),
            )
            .build()
            .unwrap();
            tracings.push(tracing.clone());

            let parts = StackParts::new(Duration::from_secs(2));
            let client = TraceLayer::outbound(tracing.clone()).layer(stack::outbound_stack(
                source.clone(),
                Caller::new("default"),
                &parts,
                RecordTarget::new(parts.connect.clone()),
            ));
            let next = HOPS.get(i + 1).copied();
            let seen = seen.clone();
            let mode = if name == "productpage" {
                forwarding
            } else {
                Forwarding::Implicit
            };
            let app = service_fn(move |req: Request<Body>| {
                seen.lock().unwrap().push((name, req.headers().clone()));
                let client = client.clone();
                async move {
                    let Some(next) = next else {
                        return Ok::<_, BoxError>(Response::new(body::full(format!("{name} ok"))));
                    };
                    let mut out =
                        Request::get(format!("http://{next}:9080/{name}")).body(body::empty())?;
                    let res = match mode {
                        Forwarding::Implicit => call_next(client, out).await?,
                        Forwarding::ByHand => {
                            for (k, v) in req.headers() {
                                let k = k.as_str();
                                if k.starts_with("x-b3-")
                                    || k == "traceparent"
                                    || k == "tracestate"
                                    || k == "x-request-id"
                                {
                                    out.headers_mut()
                                        .insert(k.parse::<http::HeaderName>()?, v.clone());
                                }
                            }
                            tokio::spawn(call_next(client, out)).await??
                        }
                        Forwarding::Scoped => {
                            tokio::spawn(trace::scope(trace::current(), call_next(client, out)))
                                .await??
                        }
                    };
                    Ok(Response::new(body::full(format!("{name} → {res}"))))
                }
            });
            let port = addrs[i].port();
            let svc = TraceLayer::inbound(tracing).port(port).layer(app);
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            tokio::spawn(server::serve(
                listener,
                svc,
                async {
                    let _ = stopped.await;
                },
                ShutdownOptions {
                    deadline: Duration::from_secs(1),
                },
            ));
        }
        Self {
            gateway: addrs[0],
            tracings,
            seen,
            stops,
            _dir: dir,
        }
    }

    /// Sends a GET with `headers` to the gateway; returns the body.
    async fn get(&self, headers: &[(&str, &str)]) -> String {
        let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = Request::get(format!("http://{}/productpage", self.gateway))
            .body(Full::default())
            .unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(k.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
        }
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The headers the application of `hop` received.
    fn seen(&self, hop: &str) -> HeaderMap {
        let seen = self.seen.lock().unwrap();
        let found: Vec<_> = seen.iter().filter(|(h, _)| *h == hop).collect();
        assert_eq!(found.len(), 1, "{hop} was called once");
        found[0].1.clone()
    }

    async fn flush(&self) {
        for t in &self.tracings {
            t.force_flush().await.unwrap();
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Calls the next hop through the mesh client; returns its status and body.
async fn call_next<S>(client: S, out: Request<Body>) -> Result<String, BoxError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    let res = client.oneshot(out).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok(format!(
        "{} {}",
        status.as_u16(),
        String::from_utf8_lossy(&bytes)
    ))
}

// === spans ===

/// Waits until `exporter` holds at least `n` spans (server spans end when the response
/// body is done, just after the caller has read it).
async fn spans(exporter: &InMemorySpanExporter, n: usize) -> Vec<SpanData> {
    for _ in 0..500 {
        let spans = exporter.get_finished_spans().unwrap();
        if spans.len() >= n {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} spans, got {:?}",
        exporter.get_finished_spans().unwrap()
    );
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}

fn find<'a>(spans: &'a [SpanData], service: &str, kind: SpanKind) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.span_kind == kind && attr(s, "istio.canonical_service").as_deref() == Some(service)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span of {service} in {spans:#?}"
    );
    found[0]
}

/// The five spans of one request through the chain, in order: gateway server, gateway
/// client, productpage server, productpage client, reviews server. Checks they share one
/// trace id and that each is the parent of the next.
fn chain_of(spans: &[SpanData]) -> [&SpanData; 5] {
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let chain = [
        find(spans, "gateway", SpanKind::Server),
        find(spans, "gateway", SpanKind::Client),
        find(spans, "productpage", SpanKind::Server),
        find(spans, "productpage", SpanKind::Client),
        find(spans, "reviews", SpanKind::Server),
    ];
    let trace_id = chain[0].span_context.trace_id();
    for pair in chain.windows(2) {
        assert_eq!(pair[1].span_context.trace_id(), trace_id);
        assert_eq!(
            pair[1].parent_span_id,
            pair[0].span_context.span_id(),
            "{} ({:?}) is the child of {} ({:?})",
            pair[1].name,
            pair[1].span_kind,
            pair[0].name,
            pair[0].span_kind
        );
        assert!(pair[1].parent_span_is_remote);
    }
    chain
}

/// The trace id and span id of a `traceparent` header, and its flags.
fn traceparent(headers: &HeaderMap) -> (TraceId, SpanId, String) {
    let v = headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = v.split('-').collect();
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
        parts[3].to_owned(),
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_trace_headers_is_one_trace_across_three_hops() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    // The batch processor on tokio, as a workload runs it.
    let chain = Chain::start(100.0, Forwarding::Implicit, move |b| {
        b.exporter(exp.clone())
    })
    .await;
    let body = chain.get(&[]).await;
    assert_eq!(body, "gateway → 200 productpage → 200 reviews ok");

    let mut all = Vec::new();
    for _ in 0..200 {
        chain.flush().await;
        all = exporter.get_finished_spans().unwrap();
        if all.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let [gs, gc, ps, pc, rs] = chain_of(&all);
    assert_eq!(
        gs.parent_span_id,
        SpanId::INVALID,
        "the gateway starts the trace"
    );
    assert!(!gs.parent_span_is_remote);

    // Istio's names: the service host and port for both sides.
    assert_eq!(
        gc.name, "productpage.default.svc.cluster.local:9080/*",
        "the client span is named after the route's destination"
    );
    assert_eq!(pc.name, "reviews.default.svc.cluster.local:9080/*");
    assert!(
        ps.name
            .starts_with("productpage.default.svc.cluster.local:")
            && ps.name.ends_with("/*"),
        "{}",
        ps.name
    );

    // One x-request-id everywhere: in the apps' headers and in every span.
    let id = chain.seen("gateway")["x-request-id"].clone();
    assert_eq!(id.len(), 36, "a UUID: {id:?}");
    for hop in HOPS {
        assert_eq!(chain.seen(hop)["x-request-id"], id, "{hop}");
    }
    for span in [gs, gc, ps, pc, rs] {
        assert_eq!(
            attr(span, "guid:x-request-id").as_deref(),
            Some(id.to_str().unwrap())
        );
        assert_eq!(attr(span, "component").as_deref(), Some("proxy"));
        assert_eq!(attr(span, "http.method").as_deref(), Some("GET"));
        assert_eq!(attr(span, "http.status_code").as_deref(), Some("200"));
        assert_eq!(attr(span, "response_flags").as_deref(), Some("-"));
        assert_eq!(attr(span, "istio.namespace").as_deref(), Some("default"));
        assert_eq!(
            attr(span, "istio.canonical_revision").as_deref(),
            Some("v1")
        );
        assert_eq!(
            attr(span, "istio.mesh_id").as_deref(),
            Some("cluster.local")
        );
        assert_eq!(span.status, Status::Unset);
    }
    // The applications see the server span's context in their headers.
    for (hop, span) in [("gateway", gs), ("productpage", ps), ("reviews", rs)] {
        let (trace_id, span_id, flags) = traceparent(&chain.seen(hop));
        assert_eq!(trace_id, gs.span_context.trace_id(), "{hop}");
        assert_eq!(span_id, span.span_context.span_id(), "{hop}");
        assert_eq!(flags, "01");
    }
    assert_eq!(
        attr(pc, "upstream_cluster").as_deref(),
        Some("outbound|9080||reviews.default.svc.cluster.local")
    );
    assert!(
        attr(rs, "upstream_cluster")
            .unwrap()
            .starts_with("inbound|"),
        "{rs:?}"
    );
    assert_eq!(
        attr(pc, "http.url").unwrap(),
        "http://reviews:9080/productpage"
    );
    assert!(attr(rs, "http.url").unwrap().ends_with("/productpage"));
    assert_eq!(attr(rs, "response_size").as_deref(), Some("10")); // "reviews ok"
    assert_eq!(attr(gs, "peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(gs, "http.protocol").as_deref(), Some("HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b3_only_caller_is_continued_with_its_trace_id() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    // Sampling 0 %: only the caller's decision makes these spans.
    let chain = Chain::start(0.0, Forwarding::Implicit, move |b| {
        b.simple_exporter(exp.clone())
    })
    .await;
    chain
        .get(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
            ("x-request-id", "caller-chosen-id"),
        ])
        .await;
    let all = spans(&exporter, 5).await;
    let [gs, ..] = chain_of(&all);
    assert_eq!(
        gs.span_context.trace_id(),
        TraceId::from_hex("463ac35c9f6413ad48485a3953bb6124").unwrap()
    );
    assert_eq!(
        gs.parent_span_id,
        SpanId::from_hex("a2fb4a1d1a96d312").unwrap()
    );
    assert!(gs.parent_span_is_remote);
    for hop in HOPS {
        let seen = chain.seen(hop);
        assert_eq!(seen["x-request-id"], "caller-chosen-id", "{hop}");
        assert_eq!(
            seen["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124",
            "{hop}"
        );
        assert_eq!(seen["x-b3-sampled"], "1", "{hop}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w3c_caller_that_did_not_sample_gets_no_spans_but_keeps_its_ids() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    let chain = Chain::start(100.0, Forwarding::Implicit, move |b| {
        b.simple_exporter(exp.clone())
    })
    .await;
    chain
        .get(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    let mut span_ids = Vec::new();
    for hop in HOPS {
        let seen = chain.seen(hop);
        let (trace_id, span_id, flags) = traceparent(&seen);
        assert_eq!(
            trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(flags, "00", "{hop}");
        assert_eq!(seen["x-b3-sampled"], "0", "{hop}");
        span_ids.push(span_id);
    }
    span_ids.dedup();
    assert_eq!(span_ids.len(), 3, "each hop has its own span id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_percent_records_nothing_but_propagates_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    let chain = Chain::start(0.0, Forwarding::Implicit, move |b| {
        b.simple_exporter(exp.clone())
    })
    .await;
    for _ in 0..3 {
        chain.get(&[]).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    let seen = chain.seen.lock().unwrap().clone();
    // Per request (3 requests × 3 hops): one trace id and one request id.
    let mut by_request: HashMap<String, Vec<(TraceId, String)>> = HashMap::new();
    for (_, headers) in &seen {
        let (trace_id, _, flags) = traceparent(headers);
        by_request
            .entry(headers["x-request-id"].to_str().unwrap().to_owned())
            .or_default()
            .push((trace_id, flags));
    }
    assert_eq!(by_request.len(), 3);
    for hops in by_request.values() {
        assert_eq!(hops.len(), 3);
        assert!(
            hops.iter().all(|h| *h == (hops[0].0, "00".to_owned())),
            "{hops:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_forwarding_headers_by_hand_stays_in_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    let chain = Chain::start(100.0, Forwarding::ByHand, move |b| {
        b.simple_exporter(exp.clone())
    })
    .await;
    chain.get(&[]).await;
    chain_of(&spans(&exporter, 5).await);
    let id = chain.seen("gateway")["x-request-id"].clone();
    assert_eq!(chain.seen("reviews")["x-request-id"], id);
}

/// Without an exporter the mesh records no span, so it must not make one up either: every
/// hop continues the caller's span (its id is the parent all the way down), as a chain of
/// Envoys without a tracer would, and a later hop that does record links to a span that
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_every_hop_continues_the_callers_span() {
    for forwarding in [Forwarding::Implicit, Forwarding::Scoped] {
        let chain = Chain::start(100.0, forwarding, |b| b).await;
        assert!(chain.tracings.iter().all(|t| !t.is_exporting()));
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        chain.get(&[("traceparent", caller)]).await;
        for hop in HOPS {
            let seen = chain.seen(hop);
            assert_eq!(seen["traceparent"], caller, "{hop}");
        }
        let id = chain.seen("gateway")["x-request-id"].clone();
        assert_eq!(chain.seen("reviews")["x-request-id"], id);

        // A B3-only caller: its headers reach the first application as they came, and the
        // calls it makes carry the same ids in both formats.
        let chain = Chain::start(100.0, forwarding, |b| b).await;
        chain
            .get(&[
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ])
            .await;
        let gateway = chain.seen("gateway");
        assert!(!gateway.contains_key("traceparent"), "{gateway:?}");
        assert_eq!(gateway["x-b3-spanid"], "a2fb4a1d1a96d312");
        for hop in &HOPS[1..] {
            let seen = chain.seen(hop);
            let (trace_id, span_id, flags) = traceparent(&seen);
            assert_eq!(
                trace_id,
                TraceId::from_hex("463ac35c9f6413ad48485a3953bb6124").unwrap(),
                "{hop}"
            );
            assert_eq!(
                span_id,
                SpanId::from_hex("a2fb4a1d1a96d312").unwrap(),
                "{hop}"
            );
            assert_eq!(flags, "01", "{hop}");
            assert_eq!(seen["x-b3-spanid"], "a2fb4a1d1a96d312", "{hop}");
            assert_eq!(seen["x-b3-sampled"], "1", "{hop}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_spawning_a_task_with_the_scope_stays_in_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let exp = exporter.clone();
    let chain = Chain::start(100.0, Forwarding::Scoped, move |b| {
        b.simple_exporter(exp.clone())
    })
    .await;
    chain.get(&[]).await;
    chain_of(&spans(&exporter, 5).await);
    let id = chain.seen("gateway")["x-request-id"].clone();
    assert_eq!(chain.seen("reviews")["x-request-id"], id);
}

// === OTLP ===

/// An OTLP/gRPC collector: keeps every span it receives with its `service.name`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
}

fn string_value(kv: &opentelemetry_proto::tonic::common::v1::KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(string_value)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_grpc_collector() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoKind;

    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(
        listener,
        TraceServiceServer::new(collector.clone()),
        async {
            let _ = stopped.await;
        },
        ShutdownOptions::default(),
    ));

    let chain = Chain::start(100.0, Forwarding::Implicit, move |b| {
        b.otlp(endpoint.clone())
    })
    .await;
    chain.get(&[]).await;
    let mut received = Vec::new();
    for _ in 0..300 {
        chain.flush().await;
        received = collector.spans.lock().unwrap().clone();
        if received.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received.len(), 5, "{received:#?}");

    let attr = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(string_value)
    };
    let find = |service: &str, kind: ProtoKind| {
        let found: Vec<_> = received
            .iter()
            .filter(|(s, span)| s == service && span.kind == kind as i32)
            .map(|(_, span)| span)
            .collect();
        assert_eq!(found.len(), 1, "{service} {kind:?}");
        found[0]
    };
    let chain_spans = [
        find("gateway.default", ProtoKind::Server),
        find("gateway.default", ProtoKind::Client),
        find("productpage.default", ProtoKind::Server),
        find("productpage.default", ProtoKind::Client),
        find("reviews.default", ProtoKind::Server),
    ];
    let trace_id = &chain_spans[0].trace_id;
    assert_eq!(trace_id.len(), 16);
    assert!(
        chain_spans[0].parent_span_id.is_empty(),
        "the root has no parent"
    );
    for pair in chain_spans.windows(2) {
        assert_eq!(&pair[1].trace_id, trace_id);
        assert_eq!(pair[1].parent_span_id, pair[0].span_id, "{}", pair[1].name);
    }
    // The ids exported are the ids the applications saw in their headers.
    let (seen_trace, seen_span, _) = traceparent(&chain.seen("reviews"));
    assert_eq!(seen_trace.to_bytes().to_vec(), *trace_id);
    assert_eq!(seen_span.to_bytes().to_vec(), chain_spans[4].span_id);

    assert_eq!(
        chain_spans[1].name,
        "productpage.default.svc.cluster.local:9080/*"
    );
    assert_eq!(
        chain_spans[3].name,
        "reviews.default.svc.cluster.local:9080/*"
    );
    let id = chain.seen("gateway")["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    for span in chain_spans {
        assert_eq!(attr(span, "guid:x-request-id"), Some(id.clone()));
        assert_eq!(attr(span, "http.status_code").as_deref(), Some("200"));
        assert_eq!(attr(span, "component").as_deref(), Some("proxy"));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    assert_eq!(
        attr(chain_spans[2], "istio.canonical_service").as_deref(),
        Some("productpage")
    );
    assert!(
        attr(chain_spans[2], "node_id")
            .unwrap()
            .starts_with("sidecar~127.0.0.1~productpage-v1.default~"),
    );
    for t in &chain.tracings {
        t.shutdown().await.unwrap();
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_collector() {
    // An OTLP/HTTP collector: records each POST's path, content type and protobuf body.
    type Posts = Arc<Mutex<Vec<(String, String, Bytes)>>>;
    let posts: Posts = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let recorded = posts.clone();
    tokio::spawn(server::serve(
        listener,
        service_fn(move |req: Request<Body>| {
            let recorded = recorded.clone();
            async move {
                let path = req.uri().path().to_owned();
                let content_type = req
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or("").to_owned())
                    .unwrap_or_default();
                let bytes = req.into_body().collect().await?.to_bytes();
                recorded.lock().unwrap().push((path, content_type, bytes));
                // An empty ExportTraceServiceResponse.
                let mut res = Response::new(body::empty());
                res.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                Ok::<_, BoxError>(res)
            }
        }),
        async {
            let _ = stopped.await;
        },
        ShutdownOptions::default(),
    ));

    let tracing = Tracing::builder()
        .canonical_service("details")
        .namespace("default")
        .otlp(endpoint)
        .build()
        .unwrap();
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let svc = TraceLayer::inbound(tracing.clone()).layer(service_fn(move |req: Request<Body>| {
        *record.lock().unwrap() = Some(req.headers().clone());
        async { Ok::<_, BoxError>(Response::new(body::empty())) }
    }));
    let req = Request::get("http://details:9080/details/0")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(body::empty())
        .unwrap();
    drop(svc.oneshot(req).await.unwrap());
    tracing.force_flush().await.unwrap();

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "one batch");
    let (path, content_type, body) = &posts[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    // The protobuf carries the ids raw: the caller's trace id, the server span's id (the one
    // the application saw) and its parent (the caller's span).
    let (_, span_id, _) = traceparent(seen.lock().unwrap().as_ref().unwrap());
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(contains(
        &TraceId::from_hex("0af7651916cd43dd8448eb211c80319c")
            .unwrap()
            .to_bytes()
    ));
    assert!(contains(&span_id.to_bytes()));
    assert!(contains(
        &SpanId::from_hex("b7ad6b7169203331").unwrap().to_bytes()
    ));
    assert!(contains(b"details.default"), "the service name");
    assert!(contains(b"details:9080/*"), "the span name");
    tracing.shutdown().await.unwrap();
    let _ = stop.send(());
}
