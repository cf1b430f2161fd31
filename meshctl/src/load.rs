//! `meshctl load`: a fortio-like load generator that calls through the mesh.
//!
//! The command joins the mesh as a client-only workload (never registered), the way every
//! workload does: a [`Mesh`] on the same store, and its [`Mesh::http_client`]. So the
//! requests get exactly what a meshed caller gets: routing, faults, timeouts, retries, load
//! balancing, mutual TLS (`--ca-dir`), and Envoy's response flags on local replies (`UH`,
//! `UF`, `UO`, `NR`, ...), which the summary counts.
//!
//! - **Callers.** `-c N` callers each send one request at a time, like fortio's connections.
//! - **How many.** `-n N` requests in all, or `-t DURATION` (default 5 s when neither is
//!   given).
//! - **Rate.** `--qps 0` (the default): closed loop, each caller sends its next request as
//!   soon as the previous one is answered. `--qps R`: open loop, request `i` is scheduled at
//!   `start + i / R` across all callers, and its latency counts from its scheduled time, not
//!   from when a caller got to send it, so a slow server is not hidden by callers that fall
//!   behind (no coordinated omission).
//! - **Output.** A progress line on stderr about once a second when stderr is a terminal;
//!   then a summary on stdout: status codes, response flags, transport errors, latency
//!   percentiles (an HDR histogram, microsecond resolution) and requests per second; `-o
//!   json` prints it as one JSON object.
//! - **Exit codes.** 0 once the run completes, whatever the statuses (as fortio); 1 when the
//!   run cannot start (no store, mesh not ready, unreadable CA); 2 for a usage error.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Empty};
use mesh_ca::{
    CertificateAuthority,
    client::{CaClient, LocalCa},
    identity::Identity,
    rotation::{CertManager, CertManagerConfig, WorkloadCert},
};
use mesh_core::duration::Duration as GoDuration;
use mesh_tower::{
    flags::ResponseFlags,
    mesh::{HttpClient, Mesh, Workload},
    tls::{TlsIdentity, watch_credentials},
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};
use tower::ServiceExt;

/// How long a run lasts when neither `-n` nor `-t` is given (fortio's default).
const DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// How late (open loop) a request may be sent before it counts as late.
const LATE: Duration = Duration::from_millis(10);

/// The largest latency the histogram holds, in microseconds (one hour); longer ones are
/// recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Flags of `meshctl load`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The URL to call, as an application in the mesh would (`http://httpbin:8000/get`):
    /// the host is a mesh service or an external host.
    #[arg(value_name = "URL", value_parser = parse_url)]
    url: Uri,

    /// Concurrent callers, each sending one request at a time (fortio's connections).
    #[arg(short = 'c', long = "connections", default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,

    /// Total number of requests (across all callers) [default: run for 5s].
    #[arg(short = 'n', long = "requests", value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// How long to run (`10s`, `1m30s`) instead of a number of requests.
    #[arg(short = 't', long = "duration", value_name = "DURATION", value_parser = parse_positive_duration)]
    duration: Option<GoDuration>,

    /// Requests per second across all callers, scheduled at fixed times (open loop, latency
    /// counted from the scheduled time); 0: as fast as possible (closed loop).
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_qps)]
    qps: f64,

    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// The request method.
    #[arg(short = 'X', long = "method", default_value = "GET", value_name = "METHOD",
          value_parser = parse_method)]
    method: Method,

    /// Give up on a request (status and body) after this long; it counts as an error.
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_positive_duration)]
    timeout: GoDuration,

    /// The output format of the summary.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    output: Format,

    /// The caller's namespace (VirtualService `sourceNamespace`, AuthorizationPolicy
    /// `namespaces`).
    #[arg(long, default_value = "default")]
    namespace: String,

    /// The caller's `app` label (VirtualService `sourceLabels`).
    #[arg(long, default_value = "fortio")]
    app: String,

    /// The caller's service account: its SPIFFE identity with --ca-dir.
    #[arg(long, default_value = "fortio", value_name = "NAME")]
    service_account: String,

    /// A CA directory in Istio's cacerts layout (`bookinfo up` makes
    /// `<config dir>/.mesh-ca`): sign the caller's certificate in process and speak mutual
    /// TLS as the destination's PeerAuthentication requires. Without it, plaintext.
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,

    /// How long to wait for the mesh's configuration (and certificate) before giving up.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_positive_duration)]
    ready_timeout: GoDuration,
}

