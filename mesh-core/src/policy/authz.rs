//! Istio's AuthorizationPolicy decision: which policies apply to a workload, and whether they
//! allow a request.
//!
//! [`Authorizer::for_workload`] selects the policies that apply to one workload and compiles
//! them once (patterns split into exact/prefix/suffix matchers, CIDRs parsed, path templates
//! parsed, header names resolved). [`Authorizer::evaluate`] then decides a request from its
//! [`RequestAttributes`] without allocating (except for the rare request whose path has dot
//! segments to remove, or a `when` header sent more than once, which are joined as Envoy does).
//!
//! # Selection
//!
//! As Istio does for a sidecar: a policy in the workload's namespace applies when it has no
//! `selector` or its `selector.matchLabels` are all among the workload's labels; a policy in
//! the root namespace applies the same way to workloads in every namespace (mesh-wide without
//! a selector). A policy attached with `targetRef`/`targetRefs` applies to Gateways and
//! waypoints, never to a workload's sidecar, so it is not selected (a [`Problem`] notes it).
//!
//! # Evaluation order
//!
//! 1. `CUSTOM`: a matching CUSTOM policy **denies** (see below);
//! 2. `DENY`: a matching DENY policy denies;
//! 3. no `ALLOW` policy applies to the workload: allowed;
//! 4. a matching `ALLOW` policy allows;
//! 5. otherwise denied (so `spec: {}`, an ALLOW policy without rules, denies everything).
//!
//! `AUDIT` policies never change the decision; the first matching one is returned in
//! [`Decision::audit`]. Policies with the `istio.io/dry-run: "true"` annotation are not
//! enforced: they are evaluated on their own by the same steps and their verdict is returned
//! in [`Decision::dry_run`]. Within each action, policies are tried in `namespace/name` order,
//! so the policy a decision names is deterministic.
//!
//! # Rules
//!
//! A policy matches when one of its rules matches. Within a rule `from`, `to` and `when` are
//! ANDed; the entries of `from` are ORed, as are those of `to`; `when` conditions are ANDed; an
//! absent section matches anything (`rules: [{}]` matches every request). Within a source or
//! an operation the set fields are ANDed and the values of one field ORed; a `notX` field
//! excludes the request when any of its values matches. Strings match exactly, by prefix
//! (`abc*`), by suffix (`*abc`) or by presence (`*`, a non-empty value).
//!
//! - `principals` match the peer's identity without `spiffe://`
//!   (`cluster.local/ns/default/sa/productpage`); `namespaces` its namespace;
//!   `serviceAccounts` (`ns/sa`, any trust domain) its namespace and service account. Without
//!   a peer identity (plaintext) none of them match, so `principals: ["*"]` means "any
//!   authenticated peer" and `notPrincipals: ["*"]` "plaintext only", as in Istio.
//! - `ipBlocks` match the connection's peer address (an IPv4-mapped IPv6 address is compared
//!   as IPv4).
//! - `hosts` match the authority case-insensitively; `ports` the destination port; `methods`
//!   the method; `paths` the normalized path ([`normalize_path`]), which may use the Envoy URI
//!   templates `{*}` (exactly one non-empty segment) and `{**}` (any rest of the path, only as
//!   the last operator), with Envoy's character classes.
//! - `when` keys: `request.headers[<name>]` (`*` means the header is present; several values
//!   of one header are joined with `,` as Envoy does; `host` and the pseudo-headers
//!   `:authority`, `:method`, `:path` read those attributes), `source.ip`, `remote.ip`,
//!   `source.principal`, `source.namespace`, `source.serviceAccount`, `destination.ip`,
//!   `destination.port` and `connection.sni` (no SNI matches no value). `values` are ORed, and
//!   the condition fails when one of `notValues` matches.
//!
//! # What cannot be evaluated
//!
//! The mesh does not validate JWTs, so `requestPrincipals`, `notRequestPrincipals` and the
//! `request.auth.*` keys have nothing to match against; `experimental.*` keys are
//! Envoy-specific. Such a field (and what validation refuses but might still reach the engine:
//! a value that does not compile, an empty source or operation, a condition without values)
//! is handled as Istio handles a field it cannot evaluate (for
//! example an HTTP field on a TCP port): in an **ALLOW** rule the whole rule never matches
//! (the policy only allows less), in a **DENY**, **AUDIT** or **CUSTOM** rule the field is
//! dropped, so the rest of the rule decides (the policy denies more). Either way the result
//! fails closed, and each is listed in [`Authorizer::problems`]. `destination.ip` when the
//! caller does not know the destination address is treated the same way, at request time.
//!
//! # Where the mesh differs from Istio
//!
//! - **CUSTOM** delegates to an external authorizer, which the mesh does not call. Istio
//!   turns a CUSTOM policy whose provider it cannot find into a DENY of the requests the policy
//!   selects, and an unreachable provider denies by default (`failOpen: false`); the mesh
//!   does the same: a request matching a CUSTOM policy is denied, with
//!   [`Reason::CustomUnsupported`].
//! - **`hosts`** without a port also match an authority carrying a port (`example.com`
//!   matches `example.com:8080`). Istio compares the raw `:authority`, which makes
//!   `hosts: [example.com]` silently miss clients that send the port.
//! - **`remoteIpBlocks`** and **`remote.ip`** are matched against the connection's peer
//!   address: the mesh reads neither `X-Forwarded-For` nor PROXY protocol, which is what Istio
//!   does with `numTrustedProxies: 0`.
//! - **Trust domains** are compared as written: no `trustDomainAliases`.
//! - **Paths** are normalized by removing dot segments (also when written `%2e`), query and
//!   fragment, as Istio's default `BASE` normalization; other percent-encodings and repeated
//!   slashes are kept. The inbound layer should forward the normalized path so the
//!   application sees the path that was authorized.
//!
//! # Examples
//! ```
//! use std::{collections::BTreeMap, net::IpAddr};
//! use mesh_core::{config::load_str, identity::Identity, policy::authz::{Authorizer, RequestAttributes}};
//! let loaded = load_str(r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: { name: reviews-viewer, namespace: default }
//! spec:
//!   selector: { matchLabels: { app: reviews } }
//!   rules:
//!   - from: [{ source: { principals: ["cluster.local/ns/default/sa/productpage"] } }]
//!     to: [{ operation: { methods: ["GET"] } }]
//! "#, None);
//! let labels = BTreeMap::from([("app".to_owned(), "reviews".to_owned())]);
//! let authz = Authorizer::for_workload(&loaded.resources, "default", &labels, "istio-system");
//! let peer: Identity = "spiffe://cluster.local/ns/default/sa/productpage".parse()?;
//! let headers = http::HeaderMap::new();
//! let mut req = RequestAttributes::new(IpAddr::from([10, 0, 0, 1]), 9080, &headers);
//! req.peer = Some(&peer);
//! req.method = "GET";
//! req.path = "/reviews/1";
//! let decision = authz.evaluate(&req);
//! assert!(decision.is_allowed());
//! assert_eq!(decision.policy().map(|p| p.as_str()), Some("default/reviews-viewer"));
//! req.method = "DELETE";
//! assert!(!authz.evaluate(&req).is_allowed());
//! # Ok::<_, mesh_core::BoxError>(())
//! ```

