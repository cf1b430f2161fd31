use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
};

use http::{
    HeaderValue, Request, Response, Uri,
    header::HOST,
    uri::{PathAndQuery, Scheme},
};
use mesh_core::{
    BoxError,
    config::networking::service_entry::Resolution,
    policy::balance::{self, Algorithm, Candidate},
    snapshot::{Endpoint, Service as MeshService},
};
use rand::RngExt;
use tower::{Layer, Service};

use super::{
    BalanceLayer, EndpointStats,
    future::ResponseFuture,
    stats::{EndpointLoad, InFlight, Maps},
};
use crate::{
    body::Body,
    error::{NoHealthyUpstream, UpstreamConnectFailure},
    target::{PickedEndpoint, Target, TriedEndpoints},
};

/// Sends each request to one endpoint of its destination, chosen by the destination's
/// load-balancing algorithm. See the [module docs](super).
///
/// # Clone
///
/// Clones share the [`EndpointStats`] and the fixed endpoint list; the inner service is
/// cloned. The inner future is created in `call`, so no clone is needed per request.
#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
    stats: EndpointStats,
    mode: Mode,
}

/// Where the candidates come from.
#[derive(Clone, Debug)]
pub(super) enum Mode {
    /// From each request's [`Target`]; requests without one pass through.
    Target,
    /// A fixed list, for every request.
    Fixed {
        endpoints: Arc<[Arc<Endpoint>]>,
        algorithm: Algorithm,
    },
}

/// The balancer's decision for one request.
struct Decision {
    endpoint: Arc<Endpoint>,
    port: u16,
    counter: Arc<EndpointLoad>,
}

// === impl Balance ===

impl<S> Balance<S> {
    /// Balances each request over the endpoints of its [`Target`], counting load in `stats`.
    pub fn from_target(inner: S, stats: EndpointStats) -> Self {
        Self {
            inner,
            stats,
            mode: Mode::Target,
        }
    }

    /// Balances every request over `endpoints` with `algorithm`, whatever its target.
    pub fn new(
        inner: S,
        endpoints: impl IntoIterator<Item = Arc<Endpoint>>,
        algorithm: Algorithm,
    ) -> Self {
        Self {
            inner,
            stats: EndpointStats::new(),
            mode: Mode::Fixed {
                endpoints: endpoints.into_iter().collect(),
                algorithm,
            },
        }
    }

    /// The per-request layer (reads each request's [`Target`]); see
    /// [`BalanceLayer::from_target`].
    pub fn layer(stats: EndpointStats) -> BalanceLayer {
        BalanceLayer::from_target(stats)
    }

    pub(super) fn with_mode(inner: S, stats: EndpointStats, mode: Mode) -> Self {
        Self { inner, stats, mode }
    }

    /// The load statistics this balancer reads and updates.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the balancer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Chooses the endpoint for a request with a [`Target`].
    fn decide_for_target(
        &self,
        target: &Target,
        tried: Option<&TriedEndpoints>,
    ) -> Result<Decision, BoxError> {
        let snapshot = &target.snapshot;
        let host = target.host.as_str();
        let subset = target.subset.as_deref();
        let service = snapshot.service(host);
        let endpoints = snapshot.endpoints(host, subset);
        if endpoints.is_empty() {
            let Some(endpoint) =
                unlisted_endpoint(service, host, subset, &snapshot.settings().domain)
            else {
                return Err(NoHealthyUpstream {
                    host: target.host.clone(),
                    subset: target.subset.clone(),
                }
                .into());
            };
            // Passthrough: the requested (or DNS) host itself, at the service port, or at its
            // target port for a DNS ServiceEntry.
            let port = match service {
                Some(svc) if svc.resolution.is_some_and(|r| r != Resolution::None) => {
                    service_port_for(svc, &endpoint, target.port)
                }
                _ => target.port,
            };
            return Ok(self.choose(
                &[endpoint],
                Algorithm::LeastRequest,
                (host, subset),
                |_| port,
                tried,
            ));
        }

        let lb = snapshot
            .destination_policy(host)
            .and_then(|p| balance::load_balancer_settings(p, subset, target.port));
        if balance::wants_consistent_hash(lb) && self.stats.first_consistent_hash_fallback(host) {
            tracing::debug!(
                host,
                "consistentHash load balancing is not supported yet; using LEAST_REQUEST"
            );
        }
        let algorithm = Algorithm::from_settings(lb);
        let port_of = |e: &Endpoint| match service {
            Some(svc) => service_port_for(svc, e, target.port),
            None => e.port_for(target.port, None, None),
        };
        Ok(self.choose(endpoints, algorithm, (host, subset), port_of, tried))
    }

