use std::{collections::BTreeMap, sync::Arc};

use http::{Request, Response};
use mesh_core::{
    BoxError,
    config::load_str,
    policy::balance::Algorithm,
    snapshot::{Endpoint, Snapshot},
};
use tokio_test::assert_ready_ok;
use tower_test::mock::{self, Handle, Spawn};

use super::{Balance, BalanceLayer, EndpointStats};
use crate::{
    body::{self, Body},
    error::{NoHealthyUpstream, cause_ref},
    target::{PickedEndpoint, Target, TriedEndpoints},
};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Two v1 endpoints and one v2 endpoint of `reviews` (a service implied by the `app` label,
/// so it has no ports), an external ServiceEntry with a target port, a DNS ServiceEntry and
/// a static one without endpoints.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1a, namespace: default }
spec: { address: 127.0.0.1, ports: { http: 9081 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1b, namespace: default }
spec: { address: 127.0.0.2, ports: { http: 9082 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2, namespace: default }
spec: { address: 127.0.0.3, ports: { http: 9083 }, labels: { app: reviews, version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
  - { name: v3, labels: { version: v3 } }
  - name: v1-rr
    labels: { version: v1 }
    trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }
  - name: v1-hash
    labels: { version: v1 }
    trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: x-user } } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings-ext, namespace: default }
spec:
  hosts: [ratings.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: 8080 }]
  endpoints: [{ address: 127.0.0.9 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api-dns, namespace: default }
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: 8000 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: empty-static, namespace: default }
spec:
  hosts: [empty.example.com]
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
"#;

fn snapshot() -> Arc<Snapshot> {
    let loaded = load_str(MESH, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    Arc::new(Snapshot::build(&loaded.resources).expect("snapshot builds"))
}

fn target(snapshot: &Arc<Snapshot>, host: &str, subset: Option<&str>, port: u16) -> Target {
    Target {
        snapshot: snapshot.clone(),
        route: None,
        match_index: None,
        host: host.into(),
        subset: subset.map(Into::into),
        port,
    }
}

fn request(uri: &str, target: Option<Target>) -> Request<Body> {
    let mut req = Request::get(uri)
        .body(body::empty())
        .expect("valid request");
    if let Some(t) = target {
        req.extensions_mut().insert(t);
    }
    req
}

type Svc = Spawn<Balance<mock::Mock<Request<Body>, Response<Body>>>>;
type MockHandle = Handle<Request<Body>, Response<Body>>;

fn from_target() -> (Svc, MockHandle, EndpointStats) {
    let stats = EndpointStats::new();
    let (svc, handle) = mock::spawn_layer(BalanceLayer::from_target(stats.clone()));
    (svc, handle, stats)
}

/// Sends `req` through the balancer, answers it from the mock with 200 and returns what the
/// inner service received and the response.
async fn roundtrip(
    svc: &mut Svc,
    handle: &mut MockHandle,
    req: Request<Body>,
) -> (Request<Body>, Response<Body>) {
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);
    let (sent, send) = handle.next_request().await.expect("request reaches inner");
    let seen = copy(&sent);
    send.send_response(Response::new(body::empty()));
    let res = fut.await.expect("response");
    (seen, res)
}

/// The parts of a request the tests look at (bodies are not `Clone`).
fn copy(req: &Request<Body>) -> Request<Body> {
    let mut out = Request::builder()
        .uri(req.uri().clone())
        .body(body::empty())
        .expect("valid request");
    *out.headers_mut() = req.headers().clone();
    out
}

async fn failure(svc: &mut Svc, req: Request<Body>) -> BoxError {
    assert_ready_ok!(svc.poll_ready());
    svc.call(req).await.expect_err("balancer fails")
}

fn endpoint(address: &str, port: u32) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        address: address.to_owned(),
        ports: BTreeMap::from([("http".to_owned(), port)]),
        labels: BTreeMap::new(),
        service_account: "default".to_owned(),
        namespace: "default".to_owned(),
        weight: 1,
        workload: None,
    })
}

