//! The load generator process: the same driver for every path, with the path's client
//! library in the same process (bare hyper, hyper + rustls, or the mesh's `http_client()`).
//!
//! Protocol with the parent: after warm-up it prints `ready` and waits for a line on stdin;
//! it then measures, prints `end` the moment the measured interval is over (the parent reads
//! every process's CPU time at `ready` and `end`, and the peak RSS at `end`), waits for a
//! second line and prints `result {json}`.
//!
//! - Saturation: `--connections` callers in a closed loop, each sending its next request as
//!   soon as the previous answer's body is read; latency from send to the end of the body.
//! - Rate (`--rate R`): an open loop. A pacing thread (not a Tokio timer, whose 1 ms
//!   granularity would dominate the latencies measured) wakes at each request's intended
//!   send time `start + i / R` and spawns the request; latency is measured from the
//!   intended time, not the actual one, so a stalled path is charged for the requests it
//!   delayed (no coordinated omission, as wrk2). As in wrk2, the connections are fixed
//!   (`--connections` requests on the wire at most): a request waits for a free one rather
//!   than opening a new connection (an unbounded pool turns a short stall into a storm of
//!   TLS handshakes), and the wait counts in its latency.

use std::{
    future::Future,
    io::{BufRead, Write},
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http::Version;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use mesh_core::store::{FileStore, Store};
use mesh_tower::mesh::{Mesh, Workload};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::{BODY_LEN, Http, MESH_HOST, parse_duration, pki, serve};

/// The client library in the load generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientKind {
    /// hyper-util's legacy client, plaintext (bare and sidecar paths).
    Plain,
    /// hyper-util's client over tokio-rustls with a client certificate.
    Tls,
    /// The mesh's `http_client()`, plaintext.
    Mesh,
    /// The mesh's `http_client()` with the caller's certificate (auto mTLS).
    MeshMtls,
}

impl ClientKind {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
            Self::Mesh => "mesh",
            Self::MeshMtls => "mesh-mtls",
        }
    }
}

/// `compare load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    #[arg(long)]
    kind: ClientKind,
    /// The server (or client-side proxy) address; the mesh clients find the server in the
    /// store instead.
    #[arg(long)]
    target: std::net::SocketAddr,
    #[arg(long)]
    store: PathBuf,
    #[arg(long)]
    pki: Option<PathBuf>,
    #[arg(long)]
    http: Http,
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, value_parser = parse_duration)]
    warmup: Duration,
    /// Saturation: concurrent callers; rate: the most requests in flight on the wire
    /// (HTTP/1.1: connections), the others wait for one to finish, as with wrk2's fixed
    /// connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<u32>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// What the load generator reports (`result {json}`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LoadResult {
    /// Requests answered with 200 and the full body in the measured interval.
    pub(crate) requests: u64,
    /// Requests that failed (error, other status, short body, or dropped because too many
    /// were in flight in rate mode).
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Length of the measured interval in seconds.
    pub(crate) elapsed_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
}

type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// Sends one request and checks its answer.
type Call = Arc<dyn Fn() -> CallFuture + Send + Sync>;

/// At most this many requests in flight in rate mode; beyond, requests count as errors.
const MAX_IN_FLIGHT: u64 = 4096;

fn check(status: http::StatusCode, len: usize) -> Result<(), String> {
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if len != BODY_LEN {
        return Err(format!("body of {len} bytes instead of {BODY_LEN}"));
    }
    Ok(())
}

fn version(http: Http) -> Version {
    match http {
        Http::H1 => Version::HTTP_11,
        Http::H2 => Version::HTTP_2,
    }
}

/// A `Call` over any HTTP client service: hyper-util's, or the mesh's `HttpClient`.
fn service_call<S, B>(client: S, uri: http::Uri, http: Http) -> Call
where
    S: tower::Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<mesh_core::BoxError>,
    B: hyper::body::Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Display,
{
    Arc::new(move || {
        let client = client.clone();
        let uri = uri.clone();
        Box::pin(async move {
            let mut req = http::Request::new(Empty::new());
            *req.uri_mut() = uri;
            *req.version_mut() = version(http);
            let res = client.oneshot(req).await.map_err(|e| chain(&*e.into()))?;
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            check(status, body.to_bytes().len())
        })
    })
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn build_call(args: &LoadArgs) -> anyhow::Result<(Call, Option<Mesh>)> {
    let h2 = args.http == Http::H2;
    let pki_dir = || args.pki.as_deref().context("--pki is required for TLS");
    Ok(match args.kind {
        ClientKind::Plain => {
            let client = Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build_http::<Empty<Bytes>>();
            let uri = format!("http://{}/", args.target).parse()?;
            (service_call(client, uri, args.http), None)
        }
        ClientKind::Tls => {
            let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
            let config = pki::bare_client(pki_dir()?, alpn)?;
            let connector =
                benches::tls::BareTlsConnector(tokio_rustls::TlsConnector::from(config));
            let client = Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build::<_, Empty<Bytes>>(connector);
            let uri = format!("http://{}/", args.target).parse()?;
            (service_call(client, uri, args.http), None)
        }
        ClientKind::Mesh | ClientKind::MeshMtls => {
            let store: Arc<dyn Store> = Arc::new(FileStore::new(&args.store));
            let workload = Workload::new("caller-v1", "default")
                .label("app", "caller")
                .service_account("caller");
            let mut builder = Mesh::builder(store, workload);
            if args.kind == ClientKind::MeshMtls {
                builder = builder.identity(serve::mesh_identity(pki_dir()?, "caller")?);
            }
            let mesh = builder
                .start()
                .await
                .context("starting the client's mesh")?;
            mesh.ready().await;
            let host = format!("{MESH_HOST}.default.svc.cluster.local");
            let mut changed = mesh.changed();
            let deadline = Instant::now() + Duration::from_secs(20);
            while mesh.snapshot().endpoints(&host, None).is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, changed.changed()).await.is_err() {
                    bail!("the server did not register {host} in the store within 20 s");
                }
            }
            let uri: http::Uri = format!("http://{MESH_HOST}:8080/").parse()?;
            (service_call(mesh.http_client(), uri, args.http), Some(mesh))
        }
    })
}

