//! Schema validation of the `security.istio.io` kinds: PeerAuthentication,
//! AuthorizationPolicy and RequestAuthentication, loaded from YAML as users write them.

use std::path::Path;

use mesh_core::{
    config::{
        Resource, Spec, load_str,
        security::{
            AuthorizationPolicy, PeerAuthentication, RequestAuthentication,
            authorization_policy::Action, peer_authentication::MtlsMode,
        },
    },
    duration::Duration,
    validate::{Finding, Severity, check_resource, codes, validate_all},
};

/// The Istio sample configurations shared with the other repositories (`shared/` is a sibling
/// of the repository, both here and in CI).
const COMPAT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/istio-compat");

// === helpers ===

/// Loads documents that must parse, returning the resources.
fn load(yaml: &str) -> Vec<Resource> {
    let loaded = load_str(yaml, None);
    assert!(
        loaded.findings.is_empty(),
        "unexpected load findings: {:#?}",
        loaded.findings
    );
    loaded.resources
}

/// Loads a file from the shared Istio samples.
fn load_compat(name: &str) -> Vec<Resource> {
    let path = Path::new(COMPAT_DIR).join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let loaded = load_str(&text, Some(&path));
    assert!(
        loaded.findings.is_empty(),
        "unexpected load findings in {name}: {:#?}",
        loaded.findings
    );
    loaded.resources
}

/// Wraps a spec (YAML, indented by two spaces per level below `spec:`) in a resource.
fn resource(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{ name: test, namespace: default }}\nspec:\n{spec}"
    )
}

/// Loads one resource of `kind` with `spec` and schema-checks it.
fn check(kind: &str, spec: &str) -> Vec<Finding> {
    let resources = load(&resource(kind, spec));
    assert_eq!(resources.len(), 1);
    check_resource(&resources[0])
}

fn check_ap(spec: &str) -> Vec<Finding> {
    check("AuthorizationPolicy", spec)
}

fn check_pa(spec: &str) -> Vec<Finding> {
    check("PeerAuthentication", spec)
}

fn check_ra(spec: &str) -> Vec<Finding> {
    check("RequestAuthentication", spec)
}

fn field(f: &Finding) -> &str {
    f.field.as_ref().map_or("", |p| p.as_str())
}

/// Asserts exactly one finding at `path`, with `severity`, and returns it.
#[track_caller]
fn assert_one<'a>(findings: &'a [Finding], path: &str, severity: Severity) -> &'a Finding {
    let at: Vec<_> = findings.iter().filter(|f| field(f) == path).collect();
    assert_eq!(
        at.len(),
        1,
        "expected one finding at {path}, got: {findings:#?}"
    );
    assert_eq!(at[0].severity, severity, "{:#?}", at[0]);
    at[0]
}

/// Asserts one error at `path` and no other finding.
#[track_caller]
fn assert_only_error(findings: &[Finding], path: &str) {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = assert_one(findings, path, Severity::Error);
    assert_eq!(f.code, codes::SCHEMA_VALIDATION_ERROR);
}

/// Asserts one "unsupported" warning (MESH0001) at `path`.
#[track_caller]
fn assert_unsupported(findings: &[Finding], path: &str) {
    let f = assert_one(findings, path, Severity::Warning);
    assert_eq!(f.code, codes::UNSUPPORTED_FIELD, "{f:#?}");
}

#[track_caller]
fn assert_clean(findings: &[Finding]) {
    assert!(findings.is_empty(), "expected no findings: {findings:#?}");
}

/// Loads text that must fail to parse, returning the single load finding.
#[track_caller]
fn load_error(yaml: &str) -> Finding {
    let loaded = load_str(yaml, None);
    assert!(loaded.resources.is_empty(), "{:#?}", loaded.resources);
    assert_eq!(loaded.findings.len(), 1, "{:#?}", loaded.findings);
    let f = loaded.findings.into_iter().next().unwrap();
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.code, codes::SCHEMA_VALIDATION_ERROR);
    f
}

fn ap(r: &Resource) -> &AuthorizationPolicy {
    match &r.spec {
        Spec::AuthorizationPolicy(ap) => ap,
        other => panic!("not an AuthorizationPolicy: {other:?}"),
    }
}

