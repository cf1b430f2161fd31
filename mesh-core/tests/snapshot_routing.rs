//! The snapshot routes requests as Istio would, for Istio's own Bookinfo configuration.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use mesh_core::{
    config::{Resource, ResourceKey, load_path, load_str},
    policy::{
        fault::{AbortWith, PerMillion},
        retry::{RetryCondition, RetryPolicy},
    },
    snapshot::{Action, Caller, RequestInfo, Routing, Snapshot},
    validate::validate_all,
};

fn compat(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio-compat")
        .join(file)
}

/// Bookinfo's workloads, registered as WorkloadEntries the way running services register.
const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: productpage-v1 }
spec: { address: 127.0.0.1, ports: { http: 20001 }, labels: { app: productpage, version: v1 }, serviceAccount: bookinfo-productpage }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: details-v1 }
spec: { address: 127.0.0.1, ports: { http: 20002 }, labels: { app: details, version: v1 }, serviceAccount: bookinfo-details }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1 }
spec: { address: 127.0.0.1, ports: { http: 20003 }, labels: { app: reviews, version: v1 }, serviceAccount: bookinfo-reviews }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2 }
spec: { address: 127.0.0.1, ports: { http: 20004 }, labels: { app: reviews, version: v2 }, serviceAccount: bookinfo-reviews }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v3 }
spec: { address: 127.0.0.1, ports: { http: 20005 }, labels: { app: reviews, version: v3 }, serviceAccount: bookinfo-reviews }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ratings-v1 }
spec: { address: 127.0.0.1, ports: { http: 20006 }, labels: { app: ratings, version: v1 }, serviceAccount: bookinfo-ratings }
"#;

/// Bookinfo with the DestinationRules and gateway applied, then `files` applied on top
/// (a later resource with the same key replaces an earlier one, as `apply` does).
fn bookinfo(files: &[&str]) -> Vec<Resource> {
    let mut by_key: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
    let mut add = |rs: Vec<Resource>| {
        for r in rs {
            by_key.insert(r.key(), r);
        }
    };
    let base = load_str(WORKLOADS, None);
    assert!(base.findings.is_empty(), "{:?}", base.findings);
    add(base.resources);
    for f in ["destination-rule-all.yaml", "bookinfo-gateway.yaml"]
        .iter()
        .chain(files)
    {
        let loaded = load_path(&compat(f));
        assert!(loaded.findings.is_empty(), "{f}: {:?}", loaded.findings);
        add(loaded.resources);
    }
    by_key.into_values().collect()
}

fn snapshot(files: &[&str]) -> Snapshot {
    let resources = bookinfo(files);
    let findings = validate_all(&resources);
    assert!(!findings.has_errors(), "{findings}");
    Snapshot::build(&resources).expect("snapshot builds")
}

struct Req {
    method: http::Method,
    authority: String,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
}

fn req(authority: &str, path: &str) -> Req {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.to_owned(), None),
    };
    Req {
        method: http::Method::GET,
        authority: authority.to_owned(),
        path,
        query,
        headers: http::HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.insert(k, v.parse().unwrap());
        self
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo::new(
            &self.method,
            "http",
            &self.authority,
            &self.path,
            self.query.as_deref(),
            &self.headers,
        )
    }
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Routes from a meshed workload in `default` and returns (host, subset) of the destination
/// picked with `draw`.
fn dest(s: &Snapshot, r: &Req, draw: u32) -> (String, Option<String>) {
    let labels = no_labels();
    match s.route(&Caller::mesh("default", &labels), &r.info()) {
        Routing::Matched(m) => {
            let d = m.route.pick(draw).expect("a destination");
            (d.host.to_string(), d.subset.as_deref().map(str::to_owned))
        }
        Routing::Default { host } => (host.to_string(), None),
        other => panic!("unexpected routing {other:?}"),
    }
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn without_virtual_service_reviews_goes_to_every_version() {
    let s = snapshot(&[]);
    let labels = no_labels();
    let r = req("reviews:9080", "/reviews/0");
    let Routing::Default { host } = s.route(&Caller::mesh("default", &labels), &r.info()) else {
        panic!("default route expected");
    };
    assert_eq!(&*host, REVIEWS);
    let eps = s.endpoints(&host, None);
    let mut versions: Vec<&str> = eps.iter().map(|e| e.labels["version"].as_str()).collect();
    versions.sort_unstable();
    assert_eq!(versions, ["v1", "v2", "v3"]);
}

#[test]
fn all_v1_sends_everything_to_v1() {
    let s = snapshot(&["virtual-service-all-v1.yaml"]);
    for (host, full) in [
        ("productpage:9080", "productpage.default.svc.cluster.local"),
        ("reviews:9080", REVIEWS),
        ("ratings", "ratings.default.svc.cluster.local"),
        ("details.default:9080", "details.default.svc.cluster.local"),
    ] {
        for draw in [0, 1, 57, 99, u32::MAX] {
            let r = req(host, "/").header("end-user", "jason");
            assert_eq!(dest(&s, &r, draw), (full.to_owned(), Some("v1".to_owned())));
        }
    }
    let eps = s.endpoints(REVIEWS, Some("v1"));
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].port_for(9080, Some("http"), None), 20003);
}

