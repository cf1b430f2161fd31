//! Analysis across resources, as `istioctl analyze` does.
//!
//! | code | severity | finding |
//! |---|---|---|
//! | MESH0004 | Error | the same kind/namespace/name is defined twice |
//! | IST0101 | Error | a route names a subset no DestinationRule defines, or a gateway that does not exist |
//! | IST0101 | Warning | a route names a host the registry does not know (see below) |
//! | IST0109 | Error | two VirtualServices bound to the mesh define the same host |
//! | IST0112 | Error | a route to a service with several ports names no port |
//! | IST0113 | Error | a DestinationRule's TLS mode contradicts the PeerAuthentication of the workloads |
//! | IST0130 | Warning | a rule can never be reached (an earlier rule matches everything) |
//! | IST0131 | Warning | a match entry repeats an earlier one |
//! | IST0132 | Warning | a VirtualService host is not served by the Gateway it is bound to |
//! | IST0133 | Warning | a fault with no percentage (Istio then faults no request) |
//!
//! **Unknown hosts are warnings, not errors** (Istio reports them as errors). The mesh's
//! registry is dynamic: workloads register their own WorkloadEntry when they start and vanish
//! when they stop, so a route written before its backends start, or a backend that is briefly
//! down, must not make the whole configuration invalid and freeze the last snapshot.

use std::collections::BTreeMap;

use super::{Finding, Severity, codes};
use crate::{
    config::{
        Resource, Spec,
        networking::{
            ServiceEntry, VirtualService,
            virtual_service::{Destination, HttpMatchRequest},
        },
    },
    host::{DEFAULT_DOMAIN, host_matches, resolve_rule_host},
    snapshot::{DEFAULT_ROOT_NAMESPACE, MESH_GATEWAY, qualify_gateway},
    source::FieldPath,
};

/// Maps of the analysis (rebuilt on every reload of every watcher): foldhash is several
/// times faster than SipHash on short strings.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Analyzes a whole configuration.
pub fn analyze(resources: &[Resource]) -> Vec<Finding> {
    let cx = Context::new(resources);
    let mut out = Vec::new();
    duplicates(resources, &mut out);
    for r in resources {
        match &r.spec {
            Spec::VirtualService(vs) => {
                references(&cx, r, vs, &mut out);
                unreachable_rules(r, vs, &mut out);
                gateway_hosts(&cx, r, vs, &mut out);
                faults_without_percentage(r, vs, &mut out);
            }
            Spec::DestinationRule(_) => mtls_conflicts(&cx, resources, r, &mut out),
            _ => {}
        }
    }
    conflicting_mesh_hosts(resources, &mut out);
    out
}

/// What the checks look things up in.
struct Context<'a> {
    /// Known service hosts (FQDN) → ServiceEntry, if declared by one.
    hosts: HashMap<String, Option<&'a ServiceEntry>>,
    /// Wildcard ServiceEntry hosts.
    wildcard_hosts: Vec<String>,
    /// DestinationRule host (FQDN) → subset names.
    subsets: HashMap<String, HashSet<&'a str>>,
    /// Gateways by `ns/name`.
    gateways: HashMap<String, &'a Resource>,
    /// WorkloadEntries: namespace, labels.
    workloads: Vec<(&'a str, &'a BTreeMap<String, String>)>,
}

impl<'a> Context<'a> {
    fn new(resources: &'a [Resource]) -> Self {
        let mut cx = Self {
            hosts: HashMap::with_capacity_and_hasher(resources.len(), Default::default()),
            wildcard_hosts: Vec::new(),
            subsets: HashMap::default(),
            gateways: HashMap::default(),
            workloads: Vec::new(),
        };
        // Many entries share an `app` label: resolve each (namespace, app) once.
        let mut apps: HashSet<(&str, &str)> = HashSet::default();
        for r in resources {
            let ns = r.namespace();
            match &r.spec {
                Spec::ServiceEntry(se) => {
                    for h in &se.hosts {
                        let host = resolve_rule_host(h, ns, DEFAULT_DOMAIN);
                        if host.starts_with('*') {
                            cx.wildcard_hosts.push(host);
                        } else {
                            cx.hosts.insert(host, Some(se));
                        }
                    }
                }
                Spec::WorkloadEntry(we) => {
                    if let Some(app) = we.labels.get("app")
                        && apps.insert((ns, app.as_str()))
                    {
                        cx.hosts
                            .entry(resolve_rule_host(app, ns, DEFAULT_DOMAIN))
                            .or_insert(None);
                    }
                    cx.workloads.push((ns, &we.labels));
                }
                Spec::DestinationRule(dr) => {
                    let set = cx
                        .subsets
                        .entry(resolve_rule_host(&dr.host, ns, DEFAULT_DOMAIN))
                        .or_default();
                    set.extend(dr.subsets.iter().map(|s| s.name.as_str()));
                }
                Spec::Gateway(_) => {
                    cx.gateways.insert(format!("{ns}/{}", r.metadata.name), r);
                }
                _ => {}
            }
        }
        cx
    }

