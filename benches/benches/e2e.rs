//! End to end on loopback: a hyper client calling a hyper server, bare and with the mesh on
//! both ends (the mesh's outbound stack in the client, `Mesh::serve` in the server), in one
//! process so the process's CPU time covers both ends.
//!
//! Reports requests per second, CPU microseconds per request (user + system, from
//! `/proc/self/stat`) and p50/p99 latency (HDR histogram), each also as a ratio to bare hyper
//! from the same run. 1 KB responses, HTTP/1.1, 4 concurrent callers.
//!
//! `cargo bench -p benches --bench e2e` runs the full measurement (~40,000 requests per
//! mode); with `-- --test` (what CI runs) it only checks that both paths work.
//!
//! For profiling one path: `E2E_ONLY=bare|mesh|serve|connect|bare+tls|mesh+tls` runs only it,
//! `E2E_REQUESTS=N` sets the count, and `E2E_HTTP2=1` (with `E2E_ONLY` and a plaintext path)
//! sends HTTP/2 with prior knowledge instead of HTTP/1.1. `E2E_RULES=1` gives the mesh
//! paths the route `compare` uses (a route timeout, retries with a per-try timeout) instead
//! of the default route. `E2E_METRICS=0` builds both meshes without Istio's request metrics
//! (`MeshBuilder::metrics(false)`), to see what the rest of the mesh costs on its own.

use std::{
    convert::Infallible,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use benches::tls::{BareTlsConnector, Pki};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::store::{FileStore, Store};
use mesh_tower::{
    body::{self, Body},
    mesh::{Mesh, Workload},
};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

const BODY: &[u8] = &[b'x'; 1024];
const CONCURRENCY: usize = 4;
/// Alternating rounds in a full run. Each round runs every mode back to back, so a bare run
/// and the mesh run after it see the same machine; the ratios reported are the medians of
/// the rounds' ratios (the machine's speed drifts by more than the difference measured).
const ROUNDS: usize = 7;

struct Run {
    mode: &'static str,
    requests: usize,
    elapsed: Duration,
    cpu: Duration,
    latency: Histogram<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests as f64
    }
    fn p(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

/// User + system CPU time of this process, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14, stime 15 (1-based); `rest` starts at field 3.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 10)
}

/// `E2E_HTTP2` is set: the plaintext paths speak HTTP/2 (prior knowledge).
static HTTP2: LazyLock<bool> = LazyLock::new(|| std::env::var_os("E2E_HTTP2").is_some());

/// `E2E_RULES` is set: the mesh paths route by [`RULES`] instead of the default route.
static WITH_RULES: LazyLock<bool> = LazyLock::new(|| std::env::var_os("E2E_RULES").is_some());

/// `E2E_METRICS=0`: the meshes report no request metrics.
static WITH_METRICS: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("E2E_METRICS").is_none_or(|v| v != "0"));

/// The route of `compare`'s mesh paths: a timeout and retries with a per-try timeout.
const RULES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: bench, namespace: default }
spec:
  hosts: [bench]
  http:
  - name: default
    timeout: 10s
    retries: { attempts: 2, perTryTimeout: 5s, retryOn: \"5xx,reset,connect-failure\" }
    route:
    - destination: { host: bench }
";

/// A request to `uri`, in the HTTP version of the run.
fn request(uri: &str) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::get(uri).body(Empty::new()).unwrap();
    if *HTTP2 {
        *req.version_mut() = http::Version::HTTP_2;
    }
    req
}

async fn app(_req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    Ok(http::Response::new(body::full(Bytes::from_static(BODY))))
}

