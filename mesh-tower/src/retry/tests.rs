use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_core::{
    BoxError,
    config::load_str,
    policy::retry::{
        DEFAULT_BACKOFF, ExplicitRetry, RetryBudget, RetryOn, RetryPolicy, backoff_ceiling,
    },
    snapshot::{Caller, RequestInfo, Routing, Snapshot},
};
use tokio::{task::JoinHandle, time::Instant};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::*;
use crate::{
    body::{self, Body},
    error::{PerTryTimeout, UpstreamConnectFailure, UpstreamReset, cause_ref},
    flags::{ResponseFlag, ResponseFlags},
    target::{Target, TriedEndpoints},
};

type Svc = mock::Spawn<Retry<mock::Mock<Request<Body>, Response<Body>>>>;
type Handle = mock::Handle<Request<Body>, Response<Body>>;

// === helpers ===

fn explicit(retry_on: &str, attempts: u32) -> ExplicitRetry {
    ExplicitRetry {
        attempts,
        per_try_timeout: None,
        retry_on: RetryOn::parse(retry_on).unwrap(),
        backoff: DEFAULT_BACKOFF,
        retry_ignore_previous_hosts: true,
    }
}

fn spawn(layer: RetryLayer) -> (Svc, Handle) {
    mock::spawn_layer(layer)
}

fn spawn_policy(policy: RetryPolicy) -> (Svc, Handle) {
    spawn(RetryLayer::new(policy))
}

fn request(method: http::Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://reviews:9080/reviews/1")
        .body(body::empty())
        .unwrap()
}

fn get() -> Request<Body> {
    request(http::Method::GET)
}

fn post() -> Request<Body> {
    request(http::Method::POST)
}

fn status(code: u16) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(body::empty())
        .unwrap()
}

fn connect_failure() -> BoxError {
    UpstreamConnectFailure {
        endpoint: "10.0.0.1:9080".into(),
        source: "connection refused".into(),
    }
    .into()
}

fn reset(refused: bool) -> BoxError {
    UpstreamReset {
        endpoint: "10.0.0.1:9080".into(),
        refused,
        source: "stream reset".into(),
    }
    .into()
}

fn call(svc: &mut Svc, req: Request<Body>) -> JoinHandle<Result<Response<Body>, BoxError>> {
    assert_ready_ok!(svc.poll_ready());
    tokio::spawn(svc.call(req))
}

async fn respond(handle: &mut Handle, res: Response<Body>) -> Request<Body> {
    let (req, send) = handle.next_request().await.expect("a try");
    send.send_response(res);
    req
}

async fn fail(handle: &mut Handle, err: BoxError) -> Request<Body> {
    let (req, send) = handle.next_request().await.expect("a try");
    send.send_error(err);
    req
}

/// Lets spawned tasks run (paused time only advances when every task is idle).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn assert_no_more_tries(handle: &mut Handle) {
    assert!(
        handle.poll_request().is_pending(),
        "no further try expected"
    );
}

fn has_urx(res: &Response<Body>) -> bool {
    ResponseFlags::of(res).contains(ResponseFlag::UpstreamRetryLimitExceeded)
}

async fn body_bytes(req: Request<Body>) -> Bytes {
    req.into_body().collect().await.unwrap().to_bytes()
}

// === explicit policies ===

