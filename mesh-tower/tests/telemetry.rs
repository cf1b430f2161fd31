//! Istio's request metrics and the access log end to end on loopback: a server made with
//! `server::serve` (or `serve_tls`) behind the inbound telemetry layer, a client made with
//! `stack::outbound_stack` behind the outbound one, configuration from a file store; both
//! sides' Prometheus text is parsed and checked.

use std::{collections::BTreeMap, convert::Infallible, future::Future, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_ca::{
    CaOptions, CertificateAuthority,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
};
use mesh_core::{
    config::{Resource, load_str},
    snapshot::Snapshot,
    store::{ConfigWatcher, FileStore, Store},
    validate::{Finding, Findings, Severity, codes},
};
use mesh_tower::{
    body::{self, Body},
    connect::Connect,
    mesh::Workload,
    route::Caller,
    server::{self, InboundTls, ShutdownOptions},
    stack::{self, StackParts},
    telemetry::{
        access_log::{AccessLogEncoding, AccessLogEntry, AccessLogSink},
        layer::{LocalWorkload, TelemetryLayer},
        metrics::{IstioMetrics, MeshCounters},
    },
    tls::{IdentityWatch, InboundMode, TlsAcceptor, TlsIdentity, policy},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    sync::oneshot,
};
use tower::{Layer, ServiceExt};

const PATIENCE: Duration = Duration::from_secs(15);
const RESPONSE: &[u8] = b"reviews says hello!!"; // 20 bytes

// === fixtures ===

fn productpage() -> LocalWorkload {
    LocalWorkload::from_workload(
        &Workload::new("productpage-v1", "default")
            .label("app", "productpage")
            .label("version", "v1")
            .service_account("productpage"),
    )
}

fn reviews() -> LocalWorkload {
    LocalWorkload::from_workload(
        &Workload::new("reviews-v1", "default")
            .label("app", "reviews")
            .label("version", "v1")
            .service_account("reviews"),
    )
}

/// The store's configuration: `reviews-v1` at `port`, a VirtualService with an abort on
/// `/fault`, a delay on `/delay` and a subset without endpoints on `/uh`; `details` routes
/// `/only` and nothing else.
fn config(port: u16, tls_label: bool, traffic_policy: &str) -> String {
    let tls = if tls_label {
        ", security.istio.io/tlsMode: istio"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: reviews-v1, namespace: default }}
spec: {{ address: 127.0.0.1, ports: {{ http: {port} }}, serviceAccount: reviews, labels: {{ app: reviews, version: v1{tls} }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews, namespace: default }}
spec:
  host: reviews
  {traffic_policy}
  subsets:
  - {{ name: v1, labels: {{ version: v1 }} }}
  - {{ name: v9, labels: {{ version: v9 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: default }}
spec:
  hosts: [reviews]
  http:
  - match: [{{ uri: {{ prefix: /fault }} }}]
    fault: {{ abort: {{ httpStatus: 500, percentage: {{ value: 100 }} }} }}
    route: [{{ destination: {{ host: reviews }} }}]
  - match: [{{ uri: {{ prefix: /delay }} }}]
    fault: {{ delay: {{ fixedDelay: 10ms, percentage: {{ value: 100 }} }} }}
    route: [{{ destination: {{ host: reviews }} }}]
  - match: [{{ uri: {{ prefix: /uh }} }}]
    route: [{{ destination: {{ host: reviews, subset: v9 }} }}]
  - route: [{{ destination: {{ host: reviews, subset: v1 }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: details, namespace: default }}
spec:
  hosts: [details]
  http:
  - match: [{{ uri: {{ prefix: /only }} }}]
    route: [{{ destination: {{ host: reviews }} }}]
"
    )
}

/// Writes `yaml` into a new file store and watches it.
async fn watch(yaml: &str) -> (tempfile::TempDir, ConfigWatcher<Snapshot>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let loaded = load_str(yaml, None);
    assert!(
        loaded.findings.iter().all(|f| !f.is_error()),
        "{:?}",
        loaded.findings
    );
    store.apply(loaded.resources).await.expect("apply");
    let watcher = ConfigWatcher::start(store, |rs: &[Resource]| {
        Snapshot::build(rs).map_err(|e| {
            Findings(vec![Finding::new(
                codes::SCHEMA_VALIDATION_ERROR,
                Severity::Error,
                e.message.clone(),
            )])
        })
    })
    .await
    .expect("watch");
    watcher.ready().await;
    (dir, watcher)
}

/// Serves the reviews app behind the inbound telemetry layer: it reads the request body
/// and answers [`RESPONSE`]. Returns the address and the stop signal.
async fn serve_reviews(
    metrics: &IstioMetrics,
    tls: Option<InboundTls>,
) -> (TcpListener, impl FnOnce(TcpListener) -> oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let layer = TelemetryLayer::inbound(metrics, reviews());
    let start = move |listener: TcpListener| {
        let app = tower::service_fn(|req: Request<Body>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(body::full(RESPONSE)))
        });
        let svc = layer.layer(app);
        let (tx, rx) = oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let options = ShutdownOptions {
            deadline: Duration::from_secs(1),
        };
        match tls {
            None => drop(tokio::spawn(server::serve(listener, svc, stop, options))),
            Some(tls) => drop(tokio::spawn(server::serve_tls(
                listener, svc, stop, options, tls,
            ))),
        }
        tx
    };
    (listener, start)
}

type Client = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, mesh_core::BoxError>;

fn client(watcher: &ConfigWatcher<Snapshot>, parts: &StackParts, layer: TelemetryLayer) -> Client {
    let stack = stack::outbound_stack(
        watcher.handle(),
        Caller::new("default"),
        parts,
        parts.connect.clone(),
    );
    tower::util::BoxCloneSyncService::new(
        layer
            .layer(stack)
            .map_response(|res: Response<_>| res.map(Body::new)),
    )
}

async fn send(client: &Client, method: &str, uri: &str, body: &'static [u8]) -> (u16, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(if body.is_empty() {
            body::empty()
        } else {
            // A streamed body, so the request bytes are counted by the wrapper.
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                body.chunks(4)
                    .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c)))),
            )))
        })
        .expect("request");
    let res = client.clone().oneshot(req).await.expect("a response");
    let status = res.status().as_u16();
    (
        status,
        res.into_body().collect().await.expect("body").to_bytes(),
    )
}

