//! The validated retry policy: Istio's `HTTPRetry` with Envoy's `retry_on` vocabulary, and
//! the pure parts of retrying that `mesh_tower::retry` builds on: the decision whether an
//! [`Outcome`] is retriable ([`RetryPolicy::retriable`]), the back-off schedule
//! ([`backoff_ceiling`], [`jittered`]) and the retry budget arithmetic ([`RetryBudget`]).

use std::{fmt, time::Duration};

use super::fault::PerMillion;

/// Base interval of the fully jittered exponential back-off (Envoy's default).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Retries in the mesh's default policy (Istio's `default_http_retry_policy`).
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// One `retry_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RetryCondition {
    /// Any 5xx, or no response (connect failure, reset, refused stream).
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// The upstream reset the connection or stream, or never answered.
    Reset,
    /// Reset before any request byte was sent.
    ResetBeforeRequest,
    /// The connection could not be established.
    ConnectFailure,
    /// Envoy rate-limited (`x-envoy-ratelimited`).
    EnvoyRateLimited,
    /// 409.
    Retriable4xx,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The policy's status codes.
    RetriableStatusCodes,
    /// Retriable headers (`retriable-headers`).
    RetriableHeaders,
    /// HTTP/3 connect failure after the request.
    Http3PostConnectFailure,
    /// gRPC CANCELLED (1).
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC INTERNAL (13).
    Internal,
    /// gRPC RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// gRPC UNAVAILABLE (14).
    Unavailable,
}

const NAMES: &[(&str, RetryCondition)] = &[
    ("5xx", RetryCondition::FiveXx),
    ("gateway-error", RetryCondition::GatewayError),
    ("reset", RetryCondition::Reset),
    ("reset-before-request", RetryCondition::ResetBeforeRequest),
    ("connect-failure", RetryCondition::ConnectFailure),
    ("envoy-ratelimited", RetryCondition::EnvoyRateLimited),
    ("retriable-4xx", RetryCondition::Retriable4xx),
    ("refused-stream", RetryCondition::RefusedStream),
    (
        "retriable-status-codes",
        RetryCondition::RetriableStatusCodes,
    ),
    ("retriable-headers", RetryCondition::RetriableHeaders),
    (
        "http3-post-connect-failure",
        RetryCondition::Http3PostConnectFailure,
    ),
    ("cancelled", RetryCondition::Cancelled),
    ("deadline-exceeded", RetryCondition::DeadlineExceeded),
    ("internal", RetryCondition::Internal),
    ("resource-exhausted", RetryCondition::ResourceExhausted),
    ("unavailable", RetryCondition::Unavailable),
];

impl RetryCondition {
    /// Envoy's name for the condition.
    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(n, _)| n)
    }

    /// Looks a condition up by Envoy's name.
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }
}

/// A `retry_on` item is neither an Envoy condition nor an HTTP status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown retryOn condition {0:?} (expected e.g. 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status code)"
)]
pub struct InvalidRetryOn(pub String);

/// The parsed `retryOn` list: conditions and raw status codes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryOn {
    conditions: Vec<RetryCondition>,
    status_codes: Vec<u16>,
}

