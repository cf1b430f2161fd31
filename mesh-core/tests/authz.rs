//! AuthorizationPolicy decisions: policies loaded from YAML as users write them, selected for a
//! workload and evaluated against requests, with Istio's meaning.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::{
    config::{Resource, load_str},
    identity::Identity,
    policy::authz::{Authorizer, Reason, RequestAttributes},
    validate::check_resource,
};
use proptest::prelude::*;

/// The Istio sample configurations shared with the other repositories.
const COMPAT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-compat");

const ROOT: &str = "istio-system";

// === helpers ===

/// Loads documents that must parse and validate without errors.
fn load(yaml: &str) -> Vec<Resource> {
    let loaded = load_str(yaml, None);
    assert!(
        loaded.findings.is_empty(),
        "load findings: {:#?}",
        loaded.findings
    );
    for r in &loaded.resources {
        let errors: Vec<_> = check_resource(r)
            .into_iter()
            .filter(|f| f.is_error())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", r.key());
    }
    loaded.resources
}

/// One AuthorizationPolicy in `default` named `p` with `spec`.
fn policy(spec: &str) -> Vec<Resource> {
    load(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n{spec}"
    ))
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

/// The authorizer of workload `app` in `default`.
fn authz(resources: &[Resource], app: &str) -> Authorizer {
    Authorizer::for_workload(resources, "default", &labels(app), ROOT)
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::in_default_trust_domain(ns, sa).unwrap()
}

/// An owned request, turned into [`RequestAttributes`] to evaluate.
#[derive(Clone)]
struct Req {
    peer: Option<Identity>,
    ip: IpAddr,
    destination_ip: Option<IpAddr>,
    port: u16,
    sni: Option<&'static str>,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
}

fn req() -> Req {
    Req {
        peer: None,
        ip: "10.0.0.1".parse().unwrap(),
        destination_ip: None,
        port: 9080,
        sni: None,
        host: "reviews.default.svc.cluster.local:9080",
        method: "GET",
        path: "/",
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn peer(mut self, ns: &str, sa: &str) -> Self {
        self.peer = Some(id(ns, sa));
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn host(mut self, host: &'static str) -> Self {
        self.host = host;
        self
    }
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn path(mut self, path: &'static str) -> Self {
        self.path = path;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }
    fn attrs(&self) -> RequestAttributes<'_> {
        RequestAttributes {
            peer: self.peer.as_ref(),
            source_ip: self.ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            sni: self.sni,
            host: self.host,
            method: self.method,
            path: self.path,
            headers: &self.headers,
        }
    }
    fn allowed_by(&self, a: &Authorizer) -> bool {
        a.evaluate(&self.attrs()).is_allowed()
    }
}

/// Asserts which of `cases` (request, allowed?) `a` allows.
fn check(a: &Authorizer, cases: &[(Req, bool)]) {
    for (i, (r, want)) in cases.iter().enumerate() {
        let d = a.evaluate(&r.attrs());
        assert_eq!(
            d.is_allowed(),
            *want,
            "case {i}: {} {} {} from {:?} {:?} -> {d}",
            r.method,
            r.host,
            r.path,
            r.peer.as_ref().map(Identity::principal),
            r.ip
        );
    }
}

// === precedence ===

#[test]
fn no_policy_allows_everything() {
    let a = authz(&[], "reviews");
    let d = a.evaluate(&req().attrs());
    assert!(d.is_allowed());
    assert_eq!(d.reason(), Reason::NoAllowPolicy);
    assert!(d.policy().is_none());
}

#[test]
fn empty_allow_policy_denies_everything() {
    let a = authz(&policy("  {}\n"), "reviews");
    let d = a.evaluate(&req().peer("default", "x").attrs());
    assert!(!d.is_allowed());
    assert_eq!(d.reason(), Reason::NoAllowMatched);
    assert_eq!(d.to_string(), "denied: no ALLOW policy matched");
}

#[test]
fn empty_rule_allows_everything() {
    let a = authz(&policy("  rules: [{}]\n"), "reviews");
    let d = a.evaluate(&req().attrs());
    assert!(d.is_allowed());
    assert_eq!(d.reason(), Reason::AllowMatched);
    assert_eq!(d.policy().unwrap().as_str(), "default/p");
}

#[test]
fn deny_beats_allow() {
    let rs = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
"#,
    );
    let a = authz(&rs, "reviews");
    let d = a.evaluate(&req().method("POST").attrs());
    assert!(!d.is_allowed());
    assert_eq!(d.reason(), Reason::DenyMatched);
    assert_eq!(d.policy().unwrap().as_str(), "default/deny-post");
    assert_eq!(d.policy().unwrap().name(), "deny-post");
    assert_eq!(d.to_string(), "denied by DENY policy default/deny-post");
    let d = a.evaluate(&req().attrs());
    assert!(d.is_allowed());
    assert_eq!(d.policy().unwrap().as_str(), "default/allow-all");
}

