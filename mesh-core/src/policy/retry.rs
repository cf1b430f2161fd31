//! The validated retry policy: Istio's `HTTPRetry` with Envoy's `retry_on` vocabulary.

use std::{fmt, time::Duration};

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
    /// No `retries` block: the mesh's default applies (see the crate docs on how it differs
    /// from Istio's: only failures that never reached the application, and 503 only for
    /// idempotent methods).
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

#[cfg(test)]
mod tests {
    use super::*;

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
