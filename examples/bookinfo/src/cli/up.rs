//! `bookinfo up`: every Bookinfo workload and the ingress gateway, as supervised child
//! processes of this same binary.
//!
//! # What it does
//! 1. Prints and prepares the config directory (`$TMPDIR/bookinfo-mesh` unless `--config-dir`
//!    says otherwise) and seeds it, through the store's `apply`, with the resources of Istio's
//!    `destination-rule-all.yaml` and `bookinfo-gateway.yaml` it lacks, and, with mutual TLS
//!    on (the default, `--mtls on`), Istio's `peer-authentication-strict.yaml` (mesh-wide
//!    STRICT, in `istio-system`).
//! 2. With mutual TLS on: creates the CA files in `--ca-dir` (default
//!    `<config dir>/.mesh-ca`) or reuses them, and serves the CA (`mesh_ca::server::CaServer`,
//!    TLS) on a free loopback port. Every child is told the CA's address and root
//!    (`--ca-address`, `--ca-root`) and gets a short-lived bootstrap token for its own SPIFFE
//!    identity in its environment, minted anew at each (re)start; see [`super::mtls`].
//! 3. Removes stale registrations: WorkloadEntries registered by a workload on this machine
//!    whose port refuses connections (a workload killed before it could deregister).
//! 4. Starts productpage v1, details v1, reviews v1/v2/v3, ratings v1 (`bookinfo service …`),
//!    with `--with httpbin` also httpbin v1 (for Istio's circuit-breaking task), and the
//!    gateway (`bookinfo gateway …`), each with `--supervised`.
//! 5. Reads each child's ready line (see [`super::child`]), prints the table of
//!    workloads once all are ready, and serves it as JSON at
//!    `http://127.0.0.1:<admin-port>/workloads`, with the status of the configuration; and
//!    the live service graph at `/graph` ([`bookinfo::graph`]), from the metrics each child
//!    serves at `/metrics` on its admin port, scraped every 5 s.
//! 6. Restarts a child that exits when it was not asked to, with exponential back-off (250 ms
//!    doubling to 10 s, reset once a child has run for 10 s); its registration is removed
//!    while it is down. A restarted child keeps its name (as a pod does).
//! 7. Watches the configuration like a workload does and logs a warning when a change is
//!    refused (the workloads keep the last good configuration).
//! 8. On Ctrl-C or `SIGTERM`: closes every child's stdin (children stop gracefully on end of
//!    file: deregister, drain, exit), waits up to 10 s, then kills what is left; a second
//!    Ctrl-C kills at once. Children run in their own process group, so a terminal's Ctrl-C
//!    reaches the supervisor only and the stop is orderly; and if the supervisor itself is
//!    killed, the kernel closes the pipes and the children stop on their own.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{Json, Router, routing::get};
use bookinfo::{
    Service,
    graph::{GraphCollector, Target},
};
use mesh_core::{
    config::{Kind, Resource, ResourceKey, Spec},
    snapshot::{MeshSettings, Snapshot},
    store::{self, ConfigStatus, ConfigWatcher, Store},
    validate::{Finding, Findings, Severity, codes},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::Command,
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{
    GoDuration, child, default_config_dir, gateway,
    mtls::{self, MtlsMode},
    random_suffix, seed,
    service::AppTimeouts,
};

/// `println!` that ignores a closed stdout (`bookinfo up | head` must not panic the
/// supervisor and leave its children to be killed).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// First delay before restarting a child that exited.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting restarts after the initial delay again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long children get to stop after their stdin is closed before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for every child to be ready before printing the table anyway.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// The namespace of the Bookinfo workloads.
const NAMESPACE: &str = "default";
/// The namespace of the gateway (Istio's).
const GATEWAY_NAMESPACE: &str = "istio-system";
/// How often the service graph scrapes the workloads' metrics (and its page reloads).
const GRAPH_INTERVAL: Duration = Duration::from_secs(5);

/// Flags of `bookinfo up`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The config directory: the mesh's file store, watched by every workload; apply Istio
    /// YAML to it with `meshctl --config-dir DIR apply -f FILE` [default: $TMPDIR/bookinfo-mesh].
    #[arg(long, env = "MESH_CONFIG_DIR", value_name = "DIR")]
    pub(crate) config_dir: Option<PathBuf>,

    /// The store, as a URL: `file:DIR` or `etcd://HOST:PORT[,HOST:PORT…][?lease_ttl=10s]`
    /// (then the workloads' registrations live on etcd leases). Every workload is given it.
    /// Overrides the config dir as the store; the CA files stay in the config dir.
    #[arg(long, env = "MESH_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,

    /// The ingress gateway's port, on 127.0.0.1.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub(crate) gateway_port: u16,

    /// The supervisor's admin port, on 127.0.0.1 (`/workloads`, `/graph`).
    #[arg(long, default_value_t = 15000, value_name = "PORT")]
    pub(crate) admin_port: u16,

    /// Ports of the workloads: productpage N, details N+1, reviews v1, v2, v3 N+2..N+4,
    /// ratings N+5, httpbin N+6 (with --with httpbin); 0 picks free ports (the workloads find
    /// each other through the store, so their ports do not matter).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) base_port: u16,

    /// Also run these workloads, not part of Bookinfo: `httpbin` (v1, `http://httpbin:8000`
    /// in the mesh), the target of Istio's circuit-breaking task. Repeatable.
    #[arg(long = "with", value_enum, value_name = "WORKLOAD")]
    pub(crate) with: Vec<Extra>,

    #[command(flatten)]
    pub(crate) timeouts: AppTimeouts,

    /// How long each workload keeps serving after deregistering when it stops.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub(crate) drain_delay: GoDuration,

    /// Mutual TLS between the workloads: `on` seeds Istio's mesh-wide STRICT
    /// PeerAuthentication and gives every workload a certificate from the CA in --ca-dir;
    /// `off` is plaintext (no CA, no PeerAuthentication seeded).
    #[arg(long, value_enum, default_value_t = MtlsMode::On, value_name = "on|off")]
    pub(crate) mtls: MtlsMode,

    /// The CA directory, in Istio's cacerts layout (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`; the root's key in `root/`): created if missing,
    /// reused otherwise [default: <config dir>/.mesh-ca].
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_dir: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) telemetry: super::telemetry::TelemetryArgs,
}