fn pa(r: &Resource) -> &PeerAuthentication {
    match &r.spec {
        Spec::PeerAuthentication(pa) => pa,
        other => panic!("not a PeerAuthentication: {other:?}"),
    }
}

fn ra(r: &Resource) -> &RequestAuthentication {
    match &r.spec {
        Spec::RequestAuthentication(ra) => ra,
        other => panic!("not a RequestAuthentication: {other:?}"),
    }
}

// === PeerAuthentication ===

#[test]
fn istio_peer_authentication_strict_sample_loads_clean() {
    let resources = load_compat("peer-authentication-strict.yaml");
    assert_eq!(resources.len(), 1);
    let r = &resources[0];
    assert_eq!(r.api_version, "security.istio.io/v1beta1");
    assert_eq!(r.metadata.name, "default");
    assert_eq!(r.namespace(), "default");
    let spec = pa(r);
    assert_eq!(spec.selector, None, "namespace-wide: no selector");
    assert_eq!(spec.mode(), MtlsMode::Strict);
    assert!(spec.port_level_mtls.is_empty());
    assert!(!validate_all(&resources).has_errors());
    assert_clean(&check_resource(r));
}

#[test]
fn peer_authentication_accepts_istio_modes() {
    for (text, mode) in [
        ("UNSET", MtlsMode::Unset),
        ("DISABLE", MtlsMode::Disable),
        ("PERMISSIVE", MtlsMode::Permissive),
        ("STRICT", MtlsMode::Strict),
    ] {
        let r = load(&resource(
            "PeerAuthentication",
            &format!("  mtls: {{ mode: {text} }}\n"),
        ));
        assert_eq!(pa(&r[0]).mode(), mode);
        assert_eq!(mode.as_str(), text);
        assert_clean(&check_resource(&r[0]));
    }
    // Absent mtls or mode means UNSET.
    let r = load(&resource("PeerAuthentication", "  mtls: {}\n"));
    assert_eq!(pa(&r[0]).mode(), MtlsMode::Unset);
}

