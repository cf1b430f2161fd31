//! The failures the mesh's layers produce, named after what happened.
//!
//! [`rescue`](crate::rescue) is the one place that turns them into responses, as Envoy's
//! local replies do.

use mesh_core::BoxError;

/// No route matched the request (Envoy `NR`, 404).
#[derive(Debug, thiserror::Error)]
#[error("no route for host {host:?}")]
pub struct NoRoute {
    /// The requested host.
    pub host: String,
}

/// The destination has no endpoint to send to (Envoy `UH`, 503).
#[derive(Debug, thiserror::Error)]
#[error("no healthy upstream for {host}{}", subset.as_ref().map(|s| format!(" subset {s}")).unwrap_or_default())]
pub struct NoHealthyUpstream {
    /// The destination host.
    pub host: String,
    /// The subset, if the route named one.
    pub subset: Option<String>,
}

/// The connection to an endpoint could not be established (Envoy `UF`, 503).
#[derive(Debug, thiserror::Error)]
#[error("upstream connect error to {endpoint}")]
pub struct UpstreamConnectFailure {
    /// The endpoint address.
    pub endpoint: String,
    /// What failed.
    #[source]
    pub source: BoxError,
}

/// The upstream reset or closed the connection before sending a response (Envoy `UC`, 503).
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint} closed the connection before responding")]
pub struct UpstreamReset {
    /// The endpoint address.
    pub endpoint: String,
    /// True when the request was refused before the application saw it (HTTP/2
    /// `REFUSED_STREAM`, or a pooled connection closed before the request was written).
    pub refused: bool,
    /// What happened.
    #[source]
    pub source: BoxError,
}

/// A circuit breaker of the destination's cluster was full (Envoy `UO`, 503): too many active
/// requests, pending requests or outstanding retries, as the DestinationRule's
/// `connectionPool` allows (see [`breaker`](crate::breaker)).
///
/// Never retried: the retry layer classifies it as an
/// [`Outcome::Other`](mesh_core::policy::retry::Outcome::Other), as Envoy does not retry an
/// overflow.
#[derive(Debug, thiserror::Error)]
#[error("upstream overflow: {limit} reached for {cluster}")]
pub struct UpstreamOverflow {
    /// The cluster (`outbound|port|subset|host`, as Envoy names it).
    pub cluster: String,
    /// The limit that was reached.
    pub limit: OverflowLimit,
}

/// Which circuit-breaker limit an [`UpstreamOverflow`] hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverflowLimit {
    /// `http.http2MaxRequests`: active requests (Envoy's `max_requests`).
    MaxRequests,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection (Envoy's
    /// `max_pending_requests`).
    MaxPendingRequests,
    /// `http.maxRetries`: outstanding retries (Envoy's `max_retries`).
    MaxRetries,
}

impl OverflowLimit {
    /// The Istio field that sets the limit.
    pub const fn field(self) -> &'static str {
        match self {
            Self::MaxRequests => "http2MaxRequests",
            Self::MaxPendingRequests => "http1MaxPendingRequests",
            Self::MaxRetries => "maxRetries",
        }
    }
}

impl std::fmt::Display for OverflowLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.field())
    }
}

/// The route's timeout elapsed (Envoy `UT`, 504).
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout")]
pub struct RouteTimeout(pub(crate) ());

/// One try's timeout elapsed (Envoy `UT`, 504, when no retry is left).
#[derive(Debug, thiserror::Error)]
#[error("upstream per-try timeout")]
pub struct PerTryTimeout(pub(crate) ());

/// Returns the first error in `err`'s source chain that is a `T`.
pub fn cause_ref<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}
