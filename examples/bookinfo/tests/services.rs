//! The four Bookinfo services on real loopback sockets, each workload with its own `Mesh` on
//! one file store, and a client workload calling productpage through the mesh: the page, the
//! JSON API, login and `end-user` routing, and Istio's fault-injection outcomes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bookinfo::{Service, Settings};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_core::{
    config::load_str,
    snapshot::Snapshot,
    store::{FileStore, Store},
};
use mesh_tower::mesh::{Mesh, Workload};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceExt;

const PATIENCE: Duration = Duration::from_secs(10);
const SERVICES: [&str; 4] = ["productpage", "details", "reviews", "ratings"];

const DESTINATION_RULES: &str = include_str!("../istio/destination-rule-all.yaml");
const REVIEWS_TEST_V2: &str = include_str!("../istio/virtual-service-reviews-test-v2.yaml");
const RATINGS_TEST_ABORT: &str = include_str!("../istio/virtual-service-ratings-test-abort.yaml");
const RATINGS_TEST_DELAY: &str = include_str!("../istio/virtual-service-ratings-test-delay.yaml");

const KNOWN_HOSTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: details }
spec:
  hosts: [details]
  http:
  - route: [{ destination: { host: details } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - route: [{ destination: { host: ratings } }]
"#;

const DETAILS_JSON: &str = r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#;
const RATINGS_JSON: &str = r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#;

/// One running workload.
struct Running {
    name: String,
    mesh: Mesh,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// Bookinfo: details v1, ratings v1, reviews v1/v2/v3, productpage v1, and a client.
struct Bookinfo {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    workloads: Vec<Running>,
    client: Mesh,
}

fn host(service: &str) -> String {
    format!("{service}.default.svc.cluster.local")
}

async fn start(
    store: &Arc<dyn Store>,
    service: Service,
    version: &str,
    name: &str,
    tune: impl FnOnce(&mut Settings),
) -> Running {
    let mesh = Mesh::builder(
        store.clone(),
        Workload::new(name, "default")
            .label("app", service.name())
            .label("version", version),
    )
    .drain_delay(Duration::from_millis(100))
    .start()
    .await
    .unwrap();
    mesh.ready().await;
    let mut settings = Settings::istio(service, version, name);
    tune(&mut settings);
    let app = bookinfo::app(service, settings, mesh.http_client());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let serving = mesh.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        name: name.to_owned(),
        mesh,
        stop: Some(tx),
        task,
    }
}

/// Waits until `mesh`'s snapshot satisfies `pred`.
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

impl Bookinfo {
    /// Starts Bookinfo; `tune` adjusts productpage's settings.
    async fn up(tune: impl FnOnce(&mut Settings)) -> Bookinfo {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
        let workloads = vec![
            start(&store, Service::Details, "v1", "details-v1-abc", |_| {}).await,
            start(&store, Service::Ratings, "v1", "ratings-v1-abc", |_| {}).await,
            start(&store, Service::Reviews, "v1", "reviews-v1-abc", |_| {}).await,
            start(&store, Service::Reviews, "v2", "reviews-v2-abc", |_| {}).await,
            start(&store, Service::Reviews, "v3", "reviews-v3-abc", |_| {}).await,
            start(
                &store,
                Service::Productpage,
                "v1",
                "productpage-v1-abc",
                tune,
            )
            .await,
        ];
        let client = Mesh::builder(
            store.clone(),
            Workload::new("tester", "default").label("app", "tester"),
        )
        .start()
        .await
        .unwrap();
        client.ready().await;
        let bookinfo = Bookinfo {
            _dir: dir,
            store,
            workloads,
            client,
        };
        let expected: HashMap<&str, usize> = [
            ("productpage", 1),
            ("details", 1),
            ("reviews", 3),
            ("ratings", 1),
        ]
        .into();
        bookinfo
            .until_everywhere("every endpoint", |s| {
                SERVICES
                    .iter()
                    .all(|svc| s.endpoints(&host(svc), None).len() == expected[svc])
            })
            .await;
        bookinfo
    }

    fn meshes(&self) -> impl Iterator<Item = &Mesh> {
        self.workloads.iter().map(|w| &w.mesh).chain([&self.client])
    }

    async fn until_everywhere(&self, what: &str, pred: impl Fn(&Snapshot) -> bool) {
        for mesh in self.meshes() {
            until(mesh, what, &pred).await;
        }
    }

    /// Applies Istio YAML through the store and waits until every workload runs with it.
    async fn apply(&self, yaml: &str) {
        let loaded = load_str(yaml, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let keys: Vec<_> = loaded.resources.iter().map(|r| r.key()).collect();
        self.store.apply(loaded.resources).await.unwrap();
        self.until_everywhere("the applied configuration", |s| {
            keys.iter()
                .all(|k| s.resources_of(k.kind).any(|r| r.key() == *k))
        })
        .await;
    }

    async fn stop(&mut self, name: &str) {
        let i = self.workloads.iter().position(|w| w.name == name).unwrap();
        self.workloads.remove(i).stop().await;
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = http::Request::get(format!("http://productpage:9080{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new())).unwrap()).await
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Reply {
        let res = self.client.http_client().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// Signs in as `user`; returns the cookie to send.
    async fn login(&self, user: &str) -> String {
        let req = http::Request::post("http://productpage:9080/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "username={user}&passwd=anything"
            ))))
            .unwrap();
        let reply = self.send(req).await;
        assert_eq!(reply.status, 302, "{}", reply.body);
        assert_eq!(reply.headers["location"], "/productpage");
        let cookie = reply.headers["set-cookie"].to_str().unwrap().to_owned();
        assert_eq!(cookie, format!("session={user}; HttpOnly; Path=/"));
        cookie.split(';').next().unwrap().to_owned()
    }
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

/// What a product page shows of the reviews.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
enum Stars {
    None,
    Black,
    Red,
}

/// Which reviews workload served `page`, and its stars; checks they agree.
fn served(page: &str) -> (String, Stars) {
    let podname = page
        .split("Reviews served by: ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no reviews in {page}"))
        .to_owned();
    let stars = match (
        page.contains('★'),
        page.contains("color: black"),
        page.contains("color: red"),
    ) {
        (false, false, false) => Stars::None,
        (true, true, false) => Stars::Black,
        (true, false, true) => Stars::Red,
        other => panic!("stars {other:?} in {page}"),
    };
    let expected = match podname.as_str() {
        "reviews-v1-abc" => Stars::None,
        "reviews-v2-abc" => Stars::Black,
        "reviews-v3-abc" => Stars::Red,
        other => panic!("served by {other}"),
    };
    assert_eq!(stars, expected, "{podname}");
    if stars != Stars::None {
        assert_eq!(page.matches('★').count(), 9, "5 + 4 stars: {page}");
    }
    (podname, stars)
}

fn assert_whole_page(page: &str) {
    for needle in [
        "<title>Simple Bookstore App</title>",
        "The Comedy of Errors",
        "is one of <b>William Shakespeare's</b> early plays",
        "<dt>Type:</dt><dd>paperback</dd>",
        "<dt>Pages:</dt><dd>200</dd>",
        "<dt>Publisher:</dt><dd>PublisherA</dd>",
        "<dt>Language:</dt><dd>English</dd>",
        "<dt>ISBN-10:</dt><dd>1234567890</dd>",
        "<dt>ISBN-13:</dt><dd>123-1234567890</dd>",
        "<small>Reviewer1</small>",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        "<small>Reviewer2</small>",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ] {
        assert!(page.contains(needle), "{needle:?} not in {page}");
    }
    assert!(!page.contains("Sorry"), "{page}");
    assert!(!page.contains("unavailable"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_details_and_reviews_rotating_over_three_versions() {
    let bookinfo = Bookinfo::up(|_| {}).await;
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let reply = bookinfo.get("/productpage", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
        assert_whole_page(&reply.body);
        assert!(reply.body.contains("name=\"username\"") && reply.body.contains("Sign in"));
        assert!(!reply.body.contains("Welcome"));
        let (podname, stars) = served(&reply.body);
        *seen.entry((podname, stars)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    let reply = bookinfo.get("/", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("href=\"productpage?u=normal\""));
    assert_eq!(bookinfo.get("/health", &[]).await.status, 200);
    assert_eq!(
        bookinfo
            .get("/static/bootstrap/css/bootstrap.min.css", &[])
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_istios_shapes() {
    let bookinfo = Bookinfo::up(|_| {}).await;
    let reply = bookinfo.get("/api/v1/products", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let list: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(list[0]["id"], 0);
    assert_eq!(list[0]["title"], "The Comedy of Errors");
    assert!(
        list[0]["descriptionHtml"]
            .as_str()
            .unwrap()
            .contains("Wikipedia Summary")
    );

    let reply = bookinfo.get("/api/v1/products/0", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, DETAILS_JSON));
    let reply = bookinfo.get("/api/v1/products/0/ratings", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, RATINGS_JSON));
    let reply = bookinfo.get("/api/v1/products/abc", &[]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.body,
        r#"{"error":"Sorry, product details are currently unavailable for this book."}"#
    );

    let mut pods = HashMap::new();
    for _ in 0..30 {
        let reply = bookinfo.get("/api/v1/products/0/reviews", &[]).await;
        assert_eq!(reply.status, 200);
        let reviews: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(reviews["id"], "0");
        assert_eq!(reviews["clustername"], "null");
        let pod = reviews["podname"].as_str().unwrap().to_owned();
        let list = reviews["reviews"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["reviewer"], "Reviewer1");
        assert_eq!(list[1]["reviewer"], "Reviewer2");
        let expected = match pod.as_str() {
            "reviews-v1-abc" => serde_json::Value::Null,
            "reviews-v2-abc" => serde_json::json!({"stars": 5, "color": "black"}),
            "reviews-v3-abc" => serde_json::json!({"stars": 5, "color": "red"}),
            other => panic!("served by {other}"),
        };
        assert_eq!(list[0]["rating"], expected, "{}", reply.body);
        assert!(reply.body.starts_with(&format!(
            r#"{{"id":"0","podname":"{pod}","clustername":"null","reviews":[{{"reviewer":"Reviewer1","text":"An extremely"#
        )));
        *pods.entry(pod).or_insert(0) += 1;
    }
    assert_eq!(pods.len(), 3, "{pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_travels_as_end_user_and_test_v2_routes_jason_to_v2() {
    let bookinfo = Bookinfo::up(|_| {}).await;
    bookinfo.apply(DESTINATION_RULES).await;
    bookinfo.apply(REVIEWS_TEST_V2).await;

    let cookie = bookinfo.login("jason").await;
    for _ in 0..10 {
        let reply = bookinfo.get("/productpage", &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, 200);
        assert_whole_page(&reply.body);
        assert!(reply.body.contains("Welcome, jason"), "{}", reply.body);
        assert!(!reply.body.contains("name=\"passwd\""));
        assert_eq!(
            served(&reply.body),
            ("reviews-v2-abc".to_owned(), Stars::Black)
        );
        // The API sends the user too.
        let reply = bookinfo
            .get("/api/v1/products/0/reviews", &[("cookie", &cookie)])
            .await;
        assert!(
            reply.body.contains(r#""podname":"reviews-v2-abc""#),
            "{}",
            reply.body
        );
    }
    for _ in 0..10 {
        let reply = bookinfo.get("/productpage", &[]).await;
        assert_eq!(
            served(&reply.body),
            ("reviews-v1-abc".to_owned(), Stars::None)
        );
        let reply = bookinfo
            .get("/productpage", &[("cookie", "session=mallory")])
            .await;
        assert!(reply.body.contains("Welcome, mallory"));
        assert_eq!(served(&reply.body).0, "reviews-v1-abc");
    }

    let reply = bookinfo.get("/logout", &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.headers["location"], "/productpage");
    assert!(
        reply.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_down_shows_istios_error_and_ratings_down_shows_unavailable_ratings() {
    let mut bookinfo = Bookinfo::up(|_| {}).await;
    // With a VirtualService for the host, the mesh knows details and ratings as mesh services
    // (as Kubernetes Services do under Istio), so once their workloads are gone calls fail
    // fast with 503 "no healthy upstream" instead of going out through DNS.
    bookinfo.apply(KNOWN_HOSTS).await;
    bookinfo.stop("details-v1-abc").await;
    bookinfo.stop("ratings-v1-abc").await;
    bookinfo
        .until_everywhere("details and ratings gone", |s| {
            s.endpoints(&host("details"), None).is_empty()
                && s.endpoints(&host("ratings"), None).is_empty()
        })
        .await;
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let reply = bookinfo.get("/productpage", &[]).await;
        assert_eq!(reply.status, 200);
        let page = &reply.body;
        assert!(page.contains("Error fetching product details!"), "{page}");
        assert!(
            page.contains("<p>Sorry, product details are currently unavailable for this book.</p>")
        );
        assert!(!page.contains("<dt>Type:</dt>"));
        assert!(page.contains("The slapstick humour is refreshing!"));
        assert!(!page.contains('★'));
        let podname = page
            .split("Reviews served by: ")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap()
            .to_owned();
        let errors = page
            .matches("<p><i>Ratings service is currently unavailable</i></p>")
            .count();
        let expected = if podname == "reviews-v1-abc" { 0 } else { 2 };
        assert_eq!(errors, expected, "{podname}: {page}");
        *seen.entry(podname).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    let reply = bookinfo.get("/api/v1/products/0", &[]).await;
    assert!(reply.status >= 500, "{}", reply.status);
    assert_eq!(
        reply.body,
        r#"{"error":"Sorry, product details are currently unavailable for this book."}"#
    );
    let reply = bookinfo.get("/api/v1/products/0/ratings", &[]).await;
    assert!(reply.status >= 500, "{}", reply.status);
    assert_eq!(
        reply.body,
        r#"{"error":"Sorry, product ratings are currently unavailable for this book."}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratings_abort_for_jason_shows_ratings_unavailable_to_jason_only() {
    let bookinfo = Bookinfo::up(|_| {}).await;
    bookinfo.apply(DESTINATION_RULES).await;
    bookinfo.apply(REVIEWS_TEST_V2).await;
    bookinfo.apply(RATINGS_TEST_ABORT).await;
    let cookie = bookinfo.login("jason").await;
    for _ in 0..5 {
        let reply = bookinfo.get("/productpage", &[("cookie", &cookie)]).await;
        let page = &reply.body;
        assert!(page.contains("<dt>Type:</dt><dd>paperback</dd>"));
        assert!(page.contains("Reviews served by: reviews-v2-abc"), "{page}");
        assert_eq!(
            page.matches("<p><i>Ratings service is currently unavailable</i></p>")
                .count(),
            2,
            "{page}"
        );
        assert!(!page.contains('★'));
    }
    // Ratings itself is fine for everyone else (productpage → ratings, no end-user).
    let reply = bookinfo.get("/api/v1/products/0/ratings", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, RATINGS_JSON));
    let reply = bookinfo.get("/productpage", &[]).await;
    assert_whole_page(&reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratings_delay_for_jason_times_productpage_out_after_the_timeout_and_one_retry() {
    let timeout = Duration::from_millis(300);
    let bookinfo = Bookinfo::up(|s| s.reviews_timeout = timeout).await;
    bookinfo.apply(DESTINATION_RULES).await;
    bookinfo.apply(REVIEWS_TEST_V2).await;
    bookinfo.apply(RATINGS_TEST_DELAY).await;
    let cookie = bookinfo.login("jason").await;

    let start = tokio::time::Instant::now();
    let reply = bookinfo.get("/productpage", &[("cookie", &cookie)]).await;
    let took = start.elapsed();
    let page = &reply.body;
    assert_eq!(reply.status, 200);
    assert!(page.contains("Welcome, jason"));
    assert!(page.contains("<dt>Type:</dt><dd>paperback</dd>"), "{page}");
    assert!(page.contains("Error fetching product reviews!"), "{page}");
    assert!(
        page.contains("<p>Sorry, product reviews are currently unavailable for this book.</p>")
    );
    assert!(
        took >= 2 * timeout && took < 2 * timeout + Duration::from_millis(700),
        "took {took:?}, expected ≈ {:?}",
        2 * timeout
    );

    // The API retries too.
    let start = tokio::time::Instant::now();
    let reply = bookinfo
        .get("/api/v1/products/0/reviews", &[("cookie", &cookie)])
        .await;
    assert!(start.elapsed() >= 2 * timeout);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (
            500,
            r#"{"error":"Sorry, product reviews are currently unavailable for this book."}"#
        )
    );

    // Everyone else is unaffected.
    let start = tokio::time::Instant::now();
    let reply = bookinfo.get("/productpage", &[]).await;
    assert!(start.elapsed() < timeout);
    assert_whole_page(&reply.body);
    assert_eq!(served(&reply.body).0, "reviews-v1-abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_and_trace_context_travel_from_productpage_through_reviews_to_ratings() {
    let bookinfo = Bookinfo::up(|_| {}).await;
    bookinfo.apply(DESTINATION_RULES).await;
    // Ratings fails a request carrying the test trace ids, and one without a request id
    // (productpage generates one; reviews must forward it). The trace id travels; the span id
    // in `traceparent` is each hop's own, as Envoy rewrites it.
    bookinfo
        .apply(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews, subset: v3 } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - match:
    - headers: { traceparent: { prefix: 00-0af7651916cd43dd8448eb211c80319c- } }
    - headers: { x-b3-traceid: { exact: 80f198ee56343ba864fe8b2a57d3eff7 } }
    fault: { abort: { httpStatus: 500, percentage: { value: 100 } } }
    route: [{ destination: { host: ratings, subset: v1 } }]
  - match:
    - headers:
        x-request-id:
          regex: "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}|given-id"
    route: [{ destination: { host: ratings, subset: v1 } }]
  - fault: { abort: { httpStatus: 500, percentage: { value: 100 } } }
    route: [{ destination: { host: ratings, subset: v1 } }]
"#,
        )
        .await;
    let unavailable = "<p><i>Ratings service is currently unavailable</i></p>";
    for headers in [
        &[][..],
        &[("x-request-id", "given-id")][..],
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )][..],
    ] {
        let reply = bookinfo.get("/productpage", headers).await;
        assert_eq!(served(&reply.body).1, Stars::Red, "{headers:?}");
        assert!(!reply.body.contains(unavailable), "{headers:?}");
    }
    for headers in [
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )][..],
        &[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ][..],
        &[("x-request-id", "not-a-uuid")][..],
    ] {
        let reply = bookinfo.get("/productpage", headers).await;
        assert!(reply.body.contains("Reviews served by: reviews-v3-abc"));
        assert_eq!(
            reply.body.matches(unavailable).count(),
            2,
            "{headers:?}: {}",
            reply.body
        );
    }
}
