//! Bootstrap tokens: a short-lived credential bound to one SPIFFE identity.
//!
//! A workload with no certificate yet authenticates its first CSR with a token minted by
//! `mesh-ca token` (sent as `authorization: Bearer <token>`); the CA then issues a
//! certificate for exactly the identity the token names. This plays the role of the
//! Kubernetes service-account JWT that istiod checks, without a Kubernetes API server.
//!
//! # Format
//!
//! ```text
//! v1.<base64url(json {"sub": "<spiffe id>", "exp": <unix seconds>})>.<base64url(mac)>
//! ```
//!
//! `mac` is HMAC-SHA256 over the ASCII bytes `v1.<payload>` (the version and the payload
//! exactly as sent, as JWS does), so the identity and the expiry are both bound. base64url
//! is unpadded (RFC 4648 §5).
//!
//! # Key
//!
//! The HMAC key is derived from the CA's private key with HKDF-SHA256 (salt
//! `"mesh-ca bootstrap token"`, info `"v1"`, input the key's PKCS #8 DER), so nothing else
//! needs storing and any process holding `ca-key.pem` can mint and verify. Replacing the CA
//! key invalidates every outstanding token.
//!
//! # Verification
//!
//! [`CertificateAuthority::verify_token`](crate::CertificateAuthority::verify_token) checks,
//! in order: the shape (`v1.` and three parts, else [`Error::TokenMalformed`]), the MAC in
//! constant time ([`Error::TokenBadMac`]), the payload ([`Error::TokenMalformed`]), then the
//! expiry ([`Error::TokenExpired`]). The payload is only parsed once the MAC is known good.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

use crate::{Error, identity::Identity, pem};

/// The version prefix of the current token format.
pub const TOKEN_VERSION: &str = "v1";

/// The longest token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 4096;

/// The longest lifetime a token may be minted with (it is a bootstrap credential).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

const HKDF_SALT: &[u8] = b"mesh-ca bootstrap token";
const HKDF_INFO: &[u8] = b"v1";

/// The claims a token carries.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    /// The SPIFFE identity.
    sub: String,
    /// Expiry, seconds since the Unix epoch.
    exp: i64,
}

/// The HMAC key tokens are minted and checked with.
pub(crate) struct TokenKey(hmac::Key);

