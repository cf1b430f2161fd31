//! Inbound serving on real loopback sockets: HTTP/1.1 and HTTP/2, graceful shutdown.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use mesh_tower::{
    body::{self, Body},
    server::{PeerAddr, ShutdownOptions, serve},
};
use tokio::{net::TcpListener, sync::oneshot};

async fn app(req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string());
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text = format!(
        "{:?} {} {}",
        req.version(),
        req.uri().path(),
        peer.unwrap_or_default()
    );
    Ok(http::Response::new(body::full(text)))
}

async fn start() -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<mesh_tower::server::ServeSummary>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(
            listener,
            tower::service_fn(app),
            async {
                let _ = rx.await;
            },
            ShutdownOptions {
                deadline: Duration::from_secs(5),
            },
        )
        .await
        .unwrap()
    });
    (format!("http://{addr}"), tx, task)
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    uri: &str,
) -> Result<String, hyper_util::client::legacy::Error> {
    let res = client.get(uri.parse().unwrap()).await?;
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn serves_http1_and_http2_with_the_peer_address() {
    let (base, stop, task) = start().await;
    let h1 = Client::builder(TokioExecutor::new()).build_http();
    assert_eq!(
        get(&h1, &format!("{base}/a")).await.unwrap(),
        "HTTP/1.1 /a 127.0.0.1"
    );
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    assert_eq!(
        get(&h2, &format!("{base}/b")).await.unwrap(),
        "HTTP/2.0 /b 127.0.0.1"
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert!(summary.drained);
    assert_eq!(summary.connections, 2);
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_refuses_new_connections() {
    let (base, stop, task) = start().await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let in_flight = {
        let client = client.clone();
        let uri = format!("{base}/slow");
        tokio::spawn(async move { get(&client, &uri).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.send(()).unwrap();
    // The slow request started before shutdown completes normally.
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        "HTTP/1.1 /slow 127.0.0.1"
    );
    let summary = task.await.unwrap();
    assert!(summary.drained);
    // The listener is closed: a new connection is refused.
    let fresh = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let err = get(&fresh, &format!("{base}/a")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

/// An application error is answered `500 internal error` (hyper alone would close the
/// connection), over HTTP/1.1 and HTTP/2, and the connection serves the next request.
#[tokio::test]
async fn an_application_error_is_a_500_and_the_connection_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failing = tower::service_fn(|req: http::Request<Body>| async move {
        if req.uri().path() == "/fail" {
            Err::<http::Response<Body>, _>(std::io::Error::other("the handler failed"))
        } else {
            Ok(http::Response::new(body::full("ok")))
        }
    });
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        failing,
        async {
            let _ = rx.await;
        },
        ShutdownOptions::default(),
    ));
    for http2 in [false, true] {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<Full<Bytes>>();
        let res = client
            .get(format!("http://{addr}/fail").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let text = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "internal error");
        let res = client
            .get(format!("http://{addr}/next").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::OK);
    }
    tx.send(()).unwrap();
    let summary = server.await.unwrap().unwrap();
    assert_eq!(
        summary.connections, 2,
        "one connection per protocol, reused"
    );
}