    /// Chooses one of `endpoints` (not empty) and takes its in-flight counter, with one
    /// read lock on the statistics in the common case.
    fn choose(
        &self,
        endpoints: &[Arc<Endpoint>],
        algorithm: Algorithm,
        (host, subset): (&str, Option<&str>),
        port_of: impl Fn(&Endpoint) -> u16,
        tried: Option<&TriedEndpoints>,
    ) -> Decision {
        let ports: Vec<u16> = endpoints.iter().map(|e| port_of(e)).collect();
        // Authorities are only needed to compare with earlier attempts (a retry).
        let tried: Option<Vec<String>> = tried
            .filter(|t| !t.is_empty())
            .and_then(|t| t.0.lock().ok().map(|v| v.clone()));
        let now_ms = self.stats.now_ms();
        let mut maps = self.stats.read();
        // Avoid endpoints already tried for this request and endpoints that recently refused
        // connections (only while some other candidate is left: the pure pick guarantees it).
        let excluded: Vec<bool> = endpoints
            .iter()
            .zip(&ports)
            .map(|(e, p)| {
                maps.is_down(&e.address, *p, now_ms)
                    || tried
                        .as_ref()
                        .is_some_and(|t| t.contains(&authority(&e.address, *p)))
            })
            .collect();

        let cursor = match algorithm {
            Algorithm::RoundRobin => match maps.next_cursor(host, subset) {
                Some(c) => c,
                None => {
                    drop(maps);
                    let c = self.stats.next_cursor_or_insert(host, subset);
                    maps = self.stats.read();
                    c
                }
            },
            _ => 0,
        };
        let index = pick(&maps, endpoints, &ports, algorithm, &excluded, cursor);
        let (endpoint, port) = (endpoints[index].clone(), ports[index]);
        let counter = maps.counter(&endpoint.address, port);
        drop(maps);
        let counter =
            counter.unwrap_or_else(|| self.stats.counter_or_insert(&endpoint.address, port));
        Decision {
            endpoint,
            port,
            counter,
        }
    }
}

/// Runs the pure [`balance::pick`] with the candidates' load and the thread's RNG.
fn pick(
    maps: &Maps,
    endpoints: &[Arc<Endpoint>],
    ports: &[u16],
    algorithm: Algorithm,
    excluded: &[bool],
    cursor: u64,
) -> usize {
    let candidates: Vec<Candidate> = endpoints
        .iter()
        .zip(ports)
        .map(|(e, p)| {
            // Only LEAST_REQUEST looks at the load.
            let in_flight = match algorithm {
                Algorithm::LeastRequest => maps.in_flight(&e.address, *p),
                _ => 0,
            };
            Candidate::new(in_flight, e.weight)
        })
        .collect();
    let mut rng = rand::rng();
    balance::pick(
        algorithm,
        &candidates,
        |i| excluded.get(i).copied().unwrap_or(false),
        cursor,
        &mut |bound| rng.random_range(0..bound.max(1)),
    )
    .unwrap_or(0)
}

/// The endpoint to use when the registry lists none: the requested host itself when the
/// registry does not know it (Istio's `ALLOW_ANY` passthrough) or when a ServiceEntry
/// resolves it by DNS or passes it through (`resolution: DNS`/`NONE` without endpoints).
/// `None` (no healthy upstream) for a subset, or a known service whose endpoints are static
/// or selected by label and none are there.
fn unlisted_endpoint(
    service: Option<&Arc<MeshService>>,
    host: &str,
    subset: Option<&str>,
    domain: &str,
) -> Option<Arc<Endpoint>> {
    if subset.is_some() {
        return None;
    }
    // A cluster-local name the registry does not know (`ratings.default.svc.cluster.local`
    // before any ratings workload registered) has no one to pass through to.
    if service.is_none() && mesh_core::host::namespace_of(host, domain).is_some() {
        return None;
    }
    if let Some(svc) = service {
        let by_name = matches!(
            svc.resolution,
            None | Some(
                Resolution::None
                    | Resolution::Dns
                    | Resolution::DnsRoundRobin
                    | Resolution::DynamicDns
            )
        );
        if !by_name || svc.declared_by.is_none() || host.starts_with('*') {
            return None;
        }
    }
    Some(Arc::new(Endpoint {
        address: host.to_owned(),
        ports: BTreeMap::new(),
        labels: BTreeMap::new(),
        service_account: String::new(),
        namespace: String::new(),
        weight: 1,
        workload: None,
    }))
}

