//! `meshctl load` end to end: the example's httpbin served in this process through its own
//! `Mesh` on a temporary file store (registered as a WorkloadEntry, as every workload
//! registers), and the real `meshctl` binary loading it through the mesh.

use std::{path::Path, process::Output, sync::Arc, time::Duration};

use mesh_core::store::Store;
use mesh_tower::mesh::{Mesh, Workload};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// httpbin, serving until dropped.
struct Httpbin {
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Httpbin {
    async fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), None).await
    }

    /// httpbin on the store in `dir`, with a certificate from `ca` (mutual TLS) if given.
    async fn start_in(dir: tempfile::TempDir, ca: Option<&Path>) -> Self {
        let store: Arc<dyn Store> =
            mesh_core::store::open(&format!("file:{}", dir.path().display())).unwrap();
        let workload = Workload::new("httpbin-v1-test", "default")
            .label("app", "httpbin")
            .label("version", "v1")
            .service_account("httpbin");
        let mut builder = Mesh::builder(store, workload).drain_delay(Duration::ZERO);
        let mut manager = None;
        if let Some(ca) = ca {
            let (m, watch) = certificate(ca, "httpbin");
            builder = builder.identity(watch);
            manager = Some(m);
        }
        let mesh = builder.start().await.unwrap();
        mesh.ready().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Registered before meshctl starts, so its first snapshot has the endpoint.
        mesh.register(listener.local_addr().unwrap()).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let app = bookinfo::services::httpbin::router();
        let task = tokio::spawn(async move {
            mesh.serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
            drop(manager);
        });
        Self {
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Writes a CA in Istio's cacerts layout into `dir`, as `bookinfo up` does.
fn write_ca(dir: &Path) {
    use mesh_ca::{
        CaOptions, Cacerts, RootCa, files,
        key::{KeyAlgorithm, KeyPair},
    };
    let root_key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let root = RootCa::generate(&root_key, &CaOptions::root()).unwrap();
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let cacerts = Cacerts::intermediate(&root, &key, &CaOptions::intermediate("test")).unwrap();
    files::write_cacerts(dir, &cacerts, false).unwrap();
}

/// A certificate manager signing from the CA in `ca` for `default/<sa>`, and the mesh's view.
fn certificate(
    ca: &Path,
    sa: &str,
) -> (
    mesh_ca::rotation::CertManager,
    mesh_tower::tls::IdentityWatch,
) {
    use mesh_ca::{
        CertificateAuthority,
        client::{CaClient, LocalCa},
        identity::Identity,
        rotation::{CertManager, CertManagerConfig, WorkloadCert},
    };
    let ca = CertificateAuthority::load(ca).unwrap();
    let trust = ca.trust_bundle_pem().to_owned();
    let client: Arc<dyn CaClient> = Arc::new(LocalCa::new(Arc::new(ca)));
    let id = Identity::in_default_trust_domain("default", sa).unwrap();
    let manager = CertManager::start(id, client, CertManagerConfig::default()).unwrap();
    let watch = mesh_tower::tls::watch_credentials(manager.receiver(), move |c: &WorkloadCert| {
        mesh_tower::tls::TlsIdentity::from_pem(c.bundle.chain_pem(), c.key.expose_secret(), &trust)
    });
    (manager, watch)
}

/// Runs `meshctl ARGS` to completion (off the runtime's threads).
async fn meshctl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(MESHCTL)
            .args(&args)
            .env_remove("MESH_CONFIG_DIR")
            .env_remove("MESH_STORE")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `meshctl --config-dir DIR load -o json ARGS`, which must succeed; its JSON summary.
async fn load_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec![
        "--config-dir".to_owned(),
        dir.display().to_string(),
        "load".to_owned(),
        "-o".to_owned(),
        "json".to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let out = meshctl(all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_httpbin_through_the_mesh() {
    let httpbin = Httpbin::start().await;

    let ok = load_json(
        httpbin.dir(),
        &["-c", "2", "-n", "20", "http://httpbin:8000/get"],
    )
    .await;
    assert_eq!(ok["requests"], 20, "{ok}");
    assert_eq!(sum(&ok["codes"]), 20, "{ok}");
    assert_eq!(ok["codes"]["200"], 20, "{ok}");
    assert_eq!(ok["errors"], 0, "{ok}");
    assert_eq!(ok["flags"], serde_json::json!({}), "{ok}");
    assert_eq!(ok["connections"], 2);
    for p in ["p50", "p90", "p99", "max"] {
        let ms = ok["latency_ms"][p].as_f64().unwrap();
        assert!(ms > 0.0, "{p}: {ok}");
    }
    assert!(ok["latency_ms"]["p50"].as_f64() <= ok["latency_ms"]["max"].as_f64());
    assert!(ok["rps"].as_f64().unwrap() > 0.0, "{ok}");
    assert!(ok["duration_s"].as_f64().unwrap() > 0.0, "{ok}");

    // An application's 503 is a status, not a mesh event: no response flag.
    let unavailable = load_json(
        httpbin.dir(),
        &[
            "-c",
            "2",
            "-n",
            "20",
            "-X",
            "POST",
            "-H",
            "x-test: 1",
            "http://httpbin:8000/status/503",
        ],
    )
    .await;
    assert_eq!(
        unavailable["codes"],
        serde_json::json!({"503": 20}),
        "{unavailable}"
    );
    assert_eq!(unavailable["flags"], serde_json::json!({}), "{unavailable}");
    assert_eq!(unavailable["method"], "POST");

    // Open loop: the requests scheduled before the end are sent, however slow the server.
    let paced = load_json(
        httpbin.dir(),
        &[
            "-c",
            "3",
            "-t",
            "500ms",
            "--qps",
            "20",
            "http://httpbin:8000/status/200",
        ],
    )
    .await;
    assert_eq!(paced["requests"], 10, "{paced}");
    assert_eq!(paced["codes"], serde_json::json!({"200": 10}), "{paced}");

    // A mesh host with no endpoints: the mesh answers 503 UH itself.
    let nowhere = load_json(
        httpbin.dir(),
        &[
            "-c",
            "1",
            "-n",
            "3",
            "http://nosuch.default.svc.cluster.local:8000/get",
        ],
    )
    .await;
    assert_eq!(nowhere["codes"], serde_json::json!({"503": 3}), "{nowhere}");
    assert_eq!(nowhere["flags"], serde_json::json!({"UH": 3}), "{nowhere}");

    // The text summary.
    let out = meshctl(vec![
        "--config-dir".into(),
        httpbin.dir().display().to_string(),
        "load".into(),
        "-n".into(),
        "5".into(),
        "http://httpbin:8000/headers".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Code 200 : 5 (100.0 %)"), "{text}");
    assert!(text.contains("Response flags: none"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    // Not a terminal: no progress line.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    httpbin.stop().await;
}

#[tokio::test]
async fn usage_and_setup_errors() {
    let help = meshctl(vec!["load".into(), "--help".into()]).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    assert!(
        text.contains("--qps") && text.contains("--connections"),
        "{text}"
    );

    let bad_header = meshctl(vec![
        "load".into(),
        "-H".into(),
        "no colon".into(),
        "http://httpbin:8000/get".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&bad_header.stderr);
    assert_eq!(bad_header.status.code(), Some(2), "{err}");
    assert!(err.contains("--header"), "{err}");

    for args in [
        vec!["load", "not a url"],
        vec!["load", "https://httpbin:8000/"],
        vec!["load", "-c", "0", "http://httpbin:8000/"],
        vec!["load", "-n", "5", "-t", "1s", "http://httpbin:8000/"],
        vec!["load", "--qps", "-1", "http://httpbin:8000/"],
        vec!["load", "-X", "GET /", "http://httpbin:8000/"],
    ] {
        let out = meshctl(args.iter().map(|a| (*a).to_owned()).collect()).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
    }

    // No store: a setup failure, exit 1, and how to configure one.
    let out = meshctl(vec![
        "load".into(),
        "-n".into(),
        "1".into(),
        "http://httpbin:8000/".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--config-dir"), "{err}");

    // A config dir that does not exist: exit 1, naming it, and nothing created.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let out = meshctl(vec![
        "--config-dir".into(),
        missing.display().to_string(),
        "load".into(),
        "-n".into(),
        "1".into(),
        "http://httpbin:8000/".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("typo") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!missing.exists());

    // An unreadable CA directory: exit 1, naming it.
    let dir = tempfile::tempdir().unwrap();
    let out = meshctl(vec![
        "--config-dir".into(),
        dir.path().display().to_string(),
        "load".into(),
        "--ca-dir".into(),
        dir.path().join("missing").display().to_string(),
        "-n".into(),
        "1".into(),
        "http://httpbin:8000/".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing"), "{err}");
}

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_ca_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("peer-authentication.yaml"), STRICT).unwrap();
    // Where `bookinfo up` keeps its CA (hidden, so the store does not read it).
    let ca = dir.path().join(".mesh-ca");
    write_ca(&ca);
    let httpbin = Httpbin::start_in(dir, Some(&ca)).await;

    // Plaintext to a STRICT workload: the workload resets the connection, and the mesh
    // reports it (`UC`, or `UF` if it happens during the connect).
    let mut args = vec![
        "--config-dir".to_owned(),
        httpbin.dir().display().to_string(),
        "load".to_owned(),
        "-o".to_owned(),
        "json".to_owned(),
        "-c".to_owned(),
        "1".to_owned(),
        "-n".to_owned(),
        "2".to_owned(),
        "http://httpbin:8000/get".to_owned(),
    ];
    let out = meshctl(args.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let plain: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(plain["codes"], serde_json::json!({"503": 2}), "{plain}");
    assert!(sum(&plain["flags"]) == 2, "{plain}");
    let flags: Vec<&String> = plain["flags"].as_object().unwrap().keys().collect();
    assert!(
        flags.iter().all(|f| f.contains("UC") || f.contains("UF")),
        "{plain}"
    );
    assert!(stderr.contains("--ca-dir"), "{stderr}");

    // With the CA: a certificate for sa/fortio, mutual TLS, 200s.
    args.splice(3..3, ["--ca-dir".to_owned(), ca.display().to_string()]);
    let out = meshctl(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(tls["codes"], serde_json::json!({"200": 2}), "{tls}");
    assert_eq!(tls["flags"], serde_json::json!({}), "{tls}");

    httpbin.stop().await;
}

/// Istio's circuit-breaking task, with its DestinationRule applied by `meshctl apply`: one
/// caller at a time always finds the connection free; three at once overflow the pending
/// queue and get the mesh's own 503 with flag `UO`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_circuit_breaking_task() {
    let httpbin = Httpbin::start().await;
    let rules = tempfile::tempdir().unwrap();
    let rule = rules.path().join("httpbin-circuit-breaker.yaml");
    std::fs::write(
        &rule,
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: httpbin, namespace: default }
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: { maxConnections: 1 }
      http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1 }
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
",
    )
    .unwrap();
    let out = meshctl(vec![
        "--config-dir".to_owned(),
        httpbin.dir().display().to_string(),
        "apply".to_owned(),
        "-f".to_owned(),
        rule.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One caller: never more than one request in flight, all 200.
    let one = load_json(
        httpbin.dir(),
        &["-c", "1", "-n", "20", "http://httpbin:8000/get"],
    )
    .await;
    assert_eq!(one["codes"], serde_json::json!({"200": 20}), "{one}");
    assert_eq!(one["flags"], serde_json::json!({}), "{one}");

    // Three callers: one request active, one pending, the third overflows. Each request takes
    // 50 ms so that the callers overlap on any machine (Istio's task relies on the sidecars'
    // latency for that).
    let three = load_json(
        httpbin.dir(),
        &["-c", "3", "-n", "30", "http://httpbin:8000/delay/0.05"],
    )
    .await;
    assert_eq!(sum(&three["codes"]), 30, "{three}");
    let ok = three["codes"]["200"].as_u64().unwrap_or(0);
    let overflowed = three["codes"]["503"].as_u64().unwrap_or(0);
    assert!(ok > 0 && overflowed > 0, "{three}");
    assert_eq!(ok + overflowed, 30, "{three}");
    assert_eq!(
        three["flags"],
        serde_json::json!({"UO": overflowed}),
        "every 503 is the mesh's overflow: {three}"
    );
    httpbin.stop().await;
}
