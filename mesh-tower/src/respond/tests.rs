use std::sync::Arc;

use http_body_util::BodyExt;
use mesh_core::{
    config::load_str,
    snapshot::{Route, Snapshot},
};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::*;
use crate::route::{Caller, decide};

/// The Target of a request for `path` under a VirtualService with one `rule` (YAML of one
/// `spec.http` entry, indented by four spaces).
fn target(rule: &str, path: &str) -> Target {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - {rule}
"#
    );
    let loaded = load_str(&yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let snapshot = Arc::new(Snapshot::build(&loaded.resources).unwrap());
    let req = http::Request::get(format!("http://reviews:9080{path}"))
        .body(())
        .unwrap();
    decide(&snapshot, &Caller::new("default"), &req, 0)
        .unwrap()
        .0
}

fn redirect_of(route: &Route) -> &Redirect {
    match &route.action {
        Action::Redirect(r) => r,
        other => panic!("not a redirect: {other:?}"),
    }
}

/// The match and redirect of a rule, a request URI, extra request headers, the `Location`.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn builds_locations_as_envoy() {
    let cases: &[Case] = &[
        // uri replaces the whole path, the query is kept
        (
            "redirect: { uri: /v1/bookRatings }",
            "http://ratings:9080/v1/getProductRatings?id=1",
            &[],
            "http://ratings:9080/v1/bookRatings?id=1",
        ),
        // a query in uri wins over the request's
        (
            "redirect: { uri: '/new?a=b' }",
            "http://ratings:9080/old?id=1",
            &[],
            "http://ratings:9080/new?a=b",
        ),
        // prefix_rewrite replaces the matched prefix
        (
            "match: [{ uri: { prefix: /old } }]\n    redirect: { prefixRewrite: /new }",
            "http://a:9080/old/x?q=1",
            &[],
            "http://a:9080/new/x?q=1",
        ),
        // ... the whole path of an exact match
        (
            "match: [{ uri: { exact: /exact } }]\n    redirect: { prefixRewrite: /other/ }",
            "http://a/exact?q",
            &[],
            "http://a/other/?q",
        ),
        // ... the leading '/' when the match has no uri condition (Istio's prefix "/")
        (
            "redirect: { prefixRewrite: /bar/ }",
            "http://a/foo",
            &[],
            "http://a/bar/foo",
        ),
        // authority replaces the host, request port included
        (
            "redirect: { authority: b.example }",
            "http://a:9080/p",
            &[],
            "http://b.example/p",
        ),
        // a scheme change drops the old scheme's default port ...
        (
            "redirect: { scheme: https }",
            "http://a:80/p",
            &[],
            "https://a/p",
        ),
        // ... and keeps any other
        (
            "redirect: { scheme: https }",
            "http://a:9080/p",
            &[],
            "https://a:9080/p",
        ),
        // port replaces the request's port
        (
            "redirect: { port: 8443 }",
            "http://a:9080/p",
            &[],
            "http://a:8443/p",
        ),
        (
            "redirect: { authority: 'b:1', port: 2 }",
            "http://a:9080/p",
            &[],
            "http://b:2/p",
        ),
        // FROM_PROTOCOL_DEFAULT: the default port, omitted
        (
            "redirect: { scheme: https, derivePort: FROM_PROTOCOL_DEFAULT }",
            "http://a:9080/p",
            &[],
            "https://a/p",
        ),
        // FROM_REQUEST_PORT: the request's port
        (
            "redirect: { authority: b, derivePort: FROM_REQUEST_PORT }",
            "http://a:9080/p",
            &[],
            "http://b:9080/p",
        ),
        (
            "redirect: { scheme: https, derivePort: FROM_REQUEST_PORT }",
            "http://a/p",
            &[],
            "https://a:80/p",
        ),
        // origin-form request: Host and x-forwarded-proto
        (
            "redirect: { uri: /x }",
            "/p?y",
            &[("host", "a.example:8080"), ("x-forwarded-proto", "https")],
            "https://a.example:8080/x?y",
        ),
        // IPv6 literal
        (
            "redirect: { port: 81 }",
            "http://[::1]:8080/p",
            &[],
            "http://[::1]:81/p",
        ),
        // a path without a leading '/' gets one
        (
            "redirect: { uri: relative }",
            "http://a/p",
            &[],
            "http://a/relative",
        ),
    ];
    for (rule, uri, headers, want) in cases {
        let path = uri.split_once("://").map_or(*uri, |(_, rest)| {
            &rest[rest.find('/').unwrap_or(rest.len())..]
        });
        let path = path.split('?').next().unwrap();
        let t = target(rule, path);
        let route = t.route().unwrap();
        let mut req = http::Request::get(*uri).body(()).unwrap();
        for (k, v) in *headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        let got = redirect_location(redirect_of(route), route, t.match_index, &req);
        assert_eq!(&got, want, "rule {rule:?}, request {uri}");
    }
}

