//! Tests on real loopback sockets (127.0.0.1, ports chosen by the kernel).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version, header::HOST};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::BoxError;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::ServiceExt;

use super::Connect;
use crate::{
    body,
    error::{UpstreamConnectFailure, UpstreamReset, cause_ref},
};

/// A hyper server speaking HTTP/1.1 and HTTP/2 (prior knowledge) that answers with the
/// request's version, `Host` header and URI. Returns its address and a count of accepted
/// connections.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get(HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let text = format!("{:?} {host} {}", req.version(), req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A raw TCP server: runs `handle` on each accepted connection.
async fn raw_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream, n));
            n += 1;
        }
    });
    addr
}

/// Reads one HTTP/1 request head (a GET without body); false on EOF.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

fn get(addr: SocketAddr, version: Version) -> Request<body::Body> {
    Request::get(format!("http://{addr}/path"))
        .version(version)
        .header(HOST, "reviews:9080")
        .body(body::empty())
        .expect("valid request")
}

async fn text(res: Response<body::Body>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// Lets the connection tasks run (so that hyper has seen a close before the next request).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn reset(err: &BoxError) -> &UpstreamReset {
    cause_ref::<UpstreamReset>(&**err).unwrap_or_else(|| panic!("not a reset: {err:?}"))
}

#[tokio::test]
async fn http1_request_reaches_the_server_with_its_host_header() {
    let (addr, _) = echo_server().await;
    let res = Connect::new()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(text(res).await, "HTTP/1.1 reviews:9080 /path");
}

#[tokio::test]
async fn http2_request_reaches_the_server_over_h2c() {
    let (addr, _) = echo_server().await;
    let res = Connect::new()
        .oneshot(get(addr, Version::HTTP_2))
        .await
        .expect("response");
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(text(res).await, "HTTP/2.0 reviews:9080 /path");
}

#[tokio::test]
async fn pools_connections_per_endpoint() {
    let (addr, accepted) = echo_server().await;
    let connect = Connect::new();
    for _ in 0..3 {
        let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
        text(res.expect("response")).await;
        settle().await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "HTTP/1.1 keep-alive reuses"
    );
    let (h2_addr, h2_accepted) = echo_server().await;
    let requests = (0..4).map(|_| connect.clone().oneshot(get(h2_addr, Version::HTTP_2)));
    for res in futures_util::future::join_all(requests).await {
        text(res.expect("response")).await;
    }
    assert_eq!(h2_accepted.load(Ordering::SeqCst), 1, "HTTP/2 multiplexes");
}

#[tokio::test]
async fn a_refused_port_is_an_upstream_connect_failure() {
    // A free port nobody listens on: bind, then close the listener.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("local addr");
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect_err("nothing listens");
    let uf = cause_ref::<UpstreamConnectFailure>(&*err).expect("UpstreamConnectFailure");
    assert_eq!(uf.endpoint, addr.to_string());
    let io = cause_ref::<std::io::Error>(&*err).expect("io error inside");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn a_connection_not_accepted_in_time_is_an_upstream_connect_failure() {
    // A listener whose accept queue is full drops new SYNs: connecting hangs until the
    // timeout. Backlog 0 leaves room for one connection; fill it and check that the queue
    // is full (this check waits 200 ms of real time).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let _listener = socket.listen(0).expect("listen");
    let mut queued = Vec::new();
    let full = (0..8).any(|_| {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                queued.push(s);
                false
            }
            Err(_) => true,
        }
    });
    assert!(full, "the accept queue never filled");

    let start = tokio::time::Instant::now();
    let sent = Connect::new().oneshot(get(addr, Version::HTTP_11));
    let err = tokio::time::timeout(Duration::from_secs(60), sent)
        .await
        .expect("the connect timeout fires before 60 s")
        .expect_err("never connects");
    assert!(
        cause_ref::<UpstreamConnectFailure>(&*err).is_some(),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), super::DEFAULT_CONNECT_TIMEOUT);
}

