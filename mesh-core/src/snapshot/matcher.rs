//! Request matchers compiled from `HTTPMatchRequest`: regexes are compiled once, at snapshot
//! build, never on the request path.

use std::collections::BTreeMap;

use regex::Regex;

use super::RequestInfo;
use crate::config::{
    common::StringMatch, compile_full_match, networking::virtual_service::HttpMatchRequest,
};

/// A compiled `StringMatch`.
#[derive(Clone, Debug)]
pub enum StringMatcher {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Equal, ignoring ASCII case (`ignoreUriCase`).
    ExactIgnoreCase(String),
    /// Starts with, ignoring ASCII case.
    PrefixIgnoreCase(String),
    /// The whole value matches the regex.
    Regex(Regex),
    /// Present with any value (`{}` on a header).
    Present,
}

impl StringMatcher {
    /// Compiles a `StringMatch`; `{}` becomes [`StringMatcher::Present`].
    ///
    /// # Errors
    /// The regex does not compile (validation reports this before a snapshot is built).
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, regex::Error> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) if ignore_case => Self::ExactIgnoreCase(e.clone()),
            (Some(e), _, _) => Self::Exact(e.clone()),
            (_, Some(p), _) if ignore_case => Self::PrefixIgnoreCase(p.clone()),
            (_, Some(p), _) => Self::Prefix(p.clone()),
            (_, _, Some(r)) => Self::Regex(compile_full_match(r)?),
            _ => Self::Present,
        })
    }

    /// True if `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::ExactIgnoreCase(e) => value.eq_ignore_ascii_case(e),
            Self::PrefixIgnoreCase(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Regex(re) => re.is_match(value),
            Self::Present => true,
        }
    }

    /// The prefix, for a prefix match (a URI rewrite replaces exactly this).
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix(p) | Self::PrefixIgnoreCase(p) => Some(p),
            _ => None,
        }
    }

    /// Describes the matcher in words, for `meshctl describe`.
    pub fn describe(&self) -> String {
        match self {
            Self::Exact(e) => format!("exact {e:?}"),
            Self::Prefix(p) => format!("prefix {p:?}"),
            Self::ExactIgnoreCase(e) => format!("exact {e:?} (any case)"),
            Self::PrefixIgnoreCase(p) => format!("prefix {p:?} (any case)"),
            Self::Regex(r) => {
                let s = r.as_str();
                let inner = s
                    .strip_prefix("^(?:")
                    .and_then(|s| s.strip_suffix(")$"))
                    .unwrap_or(s);
                format!("regex {inner:?}")
            }
            Self::Present => "present".to_owned(),
        }
    }
}

/// A compiled `HTTPMatchRequest`: every set condition must hold.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    /// The match's name.
    pub name: Option<String>,
    /// Path condition.
    pub uri: Option<StringMatcher>,
    /// Scheme condition.
    pub scheme: Option<StringMatcher>,
    /// Method condition.
    pub method: Option<StringMatcher>,
    /// Authority condition.
    pub authority: Option<StringMatcher>,
    /// Header conditions.
    pub headers: Vec<(http::HeaderName, StringMatcher)>,
    /// Headers that must not match.
    pub without_headers: Vec<(http::HeaderName, StringMatcher)>,
    /// Query parameter conditions.
    pub query_params: Vec<(String, StringMatcher)>,
    /// Port condition.
    pub port: Option<u16>,
    /// Caller workload labels this match is for.
    pub source_labels: BTreeMap<String, String>,
    /// Caller namespace this match is for.
    pub source_namespace: Option<String>,
}

