use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{
    HeaderValue, Request, Response, Uri,
    header::HOST,
    uri::{PathAndQuery, Scheme},
};
use mesh_core::{
    BoxError,
    config::networking::service_entry::Resolution,
    policy::{
        balance::{self, Algorithm, Balancing, Candidate},
        hash::{ConsistentTable, HashTable},
        outlier::{self, OutlierPolicy, panic_mode},
    },
    snapshot::{Endpoint, Service as MeshService, Snapshot},
};
use smallvec::SmallVec;
use tower::{Layer, Service};

use super::{
    BalanceLayer, EndpointStats,
    future::{Extras, ResponseFuture},
    hash::{CachedTable, request_hash},
    outlier::{OutlierCtx, Peers},
    stats::{EndpointLoad, InFlight},
};
use crate::{
    body::Body,
    error::{NoHealthyUpstream, UpstreamConnectFailure},
    target::{PickedEndpoint, Target, TimeoutSignal, TriedEndpoints},
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
        /// Outlier detection, if enabled with [`BalanceLayer::outlier_detection`].
        outlier: Option<OutlierPolicy>,
    },
}

/// The balancer's decision for one request.
struct Decision {
    endpoint: Arc<Endpoint>,
    port: u16,
    counter: Arc<EndpointLoad>,
    extras: Option<Box<Extras>>,
}

/// The destination being balanced, for messages and per-destination state.
#[derive(Clone, Copy)]
struct Dest<'a> {
    host: &'a str,
    subset: Option<&'a str>,
    /// The service port.
    port: u16,
    /// The snapshot the endpoint list belongs to (consistent-hash tables are cached per
    /// snapshot); `None` for a fixed list.
    snapshot: Option<&'a Arc<Snapshot>>,
}

/// What the destination's policy asks for this request.
struct Plan<'a> {
    balancing: Balancing<'a>,
    outlier: Option<OutlierPolicy>,
    /// The consistent-hash key's hash; `None` draws a random one.
    hash: Option<u64>,
}

