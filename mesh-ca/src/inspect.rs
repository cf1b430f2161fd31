//! `mesh-ca inspect`: what a certificate file holds, in plain words.
//!
//! For each certificate of a PEM (or single DER) file: subject, issuer, serial, SANs, validity
//! (with "expires in …" or "EXPIRED"), whether it is a CA, key usages, and then the chain
//! order, checked link by link: "certificate 1 is signed by certificate 2: yes". A link holds
//! when the child names the parent as its issuer **and** its signature verifies with the
//! parent's key, and the parent is a CA. Other PEM blocks (keys, requests) are skipped, and
//! never printed.
//!
//! [`Report`] serializes to JSON (`mesh-ca inspect -o json`).

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, oid_registry, public_key::PublicKey,
};

use crate::{
    Error,
    authority::{parse_cert, san_uris, serial_hex, signed_by, system_time},
    pem,
};

/// Everything `inspect` found in a file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The certificates, in file order.
    pub certificates: Vec<CertificateInfo>,
    /// One check per adjacent pair, plus one for the last certificate.
    pub chain: Vec<ChainLink>,
    /// True when every link holds.
    pub chain_ok: bool,
    /// True when every certificate is within its validity period.
    pub all_valid: bool,
    /// Labels of PEM blocks that are not certificates (their content is not shown).
    pub skipped_blocks: Vec<String>,
}