/// The bare server's application: like [`app`], an `async fn` that owns its request until
/// it runs, as any handler that reads its request does. (A closure that drops the request
/// before returning its future lets hyper reuse its read buffer in place, where a real
/// handler makes it allocate a new one: a saving no application gets.)
async fn bare_app(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<Bytes>>, Infallible> {
    Ok(http::Response::new(http_body_util::Full::new(
        Bytes::from_static(BODY),
    )))
}

/// A bare hyper server (hyper-util's auto builder, as an application would write it).
async fn bare_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(bare_app);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn drive<S, B>(mode: &'static str, svc: S, uri: String, requests: usize) -> Run
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>> + Clone + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::fmt::Debug,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    // Warm up: connections, pools, caches. Twice as many callers as the run, so every mode
    // starts with at least that many pooled connections: with exactly one per caller, the
    // client pool's idle list for the host empties and is rebuilt on every request, and
    // whether that happens would depend on how the first connections raced.
    let mut warm = Vec::new();
    for _ in 0..2 * CONCURRENCY {
        let svc = svc.clone();
        let uri = uri.clone();
        warm.push(tokio::spawn(async move {
            for _ in 0..50 {
                let req = request(&uri);
                let res = svc.clone().oneshot(req).await.unwrap();
                let _ = res.into_body().collect().await;
            }
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let per_task = requests / CONCURRENCY;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let svc = svc.clone();
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            for _ in 0..per_task {
                let start = Instant::now();
                let req = request(&uri);
                let res = svc.clone().oneshot(req).await.unwrap();
                assert_eq!(res.status(), 200);
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), BODY.len());
                let _ = h.record(start.elapsed().as_micros() as u64);
            }
            h
        }));
    }
    let mut latency = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        latency.add(t.await.unwrap()).unwrap();
    }
    Run {
        mode,
        requests: per_task * CONCURRENCY,
        elapsed: t0.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
        latency,
    }
}

async fn bare(requests: usize) -> Run {
    let addr = bare_server().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(*HTTP2)
        .build_http::<Empty<Bytes>>();
    let svc = tower::service_fn(move |req: http::Request<Empty<Bytes>>| {
        let client = client.clone();
        async move { client.request(req).await.map(|res| res.map(body::boxed)) }
    });
    drive("bare", svc, format!("http://{addr}/"), requests).await
}

/// Attribution: bare hyper client, the mesh's inbound server (`mesh_tower::server::serve`).
async fn serve_only(requests: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = mesh_tower::server::serve(
            listener,
            tower::service_fn(app),
            std::future::pending(),
            mesh_tower::server::ShutdownOptions::default(),
        )
        .await;
    });
    let client = Client::builder(TokioExecutor::new())
        .http2_only(*HTTP2)
        .build_http::<Empty<Bytes>>();
    let svc = tower::service_fn(move |req: http::Request<Empty<Bytes>>| {
        let client = client.clone();
        async move { client.request(req).await.map(|res| res.map(body::boxed)) }
    });
    drive("serve", svc, format!("http://{addr}/"), requests).await
}

/// Attribution: the mesh's connection pools (`mesh_tower::connect::Connect`) alone, against
/// the bare server.
async fn connect_only(requests: usize) -> Run {
    let addr = bare_server().await;
    let connect = mesh_tower::connect::Connect::new();
    let svc = tower::service_fn(move |req: http::Request<Empty<Bytes>>| {
        let mut connect = connect.clone();
        async move { connect.call(req.map(body::boxed)).await }
    });
    drive("connect", svc, format!("http://{addr}/"), requests).await
}

async fn mesh(requests: usize) -> Run {
    mesh_over(requests, None).await
}

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
";

/// Bare hyper over mutual TLS: tokio-rustls on both ends (ring, TLS 1.3, client certificates
/// verified by rustls' stock verifier), persistent HTTP/1.1 connections.
async fn bare_tls(requests: usize, pki: &Pki) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.bare_server());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(bare_app);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let connector = BareTlsConnector(tokio_rustls::TlsConnector::from(pki.bare_client()));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let svc = tower::service_fn(move |req: http::Request<Empty<Bytes>>| {
        let client = client.clone();
        async move { client.request(req).await.map(|res| res.map(body::boxed)) }
    });
    let mut run = drive("bare+tls", svc, format!("http://{addr}/"), requests).await;
    run.mode = "bare+tls";
    run
}

/// The mesh on both ends over mutual TLS (STRICT PeerAuthentication, secure naming).
async fn mesh_tls(requests: usize, pki: &Pki) -> Run {
    mesh_over(requests, Some(pki)).await
}

