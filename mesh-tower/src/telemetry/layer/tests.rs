use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use http_body_util::BodyExt;
use tower::{ServiceExt, service_fn};

use super::*;
use crate::{body, mesh::Workload};

fn local() -> LocalWorkload {
    LocalWorkload::from_workload(
        &Workload::new("productpage-v1", "default")
            .label("app", "productpage")
            .label("version", "v1")
            .service_account("bookinfo-productpage"),
    )
}

fn endpoint() -> PickedEndpoint {
    PickedEndpoint {
        endpoint: Arc::new(Endpoint {
            address: "127.0.0.1".into(),
            ports: BTreeMap::new(),
            labels: [
                ("app".to_owned(), "reviews".to_owned()),
                ("version".to_owned(), "v2".to_owned()),
            ]
            .into(),
            service_account: "bookinfo-reviews".into(),
            namespace: "default".into(),
            weight: 1,
            workload: Some(mesh_core::config::ResourceKey::new(
                mesh_core::config::Kind::WorkloadEntry,
                "default",
                "reviews-v2",
            )),
        }),
        authority: "127.0.0.1:9080".parse().unwrap(),
    }
}

/// The value of the series of `name` whose line contains every `label`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An access log sink writing text lines in memory, and those lines.
fn text_log() -> (
    AccessLogSink,
    tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
) {
    use tokio::io::AsyncBufReadExt;
    let (reader, writer) = tokio::io::duplex(1 << 16);
    let (sink, log_writer) = AccessLogSink::from_writer(
        writer,
        crate::telemetry::access_log::AccessLogEncoding::Text,
        16,
    );
    tokio::spawn(log_writer);
    (sink, tokio::io::BufReader::new(reader).lines())
}

async fn drain<B: HttpBody>(res: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn outbound_reports_source_and_the_picked_endpoint() {
    let metrics = IstioMetrics::new();
    let layer = TelemetryLayer::outbound(&metrics, local());
    let svc = layer.layer(service_fn(|req: Request<Body>| async move {
        assert!(
            req.headers()["baggage"]
                .to_str()
                .unwrap()
                .contains("k8s.deployment.name=productpage-v1")
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = req.into_body().collect().await;
        let mut res = Response::new(body::full("hello"));
        res.extensions_mut().insert(endpoint());
        Ok::<_, Infallible>(res)
    }));
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(
                Request::post("http://reviews:9080/")
                    .body(body::full("abcd"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(&drain(res).await[..], b"hello");
    }
    let text = metrics.encode();
    let series = [
        "reporter=\"source\"",
        "source_workload=\"productpage-v1\"",
        "source_canonical_revision=\"v1\"",
        "source_principal=\"unknown\"",
        "destination_workload=\"reviews-v2\"",
        "destination_version=\"v2\"",
        "destination_principal=\"unknown\"",
        "connection_security_policy=\"unknown\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "request_protocol=\"http\"",
    ];
    assert_eq!(
        value(&text, "istio_requests_total", &series),
        Some(3.0),
        "{text}"
    );
    assert!(!text.contains("grpc_response_status"));
    assert_eq!(value(&text, "istio_request_bytes_sum", &series), Some(12.0));
    assert_eq!(
        value(&text, "istio_response_bytes_sum", &series),
        Some(15.0)
    );
    assert_eq!(
        value(&text, "istio_request_duration_milliseconds_sum", &series),
        Some(90.0)
    );
    assert_eq!(
        value(
            &text,
            "istio_request_duration_milliseconds_bucket",
            &["le=\"25\""]
        ),
        Some(0.0)
    );
    assert_eq!(layer.series(), 1);
    assert_eq!(layer.uncached(), 0);
}

#[tokio::test]
async fn local_replies_count_with_their_flags_and_unknown_destination() {
    let metrics = IstioMetrics::new();
    let svc = TelemetryLayer::outbound(&metrics, local()).layer(service_fn(
        |_req: Request<Body>| async move {
            let mut res = Response::new(body::full("no healthy upstream"));
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            ResponseFlags::add_to(&mut res, ResponseFlag::NoHealthyUpstream);
            Ok::<_, Infallible>(res)
        },
    ));
    let res = svc
        .oneshot(Request::get("http://nowhere/").body(body::empty()).unwrap())
        .await
        .unwrap();
    drain(res).await;
    let text = metrics.encode();
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &[
                "response_code=\"503\"",
                "response_flags=\"UH\"",
                "destination_workload=\"unknown\"",
                "destination_service=\"unknown\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn grpc_status_comes_from_trailers() {
    let metrics = IstioMetrics::new();
    let svc = TelemetryLayer::outbound(&metrics, local()).layer(service_fn(
        |_req: Request<Body>| async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("5"));
            let frames = futures_util::stream::iter(vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"12345"))),
                Ok(Frame::trailers(trailers)),
            ]);
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(frames)))
        },
    ));
    let req = Request::post("http://reviews:9080/svc/Method")
        .header("content-type", "application/grpc")
        .body(body::full("x"))
        .unwrap();
    drain(svc.clone().oneshot(req).await.unwrap()).await;
    // Trailers-only (status in the headers).
    let svc2 = TelemetryLayer::outbound(&metrics, local()).layer(service_fn(
        |_req: Request<Body>| async move {
            let mut res = Response::new(body::empty());
            res.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("14"));
            Ok::<_, Infallible>(res)
        },
    ));
    let req = Request::post("http://reviews:9080/svc/Method")
        .header("content-type", "application/grpc+proto")
        .body(body::empty())
        .unwrap();
    drain(svc2.oneshot(req).await.unwrap()).await;
    let text = metrics.encode();
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &["grpc_response_status=\"5\"", "request_protocol=\"grpc\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &["grpc_response_status=\"14\""]
        ),
        Some(1.0)
    );
    assert_eq!(http_to_grpc(503), 14);
    assert_eq!(http_to_grpc(418), 2);
}

