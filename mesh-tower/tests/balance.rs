//! The balancer with DestinationRules: simple algorithms' distributions, consistent hashing
//! (header, cookie, query parameter, source IP; ring hash and Maglev), warmup and outlier
//! detection, on paused tokio time with an in-process upstream.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode, header};
use mesh_core::{BoxError, config::load_str, snapshot::Snapshot};
use mesh_tower::{
    balance::{Balance, BalanceLayer, EndpointStats},
    body::{self, Body},
    error::{NoHealthyUpstream, UpstreamConnectFailure, cause_ref},
    server::PeerAddr,
    target::Target,
};
use tower::{Layer, Service, ServiceExt};

const HOST: &str = "reviews.default.svc.cluster.local";
const A: &str = "127.0.0.1:9081";
const B: &str = "127.0.0.2:9082";
const C: &str = "127.0.0.3:9083";

/// What each endpoint answers: a status, or a connect failure.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    ConnectFailure,
    /// Never answers.
    Hang,
}

/// The upstream: answers per endpoint authority (200 unless told otherwise) and records the
/// authority of every request it receives.
#[derive(Clone, Default)]
struct Upstream {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn answer(&self, authority: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(authority.to_owned(), answer);
    }

    fn take_hits(&self) -> Vec<String> {
        std::mem::take(&mut *self.hits.lock().unwrap())
    }

    fn count(&self, authority: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| *h == authority)
            .count()
    }
}

type Svc = Balance<tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>>;

fn balancer(stats: &EndpointStats, upstream: &Upstream) -> Svc {
    let up = upstream.clone();
    let inner = tower::service_fn(move |req: Request<Body>| {
        let authority = req.uri().authority().map(ToString::to_string);
        let authority = authority.unwrap_or_default();
        up.hits.lock().unwrap().push(authority.clone());
        let answer = up
            .answers
            .lock()
            .unwrap()
            .get(&authority)
            .copied()
            .unwrap_or(Answer::Status(200));
        async move {
            match answer {
                Answer::Status(s) => Ok(Response::builder()
                    .status(s)
                    .body(body::empty())
                    .expect("valid response")),
                Answer::ConnectFailure => Err(BoxError::from(UpstreamConnectFailure {
                    endpoint: authority,
                    source: "connection refused".into(),
                })),
                Answer::Hang => std::future::pending().await,
            }
        }
    });
    BalanceLayer::from_target(stats.clone()).layer(tower::util::BoxCloneSyncService::new(inner))
}

/// `reviews` with `n` of the endpoints A, B, C, and a DestinationRule with `policy` (the
/// YAML of a `trafficPolicy`, one line).
fn snapshot(n: usize, policy: &str) -> Arc<Snapshot> {
    let mut yaml = String::new();
    for (i, ep) in [A, B, C].iter().take(n).enumerate() {
        let (ip, port) = ep.split_once(':').unwrap();
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{ name: r{i}, namespace: default }}\nspec: {{ address: {ip}, ports: {{ http: {port} }}, labels: {{ app: reviews }} }}\n---\n"
        ));
    }
    yaml.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews, namespace: default }}\nspec:\n  host: reviews\n  trafficPolicy: {policy}\n"
    ));
    let loaded = load_str(&yaml, None);
    let mut findings = loaded.findings.clone();
    findings.extend(mesh_core::validate::validate_all(&loaded.resources).0);
    assert!(findings.iter().all(|f| !f.is_error()), "{findings:?}");
    Arc::new(Snapshot::build(&loaded.resources).expect("snapshot builds"))
}

fn request(snapshot: &Arc<Snapshot>) -> Request<Body> {
    let mut req = Request::get("http://reviews:9080/")
        .body(body::empty())
        .expect("valid request");
    req.extensions_mut().insert(Target {
        snapshot: snapshot.clone(),
        route: None,
        match_index: None,
        host: HOST.into(),
        subset: None,
        port: 9080,
    });
    req
}

async fn send(svc: &mut Svc, req: Request<Body>) -> Result<Response<Body>, BoxError> {
    svc.ready().await?.call(req).await
}

