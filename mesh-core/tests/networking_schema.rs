//! Istio's own networking samples (`shared/istio-compat`) load and schema-validate with no
//! errors, mean what they mean in Istio, and survive a write/read round trip.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_core::{
    config::{
        DestinationRule, Gateway, Kind, Resource, ServiceEntry, Spec, VirtualService,
        WorkloadEntry, load_path, load_str,
        networking::{
            destination_rule::{ClientTlsMode, SimpleLb},
            service_entry::{Location, Resolution},
            virtual_service::HttpRoute,
        },
    },
    validate::{Finding, Severity, check_resource},
};

/// The shared compatibility corpus; CI checks the repository out with `shared/` beside it.
const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-compat");

fn compat(file: &str) -> PathBuf {
    Path::new(COMPAT).join(file)
}

fn is_networking(kind: Kind) -> bool {
    kind.group() == "networking.istio.io"
}

/// Every file of the corpus with a networking resource in it, sorted.
fn networking_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(COMPAT)
        .unwrap_or_else(|e| panic!("cannot read {COMPAT}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .filter(|p| {
            std::fs::read_to_string(p)
                .expect("readable file")
                .contains("networking.istio.io/")
        })
        .collect();
    files.sort();
    files
}

/// Loads a file: the load must report no errors and every resource must be a networking one.
fn load(file: &str) -> Vec<Resource> {
    let loaded = load_path(&compat(file));
    let errors: Vec<String> = loaded
        .findings
        .iter()
        .filter(|f| f.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
    assert!(!loaded.resources.is_empty(), "{file}: no resources");
    loaded.resources
}

/// Schema findings for the networking resources of a file.
fn schema(resources: &[Resource]) -> Vec<Finding> {
    resources
        .iter()
        .filter(|r| is_networking(r.kind()))
        .flat_map(check_resource)
        .collect()
}

fn find<'a>(resources: &'a [Resource], kind: Kind, name: &str) -> &'a Resource {
    resources
        .iter()
        .find(|r| r.kind() == kind && r.metadata.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn vs<'a>(resources: &'a [Resource], name: &str) -> &'a VirtualService {
    match &find(resources, Kind::VirtualService, name).spec {
        Spec::VirtualService(s) => s,
        other => panic!("not a VirtualService: {other:?}"),
    }
}

fn dr<'a>(resources: &'a [Resource], name: &str) -> &'a DestinationRule {
    match &find(resources, Kind::DestinationRule, name).spec {
        Spec::DestinationRule(s) => s,
        other => panic!("not a DestinationRule: {other:?}"),
    }
}

fn gw<'a>(resources: &'a [Resource], name: &str) -> &'a Gateway {
    match &find(resources, Kind::Gateway, name).spec {
        Spec::Gateway(s) => s,
        other => panic!("not a Gateway: {other:?}"),
    }
}

fn se<'a>(resources: &'a [Resource], name: &str) -> &'a ServiceEntry {
    match &find(resources, Kind::ServiceEntry, name).spec {
        Spec::ServiceEntry(s) => s,
        other => panic!("not a ServiceEntry: {other:?}"),
    }
}

fn we<'a>(resources: &'a [Resource], name: &str) -> &'a WorkloadEntry {
    match &find(resources, Kind::WorkloadEntry, name).spec {
        Spec::WorkloadEntry(s) => s,
        other => panic!("not a WorkloadEntry: {other:?}"),
    }
}

/// `(host, subset, weight)` of each destination of a route.
fn destinations(route: &HttpRoute) -> Vec<(&str, Option<&str>, Option<i32>)> {
    route
        .route
        .iter()
        .map(|d| {
            (
                d.destination.host.as_str(),
                d.destination.subset.as_deref(),
                d.weight,
            )
        })
        .collect()
}

/// The `exact` value of the `end-user` header match of a route's first match.
fn end_user(route: &HttpRoute) -> Option<&str> {
    route
        .matches
        .first()?
        .headers
        .get("end-user")?
        .exact
        .as_deref()
}

