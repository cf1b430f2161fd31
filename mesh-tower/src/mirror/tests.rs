use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use mesh_core::{config::load_str, policy::fault::PerMillion, snapshot::Snapshot};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::*;
use crate::{
    body as mesh_body,
    route::{Caller, decide},
};

type Handle = mock::Handle<http::Request<Body>, http::Response<Body>>;

fn mirror_to(host: &str, subset: Option<&str>, share: PerMillion) -> route::Mirror {
    route::Mirror {
        host: host.into(),
        subset: subset.map(Into::into),
        port: None,
        share,
    }
}

/// A request routed by a rule forwarding to reviews v1 with `mirror` (YAML fields).
fn routed(mirror: &str, body: Body) -> http::Request<Body> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - route: [{{ destination: {{ host: reviews, subset: v1 }} }}]
    {mirror}
"#
    );
    let snapshot = Arc::new(Snapshot::build(&load_str(&yaml, None).resources).unwrap());
    let mut req = http::Request::post("http://reviews:9080/reviews/1?x=y")
        .header("x-user", "jason")
        .body(body)
        .unwrap();
    let (target, _) = decide(&snapshot, &Caller::new("default"), &req, 0).unwrap();
    req.extensions_mut().insert(target);
    req
}

async fn bytes(body: Body) -> Bytes {
    body.collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn sends_a_copy_to_the_mirror_destination() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(MirrorLayer::from_target());
    let req = routed(
        "mirror: { host: reviews, subset: v2, port: { number: 9999 } }",
        mesh_body::full("payload"),
    );
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);

    let (original, send) = handle.next_request().await.unwrap();
    assert!(original.extensions().get::<Mirrored>().is_none());
    assert_eq!(original.uri(), "http://reviews:9080/reviews/1?x=y");
    let t = original.extensions().get::<Target>().unwrap();
    assert!(t.route.is_some());
    assert_eq!(t.subset.as_deref(), Some("v1"));
    send.send_response(http::Response::new(mesh_body::full("original")));
    let res = fut.await.unwrap();
    assert_eq!(bytes(res.into_body()).await, "original");
    assert_eq!(bytes(original.into_body()).await, "payload");

    let (copy, _send) = handle.next_request().await.unwrap();
    let m = copy.extensions().get::<Mirrored>().unwrap();
    assert_eq!(m.0.subset.as_deref(), Some("v2"));
    assert_eq!(copy.method(), http::Method::POST);
    assert_eq!(copy.uri(), "http://reviews-shadow:9080/reviews/1?x=y");
    assert_eq!(copy.headers()["x-user"], "jason");
    let t = copy.extensions().get::<Target>().unwrap();
    assert!(t.route.is_none(), "no policy of the original route");
    assert_eq!(&*t.host, "reviews.default.svc.cluster.local");
    assert_eq!(t.subset.as_deref(), Some("v2"));
    assert_eq!(t.port, 9999);
    assert_eq!(bytes(copy.into_body()).await, "payload");
}

#[tokio::test]
async fn the_original_never_waits_for_the_copy() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(MirrorLayer::new(vec![mirror_to(
        "m",
        None,
        PerMillion::ALL,
    )]));
    // Capacity for exactly one request: the original takes it, the copy waits for its own.
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(
        http::Request::get("http://a/")
            .body(mesh_body::empty())
            .unwrap(),
    );
    let (original, send) = handle.next_request().await.unwrap();
    assert!(original.extensions().get::<Mirrored>().is_none());
    send.send_response(http::Response::new(mesh_body::empty()));
    fut.await.unwrap();
    tokio::task::yield_now().await;
    assert!(
        handle.poll_request().is_pending(),
        "copy waits for readiness"
    );

    handle.allow(1);
    let (copy, send) = handle.next_request().await.unwrap();
    assert!(copy.extensions().get::<Mirrored>().is_some());
    assert_eq!(copy.uri(), "http://a-shadow/");
    // The copy's failure goes nowhere.
    send.send_error("mirror down");
}

#[tokio::test]
async fn a_copy_that_never_answers_does_not_hold_the_original() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(MirrorLayer::new(vec![
        mirror_to("m1", None, PerMillion::ALL),
        mirror_to("m2", None, PerMillion::ALL),
    ]));
    assert_ready_ok!(svc.poll_ready());
    let req = http::Request::get("/p")
        .header(http::header::HOST, "reviews:9080")
        .body(mesh_body::empty())
        .unwrap();
    let fut = svc.call(req);
    let (_original, send) = handle.next_request().await.unwrap();
    let (c1, _keep1) = handle.next_request().await.unwrap();
    let (c2, _keep2) = handle.next_request().await.unwrap();
    let mut hosts = [c1, c2].map(|c| {
        assert_eq!(c.headers()[http::header::HOST], "reviews-shadow:9080");
        c.extensions().get::<Mirrored>().unwrap().0.host.clone()
    });
    hosts.sort();
    assert_eq!(hosts, ["m1", "m2"]);
    send.send_response(http::Response::new(mesh_body::empty()));
    fut.await.unwrap();
}

#[tokio::test]
async fn requests_without_mirrors_pass_untouched() {
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(MirrorLayer::from_target());
    for req in [
        routed("", mesh_body::full("x")),
        http::Request::new(mesh_body::full("x")),
    ] {
        assert_ready_ok!(svc.poll_ready());
        let _fut = svc.call(req);
        let (r, _send) = handle.next_request().await.unwrap();
        assert!(r.extensions().get::<Mirrored>().is_none());
        tokio::task::yield_now().await;
        assert!(handle.poll_request().is_pending());
    }
}

