//! A small admin listener per workload, on its own port (like Envoy's `:15000`, which a
//! later issue grows into the full admin endpoint).
//!
//! | path | answer |
//! |---|---|
//! | `/` | the workload (name, app, version, address, service account, pid) and its config status |
//! | `/config` | the workload's config status: generation, store revision, `lastError` findings |
//! | `/ready` | `200 ready` (the listener only starts once the mesh is ready) |
//! | `/health` | `200 {"status":"ok"}` |

use std::future::Future;

use axum::{Json, Router, routing::get};
use mesh_tower::mesh::Mesh;
use serde_json::json;
use tokio::net::TcpListener;

use super::child::Ready;

/// The admin router of the workload described by `me`.
pub(crate) fn router(mesh: Mesh, me: Ready, service_account: String) -> Router {
    let status = mesh.clone();
    Router::new()
        .route(
            "/",
            get(move || {
                let mesh = mesh.clone();
                let me = me.clone();
                let sa = service_account.clone();
                async move {
                    Json(json!({
                        "name": me.name,
                        "app": me.app,
                        "version": me.version,
                        "namespace": me.namespace,
                        "address": me.address,
                        "serviceAccount": sa,
                        "pid": me.pid,
                        "config": mesh.status(),
                    }))
                }
            }),
        )
        .route(
            "/config",
            get(move || {
                let mesh = status.clone();
                async move { Json(mesh.status()) }
            }),
        )
        .route("/ready", get(|| async { "ready\n" }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
}

/// Serves `router` on `listener` until `shutdown` resolves; errors are logged.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "admin listener failed");
    }
}