#[tokio::test]
async fn rewrites_the_uri_to_the_endpoint_and_keeps_the_original_host() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let req = request(
        "http://reviews:9080/reviews/1?user=jason",
        Some(target(&snap, REVIEWS, Some("v2"), 9080)),
    );
    let (sent, res) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri(), "http://127.0.0.3:9083/reviews/1?user=jason");
    assert_eq!(sent.headers()[http::header::HOST], "reviews:9080");
    let picked = res
        .extensions()
        .get::<PickedEndpoint>()
        .expect("picked on response");
    assert_eq!(picked.authority, "127.0.0.3:9083");
    assert_eq!(picked.endpoint.labels["version"], "v2");
}

#[tokio::test]
async fn balances_over_the_whole_service_without_a_subset() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let req = request(
            "http://reviews:9080/",
            Some(target(&snap, REVIEWS, None, 9080)),
        );
        let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
        seen.insert(sent.uri().authority().expect("absolute").to_string());
    }
    let want = ["127.0.0.1:9081", "127.0.0.2:9082", "127.0.0.3:9083"];
    assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), want);
}

#[tokio::test]
async fn an_empty_subset_has_no_healthy_upstream() {
    let (mut svc, _handle, _) = from_target();
    let snap = snapshot();
    let req = request(
        "http://reviews:9080/",
        Some(target(&snap, REVIEWS, Some("v3"), 9080)),
    );
    let err = failure(&mut svc, req).await;
    let uh = cause_ref::<NoHealthyUpstream>(&*err).expect("NoHealthyUpstream");
    assert_eq!(uh.host, REVIEWS);
    assert_eq!(uh.subset.as_deref(), Some("v3"));
}

#[tokio::test]
async fn a_static_service_without_endpoints_has_no_healthy_upstream() {
    let (mut svc, _handle, _) = from_target();
    let snap = snapshot();
    let t = target(&snap, "empty.example.com", None, 80);
    let err = failure(&mut svc, request("http://empty.example.com/", Some(t))).await;
    assert!(cause_ref::<NoHealthyUpstream>(&*err).is_some(), "{err}");
}

#[tokio::test]
async fn unknown_hosts_pass_through_as_written() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let t = target(&snap, "httpbin.org", None, 8000);
    let req = request("http://httpbin.org:8000/get", Some(t));
    let (sent, res) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri(), "http://httpbin.org:8000/get");
    assert_eq!(sent.headers()[http::header::HOST], "httpbin.org:8000");
    assert_eq!(
        res.extensions()
            .get::<PickedEndpoint>()
            .expect("picked")
            .authority,
        "httpbin.org:8000"
    );
}

#[tokio::test]
async fn a_dns_service_entry_without_endpoints_connects_to_its_host_at_the_target_port() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let req = request(
        "http://api.example.com/v1",
        Some(target(&snap, "api.example.com", None, 80)),
    );
    let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri(), "http://api.example.com:8000/v1");
    assert_eq!(sent.headers()[http::header::HOST], "api.example.com");
}

#[tokio::test]
async fn service_entry_ports_map_to_their_target_port() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let req = request(
        "http://ratings.example.com/ratings/0",
        Some(target(&snap, "ratings.example.com", None, 80)),
    );
    let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri(), "http://127.0.0.9:8080/ratings/0");
}

#[tokio::test]
async fn skips_endpoints_already_tried_and_records_the_pick() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    for _ in 0..20 {
        let tried = TriedEndpoints::default();
        tried.record("127.0.0.1:9081");
        let mut req = request(
            "http://reviews:9080/",
            Some(target(&snap, REVIEWS, Some("v1"), 9080)),
        );
        req.extensions_mut().insert(tried.clone());
        let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
        assert_eq!(sent.uri().authority().expect("absolute"), "127.0.0.2:9082");
        assert_eq!(tried.len(), 2);
        assert!(tried.contains("127.0.0.2:9082"));
    }
}

#[tokio::test]
async fn tries_a_tried_endpoint_again_when_no_other_is_left() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let tried = TriedEndpoints::default();
    tried.record("127.0.0.3:9083");
    let mut req = request(
        "http://reviews:9080/",
        Some(target(&snap, REVIEWS, Some("v2"), 9080)),
    );
    req.extensions_mut().insert(tried.clone());
    let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri().authority().expect("absolute"), "127.0.0.3:9083");
    assert_eq!(tried.len(), 2);
}