#[test]
fn test_v2_sends_jason_to_v2_and_others_to_v1() {
    let s = snapshot(&["virtual-service-reviews-test-v2.yaml"]);
    let jason = req("reviews:9080", "/reviews/0").header("end-user", "jason");
    assert_eq!(dest(&s, &jason, 0).1.as_deref(), Some("v2"));
    let other = req("reviews:9080", "/reviews/0").header("end-user", "mallory");
    assert_eq!(dest(&s, &other, 0).1.as_deref(), Some("v1"));
    let anon = req("reviews:9080", "/reviews/0");
    assert_eq!(dest(&s, &anon, 0).1.as_deref(), Some("v1"));
    // Header values are case-sensitive, as in Istio.
    let jason_caps = req("reviews:9080", "/").header("end-user", "Jason");
    assert_eq!(dest(&s, &jason_caps, 0).1.as_deref(), Some("v1"));
}

fn share(s: &Snapshot, file_hint: &str) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for draw in 0..1000u32 {
        let (_, subset) = dest(s, &req("reviews", "/"), draw);
        *counts.entry(subset.unwrap_or_default()).or_default() += 1;
    }
    assert!(!counts.is_empty(), "{file_hint}");
    counts
}

#[test]
fn weights_split_traffic_proportionally() {
    let s = snapshot(&["virtual-service-reviews-80-20.yaml"]);
    let c = share(&s, "80-20");
    assert_eq!((c["v1"], c["v2"]), (800, 200));
    let s = snapshot(&["virtual-service-reviews-50-v3.yaml"]);
    let c = share(&s, "50-v3");
    assert_eq!((c["v1"], c["v3"]), (500, 500));
    let s = snapshot(&["virtual-service-reviews-v2-v3.yaml"]);
    let c = share(&s, "v2-v3");
    assert_eq!(c.get("v1"), None);
    assert_eq!(c["v2"] + c["v3"], 1000);
}

#[test]
fn jason_v2_v3_file_routes_by_user() {
    let s = snapshot(&["virtual-service-reviews-jason-v2-v3.yaml"]);
    let jason = req("reviews", "/").header("end-user", "jason");
    assert_eq!(dest(&s, &jason, 0).1.as_deref(), Some("v2"));
    assert_eq!(dest(&s, &req("reviews", "/"), 0).1.as_deref(), Some("v3"));
}

fn matched<'s>(s: &'s Snapshot, r: &Req) -> mesh_core::snapshot::RouteMatch<'s> {
    let labels = no_labels();
    match s.route(&Caller::mesh("default", &labels), &r.info()) {
        Routing::Matched(m) => m,
        other => panic!("expected a matched route, got {other:?}"),
    }
}

#[test]
fn delay_fault_applies_to_jason_only() {
    let s = snapshot(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ]);
    let jason = matched(
        &s,
        &req("ratings:9080", "/ratings/0").header("end-user", "jason"),
    );
    let fault = jason.route.fault.as_ref().expect("a fault for jason");
    assert_eq!(
        fault.delay,
        Some((std::time::Duration::from_secs(7), PerMillion::ALL))
    );
    assert!(fault.abort.is_none());
    let other = matched(&s, &req("ratings:9080", "/ratings/0"));
    assert!(other.route.fault.is_none());
}

#[test]
fn abort_fault_with_deprecated_percent_aborts_all_of_jasons_requests() {
    let s = snapshot(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-ratings-test-abort.yaml",
    ]);
    let jason = matched(&s, &req("ratings", "/").header("end-user", "jason"));
    let fault = jason.route.fault.as_ref().unwrap();
    assert_eq!(fault.abort, Some((AbortWith::Http(500), PerMillion::ALL)));
    let s = snapshot(&["fault-injection-details-v1.yaml"]);
    let m = matched(&s, &req("details:9080", "/details/0"));
    assert_eq!(
        m.route.fault.as_ref().unwrap().abort,
        Some((AbortWith::Http(555), PerMillion::ALL))
    );
}

