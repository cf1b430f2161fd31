//! The comparison bench: command line, orchestration of one run, and the pieces it uses.

mod haproxy;
mod load;
mod pki;
mod procfs;
mod report;
mod serve;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Size of every response body.
pub(crate) const BODY_LEN: usize = 1024;
/// The mesh host the mesh paths call (its WorkloadEntry is registered by the server).
pub(crate) const MESH_HOST: &str = "bench";

/// `compare`: the mesh against bare hyper and two-hop HAProxy sidecars, on loopback.
#[derive(Debug, Parser)]
#[command(
    name = "compare",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: one path's server process.
    #[command(hide = true)]
    Serve(serve::ServeArgs),
    /// Internal: the load generator process.
    #[command(hide = true)]
    Load(load::LoadArgs),
}

/// One comparison run.
#[derive(Debug, Args)]
struct RunArgs {
    /// A short run (under two minutes): 1.5 s per measurement, 0.3 s warm-up.
    #[arg(long)]
    quick: bool,
    /// Write the results as a JSON list of objects to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a chart of the results (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The paths to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bare,mesh,bare-tls,mesh-mtls,sidecar,sidecar-mtls"
    )]
    paths: Vec<PathKind>,
    /// The modes to run: `saturation` (closed loop on fixed connections) and `rate` (open
    /// loop at each of `--rates`).
    #[arg(long, value_delimiter = ',', default_value = "saturation,rate")]
    modes: Vec<ModeKind>,
    /// Measured time per path and mode (`10s`, `1500ms`); default 10s, 1.5s with `--quick`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before each measurement (not measured); default 2s, 300ms with `--quick`.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Concurrent callers in saturation mode (HTTP/1.1: one connection each; HTTP/2: streams
    /// on one connection); in rate mode the most requests on the wire at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests per second in rate mode.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// HTTP version: `1`, `2` or `both`.
    #[arg(long, default_value = "both")]
    http: HttpChoice,
    /// Rounds: every measurement is repeated this many times, each round running all paths
    /// of an HTTP version and mode back to back; the figures reported are the medians
    /// (peak RSS: the largest). Default 3, 1 with `--quick`.
    #[arg(long)]
    rounds: Option<usize>,
    /// Tokio worker threads of the client and server processes.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Fail instead of skipping the sidecar paths when HAProxy is not installed.
    #[arg(long)]
    require_sidecar: bool,
    /// The HAProxy executable.
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
}

/// The paths compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathKind {
    /// Bare hyper client → bare hyper server.
    Bare,
    /// The mesh on both ends, plaintext, full stack.
    Mesh,
    /// Bare hyper + tokio-rustls on both ends, mutual TLS.
    BareTls,
    /// The mesh on both ends with STRICT mutual TLS.
    MeshMtls,
    /// Bare client → HAProxy → HAProxy → bare server, plaintext.
    Sidecar,
    /// Bare client → HAProxy → (mutual TLS) → HAProxy → bare server.
    SidecarMtls,
}

impl PathKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Mesh => "mesh",
            Self::BareTls => "bare-tls",
            Self::MeshMtls => "mesh-mtls",
            Self::Sidecar => "sidecar",
            Self::SidecarMtls => "sidecar-mtls",
        }
    }

    fn is_sidecar(self) -> bool {
        matches!(self, Self::Sidecar | Self::SidecarMtls)
    }

    /// The server process's kind and the client's kind.
    fn roles(self) -> (serve::ServerKind, load::ClientKind) {
        use load::ClientKind as C;
        use serve::ServerKind as S;
        match self {
            Self::Bare | Self::Sidecar | Self::SidecarMtls => (S::Bare, C::Plain),
            Self::Mesh => (S::Mesh, C::Mesh),
            Self::BareTls => (S::BareTls, C::Tls),
            Self::MeshMtls => (S::MeshMtls, C::MeshMtls),
        }
    }
}

/// Modes on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeKind {
    Saturation,
    Rate,
}

/// `--http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HttpChoice {
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
    Both,
}

/// The HTTP version of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum Http {
    /// HTTP/1.1.
    #[value(name = "1")]
    #[serde(rename = "1.1")]
    H1,
    /// HTTP/2 (prior knowledge in plaintext, ALPN `h2` over TLS).
    #[value(name = "2")]
    #[serde(rename = "2")]
    H2,
}

impl Http {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::H1 => "HTTP/1.1",
            Self::H2 => "HTTP/2",
        }
    }
}

/// One measurement's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Saturation { connections: usize },
    Rate { rps: u32 },
}

impl Mode {
    pub(crate) fn name(self) -> String {
        match self {
            Self::Saturation { .. } => "saturation".to_owned(),
            Self::Rate { rps } => format!("rate-{rps}"),
        }
    }
}

