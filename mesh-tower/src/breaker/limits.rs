//! The limits of one cluster, from a DestinationRule's `connectionPool`.

use mesh_core::{
    config::networking::destination_rule::ConnectionPoolSettings, snapshot::DestinationPolicy,
};

/// The circuit-breaker limits of one cluster (Envoy's `circuit_breakers.thresholds`), from
/// the request side of an Istio `connectionPool`. `None` is unlimited (Istio's default:
/// every threshold at 2³²−1).
///
/// # Examples
/// ```
/// use mesh_core::config::networking::destination_rule::{
///     ConnectionPoolSettings, HttpSettings, TcpSettings,
/// };
/// use mesh_tower::breaker::PoolLimits;
///
/// let pool = ConnectionPoolSettings {
///     tcp: Some(TcpSettings { max_connections: Some(1), ..Default::default() }),
///     http: Some(HttpSettings { http1_max_pending_requests: Some(1), ..Default::default() }),
/// };
/// let limits = PoolLimits::from_istio(&pool);
/// assert_eq!(limits.get_max_connections(), Some(1));
/// assert_eq!(limits.get_max_pending_requests(), Some(1));
/// assert_eq!(limits.get_max_requests(), None);
/// assert!(PoolLimits::from_istio(&ConnectionPoolSettings::default()).is_unlimited());
/// ```
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolLimits {
    max_requests: Option<u32>,
    max_connections: Option<u32>,
    max_pending_requests: Option<u32>,
    max_retries: Option<u32>,
}

impl PoolLimits {
    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        max_requests: None,
        max_connections: None,
        max_pending_requests: None,
        max_retries: None,
    };

    /// The limits an Istio `connectionPool` sets: `http.http2MaxRequests`,
    /// `tcp.maxConnections`, `http.http1MaxPendingRequests`, `http.maxRetries`. Zero or
    /// negative values are unset, as Istio only sets a threshold for a positive value.
    pub fn from_istio(pool: &ConnectionPoolSettings) -> Self {
        let positive = |v: Option<i32>| v.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0);
        let http = pool.http.as_ref();
        Self {
            max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_connections: positive(pool.tcp.as_ref().and_then(|t| t.max_connections)),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            max_retries: positive(http.and_then(|h| h.max_retries)),
        }
    }

    /// At most `max` active requests (`http.http2MaxRequests`); beyond, requests fail at
    /// once. The last call wins.
    pub fn max_requests(mut self, max: u32) -> Self {
        self.max_requests = Some(max);
        self
    }

    /// At most `max` HTTP/1.1 requests in flight, one per connection (`tcp.maxConnections`);
    /// beyond, requests wait as pending.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// At most `max` requests waiting for a connection (`http.http1MaxPendingRequests`);
    /// beyond, requests fail at once.
    pub fn max_pending_requests(mut self, max: u32) -> Self {
        self.max_pending_requests = Some(max);
        self
    }

    /// At most `max` retries outstanding (`http.maxRetries`); a retry beyond fails at once.
    pub fn max_retries(mut self, max: u32) -> Self {
        self.max_retries = Some(max);
        self
    }

    /// The limit on active requests.
    pub fn get_max_requests(&self) -> Option<u32> {
        self.max_requests
    }

    /// The limit on HTTP/1.1 requests in flight (connections).
    pub fn get_max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The limit on pending requests.
    pub fn get_max_pending_requests(&self) -> Option<u32> {
        self.max_pending_requests
    }

    /// The limit on outstanding retries.
    pub fn get_max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    /// True if nothing is limited: requests pass through without counting.
    pub fn is_unlimited(&self) -> bool {
        // Pending requests exist only when connections are limited.
        self.max_requests.is_none() && self.max_connections.is_none() && self.max_retries.is_none()
    }
}

/// The `connectionPool` settings that apply to traffic for `subset` on service port `port`,
/// merged as Istio merges a DestinationRule (as
/// [`load_balancer_settings`](mesh_core::policy::balance::load_balancer_settings) does for
/// `loadBalancer`):
///
/// 1. the rule's `trafficPolicy.connectionPool`, replaced by the rule's `portLevelSettings`
///    entry for `port` if there is one (an entry without `connectionPool` means no limits);
/// 2. the subset's `trafficPolicy.connectionPool`, if set, replaces that (as a whole);
/// 3. the subset's `portLevelSettings` entry for `port`, if any, replaces both.
///
/// A subset's policy applies only when the route names the subset (Istio).
pub fn connection_pool_settings<'a>(
    policy: &'a DestinationPolicy,
    subset: Option<&str>,
    port: u16,
) -> Option<&'a ConnectionPoolSettings> {
    mesh_core::policy::traffic_setting(
        policy,
        subset,
        port,
        |tp| tp.connection_pool.as_ref(),
        |p| p.connection_pool.as_ref(),
    )
}