/// The series of `name` in `text` whose labels include every `label="value"` of `want`,
/// summed.
fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name).then_some((labels.trim_end_matches('}'), value))
        })
        .filter(|(labels, _)| {
            let parsed = parse_labels(labels);
            want.iter()
                .all(|(k, v)| parsed.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v.parse::<f64>().expect("a number"))
        .sum()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = v.char_indices();
        let mut end = v.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_owned(), value);
        rest = &v[end..];
    }
    out
}

/// Waits until `check` holds for `metrics`' text (the server records when its response body
/// ends, which may be just after the client got it).
async fn eventually(metrics: &IstioMetrics, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics.encode();
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn with_timeout<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// === tests ===

#[tokio::test]
async fn both_sides_report_istio_metrics_and_the_access_log() {
    let server_metrics = IstioMetrics::new();
    let client_metrics = IstioMetrics::new();
    let (listener, start) = serve_reviews(&server_metrics, None).await;
    let port = listener.local_addr().expect("addr").port();
    let (_dir, watcher) = watch(&config(port, false, "")).await;
    let stop = start(listener);

    let (reader, writer) = tokio::io::duplex(1 << 20);
    let (sink, log_writer) = AccessLogSink::from_writer(writer, AccessLogEncoding::Text, 1024);
    tokio::spawn(log_writer);
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        &watcher,
        &parts,
        TelemetryLayer::outbound(&client_metrics, productpage()).access_log(sink),
    );

    const N: usize = 5;
    const SENT: &[u8] = b"hello reviews"; // 13 bytes
    for _ in 0..N {
        let (status, body) = send(&client, "POST", "http://reviews:9080/reviews/1", SENT).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], RESPONSE);
    }
    let (status, _) = send(&client, "GET", "http://reviews:9080/fault", b"").await;
    assert_eq!(status, 500);
    let (status, _) = send(&client, "GET", "http://reviews:9080/delay", b"").await;
    assert_eq!(status, 200);
    let (status, _) = send(&client, "GET", "http://reviews:9080/uh", b"").await;
    assert_eq!(status, 503);

    let fqdn = "reviews.default.svc.cluster.local";
    let ok = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        ("source_canonical_service", "productpage"),
        ("destination_workload", "reviews-v1"),
        ("destination_version", "v1"),
        ("destination_service", fqdn),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("request_protocol", "http"),
        ("connection_security_policy", "unknown"),
        ("source_principal", "unknown"),
    ];
    let text = client_metrics.encode();
    let n = N as f64;
    assert_eq!(sum(&text, "istio_requests_total", &ok), n, "{text}");
    assert_eq!(
        sum(&text, "istio_request_duration_milliseconds_count", &ok),
        n
    );
    assert_eq!(sum(&text, "istio_request_bytes_count", &ok), n);
    assert_eq!(
        sum(&text, "istio_request_bytes_sum", &ok),
        n * SENT.len() as f64
    );
    assert_eq!(
        sum(&text, "istio_response_bytes_sum", &ok),
        n * RESPONSE.len() as f64
    );
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
    assert!(!text.contains("otel_scope"));
    // Local replies, with their flags.
    let fault = [
        ("reporter", "source"),
        ("response_code", "500"),
        ("response_flags", "FI"),
        ("destination_service", fqdn),
        ("destination_workload", "unknown"),
    ];
    assert_eq!(sum(&text, "istio_requests_total", &fault), 1.0, "{text}");
    let delay = [("response_code", "200"), ("response_flags", "DI")];
    assert_eq!(sum(&text, "istio_requests_total", &delay), 1.0, "{text}");
    let uh = [("response_code", "503"), ("response_flags", "UH")];
    assert_eq!(sum(&text, "istio_requests_total", &uh), 1.0, "{text}");

    // The server's side: the same requests, with the source from the baggage header.
    let server = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_principal", "unknown"),
        ("destination_workload", "reviews-v1"),
        ("destination_app", "reviews"),
        ("destination_service", fqdn),
        ("connection_security_policy", "none"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let text = eventually(&server_metrics, "the server's requests", |t| {
        sum(t, "istio_requests_total", &server) == n + 1.0
    })
    .await;
    assert_eq!(
        sum(&text, "istio_request_bytes_sum", &server),
        n * SENT.len() as f64
    );
    assert_eq!(
        sum(&text, "istio_response_bytes_sum", &server),
        (n + 1.0) * RESPONSE.len() as f64
    );
    assert_eq!(
        sum(&text, "istio_request_duration_milliseconds_count", &server),
        n + 1.0
    );
    assert_eq!(
        sum(&text, "istio_requests_total", &[("reporter", "source")]),
        0.0
    );

    // The access log: one line per request, parsed back.
    let mut lines = BufReader::new(reader).lines();
    let mut entries = Vec::new();
    while entries.len() < N + 3 {
        let line = with_timeout("an access log line", lines.next_line())
            .await
            .expect("read")
            .expect("a line");
        entries.push(AccessLogEntry::parse_text(&format!("{line}\n")).expect("parses"));
    }
    let first = &entries[0];
    assert_eq!(first.method.as_deref(), Some("POST"));
    assert_eq!(first.path.as_deref(), Some("/reviews/1"));
    assert_eq!(first.response_code, 200);
    assert_eq!(first.bytes_received, SENT.len() as u64);
    assert_eq!(first.bytes_sent, RESPONSE.len() as u64);
    assert_eq!(first.authority.as_deref(), Some("reviews:9080"));
    assert_eq!(
        first.upstream_host.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        first.upstream_cluster.as_deref(),
        Some("outbound|9080|v1|reviews.default.svc.cluster.local")
    );
    let flags: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e.response_code, e.response_flags))
        .collect();
    assert_eq!(&flags[N..], ["500 FI", "200 DI", "503 UH"]);
    let _ = stop.send(());
}