#[tokio::test]
async fn a_server_that_closes_at_once_is_an_upstream_reset() {
    let addr = raw_server(|stream, _| async move { drop(stream) }).await;
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect_err("closed");
    let reset = reset(&err);
    assert_eq!(reset.endpoint, addr.to_string());
}

#[tokio::test]
async fn a_new_connection_closed_after_the_request_is_not_refused() {
    let addr = raw_server(|mut stream, _| async move {
        read_head(&mut stream).await;
        // Close without answering, after reading the whole request.
    })
    .await;
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect_err("closed");
    assert!(!reset(&err).refused, "{err:?}");
}

/// Sends a request answered `ok` and then a second one, on the same pooled connection, that
/// the server does not answer; returns the second one's error.
async fn second_request_fails(addr: SocketAddr) -> BoxError {
    let connect = Connect::new();
    let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
    assert_eq!(text(res.expect("first response")).await, "ok");
    settle().await;
    connect
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect_err("no answer")
}

#[tokio::test]
async fn a_pooled_connection_closed_before_answering_is_refused() {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let addr = raw_server(move |mut stream, _| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            // Answer the first request, then close when the next one arrives (as a server
            // closing an idle keep-alive connection does).
            if read_head(&mut stream).await {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.expect("write");
            }
            read_head(&mut stream).await;
        }
    })
    .await;
    let err = second_request_fails(addr).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the connection was reused"
    );
    assert!(reset(&err).refused, "{err:?}");
}

/// The keep-alive race as a reset: the server drops a pooled connection with `SO_LINGER` 0
/// when the next request arrives, so the client reads `ECONNRESET` instead of an end of
/// stream. The request never got an answer on a connection that had carried one: refused,
/// as for the end-of-stream form above (the default retry policy retries it).
#[tokio::test]
async fn a_pooled_connection_reset_before_answering_is_refused() {
    let addr = raw_server(move |mut stream, _| async move {
        if read_head(&mut stream).await {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(ok).await.expect("write");
        }
        read_head(&mut stream).await;
        stream.set_zero_linger().expect("linger");
        drop(stream);
    })
    .await;
    let err = second_request_fails(addr).await;
    let io = cause_ref::<std::io::Error>(&*err).map(std::io::Error::kind);
    assert_eq!(io, Some(std::io::ErrorKind::ConnectionReset), "{err:?}");
    assert!(reset(&err).refused, "{err:?}");
}

/// HTTP/2 frames, written by hand so a test can play a peer that refuses a stream.
mod h2_frames {
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const HEADERS: u8 = 0x1;

    pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len())
            .expect("small payload")
            .to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(super) fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(0x3, 0, stream, &code.to_be_bytes())
    }

    pub(super) fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        frame(0x7, 0, 0, &payload)
    }
}

/// A raw HTTP/2 peer: sends its SETTINGS, acknowledges the client's, and answers the first
/// HEADERS frame with `reply(stream_id)`, then keeps the connection open.
async fn h2_peer(reply: fn(u32) -> Vec<u8>) -> SocketAddr {
    raw_server(move |mut stream, _| async move {
        let mut preface = [0; 24];
        if stream.read_exact(&mut preface).await.is_err() {
            return;
        }
        let settings = h2_frames::frame(h2_frames::SETTINGS, 0, 0, &[]);
        let _ = stream.write_all(&settings).await;
        let mut header = [0; 9];
        while stream.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            match header[3] {
                h2_frames::SETTINGS if header[4] & 0x1 == 0 => {
                    let ack = h2_frames::frame(h2_frames::SETTINGS, 0x1, 0, &[]);
                    let _ = stream.write_all(&ack).await;
                }
                h2_frames::HEADERS => {
                    let _ = stream.write_all(&reply(id)).await;
                }
                _ => {}
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_http2_refused_stream_is_refused() {
    let addr = h2_peer(|id| h2_frames::rst_stream(id, 0x7)).await;
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_2))
        .await
        .expect_err("refused");
    assert!(reset(&err).refused, "{err:?}");
}

#[tokio::test]
async fn an_http2_stream_reset_for_another_reason_is_not_refused() {
    // INTERNAL_ERROR: the server may have processed the request.
    let addr = h2_peer(|id| h2_frames::rst_stream(id, 0x2)).await;
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_2))
        .await
        .expect_err("reset");
    assert!(!reset(&err).refused, "{err:?}");
}