/// Counters shared by the callers.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn outcome(&self, r: Result<(), String>) -> bool {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert(e);
                false
            }
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.max(1));
}

/// Closed loop: `callers` tasks until `stop`.
async fn closed_loop(
    call: &Call,
    callers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Histogram<u64> {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            let stop = stop.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if tally.outcome(call().await) {
                        record(&mut h, t.elapsed());
                    }
                }
                h
            })
        })
        .collect();
    let mut all = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    all
}

/// Open loop at `rate` requests per second for `duration`.
async fn open_loop(
    call: &Call,
    connections: usize,
    rate: u32,
    duration: Duration,
    tally: Arc<Tally>,
) -> Histogram<u64> {
    let hist = Arc::new(Mutex::new(histogram()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let wire = Arc::new(tokio::sync::Semaphore::new(connections));
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs(1) / rate;
    let pacer = {
        let (call, hist, in_flight, tally, wire) = (
            call.clone(),
            hist.clone(),
            in_flight.clone(),
            tally.clone(),
            wire.clone(),
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..total {
                let intended = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    tally.outcome(Err(format!(
                        "more than {MAX_IN_FLIGHT} requests in flight: the path cannot keep up with {rate} req/s"
                    )));
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (call, hist, in_flight, tally, wire) = (
                    call.clone(),
                    hist.clone(),
                    in_flight.clone(),
                    tally.clone(),
                    wire.clone(),
                );
                handle.spawn(async move {
                    // Waiting for a free connection counts in the latency.
                    let ok = match wire.acquire().await {
                        Ok(_permit) => tally.outcome(call().await),
                        Err(_) => false,
                    };
                    let latency = intended.elapsed();
                    if ok {
                        let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
                        record(&mut h, latency);
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })
    };
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    // Let the last requests finish (bounded: a stuck request counts as missing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    hist.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `compare load`.
pub(crate) fn main(args: LoadArgs) -> anyhow::Result<()> {
    serve::runtime(args.threads)?.block_on(load(args))
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Waits for the parent's next line on stdin.
async fn wait_line(what: &'static str) -> anyhow::Result<()> {
    let n = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)
    })
    .await
    .context(what)?
    .context(what)?;
    if n == 0 {
        bail!("{what}: the parent closed stdin");
    }
    Ok(())
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let (call, _mesh) = build_call(&args).await?;
    // Warm-up: twice as many callers as measured (at least 8), so connections, pools and
    // caches exist; for the pool effect of exactly one idle connection per caller see the
    // e2e bench's notes.
    let callers = args.connections.max(4) * 2;
    let stop = Arc::new(AtomicBool::new(false));
    let warm_tally = Arc::new(Tally::default());
    {
        let stop = stop.clone();
        let warmup = args.warmup;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    closed_loop(&call, callers, stop, warm_tally.clone()).await;
    if warm_tally.ok.load(Ordering::Relaxed) == 0 {
        let first = warm_tally
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        bail!(
            "no request succeeded during the warm-up ({} failed; first error: {})",
            warm_tally.errors.load(Ordering::Relaxed),
            first.unwrap_or_else(|| "none".to_owned())
        );
    }
    say("ready")?;
    wait_line("waiting for `go`").await?;

    let tally = Arc::new(Tally::default());
    let t0 = Instant::now();
    let connections = args.connections.max(1);
    let hist = match args.rate {
        Some(rate) => open_loop(&call, connections, rate, args.duration, tally.clone()).await,
        None => {
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = stop.clone();
                let duration = args.duration;
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    stop.store(true, Ordering::Relaxed);
                });
            }
            closed_loop(&call, connections, stop, tally.clone()).await
        }
    };
    let elapsed = t0.elapsed();
    say("end")?;
    // Stay alive (and readable in /proc) until the parent has read this process's figures.
    wait_line("waiting for `report`").await?;
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let result = LoadResult {
        requests: tally.ok.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        first_error,
        elapsed_s: elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
    };
    say(&format!("result {}", serde_json::to_string(&result)?))?;
    Ok(())
}
