//! `bookinfo service <name> --version vN`: one Bookinfo workload in this process.
//!
//! The workload gets its own [`Mesh`]: it waits for the mesh's first good configuration
//! before serving anything, serves [`bookinfo::app`] through [`Mesh::serve`] (which
//! registers its WorkloadEntry, labels `app` and `version`, service account
//! `bookinfo-<service>`, or `httpbin` for httpbin), and on Ctrl-C or `SIGTERM` (or end of stdin under `--supervised`)
//! deregisters, drains and exits 0.
//!
//! With `--ca-address` (under `bookinfo up`) or `--ca-dir` (by hand) the workload gets a
//! certificate for `spiffe://cluster.local/ns/<namespace>/sa/<service account>` before it
//! serves, keeps it renewed, and speaks mutual TLS as PeerAuthentication says (see
//! [`super::mtls`]); without either it speaks plaintext.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use bookinfo::{Service, Settings};
use mesh_tower::mesh::{Mesh, Workload};

use super::{
    GoDuration, StoreArgs, child, mtls, random_suffix,
    telemetry::{TelemetryArgs, WORKLOAD_NAME_LABEL},
};

/// Flags of `bookinfo service`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The service to run.
    #[arg(value_enum)]
    pub(crate) service: Service,

    /// The workload's `version` label. reviews: v1 (no stars), v2 (black stars), v3 (red
    /// stars).
    #[arg(long, default_value = "v1", value_parser = parse_version)]
    pub(crate) version: String,

    /// The workload instance's name [default: SERVICE-VERSION-XXXXX, X a random hex digit].
    #[arg(long)]
    pub(crate) name: Option<String>,

    /// Where to serve the application (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,

    /// Where to serve the workload's admin listener (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub(crate) admin_listen: SocketAddr,

    #[command(flatten)]
    pub(crate) store: StoreArgs,

    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,

    #[command(flatten)]
    pub(crate) timeouts: AppTimeouts,

    #[command(flatten)]
    pub(crate) ca: mtls::CaArgs,

    #[command(flatten)]
    pub(crate) telemetry: TelemetryArgs,

    /// How long to keep serving after deregistering on shutdown, so callers move away first.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub(crate) drain_delay: GoDuration,

    /// Run under `bookinfo up`: print the ready line as JSON and stop when stdin closes.
    #[arg(long, hide = true)]
    pub(crate) supervised: bool,
}

/// Istio's hard-coded application timeouts, overridable so tests can run the fault-injection
/// tasks in less time. Unset flags keep Istio's values.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct AppTimeouts {
    /// productpage → reviews timeout [default: 3s, Istio's].
    #[arg(long, value_name = "DURATION")]
    pub(crate) reviews_timeout: Option<GoDuration>,

    /// How many times productpage retries reviews [default: 1, Istio's].
    #[arg(long, value_name = "N")]
    pub(crate) reviews_retries: Option<u32>,

    /// productpage → details timeout [default: 3s, Istio's].
    #[arg(long, value_name = "DURATION")]
    pub(crate) details_timeout: Option<GoDuration>,

    /// reviews → ratings timeout [default: Istio's 10s for v2, 2.5s for v3].
    #[arg(long, value_name = "DURATION")]
    pub(crate) ratings_timeout: Option<GoDuration>,
}

impl AppTimeouts {
    /// Overrides `settings` with the flags that are set.
    pub(crate) fn apply(&self, settings: &mut Settings) {
        if let Some(d) = self.reviews_timeout {
            settings.reviews_timeout = d.as_std();
        }
        if let Some(n) = self.reviews_retries {
            settings.reviews_retries = n;
        }
        if let Some(d) = self.details_timeout {
            settings.details_timeout = d.as_std();
        }
        if let Some(d) = self.ratings_timeout {
            settings.ratings_timeout = d.as_std();
        }
    }

    /// The flags that are set, as command-line arguments (for a child process).
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(flag.to_owned());
                out.push(v);
            }
        };
        push(
            "--reviews-timeout",
            self.reviews_timeout.map(|d| d.to_string()),
        );
        push(
            "--reviews-retries",
            self.reviews_retries.map(|n| n.to_string()),
        );
        push(
            "--details-timeout",
            self.details_timeout.map(|d| d.to_string()),
        );
        push(
            "--ratings-timeout",
            self.ratings_timeout.map(|d| d.to_string()),
        );
        out
    }
}