use std::{borrow::Cow, collections::BTreeMap, fmt, net::IpAddr};

use http::{HeaderMap, HeaderName};

use crate::{
    config::{
        Resource, Spec,
        security::{
            authorization_policy::{
                Action, AuthorizationPolicy, Condition, MATCH_ANY_TEMPLATE, MATCH_ONE_TEMPLATE,
                Operation, Rule, Source, is_path_template,
            },
            parse_ip_block, parse_port,
        },
    },
    identity::Identity,
};

/// The annotation that puts a policy in dry-run: evaluated and reported, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

// === public types ===

/// The compiled AuthorizationPolicies of one workload. Immutable; cheap to evaluate.
///
/// `Default` is a workload without policies: every request is allowed. Share it behind an
/// `Arc`; it is `Send + Sync` and never changes after [`Authorizer::for_workload`].
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    enforced: PolicySet,
    dry_run: PolicySet,
    problems: Vec<Problem>,
}

/// Names a policy: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    /// `namespace/name`.
    full: Box<str>,
    /// Where the name starts in `full`.
    name_at: usize,
}

/// Something in a selected policy that the mesh cannot enforce as written, and what it does
/// instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The policy.
    pub policy: PolicyId,
    /// The field, as a path from the resource (`spec.rules[0].from[0].source.requestPrincipals`).
    pub field: String,
    /// What is wrong and how the mesh treats it.
    pub message: String,
}

/// What is known about one request, borrowed from it. Build it with
/// [`RequestAttributes::new`] or [`RequestAttributes::from_request`] and set the rest.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    /// The verified peer identity from mTLS; `None` for plaintext.
    pub peer: Option<&'a Identity>,
    /// The connection's peer address (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The address the connection was accepted on, when known (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// The port the connection was accepted on (`ports`, `destination.port`).
    pub destination_port: u16,
    /// The TLS SNI (`connection.sni`); `None` for plaintext or no SNI.
    pub sni: Option<&'a str>,
    /// The authority (`:authority` or `Host`), possibly with a port; empty when absent.
    pub host: &'a str,
    /// The method (`GET`).
    pub method: &'a str,
    /// The path as sent; the query and fragment are ignored and dot segments removed.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed: no CUSTOM or DENY policy matched and no ALLOW policy applies to the workload.
    NoAllowPolicy,
    /// Allowed by the ALLOW policy named in the decision.
    AllowMatched,
    /// Denied by the DENY policy named in the decision.
    DenyMatched,
    /// Denied by the CUSTOM policy named in the decision: the mesh has no external authorizer
    /// and fails closed, as Istio does for a provider it cannot use.
    CustomUnsupported,
    /// Denied: the workload has ALLOW policies and none matched.
    NoAllowMatched,
}

/// The outcome of a set of policies for one request: the reason and the policy that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'a> {
    reason: Reason,
    policy: Option<&'a PolicyId>,
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    verdict: Verdict<'a>,
    audit: Option<&'a PolicyId>,
    dry_run: Option<Verdict<'a>>,
}

// === impl PolicyId ===

impl PolicyId {
    /// The id of the policy `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            full: format!("{namespace}/{name}").into_boxed_str(),
            name_at: namespace.len() + 1,
        }
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.full
            .get(..self.name_at.saturating_sub(1))
            .unwrap_or_default()
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.full.get(self.name_at..).unwrap_or_default()
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.policy, self.field, self.message)
    }
}

// === impl RequestAttributes ===

impl<'a> RequestAttributes<'a> {
    /// Attributes of a plaintext request from `source_ip` to `destination_port` with
    /// `headers`; no peer, no SNI, unknown destination address, empty host, method and path.
    pub fn new(source_ip: IpAddr, destination_port: u16, headers: &'a HeaderMap) -> Self {
        Self {
            peer: None,
            source_ip,
            destination_ip: None,
            destination_port,
            sni: None,
            host: "",
            method: "",
            path: "",
            headers,
        }
    }

    /// Attributes of `req`: method, path (with its query, which only `request.headers[:path]`
    /// sees), headers and the authority (from the URI, else the `Host` header), with the connection's `peer`, `source_ip` and `destination_port`.
    pub fn from_request<B>(
        req: &'a http::Request<B>,
        peer: Option<&'a Identity>,
        source_ip: IpAddr,
        destination_port: u16,
    ) -> Self {
        let host = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        };
        Self {
            peer,
            host,
            method: req.method().as_str(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path(), |p| p.as_str()),
            ..Self::new(source_ip, destination_port, req.headers())
        }
    }
}

// === impl Reason, Verdict, Decision ===

impl Reason {
    /// True if the request is allowed.
    pub const fn is_allowed(self) -> bool {
        matches!(self, Reason::NoAllowPolicy | Reason::AllowMatched)
    }
}

impl<'a> Verdict<'a> {
    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// True if the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.reason.is_allowed()
    }

    /// The policy that decided: the matching CUSTOM, DENY or ALLOW policy; `None` for
    /// [`Reason::NoAllowPolicy`] and [`Reason::NoAllowMatched`].
    pub fn policy(&self) -> Option<&'a PolicyId> {
        self.policy
    }
}

impl fmt::Display for Verdict<'_> {
    /// `denied by DENY policy default/deny-post`, `denied: no ALLOW policy matched`, …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = |f: &mut fmt::Formatter<'_>, what: &str, action: &str| match self.policy {
            Some(p) => write!(f, "{what} by {action} policy {p}"),
            None => write!(f, "{what} by {action} policy"),
        };
        match self.reason {
            Reason::NoAllowPolicy => f.write_str("allowed: no ALLOW policy applies"),
            Reason::AllowMatched => by(f, "allowed", "ALLOW"),
            Reason::DenyMatched => by(f, "denied", "DENY"),
            Reason::CustomUnsupported => {
                by(f, "denied", "CUSTOM")?;
                f.write_str(" (external authorization is not supported)")
            }
            Reason::NoAllowMatched => f.write_str("denied: no ALLOW policy matched"),
        }
    }
}