#[test]
fn peer_authentication_rejects_unknown_mode_strings() {
    let f = load_error(&resource(
        "PeerAuthentication",
        "  mtls: { mode: strict }\n",
    ));
    assert_eq!(field(&f), "spec.mtls.mode");
    assert!(f.message.contains("STRICT"), "{}", f.message);

    let f = load_error(&resource(
        "PeerAuthentication",
        "  selector: { matchLabels: { app: a } }\n  portLevelMtls:\n    8080: { mode: MUTUAL }\n",
    ));
    assert_eq!(field(&f), r#"spec.portLevelMtls["8080"].mode"#);
}

#[test]
fn peer_authentication_rejects_unknown_fields() {
    let f = load_error(&resource(
        "PeerAuthentication",
        "  mtls: { mode: STRICT, strict: true }\n",
    ));
    assert_eq!(field(&f), "spec.mtls.strict");
}

#[test]
fn port_level_mtls_requires_a_selector() {
    let findings =
        check_pa("  mtls: { mode: STRICT }\n  portLevelMtls:\n    8080: { mode: DISABLE }\n");
    assert_only_error(&findings, "spec.portLevelMtls");

    // A selector without labels selects everything, so it does not count.
    let findings = check_pa(
        "  selector: { matchLabels: {} }\n  portLevelMtls:\n    8080: { mode: DISABLE }\n",
    );
    assert_one(&findings, "spec.portLevelMtls", Severity::Error);
    assert_one(&findings, "spec.selector", Severity::Warning);
}

#[test]
fn port_level_mtls_keys_must_be_ports() {
    let findings = check_pa(
        "  selector: { matchLabels: { app: reviews } }\n  portLevelMtls:\n    \"0\": { mode: DISABLE }\n    \"65536\": { mode: DISABLE }\n    http: { mode: DISABLE }\n    \"9080\": { mode: PERMISSIVE }\n",
    );
    assert_eq!(findings.len(), 3, "{findings:#?}");
    assert_one(&findings, r#"spec.portLevelMtls["0"]"#, Severity::Error);
    assert_one(&findings, r#"spec.portLevelMtls["65536"]"#, Severity::Error);
    assert_one(&findings, "spec.portLevelMtls.http", Severity::Error);
}

#[test]
fn port_level_mtls_with_selector_overrides_per_port() {
    let r = load(&resource(
        "PeerAuthentication",
        "  selector: { matchLabels: { app: reviews } }\n  mtls: { mode: STRICT }\n  portLevelMtls:\n    9080: { mode: DISABLE }\n",
    ));
    assert_clean(&check_resource(&r[0]));
    let spec = pa(&r[0]);
    assert_eq!(
        spec.selector
            .as_ref()
            .unwrap()
            .match_labels
            .get("app")
            .map(String::as_str),
        Some("reviews")
    );
    assert_eq!(
        spec.port_modes().collect::<Vec<_>>(),
        [(9080, MtlsMode::Disable)]
    );
    assert_eq!(spec.mode_for_port(9080), MtlsMode::Disable);
    assert_eq!(spec.mode_for_port(8080), MtlsMode::Strict);
}

#[test]
fn peer_authentication_serializes_only_set_fields() {
    let r = load(&resource(
        "PeerAuthentication",
        "  mtls: { mode: STRICT }\n",
    ));
    assert_eq!(
        r[0].to_value()["spec"],
        serde_json::json!({ "mtls": { "mode": "STRICT" } })
    );
    let r = load(&resource("PeerAuthentication", "  {}\n"));
    assert_eq!(r[0].to_value()["spec"], serde_json::json!({}));
}

// === AuthorizationPolicy ===

#[test]
fn istio_bookinfo_authorization_policies_load_clean() {
    let resources = load_compat("authorization-policy-bookinfo.yaml");
    assert!(!validate_all(&resources).has_errors());
    for r in &resources {
        assert_clean(&check_resource(r));
    }
    let names: Vec<_> = resources.iter().map(|r| r.metadata.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "allow-nothing",
            "productpage-viewer",
            "reviews-viewer",
            "ratings-deny-post"
        ]
    );

    // allow-nothing: `spec: {}` is an ALLOW policy with no rules, which matches nothing.
    let nothing = ap(&resources[0]);
    assert_eq!(nothing, &AuthorizationPolicy::default());
    assert_eq!(nothing.action(), Action::Allow);
    assert!(nothing.rules.is_empty());
    assert!(nothing.selector.is_none());

    // productpage-viewer: any source may GET productpage.
    let viewer = ap(&resources[1]);
    assert_eq!(viewer.action(), Action::Allow);
    assert_eq!(
        viewer
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .get("app")
            .map(String::as_str),
        Some("productpage")
    );
    assert_eq!(viewer.rules.len(), 1);
    assert!(viewer.rules[0].from.is_empty());
    let op = viewer.rules[0].to[0].operation.as_ref().unwrap();
    assert_eq!(op.methods, ["GET"]);
    assert!(op.paths.is_empty());

    // reviews-viewer: only productpage's identity may GET reviews.
    let reviews = ap(&resources[2]);
    assert_eq!(
        reviews
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .get("app")
            .map(String::as_str),
        Some("reviews")
    );
    let source = reviews.rules[0].from[0].source.as_ref().unwrap();
    assert_eq!(
        source.principals,
        ["cluster.local/ns/default/sa/bookinfo-productpage"]
    );
    assert_eq!(
        reviews.rules[0].to[0].operation.as_ref().unwrap().methods,
        ["GET"]
    );

    // ratings-deny-post: POSTs below /ratings/ are denied.
    let deny = ap(&resources[3]);
    assert_eq!(deny.action(), Action::Deny);
    assert_eq!(
        deny.selector
            .as_ref()
            .unwrap()
            .match_labels
            .get("app")
            .map(String::as_str),
        Some("ratings")
    );
    let op = deny.rules[0].to[0].operation.as_ref().unwrap();
    assert_eq!(op.methods, ["POST"]);
    assert_eq!(op.paths, ["/ratings/*"]);
}

#[test]
fn empty_policies_are_valid() {
    // `spec: {}` and `rules: []` allow nothing; `rules: [{}]` allows everything.
    assert_clean(&check_ap("  {}\n"));
    assert_clean(&check_ap("  rules: []\n"));
    assert_clean(&check_ap("  action: ALLOW\n  rules: [{}]\n"));
    assert_clean(&check_ap("  action: DENY\n  rules: [{}]\n"));
}

#[test]
fn audit_action_is_accepted_without_warnings() {
    let findings = check_ap(
        "  action: AUDIT\n  rules:\n  - to:\n    - operation: { paths: [\"/admin/*\"] }\n",
    );
    assert_clean(&findings);
}

#[test]
fn action_accepts_only_istio_strings() {
    for (text, action) in [
        ("ALLOW", Action::Allow),
        ("DENY", Action::Deny),
        ("AUDIT", Action::Audit),
        ("CUSTOM", Action::Custom),
    ] {
        let r = load(&resource(
            "AuthorizationPolicy",
            &format!("  action: {text}\n  provider: {{ name: x }}\n  rules: [{{}}]\n"),
        ));
        assert_eq!(ap(&r[0]).action(), action);
        assert_eq!(action.as_str(), text);
    }
    let f = load_error(&resource("AuthorizationPolicy", "  action: deny\n"));
    assert_eq!(field(&f), "spec.action");
    let f = load_error(&resource("AuthorizationPolicy", "  action: REJECT\n"));
    assert_eq!(field(&f), "spec.action");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let f = load_error(&resource(
        "AuthorizationPolicy",
        "  rules:\n  - from:\n    - source: { principal: [a] }\n",
    ));
    assert_eq!(field(&f), "spec.rules[0].from[0].source.principal");
    // Istio's Source has no trustDomains field.
    let f = load_error(&resource(
        "AuthorizationPolicy",
        "  rules:\n  - from:\n    - source: { trustDomains: [cluster.local] }\n",
    ));
    assert_eq!(field(&f), "spec.rules[0].from[0].source.trustDomains");
}

#[test]
fn deny_without_rules_is_an_error() {
    assert_only_error(&check_ap("  action: DENY\n"), "spec.rules");
}

#[test]
fn custom_action_is_unsupported_and_requires_provider_name() {
    let findings = check_ap("  action: CUSTOM\n  rules: [{}]\n");
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert_one(&findings, "spec.provider.name", Severity::Error);
    assert_unsupported(&findings, "spec.action");

    let findings = check_ap("  action: CUSTOM\n  provider: {}\n  rules: [{}]\n");
    assert_one(&findings, "spec.provider.name", Severity::Error);

    // With a provider it loads: only the warning remains.
    let findings = check_ap(
        "  action: CUSTOM\n  provider: { name: ext-authz }\n  rules:\n  - to:\n    - operation: { paths: [\"/admin/*\"] }\n",
    );
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_unsupported(&findings, "spec.action");
}

#[test]
fn custom_action_rejects_identity_matchers() {
    let findings = check_ap(
        "  action: CUSTOM\n  provider: { name: ext-authz }\n  rules:\n  - from:\n    - source: { namespaces: [default], ipBlocks: [10.0.0.0/8] }\n    when:\n    - { key: source.principal, values: [\"cluster.local/ns/a/sa/b\"] }\n",
    );
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.namespaces",
        Severity::Error,
    );
    assert_one(&findings, "spec.rules[0].when[0].key", Severity::Error);
    assert!(
        !findings
            .iter()
            .any(|f| field(f) == "spec.rules[0].from[0].source.ipBlocks"),
        "{findings:#?}"
    );
}

#[test]
fn provider_only_with_custom() {
    assert_only_error(
        &check_ap("  action: ALLOW\n  provider: { name: ext-authz }\n  rules: [{}]\n"),
        "spec.provider",
    );
    assert_only_error(
        &check_ap("  provider: { name: ext-authz }\n  rules: [{}]\n"),
        "spec.provider",
    );
}

#[test]
fn selector_and_target_refs_are_exclusive() {
    let findings = check_ap(
        "  selector: { matchLabels: { app: a } }\n  targetRefs:\n  - { kind: Service, group: \"\", name: a }\n",
    );
    assert_only_error(&findings, "spec.targetRefs");

    let findings = check_ap(
        "  selector: { matchLabels: { app: a } }\n  targetRef: { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n",
    );
    assert_only_error(&findings, "spec.targetRef");

    let findings = check_ap(
        "  targetRef: { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n  targetRefs:\n  - { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n",
    );
    assert_only_error(&findings, "spec.targetRefs");

    // Each alone is fine.
    assert_clean(&check_ap(
        "  targetRefs:\n  - { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n  - { kind: ServiceEntry, group: networking.istio.io, name: se }\n",
    ));
}

#[test]
fn target_refs_name_supported_kinds_in_the_same_namespace() {
    let findings = check_ap(
        "  targetRefs:\n  - { kind: Deployment, group: apps, name: a }\n  - { kind: Service, name: b, namespace: other }\n  - { kind: Service }\n",
    );
    assert_one(&findings, "spec.targetRefs[0].kind", Severity::Error);
    assert_one(&findings, "spec.targetRefs[1].namespace", Severity::Error);
    assert_one(&findings, "spec.targetRefs[2].name", Severity::Error);
    assert_eq!(findings.len(), 3, "{findings:#?}");
}

#[test]
fn principals_must_not_have_the_spiffe_scheme() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/default/sa/productpage\"]\n        notPrincipals: [\"cluster.local/ns/default/sa/x\", \"spiffe://cluster.local/ns/a/sa/b\"]\n",
    );
    assert_eq!(findings.len(), 2, "{findings:#?}");
    let f = assert_one(
        &findings,
        "spec.rules[0].from[0].source.principals[0]",
        Severity::Error,
    );
    assert!(
        f.message
            .contains("\"cluster.local/ns/default/sa/productpage\""),
        "suggests the fix: {}",
        f.message
    );
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.notPrincipals[1]",
        Severity::Error,
    );
}

