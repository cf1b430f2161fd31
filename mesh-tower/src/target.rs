//! Where a request is going: what the route layer decided, for the layers below it.

use std::sync::Arc;

use mesh_core::snapshot::{Endpoint, Route, Snapshot};

/// The route layer's decision, in the request's extensions.
///
/// Every layer below the route layer reads its per-request policy from here (fault, timeout,
/// retries from [`Target::route`]; endpoints from [`Target::snapshot`]), so one snapshot is
/// used for the whole request even if the configuration changes meanwhile.
#[derive(Clone, Debug)]
pub struct Target {
    /// The snapshot the decision was made with.
    pub snapshot: Arc<Snapshot>,
    /// The VirtualService rule that matched; `None` for the default route.
    pub route: Option<Arc<Route>>,
    /// The match entry of the rule that matched.
    pub match_index: Option<usize>,
    /// The destination host (FQDN, or the requested name when the registry does not know it);
    /// shared with the snapshot, so copying a `Target` copies no string.
    pub host: Arc<str>,
    /// The destination subset.
    pub subset: Option<Arc<str>>,
    /// The service port.
    pub port: u16,
}

impl Target {
    /// The route's policy accessor, when a rule matched.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_deref()
    }

    /// Envoy's name for the cluster this target sends to (see [`cluster_name`]).
    pub fn cluster_name(&self) -> String {
        cluster_name(self.port, self.subset.as_deref(), &self.host)
    }
}

/// Envoy's (and Istio's) name for an outbound cluster, as in access logs, traces and
/// `/clusters`: `outbound|9080|v1|reviews.default.svc.cluster.local` (the subset empty when
/// there is none).
///
/// ```
/// use mesh_tower::target::cluster_name;
/// assert_eq!(cluster_name(9080, Some("v1"), "reviews.default.svc.cluster.local"),
///            "outbound|9080|v1|reviews.default.svc.cluster.local");
/// assert_eq!(cluster_name(9080, None, "reviews"), "outbound|9080||reviews");
/// ```
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    // One allocation of the exact size (a sampled span and an access-log line each name it).
    let mut port_text = itoa::Buffer::new();
    [
        "outbound|",
        port_text.format(port),
        "|",
        subset.unwrap_or_default(),
        "|",
        host,
    ]
    .concat()
}

/// The endpoint a request was sent to, in the response's extensions (put there by the balancer).
#[derive(Clone, Debug)]
pub struct PickedEndpoint {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// The address connected to (`127.0.0.1:9080`).
    pub authority: http::uri::Authority,
}

/// Endpoints already tried for this request, shared by every attempt of it: the retry layer
/// puts one into each attempt's extensions, the balancer records its pick there and prefers
/// endpoints not tried yet (Istio's `retryIgnorePreviousHosts`, on by default).
///
/// The first two entries are stored inline: recording a pick copies no string.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(pub Arc<std::sync::Mutex<TriedList>>);

/// The authorities in a [`TriedEndpoints`], in the order they were tried.
pub type TriedList = smallvec::SmallVec<[http::uri::Authority; 2]>;

impl TriedEndpoints {
    /// Records an endpoint (its `address:port`) as tried; text that is not a valid authority
    /// is ignored.
    pub fn record(&self, authority: &str) {
        if let Ok(a) = http::uri::Authority::try_from(authority) {
            self.record_authority(&a);
        }
    }

    /// Records an endpoint as tried.
    pub fn record_authority(&self, authority: &http::uri::Authority) {
        if let Ok(mut v) = self.0.lock() {
            v.push(authority.clone());
        }
    }

    /// True if the endpoint was tried already.
    pub fn contains(&self, authority: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|v| v.iter().any(|a| a == authority))
    }

    /// The endpoints tried so far.
    pub fn snapshot(&self) -> TriedList {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// How many tries were recorded.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |v| v.len())
    }

    /// True if nothing was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Header operations of the weighted destination the route layer picked (Istio's
/// per-destination `headers`), in the request's extensions when the destination has any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationHeaders(pub mesh_core::snapshot::route::HeaderOps);

/// Tells the balancer that a timeout cut the request, so outlier detection counts the cut
/// as the endpoint's timeout (Envoy's `LocalOriginTimeout`, a 504 for `consecutive5xxErrors`
/// and `consecutiveGatewayErrors`), as Envoy does for route and per-try timeouts.
///
/// The route timeout layer and the retry layer's per-try timeout put one in the request's
/// extensions when they time a request, and fire it when the time runs out, before the
/// request's future is dropped. A per-try signal also reports its route's.
#[derive(Clone, Debug, Default)]
pub struct TimeoutSignal {
    own: Arc<std::sync::atomic::AtomicBool>,
    outer: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl TimeoutSignal {
    /// A signal that also reports `outer` (the route's, for a per-try signal).
    pub fn within(outer: Option<&TimeoutSignal>) -> Self {
        Self {
            own: Arc::default(),
            outer: outer.map(|o| o.own.clone()),
        }
    }

    /// The timeout ran out.
    pub fn fire(&self) {
        self.own.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once this signal or its outer one fired.
    pub fn fired(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.own.load(Acquire) || self.outer.as_ref().is_some_and(|o| o.load(Acquire))
    }
}
