use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, request::Parts, uri::PathAndQuery};
use mesh_core::snapshot::route;
use tower::{Layer, Service};

use super::ORIGINAL_PATH;
use crate::target::Target;

/// Where a [`Rewrite`] service finds the rewrite of a request.
#[derive(Clone, Debug)]
enum Policy {
    Static {
        rewrite: Arc<route::Rewrite>,
        matched_prefix: Option<Arc<str>>,
    },
    FromTarget,
}

/// Rewrites the path and authority of requests (Istio's `rewrite`); see the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct RewriteLayer {
    policy: Policy,
}

/// The rewrite service; see the [module docs](super).
///
/// Not to be confused with [`mesh_core::snapshot::route::Rewrite`], the rewrite it applies.
#[derive(Clone, Debug)]
pub struct Rewrite<S> {
    inner: S,
    policy: Policy,
}

// === impl RewriteLayer ===

impl RewriteLayer {
    /// Applies `rewrite` to every request. With `matched_prefix`, a `uri` rewrite replaces that
    /// prefix of paths that start with it (ASCII case ignored) and leaves other paths alone;
    /// without it, a `uri` rewrite replaces the whole path, as for an exact match. A regex
    /// rewrite applies to every path.
    pub fn new(rewrite: route::Rewrite, matched_prefix: Option<String>) -> Self {
        Self {
            policy: Policy::Static {
                rewrite: Arc::new(rewrite),
                matched_prefix: matched_prefix.map(Arc::from),
            },
        }
    }

    /// Applies each request's route rewrite (`route.rewrite` of its [`Target`], with the
    /// match entry that matched).
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rewrite {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Rewrite ===

impl<S> Rewrite<S> {
    /// Applies `rewrite` to every request sent to `inner`; see [`RewriteLayer::new`].
    pub fn new(inner: S, rewrite: route::Rewrite, matched_prefix: Option<String>) -> Self {
        RewriteLayer::new(rewrite, matched_prefix).layer(inner)
    }

    /// Applies each request's route rewrite.
    pub fn from_target(inner: S) -> Self {
        RewriteLayer::from_target().layer(inner)
    }

    /// A [`RewriteLayer`] applying `rewrite` to every request; see [`RewriteLayer::new`].
    pub fn layer(rewrite: route::Rewrite, matched_prefix: Option<String>) -> RewriteLayer {
        RewriteLayer::new(rewrite, matched_prefix)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for Rewrite<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let req = match &self.policy {
            Policy::Static {
                rewrite,
                matched_prefix,
            } => {
                let (mut parts, body) = req.into_parts();
                let path =
                    static_rewrite_path(rewrite, matched_prefix.as_deref(), parts.uri.path());
                rewrite_parts(&mut parts, path, rewrite.authority.as_deref());
                http::Request::from_parts(parts, body)
            }
            Policy::FromTarget => {
                let (mut parts, body) = req.into_parts();
                if let Some(target) = parts.extensions.get::<Target>()
                    && let Some(route) = target.route.clone()
                    && let Some(rw) = &route.rewrite
                {
                    let path = route.rewrite_path(target.match_index, parts.uri.path());
                    rewrite_parts(&mut parts, path, rw.authority.as_deref());
                }
                http::Request::from_parts(parts, body)
            }
        };
        self.inner.call(req)
    }
}

/// The path after a static rewrite; `None` leaves the path as it is.
fn static_rewrite_path(
    rw: &route::Rewrite,
    matched_prefix: Option<&str>,
    path: &str,
) -> Option<String> {
    if let Some((re, with)) = &rw.uri_regex {
        return Some(re.replace_all(path, with.as_str()).into_owned());
    }
    let uri = rw.uri.as_ref()?;
    match matched_prefix {
        None => Some(uri.clone()),
        Some(p) => {
            let rest = path
                .get(..p.len())
                .filter(|head| head.eq_ignore_ascii_case(p))
                .and_then(|_| path.get(p.len()..))?;
            Some(format!("{uri}{rest}"))
        }
    }
}

/// Replaces the path (keeping the query) and the authority of a request; a part that would
/// not be valid is left as it was.
pub(super) fn rewrite_parts(parts: &mut Parts, path: Option<String>, authority: Option<&str>) {
    if let Some(path) = path {
        set_path(parts, path);
    }
    if let Some(authority) = authority {
        set_authority(parts, authority);
    }
}

fn set_path(parts: &mut Parts, path: String) {
    let original = parts.uri.path_and_query().map(PathAndQuery::as_str);
    let mut new = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    if let Some(q) = parts.uri.query() {
        new.push('?');
        new.push_str(q);
    }
    let Ok(pq) = PathAndQuery::try_from(new) else {
        tracing::debug!(uri = %parts.uri, "rewrite: the rewritten path is not valid; not rewriting it");
        return;
    };
    let original = original.and_then(|o| HeaderValue::from_str(o).ok());
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(pq);
    match http::Uri::from_parts(uri) {
        Ok(uri) => {
            parts.uri = uri;
            if let Some(original) = original {
                parts.headers.insert(ORIGINAL_PATH, original);
            }
        }
        Err(e) => tracing::debug!(error = %e, "rewrite: not rewriting the path"),
    }
}

fn set_authority(parts: &mut Parts, authority: &str) {
    let (Ok(auth), Ok(host)) = (
        http::uri::Authority::try_from(authority),
        HeaderValue::from_str(authority),
    ) else {
        tracing::debug!(
            authority,
            "rewrite: the authority is not valid; not rewriting it"
        );
        return;
    };
    let has_authority = parts.uri.authority().is_some();
    if has_authority {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = Some(auth);
        match http::Uri::from_parts(uri) {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                tracing::debug!(error = %e, "rewrite: not rewriting the authority");
                return;
            }
        }
    }
    if !has_authority || parts.headers.contains_key(http::header::HOST) {
        parts.headers.insert(http::header::HOST, host);
    }
}