/// A `version` label value: lower-case letters, digits and `-`, starting with a letter or
/// digit, at most 63 characters (`v1`, `v2-mysql`).
fn parse_version(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a version label (lower-case letters, digits and '-', e.g. v1)"
        ))
    }
}

/// The address to register for a listener bound at `local`: an unspecified IP (`0.0.0.0`)
/// is registered as loopback, the address callers on this machine reach it at.
pub(crate) fn registrable(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, local.port()))
    } else {
        local
    }
}

/// Runs the workload until it is told to stop.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let service = args.service;
    if service == Service::Reviews && !matches!(args.version.as_str(), "v1" | "v2" | "v3") {
        anyhow::bail!(
            "reviews has versions v1 (no stars), v2 (black stars) and v3 (red stars), not {}",
            args.version
        );
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}-{}", service.name(), args.version, random_suffix()));
    let service_account = service.service_account();
    // Signals are watched from the start: a workload told to stop while it waits for its
    // configuration stops at once.
    let shutdown = child::shutdown_signal(args.supervised);
    tokio::pin!(shutdown);

    let start = child::Start {
        kind: "workload",
        name: &name,
        namespace: &args.namespace,
        service_account: &service_account,
        listen: args.listen,
        admin_listen: args.admin_listen,
        store: &args.store,
        ca: &args.ca,
    };
    let Some(prepared) = child::prepare(start, shutdown.as_mut()).await? else {
        return Ok(());
    };
    let workload = Workload::new(&name, &args.namespace)
        .label("app", service.name())
        .label("version", &args.version)
        .label(
            WORKLOAD_NAME_LABEL,
            format!("{}-{}", service.name(), args.version),
        )
        .service_account(&service_account);
    // No address yet: `start` would register it before the mesh is ready. It is registered
    // below, once the application is built and the admin listener runs.
    let mut builder = args.telemetry.apply(
        Mesh::builder(prepared.store, workload.clone()).drain_delay(args.drain_delay.as_std()),
        &workload,
    )?;
    if let Some(identity) = &prepared.identity {
        builder = builder.identity(identity.watch.clone());
    }
    let mesh = builder.start().await.context("cannot start the mesh")?;
    tokio::select! {
        () = child::wait_ready(&mesh) => {}
        why = &mut shutdown => {
            tracing::info!(workload = %name, why, "stopped before the configuration was ready");
            return Ok(());
        }
    }

    let mut settings = Settings::istio(service, &args.version, &name);
    args.timeouts.apply(&mut settings);
    let app = bookinfo::app(service, settings, mesh.http_client());

    let me = child::Ready {
        name: name.clone(),
        app: service.name().to_owned(),
        version: args.version.clone(),
        namespace: args.namespace.clone(),
        address: prepared.address.to_string(),
        admin: format!("http://{}/", prepared.admin_address),
        pid: std::process::id(),
        mtls: prepared.identity.is_some(),
    };
    let served = child::serve_workload(
        "workload",
        mesh,
        me,
        prepared.listener,
        prepared.admin_listener,
        service_account,
        app,
        shutdown,
        args.supervised,
    )
    .await;
    // The certificate is renewed until the workload stops serving.
    drop(prepared.identity);
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(parse_version("v1").is_ok());
        assert!(parse_version("v2-mysql").is_ok());
        assert!(parse_version("").is_err());
        assert!(parse_version("V1").is_err());
        assert!(parse_version("-v1").is_err());
        assert!(parse_version("v1 ").is_err());
    }

    #[test]
    fn timeouts_round_trip_as_flags() {
        let t = AppTimeouts {
            reviews_timeout: Some("1s".parse().unwrap()),
            reviews_retries: Some(0),
            details_timeout: None,
            ratings_timeout: Some("0.5s".parse().unwrap()),
        };
        assert_eq!(
            t.to_args(),
            [
                "--reviews-timeout",
                "1s",
                "--reviews-retries",
                "0",
                "--ratings-timeout",
                "500ms"
            ]
        );
        let mut s = Settings::istio(Service::Productpage, "v1", "productpage-v1-00000");
        t.apply(&mut s);
        assert_eq!(s.reviews_timeout, std::time::Duration::from_secs(1));
        assert_eq!(s.reviews_retries, 0);
        assert_eq!(s.details_timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn unspecified_addresses_register_as_loopback() {
        assert_eq!(
            registrable("0.0.0.0:9080".parse().unwrap()),
            "127.0.0.1:9080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            registrable("127.0.0.2:1".parse().unwrap()),
            "127.0.0.2:1".parse::<SocketAddr>().unwrap()
        );
    }
}
