//! Istio's resources, read unchanged from YAML or JSON.
//!
//! The types here are Istio's API (`networking.istio.io` and `security.istio.io`) as serde
//! types, field for field, in the lowerCamelCase that Istio's YAML uses. They are the *wire*
//! form: lenient where Istio is (most fields optional), strict where the Kubernetes API server
//! is (an unknown field is an error naming its path). Range and one-of checks live in the
//! [`Validate`] impls beside each type; the request path reads the
//! compiled [`Snapshot`](crate::snapshot::Snapshot), never these types.
//!
//! # Examples
//! ```
//! use mesh_core::config::{load_str, Spec};
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: { host: reviews, subset: v1 }
//! "#;
//! let loaded = load_str(yaml, None);
//! assert!(loaded.findings.is_empty());
//! let vs = &loaded.resources[0];
//! assert_eq!(vs.metadata.namespace(), "default");
//! assert!(matches!(vs.spec, Spec::VirtualService(_)));
//! # Ok::<_, mesh_core::BoxError>(())
//! ```

pub mod common;
pub mod networking;
pub mod security;

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use self::{
    networking::{DestinationRule, Gateway, ServiceEntry, VirtualService, WorkloadEntry},
    security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication},
};
use crate::{
    source::{self, Document, FieldPath, LineIndex, Origin},
    validate::{Checker, Finding, Severity, Validate, codes},
};

/// The namespace a resource without `metadata.namespace` belongs to.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of resource the mesh reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    /// The kind as Istio spells it (`VirtualService`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    /// The API group (`networking.istio.io` or `security.istio.io`).
    pub const fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            _ => "networking.istio.io",
        }
    }

    /// The API versions Istio serves for this kind.
    pub const fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                &["v1", "v1beta1"]
            }
            _ => &["v1", "v1beta1", "v1alpha3"],
        }
    }

    /// The `apiVersion` written when the mesh serializes a resource (`networking.istio.io/v1`).
    pub fn default_api_version(self) -> String {
        format!("{}/v1", self.group())
    }

    /// The lowercase plural, as `kubectl get` and the store's directory layout use it.
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::Gateway => "gateways",
            Kind::ServiceEntry => "serviceentries",
            Kind::WorkloadEntry => "workloadentries",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::RequestAuthentication => "requestauthentications",
        }
    }

    /// The short names `kubectl` accepts (`vs`, `dr`, `gw`, `se`, `we`, `pa`, `ap`, `ra`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Kind::VirtualService => "vs",
            Kind::DestinationRule => "dr",
            Kind::Gateway => "gw",
            Kind::ServiceEntry => "se",
            Kind::WorkloadEntry => "we",
            Kind::PeerAuthentication => "pa",
            Kind::AuthorizationPolicy => "ap",
            Kind::RequestAuthentication => "ra",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text names no kind the mesh reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?} (expected one of: VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry, PeerAuthentication, AuthorizationPolicy, RequestAuthentication)"
)]
pub struct UnknownKind(String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts the kind (`VirtualService`), any case, its plural (`virtualservices`), singular
    /// lowercase, or short name (`vs`), as `kubectl get` does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let lower = lower.split('.').next().unwrap_or_default();
        Kind::ALL
            .into_iter()
            .find(|k| {
                k.as_str().eq_ignore_ascii_case(lower)
                    || k.plural() == lower
                    || k.short_name() == lower
            })
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// Names one resource: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceKey {
    /// The kind.
    #[serde(serialize_with = "ser_kind")]
    pub kind: Kind,
    /// The namespace (`default` when the resource names none).
    pub namespace: String,
    /// The name.
    pub name: String,
}

fn ser_kind<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

impl ResourceKey {
    /// A key.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Kubernetes object metadata: the fields the mesh reads, plus the ones Kubernetes adds that
/// it tolerates so `kubectl get -o yaml` output loads unchanged.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The name (required; a DNS-1123 subdomain).
    #[serde(default)]
    pub name: String,
    /// The namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (`istio.io/dry-run` is read by authorization).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// When the resource was created (RFC 3339); orders PeerAuthentication precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// The store's version of the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// The generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Tolerated, not used: `generateName`.
    #[serde(default, skip_serializing)]
    pub generate_name: Option<String>,
    /// Tolerated, not used: `managedFields`.
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<Value>,
    /// Tolerated, not used: `ownerReferences`.
    #[serde(default, skip_serializing)]
    pub owner_references: Option<Value>,
    /// Tolerated, not used: `finalizers`.
    #[serde(default, skip_serializing)]
    pub finalizers: Option<Value>,
    /// Tolerated, not used: `selfLink`.
    #[serde(default, skip_serializing)]
    pub self_link: Option<String>,
    /// Tolerated, not used: `deletionTimestamp`.
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: Option<String>,
    /// Tolerated, not used: `deletionGracePeriodSeconds`.
    #[serde(default, skip_serializing)]
    pub deletion_grace_period_seconds: Option<i64>,
}