/// Parses a Go-style duration as Istio writes them (`10s`, `1500ms`, `1m30s`), or a plain
/// number of seconds; it must be more than zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => Duration::ZERO,
        Err(_) => s
            .parse::<mesh_core::duration::Duration>()
            .map_err(|e| format!("`{s}`: {e} (e.g. 10s, 500ms, 1m30s)"))?
            .as_std(),
    };
    if d.is_zero() {
        return Err(format!("`{s}`: must be more than zero"));
    }
    Ok(d)
}

/// Entry point of the binary.
pub(crate) fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Some(Cmd::Serve(args)) => serve::main(args),
        Some(Cmd::Load(args)) => load::main(args),
        None => run(cli.run),
    }
}

/// What one process of a path cost over the measured interval.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProcessFigures {
    /// `client` (load generator + client library), `server`, `proxy-out`, `proxy-in`.
    pub(crate) role: &'static str,
    /// CPU (user + system) over the measured interval, per request, in µs.
    pub(crate) cpu_us_per_req: f64,
    /// Peak resident set (VmHWM) at the end of the measurement, in KiB.
    pub(crate) max_rss_kb: u64,
}

/// One path in one mode: the figures of one measurement.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) path: PathKind,
    pub(crate) http: Http,
    pub(crate) mode: String,
    /// Measurements this row is the median of.
    pub(crate) rounds: usize,
    /// Saturation: callers; rate: the most requests on the wire at once.
    pub(crate) connections: usize,
    /// Rate mode: the offered rate; saturation: 0.
    pub(crate) target_rps: u32,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    /// CPU of all the path's processes per request, µs.
    pub(crate) cpu_us_per_req: f64,
    /// The largest peak RSS of the path's processes, KiB.
    pub(crate) max_rss_kb: u64,
    /// Sum of the peak RSS of the path's processes, KiB.
    pub(crate) total_rss_kb: u64,
    pub(crate) processes: Vec<ProcessFigures>,
    /// Every figure divided by bare hyper's in the same HTTP version and mode.
    pub(crate) ratio_to_bare: Option<report::Ratios>,
    /// mTLS paths: every figure divided by bare hyper + rustls's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_to_bare_tls: Option<report::Ratios>,
}

/// Child processes that are killed when dropped.
struct Procs {
    children: Vec<(&'static str, Child)>,
}

impl Procs {
    fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children.iter().map(|(r, c)| (*r, c.id())).collect()
    }

    /// Fails if one of the processes has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (role, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("the {role} process exited early ({status}); see its messages above");
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child's stdout, read line by line on a thread of its own, so that waiting for a line
/// can time out (a blocking read cannot). The thread drains the pipe until the child closes
/// it, so the child never blocks or dies writing.
struct ChildLines(mpsc::Receiver<std::io::Result<String>>);

impl ChildLines {
    fn new(stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(line);
            }
        });
        Self(rx)
    }
}

/// Waits for a line of a child's stdout that starts with `prefix`; returns the rest.
fn expect_line(
    out: &ChildLines,
    role: &str,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match out.0.recv_timeout(left) {
            Ok(line) => line.with_context(|| format!("reading the {role} process's output"))?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the {role} process did not say `{prefix}` within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the {role} process exited before saying `{prefix}`; see its messages above")
            }
        };
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Ok(rest.trim().to_owned());
        }
    }
}

