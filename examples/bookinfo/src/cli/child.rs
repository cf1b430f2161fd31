//! What `bookinfo up` and the workload processes it starts agree on.
//!
//! - **Ready line.** Once its mesh is ready and its listeners are bound, a workload started
//!   with `--supervised` prints one JSON line on stdout: `{"ready": {"name": …, "app": …,
//!   "version": …, "address": "127.0.0.1:41234", "admin": "http://127.0.0.1:41235/", …}}`.
//!   The supervisor reads it to fill its table. Without `--supervised` the same facts are
//!   printed for a person.
//! - **Stop signal.** A supervised workload stops gracefully (deregister, drain, exit 0) when
//!   its stdin reaches end of file. The supervisor holds the write end of each child's stdin
//!   pipe and closes it to stop the child; if the supervisor dies, even by `SIGKILL`, the
//!   kernel closes the pipes and every child stops on its own, so no process is left behind.
//!   Children also stop on `SIGTERM` and Ctrl-C (`SIGINT`), like any server.

use std::{future::Future, io::Read, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use mesh_core::store::Store;
use mesh_tower::mesh::Mesh;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::{
    StoreArgs,
    mtls::{self, WorkloadIdentity},
    service::registrable,
};

/// What a ready workload reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// The workload instance's name (its WorkloadEntry's name).
    pub(crate) name: String,
    /// Its `app` label.
    pub(crate) app: String,
    /// Its `version` label (empty for the gateway).
    pub(crate) version: String,
    /// Its namespace.
    pub(crate) namespace: String,
    /// Where it serves, `host:port`.
    pub(crate) address: String,
    /// Its admin listener, as a URL.
    pub(crate) admin: String,
    /// Its process id.
    pub(crate) pid: u32,
    /// Whether it serves mutual TLS (it has a workload certificate).
    #[serde(default)]
    pub(crate) mtls: bool,
}

#[derive(Serialize, Deserialize)]
struct ReadyMessage {
    ready: Ready,
}

impl Ready {
    /// Prints the ready line (supervised) or a sentence (for a person) on stdout.
    pub(crate) fn announce(&self, supervised: bool) {
        use std::io::Write;
        let line = if supervised {
            let msg = ReadyMessage {
                ready: self.clone(),
            };
            serde_json::to_string(&msg).unwrap_or_default()
        } else {
            let scheme = if self.mtls {
                "mutual TLS, as PeerAuthentication says"
            } else {
                "plaintext"
            };
            format!(
                "{} ({} {}) serving on {} ({scheme}; admin {})",
                self.name, self.app, self.version, self.address, self.admin
            )
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (the supervisor went away) is not a reason to stop serving.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Parses a ready line; `None` for any other line.
    pub(crate) fn parse(line: &str) -> Option<Ready> {
        serde_json::from_str::<ReadyMessage>(line.trim())
            .ok()
            .map(|m| m.ready)
    }
}

/// Resolves when the process should stop: Ctrl-C, `SIGTERM`, or (when `watch_stdin`) end of
/// file on stdin. Returns what happened, for the log.
pub(crate) fn shutdown_signal(watch_stdin: bool) -> impl Future<Output = &'static str> {
    // A plain thread, not `tokio::io::stdin`: a blocking read cannot be cancelled, and the
    // runtime would wait for it on shutdown; a detached thread ends with the process.
    let stdin_closed = watch_stdin.then(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("stdin-watch".to_owned())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 256];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch stdin; stop this workload with SIGTERM");
        }
        rx
    });
    async move {
        let stdin = async {
            match stdin_closed {
                // A dropped sender (the thread could not start) never resolves.
                Some(rx) => {
                    if rx.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = stdin => "stdin closed",
            () = ctrl_c() => "interrupt",
            () = terminate() => "SIGTERM",
        }
    }
}

/// Resolves on Ctrl-C (`SIGINT`); never if the handler cannot be installed.
pub(crate) async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on `SIGTERM`; never if the handler cannot be installed (or off Unix).
pub(crate) async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// What a workload process sets up before its mesh: both listeners (bound first, so the
/// addresses it registers and reports are the real ones), the config store and, with a CA,
/// its first certificate.
pub(crate) struct Prepared {
    pub(crate) listener: TcpListener,
    pub(crate) admin_listener: TcpListener,
    /// `listener`'s address as others reach it (loopback for a wildcard bind).
    pub(crate) address: SocketAddr,
    pub(crate) admin_address: SocketAddr,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) identity: Option<WorkloadIdentity>,
}

/// Where and as whom a workload process starts; `kind` (`workload`, `gateway`) names it in
/// messages.
pub(crate) struct Start<'a> {
    pub(crate) kind: &'static str,
    pub(crate) name: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) service_account: &'a str,
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) store: &'a StoreArgs,
    pub(crate) ca: &'a mtls::CaArgs,
}

