use std::sync::Arc;

use mesh_core::{
    config::load_str,
    snapshot::{Snapshot, route},
};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::*;
use crate::{
    body::{self, Body},
    route::{Caller, decide},
    target::Target,
};

fn name(s: &str) -> http::HeaderName {
    s.parse().unwrap()
}

fn pair(n: &str, v: &str) -> (http::HeaderName, http::HeaderValue) {
    (name(n), v.parse().unwrap())
}

fn values(h: &http::HeaderMap, n: &str) -> Vec<String> {
    h.get_all(n)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A request for `uri` routed by the first matching rule of `http` (YAML of `spec.http`).
fn routed(http_rules: &str, uri: &str) -> http::Request<Body> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
{http_rules}
"#
    );
    let snapshot = Arc::new(Snapshot::build(&load_str(&yaml, None).resources).unwrap());
    let mut r = http::Request::get(uri).body(body::empty()).unwrap();
    let (target, dest) = decide(&snapshot, &Caller::new("default"), &r, 0).unwrap();
    r.extensions_mut().insert(target);
    if let Some(d) = dest {
        r.extensions_mut().insert(d);
    }
    r
}

#[tokio::test]
async fn applies_request_ops_remove_then_set_then_add() {
    let ops = route::HeaderOps {
        request_remove: vec![name("x-secret"), name("x-b")],
        request_set: vec![pair("x-a", "set"), pair("x-b", "set")],
        request_add: vec![pair("x-a", "added"), pair("x-c", "added")],
        ..route::HeaderOps::default()
    };
    let (mut svc, mut handle) =
        mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(HeaderOpsLayer::new(ops));
    let req = http::Request::get("http://reviews/")
        .header("x-secret", "s")
        .header("x-a", "old1")
        .header("x-a", "old2")
        .header("x-b", "old")
        .header("x-c", "old")
        .body(body::empty())
        .unwrap();
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);
    let (r, send) = handle.next_request().await.unwrap();
    let h = r.headers();
    assert!(h.get("x-secret").is_none());
    assert_eq!(values(h, "x-a"), ["set", "added"]);
    // Removed first, then set: the set value survives.
    assert_eq!(values(h, "x-b"), ["set"]);
    assert_eq!(values(h, "x-c"), ["old", "added"]);
    send.send_response(http::Response::new(body::empty()));
    fut.await.unwrap();
}

#[tokio::test]
async fn applies_response_ops_to_the_response() {
    let ops = route::HeaderOps {
        response_remove: vec![name("server")],
        response_set: vec![pair("cache-control", "no-store")],
        response_add: vec![pair("x-mesh", "1")],
        ..route::HeaderOps::default()
    };
    let (mut svc, mut handle) =
        mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(HeaderOpsLayer::new(ops));
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(http::Request::new(body::empty()));
    let (r, send) = handle.next_request().await.unwrap();
    assert!(r.headers().is_empty(), "no request ops");
    let res = http::Response::builder()
        .header("server", "app")
        .header("cache-control", "max-age=60")
        .header("x-mesh", "0")
        .body(body::empty())
        .unwrap();
    send.send_response(res);
    let res = fut.await.unwrap();
    let h = res.headers();
    assert!(h.get("server").is_none());
    assert_eq!(values(h, "cache-control"), ["no-store"]);
    assert_eq!(values(h, "x-mesh"), ["0", "1"]);
}

#[tokio::test]
async fn from_target_applies_destination_then_route_ops() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        HeaderOpsLayer::from_target(),
    );
    let req = routed(
        r#"
  - headers:
      request: { set: { x-who: route } }
      response: { add: { x-route: "1" } }
    route:
    - destination: { host: reviews, subset: v2 }
      headers:
        request: { set: { x-who: destination, x-dest: v2 } }
        response: { set: { x-route: dest } }
"#,
        "http://reviews:9080/",
    );
    assert!(req.extensions().get::<DestinationHeaders>().is_some());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(values(r.headers(), "x-who"), ["route"], "route set wins");
    assert_eq!(values(r.headers(), "x-dest"), ["v2"]);
    send.send_response(http::Response::new(body::empty()));
    let res = fut.await.unwrap();
    assert_eq!(values(res.headers(), "x-route"), ["dest", "1"]);
}

#[tokio::test]
async fn from_target_passes_requests_without_target_untouched() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        HeaderOpsLayer::from_target(),
    );
    assert_ready_ok!(svc.poll_ready());
    let req = http::Request::get("http://reviews/")
        .header("x-a", "1")
        .body(body::empty())
        .unwrap();
    let fut = svc.call(req);
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r.headers().len(), 1);
    send.send_response(http::Response::new(body::empty()));
    assert!(fut.await.unwrap().headers().is_empty());
}

async fn rewritten(layer: RewriteLayer, req: http::Request<Body>) -> http::Request<Body> {
    let (mut svc, mut handle) =
        mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call(req);
    handle.next_request().await.unwrap().0
}