#[tokio::test]
async fn an_http2_stream_above_a_graceful_goaway_is_refused() {
    // GOAWAY(last stream 0, NO_ERROR): stream 1 was not processed.
    let addr = h2_peer(|_| h2_frames::goaway(0, 0)).await;
    let err = Connect::new()
        .oneshot(get(addr, Version::HTTP_2))
        .await
        .expect_err("going away");
    assert!(reset(&err).refused, "{err:?}");
}

#[tokio::test]
async fn a_request_without_an_authority_fails_without_a_reset() {
    let req = Request::get("/relative")
        .body(body::empty())
        .expect("valid request");
    let err = Connect::new()
        .oneshot(req)
        .await
        .expect_err("needs an absolute URI");
    assert!(cause_ref::<UpstreamReset>(&*err).is_none());
    assert!(cause_ref::<UpstreamConnectFailure>(&*err).is_none());
}

#[tokio::test]
async fn sequential_http1_requests_share_one_connection() {
    let (addr, accepted) = echo_server().await;
    let connect = Connect::new();
    for _ in 0..10 {
        let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
        assert_eq!(
            text(res.expect("response")).await,
            "HTTP/1.1 reviews:9080 /path"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one TCP connection");
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_give_the_connection_back() {
    // The first connection sends part of its body and then nothing; the others answer.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let closed_tx = Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let addr = raw_server(move |mut stream, n| {
        let closed_tx = closed_tx.clone();
        async move {
            if n == 0 {
                read_head(&mut stream).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
                stream.write_all(head).await.expect("write");
                // Wait for the client to close the connection.
                let mut rest = [0; 64];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                if let Some(tx) = closed_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
                return;
            }
            while read_head(&mut stream).await {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.expect("write");
            }
        }
    })
    .await;
    let connect = Connect::new();
    let res = connect
        .clone()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect("first response");
    let mut body = res.into_body();
    let frame = body.frame().await.expect("a frame").expect("data");
    assert_eq!(frame.into_data().expect("data"), "abc");
    drop(body);
    // The next request gets a new connection (on the old one it would wait forever).
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        connect.clone().oneshot(get(addr, Version::HTTP_11)),
    )
    .await
    .expect("not sent on the unfinished connection")
    .expect("second response");
    assert_eq!(text(res).await, "ok");
    tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the unfinished connection is closed")
        .expect("signal");
}

