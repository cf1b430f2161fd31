//! The admin listener of each workload, on its own port (like Envoy's `:15000`): the mesh's
//! admin endpoint ([`mesh_tower::admin`]) plus what `bookinfo up` reads about the process.
//!
//! | path | answer |
//! |---|---|
//! | `/` | the workload (name, app, version, address, service account, pid) and its config status |
//! | `/config` | the workload's config status: generation, store revision, `lastError` findings |
//! | `/health` | `200 {"status":"ok"}` |
//! | `/metrics`, `/ready`, `/config_dump`, `/clusters`, `/certs` | the mesh's admin endpoint |

use std::future::Future;

use axum::{Json, Router, routing::get};
use mesh_tower::mesh::Mesh;
use serde_json::json;
use tokio::net::TcpListener;

use super::child::Ready;

/// The admin router of the workload described by `me`.
pub(crate) fn router(mesh: Mesh, me: Ready, service_account: String) -> Router {
    let status = mesh.clone();
    let admin = mesh.admin();
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
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback_service(admin)
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
