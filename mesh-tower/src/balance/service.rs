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
use smallvec::SmallVec;
use tower::{Layer, Service};

use super::{
    BalanceLayer, EndpointStats,
    future::ResponseFuture,
    stats::{EndpointLoad, InFlight},
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
        let host: &str = &target.host;
        let subset = target.subset.as_deref();
        let service = snapshot.service(host);
        let endpoints = snapshot.endpoints(host, subset);
        if endpoints.is_empty() {
            let Some(endpoint) =
                unlisted_endpoint(service, host, subset, &snapshot.settings().domain)
            else {
                return Err(NoHealthyUpstream {
                    host: target.host.to_string(),
                    subset: target.subset.as_deref().map(str::to_owned),
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
    /// read lock on the statistics and one map lookup per candidate in the common case.
    fn choose(
        &self,
        endpoints: &[Arc<Endpoint>],
        algorithm: Algorithm,
        (host, subset): (&str, Option<&str>),
        port_of: impl Fn(&Endpoint) -> u16,
        tried: Option<&TriedEndpoints>,
    ) -> Decision {
        // Authorities are only needed to compare with earlier attempts (a retry).
        let tried = tried
            .map(TriedEndpoints::snapshot)
            .filter(|t| !t.is_empty());
        let cursor = match algorithm {
            Algorithm::RoundRobin => {
                let cursor = self.stats.read().next_cursor(host, subset);
                cursor.unwrap_or_else(|| self.stats.next_cursor_or_insert(host, subset))
            }
            _ => 0,
        };
        // The clock is read only if some candidate was marked down (rare).
        let mut now_ms = None;
        let maps = self.stats.read();
        let mut ports: SmallVec<[u16; INLINE]> = SmallVec::with_capacity(endpoints.len());
        let mut loads: SmallVec<[Option<&Arc<EndpointLoad>>; INLINE]> =
            SmallVec::with_capacity(endpoints.len());
        let mut candidates: SmallVec<[Candidate; INLINE]> =
            SmallVec::with_capacity(endpoints.len());
        let mut excluded: SmallVec<[bool; INLINE]> = SmallVec::with_capacity(endpoints.len());
        for e in endpoints {
            let port = port_of(e);
            let load = maps.counter_ref(&e.address, port);
            // Avoid endpoints already tried for this request and endpoints that recently
            // refused connections (only while some other candidate is left: the pure pick
            // guarantees it).
            let down = load.is_some_and(|l| {
                l.marked_down() && l.is_down(*now_ms.get_or_insert_with(|| self.stats.now_ms()))
            });
            let was_tried =
                tried
                    .as_ref()
                    .is_some_and(|t| match load.and_then(|l| l.authority()) {
                        Some(a) => t.contains(a),
                        None => {
                            let a = authority(&e.address, port);
                            t.iter().any(|x| x == a.as_str())
                        }
                    });
            // Only LEAST_REQUEST looks at the load.
            let in_flight = match algorithm {
                Algorithm::LeastRequest => load.map_or(0, |l| l.in_flight()),
                _ => 0,
            };
            ports.push(port);
            loads.push(load);
            candidates.push(Candidate::new(in_flight, e.weight));
            excluded.push(down || was_tried);
        }
        let index = pick(algorithm, &candidates, &excluded, cursor);
        let (endpoint, port) = (endpoints[index].clone(), ports[index]);
        let counter = loads[index].cloned();
        drop(loads);
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

/// Candidates kept on the stack; destinations with more endpoints spill to the heap.
const INLINE: usize = 16;

/// Runs the pure [`balance::pick`] with the thread's RNG.
fn pick(algorithm: Algorithm, candidates: &[Candidate], excluded: &[bool], cursor: u64) -> usize {
    let mut rng = rand::rng();
    balance::pick(
        algorithm,
        candidates,
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

        let Some(authority) = counter.authority().cloned() else {
            let endpoint = authority(&endpoint.address, port);
            let source = http::uri::Authority::try_from(endpoint.as_str())
                .err()
                .map_or_else(|| "invalid authority".into(), Into::into);
            return ResponseFuture::failed(UpstreamConnectFailure { endpoint, source }.into());
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.clone());
        uri.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(e) => {
                return ResponseFuture::failed(
                    UpstreamConnectFailure {
                        endpoint: authority.to_string(),
                        source: e.into(),
                    }
                    .into(),
                );
            }
        };
        if let Some(tried) = req.extensions().get::<TriedEndpoints>() {
            tried.record_authority(&authority);
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