impl<'a> Decision<'a> {
    /// True if the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict.is_allowed()
    }

    /// Why it was allowed or denied.
    pub fn reason(&self) -> Reason {
        self.verdict.reason
    }

    /// The policy that decided (see [`Verdict::policy`]).
    pub fn policy(&self) -> Option<&'a PolicyId> {
        self.verdict.policy
    }

    /// The enforced verdict.
    pub fn verdict(&self) -> Verdict<'a> {
        self.verdict
    }

    /// The first matching AUDIT policy: the request should be logged as audited.
    pub fn audit(&self) -> Option<&'a PolicyId> {
        self.audit
    }

    /// What the dry-run policies (`istio.io/dry-run: "true"`) would have decided on their
    /// own; `None` when the workload has none.
    pub fn dry_run(&self) -> Option<Verdict<'a>> {
        self.dry_run
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.verdict, f)?;
        if let Some(p) = self.audit {
            write!(f, ", audited by {p}")?;
        }
        if let Some(d) = self.dry_run {
            write!(f, ", dry-run: {d}")?;
        }
        Ok(())
    }
}

// === impl Authorizer ===

impl Authorizer {
    /// Selects and compiles the AuthorizationPolicies among `resources` that apply to a
    /// workload in `namespace` with `labels` (see the [module docs](self) for the rules).
    ///
    /// Never fails: what cannot be enforced as written is handled fail-closed and listed in
    /// [`problems`](Self::problems).
    pub fn for_workload(
        resources: &[Resource],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        root_namespace: &str,
    ) -> Self {
        let mut selected: Vec<(PolicyId, &Resource, &AuthorizationPolicy)> = Vec::new();
        let mut problems = Vec::new();
        for r in resources {
            let Spec::AuthorizationPolicy(ap) = &r.spec else {
                continue;
            };
            let rns = r.namespace();
            if rns != namespace && rns != root_namespace {
                continue;
            }
            if let Some(selector) = &ap.selector
                && !selector.matches(labels)
            {
                continue;
            }
            let id = PolicyId::new(rns, &r.metadata.name);
            if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
                let field = if ap.target_refs.is_empty() {
                    "spec.targetRef"
                } else {
                    "spec.targetRefs"
                };
                problems.push(Problem {
                    policy: id,
                    field: field.into(),
                    message: "a policy attached with targetRefs applies to Gateways and waypoints, not to a workload's sidecar; not applied".into(),
                });
                continue;
            }
            selected.push((id, r, ap));
        }
        selected.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Self {
            problems,
            ..Self::default()
        };
        for (id, r, ap) in selected {
            let dry_run = r
                .metadata
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .is_some_and(|v| parse_bool(v));
            let policy = compile_policy(id, ap, &mut out.problems);
            let set = if dry_run {
                &mut out.dry_run
            } else {
                &mut out.enforced
            };
            set.push(ap.action(), policy);
        }
        out
    }

    /// What the mesh could not enforce as written in the selected policies, and what it did
    /// instead; also the policies skipped because they use `targetRefs`.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// True when no policy (enforced, audit or dry-run) applies: every request is allowed
    /// and nothing is audited, so the caller may skip evaluation.
    pub fn is_empty(&self) -> bool {
        self.enforced.is_empty() && self.dry_run.is_empty()
    }

    /// The enforced policies that apply to the workload, by action, in evaluation order.
    pub fn policies(&self) -> impl Iterator<Item = (Action, &PolicyId)> + '_ {
        self.enforced.iter()
    }

    /// The dry-run policies that apply to the workload, by action.
    pub fn dry_run_policies(&self) -> impl Iterator<Item = (Action, &PolicyId)> + '_ {
        self.dry_run.iter()
    }

    /// Decides a request.
    pub fn evaluate<'s>(&'s self, req: &RequestAttributes<'_>) -> Decision<'s> {
        if self.is_empty() {
            return Decision {
                verdict: Verdict {
                    reason: Reason::NoAllowPolicy,
                    policy: None,
                },
                audit: None,
                dry_run: None,
            };
        }
        let req = Prepared::new(req);
        Decision {
            verdict: self.enforced.verdict(&req),
            audit: self.enforced.audit(&req),
            dry_run: (!self.dry_run.is_empty()).then(|| self.dry_run.verdict(&req)),
        }
    }
}

/// Istio's `strconv.ParseBool` truth values.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

// === policy sets ===

/// The policies of one workload, by action, each sorted by id.
#[derive(Clone, Debug, Default)]
struct PolicySet {
    custom: Vec<Policy>,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    audit: Vec<Policy>,
}

impl PolicySet {
    fn push(&mut self, action: Action, policy: Policy) {
        match action {
            Action::Allow => self.allow.push(policy),
            Action::Deny => self.deny.push(policy),
            Action::Audit => self.audit.push(policy),
            Action::Custom => self.custom.push(policy),
        }
    }

    fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (Action, &PolicyId)> + '_ {
        fn tag(action: Action, ps: &[Policy]) -> impl Iterator<Item = (Action, &PolicyId)> {
            ps.iter().map(move |p| (action, &p.id))
        }
        tag(Action::Custom, &self.custom)
            .chain(tag(Action::Deny, &self.deny))
            .chain(tag(Action::Allow, &self.allow))
            .chain(tag(Action::Audit, &self.audit))
    }

    fn verdict<'s>(&'s self, req: &Prepared<'_>) -> Verdict<'s> {
        let first = |ps: &'s [Policy]| first_match(ps, req);
        let (reason, policy) = if let Some(p) = first(&self.custom) {
            (Reason::CustomUnsupported, Some(p))
        } else if let Some(p) = first(&self.deny) {
            (Reason::DenyMatched, Some(p))
        } else if self.allow.is_empty() {
            (Reason::NoAllowPolicy, None)
        } else if let Some(p) = first(&self.allow) {
            (Reason::AllowMatched, Some(p))
        } else {
            (Reason::NoAllowMatched, None)
        };
        Verdict { reason, policy }
    }

    fn audit(&self, req: &Prepared<'_>) -> Option<&PolicyId> {
        first_match(&self.audit, req)
    }
}

/// The first of `policies` that matches.
fn first_match<'s>(policies: &'s [Policy], req: &Prepared<'_>) -> Option<&'s PolicyId> {
    policies.iter().find(|p| p.matches(req)).map(|p| &p.id)
}

/// One compiled policy.
#[derive(Clone, Debug)]
struct Policy {
    id: PolicyId,
    rules: Vec<CompiledRule>,
}

