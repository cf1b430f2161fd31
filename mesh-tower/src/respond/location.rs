//! The `Location` of a redirect, built as Envoy's `RouteEntryImplBase::newUri` builds it.

use mesh_core::{
    config::networking::virtual_service::RedirectPortSelection,
    snapshot::{
        matcher::StringMatcher,
        route::{Redirect, Route},
    },
};

const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// The `Location` a redirect answers `req` with, as Envoy builds it:
///
/// - **scheme**: `redirect.scheme`, else the request's (its URI's, else
///   `x-forwarded-proto`, else `http`);
/// - **host**: `redirect.authority`, else the request's authority (URI, else `Host`). The
///   request's port is kept unless a port is set below, or the scheme changes and the port was
///   the old scheme's default (`http://a:80` → `https://a`);
/// - **port**: `redirect.port` is appended as given; `derivePort: FROM_PROTOCOL_DEFAULT` drops
///   any port (the scheme's default, 80 or 443, is implied); `FROM_REQUEST_PORT` appends the
///   request's port (its authority's, else its scheme's default), as Istio configures Envoy
///   with the port the request arrived on;
/// - **path**: `redirect.uri` replaces the whole path; `prefix_rewrite` replaces the part of
///   the path that the rule's `uri` match matched (the prefix of a prefix match, the whole
///   path of an exact or regex match, the leading `/` when the match entry has no `uri`
///   condition, which Istio configures as prefix `/`); otherwise the path stays;
/// - **query**: kept, unless `redirect.uri` carries its own.
///
/// `match_index` is the match entry of `route` that matched (`Target::match_index`).
pub fn redirect_location<B>(
    redirect: &Redirect,
    route: &Route,
    match_index: Option<usize>,
    req: &http::Request<B>,
) -> String {
    let uri_match = match_index
        .and_then(|i| route.matches.get(i))
        .and_then(|m| m.uri.as_ref());
    let path = req.uri().path();
    let matched = match uri_match {
        None => Some("/"),
        Some(StringMatcher::Prefix(p) | StringMatcher::PrefixIgnoreCase(p)) => Some(p.as_str()),
        Some(_) => Some(path),
    };
    redirect_location_with_prefix(redirect, matched, req)
}

/// As [`redirect_location`], with the matched path prefix given directly: `prefix_rewrite`
/// replaces that many leading bytes of the path (`None`: the whole path).
pub fn redirect_location_with_prefix<B>(
    redirect: &Redirect,
    matched_prefix: Option<&str>,
    req: &http::Request<B>,
) -> String {
    let uri = req.uri();
    let req_scheme = uri
        .scheme_str()
        .or_else(|| {
            req.headers()
                .get(X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("http");
    let scheme = redirect.scheme.as_deref().unwrap_or(req_scheme);
    let req_authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");

    let new_port = match (redirect.port, redirect.derive_port) {
        (Some(p), _) => Some(p),
        (None, Some(RedirectPortSelection::FromRequestPort)) => Some(
            split_port(req_authority)
                .1
                .unwrap_or(default_port(req_scheme)),
        ),
        _ => None,
    };
    let drop_port = new_port.is_some()
        || redirect.derive_port == Some(RedirectPortSelection::FromProtocolDefault);

    let host = match &redirect.authority {
        Some(a) if drop_port => split_port(a).0,
        Some(a) => a.as_str(),
        None => {
            let (host, port) = split_port(req_authority);
            let scheme_changed_from_default =
                scheme != req_scheme && port.is_some_and(|p| p == default_port(req_scheme));
            if drop_port || scheme_changed_from_default {
                host
            } else {
                req_authority
            }
        }
    };

    let path = uri.path();
    let query = uri.query();
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    if let Some(p) = new_port {
        out.push(':');
        out.push_str(&p.to_string());
    }
    let (new_path, keep_query) = match (&redirect.uri, &redirect.prefix_rewrite) {
        (Some(u), _) => (u.clone(), !u.contains('?')),
        (None, Some(rewrite)) => {
            let rest = matched_prefix
                .filter(|p| p.len() <= path.len())
                .and_then(|p| path.get(p.len()..))
                .unwrap_or("");
            (format!("{rewrite}{rest}"), true)
        }
        (None, None) => (path.to_owned(), true),
    };
    if !new_path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&new_path);
    if keep_query && let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

/// Splits `host:port` (IPv6 literals in brackets keep them); the host is returned as written.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let colon = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match colon {
        Some(i) => match authority[i + 1..].parse() {
            Ok(port) => (&authority[..i], Some(port)),
            Err(_) => (authority, None),
        },
        None => (authority, None),
    }
}
