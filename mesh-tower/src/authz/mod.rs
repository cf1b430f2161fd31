//! Inbound authorization: Istio's `AuthorizationPolicy` for the workload that serves.
//!
//! [`AuthorizationLayer`] sits in front of the application (inside
//! [`Mesh::serve`](crate::mesh::Mesh::serve), or in any `ServiceBuilder`). For each request it
//! takes the current snapshot, the policies that select this workload (compiled once per
//! snapshot by [`Authorizer::for_workload`]), and decides with Istio's order: CUSTOM, then
//! DENY, then ALLOW (no ALLOW policy means allow). The request's attributes come from the
//! request itself and from the connection: the peer's verified SPIFFE identity
//! ([`PeerIdentity`], put there by the mTLS acceptor; absent on plaintext), its address
//! ([`PeerAddr`]) and the port the workload serves on.
//!
//! A denied request is answered `403` with Envoy's body `RBAC: access denied` and never reaches
//! the application; an audit line (tracing target `mesh_tower::authz`) names the peer, the
//! request and the policy. AUDIT policies log the requests they match and change nothing;
//! dry-run policies (`istio.io/dry-run: "true"`) log what they would have decided.
//!
//! With no AuthorizationPolicy for the workload, a request costs one pointer comparison.
//!
//! # Examples
//! ```
//! use std::sync::Arc;
//! use mesh_core::{config::load_str, snapshot::Snapshot};
//! use mesh_tower::{authz::AuthorizationLayer, body::{self, Body}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let deny_delete = load_str("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
//!     metadata: {name: no-delete, namespace: default}\n\
//!     spec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n", None);
//! let snapshot = Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::build(&deny_delete.resources)?));
//! let app = ServiceBuilder::new()
//!     .layer(AuthorizationLayer::new(snapshot, "default", Default::default(), 9080))
//!     .service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(body::full("ok")))
//!     });
//! let req = http::Request::delete("/reviews/1").body(body::empty())?;
//! let res = app.oneshot(req).await?;
//! assert_eq!(res.status(), 403);
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwapOption;
use futures_util::future::{Either, Ready, ready};
use mesh_core::{
    policy::authz::{Authorizer, RequestAttributes},
    snapshot::Snapshot,
};
use tower::{Layer, Service};

use crate::{
    body::{self, Body},
    route::SnapshotSource,
    server::PeerAddr,
    tls::PeerIdentity,
};

/// The tracing target of authorization audit lines.
pub const AUDIT_TARGET: &str = "mesh_tower::authz";

/// The body of a denied request's response (Envoy's RBAC filter says the same).
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Applies the AuthorizationPolicies that select one workload; see the [module docs](self).
#[derive(Clone)]
pub struct AuthorizationLayer {
    shared: Arc<Shared>,
}

/// The authorization service; see the [module docs](self).
#[derive(Clone)]
pub struct Authorization<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn SnapshotSource>,
    namespace: String,
    labels: BTreeMap<String, String>,
    port: u16,
    /// The policies compiled for the last snapshot seen.
    compiled: ArcSwapOption<Compiled>,
}

struct Compiled {
    snapshot: Arc<Snapshot>,
    authorizer: Authorizer,
}

impl std::fmt::Debug for AuthorizationLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S> std::fmt::Debug for Authorization<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization")
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl AuthorizationLayer {
    /// Authorizes requests to the workload in `namespace` with `labels`, serving on `port`,
    /// with the policies of the snapshots from `source`.
    pub fn new(
        source: Arc<dyn SnapshotSource>,
        namespace: impl Into<String>,
        labels: BTreeMap<String, String>,
        port: u16,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                namespace: namespace.into(),
                labels,
                port,
                compiled: ArcSwapOption::empty(),
            }),
        }
    }
}

impl<S> Layer<S> for AuthorizationLayer {
    type Service = Authorization<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorization {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl Shared {
    /// Calls `f` with the policies of the current snapshot, compiled on the first request
    /// after a change. The common case takes no reference count.
    fn with_authorizer<T>(&self, f: impl FnOnce(&Authorizer) -> T) -> T {
        {
            let compiled = self.compiled.load();
            if let Some(c) = compiled.as_ref()
                && self.source.is_current(&c.snapshot)
            {
                return f(&c.authorizer);
            }
        }
        let snapshot = self.source.snapshot();
        let authorizer = Authorizer::for_workload(
            snapshot.resources(),
            &self.namespace,
            &self.labels,
            &snapshot.settings().root_namespace,
        );
        for problem in authorizer.problems() {
            tracing::warn!(target: AUDIT_TARGET, %problem, "authorization policy only partly enforced");
        }
        let compiled = Arc::new(Compiled {
            snapshot,
            authorizer,
        });
        self.compiled.store(Some(compiled.clone()));
        f(&compiled.authorizer)
    }
}

/// The response to a denied request: `403 RBAC: access denied`.
pub fn denied() -> http::Response<Body> {
    let mut res = http::Response::new(body::full(DENIED_BODY));
    *res.status_mut() = http::StatusCode::FORBIDDEN;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    res
}

impl<S> Service<http::Request<Body>> for Authorization<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let allowed = self.shared.with_authorizer(|authorizer| {
            if authorizer.is_empty() {
                return true;
            }
            let peer = req
                .extensions()
                .get::<PeerIdentity>()
                .map(|p| &p.identity);
            let source_ip = req
                .extensions()
                .get::<PeerAddr>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0.ip());
            let attrs = RequestAttributes::from_request(&req, peer, source_ip, self.shared.port);
            let decision = authorizer.evaluate(&attrs);
            // Only for the log lines below, which are rare.
            let principal = || peer.map_or_else(|| "-".to_owned(), |p| p.principal());
            if let Some(policy) = decision.audit() {
                tracing::info!(target: AUDIT_TARGET, %policy, peer = %principal(), %source_ip, method = %req.method(), path = %req.uri().path(), allowed = decision.is_allowed(), "AUDIT policy matched");
            }
            if let Some(verdict) = decision.dry_run() {
                tracing::info!(target: AUDIT_TARGET, %verdict, peer = %principal(), %source_ip, method = %req.method(), path = %req.uri().path(), "dry-run policy");
            }
            if !decision.is_allowed() {
                tracing::info!(target: AUDIT_TARGET, %decision, peer = %principal(), %source_ip, method = %req.method(), path = %req.uri().path(), "request denied");
            }
            decision.is_allowed()
        });
        if allowed {
            Either::Left(self.inner.call(req))
        } else {
            Either::Right(ready(Ok(denied())))
        }
    }
}

#[cfg(test)]
mod tests;