#[tokio::test]
async fn beyond_the_cap_requests_are_still_counted() {
    let metrics = IstioMetrics::new();
    let layer = TelemetryLayer::outbound(&metrics, local()).max_series(1);
    let svc = layer.layer(service_fn(|req: Request<Body>| async move {
        let mut res = Response::new(body::empty());
        *res.status_mut() =
            http::StatusCode::from_u16(req.uri().path()[1..].parse().unwrap()).unwrap();
        Ok::<_, Infallible>(res)
    }));
    for code in [200, 404, 404, 500] {
        let req = Request::get(format!("http://x/{code}"))
            .body(body::empty())
            .unwrap();
        drain(svc.clone().oneshot(req).await.unwrap()).await;
    }
    assert_eq!(layer.series(), 1);
    assert_eq!(layer.uncached(), 3);
    let text = metrics.encode();
    assert_eq!(
        value(&text, "istio_requests_total", &["response_code=\"404\""]),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "istio_requests_total", &["response_code=\"500\""]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_dropped_early_is_recorded_with_dc() {
    let metrics = IstioMetrics::new();
    let svc = TelemetryLayer::inbound(&metrics, local()).layer(service_fn(
        |_req: Request<Body>| async move {
            let frames = futures_util::stream::iter(vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::data(Bytes::from_static(b"def"))),
            ]);
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(frames)))
        },
    ));
    let res = svc
        .oneshot(Request::get("/").body(body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().map(Bytes::len), Some(3));
    drop(body);
    let text = metrics.encode();
    let series = ["response_flags=\"DC\"", "reporter=\"destination\""];
    assert_eq!(
        value(&text, "istio_requests_total", &series),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "istio_response_bytes_sum", &series), Some(3.0));
}

