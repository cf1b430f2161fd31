//! The server process of a path: bare hyper, hyper + rustls, or the mesh (plaintext or
//! STRICT mutual TLS) in front of the same application, answering every request with 1 KB.

use std::{convert::Infallible, io::Write, path::Path, path::PathBuf, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::store::{FileStore, Store};
use mesh_tower::{
    body::{self, Body},
    mesh::{Mesh, Workload},
    tls::TlsIdentity,
};
use tokio::net::TcpListener;

use super::{BODY_LEN, MESH_HOST, pki};

static BODY: [u8; BODY_LEN] = [b'x'; BODY_LEN];

/// The server process's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServerKind {
    /// hyper-util's auto server (HTTP/1.1 and HTTP/2 prior knowledge).
    Bare,
    /// The same over tokio-rustls, client certificates required.
    BareTls,
    /// `Mesh::serve` (inbound stack with authorization), plaintext.
    Mesh,
    /// `Mesh::serve` with the workload's certificate, STRICT PeerAuthentication.
    MeshMtls,
}

impl ServerKind {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::BareTls => "bare-tls",
            Self::Mesh => "mesh",
            Self::MeshMtls => "mesh-mtls",
        }
    }
}

/// `compare serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[arg(long)]
    kind: ServerKind,
    /// The mesh's file store.
    #[arg(long)]
    store: PathBuf,
    /// The run's certificates.
    #[arg(long)]
    pki: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The mesh configuration of the mesh paths: a VirtualService with a timeout and retries, a
/// DestinationRule with a connection pool (so the circuit breaker is on the path), an
/// AuthorizationPolicy allowing the caller (by principal over mTLS, by address in
/// plaintext where there is no peer identity) and, for mTLS, STRICT PeerAuthentication.
pub(crate) fn mesh_config_yaml(mtls: bool) -> String {
    let source = if mtls {
        "principals: [\"cluster.local/ns/default/sa/caller\"]"
    } else {
        "ipBlocks: [\"127.0.0.1/32\"]"
    };
    let mut y = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {MESH_HOST}, namespace: default }}
spec:
  hosts: [{MESH_HOST}]
  http:
  - name: default
    timeout: 10s
    retries: {{ attempts: 2, perTryTimeout: 5s, retryOn: \"5xx,reset,connect-failure\" }}
    route:
    - destination: {{ host: {MESH_HOST} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: {MESH_HOST}, namespace: default }}
spec:
  host: {MESH_HOST}
  trafficPolicy:
    loadBalancer: {{ simple: LEAST_REQUEST }}
    connectionPool:
      tcp: {{ maxConnections: 10000 }}
      http: {{ http1MaxPendingRequests: 100000, http2MaxRequests: 100000 }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: allow-caller, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: {MESH_HOST} }} }}
  action: ALLOW
  rules:
  - from: [{{ source: {{ {source} }} }}]
    to: [{{ operation: {{ methods: [GET] }} }}]
"
    );
    if mtls {
        y.push_str(
            "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
",
        );
    }
    y
}

/// Writes the mesh configuration into the file store at `store`.
pub(crate) fn write_mesh_config(store: &Path, mtls: bool) -> anyhow::Result<()> {
    let loaded = mesh_core::config::load_str(&mesh_config_yaml(mtls), None);
    if let Some(f) = loaded.findings.first() {
        anyhow::bail!("the bench's mesh configuration does not load: {f:?}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = FileStore::new(store);
    rt.block_on(store.apply(loaded.resources))
        .with_context(|| {
            format!(
                "writing the mesh configuration to {}",
                store.dir().display()
            )
        })?;
    Ok(())
}

/// The mesh identity (`bench` or `caller`) from the run's certificates.
pub(crate) fn mesh_identity(
    dir: &Path,
    name: &str,
) -> anyhow::Result<mesh_tower::tls::IdentityWatch> {
    let (chain, key, ca) = pki::load(dir, name)?;
    let tls = TlsIdentity::from_pem(chain, key, ca)
        .with_context(|| format!("the {name} certificate in {}", dir.display()))?;
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(tls)));
    // The identity never changes during a run; keep the sender so the watch stays open.
    std::mem::forget(tx);
    Ok(rx)
}

pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
}

/// `compare serve`: prints `listening ADDR`, then serves until killed.
pub(crate) fn main(args: ServeArgs) -> anyhow::Result<()> {
    runtime(args.threads)?.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let pki_dir = || args.pki.as_deref().context("--pki is required for TLS");
    match args.kind {
        ServerKind::Bare => {
            announce(addr)?;
            serve_bare(listener, None).await
        }
        ServerKind::BareTls => {
            let tls = tokio_rustls::TlsAcceptor::from(pki::bare_server(pki_dir()?)?);
            announce(addr)?;
            serve_bare(listener, Some(tls)).await
        }
        ServerKind::Mesh | ServerKind::MeshMtls => {
            let store: Arc<dyn Store> = Arc::new(FileStore::new(&args.store));
            let workload = Workload::new(format!("{MESH_HOST}-v1"), "default")
                .label("app", MESH_HOST)
                .service_account(MESH_HOST);
            let mut builder = Mesh::builder(store, workload);
            if args.kind == ServerKind::MeshMtls {
                builder = builder.identity(mesh_identity(pki_dir()?, MESH_HOST)?);
            }
            let mesh = builder
                .start()
                .await
                .context("starting the server's mesh")?;
            mesh.ready().await;
            announce(addr)?;
            mesh.serve(listener, tower::service_fn(app), std::future::pending())
                .await
                .map_err(|e| anyhow::anyhow!("the mesh server failed: {e}"))?;
            Ok(())
        }
    }
}

fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    Ok(())
}

async fn app(_req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    Ok(http::Response::new(body::full(Bytes::from_static(&BODY))))
}

/// The bare servers' application: the same as the mesh's [`app`], an `async fn` that owns
/// its request until it runs, as any handler that reads its request does. (A closure that
/// drops the request before returning its future would let hyper reuse its read buffer
/// in place where every real handler makes it allocate a new one: a saving no application
/// gets.)
async fn bare_app(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<Bytes>>, Infallible> {
    Ok(http::Response::new(http_body_util::Full::new(
        Bytes::from_static(&BODY),
    )))
}

/// A bare hyper server as an application would write it (hyper-util's auto builder, one
/// task per connection), optionally behind tokio-rustls.
async fn serve_bare(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("compare serve: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(bare_app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => builder.serve_connection(TokioIo::new(stream), svc).await,
                    Err(e) => {
                        eprintln!("compare serve: TLS handshake: {e}");
                        return;
                    }
                },
            };
        });
    }
}