impl ObjectMeta {
    /// The namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// True for a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, at most 253
/// characters, starting and ending alphanumeric), what Kubernetes requires of names.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// True for a DNS-1123 label (a namespace name).
pub fn is_dns1123_label(s: &str) -> bool {
    is_dns1123_subdomain(s) && !s.contains('.')
}

impl Validate for ObjectMeta {
    fn validate(&self, cx: &mut Checker<'_>) {
        if self.name.is_empty() {
            cx.at("name").error("required field is missing or empty");
        } else if !is_dns1123_subdomain(&self.name) {
            cx.at("name").error(format!(
                "{:?} is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
                self.name
            ));
        }
        if let Some(ns) = &self.namespace
            && !is_dns1123_label(ns)
        {
            cx.at("namespace")
                .error(format!("{ns:?} is not a valid namespace name"));
        }
    }
}

/// The spec of a resource, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// A VirtualService.
    VirtualService(Box<VirtualService>),
    /// A DestinationRule.
    DestinationRule(Box<DestinationRule>),
    /// A Gateway.
    Gateway(Box<Gateway>),
    /// A ServiceEntry.
    ServiceEntry(Box<ServiceEntry>),
    /// A WorkloadEntry.
    WorkloadEntry(Box<WorkloadEntry>),
    /// A PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// A RequestAuthentication.
    RequestAuthentication(Box<RequestAuthentication>),
}

impl Spec {
    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }

    fn to_value(&self) -> Value {
        let r = match self {
            Spec::VirtualService(s) => serde_json::to_value(s),
            Spec::DestinationRule(s) => serde_json::to_value(s),
            Spec::Gateway(s) => serde_json::to_value(s),
            Spec::ServiceEntry(s) => serde_json::to_value(s),
            Spec::WorkloadEntry(s) => serde_json::to_value(s),
            Spec::PeerAuthentication(s) => serde_json::to_value(s),
            Spec::AuthorizationPolicy(s) => serde_json::to_value(s),
            Spec::RequestAuthentication(s) => serde_json::to_value(s),
        };
        // Serializing plain data into a JSON value cannot fail (no non-string map keys).
        r.unwrap_or(Value::Null)
    }
}

/// Where a loaded resource came from: its origin and the line of each of its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// File and first line.
    pub origin: Origin,
    /// Field path → line, with paths relative to the document root (`spec.http[0]`).
    pub lines: Arc<LineIndex>,
}

/// One Istio resource: type metadata, object metadata and spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The `apiVersion` as written (`networking.istio.io/v1beta1`).
    pub api_version: String,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec, by kind.
    pub spec: Spec,
    /// Where it was read from, if it was read from text.
    pub source: Option<SourceInfo>,
}

impl Resource {
    /// A resource made in code, with the default `apiVersion` for its kind.
    pub fn new(metadata: ObjectMeta, spec: Spec) -> Self {
        Self {
            api_version: spec.kind().default_api_version(),
            metadata,
            spec,
            source: None,
        }
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The key: kind, namespace, name.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(
            self.kind(),
            self.metadata.namespace(),
            self.metadata.name.clone(),
        )
    }

    /// The namespace (`default` when unset).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    /// The resource as a Kubernetes-shaped JSON value (`apiVersion`, `kind`, `metadata`,
    /// `spec`), what `get -o json` prints and the store writes.
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        map.insert("kind".into(), Value::String(self.kind().as_str().into()));
        let mut meta = serde_json::to_value(&self.metadata).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut meta {
            m.insert("namespace".into(), Value::String(self.namespace().into()));
        }
        map.insert("metadata".into(), meta);
        map.insert("spec".into(), self.spec.to_value());
        Value::Object(map)
    }

    /// The resource as YAML text (one document, no `---`).
    pub fn to_yaml(&self) -> String {
        crate::yaml::to_yaml(&self.to_value())
    }
}

