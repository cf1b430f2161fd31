//! The cost of the telemetry layer (Istio's request metrics; access log off, as Istio's
//! default) per request and side, against the same service without it.
//!
//! Each case sends `GET http://reviews:9080/reviews/0` and reads the whole response body (a
//! 20-byte body, so the body wrapper records the request at its end). The outbound cases
//! answer with a [`PickedEndpoint`] as the balancer would; the inbound cases carry a verified
//! [`PeerIdentity`] and the caller's `baggage`, as over mutual TLS. The last pair puts the
//! layer over the whole outbound stack (route, retry, balance) to show it in proportion.
//! Subtract each `bare` case from its `telemetry` case to get the layer's own cost.
//!
//! The `trace` group measures the trace layer alone (`<side>/trace/<case>`) and the
//! telemetry and trace layers together as `Mesh` stacks them (`<side>/pair/<case>`), against
//! `<side>/bare` from the same run, in these cases:
//!
//! - `untraced`: no exporter, no incoming trace context: the fast path every request of a
//!   mesh without tracing takes (inbound it only ensures `x-request-id`);
//! - `unsampled`: an exporter is configured, the request starts a trace that is not sampled
//!   (sampling 0 %): ids and headers are propagated, no span is built;
//! - `sampled`: an exporter is configured and every request is sampled (100 %): the cost
//!   of building, ending and exporting a span with Istio's attributes, through a span
//!   exporter that discards (so no network is involved) and the simple span processor (so
//!   the export runs on the measured thread; the mesh's batch processor does the same work on
//!   its own task);
//! - `w3c` / `b3`: no exporter, the request carries a sampled W3C `traceparent` or B3 multi
//!   headers: the context is extracted and carried on unchanged (compare with
//!   `<side>/bare+w3c` and `<side>/bare+b3`, the same requests without the layers);
//! - `hop` (inbound): an exporter is configured with Istio's 1 % sampling and the request
//!   comes from another workload of the mesh, with the unsampled context it writes (W3C and
//!   B3, and its `x-request-id`): the inbound request of a traced mesh at every hop after the
//!   edge (compare with `inbound/bare+hop`).
//!   Outbound, those headers are the ones an application forwards by hand; `outbound/*/scoped`
//!   is the common outbound case instead, a call made while handling a traced inbound
//!   request (the parent comes from the task-local [`trace::current`]; compare with
//!   `outbound/bare+scope`).
//!
//! Outbound, the leaf stands in for the route layer (it fills the route slot and inserts the
//! [`Target`]) and the connection pools under [`RecordTarget`], as in `Mesh::http_client`.