/// A server whose first connection answers one request with `ok`, then waits for `close`,
/// runs `on_close` with the connection (which drops it: the server closing an idle keep-alive
/// connection), and whose later connections answer every request with `new`. Returns its
/// address and a count of accepted connections.
async fn closing_server<F, Fut>(
    close: tokio::sync::oneshot::Receiver<()>,
    on_close: F,
) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let first = Arc::new(std::sync::Mutex::new(Some((close, on_close))));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let addr = raw_server(move |mut stream, n| {
        count.fetch_add(1, Ordering::SeqCst);
        let first = first.clone();
        async move {
            if n == 0 {
                read_head(&mut stream).await;
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.expect("write");
                let first = first.lock().expect("lock").take();
                if let Some((close, on_close)) = first {
                    let _ = close.await;
                    on_close(stream).await;
                }
                return;
            }
            while read_head(&mut stream).await {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew";
                stream.write_all(ok).await.expect("write");
            }
        }
    })
    .await;
    (addr, connections)
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used() {
    // The first connection answers once, then closes when told to (a server closing an idle
    // keep-alive connection); the request after that goes on a new connection. (When the
    // close crosses the request on the wire, hyper gives the request back unsent if it saw
    // the close first, and the pool sends it on a new connection; otherwise the request
    // fails as refused.)
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, connections) = closing_server(close_rx, move |stream| async move {
        drop(stream);
        let _ = closed_tx.send(());
    })
    .await;
    let connect = Connect::new();
    let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
    assert_eq!(text(res.expect("first response")).await, "ok");
    close_tx.send(()).expect("server waits");
    closed_rx.await.expect("server closed");
    settle().await;
    for _ in 0..3 {
        let res = connect
            .clone()
            .oneshot(get(addr, Version::HTTP_11))
            .await
            .expect("sent on a new connection");
        assert_eq!(text(res).await, "new");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_given_back_by_a_closing_pooled_connection_goes_on_a_new_one() {
    // The keep-alive race, ordered: the server closes the idle connection just as the next
    // request is handed to it, and hyper sees the close before writing the request. The
    // server acknowledges on a side socket first and then closes, so the client's reactor
    // wakes the test (which sends the request) before the connection's task, which then
    // reads the end of the stream and gives the request back.
    let side = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut ack_rx = TcpStream::connect(side.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (ack_tx, _) = side.accept().await.expect("accept");
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, connections) = closing_server(close_rx, move |stream| async move {
        let mut ack = ack_tx;
        ack.write_all(b"!").await.expect("ack");
        drop(stream);
        // Keep the side socket open until the test is done with it.
        let mut end = [0; 1];
        let _ = ack.read(&mut end).await;
    })
    .await;
    let connect = Connect::new();
    let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
    assert_eq!(text(res.expect("first response")).await, "ok");
    settle().await;
    close_tx.send(()).expect("server waits");
    let mut ack = [0; 1];
    ack_rx.read_exact(&mut ack).await.expect("ack");
    let res = connect
        .clone()
        .oneshot(get(addr, Version::HTTP_11))
        .await
        .expect("sent again on a new connection");
    assert_eq!(text(res).await, "new");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        connect.inner.default.resent(),
        1,
        "given back and sent again"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = closed.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let addr = raw_server(move |mut stream, _| {
        count.fetch_add(1, Ordering::SeqCst);
        let seen = seen.clone();
        async move {
            while read_head(&mut stream).await {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.expect("write");
            }
            seen.store(true, Ordering::SeqCst);
        }
    })
    .await;
    let connect = Connect::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build();
    let res = connect.clone().oneshot(get(addr, Version::HTTP_11)).await;
    assert_eq!(text(res.expect("response")).await, "ok");
    assert_eq!(connect.inner.default.endpoints(), 1);

    // Real time passes for the sockets; the clock stays before the timeout.
    let wait_for_close = || async {
        for _ in 0..200 {
            if closed.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
        false
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !wait_for_close().await,
        "kept while younger than the timeout"
    );

    // The sweep closes it, and forgets the endpoint, with no request coming.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(wait_for_close().await, "the server sees the close");
    assert_eq!(connect.inner.default.endpoints(), 0);

    let res = connect.oneshot(get(addr, Version::HTTP_11)).await;
    assert_eq!(text(res.expect("response")).await, "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn twenty_concurrent_first_http2_requests_share_one_connection() {
    let (addr, accepted) = echo_server().await;
    let connect = Connect::new();
    let requests = (0..20).map(|_| connect.clone().oneshot(get(addr, Version::HTTP_2)));
    for res in futures_util::future::join_all(requests).await {
        assert_eq!(
            text(res.expect("response")).await,
            "HTTP/2.0 reviews:9080 /path"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_closed_http2_connection_is_replaced() {
    // The first connection answers one request and closes.
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("h2"))))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                if n == 0 {
                    // Serve until the first request is answered, then go away.
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                }
                let _ = conn.await;
            });
        }
    });
    let connect = Connect::new();
    let res = connect.clone().oneshot(get(addr, Version::HTTP_2)).await;
    assert_eq!(text(res.expect("first response")).await, "h2");
    // Past the server's GOAWAY and close.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = connect.clone().oneshot(get(addr, Version::HTTP_2)).await;
    assert_eq!(text(res.expect("second response")).await, "h2");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_https_uri_is_a_connect_failure() {
    let req = Request::get("https://127.0.0.1:1/")
        .body(body::empty())
        .expect("valid request");
    let err = Connect::new().oneshot(req).await.expect_err("not http");
    assert!(
        cause_ref::<UpstreamConnectFailure>(&*err).is_some(),
        "{err:?}"
    );
}