/// Two meshes (the server registers in a file store, the client routes to it), plaintext or,
/// with `pki`, over mutual TLS with STRICT PeerAuthentication.
async fn mesh_over(requests: usize, pki: Option<&Pki>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    if pki.is_some() {
        let loaded = mesh_core::config::load_str(STRICT, None);
        store.apply(loaded.resources).await.unwrap();
    }
    if *WITH_RULES {
        let loaded = mesh_core::config::load_str(RULES, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        store.apply(loaded.resources).await.unwrap();
    }
    let workload = |name: &str, app: &str| {
        Workload::new(name, "default")
            .label("app", app)
            .service_account(app)
    };
    let mut server =
        Mesh::builder(store.clone(), workload("bench-v1", "bench")).metrics(*WITH_METRICS);
    let mut client = Mesh::builder(store, workload("caller-v1", "caller")).metrics(*WITH_METRICS);
    if let Some(pki) = pki {
        server = server.identity(pki.identity("bench"));
        client = client.identity(pki.identity("caller"));
    }
    let server = server.start().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, tower::service_fn(app), std::future::pending())
            .await;
    });
    let client = client.start().await.unwrap();
    client.ready().await;
    let mut changed = client.changed();
    while client
        .snapshot()
        .endpoints("bench.default.svc.cluster.local", None)
        .is_empty()
    {
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .expect("the server registers")
            .unwrap();
    }
    let mode = if pki.is_some() { "mesh+tls" } else { "mesh" };
    let run = drive(
        mode,
        client.http_client(),
        "http://bench:8080/".to_owned(),
        requests,
    )
    .await;
    drop(dir);
    run
}

