//! Traffic mirroring (shadowing): Istio's `mirrors` / `mirror` + `mirrorPercentage`.
//!
//! For each mirror destination, with its probability (`percentage`, 100 % when unset), the
//! layer sends a copy of the request to the mirror and forgets it: the copy runs in its own
//! task ([`tokio::spawn`]), its response is dropped and its errors are only logged (at
//! debug). The original request goes on to the inner service as if there were no mirror; it
//! never waits for a copy.
//!
//! # The copy
//!
//! - **Destination**: the copy's [`Target`] is the original's with the mirror's host, subset
//!   and port (the original's port when the mirror names none) and **no route**
//!   (`route: None`), so no policy of the original route (fault, timeout, retries, mirrors)
//!   applies to it. It also carries [`Mirrored`] in its extensions. The copy carries no other
//!   extension of the original.
//! - **Authority**: `-shadow` is appended to the host, as Envoy does (`reviews:9080` →
//!   `reviews-shadow:9080`), in the URI and the `Host` header, so the mirror's application
//!   can tell shadow traffic from real traffic.
//! - **Body**: only a body that is already in memory is copied: empty, or all of its frames
//!   ready at once (a `Full` body, a buffered one) and at most [`MAX_MIRROR_BODY`] (64 KiB).
//!   The frames are read without waiting and the original is sent on with the same frames.
//!   A streaming or larger body is not mirrored (logged at debug); copying it would mean
//!   holding back the original until the whole body arrived.
//! - **Timeout**: the original route's `timeout`, when it has one, bounds the copy too (until
//!   its response headers), as Envoy gives a shadow request the route's timeout.
//!
//! # Policy
//!
//! [`MirrorLayer::from_target`] mirrors per `route.mirrors` of the request's [`Target`]; a
//! request without a `Target` passes through untouched. [`MirrorLayer::new`] mirrors every
//! request to a static list; a copy of a request without a `Target` has none either (only
//! [`Mirrored`] says where it should go).
//!
//! # Readiness and `Clone`
//!
//! Readiness is the inner service's, for the original request. The copies go through a
//! separate clone of the inner service, taken when the layer wraps it; each copy's task clones
//! it again and waits for its readiness on its own, so a copy never takes the capacity the
//! original request was given. The inner service must therefore be `Clone`.
//!
//! Outside a Tokio runtime (where nothing can be spawned) nothing is mirrored.
//!
//! # Examples
//! ```
//! use mesh_core::{policy::fault::PerMillion, snapshot::route::Mirror};
//! use mesh_tower::{body, mirror::{MirrorLayer, Mirrored}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let mirror = Mirror {
//!     host: "reviews.default.svc.cluster.local".into(),
//!     subset: Some("v2".into()),
//!     port: None,
//!     share: PerMillion::ALL,
//! };
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let svc = ServiceBuilder::new()
//!     .layer(MirrorLayer::new(vec![mirror]))
//!     .service_fn(move |req: http::Request<body::Body>| {
//!         let tx = tx.clone();
//!         async move {
//!             if req.extensions().get::<Mirrored>().is_some() {
//!                 tx.send(req.uri().to_string()).ok();
//!             }
//!             Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!         }
//!     });
//! let req = http::Request::get("http://reviews:9080/reviews/1").body(body::empty())?;
//! svc.oneshot(req).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("http://reviews-shadow:9080/reviews/1"));
//! # Ok(())
//! # }
//! ```
//!
//! [`Target`]: crate::target::Target

mod body;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, request::Parts, uri::Authority};
use mesh_core::{BoxError, snapshot::route};
use tower::{Layer, Service, ServiceExt};

use crate::{body::Body, target::Target};

/// The largest body a mirrored copy carries: 64 KiB. Requests with larger bodies are not
/// mirrored.
pub const MAX_MIRROR_BODY: usize = 64 * 1024;

/// In a mirrored copy's extensions: the mirror destination it is sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrored(pub route::Mirror);

/// Where a [`Mirror`] service finds the mirrors of a request.
#[derive(Clone, Debug)]
enum Policy {
    Static(Arc<[route::Mirror]>),
    FromTarget,
}

/// Sends fire-and-forget copies of requests to mirror destinations; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    policy: Policy,
}

/// The mirror service; see the [module docs](self).
///
/// Not to be confused with [`mesh_core::snapshot::route::Mirror`], a mirror destination.
#[derive(Clone, Debug)]
pub struct Mirror<S> {
    inner: S,
    policy: Policy,
}

// === impl MirrorLayer ===

impl MirrorLayer {
    /// Mirrors every request to `mirrors`, each with its share.
    pub fn new(mirrors: Vec<route::Mirror>) -> Self {
        Self {
            policy: Policy::Static(mirrors.into()),
        }
    }

    /// Mirrors each request to its route's mirrors (`route.mirrors` of its [`Target`]).
    pub fn from_target() -> Self {
        Self {
            policy: Policy::FromTarget,
        }
    }
}

