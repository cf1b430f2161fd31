//! Istio's `AuthorizationPolicy`: which requests a workload allows, denies or audits.
//!
//! A policy applies to the workloads of its namespace (the mesh, in the root namespace),
//! narrowed by a `selector` or attached with `targetRefs`. Its `rules` are ORed; within a rule
//! `from` sources are ORed, `to` operations are ORed, and `when` conditions are ANDed; the
//! fields inside one source or operation are ANDed. `spec: {}` (no rules) allows nothing;
//! `rules: [{}]` matches every request.
//!
//! # Where the mesh differs from Istio
//!
//! - An unknown `when.key` is an error here; Istio documents that it is silently ignored.
//! - The `CUSTOM` action (external authorization), `requestPrincipals` and the `when` keys
//!   `request.auth.*`, `request.experimental.*` and `experimental.*` are accepted but not
//!   implemented; each is reported with a `MESH0001` warning, and the engine
//!   ([`policy::authz`](crate::policy::authz)) fails closed on them: CUSTOM denies what it
//!   matches, an ALLOW rule using them never matches.
//! - `remoteIpBlocks` and `remote.ip` are the connection's peer address: the mesh reads no
//!   `X-Forwarded-For` or PROXY protocol (Istio with `numTrustedProxies: 0`).

use serde::{Deserialize, Serialize};

use super::{
    check_ip_blocks, check_ip_value, check_port_value, check_ports, check_scope,
    check_wildcard_value, check_wildcards, is_valid_wildcard,
};
use crate::{
    config::common::{TargetRef, WorkloadSelector},
    validate::{Checker, Validate},
};

/// The most `serviceAccounts` (or `notServiceAccounts`) one source may list, as Istio limits.
pub const MAX_SERVICE_ACCOUNTS: usize = 16;

/// The longest `serviceAccounts` entry Istio accepts, in bytes.
pub const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

/// The spec of an AuthorizationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Workloads the policy applies to; absent means every workload in scope. Exclusive with
    /// `targetRef`/`targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A single resource the policy attaches to (Istio's older form of `targetRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Resources the policy attaches to: Gateway, GatewayClass, Service or ServiceEntry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// The rules, ORed. None means the policy matches no request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What a match does; `ALLOW` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The external authorizer for the `CUSTOM` action (and only for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// What a matching policy does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow the request if it matches (the default). When a workload has any ALLOW policy,
    /// a request that matches none of them is denied.
    #[default]
    Allow,
    /// Deny the request if it matches; checked before ALLOW.
    Deny,
    /// Record the match; never affects the decision.
    Audit,
    /// Delegate the decision to the external authorizer named by `provider` (not implemented
    /// by the mesh).
    Custom,
}

/// The external authorizer of a `CUSTOM` policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The provider's name, as MeshConfig's `extensionProviders` defines it (required).
    #[serde(default)]
    pub name: String,
}

/// One rule: sources, operations and conditions that must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Sources, ORed; absent matches any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations, ORed; absent matches any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Extra conditions, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// One entry of a rule's `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source (required, and not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// One entry of a rule's `to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation (required, and not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Who sent the request. Set fields are ANDed; the values of one field are ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`<trust-domain>/ns/<ns>/sa/<sa>`, no `spiffe://`), from mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT identities (`<iss>/<sub>`); not implemented by the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// JWT identities that must not match; not implemented by the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer's identity, from mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Service accounts as `ns/sa`, no wildcards; exclusive with principals and namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Peer IP addresses or CIDR ranges (exact only, no wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Peer IP addresses or CIDR ranges that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs; the mesh uses the connection's peer address (it reads no
    /// X-Forwarded-For or PROXY protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client IPs that must not match (the connection's peer address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// What the request asks for. Set fields are ANDed; the values of one field are ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Hosts (the `Host`/`:authority` header, case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as decimal strings (`"8080"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods (gRPC requests are always `POST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Normalized request paths; may use the templates `{*}` (one segment) and `{**}` (the
    /// rest of the path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition: the attribute `key` must have one of `values` and none of `notValues`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute (`request.headers[x-user]`, `source.ip`, …; required).
    #[serde(default)]
    pub key: String,
    /// Values, ORed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

// === impl AuthorizationPolicy ===

