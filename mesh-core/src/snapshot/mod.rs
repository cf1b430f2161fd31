//! The immutable snapshot the layers read: validated resources compiled for the request path.
//!
//! A [`Snapshot`] is built once per configuration change and shared behind an `Arc`
//! (swapped atomically by the store's watcher). Building it compiles every regex, resolves
//! every short host name, selects the endpoints of every subset and merges the traffic
//! policies, so that answering "where does this request go" ([`Snapshot::route`]) is a hash
//! lookup plus a scan of that host's rules, with no allocation beyond the host name.
//!
//! # Examples
//! ```
//! use std::collections::BTreeMap;
//! use mesh_core::{config::load_str, snapshot::{Caller, RequestInfo, Routing, Snapshot}};
//! let loaded = load_str(r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - match: [{ headers: { end-user: { exact: jason } } }]
//!     route: [{ destination: { host: reviews, subset: v2 } }]
//!   - route: [{ destination: { host: reviews, subset: v1 } }]
//! "#, None);
//! let snapshot = Snapshot::build(&loaded.resources)?;
//! let mut headers = http::HeaderMap::new();
//! headers.insert("end-user", "jason".parse()?);
//! let labels = BTreeMap::new();
//! let caller = Caller::mesh("default", &labels);
//! let req = RequestInfo::new(&http::Method::GET, "http", "reviews:9080", "/reviews/0", None, &headers);
//! let Routing::Matched(m) = snapshot.route(&caller, &req) else { panic!() };
//! assert_eq!(m.route.destinations()[0].subset.as_deref(), Some("v2"));
//! # Ok::<_, mesh_core::BoxError>(())
//! ```

/// Hash maps keyed by host names and subsets, looked up on every request: foldhash is several
/// times faster than SipHash on short strings and still seeded per process.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod matcher;
pub mod route;

use std::{collections::BTreeMap, sync::Arc};

pub use self::route::{Action, Route, WeightedDestination};
use crate::{
    config::{
        Kind, Resource, ResourceKey, Spec,
        networking::{
            destination_rule::{Subset, TrafficPolicy},
            gateway::Gateway,
            service_entry::{Location, Resolution, ServicePort},
            workload_entry::WorkloadEntry,
        },
    },
    host::{self, DEFAULT_DOMAIN, host_matches, resolve_rule_host},
};

/// Istio's default mesh root namespace: mesh-wide policies live there.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The name of the gateway that means "every sidecar" (every meshed client).
pub const MESH_GATEWAY: &str = "mesh";

/// Mesh-wide settings the snapshot is built with (Istio's MeshConfig, the parts we read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// Cluster domain suffix (`cluster.local`).
    pub domain: String,
    /// The mesh root namespace (`istio-system`): mesh-wide policies live there.
    pub root_namespace: String,
    /// The trust domain of SPIFFE identities (`cluster.local`).
    pub trust_domain: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            domain: DEFAULT_DOMAIN.to_owned(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            trust_domain: DEFAULT_DOMAIN.to_owned(),
        }
    }
}

/// The parts of a request that routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Authority as sent (`reviews:9080`).
    pub authority: &'a str,
    /// Host part of the authority.
    pub host: &'a str,
    /// Port part of the authority, if any.
    pub port: Option<u16>,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

impl<'a> RequestInfo<'a> {
    /// Describes a request from its parts.
    pub fn new(
        method: &'a http::Method,
        scheme: &'a str,
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a http::HeaderMap,
    ) -> Self {
        let (host, port) = host::split_authority(authority);
        Self {
            method,
            scheme,
            authority,
            host,
            port,
            path,
            query,
            headers,
        }
    }

    /// Describes an `http::Request`: the authority comes from the URI, else the `Host` header.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        let uri = req.uri();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        Self::new(
            req.method(),
            uri.scheme_str().unwrap_or("http"),
            authority,
            uri.path(),
            uri.query(),
            req.headers(),
        )
    }
}

/// Who is asking: the calling workload (for `sourceLabels`, `sourceNamespace` and the DNS
/// search path) and whether it is a gateway.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The caller's namespace.
    pub namespace: &'a str,
    /// The caller's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The gateways (`ns/name`) the caller implements; empty for a meshed workload.
    pub gateways: &'a [String],
}

impl<'a> Caller<'a> {
    /// A meshed workload (the `mesh` gateway).
    pub fn mesh(namespace: &'a str, labels: &'a BTreeMap<String, String>) -> Self {
        Self {
            namespace,
            labels,
            gateways: &[],
        }
    }

    /// A gateway workload implementing `gateways` (`ns/name`).
    pub fn gateway(
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
        gateways: &'a [String],
    ) -> Self {
        Self {
            namespace,
            labels,
            gateways,
        }
    }

    fn is_gateway(&self) -> bool {
        !self.gateways.is_empty()
    }
}

