//! Findings and the schema checker.
//!
//! Validation has two levels, as Istio has: **schema** checks on one resource at a time
//! (types, ranges, required fields, one-of rules, regexes, unknown fields; what the Kubernetes
//! API server and Istio's webhook reject) and **analysis** across resources (what
//! `istioctl analyze` reports: a subset that no DestinationRule defines, a rule that can never
//! match, an mTLS conflict). Both produce [`Finding`]s with a stable [`Code`], a
//! [`Severity`], the resource, the field path and, when the input came from a file, the file and
//! line.

pub mod analysis;
mod checker;
pub mod codes;

use std::fmt;

pub use self::{
    checker::{Checker, Issue, Validate},
    codes::Code,
};
use crate::{
    config::{Resource, ResourceKey},
    source::{FieldPath, Origin},
};

/// How bad a finding is. Only errors block `apply` and fail `analyze`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Severity {
    /// The configuration is wrong and is refused.
    Error,
    /// The configuration is accepted but probably not what was meant.
    Warning,
    /// Worth knowing.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "Error",
            Self::Warning => "Warning",
            Self::Info => "Info",
        })
    }
}

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Stable code, e.g. `IST0101`.
    pub code: Code,
    /// Error, warning or info.
    pub severity: Severity,
    /// The resource the finding is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceKey>,
    /// The field the finding is about (`spec.http[0].route[0].weight`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_path")]
    pub field: Option<FieldPath>,
    /// What is wrong, in words.
    pub message: String,
    /// The file, when the resource came from one.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_file")]
    pub file: Option<Origin>,
    /// The line of the field (or of the resource) in that file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

fn ser_path<S: serde::Serializer>(p: &Option<FieldPath>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(p.as_str()),
        None => s.serialize_none(),
    }
}

fn ser_file<S: serde::Serializer>(o: &Option<Origin>, s: S) -> Result<S::Ok, S::Error> {
    match o.as_ref().and_then(|o| o.file.as_ref()) {
        Some(f) => s.collect_str(&f.display()),
        None => s.serialize_none(),
    }
}

impl Finding {
    /// A finding with no resource, field or location.
    pub fn new(code: Code, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            code,
            severity,
            resource: None,
            field: None,
            message: message.into(),
            file: None,
            line: None,
        }
    }

    /// A finding about `field` of `resource`, located through the resource's line index.
    pub fn about(
        resource: &Resource,
        field: Option<FieldPath>,
        code: Code,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        let line = resource.source.as_ref().map(|src| {
            field
                .as_ref()
                .and_then(|f| src.lines.line_of(f.as_str()))
                .unwrap_or(src.origin.line)
        });
        Self {
            code,
            severity,
            resource: Some(resource.key()),
            field,
            message: message.into(),
            file: resource.source.as_ref().map(|s| s.origin.clone()),
            line,
        }
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    /// Prints the finding the way `istioctl analyze` does, with the field and file added:
    /// `Error [IST0101] (VirtualService default/reviews reviews.yaml:12) spec.http[0]…: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.severity, self.code.id)?;
        let place = match (&self.file, self.line) {
            (
                Some(Origin {
                    file: Some(file), ..
                }),
                Some(line),
            ) => Some(format!("{}:{line}", file.display())),
            (Some(o), None) => Some(o.to_string()),
            _ => None,
        };
        match (&self.resource, place) {
            (Some(r), Some(p)) => write!(f, " ({r} {p})")?,
            (Some(r), None) => write!(f, " ({r})")?,
            (None, Some(p)) => write!(f, " ({p})")?,
            (None, None) => {}
        }
        match &self.field {
            Some(field) if !field.is_root() => write!(f, " {field}: {}", self.message),
            _ => write!(f, " {}", self.message),
        }
    }
}

/// The findings of one check, with helpers to ask whether it passed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    /// True if any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Finding::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.0.iter().filter(|f| f.is_error())
    }

    /// Sorts by file, line, severity and code, so output is stable.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            let fa = a.file.as_ref().and_then(|o| o.file.as_deref());
            let fb = b.file.as_ref().and_then(|o| o.file.as_deref());
            (fa, a.line, a.severity, a.code.id, &a.message)
                .cmp(&(fb, b.line, b.severity, b.code.id, &b.message))
        });
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.0 {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Schema-checks one resource: everything Istio's webhook would reject or warn about.
pub fn check_resource(resource: &Resource) -> Vec<Finding> {
    let mut issues = Vec::new();
    {
        let mut cx = Checker::new(&mut issues);
        resource.metadata.validate(&mut cx.at("metadata"));
        let mut spec = cx.at("spec");
        match &resource.spec {
            crate::config::Spec::VirtualService(s) => s.validate(&mut spec),
            crate::config::Spec::DestinationRule(s) => s.validate(&mut spec),
            crate::config::Spec::Gateway(s) => s.validate(&mut spec),
            crate::config::Spec::ServiceEntry(s) => s.validate(&mut spec),
            crate::config::Spec::WorkloadEntry(s) => s.validate(&mut spec),
            crate::config::Spec::PeerAuthentication(s) => s.validate(&mut spec),
            crate::config::Spec::AuthorizationPolicy(s) => s.validate(&mut spec),
            crate::config::Spec::RequestAuthentication(s) => s.validate(&mut spec),
        }
    }
    issues
        .into_iter()
        .map(|i| Finding::about(resource, Some(i.field), i.code, i.severity, i.message))
        .collect()
}

/// Schema-checks every resource, then analyzes them together.
///
/// This is what `meshctl analyze` prints and what `apply` and the store's watcher refuse on.
pub fn validate_all(resources: &[Resource]) -> Findings {
    let mut out: Vec<Finding> = resources.iter().flat_map(check_resource).collect();
    out.extend(analysis::analyze(resources));
    let mut findings = Findings(out);
    findings.sort();
    findings
}
