//! `mesh-ca`: make CA files in Istio's layout, issue workload certificates, inspect them,
//! mint bootstrap tokens, and serve the signing API over TLS.
//!
//! Exit codes: 0 success; 1 an error (printed on stderr, with its causes); 2 a usage error
//! (clap); 3 `inspect` printed its report but a check failed (chain order broken, or a
//! certificate expired or not yet valid).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mesh_ca::{
    CaOptions, Cacerts, CertificateAuthority, RootCa,
    csr::CsrPem,
    files,
    identity::Identity,
    inspect,
    key::{KeyAlgorithm, KeyPair},
    server::{CaServer, ServerOptions, serve_metrics},
};

/// A small certificate authority in Istio's `cacerts` layout.
#[derive(Debug, Parser)]
#[command(name = "mesh-ca", version, about, long_about = None)]
#[command(after_help = "\
Typical use:
  mesh-ca root --out root/
  mesh-ca intermediate --root root/ --name cluster1 --out cluster1/
  mesh-ca issue --cacerts cluster1/ --spiffe spiffe://cluster.local/ns/default/sa/reviews --out reviews/
  mesh-ca inspect reviews/cert-chain.pem
  openssl verify -CAfile <(cat cluster1/ca-cert.pem cluster1/root-cert.pem) reviews/cert-chain.pem
  mesh-ca serve --cacerts cluster1/ --listen 127.0.0.1:15012

RSA: keys cannot be generated in process (ring has no RSA key generation). Make one with
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem && chmod 600 key.pem
and pass it with --key key.pem (with --algorithm rsa2048 to check its size).