impl Policy {
    fn matches(&self, req: &Prepared<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    /// An ALLOW rule with a field the mesh cannot evaluate: it never matches.
    never: bool,
    /// What a condition that cannot be evaluated at request time counts as: false in ALLOW
    /// rules, true in the others (fail closed either way).
    unknown_matches: bool,
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
    when: Vec<CompiledCondition>,
}

impl CompiledRule {
    fn matches(&self, req: &Prepared<'_>) -> bool {
        !self.never
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self
                .when
                .iter()
                .all(|c| c.matches(req, self.unknown_matches))
    }
}

/// Values ORed, minus `not` values: matches when `any` is empty or one of it matches, and
/// none of `none` matches.
#[derive(Clone, Debug)]
struct Field<M> {
    any: Box<[M]>,
    none: Box<[M]>,
}

impl<M> Default for Field<M> {
    fn default() -> Self {
        Self {
            any: Box::default(),
            none: Box::default(),
        }
    }
}

impl<M> Field<M> {
    fn matches(&self, f: impl Fn(&M) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&f)) && !self.none.iter().any(f)
    }
}

#[derive(Clone, Debug, Default)]
struct CompiledSource {
    principals: Field<StrMatch>,
    namespaces: Field<StrMatch>,
    service_accounts: Field<ServiceAccount>,
    ip_blocks: Field<Cidr>,
    remote_ip_blocks: Field<Cidr>,
}

impl CompiledSource {
    fn matches(&self, req: &Prepared<'_>) -> bool {
        let principal = req.principal.as_ref().map(|p| &p[..]);
        let namespace = req.peer.map(|p| p.namespace().as_bytes());
        self.principals.matches(|m| m.matches(principal, false))
            && self.namespaces.matches(|m| m.matches_one(namespace, false))
            && self.service_accounts.matches(|sa| sa.matches(req.peer))
            && self.ip_blocks.matches(|c| c.contains(req.source_ip))
            && self.remote_ip_blocks.matches(|c| c.contains(req.source_ip))
    }
}

#[derive(Clone, Debug, Default)]
struct CompiledOperation {
    hosts: Field<StrMatch>,
    ports: Field<u16>,
    methods: Field<StrMatch>,
    paths: Field<PathMatch>,
}

impl CompiledOperation {
    fn matches(&self, req: &Prepared<'_>) -> bool {
        self.hosts.matches(|m| req.host_matches(m))
            && self.ports.matches(|p| *p == req.port)
            && self.methods.matches(|m| m.matches_one(req.method, false))
            && self.paths.matches(|m| m.matches(req.path.as_bytes()))
    }
}

/// A compiled `when` condition.
#[derive(Clone, Debug)]
enum CompiledCondition {
    Header(HeaderKey, Field<StrMatch>),
    SourceIp(Field<Cidr>),
    DestinationIp(Field<Cidr>),
    DestinationPort(Field<u16>),
    Principal(Field<StrMatch>),
    Namespace(Field<StrMatch>),
    ServiceAccount(Field<ServiceAccount>),
    Sni(Field<StrMatch>),
}

impl CompiledCondition {
    fn matches(&self, req: &Prepared<'_>, unknown_matches: bool) -> bool {
        match self {
            CompiledCondition::Header(key, field) => {
                let value = req.header(key);
                field.matches(|m| m.matches_one(value.as_deref(), false))
            }
            CompiledCondition::SourceIp(field) => field.matches(|c| c.contains(req.source_ip)),
            CompiledCondition::DestinationIp(field) => match req.destination_ip {
                Some(ip) => field.matches(|c| c.contains(ip)),
                None => unknown_matches,
            },
            CompiledCondition::DestinationPort(field) => field.matches(|p| *p == req.port),
            CompiledCondition::Principal(field) => {
                let principal = req.principal.as_ref().map(|p| &p[..]);
                field.matches(|m| m.matches(principal, false))
            }
            CompiledCondition::Namespace(field) => {
                let namespace = req.peer.map(|p| p.namespace().as_bytes());
                field.matches(|m| m.matches_one(namespace, false))
            }
            CompiledCondition::ServiceAccount(field) => field.matches(|sa| sa.matches(req.peer)),
            CompiledCondition::Sni(field) => {
                let sni = req.sni.map(str::as_bytes);
                field.matches(|m| m.matches_one(sni, false))
            }
        }
    }
}

/// What a `request.headers[...]` key reads.
#[derive(Clone, Debug)]
enum HeaderKey {
    Name(HeaderName),
    Authority,
    Method,
    Path,
}

// === matchers ===

/// Istio's string match: exact, prefix (`abc*`), suffix (`*abc`), presence (`*`, non-empty);
/// `Exists` is presence for headers (present, even empty), as Envoy's `present_match`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StrMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Present,
    Exists,
}

impl StrMatch {
    fn compile(value: &str) -> Result<Self, String> {
        let bytes = |s: &str| s.as_bytes().to_vec().into_boxed_slice();
        let bad =
            || format!("{value:?}: '*' is only allowed as the whole value, a prefix or a suffix");
        if value.is_empty() {
            return Err("empty value".into());
        }
        if value == "*" {
            return Ok(StrMatch::Present);
        }
        if let Some(rest) = value.strip_prefix('*') {
            return if rest.contains('*') {
                Err(bad())
            } else {
                Ok(StrMatch::Suffix(bytes(rest)))
            };
        }
        if let Some(rest) = value.strip_suffix('*') {
            return if rest.contains('*') {
                Err(bad())
            } else {
                Ok(StrMatch::Prefix(bytes(rest)))
            };
        }
        if value.contains('*') {
            return Err(bad());
        }
        Ok(StrMatch::Exact(bytes(value)))
    }

    /// Matches a value given as consecutive parts (a principal is assembled from the
    /// identity's parts without allocating); `None` is an absent value, which only `not`
    /// fields match.
    fn matches(&self, value: Option<&[&[u8]]>, ignore_case: bool) -> bool {
        let Some(parts) = value else {
            return false;
        };
        let eq = |a: u8, b: &u8| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == *b
            }
        };
        let bytes = || parts.iter().flat_map(|p| p.iter().copied());
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match self {
            StrMatch::Exists => true,
            StrMatch::Present => len > 0,
            StrMatch::Exact(p) => len == p.len() && bytes().zip(p.iter()).all(|(a, b)| eq(a, b)),
            StrMatch::Prefix(p) => len >= p.len() && bytes().zip(p.iter()).all(|(a, b)| eq(a, b)),
            StrMatch::Suffix(p) => {
                len >= p.len()
                    && bytes()
                        .skip(len - p.len())
                        .zip(p.iter())
                        .all(|(a, b)| eq(a, b))
            }
        }
    }

    /// Matches a value in one piece.
    fn matches_one(&self, value: Option<impl AsRef<[u8]>>, ignore_case: bool) -> bool {
        match value {
            Some(v) => self.matches(Some(&[v.as_ref()]), ignore_case),
            None => self.matches(None, ignore_case),
        }
    }
}