/// Sends `n` requests; returns the hits per endpoint.
async fn spread(svc: &mut Svc, up: &Upstream, snap: &Arc<Snapshot>, n: usize) -> [usize; 3] {
    up.take_hits();
    for _ in 0..n {
        let _ = send(svc, request(snap)).await;
    }
    let hits = up.take_hits();
    [A, B, C].map(|e| hits.iter().filter(|h| *h == e).count())
}

fn split(authority: &str) -> (&str, u16) {
    let (a, p) = authority.split_once(':').unwrap();
    (a, p.parse().unwrap())
}

fn ejected(stats: &EndpointStats, authority: &str) -> bool {
    let (a, p) = split(authority);
    stats.ejected(a, p)
}

// === simple algorithms ===

#[tokio::test(start_paused = true)]
async fn simple_algorithms_spread_evenly() {
    for (lb, exact) in [
        ("ROUND_ROBIN", true),
        ("LEAST_REQUEST", false),
        ("RANDOM", false),
    ] {
        let (stats, up) = (EndpointStats::new(), Upstream::default());
        let mut svc = balancer(&stats, &up);
        let snap = snapshot(3, &format!("{{ loadBalancer: {{ simple: {lb} }} }}"));
        let counts = spread(&mut svc, &up, &snap, 3_000).await;
        for c in counts {
            if exact {
                assert_eq!(c, 1_000, "{lb}: {counts:?}");
            } else {
                // 1,000 expected; one standard deviation is about 26.
                assert!((850..=1_150).contains(&c), "{lb}: {counts:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn least_request_avoids_the_busy_endpoint() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let snap = snapshot(3, "{ loadBalancer: { simple: LEAST_REQUEST } }");
    // A mock that never answers the first request keeps one endpoint busy.
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = BalanceLayer::from_target(stats.clone()).layer(mock);
    handle.allow(1);
    let pending = svc.ready().await.unwrap().call(request(&snap));
    let (first, _respond) = handle.next_request().await.unwrap();
    let busy = first.uri().authority().unwrap().to_string();
    let mut counts = HashMap::<String, usize>::new();
    for _ in 0..300 {
        handle.allow(1);
        let fut = svc.ready().await.unwrap().call(request(&snap));
        let (req, respond) = handle.next_request().await.unwrap();
        *counts
            .entry(req.uri().authority().unwrap().to_string())
            .or_default() += 1;
        respond.send_response(Response::new(body::empty()));
        fut.await.unwrap();
    }
    // P2C picks the busy one only when both draws land on it: never with distinct draws.
    assert_eq!(counts.get(&busy), None, "{counts:?}");
    drop(pending);
    let _ = up;
}

// === consistent hashing ===

fn with_header(snap: &Arc<Snapshot>, name: &str, value: &str) -> Request<Body> {
    let mut req = request(snap);
    req.headers_mut().insert(
        header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    req
}

async fn endpoint_of(svc: &mut Svc, up: &Upstream, req: Request<Body>) -> String {
    up.take_hits();
    send(svc, req).await.expect("response");
    up.take_hits().pop().expect("one hit")
}

#[tokio::test(start_paused = true)]
async fn a_header_key_sticks_to_one_endpoint() {
    for table in [
        "",
        ", ringHash: { minimumRingSize: 2048 }",
        ", maglev: { tableSize: 251 }",
    ] {
        let (stats, up) = (EndpointStats::new(), Upstream::default());
        let mut svc = balancer(&stats, &up);
        let snap = snapshot(
            3,
            &format!(
                "{{ loadBalancer: {{ consistentHash: {{ httpHeaderName: x-user{table} }} }} }}"
            ),
        );
        let mut owners = BTreeMap::new();
        for user in 0..60 {
            let user = format!("user-{user}");
            let first = endpoint_of(&mut svc, &up, with_header(&snap, "x-user", &user)).await;
            for _ in 0..5 {
                let again = endpoint_of(&mut svc, &up, with_header(&snap, "x-user", &user)).await;
                assert_eq!(again, first, "{table}: {user}");
            }
            *owners.entry(first).or_insert(0) += 1;
        }
        // Different users land on every endpoint.
        assert_eq!(owners.len(), 3, "{table}: {owners:?}");
        // The same key on another client (same snapshot content) lands on the same endpoint.
        let (stats2, up2) = (EndpointStats::new(), Upstream::default());
        let mut other = balancer(&stats2, &up2);
        let snap2 = snapshot(
            3,
            &format!(
                "{{ loadBalancer: {{ consistentHash: {{ httpHeaderName: x-user{table} }} }} }}"
            ),
        );
        let here = endpoint_of(&mut svc, &up, with_header(&snap, "x-user", "alice")).await;
        let there = endpoint_of(&mut other, &up2, with_header(&snap2, "x-user", "alice")).await;
        assert_eq!(here, there, "{table}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_the_key_requests_spread() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpHeaderName: x-user } } }",
    );
    let counts = spread(&mut svc, &up, &snap, 600).await;
    assert!(counts.iter().all(|c| *c > 100), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cookie_is_set_when_absent_and_then_sticks() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpCookie: { name: session, path: /, ttl: 3600s } } } }",
    );
    let res = send(&mut svc, request(&snap)).await.unwrap();
    let first = up.take_hits().pop().unwrap();
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.starts_with("session=\""), "{set}");
    assert!(set.ends_with("\"; Max-Age=3600; Path=/; HttpOnly"), "{set}");
    let value = set.split('"').nth(1).unwrap().to_owned();
    assert_eq!(value.len(), 16);
    for _ in 0..20 {
        let mut req = request(&snap);
        req.headers_mut().insert(
            header::COOKIE,
            format!("other=1; session=\"{value}\"").parse().unwrap(),
        );
        let res = send(&mut svc, req).await.unwrap();
        assert!(res.headers().get(header::SET_COOKIE).is_none());
        assert_eq!(up.take_hits().pop().unwrap(), first);
    }
    // Generated cookies differ, so new clients spread.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        send(&mut svc, request(&snap)).await.unwrap();
        seen.insert(up.take_hits().pop().unwrap());
    }
    assert_eq!(seen.len(), 3);
}

/// As Envoy: a cookie generated for a request that came in on a connection (a gateway's) is
/// derived from that connection's address, so the retries of a request, and requests racing
/// on the same connection, are given the same cookie and reach the same endpoint.
#[tokio::test(start_paused = true)]
async fn a_generated_cookie_follows_the_downstream_connection() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpCookie: { name: session, ttl: 60s } } } }",
    );
    let from = |peer: &str| {
        let mut req = request(&snap);
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    };
    let cookie = |res: &Response<Body>| {
        res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let first = cookie(&send(&mut svc, from("10.1.0.7:40001")).await.unwrap());
    let endpoint = up.take_hits().pop().unwrap();
    for _ in 0..10 {
        let again = send(&mut svc, from("10.1.0.7:40001")).await.unwrap();
        assert_eq!(cookie(&again), first);
        assert_eq!(up.take_hits().pop().unwrap(), endpoint);
    }
    let mut values = std::collections::BTreeSet::new();
    for port in 40_002..40_042 {
        let res = send(&mut svc, from(&format!("10.1.0.7:{port}")))
            .await
            .unwrap();
        values.insert(cookie(&res));
    }
    assert_eq!(values.len(), 40, "other connections get other cookies");
}