impl Plan<'_> {
    fn simple(algorithm: Algorithm) -> Self {
        Self {
            balancing: Balancing::Simple {
                algorithm,
                warmup: None,
            },
            outlier: None,
            hash: None,
        }
    }
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
                outlier: None,
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
        req: &Request<Body>,
    ) -> Result<Decision, BoxError> {
        let tried = req.extensions().get::<TriedEndpoints>();
        let snapshot = &target.snapshot;
        let host: &str = &target.host;
        let subset = target.subset.as_deref();
        let dest = Dest {
            host,
            subset,
            port: target.port,
            snapshot: Some(snapshot),
        };
        let service = snapshot.service(host);
        // The service's own list without a subset: no second lookup of the host.
        let endpoints = match (subset, service) {
            (None, Some(svc)) => &svc.endpoints[..],
            (None, None) => &[],
            (Some(_), _) => snapshot.endpoints(host, subset),
        };
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
            return self.choose(
                &[endpoint],
                &Plan::simple(Algorithm::LeastRequest),
                dest,
                |_| port,
                tried,
            );
        }

        let policy = snapshot.destination_policy(host);
        let lb = policy.and_then(|p| balance::load_balancer_settings(p, subset, target.port));
        let balancing = balance::balancing(lb);
        let (hash, set_cookie) = match balancing {
            Balancing::ConsistentHash { key, .. } => request_hash(key, req, &self.stats),
            Balancing::Simple { .. } => (None, None),
        };
        let outlier = policy
            .and_then(|p| outlier::outlier_detection(p, subset, target.port))
            .map(OutlierPolicy::from_config);
        let plan = Plan {
            balancing,
            outlier,
            hash,
        };
        let port_of = |e: &Endpoint| endpoint_port(service.map(|s| &**s), e, target.port);
        let mut decision = self.choose(endpoints, &plan, dest, port_of, tried)?;
        if set_cookie.is_some() || outlier.is_some() {
            decision.extras = Some(Box::new(Extras {
                set_cookie,
                outlier: outlier.map(|policy| OutlierCtx {
                    policy,
                    peers: Peers::Target(target.clone()),
                    stats: self.stats.clone(),
                }),
                cut: None,
            }));
        }
        Ok(decision)
    }

    /// Chooses one of `endpoints` (not empty) and takes its in-flight counter, with one
    /// read lock on the statistics and one map lookup per candidate in the common case.
    ///
    /// Fails with [`NoHealthyUpstream`] when outlier detection ejected every endpoint and
    /// `minHealthPercent` does not put the destination in panic mode.
    fn choose(
        &self,
        endpoints: &[Arc<Endpoint>],
        plan: &Plan<'_>,
        dest: Dest<'_>,
        port_of: impl Fn(&Endpoint) -> u16,
        tried: Option<&TriedEndpoints>,
    ) -> Result<Decision, BoxError> {
        let (algorithm, warmup) = match plan.balancing {
            Balancing::Simple { algorithm, warmup } => (algorithm, warmup),
            Balancing::ConsistentHash { table, .. } => {
                return self.choose_hashed(endpoints, plan, dest, port_of, tried, table);
            }
        };
        // Authorities are only needed to compare with earlier attempts (a retry).
        let tried = tried
            .map(TriedEndpoints::snapshot)
            .filter(|t| !t.is_empty());
        let cursor = match algorithm {
            Algorithm::RoundRobin => {
                let cursor = self.stats.read().next_cursor(dest.host, dest.subset);
                cursor.unwrap_or_else(|| self.stats.next_cursor_or_insert(dest.host, dest.subset))
            }
            _ => 0,
        };
        if let Some(decision) = self.sample(
            endpoints,
            plan,
            (algorithm, cursor),
            warmup.is_some() || tried.is_some(),
            &port_of,
            dest.snapshot.map(|s| &**s),
        ) {
            return Ok(decision);
        }
        // Warmup needs to know when each endpoint was first seen: create missing counters.
        if warmup.is_some() {
            let maps = self.stats.read();
            let missing: SmallVec<[(&str, u16); INLINE]> = endpoints
                .iter()
                .map(|e| (e.address.as_str(), port_of(e)))
                .filter(|(a, p)| maps.counter_ref(a, *p).is_none())
                .collect();
            drop(maps);
            if !missing.is_empty() {
                self.stats.insert_counters(missing);
            }
        }
        // The clock is read only if some candidate was marked down (rare), or for warmup and
        // outlier detection.
        let mut now_ms = (warmup.is_some() || plan.outlier.is_some()).then(|| self.stats.now_ms());
        let maps = self.stats.read();
        let mut ports: SmallVec<[u16; INLINE]> = SmallVec::with_capacity(endpoints.len());
        let mut loads: SmallVec<[Option<&Arc<EndpointLoad>>; INLINE]> =
            SmallVec::with_capacity(endpoints.len());
        let mut candidates: SmallVec<[Candidate; INLINE]> =
            SmallVec::with_capacity(endpoints.len());
        let mut excluded: SmallVec<[bool; INLINE]> = SmallVec::with_capacity(endpoints.len());
        // Filled only with outlier detection.
        let mut ejected: SmallVec<[bool; INLINE]> = SmallVec::new();
        let mut ejected_count = 0;
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
            let weight = match (warmup, load, now_ms) {
                (Some(w), Some(l), Some(now)) => w.weight(
                    e.weight,
                    Duration::from_millis(now.saturating_sub(l.first_seen_ms())),
                ),
                _ => e.weight,
            };
            if plan.outlier.is_some() {
                let out = load.is_some_and(|l| l.is_ejected(now_ms.unwrap_or_default()));
                ejected_count += usize::from(out);
                ejected.push(out);
            }
            ports.push(port);
            loads.push(load);
            candidates.push(Candidate::new(in_flight, weight));
            excluded.push(down || was_tried);
        }
        // Ejected endpoints are left out, unless too few are healthy (panic mode).
        let skip_ejected = match &plan.outlier {
            Some(policy) if ejected_count > 0 => {
                let healthy = endpoints.len() - ejected_count;
                if panic_mode(policy, healthy, endpoints.len()) {
                    false
                } else if healthy == 0 {
                    return Err(NoHealthyUpstream {
                        host: dest.host.to_owned(),
                        subset: dest.subset.map(str::to_owned),
                    }
                    .into());
                } else {
                    true
                }
            }
            _ => false,
        };
        let index = if skip_ejected {
            let keep: SmallVec<[usize; INLINE]> =
                (0..endpoints.len()).filter(|i| !ejected[*i]).collect();
            let kept: SmallVec<[Candidate; INLINE]> = keep.iter().map(|i| candidates[*i]).collect();
            let kept_excluded: SmallVec<[bool; INLINE]> =
                keep.iter().map(|i| excluded[*i]).collect();
            keep[pick(algorithm, &kept, &kept_excluded, cursor)]
        } else {
            pick(algorithm, &candidates, &excluded, cursor)
        };
        let index = index.min(endpoints.len() - 1);
        let (endpoint, port) = (endpoints[index].clone(), ports[index]);
        let counter = loads[index].cloned();
        drop(loads);
        drop(maps);
        Ok(self.decision(endpoint, port, counter))
    }

    /// Least request (two random choices), random or round robin over many endpoints without
    /// a pass over all of them: the one or two endpoints drawn (or the cursor's) are checked
    /// and compared, so a request costs about the same with 20 endpoints or 2,000 (one read
    /// of each endpoint's weight is left). The draws and the comparison are those of the full
    /// pass ([`balance::pick`]), so the choice follows the same distribution; for round robin,
    /// a turn that lands on an endpoint marked down goes to one of the others, chosen as the
    /// full pass would.
    ///
    /// `None` (the full pass decides) for few endpoints (the pass is cheap), unequal weights
    /// (least request and round robin weigh them), warmup or a retry's tried endpoints
    /// (`exact`), while an ejection may be running (panic mode depends on how many endpoints
    /// are ejected), or when a drawn endpoint is marked down after connect failures (the pass
    /// then chooses among the others).
    fn sample(
        &self,
        endpoints: &[Arc<Endpoint>],
        plan: &Plan<'_>,
        (algorithm, cursor): (Algorithm, u64),
        exact: bool,
        port_of: &impl Fn(&Endpoint) -> u16,
        snapshot: Option<&Snapshot>,
    ) -> Option<Decision> {
        let n = endpoints.len();
        if n <= INLINE || exact {
            return None;
        }
        let mut now_ms = None;
        if plan.outlier.is_some() {
            let now = self.stats.now_ms();
            if self.stats.may_have_ejections(now) {
                return None;
            }
            now_ms = Some(now);
        }
        // The pass weighs least-request draws and the round-robin order when weights differ
        // (random ignores them). The snapshot knows for its own lists without reading every
        // endpoint again.
        if algorithm != Algorithm::Random {
            let equal = match snapshot {
                Some(snapshot) => snapshot.equal_weights(endpoints),
                None => mesh_core::snapshot::same_weights(endpoints),
            };
            if !equal {
                return None;
            }
        }
        let maps = self.stats.read();
        let mut check = |i: usize| {
            let e: &Endpoint = &endpoints[i];
            let port = port_of(e);
            let load = maps.counter_ref(&e.address, port);
            let down = load.is_some_and(|l| {
                l.marked_down() && l.is_down(*now_ms.get_or_insert_with(|| self.stats.now_ms()))
            });
            (!down).then_some((i, port, load))
        };
        let a = match algorithm {
            Algorithm::RoundRobin => usize::try_from(cursor % n as u64).unwrap_or_default(),
            _ => fastrand::usize(0..n),
        };
        let first = check(a)?;
        let (index, port, load) = if algorithm == Algorithm::LeastRequest {
            let mut b = fastrand::usize(0..n - 1);
            if b >= a {
                b += 1;
            }
            let second = check(b)?;
            let in_flight =
                |c: &(usize, u16, Option<&Arc<EndpointLoad>>)| c.2.map_or(0, |l| l.in_flight());
            match in_flight(&first).cmp(&in_flight(&second)) {
                std::cmp::Ordering::Less => first,
                std::cmp::Ordering::Greater => second,
                std::cmp::Ordering::Equal if fastrand::bool() => first,
                std::cmp::Ordering::Equal => second,
            }
        } else {
            first
        };
        let counter = load.cloned();
        drop(maps);
        Some(self.decision(endpoints[index].clone(), port, counter))
    }

    /// The decision for `endpoint` at `port`, with its load counter (created if the
    /// statistics have none yet; the caller has let go of the maps it read).
    fn decision(
        &self,
        endpoint: Arc<Endpoint>,
        port: u16,
        counter: Option<Arc<EndpointLoad>>,
    ) -> Decision {
        let counter =
            counter.unwrap_or_else(|| self.stats.counter_or_insert(&endpoint.address, port));
        Decision {
            endpoint,
            port,
            counter,
            extras: None,
        }
    }

    /// Chooses an endpoint by consistent hashing: the table is looked up (O(log n) on the
    /// ring, O(1) in Maglev) and only the endpoints the lookup visits are checked (ejected,
    /// marked down, already tried), so a request costs no per-endpoint work.
    fn choose_hashed(
        &self,
        endpoints: &[Arc<Endpoint>],
        plan: &Plan<'_>,
        dest: Dest<'_>,
        port_of: impl Fn(&Endpoint) -> u16,
        tried: Option<&TriedEndpoints>,
        kind: HashTable,
    ) -> Result<Decision, BoxError> {
        let tried = tried
            .map(TriedEndpoints::snapshot)
            .filter(|t| !t.is_empty());
        let table = self.table_for(dest, endpoints, &port_of, kind);
        let hash = plan.hash.unwrap_or_else(rand::random);
        let now = self.stats.now_ms();
        let maps = self.stats.read();
        let load = |i: usize| {
            let e = &endpoints[i];
            let port = port_of(e);
            (maps.counter_ref(&e.address, port), port)
        };
        let ejected =
            |i: usize| plan.outlier.is_some() && load(i).0.is_some_and(|l| l.is_ejected(now));
        let avoided = |i: usize| {
            let (l, port) = load(i);
            let down = l.is_some_and(|l| l.marked_down() && l.is_down(now));
            let was_tried = tried
                .as_ref()
                .is_some_and(|t| match l.and_then(|l| l.authority()) {
                    Some(a) => t.contains(a),
                    None => {
                        let a = authority(&endpoints[i].address, port);
                        t.iter().any(|x| x == a.as_str())
                    }
                });
            down || was_tried
        };
        let mut skipped_ejected = false;
        let mut index = table.lookup(hash, |i| {
            if ejected(i) {
                skipped_ejected = true;
                return false;
            }
            !avoided(i)
        });
        let mut skip_ejected = true;
        if skipped_ejected && let Some(policy) = &plan.outlier {
            // Some endpoint is ejected: count them for panic mode (rare, so O(n) is fine).
            let count = (0..endpoints.len()).filter(|i| ejected(*i)).count();
            let healthy = endpoints.len() - count;
            if panic_mode(policy, healthy, endpoints.len()) {
                skip_ejected = false;
                index = table.lookup(hash, |i| !avoided(i));
            } else if healthy == 0 {
                return Err(NoHealthyUpstream {
                    host: dest.host.to_owned(),
                    subset: dest.subset.map(str::to_owned),
                }
                .into());
            }
        }
        // Everything acceptable was avoided (tried or marked down): ignore that.
        let index = index
            .or_else(|| table.lookup(hash, |i| !(skip_ejected && ejected(i))))
            .unwrap_or(0)
            .min(endpoints.len() - 1);
        let (counter, port) = load(index);
        let counter = counter.cloned();
        drop(maps);
        Ok(self.decision(endpoints[index].clone(), port, counter))
    }

    /// The destination's consistent-hash table: the cached one if it was built for this
    /// snapshot's endpoint list, else built (once per endpoint list) and cached.
    fn table_for(
        &self,
        dest: Dest<'_>,
        endpoints: &[Arc<Endpoint>],
        port_of: &impl Fn(&Endpoint) -> u16,
        kind: HashTable,
    ) -> Arc<ConsistentTable> {
        let keys = || -> Vec<(String, u32)> {
            endpoints
                .iter()
                .map(|e| (authority(&e.address, port_of(e)), e.weight))
                .collect()
        };
        let Some(snapshot) = dest.snapshot else {
            // A fixed list (not used by the mesh: fixed lists take simple algorithms).
            return Arc::new(ConsistentTable::build(kind, &keys()));
        };
        let maps = self.stats.read();
        let cached = maps.table(dest.host, dest.subset, dest.port);
        if let Some(t) = cached
            && t.built_for(snapshot, endpoints, kind)
        {
            return t.table.clone();
        }
        let fresh = Arc::new(CachedTable::new(
            snapshot,
            endpoints,
            kind,
            keys(),
            cached.map(|c| &**c),
        ));
        drop(maps);
        let table = fresh.table.clone();
        self.stats
            .insert_table(dest.host, dest.subset, dest.port, fresh);
        table
    }
}