#[tokio::test]
async fn inbound_reads_the_peer_identity_and_baggage() {
    let metrics = IstioMetrics::new();
    let svc = TelemetryLayer::inbound(&metrics, local()).layer(service_fn(
        |_req: Request<Body>| async move {
            let mut res = Response::new(body::empty());
            *res.status_mut() = http::StatusCode::FORBIDDEN;
            Ok::<_, Infallible>(res)
        },
    ));
    let id: Identity = "spiffe://cluster.local/ns/default/sa/gateway"
        .parse()
        .unwrap();
    let baggage = LocalWorkload::from_workload(
        &Workload::new("gateway-1", "default").label("app", "gateway"),
    )
    .baggage();
    for _ in 0..2 {
        let mut req = Request::get("/")
            .header("baggage", baggage.as_str())
            .body(body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(PeerIdentity::new(id.clone(), "01", SystemTime::UNIX_EPOCH));
        drain(svc.clone().oneshot(req).await.unwrap()).await;
    }
    // Plaintext, no baggage.
    drain(
        svc.clone()
            .oneshot(Request::get("/").body(body::empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    let text = metrics.encode();
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "source_workload=\"gateway-1\"",
                "source_app=\"gateway\"",
                "source_principal=\"spiffe://cluster.local/ns/default/sa/gateway\"",
                "destination_workload=\"productpage-v1\"",
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
                "destination_service=\"productpage.default.svc.cluster.local\"",
                "destination_service_name=\"productpage\"",
                "connection_security_policy=\"mutual_tls\"",
                "response_code=\"403\"",
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &[
                "source_workload=\"unknown\"",
                "source_principal=\"unknown\"",
                "destination_principal=\"unknown\"",
                "connection_security_policy=\"none\"",
            ]
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn baggage_is_put_in_front_of_the_applications() {
    let mut h = http::HeaderMap::new();
    add_baggage(&mut h, &HeaderValue::from_static("k8s.namespace.name=a"));
    assert_eq!(h["baggage"], "k8s.namespace.name=a");
    h.insert("baggage", HeaderValue::from_static("user=1"));
    add_baggage(&mut h, &HeaderValue::from_static("k8s.namespace.name=a"));
    assert_eq!(h["baggage"], "k8s.namespace.name=a,user=1");
}

#[test]
fn flags_map_to_distinct_bits() {
    let mut a = ResponseFlags::default();
    a.insert(ResponseFlag::FaultInjected);
    let mut b = ResponseFlags::default();
    b.insert(ResponseFlag::DelayInjected);
    assert_ne!(flag_bits(&a), flag_bits(&b));
    assert_eq!(flag_bits(&ResponseFlags::default()), 0);
}

#[tokio::test]
async fn inbound_writes_the_access_log_line() {
    let metrics = IstioMetrics::new();
    let (sink, mut lines) = text_log();
    let svc = TelemetryLayer::inbound(&metrics, local())
        .access_log(sink)
        .layer(service_fn(|_req: Request<Body>| async move {
            let mut res = Response::new(body::full("denied"));
            *res.status_mut() = http::StatusCode::FORBIDDEN;
            Ok::<_, Infallible>(res)
        }));
    let peer: std::net::SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let mut req = Request::post("/api/v1?x=1")
        .header("host", "productpage:9080")
        .header("x-request-id", "req-1")
        .header("user-agent", "curl/8")
        .body(body::full("payload"))
        .unwrap();
    req.extensions_mut().insert(PeerAddr(peer));
    drain(svc.oneshot(req).await.unwrap()).await;
    let line = lines.next_line().await.unwrap().unwrap();
    let entry = AccessLogEntry::parse_text(&format!("{line}\n")).unwrap();
    assert_eq!(entry.method.as_deref(), Some("POST"));
    assert_eq!(entry.path.as_deref(), Some("/api/v1?x=1"));
    assert_eq!(entry.response_code, 403);
    assert_eq!(entry.bytes_received, 7);
    assert_eq!(entry.bytes_sent, 6);
    assert_eq!(entry.authority.as_deref(), Some("productpage:9080"));
    assert_eq!(entry.request_id.as_deref(), Some("req-1"));
    assert_eq!(entry.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(entry.downstream_remote_address, Some(peer));
    assert_eq!(entry.response_flags.to_string(), "-");
}

#[test]
fn grpc_messages_are_counted_across_and_within_chunks() {
    let msg = |len: u32| {
        let mut m = vec![0u8];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    };
    // Three messages in one chunk, one of them empty.
    let mut f = super::GrpcFrames::default();
    let all: Vec<u8> = [msg(3), msg(0), msg(10)].concat();
    f.feed(&all);
    assert_eq!(f.messages, 3);
    // The same bytes one at a time: the prefix and the payload split anywhere.
    let mut g = super::GrpcFrames::default();
    for b in &all {
        g.feed(std::slice::from_ref(b));
    }
    assert_eq!(g.messages, 3);
    // A prefix cut in the middle counts once the rest arrives.
    let mut h = super::GrpcFrames::default();
    let big = msg(70_000);
    h.feed(&big[..2]);
    assert_eq!(h.messages, 0);
    h.feed(&big[2..40_000]);
    assert_eq!(h.messages, 1);
    h.feed(&big[40_000..]);
    h.feed(&msg(1));
    assert_eq!(h.messages, 2);
}

/// A routed outbound request: the leaf fills the route slot as the route layer does, with the
/// host and endpoint the request names (`x-host`, `x-endpoint`), and answers `x-status`.
#[tokio::test]
async fn routed_requests_keep_their_series_apart_by_host_endpoint_and_response() {
    let metrics = IstioMetrics::new();
    let snapshot = Arc::new(mesh_core::snapshot::Snapshot::build(&[]).unwrap());
    let hosts: [Arc<str>; 2] = [
        Arc::from("reviews.default.svc.cluster.local"),
        Arc::from("ratings.default.svc.cluster.local"),
    ];
    // Two snapshots' copies of the same WorkloadEntry: distinct `Arc`s, the same labels.
    let endpoints = [endpoint(), endpoint()];
    assert!(!Arc::ptr_eq(&endpoints[0].endpoint, &endpoints[1].endpoint));
    let layer = TelemetryLayer::outbound(&metrics, local());
    let svc = layer.layer(service_fn(move |req: Request<Body>| {
        let header =
            |name: &str| -> usize { req.headers()[name].to_str().unwrap().parse().unwrap() };
        let (host, ep, status) = (header("x-host"), header("x-endpoint"), header("x-status"));
        if let Some(slot) = req.extensions().get::<RouteSlot>() {
            slot.set(&Target {
                snapshot: snapshot.clone(),
                route: None,
                match_index: None,
                host: hosts[host].clone(),
                subset: None,
                port: 9080,
            });
        }
        let mut res = Response::new(body::full("hello"));
        *res.status_mut() = http::StatusCode::from_u16(status as u16).unwrap();
        res.extensions_mut().insert(endpoints[ep].clone());
        async move { Ok::<_, Infallible>(res) }
    }));
    let send = |host: usize, ep: usize, status: u16| {
        let svc = svc.clone();
        async move {
            let req = Request::get("http://reviews:9080/")
                .header("x-host", host.to_string())
                .header("x-endpoint", ep.to_string())
                .header("x-status", status.to_string())
                .body(body::empty())
                .unwrap();
            drain(svc.oneshot(req).await.unwrap()).await;
        }
    };
    // Each twice: the second request of each takes the fast path.
    for _ in 0..2 {
        send(0, 0, 200).await;
        send(0, 1, 200).await;
        send(1, 0, 200).await;
        send(0, 0, 503).await;
    }
    let text = metrics.encode();
    let count = |host: &str, code: &str| {
        value(
            &text,
            "istio_requests_total",
            &[
                &format!("destination_service=\"{host}\""),
                &format!("response_code=\"{code}\""),
                "destination_workload=\"reviews-v2\"",
            ],
        )
    };
    // Equal endpoints share a series; hosts and codes do not.
    assert_eq!(
        count("reviews.default.svc.cluster.local", "200"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        count("ratings.default.svc.cluster.local", "200"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count("reviews.default.svc.cluster.local", "503"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(layer.series(), 3);
    assert_eq!(layer.uncached(), 0);

    // A response cut short on the fast path is still flagged.
    let req = Request::get("http://reviews:9080/")
        .header("x-host", "0")
        .header("x-endpoint", "0")
        .header("x-status", "200")
        .body(body::empty())
        .unwrap();
    drop(svc.clone().oneshot(req).await.unwrap());
    let text = metrics.encode();
    assert_eq!(
        value(
            &text,
            "istio_requests_total",
            &[
                "destination_service=\"reviews.default.svc.cluster.local\"",
                "response_flags=\"DC\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn caches_stay_within_their_cap() {
    let c: super::Capped<u32, u32> = super::Capped::new(2);
    assert_eq!(c.get_or_insert_with(1, || 10), Ok(10));
    assert_eq!(c.get_or_insert_with(2, || 20), Ok(20));
    // Full: the value is made but not kept.
    assert_eq!(c.get_or_insert_with(3, || 30), Err(30));
    assert_eq!(c.get(&3), None);
    assert_eq!(c.get_or_insert_with(1, || 0), Ok(10));
    // A cache of stale-prone keys starts over instead of keeping old keys for good.
    c.insert_or_restart(4, 40);
    assert_eq!((c.len(), c.get(&4), c.get(&1)), (1, Some(40), None));
    c.insert_or_restart(5, 50);
    assert_eq!((c.len(), c.get(&4), c.get(&5)), (2, Some(40), Some(50)));
}

#[tokio::test]
async fn with_metrics_off_nothing_is_counted_but_baggage_and_the_log_go_on() {
    let metrics = IstioMetrics::new();
    let (sink, mut lines) = text_log();
    let app = service_fn(|req: Request<Body>| async move {
        // Servers keep learning who calls.
        assert!(
            req.headers()["baggage"]
                .to_str()
                .unwrap()
                .contains("k8s.deployment.name=productpage-v1")
        );
        let mut res = Response::new(body::full("hello"));
        res.extensions_mut().insert(endpoint());
        Ok::<_, Infallible>(res)
    });
    let quiet = TelemetryLayer::outbound(&metrics, local())
        .metrics(false)
        .layer(app);
    let logged = TelemetryLayer::outbound(&metrics, local())
        .metrics(false)
        .access_log(sink)
        .layer(app);
    // A GET through `svc`, answered "hello".
    async fn get<S>(svc: S)
    where
        S: tower::Service<
                Request<Body>,
                Response = Response<ResponseBody<Body>>,
                Error = Infallible,
            >,
    {
        let res = svc
            .oneshot(
                Request::get("http://reviews:9080/")
                    .body(body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(&drain(res).await[..], b"hello");
    }
    get(quiet).await;
    get(logged).await;
    let line = lines.next_line().await.unwrap().unwrap();
    let entry = AccessLogEntry::parse_text(&format!("{line}\n")).unwrap();
    assert_eq!(entry.response_code, 200);
    assert_eq!(entry.bytes_sent, 5);
    let text = metrics.encode();
    assert!(!text.contains("istio_requests_total{"), "{text}");
    assert!(
        !text.contains("istio_request_duration_milliseconds_bucket{"),
        "{text}"
    );

    // The same layer with metrics on counts the request.
    get(TelemetryLayer::outbound(&metrics, local()).layer(app)).await;
    let text = metrics.encode();
    assert_eq!(
        value(&text, "istio_requests_total", &["reporter=\"source\""]),
        Some(1.0),
        "{text}"
    );
}