impl TokenKey {
    /// Derives the key from the CA private key's PKCS #8 DER: HKDF-SHA256 (RFC 5869) with
    /// one output block, written with `ring::hmac` so that it cannot fail.
    pub(crate) fn derive(ca_key_der: &[u8]) -> Self {
        // Extract: PRK = HMAC(salt, IKM). Expand, one block: T(1) = HMAC(PRK, info || 0x01).
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, HKDF_SALT), ca_key_der);
        let mut info = HKDF_INFO.to_vec();
        info.push(1);
        let okm = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &info);
        Self(hmac::Key::new(hmac::HMAC_SHA256, okm.as_ref()))
    }

    /// Mints a token for `identity` expiring `ttl` after `now`.
    pub(crate) fn mint(
        &self,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, Error> {
        if ttl.is_zero() {
            return Err(Error::InvalidTtl {
                reason: "a token needs a TTL above zero".to_owned(),
            });
        }
        if ttl > MAX_TOKEN_TTL {
            return Err(Error::InvalidTtl {
                reason: format!(
                    "a bootstrap token may live at most {}",
                    crate::error::go_duration(MAX_TOKEN_TTL)
                ),
            });
        }
        let exp = unix_secs(now).saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = Claims {
            sub: identity.to_string(),
            exp,
        };
        let json = serde_json::to_vec(&claims).map_err(|_| Error::TokenMalformed {
            reason: "cannot encode the claims",
        })?;
        let signing_input = format!("{TOKEN_VERSION}.{}", pem::base64url_encode(&json));
        let tag = hmac::sign(&self.0, signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            pem::base64url_encode(tag.as_ref())
        ))
    }

    /// Checks a token and returns the identity it names.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, Error> {
        let malformed = |reason| Error::TokenMalformed { reason };
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed("longer than 4096 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(version), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected v1.<payload>.<mac>"));
        };
        if version != TOKEN_VERSION {
            return Err(malformed("unsupported version (expected v1)"));
        }
        let mac = pem::base64url_decode(mac).ok_or(malformed("the MAC is not base64url"))?;
        let signing_input_len = version.len() + 1 + payload.len();
        hmac::verify(&self.0, &token.as_bytes()[..signing_input_len], &mac)
            .map_err(|_| Error::TokenBadMac)?;
        let json =
            pem::base64url_decode(payload).ok_or(malformed("the payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| malformed("the payload is not {sub, exp} JSON"))?;
        let identity: Identity = claims
            .sub
            .parse()
            .map_err(|_| malformed("sub is not a SPIFFE identity"))?;
        if unix_secs(now) >= claims.exp {
            return Err(Error::TokenExpired {
                expired_at: claims.exp,
            });
        }
        Ok(identity)
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> TokenKey {
        TokenKey::derive(&[seed; 64])
    }

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trips_until_expiry() {
        let k = key(1);
        let token = k
            .mint(&id(), Duration::from_secs(3600), at(1_000_000))
            .unwrap();
        assert!(token.starts_with("v1."), "{token}");
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(k.verify(&token, at(1_000_000)).unwrap(), id());
        assert_eq!(k.verify(&token, at(1_003_599)).unwrap(), id());
        let err = k.verify(&token, at(1_003_600)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TokenExpired {
                    expired_at: 1_003_600
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("expired at 1970-01-12T14:46:40Z"),
            "{err}"
        );
    }

    #[test]
    fn payload_is_readable_json() {
        let token = key(1)
            .mint(&id(), Duration::from_secs(60), at(100))
            .unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json = pem::base64url_decode(payload).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"sub":"spiffe://cluster.local/ns/default/sa/reviews","exp":160}"#
        );
    }

    #[test]
    fn another_key_or_an_altered_token_fails_the_mac() {
        let token = key(1)
            .mint(&id(), Duration::from_secs(60), at(100))
            .unwrap();
        assert!(matches!(
            key(2).verify(&token, at(100)),
            Err(Error::TokenBadMac)
        ));

        // Same MAC, different identity in the payload.
        let other = br#"{"sub":"spiffe://cluster.local/ns/default/sa/admin","exp":160}"#;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = pem::base64url_encode(other);
        let forged = parts.join(".");
        assert!(matches!(
            key(1).verify(&forged, at(100)),
            Err(Error::TokenBadMac)
        ));

        // Longer expiry, same MAC.
        let later = br#"{"sub":"spiffe://cluster.local/ns/default/sa/reviews","exp":9999999999}"#;
        parts[1] = pem::base64url_encode(later);
        assert!(matches!(
            key(1).verify(&parts.join("."), at(100)),
            Err(Error::TokenBadMac)
        ));
    }

    #[test]
    fn malformed_tokens_say_why() {
        let k = key(1);
        let good = k.mint(&id(), Duration::from_secs(60), at(100)).unwrap();
        let cases = [
            "".to_owned(),
            "v1".to_owned(),
            "v1.abc".to_owned(),
            "v1.a.b.c".to_owned(),
            good.replacen("v1.", "v2.", 1),
            format!("{good}!"),
            "x".repeat(5000),
        ];
        for token in cases {
            let err = k.verify(&token, at(100)).unwrap_err();
            assert!(
                matches!(err, Error::TokenMalformed { .. }),
                "{token}: {err}"
            );
        }
    }

    #[test]
    fn a_correctly_signed_but_bad_payload_is_malformed() {
        let k = key(1);
        let sign = |payload: &[u8]| {
            let input = format!("v1.{}", pem::base64url_encode(payload));
            let tag = hmac::sign(&k.0, input.as_bytes());
            format!("{input}.{}", pem::base64url_encode(tag.as_ref()))
        };
        for payload in [
            &b"not json"[..],
            br#"{"sub":"spiffe://cluster.local/ns/default","exp":160}"#,
            br#"{"sub":"spiffe://cluster.local/ns/a/sa/b","exp":160,"admin":true}"#,
            br#"{"exp":160}"#,
        ] {
            let err = k.verify(&sign(payload), at(100)).unwrap_err();
            assert!(matches!(err, Error::TokenMalformed { .. }), "{err}");
        }
    }

    #[test]
    fn key_derivation_is_hkdf_sha256() {
        let ikm = [7u8; 121];
        let ours = TokenKey::derive(&ikm);
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, HKDF_SALT).extract(&ikm);
        let okm = prk.expand(&[HKDF_INFO], hmac::HMAC_SHA256).unwrap();
        let theirs = hmac::Key::from(okm);
        let a = hmac::sign(&ours.0, b"message");
        let b = hmac::sign(&theirs, b"message");
        assert_eq!(a.as_ref(), b.as_ref());
    }

    #[test]
    fn mint_checks_the_ttl() {
        let k = key(1);
        assert!(k.mint(&id(), Duration::ZERO, at(100)).is_err());
        assert!(
            k.mint(&id(), MAX_TOKEN_TTL + Duration::from_secs(1), at(100))
                .is_err()
        );
        assert!(k.mint(&id(), MAX_TOKEN_TTL, at(100)).is_ok());
    }
}