/// One certificate, described.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// 1-based position in the file.
    pub index: usize,
    /// The subject (`CN=…, O=…`), or `(empty)`.
    pub subject: String,
    /// The issuer.
    pub issuer: String,
    /// Serial number, upper-case hex.
    pub serial: String,
    /// URI SANs (SPIFFE ids).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<String>,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// `valid`, `expired` or `not yet valid`.
    pub status: String,
    /// `expires in 23h 59m`, `EXPIRED 2d 3h ago` or `not valid for another 5m`.
    pub expiry: String,
    /// True for `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    /// The path length constraint of a CA, when set.
    pub path_len: Option<u32>,
    /// Key usages, in OpenSSL's words (`Digital Signature`, `Certificate Sign`).
    pub key_usages: Vec<String>,
    /// Extended key usages (`TLS Web Server Authentication`, …).
    pub extended_key_usages: Vec<String>,
    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`, …
    pub public_key: String,
    /// True when issuer and subject match and the certificate's own key verifies it.
    pub self_signed: bool,
}

/// The check of one chain link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ChainLink {
    /// The certificate checked (1-based).
    pub certificate: usize,
    /// The certificate expected to sign it (the next one), if any.
    pub signer: Option<usize>,
    /// Whether the link holds (for the last certificate: informational, always true).
    pub ok: bool,
    /// The check in words.
    pub text: String,
}

/// Describes every certificate in `data` (PEM text, or one DER certificate) as of `now`.
///
/// # Errors
/// [`Error::InvalidCertificate`] if the file holds no certificate or one cannot be parsed.
pub fn inspect(data: &[u8], what: &str, now: SystemTime) -> Result<Report, Error> {
    let invalid = |reason: String| Error::InvalidCertificate {
        what: what.to_owned(),
        reason,
    };
    let mut skipped_blocks = Vec::new();
    let ders: Vec<Vec<u8>> = match std::str::from_utf8(data) {
        Ok(text) if text.contains("-----BEGIN ") => {
            let blocks = pem::parse(text).map_err(|e| invalid(format!("bad PEM: {e}")))?;
            let mut ders = Vec::new();
            for block in blocks {
                if block.label == "CERTIFICATE" || block.label == "TRUSTED CERTIFICATE" {
                    ders.push(block.der);
                } else {
                    skipped_blocks.push(block.label);
                }
            }
            ders
        }
        _ => vec![data.to_vec()],
    };
    if ders.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block".to_owned()));
    }
    let mut certificates = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let cert = parse_cert(der, &format!("{what} (certificate {})", i + 1))?;
        certificates.push(describe(i + 1, &cert, der, now));
    }
    let mut chain = Vec::with_capacity(ders.len());
    for i in 0..ders.len() {
        let n = i + 1;
        if let Some(parent) = ders.get(i + 1) {
            let ok_sig = signed_by(&ders[i], parent);
            let parent_info = &certificates[i + 1];
            let (ok, why) = if !ok_sig {
                let child_issuer = &certificates[i].issuer;
                if *child_issuer != parent_info.subject {
                    (
                        false,
                        format!(
                            " (its issuer is {child_issuer}, but certificate {} is {})",
                            n + 1,
                            parent_info.subject
                        ),
                    )
                } else {
                    (
                        false,
                        " (the signature does not verify with its key)".to_owned(),
                    )
                }
            } else if !parent_info.is_ca {
                (false, format!(" (but certificate {} is not a CA)", n + 1))
            } else {
                (true, String::new())
            };
            chain.push(ChainLink {
                certificate: n,
                signer: Some(n + 1),
                ok,
                text: format!(
                    "certificate {n} is signed by certificate {}: {}{why}",
                    n + 1,
                    if ok { "yes" } else { "no" }
                ),
            });
        } else if certificates[i].self_signed {
            chain.push(ChainLink {
                certificate: n,
                signer: None,
                ok: true,
                text: format!("certificate {n} is self-signed (a root): yes"),
            });
        } else {
            chain.push(ChainLink {
                certificate: n,
                signer: None,
                ok: true,
                text: format!(
                    "certificate {n} is signed by {}, which is not in this file",
                    certificates[i].issuer
                ),
            });
        }
    }
    let chain_ok = chain.iter().all(|l| l.ok);
    let all_valid = certificates.iter().all(|c| c.status == "valid");
    Ok(Report {
        certificates,
        chain,
        chain_ok,
        all_valid,
        skipped_blocks,
    })
}

fn describe(
    index: usize,
    cert: &X509Certificate<'_>,
    der: &[u8],
    now: SystemTime,
) -> CertificateInfo {
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => ip_addresses.push(ip_string(b)),
                _ => {}
            }
        }
    }
    let not_before = system_time(cert.validity().not_before.timestamp());
    let not_after = system_time(cert.validity().not_after.timestamp());
    let (status, expiry) = if now > not_after {
        (
            "expired",
            format!(
                "EXPIRED {} ago",
                human(now.duration_since(not_after).unwrap_or_default())
            ),
        )
    } else if now < not_before {
        (
            "not yet valid",
            format!(
                "not valid for another {}",
                human(not_before.duration_since(now).unwrap_or_default())
            ),
        )
    } else {
        (
            "valid",
            format!(
                "expires in {}",
                human(not_after.duration_since(now).unwrap_or_default())
            ),
        )
    };
    let bc = cert.basic_constraints().ok().flatten().map(|e| e.value);
    CertificateInfo {
        index,
        subject: display_name(cert.subject()),
        issuer: display_name(cert.issuer()),
        serial: serial_hex(cert.raw_serial()),
        uris: san_uris(cert),
        dns_names,
        ip_addresses,
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        status: status.to_owned(),
        expiry,
        is_ca: bc.is_some_and(|b| b.ca),
        path_len: bc.filter(|b| b.ca).and_then(|b| b.path_len_constraint),
        key_usages: key_usages(cert),
        extended_key_usages: extended_key_usages(cert),
        public_key: public_key(cert),
        self_signed: signed_by(der, der),
    }
}

fn display_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let s = name.to_string();
    if s.is_empty() {
        "(empty)".to_owned()
    } else {
        s
    }
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().unwrap_or_default();
            std::net::Ipv4Addr::from(b).to_string()
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().unwrap_or_default();
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

fn key_usages(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ku)) = cert.key_usage() else {
        return Vec::new();
    };
    let ku = ku.value;
    [
        (ku.digital_signature(), "Digital Signature"),
        (ku.non_repudiation(), "Non Repudiation"),
        (ku.key_encipherment(), "Key Encipherment"),
        (ku.data_encipherment(), "Data Encipherment"),
        (ku.key_agreement(), "Key Agreement"),
        (ku.key_cert_sign(), "Certificate Sign"),
        (ku.crl_sign(), "CRL Sign"),
        (ku.encipher_only(), "Encipher Only"),
        (ku.decipher_only(), "Decipher Only"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| n.to_owned())
    .collect()
}

fn extended_key_usages(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return Vec::new();
    };
    let eku = eku.value;
    let mut out: Vec<String> = [
        (eku.any, "Any Extended Key Usage"),
        (eku.server_auth, "TLS Web Server Authentication"),
        (eku.client_auth, "TLS Web Client Authentication"),
        (eku.code_signing, "Code Signing"),
        (eku.email_protection, "E-mail Protection"),
        (eku.time_stamping, "Time Stamping"),
        (eku.ocsp_signing, "OCSP Signing"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| n.to_owned())
    .collect();
    out.extend(eku.other.iter().map(ToString::to_string));
    out
}

fn public_key(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    if spki.algorithm.algorithm == oid_registry::OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(_)) => match crate::key::rsa_modulus_bits(spki.raw) {
            Some(bits) => format!("RSA {bits}"),
            None => "RSA".to_owned(),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == oid_registry::OID_EC_P256 => "ECDSA P-256".to_owned(),
                Some(c) if c == oid_registry::OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
                Some(c) => format!("EC ({c})"),
                None => "EC".to_owned(),
            }
        }
        _ => spki.algorithm.algorithm.to_string(),
    }
}

/// Formats a time as RFC 3339 UTC, whole seconds (`2025-01-02T03:04:05Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let unix = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    rfc3339_unix(unix)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339_unix(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{unix}"),
    }
}

