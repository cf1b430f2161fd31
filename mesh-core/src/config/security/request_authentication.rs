//! Istio's `RequestAuthentication`: which JWTs a workload accepts.
//!
//! In Istio an invalid token is rejected and a request without a token is accepted without a
//! request identity. **The mesh does not validate JWTs yet**: the kind loads and is
//! schema-checked so configurations written for Istio keep loading, and a non-empty `jwtRules`
//! is reported with a `MESH0001` warning.

use serde::{Deserialize, Serialize};

use super::{check_non_empty, check_scope};
use crate::{
    config::common::{TargetRef, WorkloadSelector},
    duration::Duration,
    validate::{Checker, Validate},
};

/// Istio's default JWKS fetch timeout.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The most `spaceDelimitedClaims` one rule may list, as Istio limits.
pub const MAX_SPACE_DELIMITED_CLAIMS: usize = 64;

/// The spec of a RequestAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// Workloads the policy applies to; absent means every workload in scope. Exclusive with
    /// `targetRef`/`targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A single resource the policy attaches to (Istio's older form of `targetRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Resources the policy attaches to: Gateway, GatewayClass, Service or ServiceEntry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// The JWTs accepted, one rule per issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// How to find and validate the JWTs of one issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// The token's `iss` (required).
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; empty accepts the service's own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where to fetch the JSON Web Key Set (`http` or `https`); exclusive with `jwks`. When
    /// neither is set, OpenID discovery on the issuer finds it. Istio also accepts the proto
    /// name `jwks_uri`.
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The JSON Web Key Set inline, as a JSON string; exclusive with `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers to read the token from; by default `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to read the token from; by default `access_token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies to read the token from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// A header to pass the verified payload (base64) to the workload in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token on the forwarded request (default `false`: it is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Claims to copy into request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the JWKS fetch (default 5s, [`DEFAULT_JWKS_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Claims whose string value is a space-separated list (like `scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

/// A header a JWT is read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header name (required).
    #[serde(default)]
    pub name: String,
    /// A prefix stripped before the token (`"Bearer "`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A claim copied into a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The header to write (required; letters, digits, `-` and `_`).
    #[serde(default)]
    pub header: String,
    /// The claim to copy (required).
    #[serde(default)]
    pub claim: String,
}

// === impl RequestAuthentication ===

impl Validate for RequestAuthentication {
    fn validate(&self, cx: &mut Checker<'_>) {
        check_scope(
            cx,
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
        );
        if !self.jwt_rules.is_empty() {
            cx.at("jwtRules").unsupported(
                "the mesh does not validate JWTs yet: tokens are neither verified nor rejected, and requests carry no request principal",
            );
        }
        cx.each("jwtRules", &self.jwt_rules);
    }
}

// === impl JwtRule ===

impl JwtRule {
    /// The JWKS fetch timeout (5s when unset).
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_JWKS_TIMEOUT)
    }
}

impl Validate for JwtRule {
    fn validate(&self, cx: &mut Checker<'_>) {
        cx.required_str("issuer", &self.issuer);
        check_non_empty(cx, "audiences", &self.audiences);
        if let Some(uri) = &self.jwks_uri
            && let Err(e) = check_http_url(uri)
        {
            cx.at("jwksUri").error(e);
        }
        if let Some(jwks) = &self.jwks {
            if self.jwks_uri.is_some() {
                cx.at("jwks")
                    .error("only one of jwksUri or jwks may be set");
            }
            if let Err(e) = check_jwks(jwks) {
                cx.at("jwks").error(e);
            }
        }
        {
            let mut headers = cx.at("fromHeaders");
            for (i, h) in self.from_headers.iter().enumerate() {
                headers.index(i).required_str("name", &h.name);
            }
        }
        check_non_empty(cx, "fromParams", &self.from_params);
        check_non_empty(cx, "fromCookies", &self.from_cookies);
        {
            let mut outputs = cx.at("outputClaimToHeaders");
            for (i, o) in self.output_claim_to_headers.iter().enumerate() {
                let mut cx = outputs.index(i);
                cx.required_str("claim", &o.claim);
                if o.header.is_empty() {
                    cx.required_str("header", &o.header);
                } else if !is_header_token(&o.header) {
                    cx.at("header").error(format!(
                        "{:?} is not a valid header name: letters, digits, '-' and '_' only",
                        o.header
                    ));
                }
            }
        }
        if let Some(timeout) = self.timeout {
            cx.min_1ms("timeout", timeout);
        }
        if self.space_delimited_claims.len() > MAX_SPACE_DELIMITED_CLAIMS {
            cx.at("spaceDelimitedClaims").error(format!(
                "at most {MAX_SPACE_DELIMITED_CLAIMS} claims are allowed, got {}",
                self.space_delimited_claims.len()
            ));
        }
        check_non_empty(cx, "spaceDelimitedClaims", &self.space_delimited_claims);
    }
}

/// True for a header name Istio accepts in `outputClaimToHeaders` (`^[-_A-Za-z0-9]+$`).
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a `jwksUri`: an absolute `http://` or `https://` URL with a host and, if given, a
/// numeric port.
pub(crate) fn check_http_url(uri: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("{uri:?} is not a valid JWKS URL: {why}"));
    let lower = uri.get(..8).unwrap_or(uri).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &uri[8..]
    } else if lower.starts_with("http://") {
        &uri[7..]
    } else {
        return invalid("the scheme must be http or https");
    };
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => return invalid("unterminated IPv6 address"),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return invalid("the host is missing");
    }
    if let Some(port) = port
        && !port.is_empty()
        && super::parse_port(port).is_none()
    {
        return invalid("the port must be a number between 1 and 65535");
    }
    Ok(())
}

/// Checks inline `jwks`: a JSON object with a `keys` array (RFC 7517).
fn check_jwks(jwks: &str) -> Result<(), String> {
    match serde_json::from_str::<serde_json::Value>(jwks) {
        Ok(serde_json::Value::Object(set)) if set.get("keys").is_some_and(|k| k.is_array()) => {
            Ok(())
        }
        Ok(_) => Err("a JSON Web Key Set must be a JSON object with a \"keys\" array".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uris_must_be_http_urls() {
        for ok in [
            "https://example.com/.well-known/jwks.json",
            "http://keycloak.auth:8080/realms/x/protocol/openid-connect/certs",
            "HTTPS://EXAMPLE.COM",
            "https://[::1]:8443/jwks",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "example.com/jwks",
            "ftp://example.com/jwks",
            "https://",
            "https:///jwks",
            "https://example.com:http/jwks",
            "https://exa mple.com",
            "https://[::1/jwks",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inline_jwks_needs_keys() {
        assert_eq!(check_jwks(r#"{"keys": []}"#), Ok(()));
        assert!(check_jwks("{}").is_err());
        assert!(check_jwks("[]").is_err());
        assert!(check_jwks("not json").is_err());
    }
}