/// The settings one measurement needs.
struct Plan<'a> {
    args: &'a RunArgs,
    exe: PathBuf,
    duration: Duration,
    warmup: Duration,
    pki: Option<&'a pki::PkiFiles>,
    rounds: usize,
    haproxy: Option<&'a haproxy::HaProxy>,
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let duration = args
        .duration
        .unwrap_or(Duration::from_millis(if args.quick {
            1500
        } else {
            10_000
        }));
    let warmup = args
        .warmup
        .unwrap_or(Duration::from_millis(if args.quick { 300 } else { 2000 }));
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.rates.contains(&0) {
        bail!("--rates must be more than zero");
    }
    let exe = std::env::current_exe().context("finding this executable to re-run it")?;
    let work = tempfile::tempdir().context("creating a temporary directory")?;

    let mut paths = Vec::new();
    for p in &args.paths {
        if !paths.contains(p) {
            paths.push(*p);
        }
    }
    let haproxy = if paths.iter().any(|p| p.is_sidecar()) {
        match haproxy::HaProxy::find(&args.haproxy) {
            Ok(h) => {
                eprintln!("compare: sidecars: {}", h.version);
                Some(h)
            }
            Err(e) if args.require_sidecar => return Err(e),
            Err(e) => {
                eprintln!(
                    "compare: skipping the sidecar paths: {e:#} (install the Debian package `haproxy`: apt-get install -y haproxy)"
                );
                paths.retain(|p| !p.is_sidecar());
                None
            }
        }
    } else {
        None
    };
    let needs_pki = paths.iter().any(|p| {
        matches!(
            p,
            PathKind::BareTls | PathKind::MeshMtls | PathKind::SidecarMtls
        )
    });
    let pki = if needs_pki {
        Some(pki::PkiFiles::write(&work.path().join("pki"))?)
    } else {
        None
    };
    let versions: &[Http] = match args.http {
        HttpChoice::One => &[Http::H1],
        HttpChoice::Two => &[Http::H2],
        HttpChoice::Both => &[Http::H1, Http::H2],
    };
    let mut modes = Vec::new();
    if args.modes.contains(&ModeKind::Saturation) {
        modes.push(Mode::Saturation {
            connections: args.connections,
        });
    }
    if args.modes.contains(&ModeKind::Rate) {
        modes.extend(args.rates.iter().map(|&rps| Mode::Rate { rps }));
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let plan = Plan {
        args: &args,
        exe,
        duration,
        warmup,
        pki: pki.as_ref(),
        rounds,
        haproxy: haproxy.as_ref(),
    };
    eprintln!(
        "compare: {} paths × {} HTTP versions × {} modes, {duration:?} each after {warmup:?} of warm-up",
        paths.len(),
        versions.len(),
        modes.len()
    );
    let total = rounds * versions.len() * modes.len() * paths.len();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut n = 0;
    for round in 1..=rounds {
        for &http in versions {
            for &mode in &modes {
                for &path in &paths {
                    n += 1;
                    let label = format!("{} {} {}", path.name(), http.label(), mode.name());
                    eprint!("compare: [{n}/{total}, round {round}] {label} ... ");
                    let dir = work.path().join(format!("run-{n}"));
                    match measure(&plan, path, http, mode, &dir) {
                        Ok(row) => {
                            eprintln!(
                                "{:.0} req/s, p50 {} µs, p99 {} µs, {:.1} CPU µs/req{}",
                                row.rps,
                                row.p50_us,
                                row.p99_us,
                                row.cpu_us_per_req,
                                if row.errors > 0 {
                                    format!(", {} errors", row.errors)
                                } else {
                                    String::new()
                                }
                            );
                            rows.push(row);
                        }
                        Err(e) => {
                            eprintln!("FAILED: {e:#}");
                            failures.push(format!("round {round}, {label}: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    let mut rows = report::medians(rows);
    report::add_ratios(&mut rows);
    let table = report::table(&rows, &plan_summary(&plan, &modes));
    print!("{table}");
    if let Some(file) = &args.json {
        let json = serde_json::to_string_pretty(&rows)?;
        std::fs::write(file, json + "\n")
            .with_context(|| format!("writing the JSON to {}", file.display()))?;
        eprintln!("compare: wrote {}", file.display());
    }
    if let Some(file) = &args.svg {
        std::fs::write(file, report::svg(&rows))
            .with_context(|| format!("writing the chart to {}", file.display()))?;
        eprintln!("compare: wrote {}", file.display());
    }
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

fn plan_summary(plan: &Plan<'_>, modes: &[Mode]) -> String {
    format!(
        "{} round(s), medians; {} per measurement after {} warm-up; saturation: {} callers; rates: {}; {} Tokio worker threads per Rust process; HAProxy nbthread 1",
        plan.rounds,
        humanize(plan.duration),
        humanize(plan.warmup),
        plan.args.connections,
        modes
            .iter()
            .filter_map(|m| match m {
                Mode::Rate { rps } => Some(rps.to_string()),
                Mode::Saturation { .. } => None,
            })
            .collect::<Vec<_>>()
            .join(", "),
        plan.args.threads,
    )
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Starts a path's processes, measures one mode, stops them.
fn measure(
    plan: &Plan<'_>,
    path: PathKind,
    http: Http,
    mode: Mode,
    dir: &Path,
) -> anyhow::Result<Row> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (server_kind, client_kind) = path.roles();
    let store = dir.join("store");
    if matches!(path, PathKind::Mesh | PathKind::MeshMtls) {
        serve::write_mesh_config(&store, path == PathKind::MeshMtls)?;
    }
    let mut procs = Procs {
        children: Vec::new(),
    };
    let pki_dir = plan.pki.map(|p| p.dir.clone());

    // The server.
    let mut server = Command::new(&plan.exe);
    server
        .arg("serve")
        .arg("--kind")
        .arg(server_kind.arg())
        .arg("--store")
        .arg(&store)
        .arg("--threads")
        .arg(plan.args.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(p) = &pki_dir {
        server.arg("--pki").arg(p);
    }
    let mut child = server.spawn().context("starting the server process")?;
    let server_out = ChildLines::new(child.stdout.take().context("server stdout")?);
    procs.children.push(("server", child));
    let addr: SocketAddr =
        expect_line(&server_out, "server", "listening", Duration::from_secs(30))?
            .parse()
            .context("the server's address")?;

    // The proxies of the sidecar paths.
    let target = if path.is_sidecar() {
        let haproxy = plan.haproxy.context("HAProxy is not available")?;
        let pki = if path == PathKind::SidecarMtls {
            Some(
                plan.pki
                    .context("the sidecar-mtls path needs certificates")?,
            )
        } else {
            None
        };
        let (front, children) = haproxy.start_pair(dir, addr, http, pki)?;
        procs.children.extend(children);
        front
    } else {
        addr
    };

    // The load generator (with the client library in it).
    let mut load = Command::new(&plan.exe);
    load.arg("load")
        .arg("--kind")
        .arg(client_kind.arg())
        .arg("--target")
        .arg(target.to_string())
        .arg("--store")
        .arg(&store)
        .arg("--http")
        .arg(match http {
            Http::H1 => "1",
            Http::H2 => "2",
        })
        .arg("--duration")
        .arg(format!("{}ms", plan.duration.as_millis()))
        .arg("--warmup")
        .arg(format!("{}ms", plan.warmup.as_millis()))
        .arg("--threads")
        .arg(plan.args.threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    load.arg("--connections")
        .arg(plan.args.connections.to_string());
    if let Mode::Rate { rps } = mode {
        load.arg("--rate").arg(rps.to_string());
    }
    if let Some(p) = &pki_dir {
        load.arg("--pki").arg(p);
    }
    let mut child = load.spawn().context("starting the load generator")?;
    let mut load_in: ChildStdin = child.stdin.take().context("load generator stdin")?;
    let load_out = ChildLines::new(child.stdout.take().context("load generator stdout")?);
    procs.children.push(("client", child));

    expect_line(&load_out, "client", "ready", Duration::from_secs(60))?;
    procs.check_alive()?;
    let pids = procs.pids();
    let before = pids
        .iter()
        .map(|(role, pid)| procfs::cpu_time(*pid).with_context(|| format!("the {role} process")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    writeln!(load_in, "go").context("starting the measurement")?;
    load_in.flush()?;
    let budget = plan.duration * 3 + Duration::from_secs(30);
    expect_line(&load_out, "client", "end", budget)?;
    procs.check_alive()?;
    let after = pids
        .iter()
        .map(|(role, pid)| procfs::cpu_time(*pid).with_context(|| format!("the {role} process")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rss = pids
        .iter()
        .map(|(role, pid)| procfs::peak_rss_kb(*pid).with_context(|| format!("the {role} process")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    writeln!(load_in, "report").context("asking for the result")?;
    load_in.flush()?;
    let result: load::LoadResult = serde_json::from_str(&expect_line(
        &load_out,
        "client",
        "result",
        Duration::from_secs(10),
    )?)
    .context("the load generator's result")?;
    drop(procs);

    if result.requests == 0 {
        bail!(
            "no request succeeded ({} errors; first: {})",
            result.errors,
            result.first_error.as_deref().unwrap_or("none recorded")
        );
    }
    if result.errors * 100 > result.requests + result.errors {
        eprint!(
            "(warning: {} errors, first: {}) ",
            result.errors,
            result.first_error.as_deref().unwrap_or("?")
        );
    }
    let req = result.requests as f64;
    let processes: Vec<ProcessFigures> = pids
        .iter()
        .zip(before.iter().zip(&after))
        .zip(&rss)
        .map(|(((role, _), (b, a)), rss)| ProcessFigures {
            role,
            cpu_us_per_req: a.saturating_sub(*b).as_secs_f64() * 1e6 / req,
            max_rss_kb: *rss,
        })
        .collect();
    let (connections, target_rps) = match mode {
        Mode::Saturation { connections } => (connections, 0),
        Mode::Rate { rps } => (plan.args.connections, rps),
    };
    Ok(Row {
        path,
        http,
        mode: mode.name(),
        rounds: 1,
        connections,
        target_rps,
        requests: result.requests,
        errors: result.errors,
        rps: req / result.elapsed_s,
        p50_us: result.p50_us,
        p90_us: result.p90_us,
        p99_us: result.p99_us,
        p999_us: result.p999_us,
        cpu_us_per_req: processes.iter().map(|p| p.cpu_us_per_req).sum(),
        max_rss_kb: processes.iter().map(|p| p.max_rss_kb).max().unwrap_or(0),
        total_rss_kb: processes.iter().map(|p| p.max_rss_kb).sum(),
        processes,
        ratio_to_bare: None,
        ratio_to_bare_tls: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_istio_writes_them_or_as_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0s", "0", "-1", "10x", "", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