/// A CIDR range, host bits cleared; IPv4 as the low 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    v4: bool,
    net: u128,
    mask: u128,
}

impl Cidr {
    fn compile(value: &str) -> Result<Self, String> {
        let (ip, len) = parse_ip_block(value)?;
        let (v4, bits, width) = match ip {
            IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (false, u128::from(a), 128u32),
        };
        let len = u32::from(len).min(width);
        let all = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        let host_bits = width - len;
        let mask = if len == 0 {
            0
        } else {
            (all >> host_bits) << host_bits
        };
        Ok(Self {
            v4,
            net: bits & mask,
            mask,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (v4, bits) = match ip.to_canonical() {
            IpAddr::V4(a) => (true, u128::from(u32::from(a))),
            IpAddr::V6(a) => (false, u128::from(a)),
        };
        v4 == self.v4 && bits & self.mask == self.net
    }
}

/// A service account, `ns/sa`, in any trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceAccount {
    namespace: Box<str>,
    name: Box<str>,
}

impl ServiceAccount {
    fn compile(value: &str) -> Result<Self, String> {
        match value.split_once('/') {
            Some((ns, sa))
                if !ns.is_empty()
                    && !sa.is_empty()
                    && !sa.contains('/')
                    && !value.contains('*') =>
            {
                Ok(Self {
                    namespace: ns.into(),
                    name: sa.into(),
                })
            }
            _ => Err(format!(
                "{value:?}: expected \"<namespace>/<service-account>\""
            )),
        }
    }

    fn matches(&self, peer: Option<&Identity>) -> bool {
        peer.is_some_and(|p| {
            p.namespace() == &*self.namespace && p.service_account() == &*self.name
        })
    }
}

/// A `paths` value: an Istio string match or an Envoy URI template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PathMatch {
    Str(StrMatch),
    Template(Box<[Segment]>),
}

/// One segment of a URI template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Exactly this text (empty only as a trailing `/`).
    Literal(Box<[u8]>),
    /// `{*}`: one or more path characters, no `/`.
    One,
    /// `{**}`: zero or more path characters or `/`.
    Any,
}

/// The characters Envoy's URI template globs match (RFC 3986 `pchar` without `*` and `=`).
fn is_glob_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b)
}

impl PathMatch {
    fn compile(value: &str) -> Result<Self, String> {
        if !is_path_template(value) {
            if value.contains(['{', '}']) {
                return Err(format!(
                    "{value:?}: '{{' and '}}' are only allowed in the templates {{*}} and {{**}}"
                ));
            }
            return StrMatch::compile(value).map(PathMatch::Str);
        }
        let Some(rest) = value.strip_prefix('/') else {
            return Err(format!("{value:?}: a path template must start with '/'"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if segments.last() == Some(&Segment::Any) && !(last && part.is_empty()) {
                return Err(format!(
                    "{value:?}: {{**}} must be the last operator of a path template"
                ));
            }
            let segment = match *part {
                MATCH_ONE_TEMPLATE => Segment::One,
                MATCH_ANY_TEMPLATE => Segment::Any,
                "" if last && i > 0 => Segment::Literal(Box::default()),
                p if !p.is_empty() && p.bytes().all(|b| is_glob_char(b) || b == b'=') => {
                    Segment::Literal(p.as_bytes().into())
                }
                p => {
                    return Err(format!(
                        "{value:?}: segment {p:?} is neither {{*}}, {{**}} nor a literal of path characters"
                    ));
                }
            };
            segments.push(segment);
        }
        Ok(PathMatch::Template(segments.into_boxed_slice()))
    }

    fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Str(m) => m.matches_one(Some(path), false),
            PathMatch::Template(segments) => template_matches(segments, path),
        }
    }
}

/// Matches `path` against the template, as Envoy's regex `/seg(/seg)*` does (full match).
fn template_matches(segments: &[Segment], path: &[u8]) -> bool {
    let Some(mut rest) = path.strip_prefix(b"/") else {
        return false;
    };
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix(b"/") {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match segment {
            Segment::Literal(lit) => match rest.strip_prefix(&lit[..]) {
                Some(r) => rest = r,
                None => return false,
            },
            Segment::One => {
                let n = rest.iter().take_while(|b| is_glob_char(**b)).count();
                if n == 0 {
                    return false;
                }
                rest = rest.get(n..).unwrap_or_default();
            }
            Segment::Any => {
                if !rest.iter().all(|b| is_glob_char(*b) || *b == b'/') {
                    return false;
                }
                return match segments.get(i + 1..).unwrap_or_default() {
                    [] => true,
                    // `{**}/`: the regex `[..]*/` needs a final '/'.
                    [Segment::Literal(l)] if l.is_empty() => rest.ends_with(b"/"),
                    _ => false,
                };
            }
        }
    }
    rest.is_empty()
}

// === request preparation ===

/// The request attributes in the form the matchers read, computed once per evaluation.
struct Prepared<'r> {
    peer: Option<&'r Identity>,
    /// The principal (`td/ns/x/sa/y`) in parts, so it is never formatted.
    principal: Option<[&'r [u8]; 5]>,
    source_ip: IpAddr,
    destination_ip: Option<IpAddr>,
    port: u16,
    sni: Option<&'r str>,
    host: Option<&'r str>,
    host_without_port: Option<&'r str>,
    method: Option<&'r str>,
    raw_path: &'r str,
    path: Cow<'r, str>,
    headers: &'r HeaderMap,
}

impl<'r> Prepared<'r> {
    fn new(req: &RequestAttributes<'r>) -> Self {
        let host = Some(req.host).filter(|h| !h.is_empty());
        Self {
            peer: req.peer,
            principal: req.peer.map(|p| {
                [
                    p.trust_domain().as_bytes(),
                    b"/ns/",
                    p.namespace().as_bytes(),
                    b"/sa/",
                    p.service_account().as_bytes(),
                ]
            }),
            source_ip: req.source_ip.to_canonical(),
            destination_ip: req.destination_ip.map(|ip| ip.to_canonical()),
            port: req.destination_port,
            sni: req.sni.filter(|s| !s.is_empty()),
            host,
            host_without_port: host.and_then(strip_port),
            method: Some(req.method).filter(|m| !m.is_empty()),
            raw_path: req.path,
            path: normalize_path(req.path),
            headers: req.headers,
        }
    }