impl AuthorizationPolicy {
    /// The action (`ALLOW` when absent).
    pub fn action(&self) -> Action {
        self.action.unwrap_or_default()
    }
}

impl Validate for AuthorizationPolicy {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_scope(
            cx,
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        );
        let action = self.action();
        match action {
            Action::Custom => {
                if self.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                    cx.at("provider")
                        .at("name")
                        .error("required with the CUSTOM action: name the external authorizer");
                }
                cx.at("action").unsupported(
                    "CUSTOM delegates to an external authorizer, which the mesh does not call; the requests this policy matches are denied (fail closed)",
                );
            }
            _ => {
                if self.provider.is_some() {
                    cx.at("provider").error(format!(
                        "only allowed with the CUSTOM action, not with {}",
                        action.as_str()
                    ));
                }
            }
        }
        if self.rules.is_empty() && matches!(action, Action::Deny | Action::Custom) {
            cx.at("rules").error(format!(
                "a {} policy without rules never matches and has no effect; add an empty rule `{{}}` to match every request",
                action.as_str()
            ));
        }
        let mut rules = cx.at("rules");
        for (i, rule) in self.rules.iter().enumerate() {
            rule.check(&mut rules.index(i), action);
        }
    }
}

// === impl Action ===

impl Action {
    /// The action as Istio spells it (`DENY`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Rule ===

impl Rule {
    /// Checks the rule; some fields are not allowed with the CUSTOM action.
    fn check(&self, cx: &mut Checker<'_>, action: Action) {
        {
            let mut from = cx.at("from");
            for (i, entry) in self.from.iter().enumerate() {
                let mut cx = from.index(i);
                match &entry.source {
                    None => cx.at("source").error("required field is missing"),
                    Some(source) => source.check(&mut cx.at("source"), action),
                }
            }
        }
        {
            let mut to = cx.at("to");
            for (i, entry) in self.to.iter().enumerate() {
                let mut cx = to.index(i);
                match &entry.operation {
                    None => cx.at("operation").error("required field is missing"),
                    Some(op) => op.validate(&mut cx.at("operation")),
                }
            }
        }
        let mut when = cx.at("when");
        for (i, condition) in self.when.iter().enumerate() {
            condition.check(&mut when.index(i), action);
        }
    }
}

impl Validate for Rule {
    /// Checks the rule as in an `ALLOW` policy.
    fn validate(&self, cx: &mut Checker<'_>) {
        self.check(cx, Action::Allow);
    }
}

// === impl Source ===

impl Source {
    /// True when no field is set (Istio rejects an empty source).
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty())
    }

    /// Every field with its YAML name.
    fn fields(&self) -> [(&'static str, &[String]); 12] {
        [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ]
    }

    fn check(&self, cx: &mut Checker<'_>, action: Action) {
        if self.is_empty() {
            cx.error("must not be empty: set at least one field");
            return;
        }
        for (key, values) in [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
        ] {
            let mut cx = cx.at(key);
            for (i, v) in values.iter().enumerate() {
                check_principal(&mut cx.index(i), v);
            }
        }
        check_wildcards(cx, "requestPrincipals", &self.request_principals);
        check_wildcards(cx, "notRequestPrincipals", &self.not_request_principals);
        check_wildcards(cx, "namespaces", &self.namespaces);
        check_wildcards(cx, "notNamespaces", &self.not_namespaces);
        check_service_accounts(cx, "serviceAccounts", &self.service_accounts);
        check_service_accounts(cx, "notServiceAccounts", &self.not_service_accounts);
        check_ip_blocks(cx, "ipBlocks", &self.ip_blocks);
        check_ip_blocks(cx, "notIpBlocks", &self.not_ip_blocks);
        check_ip_blocks(cx, "remoteIpBlocks", &self.remote_ip_blocks);
        check_ip_blocks(cx, "notRemoteIpBlocks", &self.not_remote_ip_blocks);

        let with_identity = !self.principals.is_empty()
            || !self.not_principals.is_empty()
            || !self.namespaces.is_empty()
            || !self.not_namespaces.is_empty();
        if with_identity {
            for (key, values) in [
                ("serviceAccounts", &self.service_accounts),
                ("notServiceAccounts", &self.not_service_accounts),
            ] {
                if !values.is_empty() {
                    cx.at(key).error(
                        "cannot be set together with principals, notPrincipals, namespaces or notNamespaces",
                    );
                }
            }
        }

        if action == Action::Custom {
            for (key, values) in self.fields() {
                let ip_field = matches!(
                    key,
                    "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks"
                );
                if !values.is_empty() && !ip_field {
                    cx.at(key)
                        .error("not supported with the CUSTOM action (only ipBlocks and remoteIpBlocks are)");
                }
            }
        }
        const JWT: &str = "the mesh does not validate JWTs, so requests have no request principal: an ALLOW rule with it never matches, a DENY rule ignores it";
        for (key, values, why) in [
            ("requestPrincipals", &self.request_principals, JWT),
            ("notRequestPrincipals", &self.not_request_principals, JWT),
        ] {
            if !values.is_empty() {
                cx.at(key).unsupported(why);
            }
        }
    }
}

