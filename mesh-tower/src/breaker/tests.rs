use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use mesh_core::{BoxError, config::load_str, snapshot::Snapshot};
use tokio::task::JoinHandle;
use tokio_test::assert_ready_ok;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::{
    body,
    error::{OverflowLimit, UpstreamOverflow, cause_ref},
    flags::{ResponseFlag, ResponseFlags},
    rescue::{RescueLayer, X_ENVOY_OVERLOADED},
    route::Caller,
};

type Svc = mock::Spawn<CircuitBreaker<mock::Mock<Request<Body>, Response<Body>>>>;

// === helpers ===

fn get() -> Request<Body> {
    Request::get("http://reviews:9080/")
        .body(body::empty())
        .unwrap()
}

fn ok() -> Response<Body> {
    Response::new(body::empty())
}

fn call(svc: &mut Svc, req: Request<Body>) -> JoinHandle<Result<Response<Body>, BoxError>> {
    assert_ready_ok!(svc.poll_ready());
    tokio::spawn(svc.call(req))
}

/// Lets spawned tasks run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn overflow_of(err: &BoxError) -> Option<OverflowLimit> {
    cause_ref::<UpstreamOverflow>(&**err).map(|o| o.limit)
}

async fn expect_overflow(task: JoinHandle<Result<Response<Body>, BoxError>>, limit: OverflowLimit) {
    let err = task.await.unwrap().expect_err("overflow");
    assert_eq!(overflow_of(&err), Some(limit), "{err}");
}

const RULES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: v2}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{headers: {end-user: {exact: v3}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 1}
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {http2MaxRequests: 2}}
    - port: {number: 9091}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        http: {http2MaxRequests: 1}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        connectionPool: {http: {maxRetries: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
";

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    let loaded = load_str(yaml, None);
    Arc::new(Snapshot::build(&loaded.resources).expect("snapshot builds"))
}

/// A request to `uri` with its route decision, as the route layer makes it.
fn routed(snapshot: &Arc<Snapshot>, uri: &str, user: Option<&str>) -> Request<Body> {
    let mut req = Request::get(uri);
    if let Some(user) = user {
        req = req.header("end-user", user);
    }
    let mut req = req.body(body::empty()).unwrap();
    let (target, _) =
        crate::route::decide(snapshot, &Caller::new("default"), &req, 0).expect("routed");
    req.extensions_mut().insert(target);
    req
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

// === fixed limits ===

#[tokio::test(start_paused = true)]
async fn max_connections_queues_requests_as_pending_then_overflows() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<Body>, Response<Body>, _>(CircuitBreakerLayer::new(
            PoolLimits::UNLIMITED
                .max_connections(1)
                .max_pending_requests(1),
        ));
    let first = call(&mut svc, get());
    let (_, first_send) = handle.next_request().await.expect("first is sent");
    // The second waits for the connection slot; the third finds the queue full.
    let second = call(&mut svc, get());
    let third = call(&mut svc, get());
    expect_overflow(third, OverflowLimit::MaxPendingRequests).await;
    settle().await;
    assert!(handle.poll_request().is_pending(), "second is pending");
    first_send.send_response(ok());
    first.await.unwrap().unwrap();
    // The freed slot goes to the pending request.
    let (_, send) = handle.next_request().await.expect("second is sent");
    send.send_response(ok());
    second.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_requests_fails_at_once_for_http1_and_http2() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        CircuitBreakerLayer::new(PoolLimits::UNLIMITED.max_requests(1)),
    );
    let first = call(&mut svc, get());
    let (_, send) = handle.next_request().await.unwrap();
    let mut h2 = get();
    *h2.version_mut() = Version::HTTP_2;
    expect_overflow(call(&mut svc, h2), OverflowLimit::MaxRequests).await;
    expect_overflow(call(&mut svc, get()), OverflowLimit::MaxRequests).await;
    send.send_response(ok());
    first.await.unwrap().unwrap();
    let again = call(&mut svc, get());
    handle.next_request().await.unwrap().1.send_response(ok());
    again.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn http2_requests_are_not_limited_by_max_connections() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<Body>, Response<Body>, _>(CircuitBreakerLayer::new(
            PoolLimits::UNLIMITED
                .max_connections(1)
                .max_pending_requests(1),
        ));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut req = get();
        *req.version_mut() = Version::HTTP_2;
        tasks.push(call(&mut svc, req));
    }
    for _ in 0..3 {
        handle.next_request().await.unwrap().1.send_response(ok());
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_unlimited_breaker_passes_everything() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        CircuitBreakerLayer::new(PoolLimits::UNLIMITED),
    );
    let tasks: Vec<_> = (0..50).map(|_| call(&mut svc, get())).collect();
    for _ in 0..50 {
        handle.next_request().await.unwrap().1.send_response(ok());
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_holds_its_slot_until_it_ends() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<Body>, Response<Body>, _>(CircuitBreakerLayer::new(
            PoolLimits::UNLIMITED
                .max_connections(1)
                .max_pending_requests(1),
        ));
    let first = call(&mut svc, get());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
    let streamed = http_body_util::StreamBody::new(tokio_stream_from(rx));
    handle
        .next_request()
        .await
        .unwrap()
        .1
        .send_response(Response::new(body::boxed(streamed)));
    let res = first.await.unwrap().unwrap();
    // The response head arrived, its body did not: the slot is still taken.
    let second = call(&mut svc, get());
    settle().await;
    assert!(handle.poll_request().is_pending());
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"x"))))
        .await
        .unwrap();
    drop(tx);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"x");
    handle.next_request().await.unwrap().1.send_response(ok());
    second.await.unwrap().unwrap();
}