#[tokio::test(start_paused = true)]
async fn explicit_policy_retries_503_up_to_attempts_then_returns_it_with_urx() {
    let layer = RetryLayer::new(RetryPolicy::Explicit(explicit("5xx", 2)));
    let stats = layer.stats().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, post());
    for _ in 0..3 {
        respond(&mut handle, status(503)).await;
    }
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.status(), 503);
    assert!(has_urx(&res));
    assert_no_more_tries(&mut handle);
    assert_eq!(
        (
            stats.retries(),
            stats.limit_exceeded(),
            stats.budget_exhausted()
        ),
        (2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn success_after_a_retry_is_returned_without_flags() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx", 3)));
    let fut = call(&mut svc, get());
    respond(&mut handle, status(500)).await;
    respond(&mut handle, status(200)).await;
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert!(ResponseFlags::of(&res).is_empty());
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_triggers_a_retry_and_finally_per_try_timeout() {
    let mut policy = explicit("reset", 2);
    policy.per_try_timeout = Some(Duration::from_secs(1));
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(policy));
    let start = Instant::now();
    let fut = call(&mut svc, get());
    // Never answer: keep the responders so the tries stay pending until their timeout.
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(handle.next_request().await.expect("a try"));
    }
    let err = fut.await.unwrap().unwrap_err();
    assert!(cause_ref::<PerTryTimeout>(&*err).is_some(), "{err}");
    let elapsed = start.elapsed();
    let max_backoff = backoff_ceiling(1, DEFAULT_BACKOFF) + backoff_ceiling(2, DEFAULT_BACKOFF);
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3) + max_backoff,
        "{elapsed:?}"
    );
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_applies_to_the_first_try_without_a_retry_condition() {
    let mut policy = explicit("connect-failure", 2);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(policy));
    let fut = call(&mut svc, get());
    let _pending = handle.next_request().await.expect("a try");
    let err = fut.await.unwrap().unwrap_err();
    assert!(cause_ref::<PerTryTimeout>(&*err).is_some());
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn four_xx_is_not_retried_except_409_with_retriable_4xx() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx", 2)));
    for code in [400, 404, 409, 429] {
        let fut = call(&mut svc, get());
        respond(&mut handle, status(code)).await;
        let res = fut.await.unwrap().unwrap();
        assert_eq!(res.status(), code);
        assert!(!has_urx(&res));
        assert_no_more_tries(&mut handle);
    }

    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("retriable-4xx", 1)));
    let fut = call(&mut svc, post());
    respond(&mut handle, status(409)).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);

    let fut = call(&mut svc, post());
    respond(&mut handle, status(404)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 404);
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_in_headers_is_retried_but_not_in_trailers() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("unavailable", 1)));
    let grpc = |in_headers: bool| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let mut res = Response::builder()
            .header("content-type", "application/grpc")
            .body(if in_headers {
                body::empty()
            } else {
                body::boxed(
                    http_body_util::Full::new(Bytes::new())
                        .with_trailers(async move { Some(Ok(trailers)) }),
                )
            })
            .unwrap();
        if in_headers {
            res.headers_mut()
                .insert("grpc-status", "14".parse().unwrap());
        }
        res
    };

    let fut = call(&mut svc, post());
    respond(&mut handle, grpc(true)).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);

    let fut = call(&mut svc, post());
    respond(&mut handle, grpc(false)).await;
    let res = fut.await.unwrap().unwrap();
    assert!(res.headers().get("grpc-status").is_none());
    let trailers = res.into_body().collect().await.unwrap().trailers().cloned();
    assert_eq!(trailers.unwrap()["grpc-status"], "14");
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn raw_status_codes_and_conditions_combine() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("503,reset", 3)));
    let fut = call(&mut svc, post());
    respond(&mut handle, status(503)).await;
    fail(&mut handle, reset(false)).await;
    respond(&mut handle, status(502)).await;
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.status(), 502, "502 is not in the list");
    assert!(!has_urx(&res));
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn unknown_errors_are_not_retried() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx,reset", 3)));
    let fut = call(&mut svc, get());
    fail(&mut handle, "something else".into()).await;
    let err = fut.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "something else");
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn last_error_is_returned_when_tries_run_out() {
    let layer = RetryLayer::new(RetryPolicy::Explicit(explicit("connect-failure", 1)));
    let stats = layer.stats().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, get());
    fail(&mut handle, connect_failure()).await;
    fail(&mut handle, connect_failure()).await;
    let err = fut.await.unwrap().unwrap_err();
    assert!(cause_ref::<UpstreamConnectFailure>(&*err).is_some());
    assert_eq!((stats.retries(), stats.limit_exceeded()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn attempts_zero_disables_retries() {
    let mut timed = explicit("5xx", 0);
    timed.per_try_timeout = Some(Duration::from_secs(1));
    for policy in [
        RetryPolicy::Disabled,
        RetryPolicy::Explicit(explicit("5xx", 0)),
        // With a per-try timeout too: the one try is timed, nothing is retried.
        RetryPolicy::Explicit(timed),
    ] {
        let (mut svc, mut handle) = spawn_policy(policy);
        let fut = call(&mut svc, get());
        respond(&mut handle, status(503)).await;
        let res = fut.await.unwrap().unwrap();
        assert_eq!(res.status(), 503);
        assert!(!has_urx(&res));
        assert_no_more_tries(&mut handle);

        let fut = call(&mut svc, get());
        fail(&mut handle, connect_failure()).await;
        assert!(fut.await.unwrap().is_err());
        assert_no_more_tries(&mut handle);
    }
}

// === the mesh default ===

#[tokio::test(start_paused = true)]
async fn connect_failure_is_retried_by_default() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let fut = call(&mut svc, post());
    fail(&mut handle, connect_failure()).await;
    fail(&mut handle, connect_failure()).await;
    respond(&mut handle, status(201)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 201);

    // Twice at most.
    let fut = call(&mut svc, get());
    for _ in 0..3 {
        fail(&mut handle, connect_failure()).await;
    }
    assert!(fut.await.unwrap().is_err());
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn post_with_503_is_not_retried_by_default_but_get_is() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let fut = call(&mut svc, post());
    respond(&mut handle, status(503)).await;
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.status(), 503);
    assert!(!has_urx(&res));
    assert_no_more_tries(&mut handle);

    for method in [http::Method::GET, http::Method::PUT, http::Method::DELETE] {
        let fut = call(&mut svc, request(method.clone()));
        respond(&mut handle, status(503)).await;
        let retried = respond(&mut handle, status(200)).await;
        assert_eq!(retried.method(), method);
        assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    }

    // Other 5xx are not retried by default, even for GET.
    let fut = call(&mut svc, get());
    respond(&mut handle, status(500)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 500);
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn post_whose_stream_was_refused_is_retried_by_default_but_not_after_a_reset() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let fut = call(&mut svc, post());
    fail(&mut handle, reset(true)).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);

    let fut = call(&mut svc, post());
    fail(&mut handle, reset(false)).await;
    let err = fut.await.unwrap().unwrap_err();
    assert!(!cause_ref::<UpstreamReset>(&*err).unwrap().refused);
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn default_get_503_twice_more_then_urx() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let fut = call(&mut svc, get());
    for _ in 0..3 {
        respond(&mut handle, status(503)).await;
    }
    let res = fut.await.unwrap().unwrap();
    assert!(has_urx(&res));
    assert_no_more_tries(&mut handle);
}