#[test]
fn deny_only_allows_the_rest() {
    let a = authz(
        &policy("  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n"),
        "reviews",
    );
    check(
        &a,
        &[
            (req().path("/admin/x"), false),
            (req().path("/public"), true),
        ],
    );
    assert_eq!(
        a.evaluate(&req().attrs()).reason(),
        Reason::NoAllowPolicy,
        "no ALLOW policy: allowed"
    );
}

#[test]
fn audit_does_not_change_the_outcome() {
    let rs = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: default}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#,
    );
    let a = authz(&rs, "reviews");
    let d = a.evaluate(&req().path("/admin/users").attrs());
    assert!(d.is_allowed());
    assert_eq!(d.audit().unwrap().as_str(), "default/audit-admin");
    assert_eq!(
        d.to_string(),
        "allowed by ALLOW policy default/get-only, audited by default/audit-admin"
    );
    let d = a.evaluate(&req().method("PUT").path("/admin/users").attrs());
    assert!(!d.is_allowed());
    assert!(d.audit().is_some());
    let d = a.evaluate(&req().path("/other").attrs());
    assert!(d.is_allowed());
    assert!(d.audit().is_none());
    // AUDIT alone: everything allowed.
    let a = authz(&rs[..1], "reviews");
    let d = a.evaluate(&req().method("DELETE").path("/admin/x").attrs());
    assert!(d.is_allowed());
    assert_eq!(d.reason(), Reason::NoAllowPolicy);
    assert!(d.audit().is_some());
}

#[test]
fn custom_policies_deny_what_they_match() {
    let a = authz(
        &policy(
            "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{to: [{operation: {paths: [\"/secure/*\"]}}]}]\n",
        ),
        "reviews",
    );
    let d = a.evaluate(&req().path("/secure/x").attrs());
    assert!(!d.is_allowed());
    assert_eq!(d.reason(), Reason::CustomUnsupported);
    assert_eq!(d.policy().unwrap().as_str(), "default/p");
    assert!(d.to_string().contains("CUSTOM"));
    assert!(req().path("/open").allowed_by(&a));
    assert!(
        a.problems()
            .iter()
            .any(|p| p.field == "spec.action" && p.message.contains("denied")),
        "{:?}",
        a.problems()
    );
}

#[test]
fn dry_run_policies_are_reported_not_enforced() {
    let rs = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all-dry
  namespace: default
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: DENY
  rules: [{}]
"#,
    );
    let a = authz(&rs, "reviews");
    let d = a.evaluate(&req().attrs());
    assert!(d.is_allowed());
    let dry = d.dry_run().unwrap();
    assert!(!dry.is_allowed());
    assert_eq!(dry.policy().unwrap().as_str(), "default/deny-all-dry");
    assert_eq!(a.policies().count(), 0);
    assert_eq!(a.dry_run_policies().count(), 1);
    // Without dry-run policies there is no dry-run verdict.
    assert!(
        authz(&policy("  rules: [{}]\n"), "reviews")
            .evaluate(&req().attrs())
            .dry_run()
            .is_none()
    );
}

// === selection ===

