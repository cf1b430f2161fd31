//! Private keys: generation, loading and PEM, never printed.
//!
//! [`KeyPair`] wraps rcgen's key pair (ring backend); [`PrivateKeyPem`] holds the PKCS #8 PEM
//! text of a key. Neither prints key material in `Debug`.
//!
//! # RSA
//!
//! ring cannot generate RSA keys, and rcgen 0.14 with the ring backend returns
//! `KeyGenerationUnavailable` for `KeyPair::generate_for(&PKCS_RSA_SHA256)` (only its
//! aws-lc-rs backend generates RSA). So [`KeyPair::generate`] makes ECDSA P-256 keys only and
//! returns [`Error::KeyGenerationUnavailable`] for RSA. RSA keys are **loaded**: create one
//! with OpenSSL (`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem`)
//! and read it with [`KeyPair::from_pem`]; signing with a loaded RSA key works, and CSRs made
//! with RSA keys are signed regardless of the CA's own key type.
//!
//! Keys are read from PKCS #8 (`PRIVATE KEY`), and also from OpenSSL's traditional forms,
//! PKCS #1 (`RSA PRIVATE KEY`) and SEC 1 (`EC PRIVATE KEY`, P-256 or P-384), which are
//! rewrapped as PKCS #8. Encrypted keys are refused. Keys are always written as PKCS #8.

use std::fmt;

use rcgen::{PublicKeyData, SigningKey};

use crate::{Error, pem};

/// The key algorithms the CLI offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default; generated in process).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384 (loaded keys only; not offered by the CLI).
    EcdsaP384,
    /// Ed25519 (loaded keys only; not offered by the CLI).
    Ed25519,
    /// RSA with a 2048-bit modulus, PKCS #1 v1.5 signatures with SHA-256 (loaded, not generated).
    Rsa2048,
    /// RSA with a 4096-bit modulus (loaded, not generated).
    Rsa4096,
    /// RSA with another modulus size (loaded keys only).
    RsaOther {
        /// The modulus size in bits.
        bits: usize,
    },
}

impl KeyAlgorithm {
    /// The name the CLI uses (`ecdsa-p256`, `rsa2048`, `rsa4096`).
    pub fn name(&self) -> String {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256".to_owned(),
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384".to_owned(),
            KeyAlgorithm::Ed25519 => "ed25519".to_owned(),
            KeyAlgorithm::Rsa2048 => "rsa2048".to_owned(),
            KeyAlgorithm::Rsa4096 => "rsa4096".to_owned(),
            KeyAlgorithm::RsaOther { bits } => format!("rsa{bits}"),
        }
    }

    /// True for the RSA variants.
    pub fn is_rsa(&self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 | KeyAlgorithm::RsaOther { .. }
        )
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    /// Parses `ecdsa-p256`, `rsa2048` or `rsa4096`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa2048" => Ok(KeyAlgorithm::Rsa2048),
            "rsa4096" => Ok(KeyAlgorithm::Rsa4096),
            other => Err(format!(
                "unknown key algorithm {other:?} (expected ecdsa-p256, rsa2048 or rsa4096)"
            )),
        }
    }
}

/// The PEM text of a private key (PKCS #8). `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// Wraps PEM text. Nothing is checked until [`KeyPair::from_pem`] reads it.
    pub fn new(pem: impl Into<String>) -> Self {
        Self(pem.into())
    }

    /// The PEM text, to write to a file with mode 0600 or hand to a TLS library.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

impl Drop for PrivateKeyPem {
    /// Overwrites the text before the memory is freed (best effort: earlier copies, such as
    /// reallocations, are not reached).
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// A private key with its public half. `Debug` prints the algorithm and `<redacted>`.
pub struct KeyPair {
    inner: rcgen::KeyPair,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// Generates a key in process.
    ///
    /// # Errors
    /// [`Error::KeyGenerationUnavailable`] for RSA (see the [module docs](self)) and the
    /// loaded-only algorithms.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => {
                let inner = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| Error::rcgen("generating an ECDSA P-256 key", e))?;
                Ok(Self { inner, algorithm })
            }
            other => Err(Error::KeyGenerationUnavailable { algorithm: other }),
        }
    }

    /// Reads a PEM private key (PKCS #8, PKCS #1 RSA or SEC 1 EC); `what` names it in errors.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the text holds no usable, unencrypted private key.
    pub fn from_pem(pem_text: &PrivateKeyPem, what: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidKey {
            what: what.to_owned(),
            reason,
        };
        let blocks = pem::parse(pem_text.expose_secret()).map_err(|e| invalid(e.to_string()))?;
        let mut keys = blocks.iter().filter(|b| b.label.ends_with("PRIVATE KEY"));
        let Some(block) = keys.next() else {
            return Err(invalid("no PRIVATE KEY block found".to_owned()));
        };
        if keys.next().is_some() {
            return Err(invalid("more than one private key in the file".to_owned()));
        }
        let pkcs8 = match block.label.as_str() {
            "PRIVATE KEY" => block.der.clone(),
            "RSA PRIVATE KEY" => der::rsa_pkcs1_to_pkcs8(&block.der),
            "EC PRIVATE KEY" => der::sec1_to_pkcs8(&block.der)
                .ok_or_else(|| invalid("EC key on a curve other than P-256 or P-384".to_owned()))?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid(
                    "the key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)"
                        .to_owned(),
                ));
            }
            other => return Err(invalid(format!("unsupported key type {other:?}"))),
        };
        Self::from_pkcs8_der(&pkcs8).map_err(|reason| invalid(reason.to_owned()))
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, &'static str> {
        let inner = rcgen::KeyPair::try_from(der).map_err(
            |_| "not a PKCS #8 key that ring can use (ECDSA P-256/P-384, Ed25519, RSA 2048-8192)",
        )?;
        let algorithm = classify(&inner).ok_or("unsupported key algorithm")?;
        Ok(Self { inner, algorithm })
    }

    /// The key's algorithm (for RSA, with its modulus size).
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key as PKCS #8 PEM.
    pub fn to_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem(self.inner.serialize_pem())
    }

    /// The DER `SubjectPublicKeyInfo` of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    /// The PKCS #8 DER of the private key (for key derivation inside this crate).
    pub(crate) fn secret_der(&self) -> &[u8] {
        self.inner.serialized_der()
    }
}

