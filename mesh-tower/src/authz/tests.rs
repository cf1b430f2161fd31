use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use mesh_core::{config::load_str, identity::Identity, snapshot::Snapshot};
use tower::{ServiceBuilder, ServiceExt};

use super::*;

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = load_str(yaml, None);
    assert!(!loaded.resources.is_empty(), "{:?}", loaded.findings);
    Snapshot::build(&loaded.resources).unwrap()
}

const ONLY_PRODUCTPAGE: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET]}}]
";

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_owned(), app.to_owned())].into()
}

type App = Authorization<
    tower::util::ServiceFn<
        fn(http::Request<Body>) -> std::future::Ready<Result<http::Response<Body>, Infallible>>,
    >,
>;

fn app(source: Arc<ArcSwap<Snapshot>>, workload: &str) -> App {
    fn reply(
        _req: http::Request<Body>,
    ) -> std::future::Ready<Result<http::Response<Body>, Infallible>> {
        std::future::ready(Ok(http::Response::new(body::full("from the app"))))
    }
    ServiceBuilder::new()
        .layer(AuthorizationLayer::new(
            source,
            "default",
            labels(workload),
            9080,
        ))
        .service(tower::service_fn(reply as fn(_) -> _))
}

fn request(method: &str, peer: Option<&str>) -> http::Request<Body> {
    let mut req = http::Request::builder()
        .method(method)
        .uri("/reviews/0")
        .header("host", "reviews:9080")
        .body(body::empty())
        .unwrap();
    let addr: SocketAddr = "10.0.0.7:40000".parse().unwrap();
    req.extensions_mut().insert(PeerAddr(addr));
    if let Some(p) = peer {
        let id: Identity = p.parse().unwrap();
        req.extensions_mut().insert(PeerIdentity::new(
            id,
            "01",
            std::time::SystemTime::UNIX_EPOCH,
        ));
    }
    req
}

async fn send(app: &App, req: http::Request<Body>) -> (u16, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings";

#[tokio::test]
async fn allow_policy_lets_only_its_principal_through_with_envoys_403() {
    let source = Arc::new(ArcSwap::from_pointee(snapshot(ONLY_PRODUCTPAGE)));
    let reviews = app(source, "reviews");
    assert_eq!(
        send(&reviews, request("GET", Some(PRODUCTPAGE))).await,
        (200, "from the app".to_owned())
    );
    assert_eq!(
        send(&reviews, request("GET", Some(RATINGS))).await,
        (403, DENIED_BODY.to_owned())
    );
    // Plaintext: no identity, so no principal matches.
    assert_eq!(send(&reviews, request("GET", None)).await.0, 403);
    // The rule allows GET only.
    assert_eq!(
        send(&reviews, request("POST", Some(PRODUCTPAGE))).await.0,
        403
    );
}

#[tokio::test]
async fn workloads_the_policy_does_not_select_are_not_affected() {
    let source = Arc::new(ArcSwap::from_pointee(snapshot(ONLY_PRODUCTPAGE)));
    let details = app(source, "details");
    assert_eq!(send(&details, request("DELETE", None)).await.0, 200);
}

#[tokio::test]
async fn follows_configuration_changes() {
    let source = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let reviews = app(source.clone(), "reviews");
    assert_eq!(send(&reviews, request("GET", Some(RATINGS))).await.0, 200);
    source.store(Arc::new(snapshot(ONLY_PRODUCTPAGE)));
    assert_eq!(send(&reviews, request("GET", Some(RATINGS))).await.0, 403);
    source.store(Arc::new(Snapshot::default()));
    assert_eq!(send(&reviews, request("GET", Some(RATINGS))).await.0, 200);
}

#[tokio::test]
async fn deny_policies_match_on_the_source_address() {
    let source = Arc::new(ArcSwap::from_pointee(snapshot(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-net, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]
",
    )));
    let reviews = app(source, "reviews");
    assert_eq!(
        send(&reviews, request("GET", Some(PRODUCTPAGE))).await.0,
        403
    );
    let mut other = request("GET", Some(PRODUCTPAGE));
    other
        .extensions_mut()
        .insert(PeerAddr("192.168.1.1:5000".parse().unwrap()));
    assert_eq!(send(&reviews, other).await.0, 200);
}