#[test]
fn selectors_namespaces_and_the_root_namespace() {
    let rs = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-delete, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-ratings, namespace: istio-system}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{to: [{operation: {methods: [PATCH]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-get-only, namespace: default}
spec:
  rules: [{to: [{operation: {methods: [GET, DELETE, PATCH]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-v2-only, namespace: default}
spec:
  selector: {matchLabels: {app: reviews, version: v2}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: shop}
spec: {}
"#,
    );
    // Mesh-wide DENY applies in every namespace, and the namespace ALLOW only in default.
    let shop = Authorizer::for_workload(&rs, "shop", &labels("cart"), ROOT);
    assert!(!req().method("DELETE").allowed_by(&shop));
    assert!(!req().allowed_by(&shop), "shop's allow-nothing");
    let web = Authorizer::for_workload(&rs, "web", &labels("ratings"), ROOT);
    assert!(req().method("PUT").allowed_by(&web));
    assert!(!req().method("DELETE").allowed_by(&web));
    // A root-namespace selector policy applies to matching workloads in every namespace.
    assert!(!req().method("PATCH").allowed_by(&web));
    assert!(req().method("PATCH").allowed_by(&authz(&rs, "reviews")));
    let ratings = authz(&rs, "ratings");
    assert_eq!(
        ratings
            .evaluate(&req().method("PATCH").attrs())
            .policy()
            .unwrap()
            .as_str(),
        "istio-system/root-ratings"
    );
    // The namespace-wide ALLOW applies to every workload in default.
    check(
        &authz(&rs, "reviews"),
        &[(req(), true), (req().method("PUT"), false)],
    );
    // matchLabels must all be among the workload's labels.
    let mut v2 = labels("reviews");
    v2.insert("version".into(), "v2".into());
    let a = Authorizer::for_workload(&rs, "default", &v2, ROOT);
    assert!(!req().allowed_by(&a));
    let ids: Vec<_> = a.policies().map(|(_, p)| p.as_str().to_owned()).collect();
    assert_eq!(
        ids,
        [
            "default/reviews-v2-only",
            "istio-system/mesh-deny-delete",
            "default/ns-get-only"
        ]
    );
}

#[test]
fn target_refs_policies_are_not_applied_to_sidecars() {
    let a = authz(
        &policy(
            "  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  action: DENY\n  rules: [{}]\n",
        ),
        "reviews",
    );
    assert!(req().allowed_by(&a));
    assert_eq!(a.problems().len(), 1);
    assert_eq!(a.problems()[0].field, "spec.targetRefs");
}

// === sources ===

#[test]
fn principals_need_a_peer_identity() {
    let a = authz(
        &policy(
            "  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/productpage\", \"cluster.local/ns/shop/*\", \"*/sa/admin\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().peer("default", "productpage"), true),
            (req().peer("default", "reviews"), false),
            (req().peer("shop", "cart"), true),
            (req().peer("ops", "admin"), true),
            (req(), false),
        ],
    );
}

#[test]
fn any_principal_means_authenticated() {
    let a = authz(
        &policy("  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n"),
        "reviews",
    );
    check(&a, &[(req().peer("x", "y"), true), (req(), false)]);
    // notPrincipals: ["*"] in a DENY policy denies plaintext only.
    let a = authz(
        &policy("  action: DENY\n  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n"),
        "reviews",
    );
    check(&a, &[(req().peer("x", "y"), true), (req(), false)]);
}

#[test]
fn not_principals_exclude() {
    let a = authz(
        &policy(
            "  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/*\"], notPrincipals: [\"cluster.local/ns/default/sa/evil\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().peer("default", "good"), true),
            (req().peer("default", "evil"), false),
            (req().peer("other", "good"), false),
        ],
    );
}

#[test]
fn namespaces_and_not_namespaces() {
    let a = authz(
        &policy(
            "  rules: [{from: [{source: {namespaces: [\"default\", \"team-*\"], notNamespaces: [\"team-x\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().peer("default", "a"), true),
            (req().peer("team-a", "a"), true),
            (req().peer("team-x", "a"), false),
            (req().peer("other", "a"), false),
            (req(), false),
        ],
    );
    // notNamespaces alone matches plaintext too (no namespace is not "prod").
    let a = authz(
        &policy("  action: DENY\n  rules: [{from: [{source: {notNamespaces: [prod]}}]}]\n"),
        "reviews",
    );
    check(
        &a,
        &[
            (req().peer("prod", "a"), true),
            (req().peer("dev", "a"), false),
            (req(), false),
        ],
    );
}

#[test]
fn service_accounts() {
    let a = authz(
        &policy("  rules: [{from: [{source: {serviceAccounts: [\"default/productpage\"]}}]}]\n"),
        "reviews",
    );
    let other_td = req();
    let other_td = Req {
        peer: Some(Identity::new("example.org", "default", "productpage").unwrap()),
        ..other_td
    };
    check(
        &a,
        &[
            (req().peer("default", "productpage"), true),
            (other_td, true),
            (req().peer("default", "reviews"), false),
            (req(), false),
        ],
    );
}

#[test]
fn ip_blocks_v4_v6_and_not_forms() {
    let a = authz(
        &policy(
            "  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/8\", \"192.168.1.7\", \"2001:db8::/32\"], notIpBlocks: [\"10.9.0.0/16\", \"2001:db8:bad::/48\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().ip("10.1.2.3"), true),
            (req().ip("10.9.2.3"), false),
            (req().ip("192.168.1.7"), true),
            (req().ip("192.168.1.8"), false),
            (req().ip("::ffff:10.1.2.3"), true),
            (req().ip("2001:db8:1::1"), true),
            (req().ip("2001:db8:bad::1"), false),
            (req().ip("2001:db9::1"), false),
            (req().ip("::1"), false),
        ],
    );
    // notIpBlocks alone in a DENY policy: deny everything outside the range.
    let a = authz(
        &policy("  action: DENY\n  rules: [{from: [{source: {notIpBlocks: [\"fd00::/8\"]}}]}]\n"),
        "reviews",
    );
    check(
        &a,
        &[(req().ip("fd12::1"), true), (req().ip("10.0.0.1"), false)],
    );
}

#[test]
fn remote_ip_blocks_use_the_peer_address() {
    let a = authz(
        &policy("  rules: [{from: [{source: {remoteIpBlocks: [\"10.0.0.0/8\"]}}]}]\n"),
        "reviews",
    );
    check(
        &a,
        &[
            (req().ip("10.1.1.1"), true),
            (
                req().ip("11.1.1.1").header("x-forwarded-for", "10.1.1.1"),
                false,
            ),
        ],
    );
}

#[test]
fn several_sources_are_ored_fields_are_anded() {
    let a = authz(
        &policy(
            "  rules: [{from: [{source: {namespaces: [a], ipBlocks: [\"10.0.0.0/8\"]}}, {source: {principals: [\"cluster.local/ns/b/sa/c\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().peer("a", "x").ip("10.0.0.5"), true),
            (req().peer("a", "x").ip("11.0.0.5"), false),
            (req().peer("b", "c").ip("11.0.0.5"), true),
            (req().ip("10.0.0.5"), false),
        ],
    );
}

#[test]
fn request_principals_fail_closed() {
    // ALLOW: the rule cannot match, whatever the request.
    let a = authz(
        &policy(
            "  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n  - to: [{operation: {paths: [\"/public\"]}}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().header("authorization", "Bearer x"), false),
            (req().path("/public"), true),
        ],
    );
    assert!(
        a.problems()[0]
            .message
            .contains("this ALLOW rule never matches"),
        "{:?}",
        a.problems()
    );
    assert_eq!(
        a.problems()[0].field,
        "spec.rules[0].from[0].source.requestPrincipals"
    );
    // DENY: the field is dropped, the rest of the rule decides.
    let a = authz(
        &policy(
            "  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}], to: [{operation: {paths: [\"/api/*\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (
                req().path("/api/x").header("authorization", "Bearer x"),
                false,
            ),
            (req().path("/other"), true),
        ],
    );
}

// === operations ===

#[test]
fn hosts_case_insensitive_wildcards_and_ports() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {hosts: [\"reviews.default.svc.cluster.local\", \"*.example.com\", \"api.*\"], notHosts: [\"bad.example.com\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().host("reviews.default.svc.cluster.local"), true),
            (req().host("Reviews.Default.svc.cluster.local:9080"), true),
            (req().host("www.EXAMPLE.com"), true),
            (req().host("www.example.com:8443"), true),
            (req().host("bad.example.com"), false),
            (req().host("bad.example.com:80"), false),
            (req().host("api.internal"), true),
            (req().host("example.com"), false),
            (req().host(""), false),
        ],
    );
    // A pattern with a port matches only that port.
    let a = authz(
        &policy("  rules: [{to: [{operation: {hosts: [\"a.com:8080\"]}}]}]\n"),
        "reviews",
    );
    check(
        &a,
        &[
            (req().host("a.com:8080"), true),
            (req().host("a.com"), false),
            (req().host("a.com:80"), false),
        ],
    );
}

#[test]
fn ports_and_not_ports() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {ports: [\"9080\", \"8080\"]}}, {operation: {notPorts: [\"9080\", \"8080\", \"15000\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().port(9080), true),
            (req().port(8080), true),
            (req().port(15000), false),
            (req().port(443), true),
        ],
    );
}

#[test]
fn methods_and_not_methods() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {methods: [\"GET\", \"HEAD\", \"P*\"], notMethods: [\"PATCH\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().method("GET"), true),
            (req().method("get"), false),
            (req().method("POST"), true),
            (req().method("PUT"), true),
            (req().method("PATCH"), false),
            (req().method("DELETE"), false),
        ],
    );
}

#[test]
fn paths_prefix_suffix_and_normalization() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {paths: [\"/public/*\", \"*.css\", \"/exact\"], notPaths: [\"/public/secret*\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().path("/public/a"), true),
            (req().path("/public/a?x=1"), true),
            (req().path("/public/secret/x"), false),
            (req().path("/public/../secret"), false),
            (req().path("/public/./secret"), false),
            (req().path("/public/%2e%2e/admin"), false),
            (req().path("/x/site.css"), true),
            (req().path("/exact"), true),
            (req().path("/exact/"), false),
            (req().path("/other"), false),
        ],
    );
}