#[test]
fn timeout_and_delay_for_the_request_timeout_task() {
    let s = snapshot(&["virtual-service-reviews-timeout.yaml"]);
    let m = matched(&s, &req("reviews", "/reviews/0"));
    assert_eq!(m.route.timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(m.route.destinations()[0].subset.as_deref(), Some("v2"));
    let m = matched(&s, &req("ratings", "/ratings/0"));
    assert_eq!(
        m.route.fault.as_ref().unwrap().delay,
        Some((std::time::Duration::from_secs(2), PerMillion::ALL))
    );
    // A route without `timeout` has none (Istio's default is disabled).
    let s = snapshot(&["virtual-service-all-v1.yaml"]);
    assert_eq!(matched(&s, &req("reviews", "/")).route.timeout, None);
    assert_eq!(
        matched(&s, &req("reviews", "/")).route.retries,
        RetryPolicy::MeshDefault
    );
}

#[test]
fn retries_are_read_as_written() {
    let s = snapshot(&["virtual-service-ratings-retries.yaml"]);
    let m = matched(&s, &req("ratings", "/"));
    let RetryPolicy::Explicit(p) = &m.route.retries else {
        panic!("explicit retries expected");
    };
    assert_eq!(p.attempts, 3);
    assert_eq!(p.per_try_timeout, Some(std::time::Duration::from_secs(2)));
    assert!(p.retry_on.has(RetryCondition::GatewayError));
    assert!(p.retry_on.has(RetryCondition::ConnectFailure));
    assert!(p.retry_on.has(RetryCondition::RefusedStream));
    assert!(!p.retry_on.has(RetryCondition::FiveXx));
    assert!(p.retry_on.status_codes().is_empty());
}

#[test]
fn gateway_routes_bookinfo_paths_to_productpage() {
    let s = snapshot(&[]);
    let mut gw_labels = BTreeMap::new();
    gw_labels.insert("istio".to_owned(), "ingressgateway".to_owned());
    let gateways = s.gateways_for(&gw_labels);
    assert_eq!(gateways, ["default/bookinfo-gateway"]);
    let caller = Caller::gateway("default", &gw_labels, &gateways);
    for path in [
        "/productpage",
        "/static/css/x.css",
        "/login",
        "/logout",
        "/api/v1/products/0/reviews",
    ] {
        let r = req("127.0.0.1:8080", path);
        let Routing::Matched(m) = s.route(&caller, &r.info()) else {
            panic!("{path} should route");
        };
        let d = &m.route.destinations()[0];
        assert_eq!(&*d.host, "productpage.default.svc.cluster.local");
        assert_eq!(d.port, Some(9080));
    }
    for path in ["/", "/productpage/x", "/admin"] {
        let r = req("example.com", path);
        assert!(
            matches!(s.route(&caller, &r.info()), Routing::NoMatch { .. }),
            "{path} must not route"
        );
    }
    // The gateway's rules do not apply to meshed workloads.
    let labels = no_labels();
    let r = req("productpage:9080", "/anything");
    assert!(matches!(
        s.route(&Caller::mesh("default", &labels), &r.info()),
        Routing::Default { .. }
    ));
    // A workload without the gateway's labels implements no gateway.
    assert!(s.gateways_for(&no_labels()).is_empty());
}

#[test]
fn subset_traffic_policy_overrides_the_host_policy() {
    use mesh_core::config::networking::destination_rule::SimpleLb;
    let s = snapshot(&["destination-rule-reviews-lb.yaml"]);
    let lb = |subset| {
        s.traffic_policy(REVIEWS, subset)
            .and_then(|p| p.load_balancer)
            .unwrap()
    };
    assert_eq!(lb(None).simple, Some(SimpleLb::LeastRequest));
    assert_eq!(lb(Some("v1")).simple, Some(SimpleLb::LeastRequest));
    assert_eq!(
        lb(Some("v2"))
            .consistent_hash
            .unwrap()
            .http_header_name
            .as_deref(),
        Some("end-user")
    );
    assert_eq!(lb(Some("v3")).simple, Some(SimpleLb::RoundRobin));
}

#[test]
fn service_entry_selects_workload_entries_as_endpoints() {
    let loaded = load_path(&compat("service-entry-workload-entries.yaml"));
    assert!(loaded.findings.is_empty());
    let s = Snapshot::build(&loaded.resources).unwrap();
    let svc = s.service("details.bookinfo.com").expect("declared service");
    let mut addrs: Vec<&str> = svc.endpoints.iter().map(|e| e.address.as_str()).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, ["127.0.0.1", "127.0.0.2"]);
    assert_eq!(svc.ports[0].number, 9080);
    assert!(
        svc.identities
            .contains(&"spiffe://cluster.local/ns/default/sa/details-legacy".to_owned())
    );
    // The host resolves as written from any namespace.
    assert_eq!(
        s.resolve_host("details.bookinfo.com", "other"),
        "details.bookinfo.com"
    );
}