    fn host_known(&self, host: &str) -> bool {
        self.hosts.contains_key(host) || self.wildcard_hosts.iter().any(|w| host_matches(w, host))
    }
}

fn spec_path() -> FieldPath {
    FieldPath::root().key("spec")
}

fn duplicates(resources: &[Resource], out: &mut Vec<Finding>) {
    let mut seen: HashMap<(crate::config::Kind, &str, &str), &Resource> =
        HashMap::with_capacity_and_hasher(resources.len(), Default::default());
    for r in resources {
        let id = (r.kind(), r.namespace(), r.metadata.name.as_str());
        if let Some(first) = seen.get(&id) {
            let key = r.key();
            let where_first = first
                .source
                .as_ref()
                .map(|s| format!(" (first defined at {})", s.origin))
                .unwrap_or_default();
            out.push(Finding::about(
                r,
                None,
                codes::DUPLICATE_RESOURCE,
                Severity::Error,
                format!("{key} is defined more than once{where_first}"),
            ));
        } else {
            seen.insert(id, r);
        }
    }
}

/// Destinations, subsets, ports and gateways a VirtualService refers to (IST0101, IST0112).
fn references(cx: &Context<'_>, r: &Resource, vs: &VirtualService, out: &mut Vec<Finding>) {
    let ns = r.namespace();
    let spec = spec_path();
    let check_dest = |d: &Destination, dest_path: FieldPath, out: &mut Vec<Finding>| {
        if d.host.is_empty() {
            return; // schema validation reports it
        }
        let host = resolve_rule_host(&d.host, ns, DEFAULT_DOMAIN);
        if !cx.host_known(&host) && !host.starts_with('*') {
            out.push(Finding::about(
                r,
                Some(dest_path.key("host")),
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                Severity::Warning,
                format!(
                    "Referenced host not found: {:?} (no ServiceEntry or WorkloadEntry declares {host} yet; requests fail with 503 until one does)",
                    d.host
                ),
            ));
        }
        if let Some(subset) = &d.subset {
            let defined = cx
                .subsets
                .get(&host)
                .is_some_and(|s| s.contains(subset.as_str()));
            if !defined {
                out.push(Finding::about(
                    r,
                    Some(dest_path.key("subset")),
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    Severity::Error,
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                        d.host
                    ),
                ));
            }
        }
        if d.port.is_none()
            && let Some(Some(se)) = cx.hosts.get(&host)
            && se.ports.len() > 1
        {
            out.push(Finding::about(
                r,
                Some(dest_path.clone()),
                codes::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                Severity::Error,
                format!(
                    "This VirtualService routes to service {:?} which exposes {} ports; the destination must name one with port.number",
                    d.host,
                    se.ports.len()
                ),
            ));
        }
    };
    for (i, rule) in vs.http.iter().enumerate() {
        let rp = spec.key("http").index(i);
        for (j, rd) in rule.route.iter().enumerate() {
            check_dest(
                &rd.destination,
                rp.key("route").index(j).key("destination"),
                out,
            );
        }
        if let Some(m) = &rule.mirror {
            check_dest(m, rp.key("mirror"), out);
        }
        for (j, m) in rule.mirrors.iter().enumerate() {
            check_dest(
                &m.destination,
                rp.key("mirrors").index(j).key("destination"),
                out,
            );
        }
    }
    for (i, rule) in vs.tcp.iter().enumerate() {
        for (j, rd) in rule.route.iter().enumerate() {
            check_dest(
                &rd.destination,
                spec.key("tcp")
                    .index(i)
                    .key("route")
                    .index(j)
                    .key("destination"),
                out,
            );
        }
    }
    for (i, rule) in vs.tls.iter().enumerate() {
        for (j, rd) in rule.route.iter().enumerate() {
            check_dest(
                &rd.destination,
                spec.key("tls")
                    .index(i)
                    .key("route")
                    .index(j)
                    .key("destination"),
                out,
            );
        }
    }
    let check_gw = |gw: &str, path: FieldPath, out: &mut Vec<Finding>| {
        if gw == MESH_GATEWAY || gw.is_empty() {
            return;
        }
        let q = qualify_gateway(gw, ns);
        if !cx.gateways.contains_key(&q) {
            out.push(Finding::about(
                r,
                Some(path),
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                Severity::Error,
                format!("Referenced gateway not found: {gw:?}"),
            ));
        }
    };
    for (i, gw) in vs.gateways.iter().enumerate() {
        check_gw(gw, spec.key("gateways").index(i), out);
    }
    for (i, rule) in vs.http.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            for (k, gw) in m.gateways.iter().enumerate() {
                check_gw(
                    gw,
                    spec.key("http")
                        .index(i)
                        .key("match")
                        .index(j)
                        .key("gateways")
                        .index(k),
                    out,
                );
            }
        }
    }
}