#[test]
fn connection_settings_follow_istio_fields_and_defaults() {
    use mesh_core::config::networking::destination_rule::{
        ConnectionPoolSettings, HttpSettings, TcpKeepalive as IstioKeepalive, TcpSettings,
    };
    let secs = |s: u64| Some(std::time::Duration::from_secs(s).into());
    let pool = ConnectionPoolSettings {
        tcp: Some(TcpSettings {
            max_connections: Some(1),
            connect_timeout: secs(3),
            tcp_keepalive: Some(IstioKeepalive {
                probes: Some(4),
                time: None,
                interval: secs(5),
            }),
            max_connection_duration: secs(60),
            idle_timeout: secs(30),
        }),
        http: Some(HttpSettings {
            idle_timeout: secs(0),
            max_requests_per_connection: Some(0),
            max_concurrent_streams: Some(-1),
            ..Default::default()
        }),
    };
    let s = super::ConnectionSettings::from_istio(&pool).expect("settings");
    assert_eq!(s.get_connect_timeout(), Some(Duration::from_secs(3)));
    assert_eq!(
        s.get_keepalive(),
        Some(super::TcpKeepalive {
            time: None,
            interval: Some(Duration::from_secs(5)),
            probes: Some(4),
        })
    );
    assert_eq!(
        s.get_max_connection_duration(),
        Some(Duration::from_secs(60))
    );
    // `http.idleTimeout` wins over `tcp.idleTimeout`; zero disables the timeout.
    assert_eq!(s.get_idle_timeout(), Some(None));
    // Zero and negative counts are unset.
    assert_eq!(s.get_max_requests_per_connection(), None);
    assert_eq!(s.get_max_concurrent_streams(), None);
    // Limits on requests alone are not connection settings.
    let limits_only = ConnectionPoolSettings {
        tcp: Some(TcpSettings {
            max_connections: Some(1),
            ..Default::default()
        }),
        http: Some(HttpSettings {
            http1_max_pending_requests: Some(1),
            ..Default::default()
        }),
    };
    assert_eq!(super::ConnectionSettings::from_istio(&limits_only), None);
}