/// A workload instance: an endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or host name.
    pub address: String,
    /// Port name → port number.
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (identity).
    pub service_account: String,
    /// Namespace of the WorkloadEntry (or ServiceEntry) that declared it.
    pub namespace: String,
    /// Load balancing weight (default 1).
    pub weight: u32,
    /// The WorkloadEntry it came from, if any.
    pub workload: Option<ResourceKey>,
}

impl Endpoint {
    fn from_entry(we: &WorkloadEntry, ns: &str, workload: Option<ResourceKey>) -> Self {
        Self {
            address: we.address.clone(),
            ports: we.ports.clone(),
            labels: we.labels.clone(),
            service_account: if we.service_account.is_empty() {
                "default".to_owned()
            } else {
                we.service_account.clone()
            },
            namespace: ns.to_owned(),
            weight: we.weight.filter(|w| *w > 0).unwrap_or(1),
            workload,
        }
    }

    /// The port to connect to for service port `svc` (named `name`): the endpoint's port of
    /// that name, its only port if it has exactly one, else the service's target port or the
    /// service port itself.
    pub fn port_for(&self, svc: u16, name: Option<&str>, target: Option<u32>) -> u16 {
        let named = name.and_then(|n| self.ports.get(n));
        let only = (self.ports.len() == 1)
            .then(|| self.ports.values().next())
            .flatten();
        named
            .or(only)
            .copied()
            .or(target)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(svc)
    }
}

/// A service in the registry: a host, its ports and endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    /// The FQDN.
    pub host: String,
    /// The namespace that declared it.
    pub namespace: String,
    /// Ports (empty for a service implied by WorkloadEntry labels).
    pub ports: Vec<ServicePort>,
    /// Every endpoint.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Identities the endpoints may present (ServiceEntry `subjectAltNames` plus the
    /// endpoints' service accounts), for secure naming.
    pub identities: Vec<String>,
    /// MESH_INTERNAL or MESH_EXTERNAL.
    pub location: Option<Location>,
    /// Endpoint resolution.
    pub resolution: Option<Resolution>,
    /// The ServiceEntry that declared it; `None` when implied by a WorkloadEntry's `app` label.
    pub declared_by: Option<ResourceKey>,
}

/// A DestinationRule compiled for one host.
#[derive(Clone, Debug)]
pub struct DestinationPolicy {
    /// The rule.
    pub rule: ResourceKey,
    /// The host (FQDN or wildcard).
    pub host: String,
    /// Policy for all traffic to the host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets by name.
    pub subsets: HashMap<String, Subset>,
}

impl DestinationPolicy {
    /// The traffic policy for a subset: the subset's own fields override the rule's, field by
    /// field (`loadBalancer`, `connectionPool`, `outlierDetection`, `tls`, …), as Istio merges.
    pub fn effective(&self, subset: Option<&str>) -> Option<TrafficPolicy> {
        let base = self.traffic_policy.clone();
        let Some(over) = subset
            .and_then(|s| self.subsets.get(s))
            .and_then(|s| s.traffic_policy.clone())
        else {
            return base;
        };
        let mut merged = base.unwrap_or_default();
        if over.load_balancer.is_some() {
            merged.load_balancer = over.load_balancer;
        }
        if over.connection_pool.is_some() {
            merged.connection_pool = over.connection_pool;
        }
        if over.outlier_detection.is_some() {
            merged.outlier_detection = over.outlier_detection;
        }
        if over.tls.is_some() {
            merged.tls = over.tls;
        }
        if !over.port_level_settings.is_empty() {
            merged.port_level_settings = over.port_level_settings;
        }
        if over.retry_budget.is_some() {
            merged.retry_budget = over.retry_budget;
        }
        Some(merged)
    }
}

/// The rules of one VirtualService for one host, with the namespaces that may see them.
#[derive(Clone, Debug)]
struct RuleSet {
    visible_to: Visibility,
    routes: Vec<Arc<Route>>,
}

#[derive(Clone, Debug)]
enum Visibility {
    All,
    Namespaces(Vec<String>),
}

impl Visibility {
    fn from_export_to(export_to: &[String], own_ns: &str) -> Self {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return Self::All;
        }
        Self::Namespaces(
            export_to
                .iter()
                .map(|e| {
                    if e == "." {
                        own_ns.to_owned()
                    } else {
                        e.clone()
                    }
                })
                .collect(),
        )
    }

    fn allows(&self, ns: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }
}

/// The routes of one scope (the mesh, or one gateway), by host.
#[derive(Clone, Debug, Default)]
struct RouteTable {
    exact: HashMap<String, Vec<RuleSet>>,
    /// Wildcard hosts, most specific (longest) first.
    wildcard: Vec<(String, Vec<RuleSet>)>,
}