/// Workloads `up` runs only when asked with `--with`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Extra {
    /// httpbin v1, for Istio's circuit-breaking task (`meshctl load` against it).
    Httpbin,
}

/// The CA directory `up` uses when `--ca-dir` is not given: `.mesh-ca` in the config dir
/// (hidden, so the file store does not read it).
pub(crate) fn default_ca_dir(config_dir: &std::path::Path) -> PathBuf {
    config_dir.join(".mesh-ca")
}

/// The CA `up` serves to its children.
#[derive(Clone, Debug)]
struct CaContext {
    ca: Arc<mesh_ca::CertificateAuthority>,
    address: SocketAddr,
    root: PathBuf,
}

/// Where a child stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    /// Started, not ready yet.
    Starting,
    /// Ready line received: registered and serving.
    Ready,
    /// Exited unexpectedly; waiting to restart.
    Restarting,
    /// Asked to stop.
    Stopping,
    /// Stopped.
    Stopped,
}

/// One row of the table of workloads.
#[derive(Clone, Debug, Serialize)]
struct Row {
    name: String,
    app: String,
    version: String,
    namespace: String,
    /// `host:port`, once the child reported it.
    address: Option<String>,
    /// The child's admin listener, as a URL.
    admin: Option<String>,
    pid: Option<u32>,
    state: State,
    restarts: u32,
}

/// How a child is started.
#[derive(Clone, Debug)]
struct ChildSpec {
    name: String,
    namespace: String,
    /// Its service account: its bootstrap token is for this identity.
    service_account: String,
    args: Vec<String>,
}

/// What the supervisor tells its children's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    Graceful,
    Force,
}

type Rows = Arc<Mutex<Vec<Row>>>;