#[tokio::test(start_paused = true)]
async fn a_cookie_without_ttl_is_not_generated() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpCookie: { name: session } } } }",
    );
    let res = send(&mut svc, request(&snap)).await.unwrap();
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    // A session cookie (ttl 0) is generated without Max-Age.
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpCookie: { name: session, ttl: 0s } } } }",
    );
    let res = send(&mut svc, request(&snap)).await.unwrap();
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.ends_with("\"; HttpOnly"), "{set}");
}

#[tokio::test(start_paused = true)]
async fn query_parameter_and_source_ip_keys_stick() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpQueryParameterName: user, maglev: {} } } }",
    );
    let query = |snap: &Arc<Snapshot>, user: u32| {
        let mut req = request(snap);
        *req.uri_mut() = format!("http://reviews:9080/p?x=1&user={user}")
            .parse()
            .unwrap();
        req
    };
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let first = endpoint_of(&mut svc, &up, query(&snap, user)).await;
        assert_eq!(endpoint_of(&mut svc, &up, query(&snap, user)).await, first);
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3);

    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { useSourceIp: true } } }",
    );
    let from = |snap: &Arc<Snapshot>, ip: &str| {
        let mut req = request(snap);
        req.extensions_mut()
            .insert(PeerAddr(format!("{ip}:40000").parse().unwrap()));
        req
    };
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..30 {
        let ip = format!("10.1.0.{i}");
        let first = endpoint_of(&mut svc, &up, from(&snap, &ip)).await;
        assert_eq!(endpoint_of(&mut svc, &up, from(&snap, &ip)).await, first);
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3);
    // Without a peer address: the workload's own, always the same endpoint.
    let own = endpoint_of(&mut svc, &up, request(&snap)).await;
    for _ in 0..10 {
        assert_eq!(endpoint_of(&mut svc, &up, request(&snap)).await, own);
    }
    let pinned = EndpointStats::with_source_ip("10.1.0.7".parse().unwrap());
    let mut pinned_svc = balancer(&pinned, &up);
    assert_eq!(
        endpoint_of(&mut pinned_svc, &up, request(&snap)).await,
        endpoint_of(&mut svc, &up, from(&snap, "10.1.0.7")).await
    );
}