#[test]
fn path_templates() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {paths: [\"/api/{*}/reviews\", \"/static/{**}\"], notPaths: [\"/static/{*}/private/{**}\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().path("/api/v1/reviews"), true),
            (req().path("/api/v1/v2/reviews"), false),
            (req().path("/api//reviews"), false),
            (req().path("/api/v1/reviews/1"), false),
            (req().path("/static/"), true),
            (req().path("/static/a/b/c.js"), true),
            (req().path("/static"), false),
            (req().path("/static/x/private/"), false),
            (req().path("/static/x/private/key"), false),
            (req().path("/static/x/y/private/key"), true),
        ],
    );
}

#[test]
fn several_operations_are_ored_fields_are_anded() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {methods: [GET], paths: [\"/read/*\"]}}, {operation: {methods: [POST], paths: [\"/write\"]}}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().path("/read/1"), true),
            (req().method("POST").path("/read/1"), false),
            (req().method("POST").path("/write"), true),
            (req().path("/write"), false),
        ],
    );
}

// === when ===

#[test]
fn when_request_headers() {
    let a = authz(
        &policy(
            "  rules:\n  - when:\n    - {key: \"request.headers[X-User]\", values: [\"alice\", \"bob*\"], notValues: [\"bobby\"]}\n    - {key: \"request.headers[x-token]\", values: [\"*\"]}\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().header("x-user", "alice").header("x-token", ""), true),
            (req().header("x-user", "bob2").header("x-token", "t"), true),
            (
                req().header("x-user", "bobby").header("x-token", "t"),
                false,
            ),
            (
                req().header("x-user", "carol").header("x-token", "t"),
                false,
            ),
            (req().header("x-user", "alice"), false),
            (req().header("x-token", "t"), false),
            // Several values of one header are joined with ',' as Envoy does.
            (
                req()
                    .header("x-user", "alice")
                    .header("x-user", "eve")
                    .header("x-token", "t"),
                false,
            ),
        ],
    );
    // notValues alone: an absent header is "not" any value.
    let a = authz(
        &policy(
            "  action: DENY\n  rules: [{when: [{key: \"request.headers[x-env]\", notValues: [prod]}]}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().header("x-env", "prod"), true),
            (req().header("x-env", "dev"), false),
            (req(), false),
        ],
    );
}