#[tokio::test]
async fn rewrites_the_matched_prefix_and_keeps_the_query() {
    let req = routed(
        r#"
  - match: [{ uri: { prefix: /reviews } }]
    rewrite: { uri: /v2/reviews }
    route: [{ destination: { host: reviews } }]
"#,
        "http://reviews:9080/reviews/1?user=jason",
    );
    let target_host = req.extensions().get::<Target>().unwrap().host.clone();
    let r = rewritten(RewriteLayer::from_target(), req).await;
    assert_eq!(r.uri(), "http://reviews:9080/v2/reviews/1?user=jason");
    assert_eq!(r.headers()[ORIGINAL_PATH], "/reviews/1?user=jason");
    assert_eq!(r.extensions().get::<Target>().unwrap().host, target_host);
}

#[tokio::test]
async fn rewrites_the_whole_path_of_an_exact_match() {
    let req = routed(
        r#"
  - match: [{ uri: { exact: /old } }]
    rewrite: { uri: /new }
    route: [{ destination: { host: reviews } }]
"#,
        "http://reviews:9080/old?q",
    );
    let r = rewritten(RewriteLayer::from_target(), req).await;
    assert_eq!(r.uri(), "http://reviews:9080/new?q");
}

#[tokio::test]
async fn rewrites_with_regex_capture_groups() {
    let req = routed(
        r#"
  - match: [{ uri: { prefix: /service } }]
    rewrite: { uriRegexRewrite: { match: '^/service/([^/]+)(/.*)$', rewrite: '\2/instance/\1' } }
    route: [{ destination: { host: reviews } }]
"#,
        "http://reviews:9080/service/foo/v1/api",
    );
    let r = rewritten(RewriteLayer::from_target(), req).await;
    assert_eq!(r.uri().path(), "/v1/api/instance/foo");
}

#[tokio::test]
async fn rewrites_the_authority_but_not_the_destination() {
    let req = routed(
        r#"
  - rewrite: { authority: ratings.example.com }
    route: [{ destination: { host: reviews, subset: v1 } }]
"#,
        "http://reviews:9080/x",
    );
    let mut req = req;
    req.headers_mut()
        .insert(http::header::HOST, "reviews:9080".parse().unwrap());
    let r = rewritten(RewriteLayer::from_target(), req).await;
    assert_eq!(r.uri(), "http://ratings.example.com/x");
    assert_eq!(r.headers()[http::header::HOST], "ratings.example.com");
    assert!(
        r.headers().get(ORIGINAL_PATH).is_none(),
        "path not rewritten"
    );
    let t = r.extensions().get::<Target>().unwrap();
    assert_eq!(&*t.host, "reviews.default.svc.cluster.local");
    assert_eq!(t.subset.as_deref(), Some("v1"));
}

#[tokio::test]
async fn authority_rewrite_of_an_origin_form_request_sets_host() {
    let rw = route::Rewrite {
        uri: None,
        authority: Some("b:81".into()),
        uri_regex: None,
    };
    let req = http::Request::get("/x").body(body::empty()).unwrap();
    let r = rewritten(RewriteLayer::new(rw, None), req).await;
    assert_eq!(r.uri(), "/x");
    assert_eq!(r.headers()[http::header::HOST], "b:81");
}

#[tokio::test]
async fn a_static_prefix_rewrite_leaves_other_paths_alone() {
    let rw = || route::Rewrite {
        uri: Some("/".into()),
        authority: None,
        uri_regex: None,
    };
    let req = |uri: &str| http::Request::get(uri).body(body::empty()).unwrap();
    let layer = || RewriteLayer::new(rw(), Some("/api/".into()));
    assert_eq!(
        rewritten(layer(), req("/api/users?a=1")).await.uri(),
        "/users?a=1"
    );
    assert_eq!(rewritten(layer(), req("/API/users")).await.uri(), "/users");
    assert_eq!(rewritten(layer(), req("/other")).await.uri(), "/other");
    // Without a prefix, the whole path is replaced.
    let r = rewritten(RewriteLayer::new(rw(), None), req("/a/b?c")).await;
    assert_eq!(r.uri(), "/?c");
}

#[tokio::test]
async fn requests_without_a_rewrite_pass_untouched() {
    let req = routed(
        "  - route: [{ destination: { host: reviews } }]",
        "http://reviews:9080/x?y",
    );
    let r = rewritten(RewriteLayer::from_target(), req).await;
    assert_eq!(r.uri(), "http://reviews:9080/x?y");
    assert!(r.headers().is_empty());
    let plain = http::Request::get("http://reviews/z")
        .body(body::empty())
        .unwrap();
    assert_eq!(
        rewritten(RewriteLayer::from_target(), plain).await.uri(),
        "http://reviews/z"
    );
}