/// The endpoint port for service port `port`: the service port's name and target port from
/// the registry (implied services have no ports, so the endpoint's only port or `port`).
fn service_port_for(svc: &MeshService, endpoint: &Endpoint, port: u16) -> u16 {
    let declared = svc.ports.iter().find(|p| p.number == u32::from(port));
    endpoint.port_for(
        port,
        declared.map(|p| p.name.as_str()).filter(|n| !n.is_empty()),
        declared.and_then(|p| p.target_port),
    )
}

/// `address:port`, with IPv6 literals in brackets.
pub(super) fn authority(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The port a request without a [`Target`] addresses (URI, else `Host`, else the scheme's).
fn request_port(req: &Request<Body>) -> u16 {
    let uri = req.uri();
    let default = if uri.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    uri.port_u16()
        .or_else(|| {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            let (_, port) = mesh_core::host::split_authority(host);
            port
        })
        .unwrap_or(default)
}

/// The host a request without a [`Target`] addresses, for error messages.
fn request_host(req: &Request<Body>) -> String {
    req.uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let host = req.headers().get(HOST)?.to_str().ok()?;
            Some(mesh_core::host::split_authority(host).0.to_owned())
        })
        .unwrap_or_default()
}

impl<S> Service<Request<Body>> for Balance<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    /// Ready when the inner service is: the balancer itself never waits (per-endpoint
    /// circuit breakers, which would make it wait, come later).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let tried = req.extensions().get::<TriedEndpoints>();
        let decision = match &self.mode {
            Mode::Target => match req.extensions().get::<Target>() {
                Some(target) => self.decide_for_target(target, tried),
                // No route decision: nothing to balance over.
                None => return ResponseFuture::called(self.inner.call(req), None, None),
            },
            Mode::Fixed {
                endpoints,
                algorithm,
            } => {
                if endpoints.is_empty() {
                    Err(NoHealthyUpstream {
                        host: request_host(&req),
                        subset: None,
                    }
                    .into())
                } else {
                    let port = request_port(&req);
                    Ok(self.choose(
                        endpoints,
                        *algorithm,
                        ("", None),
                        |e| e.port_for(port, None, None),
                        tried,
                    ))
                }
            }
        };
        let Decision {
            endpoint,
            port,
            counter,
        } = match decision {
            Ok(d) => d,
            Err(e) => return ResponseFuture::failed(e),
        };

        let authority = authority(&endpoint.address, port);
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = match Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.as_str())
            .path_and_query(pq)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return ResponseFuture::failed(
                    UpstreamConnectFailure {
                        endpoint: authority,
                        source: e.into(),
                    }
                    .into(),
                );
            }
        };
        if let Some(tried) = req.extensions().get::<TriedEndpoints>() {
            tried.record(&authority);
        }
        // The upstream application sees the authority the caller addressed, not the address
        // we connect to (Envoy keeps `:authority`/`Host` as well).
        if let Some(original) = req.uri().authority()
            && let Ok(value) = HeaderValue::from_str(original.as_str())
        {
            req.headers_mut().insert(HOST, value);
        }
        *req.uri_mut() = uri;
        let picked = PickedEndpoint {
            endpoint,
            authority,
        };
        req.extensions_mut().insert(picked.clone());
        let in_flight = InFlight::start(counter);
        ResponseFuture::called(self.inner.call(req), Some(picked), Some(in_flight))
    }
}

// === impl BalanceLayer ===

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::with_mode(inner, self.stats.clone(), self.mode.clone())
    }
}