#[tokio::test]
async fn round_robin_from_the_destination_rule_alternates() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let mut order = Vec::new();
    for _ in 0..4 {
        let req = request(
            "http://reviews:9080/",
            Some(target(&snap, REVIEWS, Some("v1-rr"), 9080)),
        );
        let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
        order.push(sent.uri().authority().expect("absolute").to_string());
    }
    assert_ne!(order[0], order[1]);
    assert_eq!(order[0], order[2]);
    assert_eq!(order[1], order[3]);
}

#[tokio::test]
async fn least_request_sends_to_the_idle_endpoint() {
    let (mut svc, mut handle, stats) = from_target();
    let snap = snapshot();
    let t = || Some(target(&snap, REVIEWS, Some("v1"), 9080));
    // The first request stays in flight.
    assert_ready_ok!(svc.poll_ready());
    let first = svc.call(request("http://reviews:9080/", t()));
    let (first_sent, first_send) = handle.next_request().await.expect("first request");
    let busy = first_sent.uri().authority().expect("absolute").to_string();
    assert_eq!(
        stats.in_flight(&busy[..9], busy[10..].parse().expect("port")),
        1
    );
    // With two endpoints, power of two choices compares both: the idle one wins every time.
    for _ in 0..10 {
        let (sent, _) =
            roundtrip(&mut svc, &mut handle, request("http://reviews:9080/", t())).await;
        assert_ne!(sent.uri().authority().expect("absolute").as_str(), busy);
    }
    first_send.send_response(Response::new(body::empty()));
    first.await.expect("first response");
    assert_eq!(
        stats.in_flight(&busy[..9], busy[10..].parse().expect("port")),
        0
    );
}

#[tokio::test]
async fn in_flight_ends_when_the_response_future_is_dropped() {
    let (mut svc, mut handle, stats) = from_target();
    let snap = snapshot();
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request(
        "http://reviews:9080/",
        Some(target(&snap, REVIEWS, Some("v2"), 9080)),
    ));
    let _pending = handle.next_request().await.expect("request");
    assert_eq!(stats.in_flight("127.0.0.3", 9083), 1);
    drop(fut);
    assert_eq!(stats.in_flight("127.0.0.3", 9083), 0);
}

#[tokio::test]
async fn in_flight_ends_when_the_inner_service_fails() {
    let (mut svc, mut handle, stats) = from_target();
    let snap = snapshot();
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request(
        "http://reviews:9080/",
        Some(target(&snap, REVIEWS, Some("v2"), 9080)),
    ));
    let (_, send) = handle.next_request().await.expect("request");
    send.send_error("connection refused");
    let err = fut.await.expect_err("inner error passes through");
    assert_eq!(err.to_string(), "connection refused");
    assert_eq!(stats.in_flight("127.0.0.3", 9083), 0);
}

#[tokio::test]
async fn consistent_hash_sticks_to_one_endpoint_per_key() {
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..20 {
        let mut first = None;
        for _ in 0..3 {
            let mut req = request(
                "http://reviews:9080/",
                Some(target(&snap, REVIEWS, Some("v1-hash"), 9080)),
            );
            req.headers_mut()
                .insert("x-user", format!("user-{user}").parse().expect("header"));
            let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
            let authority = sent.uri().authority().expect("absolute").to_string();
            assert!(["127.0.0.1:9081", "127.0.0.2:9082"].contains(&authority.as_str()));
            assert_eq!(first.get_or_insert_with(|| authority.clone()), &authority);
        }
        owners.extend(first);
    }
    assert_eq!(owners.len(), 2);
}

#[tokio::test]
async fn requests_without_a_target_pass_through_untouched() {
    let (mut svc, mut handle, _) = from_target();
    let req = request("http://reviews:9080/x", None);
    let (sent, res) = roundtrip(&mut svc, &mut handle, req).await;
    assert_eq!(sent.uri(), "http://reviews:9080/x");
    assert!(sent.headers().get(http::header::HOST).is_none());
    assert!(sent.extensions().get::<PickedEndpoint>().is_none());
    assert!(res.extensions().get::<PickedEndpoint>().is_none());
}