impl RequestMatch {
    /// Compiles an `HTTPMatchRequest`.
    ///
    /// # Errors
    /// A regex or header name that validation would have refused.
    pub fn compile(m: &HttpMatchRequest) -> Result<Self, String> {
        let ic = m.ignore_uri_case.unwrap_or(false);
        let sm = |s: &Option<StringMatch>, ic: bool| {
            s.as_ref()
                .map(|s| StringMatcher::compile(s, ic))
                .transpose()
                .map_err(|e| e.to_string())
        };
        let headers = |map: &BTreeMap<String, StringMatch>| {
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "uri" | "scheme" | "method" | "authority"))
                .map(|(k, v)| {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    Ok((
                        name,
                        StringMatcher::compile(v, false).map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Self {
            name: m.name.clone(),
            uri: sm(&m.uri, ic)?,
            scheme: sm(&m.scheme, false)?,
            method: sm(&m.method, false)?,
            authority: sm(&m.authority, false)?,
            headers: headers(&m.headers)?,
            without_headers: headers(&m.without_headers)?,
            query_params: m
                .query_params
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        StringMatcher::compile(v, false).map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<_, String>>()?,
            port: m.port.and_then(|p| u16::try_from(p).ok()),
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    /// True if the caller is one this match applies to (`sourceLabels`, `sourceNamespace`).
    pub fn applies_to(&self, caller: &super::Caller<'_>) -> bool {
        self.source_labels
            .iter()
            .all(|(k, v)| caller.labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| ns == caller.namespace)
    }

    /// True if `req` satisfies every condition.
    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        if let Some(m) = &self.uri
            && !m.matches(req.path)
        {
            return false;
        }
        if let Some(m) = &self.method
            && !m.matches(req.method.as_str())
        {
            return false;
        }
        if let Some(m) = &self.scheme
            && !m.matches(req.scheme)
        {
            return false;
        }
        if let Some(m) = &self.authority
            && !m.matches(req.authority)
        {
            return false;
        }
        if let Some(port) = self.port
            && req.port != Some(port)
        {
            return false;
        }
        for (name, m) in &self.headers {
            if !header_matches(req.headers, name, m) {
                return false;
            }
        }
        for (name, m) in &self.without_headers {
            if req.headers.contains_key(name) && header_matches(req.headers, name, m) {
                return false;
            }
        }
        for (key, m) in &self.query_params {
            match query_param(req.query, key) {
                Some(v) if m.matches(&v) => {}
                _ => return false,
            }
        }
        true
    }

    /// Each condition in words with whether `req` satisfies it, for `meshctl describe`.
    /// The caller conditions (`sourceLabels`, `sourceNamespace`) come first.
    pub fn explain(
        &self,
        caller: &super::Caller<'_>,
        req: &RequestInfo<'_>,
    ) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for (k, v) in &self.source_labels {
            out.push((
                format!("source label {k}={v}"),
                caller.labels.get(k) == Some(v),
            ));
        }
        if let Some(ns) = &self.source_namespace {
            out.push((format!("source namespace {ns}"), ns == caller.namespace));
        }
        let got = |v: Option<&str>| match v {
            Some(v) => format!(" (got {v:?})"),
            None => " (absent)".to_owned(),
        };
        if let Some(m) = &self.uri {
            out.push((
                format!("uri {}{}", m.describe(), got(Some(req.path))),
                m.matches(req.path),
            ));
        }
        if let Some(m) = &self.method {
            let method = req.method.as_str();
            out.push((
                format!("method {}{}", m.describe(), got(Some(method))),
                m.matches(method),
            ));
        }
        if let Some(m) = &self.scheme {
            out.push((
                format!("scheme {}{}", m.describe(), got(Some(req.scheme))),
                m.matches(req.scheme),
            ));
        }
        if let Some(m) = &self.authority {
            out.push((
                format!("authority {}{}", m.describe(), got(Some(req.authority))),
                m.matches(req.authority),
            ));
        }
        if let Some(p) = self.port {
            out.push((
                format!(
                    "port {p}{}",
                    got(req.port.map(|p| p.to_string()).as_deref())
                ),
                req.port == Some(p),
            ));
        }
        for (name, m) in &self.headers {
            let v = header_value(req.headers, name);
            let ok = v.as_deref().is_some_and(|v| m.matches(v));
            out.push((
                format!("header {name} {}{}", m.describe(), got(v.as_deref())),
                ok,
            ));
        }
        for (name, m) in &self.without_headers {
            let v = header_value(req.headers, name);
            let ok = !v.as_deref().is_some_and(|v| m.matches(v));
            out.push((
                format!("header {name} not {}{}", m.describe(), got(v.as_deref())),
                ok,
            ));
        }
        for (key, m) in &self.query_params {
            let v = query_param(req.query, key);
            let ok = v.as_deref().is_some_and(|v| m.matches(v));
            out.push((
                format!("query {key} {}{}", m.describe(), got(v.as_deref())),
                ok,
            ));
        }
        out
    }

    /// Describes the conditions in words, for `meshctl describe`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.uri {
            out.push(format!("uri {}", m.describe()));
        }
        if let Some(m) = &self.method {
            out.push(format!("method {}", m.describe()));
        }
        if let Some(m) = &self.scheme {
            out.push(format!("scheme {}", m.describe()));
        }
        if let Some(m) = &self.authority {
            out.push(format!("authority {}", m.describe()));
        }
        if let Some(p) = self.port {
            out.push(format!("port {p}"));
        }
        for (name, m) in &self.headers {
            out.push(format!("header {name} {}", m.describe()));
        }
        for (name, m) in &self.without_headers {
            out.push(format!("header {name} not {}", m.describe()));
        }
        for (key, m) in &self.query_params {
            out.push(format!("query {key} {}", m.describe()));
        }
        for (k, v) in &self.source_labels {
            out.push(format!("source label {k}={v}"));
        }
        if let Some(ns) = &self.source_namespace {
            out.push(format!("source namespace {ns}"));
        }
        out
    }
}

/// True if the header is present and matches; without allocating for a single value.
fn header_matches(headers: &http::HeaderMap, name: &http::HeaderName, m: &StringMatcher) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    if values.next().is_none()
        && let Ok(v) = first.to_str()
    {
        return m.matches(v);
    }
    header_value(headers, name).is_some_and(|v| m.matches(&v))
}

/// The header's value; several values are joined with `,` as Envoy does.
fn header_value(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

/// The first value of query parameter `key` (`?key` alone gives `""`), percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matchers() {
        let re = StringMatcher::compile(&StringMatch::regex(r"\d+"), false).unwrap();
        assert!(re.matches("123"));
        assert!(!re.matches("a123"), "regex is a full match");
        let p = StringMatcher::compile(&StringMatch::prefix("/API"), true).unwrap();
        assert!(p.matches("/api/v1"));
        assert!(!p.matches("/ap"));
        assert!(
            StringMatcher::compile(&StringMatch::default(), false)
                .unwrap()
                .matches("")
        );
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("a=1&b=x%20y"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("flag&a=1"), "flag").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "a"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