#[test]
fn service_accounts_exclude_principals_and_namespaces() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        serviceAccounts: [default/productpage]\n        namespaces: [default]\n",
    );
    assert_only_error(&findings, "spec.rules[0].from[0].source.serviceAccounts");

    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        notServiceAccounts: [default/productpage]\n        principals: [\"cluster.local/ns/default/sa/x\"]\n",
    );
    assert_only_error(&findings, "spec.rules[0].from[0].source.notServiceAccounts");

    assert_clean(&check_ap(
        "  rules:\n  - from:\n    - source: { serviceAccounts: [default/productpage], ipBlocks: [10.0.0.1] }\n",
    ));
}

#[test]
fn service_accounts_are_namespace_slash_name_without_wildcards() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        serviceAccounts: [default/productpage, productpage, \"default/*\", a/b/c]\n",
    );
    assert_eq!(findings.len(), 3, "{findings:#?}");
    for i in 1..=3 {
        assert_one(
            &findings,
            &format!("spec.rules[0].from[0].source.serviceAccounts[{i}]"),
            Severity::Error,
        );
    }
}

#[test]
fn ip_blocks_must_be_ips_or_cidrs() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.1, 10.0.0.0/8, \"2001:db8::/32\", 10.0.0.0/33, 10.0.0.300]\n        notIpBlocks: [example.com]\n",
    );
    assert_eq!(findings.len(), 3, "{findings:#?}");
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.ipBlocks[3]",
        Severity::Error,
    );
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.ipBlocks[4]",
        Severity::Error,
    );
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.notIpBlocks[0]",
        Severity::Error,
    );
}

