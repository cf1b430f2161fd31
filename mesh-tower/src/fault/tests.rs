use std::{sync::Arc, time::Duration};

use http_body_util::BodyExt;
use mesh_core::{
    config::load_str,
    policy::fault::{AbortWith, FaultPolicy, PerMillion},
    snapshot::Snapshot,
};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::{
    body::{self, Body},
    flags::{ResponseFlag, ResponseFlags},
    route::{Caller, decide},
    target::Target,
};

fn delay(d: Duration, share: PerMillion) -> FaultPolicy {
    FaultPolicy {
        delay: Some((d, share)),
        abort: None,
    }
}

fn abort(with: AbortWith, share: PerMillion) -> FaultPolicy {
    FaultPolicy {
        delay: None,
        abort: Some((with, share)),
    }
}

fn req() -> http::Request<Body> {
    http::Request::get("http://reviews:9080/reviews/1")
        .body(body::empty())
        .unwrap()
}

fn grpc_req() -> http::Request<Body> {
    http::Request::post("http://reviews:9080/pkg.Svc/Call")
        .header(http::header::CONTENT_TYPE, "application/grpc+proto")
        .body(body::empty())
        .unwrap()
}

async fn text(res: http::Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn flags(res: &http::Response<Body>) -> String {
    ResponseFlags::of(res).to_string()
}

/// A request routed by a VirtualService rule with `fault`.
fn routed(fault: &str) -> http::Request<Body> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - fault: {fault}
    route: [{{ destination: {{ host: reviews }} }}]
"#
    );
    let snapshot = Arc::new(Snapshot::build(&load_str(&yaml, None).resources).unwrap());
    let mut r = req();
    let (target, _) = decide(&snapshot, &Caller::new("default"), &r, 0).unwrap();
    assert!(target.route().unwrap().fault.is_some());
    r.extensions_mut().insert(target);
    r
}

#[tokio::test]
async fn aborts_with_the_http_status_and_envoys_body_without_calling_inner() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(abort(AbortWith::Http(503), PerMillion::ALL)),
    );
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(flags(&res), "FI");
    assert_eq!(text(res).await, "fault filter abort");
    assert!(
        handle.poll_request().is_pending(),
        "inner must not be called"
    );
}

#[tokio::test]
async fn aborts_grpc_requests_with_a_trailers_only_status() {
    let (mut svc, _handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(abort(AbortWith::Http(503), PerMillion::ALL)),
    );
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(grpc_req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-message"], "fault filter abort");
    assert_eq!(flags(&res), "FI");
    assert_eq!(text(res).await, "");
}

#[tokio::test]
async fn grpc_abort_answers_the_configured_grpc_status() {
    let (mut svc, _handle) =
        mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(FaultLayer::new(abort(
            AbortWith::Grpc(8, "RESOURCE_EXHAUSTED".into()),
            PerMillion::ALL,
        )));
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-message"], "fault filter abort");
}

#[test]
fn maps_http_statuses_to_grpc_codes_as_envoy() {
    for (http, grpc) in [
        (400, 13),
        (401, 16),
        (403, 7),
        (404, 12),
        (429, 14),
        (502, 14),
        (503, 14),
        (504, 14),
        (500, 2),
        (418, 2),
    ] {
        let status = http::StatusCode::from_u16(http).unwrap();
        assert_eq!(grpc_code_for_http(status), grpc, "{http}");
    }
}

#[tokio::test(start_paused = true)]
async fn delays_then_calls_inner_and_flags_di() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(delay(Duration::from_secs(5), PerMillion::ALL)),
    );
    assert_ready_ok!(svc.poll_ready());
    let start = tokio::time::Instant::now();
    let mut fut = task::spawn(svc.call(req()));
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_pending!(fut.poll());
    assert!(handle.poll_request().is_pending(), "still sleeping");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r.uri().path(), "/reviews/1");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    send.send_response(http::Response::new(body::full("ok")));
    let res = fut.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(flags(&res), "DI");
    assert_eq!(text(res).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn delays_before_aborting_and_flags_both() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(FaultPolicy {
            delay: Some((Duration::from_secs(2), PerMillion::ALL)),
            abort: Some((AbortWith::Http(500), PerMillion::ALL)),
        }),
    );
    assert_ready_ok!(svc.poll_ready());
    let start = tokio::time::Instant::now();
    let res = svc.call(req()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(res.status(), 500);
    assert_eq!(flags(&res), "DI,FI");
    assert!(
        handle.poll_request().is_pending(),
        "inner must not be called"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sleeping_request_does_not_hold_inner_readiness() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(delay(Duration::from_secs(1), PerMillion::ALL)),
    );
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut delayed = task::spawn(svc.call(req()));
    assert_pending!(delayed.poll());
    // No capacity left, but the service polled ready was not consumed by the sleeping
    // request: the layer is still ready for the next one.
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    // After the sleep the delayed request waits for the inner service's readiness itself.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_pending!(delayed.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    assert!(delayed.is_woken());
    assert_pending!(delayed.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(http::Response::new(body::empty()));
    let res = delayed.await.unwrap();
    assert_eq!(flags(&res), "DI");
}

#[tokio::test]
async fn zero_percentages_pass_every_request_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::new(FaultPolicy {
            delay: Some((Duration::from_secs(10), PerMillion(0))),
            abort: Some((AbortWith::Http(503), PerMillion(0))),
        }),
    );
    for _ in 0..20 {
        assert_ready_ok!(svc.poll_ready());
        let fut = svc.call(req());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(body::empty()));
        let res = fut.await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(ResponseFlags::of(&res).is_empty());
    }
}