impl RouteTable {
    fn insert(&mut self, host: String, set: RuleSet) {
        if host.starts_with('*') {
            match self.wildcard.iter_mut().find(|(h, _)| *h == host) {
                Some((_, sets)) => sets.push(set),
                None => self.wildcard.push((host, vec![set])),
            }
        } else {
            self.exact.entry(host).or_default().push(set);
        }
    }

    fn finish(&mut self) {
        self.wildcard
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    fn lookup(&self, host: &str) -> Option<&[RuleSet]> {
        if let Some(sets) = self.exact.get(host) {
            return Some(sets);
        }
        self.wildcard
            .iter()
            .find(|(pattern, _)| host_matches(pattern, host))
            .map(|(_, sets)| sets.as_slice())
    }

    fn has(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }
}

/// The answer to "where does this request go".
#[derive(Clone, Debug)]
pub enum Routing<'s> {
    /// A VirtualService rule matched.
    Matched(RouteMatch<'s>),
    /// VirtualServices exist for the host but no rule matched: Envoy answers 404 (`NR`).
    NoMatch {
        /// The resolved host.
        host: Arc<str>,
        /// The VirtualServices consulted.
        virtual_services: Vec<Arc<ResourceKey>>,
    },
    /// No VirtualService for the host: forward to the host itself, all endpoints.
    Default {
        /// The resolved host (FQDN when the registry knows it, else as requested).
        host: Arc<str>,
    },
    /// A gateway has no route for the host: 404 (`NR`).
    NoRoute {
        /// The host as requested.
        host: Arc<str>,
    },
}

/// A matched rule.
#[derive(Clone, Debug)]
pub struct RouteMatch<'s> {
    /// The resolved host.
    pub host: Arc<str>,
    /// The rule.
    pub route: &'s Arc<Route>,
    /// The match entry that matched (`None` for a rule without matches).
    pub match_index: Option<usize>,
}

/// Why a request goes where it goes: see [`Snapshot::explain`].
#[derive(Clone, Debug)]
pub struct Explanation<'s> {
    /// The resolved host.
    pub host: String,
    /// The decision.
    pub routing: Routing<'s>,
    /// The rules tried, in order; the last one matched if the decision is a match.
    pub tried: Vec<RuleTrace<'s>>,
}

/// One rule tried while routing.
#[derive(Clone, Debug)]
pub struct RuleTrace<'s> {
    /// The rule.
    pub route: &'s Arc<Route>,
    /// For each match entry, each condition in words and whether it held.
    pub matches: Vec<Vec<(String, bool)>>,
    /// True if the rule matched.
    pub matched: bool,
}

/// A shared, immutable list of endpoints.
type EndpointList = Arc<[Arc<Endpoint>]>;

/// Identifies a list of endpoints held by a snapshot: where its elements are and how many
/// (the snapshot never changes its lists, so neither moves while it lives).
fn list_key(endpoints: &[Arc<Endpoint>]) -> (usize, usize) {
    (endpoints.as_ptr().addr(), endpoints.len())
}

/// True if every endpoint has the same weight (0 read as 1, as the balancer reads it). For
/// a list a [`Snapshot`] gave out, [`Snapshot::equal_weights`] answers without reading it.
pub fn same_weights(endpoints: &[Arc<Endpoint>]) -> bool {
    let first = endpoints.first().map_or(1, |e| e.weight.max(1));
    endpoints.iter().all(|e| e.weight.max(1) == first)
}

/// The compiled configuration.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    settings: MeshSettings,
    resources: Arc<[Resource]>,
    mesh_routes: RouteTable,
    gateway_routes: HashMap<String, RouteTable>,
    services: HashMap<String, Arc<Service>>,
    destination_rules: HashMap<String, Arc<DestinationPolicy>>,
    wildcard_destination_rules: Vec<Arc<DestinationPolicy>>,
    /// host → subset → endpoints (nested so lookups borrow `&str` keys).
    subset_endpoints: HashMap<String, HashMap<String, EndpointList>>,
    gateways: Vec<(ResourceKey, Gateway)>,
    /// Every host named exactly by a service, a route or a DestinationRule, shared so that
    /// routing a request to one copies no string.
    interned: HashMap<String, Arc<str>>,
    /// Whether some DestinationRule sets a `connectionPool` (rule, port or subset level).
    connection_pools: bool,
    /// For every endpoint list the snapshot holds (a service's, a subset's), by its address
    /// and length: whether its endpoints all have the same weight (see
    /// [`Snapshot::equal_weights`]).
    equal_weights: HashMap<(usize, usize), bool>,
}

/// A resource that passed validation still could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct BuildError {
    /// The resource.
    pub resource: ResourceKey,
    /// What went wrong.
    pub message: String,
}

impl Snapshot {
    /// Compiles `resources` (which should have passed [`validate_all`]) with default settings.
    ///
    /// [`validate_all`]: crate::validate::validate_all
    ///
    /// # Errors
    /// A resource validation would have refused (a regex that does not compile…).
    pub fn build(resources: &[Resource]) -> Result<Self, BuildError> {
        Self::build_with(resources, MeshSettings::default())
    }