/// Binds the listeners, opens the store and waits for the first certificate; `None` when
/// `shutdown` fires first (the process then stops without serving).
///
/// # Errors
/// An address that cannot be bound, a store that cannot be opened, no SPIFFE identity for
/// the service account, or a CA that issues no certificate, each named.
pub(crate) async fn prepare(
    start: Start<'_>,
    shutdown: std::pin::Pin<&mut impl Future<Output = &'static str>>,
) -> anyhow::Result<Option<Prepared>> {
    let listener = TcpListener::bind(start.listen)
        .await
        .with_context(|| format!("cannot listen on {}", start.listen))?;
    let admin_listener = TcpListener::bind(start.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", start.admin_listen))?;
    let address = registrable(listener.local_addr()?);
    let admin_address = registrable(admin_listener.local_addr()?);
    let store = start.store.open()?;
    let identity = start
        .ca
        .identity(&mtls::identity(start.namespace, start.service_account)?)?;
    if let Some(identity) = &identity {
        tokio::select! {
            issued = identity.wait_first() => if !issued {
                anyhow::bail!("no {} certificate from {}", start.kind, identity.source);
            },
            why = shutdown => {
                tracing::info!(kind = start.kind, name = %start.name, why,
                    "stopped before the certificate was issued");
                return Ok(None);
            }
        }
    }
    Ok(Some(Prepared {
        listener,
        admin_listener,
        address,
        admin_address,
        store,
        identity,
    }))
}

/// Waits until `mesh` has loaded a good configuration, logging why every few seconds while
/// it has not (a broken file in the config directory at start-up keeps a workload waiting:
/// it never serves with a configuration it could not read).
pub(crate) async fn wait_ready(mesh: &Mesh) {
    let ready = mesh.ready();
    tokio::pin!(ready);
    loop {
        tokio::select! {
            () = &mut ready => return,
            () = tokio::time::sleep(Duration::from_secs(3)) => {
                let status = mesh.status();
                match (&status.last_error, &status.store_error) {
                    (_, Some(e)) => tracing::warn!(store = %status.store, error = %e,
                        "waiting for the config store"),
                    (Some(findings), None) => tracing::warn!(store = %status.store,
                        "waiting for a good configuration; the stored one is refused:\n{findings}"),
                    (None, None) => tracing::warn!(store = %status.store,
                        "waiting for the configuration"),
                }
            }
        }
    }
}

/// Runs a started, ready workload until `shutdown`: serves its admin listener, registers it,
/// announces it (a `ready` line when supervised), then serves `app` through the mesh, which
/// deregisters and drains on shutdown. `what` names it in logs ("workload", "gateway").
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_workload<S, B>(
    what: &'static str,
    mesh: Mesh,
    me: Ready,
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::TcpListener,
    service_account: String,
    app: S,
    shutdown: impl Future<Output = &'static str>,
    supervised: bool,
) -> anyhow::Result<()>
where
    S: tower::Service<http::Request<mesh_tower::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<mesh_core::BoxError>,
    S::Future: Send + 'static,
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<mesh_core::BoxError>,
{
    use anyhow::Context as _;
    let address: std::net::SocketAddr = me
        .address
        .parse()
        .context("the workload address is not host:port")?;
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(super::admin::serve(
        admin_listener,
        super::admin::router(mesh.clone(), me.clone(), service_account),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    mesh.register(address)
        .await
        .with_context(|| format!("cannot register the {what}"))?;
    me.announce(supervised);

    let name = me.name.clone();
    let stop = async move {
        let why = shutdown.await;
        tracing::info!(
            what,
            name,
            why,
            "shutting down: deregistering, then draining"
        );
    };
    let served = mesh.serve(listener, app, stop).await;
    let _ = admin_stop.send(());
    let _ = admin_task.await;
    let summary = served.map_err(|e| anyhow::anyhow!("serving failed: {e}"))?;
    tracing::info!(
        what,
        name = %me.name,
        connections = summary.connections,
        drained = summary.drained,
        "stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let r = Ready {
            name: "reviews-v2-3fa2c".into(),
            app: "reviews".into(),
            version: "v2".into(),
            namespace: "default".into(),
            address: "127.0.0.1:41234".into(),
            admin: "http://127.0.0.1:41235/".into(),
            pid: 42,
            mtls: true,
        };
        let line = serde_json::to_string(&ReadyMessage { ready: r.clone() }).unwrap();
        assert!(line.starts_with(r#"{"ready":{"#), "{line}");
        assert_eq!(Ready::parse(&line), Some(r));
        assert_eq!(Ready::parse("2024-01-01 INFO registered"), None);
        assert_eq!(Ready::parse(""), None);
    }
}
