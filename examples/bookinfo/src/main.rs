//! `bookinfo`: Istio's Bookinfo on the in-process mesh, one OS process per workload.
//!
//! ```text
//! bookinfo up                                  # every workload + the ingress gateway, supervised
//! bookinfo up --with httpbin                   # … and httpbin, for Istio's circuit-breaking task
//! bookinfo service reviews --version v2        # one workload, with its own Mesh
//! bookinfo gateway --listen 127.0.0.1:8080     # the ingress gateway alone
//! bookinfo service httpbin                     # httpbin alone (http://httpbin:8000 in the mesh)
//! ```
//!
//! See `examples/bookinfo/README.md` for the topology, the process model and the flags. Exit
//! codes: 0 success, 1 failure, 2 usage error.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