impl RetryOn {
    /// Parses Istio's comma-separated list (`"5xx,reset,503"`).
    ///
    /// # Errors
    /// An item that is neither a condition nor a status code 100–599.
    ///
    /// # Examples
    /// ```
    /// use mesh_core::policy::retry::{RetryCondition, RetryOn};
    /// let on = RetryOn::parse("gateway-error, 409")?;
    /// assert!(on.has(RetryCondition::GatewayError));
    /// assert!(on.status_codes().contains(&409));
    /// # Ok::<_, mesh_core::policy::retry::InvalidRetryOn>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self, InvalidRetryOn> {
        let mut on = Self::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Some(c) = RetryCondition::from_name(item) {
                if !on.conditions.contains(&c) {
                    on.conditions.push(c);
                }
            } else {
                match item.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => {
                        if !on.status_codes.contains(&code) {
                            on.status_codes.push(code);
                        }
                    }
                    _ => return Err(InvalidRetryOn(item.to_owned())),
                }
            }
        }
        on.conditions.sort();
        on.status_codes.sort_unstable();
        Ok(on)
    }

    /// True if the condition is in the list.
    pub fn has(&self, c: RetryCondition) -> bool {
        self.conditions.contains(&c)
    }

    /// The conditions.
    pub fn conditions(&self) -> &[RetryCondition] {
        &self.conditions
    }

    /// The raw status codes (retried as if `retriable-status-codes` listed them).
    pub fn status_codes(&self) -> &[u16] {
        &self.status_codes
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .conditions
            .iter()
            .map(|c| c.as_str().to_owned())
            .chain(self.status_codes.iter().map(u16::to_string))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// Which retry policy applies to a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RetryPolicy {
    /// No `retries` block: the mesh's default applies, [`DEFAULT_ATTEMPTS`] retries of what
    /// [`mesh_default_retriable`] accepts. It differs from Istio's default: only failures that
    /// never reached the application, and 503 only for idempotent methods.
    MeshDefault,
    /// `retries.attempts: 0`: no retries.
    Disabled,
    /// An explicit policy, obeyed as written.
    Explicit(ExplicitRetry),
}

/// An explicit `retries` block.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExplicitRetry {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try, the first included.
    pub per_try_timeout: Option<Duration>,
    /// Conditions; Istio's default list when `retryOn` is unset.
    pub retry_on: RetryOn,
    /// Base back-off interval.
    pub backoff: Duration,
    /// Prefer endpoints not tried yet (default true).
    pub retry_ignore_previous_hosts: bool,
}

/// Istio's `retryOn` when a `retries` block does not set one.
pub const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";

impl RetryPolicy {
    /// Builds the policy from Istio's `HTTPRetry` (`None` = no block).
    ///
    /// # Errors
    /// An unknown `retryOn` item (validation reports it before a snapshot is built).
    pub fn from_config(
        cfg: Option<&crate::config::networking::virtual_service::HttpRetry>,
    ) -> Result<Self, InvalidRetryOn> {
        let Some(cfg) = cfg else {
            return Ok(Self::MeshDefault);
        };
        let attempts = u32::try_from(cfg.attempts.unwrap_or(0)).unwrap_or(0);
        if attempts == 0 {
            return Ok(Self::Disabled);
        }
        let retry_on = RetryOn::parse(cfg.retry_on.as_deref().unwrap_or(ISTIO_DEFAULT_RETRY_ON))?;
        Ok(Self::Explicit(ExplicitRetry {
            attempts,
            per_try_timeout: cfg.per_try_timeout.map(|d| d.as_std()),
            retry_on,
            backoff: cfg.backoff.map_or(DEFAULT_BACKOFF, |d| d.as_std()),
            retry_ignore_previous_hosts: cfg.retry_ignore_previous_hosts.unwrap_or(true),
        }))
    }
}

// === the decision: is this outcome retriable ===

/// What one try ended with, as the retry decision sees it.
///
/// The retry layer builds it from the inner service's result: a response, or one of the
/// failures it recognizes in the error's source chain.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// A response arrived (its headers; the body may still be streaming).
    Response {
        /// The status code.
        status: http::StatusCode,
        /// The response headers (`grpc-status`, `x-envoy-ratelimited`).
        headers: &'a http::HeaderMap,
    },
    /// The connection to the endpoint could not be established: the request never left.
    ConnectFailure,
    /// The upstream reset the stream or closed the connection before responding.
    Reset {
        /// True when the request was refused before the application saw it (HTTP/2
        /// `REFUSED_STREAM`, or a pooled connection closed before the request was written).
        refused: bool,
    },
    /// The per-try timeout elapsed before a response arrived.
    PerTryTimeout,
    /// Any other failure: never retried.
    Other,
}

/// The `grpc-status` of a response's headers (not trailers, as Envoy reads it for retries).
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

const fn grpc_condition(code: u32) -> Option<RetryCondition> {
    match code {
        1 => Some(RetryCondition::Cancelled),
        4 => Some(RetryCondition::DeadlineExceeded),
        8 => Some(RetryCondition::ResourceExhausted),
        13 => Some(RetryCondition::Internal),
        14 => Some(RetryCondition::Unavailable),
        _ => None,
    }
}