#[tokio::test(start_paused = true)]
async fn hashed_keys_skip_an_ejected_endpoint_and_come_back() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { consistentHash: { httpHeaderName: x-user } }, outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 30s, interval: 1s } }",
    );
    let mut owner = HashMap::new();
    for user in 0..60 {
        let user = format!("user-{user}");
        let ep = endpoint_of(&mut svc, &up, with_header(&snap, "x-user", &user)).await;
        owner.insert(user, ep);
    }
    // A fails once: ejected.
    up.answer(A, Answer::Status(500));
    let a_user = owner.iter().find(|(_, e)| *e == A).unwrap().0.clone();
    endpoint_of(&mut svc, &up, with_header(&snap, "x-user", &a_user)).await;
    assert!(ejected(&stats, A));
    up.answer(A, Answer::Status(200));
    for (user, ep) in &owner {
        let now = endpoint_of(&mut svc, &up, with_header(&snap, "x-user", user)).await;
        if ep == A {
            assert_ne!(now, A);
        } else {
            assert_eq!(&now, ep, "{user} moved although its endpoint is healthy");
        }
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    for (user, ep) in &owner {
        assert_eq!(
            &endpoint_of(&mut svc, &up, with_header(&snap, "x-user", user)).await,
            ep
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_hash_table_survives_unrelated_configuration_changes() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let policy = "{ loadBalancer: { consistentHash: { httpHeaderName: x-user } } }";
    let (one, two) = (snapshot(3, policy), snapshot(3, policy));
    for user in 0..20 {
        let user = format!("u{user}");
        let a = endpoint_of(&mut svc, &up, with_header(&one, "x-user", &user)).await;
        let b = endpoint_of(&mut svc, &up, with_header(&two, "x-user", &user)).await;
        assert_eq!(a, b);
    }
    // Adding an endpoint keeps most keys where they were.
    let three = snapshot(2, policy);
    let mut moved = 0;
    for user in 0..200 {
        let user = format!("u{user}");
        let before = endpoint_of(&mut svc, &up, with_header(&three, "x-user", &user)).await;
        let after = endpoint_of(&mut svc, &up, with_header(&one, "x-user", &user)).await;
        if before != after {
            assert_eq!(after, C, "keys move only to the new endpoint");
            moved += 1;
        }
    }
    // One third expected.
    assert!((40..=95).contains(&moved), "{moved}");
}

// === warmup ===

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_warms_up() {
    for lb in ["ROUND_ROBIN", "LEAST_REQUEST"] {
        let (stats, up) = (EndpointStats::new(), Upstream::default());
        let mut svc = balancer(&stats, &up);
        let policy = format!(
            "{{ loadBalancer: {{ simple: {lb}, warmup: {{ duration: 100s, minimumPercent: 10 }} }} }}"
        );
        let old = snapshot(2, &policy);
        spread(&mut svc, &up, &old, 10).await;
        tokio::time::advance(Duration::from_secs(200)).await;
        let new = snapshot(3, &policy);
        // C is new: weight 10 % → 0.1 / 2.1 ≈ 4.8 % of the traffic.
        let counts = spread(&mut svc, &up, &new, 4_200).await;
        assert!((120..=290).contains(&counts[2]), "{lb}: {counts:?}");
        // Half-way: 0.5 / 2.5 = 20 %.
        tokio::time::advance(Duration::from_secs(50)).await;
        let counts = spread(&mut svc, &up, &new, 4_200).await;
        assert!((700..=980).contains(&counts[2]), "{lb}: {counts:?}");
        // Warm: a third.
        tokio::time::advance(Duration::from_secs(50)).await;
        let counts = spread(&mut svc, &up, &new, 4_200).await;
        assert!((1_250..=1_550).contains(&counts[2]), "{lb}: {counts:?}");
    }
}

// === outlier detection ===

const OD: &str = "consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s";

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_and_returns_after_the_ejection_time() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        &format!("{{ loadBalancer: {{ simple: ROUND_ROBIN }}, outlierDetection: {{ {OD} }} }}"),
    );
    up.answer(A, Answer::Status(500));
    // Round robin: A gets every third request; its third 500 ejects it.
    spread(&mut svc, &up, &snap, 9).await;
    assert!(ejected(&stats, A));
    let (a, p) = split(A);
    assert_eq!(stats.ejections(a, p), 1);
    let counts = spread(&mut svc, &up, &snap, 100).await;
    assert_eq!(counts[0], 0, "{counts:?}");
    assert_eq!(counts[1] + counts[2], 100);
    // Back after 30 s.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(ejected(&stats, A));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!ejected(&stats, A));
    let counts = spread(&mut svc, &up, &snap, 9).await;
    assert_eq!(counts[0], 3, "{counts:?}");
    // Still failing: ejected again, for twice as long.
    assert!(ejected(&stats, A));
    assert_eq!(stats.ejections(a, p), 2);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(ejected(&stats, A));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!ejected(&stats, A));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(1, &format!("{{ outlierDetection: {{ {OD} }} }}"));
    for _ in 0..5 {
        up.answer(A, Answer::Status(500));
        spread(&mut svc, &up, &snap, 2).await;
        up.answer(A, Answer::Status(200));
        spread(&mut svc, &up, &snap, 1).await;
    }
    assert!(!ejected(&stats, A));
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_is_off_without_the_block() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(3, "{ loadBalancer: { simple: ROUND_ROBIN } }");
    up.answer(A, Answer::Status(500));
    let counts = spread(&mut svc, &up, &snap, 300).await;
    assert_eq!(counts, [100; 3]);
    assert!(!ejected(&stats, A));
}

