//! Types shared by several Istio resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{Checker, Validate};

/// Istio's `StringMatch`: exactly one of `exact`, `prefix` or `regex` (RE2 syntax, full
/// match). An empty `StringMatch` (`{}`) is only meaningful as a header presence check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    /// Exact string match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix-based match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2 regular expression; must match the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    /// True when no alternative is set (`{}`).
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }

    /// A `StringMatch` on an exact value.
    pub fn exact(s: impl Into<String>) -> Self {
        Self {
            exact: Some(s.into()),
            ..Self::default()
        }
    }

    /// A `StringMatch` on a prefix.
    pub fn prefix(s: impl Into<String>) -> Self {
        Self {
            prefix: Some(s.into()),
            ..Self::default()
        }
    }

    /// A `StringMatch` on a regex.
    pub fn regex(s: impl Into<String>) -> Self {
        Self {
            regex: Some(s.into()),
            ..Self::default()
        }
    }
}

impl Validate for StringMatch {
    /// At most one alternative; a regex must compile. (Whether `{}` is allowed depends on
    /// where the match is; callers that forbid it check [`StringMatch::is_empty`].)
    fn validate(&self, cx: &mut Checker<'_>) {
        let set = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if set > 1 {
            cx.error("only one of exact, prefix or regex may be set");
        }
        if let Some(re) = &self.regex {
            cx.regex("regex", re);
        }
    }
}

/// Istio's `Percent`: a percentage as a double, 0–100.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage, 0–100.
    #[serde(default)]
    pub value: f64,
}

impl Validate for Percent {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.percent("value", self.value);
    }
}

/// Istio's `WorkloadSelector`: workloads whose labels include all of these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True if every selector label is in `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl Validate for WorkloadSelector {
    fn validate(&self, cx: &mut Checker<'_>) {
        let mut labels = cx.at("matchLabels");
        for (k, v) in &self.match_labels {
            if k.is_empty() {
                labels.error("label keys must not be empty");
            }
            if v.contains('*') {
                labels
                    .at(k)
                    .error("wildcards are not allowed in label values");
            }
        }
    }
}

/// Istio's `PortSelector`: a port by number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number (1–65535).
    #[serde(default)]
    pub number: u32,
}

impl Validate for PortSelector {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_port(cx, "number", self.number);
    }
}

/// Checks a port number is within 1–65535.
pub fn check_port(cx: &mut Checker<'_>, key: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        cx.at(key).error(format!(
            "port number must be between 1 and 65535, got {port}"
        ));
    }
}

/// Istio's `TargetReference` / `PolicyTargetReference` (`targetRef`, `targetRefs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// API group of the target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target.
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// Namespace of the target (deprecated in Istio).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl Validate for TargetRef {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.required_str("kind", &self.kind);
        cx.required_str("name", &self.name);
    }
}