fn labels<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::collections::BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn every_networking_file_validates_without_errors() {
    let files = networking_files();
    assert!(
        files.len() >= 16,
        "only {} networking files in {COMPAT}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let loaded = load_path(file);
        let resources: Vec<&Resource> = loaded
            .resources
            .iter()
            .filter(|r| is_networking(r.kind()))
            .collect();
        if resources.is_empty() {
            failures.push(format!("{}: no networking resource loaded", file.display()));
        }
        let schema: Vec<Finding> = resources.iter().flat_map(|r| check_resource(r)).collect();
        failures.extend(
            loaded
                .findings
                .iter()
                .chain(&schema)
                .filter(|f| f.is_error())
                .map(ToString::to_string),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The only warnings the corpus produces are the deprecated integer `percent` of the two
/// Bookinfo fault samples.
#[test]
fn the_corpus_warns_only_about_deprecated_percent() {
    let mut warnings = Vec::new();
    for file in networking_files() {
        let loaded = load_path(&file);
        warnings.extend(
            schema(&loaded.resources)
                .into_iter()
                .filter(|f| f.severity != Severity::Error)
                .map(|f| {
                    (
                        file.file_name().unwrap().to_string_lossy().into_owned(),
                        f.code.id,
                        f.field.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                        f.line,
                    )
                }),
        );
    }
    let expected = [
        (
            "virtual-service-ratings-test-abort.yaml".to_owned(),
            "IST0002",
            "spec.http[0].fault.abort.percent".to_owned(),
            Some(15),
        ),
        (
            "virtual-service-ratings-test-delay.yaml".to_owned(),
            "IST0002",
            "spec.http[0].fault.delay.percent".to_owned(),
            Some(15),
        ),
    ];
    assert_eq!(warnings, expected);
}

#[test]
fn all_v1_routes_every_service_to_v1() {
    let rs = load("virtual-service-all-v1.yaml");
    assert_eq!(rs.len(), 4);
    for name in ["productpage", "reviews", "ratings", "details"] {
        let r = find(&rs, Kind::VirtualService, name);
        assert_eq!(r.namespace(), "default");
        assert_eq!(r.api_version, "networking.istio.io/v1");
        let spec = vs(&rs, name);
        assert_eq!(spec.hosts, [name]);
        assert!(spec.gateways.is_empty(), "omitted gateways mean mesh");
        assert_eq!(spec.http.len(), 1);
        assert!(spec.http[0].matches.is_empty(), "no match: every request");
        assert_eq!(destinations(&spec.http[0]), [(name, Some("v1"), None)]);
    }
}

#[test]
fn weighted_routes_split_traffic() {
    for (file, split) in [
        (
            "virtual-service-reviews-80-20.yaml",
            [("v1", 80), ("v2", 20)],
        ),
        (
            "virtual-service-reviews-50-v3.yaml",
            [("v1", 50), ("v3", 50)],
        ),
        (
            "virtual-service-reviews-v2-v3.yaml",
            [("v2", 50), ("v3", 50)],
        ),
    ] {
        let rs = load(file);
        let spec = vs(&rs, "reviews");
        assert_eq!(spec.hosts, ["reviews"], "{file}");
        assert_eq!(spec.http.len(), 1, "{file}");
        let want: Vec<_> = split
            .iter()
            .map(|(subset, w)| ("reviews", Some(*subset), Some(*w)))
            .collect();
        assert_eq!(destinations(&spec.http[0]), want, "{file}");
        assert!(schema(&rs).is_empty(), "{file}: {:?}", schema(&rs));
    }
}

#[test]
fn jason_is_routed_by_the_end_user_header() {
    for (file, jason, others) in [
        ("virtual-service-reviews-test-v2.yaml", "v2", "v1"),
        ("virtual-service-reviews-jason-v2-v3.yaml", "v2", "v3"),
    ] {
        let rs = load(file);
        assert_eq!(rs[0].api_version, "networking.istio.io/v1alpha3");
        let spec = vs(&rs, "reviews");
        assert_eq!(spec.http.len(), 2, "{file}");
        let first = &spec.http[0];
        assert_eq!(first.matches.len(), 1);
        assert_eq!(first.matches[0].headers.len(), 1);
        assert_eq!(end_user(first), Some("jason"), "{file}");
        assert!(first.matches[0].uri.is_none());
        assert_eq!(destinations(first), [("reviews", Some(jason), None)]);
        assert!(
            spec.http[1].matches.is_empty(),
            "the fallback matches everything"
        );
        assert_eq!(
            destinations(&spec.http[1]),
            [("reviews", Some(others), None)]
        );
    }
}

#[test]
fn delay_fault_for_jason() {
    let rs = load("virtual-service-ratings-test-delay.yaml");
    let spec = vs(&rs, "ratings");
    let first = &spec.http[0];
    assert_eq!(end_user(first), Some("jason"));
    let fault = first.fault.as_ref().expect("fault");
    assert!(fault.abort.is_none());
    let delay = fault.delay.as_ref().expect("delay");
    assert_eq!(
        delay.fixed_delay.map(|d| d.as_std()),
        Some(Duration::from_secs(7))
    );
    assert_eq!(delay.percent, Some(100), "the deprecated integer percent");
    assert!(delay.percentage.is_none());
    assert!(delay.exponential_delay.is_none());
    assert_eq!(destinations(first), [("ratings", Some("v1"), None)]);
    assert!(spec.http[1].fault.is_none());
    assert_eq!(destinations(&spec.http[1]), [("ratings", Some("v1"), None)]);
}

#[test]
fn abort_fault_for_jason() {
    let rs = load("virtual-service-ratings-test-abort.yaml");
    let spec = vs(&rs, "ratings");
    let first = &spec.http[0];
    assert_eq!(end_user(first), Some("jason"));
    let fault = first.fault.as_ref().expect("fault");
    assert!(fault.delay.is_none());
    let abort = fault.abort.as_ref().expect("abort");
    assert_eq!(abort.http_status, Some(500));
    assert_eq!(abort.percent, Some(100), "the deprecated integer percent");
    assert!(abort.percentage.is_none());
    assert!(abort.grpc_status.is_none());
    assert!(spec.http[1].fault.is_none());
}

#[test]
fn details_abort_555_for_everyone() {
    let rs = load("fault-injection-details-v1.yaml");
    let spec = vs(&rs, "details");
    assert_eq!(rs[0].api_version, "networking.istio.io/v1alpha3");
    let first = &spec.http[0];
    assert!(first.matches.is_empty());
    let abort = first
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!(abort.http_status, Some(555));
    assert_eq!(abort.percentage.map(|p| p.value), Some(100.0));
    assert!(abort.percent.is_none());
    assert_eq!(destinations(first), [("details", Some("v1"), None)]);
    assert_eq!(destinations(&spec.http[1]), [("details", Some("v1"), None)]);
    let rule = dr(&rs, "details");
    assert_eq!(&*rule.host, "details");
    assert_eq!(rule.subsets.len(), 1);
    assert_eq!(rule.subsets[0].name, "v1");
    assert_eq!(rule.subsets[0].labels, labels([("version", "v1")]));
    assert!(schema(&rs).is_empty(), "{:?}", schema(&rs));
}

#[test]
fn ratings_retries() {
    let rs = load("virtual-service-ratings-retries.yaml");
    let spec = vs(&rs, "ratings");
    let retries = spec.http[0].retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, Some(3));
    assert_eq!(
        retries.per_try_timeout.map(|d| d.as_std()),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        retries.retry_on.as_deref(),
        Some("gateway-error,connect-failure,refused-stream")
    );
    assert!(spec.http[0].timeout.is_none());
    assert_eq!(destinations(&spec.http[0]), [("ratings", Some("v1"), None)]);
}

#[test]
fn reviews_timeout_with_ratings_delay() {
    let rs = load("virtual-service-reviews-timeout.yaml");
    let reviews = vs(&rs, "reviews");
    assert_eq!(
        reviews.http[0].timeout.map(|d| d.as_std()),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        destinations(&reviews.http[0]),
        [("reviews", Some("v2"), None)]
    );
    let ratings = vs(&rs, "ratings");
    let delay = ratings.http[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(
        delay.fixed_delay.map(|d| d.as_std()),
        Some(Duration::from_secs(2))
    );
    assert_eq!(delay.percentage.map(|p| p.value), Some(100.0));
    assert!(delay.percent.is_none());
}

#[test]
fn destination_rules_define_the_bookinfo_subsets() {
    for (file, mtls) in [
        ("destination-rule-all.yaml", false),
        ("destination-rule-all-mtls.yaml", true),
    ] {
        let rs = load(file);
        assert_eq!(rs.len(), 4, "{file}");
        for (name, subsets) in [
            ("productpage", &["v1"][..]),
            ("reviews", &["v1", "v2", "v3"][..]),
            ("ratings", &["v1", "v2", "v2-mysql", "v2-mysql-vm"][..]),
            ("details", &["v1", "v2"][..]),
        ] {
            let rule = dr(&rs, name);
            assert_eq!(rule.host, name, "{file}");
            let got: Vec<&str> = rule.subsets.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(got, subsets, "{file} {name}");
            for s in &rule.subsets {
                assert_eq!(
                    s.labels,
                    labels([("version", s.name.as_str())]),
                    "{file} {name}"
                );
                assert!(s.traffic_policy.is_none());
            }
            let mode = rule
                .traffic_policy
                .as_ref()
                .and_then(|p| p.tls.as_ref())
                .and_then(|t| t.mode);
            assert_eq!(
                mode,
                mtls.then_some(ClientTlsMode::IstioMutual),
                "{file} {name}"
            );
        }
    }
}

#[test]
fn httpbin_circuit_breaker() {
    let rs = load("destination-rule-httpbin-circuit-breaker.yaml");
    let rule = dr(&rs, "httpbin");
    assert_eq!(&*rule.host, "httpbin");
    let policy = rule.traffic_policy.as_ref().expect("trafficPolicy");
    let pool = policy.connection_pool.as_ref().expect("connectionPool");
    assert_eq!(pool.tcp.as_ref().and_then(|t| t.max_connections), Some(1));
    let http = pool.http.as_ref().expect("http");
    assert_eq!(http.http1_max_pending_requests, Some(1));
    assert_eq!(http.max_requests_per_connection, Some(1));
    assert_eq!(http.http2_max_requests, None);
    let od = policy.outlier_detection.as_ref().expect("outlierDetection");
    assert_eq!(od.consecutive_5xx_errors, Some(1));
    assert_eq!(od.consecutive_errors, None);
    assert_eq!(
        od.interval.map(|d| d.as_std()),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        od.base_ejection_time.map(|d| d.as_std()),
        Some(Duration::from_secs(180))
    );
    assert_eq!(od.max_ejection_percent, Some(100));
    assert!(schema(&rs).is_empty(), "{:?}", schema(&rs));
}

#[test]
fn reviews_load_balancing_per_subset() {
    let rs = load("destination-rule-reviews-lb.yaml");
    let rule = dr(&rs, "reviews");
    let lb = |p: Option<&mesh_core::config::networking::destination_rule::TrafficPolicy>| {
        p.and_then(|p| p.load_balancer.clone())
            .expect("loadBalancer")
    };
    let top = lb(rule.traffic_policy.as_ref());
    assert_eq!(top.simple, Some(SimpleLb::LeastRequest));
    assert!(top.consistent_hash.is_none());
    assert_eq!(rule.subsets.len(), 3);
    assert!(
        rule.subsets[0].traffic_policy.is_none(),
        "v1 inherits LEAST_REQUEST"
    );
    let v2 = lb(rule.subsets[1].traffic_policy.as_ref());
    assert_eq!(v2.simple, None);
    let hash = v2.consistent_hash.expect("consistentHash");
    assert_eq!(hash.http_header_name.as_deref(), Some("end-user"));
    assert!(hash.http_cookie.is_none() && hash.use_source_ip.is_none());
    let v3 = lb(rule.subsets[2].traffic_policy.as_ref());
    assert_eq!(v3.simple, Some(SimpleLb::RoundRobin));
    assert!(schema(&rs).is_empty(), "{:?}", schema(&rs));
}

#[test]
fn bookinfo_gateway_and_its_routes() {
    let rs = load("bookinfo-gateway.yaml");
    let gateway = gw(&rs, "bookinfo-gateway");
    assert_eq!(gateway.selector, labels([("istio", "ingressgateway")]));
    assert_eq!(gateway.servers.len(), 1);
    let server = &gateway.servers[0];
    let port = server.port.as_ref().expect("port");
    assert_eq!(
        (port.number, port.name.as_str(), port.protocol.as_str()),
        (80, "http", "HTTP")
    );
    assert_eq!(server.hosts, ["*"]);
    assert!(server.tls.is_none());

    let spec = vs(&rs, "bookinfo");
    assert_eq!(spec.hosts, ["*"]);
    assert_eq!(spec.gateways, ["bookinfo-gateway"]);
    assert_eq!(spec.http.len(), 1);
    let matches: Vec<(Option<&str>, Option<&str>)> = spec.http[0]
        .matches
        .iter()
        .map(|m| {
            let uri = m.uri.as_ref().expect("uri");
            (uri.exact.as_deref(), uri.prefix.as_deref())
        })
        .collect();
    assert_eq!(
        matches,
        [
            (Some("/productpage"), None),
            (None, Some("/static")),
            (Some("/login"), None),
            (Some("/logout"), None),
            (None, Some("/api/v1/products")),
        ]
    );
    let dest = &spec.http[0].route[0].destination;
    assert_eq!(&*dest.host, "productpage");
    assert_eq!(dest.port.map(|p| p.number), Some(9080));
    assert!(schema(&rs).is_empty(), "{:?}", schema(&rs));
}

#[test]
fn service_entry_with_workload_entries() {
    let rs = load("service-entry-workload-entries.yaml");
    let entry = se(&rs, "details-svc");
    assert_eq!(entry.hosts, ["details.bookinfo.com"]);
    assert_eq!(entry.location, Some(Location::MeshInternal));
    assert_eq!(entry.resolution, Some(Resolution::Static));
    assert_eq!(entry.ports.len(), 1);
    let port = &entry.ports[0];
    assert_eq!(
        (port.number, port.name.as_str(), port.protocol.as_deref()),
        (9080, "http", Some("HTTP"))
    );
    assert!(entry.endpoints.is_empty());
    let selector = entry.workload_selector.as_ref().expect("workloadSelector");
    assert_eq!(selector.labels, labels([("app", "details-legacy")]));

    for (name, address, version) in [
        ("details-vm-1", "127.0.0.1", "v1"),
        ("details-vm-2", "127.0.0.2", "v2"),
    ] {
        let w = we(&rs, name);
        assert_eq!(w.address, address);
        assert_eq!(w.service_account, "details-legacy");
        assert_eq!(
            w.labels,
            labels([("app", "details-legacy"), ("version", version)])
        );
        assert!(
            selector.matches(&w.labels),
            "{name} is an endpoint of details-svc"
        );
        assert!(w.ports.is_empty());
    }
    assert!(schema(&rs).is_empty(), "{:?}", schema(&rs));
}

#[test]
fn every_resource_round_trips_through_yaml() {
    let mut count = 0;
    for file in networking_files() {
        let loaded = load_path(&file);
        for r in loaded.resources.iter().filter(|r| is_networking(r.kind())) {
            let text = r.to_yaml();
            let again = load_str(&text, None);
            assert!(
                again.findings.is_empty(),
                "{}: {} did not load back:\n{text}\n{:?}",
                file.display(),
                r.key(),
                again.findings
            );
            assert_eq!(again.resources.len(), 1, "{text}");
            let back = &again.resources[0];
            assert_eq!(back.key(), r.key(), "{text}");
            assert_eq!(back.api_version, r.api_version, "{text}");
            assert_eq!(back.spec, r.spec, "{}: {}\n{text}", file.display(), r.key());
            assert_eq!(back.metadata.labels, r.metadata.labels);
            count += 1;
        }
    }
    assert!(count >= 25, "only {count} resources");
}

#[test]
fn unsupported_and_deprecated_fields_warn() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo}
spec:
  hosts: [mongo.example.com]
  tcp:
  - match: [{port: 27017}]
    route:
    - destination: {host: mongo.example.com, port: {number: 27017}}
"#;
    let loaded = load_str(text, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let findings = schema(&loaded.resources);
    assert!(!findings.iter().any(Finding::is_error), "{findings:?}");
    let tcp = findings
        .iter()
        .find(|f| f.code.id == "MESH0001")
        .unwrap_or_else(|| panic!("no MESH0001 in {findings:?}"));
    assert_eq!(tcp.severity, Severity::Warning);
    assert_eq!(tcp.field.as_ref().map(|p| p.as_str()), Some("spec.tcp"));
    assert!(tcp.message.contains("HTTP only"), "{}", tcp.message);
    assert_eq!(tcp.line, Some(7));

    let rs = load("virtual-service-ratings-test-abort.yaml");
    let findings = schema(&rs);
    let deprecated: Vec<&Finding> = findings.iter().filter(|f| f.code.id == "IST0002").collect();
    assert_eq!(deprecated.len(), 1, "{deprecated:?}");
    assert_eq!(deprecated[0].severity, Severity::Warning);
    assert!(
        deprecated[0].message.contains("percentage"),
        "{}",
        deprecated[0].message
    );
}

/// Valid Istio that the mesh ignores, or that is deprecated or dubious, is accepted with a
/// warning at the field: never an error, never silence.
#[test]
fn valid_but_ignored_or_deprecated_fields_warn() {
    let vs = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n{spec}"
        )
    };
    let dr = |policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: reviews\n  trafficPolicy:\n{policy}"
        )
    };
    let route = |extra: &str| {
        vs(&format!(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n{extra}"
        ))
    };
    let rows = [
        (
            vs("  hosts: [reviews]\n  tls:\n  - match: [{sniHosts: [reviews]}]\n    route:\n    - destination: {host: reviews}\n"),
            "MESH0001",
            "spec.tls",
        ),
        (
            vs("  http:\n  - route:\n    - destination: {host: reviews}\n"),
            "MESH0001",
            "spec.hosts",
        ),
        (
            vs("  hosts: [reviews]\n  http:\n  - delegate: {name: reviews-v2, namespace: prod}\n"),
            "MESH0001",
            "spec.http[0].delegate",
        ),
        (
            vs("  hosts: [\"*\"]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            "IST0133",
            "spec.hosts[0]",
        ),
        (
            vs("  hosts: [reviews]\n  http:\n  - match: [{statPrefix: r, uri: {prefix: /}}]\n    route:\n    - destination: {host: reviews}\n"),
            "MESH0001",
            "spec.http[0].match[0].statPrefix",
        ),
        (
            vs("  hosts: [reviews]\n  http:\n  - match: [{headers: {uri: {exact: /x}}}]\n    route:\n    - destination: {host: reviews}\n"),
            "IST0133",
            "spec.http[0].match[0].headers.uri",
        ),
        (
            route("    mirror: {host: reviews}\n    mirrorPercent: 10\n"),
            "IST0002",
            "spec.http[0].mirrorPercent",
        ),
        (
            route("    corsPolicy: {allowOrigin: [\"https://a.example\"]}\n"),
            "IST0002",
            "spec.http[0].corsPolicy.allowOrigin",
        ),
        (
            route("    retries: {attempts: 2, retryRemoteLocalities: true}\n"),
            "MESH0001",
            "spec.http[0].retries.retryRemoteLocalities",
        ),
        (
            route("    fault: {abort: {http2Error: REFUSED_STREAM, percentage: {value: 1}}}\n"),
            "MESH0001",
            "spec.http[0].fault.abort.http2Error",
        ),
        (
            dr("    loadBalancer: {simple: LEAST_CONN}\n"),
            "IST0002",
            "spec.trafficPolicy.loadBalancer.simple",
        ),
        (
            dr("    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}\n"),
            "MESH0001",
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
        ),
        (
            dr("    outlierDetection: {consecutiveErrors: 5}\n"),
            "IST0002",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
        ),
        (
            dr("    proxyProtocol: {version: V2}\n"),
            "MESH0001",
            "spec.trafficPolicy.proxyProtocol",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, protocol: HTTP}\n    hosts: [\"*\"]\n    bind: 0.0.0.0\n".to_owned(),
            "IST0133",
            "spec.servers[0].port.name",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n    bind: 0.0.0.0\n".to_owned(),
            "MESH0001",
            "spec.servers[0].bind",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DYNAMIC_DNS\n".to_owned(),
            "MESH0001",
            "spec.resolution",
        ),
    ];
    let mut failures = Vec::new();
    for (text, code, path) in &rows {
        let loaded = load_str(text, None);
        let findings: Vec<Finding> = loaded
            .findings
            .iter()
            .cloned()
            .chain(schema(&loaded.resources))
            .collect();
        let errors: Vec<String> = findings
            .iter()
            .filter(|f| f.is_error())
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            failures.push(format!("{text}\nunexpected errors:\n{}", errors.join("\n")));
        }
        let found = findings.iter().any(|f| {
            f.severity == Severity::Warning
                && f.code.id == *code
                && f.field.as_ref().map(|p| p.as_str()) == Some(*path)
        });
        if !found {
            failures.push(format!(
                "{text}\nno {code} warning at {path}; got {findings:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