#[test]
fn request_principals_are_unsupported_remote_ip_blocks_checked() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source:\n        remoteIpBlocks: [1.2.3.4/40]\n        notRemoteIpBlocks: [1.2.3.4]\n        requestPrincipals: [\"*\"]\n        notRequestPrincipals: [\"https://issuer/sub\"]\n",
    );
    let src = "spec.rules[0].from[0].source";
    assert_unsupported(&findings, &format!("{src}.requestPrincipals"));
    assert_unsupported(&findings, &format!("{src}.notRequestPrincipals"));
    // The values are still checked.
    assert_one(
        &findings,
        &format!("{src}.remoteIpBlocks[0]"),
        Severity::Error,
    );
    assert_eq!(findings.len(), 3, "{findings:#?}");
}

#[test]
fn sources_and_operations_must_not_be_empty() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source: {}\n    - {}\n    to:\n    - operation: {}\n    - {}\n",
    );
    assert_eq!(findings.len(), 4, "{findings:#?}");
    assert_one(&findings, "spec.rules[0].from[0].source", Severity::Error);
    assert_one(&findings, "spec.rules[0].from[1].source", Severity::Error);
    assert_one(&findings, "spec.rules[0].to[0].operation", Severity::Error);
    assert_one(&findings, "spec.rules[0].to[1].operation", Severity::Error);
}