/// All three endpoints fail; returns how many end up ejected.
async fn ejected_when_all_fail(policy: &str) -> (usize, Vec<Result<(), String>>) {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        &format!(
            "{{ loadBalancer: {{ simple: ROUND_ROBIN }}, outlierDetection: {{ {OD}, {policy} }} }}"
        ),
    );
    for e in [A, B, C] {
        up.answer(e, Answer::Status(500));
    }
    let mut results = Vec::new();
    for _ in 0..30 {
        results.push(
            send(&mut svc, request(&snap))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        );
    }
    let n = [A, B, C].iter().filter(|e| ejected(&stats, e)).count();
    (n, results)
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_limits_ejections() {
    // 10 % of 3 is less than one endpoint, but one may always be ejected (Envoy).
    assert_eq!(ejected_when_all_fail("maxEjectionPercent: 10").await.0, 1);
    assert_eq!(ejected_when_all_fail("maxEjectionPercent: 34").await.0, 1);
    assert_eq!(ejected_when_all_fail("maxEjectionPercent: 67").await.0, 2);
    // All ejected and no panic threshold: no healthy upstream.
    let (n, results) = ejected_when_all_fail("maxEjectionPercent: 100").await;
    assert_eq!(n, 3);
    let last = results.last().unwrap().as_ref().unwrap_err();
    assert!(last.contains("no healthy upstream"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn no_healthy_upstream_is_the_balancers_error() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        1,
        "{ outlierDetection: { consecutive5xxErrors: 1, maxEjectionPercent: 100 } }",
    );
    up.answer(A, Answer::Status(500));
    send(&mut svc, request(&snap)).await.unwrap();
    let err = send(&mut svc, request(&snap)).await.unwrap_err();
    assert!(cause_ref::<NoHealthyUpstream>(&*err).is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn panic_mode_uses_every_endpoint_below_min_health_percent() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        &format!(
            "{{ loadBalancer: {{ simple: ROUND_ROBIN }}, outlierDetection: {{ {OD}, maxEjectionPercent: 100, minHealthPercent: 50 }} }}"
        ),
    );
    up.answer(A, Answer::Status(500));
    up.answer(B, Answer::Status(500));
    spread(&mut svc, &up, &snap, 30).await;
    assert!(ejected(&stats, A) && ejected(&stats, B));
    // One healthy of three (33 %) is below 50 %: ejections are ignored.
    let counts = spread(&mut svc, &up, &snap, 30).await;
    assert_eq!(counts, [10; 3]);
    // With one ejected (67 % healthy) it is left out again.
    let snap = snapshot(
        3,
        &format!(
            "{{ loadBalancer: {{ simple: ROUND_ROBIN }}, outlierDetection: {{ {OD}, maxEjectionPercent: 34, minHealthPercent: 50 }} }}"
        ),
    );
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    up.answer(A, Answer::Status(500));
    spread(&mut svc, &up, &snap, 9).await;
    assert!(ejected(&stats, A));
    let counts = spread(&mut svc, &up, &snap, 30).await;
    assert_eq!(counts, [0, 15, 15]);
}

#[tokio::test(start_paused = true)]
async fn consecutive_gateway_errors_eject_on_502_503_504_only() {
    let policy = "{ loadBalancer: { simple: ROUND_ROBIN }, outlierDetection: { consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, interval: 1s } }";
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(3, policy);
    up.answer(A, Answer::Status(500));
    spread(&mut svc, &up, &snap, 30).await;
    assert!(!ejected(&stats, A), "500 is not a gateway error");
    up.answer(A, Answer::Status(503));
    spread(&mut svc, &up, &snap, 3).await;
    assert!(!ejected(&stats, A));
    spread(&mut svc, &up, &snap, 3).await;
    assert!(ejected(&stats, A));
}

/// Sends round-robin requests until A has been tried `n` more times, stepping the clock past
/// the connect back-off (which avoids A after each refused connection) between requests.
async fn fail_connects(svc: &mut Svc, up: &Upstream, snap: &Arc<Snapshot>, n: usize) {
    let start = up.count(A);
    for _ in 0..100 {
        if up.count(A) - start == n {
            return;
        }
        let _ = send(svc, request(snap)).await;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    panic!("A was not tried {n} times");
}

#[tokio::test(start_paused = true)]
async fn connect_failures_count_as_5xx_unless_split() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { simple: ROUND_ROBIN }, outlierDetection: { consecutive5xxErrors: 2, baseEjectionTime: 60s } }",
    );
    up.answer(A, Answer::ConnectFailure);
    fail_connects(&mut svc, &up, &snap, 1).await;
    assert!(!ejected(&stats, A));
    fail_connects(&mut svc, &up, &snap, 1).await;
    assert!(ejected(&stats, A));

    // Split: connect failures count apart (3 needed); one 500 ejects on the 5xx count.
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(
        3,
        "{ loadBalancer: { simple: ROUND_ROBIN }, outlierDetection: { consecutive5xxErrors: 1, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3, baseEjectionTime: 60s, maxEjectionPercent: 100 } }",
    );
    up.answer(A, Answer::ConnectFailure);
    fail_connects(&mut svc, &up, &snap, 2).await;
    assert!(
        !ejected(&stats, A),
        "connect failures are not 5xx when split"
    );
    fail_connects(&mut svc, &up, &snap, 1).await;
    assert!(ejected(&stats, A));
    up.answer(B, Answer::Status(500));
    spread(&mut svc, &up, &snap, 2).await;
    assert!(ejected(&stats, B));
}