/// A stream over a receiver (tokio-stream is not a dependency).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_and_bodies_give_their_slots_back() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<Body>, Response<Body>, _>(CircuitBreakerLayer::new(
            PoolLimits::UNLIMITED
                .max_connections(1)
                .max_pending_requests(1),
        ));
    // A pending request abandoned by a timeout above frees its pending slot.
    assert_ready_ok!(svc.poll_ready());
    let first = svc.call(get());
    let first = tokio::spawn(first);
    let (_, first_send) = handle.next_request().await.unwrap();
    assert_ready_ok!(svc.poll_ready());
    let pending = tokio::time::timeout(Duration::from_secs(1), svc.call(get()));
    assert!(pending.await.is_err(), "timed out while pending");
    // The pending slot is free again: one more may wait.
    let waiting = call(&mut svc, get());
    settle().await;
    assert!(handle.poll_request().is_pending());
    // The in-flight request is abandoned too: its connection slot goes to the waiting one.
    first.abort();
    let _ = first.await;
    drop(first_send);
    let (_, send) = handle
        .next_request()
        .await
        .expect("waiting request is sent");
    // A response whose body is dropped unread frees the slot as well.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
    send.send_response(Response::new(body::boxed(http_body_util::StreamBody::new(
        tokio_stream_from(rx),
    ))));
    let res = waiting.await.unwrap().unwrap();
    drop(res);
    drop(tx);
    let last = call(&mut svc, get());
    handle.next_request().await.unwrap().1.send_response(ok());
    last.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_overflow_becomes_a_503_uo_local_reply() {
    let (mock, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = RescueLayer::new().layer(
        CircuitBreakerLayer::new(
            PoolLimits::UNLIMITED
                .max_connections(1)
                .max_pending_requests(1),
        )
        .layer(mock),
    );
    let first = tokio::spawn(svc.clone().oneshot(get()));
    let (_, send) = handle.next_request().await.unwrap();
    let second = tokio::spawn(svc.clone().oneshot(get()));
    settle().await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(ResponseFlags::of(&res).contains(ResponseFlag::UpstreamOverflow));
    assert_eq!(res.headers()[X_ENVOY_OVERLOADED], "true");
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &text[..],
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    send.send_response(ok());
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    handle.next_request().await.unwrap().1.send_response(ok());
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn an_overflow_is_not_retried() {
    use mesh_core::policy::retry::{DEFAULT_BACKOFF, ExplicitRetry, RetryOn, RetryPolicy};
    let policy = RetryPolicy::Explicit(ExplicitRetry {
        attempts: 3,
        per_try_timeout: None,
        retry_on: RetryOn::parse("5xx,connect-failure,reset,refused-stream").unwrap(),
        backoff: DEFAULT_BACKOFF,
        retry_ignore_previous_hosts: true,
    });
    let (mock, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = crate::retry::RetryLayer::new(policy)
        .layer(CircuitBreakerLayer::new(PoolLimits::UNLIMITED.max_requests(1)).layer(mock));
    let first = tokio::spawn(svc.clone().oneshot(get()));
    let (_, send) = handle.next_request().await.unwrap();
    let err = svc.clone().oneshot(get()).await.expect_err("overflow");
    assert_eq!(overflow_of(&err), Some(OverflowLimit::MaxRequests));
    settle().await;
    assert!(handle.poll_request().is_pending(), "no retry was sent");
    send.send_response(ok());
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_retries_limits_tries_after_the_first() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        CircuitBreakerLayer::new(PoolLimits::UNLIMITED.max_retries(1)),
    );
    let retry = || {
        let mut req = get();
        let tried = TriedEndpoints::default();
        tried.record("10.0.0.1:9080");
        req.extensions_mut().insert(tried);
        req
    };
    let first_retry = call(&mut svc, retry());
    let (_, send) = handle.next_request().await.unwrap();
    expect_overflow(call(&mut svc, retry()), OverflowLimit::MaxRetries).await;
    // First tries are not retries.
    let first_try = call(&mut svc, get());
    handle.next_request().await.unwrap().1.send_response(ok());
    first_try.await.unwrap().unwrap();
    send.send_response(ok());
    first_retry.await.unwrap().unwrap();
    let again = call(&mut svc, retry());
    handle.next_request().await.unwrap().1.send_response(ok());
    again.await.unwrap().unwrap();
}

// === limits from the request's Target ===

#[test]
fn merges_rule_subset_and_port_level_pools_as_istio() {
    let snap = snapshot(RULES);
    let policy = snap.destination_policy(REVIEWS).expect("rule applies");
    let limits = |subset: Option<&str>, port| {
        connection_pool_settings(policy, subset, port).map(PoolLimits::from_istio)
    };
    let rule = PoolLimits::UNLIMITED
        .max_connections(1)
        .max_pending_requests(1);
    let table = [
        (None, 9080, Some(rule)),
        // Port-level settings replace the rule's.
        (None, 9090, Some(PoolLimits::UNLIMITED.max_requests(2))),
        // A port-level entry without a pool means no limits, not the rule's.
        (None, 9091, None),
        // A subset without a policy of its own has the rule's.
        (Some("v1"), 9080, Some(rule)),
        (
            Some("v1"),
            9090,
            Some(PoolLimits::UNLIMITED.max_requests(2)),
        ),
        // A subset's pool replaces the rule's as a whole.
        (
            Some("v2"),
            9080,
            Some(PoolLimits::UNLIMITED.max_requests(1)),
        ),
        (
            Some("v2"),
            9090,
            Some(PoolLimits::UNLIMITED.max_requests(1)),
        ),
        // A subset's port-level entry replaces everything for that port only.
        (Some("v3"), 9080, Some(PoolLimits::UNLIMITED.max_retries(1))),
        (
            Some("v3"),
            9090,
            Some(PoolLimits::UNLIMITED.max_requests(2)),
        ),
        (Some("unknown"), 9080, Some(rule)),
    ];
    for (subset, port, want) in table {
        assert_eq!(limits(subset, port), want, "{subset:?} port {port}");
    }
}

#[test]
fn zero_and_negative_limits_are_unset_as_in_istio() {
    use mesh_core::config::networking::destination_rule::{
        ConnectionPoolSettings, HttpSettings, TcpSettings,
    };
    let pool = ConnectionPoolSettings {
        tcp: Some(TcpSettings {
            max_connections: Some(0),
            ..Default::default()
        }),
        http: Some(HttpSettings {
            http2_max_requests: Some(-1),
            http1_max_pending_requests: Some(0),
            max_retries: Some(0),
            ..Default::default()
        }),
    };
    assert!(PoolLimits::from_istio(&pool).is_unlimited());
}

#[tokio::test(start_paused = true)]
async fn clusters_are_per_subset_and_count_separately() {
    let snap = snapshot(RULES);
    let breakers = CircuitBreakers::new();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        CircuitBreakerLayer::from_target().with_breakers(breakers.clone()),
    );
    // v1 (the rule's pool): one in flight, one pending, then overflow.
    let v1 = call(&mut svc, routed(&snap, "http://reviews:9080/", None));
    let (req, v1_send) = handle.next_request().await.unwrap();
    // The connection settings travel down to `connect`.
    assert_eq!(
        req.extensions()
            .get::<ConnectionSettings>()
            .and_then(ConnectionSettings::get_connect_timeout),
        Some(Duration::from_millis(250))
    );
    let v1_pending = call(&mut svc, routed(&snap, "http://reviews:9080/", None));
    settle().await;
    expect_overflow(
        call(&mut svc, routed(&snap, "http://reviews:9080/", None)),
        OverflowLimit::MaxPendingRequests,
    )
    .await;
    let usage = breakers
        .usage(REVIEWS, Some("v1"), 9080)
        .expect("v1 cluster");
    assert_eq!(
        (usage.active_connections, usage.pending_requests),
        (1, 1),
        "{usage:?}"
    );
    // v2 has its own cluster and limits: a full v1 does not block it.
    let v2 = call(&mut svc, routed(&snap, "http://reviews:9080/", Some("v2")));
    let (req, v2_send) = handle.next_request().await.unwrap();
    // v2's pool sets no connection settings.
    assert!(req.extensions().get::<ConnectionSettings>().is_none());
    expect_overflow(
        call(&mut svc, routed(&snap, "http://reviews:9080/", Some("v2"))),
        OverflowLimit::MaxRequests,
    )
    .await;
    // Another port of the same subset is another cluster.
    let other_port = call(&mut svc, routed(&snap, "http://reviews:9090/", None));
    let (_, port_send) = handle.next_request().await.unwrap();

    for send in [v2_send, port_send, v1_send] {
        send.send_response(ok());
    }
    for t in [v2, other_port, v1] {
        t.await.unwrap().unwrap();
    }
    handle.next_request().await.unwrap().1.send_response(ok());
    v1_pending.await.unwrap().unwrap();
    let usage = breakers.usage(REVIEWS, Some("v1"), 9080).unwrap();
    assert_eq!(usage, Usage::default());
}

#[tokio::test(start_paused = true)]
async fn destinations_without_a_pool_pass_through_without_state() {
    let snap = snapshot(RULES);
    let breakers = CircuitBreakers::new();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        CircuitBreakerLayer::from_target().with_breakers(breakers.clone()),
    );
    // ratings has a DestinationRule without connectionPool; details has none; a request
    // without a Target is not limited either.
    let reqs = [
        routed(&snap, "http://ratings:9080/", None),
        routed(&snap, "http://details:9080/", None),
        get(),
    ];
    let tasks: Vec<_> = reqs
        .into_iter()
        .flat_map(|r| {
            let mut again = Request::new(body::empty());
            *again.uri_mut() = r.uri().clone();
            *again.extensions_mut() = r.extensions().clone();
            [r, again]
        })
        .map(|r| call(&mut svc, r))
        .collect();
    for _ in 0..tasks.len() {
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<ConnectionSettings>().is_none());
        send.send_response(ok());
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        breakers.usage("ratings.default.svc.cluster.local", None, 9080),
        None
    );
    // Nothing at all in a snapshot without pools.
    let plain = snapshot("");
    assert!(!breakers.any_pool(&plain));
    assert!(breakers.any_pool(&snap));
}