    /// Compiles `resources` with the given mesh settings.
    ///
    /// # Errors
    /// As [`Snapshot::build`].
    pub fn build_with(resources: &[Resource], settings: MeshSettings) -> Result<Self, BuildError> {
        let domain = settings.domain.clone();
        let mut snap = Self {
            settings,
            resources: resources.into(),
            ..Self::default()
        };
        // Order resources deterministically: creation time, then namespace/name. Several
        // VirtualServices for one host are concatenated in this order (analysis warns).
        let mut ordered: Vec<&Resource> = resources.iter().collect();
        ordered.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, a.key())
                .cmp(&(&b.metadata.creation_timestamp, b.key()))
        });

        snap.build_registry(&ordered, &domain);

        for r in &ordered {
            match &r.spec {
                Spec::VirtualService(vs) => {
                    let key = Arc::new(r.key());
                    let ns = r.namespace();
                    let routes = vs
                        .http
                        .iter()
                        .enumerate()
                        .map(|(i, rule)| {
                            Route::compile(key.clone(), i, rule, &domain).map(Arc::new)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|message| BuildError {
                            resource: r.key(),
                            message,
                        })?;
                    let visible_to = Visibility::from_export_to(&vs.export_to, ns);
                    let gateways: Vec<String> = if vs.gateways.is_empty() {
                        vec![MESH_GATEWAY.to_owned()]
                    } else {
                        vs.gateways.iter().map(|g| qualify_gateway(g, ns)).collect()
                    };
                    for gw in gateways {
                        // Keep the rules whose match entries apply to this gateway.
                        let scoped: Vec<Arc<Route>> = routes
                            .iter()
                            .filter(|route| {
                                let rule = &vs.http[route.index];
                                rule.matches.is_empty()
                                    || rule.matches.iter().any(|m| {
                                        m.gateways.is_empty()
                                            || m.gateways
                                                .iter()
                                                .any(|g| qualify_gateway(g, ns) == gw)
                                    })
                            })
                            .cloned()
                            .collect();
                        let table = if gw == MESH_GATEWAY {
                            &mut snap.mesh_routes
                        } else {
                            snap.gateway_routes.entry(gw).or_default()
                        };
                        for h in &vs.hosts {
                            table.insert(
                                resolve_rule_host(h, ns, &domain),
                                RuleSet {
                                    visible_to: visible_to.clone(),
                                    routes: scoped.clone(),
                                },
                            );
                        }
                    }
                }
                Spec::DestinationRule(dr) => {
                    let host = resolve_rule_host(&dr.host, r.namespace(), &domain);
                    let policy = Arc::new(DestinationPolicy {
                        rule: r.key(),
                        host: host.clone(),
                        traffic_policy: dr.traffic_policy.clone(),
                        subsets: dr
                            .subsets
                            .iter()
                            .map(|s| (s.name.clone(), s.clone()))
                            .collect(),
                    });
                    if host.starts_with('*') {
                        snap.wildcard_destination_rules.push(policy);
                    } else {
                        // The oldest rule for a host wins, as in Istio.
                        snap.destination_rules.entry(host).or_insert(policy);
                    }
                }
                Spec::Gateway(gw) => snap.gateways.push((r.key(), (**gw).clone())),
                _ => {}
            }
        }
        snap.mesh_routes.finish();
        for table in snap.gateway_routes.values_mut() {
            table.finish();
        }
        snap.wildcard_destination_rules
            .sort_by_key(|p| std::cmp::Reverse(p.host.len()));

        // Endpoints of every subset, selected once.
        let mut subset_endpoints: HashMap<String, HashMap<String, EndpointList>> =
            HashMap::default();
        for policy in snap
            .destination_rules
            .values()
            .chain(snap.wildcard_destination_rules.iter())
        {
            let services: Vec<&Arc<Service>> = if policy.host.starts_with('*') {
                snap.services
                    .values()
                    .filter(|s| host_matches(&policy.host, &s.host))
                    .collect()
            } else {
                snap.services.get(&policy.host).into_iter().collect()
            };
            for svc in services {
                for (name, subset) in &policy.subsets {
                    let eps: EndpointList = svc
                        .endpoints
                        .iter()
                        .filter(|e| {
                            subset
                                .labels
                                .iter()
                                .all(|(k, v)| e.labels.get(k) == Some(v))
                        })
                        .cloned()
                        .collect();
                    subset_endpoints
                        .entry(svc.host.clone())
                        .or_default()
                        .entry(name.clone())
                        .or_insert(eps);
                }
            }
        }
        snap.subset_endpoints = subset_endpoints;
        let pools = |tp: &TrafficPolicy| {
            tp.connection_pool.is_some()
                || tp
                    .port_level_settings
                    .iter()
                    .any(|p| p.connection_pool.is_some())
        };
        snap.connection_pools = snap
            .destination_rules
            .values()
            .chain(&snap.wildcard_destination_rules)
            .any(|p| {
                p.traffic_policy.as_ref().is_some_and(pools)
                    || p.subsets
                        .values()
                        .filter_map(|s| s.traffic_policy.as_ref())
                        .any(pools)
            });
        let hosts: Vec<String> = snap
            .services
            .keys()
            .chain(snap.destination_rules.keys())
            .chain(snap.mesh_routes.exact.keys())
            .cloned()
            .collect();
        for host in hosts {
            snap.interned
                .entry(host)
                .or_insert_with_key(|h| Arc::from(h.as_str()));
        }
        // Last: the lists are where they stay.
        let lists = snap.services.values().map(|s| &s.endpoints[..]).chain(
            snap.subset_endpoints
                .values()
                .flat_map(|s| s.values())
                .map(|l| &l[..]),
        );
        let equal_weights = lists
            .filter(|l| !l.is_empty())
            .map(|l| (list_key(l), same_weights(l)))
            .collect();
        snap.equal_weights = equal_weights;
        Ok(snap)
    }

    fn build_registry(&mut self, ordered: &[&Resource], domain: &str) {
        let entries: Vec<(&Resource, &WorkloadEntry)> = ordered
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(we) => Some((*r, &**we)),
                _ => None,
            })
            .collect();
        let by_label = EntryIndex::new(&entries);
        // Declared services.
        for r in ordered {
            let Spec::ServiceEntry(se) = &r.spec else {
                continue;
            };
            let ns = r.namespace();
            let mut endpoints: Vec<Arc<Endpoint>> = se
                .endpoints
                .iter()
                .map(|we| Arc::new(Endpoint::from_entry(we, ns, None)))
                .collect();
            if let Some(sel) = &se.workload_selector {
                endpoints.extend(
                    by_label
                        .candidates(ns, &sel.labels)
                        .iter()
                        .copied()
                        .filter(|&i| sel.matches(&entries[i].1.labels))
                        .map(|i| {
                            let (wr, we) = entries[i];
                            Arc::new(Endpoint::from_entry(we, ns, Some(wr.key())))
                        }),
                );
            }
            let mut identities = se.subject_alt_names.clone();
            for sa in endpoints.iter().map(|e| &e.service_account) {
                let id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.settings.trust_domain);
                if !identities.contains(&id) {
                    identities.push(id);
                }
            }
            for h in &se.hosts {
                let host = resolve_rule_host(h, ns, domain);
                self.services.entry(host.clone()).or_insert_with(|| {
                    Arc::new(Service {
                        host,
                        namespace: ns.to_owned(),
                        ports: se.ports.clone(),
                        endpoints: endpoints.clone(),
                        identities: identities.clone(),
                        location: se.location,
                        resolution: se.resolution,
                        declared_by: Some(r.key()),
                    })
                });
            }
        }
        // Services implied by WorkloadEntry `app` labels (as a Kubernetes Service selecting
        // `app: <name>` would): `reviews.<ns>.svc.<domain>`.
        let mut implied: BTreeMap<String, Service> = BTreeMap::new();
        for (wr, we) in &entries {
            let Some(app) = we.labels.get("app") else {
                continue;
            };
            let ns = wr.namespace();
            let host = resolve_rule_host(app, ns, domain);
            if self.services.contains_key(&host) {
                continue;
            }
            let ep = Arc::new(Endpoint::from_entry(we, ns, Some(wr.key())));
            let id = format!(
                "spiffe://{}/ns/{ns}/sa/{}",
                self.settings.trust_domain, ep.service_account
            );
            let svc = implied.entry(host.clone()).or_insert_with(|| Service {
                host,
                namespace: ns.to_owned(),
                ports: Vec::new(),
                endpoints: Vec::new(),
                identities: Vec::new(),
                location: Some(Location::MeshInternal),
                resolution: Some(Resolution::Static),
                declared_by: None,
            });
            if !svc.identities.contains(&id) {
                svc.identities.push(id);
            }
            svc.endpoints.push(ep);
        }
        for (host, svc) in implied {
            self.services.insert(host, Arc::new(svc));
        }
    }

    /// The mesh settings the snapshot was built with.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// Every resource in the snapshot (for `config_dump`).
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resources of one kind.
    pub fn resources_of(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(move |r| r.kind() == kind)
    }

    /// Resolves a requested host (`reviews`, `reviews.default`, an FQDN) for a caller in
    /// namespace `ns`: the first name on the DNS search path that the mesh knows (a service,
    /// a VirtualService host or a DestinationRule host); else, for a short name, the name in
    /// the caller's namespace (`reviews.ns.svc.cluster.local`), and for any other name the
    /// name as written (passed through, Istio's ALLOW_ANY).
    pub fn resolve_host(&self, requested: &str, ns: &str) -> String {
        self.resolve_host_shared(requested, ns).to_string()
    }

    /// [`resolve_host`](Self::resolve_host), as a shared string: a host the configuration
    /// names is not copied.
    pub fn resolve_host_shared(&self, requested: &str, ns: &str) -> Arc<str> {
        let known = |h: &str| {
            self.services.contains_key(h)
                || self.mesh_routes.has(h)
                || self.destination_rules.contains_key(h)
        };
        // The common case without the list: a short name in the caller's namespace.
        let requested = requested.trim_end_matches('.');
        if !requested.contains('.') && !requested.bytes().any(|b| b.is_ascii_uppercase()) {
            // Built on the stack: this runs for every request.
            let domain = &self.settings.domain;
            let mut buf = [0u8; 256];
            let mut len = 0;
            for part in [requested, ".", ns, ".svc.", domain] {
                let Some(dst) = buf.get_mut(len..len + part.len()) else {
                    len = usize::MAX;
                    break;
                };
                dst.copy_from_slice(part.as_bytes());
                len += part.len();
            }
            if let Some(fqdn) = buf.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
                // One lookup: every host a service, rule or route names exactly is interned.
                if let Some(shared) = self.interned.get(fqdn) {
                    return Arc::clone(shared);
                }
                if known(fqdn) {
                    return self.intern_str(fqdn);
                }
            }
        }
        let path = host::search_path(requested, ns, &self.settings.domain);
        if let Some(h) = path.iter().find(|h| known(h)) {
            return self.intern_str(h);
        }
        // Unknown: a short name can only mean a service of the caller's namespace (Kubernetes
        // DNS would not resolve it anywhere else), so it stays cluster-local and gets "no
        // healthy upstream" instead of an outside DNS lookup; other names pass through.
        if requested.contains('.') {
            self.intern_str(&requested.to_ascii_lowercase())
        } else {
            self.intern_str(path.first().map_or("", String::as_str))
        }
    }

    /// True if some DestinationRule sets a `connectionPool` (at the rule, port or subset
    /// level): while none does, circuit breakers have nothing to look up.
    pub fn has_connection_pools(&self) -> bool {
        self.connection_pools
    }

    /// The shared copy of `host` if the configuration names it, else a new one.
    fn intern_str(&self, host: &str) -> Arc<str> {
        match self.interned.get(host) {
            Some(shared) => Arc::clone(shared),
            None => Arc::from(host),
        }
    }

    /// Routes a request: which VirtualService rule applies, or the default route.
    ///
    /// For a meshed caller the host is resolved with the caller's DNS search path and the
    /// `mesh` rules apply; for a gateway the request's host is matched against the rules bound
    /// to its gateways. Rules are tried in order and the first match wins; several
    /// VirtualServices for one host are tried in creation order.
    pub fn route<'s>(&'s self, caller: &Caller<'_>, req: &RequestInfo<'_>) -> Routing<'s> {
        if caller.is_gateway() {
            let host: Arc<str> = req.host.to_ascii_lowercase().into();
            let tables = caller
                .gateways
                .iter()
                .filter_map(|gw| self.gateway_routes.get(gw))
                .filter_map(|t| t.lookup(&host));
            let mut found = false;
            let mut consulted = Vec::new();
            for sets in tables {
                found = true;
                if let Some(m) = Self::first_match(sets, caller, req, &host, &mut consulted) {
                    return Routing::Matched(m);
                }
            }
            if !found {
                return Routing::NoRoute { host };
            }
            return Routing::NoMatch {
                host,
                virtual_services: consulted,
            };
        }
        let host = self.resolve_host_shared(req.host, caller.namespace);
        let Some(sets) = self.mesh_routes.lookup(&host) else {
            return Routing::Default { host };
        };
        if !sets.iter().any(|s| s.visible_to.allows(caller.namespace)) {
            return Routing::Default { host };
        }
        let mut consulted = Vec::new();
        match Self::first_match(sets, caller, req, &host, &mut consulted) {
            Some(m) => Routing::Matched(m),
            None => Routing::NoMatch {
                host,
                virtual_services: consulted,
            },
        }
    }

    /// The first rule of `sets` (visible to the caller) that matches.
    fn first_match<'s>(
        sets: &'s [RuleSet],
        caller: &Caller<'_>,
        req: &RequestInfo<'_>,
        host: &Arc<str>,
        consulted: &mut Vec<Arc<ResourceKey>>,
    ) -> Option<RouteMatch<'s>> {
        for set in sets {
            if !set.visible_to.allows(caller.namespace) {
                continue;
            }
            for route in &set.routes {
                if let Some(match_index) = route.find_match(caller, req) {
                    return Some(RouteMatch {
                        host: Arc::clone(host),
                        route,
                        match_index,
                    });
                }
                if !consulted.contains(&route.virtual_service) {
                    consulted.push(route.virtual_service.clone());
                }
            }
        }
        None
    }

    /// Routes a request like [`Snapshot::route`] and explains the decision: every rule tried,
    /// in order, with each condition and whether it held. What `meshctl describe` prints.
    pub fn explain<'s>(&'s self, caller: &Caller<'_>, req: &RequestInfo<'_>) -> Explanation<'s> {
        let routing = self.route(caller, req);
        let host = match &routing {
            Routing::Matched(m) => m.host.clone(),
            Routing::NoMatch { host, .. }
            | Routing::Default { host }
            | Routing::NoRoute { host } => host.clone(),
        };
        let mut tried = Vec::new();
        let sets: Vec<&RuleSet> = if caller.is_gateway() {
            caller
                .gateways
                .iter()
                .filter_map(|gw| self.gateway_routes.get(gw))
                .filter_map(|t| t.lookup(&req.host.to_ascii_lowercase()))
                .flatten()
                .collect()
        } else {
            self.mesh_routes
                .lookup(&host)
                .into_iter()
                .flatten()
                .collect()
        };
        'sets: for set in sets {
            if !set.visible_to.allows(caller.namespace) {
                continue;
            }
            for route in &set.routes {
                let matches: Vec<Vec<(String, bool)>> = route
                    .matches
                    .iter()
                    .map(|m| m.explain(caller, req))
                    .collect();
                let matched = route.find_match(caller, req).is_some();
                tried.push(RuleTrace {
                    route,
                    matches,
                    matched,
                });
                if matched {
                    break 'sets;
                }
            }
        }
        Explanation {
            host: host.to_string(),
            routing,
            tried,
        }
    }

    /// The service for an FQDN.
    pub fn service(&self, host: &str) -> Option<&Arc<Service>> {
        self.services.get(host)
    }

    /// Every service, by host.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The DestinationRule that applies to a host (exact first, then the longest wildcard).
    pub fn destination_policy(&self, host: &str) -> Option<&Arc<DestinationPolicy>> {
        self.destination_rules.get(host).or_else(|| {
            self.wildcard_destination_rules
                .iter()
                .find(|p| host_matches(&p.host, host))
        })
    }

    /// The traffic policy for a host and subset, with the subset's settings merged in.
    pub fn traffic_policy(&self, host: &str, subset: Option<&str>) -> Option<TrafficPolicy> {
        self.destination_policy(host)?.effective(subset)
    }

    /// True if every endpoint of `endpoints` has the same weight (a weight of 0 counts as 1,
    /// as the balancer reads it). For a list this snapshot gave out ([`Service::endpoints`]
    /// of [`Snapshot::service`], [`Snapshot::endpoints`]) the answer was worked out when the
    /// snapshot was built, so a balancer asking per request does not read every endpoint of
    /// a large service again; any other list is scanned.
    pub fn equal_weights(&self, endpoints: &[Arc<Endpoint>]) -> bool {
        if endpoints.is_empty() {
            return true;
        }
        match self.equal_weights.get(&list_key(endpoints)) {
            Some(equal) => *equal,
            None => same_weights(endpoints),
        }
    }

    /// The endpoints of a host, or of one of its subsets. An unknown subset has none.
    pub fn endpoints(&self, host: &str, subset: Option<&str>) -> &[Arc<Endpoint>] {
        match subset {
            Some(s) => self
                .subset_endpoints
                .get(host)
                .and_then(|subsets| subsets.get(s))
                .map_or(&[], |e| &e[..]),
            None => self.services.get(host).map_or(&[], |s| &s.endpoints[..]),
        }
    }

    /// The Gateways (`ns/name`) whose selector matches a gateway workload's labels.
    pub fn gateways_for(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        self.gateways
            .iter()
            .filter(|(_, gw)| {
                !gw.selector.is_empty() && gw.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|(key, _)| format!("{}/{}", key.namespace, key.name))
            .collect()
    }

    /// The Gateway resources.
    pub fn gateways(&self) -> impl Iterator<Item = (&ResourceKey, &Gateway)> {
        self.gateways.iter().map(|(k, g)| (k, g))
    }
}

