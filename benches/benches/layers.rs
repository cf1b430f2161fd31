//! The cost of each outbound layer, and of the whole outbound stack, against a bare
//! `service_fn` that answers at once (no network: this isolates the mesh's own work).
//!
//! Every case sends `GET http://reviews:9080/reviews/0` with `end-user: jason`, routed by a
//! VirtualService with a header match and an 80/20 split to two subsets of three endpoints.

use std::{convert::Infallible, hint::black_box, sync::Arc};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::{config::load_str, policy::retry::RetryPolicy, snapshot::Snapshot};
use mesh_tower::{
    balance::{BalanceLayer, EndpointStats},
    body::{self, Body},
    fault::FaultLayer,
    rescue::RescueLayer,
    retry::RetryLayer,
    route::{Caller, RouteLayer},
    stack::{StackParts, outbound_over},
    timeout::RouteTimeoutLayer,
};
use tower::{ServiceBuilder, ServiceExt};

fn snapshot() -> Arc<Snapshot> {
    let loaded = load_str(benches::BOOKINFO_REVIEWS, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    Arc::new(Snapshot::build(&loaded.resources).unwrap())
}

fn request() -> http::Request<Body> {
    http::Request::get("http://reviews:9080/reviews/0")
        .header("end-user", "jason")
        .body(body::empty())
        .unwrap()
}

async fn leaf(_req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    Ok(http::Response::new(body::empty()))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = snapshot();
    let caller = Caller::new("default");
    let mut group = c.benchmark_group("outbound_layers");

    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            group.bench_function($name, |b| {
                b.to_async(&rt).iter(|| {
                    let svc = svc.clone();
                    async move { black_box(svc.oneshot(request()).await.unwrap()) }
                })
            });
        }};
    }

    case!("bare_service_fn", tower::service_fn(leaf));
    case!(
        "route",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .service_fn(leaf)
    );
    // The layers below route read the Target the route layer inserts; each case is route +
    // that layer, so subtract `route` to get the layer's own cost.
    case!(
        "route+timeout",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .layer(RouteTimeoutLayer::from_target())
            .service_fn(leaf)
    );
    case!(
        "route+fault",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .layer(FaultLayer::from_target())
            .service_fn(leaf)
    );
    case!(
        "route+retry(mesh default)",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .layer(RetryLayer::from_target())
            .service_fn(leaf)
    );
    case!(
        "route+retry(disabled)",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .layer(RetryLayer::new(RetryPolicy::Disabled))
            .service_fn(leaf)
    );
    case!(
        "route+balance",
        ServiceBuilder::new()
            .layer(RouteLayer::new(snap.clone(), caller.clone()))
            .layer(BalanceLayer::from_target(EndpointStats::new()))
            .service_fn(leaf)
    );
    // A fixed list of many endpoints (no route): least request draws two endpoints and
    // compares them, whatever the count; up to 16 it passes over all of them.
    for n in [16u32, 1_000] {
        let endpoints: Vec<_> = (0..n)
            .map(|i| {
                Arc::new(mesh_core::snapshot::Endpoint {
                    address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    ports: [("http".to_owned(), 9080)].into(),
                    labels: Default::default(),
                    service_account: "reviews".to_owned(),
                    namespace: "default".to_owned(),
                    weight: 1,
                    workload: None,
                })
            })
            .collect();
        let svc = ServiceBuilder::new()
            .layer(BalanceLayer::new(
                endpoints,
                mesh_core::policy::balance::Algorithm::LeastRequest,
            ))
            .service_fn(leaf);
        group.bench_function(format!("balance(least request, {n} endpoints)"), |b| {
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { black_box(svc.oneshot(request()).await.unwrap()) }
            })
        });
    }
    // The same through the route layer, from a snapshot: a ServiceEntry selecting 1,000
    // WorkloadEntries (the snapshot knows the list's weights are equal, so least request
    // reads no endpoint but the two it draws).
    let mut yaml = String::new();
    for i in 0..1_000u32 {
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: big-{i}, namespace: default }}
spec: {{ address: 10.1.{}.{}, labels: {{ app: big }}, ports: {{ http: 9080 }} }}
---
",
            i / 250,
            i % 250 + 1
        ));
    }
    yaml.push_str(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: big, namespace: default }
spec:
  hosts: [big.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  workloadSelector: { labels: { app: big } }
",
    );
    let loaded = load_str(&yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let big = Arc::new(Snapshot::build(&loaded.resources).unwrap());
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(big, caller.clone()))
        .layer(BalanceLayer::from_target(EndpointStats::new()))
        .service_fn(leaf);
    group.bench_function("route+balance(least request, 1000 workloads)", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            let req = http::Request::get("http://big:9080/")
                .body(body::empty())
                .unwrap();
            async move { black_box(svc.oneshot(req).await.unwrap()) }
        })
    });
    case!(
        "rescue",
        ServiceBuilder::new()
            .layer(RescueLayer::new())
            .service_fn(leaf)
    );
    let parts = StackParts::new(std::time::Duration::from_secs(10));
    let source = Arc::new(ArcSwap::from(snap.clone()));
    case!(
        "whole_outbound_stack",
        outbound_over(source, caller.clone(), &parts, tower::service_fn(leaf))
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
