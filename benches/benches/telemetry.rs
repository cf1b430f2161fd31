//! The cost of the telemetry layer (Istio's request metrics; access log off, as Istio's
//! default) per request and side, against the same service without it.
//!
//! Each case sends `GET http://reviews:9080/reviews/0` and reads the whole response body (a
//! 20-byte body, so the body wrapper records the request at its end). The outbound cases
//! answer with a [`PickedEndpoint`] as the balancer would; the inbound cases carry a verified
//! [`PeerIdentity`] and the caller's `baggage`, as over mutual TLS. The last pair puts the
//! layer over the whole outbound stack (route, retry, balance) to show it in proportion.
//! Subtract each `bare` case from its `telemetry` case to get the layer's own cost.

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
    target::PickedEndpoint,
    telemetry::{
        layer::{LocalWorkload, TelemetryLayer},
        metrics::IstioMetrics,
    },
    tls::PeerIdentity,
};
use tower::{Layer, ServiceExt};

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
    let app = tower::service_fn(|_req: http::Request<Body>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new(body::full(
            RESPONSE,
        ))))
    });
    let id: Identity = "spiffe://cluster.local/ns/default/sa/productpage"
        .parse()
        .unwrap();
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

criterion_group!(benches, bench);
criterion_main!(benches);
