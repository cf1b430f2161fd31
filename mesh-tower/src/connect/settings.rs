//! Connection settings of one destination, from its DestinationRule's `connectionPool`.

use std::{num::NonZeroU32, time::Duration};

use mesh_core::config::networking::destination_rule::ConnectionPoolSettings;

/// What the operating system uses for the keep-alive idle time when `tcpKeepalive` is set
/// without a `time` (Linux's `tcp_keepalive_time`, which Istio documents as the default).
pub const DEFAULT_KEEPALIVE_TIME: Duration = Duration::from_secs(7200);

/// How the connections to one destination are made and kept: the connection part of a
/// DestinationRule's `connectionPool` (the limits on requests are the
/// [`breaker`](crate::breaker)'s).
///
/// [`CircuitBreakerLayer::from_target`](crate::breaker::CircuitBreakerLayer::from_target)
/// puts the settings of the request's destination into the request's extensions when its
/// DestinationRule has any; [`Connect`](super::Connect) then sends the request over pools
/// built for those settings (one set of pools per distinct settings, shared by every
/// destination that has them). A request without them uses the default pools.
///
/// # Examples
/// ```
/// use mesh_core::config::networking::destination_rule::{ConnectionPoolSettings, TcpSettings};
/// use mesh_tower::connect::ConnectionSettings;
/// use std::time::Duration;
///
/// let pool = ConnectionPoolSettings {
///     tcp: Some(TcpSettings {
///         connect_timeout: Some(Duration::from_millis(250).into()),
///         ..Default::default()
///     }),
///     http: None,
/// };
/// let settings = ConnectionSettings::from_istio(&pool).expect("sets something");
/// assert_eq!(settings.get_connect_timeout(), Some(Duration::from_millis(250)));
/// // A pool with only limits on requests changes nothing in the connections.
/// assert_eq!(ConnectionSettings::from_istio(&ConnectionPoolSettings::default()), None);
/// ```
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionSettings {
    connect_timeout: Option<Duration>,
    keepalive: Option<TcpKeepalive>,
    idle_timeout: Option<Option<Duration>>,
    max_requests_per_connection: Option<NonZeroU32>,
    max_connection_duration: Option<Duration>,
    max_concurrent_streams: Option<u32>,
}

/// TCP keep-alive probes (`tcp.tcpKeepalive`); unset fields keep the operating system's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
}

// === impl ConnectionSettings ===

impl ConnectionSettings {
    /// Settings that change nothing (the connector's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// The connection settings in an Istio `connectionPool`, or `None` if it sets none of
    /// them (only limits on requests, or nothing): such destinations use the default pools.
    ///
    /// | field | effect |
    /// |---|---|
    /// | `tcp.connectTimeout` | connect (and TLS handshake) timeout |
    /// | `tcp.tcpKeepalive` | `SO_KEEPALIVE` with `time`, `interval`, `probes` |
    /// | `http.idleTimeout`, else `tcp.idleTimeout` | how long an unused pooled connection is kept; `0s` keeps it |
    /// | `http.maxRequestsPerConnection` | HTTP/1.1 connections carry at most this many requests (`1`: `Connection: close` on every request) |
    /// | `tcp.maxConnectionDuration` | an HTTP/1.1 connection is closed when idle after this long |
    /// | `http.maxConcurrentStreams` | HTTP/2: advertised, and the initial limit on streams to the server |
    ///
    /// Zero or negative counts and zero durations mean "unset", as in Istio.
    pub fn from_istio(pool: &ConnectionPoolSettings) -> Option<Self> {
        let mut s = Self::default();
        if let Some(tcp) = &pool.tcp {
            s.connect_timeout = tcp
                .connect_timeout
                .map(Duration::from)
                .filter(|d| !d.is_zero());
            s.keepalive = tcp.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
                time: k.time.map(Duration::from).filter(|d| !d.is_zero()),
                interval: k.interval.map(Duration::from).filter(|d| !d.is_zero()),
                probes: k.probes.filter(|p| *p > 0),
            });
            s.max_connection_duration = tcp
                .max_connection_duration
                .map(Duration::from)
                .filter(|d| !d.is_zero());
            s.idle_timeout = tcp.idle_timeout.map(|d| Some(Duration::from(d)));
        }
        if let Some(http) = &pool.http {
            if let Some(idle) = http.idle_timeout {
                s.idle_timeout = Some(Some(Duration::from(idle)));
            }
            s.max_requests_per_connection = http
                .max_requests_per_connection
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new);
            s.max_concurrent_streams = http
                .max_concurrent_streams
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0);
        }
        // An idle timeout of zero disables it (Envoy), keeping idle connections.
        s.idle_timeout = s.idle_timeout.map(|d| d.filter(|d| !d.is_zero()));
        (s != Self::default()).then_some(s)
    }

    /// The connect timeout; the last call wins.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// TCP keep-alive.
    pub fn keepalive(mut self, keepalive: TcpKeepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// How long an unused pooled connection is kept; `None` keeps it until the server
    /// closes it.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Requests per HTTP/1.1 connection.
    pub fn max_requests_per_connection(mut self, max: NonZeroU32) -> Self {
        self.max_requests_per_connection = Some(max);
        self
    }

    /// The age after which an HTTP/1.1 connection is closed once idle.
    pub fn max_connection_duration(mut self, max: Duration) -> Self {
        self.max_connection_duration = Some(max);
        self
    }

    /// HTTP/2 concurrent streams.
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.max_concurrent_streams = Some(max);
        self
    }

    /// The connect timeout, if set.
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// TCP keep-alive, if set.
    pub fn get_keepalive(&self) -> Option<TcpKeepalive> {
        self.keepalive
    }

    /// The pooled idle timeout, if set (`Some(None)`: disabled).
    pub fn get_idle_timeout(&self) -> Option<Option<Duration>> {
        self.idle_timeout
    }

    /// Requests per HTTP/1.1 connection, if limited.
    pub fn get_max_requests_per_connection(&self) -> Option<NonZeroU32> {
        self.max_requests_per_connection
    }

    /// The maximum connection age, if set.
    pub fn get_max_connection_duration(&self) -> Option<Duration> {
        self.max_connection_duration
    }

    /// HTTP/2 concurrent streams, if set.
    pub fn get_max_concurrent_streams(&self) -> Option<u32> {
        self.max_concurrent_streams
    }

    /// True if every request gets its own HTTP/1.1 connection.
    pub(super) fn one_request_per_connection(&self) -> bool {
        self.max_requests_per_connection
            .is_some_and(|n| n.get() == 1)
    }
}