#[tokio::test(start_paused = true)]
async fn changed_limits_start_a_new_cluster() {
    let breakers = CircuitBreakers::new();
    let host: Arc<str> = Arc::from(REVIEWS);
    let one = PoolLimits::UNLIMITED.max_requests(1);
    let a = breakers.cluster(&host, None, 9080, one);
    let b = breakers.cluster(&host, None, 9080, one);
    assert!(Arc::ptr_eq(&a, &b));
    let c = breakers.cluster(&host, None, 9080, one.max_retries(3));
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(Arc::ptr_eq(
        &c,
        &breakers.cluster(&host, None, 9080, one.max_retries(3))
    ));
}

// === with the retry layer ===

/// The retry layer takes the retry slot when it decides to retry (Envoy's check): a retry over
/// `maxRetries` is not made and the caller gets the 503 at hand with the `UO` flag, instead of
/// the breaker's own `503 UO` for a retry it refuses.
#[tokio::test(start_paused = true)]
async fn a_retry_over_max_retries_returns_the_response_at_hand() {
    use mesh_core::policy::retry::{ExplicitRetry, RetryOn, RetryPolicy};

    use crate::retry::RetryLayer;

    let snap = snapshot(RULES);
    let breakers = CircuitBreakers::new();
    let policy = RetryPolicy::Explicit(ExplicitRetry {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetryOn::parse("5xx").unwrap(),
        backoff: Duration::from_millis(25),
        retry_ignore_previous_hosts: true,
    });
    let layer = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(policy).with_breakers(breakers.clone()))
        .layer(CircuitBreakerLayer::from_target().with_breakers(breakers.clone()));
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<Body>, _>(layer);
    let unavailable = || {
        Response::builder()
            .status(503)
            .body(body::full("try again"))
            .unwrap()
    };
    // v3 on 9080 allows one retry in flight.
    let v3 = || routed(&snap, "http://reviews:9080/", Some("v3"));
    let call = |svc: &mut mock::Spawn<_>, req| {
        assert_ready_ok!(svc.poll_ready());
        tokio::spawn(svc.call(req))
    };

    // A's retry holds the only retry slot.
    let a = call(&mut svc, v3());
    handle
        .next_request()
        .await
        .unwrap()
        .1
        .send_response(unavailable());
    let (_, a_retry) = handle.next_request().await.unwrap();
    let usage = breakers.usage(REVIEWS, Some("v3"), 9080).unwrap();
    assert_eq!(usage.active_retries, 1);

    // B's 503 cannot be retried: B gets it, flagged UO, and no retry reaches the upstream.
    let b = call(&mut svc, v3());
    handle
        .next_request()
        .await
        .unwrap()
        .1
        .send_response(unavailable());
    let res = b.await.unwrap().expect("the response at hand");
    assert_eq!(res.status(), 503);
    assert!(ResponseFlags::of(&res).contains(ResponseFlag::UpstreamOverflow));
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"try again"
    );
    settle().await;
    assert!(handle.poll_request().is_pending(), "B was not retried");
    assert_eq!(breakers.overflows(), 1);

    // A's retry ends and frees the slot: C's retry goes out.
    a_retry.send_response(ok());
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        breakers
            .usage(REVIEWS, Some("v3"), 9080)
            .unwrap()
            .active_retries,
        0
    );
    let c = call(&mut svc, v3());
    handle
        .next_request()
        .await
        .unwrap()
        .1
        .send_response(unavailable());
    handle.next_request().await.unwrap().1.send_response(ok());
    assert_eq!(c.await.unwrap().unwrap().status(), 200);
}