#[test]
fn when_source_and_destination_attributes() {
    let rs = policy(
        r#"  rules:
  - when:
    - {key: source.ip, values: ["10.0.0.0/8", "2001:db8::/32"], notValues: ["10.0.0.99"]}
    - {key: source.namespace, values: [default]}
    - {key: source.principal, notValues: ["cluster.local/ns/default/sa/evil"]}
    - {key: destination.port, values: ["9080"]}
"#,
    );
    let a = authz(&rs, "reviews");
    check(
        &a,
        &[
            (req().peer("default", "a"), true),
            (req().peer("default", "a").ip("2001:db8::1"), true),
            (req().peer("default", "a").ip("10.0.0.99"), false),
            (req().peer("default", "a").ip("11.0.0.1"), false),
            (req().peer("other", "a"), false),
            (req().peer("default", "evil"), false),
            (req().peer("default", "a").port(8080), false),
            (req(), false),
        ],
    );
}

#[test]
fn when_remote_ip_destination_ip_and_sni() {
    let a = authz(
        &policy(
            r#"  rules:
  - when:
    - {key: remote.ip, values: ["10.0.0.0/8"]}
    - {key: destination.ip, values: ["192.168.0.0/16"]}
    - {key: connection.sni, values: ["*.svc.cluster.local"]}
"#,
        ),
        "reviews",
    );
    let base = Req {
        destination_ip: Some("192.168.1.1".parse().unwrap()),
        sni: Some("outbound_.9080_._.reviews.default.svc.cluster.local"),
        ..req()
    };
    let no_dst = Req {
        destination_ip: None,
        ..base.clone()
    };
    let other_dst = Req {
        destination_ip: Some("172.16.0.1".parse().unwrap()),
        ..base.clone()
    };
    let no_sni = Req {
        sni: None,
        ..base.clone()
    };
    check(
        &a,
        &[
            (base.clone(), true),
            (base.clone().ip("11.0.0.1"), false),
            // An unknown destination address cannot satisfy an ALLOW condition.
            (no_dst.clone(), false),
            (other_dst, false),
            (no_sni, false),
        ],
    );
    // In a DENY rule an unknown destination address counts as matching (fail closed).
    let deny = authz(
        &policy(
            "  action: DENY\n  rules: [{when: [{key: destination.ip, values: [\"192.168.0.0/16\"]}]}]\n",
        ),
        "reviews",
    );
    check(
        &deny,
        &[
            (no_dst, false),
            (
                Req {
                    destination_ip: Some("172.16.0.1".parse().unwrap()),
                    ..req()
                },
                true,
            ),
        ],
    );
}