#[tokio::test]
async fn no_route_is_counted_as_404_nr() {
    let metrics = IstioMetrics::new();
    let (_dir, watcher) = watch(&config(9, false, "")).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        &watcher,
        &parts,
        TelemetryLayer::outbound(&metrics, productpage()),
    );
    let (status, _) = send(&client, "GET", "http://details:9080/other", b"").await;
    assert_eq!(status, 404);
    let text = metrics.encode();
    let nr = [
        ("response_code", "404"),
        ("response_flags", "NR"),
        ("destination_workload", "unknown"),
    ];
    assert_eq!(sum(&text, "istio_requests_total", &nr), 1.0, "{text}");
}

fn identity(ca: &CertificateAuthority, sa: &str) -> IdentityWatch {
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let id = Identity::in_default_trust_domain("default", sa).expect("identity");
    let bundle = ca
        .issue(&id, &key, Duration::from_secs(3600))
        .expect("issue");
    let tls = TlsIdentity::from_pem(
        bundle.chain_pem(),
        key.to_pem().expose_secret(),
        ca.trust_bundle_pem(),
    )
    .expect("credentials");
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(tls)));
    std::mem::forget(tx);
    rx
}

#[tokio::test]
async fn over_mutual_tls_the_destination_reports_the_callers_spiffe_id() {
    let ca = Arc::new(CertificateAuthority::self_signed(&CaOptions::root()).expect("CA"));
    let server_metrics = IstioMetrics::new();
    let client_metrics = IstioMetrics::new();
    let acceptor = TlsAcceptor::new(identity(&ca, "reviews")).expect("acceptor");
    let tls = InboundTls::new(acceptor, || InboundMode::Strict);
    let (listener, start) = serve_reviews(&server_metrics, Some(tls)).await;
    let port = listener.local_addr().expect("addr").port();
    let (_dir, watcher) = watch(&config(port, true, "")).await;
    let stop = start(listener);

    let snapshots: Arc<ArcSwap<Snapshot>> = watcher.handle();
    let client_identity = identity(&ca, "productpage");
    let connect = Connect::builder()
        .mutual_tls(client_identity.clone(), move |a| {
            policy::upstream_tls(&snapshots.load(), a)
        })
        .build();
    let parts = StackParts::with_connect(connect);
    let client = client(
        &watcher,
        &parts,
        TelemetryLayer::outbound(&client_metrics, productpage()),
    );
    for _ in 0..3 {
        let (status, _) = send(&client, "GET", "http://reviews:9080/", b"").await;
        assert_eq!(status, 200);
    }
    let productpage_id = "spiffe://cluster.local/ns/default/sa/productpage";
    let reviews_id = "spiffe://cluster.local/ns/default/sa/reviews";
    let server = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", productpage_id),
        ("source_workload", "productpage-v1"),
        ("destination_principal", reviews_id),
        ("response_code", "200"),
    ];
    eventually(&server_metrics, "mutual TLS requests", |t| {
        sum(t, "istio_requests_total", &server) == 3.0
    })
    .await;
    let _counters = MeshCounters::new().certificate(&client_metrics, client_identity);
    let text = client_metrics.encode();
    let expiry = sum(&text, "mesh_certificate_expiry_seconds", &[]);
    assert!((3000.0..=3600.0).contains(&expiry), "{text}");
    let source = [
        ("reporter", "source"),
        ("source_principal", productpage_id),
        ("destination_principal", reviews_id),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(sum(&text, "istio_requests_total", &source), 3.0, "{text}");
    let _ = stop.send(());
}

