//! The whole mesh on real loopback sockets: workloads register in a file store, a client
//! routes to them through the outbound stack, configuration changes apply live.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::{
    config::load_str,
    snapshot::Snapshot,
    store::{FileStore, Store},
};
use mesh_tower::{
    body::{self, Body},
    flags::ResponseFlags,
    mesh::{Mesh, Workload},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceExt;

const PATIENCE: Duration = Duration::from_secs(10);

/// A backend workload: answers with its name; `/status/N` answers N; counts requests.
struct Backend {
    name: String,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(store: &Arc<dyn Store>, name: &str, app: &str, version: &str) -> Backend {
        let mesh = Mesh::builder(
            store.clone(),
            Workload::new(name, "default")
                .label("app", app)
                .label("version", version),
        )
        .drain_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let who = name.to_owned();
        let counter = hits.clone();
        let app = tower::service_fn(move |req: http::Request<Body>| {
            let who = who.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let path = req.uri().path().to_owned();
                if let Some(code) = path.strip_prefix("/status/") {
                    let mut res = http::Response::new(body::full(who));
                    *res.status_mut() = http::StatusCode::from_u16(code.parse().unwrap()).unwrap();
                    return Ok::<_, Infallible>(res);
                }
                if path == "/slow" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                Ok(http::Response::new(body::full(format!("{who} {host}"))))
            }
        });
        let task = tokio::spawn(async move {
            mesh.serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Backend {
            name: name.to_owned(),
            hits,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

async fn client(store: &Arc<dyn Store>) -> Mesh {
    let mesh = Mesh::builder(
        store.clone(),
        Workload::new("productpage-v1", "default").label("app", "productpage"),
    )
    .start()
    .await
    .unwrap();
    mesh.ready().await;
    mesh
}

/// Waits until the client's snapshot satisfies `pred`.
async fn until(mesh: &Mesh, what: &str, pred: impl Fn(&Snapshot) -> bool) {
    let mut rx = mesh.changed();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if pred(&mesh.snapshot()) {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}");
        }
    }
}

fn endpoints(s: &Snapshot, subset: Option<&str>) -> usize {
    s.endpoints("reviews.default.svc.cluster.local", subset)
        .len()
}

async fn apply(store: &Arc<dyn Store>, yaml: &str) {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    store.apply(loaded.resources).await.unwrap();
}

async fn send(
    mesh: &Mesh,
    method: http::Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, String, ResponseFlags) {
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let res = mesh.http_client().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let flags = ResponseFlags::of(&res);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned(), flags)
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
"#;

async fn three_reviews(store: &Arc<dyn Store>) -> Vec<Backend> {
    vec![
        Backend::start(store, "reviews-v1-a", "reviews", "v1").await,
        Backend::start(store, "reviews-v1-b", "reviews", "v1").await,
        Backend::start(store, "reviews-v2", "reviews", "v2").await,
    ]
}

fn workload_of(text: &str) -> &str {
    text.split(' ').next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_header_match_over_real_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let backends = three_reviews(&store).await;
    let mesh = client(&store).await;
    until(&mesh, "three endpoints", |s| endpoints(s, None) == 3).await;

    // No VirtualService: every endpoint gets traffic.
    let mut seen = HashMap::new();
    for _ in 0..60 {
        let (status, text, _) = send(
            &mesh,
            http::Method::GET,
            "http://reviews:9080/reviews/0",
            &[],
        )
        .await;
        assert_eq!(status, 200);
        *seen.entry(workload_of(&text).to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    apply(&store, SUBSETS).await;
    apply(
        &store,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: reviews, subset: v2 } }]
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v2 }, weight: 20 }
"#,
    )
    .await;
    until(&mesh, "the VirtualService", |s| {
        s.resources_of(mesh_core::config::Kind::VirtualService)
            .count()
            == 1
    })
    .await;

    // jason always reaches v2; the app sees the name it addressed.
    for _ in 0..20 {
        let (status, text, _) = send(
            &mesh,
            http::Method::GET,
            "http://reviews:9080/r",
            &[("end-user", "jason")],
        )
        .await;
        assert_eq!((status, text.as_str()), (200, "reviews-v2 reviews:9080"));
    }
    // Others: 80/20 within tolerance over 1,000 requests (binomial sd ≈ 12.6: ±5 sd).
    let mut v2 = 0;
    for _ in 0..1000 {
        let (status, text, _) = send(&mesh, http::Method::GET, "http://reviews:9080/r", &[]).await;
        assert_eq!(status, 200);
        if workload_of(&text) == "reviews-v2" {
            v2 += 1;
        }
    }
    assert!(
        (137..=263).contains(&v2),
        "v2 got {v2} of 1000, expected ~200"
    );

    // A host with VirtualServices but no matching rule is a 404 NR.
    apply(
        &store,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - match: [{ uri: { prefix: /ratings } }]
    route: [{ destination: { host: ratings } }]
"#,
    )
    .await;
    until(&mesh, "ratings VS", |s| {
        s.resources_of(mesh_core::config::Kind::VirtualService)
            .count()
            == 2
    })
    .await;
    let (status, _, flags) = send(&mesh, http::Method::GET, "http://ratings:9080/other", &[]).await;
    assert_eq!((status, flags.to_string().as_str()), (404, "NR"));
    // A subset without endpoints is a 503 UH.
    let (status, text, flags) = send(
        &mesh,
        http::Method::GET,
        "http://ratings:9080/ratings/0",
        &[],
    )
    .await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(flags.to_string(), "UH");

    for b in backends {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_that_reached_the_app_and_got_503_is_not_retried_but_get_is() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let backends = vec![Backend::start(&store, "ratings-v1", "ratings", "v1").await];
    let mesh = client(&store).await;
    until(&mesh, "ratings endpoint", |s| {
        !s.endpoints("ratings.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;
    let (status, _, flags) = send(
        &mesh,
        http::Method::POST,
        "http://ratings:9080/status/503",
        &[],
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(backends[0].hits.load(Ordering::SeqCst), 1, "POST sent once");
    assert_eq!(flags.to_string(), "-");
    let (status, _, flags) = send(
        &mesh,
        http::Method::GET,
        "http://ratings:9080/status/503",
        &[],
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        backends[0].hits.load(Ordering::SeqCst),
        4,
        "GET tried three times"
    );
    assert_eq!(flags.to_string(), "URX");
    for b in backends {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_endpoint_mid_run_fails_no_idempotent_request_and_shutdown_drops_none() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let mut backends = three_reviews(&store).await;
    let mesh = client(&store).await;
    until(&mesh, "three endpoints", |s| endpoints(s, None) == 3).await;

    // Load: 4 concurrent callers, 150 requests each.
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mesh = mesh.clone();
        let failures = failures.clone();
        let done = done.clone();
        load.push(tokio::spawn(async move {
            for _ in 0..150 {
                let (status, text, _) =
                    send(&mesh, http::Method::GET, "http://reviews:9080/slow", &[]).await;
                if status != 200 {
                    eprintln!("failed: {status} {text}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Mid-run: one workload shuts down gracefully (deregister, drain), another is killed
    // abruptly (its task aborted: connections reset, its entry left behind).
    while done.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let graceful = backends.remove(0);
    let graceful_name = graceful.name.clone();
    graceful.stop().await;
    let killed = backends.remove(0);
    killed.task.abort();
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no idempotent request may fail"
    );
    let s = mesh.snapshot();
    assert!(
        !s.endpoints("reviews.default.svc.cluster.local", None)
            .iter()
            .any(|e| e.workload.as_ref().is_some_and(|k| k.name == graceful_name)),
        "the gracefully stopped workload deregistered"
    );
    for b in backends {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_mirror_and_its_answers_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let main = Backend::start(&store, "httpbin-v1", "httpbin", "v1").await;
    let mirror = Backend::start(&store, "httpbin-v2", "httpbin", "v2").await;
    let mesh = client(&store).await;
    apply(
        &store,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: httpbin }
spec:
  host: httpbin
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: httpbin }
spec:
  hosts: [httpbin]
  http:
  - route: [{ destination: { host: httpbin, subset: v1 } }]
    mirror: { host: httpbin, subset: v2 }
    mirrorPercentage: { value: 100.0 }
"#,
    )
    .await;
    until(&mesh, "mirror config", |s| {
        s.endpoints("httpbin.default.svc.cluster.local", Some("v2"))
            .len()
            == 1
            && s.resources_of(mesh_core::config::Kind::VirtualService)
                .count()
                == 1
    })
    .await;
    for _ in 0..10 {
        // The mirror answers 500 for this path; the caller still sees the main answer.
        let (status, text, _) = send(
            &mesh,
            http::Method::GET,
            "http://httpbin:8000/status/200",
            &[],
        )
        .await;
        assert_eq!((status, workload_of(&text)), (200, "httpbin-v1"));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while mirror.hits.load(Ordering::SeqCst) < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mirror.hits.load(Ordering::SeqCst), 10);
    assert_eq!(main.hits.load(Ordering::SeqCst), 10);
    main.stop().await;
    mirror.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_7s_fault_delay_under_a_3s_route_timeout_answers_504_after_3s() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    apply(
        &store,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - fault: { delay: { fixedDelay: 7s, percentage: { value: 100 } } }
    timeout: 3s
    route: [{ destination: { host: ratings } }]
"#,
    )
    .await;
    let mesh = client(&store).await;
    let start = tokio::time::Instant::now();
    let (status, text, flags) = send(
        &mesh,
        http::Method::GET,
        "http://ratings:9080/ratings/0",
        &[],
    )
    .await;
    assert_eq!((status, text.as_str()), (504, "upstream request timeout"));
    assert_eq!(flags.to_string(), "UT");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_registers_and_deregisters_its_workload() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let b = Backend::start(&store, "details-v1", "details", "v1").await;
    let key = mesh_core::config::ResourceKey::new(
        mesh_core::config::Kind::WorkloadEntry,
        "default",
        "details-v1",
    );
    let mut registered = false;
    for _ in 0..100 {
        if store.get(&key).await.unwrap().is_some() {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(registered);
    b.stop().await;
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "deregistered on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_denies_at_the_server_with_403_before_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let backends = vec![Backend::start(&store, "ratings-v1", "ratings", "v1").await];
    let mesh = client(&store).await;
    until(&mesh, "ratings endpoint", |s| {
        !s.endpoints("ratings.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;
    apply(
        &store,
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ratings-read-only, namespace: default }
spec:
  selector: { matchLabels: { app: ratings } }
  action: DENY
  rules:
  - to: [{ operation: { methods: [DELETE, PUT], paths: [/ratings/*] } }]
",
    )
    .await;
    // The server picks the policy up from the store on its own.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body, _) = send(
            &mesh,
            http::Method::DELETE,
            "http://ratings:9080/ratings/1",
            &[],
        )
        .await;
        if status == 403 {
            assert_eq!(body, "RBAC: access denied");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = backends[0].hits.load(Ordering::SeqCst);
    let (status, _, _) = send(
        &mesh,
        http::Method::PUT,
        "http://ratings:9080/ratings/2",
        &[],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        backends[0].hits.load(Ordering::SeqCst),
        before,
        "denied requests never reach the app"
    );
    let (status, _, _) = send(
        &mesh,
        http::Method::GET,
        "http://ratings:9080/ratings/1",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        &mesh,
        http::Method::DELETE,
        "http://ratings:9080/other",
        &[],
    )
    .await;
    assert_eq!(status, 200, "the rule's paths limit it");
    assert_eq!(backends[0].hits.load(Ordering::SeqCst), before + 2);
    for b in backends {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_with_metrics_off_serves_and_calls_without_counting() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let backend = Backend::start(&store, "reviews-v1", "reviews", "v1").await;
    let quiet = Mesh::builder(
        store.clone(),
        Workload::new("productpage-v1", "default").label("app", "productpage"),
    )
    .metrics(false)
    .start()
    .await
    .unwrap();
    quiet.ready().await;
    let counted = client(&store).await;
    until(&quiet, "the endpoint", |s| endpoints(s, None) == 1).await;
    until(&counted, "the endpoint", |s| endpoints(s, None) == 1).await;
    for mesh in [&quiet, &counted] {
        let (status, text, _) = send(mesh, http::Method::GET, "http://reviews:9080/", &[]).await;
        assert_eq!((status, text.as_str()), (200, "reviews-v1 reviews:9080"));
    }
    assert!(
        !quiet.metrics().encode().contains("istio_requests_total{"),
        "{}",
        quiet.metrics().encode()
    );
    let text = counted.metrics().encode();
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("source_workload=\"productpage-v1\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    backend.stop().await;
}