#[test]
fn short_names_resolve_in_the_callers_namespace() {
    let s = snapshot(&["virtual-service-all-v1.yaml"]);
    let labels = no_labels();
    // From another namespace, `reviews` is reviews.other…, which the mesh does not know: it
    // stays cluster-local (no healthy upstream later), it is not passed to outside DNS.
    let r = req("reviews:9080", "/");
    let Routing::Default { host } = s.route(&Caller::mesh("other", &labels), &r.info()) else {
        panic!("default expected");
    };
    assert_eq!(&*host, "reviews.other.svc.cluster.local");
    assert!(s.service(&host).is_none());
    // `reviews.default` follows the search path to the service.
    let r = req("reviews.default:9080", "/");
    assert!(matches!(
        s.route(&Caller::mesh("other", &labels), &r.info()),
        Routing::Matched(_)
    ));
}

const EXTRA: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: api, namespace: shop }
spec:
  hosts: [api]
  exportTo: ["."]
  http:
  - name: canary
    match:
    - sourceLabels: { app: tester }
      uri: { prefix: /v1/ }
    rewrite: { uri: /v2/ }
    route: [{ destination: { host: api, subset: canary } }]
  - name: query
    match:
    - queryParams: { debug: { exact: "" } }
      method: { exact: POST }
    directResponse: { status: 418, body: { string: teapot } }
  - name: regex
    match:
    - uri: { regex: "/items/[0-9]+" }
    rewrite: { uriRegexRewrite: { match: "^/items/([0-9]+)$", rewrite: "/v2/items/\\1" } }
    route: [{ destination: { host: api } }]
  - name: old
    match: [{ uri: { prefix: /old } }]
    redirect: { uri: /new, redirectCode: 302 }
"#;

#[test]
fn matches_rewrites_and_visibility() {
    let loaded = load_str(EXTRA, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let s = Snapshot::build(&loaded.resources).unwrap();
    let mut tester = BTreeMap::new();
    tester.insert("app".to_owned(), "tester".to_owned());
    let none = no_labels();
    let shop_tester = Caller::mesh("shop", &tester);
    let shop = Caller::mesh("shop", &none);

    let r = req("api", "/v1/items");
    let Routing::Matched(m) = s.route(&shop_tester, &r.info()) else {
        panic!()
    };
    assert_eq!(m.route.name.as_deref(), Some("canary"));
    assert_eq!(
        m.route.rewrite_path(m.match_index, "/v1/items").as_deref(),
        Some("/v2/items")
    );
    // sourceLabels select the caller: others fall through to the next rules and miss.
    assert!(matches!(s.route(&shop, &r.info()), Routing::NoMatch { .. }));

    let mut r = req("api", "/anything?debug");
    r.method = http::Method::POST;
    let Routing::Matched(m) = s.route(&shop, &r.info()) else {
        panic!()
    };
    let Action::DirectResponse { status, body } = &m.route.action else {
        panic!()
    };
    assert_eq!((*status, &body[..]), (418, &b"teapot"[..]));

    let r = req("api", "/items/42");
    let Routing::Matched(m) = s.route(&shop, &r.info()) else {
        panic!()
    };
    assert_eq!(
        m.route.rewrite_path(m.match_index, "/items/42").as_deref(),
        Some("/v2/items/42")
    );
    assert!(matches!(
        s.route(&shop, &req("api", "/items/4x2").info()),
        Routing::NoMatch { .. }
    ));

    let r = req("api", "/old/page");
    let Routing::Matched(m) = s.route(&shop, &r.info()) else {
        panic!()
    };
    let Action::Redirect(redirect) = &m.route.action else {
        panic!()
    };
    assert_eq!(
        (redirect.uri.as_deref(), redirect.code),
        (Some("/new"), 302)
    );

    // exportTo "." hides the rules from other namespaces: they get the default route.
    let r = req("api.shop", "/old/page");
    assert!(matches!(
        s.route(&Caller::mesh("default", &none), &r.info()),
        Routing::Default { .. }
    ));
}