fn lock(rows: &Rows) -> std::sync::MutexGuard<'_, Vec<Row>> {
    rows.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs Bookinfo until Ctrl-C or `SIGTERM`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.config_dir.clone().unwrap_or_else(default_config_dir);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    say!("config dir: {}", dir.display());
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the config dir {}", dir.display()))?;
    let store_url = store_url(&args, &dir);
    if args.store.is_some() {
        say!("store: {store_url}");
    }
    let store = store::open(&store_url)
        .with_context(|| format!("cannot open the config store {store_url}"))?;
    let strict = args.mtls == MtlsMode::On;
    match seed::seed(&*store, strict).await {
        Ok(lines) => {
            for l in lines {
                say!("seeded {l}");
            }
        }
        Err(e) => tracing::warn!("could not seed the config dir: {e:#}"),
    }

    // Ports: fail now, with a clear message, rather than in a child that restarts forever.
    let gateway_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.gateway_port));
    std::net::TcpListener::bind(gateway_addr).with_context(|| {
        format!("the gateway port {gateway_addr} is not free (choose another with --gateway-port)")
    })?;
    let admin_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.admin_port))
        .await
        .with_context(|| {
            format!(
                "the admin port 127.0.0.1:{} is not free (choose another with --admin-port)",
                args.admin_port
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;

    let (ca_stop, ca_stopped) = tokio::sync::oneshot::channel::<()>();
    let (ca, ca_task) = if strict {
        let (ca, task) = start_ca(&args, &dir, ca_stopped).await?;
        (Some(ca), Some(task))
    } else {
        if let Some(ca_dir) = &args.ca_dir {
            tracing::warn!(
                "--mtls off: the CA directory {} is not used",
                ca_dir.display()
            );
        }
        say!("mTLS: off (plaintext; --mtls on for STRICT mutual TLS)");
        (None, None)
    };
    let specs = specs(&args, &dir, gateway_addr, ca.as_ref())?;
    let with_httpbin = args.with.contains(&Extra::Httpbin);

    let watcher = ConfigWatcher::start(store.clone(), compile)
        .await
        .context("cannot watch the config dir")?;
    tokio::spawn(log_config_changes(watcher.clone()));
    prune_stale(&*store).await;

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let rows: Rows = Arc::new(Mutex::new(specs.iter().map(Row::from).collect()));
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<usize>();
    let mut slots = JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        slots.spawn(supervise(Slot {
            index: i,
            spec,
            exe: exe.clone(),
            rows: rows.clone(),
            store: store.clone(),
            stop: stop_rx.clone(),
            ready: ready_tx.clone(),
            ca: ca.clone(),
        }));
    }
    drop(ready_tx);

    let graph = GraphCollector::new(
        {
            let rows = rows.clone();
            move || graph_targets(&lock(&rows))
        },
        GRAPH_INTERVAL,
    );
    let graph_task = graph.spawn();

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(super::admin::serve(
        admin_listener,
        admin_router(
            rows.clone(),
            watcher.clone(),
            dir.clone(),
            gateway_addr,
            ca.clone(),
        )
        .merge(graph.router()),
        async move {
            let _ = admin_stopped.await;
        },
    ));

    // Until told to stop: the table once every child is ready, then a line per restart.
    let signal = async {
        tokio::select! {
            () = child::ctrl_c() => "interrupt",
            () = child::terminate() => "SIGTERM",
        }
    };
    tokio::pin!(signal);
    let patience = tokio::time::sleep(READY_PATIENCE);
    tokio::pin!(patience);
    let mut announced = false;
    let why = loop {
        tokio::select! {
            why = &mut signal => break why,
            () = &mut patience, if !announced => {
                announced = true;
                tracing::warn!("not every workload is ready after {READY_PATIENCE:?}:");
                say!("{}", table(&lock(&rows)));
            }
            ready = ready_rx.recv() => {
                let Some(i) = ready else { continue };
                let rows = lock(&rows);
                if !announced && rows.iter().all(|r| r.state == State::Ready) {
                    announced = true;
                    say!("{}", table(&rows));
                    say!("Bookinfo: http://{gateway_addr}/productpage");
                    say!("workloads: http://{admin_addr}/workloads");
                    say!("service graph: http://{admin_addr}/graph");
                    say!(
                        "apply Istio's tasks: cargo run -p meshctl -- --store {store_url} apply -f examples/bookinfo/istio/virtual-service-all-v1.yaml",
                    );
                    if with_httpbin {
                        let ca = ca.as_ref().map_or_else(String::new, |ca| {
                            format!(" --ca-dir {}", ca.root.parent().unwrap_or(dir.as_path()).display())
                        });
                        say!(
                            "load httpbin: cargo run -p meshctl -- --store {store_url} load{ca} -c 3 -n 30 http://httpbin:8000/get",
                        );
                    }
                } else if announced && let Some(r) = rows.get(i) {
                    say!(
                        "{} is back (restart {}): pid {}, {}",
                        r.name,
                        r.restarts,
                        r.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                        r.address.as_deref().unwrap_or("-")
                    );
                }
            }
        }
    };

    say!("{why}: stopping {} workloads", lock(&rows).len());
    let _ = stop_tx.send(Stop::Graceful);
    let again = async {
        tokio::select! {
            () = child::ctrl_c() => {}
            () = child::terminate() => {}
        }
    };
    tokio::pin!(again);
    let mut forced = false;
    loop {
        tokio::select! {
            joined = slots.join_next() => {
                match joined {
                    None => break,
                    Some(Err(e)) => tracing::warn!(error = %e, "a supervisor task failed"),
                    Some(Ok(())) => {}
                }
            }
            () = &mut again, if !forced => {
                forced = true;
                say!("stopping now: killing the workloads left");
                let _ = stop_tx.send(Stop::Force);
            }
        }
    }
    graph_task.abort();
    let _ = admin_stop.send(());
    let _ = admin.await;
    let _ = ca_stop.send(());
    if let Some(task) = ca_task {
        let _ = task.await;
    }
    say!("stopped");
    Ok(())
}

/// Creates or reuses the CA files and serves the CA on a free loopback port until `stop`.
async fn start_ca(
    args: &Args,
    config_dir: &std::path::Path,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<(CaContext, tokio::task::JoinHandle<()>)> {
    let ca_dir = args
        .ca_dir
        .clone()
        .unwrap_or_else(|| default_ca_dir(config_dir));
    let ca_dir = std::path::absolute(&ca_dir).unwrap_or(ca_dir);
    let files = tokio::task::spawn_blocking({
        let ca_dir = ca_dir.clone();
        move || mtls::ensure_ca(&ca_dir)
    })
    .await
    .context("the CA set-up task failed")??;
    if files.created.is_empty() {
        say!("CA dir: {} (reused)", ca_dir.display());
    } else {
        say!(
            "CA dir: {} (created: {})",
            ca_dir.display(),
            files
                .created
                .iter()
                .filter_map(|p| p.strip_prefix(&ca_dir).ok())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let server = mesh_ca::server::CaServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        files.ca.clone(),
        mesh_ca::server::ServerOptions::default(),
    )
    .await
    .context("cannot start the CA")?;
    let address = server.local_addr();
    let root = ca_dir.join(mesh_ca::files::ROOT_CERT);
    say!(
        "mTLS: STRICT (peer-authentication-strict.yaml in {}); CA on {address} ({})",
        seed::ROOT_NAMESPACE,
        server.server_identity()
    );
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = stop.await;
        };
        if let Err(e) = server.serve_with_shutdown(stopped).await {
            tracing::warn!(error = %e, "the CA stopped; workloads cannot renew certificates");
        }
    });
    Ok((
        CaContext {
            ca: files.ca,
            address,
            root,
        },
        task,
    ))
}