#[tokio::test]
async fn a_fixed_list_balances_without_a_target() {
    let layer = BalanceLayer::new(
        [endpoint("127.0.0.1", 7001), endpoint("127.0.0.1", 7002)],
        Algorithm::RoundRobin,
    );
    let (mut svc, mut handle) = mock::spawn_layer(layer);
    let mut order = Vec::new();
    for _ in 0..3 {
        let (sent, _) = roundtrip(&mut svc, &mut handle, request("http://backend/p", None)).await;
        assert_eq!(sent.headers()[http::header::HOST], "backend");
        order.push(sent.uri().to_string());
    }
    assert_eq!(
        order,
        [
            "http://127.0.0.1:7001/p",
            "http://127.0.0.1:7002/p",
            "http://127.0.0.1:7001/p"
        ]
    );
}

#[tokio::test]
async fn an_empty_fixed_list_has_no_healthy_upstream() {
    let (mut svc, _handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BalanceLayer::new([], Algorithm::LeastRequest),
    );
    let err = failure(&mut svc, request("http://backend:8080/", None)).await;
    let uh = cause_ref::<NoHealthyUpstream>(&*err).expect("NoHealthyUpstream");
    assert_eq!(&*uh.host, "backend");
}

#[test]
fn pruning_keeps_counters_in_use() {
    let stats = EndpointStats::new();
    let counter = stats.counter_or_insert("127.0.0.1", 1);
    let in_flight = super::stats::InFlight::start(counter);
    drop(stats.counter_or_insert("127.0.0.1", 2));
    stats.prune_idle();
    assert_eq!(stats.in_flight("127.0.0.1", 1), 1);
    assert!(format!("{stats:?}").contains("endpoints: 1"));
    drop(in_flight);
    stats.prune_idle();
    assert!(format!("{stats:?}").contains("endpoints: 0"));
}

