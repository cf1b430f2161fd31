//! Routing: decides where each request goes, from the live snapshot.
//!
//! The route layer is the top of the outbound stack's policy layers. For every request it
//! takes the current [`Snapshot`], asks [`Snapshot::route`] which VirtualService rule applies
//! for this caller, picks a weighted destination, and inserts a [`Target`] into the request's
//! extensions. Every layer below reads its policy from that target, so one request sees one
//! snapshot from start to end even when the configuration changes meanwhile.
//!
//! | snapshot says | result |
//! |---|---|
//! | a rule matched, action forward | `Target` with the picked destination (weights `w / Σw`) |
//! | a rule matched, redirect or direct response | `Target` with the route; the `respond` layer answers |
//! | VirtualServices exist, none matched | [`NoRoute`] error (404 `NR`, as Envoy) |
//! | no VirtualService for the host | the default route: the host itself, all endpoints |
//! | a gateway without a rule for the host | [`NoRoute`] |
//!
//! The layer is always ready: it holds no capacity of its own.
//!
//! # Examples
//! ```
//! use std::sync::Arc;
//! use mesh_core::{config::load_str, snapshot::Snapshot};
//! use mesh_tower::route::{Caller, RouteLayer};
//! let snapshot = Snapshot::build(&load_str("", None).resources)?;
//! let layer = RouteLayer::new(Arc::new(snapshot), Caller::new("default"));
//! # let _ = layer;
//! # Ok::<_, mesh_core::BoxError>(())
//! ```

use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use futures_util::future::{self, Either, Ready};
use mesh_core::{
    BoxError,
    snapshot::{self, Routing, Snapshot},
};
use tower::{Layer, Service};

use crate::{
    error::NoRoute,
    target::{DestinationHeaders, Target},
};

/// Where the route layer gets the current snapshot from.
pub trait SnapshotSource: Send + Sync + 'static {
    /// The snapshot to route this request with.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// True if `snapshot` is the current one. Sources that can tell without taking a
    /// reference (an `ArcSwap`) override it: layers that only need to know whether the
    /// configuration changed then touch no shared counter per request.
    fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(&self.snapshot(), snapshot)
    }
}

impl SnapshotSource for Snapshot {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::new(self.clone())
    }

    fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        // Every copy handed out shares this snapshot's resources.
        std::ptr::eq(self.resources(), snapshot.resources())
    }
}

impl SnapshotSource for Arc<Snapshot> {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.clone()
    }

    fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(self, snapshot)
    }
}

impl SnapshotSource for ArcSwap<Snapshot> {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.load_full()
    }

    fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(&self.load(), snapshot)
    }
}

/// Who is calling: the workload's namespace and labels (for the DNS search path,
/// `sourceLabels` and `sourceNamespace`), and whether it acts as a gateway.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The caller's namespace.
    pub namespace: String,
    /// The caller's labels.
    pub labels: BTreeMap<String, String>,
    /// True for a gateway workload: it routes with the rules of the Gateways whose selector
    /// matches its labels, instead of the `mesh` rules.
    pub gateway: bool,
}

impl Caller {
    /// A meshed workload in `namespace` without labels.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            ..Self::default()
        }
    }

    /// Sets the labels.
    #[must_use]
    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Marks the caller as a gateway.
    #[must_use]
    pub fn gateway(mut self, gateway: bool) -> Self {
        self.gateway = gateway;
        self
    }
}

/// Routes requests with the snapshot from a [`SnapshotSource`].
#[derive(Clone)]
pub struct RouteLayer {
    shared: Arc<Shared>,
}

/// What every clone of a route service reads: one `Arc`, so cloning the stack is cheap.
struct Shared {
    source: Arc<dyn SnapshotSource>,
    caller: Caller,
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLayer")
            .field("caller", &self.shared.caller)
            .finish_non_exhaustive()
    }
}

impl RouteLayer {
    /// Routes with snapshots from `source` on behalf of `caller`.
    pub fn new(source: impl SnapshotSource, caller: Caller) -> Self {
        Self::from_shared(Arc::new(source), caller)
    }

