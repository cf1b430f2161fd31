use std::{sync::Arc, time::Duration};

use mesh_core::{
    config::load_str,
    policy::fault::{FaultPolicy, PerMillion},
    snapshot::Snapshot,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::ServiceBuilder;
use tower_test::mock;

use super::*;
use crate::{
    body::{self, Body},
    fault::FaultLayer,
    route::{Caller, decide},
};

fn req() -> http::Request<Body> {
    http::Request::get("http://reviews:9080/reviews/1")
        .body(body::empty())
        .unwrap()
}

/// A request routed by a VirtualService rule with `extra` (YAML fields of the rule).
fn routed(extra: &str) -> http::Request<Body> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - route: [{{ destination: {{ host: reviews }} }}]
    {extra}
"#
    );
    let snapshot = Arc::new(Snapshot::build(&load_str(&yaml, None).resources).unwrap());
    let mut r = req();
    let (target, _) = decide(&snapshot, &Caller::new("default"), &r, 0).unwrap();
    r.extensions_mut().insert(target);
    r
}

fn is_route_timeout(err: &BoxError) -> bool {
    err.is::<RouteTimeout>()
}

#[tokio::test(start_paused = true)]
async fn fails_with_route_timeout_when_the_timeout_elapses() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        RouteTimeoutLayer::new(Duration::from_secs(3)),
    );
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let fut = svc.call(req());
    let (_r, _send) = handle.next_request().await.unwrap();
    let err = fut.await.unwrap_err();
    assert!(is_route_timeout(&err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn passes_a_response_that_arrives_in_time() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        RouteTimeoutLayer::new(Duration::from_secs(3)),
    );
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req()));
    let (_r, send) = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(2_999)).await;
    assert_pending!(fut.poll());
    send.send_response(http::Response::new(body::empty()));
    assert_eq!(fut.await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn passes_inner_errors_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        RouteTimeoutLayer::new(Duration::from_secs(3)),
    );
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req());
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_error("boom");
    let err = fut.await.unwrap_err();
    assert!(!is_route_timeout(&err));
    assert_eq!(err.to_string(), "boom");
}

#[tokio::test(start_paused = true)]
async fn a_7s_fault_delay_under_a_3s_timeout_times_out_at_3s() {
    let (mut svc, mut handle) =
        mock::spawn_with::<http::Request<Body>, http::Response<Body>, _, _>(|inner| {
            ServiceBuilder::new()
                .layer(RouteTimeoutLayer::new(Duration::from_secs(3)))
                .layer(FaultLayer::new(FaultPolicy {
                    delay: Some((Duration::from_secs(7), PerMillion::ALL)),
                    abort: None,
                }))
                .service(inner)
        });
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let err = svc.call(req()).await.unwrap_err();
    assert!(is_route_timeout(&err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(handle.poll_request().is_pending(), "inner never called");
}

#[tokio::test(start_paused = true)]
async fn from_target_times_out_a_routed_fault_delay_at_the_route_timeout() {
    let (mut svc, mut handle) =
        mock::spawn_with::<http::Request<Body>, http::Response<Body>, _, _>(|inner| {
            ServiceBuilder::new()
                .layer(RouteTimeoutLayer::from_target())
                .layer(FaultLayer::from_target())
                .service(inner)
        });
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let err = svc
        .call(routed(
            "timeout: 3s\n    fault: { delay: { fixedDelay: 7s, percentage: { value: 100 } } }",
        ))
        .await
        .unwrap_err();
    assert!(is_route_timeout(&err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(handle.poll_request().is_pending(), "inner never called");
}

#[tokio::test(start_paused = true)]
async fn from_target_without_a_timeout_does_not_time() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        RouteTimeoutLayer::from_target(),
    );
    for r in [req(), routed("")] {
        assert_ready_ok!(svc.poll_ready());
        let mut fut = task::spawn(svc.call(r));
        let (_r, send) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_pending!(fut.poll());
        send.send_response(http::Response::new(body::empty()));
        assert_eq!(fut.await.unwrap().status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn from_target_reads_the_route_timeout() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        RouteTimeoutLayer::from_target(),
    );
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let fut = svc.call(routed("timeout: 500ms"));
    let (_r, _send) = handle.next_request().await.unwrap();
    assert!(is_route_timeout(&fut.await.unwrap_err()));
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}