#[tokio::test]
async fn an_unknown_cluster_local_host_has_no_healthy_upstream() {
    let (mut svc, _handle, _) = from_target();
    let snap = snapshot();
    let t = target(&snap, "ratings.default.svc.cluster.local", None, 9080);
    let err = failure(&mut svc, request("http://ratings:9080/", Some(t))).await;
    assert!(cause_ref::<NoHealthyUpstream>(&*err).is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_refused_a_connection_is_avoided_for_a_backoff() {
    use crate::error::UpstreamConnectFailure;
    let (mut svc, mut handle, stats) = from_target();
    let snap = snapshot();
    let v1 = || {
        request(
            "http://reviews:9080/",
            Some(target(&snap, REVIEWS, Some("v1"), 9080)),
        )
    };
    // Fail the first request's connection, whichever v1 endpoint it went to.
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(v1());
    let (sent, send) = handle.next_request().await.unwrap();
    let dead = sent.uri().authority().unwrap().to_string();
    send.send_error(UpstreamConnectFailure {
        endpoint: dead.clone(),
        source: "connection refused".into(),
    });
    assert!(fut.await.is_err());
    let (addr, port) = dead.split_once(':').unwrap();
    assert!(stats.is_down(addr, port.parse().unwrap()));
    // For the backoff (500 ms after a first failure), every request goes to the other one.
    for _ in 0..20 {
        let (sent, _) = roundtrip(&mut svc, &mut handle, v1()).await;
        assert_ne!(sent.uri().authority().unwrap().as_str(), dead);
    }
    // Afterwards the endpoint is tried again.
    tokio::time::advance(std::time::Duration::from_millis(501)).await;
    assert!(!stats.is_down(addr, port.parse().unwrap()));
    let mut seen_again = false;
    for _ in 0..40 {
        let (sent, _) = roundtrip(&mut svc, &mut handle, v1()).await;
        seen_again |= sent.uri().authority().unwrap().as_str() == dead;
    }
    assert!(seen_again);
}

#[tokio::test(start_paused = true)]
async fn the_only_endpoint_is_used_even_while_it_is_avoided() {
    use crate::error::UpstreamConnectFailure;
    let (mut svc, mut handle, _) = from_target();
    let snap = snapshot();
    let v2 = || {
        request(
            "http://reviews:9080/",
            Some(target(&snap, REVIEWS, Some("v2"), 9080)),
        )
    };
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(v2());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(UpstreamConnectFailure {
        endpoint: "127.0.0.3:9083".into(),
        source: "connection refused".into(),
    });
    assert!(fut.await.is_err());
    let (sent, _) = roundtrip(&mut svc, &mut handle, v2()).await;
    assert_eq!(sent.uri().authority().unwrap().as_str(), "127.0.0.3:9083");
}

#[tokio::test(start_paused = true)]
async fn pruning_keeps_ejected_endpoints() {
    use mesh_core::policy::outlier::{Outcome, OutlierPolicy};
    let stats = EndpointStats::new();
    let counter = stats.counter_or_insert("127.0.0.1", 1);
    let policy = OutlierPolicy::default().consecutive_5xx(1);
    counter.record_outcome(&policy, Outcome::Response(500), stats.now_ms(), || true);
    drop(counter);
    assert!(stats.ejected("127.0.0.1", 1));
    stats.prune_idle();
    assert!(stats.ejected("127.0.0.1", 1));
    assert_eq!(stats.ejections("127.0.0.1", 1), 1);
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    stats.prune_idle();
    assert!(format!("{stats:?}").contains("endpoints: 0"));
}

/// `mesh_outlier_ejections_total` is a Prometheus counter: pruning an endpoint that was
/// ejected once (and is back, idle) must not take its ejections out of the total.
#[tokio::test(start_paused = true)]
async fn the_ejection_total_survives_pruning() {
    use mesh_core::policy::outlier::{Outcome, OutlierPolicy};
    let stats = EndpointStats::new();
    let policy = OutlierPolicy::default().consecutive_5xx(1);
    for port in [1, 2] {
        let counter = stats.counter_or_insert("127.0.0.1", port);
        counter.record_outcome(&policy, Outcome::Response(500), stats.now_ms(), || true);
    }
    assert_eq!(stats.total_ejections(), 2);
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    stats.prune_idle();
    assert!(format!("{stats:?}").contains("endpoints: 0"));
    assert_eq!(stats.total_ejections(), 2);
    // Seen again and ejected again: counted on top.
    let counter = stats.counter_or_insert("127.0.0.1", 1);
    counter.record_outcome(&policy, Outcome::Response(500), stats.now_ms(), || true);
    assert_eq!(stats.total_ejections(), 3);
}

// === many endpoints: least request and random without a pass over all of them ===

/// `n` endpoints `127.0.0.1:7000 + i`, least request, with outlier detection if given.
fn many(
    n: u32,
    outlier: Option<mesh_core::policy::outlier::OutlierPolicy>,
) -> (Svc, MockHandle, EndpointStats) {
    let mut layer = BalanceLayer::new(
        (0..n).map(|i| endpoint("127.0.0.1", 7000 + i)),
        Algorithm::LeastRequest,
    );
    if let Some(policy) = outlier {
        layer = layer.outlier_detection(policy);
    }
    let stats = layer.stats().clone();
    let (svc, handle) = mock::spawn_layer(layer);
    (svc, handle, stats)
}

async fn pick(svc: &mut Svc, handle: &mut MockHandle) -> String {
    let (sent, _) = roundtrip(svc, handle, request("http://backend/", None)).await;
    sent.uri().authority().expect("absolute").to_string()
}

/// With 64 endpoints each request still compares two of them: an endpoint with a request in
/// flight loses against any idle one, so it gets nothing while the others share the load.
#[tokio::test]
async fn with_many_endpoints_least_request_skips_the_busy_one_and_spreads() {
    let (mut svc, mut handle, _) = many(64, None);
    assert_ready_ok!(svc.poll_ready());
    let held = svc.call(request("http://backend/", None));
    let (busy, send) = handle.next_request().await.expect("request");
    let busy = busy.uri().authority().expect("absolute").to_string();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let picked = pick(&mut svc, &mut handle).await;
        assert_ne!(picked, busy);
        seen.insert(picked);
    }
    // 500 uniform draws over 63 endpoints miss a given one with probability (62/63)^500.
    assert!(seen.len() >= 60, "only {} endpoints used", seen.len());
    send.send_response(Response::new(body::empty()));
    held.await.expect("response");
}

/// An endpoint that refused a connection is avoided among many as among few (a draw that
/// lands on it makes the balancer choose among all the others).
#[tokio::test(start_paused = true)]
async fn with_many_endpoints_one_that_refused_a_connection_is_avoided() {
    use crate::error::UpstreamConnectFailure;
    let (mut svc, mut handle, stats) = many(64, None);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request("http://backend/", None));
    let (sent, send) = handle.next_request().await.expect("request");
    let dead = sent.uri().authority().expect("absolute").to_string();
    send.send_error(UpstreamConnectFailure {
        endpoint: dead.clone(),
        source: "connection refused".into(),
    });
    assert!(fut.await.is_err());
    assert!(stats.is_down("127.0.0.1", dead[10..].parse().expect("port")));
    for _ in 0..500 {
        assert_ne!(pick(&mut svc, &mut handle).await, dead);
    }
}