#[test]
fn unsupported_when_keys_fail_closed() {
    let allow = authz(
        &policy("  rules:\n  - when: [{key: \"request.auth.claims[groups]\", values: [admin]}]\n"),
        "reviews",
    );
    assert!(!req().header("authorization", "Bearer x").allowed_by(&allow));
    assert_eq!(allow.problems().len(), 1);
    assert_eq!(allow.problems()[0].field, "spec.rules[0].when[0].key");
    let deny = authz(
        &policy(
            "  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n    when: [{key: request.auth.principal, notValues: [\"issuer/admin\"]}]\n",
        ),
        "reviews",
    );
    check(
        &deny,
        &[(req().method("POST"), false), (req().method("GET"), true)],
    );
    assert!(deny.problems()[0].message.contains("rest of this rule"));
}

#[test]
fn from_to_and_when_are_anded() {
    let a = authz(
        &policy(
            r#"  rules:
  - from: [{source: {namespaces: [default]}}]
    to: [{operation: {methods: [GET]}}]
    when: [{key: "request.headers[x-ok]", values: ["1"]}]
"#,
        ),
        "reviews",
    );
    let good = req().peer("default", "a").header("x-ok", "1");
    check(
        &a,
        &[
            (good.clone(), true),
            (good.clone().method("POST"), false),
            (req().peer("other", "a").header("x-ok", "1"), false),
            (req().peer("default", "a"), false),
        ],
    );
}

#[test]
fn rules_are_ored() {
    let a = authz(
        &policy(
            "  rules:\n  - to: [{operation: {paths: [\"/a\"]}}]\n  - from: [{source: {namespaces: [ops]}}]\n",
        ),
        "reviews",
    );
    check(
        &a,
        &[
            (req().path("/a"), true),
            (req().path("/b").peer("ops", "x"), true),
            (req().path("/b"), false),
        ],
    );
}

#[test]
fn from_request_reads_method_path_and_authority() {
    let a = authz(
        &policy(
            "  rules: [{to: [{operation: {hosts: [\"reviews\"], methods: [GET], paths: [\"/r/*\"]}}]}]\n",
        ),
        "reviews",
    );
    let r = http::Request::get("/r/1?x=2")
        .header("host", "reviews:9080")
        .body(())
        .unwrap();
    let attrs = RequestAttributes::from_request(&r, None, "10.0.0.1".parse().unwrap(), 9080);
    assert_eq!(attrs.host, "reviews:9080");
    assert!(a.evaluate(&attrs).is_allowed());
    let r = http::Request::post("http://reviews/r/1").body(()).unwrap();
    let attrs = RequestAttributes::from_request(&r, None, "10.0.0.1".parse().unwrap(), 9080);
    assert_eq!(attrs.host, "reviews");
    assert!(!a.evaluate(&attrs).is_allowed());
}