impl Validate for Source {
    /// Checks the source as in an `ALLOW` policy.
    fn validate(&self, cx: &mut Checker<'_>) {
        self.check(cx, Action::Allow);
    }
}

/// Checks a peer principal: no `spiffe://` scheme, wildcards only at the ends.
fn check_principal(cx: &mut Checker<'_>, value: &str) {
    if let Some(rest) = value.strip_prefix("spiffe://") {
        cx.error(format!(
            "{value:?}: Istio principals omit the spiffe:// scheme; write {rest:?}"
        ));
    } else {
        check_wildcard_value(cx, value);
    }
}

/// Checks a `serviceAccounts` list (found at `key`): at most 16 entries, each `ns/sa`.
fn check_service_accounts(cx: &mut Checker<'_>, key: &str, values: &[String]) {
    let mut cx = cx.at(key);
    if values.len() > MAX_SERVICE_ACCOUNTS {
        cx.error(format!(
            "at most {MAX_SERVICE_ACCOUNTS} service accounts are allowed, got {}",
            values.len()
        ));
    }
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = check_service_account(v) {
            cx.index(i).error(e);
        }
    }
}

/// Checks one service account reference: `<namespace>/<service-account>`, no wildcards.
pub(crate) fn check_service_account(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty value not allowed".into());
    }
    if value.contains('*') {
        return Err(format!(
            "{value:?}: wildcards are not allowed in service accounts"
        ));
    }
    if value.len() > MAX_SERVICE_ACCOUNT_LEN {
        return Err(format!(
            "{value:?}: a service account cannot exceed {MAX_SERVICE_ACCOUNT_LEN} characters"
        ));
    }
    match value.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok(()),
        _ => Err(format!(
            "{value:?}: expected \"<namespace>/<service-account>\""
        )),
    }
}

// === impl Operation ===

impl Operation {
    /// True when no field is set (Istio rejects an empty operation).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.ports.is_empty()
            && self.not_ports.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
    }
}

impl Validate for Operation {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.is_empty() {
            cx.error("must not be empty: set at least one field");
            return;
        }
        check_wildcards(cx, "hosts", &self.hosts);
        check_wildcards(cx, "notHosts", &self.not_hosts);
        check_ports(cx, "ports", &self.ports);
        check_ports(cx, "notPorts", &self.not_ports);
        check_wildcards(cx, "methods", &self.methods);
        check_wildcards(cx, "notMethods", &self.not_methods);
        for (key, paths) in [("paths", &self.paths), ("notPaths", &self.not_paths)] {
            let mut cx = cx.at(key);
            for (i, path) in paths.iter().enumerate() {
                if let Err(e) = check_path(path) {
                    cx.index(i).error(e);
                }
            }
        }
    }
}

/// The path template operator matching one segment.
pub const MATCH_ONE_TEMPLATE: &str = "{*}";

/// The path template operator matching the rest of the path.
pub const MATCH_ANY_TEMPLATE: &str = "{**}";

/// True if `path` uses a path template (`{*}` or `{**}`).
pub fn is_path_template(path: &str) -> bool {
    path.contains(MATCH_ONE_TEMPLATE) || path.contains(MATCH_ANY_TEMPLATE)
}

/// True for a character Envoy's URI templates accept in a literal segment (RFC 3986 `pchar`).
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c)
}

