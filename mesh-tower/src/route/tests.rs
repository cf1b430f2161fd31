use std::collections::BTreeMap;

use mesh_core::{config::load_str, snapshot::Snapshot};
use tower::ServiceExt;

use super::*;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1 }
spec: { address: 127.0.0.1, ports: { http: 20003 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2 }
spec: { address: 127.0.0.1, ports: { http: 20004 }, labels: { app: reviews, version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route:
    - destination: { host: reviews, subset: v2 }
      headers: { request: { set: { x-version: v2 } } }
  - match: [{ uri: { prefix: /reviews } }]
    route: [{ destination: { host: reviews, subset: v1, port: { number: 9999 } } }]
"#;

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    Arc::new(Snapshot::build(&loaded.resources).unwrap())
}

fn req(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

#[test]
fn decides_target_from_the_matching_rule() {
    let s = snapshot(CONFIG);
    let caller = Caller::new("default");
    let mut r = req("http://reviews:9080/reviews/1");
    r.headers_mut().insert("end-user", "jason".parse().unwrap());
    let (t, h) = decide(&s, &caller, &r, 0).unwrap();
    assert_eq!(&*t.host, "reviews.default.svc.cluster.local");
    assert_eq!(t.subset.as_deref(), Some("v2"));
    assert_eq!(
        t.port, 9080,
        "the request's port when the destination names none"
    );
    assert_eq!(t.route.as_ref().unwrap().index, 0);
    assert_eq!(h.unwrap().0.request_set[0].0, "x-version");

    let (t, h) = decide(&s, &caller, &req("http://reviews:9080/reviews/1"), 0).unwrap();
    assert_eq!(t.subset.as_deref(), Some("v1"));
    assert_eq!(t.port, 9999, "the destination's port wins");
    assert!(h.is_none());
}

#[test]
fn no_matching_rule_is_no_route_and_unknown_hosts_take_the_default_route() {
    let s = snapshot(CONFIG);
    let caller = Caller::new("default");
    let err = decide(&s, &caller, &req("http://reviews:9080/other"), 0).unwrap_err();
    assert_eq!(&*err.host, "reviews.default.svc.cluster.local");
    let (t, _) = decide(&s, &caller, &req("http://httpbin.org/get"), 0).unwrap();
    assert_eq!(
        (&*t.host, t.port, t.route.is_none()),
        ("httpbin.org", 80, true)
    );
    let (t, _) = decide(&s, &caller, &req("https://httpbin.org/get"), 0).unwrap();
    assert_eq!(t.port, 443);
}

#[test]
fn host_header_is_used_when_the_uri_has_no_authority() {
    let s = snapshot(CONFIG);
    let mut r = req("/reviews/1");
    r.headers_mut()
        .insert(http::header::HOST, "reviews:9080".parse().unwrap());
    let (t, _) = decide(&s, &Caller::new("default"), &r, 0).unwrap();
    assert_eq!(t.subset.as_deref(), Some("v1"));
}

#[test]
fn gateway_callers_use_gateway_rules() {
    let mut yaml = CONFIG.to_owned();
    yaml.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: gw }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: 8080, name: http, protocol: HTTP }, hosts: ["*"] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: edge }
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{ uri: { exact: /productpage } }]
    route: [{ destination: { host: productpage, port: { number: 9080 } } }]
"#,
    );
    let s = snapshot(&yaml);
    let labels: BTreeMap<String, String> = [("istio".into(), "ingressgateway".into())].into();
    let gw = Caller::new("default").labels(labels).gateway(true);
    let (t, _) = decide(&s, &gw, &req("http://127.0.0.1:8080/productpage"), 0).unwrap();
    assert_eq!(&*t.host, "productpage.default.svc.cluster.local");
    assert_eq!(t.port, 9080);
    assert!(decide(&s, &gw, &req("http://127.0.0.1:8080/admin"), 0).is_err());
    // A gateway does not use the mesh rules: reviews is unknown to it.
    assert!(decide(&s, &gw, &req("http://reviews:9080/reviews/1"), 0).is_err());
}

#[tokio::test]
async fn layer_inserts_the_target_and_fails_fast_without_route() {
    let s = snapshot(CONFIG);
    let svc = tower::service_fn(|req: http::Request<()>| async move {
        let t = req
            .extensions()
            .get::<Target>()
            .cloned()
            .expect("target set");
        Ok::<_, std::convert::Infallible>(t.subset)
    });
    let mut svc = RouteLayer::new(s, Caller::new("default")).layer(svc);
    let subset = svc
        .ready()
        .await
        .unwrap()
        .call(req("http://reviews:9080/reviews/0"))
        .await
        .unwrap();
    assert_eq!(subset.as_deref(), Some("v1"));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req("http://reviews:9080/nope"))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<NoRoute>().is_some(), "{err}");
}

#[tokio::test]
async fn a_swapped_snapshot_applies_to_the_next_request() {
    let swap = Arc::new(ArcSwap::from(snapshot(CONFIG)));
    let svc = tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, std::convert::Infallible>(req.extensions().get::<Target>().unwrap().subset.clone())
    });
    let mut svc = RouteLayer::from_shared(swap.clone(), Caller::new("default")).layer(svc);
    let r = || req("http://reviews:9080/reviews/0");
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(r())
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );
    swap.store(snapshot(
        &CONFIG.replace("subset: v1, port", "subset: v2, port"),
    ));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(r())
            .await
            .unwrap()
            .as_deref(),
        Some("v2")
    );
}

#[test]
fn a_plain_snapshot_source_knows_its_own_copies() {
    let source = Snapshot::build(
        &mesh_core::config::load_str(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}]}\n",
            None,
        )
        .resources,
    )
    .unwrap();
    let copy = source.snapshot();
    assert!(source.is_current(&copy));
    assert!(!source.is_current(&Arc::new(Snapshot::default())));
}
