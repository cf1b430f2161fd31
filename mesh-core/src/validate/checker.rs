//! The schema checker: a cursor over a resource that knows the path of the field it is at.

use regex::Regex;

use super::{Code, Severity, codes};
use crate::source::FieldPath;

/// A schema problem at a field, before it is tied to a resource and a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The code.
    pub code: Code,
    /// How bad.
    pub severity: Severity,
    /// The field.
    pub field: FieldPath,
    /// What is wrong.
    pub message: String,
}

/// Checks one part of a resource: implemented by every Istio config type.
pub trait Validate {
    /// Reports every problem with `self` to `cx`, which is positioned at `self`'s field.
    fn validate(&self, cx: &mut Checker<'_>);
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(v) = self {
            v.validate(cx);
        }
    }
}

/// A cursor that records issues at the field it is positioned at.
///
/// # Examples
/// ```
/// use mesh_core::validate::Checker;
/// let mut issues = Vec::new();
/// let mut cx = Checker::new(&mut issues);
/// cx.at("http").index(0).at("timeout").error("must be at least 1ms");
/// assert_eq!(issues[0].field.as_str(), "http[0].timeout");
/// ```
#[derive(Debug)]
pub struct Checker<'a> {
    out: &'a mut Vec<Issue>,
    path: FieldPath,
}

// === impl Checker ===

impl<'a> Checker<'a> {
    /// A checker at the root, writing into `out`.
    pub fn new(out: &'a mut Vec<Issue>) -> Self {
        Self {
            out,
            path: FieldPath::root(),
        }
    }

    /// The path this checker is at.
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// A checker at the field `key` below this one.
    pub fn at(&mut self, key: &str) -> Checker<'_> {
        Checker {
            path: self.path.key(key),
            out: self.out,
        }
    }

    /// A checker at element `i` of the sequence this one is at.
    pub fn index(&mut self, i: usize) -> Checker<'_> {
        Checker {
            path: self.path.index(i),
            out: self.out,
        }
    }

    /// Validates each element of `items`, found at the field `key`.
    pub fn each<T: Validate>(&mut self, key: &str, items: &[T]) {
        let mut cx = self.at(key);
        for (i, item) in items.iter().enumerate() {
            item.validate(&mut cx.index(i));
        }
    }

    /// Validates `item`, found at the field `key`.
    pub fn field<T: Validate>(&mut self, key: &str, item: &T) {
        item.validate(&mut self.at(key));
    }

    /// Records an issue with an explicit code and severity.
    pub fn report(&mut self, code: Code, severity: Severity, message: impl Into<String>) {
        self.out.push(Issue {
            code,
            severity,
            field: self.path.clone(),
            message: message.into(),
        });
    }

    /// Records a schema error (IST0106) at this field.
    pub fn error(&mut self, message: impl Into<String>) {
        self.report(codes::SCHEMA_VALIDATION_ERROR, Severity::Error, message);
    }

    /// Records a schema warning (IST0133) at this field.
    pub fn warning(&mut self, message: impl Into<String>) {
        self.report(codes::SCHEMA_WARNING, Severity::Warning, message);
    }

    /// Records that this field is deprecated (IST0002), naming what to use instead.
    pub fn deprecated(&mut self, instead: &str) {
        self.report(
            codes::DEPRECATED,
            Severity::Warning,
            format!("deprecated; use {instead}"),
        );
    }

    /// Records that this field is valid Istio that the mesh does not implement (MESH0001).
    ///
    /// The mesh never drops a field silently: a user who sets it learns it has no effect.
    pub fn unsupported(&mut self, why: &str) {
        self.report(
            codes::UNSUPPORTED_FIELD,
            Severity::Warning,
            format!("accepted but not implemented by the mesh; it has no effect ({why})"),
        );
    }

    /// Checks that a required string is present and not empty.
    pub fn required_str(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            self.at(key).error("required field is missing or empty");
        }
    }

    /// Checks that a regular expression compiles (Istio uses RE2; the `regex` crate accepts
    /// the same syntax minus look-around, which RE2 lacks too). Returns it on success.
    pub fn regex(&mut self, key: &str, pattern: &str) -> Option<Regex> {
        match crate::config::compile_full_match(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                self.at(key)
                    .error(format!("invalid regular expression {pattern:?}: {e}"));
                None
            }
        }
    }

    /// Checks a percentage is within 0–100.
    pub fn percent(&mut self, key: &str, value: f64) {
        if !(0.0..=100.0).contains(&value) || value.is_nan() {
            self.at(key)
                .error(format!("percentage must be between 0 and 100, got {value}"));
        }
    }

    /// Checks a duration is at least 1 ms, as Istio requires of most durations.
    pub fn min_1ms(&mut self, key: &str, value: crate::duration::Duration) {
        if value.as_std() < std::time::Duration::from_millis(1) {
            self.at(key)
                .error(format!("duration must be at least 1ms, got {value}"));
        }
    }
}
