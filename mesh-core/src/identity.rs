//! SPIFFE identities in Istio's form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Istio names every workload by the Kubernetes service account it runs as. The CA writes the
//! identity as the one URI SAN of a workload certificate; AuthorizationPolicy `principals`
//! write the same identity without the `spiffe://` scheme ([`Identity::principal`]).
//!
//! The parser follows istiod's `spiffe.ParseIdentity`: after the scheme there must be exactly
//! five `/`-separated segments, the second `ns` and the fourth `sa`. It is stricter than
//! istiod in one way: every segment must use the characters the SPIFFE specification allows
//! (trust domain: lowercase letters, digits, `.`, `-`, `_`; path segments: letters, digits,
//! `.`, `-`, `_`), so a value that is not a valid SPIFFE ID (spaces, `%`, `?`, upper-case trust
//! domain) is refused instead of being written into a certificate. Kubernetes namespace and
//! service-account names always fit.
//!
//! `mesh-ca` re-exports this module as `mesh_ca::identity`.
//!
//! # Examples
//! ```
//! use mesh_core::identity::Identity;
//! let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
//! assert_eq!(id.namespace(), "default");
//! assert_eq!(id.service_account(), "reviews");
//! assert_eq!(id.principal(), "cluster.local/ns/default/sa/reviews");
//! assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/reviews");
//! # Ok::<_, mesh_core::identity::InvalidIdentity>(())
//! ```

use std::{fmt, str::FromStr, sync::Arc};

/// The trust domain Istio uses when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The URI scheme of a SPIFFE ID, with its `//`.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// The longest SPIFFE ID accepted, in bytes (the SPIFFE specification's limit for URIs).
const MAX_ID_LEN: usize = 2048;
/// The longest trust domain accepted, in bytes (SPIFFE specification).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload identity: trust domain, namespace and service account.
///
/// Cheap to clone (the parts are shared): a verified peer's identity is copied into every
/// request of its connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

/// The text is not an Istio SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SPIFFE identity {input:?}: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
)]
pub struct InvalidIdentity {
    input: String,
    reason: &'static str,
}

impl InvalidIdentity {
    /// Why the identity was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

// === impl Identity ===

impl Identity {
    /// Builds an identity from its parts, checking each as [`FromStr`] does.
    ///
    /// # Errors
    /// [`InvalidIdentity`] if a part is empty or has characters SPIFFE does not allow.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, InvalidIdentity> {
        let id = Self {
            trust_domain: trust_domain.into().into(),
            namespace: namespace.into().into(),
            service_account: service_account.into().into(),
        };
        let err = |reason| InvalidIdentity {
            input: id.to_string(),
            reason,
        };
        check_trust_domain(&id.trust_domain).map_err(err)?;
        check_segment(&id.namespace, "namespace").map_err(err)?;
        check_segment(&id.service_account, "service account").map_err(err)?;
        if id.to_string().len() > MAX_ID_LEN {
            return Err(err("longer than 2048 bytes"));
        }
        Ok(id)
    }

