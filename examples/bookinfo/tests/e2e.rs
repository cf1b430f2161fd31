//! End to end: the real `bookinfo` binary (`bookinfo up`: seven processes) on loopback,
//! driven through its ingress gateway with Istio's own YAML applied live, reproducing the
//! outcomes of Istio's Bookinfo tasks.
//!
//! One `bookinfo up` serves every check of [`istio_tasks_through_the_gateway`] in turn, so the
//! processes start once. It runs with mutual TLS on (the default): the checks of
//! [`strict_mtls_and_authorization`] use `openssl s_client` as an outside peer, with a client
//! certificate issued from the CA directory `up` created. The second run,
//! [`istio_timeouts_with_istio_defaults`], runs with `--mtls off`. Ports are free ones picked
//! at start; the config directory is a temp dir; a guard kills every process the test saw if
//! it fails half-way.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http_body_util::Full;
use serde_json::Value;

mod support;

use support::*;

/// Counts reviews versions over 200 anonymous loads, four at a time.
async fn census(up: &Up) -> BTreeMap<&'static str, usize> {
    let worker = || async {
        let mut out = Vec::new();
        for _ in 0..50 {
            out.push(up.page(None).await.0);
        }
        out
    };
    let (a, b, c, d) = tokio::join!(worker(), worker(), worker(), worker());
    let mut counts = BTreeMap::new();
    for v in a.into_iter().chain(b).chain(c).chain(d) {
        *counts.entry(v.unwrap_or("none")).or_default() += 1;
    }
    counts
}

