//! Compiled HTTP routes: what one VirtualService rule does to a request.

use std::{sync::Arc, time::Duration};

use super::matcher::{RequestMatch, StringMatcher};
use crate::{
    config::{
        ResourceKey,
        networking::virtual_service::{
            CorsPolicy, Destination, HeaderOperations, Headers, HttpRedirect, HttpRoute,
            RedirectPortSelection, UnmatchedPreflights,
        },
    },
    host::resolve_rule_host,
    policy::{
        fault::{FaultPolicy, PerMillion},
        retry::RetryPolicy,
    },
};

/// One compiled VirtualService HTTP rule.
#[derive(Clone, Debug)]
pub struct Route {
    /// The VirtualService it came from.
    pub virtual_service: Arc<ResourceKey>,
    /// Its index in `spec.http`.
    pub index: usize,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// OR-ed conditions; empty matches every request.
    pub matches: Vec<RequestMatch>,
    /// What to do with a matching request.
    pub action: Action,
    /// Total timeout, retries included.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: RetryPolicy,
    /// Fault injection.
    pub fault: Option<FaultPolicy>,
    /// Mirror destinations.
    pub mirrors: Vec<Mirror>,
    /// URI and authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// Header operations for every destination.
    pub headers: HeaderOps,
    /// CORS policy.
    pub cors: Option<Cors>,
}

/// What a route does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward to one of these destinations, by weight.
    Forward(Vec<WeightedDestination>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse {
        /// Status code.
        status: u16,
        /// Body.
        body: bytes_body::Body,
    },
    /// A delegate rule (not implemented by the mesh; treated as no route).
    Delegate(ResourceKey),
}

/// Body bytes for direct responses.
pub mod bytes_body {
    /// A direct response body.
    pub type Body = std::sync::Arc<[u8]>;
}

/// A destination with its weight and header operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedDestination {
    /// The destination host, as an FQDN (resolved in the rule's namespace).
    pub host: std::sync::Arc<str>,
    /// The subset, if any.
    pub subset: Option<std::sync::Arc<str>>,
    /// The port, if given.
    pub port: Option<u16>,
    /// The weight (relative; an unset weight on a single destination is 100).
    pub weight: u32,
    /// Header operations for this destination.
    pub headers: HeaderOps,
}

/// A mirror destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// FQDN.
    pub host: String,
    /// Subset.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Share of requests mirrored.
    pub share: PerMillion,
}

/// A compiled redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// Replace the path.
    pub uri: Option<String>,
    /// Replace the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u16>,
    /// Derive the port.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme.
    pub scheme: Option<String>,
    /// Status code (301 by default).
    pub code: u16,
}

/// A compiled rewrite.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// Replace the matched prefix (or the whole path).
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    pub uri_regex: Option<(regex::Regex, String)>,
}

/// Compiled header operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Request: overwrite.
    pub request_set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request: append.
    pub request_add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request: remove.
    pub request_remove: Vec<http::HeaderName>,
    /// Response: overwrite.
    pub response_set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Response: append.
    pub response_add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Response: remove.
    pub response_remove: Vec<http::HeaderName>,
}

/// A compiled CORS policy.
#[derive(Clone, Debug)]
pub struct Cors {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatcher>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed headers.
    pub allow_headers: Vec<String>,
    /// Exposed headers.
    pub expose_headers: Vec<String>,
    /// Preflight cache time.
    pub max_age: Option<Duration>,
    /// Credentials allowed.
    pub allow_credentials: Option<bool>,
    /// Forward (true) or answer (false) unmatched preflights.
    pub forward_unmatched_preflights: bool,
}

// === impl Route ===