// === back-off ===

#[tokio::test(start_paused = true)]
async fn backoff_sleeps_stay_below_the_ceiling() {
    let base = Duration::from_millis(100);
    let mut policy = explicit("5xx", 6);
    policy.backoff = base;
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(policy));
    let mut total = Duration::ZERO;
    for _ in 0..5 {
        let fut = call(&mut svc, get());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(status(503));
        for n in 1..=6 {
            let answered = Instant::now();
            let (_, send) = handle.next_request().await.unwrap();
            let pause = answered.elapsed();
            let ceiling = backoff_ceiling(n, base);
            assert!(pause < ceiling, "retry {n}: {pause:?} >= {ceiling:?}");
            total += pause;
            send.send_response(status(503));
        }
        assert!(has_urx(&fut.await.unwrap().unwrap()));
    }
    assert!(total > Duration::ZERO, "the pauses are drawn, not all zero");
}

// === budget ===

#[tokio::test(start_paused = true)]
async fn budget_stops_retries_when_many_requests_fail_at_once_and_recovers() {
    let layer = RetryLayer::new(RetryPolicy::MeshDefault);
    let stats = layer.stats().clone();
    let budget = layer.budgets().standalone().clone();
    let (mut svc, mut handle) = spawn(layer);

    let futs: Vec<_> = (0..10).map(|_| call(&mut svc, get())).collect();
    assert_eq!(budget.active_requests(), 10);
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(handle.next_request().await.unwrap().1);
    }
    for send in first {
        send.send_response(status(503));
    }
    settle().await;
    // max(3, 20 % of 10) = 3 retries may be in flight; the other 7 return the 503 with URX.
    assert_eq!(budget.active_retries(), 3);
    assert_eq!(stats.budget_exhausted(), 7);
    let mut retried = Vec::new();
    for _ in 0..3 {
        retried.push(handle.next_request().await.unwrap().1);
    }
    assert_no_more_tries(&mut handle);
    assert_eq!(
        budget.active_retries(),
        3,
        "a retry counts until its try completes"
    );
    for send in retried {
        send.send_response(status(200));
    }
    let mut codes = Vec::new();
    for fut in futs {
        let res = fut.await.unwrap().unwrap();
        codes.push((res.status().as_u16(), has_urx(&res)));
    }
    codes.sort();
    assert_eq!(
        codes,
        [[(200, false); 3].as_slice(), &[(503, true); 7]].concat()
    );
    assert_eq!((budget.active_requests(), budget.active_retries()), (0, 0));
    assert_eq!(stats.retries(), 3);

    // Recovered: a new failure is retried again.
    let fut = call(&mut svc, get());
    respond(&mut handle, status(503)).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    assert_eq!(stats.retries(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_retry_counts_against_the_budget_during_its_backoff() {
    let layer = RetryLayer::new(RetryPolicy::Explicit(explicit("5xx", 1)));
    let budget = layer.budgets().standalone().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, get());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(status(503));
    settle().await;
    assert_eq!((budget.active_requests(), budget.active_retries()), (1, 1));
    respond(&mut handle, status(200)).await;
    fut.await.unwrap().unwrap();
    assert_eq!((budget.active_requests(), budget.active_retries()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_refuses_every_retry() {
    let layer = RetryLayer::new(RetryPolicy::MeshDefault).with_default_budget(RetryBudget {
        percent: mesh_core::policy::fault::PerMillion(0),
        min_retry_concurrency: 0,
    });
    let stats = layer.stats().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, get());
    respond(&mut handle, status(503)).await;
    assert!(has_urx(&fut.await.unwrap().unwrap()));
    assert_no_more_tries(&mut handle);
    assert_eq!((stats.retries(), stats.budget_exhausted()), (0, 1));
}

// === bodies ===

#[tokio::test(start_paused = true)]
async fn small_bodies_are_replayed_identically() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx", 2)));
    let payload = Bytes::from(vec![7u8; MAX_REPLAY_BODY]);
    let mut req = post();
    *req.body_mut() = body::full(payload.clone());
    req.headers_mut().insert("x-test", "1".parse().unwrap());
    let fut = call(&mut svc, req);
    let mut tries = Vec::new();
    tries.push(respond(&mut handle, status(503)).await);
    tries.push(respond(&mut handle, status(503)).await);
    tries.push(respond(&mut handle, status(200)).await);
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    for t in tries {
        assert_eq!(t.method(), http::Method::POST);
        assert_eq!(t.uri(), "http://reviews:9080/reviews/1");
        assert_eq!(t.headers()["x-test"], "1");
        assert_eq!(body_bytes(t).await, payload);
    }
}

#[tokio::test(start_paused = true)]
async fn streamed_small_bodies_with_trailers_are_replayed() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx", 1)));
    let frames = vec![
        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"hello "))),
        Ok(http_body::Frame::data(Bytes::from_static(b"world"))),
        Ok(http_body::Frame::trailers(
            [(
                http::HeaderName::from_static("x-checksum"),
                http::HeaderValue::from_static("42"),
            )]
            .into_iter()
            .collect(),
        )),
    ];
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut req = Request::post("http://reviews/")
        .header("content-length", "11")
        .body(body::boxed(streamed))
        .unwrap();
    req.extensions_mut().insert(TriedEndpoints::default());
    let fut = call(&mut svc, req);
    let first = respond(&mut handle, status(503)).await;
    let second = respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    for t in [first, second] {
        let collected = t.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
        assert_eq!(collected.to_bytes(), "hello world");
    }
}