/// Checks one `paths` value. Without a template: `*` only as a prefix, a suffix or the whole
/// value, and no `{`/`}`. With a template: every segment is `{*}`, `{**}` or a literal, and
/// `{**}` is the last segment.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty value not allowed".into());
    }
    if !is_path_template(path) {
        if path.contains(['{', '}']) {
            return Err(format!(
                "{path:?}: '{{' and '}}' are only allowed in the path templates {{*}} and {{**}}"
            ));
        }
        if !is_valid_wildcard(path) {
            return Err(format!(
                "{path:?}: '*' is only allowed as the whole value, a prefix (\"*abc\") or a suffix (\"abc*\"); use {{*}} or {{**}} to match segments"
            ));
        }
        return Ok(());
    }
    let mut after_any = false;
    for segment in path.trim_matches('/').split('/') {
        if after_any {
            return Err(format!(
                "{path:?}: {{**}} must be the last segment of a path template"
            ));
        }
        match segment {
            MATCH_ONE_TEMPLATE => {}
            MATCH_ANY_TEMPLATE => after_any = true,
            s if s.contains(['{', '}']) => {
                return Err(format!(
                    "{path:?}: a template operator must be a whole segment ({{*}} or {{**}}), found {s:?}"
                ));
            }
            s if s.is_empty() || !s.chars().all(is_pchar) => {
                return Err(format!(
                    "{path:?}: segment {s:?} is not a valid literal in a path template (no '*', empty segments or reserved characters)"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

// === impl Condition ===

/// What the values of a `when` key must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    /// A string with Istio's wildcards.
    String,
    /// A peer principal (no `spiffe://`).
    Principal,
    /// An IP address or CIDR range.
    Ip,
    /// A port number.
    Port,
    /// A service account (`ns/sa`).
    ServiceAccount,
}

/// What the mesh makes of a `when` key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum WhenKey {
    /// A key the mesh evaluates.
    Supported(ValueKind),
    /// A valid Istio key the mesh does not evaluate, and why.
    Unsupported(ValueKind, &'static str),
    /// Not a valid key, and why.
    Invalid(String),
}

/// True if `key` is `<prefix>[<name>]` with a non-empty name.
fn is_map_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('['))
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|name| !name.is_empty())
}

/// Classifies a `when` key.
fn classify_when_key(key: &str) -> WhenKey {
    const JWT: &str = "the mesh does not validate JWTs, so requests carry no JWT attributes";
    let map_key = |prefix: &str, kind: WhenKey| {
        if is_map_key(key, prefix) {
            kind
        } else {
            WhenKey::Invalid(format!("{key:?}: expected the form {prefix}[<name>]"))
        }
    };
    match key {
        "source.ip" => WhenKey::Supported(ValueKind::Ip),
        "source.namespace" => WhenKey::Supported(ValueKind::String),
        "source.principal" => WhenKey::Supported(ValueKind::Principal),
        "destination.port" => WhenKey::Supported(ValueKind::Port),
        // The connection's peer address: the mesh reads no X-Forwarded-For or PROXY protocol
        // (Istio with numTrustedProxies: 0).
        "remote.ip" => WhenKey::Supported(ValueKind::Ip),
        "destination.ip" => WhenKey::Supported(ValueKind::Ip),
        "connection.sni" => WhenKey::Supported(ValueKind::String),
        "source.serviceAccount" => WhenKey::Supported(ValueKind::ServiceAccount),
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
            WhenKey::Unsupported(ValueKind::String, JWT)
        }
        "destination.namespace" => WhenKey::Invalid(format!(
            "{key:?} is not supported: use the policy's metadata.namespace"
        )),
        "destination.name" | "destination.user" => WhenKey::Invalid(format!(
            "{key:?} is a deprecated attribute only supported in Istio's v1alpha1 RBAC"
        )),
        k if k.starts_with("destination.labels") => WhenKey::Invalid(format!(
            "{key:?} is not supported: use the policy's selector"
        )),
        k if k.starts_with("request.headers") => {
            map_key("request.headers", WhenKey::Supported(ValueKind::String))
        }
        k if k.starts_with("request.auth.claims") => map_key(
            "request.auth.claims",
            WhenKey::Unsupported(ValueKind::String, JWT),
        ),
        k if k.starts_with("request.experimental.inline.headers") => map_key(
            "request.experimental.inline.headers",
            WhenKey::Unsupported(
                ValueKind::String,
                "experimental attributes are Envoy-specific",
            ),
        ),
        k if k.starts_with("experimental.envoy.filters.") => {
            let (prefix, _) = k.split_once('[').unwrap_or((k, ""));
            if prefix.len() > "experimental.envoy.filters.".len() && is_map_key(k, prefix) {
                WhenKey::Unsupported(
                    ValueKind::String,
                    "experimental attributes are Envoy-specific",
                )
            } else {
                WhenKey::Invalid(format!(
                    "{key:?}: expected the form experimental.envoy.filters.<filter>[<field>]"
                ))
            }
        }
        _ => WhenKey::Invalid(format!(
            "unknown attribute {key:?}: expected one of request.headers[<name>], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[<name>], destination.ip, destination.port, connection.sni, experimental.envoy.filters.*"
        )),
    }
}