/// The header an upstream Envoy sets on responses it rate limited. Header names are
/// constants: a `&str` name is parsed and validated on every lookup.
const ENVOY_RATELIMITED: http::HeaderName = http::HeaderName::from_static("x-envoy-ratelimited");

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl RetryOn {
    /// True if `outcome` is retriable under these conditions, as Envoy's router decides
    /// (`RetryStateImpl::wouldRetryFromHeaders` / `wouldRetryFromReset`):
    ///
    /// | outcome | retried by |
    /// |---|---|
    /// | response with `x-envoy-ratelimited` | `envoy-ratelimited` only (nothing else looks further) |
    /// | any 5xx | `5xx` |
    /// | 502, 503, 504 | `gateway-error` |
    /// | 409 | `retriable-4xx` |
    /// | a listed status code | the codes (`retriable-status-codes`, `503`, …) |
    /// | `grpc-status` 1, 4, 8, 13, 14 in the response *headers* | `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable` |
    /// | connect failure | `connect-failure`, `reset-before-request`, `reset`, `5xx`, `gateway-error` |
    /// | refused stream | `refused-stream`, `reset-before-request`, `reset`, `5xx`, `gateway-error` |
    /// | other reset | `reset`, `5xx`, `gateway-error` |
    /// | per-try timeout | `reset`, `5xx`, `gateway-error` (it counts as a 504) |
    /// | any other error | nothing |
    ///
    /// `retriable-headers` and `http3-post-connect-failure` never match: Istio gives no way
    /// to configure the headers, and the mesh does not speak HTTP/3.
    ///
    /// # Examples
    /// ```
    /// use mesh_core::policy::retry::{Outcome, RetryOn};
    /// let on = RetryOn::parse("gateway-error,409")?;
    /// let headers = http::HeaderMap::new();
    /// let status = |code| Outcome::Response { status: http::StatusCode::from_u16(code).unwrap(), headers: &headers };
    /// assert!(on.matches(&status(503)));
    /// assert!(on.matches(&status(409)));
    /// assert!(!on.matches(&status(500)));
    /// assert!(on.matches(&Outcome::PerTryTimeout));
    /// # Ok::<_, mesh_core::policy::retry::InvalidRetryOn>(())
    /// ```
    pub fn matches(&self, outcome: &Outcome<'_>) -> bool {
        use RetryCondition as C;
        let any_reset = self.has(C::Reset) || self.has(C::FiveXx) || self.has(C::GatewayError);
        match *outcome {
            Outcome::Response { status, headers } => {
                if headers.contains_key(&ENVOY_RATELIMITED) {
                    return self.has(C::EnvoyRateLimited);
                }
                let code = status.as_u16();
                (self.has(C::FiveXx) && status.is_server_error())
                    || (self.has(C::GatewayError) && matches!(code, 502..=504))
                    || (self.has(C::Retriable4xx) && code == 409)
                    || self.status_codes.contains(&code)
                    || grpc_status(headers)
                        .and_then(grpc_condition)
                        .is_some_and(|c| self.has(c))
            }
            Outcome::ConnectFailure => {
                any_reset || self.has(C::ConnectFailure) || self.has(C::ResetBeforeRequest)
            }
            Outcome::Reset { refused: true } => {
                any_reset || self.has(C::RefusedStream) || self.has(C::ResetBeforeRequest)
            }
            Outcome::Reset { refused: false } | Outcome::PerTryTimeout => any_reset,
            Outcome::Other => false,
        }
    }
}