#[tokio::test(start_paused = true)]
async fn larger_bodies_are_sent_once_without_retries() {
    let layer = RetryLayer::new(RetryPolicy::Explicit(explicit("5xx", 2)));
    let stats = layer.stats().clone();
    let (mut svc, mut handle) = spawn(layer);
    let payload = Bytes::from(vec![1u8; MAX_REPLAY_BODY + 1]);
    let mut req = post();
    *req.body_mut() = body::full(payload.clone());
    let fut = call(&mut svc, req);
    let sent = respond(&mut handle, status(503)).await;
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.status(), 503);
    assert!(!has_urx(&res));
    assert_no_more_tries(&mut handle);
    assert_eq!(body_bytes(sent).await, payload);
    assert_eq!(stats.retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn bodies_of_unknown_size_are_sent_once_even_if_content_length_lied() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(explicit("5xx", 2)));
    let chunk = Bytes::from(vec![3u8; 40 * 1024]);
    let payload: Bytes = [chunk.clone(), chunk.clone()].concat().into();

    // No size at all: not buffered.
    let frames = vec![Ok::<_, BoxError>(http_body::Frame::data(chunk.clone()))];
    let unknown = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let fut = call(
        &mut svc,
        Request::post("http://reviews/")
            .body(body::boxed(unknown))
            .unwrap(),
    );
    let sent = respond(&mut handle, status(503)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 503);
    assert_eq!(body_bytes(sent).await, chunk);
    assert_no_more_tries(&mut handle);

    // A small content-length but more bytes: what was read goes first, then the rest.
    let frames = vec![
        Ok::<_, BoxError>(http_body::Frame::data(chunk.clone())),
        Ok(http_body::Frame::data(chunk.clone())),
    ];
    let lying = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("http://reviews/")
        .header("content-length", "10")
        .body(body::boxed(lying))
        .unwrap();
    let fut = call(&mut svc, req);
    let sent = respond(&mut handle, status(503)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 503);
    assert_eq!(body_bytes(sent).await, payload);
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn a_failing_request_body_fails_the_request() {
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let frames = vec![Err::<http_body::Frame<Bytes>, BoxError>(
        "client went away".into(),
    )];
    let broken = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::put("http://reviews/")
        .header("content-length", "5")
        .body(body::boxed(broken))
        .unwrap();
    let err = call(&mut svc, req).await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "client went away");
    assert_no_more_tries(&mut handle);
}

