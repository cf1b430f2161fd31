//! `meshctl`: the mesh's operator CLI, in the spirit of `istioctl` and `kubectl`.
//!
//! ```text
//! meshctl analyze -f reviews.yaml            # findings like `istioctl analyze`
//! meshctl apply -f reviews.yaml              # validate the result as a whole, then store
//! meshctl get virtualservices -o yaml        # read back
//! meshctl delete virtualservice reviews
//! meshctl load -c 3 -n 30 http://httpbin:8000/get   # load a service through the mesh, like fortio
//! ```
//!
//! The store is chosen with `--config-dir DIR` (env `MESH_CONFIG_DIR`) or `--store URL`
//! (env `MESH_STORE`, e.g. `file:/etc/mesh` or `etcd://10.0.0.1:2379,10.0.0.2:2379`); every
//! verb works on either. Exit codes: 0 success; 1 failure (refused
//! apply, I/O; `load` that cannot start); 2 usage error; 79 `analyze` found issues at or
//! above `--failure-threshold` (the code `istioctl analyze` uses). `load` exits 0 once its
//! run completes, whatever the responses' statuses (as fortio).

mod analyze;
mod apply;
mod describe;
mod get;
mod input;
mod load;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand, ValueEnum};
use mesh_core::store::{self, Store};

/// Exit code for "analysis found issues", as `istioctl analyze` uses.
pub(crate) const EXIT_ANALYSIS_ISSUES: u8 = 79;

/// Operate an embeddable Istio-compatible service mesh: analyze, apply, get and delete
/// Istio configuration in the mesh's store.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
struct Cli {
    /// The store directory (the embedded `file:` store).
    #[arg(long, global = true, env = "MESH_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,

    /// The store, as a URL: `file:DIR`, or `etcd://HOST:PORT[,HOST:PORT…]` with optional
    /// `?prefix=/mesh&lease_ttl=10s`. Overrides --config-dir.
    #[arg(long, global = true, env = "MESH_STORE", value_name = "URL")]
    store: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate configuration like `istioctl analyze`: schema errors and problems across
    /// resources, with file and line. Files given with -f are checked together with what the
    /// store holds (a file's resource replaces the stored one with the same name).
    Analyze(analyze::Args),
    /// Create or update resources from files, a directory, or standard input (`-f -`). The
    /// resulting configuration is validated as a whole first; nothing is written if it has
    /// errors.
    Apply(apply::ApplyArgs),
    /// Show resources of a kind (`virtualservices`, `vs`, `destinationrule`, ...).
    Get(get::Args),
    /// Delete a resource by kind and name, or every resource in files (`-f`).
    Delete(apply::DeleteArgs),
    /// Show which VirtualService rule a request would match and why, its destinations and
    /// weights, endpoints, and the timeout, retry, fault and mirror policy that apply.
    Describe(describe::Args),
    /// Send load through the mesh, like fortio: -c callers, one request at a time each, for
    /// -n requests or -t a duration, as fast as possible or at --qps; then status codes,
    /// response flags (UO, UH, UF, NR, ...) and latency percentiles.
    Load(load::Args),
}

/// Output formats shared by the commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable text (a table for `get`).
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Opens the store named by the global flags, or `None` if none is configured.
pub(crate) fn open_store(
    cli_store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let url = match (cli_store, dir) {
        (Some(url), _) => url.to_owned(),
        (None, Some(dir)) => format!("file:{}", dir.display()),
        (None, None) => return Ok(None),
    };
    Ok(Some(store::open(&url)?))
}

/// Opens the configured store or fails with a message saying how to configure one.
pub(crate) fn require_store(
    cli_store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<Arc<dyn Store>> {
    open_store(cli_store, dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no store configured: pass --config-dir DIR or --store URL (or set MESH_CONFIG_DIR)"
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if matches!(cli.command, Command::Load(_)) {
        // The load generator's callers and the mesh's connections run on every core.
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build();
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = cli.store.as_deref();
    let dir = cli.config_dir.as_ref();
    let result = rt.block_on(async {
        match cli.command {
            Command::Analyze(args) => analyze::run(args, store, dir).await,
            Command::Apply(args) => apply::apply(args, store, dir).await,
            Command::Get(args) => get::run(args, store, dir).await,
            Command::Delete(args) => apply::delete(args, store, dir).await,
            Command::Describe(args) => describe::run(args, store, dir).await,
            Command::Load(args) => load::run(args, store, dir).await,
        }
    });
    // Background tasks (the store watcher of `load`'s mesh) must not hold the process.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