#[test]
fn ports_are_numeric_strings() {
    let findings = check_ap(
        "  rules:\n  - to:\n    - operation:\n        ports: [\"8080\", \"0\", \"65536\", http, \"1\", \"65535\"]\n        notPorts: [\"*\"]\n",
    );
    assert_eq!(findings.len(), 4, "{findings:#?}");
    let op = "spec.rules[0].to[0].operation";
    assert_one(&findings, &format!("{op}.ports[1]"), Severity::Error);
    assert_one(&findings, &format!("{op}.ports[2]"), Severity::Error);
    assert_one(&findings, &format!("{op}.ports[3]"), Severity::Error);
    assert_one(&findings, &format!("{op}.notPorts[0]"), Severity::Error);
}

#[test]
fn path_templates_must_be_whole_segments_with_double_star_last() {
    let findings = check_ap(
        "  rules:\n  - to:\n    - operation:\n        paths: [\"/api/{*}/reviews\", \"/api/{**}\", \"/{**}/tail\", \"/a{*}\", \"/{*}/{bar}\"]\n        notPaths: [\"/{**}/{*}\", \"/admin/*\"]\n",
    );
    assert_eq!(findings.len(), 4, "{findings:#?}");
    let op = "spec.rules[0].to[0].operation";
    assert_one(&findings, &format!("{op}.paths[2]"), Severity::Error);
    assert_one(&findings, &format!("{op}.paths[3]"), Severity::Error);
    assert_one(&findings, &format!("{op}.paths[4]"), Severity::Error);
    assert_one(&findings, &format!("{op}.notPaths[0]"), Severity::Error);
}

#[test]
fn wildcards_only_as_prefix_suffix_or_presence() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source: { namespaces: [\"*\", \"prod-*\", \"*-test\", \"a*b\"] }\n    to:\n    - operation:\n        hosts: [\"*.example.com\", \"api.*.com\"]\n        methods: [GET, \"G*T\"]\n        paths: [\"/ratings/*\", \"*.json\", \"/a*b\", \"*mid*\"]\n",
    );
    assert_eq!(findings.len(), 5, "{findings:#?}");
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.namespaces[3]",
        Severity::Error,
    );
    let op = "spec.rules[0].to[0].operation";
    assert_one(&findings, &format!("{op}.hosts[1]"), Severity::Error);
    assert_one(&findings, &format!("{op}.methods[1]"), Severity::Error);
    assert_one(&findings, &format!("{op}.paths[2]"), Severity::Error);
    assert_one(&findings, &format!("{op}.paths[3]"), Severity::Error);
}

#[test]
fn empty_values_are_rejected() {
    let findings = check_ap(
        "  rules:\n  - from:\n    - source: { principals: [\"\"] }\n    to:\n    - operation: { methods: [\"\"] }\n",
    );
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert_one(
        &findings,
        "spec.rules[0].from[0].source.principals[0]",
        Severity::Error,
    );
    assert_one(
        &findings,
        "spec.rules[0].to[0].operation.methods[0]",
        Severity::Error,
    );
}

#[test]
fn when_requires_key_and_values() {
    let findings =
        check_ap("  rules:\n  - when:\n    - { values: [a] }\n    - { key: source.namespace }\n");
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert_one(&findings, "spec.rules[0].when[0].key", Severity::Error);
    assert_one(&findings, "spec.rules[0].when[1]", Severity::Error);
}