// === endpoints tried ===

#[tokio::test(start_paused = true)]
async fn retries_know_the_endpoints_tried_before() {
    // A connect failure names its endpoint: the retry's list starts with it.
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let fut = call(&mut svc, get());
    let (first, send) = handle.next_request().await.unwrap();
    assert!(
        first.extensions().get::<TriedEndpoints>().is_none(),
        "the first try's endpoint is read from its outcome"
    );
    send.send_error(connect_failure());
    let (second, send) = handle.next_request().await.unwrap();
    let tried = second.extensions().get::<TriedEndpoints>().unwrap().clone();
    assert_eq!(tried.snapshot().as_slice(), ["10.0.0.1:9080"]);
    tried.record("10.0.0.2:9080"); // what the balancer does
    send.send_error(connect_failure());
    let third = respond(&mut handle, status(200)).await;
    let again = third.extensions().get::<TriedEndpoints>().unwrap();
    assert!(
        Arc::ptr_eq(&tried.0, &again.0),
        "later tries share the list"
    );
    assert!(again.contains("10.0.0.2:9080"));
    fut.await.unwrap().unwrap();

    // A response carries the endpoint it came from.
    let fut = call(&mut svc, get());
    let (_first, send) = handle.next_request().await.unwrap();
    let mut res = status(503);
    res.extensions_mut().insert(crate::target::PickedEndpoint {
        endpoint: Arc::new(mesh_core::snapshot::Endpoint {
            address: "10.0.0.3".into(),
            ports: Default::default(),
            labels: Default::default(),
            service_account: String::new(),
            namespace: String::new(),
            weight: 1,
            workload: None,
        }),
        authority: "10.0.0.3:9080".parse().unwrap(),
    });
    send.send_response(res);
    let second = respond(&mut handle, status(200)).await;
    let tried = second.extensions().get::<TriedEndpoints>().unwrap();
    assert_eq!(tried.snapshot().as_slice(), ["10.0.0.3:9080"]);
    fut.await.unwrap().unwrap();

    // With a per-try timeout the first try shares the list (a timed-out try has no
    // outcome to read).
    let mut policy = explicit("5xx", 1);
    policy.per_try_timeout = Some(Duration::from_secs(1));
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(policy));
    let fut = call(&mut svc, get());
    let (first, _send) = handle.next_request().await.unwrap();
    let tried = first.extensions().get::<TriedEndpoints>().unwrap().clone();
    tried.record("10.0.0.4:9080");
    tokio::time::advance(Duration::from_secs(2)).await;
    let second = respond(&mut handle, status(200)).await;
    let again = second.extensions().get::<TriedEndpoints>().unwrap();
    assert!(Arc::ptr_eq(&tried.0, &again.0));
    assert!(again.contains("10.0.0.4:9080"));
    fut.await.unwrap().unwrap();

    // One already in the request is kept.
    let mine = TriedEndpoints::default();
    let mut req = get();
    req.extensions_mut().insert(mine.clone());
    let fut = call(&mut svc, req);
    let first = respond(&mut handle, status(503)).await;
    let second = respond(&mut handle, status(200)).await;
    for t in [first, second] {
        assert!(Arc::ptr_eq(
            &mine.0,
            &t.extensions().get::<TriedEndpoints>().unwrap().0
        ));
    }
    fut.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn tried_endpoints_are_left_out_when_previous_hosts_may_be_retried() {
    let mut policy = explicit("5xx", 1);
    policy.retry_ignore_previous_hosts = false;
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::Explicit(policy));
    let fut = call(&mut svc, get());
    let first = respond(&mut handle, status(503)).await;
    let second = respond(&mut handle, status(200)).await;
    assert!(first.extensions().get::<TriedEndpoints>().is_none());
    assert!(second.extensions().get::<TriedEndpoints>().is_none());
    fut.await.unwrap().unwrap();
}