// === Istio's samples ===

#[test]
fn bookinfo_policies_mean_what_istio_says() {
    let path = Path::new(COMPAT_DIR).join("authorization-policy-bookinfo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rs = load(&text);
    assert_eq!(rs.len(), 4);
    let productpage = authz(&rs, "productpage");
    let reviews = authz(&rs, "reviews");
    let ratings = authz(&rs, "ratings");
    let details = authz(&rs, "details");
    for a in [&productpage, &reviews, &ratings, &details] {
        assert!(a.problems().is_empty(), "{:?}", a.problems());
    }
    // allow-nothing: details has only it, so nothing reaches details.
    check(
        &details,
        &[
            (req().peer("default", "bookinfo-productpage"), false),
            (req(), false),
        ],
    );
    assert_eq!(
        details.evaluate(&req().attrs()).reason(),
        Reason::NoAllowMatched
    );
    // productpage-viewer: GET from anyone, even plaintext; nothing else.
    check(
        &productpage,
        &[
            (req(), true),
            (req().peer("istio-system", "ingressgateway"), true),
            (req().method("POST"), false),
        ],
    );
    assert_eq!(
        productpage
            .evaluate(&req().attrs())
            .policy()
            .unwrap()
            .as_str(),
        "default/productpage-viewer"
    );
    // reviews-viewer: GET from the productpage service account only.
    check(
        &reviews,
        &[
            (req().peer("default", "bookinfo-productpage"), true),
            (
                req().peer("default", "bookinfo-productpage").method("POST"),
                false,
            ),
            (req().peer("default", "bookinfo-reviews"), false),
            (req(), false),
        ],
    );
    // ratings-deny-post: POST to /ratings/* denied; with allow-nothing everything else is
    // denied too, by the ALLOW step.
    let d = ratings.evaluate(&req().method("POST").path("/ratings/1").attrs());
    assert_eq!(d.reason(), Reason::DenyMatched);
    assert_eq!(d.policy().unwrap().as_str(), "default/ratings-deny-post");
    let d = ratings.evaluate(&req().path("/ratings/1").attrs());
    assert_eq!(d.reason(), Reason::NoAllowMatched);
    // Without allow-nothing, ratings-deny-post alone allows the rest.
    let ratings = authz(&rs[3..], "ratings");
    check(
        &ratings,
        &[
            (req().method("POST").path("/ratings/1"), false),
            (req().method("POST").path("/health"), true),
            (req().path("/ratings/1"), true),
        ],
    );
}

// === robustness ===

proptest! {
    #[test]
    fn evaluation_never_panics(
        path in "[ -~]{0,64}",
        host in "[ -~]{0,32}",
        method in "[A-Za-z]{0,8}",
        header in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..3),
        v6 in any::<bool>(),
        ip in any::<u128>(),
        port in any::<u16>(),
    ) {
        let rs = policy(
            r#"  rules:
  - from: [{source: {principals: ["*"], notNamespaces: ["x*"], ipBlocks: ["10.0.0.0/8", "::/0"]}}]
    to: [{operation: {hosts: ["*.com"], paths: ["/{*}/a/{**}", "*x", "/p*"], notMethods: ["D*"]}}]
    when:
    - {key: "request.headers[x-h]", values: ["*a", "b*"], notValues: ["*"]}
    - {key: "request.headers[:path]", notValues: ["/admin*"]}
  - to: [{operation: {paths: ["/{**}/"], ports: ["80"]}}]
"#,
        );
        let a = authz(&rs, "reviews");
        let mut headers = HeaderMap::new();
        for h in header {
            if let Ok(v) = HeaderValue::from_bytes(&h) {
                headers.append("x-h", v);
            }
        }
        let source_ip = if v6 {
            IpAddr::from(ip.to_be_bytes())
        } else {
            IpAddr::from((ip as u32).to_be_bytes())
        };
        let peer = id("default", "a");
        let mut r = RequestAttributes::new(source_ip, port, &headers);
        r.peer = v6.then_some(&peer);
        r.host = &host;
        r.method = &method;
        r.path = &path;
        let _ = a.evaluate(&r).to_string();
    }
}