/// The store every process uses: `--store`, or the config dir as a file store.
fn store_url(args: &Args, dir: &std::path::Path) -> String {
    args.store
        .clone()
        .unwrap_or_else(|| format!("file:{}", dir.display()))
}

/// The children to run, in table order; with `ca`, each is told where the CA is.
fn specs(
    args: &Args,
    dir: &std::path::Path,
    gateway: SocketAddr,
    ca: Option<&CaContext>,
) -> anyhow::Result<Vec<ChildSpec>> {
    let ca_args: Vec<String> = ca.map_or_else(Vec::new, |ca| {
        vec![
            "--ca-address".to_owned(),
            ca.address.to_string(),
            "--ca-root".to_owned(),
            ca.root.display().to_string(),
        ]
    });
    let mut workloads = vec![
        (Service::Productpage, "v1"),
        (Service::Details, "v1"),
        (Service::Reviews, "v1"),
        (Service::Reviews, "v2"),
        (Service::Reviews, "v3"),
        (Service::Ratings, "v1"),
    ];
    if args.with.contains(&Extra::Httpbin) {
        workloads.push((Service::Httpbin, "v1"));
    }
    let count = workloads.len();
    let store = store_url(args, dir);
    let mut out = Vec::new();
    for (i, (service, version)) in workloads.into_iter().enumerate() {
        let app = service.name();
        let port = match args.base_port {
            0 => 0,
            base => u16::try_from(i)
                .ok()
                .and_then(|i| base.checked_add(i))
                .with_context(|| format!("--base-port {base} leaves no room for {count} ports"))?,
        };
        let name = format!("{app}-{version}-{}", random_suffix());
        let mut a: Vec<String> = [
            "service",
            app,
            "--version",
            version,
            "--name",
            &name,
            "--namespace",
            NAMESPACE,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &store,
            "--drain-delay",
            &args.drain_delay.to_string(),
            "--supervised",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(args.timeouts.to_args());
        a.extend(args.telemetry.to_args());
        a.extend(ca_args.iter().cloned());
        out.push(ChildSpec {
            name,
            namespace: NAMESPACE.to_owned(),
            service_account: service.service_account(),
            args: a,
        });
    }
    let name = format!("{}-{}", gateway::APP, random_suffix());
    let mut a: Vec<String> = [
        "gateway",
        "--name",
        &name,
        "--namespace",
        GATEWAY_NAMESPACE,
        "--listen",
        &gateway.to_string(),
        "--store",
        &store,
        "--drain-delay",
        &args.drain_delay.to_string(),
        "--supervised",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    a.extend(args.telemetry.to_args());
    a.extend(ca_args);
    out.push(ChildSpec {
        name,
        namespace: GATEWAY_NAMESPACE.to_owned(),
        service_account: gateway::SERVICE_ACCOUNT.to_owned(),
        args: a,
    });
    Ok(out)
}

impl From<&ChildSpec> for Row {
    fn from(spec: &ChildSpec) -> Self {
        // `service <app> --version <v> …` or `gateway …`.
        let (app, version) = match spec.args.first().map(String::as_str) {
            Some("service") => (
                spec.args.get(1).cloned().unwrap_or_default(),
                spec.args.get(3).cloned().unwrap_or_default(),
            ),
            _ => (gateway::APP.to_owned(), String::new()),
        };
        Row {
            name: spec.name.clone(),
            app,
            version,
            namespace: spec.namespace.clone(),
            address: None,
            admin: None,
            pid: None,
            state: State::Starting,
            restarts: 0,
        }
    }
}

/// What the service graph scrapes: every child that has reported its admin listener, at
/// `/metrics` there, drawn as the workload Istio's labels name (`reviews-v2`: the app and
/// version, as Istio's Deployments are named; the gateway `istio-ingressgateway`). A child
/// that is down keeps its last address, so the graph shows it failing rather than gone.
fn graph_targets(rows: &[Row]) -> Vec<Target> {
    rows.iter()
        .filter(|r| r.state != State::Stopped)
        .filter_map(|r| {
            let admin = r.admin.as_deref()?;
            Some(Target {
                workload: if r.version.is_empty() {
                    r.app.clone()
                } else {
                    format!("{}-{}", r.app, r.version)
                },
                instance: r.name.clone(),
                url: format!("{}/metrics", admin.trim_end_matches('/')),
            })
        })
        .collect()
}

/// The table of workloads, for a person.
fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<28} {:<22} {:<8} {:<22} {:<8} {}\n",
        "NAME", "APP", "VERSION", "ADDRESS", "PID", "ADMIN"
    );
    for r in rows {
        let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
        out.push_str(&format!(
            "{:<28} {:<22} {:<8} {:<22} {:<8} {}\n",
            r.name,
            r.app,
            dash(Some(&r.version)),
            dash(r.address.as_deref()),
            r.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            dash(r.admin.as_deref()),
        ));
    }
    out.pop();
    out
}

