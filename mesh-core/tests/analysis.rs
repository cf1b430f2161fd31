//! Analysis across resources: each check, its code, severity, field and line.

use mesh_core::{
    config::load_str,
    validate::{Finding, Severity, validate_all},
};

fn analyze(yaml: &str) -> Vec<Finding> {
    let loaded = load_str(yaml, Some(std::path::Path::new("a.yaml")));
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    validate_all(&loaded.resources).0
}

fn find<'a>(findings: &'a [Finding], code: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.code.id == code).collect()
}

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
";

#[test]
fn unknown_subset_is_an_error_unknown_host_a_warning() {
    let f = analyze(&format!(
        "{DR}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v9}}
"
    ));
    let subset = find(&f, "IST0101")
        .into_iter()
        .find(|x| x.severity == Severity::Error)
        .expect("unknown subset");
    assert_eq!(
        subset.field.as_ref().unwrap().as_str(),
        "spec.http[0].route[0].destination.subset"
    );
    assert_eq!(subset.line, Some(16));
    assert!(subset.message.contains("reviews+v9"));
    let host = find(&f, "IST0101")
        .into_iter()
        .find(|x| x.severity == Severity::Warning)
        .expect("unknown host warned");
    assert!(host.message.contains("reviews.default.svc.cluster.local"));
}

#[test]
fn known_host_and_subset_are_clean() {
    let f = analyze(&format!(
        "{DR}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.0.1, labels: {{app: reviews, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, subset: v1}}
"
    ));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn rules_after_a_catch_all_are_unreachable() {
    let f = analyze(&format!(
        "{DR}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: first
    match: [{{uri: {{prefix: /a}}}}, {{uri: {{prefix: /a}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: all
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: never
    match: [{{uri: {{prefix: /b}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
"
    ));
    let unreachable = find(&f, "IST0130");
    assert_eq!(unreachable.len(), 1, "{f:?}");
    assert_eq!(
        unreachable[0].field.as_ref().unwrap().as_str(),
        "spec.http[2]"
    );
    assert!(unreachable[0].message.contains("rule never not used"));
    let dup = find(&f, "IST0131");
    assert_eq!(dup.len(), 1);
    assert_eq!(
        dup[0].field.as_ref().unwrap().as_str(),
        "spec.http[0].match[1]"
    );
    assert!(
        f.iter()
            .all(|x| x.severity != Severity::Error || x.code.id == "IST0101")
    );
}

#[test]
fn two_virtual_services_for_one_mesh_host_conflict() {
    let vs = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  http:
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
"
        )
    };
    let f = analyze(&format!(
        "{DR}---\n{}{}",
        vs("a", "reviews"),
        vs("b", "reviews.default.svc.cluster.local")
    ));
    let c = find(&f, "IST0109");
    assert_eq!(c.len(), 1, "{f:?}");
    assert_eq!(c[0].severity, Severity::Error);
    assert!(c[0].message.contains("default/a,default/b"));
}

#[test]
fn duplicate_definitions_are_errors() {
    let f = analyze(&format!("{DR}---\n{DR}"));
    let d = find(&f, "MESH0004");
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("first defined at a.yaml:1"),
        "{}",
        d[0].message
    );
    assert_eq!(d[0].line, Some(9));
}

#[test]
fn multi_port_service_needs_a_port() {
    let f = analyze(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: admin, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
  - route: [{destination: {host: api.example.com}}]
  - route: [{destination: {host: api.example.com, port: {number: 80}}}]
",
    );
    let p = find(&f, "IST0112");
    assert_eq!(p.len(), 1, "{f:?}");
    assert_eq!(
        p[0].field.as_ref().unwrap().as_str(),
        "spec.http[0].route[0].destination"
    );
}

#[test]
fn gateway_references_and_hosts() {
    let f = analyze(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: site}
spec:
  hosts: [www.example.com, other.org]
  gateways: [gw, missing-gw]
  http:
  - route: [{destination: {host: www.example.com}}]
",
    );
    let missing = find(&f, "IST0101")
        .into_iter()
        .find(|x| x.message.contains("gateway"))
        .expect("missing gateway");
    assert_eq!(missing.field.as_ref().unwrap().as_str(), "spec.gateways[1]");
    assert_eq!(missing.severity, Severity::Error);
    let host = find(&f, "IST0132");
    assert_eq!(host.len(), 1, "{f:?}");
    assert_eq!(host[0].field.as_ref().unwrap().as_str(), "spec.hosts[1]");
}

#[test]
fn fault_without_percentage_is_a_warning() {
    let f = analyze(&format!(
        "{DR}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - fault: {{delay: {{fixedDelay: 1s}}, abort: {{httpStatus: 503, percentage: {{value: 5}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
"
    ));
    let w = find(&f, "IST0133");
    assert_eq!(w.len(), 1, "{f:?}");
    assert_eq!(
        w[0].field.as_ref().unwrap().as_str(),
        "spec.http[0].fault.delay"
    );
}

#[test]
fn mtls_conflict_between_destination_rule_and_peer_authentication() {
    let pa = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
";
    let dr = |mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings}}
spec:
  host: ratings
  trafficPolicy: {{tls: {{mode: {mode}}}}}
"
        )
    };
    let f = analyze(&format!("{pa}{}", dr("DISABLE")));
    let c = find(&f, "IST0113");
    assert_eq!(c.len(), 1, "{f:?}");
    assert_eq!(c[0].severity, Severity::Error);
    assert_eq!(
        c[0].field.as_ref().unwrap().as_str(),
        "spec.trafficPolicy.tls.mode"
    );
    assert!(
        c[0].message
            .contains("PeerAuthentication istio-system/default")
    );
    assert!(find(&analyze(&format!("{pa}{}", dr("ISTIO_MUTUAL"))), "IST0113").is_empty());
    // A namespace policy that disables mTLS conflicts with ISTIO_MUTUAL.
    let ns_off = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: off, namespace: default}
spec: {mtls: {mode: DISABLE}}
---
";
    assert_eq!(
        find(
            &analyze(&format!("{pa}{ns_off}{}", dr("ISTIO_MUTUAL"))),
            "IST0113"
        )
        .len(),
        1
    );
}

#[test]
fn the_shared_mtls_files_do_not_conflict() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-compat/");
    let text = [
        "peer-authentication-strict.yaml",
        "destination-rule-all-mtls.yaml",
    ]
    .map(|f| std::fs::read_to_string(format!("{dir}{f}")).unwrap())
    .join("---\n");
    let f = analyze(&text);
    assert!(find(&f, "IST0113").is_empty(), "{f:?}");
    assert!(!f.iter().any(Finding::is_error), "{f:?}");
}
