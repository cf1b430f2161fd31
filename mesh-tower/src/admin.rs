//! The workload's admin endpoint: what Envoy's admin port (`:15000`) and the Istio agent's
//! (`:15020`) show for a sidecar, served by the workload itself.
//!
//! | path | answer |
//! |---|---|
//! | `/` | the list of paths |
//! | `/metrics` | Prometheus text exposition format (0.0.4): Istio's standard metrics and the mesh's own |
//! | `/ready` | `200` once the first good configuration (and, with mutual TLS, the first certificate) is loaded, `503` before; the body says which store the mesh reads and whether it can reach it |
//! | `/config_dump` | JSON: the workload, the configuration status (generation, store revision, last error, store error) and every resource of the live snapshot |
//! | `/clusters` | the endpoints of every service and subset, Envoy-style (`outbound\|9080\|v1\|reviews.default.svc.cluster.local::127.0.0.1:9080::rq_active::0`); `?format=json` for JSON |
//! | `/certs` | JSON: the workload's identity, its certificate chain and roots with serials, validity and seconds until expiry |
//!
//! Only `GET` (and `HEAD`) are answered. The admin endpoint has no authentication: like
//! Envoy's, bind it to loopback.
//!
//! **Static stability**: `/ready` stays `200` when the store becomes unreachable after a
//! good configuration was loaded: the mesh keeps serving with its last snapshot, and the
//! body and `/config_dump`'s `status.storeError` say why it is not following changes.
//!
//! # Examples
//! ```no_run
//! # async fn run(mesh: mesh_tower::mesh::Mesh) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15000").await?;
//! mesh_tower::admin::serve(listener, mesh.admin(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::{
    convert::Infallible,
    fmt::Write as _,
    future::{Future, Ready, ready},
    sync::Arc,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use http::{Method, Response, StatusCode, header};
use mesh_core::snapshot::Snapshot;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    body::{self, Body},
    mesh::Mesh,
    server::{self, ServeSummary, ShutdownOptions},
};

/// Writes the Prometheus text exposition of a workload's metrics into a buffer.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The admin endpoint of one workload, as a tower service; see the [module docs](self).
///
/// Built by [`Mesh::admin`]; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    mesh: Mesh,
    metrics: Option<MetricsSource>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("workload", self.mesh.workload_key())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Admin {
    /// The admin endpoint of `mesh`, with the metrics `metrics` writes (none: `/metrics`
    /// answers 404).
    pub fn new(mesh: Mesh, metrics: Option<MetricsSource>) -> Self {
        Self { mesh, metrics }
    }

    /// Answers one request.
    pub fn respond<B>(&self, req: &http::Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            res.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let json_format = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
        match req.uri().path() {
            "/" => text(StatusCode::OK, INDEX.into()),
            "/metrics" => self.metrics(),
            "/ready" => self.ready(),
            "/config_dump" => json_response(&self.config_dump()),
            "/clusters" if json_format => json_response(&self.clusters_json()),
            "/clusters" => text(StatusCode::OK, self.clusters_text()),
            "/certs" => json_response(&self.certs()),
            other => text(
                StatusCode::NOT_FOUND,
                format!("no admin page {other:?}; see / for the list\n"),
            ),
        }
    }

    fn metrics(&self) -> Response<Body> {
        let Some(metrics) = &self.metrics else {
            return text(
                StatusCode::NOT_FOUND,
                "metrics are not enabled for this workload\n".into(),
            );
        };
        let mut out = String::with_capacity(16 * 1024);
        metrics(&mut out);
        let mut res = Response::new(body::full(out));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        res
    }

    fn ready(&self) -> Response<Body> {
        let status = self.mesh.status();
        let mut out = String::new();
        let mut ok = true;
        if status.last_good_revision.is_none() {
            ok = false;
            out.push_str("not ready: no configuration loaded yet\n");
        }
        if self.mesh.is_mutual_tls() && self.mesh.identity().is_none() {
            ok = false;
            out.push_str("not ready: no workload certificate yet\n");
        }
        if ok {
            let _ = writeln!(out, "ready: configuration generation {}", status.generation);
        }
        let _ = writeln!(out, "store: {}", status.store);
        match &status.store_error {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "store unreachable: {e}; serving the last good configuration and retrying"
                );
            }
            None => out.push_str("store: reachable\n"),
        }
        if let Some(findings) = &status.last_error {
            let _ = writeln!(
                out,
                "last change refused ({} finding(s)); see /config_dump",
                findings.0.len()
            );
        }
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(code, out)
    }

    fn config_dump(&self) -> Value {
        let snapshot = self.mesh.snapshot();
        let key = self.mesh.workload_key();
        json!({
            "workload": {"name": key.name, "namespace": key.namespace},
            "status": serde_json::to_value(self.mesh.status()).unwrap_or(Value::Null),
            "settings": {
                "domain": snapshot.settings().domain,
                "rootNamespace": snapshot.settings().root_namespace,
                "trustDomain": snapshot.settings().trust_domain,
            },
            "resources": snapshot.resources().iter().map(|r| r.to_value()).collect::<Vec<_>>(),
        })
    }

    fn clusters_text(&self) -> String {
        let mut out = String::new();
        for c in clusters(&self.mesh.snapshot()) {
            for ep in &c.endpoints {
                let stats = self.mesh.endpoint_stats();
                let prefix = format!("{}::{}:{}", c.name, ep.address, ep.port);
                let health = health(
                    stats.ejected(&ep.address, ep.port),
                    stats.is_down(&ep.address, ep.port),
                );
                let _ = writeln!(out, "{prefix}::health_flags::{health}");
                let _ = writeln!(out, "{prefix}::weight::{}", ep.weight);
                let _ = writeln!(
                    out,
                    "{prefix}::rq_active::{}",
                    stats.in_flight(&ep.address, ep.port)
                );
                let _ = writeln!(
                    out,
                    "{prefix}::ejections::{}",
                    stats.ejections(&ep.address, ep.port)
                );
                let _ = writeln!(out, "{prefix}::workload::{}", ep.workload);
            }
        }
        out
    }

    fn clusters_json(&self) -> Value {
        let stats = self.mesh.endpoint_stats();
        let clusters: Vec<Value> = clusters(&self.mesh.snapshot())
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "host": c.host,
                    "port": c.port,
                    "subset": c.subset,
                    "endpoints": c.endpoints.iter().map(|ep| json!({
                        "address": format!("{}:{}", ep.address, ep.port),
                        "workload": ep.workload,
                        "weight": ep.weight,
                        "health": health(stats.ejected(&ep.address, ep.port), stats.is_down(&ep.address, ep.port)),
                        "ejected": stats.ejected(&ep.address, ep.port),
                        "ejections": stats.ejections(&ep.address, ep.port),
                        "rqActive": stats.in_flight(&ep.address, ep.port),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "clusters": clusters })
    }

    fn certs(&self) -> Value {
        let Some(id) = self.mesh.identity() else {
            return json!({
                "mutualTls": self.mesh.is_mutual_tls(),
                "identity": Value::Null,
                "note": if self.mesh.is_mutual_tls() { "no certificate yet" } else { "this workload runs without an identity (plaintext)" },
            });
        };
        let now = SystemTime::now();
        json!({
            "mutualTls": true,
            "identity": id.identity().to_string(),
            "serial": id.serial(),
            "notBefore": rfc3339(id.not_before()),
            "notAfter": rfc3339(id.not_after()),
            "secondsUntilExpiry": seconds_between(now, id.not_after()),
            "chain": id.chain().iter().map(describe_cert).collect::<Vec<_>>(),
            "roots": id.roots().iter().map(describe_cert).collect::<Vec<_>>(),
        })
    }
}