Exit codes: 0 ok, 1 error, 2 usage error, 3 inspect found a failed check.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a self-signed root: root-cert.pem and root-key.pem.
    Root {
        /// Directory to write into (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Lifetime (Go duration).
        #[arg(long, default_value = "87600h", value_parser = parse_duration)]
        ttl: Duration,
        /// Subject organization (O).
        #[arg(long, default_value = "mesh", value_name = "NAME")]
        org: String,
        /// Subject common name (CN).
        #[arg(long, default_value = "Root CA", value_name = "NAME")]
        common_name: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create an intermediate CA under a root: ca-cert.pem, ca-key.pem, cert-chain.pem
    /// (intermediate, root) and root-cert.pem, Istio's cacerts layout.
    Intermediate {
        /// Directory holding root-cert.pem and root-key.pem.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Cluster name, written as the subject's locality (L), as Istio's Makefile does.
        #[arg(long, value_name = "CLUSTER")]
        name: String,
        /// Directory to write into (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Lifetime (Go duration); must end before the root's.
        #[arg(long, default_value = "17520h", value_parser = parse_duration)]
        ttl: Duration,
        /// Subject organization (O).
        #[arg(long, default_value = "mesh", value_name = "NAME")]
        org: String,
        /// Subject common name (CN).
        #[arg(long, default_value = "Intermediate CA", value_name = "NAME")]
        common_name: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate: key.pem, cert-chain.pem (leaf, intermediate, root) and
    /// root-cert.pem, as istio-agent writes /etc/certs.
    Issue {
        /// Directory in Istio's cacerts layout.
        #[arg(long, value_name = "DIR")]
        cacerts: PathBuf,
        /// The workload identity: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
        #[arg(long, value_name = "ID", value_parser = parse_identity)]
        spiffe: Identity,
        /// Lifetime (Go duration); 0 means the CA default (24h); at most 2160h (90 days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Directory to write into (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Sign this CSR (e.g. from `openssl req`) instead of generating a key; key.pem is
        /// not written. Only the CSR's public key is used.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["algorithm", "key"])]
        csr: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Describe the certificates in a file, in plain words, and check their order.
    Inspect {
        /// A PEM file (any number of certificates) or one DER certificate.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Mint a bootstrap token bound to one SPIFFE identity (printed on stdout).
    Token {
        /// Directory in Istio's cacerts layout (the token key is derived from ca-key.pem).
        #[arg(long, value_name = "DIR")]
        cacerts: PathBuf,
        /// The identity the token lets its holder obtain a certificate for.
        #[arg(long, value_name = "ID", value_parser = parse_identity)]
        spiffe: Identity,
        /// Lifetime (Go duration), at most 720h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Serve istio.v1.auth.IstioCertificateService/CreateCertificate over TLS. Callers
    /// authenticate with a bootstrap token (`authorization: Bearer …`) or, to renew, with a
    /// valid workload certificate of the trust domain (mTLS). Stops on SIGTERM or Ctrl-C.
    Serve {
        /// Directory in Istio's cacerts layout.
        #[arg(long, value_name = "DIR")]
        cacerts: PathBuf,
        /// Address to listen on (port 0 picks a free port; the real one is printed).
        #[arg(long, default_value = "127.0.0.1:15012", value_name = "ADDR")]
        listen: SocketAddr,
        /// Extra DNS name for the server certificate, besides localhost and mesh-ca
        /// (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Trust domain of mTLS callers and of the server's own SPIFFE id.
        #[arg(long, default_value = mesh_ca::identity::DEFAULT_TRUST_DOMAIN, value_name = "DOMAIN")]
        trust_domain: String,
        /// Also serve the counters as Prometheus text on http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// On SIGTERM/Ctrl-C, how long calls in flight get before connections are closed.
        #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
        shutdown_grace: Duration,
    },
}

/// How the key is obtained.
#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// Key algorithm to generate (ecdsa-p256 by default). RSA keys cannot be generated here:
    /// pass one made with OpenSSL through --key.
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm)]
    algorithm: Option<KeyAlgorithm>,
    /// Use this private key (PEM, mode 0600) instead of generating one.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Plain words.
    Text,
    /// JSON.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<mesh_core::duration::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn parse_identity(s: &str) -> Result<Identity, String> {
    s.parse::<Identity>().map_err(|e| e.to_string())
}

fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mesh-ca: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Root {
            out,
            key,
            ttl,
            org,
            common_name,
            force,
        } => {
            let key = obtain_key(&key)?;
            let options = CaOptions {
                organization: org,
                common_name,
                locality: None,
                ttl,
            };
            let root = RootCa::generate(&key, &options)?;
            report_written(files::write_root(&out, &root, force).map_err(overwrite_hint)?);
        }
        Command::Intermediate {
            root,
            name,
            out,
            key,
            ttl,
            org,
            common_name,
            force,
        } => {
            let root_ca = files::read_root(&root)?;
            let key = obtain_key(&key)?;
            let options = CaOptions {
                organization: org,
                common_name,
                locality: Some(name),
                ttl,
            };
            let cacerts = Cacerts::intermediate(&root_ca, &key, &options)
                .with_context(|| format!("making an intermediate under {}", root.display()))?;
            // Check the result as the signing side will load it.
            CertificateAuthority::new(&cacerts)?;
            report_written(files::write_cacerts(&out, &cacerts, force).map_err(overwrite_hint)?);
        }
        Command::Issue {
            cacerts,
            spiffe,
            ttl,
            out,
            key,
            csr,
            force,
        } => {
            let ca = CertificateAuthority::load(&cacerts)
                .with_context(|| format!("loading the CA from {}", cacerts.display()))?;
            let (bundle, key) = match csr {
                Some(path) => {
                    let text = files::read_text(&path)?;
                    let bundle = ca
                        .sign(&CsrPem::new(text), &spiffe, ttl)
                        .with_context(|| format!("signing {}", path.display()))?;
                    (bundle, None)
                }
                None => {
                    let key = obtain_key(&key)?;
                    (ca.issue(&spiffe, &key, ttl)?, Some(key.to_pem()))
                }
            };
            report_written(
                files::write_workload(&out, key.as_ref(), &bundle, force)
                    .map_err(overwrite_hint)?,
            );
            println!(
                "issued {} (serial {}), valid until {}",
                bundle.identity,
                bundle.serial,
                inspect::rfc3339(bundle.not_after)
            );
        }
        Command::Inspect { file, output } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = inspect::inspect(&data, &file.display().to_string(), SystemTime::now())?;
            match output {
                Output::Text => print!("{report}"),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            if !(report.chain_ok && report.all_valid) {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Token {
            cacerts,
            spiffe,
            ttl,
        } => {
            let ca = CertificateAuthority::load(&cacerts)
                .with_context(|| format!("loading the CA from {}", cacerts.display()))?;
            let token = ca.mint_token(&spiffe, ttl, SystemTime::now())?;
            println!("{token}");
        }
        Command::Serve {
            cacerts,
            listen,
            dns,
            trust_domain,
            metrics_listen,
            shutdown_grace,
        } => {
            let ca = CertificateAuthority::load(&cacerts)
                .with_context(|| format!("loading the CA from {}", cacerts.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the Tokio runtime")?;
            let mut options = ServerOptions::default().with_trust_domain(trust_domain);
            options.extra_dns_names = dns;
            options.shutdown_grace = shutdown_grace;
            runtime.block_on(serve(
                Arc::new(ca),
                listen,
                options,
                cacerts.join(files::ROOT_CERT),
                metrics_listen,
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mesh-ca serve`: binds, prints where it listens, serves until SIGTERM or Ctrl-C.
async fn serve(
    ca: Arc<CertificateAuthority>,
    listen: SocketAddr,
    options: ServerOptions,
    root_cert: PathBuf,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    tracing_init();
    let server = CaServer::bind(listen, ca, options).await?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    println!("listening on {}", server.local_addr());
    println!("root certificate: {}", root_cert.display());
    println!(
        "server certificate: {} (DNS {})",
        server.server_identity(),
        server.server_dns_names().join(", ")
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_task = match metrics_listener {
        Some(listener) => {
            println!(
                "metrics on http://{}/metrics",
                listener
                    .local_addr()
                    .context("reading the metrics address")?
            );
            Some(tokio::spawn(serve_metrics(
                listener,
                server.metrics(),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    tokio::spawn(async move {
        let signal = shutdown_signal().await;
        eprintln!("mesh-ca: {signal}, stopping");
        let _ = stop_tx.send(true);
    });
    server.serve_with_shutdown(stopped(stop_rx)).await?;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    println!("stopped");
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C (SIGINT); says which.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

/// Logs (the audit log included) to stderr; `RUST_LOG` filters, `info` by default.
fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .try_init();
}

/// Generates a key, or loads `--key` (checking `--algorithm` against it when both are given).
fn obtain_key(args: &KeyArgs) -> anyhow::Result<KeyPair> {
    match (&args.key, args.algorithm) {
        (Some(path), expected) => {
            let pem = files::read_private_key(path)?;
            let key = KeyPair::from_pem(&pem, &path.display().to_string())?;
            if let Some(expected) = expected
                && expected != key.algorithm()
            {
                return Err(mesh_ca::Error::KeyAlgorithmMismatch {
                    expected,
                    found: key.algorithm(),
                })
                .with_context(|| format!("checking {}", path.display()));
            }
            Ok(key)
        }
        (None, algorithm) => Ok(KeyPair::generate(
            algorithm.unwrap_or(KeyAlgorithm::EcdsaP256),
        )?),
    }
}

fn overwrite_hint(err: mesh_ca::Error) -> anyhow::Error {
    let hint = matches!(err, mesh_ca::Error::AlreadyExists { .. });
    let err = anyhow::Error::from(err);
    if hint {
        err.context("output files exist; pass --force to replace them")
    } else {
        err
    }
}

fn report_written(paths: Vec<PathBuf>) {
    for path in paths {
        println!("wrote {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rejects_bad_identities_at_parse_time() {
        let err = Cli::try_parse_from([
            "mesh-ca",
            "token",
            "--cacerts",
            "x",
            "--spiffe",
            "spiffe://x/ns/a",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("exactly 5 path segments"), "{err}");
    }
}
