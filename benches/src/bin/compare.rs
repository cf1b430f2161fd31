//! `compare`: the mesh against bare hyper and the sidecar pattern, on loopback, one command.
//!
//! Runs each path (`bare`, `mesh`, `bare-tls`, `mesh-mtls`, `sidecar`, `sidecar-mtls`) as
//! separate processes (this binary re-executes itself as the server and as the load
//! generator; the sidecar paths add two HAProxy processes), drives them with the same load
//! generator over HTTP/1.1 and HTTP/2, in saturation (fixed connections, closed loop) and at
//! fixed rates (open loop), and reports requests/s, latency percentiles, CPU per request of
//! all the path's processes (from `/proc`) and their peak RSS, each also as a ratio to bare
//! hyper from the same run. See `benches/README.md`, section "compare".
//!
//! ```sh
//! cargo run --release -p benches --bin compare -- --quick --json compare.json --svg compare.svg
//! ```

#[path = "../compare/mod.rs"]
mod compare;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = compare::Cli::parse();
    match compare::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
