//! Circuit breaking on real loopback sockets: Istio's circuit-breaking task
//! (`maxConnections: 1`, `http1MaxPendingRequests: 1`, `maxRequestsPerConnection: 1` to
//! httpbin) at the library level, and the connection settings of a DestinationRule.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use mesh_core::{config::load_str, snapshot::Snapshot};
use mesh_tower::{
    body::{self, Body},
    flags::{ResponseFlag, ResponseFlags},
    route::Caller,
    stack::{self, StackParts},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{ServiceExt, util::BoxCloneSyncService};

type Client = BoxCloneSyncService<Request<Body>, Response<Body>, mesh_core::BoxError>;

/// An HTTP/1.1 upstream that answers every request after `delay`, counting the connections
/// it accepted and the requests it answered.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let reqs = reqs.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            reqs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"httpbin"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            connections,
            requests,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `httpbin` on the upstream's port with a DestinationRule whose `connectionPool` is
/// `pool` (one line of YAML).
fn snapshot(port: u16, pool: &str) -> Arc<Snapshot> {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: httpbin-1, namespace: default }}
spec: {{ address: 127.0.0.1, ports: {{ http: {port} }}, labels: {{ app: httpbin }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: httpbin, namespace: default }}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool: {pool}
"
    );
    let loaded = load_str(&yaml, None);
    assert!(
        loaded.findings.iter().all(|f| !f.is_error()),
        "{:?}",
        loaded.findings
    );
    Arc::new(Snapshot::build(&loaded.resources).expect("snapshot builds"))
}

fn client(snapshot: Arc<Snapshot>, parts: &StackParts) -> Client {
    stack::outbound(
        Arc::new(ArcSwap::new(snapshot)),
        Caller::new("default"),
        parts,
    )
}

/// Sends one GET; returns the status and the response flags.
async fn get(client: &Client) -> (u16, String) {
    let req = Request::get("http://httpbin:8000/get")
        .body(body::empty())
        .unwrap();
    let res = client.clone().oneshot(req).await.expect("rescue answers");
    let status = res.status().as_u16();
    let flags = ResponseFlags::of(&res).to_string();
    let overloaded = res.headers().get("x-envoy-overloaded").is_some();
    if ResponseFlags::of(&res).contains(ResponseFlag::UpstreamOverflow) {
        assert!(overloaded, "an overflow is marked x-envoy-overloaded");
    }
    let _ = res.into_body().collect().await;
    (status, flags)
}

const ISTIO_TASK: &str = "{ tcp: { maxConnections: 1 }, http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1 } }";

#[tokio::test]
async fn one_caller_at_a_time_is_never_tripped() {
    let upstream = Upstream::start(Duration::from_millis(5)).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(snapshot(upstream.port, ISTIO_TASK), &parts);
    for _ in 0..10 {
        assert_eq!(get(&client).await, (200, "-".to_owned()));
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_callers_trip_the_breaker_with_uo() {
    let upstream = Upstream::start(Duration::from_millis(25)).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(snapshot(upstream.port, ISTIO_TASK), &parts);
    // fortio -c 3 -n 30: three connections, ten requests each.
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..10 {
                    results.push(get(&client).await);
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in callers {
        results.extend(c.await.unwrap());
    }
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let overflow = results
        .iter()
        .filter(|r| **r == (503, "UO".to_owned()))
        .count();
    assert_eq!(ok + overflow, 30, "only 200 or 503 UO: {results:?}");
    assert!(ok > 0, "{results:?}");
    assert!(overflow > 0, "{results:?}");
    // Only admitted requests reached the upstream, each on its own connection.
    assert_eq!(upstream.requests.load(Ordering::SeqCst), ok);
    assert_eq!(upstream.connections(), ok);
    // Every slot was given back.
    let usage = parts
        .breakers
        .usage("httpbin.default.svc.cluster.local", None, 8000)
        .expect("the cluster has breakers");
    assert_eq!(usage, Default::default());
}

#[tokio::test]
async fn one_request_per_connection_opens_a_connection_per_request() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        snapshot(upstream.port, "{ http: { maxRequestsPerConnection: 1 } }"),
        &parts,
    );
    for _ in 0..5 {
        assert_eq!(get(&client).await.0, 200);
    }
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test]
async fn connections_are_reused_up_to_max_requests_per_connection() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        snapshot(upstream.port, "{ http: { maxRequestsPerConnection: 3 } }"),
        &parts,
    );
    for _ in 0..7 {
        assert_eq!(get(&client).await.0, 200);
    }
    // 3 + 3 + 1.
    assert_eq!(upstream.connections(), 3);

    // Without a limit, one connection carries them all.
    let upstream = Upstream::start(Duration::ZERO).await;
    let client = stack::outbound(
        Arc::new(ArcSwap::new(snapshot(
            upstream.port,
            "{ http: { http2MaxRequests: 100 } }",
        ))),
        Caller::new("default"),
        &parts,
    );
    for _ in 0..7 {
        assert_eq!(get(&client).await.0, 200);
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn an_old_idle_connection_is_closed_at_max_connection_duration() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        snapshot(upstream.port, "{ tcp: { maxConnectionDuration: 100ms } }"),
        &parts,
    );
    assert_eq!(get(&client).await.0, 200);
    assert_eq!(get(&client).await.0, 200);
    assert_eq!(upstream.connections(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(&client).await.0, 200);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn destinations_with_the_same_connection_settings_share_pools() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let parts = StackParts::new(Duration::from_secs(2));
    // The connect timeout reaches the connector: the destination gets pools of its own.
    let settings = "{ tcp: { connectTimeout: 300ms, tcpKeepalive: { time: 60s } } }";
    let first = client(snapshot(upstream.port, settings), &parts);
    assert_eq!(get(&first).await.0, 200);
    assert_eq!(parts.connect.custom_pools(), 1);
    // Another snapshot (a configuration change) with the same settings uses the same pools:
    // the connection is reused.
    let second = client(snapshot(upstream.port, settings), &parts);
    assert_eq!(get(&second).await.0, 200);
    assert_eq!(parts.connect.custom_pools(), 1);
    assert_eq!(upstream.connections(), 1);
    // Other settings, other pools.
    let third = client(
        snapshot(upstream.port, "{ tcp: { connectTimeout: 1s } }"),
        &parts,
    );
    assert_eq!(get(&third).await.0, 200);
    assert_eq!(parts.connect.custom_pools(), 2);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_connections_never_fails_requests_in_flight() {
    let upstream = Upstream::start(Duration::from_millis(1)).await;
    let parts = StackParts::new(Duration::from_secs(2));
    let client = client(
        snapshot(
            upstream.port,
            "{ tcp: { maxConnectionDuration: 15ms }, http: { maxRequestsPerConnection: 2 } }",
        ),
        &parts,
    );
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..25 {
                    statuses.push(get(&client).await);
                }
                statuses
            })
        })
        .collect();
    for c in callers {
        for result in c.await.unwrap() {
            assert_eq!(result, (200, "-".to_owned()));
        }
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 100);
    // At most two requests per connection.
    assert!(upstream.connections() >= 50, "{}", upstream.connections());
}