use std::{
    collections::BTreeMap, convert::Infallible, hint::black_box, sync::Arc, time::SystemTime,
};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use mesh_core::{
    config::load_str,
    identity::Identity,
    snapshot::{Endpoint, Snapshot},
};
use mesh_tower::{
    body::{self, Body},
    mesh::Workload,
    route::Caller,
    stack::{StackParts, outbound_over},
    target::{PickedEndpoint, Target},
    telemetry::{
        layer::{LocalWorkload, RouteSlot, TelemetryLayer},
        metrics::IstioMetrics,
        propagation::{TraceContext, extract},
        trace::{self, RecordTarget, RequestTrace, TraceLayer, Tracing},
    },
    tls::PeerIdentity,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const RESPONSE: &[u8] = b"reviews says hello!!";

fn picked() -> PickedEndpoint {
    PickedEndpoint {
        endpoint: Arc::new(Endpoint {
            address: "10.0.0.7".into(),
            ports: BTreeMap::new(),
            labels: [
                ("app".to_owned(), "reviews".to_owned()),
                ("version".to_owned(), "v1".to_owned()),
            ]
            .into(),
            service_account: "bookinfo-reviews".into(),
            namespace: "default".into(),
            weight: 1,
            workload: None,
        }),
        authority: "10.0.0.7:9080".parse().unwrap(),
    }
}

/// The application behind the inbound stacks: a 1 KB response.
async fn app(_req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    Ok(http::Response::new(body::full(RESPONSE)))
}

/// The caller's verified identity on inbound requests.
fn productpage_id() -> Identity {
    "spiffe://cluster.local/ns/default/sa/productpage"
        .parse()
        .expect("a SPIFFE id")
}

fn productpage() -> LocalWorkload {
    LocalWorkload::from_workload(
        &Workload::new("productpage-v1", "default")
            .label("app", "productpage")
            .label("version", "v1"),
    )
}

fn reviews() -> LocalWorkload {
    LocalWorkload::from_workload(
        &Workload::new("reviews-v1", "default")
            .label("app", "reviews")
            .label("version", "v1"),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = IstioMetrics::new();
    let picked = picked();
    let mut group = c.benchmark_group("telemetry");

    macro_rules! case {
        ($name:literal, $svc:expr, $req:expr) => {{
            let svc = $svc;
            let req = $req;
            group.bench_function($name, |b| {
                b.to_async(&rt).iter(|| {
                    let svc = svc.clone();
                    let req = req();
                    async move {
                        let res = svc.oneshot(req).await.unwrap();
                        black_box(res.into_body().collect().await.unwrap().to_bytes())
                    }
                })
            });
        }};
    }

    // --- outbound (reporter="source") ---
    let p = picked.clone();
    let leaf = tower::service_fn(move |_req: http::Request<Body>| {
        let mut res = http::Response::new(body::full(RESPONSE));
        res.extensions_mut().insert(p.clone());
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let outbound_req = || {
        http::Request::get("http://reviews:9080/reviews/0")
            .body(body::empty())
            .unwrap()
    };
    case!("outbound/bare", leaf.clone(), outbound_req);
    case!(
        "outbound/telemetry",
        TelemetryLayer::outbound(&metrics, productpage()).layer(leaf.clone()),
        outbound_req
    );

    // --- inbound (reporter="destination") ---
    let app = tower::service_fn(app);
    let id = productpage_id();
    let baggage = productpage().baggage();
    let inbound_req = move || {
        let mut req = http::Request::get("/reviews/0")
            .header("baggage", baggage.as_str())
            .body(body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(PeerIdentity::new(id.clone(), "01", SystemTime::UNIX_EPOCH));
        req
    };
    case!("inbound/bare", app, inbound_req.clone());
    case!(
        "inbound/telemetry",
        TelemetryLayer::inbound(&metrics, reviews()).layer(app),
        inbound_req
    );

    // --- over the whole outbound stack ---
    let loaded = load_str(benches::BOOKINFO_REVIEWS, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let snapshot = Arc::new(Snapshot::build(&loaded.resources).unwrap());
    let parts = StackParts::new(std::time::Duration::from_secs(10));
    let stack = outbound_over(
        Arc::new(ArcSwap::new(snapshot)),
        Caller::new("default"),
        &parts,
        tower::service_fn(|_req: http::Request<Body>| {
            std::future::ready(Ok::<_, Infallible>(http::Response::new(body::full(
                RESPONSE,
            ))))
        }),
    );
    let stack_req = || {
        http::Request::get("http://reviews:9080/reviews/0")
            .header("end-user", "jason")
            .body(body::empty())
            .unwrap()
    };
    case!("stack/bare", stack.clone(), stack_req);
    case!(
        "stack/telemetry",
        TelemetryLayer::outbound(&metrics, productpage()).layer(stack),
        stack_req
    );
    group.finish();
    // The scrape itself, with the series above.
    c.bench_function("telemetry/encode", |b| {
        b.iter(|| black_box(metrics.encode()))
    });
}

/// Drops every span: the sampled cases measure building, ending and handing over spans, not
/// a network.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

/// A sampled W3C parent, as a caller would send it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// A sampled B3 parent (multi headers).
const B3: [(&str, &str); 4] = [
    ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
    ("x-b3-spanid", "a2fb4a1d1a96d312"),
    ("x-b3-parentspanid", "0020000000000001"),
    ("x-b3-sampled", "1"),
];

/// What a workload of the mesh sends when its caller's trace is not sampled (a child of
/// the parent above).
const HOP: [(&str, &str); 6] = [
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-5c4a2f6e1d3b9a87-00",
    ),
    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("x-b3-spanid", "5c4a2f6e1d3b9a87"),
    ("x-b3-parentspanid", "00f067aa0ba902b7"),
    ("x-b3-sampled", "0"),
    ("x-request-id", "6ba7b810-9dad-41d1-80b4-00c04fd430c8"),
];

/// Incoming trace headers of a case.
#[derive(Clone, Copy)]
enum Context {
    None,
    W3c,
    B3,
    Hop,
}

impl Context {
    fn apply(self, headers: &mut http::HeaderMap) {
        match self {
            Self::None => {}
            Self::W3c => {
                headers.insert("traceparent", http::HeaderValue::from_static(TRACEPARENT));
            }
            Self::B3 => {
                for (k, v) in B3 {
                    headers.insert(k, http::HeaderValue::from_static(v));
                }
            }
            Self::Hop => {
                for (k, v) in HOP {
                    headers.insert(k, http::HeaderValue::from_static(v));
                }
            }
        }
    }
}

/// Sends `req()` through `svc` and reads the whole body, per iteration, with `parent` as the
/// task-local trace (the same for every case of a side, so its cost cancels out).
fn run<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    req: impl Fn() -> http::Request<Body>,
    parent: Option<RequestTrace>,
) where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let svc = svc.clone();
            let req = req();
            trace::scope(parent.clone(), async move {
                let res = svc.oneshot(req).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
}

fn trace_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = IstioMetrics::new();
    let reviews_workload = Workload::new("reviews-v1", "default")
        .label("app", "reviews")
        .label("version", "v1");
    let productpage_workload = Workload::new("productpage-v1", "default")
        .label("app", "productpage")
        .label("version", "v1");
    // An exporter's batch processor or simple processor needs the runtime when built.
    let tracings = {
        let _guard = rt.enter();
        let with_exporter = |w: &Workload, sampling: f64| {
            Tracing::builder()
                .workload(w)
                .sampling(sampling)
                .simple_exporter(Discard)
                .build()
                .unwrap()
        };
        [
            ("untraced", Tracing::disabled(), Context::None),
            (
                "unsampled",
                with_exporter(&productpage_workload, 0.0),
                Context::None,
            ),
            (
                "sampled",
                with_exporter(&productpage_workload, 100.0),
                Context::None,
            ),
            ("w3c", Tracing::disabled(), Context::W3c),
            ("b3", Tracing::disabled(), Context::B3),
        ]
    };
    let mut group = c.benchmark_group("trace");
    group
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));

    // --- outbound: Telemetry → Trace → (route) → RecordTarget → connection pools ---
    let loaded = load_str(benches::BOOKINFO_REVIEWS, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let target = Target {
        snapshot: Arc::new(Snapshot::build(&loaded.resources).unwrap()),
        route: None,
        match_index: None,
        host: Arc::from("reviews.default.svc.cluster.local"),
        subset: Some(Arc::from("v1")),
        port: 9080,
    };
    let p = picked();
    let leaf = ServiceBuilder::new()
        .map_request(move |mut req: http::Request<Body>| {
            // What the route layer does with its decision.
            if let Some(slot) = req.extensions().get::<RouteSlot>() {
                slot.set(&target);
            }
            req.extensions_mut().insert(target.clone());
            req
        })
        .service(RecordTarget::new(tower::service_fn(
            move |_req: http::Request<Body>| {
                let mut res = http::Response::new(body::full(RESPONSE));
                res.extensions_mut().insert(p.clone());
                std::future::ready(Ok::<_, Infallible>(res))
            },
        )));
    let outbound_req = |ctx: Context| {
        move || {
            let mut req = http::Request::get("http://reviews:9080/reviews/0")
                .body(body::empty())
                .unwrap();
            ctx.apply(req.headers_mut());
            req
        }
    };
    let outbound_telemetry = TelemetryLayer::outbound(&metrics, productpage());
    run(
        &mut group,
        &rt,
        "outbound/bare",
        leaf.clone(),
        outbound_req(Context::None),
        None,
    );
    // The same requests with their trace headers, without the layers.
    for (name, ctx) in [("w3c", Context::W3c), ("b3", Context::B3)] {
        run(
            &mut group,
            &rt,
            &format!("outbound/bare+{name}"),
            leaf.clone(),
            outbound_req(ctx),
            None,
        );
    }
    for (name, tracing, ctx) in &tracings {
        let traced = TraceLayer::outbound(tracing.clone()).layer(leaf.clone());
        run(
            &mut group,
            &rt,
            &format!("outbound/trace/{name}"),
            traced.clone(),
            outbound_req(*ctx),
            None,
        );
        run(
            &mut group,
            &rt,
            &format!("outbound/pair/{name}"),
            outbound_telemetry.layer(traced),
            outbound_req(*ctx),
            None,
        );
    }
    // A call made while serving a traced request: the parent is the task-local.
    let mut headers = http::HeaderMap::new();
    Context::W3c.apply(&mut headers);
    let parent = RequestTrace {
        context: extract(&headers).map_or_else(|| TraceContext::new_root(true), |c| c.child()),
        request_id: Some(http::HeaderValue::from_static(
            "6ba7b810-9dad-41d1-80b4-00c04fd430c8",
        )),
    };
    run(
        &mut group,
        &rt,
        "outbound/bare+scope",
        leaf.clone(),
        outbound_req(Context::None),
        Some(parent.clone()),
    );
    let traced = TraceLayer::outbound(Tracing::disabled()).layer(leaf.clone());
    run(
        &mut group,
        &rt,
        "outbound/trace/scoped",
        traced.clone(),
        outbound_req(Context::None),
        Some(parent.clone()),
    );
    run(
        &mut group,
        &rt,
        "outbound/pair/scoped",
        outbound_telemetry.layer(traced),
        outbound_req(Context::None),
        Some(parent),
    );

    // --- inbound: Telemetry → Trace → app (authorization left out) ---
    let app = tower::service_fn(app);
    let id = productpage_id();
    let baggage = productpage().baggage();
    let inbound_req = |ctx: Context| {
        let id = id.clone();
        let baggage = baggage.clone();
        move || {
            let mut req = http::Request::get("/reviews/0")
                .header("host", "reviews:9080")
                .header("baggage", baggage.as_str())
                .body(body::empty())
                .unwrap();
            ctx.apply(req.headers_mut());
            req.extensions_mut().insert(PeerIdentity::new(
                id.clone(),
                "01",
                SystemTime::UNIX_EPOCH,
            ));
            req
        }
    };
    let inbound_telemetry = TelemetryLayer::inbound(&metrics, reviews());
    run(
        &mut group,
        &rt,
        "inbound/bare",
        app,
        inbound_req(Context::None),
        None,
    );
    for (name, ctx) in [
        ("w3c", Context::W3c),
        ("b3", Context::B3),
        ("hop", Context::Hop),
    ] {
        run(
            &mut group,
            &rt,
            &format!("inbound/bare+{name}"),
            app,
            inbound_req(ctx),
            None,
        );
    }
    let inbound_tracings = {
        let _guard = rt.enter();
        let with_exporter = |sampling: f64| {
            Tracing::builder()
                .workload(&reviews_workload)
                .sampling(sampling)
                .simple_exporter(Discard)
                .build()
                .unwrap()
        };
        [
            ("untraced", Tracing::disabled(), Context::None),
            ("unsampled", with_exporter(0.0), Context::None),
            ("sampled", with_exporter(100.0), Context::None),
            ("w3c", Tracing::disabled(), Context::W3c),
            ("b3", Tracing::disabled(), Context::B3),
            ("hop", with_exporter(1.0), Context::Hop),
        ]
    };
    for (name, tracing, ctx) in &inbound_tracings {
        let traced = TraceLayer::inbound(tracing.clone()).port(9080).layer(app);
        run(
            &mut group,
            &rt,
            &format!("inbound/trace/{name}"),
            traced.clone(),
            inbound_req(*ctx),
            None,
        );
        run(
            &mut group,
            &rt,
            &format!("inbound/pair/{name}"),
            inbound_telemetry.layer(traced),
            inbound_req(*ctx),
            None,
        );
    }
    group.finish();
}

criterion_group!(benches, bench, trace_bench);
criterion_main!(benches);