fn pids(rows: &[Value]) -> BTreeMap<String, u64> {
    rows.iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["pid"].as_u64()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_tasks_through_the_gateway() {
    let t0 = Instant::now();
    // Shortened application timeouts so the fault-injection task takes seconds, not
    // minutes: productpage gives reviews 1 s and retries once (Istio: 3 s, once).
    let mut up = Up::start(&["--reviews-timeout", "1s"], &[]).await;
    let rows = up.wait_ready().await;
    eprintln!("ready after {:?}", t0.elapsed());

    // The table: every workload, with host:port addresses and admin URLs that answer.
    let apps: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["app"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for want in [
        ("productpage", "v1"),
        ("details", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
        ("ratings", "v1"),
    ] {
        assert!(apps.contains(&want), "{want:?} missing from {apps:?}");
    }
    assert!(apps.iter().any(|(a, _)| *a == "istio-ingressgateway"));
    for r in &rows {
        let addr: SocketAddr = r["address"].as_str().unwrap().parse().expect("host:port");
        assert!(addr.ip().is_loopback());
        let admin = r["admin"].as_str().unwrap();
        let url = format!("{admin}health");
        let (status, _, _) = up
            .request(http::Request::get(url).body(Full::default()).unwrap())
            .await
            .expect("admin answers");
        assert_eq!(status, 200, "{admin}");
        assert!(r["config"]["lastError"].is_null());
    }
    let before = pids(&rows);

    // A path the gateway has no rule for: the mesh's 404 (NR).
    let (status, _) = up.get("/nothing-here", None).await;
    assert_eq!(status, 404);

    // No VirtualService for reviews: the page rotates over v1 (no stars), v2 (black), v3 (red).
    let mut seen = BTreeMap::new();
    for _ in 0..90 {
        let (v, _, _) = up.page(None).await;
        *seen.entry(v).or_insert(0) += 1;
        if ["v1", "v2", "v3"]
            .iter()
            .all(|v| seen.contains_key(&Some(*v)))
        {
            break;
        }
    }
    assert!(!seen.contains_key(&None), "pages without reviews: {seen:?}");
    for v in ["v1", "v2", "v3"] {
        assert!(seen.contains_key(&Some(v)), "{v} never served: {seen:?}");
    }
    eprintln!("rotation {seen:?} after {:?}", t0.elapsed());

    // Every hop above went over STRICT mutual TLS; check it from the outside, then lock
    // reviews and details to productpage's identity (kept for the rest of the run).
    strict_mtls_and_authorization(&up, &rows).await;
    eprintln!("mTLS and authorization checked, after {:?}", t0.elapsed());

    // Request routing, all v1: within 2 s, only v1, and no process restarted.
    let applied = up.apply(&["virtual-service-all-v1.yaml"]).await;
    let began = up
        .until_streak("all-v1", None, 12, Duration::from_secs(10), |v, _| {
            v == Some("v1")
        })
        .await;
    assert!(
        began.saturating_duration_since(applied) < LIVE_CONFIG,
        "all-v1 took {:?}",
        began - applied
    );
    for _ in 0..20 {
        assert_eq!(up.page(None).await.0, Some("v1"));
    }
    let rows = up.workloads().await.expect("workloads");
    assert_eq!(pids(&rows), before, "a process restarted");
    eprintln!(
        "all-v1 live after {:?}",
        began.saturating_duration_since(applied)
    );

    // Request routing by user: jason sees v2, everyone else v1.
    let jason = up.login("jason").await;
    let applied = up.apply(&["virtual-service-reviews-test-v2.yaml"]).await;
    let began = up
        .until_streak(
            "jason on v2",
            Some(&jason),
            8,
            Duration::from_secs(10),
            |v, _| v == Some("v2"),
        )
        .await;
    assert!(
        began.saturating_duration_since(applied) < LIVE_CONFIG,
        "test-v2 took {:?}",
        began - applied
    );
    for _ in 0..8 {
        assert_eq!(up.page(None).await.0, Some("v1"));
        let (v, page, _) = up.page(Some(&jason)).await;
        assert_eq!(v, Some("v2"));
        assert!(page.contains("jason"), "the page names the user");
    }
    let other = up.login("alice").await;
    assert_eq!(up.page(Some(&other)).await.0, Some("v1"));

    // Traffic shifting 80/20: 200 loads, v2's share within [10 %, 30 %].
    up.apply(&["virtual-service-reviews-80-20.yaml"]).await;
    up.until_streak(
        "a v2 page under 80/20",
        None,
        1,
        Duration::from_secs(10),
        |v, _| v == Some("v2"),
    )
    .await;
    let counts = census(&up).await;
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(
        counts.get("v1").copied().unwrap_or(0) + v2,
        200,
        "only v1 and v2: {counts:?}"
    );
    assert!((20..=60).contains(&v2), "v2 share {v2}/200: {counts:?}");
    eprintln!("80/20: {counts:?} after {:?}", t0.elapsed());

    // Fault injection, delay: ratings delayed 7 s for jason. productpage gives reviews 1 s and
    // retries once, so after ~2 s the page says reviews are unavailable (Istio: ~6 s with its
    // 3 s); other users are unaffected.
    up.apply(&[
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ])
    .await;
    up.until_streak(
        "the delay for jason",
        Some(&jason),
        1,
        Duration::from_secs(20),
        |_, p| p.contains(REVIEWS_UNAVAILABLE),
    )
    .await;
    let (_, page, took) = up.page(Some(&jason)).await;
    assert!(page.contains(REVIEWS_UNAVAILABLE));
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(5000),
        "reviews gave up after {took:?}"
    );
    let (v, page, took) = up.page(None).await;
    assert_eq!(v, Some("v1"));
    assert!(!page.contains(REVIEWS_UNAVAILABLE));
    assert!(
        took < Duration::from_millis(1500),
        "anonymous page took {took:?}"
    );
    eprintln!("delay: jason waited ~2 s, after {:?}", t0.elapsed());

    // Fault injection, abort: ratings answers 500 for jason; reviews v2 says so.
    up.apply(&["virtual-service-ratings-test-abort.yaml"]).await;
    up.until_streak(
        "the abort for jason",
        Some(&jason),
        3,
        Duration::from_secs(10),
        |v, p| v == Some("v2") && p.contains(RATINGS_UNAVAILABLE),
    )
    .await;
    let (v, page, _) = up.page(None).await;
    assert_eq!(v, Some("v1"));
    assert!(!page.contains(RATINGS_UNAVAILABLE));

    // A broken file changes nothing, and its error shows in /workloads.
    let reviews_file = up.config_dir().join("default/virtualservices/reviews.yaml");
    let good = std::fs::read_to_string(&reviews_file).expect("the stored reviews VS");
    std::fs::write(
        &reviews_file,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n\
         spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v3}}]\n    \
         timeout: banana\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let rows = up.workloads().await.expect("workloads");
        let e = &rows[0]["config"]["lastError"];
        if !e.is_null() {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "the broken file is not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("reviews"), "{error}");
    for _ in 0..5 {
        assert_eq!(up.page(None).await.0, Some("v1"), "routing changed");
        let (v, page, _) = up.page(Some(&jason)).await;
        assert_eq!(v, Some("v2"), "routing changed for jason");
        assert!(page.contains(RATINGS_UNAVAILABLE));
    }
    let log = std::fs::read_to_string(&up.log).unwrap_or_default();
    assert!(log.contains("config change refused"), "no warning logged");
    std::fs::write(&reviews_file, good).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.workloads().await.expect("workloads")[0]["config"]["lastError"].is_null() {
        assert!(Instant::now() < deadline, "the fixed file is not accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("broken file refused, after {:?}", t0.elapsed());

    // A crashed workload comes back: kill reviews v1, the supervisor restarts it under the
    // same name, and anonymous users get v1 reviews again.
    let rows = up.workloads().await.expect("workloads");
    let victim = rows
        .iter()
        .find(|r| r["app"] == "reviews" && r["version"] == "v1")
        .expect("reviews v1");
    let name = victim["name"].as_str().unwrap().to_owned();
    let old = u32::try_from(victim["pid"].as_u64().unwrap()).unwrap();
    assert!(kill("KILL", old));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{name} was not restarted");
        if let Some(rows) = up.workloads().await {
            up.remember(&rows);
            if let Some(r) = rows.iter().find(|r| r["name"] == name.as_str())
                && r["state"] == "ready"
                && r["pid"].as_u64().is_some_and(|p| p != u64::from(old))
            {
                assert!(r["restarts"].as_u64() >= Some(1));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(old));
    up.until_streak(
        "reviews v1 back",
        None,
        3,
        Duration::from_secs(10),
        |v, p| v == Some("v1") && p.contains(&format!("served by: {name}")),
    )
    .await;
    eprintln!("restart seen, after {:?}", t0.elapsed());

    // SIGTERM stops everything: `up` exits 0 and no process is left; registrations are gone.
    let rows = up.workloads().await.expect("workloads");
    up.remember(&rows);
    let children: Vec<u32> = rows
        .iter()
        .filter_map(|r| r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect();
    assert_eq!(children.len(), 7);
    assert!(kill("TERM", up.child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = up.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "bookinfo up did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "bookinfo up exited with {status}");
    for pid in &children {
        assert!(!alive(*pid), "child {pid} is still running");
    }
    let entries = registered(&up.config_dir()).await;
    assert!(entries.is_empty(), "left registered: {entries:?}");
    eprintln!("stopped cleanly, total {:?}", t0.elapsed());
}

/// Istio's own application timeouts, unshortened: the delay task gives up after ~6 s (3 s and
/// one retry), and the request-timeout task answers in ~1 s (0.5 s and one retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_timeouts_with_istio_defaults() {
    let t0 = Instant::now();
    let mut up = Up::start(
        &["--mtls", "off"],
        &[
            "destination-rule-all.yaml",
            "virtual-service-reviews-test-v2.yaml",
        ],
    )
    .await;
    let rows = up.wait_ready().await;
    // Plaintext mode: no CA, no PeerAuthentication, and a workload answers plain HTTP.
    assert!(!up.config_dir().join(".mesh-ca").exists());
    assert!(
        !up.config_dir()
            .join("istio-system/peerauthentications")
            .exists()
    );
    let details = address_of(&rows, "details");
    let (status, _) = up
        .get_url(&format!("http://{details}/details/0"))
        .await
        .expect("details answers plaintext");
    assert_eq!(status, 200);
    let jason = up.login("jason").await;
    // Every hop of jason's path must know its endpoints before anything is timed: productpage
    // → reviews v2 → ratings (a page served by v2 with stars).
    up.until_streak(
        "jason served by reviews v2",
        Some(&jason),
        1,
        Duration::from_secs(20),
        |v, p| v == Some("v2") && !p.contains(REVIEWS_UNAVAILABLE),
    )
    .await;
    up.apply(&["virtual-service-ratings-test-delay.yaml"]).await;
    // The delay is live once a page for jason comes back without reviews (it then took the
    // whole timeout and retry); time the next one.
    up.until_streak(
        "the ratings delay",
        Some(&jason),
        1,
        Duration::from_secs(30),
        |_, p| p.contains(REVIEWS_UNAVAILABLE),
    )
    .await;
    let (_, page, took) = up.page(Some(&jason)).await;
    assert!(page.contains(REVIEWS_UNAVAILABLE), "{page}");
    assert!(
        took >= Duration::from_millis(5800) && took < Duration::from_secs(9),
        "reviews gave up after {took:?} (Istio: ~6 s)"
    );
    let (v, _, took) = up.page(None).await;
    assert_eq!(v, Some("v1"));
    assert!(
        took < Duration::from_millis(1500),
        "anonymous page took {took:?}"
    );
    eprintln!(
        "delay with Istio's timeouts checked, after {:?}",
        t0.elapsed()
    );

    // Request timeouts: reviews v2 behind a 2 s ratings delay, with a 0.5 s route timeout.
    up.apply(&["virtual-service-reviews-timeout.yaml"]).await;
    up.until_streak(
        "the reviews timeout",
        None,
        1,
        Duration::from_secs(20),
        |_, p| p.contains(REVIEWS_UNAVAILABLE),
    )
    .await;
    let (_, page, took) = up.page(None).await;
    assert!(page.contains(REVIEWS_UNAVAILABLE));
    eprintln!("request timeout: page after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "page after {took:?} (Istio: ~1 s)"
    );

    // Even a supervisor killed outright leaves nothing behind: its children see their stdin
    // close, deregister and exit.
    let rows = up.workloads().await.expect("workloads");
    up.remember(&rows);
    let children: Vec<u32> = rows
        .iter()
        .filter_map(|r| r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect();
    assert_eq!(children.len(), 7);
    up.child.kill().expect("SIGKILL");
    let _ = up.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "children outlived a killed supervisor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered(&up.config_dir()).await.is_empty());
    eprintln!("total {:?}", t0.elapsed());
}

/// The names of the WorkloadEntries in the store in `dir`.
async fn registered(dir: &Path) -> Vec<String> {
    let store = mesh_core::store::open(&format!("file:{}", dir.display())).unwrap();
    store
        .list()
        .await
        .unwrap()
        .resources
        .iter()
        .filter(|r| r.kind() == mesh_core::config::Kind::WorkloadEntry)
        .map(|r| r.metadata.name.clone())
        .collect()
}

/// Usage errors exit 2 with clap's message; bad values exit 1 with ours; `--help` exits 0.
#[test]
fn command_line_errors() {
    let bin = env!("CARGO_BIN_EXE_bookinfo");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .env_remove("MESH_CONFIG_DIR")
            .env_remove("MESH_STORE")
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, _, out) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("up") && out.contains("service") && out.contains("gateway"));
    let (code, err, _) = run(&["service", "frontend"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err, _) = run(&["service", "reviews", "--reviews-timeout", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, err, _) = run(&[
        "service",
        "reviews",
        "--version",
        "v4",
        "--config-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error: reviews has versions"), "{err}");
    // A busy port is refused up front rather than crash-looping a child.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (code, err, _) = run(&[
        "up",
        "--config-dir",
        dir.path().to_str().unwrap(),
        "--gateway-port",
        &port,
        "--admin-port",
        &free_port().to_string(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--gateway-port"), "{err}");
}

/// The address (`host:port`) of the first workload of `app` in the table.
fn address_of(rows: &[Value], app: &str) -> String {
    rows.iter()
        .find(|r| r["app"] == app)
        .and_then(|r| r["address"].as_str())
        .unwrap_or_else(|| panic!("no {app} in {rows:?}"))
        .to_owned()
}

/// Runs `openssl s_client ARGS`, writes `request` to it, and returns whether it exited 0 and
/// what it printed (stdout, then stderr). Gives up after 15 s.
async fn s_client(args: Vec<String>, request: &'static [u8]) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut child = Command::new("openssl")
            .arg("s_client")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl runs (apt-get install openssl)");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(request);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        (status.is_some_and(|s| s.success()), text)
    })
    .await
    .expect("openssl ran")
}

/// The last PEM certificate in `text`.
fn last_certificate(text: &str) -> Option<&str> {
    let begin = text.rfind("-----BEGIN CERTIFICATE-----")?;
    let end = text[begin..].find("-----END CERTIFICATE-----")? + begin;
    Some(&text[begin..end + "-----END CERTIFICATE-----".len()])
}

/// With `bookinfo up`'s default, STRICT mutual TLS: the CA files are in the config dir, the
/// mesh-wide PeerAuthentication is seeded, a workload refuses plaintext and a TLS client
/// without a certificate, and accepts `openssl s_client` with a certificate issued from the CA
/// directory (its chain ends in the CA directory's root). Then the sample AuthorizationPolicy:
/// the page keeps working (productpage is allowed) while that other identity gets 403.
async fn strict_mtls_and_authorization(up: &Up, rows: &[Value]) {
    let ca_dir = up.config_dir().join(".mesh-ca");
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
        "root/root-cert.pem",
        "root/root-key.pem",
    ] {
        assert!(
            ca_dir.join(f).is_file(),
            "{f} missing from {}",
            ca_dir.display()
        );
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        up.config_dir()
            .join("istio-system/peerauthentications/default.yaml")
            .is_file(),
        "the STRICT PeerAuthentication is not seeded"
    );
    let log = std::fs::read_to_string(&up.log).unwrap_or_default();
    assert!(log.contains("CA dir: "), "the CA dir is not shown");
    assert!(log.contains("mTLS: STRICT"), "the mode is not shown");

    let details = address_of(rows, "details");
    // Plaintext to a STRICT port is refused.
    assert!(
        up.get_url(&format!("http://{details}/details/0"))
            .await
            .is_err(),
        "details answered plaintext"
    );

    // A client certificate for another identity, from the CA directory.
    let ca = mesh_ca::CertificateAuthority::load(&ca_dir).expect("the CA dir loads");
    let id: mesh_ca::identity::Identity = "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .unwrap();
    let key = mesh_ca::key::KeyPair::generate(mesh_ca::key::KeyAlgorithm::EcdsaP256).unwrap();
    let bundle = ca
        .issue(&id, &key, Duration::from_secs(600))
        .expect("issue");
    let client_dir = up.dir.path().join("sleep");
    mesh_ca::files::write_workload(&client_dir, Some(&key.to_pem()), &bundle, false)
        .expect("write the client certificate");
    let path = |p: PathBuf| p.display().to_string();
    let chain = path(client_dir.join("cert-chain.pem"));
    let key = path(client_dir.join("key.pem"));
    let root = path(ca_dir.join("root-cert.pem"));
    let with_cert = || {
        [
            "-connect",
            &details,
            "-CAfile",
            &root,
            "-cert",
            &chain,
            "-cert_chain",
            &chain,
            "-key",
            &key,
            "-alpn",
            "http/1.1",
            "-verify_return_error",
            "-showcerts",
            "-ign_eof",
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // Without a client certificate: no answer.
    let (_, out) = s_client(
        [
            "-connect", &details, "-CAfile", &root, "-alpn", "http/1.1", "-ign_eof",
        ]
        .map(str::to_owned)
        .to_vec(),
        DETAILS_REQUEST,
    )
    .await;
    assert!(
        !out.contains("HTTP/1.1 200"),
        "answered without a client certificate:\n{out}"
    );

    // With one: verified both ways, details answers, and the chain ends in the CA dir's root.
    let (ok, out) = s_client(with_cert(), DETAILS_REQUEST).await;
    assert!(ok, "openssl s_client failed:\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let root_pem = std::fs::read_to_string(&root).unwrap();
    assert_eq!(
        last_certificate(&out).map(str::trim),
        Some(root_pem.trim()),
        "the chain does not end in the CA dir's root:\n{out}"
    );

    // A workload started by hand with --ca-dir signs its own certificate from the CA files and
    // serves mutual TLS too.
    by_hand_with_ca_dir(up, &ca_dir, [&root, &chain, &key]).await;

    // Only productpage may call reviews and details.
    let applied = up
        .apply(&["authorization-policy-reviews-details.yaml"])
        .await;
    let out = loop {
        let (_, out) = s_client(with_cert(), DETAILS_REQUEST).await;
        if out.contains("HTTP/1.1 403") {
            break out;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(10),
            "the AuthorizationPolicy is not enforced:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(out.contains("RBAC: access denied"), "{out}");
    // The page still has details, reviews (every version) and ratings.
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let (v, page, _) = up.page(None).await;
        assert!(
            !page.contains(DETAILS_UNAVAILABLE),
            "details denied: {page}"
        );
        assert!(
            !page.contains(REVIEWS_UNAVAILABLE),
            "reviews denied: {page}"
        );
        assert!(
            !page.contains(RATINGS_UNAVAILABLE),
            "ratings failed: {page}"
        );
        *seen.entry(v).or_insert(0) += 1;
        if seen.contains_key(&Some("v2")) && seen.contains_key(&Some("v3")) {
            break;
        }
    }
    assert!(
        seen.contains_key(&Some("v2")) && seen.contains_key(&Some("v3")),
        "no page with ratings: {seen:?}"
    );
}

/// Kills a process when dropped (a test failing half-way leaves nothing behind).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `bookinfo service ratings --ca-dir DIR` next to a running `up`: it gets a certificate from
/// the CA files, and `openssl s_client` with `[root, chain, key]` reaches it.
async fn by_hand_with_ca_dir(up: &Up, ca_dir: &Path, [root, chain, key]: [&str; 3]) {
    use std::io::{BufRead, BufReader};
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .args(["service", "ratings", "--name", "ratings-v1-byhand"])
            .arg("--ca-dir")
            .arg(ca_dir)
            .arg("--config-dir")
            .arg(up.config_dir())
            .args(["--drain-delay", "100ms"])
            .env_remove("MESH_CONFIG_DIR")
            .env_remove("MESH_STORE")
            .env_remove("BOOKINFO_CA_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bookinfo service starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("serving on"))
    })
    .await
    .expect("reader");
    let line = line.expect("the workload by hand never served");
    assert!(line.contains("mutual TLS"), "{line}");
    let address = line
        .split("serving on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("an address")
        .to_owned();
    let args = [
        "-connect",
        &address,
        "-CAfile",
        root,
        "-cert",
        chain,
        "-cert_chain",
        chain,
        "-key",
        key,
        "-alpn",
        "http/1.1",
        "-verify_return_error",
        "-ign_eof",
    ]
    .map(str::to_owned)
    .to_vec();
    let (ok, out) = s_client(
        args,
        b"GET /ratings/0 HTTP/1.1\r\nHost: ratings\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok && out.contains("HTTP/1.1 200"), "{out}");
    assert!(kill("TERM", child.0.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the workload by hand did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
