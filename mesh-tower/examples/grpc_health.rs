//! A tonic gRPC client and server talking through the mesh, in one process.
//!
//! ```sh
//! cargo run -p mesh-tower --example grpc_health [CONFIG_DIR]
//! ```
//!
//! The server is tonic's standard health service, served with `Mesh::serve` (which registers
//! it as `health.default.svc.cluster.local`); the client is tonic's generated `HealthClient`
//! over `Mesh::http_client()`, so routing, faults, timeouts and retries from the config
//! directory apply to gRPC exactly as to HTTP. Try, in another terminal:
//!
//! ```sh
//! cargo run -p meshctl -- --config-dir CONFIG_DIR apply -f - <<'YAML'
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: health }
//! spec:
//!   hosts: [health]
//!   http:
//!   - fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 50 } } }
//!     route: [{ destination: { host: health } }]
//! YAML
//! ```

use std::{sync::Arc, time::Duration};

use mesh_core::store::{self, Store};
use mesh_tower::mesh::{Mesh, Workload};
use tokio::net::TcpListener;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::main]
async fn main() -> Result<(), mesh_core::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("mesh-grpc-example")
            .display()
            .to_string()
    });
    println!("config dir: {dir}");
    let store: Arc<dyn Store> = store::open(&dir)?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let server = Mesh::builder(
        store.clone(),
        Workload::new("health-v1", "default").label("app", "health"),
    )
    .start()
    .await?;
    server.ready().await;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("health server on {}", listener.local_addr()?);
    tokio::spawn(async move { server.serve(listener, health, std::future::pending()).await });

    let client_mesh = Mesh::builder(
        store,
        Workload::new("caller-v1", "default").label("app", "caller"),
    )
    .start()
    .await?;
    client_mesh.ready().await;
    let mut client =
        HealthClient::with_origin(client_mesh.http_client(), "http://health:50051".parse()?);
    for i in 0.. {
        match client.check(HealthCheckRequest::default()).await {
            Ok(res) => println!("#{i}: {:?}", res.into_inner().status()),
            Err(status) => println!("#{i}: {:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