    /// As [`RouteLayer::new`], with a shared source.
    pub fn from_shared(source: Arc<dyn SnapshotSource>, caller: Caller) -> Self {
        Self {
            shared: Arc::new(Shared { source, caller }),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The route service; see the [module docs](self).
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("inner", &self.inner)
            .field("caller", &self.shared.caller)
            .finish_non_exhaustive()
    }
}

// === impl Route ===

impl<S> Route<S> {
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

/// Decides the target of a request: the pure part of the route layer, also used by
/// `meshctl describe`. `draw` picks among weighted destinations.
///
/// # Errors
/// [`NoRoute`] when VirtualServices exist for the host and none matches, or a gateway has no
/// rule for it.
pub fn decide<B>(
    snapshot: &Arc<Snapshot>,
    caller: &Caller,
    req: &http::Request<B>,
    draw: u32,
) -> Result<(Target, Option<DestinationHeaders>), NoRoute> {
    decide_with(snapshot, caller, req, || draw)
}

/// [`decide`], drawing the random number only when a rule has several destinations.
fn decide_with<B>(
    snapshot: &Arc<Snapshot>,
    caller: &Caller,
    req: &http::Request<B>,
    draw: impl FnOnce() -> u32,
) -> Result<(Target, Option<DestinationHeaders>), NoRoute> {
    let info = snapshot::RequestInfo::from_request(req);
    let gateways = if caller.gateway {
        snapshot.gateways_for(&caller.labels)
    } else {
        Vec::new()
    };
    let c = snapshot::Caller {
        namespace: &caller.namespace,
        labels: &caller.labels,
        gateways: &gateways,
    };
    let default_port = if info.scheme == "https" { 443 } else { 80 };
    let port = info.port.unwrap_or(default_port);
    match snapshot.route(&c, &info) {
        Routing::Matched(m) => {
            let route = m.route.clone();
            let (host, subset, dport, headers) = match m.route.action {
                snapshot::Action::Forward(ref destinations) => match m
                    .route
                    .pick(if destinations.len() > 1 { draw() } else { 0 })
                {
                    Some(d) => (
                        d.host.clone(),
                        d.subset.clone(),
                        d.port,
                        (!d.headers.is_empty()).then(|| DestinationHeaders(d.headers.clone())),
                    ),
                    None => {
                        return Err(NoRoute {
                            host: m.host.to_string(),
                        });
                    }
                },
                snapshot::Action::Delegate(_) => {
                    return Err(NoRoute {
                        host: m.host.to_string(),
                    });
                }
                // Redirects and direct responses are answered below; the target names the
                // requested host.
                _ => (m.host.clone(), None, None, None),
            };
            Ok((
                Target {
                    snapshot: snapshot.clone(),
                    route: Some(route),
                    match_index: m.match_index,
                    host,
                    subset,
                    port: dport.unwrap_or(port),
                },
                headers,
            ))
        }
        Routing::Default { host } => Ok((
            Target {
                snapshot: snapshot.clone(),
                route: None,
                match_index: None,
                host,
                subset: None,
                port,
            },
            None,
        )),
        Routing::NoMatch { host, .. } | Routing::NoRoute { host } => Err(NoRoute {
            host: host.to_string(),
        }),
    }
}

impl<S, B> Service<http::Request<B>> for Route<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        futures_util::future::MapErr<S::Future, fn(S::Error) -> BoxError>,
        Ready<Result<S::Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        let snapshot = self.shared.source.snapshot();
        match decide_with(&snapshot, &self.shared.caller, &req, || fastrand::u32(..)) {
            Ok((target, headers)) => {
                // The outbound telemetry layer above reads the decision from its slot.
                if let Some(slot) = req.extensions().get::<crate::telemetry::layer::RouteSlot>() {
                    slot.set(&target);
                }
                req.extensions_mut().insert(target);
                if let Some(h) = headers {
                    req.extensions_mut().insert(h);
                }
                Either::Left(
                    self.inner
                        .call(req)
                        .map_err(Into::into as fn(S::Error) -> BoxError),
                )
            }
            Err(e) => Either::Right(future::ready(Err(e.into()))),
        }
    }
}

#[cfg(test)]
mod tests;