impl Route {
    /// Compiles rule `index` of a VirtualService in namespace `ns`.
    ///
    /// # Errors
    /// Input that validation refuses (a bad regex, header name or `retryOn`).
    pub fn compile(
        vs: Arc<ResourceKey>,
        index: usize,
        rule: &HttpRoute,
        domain: &str,
    ) -> Result<Self, String> {
        let ns = vs.namespace.clone();
        let dest = |d: &Destination| -> (String, Option<String>, Option<u16>) {
            (
                resolve_rule_host(&d.host, &ns, domain),
                d.subset.clone(),
                d.port.and_then(|p| u16::try_from(p.number).ok()),
            )
        };
        let matches = rule
            .matches
            .iter()
            .map(RequestMatch::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let action = if let Some(r) = &rule.redirect {
            Action::Redirect(Redirect::compile(r))
        } else if let Some(d) = &rule.direct_response {
            let body: Vec<u8> = match &d.body {
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), _) => s.as_bytes().to_vec(),
                    (None, Some(b64)) => decode_base64(b64).ok_or("invalid base64 body")?,
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            Action::DirectResponse {
                status: u16::try_from(d.status).map_err(|e| e.to_string())?,
                body: body.into(),
            }
        } else if let Some(d) = &rule.delegate {
            Action::Delegate(ResourceKey::new(
                crate::config::Kind::VirtualService,
                d.namespace.clone().unwrap_or_else(|| ns.clone()),
                d.name.clone(),
            ))
        } else {
            let single = rule.route.len() == 1;
            Action::Forward(
                rule.route
                    .iter()
                    .map(|r| {
                        let (host, subset, port) = dest(&r.destination);
                        let weight = match r.weight {
                            Some(w) => u32::try_from(w).unwrap_or(0),
                            None if single => 100,
                            None => 0,
                        };
                        Ok(WeightedDestination {
                            host: host.into(),
                            subset: subset.map(Into::into),
                            port,
                            weight,
                            headers: HeaderOps::compile(r.headers.as_ref())?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            )
        };
        let mut mirrors = Vec::new();
        if let Some(m) = &rule.mirror {
            let (host, subset, port) = dest(m);
            let share = PerMillion::from_istio(
                rule.mirror_percentage.as_ref(),
                rule.mirror_percent.and_then(|p| i32::try_from(p).ok()),
                PerMillion::ALL,
            );
            mirrors.push(Mirror {
                host,
                subset,
                port,
                share,
            });
        }
        for m in &rule.mirrors {
            let (host, subset, port) = dest(&m.destination);
            mirrors.push(Mirror {
                host,
                subset,
                port,
                share: PerMillion::from_istio(m.percentage.as_ref(), None, PerMillion::ALL),
            });
        }
        let rewrite = rule
            .rewrite
            .as_ref()
            .map(|rw| -> Result<Rewrite, String> {
                Ok(Rewrite {
                    uri: rw.uri.clone(),
                    authority: rw.authority.clone(),
                    uri_regex: rw
                        .uri_regex_rewrite
                        .as_ref()
                        .map(|r| {
                            regex::Regex::new(&r.pattern)
                                .map(|re| (re, convert_backrefs(&r.rewrite)))
                                .map_err(|e| e.to_string())
                        })
                        .transpose()?,
                })
            })
            .transpose()?;
        Ok(Self {
            virtual_service: vs.clone(),
            index,
            name: rule.name.clone(),
            matches,
            action,
            timeout: rule.timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
            retries: RetryPolicy::from_config(rule.retries.as_ref()).map_err(|e| e.to_string())?,
            fault: rule.fault.as_ref().map(FaultPolicy::from_config),
            mirrors,
            rewrite,
            headers: HeaderOps::compile(rule.headers.as_ref())?,
            cors: rule.cors_policy.as_ref().map(Cors::compile).transpose()?,
        })
    }

    /// The index of the first match entry `req` satisfies (`Some(None)` for a rule without
    /// matches), or `None` if the rule does not apply.
    pub fn find_match(
        &self,
        caller: &super::Caller<'_>,
        req: &super::RequestInfo<'_>,
    ) -> Option<Option<usize>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches
            .iter()
            .position(|m| m.applies_to(caller) && m.matches(req))
            .map(Some)
    }

    /// The forward destinations, if the action is to forward.
    pub fn destinations(&self) -> &[WeightedDestination] {
        match &self.action {
            Action::Forward(d) => d,
            _ => &[],
        }
    }

    /// Picks a destination by weight. `draw` is a uniformly random number; the pick is
    /// `draw mod sum(weights)` over the cumulative weights, so `weight / sum` of draws land on
    /// each destination. `None` when there is nothing to forward to or every weight is 0.
    pub fn pick(&self, draw: u32) -> Option<&WeightedDestination> {
        let dests = self.destinations();
        let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = u64::from(draw) % total;
        for d in dests {
            if point < u64::from(d.weight) {
                return Some(d);
            }
            point -= u64::from(d.weight);
        }
        None
    }

    /// The path after this route's rewrite, given the match entry that matched: a `uri`
    /// rewrite replaces the matched prefix (or the whole path for an exact or regex match);
    /// a regex rewrite substitutes capture groups.
    pub fn rewrite_path(&self, match_index: Option<usize>, path: &str) -> Option<String> {
        let rw = self.rewrite.as_ref()?;
        if let Some((re, with)) = &rw.uri_regex {
            return Some(re.replace_all(path, with.as_str()).into_owned());
        }
        let uri = rw.uri.as_ref()?;
        let prefix = match_index
            .and_then(|i| self.matches.get(i))
            .and_then(|m| m.uri.as_ref())
            .and_then(StringMatcher::prefix);
        Some(match prefix {
            Some(p) if path.len() >= p.len() => format!("{uri}{}", &path[p.len()..]),
            _ => uri.clone(),
        })
    }
}

/// Istio writes regex back-references as `\1`; the `regex` crate wants `${1}`.
fn convert_backrefs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            out.push_str(&format!("${{{n}}}"));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes base64, standard or URL-safe alphabet, with or without padding (canonical
/// padding only, when present).
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::{
        Engine as _, alphabet,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let s = s.trim();
    if s.contains(['-', '_']) {
        URL_SAFE.decode(s).ok()
    } else {
        STANDARD.decode(s).ok()
    }
}

impl Redirect {
    fn compile(r: &HttpRedirect) -> Self {
        Self {
            uri: r.uri.clone(),
            prefix_rewrite: r.prefix_rewrite.clone(),
            authority: r.authority.clone(),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            derive_port: r.derive_port,
            scheme: r.scheme.clone(),
            code: r
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        }
    }
}

impl HeaderOps {
    /// Compiles Istio's `Headers`.
    ///
    /// # Errors
    /// An invalid header name or value.
    pub fn compile(h: Option<&Headers>) -> Result<Self, String> {
        let mut ops = Self::default();
        let Some(h) = h else {
            return Ok(ops);
        };
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| {
                    Ok((
                        http::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|e| format!("header {k:?}: {e}"))?,
                        http::HeaderValue::from_str(v)
                            .map_err(|e| format!("header {k:?} value: {e}"))?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let names = |v: &[String]| {
            v.iter()
                .map(|k| {
                    http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header {k:?}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let empty = HeaderOperations::default();
        let req = h.request.as_ref().unwrap_or(&empty);
        let resp = h.response.as_ref().unwrap_or(&empty);
        ops.request_set = pairs(&req.set)?;
        ops.request_add = pairs(&req.add)?;
        ops.request_remove = names(&req.remove)?;
        ops.response_set = pairs(&resp.set)?;
        ops.response_add = pairs(&resp.add)?;
        ops.response_remove = names(&resp.remove)?;
        Ok(ops)
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        // Field by field: comparing with `Self::default()` built and dropped six vectors on
        // every call (twice per routed request).
        let Self {
            request_set,
            request_add,
            request_remove,
            response_set,
            response_add,
            response_remove,
        } = self;
        request_set.is_empty()
            && request_add.is_empty()
            && request_remove.is_empty()
            && response_set.is_empty()
            && response_add.is_empty()
            && response_remove.is_empty()
    }
}

impl Cors {
    fn compile(c: &CorsPolicy) -> Result<Self, String> {
        let mut allow_origins = c
            .allow_origins
            .iter()
            .map(|m| StringMatcher::compile(m, false).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        allow_origins.extend(
            c.allow_origin
                .iter()
                .map(|o| StringMatcher::Exact(o.clone())),
        );
        Ok(Self {
            allow_origins,
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age.map(|d| d.as_std()),
            allow_credentials: c.allow_credentials,
            forward_unmatched_preflights: !matches!(
                c.unmatched_preflights,
                Some(UnmatchedPreflights::Ignore)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ops_are_empty_only_without_any_operation() {
        assert!(HeaderOps::default().is_empty());
        let name = http::HeaderName::from_static("x-a");
        let value = http::HeaderValue::from_static("b");
        let one_each: [fn(&mut HeaderOps, &http::HeaderName, &http::HeaderValue); 6] = [
            |o, n, v| o.request_set.push((n.clone(), v.clone())),
            |o, n, v| o.request_add.push((n.clone(), v.clone())),
            |o, n, _| o.request_remove.push(n.clone()),
            |o, n, v| o.response_set.push((n.clone(), v.clone())),
            |o, n, v| o.response_add.push((n.clone(), v.clone())),
            |o, n, _| o.response_remove.push(n.clone()),
        ];
        for (i, add) in one_each.iter().enumerate() {
            let mut ops = HeaderOps::default();
            add(&mut ops, &name, &value);
            assert!(!ops.is_empty(), "operation {i}");
        }
    }

    #[test]
    fn backrefs() {
        assert_eq!(convert_backrefs(r"/v2/\1/x$"), "/v2/${1}/x$$");
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("aGVsbA==").unwrap(), b"hell");
        assert_eq!(
            decode_base64("-_8=").unwrap(),
            [0xfb, 0xff],
            "URL-safe alphabet"
        );
        assert_eq!(decode_base64("+/8=").unwrap(), [0xfb, 0xff]);
        for bad in ["a", "@@@@", "aGVs bG8=", "aGVsbG8==", "a==="] {
            assert!(decode_base64(bad).is_none(), "{bad}");
        }
    }
}