impl PublicKeyData for KeyPair {
    fn der_bytes(&self) -> &[u8] {
        self.inner.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        PublicKeyData::algorithm(&self.inner)
    }
}

impl SigningKey for KeyPair {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.inner.sign(msg)
    }
}

/// Names an rcgen key's algorithm; RSA with its modulus size.
fn classify(key: &rcgen::KeyPair) -> Option<KeyAlgorithm> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(KeyAlgorithm::EcdsaP256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some(KeyAlgorithm::EcdsaP384)
    } else if alg == &rcgen::PKCS_ED25519 {
        Some(KeyAlgorithm::Ed25519)
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        let bits = rsa_modulus_bits(&key.subject_public_key_info())?;
        Some(match bits {
            2048 => KeyAlgorithm::Rsa2048,
            4096 => KeyAlgorithm::Rsa4096,
            bits => KeyAlgorithm::RsaOther { bits },
        })
    } else {
        None
    }
}

/// The modulus size of an RSA `SubjectPublicKeyInfo`, in bits.
pub(crate) fn rsa_modulus_bits(spki_der: &[u8]) -> Option<usize> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            let modulus = rsa.modulus;
            let first = modulus.iter().position(|&b| b != 0)?;
            let significant = &modulus[first..];
            Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
        }
        _ => None,
    }
}

/// Just enough DER writing to rewrap traditional OpenSSL keys as PKCS #8.
mod der {
    /// `rsaEncryption` (1.2.840.113549.1.1.1), DER content bytes.
    const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// `id-ecPublicKey` (1.2.840.10045.2.1).
    const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// `prime256v1` (1.2.840.10045.3.1.7).
    const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// `secp384r1` (1.3.132.0.34).
    const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let first = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            let significant = &bytes[first..];
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    fn pkcs8(algorithm_identifier: &[u8], private_key: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x02, &[0]); // version 0
        body.extend(tlv(0x30, algorithm_identifier));
        body.extend(tlv(0x04, private_key));
        tlv(0x30, &body)
    }

    /// Wraps a PKCS #1 `RSAPrivateKey` in PKCS #8 (ring checks the inner key).
    pub(super) fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
        let mut alg = tlv(0x06, OID_RSA_ENCRYPTION);
        alg.extend(tlv(0x05, &[]));
        pkcs8(&alg, pkcs1)
    }

    /// Wraps a SEC 1 `ECPrivateKey` in PKCS #8, naming the curve its `[0]` parameters give.
    pub(super) fn sec1_to_pkcs8(sec1: &[u8]) -> Option<Vec<u8>> {
        let curve = if contains(sec1, &tlv(0x06, OID_P256)) {
            OID_P256
        } else if contains(sec1, &tlv(0x06, OID_P384)) {
            OID_P384
        } else {
            return None;
        };
        let mut alg = tlv(0x06, OID_EC_PUBLIC_KEY);
        alg.extend(tlv(0x06, curve));
        Some(pkcs8(&alg, sec1))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn encodes_long_lengths() {
            assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
            let long = tlv(0x04, &[0; 300]);
            assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
            assert_eq!(long.len(), 304);
            let mid = tlv(0x04, &[0; 200]);
            assert_eq!(&mid[..3], &[0x04, 0x81, 200]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_p256_and_round_trips_pem() {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
        let pem = key.to_pem();
        assert!(
            pem.expose_secret()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let back = KeyPair::from_pem(&pem, "test").unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
    }

    #[test]
    fn rsa_generation_is_unavailable_with_ring() {
        for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa4096] {
            let err = KeyPair::generate(alg).unwrap_err();
            assert!(
                matches!(err, Error::KeyGenerationUnavailable { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("openssl genpkey"), "{err}");
        }
        // rcgen itself says so too (the reason for the above).
        assert!(rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).is_err());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pem();
        let body_line = pem.expose_secret().lines().nth(1).unwrap().to_owned();
        for debug in [format!("{key:?}"), format!("{pem:?}"), format!("{pem:#?}")] {
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(!debug.contains(&body_line), "{debug}");
            assert!(!debug.contains("BEGIN"), "{debug}");
        }
    }

    #[test]
    fn refuses_garbage_and_encrypted_keys() {
        let cases = [
            ("", "no PRIVATE KEY"),
            ("hello", "no PRIVATE KEY"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "PKCS #8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n",
                "unsupported key type",
            ),
        ];
        for (text, want) in cases {
            let err = KeyPair::from_pem(&PrivateKeyPem::new(text), "k.pem").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("k.pem") && msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn parses_cli_algorithm_names() {
        for name in ["ecdsa-p256", "rsa2048", "rsa4096"] {
            let alg: KeyAlgorithm = name.parse().unwrap();
            assert_eq!(alg.name(), name);
        }
        assert!("rsa1024".parse::<KeyAlgorithm>().is_err());
    }
}