/// Compiles the configuration exactly as every workload's mesh does, so the supervisor's
/// verdict on a change is theirs.
fn compile(rs: &[Resource]) -> Result<Snapshot, Findings> {
    Snapshot::build_with(rs, MeshSettings::default()).map_err(|e| {
        let mut f = Finding::new(
            codes::SCHEMA_VALIDATION_ERROR,
            Severity::Error,
            e.message.clone(),
        );
        f.resource = Some(e.resource);
        Findings(vec![f])
    })
}

/// Logs refused configuration changes (the workloads keep the last good configuration) and
/// recoveries.
async fn log_config_changes(watcher: ConfigWatcher<Snapshot>) {
    let mut rx = watcher.status_changes();
    let (mut rejected, mut broken) = {
        let s = rx.borrow_and_update();
        if let Some(findings) = &s.last_error {
            tracing::warn!(
                "the stored configuration is refused; workloads wait for a good one:\n{findings}"
            );
        }
        (s.rejected_count, s.last_error.is_some())
    };
    while rx.changed().await.is_ok() {
        let s = rx.borrow_and_update().clone();
        if s.rejected_count > rejected
            && let Some(findings) = &s.last_error
        {
            tracing::warn!(
                "config change refused, routing unchanged (the workloads keep the last good config; see /workloads):\n{findings}"
            );
        } else if broken && s.last_error.is_none() {
            tracing::info!(
                generation = s.generation,
                "configuration accepted again: {} resources",
                s.resources
            );
        }
        if let Some(e) = &s.store_error {
            tracing::warn!(error = %e, "cannot read the config dir");
        }
        rejected = s.rejected_count;
        broken = s.last_error.is_some();
    }
}