impl Condition {
    fn check(&self, cx: &mut Checker<'_>, action: Action) {
        if self.key.is_empty() {
            cx.at("key").error("required field is missing or empty");
            return;
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            cx.error(format!(
                "at least one of values or notValues must be set for key {:?}",
                self.key
            ));
        }
        let kind = match classify_when_key(&self.key) {
            WhenKey::Invalid(why) => {
                cx.at("key").error(why);
                return;
            }
            WhenKey::Supported(kind) => kind,
            WhenKey::Unsupported(kind, why) => {
                cx.at("key").unsupported(why);
                kind
            }
        };
        if action == Action::Custom
            && (matches!(
                self.key.as_str(),
                "source.namespace" | "source.serviceAccount" | "source.principal"
            ) || self.key.starts_with("request.auth."))
        {
            cx.at("key").error(format!(
                "{:?} is not supported with the CUSTOM action",
                self.key
            ));
        }
        for (key, values) in [("values", &self.values), ("notValues", &self.not_values)] {
            let mut cx = cx.at(key);
            for (i, v) in values.iter().enumerate() {
                let mut cx = cx.index(i);
                match kind {
                    ValueKind::String => check_wildcard_value(&mut cx, v),
                    ValueKind::Principal => check_principal(&mut cx, v),
                    ValueKind::Ip => check_ip_value(&mut cx, v),
                    ValueKind::Port => check_port_value(&mut cx, v),
                    ValueKind::ServiceAccount => {
                        if let Err(e) = check_service_account(v) {
                            cx.error(e);
                        }
                    }
                }
            }
        }
    }
}

impl Validate for Condition {
    /// Checks the condition as in an `ALLOW` policy.
    fn validate(&self, cx: &mut Checker<'_>) {
        self.check(cx, Action::Allow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_follow_envoy_rules() {
        for ok in [
            "/ratings/*",
            "*",
            "/exact",
            "*.json",
            "/{*}/reviews",
            "/api/{*}/{**}",
            "/{**}",
            "/foo/{**}/",
            "/v1/{*}/x:get",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a*b",
            "/api/*/x",
            "/{**}/foo",
            "/{**}/{*}",
            "/{**}/{**}",
            "/foo{*}",
            "/{*}bar",
            "/{id}",
            "/{*}/a*",
            "/{*}//x",
            "/x/{bar}",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        assert_eq!(
            check_service_account("default/bookinfo-productpage"),
            Ok(())
        );
        for bad in [
            "",
            "productpage",
            "default/",
            "/sa",
            "a/b/c",
            "default/*",
            "*/sa",
        ] {
            assert!(check_service_account(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_when_keys() {
        use ValueKind as V;
        use WhenKey as K;
        assert_eq!(
            classify_when_key("request.headers[x-user]"),
            K::Supported(V::String)
        );
        assert_eq!(classify_when_key("source.ip"), K::Supported(V::Ip));
        assert_eq!(classify_when_key("destination.port"), K::Supported(V::Port));
        assert!(matches!(
            classify_when_key("request.auth.claims[groups]"),
            K::Unsupported(V::String, _)
        ));
        assert!(matches!(
            classify_when_key("experimental.envoy.filters.network.mysql_proxy[db.table]"),
            K::Unsupported(V::String, _)
        ));
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headersx[a]",
            "request.auth.claims",
            "experimental.envoy.filters.",
            "experimental.envoy.filters.[a]",
            "destination.labels[app]",
            "destination.namespace",
            "source.IP",
            "request.method",
        ] {
            assert!(matches!(classify_when_key(bad), K::Invalid(_)), "{bad}");
        }
    }
}