#[tokio::test]
async fn from_target_reads_the_routes_fault() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::from_target(),
    );
    assert_ready_ok!(svc.poll_ready());
    let res = svc
        .call(routed(
            "{ abort: { httpStatus: 418, percentage: { value: 100 } } }",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(flags(&res), "FI");

    // Without a Target the request passes through untouched.
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(http::Response::new(body::empty()));
    assert_eq!(fut.await.unwrap().status(), 200);
}

#[tokio::test]
async fn from_target_unset_percentage_faults_nothing() {
    let (mut svc, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
        FaultLayer::from_target(),
    );
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(routed("{ abort: { httpStatus: 503 } }"));
    let (r, send) = handle.next_request().await.unwrap();
    assert!(r.extensions().get::<Target>().is_some());
    send.send_response(http::Response::new(body::empty()));
    assert_eq!(fut.await.unwrap().status(), 200);
}

/// Sends `n` requests through `policy` to an always-ready inner service; counts the
/// responses carrying `DI`, `FI`, and both.
async fn count_faults(policy: FaultPolicy, n: usize) -> (usize, usize, usize) {
    let inner = tower::service_fn(|_req: http::Request<Body>| async {
        Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
    });
    let svc = FaultLayer::new(policy).layer(inner);
    let (mut di, mut fi, mut both) = (0, 0, 0);
    for _ in 0..n {
        let res = svc.clone().oneshot(req()).await.unwrap();
        let f = ResponseFlags::of(&res);
        let (d, a) = (
            f.contains(ResponseFlag::DelayInjected),
            f.contains(ResponseFlag::FaultInjected),
        );
        di += usize::from(d);
        fi += usize::from(a);
        both += usize::from(d && a);
    }
    (di, fi, both)
}

#[tokio::test(start_paused = true)]
async fn faults_the_configured_share_of_requests() {
    const N: usize = 2_000;
    let (di, fi, both) = count_faults(
        FaultPolicy {
            delay: Some((Duration::from_millis(1), PerMillion::from_percent(20.0))),
            abort: Some((AbortWith::Http(503), PerMillion::from_percent(50.0))),
        },
        N,
    )
    .await;
    let share = |k: usize| k as f64 / N as f64;
    // ±5 points is more than 4 standard deviations at n = 2,000.
    assert!((share(fi) - 0.50).abs() < 0.05, "aborted {fi}/{N}");
    assert!((share(di) - 0.20).abs() < 0.05, "delayed {di}/{N}");
    // Independent draws: both ≈ 20 % × 50 % = 10 %.
    assert!((share(both) - 0.10).abs() < 0.05, "both {both}/{N}");
}
