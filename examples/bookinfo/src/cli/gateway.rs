//! `bookinfo gateway`: the ingress gateway, built from the same layers as every workload.
//!
//! The gateway is a workload whose [`Mesh`] is built with
//! [`gateway(true)`](mesh_tower::mesh::MeshBuilder::gateway) and the labels of Istio's
//! ingress gateway (`istio: ingressgateway`, `app: istio-ingressgateway`), so its client
//! routes with the VirtualServices bound to the Gateways whose selector matches it — Istio's
//! `bookinfo-gateway.yaml`, unchanged — and not with the `mesh` rules. Its server forwards
//! every request through that client: method, path, query, headers (cookies included) and
//! body are kept, the URI becomes `http://<Host header><path>` so the gateway rules match on
//! the host, hop-by-hop headers are dropped, and `x-forwarded-for`, `x-forwarded-proto` and
//! `x-request-id` are set as Envoy sets them at the edge. A request no rule matches gets the
//! mesh's local reply: 404 with response flag `NR`.
//!
//! With a certificate (`--ca-address` or `--ca-dir`, see [`super::mtls`]) the gateway calls
//! the workloads over mutual TLS as service account [`SERVICE_ACCOUNT`] of its namespace
//! (`istio-system`), while its public port stays plaintext: Istio's
//! gateway terminates client traffic as its Gateway resource says, and PeerAuthentication
//! does not apply to it (the mesh of a gateway serves plaintext, see
//! `Mesh::serves_mutual_tls`).

use std::{convert::Infallible, net::SocketAddr};

use anyhow::Context as _;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use mesh_tower::{
    body::{self, Body},
    mesh::{HttpClient, Mesh, Workload},
    server::PeerAddr,
};
use tower::ServiceExt;

use super::{GoDuration, StoreArgs, child, mtls, random_suffix};

/// Flags of `bookinfo gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to accept requests.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,

    /// Where to serve the gateway's admin listener (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub(crate) admin_listen: SocketAddr,

    /// The gateway instance's name [default: istio-ingressgateway-XXXXX, X a random hex digit].
    #[arg(long)]
    pub(crate) name: Option<String>,

    #[command(flatten)]
    pub(crate) store: StoreArgs,

    /// The gateway's namespace (Istio runs its ingress gateway in `istio-system`).
    #[arg(long, default_value = "istio-system")]
    pub(crate) namespace: String,

    /// How long to keep serving after deregistering on shutdown.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub(crate) drain_delay: GoDuration,

    #[command(flatten)]
    pub(crate) ca: mtls::CaArgs,

    #[command(flatten)]
    pub(crate) telemetry: super::telemetry::TelemetryArgs,

    /// Run under `bookinfo up`: print the ready line as JSON and stop when stdin closes.
    #[arg(long, hide = true)]
    pub(crate) supervised: bool,
}

/// The gateway's service account (Istio's).
pub(crate) const SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// The `app` label of the gateway workload (Istio's).
pub(crate) const APP: &str = "istio-ingressgateway";