/// True if a match entry matches every request (no condition set).
fn matches_everything(m: &HttpMatchRequest) -> bool {
    m.uri.is_none()
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.source_namespace.is_none()
        && m.gateways.is_empty()
}

/// The conditions of a match entry, without its name, for duplicate detection.
fn conditions(m: &HttpMatchRequest) -> HttpMatchRequest {
    HttpMatchRequest {
        name: None,
        stat_prefix: None,
        ..m.clone()
    }
}

/// Rules after a catch-all and repeated match entries (IST0130, IST0131).
fn unreachable_rules(r: &Resource, vs: &VirtualService, out: &mut Vec<Finding>) {
    let spec = spec_path();
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(HttpMatchRequest, usize, usize)> = Vec::new();
    for (i, rule) in vs.http.iter().enumerate() {
        let rp = spec.key("http").index(i);
        let name = rule.name.clone().unwrap_or_else(|| i.to_string());
        if let Some(c) = catch_all {
            out.push(Finding::about(
                r,
                Some(rp.clone()),
                codes::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                Severity::Warning,
                format!(
                    "rule {name} not used (rule {c} before it matches every request; only the last rule may have no match)"
                ),
            ));
            continue;
        }
        if rule.matches.is_empty() || rule.matches.iter().any(matches_everything) {
            catch_all = Some(i);
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let cond = conditions(m);
            if let Some((_, pi, pj)) = seen.iter().find(|(c, _, _)| *c == cond) {
                out.push(Finding::about(
                    r,
                    Some(rp.key("match").index(j)),
                    codes::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                    Severity::Warning,
                    format!(
                        "match {j} of rule {name} is not used (same conditions as match {pj} of rule {pi})"
                    ),
                ));
            } else {
                seen.push((cond, i, j));
            }
        }
    }
}

/// Hosts of a gateway-bound VirtualService that its Gateways do not serve (IST0132).
fn gateway_hosts(cx: &Context<'_>, r: &Resource, vs: &VirtualService, out: &mut Vec<Finding>) {
    let ns = r.namespace();
    for gw in &vs.gateways {
        if gw == MESH_GATEWAY {
            continue;
        }
        let Some(gr) = cx.gateways.get(&qualify_gateway(gw, ns)) else {
            continue;
        };
        let Spec::Gateway(g) = &gr.spec else {
            continue;
        };
        for (i, h) in vs.hosts.iter().enumerate() {
            let served = g.servers.iter().flat_map(|s| &s.hosts).any(|gh| {
                let (gns, ghost) = gh.split_once('/').unwrap_or(("*", gh));
                (gns == "*" || gns == "." && gr.namespace() == ns || gns == ns)
                    && (host_matches(ghost, h) || ghost == h || host_matches(h, ghost))
            });
            if !served {
                out.push(Finding::about(
                    r,
                    Some(spec_path().key("hosts").index(i)),
                    codes::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                    Severity::Warning,
                    format!("one or more host [{h}] defined in VirtualService {} not found in Gateway {gw}", r.key()),
                ));
            }
        }
    }
}