/// Resources read from text, and what was wrong with the parts that could not be read.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The resources that parsed.
    pub resources: Vec<Resource>,
    /// Syntax and schema errors for documents that did not parse, and warnings for documents
    /// of kinds the mesh does not read.
    pub findings: Vec<Finding>,
}

impl Loaded {
    /// Reads one document: its resource, or the finding saying why it is not one.
    fn push_document(&mut self, doc: &Document) {
        match from_document(doc) {
            Ok(Some(r)) => self.resources.push(r),
            Ok(None) => {}
            Err(f) => self.findings.push(*f),
        }
        if let Some(f) = unsupported_kind(doc) {
            self.findings.push(f);
        }
    }

    /// Adds another load's resources and findings to this one.
    pub fn extend(&mut self, other: Loaded) {
        self.resources.extend(other.resources);
        self.findings.extend(other.findings);
    }
}

/// Reads every resource in `text` (YAML with `---` separators, or JSON).
///
/// Never fails and never panics: a syntax error or a document that does not match the schema
/// becomes a [`Finding`] naming the file, line and field; the documents that parsed are
/// returned.
pub fn load_str(text: &str, file: Option<&Path>) -> Loaded {
    let mut loaded = Loaded::default();
    match source::parse_documents(text, file) {
        Ok(docs) => {
            for doc in docs {
                loaded.push_document(&doc);
            }
        }
        Err(e) => {
            let mut f = Finding::new(codes::SYNTAX_ERROR, Severity::Error, e.message.clone());
            f.file = Some(Origin {
                file: e.location.file.clone(),
                line: e.location.line,
            });
            f.line = Some(e.location.line);
            f.message = format!("column {}: {}", e.location.column, e.message);
            loaded.findings.push(f);
        }
    }
    loaded
}

/// Reads one resource already parsed as JSON data (a stored value), as [`load_str`] reads a
/// document: the same schema checks and findings, naming `file`; no line numbers.
pub(crate) fn load_json_value(value: serde_json::Value, file: Option<&Path>) -> Loaded {
    let doc = crate::source::Document {
        value,
        origin: Origin {
            file: file.map(Arc::from),
            line: 1,
        },
        lines: Arc::default(),
    };
    let mut loaded = Loaded::default();
    loaded.push_document(&doc);
    loaded
}

/// Reads a file, or every `.yaml`, `.yml` and `.json` file below a directory (sorted by
/// path, hidden files and directories skipped).
pub fn load_path(path: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    if path.is_dir() {
        collect_files(path, &mut files);
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loaded.extend(load_str(&text, Some(&file))),
            Err(e) => {
                let mut f = Finding::new(
                    codes::SYNTAX_ERROR,
                    Severity::Error,
                    format!("cannot read {}: {e}", file.display()),
                );
                f.file = Some(Origin {
                    file: Some(Arc::from(file.as_path())),
                    line: 1,
                });
                loaded.findings.push(f);
            }
        }
    }
    loaded
}

/// True for a file name the loaders read (`.yaml`, `.yml`, `.json`, not hidden).
pub fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out);
        } else if is_config_file(&path) {
            out.push(path);
        }
    }
}

fn doc_str<'a>(doc: &'a Document, key: &str) -> Option<&'a str> {
    doc.value.get(key).and_then(Value::as_str)
}

/// A warning for a document of a kind the mesh does not read, or `None`.
fn unsupported_kind(doc: &Document) -> Option<Finding> {
    let api = doc_str(doc, "apiVersion")?;
    let kind = doc_str(doc, "kind")?;
    let group = api.split_once('/').map_or("", |(g, _)| g);
    if Kind::ALL
        .iter()
        .any(|k| k.as_str() == kind && k.group() == group)
    {
        return None;
    }
    let name = doc
        .value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let why = if group.ends_with("istio.io") {
        "an Istio kind the mesh does not implement"
    } else {
        "not an Istio resource"
    };
    let mut f = Finding::new(
        codes::UNSUPPORTED_KIND,
        Severity::Warning,
        format!("{kind} {name:?} ({api}) is {why}; it is ignored"),
    );
    f.file = Some(doc.origin.clone());
    f.line = Some(doc.origin.line);
    Some(f)
}