/// `-o text|json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A summary for a person.
    Text,
    /// One JSON object.
    Json,
}

fn parse_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected e.g. http://httpbin:8000/get"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other}: is not supported; use http:// (the mesh adds mutual TLS itself)"
            ));
        }
        None => return Err("no scheme: expected e.g. http://httpbin:8000/get".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host: expected e.g. http://httpbin:8000/get".to_owned());
    }
    Ok(uri)
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    Ok((name, value))
}

fn parse_method(s: &str) -> Result<Method, String> {
    let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    ok.then(|| Method::from_bytes(s.as_bytes()).ok())
        .flatten()
        .ok_or_else(|| format!("{s:?} is not an HTTP method"))
}

fn parse_qps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(q) if q.is_finite() && q >= 0.0 => Ok(q),
        _ => Err(format!(
            "{s:?} is not a rate: requests per second, 0 or more"
        )),
    }
}

fn parse_positive_duration(s: &str) -> Result<GoDuration, String> {
    let d: GoDuration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(d)
}

/// What one caller measured.
#[derive(Debug)]
struct Stats {
    /// Latency of every completed request (answered or failed), in microseconds.
    latency: Histogram<u64>,
    /// The exact extremes, in microseconds (the histogram rounds to 3 significant digits).
    min_us: u64,
    max_us: u64,
    /// Status code → count.
    codes: BTreeMap<u16, u64>,
    /// Response flags as Envoy prints them (`UO`, `URX,UF`) → count; responses without flags
    /// are not counted here.
    flags: BTreeMap<String, u64>,
    /// Transport errors (no response, timeouts, body read errors) by message → count.
    errors: BTreeMap<String, u64>,
    /// Open loop: requests sent more than [`LATE`] after their scheduled time, because every
    /// caller was busy.
    late: u64,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("cannot create the latency histogram")?,
            min_us: u64::MAX,
            max_us: 0,
            codes: BTreeMap::new(),
            flags: BTreeMap::new(),
            errors: BTreeMap::new(),
            late: 0,
        })
    }

    fn merge(&mut self, other: Stats) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .context("cannot merge latency histograms")?;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.late += other.late;
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
        for (k, v) in other.flags {
            *self.flags.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        Ok(())
    }

    fn record(&mut self, us: u64) {
        let us = us.clamp(1, MAX_LATENCY_US);
        self.latency.saturating_record(us);
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    fn requests(&self) -> u64 {
        self.latency.len()
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The outcome of one request.
enum Outcome {
    /// A response, read to its end.
    Answered { status: u16, flags: ResponseFlags },
    /// No (complete) response.
    Failed(String),
}

/// Counters shared with the progress line.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    not_2xx: AtomicU64,
    errors: AtomicU64,
}

/// What the callers share: the request to send and the schedule.
struct Plan {
    client: HttpClient,
    method: Method,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    start: Instant,
    /// Stop taking requests at this time (`-t`).
    end: Option<Instant>,
    /// Stop after this many requests (`-n`).
    total: Option<u64>,
    /// Requests per second, open loop; `None`: closed loop.
    qps: Option<f64>,
    /// The next request's index.
    next: AtomicU64,
    progress: Progress,
}

impl Plan {
    /// When request `i` is due (open loop); `None` when it is past any representable time.
    fn scheduled(&self, i: u64, qps: f64) -> Option<Instant> {
        let offset = Duration::try_from_secs_f64(i as f64 / qps).ok()?;
        self.start.checked_add(offset)
    }

    async fn send(&self) -> Outcome {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(self.url.clone());
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let req = match builder.body(Empty::<Bytes>::new()) {
            Ok(req) => req,
            Err(e) => return Outcome::Failed(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let res = self
                .client
                .clone()
                .oneshot(req)
                .await
                .map_err(|e| error_text(&*e))?;
            let status = res.status().as_u16();
            let flags = ResponseFlags::of(&res);
            res.into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {}", error_text(&*e)))?;
            Ok::<_, String>(Outcome::Answered { status, flags })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(message)) => Outcome::Failed(message),
            Err(_) => Outcome::Failed(format!(
                "timeout: no complete response within {}",
                GoDuration::from_std(self.timeout)
            )),
        }
    }
}

/// An error and its causes on one line (`a: b: c`).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One caller: one request at a time until the plan is done or `stop` turns true.
async fn caller(plan: Arc<Plan>, mut stop: watch::Receiver<bool>) -> anyhow::Result<Stats> {
    let mut stats = Stats::new()?;
    loop {
        if *stop.borrow() {
            break;
        }
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if plan.total.is_some_and(|n| i >= n) {
            break;
        }
        let now = Instant::now();
        let scheduled = match plan.qps {
            None => now,
            Some(qps) => match plan.scheduled(i, qps) {
                Some(at) => at,
                None => break,
            },
        };
        if plan.end.is_some_and(|end| scheduled >= end) {
            break;
        }
        if scheduled > now {
            let stopped = async {
                // A closed channel (no Ctrl-C handler) never stops the run.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(scheduled) => {}
                () = stopped => break,
            }
        } else if now - scheduled > LATE {
            stats.late += 1;
        }
        let outcome = plan.send().await;
        let latency = scheduled.elapsed();
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        stats.record(us);
        plan.progress.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Answered { status, flags } => {
                *stats.codes.entry(status).or_default() += 1;
                if !flags.is_empty() {
                    *stats.flags.entry(flags.to_string()).or_default() += 1;
                }
                if !(200..300).contains(&status) {
                    plan.progress.not_2xx.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Failed(message) => {
                *stats.errors.entry(message).or_default() += 1;
                plan.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(stats)
}

/// The caller's certificate, signed in process from `dir`; kept alive while the mesh runs.
fn identity(
    dir: &Path,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<(CertManager, mesh_tower::tls::IdentityWatch)> {
    let id = Identity::in_default_trust_domain(namespace, service_account).map_err(|e| {
        anyhow::anyhow!("no SPIFFE identity for {namespace}/{service_account}: {e}")
    })?;
    let ca = CertificateAuthority::load(dir)
        .with_context(|| format!("cannot load the CA from {}", dir.display()))?;
    let trust = ca.trust_bundle_pem().to_owned();
    let client: Arc<dyn CaClient> = Arc::new(LocalCa::new(Arc::new(ca)));
    let manager = CertManager::start(id, client, CertManagerConfig::default())
        .context("cannot start the certificate manager")?;
    let watch = watch_credentials(manager.receiver(), move |cert: &WorkloadCert| {
        TlsIdentity::from_pem(cert.bundle.chain_pem(), cert.key.expose_secret(), &trust)
    });
    Ok((manager, watch))
}

/// Runs `meshctl load`.
pub(crate) async fn run(
    args: Args,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    // The file store would create a missing directory: a mistyped path must not become an
    // empty mesh where every host is unknown.
    if store.is_none()
        && let Some(dir) = dir
        && !dir.is_dir()
    {
        anyhow::bail!(
            "the config dir {} does not exist (the one `bookinfo up` printed?)",
            dir.display()
        );
    }
    let store_handle = crate::require_store(store, dir)?;
    let certs = args
        .ca_dir
        .as_deref()
        .map(|ca| identity(ca, &args.namespace, &args.service_account))
        .transpose()?;
    let workload = Workload::new(
        format!("meshctl-load-{}", std::process::id()),
        &args.namespace,
    )
    .label("app", &args.app)
    .service_account(&args.service_account);
    let mut builder = Mesh::builder(store_handle, workload);
    if let Some((_, watch)) = &certs {
        builder = builder.identity(watch.clone());
    }
    let mesh = builder.start().await.context("cannot start the mesh")?;
    let ready_timeout = args.ready_timeout.as_std();
    if tokio::time::timeout(ready_timeout, mesh.ready())
        .await
        .is_err()
    {
        let status = mesh.status();
        let why = match (&status.store_error, &status.last_error, &certs) {
            (Some(e), _, _) => format!("the config store fails: {e}"),
            (None, Some(findings), _) => {
                format!("the stored configuration is refused:\n{findings}")
            }
            (None, None, Some((manager, _))) => match manager.last_error() {
                Some(e) => format!("no certificate: {e}"),
                None => "no certificate yet".to_owned(),
            },
            (None, None, None) => "no configuration loaded".to_owned(),
        };
        anyhow::bail!(
            "the mesh is not ready after {}: {why}",
            GoDuration::from_std(ready_timeout)
        );
    }

    let duration = match (args.requests, args.duration) {
        (Some(_), _) => None,
        (None, Some(d)) => Some(d.as_std()),
        (None, None) => Some(DEFAULT_DURATION),
    };
    let start = Instant::now();
    let plan = Arc::new(Plan {
        client: mesh.http_client(),
        method: args.method.clone(),
        url: args.url.clone(),
        headers: args.headers.clone(),
        timeout: args.timeout.as_std(),
        start,
        end: duration.and_then(|d| start.checked_add(d)),
        total: args.requests,
        qps: (args.qps > 0.0).then_some(args.qps),
        next: AtomicU64::new(0),
        progress: Progress::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let interrupts = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = writeln!(
                std::io::stderr(),
                "\ninterrupted: finishing the requests in flight (Ctrl-C again to quit now)"
            );
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(plan.clone())));

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        callers.spawn(caller(plan.clone(), stop_rx.clone()));
    }
    let mut stats = Stats::new()?;
    while let Some(joined) = callers.join_next().await {
        let caller_stats = joined.context("a caller failed")??;
        stats.merge(caller_stats)?;
    }
    let elapsed = start.elapsed();
    interrupts.abort();
    if let Some(progress) = progress {
        progress.abort();
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }

    let summary = Summary {
        args: &args,
        stats: &stats,
        elapsed,
    };
    let text = match args.output {
        Format::Json => summary.json().to_string(),
        Format::Text => summary.text(),
    };
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    if certs.is_none()
        && stats
            .flags
            .keys()
            .any(|f| f.contains("UF") || f.contains("UC"))
        && let Some(dir) = dir
        && dir.join(".mesh-ca").join(mesh_ca::files::CA_CERT).exists()
    {
        let _ = writeln!(
            std::io::stderr(),
            "hint: connections failed (UF/UC); if the destination requires mutual TLS, pass --ca-dir {}",
            dir.join(".mesh-ca").display()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints a progress line on stderr about once a second, overwriting the previous one.
async fn show_progress(plan: Arc<Plan>) {
    let mut tick =
        tokio::time::interval_at(plan.start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let secs = plan.start.elapsed().as_secs_f64();
        let done = plan.progress.done.load(Ordering::Relaxed);
        let of = plan.total.map_or_else(String::new, |n| format!("/{n}"));
        let rate = done as f64 / secs.max(f64::EPSILON);
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{secs:5.1}s  {done}{of} requests  {rate:.1}/s  non-2xx {}  errors {}",
            plan.progress.not_2xx.load(Ordering::Relaxed),
            plan.progress.errors.load(Ordering::Relaxed),
        );
        let _ = std::io::stderr().flush();
    }
}

/// The end-of-run report.
struct Summary<'a> {
    args: &'a Args,
    stats: &'a Stats,
    elapsed: Duration,
}

/// Percentiles reported, as (label, quantile).
const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

impl Summary<'_> {
    fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            let n = self.stats.requests() as f64;
            n / secs
        } else {
            0.0
        }
    }

    /// `(label, milliseconds)` for each reported percentile; zeros without samples.
    fn percentiles(&self) -> Vec<(&'static str, f64)> {
        let h = &self.stats.latency;
        PERCENTILES
            .iter()
            .map(|&(label, q)| {
                let us = if h.is_empty() {
                    0
                } else if q >= 1.0 {
                    self.stats.max_us
                } else {
                    // The histogram's bucket may end past the largest value seen.
                    h.value_at_quantile(q).min(self.stats.max_us)
                };
                (label, us_to_ms(us))
            })
            .collect()
    }

    fn json(&self) -> Value {
        let s = self.stats;
        let codes: serde_json::Map<String, Value> = s
            .codes
            .iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect();
        let flags: serde_json::Map<String, Value> =
            s.flags.iter().map(|(f, n)| (f.clone(), json!(n))).collect();
        let mut latency: serde_json::Map<String, Value> = self
            .percentiles()
            .into_iter()
            .map(|(label, ms)| (label.to_owned(), json!(ms)))
            .collect();
        let (min, mean) = if s.latency.is_empty() {
            (0.0, 0.0)
        } else {
            (us_to_ms(s.min_us), round3(s.latency.mean() / 1000.0))
        };
        latency.insert("min".to_owned(), json!(min));
        latency.insert("mean".to_owned(), json!(mean));
        json!({
            "url": self.args.url.to_string(),
            "method": self.args.method.as_str(),
            "connections": self.args.connections,
            "qps": self.args.qps,
            "requests": s.requests(),
            "duration_s": round3(self.elapsed.as_secs_f64()),
            "rps": round3(self.rps()),
            "codes": codes,
            "flags": flags,
            "errors": s.error_count(),
            "late": s.late,
            "error_messages": s.errors,
            "latency_ms": latency,
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let s = self.stats;
        let n = s.requests();
        let pct = |k: u64| {
            if n == 0 {
                0.0
            } else {
                k as f64 * 100.0 / n as f64
            }
        };
        let mode = if self.args.qps > 0.0 {
            format!("{} requests/s scheduled", self.args.qps)
        } else {
            "as fast as possible".to_owned()
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {}: {} callers, {mode}",
            self.args.method, self.args.url, self.args.connections
        );
        let _ = writeln!(
            out,
            "{n} requests in {:.3} s: {:.1} requests/s",
            self.elapsed.as_secs_f64(),
            self.rps()
        );
        for (code, k) in &s.codes {
            let _ = writeln!(out, "Code {code} : {k} ({:.1} %)", pct(*k));
        }
        let answered: u64 = s.codes.values().sum();
        let flagged: u64 = s.flags.values().sum();
        if s.flags.is_empty() {
            let _ = writeln!(out, "Response flags: none");
        } else {
            let _ = writeln!(out, "Response flags:");
            for (flag, k) in &s.flags {
                let _ = writeln!(out, "  {flag:<8} {k} ({:.1} %)", pct(*k));
            }
            let none = answered.saturating_sub(flagged);
            if none > 0 {
                let _ = writeln!(out, "  {:<8} {none} ({:.1} %)", "-", pct(none));
            }
        }
        let errors = s.error_count();
        if errors > 0 {
            let _ = writeln!(out, "Errors (no response): {errors} ({:.1} %)", pct(errors));
            for (message, k) in &s.errors {
                let _ = writeln!(out, "  {k} × {message}");
            }
        }
        if s.late > 0 {
            let _ = writeln!(
                out,
                "Sent late: {} ({:.1} %): every caller was busy at the scheduled time; latency counts from the schedule (raise -c to reach --qps)",
                s.late,
                pct(s.late)
            );
        }
        let mut line = "Latency (ms):".to_owned();
        for (label, ms) in self.percentiles() {
            let _ = write!(line, " {label} {ms}");
        }
        if !s.latency.is_empty() {
            let _ = write!(line, " (mean {})", round3(s.latency.mean() / 1000.0));
        }
        out.push_str(&line);
        out
    }
}

/// Microseconds as milliseconds, to the microsecond.
fn us_to_ms(us: u64) -> f64 {
    let ms = us as f64 / 1000.0;
    round3(ms)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("http://httpbin:8000/get").is_ok());
        assert!(parse_url("http://httpbin/status/503?x=1").is_ok());
        assert!(
            parse_url("https://httpbin:8000/")
                .unwrap_err()
                .contains("http://")
        );
        assert!(parse_url("httpbin:8000/get").is_err());
        assert!(parse_url("/get").unwrap_err().contains("no scheme"));
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("").is_err());
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Thing: a b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-thing", "a b"));
        let (n, v) = parse_header("end-user:jason").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("end-user", "jason"));
        assert!(parse_header("Cookie: a=b: c").is_ok());
        assert!(
            parse_header("no colon")
                .unwrap_err()
                .contains("Name: value")
        );
        assert!(parse_header(": v").is_err());
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_header("x: a\nb").is_err());
    }

    #[test]
    fn methods_rates_and_durations() {
        assert_eq!(parse_method("POST"), Ok(Method::POST));
        assert_eq!(parse_method("PURGE").unwrap().as_str(), "PURGE");
        assert!(parse_method("").is_err());
        assert!(parse_method("GET /").is_err());
        assert_eq!(parse_qps("0"), Ok(0.0));
        assert_eq!(parse_qps("2.5"), Ok(2.5));
        for bad in ["-1", "inf", "NaN", "x", ""] {
            assert!(parse_qps(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_positive_duration("1m30s").map(|d| d.as_std()),
            Ok(Duration::from_secs(90))
        );
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("10").is_err());
    }

    fn args(argv: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let argv = std::iter::once("load").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn summary_counts_codes_flags_and_errors() {
        let args = args(&["-c", "3", "http://httpbin:8000/get"]);
        assert_eq!(args.connections, 3);
        let mut stats = Stats::new().unwrap();
        for (i, us) in (1..=10u64).map(|ms| ms * 1000).enumerate() {
            stats.record(us);
            if i < 6 {
                *stats.codes.entry(200).or_default() += 1;
            } else if i < 9 {
                *stats.codes.entry(503).or_default() += 1;
                let mut flags = ResponseFlags::default();
                flags.insert(mesh_tower::flags::ResponseFlag::UpstreamOverflow);
                *stats.flags.entry(flags.to_string()).or_default() += 1;
            } else {
                *stats.errors.entry("timeout".to_owned()).or_default() += 1;
            }
        }
        stats.late = 2;
        let summary = Summary {
            args: &args,
            stats: &stats,
            elapsed: Duration::from_secs(2),
        };
        let j = summary.json();
        assert_eq!(j["requests"], 10);
        assert_eq!(j["codes"], json!({"200": 6, "503": 3}));
        assert_eq!(j["flags"], json!({"UO": 3}));
        assert_eq!(j["errors"], 1);
        assert_eq!(j["rps"], 5.0);
        assert_eq!(j["duration_s"], 2.0);
        assert_eq!(j["latency_ms"]["max"], 10.0);
        assert_eq!(j["latency_ms"]["min"], 1.0);
        let p50 = j["latency_ms"]["p50"].as_f64().unwrap();
        assert!((5.0..=5.01).contains(&p50), "{j}");
        for p in ["p50", "p75", "p90", "p99", "p99.9"] {
            assert!(
                j["latency_ms"][p].as_f64() <= j["latency_ms"]["max"].as_f64(),
                "{j}"
            );
        }
        assert_eq!(j["late"], 2);
        let text = summary.text();
        for line in [
            "Code 200 : 6 (60.0 %)",
            "Code 503 : 3 (30.0 %)",
            "UO       3 (30.0 %)",
            "-        6 (60.0 %)",
            "Errors (no response): 1 (10.0 %)",
            "1 × timeout",
            "10 requests in 2.000 s: 5.0 requests/s",
            "Sent late: 2 (20.0 %)",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn empty_run_summarizes_to_zeros() {
        let args = args(&["-n", "1", "http://httpbin:8000/get"]);
        let stats = Stats::new().unwrap();
        let summary = Summary {
            args: &args,
            stats: &stats,
            elapsed: Duration::ZERO,
        };
        let j = summary.json();
        assert_eq!(j["requests"], 0);
        assert_eq!(j["rps"], 0.0);
        assert_eq!(j["latency_ms"]["p99"], 0.0);
        assert!(summary.text().contains("0 requests"));
    }

    #[test]
    fn error_text_joins_causes_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error, &'static str);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.1)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(
            std::io::Error::other("connection refused"),
            "connect failed",
        );
        assert_eq!(error_text(&e), "connect failed: connection refused");
        let e = Outer(std::io::Error::other("refused"), "connect failed: refused");
        assert_eq!(error_text(&e), "connect failed: refused");
    }
}
