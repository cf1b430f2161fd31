//! A tonic gRPC client and server over the mesh: the same outbound stack and inbound server as
//! HTTP, with Istio's gRPC fault injection.

use std::{sync::Arc, time::Duration};

use mesh_core::{
    config::load_str,
    store::{FileStore, Store},
};
use mesh_tower::mesh::{Mesh, Workload};
use tokio::{net::TcpListener, sync::oneshot};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_and_server_over_the_mesh_with_grpc_faults() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));

    // Server: tonic's health service, served by the mesh (HTTP/2, registered as `health`).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bookinfo.Ratings", tonic_health::ServingStatus::Serving)
        .await;
    let server = Mesh::builder(
        store.clone(),
        Workload::new("health-v1", "default").label("app", "health"),
    )
    .drain_delay(Duration::from_millis(10))
    .start()
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server_metrics = server.metrics().clone();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, health, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });

    // Client: tonic's generated client over the mesh's HTTP client.
    let client_mesh = Mesh::builder(
        store.clone(),
        Workload::new("caller-v1", "default").label("app", "caller"),
    )
    .start()
    .await
    .unwrap();
    client_mesh.ready().await;
    let mut changed = client_mesh.changed();
    while client_mesh
        .snapshot()
        .endpoints("health.default.svc.cluster.local", None)
        .is_empty()
    {
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let uri: http::Uri = "http://health:50051".parse().unwrap();
    let mut client = HealthClient::with_origin(client_mesh.http_client(), uri.clone());
    let res = client
        .check(HealthCheckRequest {
            service: "bookinfo.Ratings".into(),
        })
        .await
        .unwrap();
    assert_eq!(res.into_inner().status(), ServingStatus::Serving);
    let err = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "the server's own status comes through"
    );

    // Istio's gRPC metrics, on both sides: one message each way for the answered call, one
    // request message and no response message for NOT_FOUND, with its gRPC status.
    for (metrics, reporter) in [
        (client_mesh.metrics(), "source"),
        (&server_metrics, "destination"),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = metrics.encode();
            let count = |metric: &str, status: &str| {
                sum_series(
                    &text,
                    metric,
                    &[
                        ("reporter", reporter),
                        ("request_protocol", "grpc"),
                        ("grpc_response_status", status),
                        ("destination_service", "health.default.svc.cluster.local"),
                    ],
                )
            };
            let seen = [
                count("istio_requests_total", "0"),
                count("istio_request_messages_total", "0"),
                count("istio_response_messages_total", "0"),
                count("istio_requests_total", "5"),
                count("istio_request_messages_total", "5"),
                count("istio_response_messages_total", "5"),
            ];
            if seen == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reporter}: {seen:?}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Istio's gRPC abort: every call now fails with UNAVAILABLE, from the client's mesh.
    let loaded = load_str(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: health }
spec:
  hosts: [health]
  http:
  - fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 100 } } }
    route: [{ destination: { host: health } }]
"#,
        None,
    );
    store.apply(loaded.resources).await.unwrap();
    while client_mesh
        .snapshot()
        .resources_of(mesh_core::config::Kind::VirtualService)
        .count()
        == 0
    {
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let mut client = HealthClient::with_origin(client_mesh.http_client(), uri);
    let err = client
        .check(HealthCheckRequest {
            service: "bookinfo.Ratings".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.message(), "fault filter abort");

    stop.send(()).unwrap();
    serving.await.unwrap();
}

/// Sums the samples of `metric` whose labels include every pair of `want`.
fn sum_series(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