/// `364d 23h`, `23h 59m`, `59m 3s`, `42s`: the two largest units.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

impl fmt::Display for Report {
    /// The plain-words text `mesh-ca inspect` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.certificates.len();
        for c in &self.certificates {
            writeln!(f, "certificate {} of {n}", c.index)?;
            writeln!(f, "  subject:     {}", c.subject)?;
            writeln!(f, "  issuer:      {}", c.issuer)?;
            writeln!(f, "  serial:      {}", c.serial)?;
            if c.uris.is_empty() && c.dns_names.is_empty() && c.ip_addresses.is_empty() {
                writeln!(f, "  SANs:        (none)")?;
            }
            for uri in &c.uris {
                writeln!(f, "  SAN URI:     {uri}")?;
            }
            for dns in &c.dns_names {
                writeln!(f, "  SAN DNS:     {dns}")?;
            }
            for ip in &c.ip_addresses {
                writeln!(f, "  SAN IP:      {ip}")?;
            }
            writeln!(f, "  not before:  {}", c.not_before)?;
            writeln!(f, "  not after:   {} ({})", c.not_after, c.expiry)?;
            let ca = match (c.is_ca, c.path_len) {
                (true, Some(len)) => format!("yes (path length {len})"),
                (true, None) => "yes".to_owned(),
                (false, _) => "no".to_owned(),
            };
            writeln!(f, "  CA:          {ca}")?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "(none)".to_owned()
                } else {
                    v.join(", ")
                }
            };
            writeln!(f, "  key usage:   {}", list(&c.key_usages))?;
            writeln!(f, "  ext. usage:  {}", list(&c.extended_key_usages))?;
            writeln!(f, "  public key:  {}", c.public_key)?;
            writeln!(f)?;
        }
        writeln!(f, "chain order:")?;
        for link in &self.chain {
            writeln!(f, "  {}", link.text)?;
        }
        if !self.skipped_blocks.is_empty() {
            writeln!(
                f,
                "skipped (not certificates, not shown): {}",
                self.skipped_blocks.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CaOptions, Cacerts, CertificateAuthority, RootCa,
        key::{KeyAlgorithm, KeyPair},
    };

    fn bundle() -> (crate::CertBundle, KeyPair) {
        let p256 = || KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let root = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
        let cacerts =
            Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("c1")).unwrap();
        let ca = CertificateAuthority::new(&cacerts).unwrap();
        let key = p256();
        let id = "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap();
        (ca.issue(&id, &key, Duration::ZERO).unwrap(), key)
    }

    #[test]
    fn describes_a_workload_chain() {
        let (bundle, key) = bundle();
        let text = format!("{}{}", bundle.chain_pem(), key.to_pem().expose_secret());
        let report = inspect(text.as_bytes(), "chain.pem", SystemTime::now()).unwrap();
        assert_eq!(report.certificates.len(), 3);
        assert!(report.chain_ok && report.all_valid);
        assert_eq!(report.skipped_blocks, vec!["PRIVATE KEY".to_owned()]);
        let leaf = &report.certificates[0];
        assert_eq!(
            leaf.uris,
            vec!["spiffe://cluster.local/ns/default/sa/reviews".to_owned()]
        );
        assert_eq!(leaf.subject, "(empty)");
        assert!(!leaf.is_ca);
        assert_eq!(
            leaf.key_usages,
            vec!["Digital Signature", "Key Encipherment"]
        );
        assert_eq!(
            leaf.extended_key_usages,
            vec![
                "TLS Web Server Authentication",
                "TLS Web Client Authentication"
            ]
        );
        assert_eq!(leaf.public_key, "ECDSA P-256");
        assert_eq!(leaf.serial, bundle.serial);
        assert!(
            leaf.expiry.starts_with("expires in 23h 5"),
            "{}",
            leaf.expiry
        );
        assert_eq!(report.certificates[1].path_len, Some(0));
        let out = report.to_string();
        assert!(
            out.contains("SAN URI:     spiffe://cluster.local/ns/default/sa/reviews"),
            "{out}"
        );
        assert!(
            out.contains("certificate 1 is signed by certificate 2: yes"),
            "{out}"
        );
        assert!(
            out.contains("certificate 2 is signed by certificate 3: yes"),
            "{out}"
        );
        assert!(
            out.contains("certificate 3 is self-signed (a root): yes"),
            "{out}"
        );
        assert!(!out.contains(key.to_pem().expose_secret().lines().nth(1).unwrap()));
    }

    #[test]
    fn finds_a_wrong_order_and_expiry() {
        let (bundle, _) = bundle();
        let swapped = format!("{}{}{}", bundle.chain[1], bundle.chain[0], bundle.chain[2]);
        let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
        let report = inspect(swapped.as_bytes(), "x", later).unwrap();
        assert!(!report.chain_ok);
        assert!(!report.all_valid);
        let out = report.to_string();
        assert!(
            out.contains("certificate 1 is signed by certificate 2: no"),
            "{out}"
        );
        assert!(out.contains("EXPIRED 1d"), "{out}");
    }

    #[test]
    fn reads_der_and_rejects_junk() {
        let (bundle, _) = bundle();
        let der = pem::parse(&bundle.leaf_pem).unwrap().remove(0).der;
        let report = inspect(&der, "leaf.der", SystemTime::now()).unwrap();
        assert_eq!(report.certificates.len(), 1);
        assert!(
            report.chain[0].text.contains("which is not in this file"),
            "{:?}",
            report.chain
        );
        assert!(inspect(b"junk", "x", SystemTime::now()).is_err());
        assert!(
            inspect(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "x",
                SystemTime::now()
            )
            .is_err()
        );
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_unix(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(3 * 60 + 2)), "3m 2s");
        assert_eq!(human(Duration::from_secs(86_399)), "23h 59m");
        assert_eq!(human(Duration::from_secs(400 * 86_400)), "400d 0h");
    }
}