/// A body whose every other poll is `Pending`: streaming, not buffered.
struct Stutter {
    chunks: VecDeque<Bytes>,
    ready: bool,
}

impl http_body::Body for Stutter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ready = !self.ready;
        if !self.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test]
async fn streaming_and_large_bodies_are_not_mirrored_but_still_forwarded_whole() {
    let streaming = mesh_body::boxed(Stutter {
        chunks: ["a", "b", "c"].into_iter().map(Bytes::from).collect(),
        // The first chunk is ready at once, the second is not.
        ready: false,
    });
    let large = mesh_body::full(vec![7u8; MAX_MIRROR_BODY + 1]);
    let large_unsized = mesh_body::boxed(StreamBody::new(futures_util::stream::iter(
        (0..17).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![1u8; 4096])))),
    )));
    let cases = [
        (streaming, Bytes::from_static(b"abc")),
        (large, Bytes::from(vec![7u8; MAX_MIRROR_BODY + 1])),
        (large_unsized, Bytes::from(vec![1u8; 17 * 4096])),
    ];
    for (body, want) in cases {
        let (mut svc, mut handle): (_, Handle) =
            mock::spawn_layer(MirrorLayer::new(vec![mirror_to(
                "m",
                None,
                PerMillion::ALL,
            )]));
        assert_ready_ok!(svc.poll_ready());
        let _fut = svc.call(http::Request::post("http://a/").body(body).unwrap());
        let (original, _send) = handle.next_request().await.unwrap();
        tokio::task::yield_now().await;
        assert!(handle.poll_request().is_pending(), "not mirrored");
        assert_eq!(bytes(original.into_body()).await, want);
    }
}

#[tokio::test]
async fn copies_keep_trailers_and_the_original_keeps_its_size() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ab"))),
        Ok(Frame::data(Bytes::from_static(b"cd"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = mesh_body::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let (mut svc, mut handle): (_, Handle) = mock::spawn_layer(MirrorLayer::new(vec![mirror_to(
        "m",
        None,
        PerMillion::ALL,
    )]));
    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call(http::Request::post("http://a/").body(body).unwrap());
    let (original, _s1) = handle.next_request().await.unwrap();
    let (copy, _s2) = handle.next_request().await.unwrap();
    assert_eq!(http_body::Body::size_hint(original.body()).exact(), Some(4));
    for r in [original, copy] {
        let collected = r.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "abcd");
    }

    // A full body keeps its exact size too.
    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call(
        http::Request::post("http://a/")
            .body(mesh_body::full("12345"))
            .unwrap(),
    );
    let (original, _s3) = handle.next_request().await.unwrap();
    assert_eq!(http_body::Body::size_hint(original.body()).exact(), Some(5));
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_the_copy() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let flag = dropped.clone();
    let inner = tower::service_fn(move |req: http::Request<Body>| {
        let guard = req
            .extensions()
            .get::<Mirrored>()
            .map(|_| DropFlag(flag.clone()));
        async move {
            if let Some(_guard) = guard {
                // The mirror never answers.
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(http::Response::new(mesh_body::empty()))
        }
    });
    let svc = MirrorLayer::from_target().layer(inner);
    let req = routed(
        "timeout: 2s\n    mirror: { host: ratings }",
        mesh_body::empty(),
    );
    svc.oneshot(req).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_999)).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        0,
        "the copy is still waiting"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the copy was dropped at the timeout"
    );
}

#[tokio::test]
async fn mirrors_the_configured_share_of_requests() {
    const N: usize = 2_000;
    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let inner = tower::service_fn(move |req: http::Request<Body>| {
        if req.extensions().get::<Mirrored>().is_some() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        async { Ok::<_, BoxError>(http::Response::new(mesh_body::empty())) }
    });
    let svc =
        MirrorLayer::new(vec![mirror_to("m", None, PerMillion::from_percent(30.0))]).layer(inner);
    for _ in 0..N {
        svc.clone()
            .oneshot(http::Request::new(mesh_body::empty()))
            .await
            .unwrap();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let share = copies.load(Ordering::Relaxed) as f64 / N as f64;
    assert!((share - 0.30).abs() < 0.05, "mirrored {share}");
}

#[test]
fn does_not_panic_outside_a_runtime() {
    let inner = tower::service_fn(|_req: http::Request<Body>| async {
        Ok::<_, BoxError>(http::Response::new(mesh_body::empty()))
    });
    let mut svc = MirrorLayer::new(vec![mirror_to("m", None, PerMillion::ALL)]).layer(inner);
    let _fut = svc.call(http::Request::new(mesh_body::empty()));
}

#[test]
fn appends_shadow_to_the_host_as_envoy() {
    for (authority, want) in [
        ("reviews:9080", Some("reviews-shadow:9080")),
        ("reviews", Some("reviews-shadow")),
        (
            "reviews.default.svc.cluster.local",
            Some("reviews.default.svc.cluster.local-shadow"),
        ),
        ("10.0.0.1:80", Some("10.0.0.1-shadow:80")),
        ("[::1]:80", Some("[::1]-shadow:80")),
        ("[::1]", Some("[::1]-shadow")),
        ("", None),
    ] {
        assert_eq!(shadow_authority(authority).as_deref(), want, "{authority}");
    }
}