/// A fault whose percentage is unset faults no request in Istio; say so (IST0133).
fn faults_without_percentage(r: &Resource, vs: &VirtualService, out: &mut Vec<Finding>) {
    for (i, rule) in vs.http.iter().enumerate() {
        let Some(fault) = &rule.fault else { continue };
        let fp = spec_path().key("http").index(i).key("fault");
        if let Some(d) = &fault.delay
            && d.percentage.is_none()
            && d.percent.is_none()
        {
            out.push(Finding::about(
                r,
                Some(fp.key("delay")),
                codes::SCHEMA_WARNING,
                Severity::Warning,
                "no percentage set: as in Istio, no request is delayed (set percentage.value: 100 for all)",
            ));
        }
        if let Some(a) = &fault.abort
            && a.percentage.is_none()
            && a.percent.is_none()
        {
            out.push(Finding::about(
                r,
                Some(fp.key("abort")),
                codes::SCHEMA_WARNING,
                Severity::Warning,
                "no percentage set: as in Istio, no request is aborted (set percentage.value: 100 for all)",
            ));
        }
    }
}

/// Two VirtualServices bound to the mesh that define the same host (IST0109).
fn conflicting_mesh_hosts(resources: &[Resource], out: &mut Vec<Finding>) {
    let mut by_host: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        let on_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == MESH_GATEWAY);
        if !on_mesh {
            continue;
        }
        for h in &vs.hosts {
            let host = resolve_rule_host(h, r.namespace(), DEFAULT_DOMAIN);
            let list = by_host.entry(host).or_default();
            let same = |x: &&Resource| {
                (x.kind(), x.namespace(), x.metadata.name.as_str())
                    == (r.kind(), r.namespace(), r.metadata.name.as_str())
            };
            if !list.iter().any(same) {
                list.push(r);
            }
        }
    }
    for (host, list) in by_host {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list
            .iter()
            .map(|r| format!("{}/{}", r.namespace(), r.metadata.name))
            .collect();
        for r in &list[1..] {
            out.push(Finding::about(
                r,
                Some(spec_path().key("hosts")),
                codes::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                Severity::Error,
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            ));
        }
    }
}

/// A DestinationRule whose TLS mode contradicts the PeerAuthentication of the workloads
/// behind its host (IST0113): plaintext to a STRICT workload, or ISTIO_MUTUAL to one that has
/// mTLS disabled. The workloads are the WorkloadEntries behind the host; before any has
/// registered, a workload labelled `app: <service name>` in the service's namespace stands in.
fn mtls_conflicts(cx: &Context<'_>, resources: &[Resource], r: &Resource, out: &mut Vec<Finding>) {
    use crate::config::{
        networking::destination_rule::ClientTlsMode, security::peer_authentication::MtlsMode,
    };
    let Spec::DestinationRule(dr) = &r.spec else {
        return;
    };
    let Some(mode) = dr
        .traffic_policy
        .as_ref()
        .and_then(|t| t.tls.as_ref())
        .and_then(|t| t.mode)
    else {
        return;
    };
    let host = resolve_rule_host(&dr.host, r.namespace(), DEFAULT_DOMAIN);
    let Some(svc_ns) = crate::host::namespace_of(&host, DEFAULT_DOMAIN) else {
        return;
    };
    let app = crate::host::short_name(&host, DEFAULT_DOMAIN);
    let stand_in: BTreeMap<String, String> = [("app".to_owned(), app.clone())].into();
    let mut workloads: Vec<&BTreeMap<String, String>> = cx
        .workloads
        .iter()
        .filter(|(ns, l)| *ns == svc_ns && l.get("app") == Some(&app))
        .map(|(_, l)| *l)
        .collect();
    if workloads.is_empty() {
        workloads.push(&stand_in);
    }
    for labels in workloads {
        let server =
            crate::policy::peer_authn::compose(resources, DEFAULT_ROOT_NAMESPACE, &svc_ns, labels);
        let conflict = match (mode, server.mode) {
            (ClientTlsMode::Disable, MtlsMode::Strict) => Some(("DISABLE", "STRICT")),
            (ClientTlsMode::IstioMutual, MtlsMode::Disable) => Some(("ISTIO_MUTUAL", "DISABLE")),
            _ => None,
        };
        if let Some((client, srv)) = conflict {
            let by = server
                .decided_by
                .last()
                .map_or_else(String::new, ToString::to_string);
            out.push(Finding::about(
                r,
                Some(spec_path().key("trafficPolicy").key("tls").key("mode")),
                codes::MTLS_POLICY_CONFLICT,
                Severity::Error,
                format!(
                    "A DestinationRule and Policy are in conflict with regards to mTLS for host {host}: the DestinationRule sets mode {client} but the PeerAuthentication {by} sets {srv}"
                ),
            ));
            return;
        }
    }
}