/// Outlier detection among many endpoints: while an ejection runs the ejected endpoint
/// gets nothing; once it has ended the endpoint is chosen again.
#[tokio::test(start_paused = true)]
async fn with_many_endpoints_an_ejected_one_gets_nothing_until_its_ejection_ends() {
    use mesh_core::policy::outlier::OutlierPolicy;
    let policy = OutlierPolicy::default().consecutive_5xx(1);
    let (mut svc, mut handle, stats) = many(64, Some(policy));
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request("http://backend/", None));
    let (sent, send) = handle.next_request().await.expect("request");
    let ejected = sent.uri().authority().expect("absolute").to_string();
    let mut res = Response::new(body::empty());
    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    send.send_response(res);
    let _ = fut.await.expect("response");
    let port: u16 = ejected[10..].parse().expect("port");
    assert!(stats.ejected("127.0.0.1", port));
    for _ in 0..500 {
        assert_ne!(pick(&mut svc, &mut handle).await, ejected);
    }
    // Istio's default base ejection time is 30 s.
    tokio::time::advance(std::time::Duration::from_secs(31)).await;
    assert!(!stats.ejected("127.0.0.1", port));
    let mut again = false;
    for _ in 0..2_000 {
        again |= pick(&mut svc, &mut handle).await == ejected;
    }
    assert!(again, "the endpoint is chosen again after its ejection");
}

/// Round robin over many endpoints visits each in turn.
#[tokio::test]
async fn with_many_endpoints_round_robin_visits_each_in_turn() {
    let layer = BalanceLayer::new(
        (0..40).map(|i| endpoint("127.0.0.1", 7000 + i)),
        Algorithm::RoundRobin,
    );
    let (mut svc, mut handle) = mock::spawn_layer(layer);
    let mut order = Vec::new();
    for _ in 0..80 {
        order.push(pick(&mut svc, &mut handle).await);
    }
    let first: Vec<_> = order[..40].to_vec();
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 40, "each endpoint once per round");
    assert_eq!(order[40..], first[..], "the same order again");
}

/// A service of 24 workloads from the configuration, one of them with 40 times the weight
/// of the others. Above 16 endpoints least request draws its two candidates without a
/// pass over the list only when the weights are equal (the snapshot knows which of its
/// lists are): here the weighted pass must decide, and the heavy endpoint gets most of the
/// requests, while with equal weights it gets its share.
#[tokio::test]
async fn with_many_weighted_endpoints_least_request_follows_the_weights() {
    for heavy_weight in [40, 1] {
        let mut yaml = String::new();
        for i in 0..24 {
            let weight = if i == 0 { heavy_weight } else { 1 };
            yaml.push_str(&format!(
                "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: big-{i}, namespace: default }}
spec: {{ address: 10.0.0.{i}, labels: {{ app: big }}, weight: {weight}, ports: {{ http: 8080 }} }}
---
"
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
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: 8080 }]
  workloadSelector: { labels: { app: big } }
",
        );
        let loaded = load_str(&yaml, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snap = Arc::new(Snapshot::build(&loaded.resources).expect("snapshot builds"));
        let host = "big.default.svc.cluster.local";
        assert_eq!(snap.endpoints(host, None).len(), 24);
        assert_eq!(
            snap.equal_weights(snap.endpoints(host, None)),
            heavy_weight == 1
        );
        let (mut svc, mut handle, _) = from_target();
        let mut heavy = 0;
        for _ in 0..1_000 {
            let req = request("http://big/", Some(target(&snap, host, None, 80)));
            let (sent, _) = roundtrip(&mut svc, &mut handle, req).await;
            heavy += usize::from(sent.uri().host() == Some("10.0.0.0"));
        }
        if heavy_weight == 1 {
            // Its share of 24 (about 42 of 1,000).
            assert!((10..120).contains(&heavy), "{heavy} of 1,000");
        } else {
            // 40 of 63 weight units: well over half.
            assert!(heavy > 450, "{heavy} of 1,000");
        }
    }
}