// === per-request policy from the Target ===

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ uri: { prefix: /explicit } }]
    retries: { attempts: 1, retryOn: "5xx" }
    route: [{ destination: { host: reviews } }]
  - match: [{ uri: { prefix: /off } }]
    retries: { attempts: 0 }
    route: [{ destination: { host: reviews } }]
  - route: [{ destination: { host: reviews } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: ratings }
spec:
  host: ratings
  trafficPolicy:
    retryBudget: { percent: { value: 0 }, minRetryConcurrency: 0 }
"#;

fn snapshot() -> Arc<Snapshot> {
    let loaded = load_str(MESH, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    Arc::new(Snapshot::build(&loaded.resources).unwrap())
}

/// A request carrying the route layer's decision for `authority` + `path`.
fn routed(
    snapshot: &Arc<Snapshot>,
    method: http::Method,
    authority: &str,
    path: &str,
) -> Request<Body> {
    let headers = http::HeaderMap::new();
    let labels = BTreeMap::new();
    let caller = Caller::mesh("default", &labels);
    let info = RequestInfo::new(&method, "http", authority, path, None, &headers);
    let (route, match_index, host) = match snapshot.route(&caller, &info) {
        Routing::Matched(m) => (Some(m.route.clone()), m.match_index, m.host.clone()),
        Routing::Default { host } => (None, None, host),
        other => panic!("unexpected {other:?}"),
    };
    let target = Target {
        snapshot: snapshot.clone(),
        route,
        match_index,
        host,
        subset: None,
        port: 9080,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .body(body::empty())
        .unwrap();
    req.extensions_mut().insert(target);
    req
}

#[tokio::test(start_paused = true)]
async fn from_target_reads_each_routes_policy() {
    let s = snapshot();
    let layer = RetryLayer::from_target();
    let budgets = layer.budgets().clone();
    let (mut svc, mut handle) = spawn(layer);

    // Explicit: a POST 500 is retried once.
    let fut = call(
        &mut svc,
        routed(&s, http::Method::POST, "reviews:9080", "/explicit"),
    );
    respond(&mut handle, status(500)).await;
    respond(&mut handle, status(500)).await;
    assert!(has_urx(&fut.await.unwrap().unwrap()));
    assert_no_more_tries(&mut handle);

    // attempts: 0
    let fut = call(
        &mut svc,
        routed(&s, http::Method::GET, "reviews:9080", "/off"),
    );
    respond(&mut handle, status(503)).await;
    assert!(!has_urx(&fut.await.unwrap().unwrap()));
    assert_no_more_tries(&mut handle);

    // No retries block: the mesh default (GET 503 retried, POST 503 not).
    let fut = call(
        &mut svc,
        routed(&s, http::Method::GET, "reviews:9080", "/other"),
    );
    respond(&mut handle, status(503)).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);
    let fut = call(
        &mut svc,
        routed(&s, http::Method::POST, "reviews:9080", "/other"),
    );
    respond(&mut handle, status(503)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 503);
    assert_no_more_tries(&mut handle);

    // The default route (no VirtualService for the host) gets the mesh default too.
    let fut = call(&mut svc, routed(&s, http::Method::GET, "details:9080", "/"));
    fail(&mut handle, connect_failure()).await;
    respond(&mut handle, status(200)).await;
    assert_eq!(fut.await.unwrap().unwrap().status(), 200);

    // Budgets are per destination host.
    let reviews = budgets.get("reviews.default.svc.cluster.local").unwrap();
    let details = budgets.get("details.default.svc.cluster.local").unwrap();
    assert!(!Arc::ptr_eq(&reviews, &details));
    assert_eq!(budgets.standalone().active_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn from_target_without_a_target_passes_through() {
    let layer = RetryLayer::from_target();
    let budgets = layer.budgets().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, get());
    settle().await;
    assert_eq!(budgets.standalone().active_requests(), 0, "not counted");
    let req = fail(&mut handle, connect_failure()).await;
    assert!(req.extensions().get::<TriedEndpoints>().is_none());
    assert!(fut.await.unwrap().is_err());
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn destination_rule_retry_budget_overrides_the_default() {
    let s = snapshot();
    let layer = RetryLayer::from_target();
    let stats = layer.stats().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(&mut svc, routed(&s, http::Method::GET, "ratings:9080", "/"));
    respond(&mut handle, status(503)).await;
    assert!(has_urx(&fut.await.unwrap().unwrap()));
    assert_no_more_tries(&mut handle);
    assert_eq!(stats.budget_exhausted(), 1);
}

#[tokio::test(start_paused = true)]
async fn static_policy_with_a_target_counts_against_its_host() {
    let s = snapshot();
    let layer = RetryLayer::new(RetryPolicy::Disabled);
    let budgets = layer.budgets().clone();
    let (mut svc, mut handle) = spawn(layer);
    let fut = call(
        &mut svc,
        routed(&s, http::Method::GET, "reviews:9080", "/explicit"),
    );
    let host = budgets.get("reviews.default.svc.cluster.local").unwrap();
    assert_eq!(host.active_requests(), 1);
    respond(&mut handle, status(503)).await;
    assert_eq!(
        fut.await.unwrap().unwrap().status(),
        503,
        "the static policy wins"
    );
    assert_eq!(host.active_requests(), 0);
    assert_no_more_tries(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn layers_can_share_budgets_and_stats() {
    let budgets = Arc::new(RetryBudgets::new());
    let stats = Arc::new(RetryStats::new());
    let a = RetryLayer::new(RetryPolicy::MeshDefault)
        .with_budgets(budgets.clone())
        .with_stats(stats.clone());
    let b = RetryLayer::from_target()
        .with_budgets(budgets.clone())
        .with_stats(stats.clone());
    assert!(Arc::ptr_eq(a.budgets(), b.budgets()));
    assert!(Arc::ptr_eq(a.stats(), &stats));
    let (mut svc, mut handle) = spawn(a);
    let fut = call(&mut svc, get());
    respond(&mut handle, status(503)).await;
    respond(&mut handle, status(200)).await;
    fut.await.unwrap().unwrap();
    assert_eq!(stats.retries(), 1);
}

#[test]
fn accessors_reach_the_inner_service() {
    let mut svc = Retry::new(7u8, RetryPolicy::Disabled);
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert_eq!(svc.into_inner(), 8);
    let _layer: RetryLayer = Retry::<()>::layer(RetryPolicy::MeshDefault);
}

#[tokio::test(start_paused = true)]
async fn every_try_carries_the_callers_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Mine(&'static str);
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let mut req = get();
    req.extensions_mut().insert(Mine("kept"));
    let fut = call(&mut svc, req);
    let (first, send) = handle.next_request().await.unwrap();
    assert_eq!(first.extensions().get::<Mine>(), Some(&Mine("kept")));
    send.send_error(connect_failure());
    let second = respond(&mut handle, status(200)).await;
    assert_eq!(second.extensions().get::<Mine>(), Some(&Mine("kept")));
    assert!(second.extensions().get::<TriedEndpoints>().is_some());
    fut.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn every_try_carries_the_telemetry_route_slot() {
    // Only mesh extensions on the request: replayed without copying the extension map, and
    // the telemetry layer's slot still reaches every try.
    let (mut svc, mut handle) = spawn_policy(RetryPolicy::MeshDefault);
    let slot = crate::telemetry::layer::RouteSlot::new();
    let mut req = get();
    req.extensions_mut().insert(slot.clone());
    let fut = call(&mut svc, req);
    let (first, send) = handle.next_request().await.unwrap();
    assert!(
        first
            .extensions()
            .get::<crate::telemetry::layer::RouteSlot>()
            .is_some()
    );
    send.send_error(connect_failure());
    let second = respond(&mut handle, status(200)).await;
    assert!(
        second
            .extensions()
            .get::<crate::telemetry::layer::RouteSlot>()
            .is_some(),
        "the retry lost the telemetry slot"
    );
    fut.await.unwrap().unwrap();
}
