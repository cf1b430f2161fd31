//! The `bookinfo` command line: `service`, `gateway` and `up`.
//!
//! - [`service`]: one Bookinfo workload in this process, with its own `Mesh`.
//! - [`gateway`]: the ingress gateway, routed by Istio's `bookinfo-gateway.yaml`.
//! - [`up`]: the supervisor that runs every workload and the gateway as child processes of
//!   this same binary.
//!
//! [`mtls`] gives the workloads their certificates (the CA files, the CA `up` serves, each
//! workload's certificate manager). [`child`] holds what the supervisor and its children
//! agree on (the ready line on stdout, stdin as the stop signal); [`admin`] the small
//! per-workload admin listener; [`seed`] the configuration `up` seeds the config directory
//! with.

pub(crate) mod admin;
pub(crate) mod child;
pub(crate) mod gateway;
pub(crate) mod mtls;
pub(crate) mod seed;
pub(crate) mod service;
pub(crate) mod telemetry;
pub(crate) mod up;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use mesh_core::store::{self, Store};

/// Istio's Bookinfo on the embeddable mesh: four services, one process per workload, an
/// ingress gateway, and Istio's own YAML applied live.
#[derive(Debug, Parser)]
#[command(name = "bookinfo", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every workload (productpage v1, details v1, reviews v1/v2/v3, ratings v1; httpbin
    /// v1 with --with httpbin) and the ingress gateway as child processes; restart any that
    /// crashes; serve the table of workloads at http://127.0.0.1:15000/workloads. Ctrl-C or
    /// SIGTERM stops everything.
    Up(up::Args),
    /// Run one Bookinfo workload (or httpbin) in this process, with its own mesh.
    Service(service::Args),
    /// Run the ingress gateway: forwards every request through the mesh, routed by the
    /// Gateways that select `istio: ingressgateway` and their VirtualServices.
    Gateway(gateway::Args),
}

/// Where a workload finds the mesh's configuration: `--config-dir DIR` or `--store URL`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The config directory (the mesh's file store) [default: $TMPDIR/bookinfo-mesh, the one
    /// `bookinfo up` uses].
    #[arg(long, env = "MESH_CONFIG_DIR", value_name = "DIR")]
    pub(crate) config_dir: Option<PathBuf>,

    /// The store, as a URL (`file:DIR` or `etcd://HOST:PORT[,HOST:PORT…]`). Overrides
    /// --config-dir.
    #[arg(long, env = "MESH_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,
}

impl StoreArgs {
    /// The store URL these flags name.
    pub(crate) fn url(&self) -> String {
        match (&self.store, &self.config_dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => format!("file:{}", dir.display()),
            (None, None) => format!("file:{}", default_config_dir().display()),
        }
    }

    /// Opens the store.
    pub(crate) fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        let url = self.url();
        store::open(&url).map_err(|e| anyhow::anyhow!("cannot open the config store {url}: {e}"))
    }
}

/// The config directory `bookinfo up` uses when none is given: `$TMPDIR/bookinfo-mesh`.
pub(crate) fn default_config_dir() -> PathBuf {
    std::env::temp_dir().join("bookinfo-mesh")
}

/// A Go-style duration flag (`3s`, `0.5s`, `1m30s`), as Istio writes durations.
pub(crate) type GoDuration = mesh_core::duration::Duration;

/// Five random hex digits, for workload instance names (`reviews-v2-3fa2c`), as Kubernetes
/// suffixes pod names.
pub(crate) fn random_suffix() -> String {
    format!("{:05x}", rand::random::<u32>() & 0xf_ffff)
}

/// Installs the log subscriber: `RUST_LOG` if set, else `default`; on stderr, coloured only
/// on a terminal.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A supervised child outlives its supervisor's end of the stderr pipe for a moment
        // (the time to deregister): a failed log write must not become a panic on stderr.
        .log_internal_errors(false)
        .try_init();
}

/// A Tokio runtime with at most `threads` workers.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.min(cpus).max(1))
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))
}

/// Parses the command line, runs the command, and maps the outcome to an exit code: 0
/// success, 1 failure (message on stderr), 2 usage error (clap's).
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let (threads, log) = match &cli.command {
        // The supervisor mostly waits on pipes; the logs of the mesh's store watcher are
        // replaced by its own one-line summaries.
        Command::Up(_) => (2, "info,mesh_core::store=error,notify=warn"),
        Command::Service(a) if a.supervised => (2, "info,mesh_core::store=error,notify=warn"),
        Command::Gateway(a) if a.supervised => (2, "info,mesh_core::store=error,notify=warn"),
        _ => (4, "info,notify=warn"),
    };
    init_logging(log);
    let rt = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Service(args) => service::run(args).await,
            Command::Gateway(args) => gateway::run(args).await,
        }
    });
    // Tasks still running (a stdin reader, a connection draining past its deadline) must not
    // hold the process.
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints `error: …` on stderr (ignoring a closed stderr, unlike `eprintln!`).
fn report(e: &anyhow::Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {e:#}");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "bookinfo",
            "service",
            "reviews",
            "--version",
            "v2",
            "--reviews-timeout",
            "0.5s",
        ])
        .unwrap();
        let Command::Service(a) = cli.command else {
            panic!("not service")
        };
        assert_eq!(a.version, "v2");
        assert_eq!(
            a.timeouts.reviews_timeout.map(|d| d.as_std()),
            Some(Duration::from_millis(500))
        );
        assert!(
            Cli::try_parse_from([
                "bookinfo",
                "service",
                "reviews",
                "--reviews-timeout",
                "soon"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["bookinfo", "service", "frontend"]).is_err());
        assert!(Cli::try_parse_from(["bookinfo", "up", "--with", "fortio"]).is_err());
        let cli = Cli::try_parse_from(["bookinfo", "up", "--with", "httpbin"]).unwrap();
        let Command::Up(a) = cli.command else {
            panic!("not up")
        };
        assert_eq!(a.with, [up::Extra::Httpbin]);
        let cli = Cli::try_parse_from(["bookinfo", "service", "httpbin"]).unwrap();
        assert!(
            matches!(cli.command, Command::Service(a) if a.service == bookinfo::Service::Httpbin)
        );
    }

    #[test]
    fn store_flags() {
        let a = StoreArgs {
            config_dir: Some("/tmp/x".into()),
            store: None,
        };
        assert_eq!(a.url(), "file:/tmp/x");
        let a = StoreArgs {
            config_dir: Some("/tmp/x".into()),
            store: Some("file:/y".into()),
        };
        assert_eq!(a.url(), "file:/y");
    }
}
