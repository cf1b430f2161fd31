//! Go-style durations, as Istio's YAML writes them (`7s`, `0.5s`, `100ms`, `1m30s`, `1h`).
//!
//! Istio's CRDs carry `google.protobuf.Duration` fields that the API server and `istioctl`
//! accept in Go's `time.ParseDuration` syntax. [`Duration`] parses exactly that syntax and
//! prints Go's canonical form back (`1m30s`, `500ms`), so a resource read and written again
//! keeps its meaning.
//!
//! # Examples
//! ```
//! use mesh_core::duration::Duration;
//! let d: Duration = "1m30s".parse()?;
//! assert_eq!(d.as_std(), std::time::Duration::from_secs(90));
//! assert_eq!("0.5s".parse::<Duration>()?.to_string(), "500ms");
//! # Ok::<_, mesh_core::duration::InvalidDuration>(())
//! ```

use std::{fmt, str::FromStr, time::Duration as StdDuration};

/// A non-negative duration written in Go's `time.ParseDuration` syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

/// The text is not a Go-style duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected e.g. \"7s\", \"0.5s\", \"100ms\", \"1m30s\", \"1h\")"
)]
pub struct InvalidDuration {
    input: String,
    reason: &'static str,
}

// === impl Duration ===

impl Duration {
    /// Wraps a standard duration.
    pub const fn from_std(d: StdDuration) -> Self {
        Self(d)
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }

    /// The standard-library duration.
    pub const fn as_std(&self) -> StdDuration {
        self.0
    }

    /// True for a zero duration.
    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Self(d)
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl FromStr for Duration {
    type Err = InvalidDuration;

    /// Parses Go's syntax: a sequence of decimal numbers, each with an optional fraction and
    /// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). A bare `0` is allowed; negative
    /// durations are not (Istio rejects them).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidDuration {
            input: input.to_owned(),
            reason,
        };
        let mut s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        } else if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let mut total: u128 = 0;
        while !s.is_empty() {
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let (int_part, rest) = s.split_at(int_len);
            let (frac_part, rest) = match rest.strip_prefix('.') {
                Some(r) => {
                    let n = r.bytes().take_while(u8::is_ascii_digit).count();
                    r.split_at(n)
                }
                None => ("", rest),
            };
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err("expected a number"));
            }
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit() || *c == '.')
                .map_or(rest.len(), |(i, _)| i);
            let (unit, rest) = rest.split_at(unit_len);
            if unit.is_empty() {
                return Err(err("missing unit"));
            }
            let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(err("unknown unit"));
            };
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("number too large"))?
            };
            let mut nanos = int.checked_mul(scale).ok_or_else(|| err("overflow"))?;
            // Fraction: keep as much precision as a nanosecond allows.
            let mut frac_scale = scale;
            for d in frac_part.bytes() {
                frac_scale /= 10;
                if frac_scale == 0 {
                    break;
                }
                nanos += u128::from(d - b'0') * frac_scale;
            }
            total = total.checked_add(nanos).ok_or_else(|| err("overflow"))?;
            s = rest;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("overflow"))?;
        let sub = (total % 1_000_000_000) as u32;
        Ok(Self(StdDuration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    /// Formats as Go's `time.Duration.String()` does: `1h2m3.5s`, `1.5s`, `500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < 1_000_000_000 {
            let (unit, scale) = if total < 1_000 {
                ("ns", 1)
            } else if total < 1_000_000 {
                ("µs", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return write!(f, "{}{unit}", frac(total, scale));
        }
        let h = total / 3_600_000_000_000;
        let m = (total / 60_000_000_000) % 60;
        let rest = total % 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(rest, 1_000_000_000))
    }
}

/// `value / scale` with the fraction's trailing zeros removed.
fn frac(value: u128, scale: u128) -> String {
    let int = value / scale;
    let rem = value % scale;
    if rem == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"7s\", \"0.5s\" or \"1m30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("7s", StdDuration::from_secs(7)),
            ("0.5s", StdDuration::from_millis(500)),
            ("100ms", StdDuration::from_millis(100)),
            ("1m30s", StdDuration::from_secs(90)),
            ("3m", StdDuration::from_secs(180)),
            ("1h", StdDuration::from_secs(3600)),
            ("1.5h", StdDuration::from_secs(5400)),
            ("2h45m", StdDuration::from_secs(9900)),
            ("300us", StdDuration::from_micros(300)),
            ("300µs", StdDuration::from_micros(300)),
            ("10ns", StdDuration::from_nanos(10)),
            ("0", StdDuration::ZERO),
            ("0s", StdDuration::ZERO),
            (".5s", StdDuration::from_millis(500)),
            ("1.s", StdDuration::from_secs(1)),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Duration>().unwrap().as_std(), want, "{input}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for input in ["", "7", "-1s", "1x", "s", "1.2.3s", "abc", "1m 30s", "."] {
            let err = input.parse::<Duration>().unwrap_err();
            assert!(
                err.to_string().contains("invalid duration"),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn prints_like_go() {
        for (input, want) in [
            ("1m30s", "1m30s"),
            ("0.5s", "500ms"),
            ("7s", "7s"),
            ("1h", "1h0m0s"),
            ("1.5s", "1.5s"),
            ("0", "0s"),
            ("300us", "300µs"),
        ] {
            assert_eq!(input.parse::<Duration>().unwrap().to_string(), want);
        }
    }

    #[test]
    fn display_round_trips() {
        for ms in [
            1u64, 25, 250, 999, 1000, 1500, 61_000, 3_600_500, 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