/// True if the mesh's default policy retries `outcome` of a `method` request: a failure
/// where the request never reached the application (connect failure, refused stream), or a
/// 503 response to an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
///
/// Istio's default (`connect-failure,refused-stream,unavailable,cancelled,
/// retriable-status-codes` with 503) retries a 503 even for POST, which may run a
/// non-idempotent operation twice; this default does not, and it does not retry gRPC
/// `UNAVAILABLE`/`CANCELLED` statuses either (a gRPC call is a POST that reached the
/// application). An explicit `retries` block brings Istio's behaviour back.
///
/// # Examples
/// ```
/// use mesh_core::policy::retry::{Outcome, mesh_default_retriable};
/// let headers = http::HeaderMap::new();
/// let unavailable = Outcome::Response { status: http::StatusCode::SERVICE_UNAVAILABLE, headers: &headers };
/// assert!(mesh_default_retriable(&http::Method::GET, &unavailable));
/// assert!(!mesh_default_retriable(&http::Method::POST, &unavailable));
/// assert!(mesh_default_retriable(&http::Method::POST, &Outcome::ConnectFailure));
/// ```
pub fn mesh_default_retriable(method: &http::Method, outcome: &Outcome<'_>) -> bool {
    match *outcome {
        Outcome::ConnectFailure | Outcome::Reset { refused: true } => true,
        Outcome::Response { status, headers } => {
            status == http::StatusCode::SERVICE_UNAVAILABLE
                && method.is_idempotent()
                && !headers.contains_key(&ENVOY_RATELIMITED)
        }
        Outcome::Reset { refused: false } | Outcome::PerTryTimeout | Outcome::Other => false,
    }
}

impl ExplicitRetry {
    /// True if `outcome` is retriable under this policy's `retryOn` (see [`RetryOn::matches`]).
    pub fn retriable(&self, outcome: &Outcome<'_>) -> bool {
        self.retry_on.matches(outcome)
    }
}

impl RetryPolicy {
    /// Retries allowed after the first try: [`DEFAULT_ATTEMPTS`] for the mesh default, 0 when
    /// disabled, `attempts` when explicit.
    pub fn max_retries(&self) -> u32 {
        match self {
            Self::MeshDefault => DEFAULT_ATTEMPTS,
            Self::Disabled => 0,
            Self::Explicit(p) => p.attempts,
        }
    }

    /// The timeout of each try, if any (only explicit policies set one).
    pub fn per_try_timeout(&self) -> Option<Duration> {
        match self {
            Self::Explicit(p) => p.per_try_timeout,
            Self::MeshDefault | Self::Disabled => None,
        }
    }

    /// The back-off base interval ([`DEFAULT_BACKOFF`] unless the policy sets one).
    pub fn backoff(&self) -> Duration {
        match self {
            Self::Explicit(p) => p.backoff,
            Self::MeshDefault | Self::Disabled => DEFAULT_BACKOFF,
        }
    }

    /// True if retries should prefer endpoints not tried yet (Istio's
    /// `retryIgnorePreviousHosts`, true unless an explicit policy turns it off).
    pub fn ignore_previous_hosts(&self) -> bool {
        match self {
            Self::Explicit(p) => p.retry_ignore_previous_hosts,
            Self::MeshDefault | Self::Disabled => true,
        }
    }

    /// True if the policy retries `outcome` of a `method` request (attempts and budget
    /// aside): [`mesh_default_retriable`] for the mesh default, [`RetryOn::matches`] for an
    /// explicit policy, never when disabled.
    ///
    /// # Examples
    /// ```
    /// use mesh_core::policy::retry::{Outcome, RetryPolicy};
    /// let get = http::Method::GET;
    /// assert!(RetryPolicy::MeshDefault.retriable(&get, &Outcome::Reset { refused: true }));
    /// assert!(!RetryPolicy::MeshDefault.retriable(&get, &Outcome::Reset { refused: false }));
    /// assert!(!RetryPolicy::Disabled.retriable(&get, &Outcome::ConnectFailure));
    /// ```
    pub fn retriable(&self, method: &http::Method, outcome: &Outcome<'_>) -> bool {
        match self {
            Self::MeshDefault => mesh_default_retriable(method, outcome),
            Self::Disabled => false,
            Self::Explicit(p) => p.retriable(outcome),
        }
    }
}

// === back-off ===

/// The cap of the back-off, in multiples of the base interval (Envoy: `max = 10 × base`).
pub const BACKOFF_CAP_FACTOR: u32 = 10;