#[test]
fn when_supported_keys_load_clean() {
    assert_clean(&check_ap(
        "  rules:\n  - when:\n    - { key: \"request.headers[x-user]\", values: [jason, \"*\"] }\n    - { key: source.ip, values: [10.0.0.0/8], notValues: [10.1.2.3] }\n    - { key: source.namespace, values: [default] }\n    - { key: source.principal, notValues: [\"cluster.local/ns/default/sa/*\"] }\n    - { key: destination.port, values: [\"9080\"] }\n",
    ));
}

#[test]
fn when_unknown_key_is_an_error() {
    for key in [
        "request.method",
        "source.IP",
        "request.headers",
        "request.headers[]",
        "destination.labels[app]",
        "destination.namespace",
        "destination.name",
    ] {
        let findings = check_ap(&format!(
            "  rules:\n  - when:\n    - {{ key: \"{key}\", values: [a] }}\n"
        ));
        assert_only_error(&findings, "spec.rules[0].when[0].key");
    }
}

#[test]
fn when_keys_evaluated_on_the_connection_are_accepted() {
    for (key, value) in [
        ("remote.ip", "10.0.0.1"),
        ("destination.ip", "10.0.0.0/8"),
        ("connection.sni", "reviews.default.svc.cluster.local"),
        ("source.serviceAccount", "default/reviews"),
    ] {
        let findings = check_ap(&format!(
            "  rules:\n  - when:\n    - {{ key: \"{key}\", values: [\"{value}\"] }}\n"
        ));
        assert!(findings.is_empty(), "{key}: {findings:#?}");
    }
}

#[test]
fn when_valid_keys_the_mesh_does_not_implement_warn() {
    for key in [
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims[groups]",
        "experimental.envoy.filters.network.mysql_proxy[db.table]",
    ] {
        let value = if key.ends_with(".ip") {
            "10.0.0.1"
        } else {
            "a"
        };
        let findings = check_ap(&format!(
            "  rules:\n  - when:\n    - {{ key: \"{key}\", values: [\"{value}\"] }}\n"
        ));
        assert_eq!(findings.len(), 1, "{key}: {findings:#?}");
        assert_unsupported(&findings, "spec.rules[0].when[0].key");
    }
}

#[test]
fn when_values_are_checked_by_key() {
    let findings = check_ap(
        "  rules:\n  - when:\n    - { key: source.ip, values: [10.0.0.0/8, not-an-ip] }\n    - { key: destination.port, values: [\"80\", \"x\"] }\n    - { key: source.principal, notValues: [\"spiffe://cluster.local/ns/a/sa/b\"] }\n    - { key: \"request.headers[x-user]\", values: [\"a*b\"] }\n    - { key: remote.ip, values: [bad] }\n",
    );
    let when = "spec.rules[0].when";
    assert_one(&findings, &format!("{when}[0].values[1]"), Severity::Error);
    assert_one(&findings, &format!("{when}[1].values[1]"), Severity::Error);
    assert_one(
        &findings,
        &format!("{when}[2].notValues[0]"),
        Severity::Error,
    );
    assert_one(&findings, &format!("{when}[3].values[0]"), Severity::Error);
    assert_one(&findings, &format!("{when}[4].values[0]"), Severity::Error);
    assert_eq!(findings.len(), 5, "{findings:#?}");
}

#[test]
fn authorization_policy_serializes_only_set_fields() {
    let r = load(&resource(
        "AuthorizationPolicy",
        "  action: DENY\n  rules:\n  - to:\n    - operation: { methods: [POST] }\n",
    ));
    assert_eq!(
        r[0].to_value()["spec"],
        serde_json::json!({
            "action": "DENY",
            "rules": [{ "to": [{ "operation": { "methods": ["POST"] } }] }]
        })
    );
    // What is written reads back the same.
    let again = load(&r[0].to_yaml());
    assert_eq!(again[0].spec, r[0].spec);
}

// === RequestAuthentication ===