/// Candidates kept on the stack; destinations with more endpoints spill to the heap.
const INLINE: usize = 16;

/// Runs the pure [`balance::pick`] with the thread's generator.
fn pick(algorithm: Algorithm, candidates: &[Candidate], excluded: &[bool], cursor: u64) -> usize {
    balance::pick(
        algorithm,
        candidates,
        |i| excluded.get(i).copied().unwrap_or(false),
        cursor,
        &mut |bound| fastrand::u64(0..bound.max(1)),
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

/// The port to connect to on `e` for service port `port`.
fn endpoint_port(service: Option<&MeshService>, e: &Endpoint, port: u16) -> u16 {
    match service {
        Some(svc) => service_port_for(svc, e, port),
        None => e.port_for(port, None, None),
    }
}

/// How many of a destination's endpoints are ejected, and how many it has.
pub(super) fn count_ejected(stats: &EndpointStats, peers: &Peers, now_ms: u64) -> (usize, usize) {
    let maps = stats.read();
    let count = |endpoints: &[Arc<Endpoint>], port_of: &dyn Fn(&Endpoint) -> u16| {
        let ejected = endpoints
            .iter()
            .filter(|e| {
                maps.counter_ref(&e.address, port_of(e))
                    .is_some_and(|l| l.is_ejected(now_ms))
            })
            .count();
        (ejected, endpoints.len())
    };
    match peers {
        Peers::Target(target) => {
            let host: &str = &target.host;
            let service = target.snapshot.service(host).map(|s| &**s);
            let endpoints = target.snapshot.endpoints(host, target.subset.as_deref());
            count(endpoints, &|e| endpoint_port(service, e, target.port))
        }
        Peers::Fixed { endpoints, port } => count(endpoints, &|e| e.port_for(*port, None, None)),
    }
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

    /// Ready when the inner service is: the balancer itself never waits (ejected endpoints
    /// are left out when picking).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let decision = match &self.mode {
            Mode::Target => match req.extensions().get::<Target>() {
                Some(target) => self.decide_for_target(target, &req),
                // No route decision: nothing to balance over.
                None => {
                    return ResponseFuture::called(self.inner.call(req), None, None, None);
                }
            },
            Mode::Fixed {
                endpoints,
                algorithm,
                outlier,
            } => {
                if endpoints.is_empty() {
                    Err(NoHealthyUpstream {
                        host: request_host(&req),
                        subset: None,
                    }
                    .into())
                } else {
                    let port = request_port(&req);
                    let dest = Dest {
                        host: "",
                        subset: None,
                        port,
                        snapshot: None,
                    };
                    let plan = Plan {
                        outlier: *outlier,
                        ..Plan::simple(*algorithm)
                    };
                    self.choose(
                        endpoints,
                        &plan,
                        dest,
                        |e| e.port_for(port, None, None),
                        req.extensions().get::<TriedEndpoints>(),
                    )
                    .map(|mut d| {
                        d.extras = outlier.map(|policy| {
                            Box::new(Extras {
                                set_cookie: None,
                                outlier: Some(OutlierCtx {
                                    policy,
                                    peers: Peers::Fixed {
                                        endpoints: endpoints.clone(),
                                        port,
                                    },
                                    stats: self.stats.clone(),
                                }),
                                cut: None,
                            })
                        });
                        d
                    })
                }
            }
        };
        let Decision {
            endpoint,
            port,
            counter,
            mut extras,
        } = match decision {
            Ok(d) => d,
            Err(e) => return ResponseFuture::failed(e),
        };
        if let Some(x) = extras.as_mut()
            && x.outlier.is_some()
        {
            x.cut = req.extensions().get::<TimeoutSignal>().cloned();
        }

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
        // On the response only: the request's endpoint is its URI, and an extension on the
        // request would cost an allocation and a map insert for nothing.
        let picked = PickedEndpoint {
            endpoint,
            authority,
        };
        let in_flight = InFlight::start(counter);
        ResponseFuture::called(self.inner.call(req), Some(picked), Some(in_flight), extras)
    }
}

// === impl BalanceLayer ===

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::with_mode(inner, self.stats.clone(), self.mode.clone())
    }
}