#[tokio::test]
async fn circuit_breaker_overflows_are_counted_as_uo_and_by_the_mesh_counter() {
    let server_metrics = IstioMetrics::new();
    let metrics = IstioMetrics::new();
    let (listener, start) = serve_reviews(&server_metrics, None).await;
    let port = listener.local_addr().expect("addr").port();
    let pool = "trafficPolicy: { connectionPool: { http: { http2MaxRequests: 1 } } }";
    let (_dir, watcher) = watch(&config(port, false, pool)).await;
    let stop = start(listener);
    let parts = StackParts::new(Duration::from_secs(2));
    let _counters = MeshCounters::new()
        .breakers(&metrics, parts.breakers.clone())
        .retries(&metrics, parts.retry_stats.clone());
    let client = client(
        &watcher,
        &parts,
        TelemetryLayer::outbound(&metrics, productpage()),
    );
    let (a, b) = tokio::join!(
        send(&client, "GET", "http://reviews:9080/slow", b""),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            send(&client, "GET", "http://reviews:9080/slow", b"").await
        }
    );
    assert_eq!((a.0, b.0), (200, 503));
    let text = metrics.encode();
    let uo = [("response_code", "503"), ("response_flags", "UO")];
    assert_eq!(sum(&text, "istio_requests_total", &uo), 1.0, "{text}");
    assert_eq!(
        sum(&text, "mesh_upstream_rq_pending_overflow_total", &[]),
        1.0,
        "{text}"
    );
    assert!(text.contains("# TYPE mesh_retries_total counter"));
    let _ = stop.send(());
}