#[test]
fn request_authentication_loads_with_one_unsupported_warning() {
    let r = load(&resource(
        "RequestAuthentication",
        r#"  selector: { matchLabels: { app: productpage } }
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
    audiences: [bookinfo]
    fromHeaders:
    - { name: x-jwt-assertion, prefix: "Bearer " }
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders:
    - { header: x-jwt-sub, claim: sub }
    timeout: 10s
    spaceDelimitedClaims: [scope]
"#,
    ));
    let findings = check_resource(&r[0]);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_unsupported(&findings, "spec.jwtRules");
    let rule = &ra(&r[0]).jwt_rules[0];
    assert_eq!(rule.issuer, "testing@secure.istio.io");
    assert_eq!(rule.from_headers[0].name, "x-jwt-assertion");
    assert_eq!(rule.from_headers[0].prefix.as_deref(), Some("Bearer "));
    assert_eq!(rule.forward_original_token, Some(true));
    assert_eq!(rule.timeout(), Duration::from_secs(10));
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
}

#[test]
fn request_authentication_without_rules_is_clean() {
    assert_clean(&check_ra("  {}\n"));
    assert_clean(&check_ra("  selector: { matchLabels: { app: a } }\n"));
}

#[test]
fn jwt_rule_requires_issuer() {
    let findings = check_ra("  jwtRules:\n  - jwksUri: https://example.com/jwks.json\n");
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert_one(&findings, "spec.jwtRules[0].issuer", Severity::Error);
    assert_unsupported(&findings, "spec.jwtRules");
}

#[test]
fn jwks_uri_and_jwks_are_exclusive() {
    let findings = check_ra(
        "  jwtRules:\n  - issuer: iss\n    jwksUri: https://example.com/jwks.json\n    jwks: '{\"keys\": []}'\n",
    );
    assert_one(&findings, "spec.jwtRules[0].jwks", Severity::Error);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    // Either alone, or neither (OpenID discovery), is fine.
    for rule in [
        "  - issuer: iss\n    jwks: '{\"keys\": []}'\n",
        "  - issuer: iss\n",
    ] {
        let findings = check_ra(&format!("  jwtRules:\n{rule}"));
        assert_eq!(findings.len(), 1, "{findings:#?}");
    }
}

#[test]
fn jwks_uri_must_be_an_http_url() {
    for uri in ["ftp://example.com/jwks", "example.com/jwks", "https://"] {
        let findings = check_ra(&format!(
            "  jwtRules:\n  - issuer: iss\n    jwksUri: \"{uri}\"\n"
        ));
        assert_one(&findings, "spec.jwtRules[0].jwksUri", Severity::Error);
    }
    // Istio also accepts the proto field name.
    let r = load(&resource(
        "RequestAuthentication",
        "  jwtRules:\n  - issuer: iss\n    jwks_uri: http://keycloak:8080/certs\n",
    ));
    assert_eq!(
        ra(&r[0]).jwt_rules[0].jwks_uri.as_deref(),
        Some("http://keycloak:8080/certs")
    );
}

#[test]
fn jwt_rule_field_checks() {
    let findings = check_ra(
        "  jwtRules:\n  - issuer: iss\n    jwks: 'not json'\n    audiences: [\"\"]\n    fromHeaders: [{ prefix: x }]\n    outputClaimToHeaders: [{ header: \"x y\", claim: sub }]\n    timeout: 0s\n",
    );
    let rule = "spec.jwtRules[0]";
    assert_one(&findings, &format!("{rule}.jwks"), Severity::Error);
    assert_one(&findings, &format!("{rule}.audiences[0]"), Severity::Error);
    assert_one(
        &findings,
        &format!("{rule}.fromHeaders[0].name"),
        Severity::Error,
    );
    assert_one(
        &findings,
        &format!("{rule}.outputClaimToHeaders[0].header"),
        Severity::Error,
    );
    assert_one(&findings, &format!("{rule}.timeout"), Severity::Error);
    assert_eq!(findings.len(), 6, "{findings:#?}");
}

#[test]
fn jwt_timeout_must_be_a_go_duration() {
    let f = load_error(&resource(
        "RequestAuthentication",
        "  jwtRules:\n  - issuer: iss\n    timeout: 5 seconds\n",
    ));
    assert_eq!(field(&f), "spec.jwtRules[0].timeout");
}

#[test]
fn request_authentication_scope_is_exclusive() {
    let findings = check_ra(
        "  selector: { matchLabels: { app: a } }\n  targetRefs:\n  - { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n",
    );
    assert_only_error(&findings, "spec.targetRefs");
}