/// New mutual-TLS connections per second, one after another: the handshake on both ends
/// (the client reads one byte the server writes once its side is done). `mesh` uses the
/// mesh's acceptor and connector (per-handshake credentials, SPIFFE and secure-naming
/// checks); bare uses tokio-rustls with the stock verifiers.
async fn handshakes(n: usize, pki: &Pki, mesh: bool) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_id = pki.identity("bench");
    // Full handshakes on both paths: the mesh never resumes a session (every connection
    // checks the current bundle and identity), so bare does not either (rustls would resume
    // with a TLS 1.3 ticket, skipping both certificate checks).
    let mut bare_server = rustls::ServerConfig::clone(&pki.bare_server());
    bare_server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    bare_server.send_tls13_tickets = 0;
    let bare_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(bare_server));
    let mesh_acceptor = mesh_tower::tls::TlsAcceptor::new(server_id.clone()).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (bare_acceptor, mesh_acceptor) = (bare_acceptor.clone(), mesh_acceptor.clone());
            tokio::spawn(async move {
                if mesh {
                    if let Ok((mut tls, _)) = mesh_acceptor.accept(stream).await {
                        let _ = tls.write_all(b"x").await;
                    }
                } else if let Ok(mut tls) = bare_acceptor.accept(stream).await {
                    let _ = tls.write_all(b"x").await;
                }
            });
        }
    });
    let mut bare_client = rustls::ClientConfig::clone(&pki.bare_client());
    bare_client.resumption = rustls::client::Resumption::disabled();
    let bare_connector = tokio_rustls::TlsConnector::from(Arc::new(bare_client));
    let mesh_connector = mesh_tower::tls::TlsConnector::new(pki.identity("caller"));
    let expected = || {
        mesh_tower::tls::ExpectedIdentities::one_of([
            mesh_core::identity::Identity::in_default_trust_domain("default", "bench").unwrap(),
        ])
    };
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        if mesh {
            let (mut tls, _, _) = mesh_connector.connect(tcp, expected()).await.unwrap();
            tls.read_exact(&mut byte).await.unwrap();
        } else {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = bare_connector.connect(name, tcp).await.unwrap();
            tls.read_exact(&mut byte).await.unwrap();
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu0).as_secs_f64();
    (n as f64 / elapsed, cpu * 1e6 / n as f64)
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test" || a == "--list");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `E2E_REQUESTS=N` overrides the count per run (for instruction counts under valgrind).
    let requests = std::env::var("E2E_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if test_mode { 400 } else { 30_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runs = rt.block_on(async {
        // Alternate, so drift in machine load affects both alike.
        // `E2E_ONLY=mesh` runs one path (for profiling with `perf record`).
        if let Ok(only) = std::env::var("E2E_ONLY") {
            if *HTTP2 && only.contains("tls") {
                eprintln!("e2e: E2E_HTTP2 is for the plaintext paths (bare, mesh, serve, connect)");
                std::process::exit(2);
            }
            let run = match only.as_str() {
                "bare" => bare(requests).await,
                "serve" => serve_only(requests).await,
                "connect" => connect_only(requests).await,
                "bare+tls" => bare_tls(requests, &Pki::new()).await,
                "mesh+tls" => mesh_tls(requests, &Pki::new()).await,
                _ => mesh(requests).await,
            };
            println!(
                "{}: {:.1} CPU us/req, {:.0} req/s",
                run.mode,
                run.cpu_us(),
                run.rps()
            );
            std::process::exit(0);
        }
        if *HTTP2 {
            eprintln!("e2e: E2E_HTTP2 is for profiling one path: set E2E_ONLY too");
            std::process::exit(2);
        }
        let pki = Pki::new();
        let mut runs = Vec::new();
        for _ in 0..if test_mode { 1 } else { ROUNDS } {
            runs.push(bare(requests).await);
            runs.push(mesh(requests).await);
            runs.push(serve_only(requests).await);
            runs.push(connect_only(requests).await);
            runs.push(bare_tls(requests, &pki).await);
            runs.push(mesh_tls(requests, &pki).await);
        }
        let n = if test_mode { 20 } else { 1_000 };
        let hs = [
            handshakes(n, &pki, false).await,
            handshakes(n, &pki, true).await,
        ];
        (runs, hs)
    });
    let (runs, hs) = runs;
    let best = |mode: &str| {
        runs.iter()
            .filter(|r| r.mode == mode)
            .min_by(|a, b| a.cpu_us().total_cmp(&b.cpu_us()))
            .unwrap()
    };
    let modes = ["bare", "mesh", "serve", "connect", "bare+tls", "mesh+tls"];
    println!(
        "e2e loopback, HTTP/1.1, 1 KB responses, {CONCURRENCY} callers, {} requests per run, {} rounds (rows: best run per mode)",
        best("bare").requests,
        runs.len() / modes.len()
    );
    println!(
        "{:<8} {:>9} {:>12} {:>9} {:>9}",
        "path", "req/s", "CPU us/req", "p50 us", "p99 us"
    );
    for mode in modes {
        let r = best(mode);
        println!(
            "{:<8} {:>9.0} {:>12.1} {:>9} {:>9}",
            r.mode,
            r.rps(),
            r.cpu_us(),
            r.p(0.5),
            r.p(0.99)
        );
    }
    println!(
        "(serve: bare client, mesh server; connect: the mesh's connection pools, bare server; +tls: mutual TLS)"
    );
    if !*WITH_METRICS {
        println!("(E2E_METRICS=0: the meshes report no request metrics)");
    }
    // Per round: mesh / bare of the two runs next to each other.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (bare_mode, mesh_mode) in [("bare", "mesh"), ("bare+tls", "mesh+tls")] {
        let pairs: Vec<(&Run, &Run)> = runs
            .chunks(modes.len())
            .filter_map(|round| {
                let of = |mode: &str| round.iter().find(|r| r.mode == mode);
                Some((of(bare_mode)?, of(mesh_mode)?))
            })
            .collect();
        let ratio =
            |f: &dyn Fn(&Run) -> f64| median(pairs.iter().map(|(b, m)| f(m) / f(b)).collect());
        println!(
            "ratio    {:>9.2} {:>12.2} {:>9.2} {:>9.2}   ({mesh_mode} / {bare_mode}, median of {} paired rounds; per round: {})",
            ratio(&|r| r.rps()),
            ratio(&|r| r.cpu_us()),
            ratio(&|r| r.p(0.5) as f64),
            ratio(&|r| r.p(0.99) as f64),
            pairs.len(),
            pairs
                .iter()
                .map(|(b, m)| format!("{:.2}", m.cpu_us() / b.cpu_us()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let [(bare_hs, bare_hs_cpu), (mesh_hs, mesh_hs_cpu)] = hs;
    println!(
        "mutual-TLS handshakes, one after another: bare {bare_hs:.0}/s ({bare_hs_cpu:.0} CPU us each), mesh {mesh_hs:.0}/s ({mesh_hs_cpu:.0} CPU us each), CPU ratio {:.2}",
        mesh_hs_cpu / bare_hs_cpu
    );
    if test_mode {
        println!("test mode: every path answered every request");
    }
}