/// Removes WorkloadEntries registered by workloads on this machine (loopback address) whose
/// port refuses connections: workloads killed before they could deregister.
async fn prune_stale(store: &dyn Store) {
    let listing = match store.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the registrations");
            return;
        }
    };
    for r in listing.resources {
        let Spec::WorkloadEntry(we) = &r.spec else {
            continue;
        };
        if r.metadata
            .labels
            .get("mesh.io/registered")
            .map(String::as_str)
            != Some("true")
        {
            continue;
        }
        let Ok(ip) = we.address.parse::<IpAddr>() else {
            continue;
        };
        let Some(port) = we
            .ports
            .values()
            .next()
            .and_then(|p| u16::try_from(*p).ok())
        else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await;
        if let Ok(Err(e)) = probe
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            match store.deregister(&r.key()).await {
                Ok(_) => tracing::info!(
                    workload = %r.metadata.name,
                    address = %SocketAddr::from((ip, port)),
                    "removed a stale registration: nothing listens there"
                ),
                Err(e) => tracing::warn!(workload = %r.metadata.name, error = %e,
                    "cannot remove a stale registration"),
            }
        }
    }
}

/// The supervisor's admin endpoint.
fn admin_router(
    rows: Rows,
    watcher: ConfigWatcher<Snapshot>,
    dir: PathBuf,
    gateway: SocketAddr,
    ca: Option<CaContext>,
) -> Router {
    let mtls = ca.map_or_else(
        || json!({"mode": "off"}),
        |ca| {
            json!({
                "mode": "STRICT",
                "ca": ca.address.to_string(),
                "caDir": ca.root.parent(),
                "rootCert": ca.root,
            })
        },
    );
    let list = {
        let rows = rows.clone();
        let watcher = watcher.clone();
        move || {
            let rows = rows.clone();
            let watcher = watcher.clone();
            async move { Json(workloads_json(&lock(&rows), &watcher.status())) }
        }
    };
    let config = {
        let watcher = watcher.clone();
        move || {
            let watcher = watcher.clone();
            async move { Json(watcher.status()) }
        }
    };
    let index = move || {
        let mtls = mtls.clone();
        let rows = rows.clone();
        let watcher = watcher.clone();
        let dir = dir.clone();
        async move {
            let status = watcher.status();
            Json(json!({
                "configDir": dir,
                "mtls": mtls,
                "productpage": format!("http://{gateway}/productpage"),
                "graph": "/graph",
                "config": status,
                "workloads": workloads_json(&lock(&rows), &status),
            }))
        }
    };
    Router::new()
        .route("/", get(index))
        .route("/workloads", get(list))
        .route("/config", get(config))
}

/// The table as JSON: one object per workload (`name`, `app`, `version`, `namespace`,
/// `address`, `admin`, `pid`, `state`, `restarts`) with the configuration status (`config`:
/// generation, `lastError` findings…) as the supervisor's own watcher sees it. All workloads
/// read the same directory with the same validation, so its verdict is theirs.
fn workloads_json(rows: &[Row], status: &ConfigStatus) -> Value {
    let status = serde_json::to_value(status).unwrap_or(Value::Null);
    Value::Array(
        rows.iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("config".to_owned(), status.clone());
                }
                v
            })
            .collect(),
    )
}

/// One supervised child and what its task needs.
struct Slot {
    index: usize,
    spec: ChildSpec,
    exe: PathBuf,
    rows: Rows,
    store: Arc<dyn Store>,
    stop: watch::Receiver<Stop>,
    ready: mpsc::UnboundedSender<usize>,
    /// The CA, when mutual TLS is on: each start gets a fresh bootstrap token.
    ca: Option<CaContext>,
}