/// Runs the gateway until it is told to stop.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{APP}-{}", random_suffix()));
    let service_account = SERVICE_ACCOUNT.to_owned();
    let shutdown = child::shutdown_signal(args.supervised);
    tokio::pin!(shutdown);

    let start = child::Start {
        kind: "gateway",
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
        .label("app", APP)
        .label("istio", "ingressgateway")
        .label(super::telemetry::WORKLOAD_NAME_LABEL, APP)
        .service_account(&service_account);
    // With an identity the gateway's calls use mutual TLS; its public port stays plaintext
    // (`Mesh::serves_mutual_tls`: PeerAuthentication does not govern a gateway's listeners).
    let mut builder = args.telemetry.apply(
        Mesh::builder(prepared.store, workload.clone())
            .gateway(true)
            .drain_delay(args.drain_delay.as_std()),
        &workload,
    )?;
    if let Some(identity) = &prepared.identity {
        builder = builder.identity(identity.watch.clone());
    }
    let mesh = builder.start().await.context("cannot start the mesh")?;
    tokio::select! {
        () = child::wait_ready(&mesh) => {}
        why = &mut shutdown => {
            tracing::info!(gateway = %name, why, "stopped before the configuration was ready");
            return Ok(());
        }
    }

    let client = mesh.http_client();
    let app = tower::service_fn(move |req: Request<Body>| {
        let client = client.clone();
        async move { Ok::<_, Infallible>(forward(client, req).await) }
    });

    let me = child::Ready {
        name: name.clone(),
        app: APP.to_owned(),
        version: String::new(),
        namespace: args.namespace.clone(),
        address: prepared.address.to_string(),
        admin: format!("http://{}/", prepared.admin_address),
        pid: std::process::id(),
        // The public port is plaintext; only the calls the gateway makes use mutual TLS.
        mtls: false,
    };
    let served = child::serve_workload(
        "gateway",
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
    drop(prepared.identity);
    served
}

/// Headers that describe one connection, not the request: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// A random version-4 UUID, as Envoy generates `x-request-id`.
fn request_id() -> String {
    let v = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A plain-text local reply.
fn reply(status: StatusCode, text: &str) -> Response<Body> {
    let mut res = Response::new(body::full(format!("{text}\n")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Turns an inbound request into the request the gateway sends through the mesh, or says
/// why it cannot (no host to route on): the gateway answers 400 with that text.
fn outbound(req: Request<Body>) -> Result<Request<Body>, &'static str> {
    let (mut parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        return Err("missing Host header");
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{host}{path}").parse::<Uri>() else {
        return Err("invalid Host header");
    };
    let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(header::HOST, v);
    }
    if let Some(peer) = peer {
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {}", peer.ip()),
            _ => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !parts.headers.contains_key("x-request-id")
        && let Ok(v) = HeaderValue::from_str(&request_id())
    {
        parts.headers.insert("x-request-id", v);
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Forwards one request through the gateway's mesh client.
async fn forward(client: HttpClient, req: Request<Body>) -> Response<Body> {
    let req = match outbound(req) {
        Ok(req) => req,
        Err(why) => return reply(StatusCode::BAD_REQUEST, why),
    };
    match client.oneshot(req).await {
        Ok(mut res) => {
            strip_hop_by_hop(res.headers_mut());
            res.map(mesh_tower::body::boxed)
        }
        Err(e) => {
            // The mesh's rescue layer turns its failures into local replies; what is left is
            // unexpected.
            tracing::warn!(error = %e, "forwarding failed");
            reply(StatusCode::BAD_GATEWAY, "upstream error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, request_id());
    }

    #[test]
    fn outbound_keeps_the_request_and_routes_on_host() {
        let mut req = Request::post("/login?next=%2Fproductpage")
            .header(header::HOST, "bookinfo.example:8080")
            .header(header::COOKIE, "session=abc")
            .header(header::CONNECTION, "keep-alive, x-private")
            .header("x-private", "1")
            .header("x-forwarded-for", "10.0.0.1")
            .body(body::full("username=jason&passwd=x"))
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.1:5555".parse().unwrap()));
        let out = outbound(req).unwrap();
        assert_eq!(
            out.uri().to_string(),
            "http://bookinfo.example:8080/login?next=%2Fproductpage"
        );
        assert_eq!(out.method(), http::Method::POST);
        let h = out.headers();
        assert_eq!(h[header::COOKIE], "session=abc");
        assert_eq!(h[header::HOST], "bookinfo.example:8080");
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-private"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.contains_key("x-request-id"));
    }

    #[test]
    fn outbound_without_host_is_refused() {
        let req = Request::get("/productpage").body(Body::default()).unwrap();
        assert_eq!(outbound(req).unwrap_err(), "missing Host header");
    }
}
