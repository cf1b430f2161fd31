//! Certificate signing requests: made locally by workloads, verified by the CA.
//!
//! A workload makes its key and a CSR in process ([`generate`]); the key never leaves it.
//! When the CA signs, it reads the CSR first: the PKCS #10 structure is parsed with `x509-parser`,
//! its signature is checked against the public key it carries (proof that the requester
//! holds the private key), and only that public key is kept. Everything else the CSR asks
//! for (subject, SANs, basic constraints, key usages, other extensions) is ignored: the CA
//! decides those (see [`CertificateAuthority::sign`](crate::CertificateAuthority::sign)).
//!
//! Accepted public keys: ECDSA P-256 and P-384, Ed25519, RSA of 2048 to 8192 bits. CSRs
//! signed with SHA-1 are refused.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, SanType};
use x509_parser::{
    certification_request::X509CertificationRequest, oid_registry, prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

use crate::{Error, identity::Identity, key::KeyPair, pem};

/// The longest CSR accepted, in bytes of PEM text.
const MAX_CSR_LEN: usize = 64 * 1024;

/// A PEM-encoded PKCS #10 certificate signing request (`CERTIFICATE REQUEST`).
///
/// A CSR holds only public data, so `Debug` prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct CsrPem(String);

impl CsrPem {
    /// Wraps PEM text; it is checked when the CA reads it.
    pub fn new(pem: impl Into<String>) -> Self {
        Self(pem.into())
    }

    /// The PEM text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CsrPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CsrPem").field(&self.0).finish()
    }
}

impl From<String> for CsrPem {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The part of a verified CSR the CA uses: its public key.
#[derive(Debug)]
pub(crate) struct VerifiedCsr {
    /// The DER `SubjectPublicKeyInfo`, exactly as in the CSR.
    pub(crate) spki_der: Vec<u8>,
    /// The same key, as rcgen writes it into a certificate.
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
}

/// Makes a CSR for `identity` signed by `key`: one URI SAN, empty subject.
///
/// # Errors
/// [`Error::Certificate`] if rcgen cannot encode or sign the request.
///
/// # Examples
/// ```
/// use mesh_ca::{csr, identity::Identity, key::{KeyAlgorithm, KeyPair}};
/// let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)?;
/// let csr = csr::generate(&id, &key)?;
/// assert!(csr.as_str().starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn generate(identity: &Identity, key: &KeyPair) -> Result<CsrPem, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(identity.to_string())
        .map_err(|e| Error::rcgen("encoding the SPIFFE URI", e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(key)
        .map_err(|e| Error::rcgen("building the CSR", e))?;
    let pem = csr.pem().map_err(|e| Error::rcgen("encoding the CSR", e))?;
    Ok(CsrPem(pem))
}

/// Parses a CSR and verifies its signature; returns its public key.
pub(crate) fn verify(csr: &CsrPem) -> Result<VerifiedCsr, Error> {
    let text = csr.as_str();
    if text.len() > MAX_CSR_LEN {
        return Err(Error::csr("longer than 64 KiB"));
    }
    let blocks = pem::parse(text).map_err(|e| Error::csr(format!("bad PEM: {e}")))?;
    let mut requests = blocks.iter().filter(|b| {
        matches!(
            b.label.as_str(),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
        )
    });
    let Some(block) = requests.next() else {
        return Err(Error::csr("no CERTIFICATE REQUEST PEM block"));
    };
    if requests.next().is_some() {
        return Err(Error::csr("more than one CERTIFICATE REQUEST block"));
    }
    let (rest, req) = X509CertificationRequest::from_der(&block.der)
        .map_err(|e| Error::csr(format!("not a PKCS #10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::csr("trailing bytes after the request"));
    }
    let sig_alg = &req.signature_algorithm.algorithm;
    if *sig_alg == oid_registry::OID_PKCS1_SHA1WITHRSA
        || *sig_alg == oid_registry::OID_SHA1_WITH_RSA
    {
        return Err(Error::csr("signed with SHA-1, which is not accepted"));
    }
    let spki: &SubjectPublicKeyInfo<'_> = &req.certification_request_info.subject_pki;
    if let Some(bits) = crate::key::rsa_modulus_bits(spki.raw)
        && !(2048..=8192).contains(&bits)
    {
        return Err(Error::csr(format!(
            "RSA key of {bits} bits; 2048 to 8192 are accepted"
        )));
    }
    req.verify_signature().map_err(|e| match e {
        x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
            Error::csr("signature algorithm not supported")
        }
        _ => Error::CsrSignature,
    })?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
        Error::csr("public key algorithm not supported (ECDSA P-256/P-384, Ed25519, RSA)")
    })?;
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyAlgorithm;

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap()
    }

    #[test]
    fn generated_csr_verifies_and_keeps_the_key() {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = generate(&id(), &key).unwrap();
        let verified = verify(&csr).unwrap();
        assert_eq!(verified.spki_der, key.public_key_der());
    }

    #[test]
    fn tampered_csr_is_rejected() {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = generate(&id(), &key).unwrap();
        let mut der = pem::parse(csr.as_str()).unwrap().remove(0).der;
        // The URI SAN is inside the signed request info: change one of its letters.
        let pos = der
            .windows(7)
            .position(|w| w == b"reviews")
            .expect("SAN in the CSR");
        der[pos] = b'R';
        let tampered = CsrPem::new(pem::encode("CERTIFICATE REQUEST", &der));
        let err = verify(&tampered).unwrap_err();
        assert!(matches!(err, Error::CsrSignature), "{err}");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let cases = [
            ("", "no CERTIFICATE REQUEST"),
            ("hello", "no CERTIFICATE REQUEST"),
            (
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "not a PKCS #10 request",
            ),
            (
                "-----BEGIN CERTIFICATE REQUEST-----\nAA!A\n-----END CERTIFICATE REQUEST-----\n",
                "bad PEM",
            ),
        ];
        for (text, want) in cases {
            let err = verify(&CsrPem::new(text)).unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
        let huge = CsrPem::new("A".repeat(MAX_CSR_LEN + 1));
        assert!(verify(&huge).is_err());
    }
}