    /// A pattern without a port also matches the authority without its port.
    fn host_matches(&self, m: &StrMatch) -> bool {
        m.matches_one(self.host, true)
            || self
                .host_without_port
                .is_some_and(|h| m.matches_one(Some(h), true))
    }

    /// The value of a header, its values joined with `,` if sent more than once.
    fn header(&self, key: &HeaderKey) -> Option<Cow<'r, [u8]>> {
        match key {
            HeaderKey::Authority => self.host.map(|h| Cow::Borrowed(h.as_bytes())),
            HeaderKey::Method => self.method.map(|m| Cow::Borrowed(m.as_bytes())),
            HeaderKey::Path => Some(self.raw_path)
                .filter(|p| !p.is_empty())
                .map(|p| Cow::Borrowed(p.as_bytes())),
            HeaderKey::Name(name) => {
                let mut values = self.headers.get_all(name).iter();
                let first = values.next()?;
                match values.next() {
                    None => Some(Cow::Borrowed(first.as_bytes())),
                    Some(second) => {
                        let mut joined = first.as_bytes().to_vec();
                        for v in std::iter::once(second).chain(values) {
                            joined.push(b',');
                            joined.extend_from_slice(v.as_bytes());
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
        }
    }
}

/// `host` of `host:port` or `[v6]:port`; `None` when there is no port.
fn strip_port(authority: &str) -> Option<&str> {
    let (host, port) = authority.rsplit_once(':')?;
    let is_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let bracketed = host.starts_with('[') && host.ends_with(']');
    (is_port && (bracketed || !host.contains(':'))).then_some(host)
}

/// The path authorization matches: the query and fragment removed, and the dot segments
/// (`.`, `..`, also written `%2e`) resolved as RFC 3986 does. Borrows unless there are dot
/// segments to remove.
///
/// ```
/// use mesh_core::policy::authz::normalize_path;
/// assert_eq!(normalize_path("/a/b?x=1"), "/a/b");
/// assert_eq!(normalize_path("/public/../admin"), "/admin");
/// assert_eq!(normalize_path("/a/%2e%2E/b/./"), "/b/");
/// ```
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.split('/').any(|s| dot_segment(s) > 0) {
        return Cow::Borrowed(path);
    }
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let n = segments.len();
    for (i, s) in segments.into_iter().enumerate() {
        let last = i + 1 == n;
        if absolute && i == 0 {
            continue;
        }
        match dot_segment(s) {
            1 => {}
            2 => {
                out.pop();
            }
            _ => {
                out.push(s);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    let joined = out.join("/");
    Cow::Owned(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// 1 for `.`, 2 for `..` (each dot possibly written `%2e`), else 0.
fn dot_segment(s: &str) -> usize {
    let mut rest = s.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b".") {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return 0;
        }
        dots += 1;
        if dots > 2 {
            return 0;
        }
    }
    dots
}

// === compilation ===

/// Compiles one policy, reporting what cannot be enforced as written.
fn compile_policy(id: PolicyId, ap: &AuthorizationPolicy, problems: &mut Vec<Problem>) -> Policy {
    let action = ap.action();
    let mut rules = Vec::with_capacity(ap.rules.len());
    for (i, rule) in ap.rules.iter().enumerate() {
        let mut cx = Cx {
            id: &id,
            action,
            problems,
            unsupported: false,
        };
        rules.push(compile_rule(&mut cx, &format!("spec.rules[{i}]"), rule));
    }
    if action == Action::Custom {
        let provider = ap.provider.as_ref().map_or("", |p| p.name.as_str());
        problems.push(Problem {
            policy: id.clone(),
            field: "spec.action".into(),
            message: format!(
                "CUSTOM (provider {provider:?}): the mesh has no external authorizer; requests this policy matches are denied"
            ),
        });
    }
    Policy { id, rules }
}

/// The compilation context of one rule.
struct Cx<'a> {
    id: &'a PolicyId,
    action: Action,
    problems: &'a mut Vec<Problem>,
    /// A field of the current rule cannot be evaluated.
    unsupported: bool,
}

impl Cx<'_> {
    /// Records that `field` cannot be evaluated, and how it is treated.
    fn unsupported(&mut self, field: String, why: &str) {
        self.unsupported = true;
        let treatment = if self.action == Action::Allow {
            "this ALLOW rule never matches"
        } else {
            "the field is ignored, so the rest of this rule decides"
        };
        self.problems.push(Problem {
            policy: self.id.clone(),
            field,
            message: format!("{why}; {treatment}"),
        });
    }

    /// Compiles the values of one field; if one does not compile, the field is unsupported
    /// and dropped.
    fn list<M>(
        &mut self,
        path: &str,
        key: &str,
        values: &[String],
        compile: impl Fn(&str) -> Result<M, String>,
    ) -> Box<[M]> {
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match compile(v) {
                Ok(m) => out.push(m),
                Err(e) => {
                    self.unsupported(format!("{path}.{key}[{i}]"), &format!("invalid value: {e}"));
                    return Box::default();
                }
            }
        }
        out.into_boxed_slice()
    }

    /// Compiles a `values`/`notValues` pair.
    fn field<M>(
        &mut self,
        path: &str,
        key: &str,
        values: &[String],
        not_key: &str,
        not_values: &[String],
        compile: impl Fn(&str) -> Result<M, String>,
    ) -> Field<M> {
        Field {
            any: self.list(path, key, values, &compile),
            none: self.list(path, not_key, not_values, &compile),
        }
    }
}

fn compile_rule(cx: &mut Cx<'_>, path: &str, rule: &Rule) -> CompiledRule {
    let mut from = Vec::with_capacity(rule.from.len());
    for (i, entry) in rule.from.iter().enumerate() {
        let path = format!("{path}.from[{i}].source");
        match &entry.source {
            Some(source) if source.is_empty() => cx.unsupported(path, "empty source"),
            Some(source) => from.push(compile_source(cx, &path, source)),
            None => cx.unsupported(path, "missing source"),
        }
    }
    let mut to = Vec::with_capacity(rule.to.len());
    for (i, entry) in rule.to.iter().enumerate() {
        let path = format!("{path}.to[{i}].operation");
        match &entry.operation {
            Some(op) if op.is_empty() => cx.unsupported(path, "empty operation"),
            Some(op) => to.push(compile_operation(cx, &path, op)),
            None => cx.unsupported(path, "missing operation"),
        }
    }
    let mut when = Vec::with_capacity(rule.when.len());
    for (i, condition) in rule.when.iter().enumerate() {
        if let Some(c) = compile_condition(cx, &format!("{path}.when[{i}]"), condition) {
            when.push(c);
        }
    }
    let allow = cx.action == Action::Allow;
    CompiledRule {
        never: allow && std::mem::take(&mut cx.unsupported),
        unknown_matches: !allow,
        from,
        to,
        when,
    }
}

const NO_JWT: &str = "the mesh does not validate JWTs, so requests have no JWT attributes";

fn compile_source(cx: &mut Cx<'_>, path: &str, s: &Source) -> CompiledSource {
    for (key, values) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        if !values.is_empty() {
            cx.unsupported(format!("{path}.{key}"), NO_JWT);
        }
    }
    let principal = |v: &str| {
        if v.starts_with("spiffe://") {
            Err(format!("{v:?}: principals omit the spiffe:// scheme"))
        } else {
            StrMatch::compile(v)
        }
    };
    CompiledSource {
        principals: cx.field(
            path,
            "principals",
            &s.principals,
            "notPrincipals",
            &s.not_principals,
            principal,
        ),
        namespaces: cx.field(
            path,
            "namespaces",
            &s.namespaces,
            "notNamespaces",
            &s.not_namespaces,
            StrMatch::compile,
        ),
        service_accounts: cx.field(
            path,
            "serviceAccounts",
            &s.service_accounts,
            "notServiceAccounts",
            &s.not_service_accounts,
            ServiceAccount::compile,
        ),
        ip_blocks: cx.field(
            path,
            "ipBlocks",
            &s.ip_blocks,
            "notIpBlocks",
            &s.not_ip_blocks,
            Cidr::compile,
        ),
        remote_ip_blocks: cx.field(
            path,
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            Cidr::compile,
        ),
    }
}

fn compile_operation(cx: &mut Cx<'_>, path: &str, op: &Operation) -> CompiledOperation {
    let port = |v: &str| parse_port(v).ok_or_else(|| format!("{v:?} is not a port"));
    CompiledOperation {
        hosts: cx.field(
            path,
            "hosts",
            &op.hosts,
            "notHosts",
            &op.not_hosts,
            StrMatch::compile,
        ),
        ports: cx.field(path, "ports", &op.ports, "notPorts", &op.not_ports, port),
        methods: cx.field(
            path,
            "methods",
            &op.methods,
            "notMethods",
            &op.not_methods,
            StrMatch::compile,
        ),
        paths: cx.field(
            path,
            "paths",
            &op.paths,
            "notPaths",
            &op.not_paths,
            PathMatch::compile,
        ),
    }
}

/// Compiles a `when` condition; `None` when it cannot be evaluated (and is reported).
fn compile_condition(cx: &mut Cx<'_>, path: &str, c: &Condition) -> Option<CompiledCondition> {
    let key = c.key.as_str();
    let (values, not_values) = (&c.values[..], &c.not_values[..]);
    if values.is_empty() && not_values.is_empty() {
        cx.unsupported(path.to_owned(), "neither values nor notValues is set");
        return None;
    }
    let strings = |cx: &mut Cx<'_>| {
        cx.field(
            path,
            "values",
            values,
            "notValues",
            not_values,
            StrMatch::compile,
        )
    };
    let ip = |cx: &mut Cx<'_>| {
        cx.field(
            path,
            "values",
            values,
            "notValues",
            not_values,
            Cidr::compile,
        )
    };
    let condition = match key {
        "source.ip" | "remote.ip" => CompiledCondition::SourceIp(ip(cx)),
        "destination.ip" => CompiledCondition::DestinationIp(ip(cx)),
        "destination.port" => CompiledCondition::DestinationPort(cx.field(
            path,
            "values",
            values,
            "notValues",
            not_values,
            |v| parse_port(v).ok_or_else(|| format!("{v:?} is not a port")),
        )),
        "source.principal" => CompiledCondition::Principal(strings(cx)),
        "source.namespace" => CompiledCondition::Namespace(strings(cx)),
        "connection.sni" => CompiledCondition::Sni(strings(cx)),
        "source.serviceAccount" => CompiledCondition::ServiceAccount(cx.field(
            path,
            "values",
            values,
            "notValues",
            not_values,
            ServiceAccount::compile,
        )),
        _ => {
            if let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
            {
                let header = match name.to_ascii_lowercase().as_str() {
                    ":authority" | "host" => Some(HeaderKey::Authority),
                    ":method" => Some(HeaderKey::Method),
                    ":path" => Some(HeaderKey::Path),
                    n => HeaderName::from_bytes(n.as_bytes())
                        .ok()
                        .map(HeaderKey::Name),
                };
                let Some(header) = header else {
                    cx.unsupported(
                        format!("{path}.key"),
                        &format!("{name:?} is not a header name the mesh can read"),
                    );
                    return None;
                };
                let header_match = |v: &str| {
                    StrMatch::compile(v).map(|m| match m {
                        StrMatch::Present => StrMatch::Exists,
                        m => m,
                    })
                };
                CompiledCondition::Header(
                    header,
                    cx.field(
                        path,
                        "values",
                        values,
                        "notValues",
                        not_values,
                        header_match,
                    ),
                )
            } else {
                let why = if key.starts_with("request.auth.") {
                    NO_JWT.to_owned()
                } else if key.starts_with("experimental.")
                    || key.starts_with("request.experimental.")
                {
                    format!("{key:?} is an Envoy-specific attribute the mesh does not have")
                } else {
                    format!("{key:?} is not an attribute the mesh can evaluate")
                };
                cx.unsupported(format!("{path}.key"), &why);
                return None;
            }
        }
    };
    Some(condition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &str) -> StrMatch {
        StrMatch::compile(v).unwrap()
    }

    #[test]
    fn string_matching_exact_prefix_suffix_presence() {
        assert!(m("abc").matches_one(Some("abc"), false));
        assert!(!m("abc").matches_one(Some("abcd"), false));
        assert!(m("abc*").matches_one(Some("abc"), false));
        assert!(m("abc*").matches_one(Some("abcd"), false));
        assert!(!m("abc*").matches_one(Some("xabc"), false));
        assert!(m("*abc").matches_one(Some("xabc"), false));
        assert!(!m("*abc").matches_one(Some("abcx"), false));
        assert!(m("*").matches_one(Some("x"), false));
        assert!(!m("*").matches_one(Some(""), false));
        assert!(!m("*").matches_one(None::<&str>, false));
        assert!(m("ABC").matches_one(Some("abc"), true));
        assert!(!m("ABC").matches_one(Some("abc"), false));
        for bad in ["", "a*b", "*a*", "**"] {
            assert!(StrMatch::compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn principal_parts_match_like_the_joined_string() {
        let parts: [&[u8]; 5] = [b"cluster.local", b"/ns/", b"default", b"/sa/", b"web"];
        let p = Some(&parts[..]);
        assert!(m("cluster.local/ns/default/sa/web").matches(p, false));
        assert!(m("cluster.local/ns/default/*").matches(p, false));
        assert!(m("*/sa/web").matches(p, false));
        assert!(m("*").matches(p, false));
        assert!(!m("cluster.local/ns/default/sa/we").matches(p, false));
        assert!(!m("*/sa/webx").matches(p, false));
        assert!(!m("other/*").matches(p, false));
    }

    #[test]
    fn cidrs_v4_v6_and_mapped() {
        let c = |v: &str| Cidr::compile(v).unwrap();
        let ip = |v: &str| v.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.1.1")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!c("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(c("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!c("0.0.0.0/0").contains(ip("::1")));
        assert!(
            c("10.1.2.77/24").contains(ip("10.1.2.1")),
            "host bits cleared"
        );
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::5")));
        assert!(c("::/0").contains(ip("::1")));
        assert!(c("::1").contains(ip("::1")));
        assert!(c("192.168.0.0/16").contains(ip("::ffff:192.168.3.4")));
        assert!(Cidr::compile("10.0.0.0/33").is_err());
    }

    #[test]
    fn path_templates_as_envoy() {
        let t = |p: &str| PathMatch::compile(p).unwrap();
        let yes = |p: &str, path: &str| assert!(t(p).matches(path.as_bytes()), "{p} ~ {path}");
        let no = |p: &str, path: &str| assert!(!t(p).matches(path.as_bytes()), "{p} !~ {path}");
        yes("/foo/{*}", "/foo/bar");
        no("/foo/{*}", "/foo/bar/baz");
        no("/foo/{*}", "/foo/");
        no("/foo/{*}", "/foo");
        yes("/foo/{**}", "/foo/");
        yes("/foo/{**}", "/foo/bar/baz");
        no("/foo/{**}", "/foo");
        no("/foo/{**}", "/foobar");
        yes("/foo/{**}/", "/foo/bar/");
        yes("/foo/{**}/", "/foo//");
        no("/foo/{**}/", "/foo/bar");
        yes("/foo/{*}/bar/{**}", "/foo/buzz/bar/");
        yes("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz");
        no("/foo/{*}/bar/{**}", "/foo/buzz/bar");
        yes("/{*}/reviews", "/v1/reviews");
        no("/{*}/reviews", "/v1/reviews/x");
        yes("/{**}", "/");
        yes("/{**}", "/a/b/c");
        no("/{*}", "/a=b");
        no("/{*}", "/a b");
        for bad in [
            "foo/{*}",
            "/{**}/foo",
            "/foo{*}",
            "//{*}",
            "/{*}//x",
            "/x/{bar}",
        ] {
            assert!(PathMatch::compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalizes_dot_segments() {
        for (input, want) in [
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b?x=/../", "/b"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
            ("/x#../y", "/x"),
            ("", ""),
        ] {
            assert_eq!(normalize_path(input), want, "{input}");
        }
        assert!(matches!(normalize_path("/plain/path"), Cow::Borrowed(_)));
    }

    #[test]
    fn strips_ports_from_authorities() {
        assert_eq!(strip_port("a.com:80"), Some("a.com"));
        assert_eq!(strip_port("a.com"), None);
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("[::1]"), None);
        assert_eq!(strip_port("::1"), None);
        assert_eq!(strip_port("a.com:"), None);
    }

    #[test]
    fn policy_ids() {
        let id = PolicyId::new("default", "deny-post");
        assert_eq!(id.as_str(), "default/deny-post");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.name(), "deny-post");
        assert_eq!(id.to_string(), "default/deny-post");
    }

    /// Policies that validation refuses still compile fail-closed if they reach the engine.
    #[test]
    fn invalid_policies_fail_closed() {
        use crate::config::{
            ObjectMeta,
            security::authorization_policy::{RuleFrom, RuleTo},
        };
        let resource = |name: &str, action: Action, rule: Rule| {
            let ap = AuthorizationPolicy {
                action: Some(action),
                rules: vec![rule],
                ..AuthorizationPolicy::default()
            };
            Resource::new(
                ObjectMeta {
                    name: name.into(),
                    namespace: Some("default".into()),
                    ..ObjectMeta::default()
                },
                Spec::AuthorizationPolicy(Box::new(ap)),
            )
        };
        let bad_rules = [
            Rule {
                from: vec![RuleFrom {
                    source: Some(Source {
                        ip_blocks: vec!["10.0.0.0/33".into()],
                        ..Source::default()
                    }),
                }],
                ..Rule::default()
            },
            Rule {
                from: vec![RuleFrom {
                    source: Some(Source::default()),
                }],
                ..Rule::default()
            },
            Rule {
                to: vec![RuleTo { operation: None }],
                ..Rule::default()
            },
            Rule {
                when: vec![Condition {
                    key: "source.ip".into(),
                    ..Condition::default()
                }],
                ..Rule::default()
            },
            Rule {
                to: vec![RuleTo {
                    operation: Some(Operation {
                        paths: vec!["/a*b".into(), "/{**}/x".into()],
                        ..Operation::default()
                    }),
                }],
                ..Rule::default()
            },
        ];
        let headers = HeaderMap::new();
        let req = RequestAttributes::new(IpAddr::from([10, 0, 0, 1]), 80, &headers);
        for (i, rule) in bad_rules.into_iter().enumerate() {
            let allow = [resource("allow", Action::Allow, rule.clone())];
            let a = Authorizer::for_workload(&allow, "default", &BTreeMap::new(), "istio-system");
            assert_eq!(
                a.evaluate(&req).reason(),
                Reason::NoAllowMatched,
                "rule {i}"
            );
            assert_eq!(a.problems().len(), 1, "rule {i}: {:?}", a.problems());
            let deny = [resource("deny", Action::Deny, rule)];
            let a = Authorizer::for_workload(&deny, "default", &BTreeMap::new(), "istio-system");
            assert_eq!(a.evaluate(&req).reason(), Reason::DenyMatched, "rule {i}");
        }
    }

    #[test]
    fn no_policies_allow_everything() {
        let headers = HeaderMap::new();
        let req = RequestAttributes::new(IpAddr::from([127, 0, 0, 1]), 80, &headers);
        let authz = Authorizer::default();
        assert!(authz.is_empty());
        let d = authz.evaluate(&req);
        assert!(d.is_allowed());
        assert_eq!(d.reason(), Reason::NoAllowPolicy);
        assert_eq!(d.to_string(), "allowed: no ALLOW policy applies");
    }
}