/// Turns one parsed document into a resource: `Ok(None)` for a document of a kind the mesh
/// does not read (see [`unsupported_kind`]), an error finding when the document does not match
/// Istio's schema.
fn from_document(doc: &Document) -> Result<Option<Resource>, Box<Finding>> {
    let fail = |field: FieldPath, message: String| {
        let line = doc.lines.line_of(field.as_str()).unwrap_or(doc.origin.line);
        let mut f = Finding::new(codes::SCHEMA_VALIDATION_ERROR, Severity::Error, message);
        f.field = Some(field);
        f.file = Some(doc.origin.clone());
        f.line = Some(line);
        Box::new(f)
    };
    let Value::Object(obj) = &doc.value else {
        return Err(fail(
            FieldPath::root(),
            "a resource must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let api_version = match obj.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(fail(
                "apiVersion".into(),
                "required field is missing or not a string".into(),
            ));
        }
    };
    let kind_str = match obj.get("kind") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(fail(
                "kind".into(),
                "required field is missing or not a string".into(),
            ));
        }
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let Some(kind) = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_str && k.group() == group)
    else {
        return Ok(None);
    };
    if !kind.versions().contains(&version) {
        return Err(fail(
            "apiVersion".into(),
            format!(
                "{kind} is not served at {api_version:?}; use one of: {}",
                kind.versions()
                    .iter()
                    .map(|v| format!("{}/{v}", kind.group()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let with_fail = |e: Box<(FieldPath, String)>| fail(e.0, e.1);
    let metadata: ObjectMeta = match obj.get("metadata") {
        Some(v) => typed(v, FieldPath::root().key("metadata")).map_err(with_fail)?,
        None => {
            return Err(fail(
                "metadata".into(),
                "required field is missing (metadata.name is required)".into(),
            ));
        }
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            return Err(fail(
                FieldPath::root().key(key),
                format!("unknown field {key:?}"),
            ));
        }
    }
    let empty = Value::Object(serde_json::Map::new());
    let spec_value = match obj.get("spec") {
        Some(Value::Null) | None => &empty,
        Some(v) => v,
    };
    let at = FieldPath::root().key("spec");
    let spec = match kind {
        Kind::VirtualService => Spec::VirtualService(typed(spec_value, at).map_err(with_fail)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec_value, at).map_err(with_fail)?),
        Kind::Gateway => Spec::Gateway(typed(spec_value, at).map_err(with_fail)?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec_value, at).map_err(with_fail)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec_value, at).map_err(with_fail)?),
        Kind::PeerAuthentication => {
            Spec::PeerAuthentication(typed(spec_value, at).map_err(with_fail)?)
        }
        Kind::AuthorizationPolicy => {
            Spec::AuthorizationPolicy(typed(spec_value, at).map_err(with_fail)?)
        }
        Kind::RequestAuthentication => {
            Spec::RequestAuthentication(typed(spec_value, at).map_err(with_fail)?)
        }
    };
    Ok(Some(Resource {
        api_version,
        metadata,
        spec,
        source: Some(SourceInfo {
            origin: doc.origin.clone(),
            lines: doc.lines.clone(),
        }),
    }))
}

/// Deserializes `value` into `T`, turning a serde error into the path of the offending field
/// (relative to the document root) and a message in the API server's words.
fn typed<T: DeserializeOwned>(
    value: &Value,
    base: FieldPath,
) -> Result<T, Box<(FieldPath, String)>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = base;
        for seg in e.path().iter() {
            path = match seg {
                serde_path_to_error::Segment::Seq { index } => path.index(*index),
                serde_path_to_error::Segment::Map { key } => path.key(key),
                serde_path_to_error::Segment::Enum { variant } => path.key(variant),
                serde_path_to_error::Segment::Unknown => path,
            };
        }
        let inner = e.into_inner().to_string();
        let message = match inner.strip_prefix("unknown field `") {
            Some(rest) => {
                let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
                // serde reports the struct's path; the unknown field is the last segment
                // only when serde_path_to_error already pushed it.
                if !path.as_str().ends_with(field) {
                    path = path.key(field);
                }
                let expected = expected.trim_start_matches(", ");
                if expected.is_empty() {
                    "unknown field".to_owned()
                } else {
                    format!("unknown field ({expected})")
                }
            }
            None => inner,
        };
        Box::new((path, message))
    })
}

/// Compiles `pattern` so that it must match the whole string, as RE2 `FullMatch` (Istio's
/// regex semantics) does.
pub fn compile_full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}