type Handle = mock::Handle<http::Request<Body>, http::Response<Body>>;

async fn text(res: http::Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn routed(rule: &str, path: &str) -> http::Request<Body> {
    let mut req = http::Request::get(format!("http://reviews:9080{path}"))
        .body(body::empty())
        .unwrap();
    req.extensions_mut().insert(target(rule, path));
    req
}

#[tokio::test]
async fn redirect_routes_are_answered_without_calling_inner() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(RespondLayer::from_target());
    assert_ready_ok!(svc.poll_ready());
    let res = svc
        .call(routed(
            "match: [{ uri: { prefix: /v1 } }]\n    redirect: { prefixRewrite: /v2, redirectCode: 308 }",
            "/v1/x",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], "http://reviews:9080/v2/x");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test]
async fn redirects_default_to_301() {
    let (mut svc, _handle): (_, Handle) = mock::spawn_layer(RespondLayer::from_target());
    assert_ready_ok!(svc.poll_ready());
    let res = svc
        .call(routed("redirect: { uri: /x }", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
}

#[tokio::test]
async fn direct_responses_answer_with_status_and_text_body() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(RespondLayer::from_target());
    assert_ready_ok!(svc.poll_ready());
    let res = svc
        .call(routed(
            "directResponse: { status: 503, body: { string: unavailable } }",
            "/",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(text(res).await, "unavailable");

    assert_ready_ok!(svc.poll_ready());
    let res = svc
        .call(routed("directResponse: { status: 204 }", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.headers().get("content-type").is_none());
    assert_eq!(text(res).await, "");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test]
async fn forwarding_routes_and_untargeted_requests_go_on() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(RespondLayer::from_target());
    for req in [
        routed("route: [{ destination: { host: reviews } }]", "/"),
        http::Request::new(body::empty()),
    ] {
        assert_ready_ok!(svc.poll_ready());
        let fut = svc.call(req);
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(body::full("upstream")));
        assert_eq!(text(fut.await.unwrap()).await, "upstream");
    }
}

#[tokio::test]
async fn static_layers_answer_every_request() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(RespondLayer::direct_response(
        StatusCode::IM_A_TEAPOT,
        "short and stout",
    ));
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(http::Request::new(body::empty())).await.unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(text(res).await, "short and stout");

    let (mut svc, _h): (_, Handle) = mock::spawn_layer(RespondLayer::redirect(Redirect {
        uri: None,
        prefix_rewrite: Some("/api/".into()),
        authority: None,
        port: None,
        derive_port: None,
        scheme: Some("https".into()),
        code: 302,
    }));
    assert_ready_ok!(svc.poll_ready());
    let req = http::Request::get("http://a:80/users?id=1")
        .body(body::empty())
        .unwrap();
    let res = svc.call(req).await.unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://a/api/users?id=1");
    assert!(handle.poll_request().is_pending());
}