#[tokio::test]
async fn a_switching_protocols_response_hands_the_connection_to_the_caller() {
    // The server switches to a protocol of its own: answers `ping` with `pong` on the raw
    // connection.
    let addr = raw_server(|mut stream, _| async move {
        if !read_head(&mut stream).await {
            return;
        }
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            )
            .await;
        let mut ping = [0; 4];
        if stream.read_exact(&mut ping).await.is_ok() && &ping == b"ping" {
            let _ = stream.write_all(b"pong").await;
        }
    })
    .await;
    let req = Request::get(format!("http://{addr}/ws"))
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(body::empty())
        .expect("valid request");
    let mut res = Connect::new().oneshot(req).await.expect("response");
    assert_eq!(res.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(&mut res))
        .await
        .expect("upgrade in time")
        .expect("the connection is handed over");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.expect("write");
    let mut pong = [0; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut pong))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn a_request_does_not_wait_behind_an_upload_the_server_answered_early() {
    // The server answers each request as soon as its head arrives, without reading bodies,
    // and keeps the connection open.
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = raw_server(move |mut stream, _| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            while read_head(&mut stream).await {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let connect = Connect::new();
    // An upload whose body never ends.
    let never = futures_util::stream::pending::<Result<http_body::Frame<Bytes>, BoxError>>();
    let upload = Request::post(format!("http://{addr}/upload"))
        .body(body::boxed(http_body_util::StreamBody::new(never)))
        .expect("valid request");
    let res = connect.clone().oneshot(upload).await.expect("early answer");
    assert_eq!(text(res).await, "ok");
    // The next request gets an answer (on another connection) instead of waiting for the
    // upload to end.
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        connect.clone().oneshot(get(addr, Version::HTTP_11)),
    )
    .await
    .expect("not stuck behind the upload")
    .expect("response");
    assert_eq!(text(res).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout_not_the_sweep_period() {
    use mesh_core::config::networking::destination_rule::{ConnectionPoolSettings, TcpSettings};
    // idleTimeout 6s; maxConnectionDuration 1s (HTTP/1.1 only) makes the sweep run every
    // second, which must not close an HTTP/2 connection unused for less than 6 s.
    let pool = ConnectionPoolSettings {
        tcp: Some(TcpSettings {
            idle_timeout: Some(Duration::from_secs(6).into()),
            max_connection_duration: Some(Duration::from_secs(1).into()),
            ..Default::default()
        }),
        http: None,
    };
    let settings = super::ConnectionSettings::from_istio(&pool).expect("settings");
    let (addr, accepted) = echo_server().await;
    let connect = Connect::new();
    let send = |connect: &Connect| {
        let mut req = get(addr, Version::HTTP_2);
        req.extensions_mut().insert(settings.clone());
        connect.clone().oneshot(req)
    };
    let res = send(&connect).await.expect("response");
    assert_eq!(text(res).await, "HTTP/2.0 reviews:9080 /path");
    let pool = connect.inner.pool_for(&settings);
    assert_eq!(pool.endpoints(), 1);

    // Four sweeps later, unused for 4 s: kept.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(pool.endpoints(), 1, "kept while unused for less than 6 s");
    let res = send(&connect).await.expect("response");
    assert_eq!(text(res).await, "HTTP/2.0 reviews:9080 /path");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the same connection");

    // Unused for longer than the idle timeout: closed and the endpoint forgotten.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(pool.endpoints(), 0, "closed once idle for 6 s");
    let res = send(&connect).await.expect("response");
    assert_eq!(text(res).await, "HTTP/2.0 reviews:9080 /path");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A request given up while its connection is being opened (a route timeout, a caller that
/// went away) leaves that connection to the pool: the next request uses it, with no second
/// dial.
#[tokio::test]
async fn a_connection_dialed_for_a_request_given_up_joins_the_pool() {
    use super::pool::{Limits, Pool};
    use hyper::client::conn::{http1, http2};
    let (addr, accepted) = echo_server().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let dials = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (gate, dials) = (gate.clone(), dials.clone());
        tower::service_fn(move |_dst: http::Uri| {
            let (gate, dials) = (gate.clone(), dials.clone());
            async move {
                dials.fetch_add(1, Ordering::SeqCst);
                // Held until the test opens the gate: the dial is slow.
                gate.acquire()
                    .await
                    .map_err(std::io::Error::other)?
                    .forget();
                Ok::<_, std::io::Error>(TokioIo::new(TcpStream::connect(addr).await?))
            }
        })
    };
    let pool = Arc::new(Pool::new(
        Box::new(connector.clone()),
        Box::new(connector),
        http1::Builder::new(),
        http2::Builder::new(TokioExecutor::new()),
        Limits::default(),
    ));
    // The first request is given up while its connection is being dialed.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.send(get(addr, Version::HTTP_11), false).await }
    });
    while dials.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    first.abort();
    assert!(first.await.expect_err("given up").is_cancelled());
    assert_eq!(pool.idle(), 0);
    // The dial finishes after all, in the background, and its connection goes idle.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.idle() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the connection joins the pool");
    // The next request is sent on that connection: no second dial (the gate is shut again,
    // so a second dial would hang).
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        pool.send(get(addr, Version::HTTP_11), false),
    )
    .await
    .expect("sent on the pooled connection, not a new dial")
    .expect("response");
    assert_eq!(text(res).await, "HTTP/1.1 reviews:9080 /path");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