const INDEX: &str = "admin endpoints:\n  /metrics      Prometheus metrics\n  /ready        readiness and store state\n  /config_dump  configuration status and the live snapshot's resources (JSON)\n  /clusters     endpoints per service and subset (?format=json)\n  /certs        the workload certificate chain and roots (JSON)\n";

fn health(ejected: bool, down: bool) -> &'static str {
    if ejected {
        "/failed_outlier_check"
    } else if down {
        "/failed_active_hc"
    } else {
        "healthy"
    }
}

/// One Envoy-style cluster: a service port, optionally narrowed to a subset.
struct Cluster {
    name: String,
    host: String,
    port: u16,
    subset: Option<String>,
    endpoints: Vec<ClusterEndpoint>,
}

struct ClusterEndpoint {
    address: String,
    port: u16,
    weight: u32,
    workload: String,
}

fn clusters(snapshot: &Snapshot) -> Vec<Cluster> {
    let mut out = Vec::new();
    let mut services: Vec<_> = snapshot.services().collect();
    services.sort_by(|a, b| a.host.cmp(&b.host));
    for svc in services {
        let mut subsets: Vec<Option<String>> = vec![None];
        if let Some(policy) = snapshot.destination_policy(&svc.host) {
            let mut names: Vec<_> = policy.subsets.keys().cloned().collect();
            names.sort();
            subsets.extend(names.into_iter().map(Some));
        }
        // A service implied by WorkloadEntry labels has no declared port: use each
        // endpoint's own port under port 0's cluster name, as the balancer does.
        let ports: Vec<(u16, Option<&str>, Option<u32>)> = if svc.ports.is_empty() {
            vec![(0, None, None)]
        } else {
            svc.ports
                .iter()
                .map(|p| {
                    (
                        u16::try_from(p.number).unwrap_or(0),
                        Some(p.name.as_str()),
                        p.target_port,
                    )
                })
                .collect()
        };
        for &(port, name, target) in &ports {
            for subset in &subsets {
                let endpoints = snapshot
                    .endpoints(&svc.host, subset.as_deref())
                    .iter()
                    .map(|ep| ClusterEndpoint {
                        address: ep.address.clone(),
                        port: ep.port_for(port, name, target),
                        weight: ep.weight,
                        workload: ep.workload.as_ref().map_or_else(
                            || "-".to_owned(),
                            |k| format!("{}/{}", k.namespace, k.name),
                        ),
                    })
                    .collect();
                out.push(Cluster {
                    name: crate::target::cluster_name(port, subset.as_deref(), &svc.host),
                    host: svc.host.clone(),
                    port,
                    subset: subset.clone(),
                    endpoints,
                });
            }
        }
    }
    out
}

fn describe_cert(der: &CertificateDer<'_>) -> Value {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return json!({ "error": "cannot parse this certificate" });
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "serial": cert.raw_serial_as_string(),
        "notBefore": cert.validity().not_before.to_string(),
        "notAfter": cert.validity().not_after.to_string(),
        "secondsUntilExpiry": not_after - now,
        "isCa": cert.is_ca(),
        "uriSans": uris,
        "dnsSans": dns,
    })
}

fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn text(code: StatusCode, s: String) -> Response<Body> {
    let mut res = Response::new(body::full(s));
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json_response(v: &Value) -> Response<Body> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    let mut res = Response::new(body::full(s));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

impl<B> tower::Service<http::Request<B>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

/// Serves `admin` on `listener` (HTTP/1.1 and HTTP/2, no mesh stack) until `shutdown`
/// completes.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<ServeSummary> {
    server::serve(listener, admin, shutdown, ShutdownOptions::default()).await
}