#[tokio::test(start_paused = true)]
async fn zero_consecutive_5xx_disables_ejection() {
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    let mut svc = balancer(&stats, &up);
    let snap = snapshot(1, "{ outlierDetection: { consecutive5xxErrors: 0 } }");
    up.answer(A, Answer::Status(500));
    spread(&mut svc, &up, &snap, 20).await;
    assert!(!ejected(&stats, A), "0 disables consecutive 5xx");
    assert_eq!(up.take_hits().len(), 0);
    let status = send(&mut svc, request(&snap)).await.unwrap().status();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_list_ejects_with_its_own_policy() {
    use mesh_core::policy::{balance::Algorithm, outlier::OutlierPolicy};
    use mesh_core::snapshot::Endpoint;
    let endpoint = |authority: &str| {
        let (address, port) = split(authority);
        Arc::new(Endpoint {
            address: address.to_owned(),
            ports: BTreeMap::from([("http".to_owned(), u32::from(port))]),
            labels: BTreeMap::new(),
            service_account: "default".into(),
            namespace: "default".into(),
            weight: 1,
            workload: None,
        })
    };
    let up = Upstream::default();
    up.answer(A, Answer::Status(502));
    let layer = BalanceLayer::new([endpoint(A), endpoint(B)], Algorithm::RoundRobin)
        .outlier_detection(OutlierPolicy::default().consecutive_5xx(2));
    let stats = layer.stats().clone();
    let plain = balancer(&EndpointStats::new(), &up).into_inner();
    let mut svc = layer.layer(plain);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = Request::get("http://backend/").body(body::empty()).unwrap();
        statuses.push(
            svc.ready()
                .await
                .unwrap()
                .call(req)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    // A answers twice (requests 1 and 3), then only B.
    assert_eq!(statuses, [502, 200, 502, 200, 200, 200, 200, 200, 200, 200]);
    assert!(ejected(&stats, A));
}

// === timeouts and outlier detection ===

/// A request cut by a timeout counts as the endpoint's timeout (Envoy's
/// `LocalOriginTimeout`, a 5xx when local-origin errors are not split): an endpoint that hangs
/// is ejected after `consecutive5xxErrors` cuts, by the route timeout and by a per-try timeout
/// alike. A caller that gives up does not count.
#[tokio::test(start_paused = true)]
async fn requests_cut_by_a_timeout_count_for_outlier_detection() {
    use mesh_core::policy::retry::{ExplicitRetry, RetryOn, RetryPolicy};
    use mesh_tower::{retry::RetryLayer, timeout::RouteTimeoutLayer};
    let snap = snapshot(
        2,
        "{ loadBalancer: { simple: ROUND_ROBIN }, outlierDetection: { consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s } }",
    );

    // A caller giving up (dropping the future) is not the endpoint's fault.
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    up.answer(A, Answer::Hang);
    let mut svc = balancer(&stats, &up);
    for _ in 0..4 {
        let call = send(&mut svc, request(&snap));
        let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
    }
    assert!(!ejected(&stats, A), "dropped by the caller: not an outcome");

    // The route timeout.
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    up.answer(A, Answer::Hang);
    let mut svc = RouteTimeoutLayer::new(Duration::from_secs(1)).layer(balancer(&stats, &up));
    let mut failed = 0;
    for _ in 0..4 {
        let res = svc.ready().await.unwrap().call(request(&snap)).await;
        failed += usize::from(res.is_err());
    }
    assert_eq!(failed, 2, "A was tried twice (round robin) and timed out");
    assert!(ejected(&stats, A), "two route timeouts eject A");

    // A per-try timeout: the retry goes to B and the request succeeds; A is ejected.
    let (stats, up) = (EndpointStats::new(), Upstream::default());
    up.answer(A, Answer::Hang);
    let policy = RetryPolicy::Explicit(ExplicitRetry {
        attempts: 2,
        per_try_timeout: Some(Duration::from_secs(1)),
        retry_on: RetryOn::parse("gateway-error").unwrap(),
        backoff: Duration::from_millis(25),
        retry_ignore_previous_hosts: true,
    });
    let mut svc = RetryLayer::new(policy).layer(balancer(&stats, &up));
    for _ in 0..4 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(&snap))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert!(ejected(&stats, A), "two per-try timeouts eject A");
}