impl<S: Clone> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Mirror {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Mirror ===

impl<S: Clone> Mirror<S> {
    /// Mirrors every request sent to `inner` to `mirrors`.
    pub fn new(inner: S, mirrors: Vec<route::Mirror>) -> Self {
        MirrorLayer::new(mirrors).layer(inner)
    }

    /// Mirrors each request sent to `inner` to its route's mirrors.
    pub fn from_target(inner: S) -> Self {
        MirrorLayer::from_target().layer(inner)
    }
}

impl<S> Mirror<S> {
    /// A [`MirrorLayer`] mirroring every request to `mirrors`.
    pub fn layer(mirrors: Vec<route::Mirror>) -> MirrorLayer {
        MirrorLayer::new(mirrors)
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

impl<S> Service<http::Request<Body>> for Mirror<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mirrors = match &self.policy {
            Policy::Static(m) => &m[..],
            Policy::FromTarget => req
                .extensions()
                .get::<Target>()
                .and_then(Target::route)
                .map_or(&[][..], |r| &r.mirrors[..]),
        };
        if mirrors.is_empty() {
            return self.inner.call(req);
        }
        let chosen: Vec<route::Mirror> = mirrors
            .iter()
            .filter(|m| m.share.hit(fastrand::u32(0..1_000_000)))
            .cloned()
            .collect();
        if chosen.is_empty() {
            return self.inner.call(req);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("mirror: no Tokio runtime to send copies from; not mirroring");
            return self.inner.call(req);
        };

        let (parts, body) = req.into_parts();
        let (body, copy) = body::take_buffered(body, MAX_MIRROR_BODY);
        let buffered = match copy {
            Ok(buffered) => buffered,
            Err(why) => {
                tracing::debug!(?why, uri = %parts.uri, "mirror: body not buffered; not mirroring");
                return self.inner.call(http::Request::from_parts(parts, body));
            }
        };
        let target = parts.extensions.get::<Target>();
        let timeout = target.and_then(Target::route).and_then(|r| r.timeout);
        for mirror in chosen {
            let copy = shadow_request(&parts, target, mirror, body::replay(buffered.clone()));
            tracing::debug!(uri = %copy.uri(), "mirror: sending a copy");
            // A clone per copy (only for mirrored requests): it waits for its own readiness.
            runtime.spawn(send_copy(self.inner.clone(), copy, timeout));
        }
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// Sends one copy and forgets its outcome.
async fn send_copy<S>(svc: S, copy: http::Request<Body>, timeout: Option<Duration>)
where
    S: Service<http::Request<Body>>,
    S::Error: Into<BoxError>,
{
    let send = svc.oneshot(copy);
    let outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(res) => res.map_err(Into::into),
            Err(_) => Err("mirror: the copy timed out".into()),
        },
        None => send.await.map_err(Into::into),
    };
    match outcome {
        // The response is dropped: nobody waits for it.
        Ok(_) => tracing::trace!("mirror: the copy was answered"),
        Err(error) => tracing::debug!(%error, "mirror: the copy failed"),
    }
}

/// The copy of a request for `mirror`: same method, version, URI and headers with `-shadow`
/// appended to the host, the mirror's [`Target`] (when the original had one) and
/// [`Mirrored`].
fn shadow_request(
    parts: &Parts,
    target: Option<&Target>,
    mirror: route::Mirror,
    body: Body,
) -> http::Request<Body> {
    let mut copy = http::Request::new(body);
    *copy.method_mut() = parts.method.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    *copy.uri_mut() = parts.uri.clone();

    if let Some(auth) = parts.uri.authority()
        && let Some(shadow) = shadow_authority(auth.as_str())
        && let Ok(shadow) = Authority::try_from(shadow)
    {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = Some(shadow);
        if let Ok(uri) = http::Uri::from_parts(uri) {
            *copy.uri_mut() = uri;
        }
    }
    if let Some(host) = parts.headers.get(http::header::HOST)
        && let Some(shadow) = host.to_str().ok().and_then(shadow_authority)
        && let Ok(shadow) = HeaderValue::try_from(shadow)
    {
        copy.headers_mut().insert(http::header::HOST, shadow);
    }

    if let Some(t) = target {
        copy.extensions_mut().insert(Target {
            route: None,
            match_index: None,
            host: mirror.host.as_str().into(),
            subset: mirror.subset.as_deref().map(Into::into),
            port: mirror.port.unwrap_or(t.port),
            ..t.clone()
        });
    }
    copy.extensions_mut().insert(Mirrored(mirror));
    copy
}

/// Envoy's `shadowAppendedHost`: `-shadow` after the host, before any port
/// (`reviews:9080` → `reviews-shadow:9080`). `None` for an empty authority.
pub fn shadow_authority(authority: &str) -> Option<String> {
    if authority.is_empty() {
        return None;
    }
    // The port starts at the last ':' unless a ']' follows it (an IPv6 literal).
    let port_start = authority
        .rfind(':')
        .filter(|&i| authority.rfind(']').is_none_or(|j| j < i));
    Some(match port_start {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    })
}

#[cfg(test)]
mod tests;