/// The WorkloadEntries of a build by namespace and by label, so that selecting the entries of
/// a ServiceEntry looks at the entries carrying one of its selector's labels instead of at
/// every entry (500 ServiceEntries × 1,000 entries made the registry quadratic).
#[derive(Default)]
struct EntryIndex<'a> {
    /// Namespace → its entries, in build order, and label → value → the entries with it.
    namespaces: HashMap<&'a str, NamespaceEntries<'a>>,
}

#[derive(Default)]
struct NamespaceEntries<'a> {
    all: Vec<usize>,
    by_label: HashMap<&'a str, HashMap<&'a str, Vec<usize>>>,
}

impl<'a> EntryIndex<'a> {
    fn new(entries: &[(&'a Resource, &'a WorkloadEntry)]) -> Self {
        let mut index = Self::default();
        for (i, (r, we)) in entries.iter().enumerate() {
            let ns = index.namespaces.entry(r.namespace()).or_default();
            ns.all.push(i);
            for (k, v) in &we.labels {
                ns.by_label
                    .entry(k.as_str())
                    .or_default()
                    .entry(v.as_str())
                    .or_default()
                    .push(i);
            }
        }
        index
    }

    /// Indexes of the entries of namespace `ns` that may match `selector` (a superset of the
    /// matching ones, in build order): those with the selector's rarest label, or every entry
    /// of the namespace for an empty selector.
    fn candidates(&self, ns: &str, selector: &BTreeMap<String, String>) -> &[usize] {
        let Some(ns) = self.namespaces.get(ns) else {
            return &[];
        };
        if selector.is_empty() {
            return &ns.all;
        }
        selector
            .iter()
            .map(|(k, v)| {
                ns.by_label
                    .get(k.as_str())
                    .and_then(|values| values.get(v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|l| l.len())
            .unwrap_or(&[])
    }
}

/// `name` → `ns/name`; `mesh` stays `mesh`.
pub fn qualify_gateway(gw: &str, ns: &str) -> String {
    if gw == MESH_GATEWAY || gw.contains('/') {
        gw.to_owned()
    } else {
        format!("{ns}/{gw}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn entry(name: &str, ns: &str, labels: &str, ip: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: {ip}, labels: {labels}}}\n---\n"
        )
    }

    fn service(name: &str, selector: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{name}]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {selector}}}\n---\n"
        )
    }

    fn addresses(snap: &Snapshot, host: &str) -> Vec<String> {
        snap.endpoints(host, None)
            .iter()
            .map(|e| e.address.clone())
            .collect()
    }

    #[test]
    fn workload_selectors_pick_every_matching_entry_of_their_namespace_in_order() {
        let yaml = [
            service("both", "{app: a, version: v1}"),
            service("app", "{app: a}"),
            service("everything", "{}"),
            service("nobody", "{app: zz}"),
            entry("e3", "shop", "{app: a, version: v1}", "10.0.0.3"),
            entry("e1", "shop", "{app: a, version: v1}", "10.0.0.1"),
            entry("e2", "shop", "{app: a, version: v2}", "10.0.0.2"),
            entry("e4", "shop", "{app: b, version: v1}", "10.0.0.4"),
            entry("elsewhere", "other", "{app: a, version: v1}", "10.0.0.9"),
        ]
        .concat();
        let loaded = load_str(&yaml, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snap = Snapshot::build(&loaded.resources).unwrap();
        let host = |n: &str| format!("{n}.shop.svc.cluster.local");
        // Entries in build order (creation time, then name), the other namespace never.
        assert_eq!(addresses(&snap, &host("both")), ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(
            addresses(&snap, &host("app")),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(
            addresses(&snap, &host("everything")),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert!(addresses(&snap, &host("nobody")).is_empty());
    }

    /// The snapshot answers whether a list's weights are equal from what it worked out when
    /// built, for its own lists, and by reading any other list.
    #[test]
    fn knows_which_endpoint_lists_have_equal_weights() {
        let loaded = crate::config::load_str(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: a-1, namespace: default }
spec: { address: 10.0.0.1, labels: { app: a, version: v1 }, ports: { http: 80 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: a-2, namespace: default }
spec: { address: 10.0.0.2, labels: { app: a, version: v2 }, weight: 3, ports: { http: 80 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: a-3, namespace: default }
spec: { address: 10.0.0.3, labels: { app: a, version: v2 }, weight: 3, ports: { http: 80 } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: a, namespace: default }
spec:
  hosts: [a.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  workloadSelector: { labels: { app: a } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: a, namespace: default }
spec:
  host: a.default.svc.cluster.local
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
",
            None,
        );
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let snap = Snapshot::build(&loaded.resources).unwrap();
        let host = "a.default.svc.cluster.local";
        let all = snap.endpoints(host, None);
        assert_eq!(all.len(), 3);
        assert!(!snap.equal_weights(all), "weights 1, 3, 3");
        assert!(snap.equal_weights(snap.endpoints(host, Some("v2"))), "3, 3");
        assert!(
            snap.equal_weights(snap.endpoints(host, Some("v1"))),
            "one endpoint"
        );
        // Lists it did not give out are read: a copy, a part.
        let copy = all.to_vec();
        assert!(!snap.equal_weights(&copy));
        assert!(snap.equal_weights(&all[1..]));
        assert!(!snap.equal_weights(&all[..2]));
        assert!(snap.equal_weights(&[]));
        // A clone shares the lists and what is known of them.
        assert!(!snap.clone().equal_weights(snap.endpoints(host, None)));
    }
}