    /// An identity in the default trust domain, [`DEFAULT_TRUST_DOMAIN`].
    ///
    /// # Errors
    /// As [`Identity::new`].
    pub fn in_default_trust_domain(
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, InvalidIdentity> {
        Self::new(DEFAULT_TRUST_DOMAIN, namespace, service_account)
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity as AuthorizationPolicy `principals` write it: no `spiffe://` scheme
    /// (`cluster.local/ns/default/sa/reviews`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The SPIFFE URI (`spiffe://cluster.local/ns/default/sa/reviews`), as [`Display`](fmt::Display)
    /// writes it.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = InvalidIdentity;

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidIdentity {
            input: input.to_owned(),
            reason,
        };
        if input.len() > MAX_ID_LEN {
            return Err(err("longer than 2048 bytes"));
        }
        let Some(rest) = input.strip_prefix(SPIFFE_SCHEME) else {
            return Err(err("does not start with spiffe://"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, ns, namespace, sa, service_account] = parts[..] else {
            return Err(err("expected exactly 5 path segments after spiffe://"));
        };
        if ns != "ns" {
            return Err(err("the second segment must be \"ns\""));
        }
        if sa != "sa" {
            return Err(err("the fourth segment must be \"sa\""));
        }
        check_trust_domain(trust_domain).map_err(err)?;
        check_segment(namespace, "namespace").map_err(err)?;
        check_segment(service_account, "service account").map_err(err)?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("the trust domain is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("the trust domain is longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("the trust domain may only contain a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

fn check_segment(segment: &str, what: &'static str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err(match what {
            "namespace" => "the namespace is empty",
            _ => "the service account is empty",
        });
    }
    if segment == "." || segment == ".." {
        return Err("a path segment may not be \".\" or \"..\"");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(match what {
            "namespace" => "the namespace may only contain letters, digits, '.', '-' and '_'",
            _ => "the service account may only contain letters, digits, '.', '-' and '_'",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identities() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/reviews",
                ("cluster.local", "default", "reviews"),
            ),
            (
                "spiffe://example.org/ns/istio-system/sa/istio-ingressgateway-service-account",
                (
                    "example.org",
                    "istio-system",
                    "istio-ingressgateway-service-account",
                ),
            ),
            ("spiffe://td_1/ns/a.b/sa/C_d", ("td_1", "a.b", "C_d")),
        ];
        for (input, (td, ns, sa)) in cases {
            let id: Identity = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain(), td);
            assert_eq!(id.namespace(), ns);
            assert_eq!(id.service_account(), sa);
            assert_eq!(id.to_string(), input, "round trip");
            assert_eq!(id.uri(), input);
        }
    }

    #[test]
    fn principal_drops_the_scheme() {
        let id = Identity::in_default_trust_domain("default", "productpage").unwrap();
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
    }

    #[test]
    fn rejects_other_forms() {
        let cases = [
            ("", "does not start with spiffe://"),
            ("cluster.local/ns/default/sa/reviews", "does not start"),
            (
                "SPIFFE://cluster.local/ns/default/sa/reviews",
                "does not start",
            ),
            (
                "https://cluster.local/ns/default/sa/reviews",
                "does not start",
            ),
            ("spiffe://cluster.local/ns/default/sa", "exactly 5"),
            ("spiffe://cluster.local/ns/default/sa/reviews/", "exactly 5"),
            (
                "spiffe://cluster.local/ns/default/sa/reviews/x",
                "exactly 5",
            ),
            ("spiffe://cluster.local/default/reviews", "exactly 5"),
            (
                "spiffe://cluster.local/namespace/default/sa/reviews",
                "\"ns\"",
            ),
            (
                "spiffe://cluster.local/ns/default/serviceaccount/r",
                "\"sa\"",
            ),
            ("spiffe://cluster.local/sa/default/ns/reviews", "\"ns\""),
            ("spiffe:///ns/default/sa/reviews", "trust domain is empty"),
            (
                "spiffe://Cluster.Local/ns/default/sa/reviews",
                "trust domain may",
            ),
            (
                "spiffe://cluster.local:8080/ns/default/sa/r",
                "trust domain may",
            ),
            (
                "spiffe://cluster.local/ns//sa/reviews",
                "namespace is empty",
            ),
            (
                "spiffe://cluster.local/ns/default/sa/",
                "service account is empty",
            ),
            (
                "spiffe://cluster.local/ns/de fault/sa/reviews",
                "namespace may",
            ),
            (
                "spiffe://cluster.local/ns/default/sa/rev%20iews",
                "service account may",
            ),
            (
                "spiffe://cluster.local/ns/default/sa/reviews?x=1",
                "service account may",
            ),
            ("spiffe://cluster.local/ns/../sa/reviews", "\".\" or \"..\""),
        ];
        for (input, want) in cases {
            let err = input.parse::<Identity>().expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(want), "{input}: {msg}");
            assert!(msg.contains("expected spiffe://<trust-domain>"), "{msg}");
        }
        let long = format!("spiffe://cluster.local/ns/default/sa/{}", "a".repeat(3000));
        assert!(long.parse::<Identity>().is_err());
    }

    #[test]
    fn new_checks_parts() {
        assert!(Identity::new("cluster.local", "default", "reviews").is_ok());
        assert!(Identity::new("", "default", "reviews").is_err());
        assert!(Identity::new("cluster.local", "a/b", "reviews").is_err());
        assert!(Identity::new("cluster.local", "default", "").is_err());
    }

    #[test]
    fn serde_uses_the_uri() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/default/sa/reviews\"");
        let back: Identity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<Identity>("\"spiffe://x/ns/a\"").is_err());
    }
}
