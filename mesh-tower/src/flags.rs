//! Envoy's response flags, attached to responses so telemetry and access logs can report
//! why a request ended the way it did.
//!
//! Each layer that ends or marks a request inserts [`ResponseFlags`] into the response
//! extensions (or adds to the flags already there). The names are Envoy's `%RESPONSE_FLAGS%`
//! codes, which Istio's `response_flags` metric label and access log use.

use std::fmt;

/// One Envoy response flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream (no endpoints, or all ejected): 503.
    NoHealthyUpstream,
    /// `UF`: upstream connection failure: 503.
    UpstreamConnectionFailure,
    /// `UO`: upstream overflow (circuit breaking): 503.
    UpstreamOverflow,
    /// `NR`: no route configured: 404.
    NoRouteFound,
    /// `URX`: the retry limit (or budget) was reached.
    UpstreamRetryLimitExceeded,
    /// `UT`: upstream request timeout: 504.
    UpstreamRequestTimeout,
    /// `UC`: upstream connection termination.
    UpstreamConnectionTermination,
    /// `UR`: upstream remote reset.
    UpstreamRemoteReset,
    /// `DC`: downstream connection termination.
    DownstreamConnectionTermination,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `RL`: rate limited: 429.
    RateLimited,
}

impl ResponseFlag {
    /// Envoy's short code (`UH`, `NR`, ...).
    pub const fn code(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamOverflow => "UO",
            Self::NoRouteFound => "NR",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRemoteReset => "UR",
            Self::DownstreamConnectionTermination => "DC",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::RateLimited => "RL",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The flags of one response, in a response's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseFlags(Vec<ResponseFlag>);

impl ResponseFlags {
    /// Adds a flag (once).
    pub fn insert(&mut self, flag: ResponseFlag) {
        if !self.0.contains(&flag) {
            self.0.push(flag);
            self.0.sort();
        }
    }

    /// True if the flag is set.
    pub fn contains(&self, flag: ResponseFlag) -> bool {
        self.0.contains(&flag)
    }

    /// The flags.
    pub fn iter(&self) -> impl Iterator<Item = ResponseFlag> + '_ {
        self.0.iter().copied()
    }

    /// True when no flag is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `flag` to the flags in `res`'s extensions.
    pub fn add_to<B>(res: &mut http::Response<B>, flag: ResponseFlag) {
        res.extensions_mut()
            .get_or_insert_default::<ResponseFlags>()
            .insert(flag);
    }

    /// The flags of `res` (empty when none were set).
    pub fn of<B>(res: &http::Response<B>) -> ResponseFlags {
        res.extensions()
            .get::<ResponseFlags>()
            .cloned()
            .unwrap_or_default()
    }
}

impl fmt::Display for ResponseFlags {
    /// Envoy's format: codes joined by `,`, or `-` when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        let codes: Vec<&str> = self.0.iter().map(|f| f.code()).collect();
        f.write_str(&codes.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_envoy() {
        let mut flags = ResponseFlags::default();
        assert_eq!(flags.to_string(), "-");
        flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
        flags.insert(ResponseFlag::DelayInjected);
        flags.insert(ResponseFlag::DelayInjected);
        assert_eq!(flags.to_string(), "URX,DI");
        let mut res = http::Response::new(());
        ResponseFlags::add_to(&mut res, ResponseFlag::FaultInjected);
        assert!(ResponseFlags::of(&res).contains(ResponseFlag::FaultInjected));
    }
}