impl Slot {
    fn update(&self, f: impl FnOnce(&mut Row)) {
        if let Some(r) = lock(&self.rows).get_mut(self.index) {
            f(r);
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() != Stop::Running
    }

    /// Resolves once the supervisor asks for `at_least` (Graceful or Force).
    async fn wait_stop(stop: &mut watch::Receiver<Stop>, force: bool) {
        let wanted = |s: &Stop| {
            if force {
                *s == Stop::Force
            } else {
                *s != Stop::Running
            }
        };
        if stop.wait_for(wanted).await.is_err() {
            // The supervisor is gone: stop.
            if !force {
                return;
            }
            std::future::pending::<()>().await;
        }
    }

    async fn deregister(&self) {
        let key = ResourceKey::new(Kind::WorkloadEntry, &self.spec.namespace, &self.spec.name);
        if let Err(e) = self.store.deregister(&key).await {
            tracing::warn!(workload = %self.spec.name, error = %e, "cannot remove the registration");
        }
    }
}

/// How a child's run ended.
enum Ended {
    /// It exited by itself.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The supervisor asked it to stop.
    Stop,
}

/// Runs one child until the supervisor stops, restarting it when it exits.
async fn supervise(mut slot: Slot) {
    let mut backoff = INITIAL_BACKOFF;
    let name = slot.spec.name.clone();
    loop {
        if slot.stopping() {
            break;
        }
        let started = Instant::now();
        let mut cmd = Command::new(&slot.exe);
        cmd.args(&slot.spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        cmd.env_remove(mtls::TOKEN_ENV);
        if let Some(ca) = &slot.ca {
            let token = mtls::identity(&slot.spec.namespace, &slot.spec.service_account)
                .and_then(|id| mtls::token(&ca.ca, &id));
            match token {
                Ok(token) => {
                    cmd.env(mtls::TOKEN_ENV, token);
                }
                // The child starts anyway and says it has no token; the back-off applies.
                Err(e) => tracing::warn!(workload = %name, "no bootstrap token: {e:#}"),
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(workload = %name, error = %e, "cannot start; retrying in {backoff:?}");
                slot.update(|r| r.state = State::Restarting);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = Slot::wait_stop(&mut slot.stop, false) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let pid = child.id();
        slot.update(|r| {
            r.pid = pid;
            r.state = State::Starting;
        });
        // Closing this pipe is how the child is asked to stop.
        let stdin = child.stdin.take();
        let mut io = JoinSet::new();
        if let Some(out) = child.stdout.take() {
            let rows = slot.rows.clone();
            let ready = slot.ready.clone();
            let (index, name) = (slot.index, name.clone());
            io.spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match child::Ready::parse(&line) {
                        Some(r) => {
                            if let Some(row) = lock(&rows).get_mut(index) {
                                row.address = Some(r.address);
                                row.admin = Some(r.admin);
                                row.pid = Some(r.pid);
                                row.state = State::Ready;
                            }
                            let _ = ready.send(index);
                        }
                        None => say!("{name:<28} | {line}"),
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let name = name.clone();
            io.spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    say_err!("{name:<28} | {line}");
                }
            });
        }

        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status),
            () = Slot::wait_stop(&mut slot.stop, false) => Ended::Stop,
        };
        match ended {
            Ended::Exited(status) => {
                drop(stdin);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                while io.join_next().await.is_some() {}
                slot.update(|r| {
                    r.pid = None;
                    r.state = State::Restarting;
                });
                if slot.stopping() {
                    break;
                }
                if started.elapsed() >= STABLE_AFTER {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(workload = %name, pid = ?pid, %status,
                    "exited unexpectedly; restarting in {backoff:?}");
                // Callers must not be sent to a port nothing listens on while it is down.
                slot.deregister().await;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = Slot::wait_stop(&mut slot.stop, false) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                slot.update(|r| r.restarts += 1);
            }
            Ended::Stop => {
                slot.update(|r| r.state = State::Stopping);
                drop(stdin);
                let mut killed = false;
                let why = tokio::select! {
                    _ = child.wait() => None,
                    () = tokio::time::sleep(STOP_GRACE) => Some("did not stop in time"),
                    () = Slot::wait_stop(&mut slot.stop, true) => Some("asked twice"),
                };
                if let Some(why) = why {
                    tracing::warn!(workload = %name, pid = ?pid, "{why}; killing it");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    killed = true;
                }
                while io.join_next().await.is_some() {}
                if killed {
                    slot.deregister().await;
                }
                slot.update(|r| {
                    r.pid = None;
                    r.state = State::Stopped;
                });
                break;
            }
        }
    }
    // A child that was never asked to stop (the loop ended between runs) has no process.
    slot.update(|r| {
        r.pid = None;
        r.state = State::Stopped;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(base: u16) -> Args {
        Args {
            config_dir: None,
            store: None,
            gateway_port: 8080,
            admin_port: 15000,
            base_port: base,
            timeouts: AppTimeouts {
                reviews_timeout: Some("1s".parse().unwrap()),
                ..AppTimeouts::default()
            },
            drain_delay: "1s".parse().unwrap(),
            mtls: MtlsMode::On,
            ca_dir: None,
            with: Vec::new(),
            telemetry: super::super::telemetry::TelemetryArgs::default(),
        }
    }

    #[test]
    fn with_httpbin_adds_httpbin_v1() {
        let gw = "127.0.0.1:8080".parse().unwrap();
        let mut a = args(9080);
        a.with = vec![Extra::Httpbin];
        let s = specs(&a, std::path::Path::new("/tmp/x"), gw, None).unwrap();
        let rows: Vec<Row> = s.iter().map(Row::from).collect();
        assert_eq!(rows.len(), 8);
        assert_eq!(
            (rows[6].app.as_str(), rows[6].version.as_str()),
            ("httpbin", "v1")
        );
        assert!(rows[6].name.starts_with("httpbin-v1-"));
        assert_eq!(s[6].service_account, "httpbin");
        assert!(s[6].args.contains(&"127.0.0.1:9086".to_owned()));
        assert_eq!(rows[7].app, gateway::APP);
        let err = specs(
            &{
                let mut a = args(65530);
                a.with = vec![Extra::Httpbin];
                a
            },
            std::path::Path::new("/x"),
            gw,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("7 ports"), "{err}");
    }

    #[test]
    fn specs_cover_bookinfo_and_the_gateway() {
        let gw = "127.0.0.1:8080".parse().unwrap();
        let s = specs(&args(9080), std::path::Path::new("/tmp/x"), gw, None).unwrap();
        let rows: Vec<Row> = s.iter().map(Row::from).collect();
        let apps: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.app.as_str(), r.version.as_str()))
            .collect();
        assert_eq!(
            apps,
            [
                ("productpage", "v1"),
                ("details", "v1"),
                ("reviews", "v1"),
                ("reviews", "v2"),
                ("reviews", "v3"),
                ("ratings", "v1"),
                ("istio-ingressgateway", "")
            ]
        );
        assert!(s[3].args.contains(&"127.0.0.1:9083".to_owned()));
        assert!(s[0].args.contains(&"--reviews-timeout".to_owned()));
        assert!(s[6].args.contains(&"127.0.0.1:8080".to_owned()));
        assert!(
            s.iter()
                .all(|s| s.args.contains(&"--supervised".to_owned()))
        );
        assert!(rows[3].name.starts_with("reviews-v2-"));
        assert!(specs(&args(65533), std::path::Path::new("/x"), gw, None).is_err());
        assert!(!s[0].args.contains(&"--ca-address".to_owned()));
        assert_eq!(s[0].service_account, "bookinfo-productpage");
        assert_eq!(s[6].service_account, gateway::SERVICE_ACCOUNT);
        let ca = CaContext {
            ca: Arc::new(
                mesh_ca::CertificateAuthority::self_signed(&mesh_ca::CaOptions::root()).unwrap(),
            ),
            address: "127.0.0.1:15012".parse().unwrap(),
            root: "/ca/root-cert.pem".into(),
        };
        let s = specs(&args(0), std::path::Path::new("/x"), gw, Some(&ca)).unwrap();
        for spec in &s {
            let at = spec.args.iter().position(|a| a == "--ca-address").unwrap();
            assert_eq!(spec.args[at + 1], "127.0.0.1:15012");
            assert!(spec.args.contains(&"/ca/root-cert.pem".to_owned()));
        }
    }

    #[test]
    fn table_and_json_have_every_workload() {
        let mut row = Row {
            name: "reviews-v2-3fa2c".into(),
            app: "reviews".into(),
            version: "v2".into(),
            namespace: "default".into(),
            address: Some("127.0.0.1:41234".into()),
            admin: Some("http://127.0.0.1:41235/".into()),
            pid: Some(42),
            state: State::Ready,
            restarts: 0,
        };
        let t = table(std::slice::from_ref(&row));
        assert!(
            t.contains("reviews-v2-3fa2c") && t.contains("127.0.0.1:41234"),
            "{t}"
        );
        row.version = String::new();
        let j = workloads_json(&[row], &ConfigStatus::default());
        assert_eq!(j[0]["address"], "127.0.0.1:41234");
        assert_eq!(j[0]["admin"], "http://127.0.0.1:41235/");
        assert_eq!(j[0]["state"], "ready");
        assert!(j[0]["config"].is_object());
    }

    #[test]
    fn graph_targets_are_the_children_with_an_admin_listener() {
        let gw = "127.0.0.1:8080".parse().unwrap();
        let s = specs(&args(0), std::path::Path::new("/tmp/x"), gw, None).unwrap();
        let mut rows: Vec<Row> = s.iter().map(Row::from).collect();
        assert!(graph_targets(&rows).is_empty());
        rows[3].admin = Some("http://127.0.0.1:41235/".into());
        rows[6].admin = Some("http://127.0.0.1:41236/".into());
        let t = graph_targets(&rows);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].workload, "reviews-v2");
        assert_eq!(t[0].instance, rows[3].name);
        assert_eq!(t[0].url, "http://127.0.0.1:41235/metrics");
        assert_eq!(t[1].workload, "istio-ingressgateway");
        rows[3].state = State::Stopped;
        assert_eq!(graph_targets(&rows).len(), 1);
    }
}