/// The exclusive upper bound of the sleep before retry `n` (1-based): Envoy's fully jittered
/// exponential back-off draws uniformly from `[0, min((2^n − 1) × base, 10 × base))`.
///
/// With the 25 ms default: 25 ms, 75 ms, 175 ms, then 250 ms for every later retry.
/// `n = 0` (no retry yet) gives zero.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mesh_core::policy::retry::{DEFAULT_BACKOFF, backoff_ceiling};
/// assert_eq!(backoff_ceiling(1, DEFAULT_BACKOFF), Duration::from_millis(25));
/// assert_eq!(backoff_ceiling(3, DEFAULT_BACKOFF), Duration::from_millis(175));
/// assert_eq!(backoff_ceiling(4, DEFAULT_BACKOFF), Duration::from_millis(250));
/// ```
pub fn backoff_ceiling(n: u32, base: Duration) -> Duration {
    let factor = if n >= 4 {
        BACKOFF_CAP_FACTOR
    } else {
        ((1u32 << n) - 1).min(BACKOFF_CAP_FACTOR)
    };
    base.saturating_mul(factor)
}

/// Picks the sleep below `ceiling` for a uniformly random `draw` in `[0, 1)` (the caller
/// supplies the randomness, so this stays pure and testable).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mesh_core::policy::retry::jittered;
/// assert_eq!(jittered(Duration::from_millis(100), 0.5), Duration::from_millis(50));
/// assert!(jittered(Duration::from_millis(100), 0.999_999_999) < Duration::from_millis(100));
/// ```
pub fn jittered(ceiling: Duration, draw: f64) -> Duration {
    let draw = if draw.is_nan() {
        0.0
    } else {
        draw.clamp(0.0, 1.0)
    };
    // Whole milliseconds, as Envoy's back-off: tokio's timer rounds a deadline up to the
    // next millisecond anyway, so a finer draw could sleep as long as the ceiling.
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    // `as` saturates; `min` keeps the bound exclusive when `draw` rounds up to 1.
    let pick = ((millis as f64) * draw) as u64;
    Duration::from_millis(pick.min(millis.saturating_sub(1)))
}

// === retry budget ===

/// Share of active requests that may be retries when no DestinationRule sets one: 20 %.
pub const DEFAULT_BUDGET_PERCENT: PerMillion = PerMillion(200_000);
/// Retries always allowed in flight regardless of the share: 3.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

/// The limits of a destination's retry budget (Istio's `trafficPolicy.retryBudget`, Envoy's
/// `retry_budget`): a retry may start only while the retries in flight stay below
/// `max(min_retry_concurrency, percent × active requests)`.
///
/// A budget adapts to the load where a fixed `max_retries` cannot: when an upstream fails
/// every request, at most a fifth more traffic reaches it (plus a small floor so a lightly
/// loaded client can still retry), instead of `attempts` times more.
///
/// # Examples
/// ```
/// use mesh_core::policy::retry::RetryBudget;
/// let budget = RetryBudget::default(); // 20 %, at least 3
/// assert_eq!(budget.max_active_retries(10), 3);
/// assert_eq!(budget.max_active_retries(100), 20);
/// assert!(budget.allows(10, 2));
/// assert!(!budget.allows(10, 3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryBudget {
    /// Share of the active requests that may be retries in flight.
    pub percent: PerMillion,
    /// Retries allowed in flight whatever the share.
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: DEFAULT_BUDGET_PERCENT,
            min_retry_concurrency: DEFAULT_MIN_RETRY_CONCURRENCY,
        }
    }
}

impl RetryBudget {
    /// Builds the limits from a DestinationRule's `retryBudget` (`None` = no block); each
    /// unset field takes Istio's default.
    pub fn from_config(
        cfg: Option<&crate::config::networking::destination_rule::RetryBudget>,
    ) -> Self {
        let Some(cfg) = cfg else {
            return Self::default();
        };
        Self {
            percent: cfg.percent.map_or(DEFAULT_BUDGET_PERCENT, |p| {
                PerMillion::from_percent(p.value)
            }),
            min_retry_concurrency: cfg
                .min_retry_concurrency
                .unwrap_or(DEFAULT_MIN_RETRY_CONCURRENCY),
        }
    }

