use std::{sync::Arc, time::Duration};

use mesh_core::{
    config::load_str,
    snapshot::{Snapshot, matcher::StringMatcher},
};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::*;
use crate::route::{Caller, decide};

fn policy() -> route::Cors {
    route::Cors {
        allow_origins: vec![
            StringMatcher::Exact("https://a.example".into()),
            StringMatcher::Prefix("https://b.".into()),
        ],
        allow_methods: vec!["GET".into(), "POST".into()],
        allow_headers: vec!["x-user".into(), "content-type".into()],
        expose_headers: vec!["x-trace".into()],
        max_age: Some(Duration::from_millis(90_500)),
        allow_credentials: Some(true),
        forward_unmatched_preflights: true,
    }
}

fn preflight(origin: &str) -> http::Request<Body> {
    http::Request::options("http://reviews:9080/api")
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(body::empty())
        .unwrap()
}

fn get(origin: Option<&str>) -> http::Request<Body> {
    let mut b = http::Request::get("http://reviews:9080/api");
    if let Some(o) = origin {
        b = b.header(ORIGIN, o);
    }
    b.body(body::empty()).unwrap()
}

fn has_cors_headers(h: &HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with("access-control-"))
}

fn vary(h: &HeaderMap) -> Vec<&str> {
    h.get_all(VARY)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

type Handle = mock::Handle<http::Request<Body>, http::Response<Body>>;

/// Sends `req` through `layer`, answering with `res` if the inner service is called.
async fn send(
    layer: CorsLayer,
    req: http::Request<Body>,
    res: http::Response<Body>,
) -> (http::Response<Body>, bool) {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);
    let called = match handle.poll_request() {
        Poll::Ready(Some((_, send))) => {
            send.send_response(res);
            true
        }
        _ => false,
    };
    (fut.await.unwrap(), called)
}

fn ok() -> http::Response<Body> {
    http::Response::new(body::full("hi"))
}

#[tokio::test]
async fn answers_a_matched_preflight_without_calling_inner() {
    let (res, called) = send(
        CorsLayer::new(policy()),
        preflight("https://a.example"),
        ok(),
    )
    .await;
    assert!(!called);
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "x-user,content-type");
    assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "90");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert!(h.get(ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
    assert_eq!(vary(h), ["Origin"]);
}

#[tokio::test]
async fn preflight_leaves_out_unset_fields() {
    let mut p = policy();
    p.allow_methods.clear();
    p.allow_headers.clear();
    p.max_age = None;
    p.allow_credentials = Some(false);
    let (res, _) = send(CorsLayer::new(p), preflight("https://b.example"), ok()).await;
    let h = res.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://b.example");
    assert_eq!(h.len(), 2, "{h:?}");
}

#[tokio::test]
async fn decorates_the_response_of_a_matched_request() {
    let mut upstream = ok();
    upstream
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    upstream
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    let (res, called) = send(
        CorsLayer::new(policy()),
        get(Some("https://b.other")),
        upstream,
    )
    .await;
    assert!(called);
    let h = res.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://b.other");
    assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert!(h.get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
    assert_eq!(vary(h), ["Accept-Encoding", "Origin"]);
}

#[tokio::test]
async fn unmatched_or_missing_origins_get_no_cors_headers() {
    for req in [get(Some("https://evil.example")), get(None)] {
        let (res, called) = send(CorsLayer::new(policy()), req, ok()).await;
        assert!(called);
        assert!(!has_cors_headers(res.headers()));
        assert_eq!(vary(res.headers()), ["Origin"]);
    }
}

#[tokio::test]
async fn does_not_repeat_vary_origin() {
    for existing in ["origin", "Accept, Origin", "*"] {
        let mut upstream = ok();
        upstream
            .headers_mut()
            .insert(VARY, HeaderValue::from_static(existing));
        let (res, _) = send(CorsLayer::new(policy()), get(None), upstream).await;
        assert_eq!(vary(res.headers()), [existing]);
    }
}

#[tokio::test]
async fn forwards_unmatched_preflights_by_default() {
    let (res, called) = send(CorsLayer::new(policy()), preflight("https://evil"), ok()).await;
    assert!(called);
    assert!(!has_cors_headers(res.headers()));
}

#[tokio::test]
async fn answers_unmatched_preflights_when_ignoring_them() {
    let mut p = policy();
    p.forward_unmatched_preflights = false;
    let (res, called) = send(CorsLayer::new(p), preflight("https://evil"), ok()).await;
    assert!(!called);
    assert_eq!(res.status(), 200);
    assert!(!has_cors_headers(res.headers()));
    assert_eq!(vary(res.headers()), ["Origin"]);
}

#[tokio::test]
async fn an_options_request_without_request_method_is_not_a_preflight() {
    let req = http::Request::options("http://reviews:9080/api")
        .header(ORIGIN, "https://a.example")
        .body(body::empty())
        .unwrap();
    let (res, called) = send(CorsLayer::new(policy()), req, ok()).await;
    assert!(called);
    assert_eq!(
        res.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://a.example"
    );
    assert!(res.headers().get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
}

fn routed(mut req: http::Request<Body>, cors: &str) -> http::Request<Body> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - corsPolicy: {cors}
    route: [{{ destination: {{ host: reviews }} }}]
"#
    );
    let snapshot = Arc::new(Snapshot::build(&load_str(&yaml, None).resources).unwrap());
    let (target, _) = decide(&snapshot, &Caller::new("default"), &req, 0).unwrap();
    assert!(target.route().unwrap().cors.is_some());
    req.extensions_mut().insert(target);
    req
}

#[tokio::test]
async fn from_target_applies_the_routes_policy() {
    let cors = "{ allowOrigins: [{ regex: 'https://.*\\.example' }], allowMethods: [GET], maxAge: 24h, unmatchedPreflights: IGNORE }";
    let (res, called) = send(
        CorsLayer::from_target(),
        routed(preflight("https://x.example"), cors),
        ok(),
    )
    .await;
    assert!(!called);
    assert_eq!(
        res.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://x.example"
    );
    assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET");
    assert_eq!(res.headers()[ACCESS_CONTROL_MAX_AGE], "86400");

    let (res, called) = send(
        CorsLayer::from_target(),
        routed(preflight("https://x.other"), cors),
        ok(),
    )
    .await;
    assert!(!called, "IGNORE answers unmatched preflights");
    assert!(!has_cors_headers(res.headers()));
}

#[tokio::test]
async fn from_target_passes_requests_without_target_untouched() {
    let (res, called) = send(
        CorsLayer::from_target(),
        preflight("https://a.example"),
        ok(),
    )
    .await;
    assert!(called);
    assert!(res.headers().is_empty());
}