    /// The most retries that may be in flight while `active_requests` requests are.
    pub fn max_active_retries(&self, active_requests: u64) -> u64 {
        let share = u128::from(active_requests) * u128::from(self.percent.0)
            / u128::from(PerMillion::ALL.0);
        u64::try_from(share)
            .unwrap_or(u64::MAX)
            .max(u64::from(self.min_retry_concurrency))
    }

    /// True if one more retry may start while `active_requests` requests and
    /// `active_retries` retries are in flight.
    pub fn allows(&self, active_requests: u64, active_retries: u64) -> bool {
        active_retries < self.max_active_retries(active_requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: u16, headers: &http::HeaderMap) -> Outcome<'_> {
        Outcome::Response {
            status: http::StatusCode::from_u16(code).unwrap(),
            headers,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn retry_on_table() {
        let none = http::HeaderMap::new();
        let unavailable = headers(&[("grpc-status", "14")]);
        let cancelled = headers(&[("grpc-status", " 1 ")]);
        let ratelimited = headers(&[("x-envoy-ratelimited", "true")]);
        let internal = headers(&[("grpc-status", "13")]);
        let deadline = headers(&[("grpc-status", "4")]);
        let exhausted = headers(&[("grpc-status", "8")]);
        let garbage = headers(&[("grpc-status", "x")]);
        let refused = Outcome::Reset { refused: true };
        let reset = Outcome::Reset { refused: false };
        let cf = Outcome::ConnectFailure;
        let ptt = Outcome::PerTryTimeout;
        let cases: &[(&str, Outcome<'_>, bool)] = &[
            ("5xx", response(500, &none), true),
            ("5xx", response(503, &none), true),
            ("5xx", response(599, &none), true),
            ("5xx", response(404, &none), false),
            ("5xx", response(200, &none), false),
            ("5xx", cf, true),
            ("5xx", refused, true),
            ("5xx", reset, true),
            ("5xx", ptt, true),
            ("5xx", Outcome::Other, false),
            ("5xx", response(503, &ratelimited), false),
            ("gateway-error", response(502, &none), true),
            ("gateway-error", response(503, &none), true),
            ("gateway-error", response(504, &none), true),
            ("gateway-error", response(500, &none), false),
            ("gateway-error", ptt, true),
            ("gateway-error", cf, true),
            ("reset", reset, true),
            ("reset", refused, true),
            ("reset", ptt, true),
            ("reset", cf, true),
            ("reset", response(503, &none), false),
            ("reset-before-request", refused, true),
            ("reset-before-request", cf, true),
            ("reset-before-request", reset, false),
            ("reset-before-request", ptt, false),
            ("connect-failure", cf, true),
            ("connect-failure", refused, false),
            ("connect-failure", reset, false),
            ("connect-failure", response(503, &none), false),
            ("refused-stream", refused, true),
            ("refused-stream", reset, false),
            ("refused-stream", cf, false),
            ("retriable-4xx", response(409, &none), true),
            ("retriable-4xx", response(404, &none), false),
            ("retriable-4xx", response(429, &none), false),
            ("5xx", response(409, &none), false),
            ("retriable-status-codes", response(503, &none), false),
            ("retriable-status-codes,503", response(503, &none), true),
            ("503", response(503, &none), true),
            ("503", response(502, &none), false),
            ("503,reset", reset, true),
            ("429", response(429, &none), true),
            ("envoy-ratelimited", response(429, &ratelimited), true),
            ("envoy-ratelimited", response(429, &none), false),
            ("unavailable", response(200, &unavailable), true),
            ("unavailable", response(200, &cancelled), false),
            ("cancelled", response(200, &cancelled), true),
            ("internal", response(200, &internal), true),
            ("deadline-exceeded", response(200, &deadline), true),
            ("resource-exhausted", response(200, &exhausted), true),
            ("resource-exhausted", response(200, &garbage), false),
            ("unavailable", response(200, &none), false),
            ("unavailable", cf, false),
            (
                "retriable-headers,http3-post-connect-failure",
                response(500, &none),
                false,
            ),
            ("retriable-headers,http3-post-connect-failure", cf, false),
        ];
        for (on, outcome, want) in cases {
            let parsed = RetryOn::parse(on).unwrap();
            assert_eq!(parsed.matches(outcome), *want, "{on} / {outcome:?}");
        }
    }

    #[test]
    fn mesh_default_retries_only_what_never_reached_the_app() {
        let none = http::HeaderMap::new();
        let ratelimited = headers(&[("x-envoy-ratelimited", "true")]);
        use http::Method as M;
        for m in [M::GET, M::HEAD, M::OPTIONS, M::PUT, M::DELETE, M::TRACE] {
            assert!(mesh_default_retriable(&m, &response(503, &none)), "{m}");
        }
        for m in [M::POST, M::PATCH, M::CONNECT] {
            assert!(!mesh_default_retriable(&m, &response(503, &none)), "{m}");
            assert!(mesh_default_retriable(&m, &Outcome::ConnectFailure), "{m}");
            assert!(
                mesh_default_retriable(&m, &Outcome::Reset { refused: true }),
                "{m}"
            );
        }
        assert!(!mesh_default_retriable(
            &M::GET,
            &response(503, &ratelimited)
        ));
        for code in [500, 502, 504, 409, 429, 200] {
            assert!(
                !mesh_default_retriable(&M::GET, &response(code, &none)),
                "{code}"
            );
        }
        let unavailable = headers(&[("grpc-status", "14")]);
        assert!(!mesh_default_retriable(
            &M::POST,
            &response(200, &unavailable)
        ));
        for o in [
            Outcome::Reset { refused: false },
            Outcome::PerTryTimeout,
            Outcome::Other,
        ] {
            assert!(!mesh_default_retriable(&M::GET, &o), "{o:?}");
        }
    }

    #[test]
    fn policy_accessors() {
        let explicit = RetryPolicy::Explicit(ExplicitRetry {
            attempts: 4,
            per_try_timeout: Some(Duration::from_millis(100)),
            retry_on: RetryOn::parse("5xx").unwrap(),
            backoff: Duration::from_millis(10),
            retry_ignore_previous_hosts: false,
        });
        assert_eq!(explicit.max_retries(), 4);
        assert_eq!(explicit.per_try_timeout(), Some(Duration::from_millis(100)));
        assert_eq!(explicit.backoff(), Duration::from_millis(10));
        assert!(!explicit.ignore_previous_hosts());
        assert!(explicit.retriable(&http::Method::POST, &Outcome::PerTryTimeout));
        assert_eq!(RetryPolicy::MeshDefault.max_retries(), DEFAULT_ATTEMPTS);
        assert_eq!(RetryPolicy::MeshDefault.backoff(), DEFAULT_BACKOFF);
        assert!(RetryPolicy::MeshDefault.ignore_previous_hosts());
        assert_eq!(RetryPolicy::MeshDefault.per_try_timeout(), None);
        assert_eq!(RetryPolicy::Disabled.max_retries(), 0);
        assert!(!RetryPolicy::Disabled.retriable(&http::Method::GET, &Outcome::ConnectFailure));
    }

    #[test]
    fn backoff_ceiling_grows_then_caps_at_ten_times_base() {
        let ms = Duration::from_millis;
        let cases = [
            (0, 0),
            (1, 25),
            (2, 75),
            (3, 175),
            (4, 250),
            (5, 250),
            (31, 250),
            (32, 250),
            (u32::MAX, 250),
        ];
        for (n, want) in cases {
            assert_eq!(backoff_ceiling(n, DEFAULT_BACKOFF), ms(want), "retry {n}");
        }
        assert_eq!(backoff_ceiling(2, ms(100)), ms(300));
        assert_eq!(backoff_ceiling(9, ms(100)), ms(1000));
        assert_eq!(backoff_ceiling(3, Duration::ZERO), Duration::ZERO);
        assert_eq!(backoff_ceiling(9, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn jittered_stays_below_the_ceiling() {
        let ceiling = Duration::from_millis(250);
        for draw in [0.0, 0.25, 0.5, 0.999, 1.0, 2.0, -1.0, f64::NAN] {
            let d = jittered(ceiling, draw);
            assert!(d < ceiling, "{draw}: {d:?}");
        }
        assert_eq!(jittered(ceiling, 0.0), Duration::ZERO);
        assert_eq!(jittered(Duration::ZERO, 0.7), Duration::ZERO);
        assert_eq!(jittered(ceiling, 0.2), Duration::from_millis(50));
    }

    #[test]
    fn budget_is_a_share_of_active_requests_with_a_floor() {
        let b = RetryBudget::default();
        let cases = [
            (0, 3),
            (1, 3),
            (10, 3),
            (15, 3),
            (20, 4),
            (24, 4),
            (25, 5),
            (100, 20),
            (1000, 200),
        ];
        for (active, want) in cases {
            assert_eq!(b.max_active_retries(active), want, "{active} active");
        }
        assert!(b.allows(1, 0));
        assert!(b.allows(1, 2));
        assert!(!b.allows(1, 3));
        assert!(b.allows(100, 19));
        assert!(!b.allows(100, 20));
        let none = RetryBudget {
            percent: PerMillion(0),
            min_retry_concurrency: 0,
        };
        assert!(!none.allows(1_000, 0));
        let all = RetryBudget {
            percent: PerMillion::ALL,
            min_retry_concurrency: 0,
        };
        assert_eq!(all.max_active_retries(u64::MAX), u64::MAX);
    }

    #[test]
    fn budget_from_destination_rule() {
        use crate::config::{common::Percent, networking::destination_rule::RetryBudget as Cfg};
        assert_eq!(RetryBudget::from_config(None), RetryBudget::default());
        assert_eq!(
            RetryBudget::from_config(Some(&Cfg::default())),
            RetryBudget::default()
        );
        let cfg = Cfg {
            percent: Some(Percent { value: 50.0 }),
            min_retry_concurrency: Some(1),
        };
        let b = RetryBudget::from_config(Some(&cfg));
        assert_eq!(
            b,
            RetryBudget {
                percent: PerMillion(500_000),
                min_retry_concurrency: 1
            }
        );
        assert_eq!(b.max_active_retries(10), 5);
        let only_min = Cfg {
            percent: None,
            min_retry_concurrency: Some(10),
        };
        assert_eq!(
            RetryBudget::from_config(Some(&only_min)).max_active_retries(10),
            10
        );
    }

    #[test]
    fn parses_conditions_and_codes() {
        let on = RetryOn::parse("5xx,reset , 503,gateway-error,503").unwrap();
        assert_eq!(on.to_string(), "5xx,gateway-error,reset,503");
        assert!(RetryOn::parse("5xx,bogus").is_err());
        assert!(RetryOn::parse("99").is_err());
        assert!(RetryOn::parse("600").is_err());
    }

    #[test]
    fn attempts_zero_disables_and_absent_block_is_default() {
        use crate::config::networking::virtual_service::HttpRetry;
        assert_eq!(
            RetryPolicy::from_config(None).unwrap(),
            RetryPolicy::MeshDefault
        );
        let zero = HttpRetry {
            attempts: Some(0),
            ..HttpRetry::default()
        };
        assert_eq!(
            RetryPolicy::from_config(Some(&zero)).unwrap(),
            RetryPolicy::Disabled
        );
        let three = HttpRetry {
            attempts: Some(3),
            per_try_timeout: Some(crate::duration::Duration::from_secs(2)),
            ..HttpRetry::default()
        };
        let RetryPolicy::Explicit(p) = RetryPolicy::from_config(Some(&three)).unwrap() else {
            panic!("explicit policy expected");
        };
        assert_eq!(p.attempts, 3);
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
        assert!(p.retry_on.has(RetryCondition::ConnectFailure));
        assert_eq!(p.retry_on.status_codes(), &[503]);
        assert_eq!(p.backoff, DEFAULT_BACKOFF);
    }
}
