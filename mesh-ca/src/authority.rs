//! The certificate authority: CA material in Istio's `cacerts` layout, and workload signing.
//!
//! # CA material
//!
//! Istio's "plug in CA certificates" flow keeps four files in the `cacerts` secret; [`Cacerts`]
//! holds them in memory and [`crate::files`] reads and writes them:
//!
//! | file | content |
//! |---|---|
//! | `ca-cert.pem` | the signing (intermediate) CA certificate |
//! | `ca-key.pem` | its private key |
//! | `cert-chain.pem` | the chain from `ca-cert.pem` up to the root: intermediate, …, root |
//! | `root-cert.pem` | the root certificate(s): the trust anchor workloads get |
//!
//! [`RootCa::generate`] makes a self-signed root (10 years by default, `CA:TRUE`,
//! keyCertSign + cRLSign) and [`Cacerts::intermediate`] an intermediate under it (path length
//! 0, no name constraints: rustls rejects SPIFFE leaves under URI name constraints).
//! [`Cacerts::self_signed`] lets a root sign directly, as istiod does without plugged-in
//! certificates.
//!
//! [`CertificateAuthority::new`] checks the material before it signs anything: the key must
//! belong to `ca-cert.pem`, which must be a currently valid CA; every certificate of the chain
//! must be signed by the next one and the last by a root of `root-cert.pem`.
//!
//! # Signing
//!
//! [`CertificateAuthority::sign`] follows istiod: the CSR's signature is verified, and then
//! **everything the CSR asks for is ignored** except its public key. The certificate gets an
//! empty subject and exactly one URI SAN (the caller's authenticated [`Identity`]), `CA:FALSE`,
//! key usages digitalSignature + keyEncipherment, extended key usages serverAuth +
//! clientAuth, a random 128-bit serial, `not_before` one minute in the past (clock skew) and
//! `not_after` = now + TTL. A TTL of zero means the default (24 h); a TTL above the maximum
//! (90 days) is refused with istiod's message, not clamped. A certificate never outlives its
//! CA: `not_after` is capped at `ca-cert.pem`'s own expiry (istiod fails instead when the
//! chain expires first; the cap keeps every issued chain verifiable).
//!
//! The returned [`CertBundle`] lists the chain leaf first, root last, one certificate per
//! element, as `IstioCertificateService` responses do.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mesh_ca::{CaOptions, CertificateAuthority, Cacerts, RootCa, csr, identity::Identity};
//! use mesh_ca::key::{KeyAlgorithm, KeyPair};
//!
//! let root = RootCa::generate(&KeyPair::generate(KeyAlgorithm::EcdsaP256)?, &CaOptions::root())?;
//! let cacerts = Cacerts::intermediate(
//!     &root,
//!     &KeyPair::generate(KeyAlgorithm::EcdsaP256)?,
//!     &CaOptions::intermediate("cluster1"),
//! )?;
//! let ca = CertificateAuthority::new(&cacerts)?;
//!
//! // The workload side: a key that never leaves the process, and a CSR.
//! let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
//! let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)?;
//! let bundle = ca.sign(&csr::generate(&id, &key)?, &id, Duration::ZERO)?; // 24 h
//! assert_eq!(bundle.chain.len(), 3); // leaf, intermediate, root
//! assert_eq!(bundle.identity, id);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::{
    Error,
    csr::{self, CsrPem},
    identity::Identity,
    key::{KeyAlgorithm, KeyPair, PrivateKeyPem},
    pem,
    token::TokenKey,
};

/// istiod's `DEFAULT_WORKLOAD_CERT_TTL`: used when a request asks for zero.
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// istiod's `MAX_WORKLOAD_CERT_TTL`: longer requests are refused.
pub const MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The default lifetime of a root (istiod's `CITADEL_SELF_SIGNED_CA_CERT_TTL`, 3650 days).
pub const DEFAULT_ROOT_CERT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// The default lifetime of an intermediate (730 days, as Istio's `certs` Makefile).
pub const DEFAULT_INTERMEDIATE_CERT_TTL: Duration = Duration::from_secs(730 * 24 * 3600);
/// How far `not_before` is moved into the past, for clocks that run behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Turns the `validity_duration` seconds of an `IstioCertificateRequest` into the TTL
/// [`CertificateAuthority::sign`] takes: zero or negative (use the default) becomes zero.
pub fn ttl_from_seconds(seconds: i64) -> Duration {
    u64::try_from(seconds).map_or(Duration::ZERO, Duration::from_secs)
}

// === CertBundle ===

/// An issued certificate with its chain. Holds no key material.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertBundle {
    /// The workload certificate, PEM (the same text as `chain[0]`).
    pub leaf_pem: String,
    /// The chain, leaf first, then intermediates, root last; one PEM certificate each.
    pub chain: Vec<String>,
    /// The identity in the leaf's URI SAN.
    pub identity: Identity,
    /// The leaf's serial number, upper-case hex (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
}

impl CertBundle {
    /// Reads a chain as an `IstioCertificateService` response carries it (leaf first, root
    /// last, one PEM certificate per element; an element holding several is split).
    ///
    /// # Errors
    /// [`Error::InvalidCertificate`] if the chain has fewer than two certificates (istio-agent
    /// refuses those too) or the leaf has not exactly one SPIFFE URI SAN.
    pub fn from_chain<S: AsRef<str>>(elements: &[S]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidCertificate {
            what: "the certificate chain".to_owned(),
            reason,
        };
        let mut ders = Vec::new();
        for element in elements {
            ders.extend(parse_certs(element.as_ref(), "the certificate chain")?);
        }
        if ders.len() < 2 {
            return Err(invalid(format!(
                "expected the leaf and at least the root, got {} certificate(s)",
                ders.len()
            )));
        }
        let leaf = parse_cert(&ders[0], "the leaf certificate")?;
        let uris = san_uris(&leaf);
        let [uri] = uris.as_slice() else {
            return Err(invalid(format!(
                "the leaf has {} URI SANs; expected exactly one SPIFFE id",
                uris.len()
            )));
        };
        let identity: Identity = uri.parse()?;
        let chain: Vec<String> = ders.iter().map(|d| pem::encode("CERTIFICATE", d)).collect();
        Ok(Self {
            leaf_pem: chain[0].clone(),
            identity,
            serial: serial_hex(leaf.raw_serial()),
            not_before: system_time(leaf.validity().not_before.timestamp()),
            not_after: system_time(leaf.validity().not_after.timestamp()),
            chain,
        })
    }

    /// The whole chain as one PEM text (`cert-chain.pem`).
    pub fn chain_pem(&self) -> String {
        self.chain.concat()
    }

    /// The root certificate: the last element of the chain.
    pub fn root_pem(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    /// The certificates between the leaf and the root.
    pub fn intermediates(&self) -> &[String] {
        match self.chain.len() {
            0..=2 => &[],
            n => &self.chain[1..n - 1],
        }
    }
}

// === CA material ===

/// Subject and lifetime of a CA certificate to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    /// The subject's `O`.
    pub organization: String,
    /// The subject's `CN`.
    pub common_name: String,
    /// The subject's `L` (Istio's Makefile puts the cluster name there).
    pub locality: Option<String>,
    /// How long the certificate is valid.
    pub ttl: Duration,
}

impl CaOptions {
    /// A root: `O=mesh, CN=Root CA`, 10 years.
    pub fn root() -> Self {
        Self {
            organization: "mesh".to_owned(),
            common_name: "Root CA".to_owned(),
            locality: None,
            ttl: DEFAULT_ROOT_CERT_TTL,
        }
    }

    /// An intermediate for a cluster: `O=mesh, CN=Intermediate CA, L=<cluster>`, 2 years.
    pub fn intermediate(cluster: &str) -> Self {
        Self {
            organization: "mesh".to_owned(),
            common_name: "Intermediate CA".to_owned(),
            locality: Some(cluster.to_owned()),
            ttl: DEFAULT_INTERMEDIATE_CERT_TTL,
        }
    }

    fn distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.organization.as_str());
        if let Some(locality) = &self.locality {
            dn.push(DnType::LocalityName, locality.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        dn
    }
}

/// A root CA: `root-cert.pem` and `root-key.pem`.
#[derive(Clone, Debug)]
pub struct RootCa {
    /// The self-signed root certificate, PEM.
    pub cert_pem: String,
    /// Its private key (`Debug` prints `<redacted>`).
    pub key: PrivateKeyPem,
}

impl RootCa {
    /// Makes a self-signed root for `key`: `CA:TRUE`, keyCertSign + cRLSign, a random serial.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero TTL; [`Error::Certificate`] if rcgen fails.
    pub fn generate(key: &KeyPair, options: &CaOptions) -> Result<Self, Error> {
        let now = SystemTime::now();
        let params = ca_params(
            options,
            BasicConstraints::Unconstrained,
            now,
            validity_end(now, options.ttl, "the root")?,
        )?;
        let cert = params
            .self_signed(key)
            .map_err(|e| Error::rcgen("signing the root certificate", e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key: key.to_pem(),
        })
    }
}

/// The four files of Istio's `cacerts` secret, in memory.
#[derive(Clone, Debug)]
pub struct Cacerts {
    /// `ca-cert.pem`: the signing CA certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key (`Debug` prints `<redacted>`).
    pub ca_key: PrivateKeyPem,
    /// `cert-chain.pem`: `ca-cert.pem` up to the root, in order (may be empty when the CA is
    /// the root).
    pub cert_chain: String,
    /// `root-cert.pem`: the root(s).
    pub root_cert: String,
}

impl Cacerts {
    /// Makes an intermediate CA under `root` with `key`: path length 0, keyCertSign +
    /// cRLSign, no name constraints. `cert_chain` is the intermediate then the root.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]/[`Error::InvalidCa`] if the root's key or certificate is unusable;
    /// [`Error::InvalidTtl`] if the intermediate would outlive the root.
    pub fn intermediate(root: &RootCa, key: &KeyPair, options: &CaOptions) -> Result<Self, Error> {
        let now = SystemTime::now();
        let root_key = KeyPair::from_pem(&root.key, "root-key.pem")?;
        let root_der = single_cert(&root.cert_pem, "root-cert.pem")?;
        let root_cert = parse_cert(&root_der, "root-cert.pem")?;
        check_key_matches(&root_key, &root_cert, "root-key.pem", "root-cert.pem")?;
        check_is_ca(&root_cert, "root-cert.pem")?;
        check_valid_now(&root_cert, "root-cert.pem", now)?;
        let root_not_after = system_time(root_cert.validity().not_after.timestamp());
        let not_after = validity_end(now, options.ttl, "the intermediate")?;
        if not_after > root_not_after {
            return Err(Error::InvalidTtl {
                reason: format!(
                    "the intermediate would outlive its root (root-cert.pem expires at {}); choose a shorter TTL",
                    crate::inspect::rfc3339(root_not_after)
                ),
            });
        }
        let issuer = issuer_for(&root_der, &root_cert, root_key, "root-cert.pem")?;
        let mut params = ca_params(options, BasicConstraints::Constrained(0), now, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &issuer)
            .map_err(|e| Error::rcgen("signing the intermediate certificate", e))?;
        let root_pem = pem::encode("CERTIFICATE", &root_der);
        let ca_cert = cert.pem();
        Ok(Self {
            cert_chain: format!("{ca_cert}{root_pem}"),
            ca_cert,
            ca_key: key.to_pem(),
            root_cert: root_pem,
        })
    }

    /// The root signs workload certificates itself (istiod's self-signed mode): `ca-cert.pem`
    /// and `root-cert.pem` are the root, `cert-chain.pem` is empty.
    pub fn self_signed(root: &RootCa) -> Self {
        Self {
            ca_cert: root.cert_pem.clone(),
            ca_key: root.key.clone(),
            cert_chain: String::new(),
            root_cert: root.cert_pem.clone(),
        }
    }
}

// === CertificateAuthority ===

/// Signs workload certificates; istiod's Citadel role.
///
/// `Send + Sync`: share it behind an `Arc`. `Debug` prints the CA's subject, never its key.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    /// The certificates between a leaf and the root: `ca-cert.pem` first (empty when the CA
    /// is the root itself).
    intermediates: Vec<String>,
    /// The root the chain ends at.
    root_pem: String,
    /// All of `root-cert.pem` (one root, or several while roots rotate).
    trust_bundle_pem: String,
    ca_subject: String,
    ca_not_after: SystemTime,
    key_algorithm: KeyAlgorithm,
    token_key: TokenKey,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("ca_subject", &self.ca_subject)
            .field("ca_not_after", &crate::inspect::rfc3339(self.ca_not_after))
            .field("intermediates", &self.intermediates.len())
            .field("key_algorithm", &self.key_algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Checks CA material and builds a CA from it.
    ///
    /// # Errors
    /// [`Error::InvalidCertificate`]/[`Error::InvalidKey`] for unreadable PEM, and
    /// [`Error::InvalidCa`] when the key does not belong to `ca-cert.pem`, `ca-cert.pem` is not
    /// a CA or is expired, or `cert-chain.pem` does not lead, in order, to a root in
    /// `root-cert.pem`.
    pub fn new(cacerts: &Cacerts) -> Result<Self, Error> {
        Self::new_at(cacerts, SystemTime::now())
    }

    /// Reads `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` and `root-cert.pem` from `dir`
    /// (see [`crate::files::read_cacerts`]) and builds the CA.
    ///
    /// # Errors
    /// As [`crate::files::read_cacerts`] (missing files, a key file others can read) and
    /// [`CertificateAuthority::new`].
    pub fn load(dir: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Self::new(&crate::files::read_cacerts(dir.as_ref())?)
    }

    /// A CA with a fresh in-memory ECDSA P-256 root that signs directly (istiod's self-signed
    /// mode); nothing touches the disk.
    ///
    /// # Errors
    /// [`Error::Certificate`] if rcgen fails.
    pub fn self_signed(options: &CaOptions) -> Result<Self, Error> {
        let root = RootCa::generate(&KeyPair::generate(KeyAlgorithm::EcdsaP256)?, options)?;
        Self::new(&Cacerts::self_signed(&root))
    }

    fn new_at(cacerts: &Cacerts, now: SystemTime) -> Result<Self, Error> {
        let key = KeyPair::from_pem(&cacerts.ca_key, "ca-key.pem")?;
        let ca_der = single_cert(&cacerts.ca_cert, "ca-cert.pem")?;
        let ca_cert = parse_cert(&ca_der, "ca-cert.pem")?;
        check_key_matches(&key, &ca_cert, "ca-key.pem", "ca-cert.pem")?;
        check_is_ca(&ca_cert, "ca-cert.pem")?;

        let mut chain = if cacerts.cert_chain.trim().is_empty() {
            Vec::new()
        } else {
            parse_certs(&cacerts.cert_chain, "cert-chain.pem")?
        };
        if chain.first() != Some(&ca_der) {
            chain.insert(0, ca_der.clone());
        }
        let roots = parse_certs(&cacerts.root_cert, "root-cert.pem")?;
        // cert-chain.pem usually ends with the root itself (Istio's Makefile): drop it.
        while chain.len() > 1
            && let Some(last) = chain.last()
            && roots.contains(last)
        {
            chain.pop();
        }
        for (i, pair) in chain.windows(2).enumerate() {
            if !signed_by(&pair[0], &pair[1]) {
                return Err(Error::ca(format!(
                    "cert-chain.pem is out of order: certificate {} ({}) is not signed by certificate {} ({})",
                    i + 1,
                    subject_of(&pair[0]),
                    i + 2,
                    subject_of(&pair[1]),
                )));
            }
        }
        let root_der = chain_anchor(&mut chain, &roots)?;
        for (i, der) in chain.iter().chain(std::iter::once(&root_der)).enumerate() {
            let what = if i < chain.len() {
                format!("certificate {} of cert-chain.pem", i + 1)
            } else {
                "the root".to_owned()
            };
            let cert = parse_cert(der, &what)?;
            check_is_ca(&cert, &what)?;
            check_valid_now(&cert, &what, now)?;
        }

        let ca_subject = ca_cert.subject().to_string();
        let ca_not_after = system_time(ca_cert.validity().not_after.timestamp());
        let key_algorithm = key.algorithm();
        let token_key = TokenKey::derive(key.secret_der());
        let issuer = issuer_for(&ca_der, &ca_cert, key, "ca-cert.pem")?;
        Ok(Self {
            issuer,
            ca_cert_pem: pem::encode("CERTIFICATE", &ca_der),
            intermediates: chain
                .iter()
                .map(|d| pem::encode("CERTIFICATE", d))
                .collect(),
            root_pem: pem::encode("CERTIFICATE", &root_der),
            trust_bundle_pem: roots
                .iter()
                .map(|d| pem::encode("CERTIFICATE", d))
                .collect(),
            ca_subject,
            ca_not_after,
            key_algorithm,
            token_key,
        })
    }

    /// Signs `csr` for `identity`, valid for `ttl` from now (zero: 24 h).
    ///
    /// The CSR's signature must verify; everything it asks for other than its public key is
    /// ignored (see the [module docs](self)). The caller is responsible for having
    /// authenticated `identity`.
    ///
    /// # Errors
    /// [`Error::TtlTooLong`] above 90 days; [`Error::CsrSignature`] for an altered or
    /// unsigned CSR; [`Error::InvalidCsr`] for one that cannot be parsed or uses an
    /// unsupported key.
    pub fn sign(
        &self,
        csr: &CsrPem,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertBundle, Error> {
        self.sign_at(csr, identity, ttl, SystemTime::now())
    }

    /// [`sign`](Self::sign) with an explicit current time.
    ///
    /// # Errors
    /// As [`sign`](Self::sign).
    pub fn sign_at(
        &self,
        csr: &CsrPem,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<CertBundle, Error> {
        let ttl = if ttl.is_zero() {
            DEFAULT_WORKLOAD_CERT_TTL
        } else {
            ttl
        };
        if ttl > MAX_WORKLOAD_CERT_TTL {
            return Err(Error::TtlTooLong {
                requested: ttl,
                max: MAX_WORKLOAD_CERT_TTL,
            });
        }
        let request = csr::verify(csr)?;
        let bundle = self.sign_leaf(
            &request.public_key,
            &request.spki_der,
            identity,
            &[],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ttl,
            now,
        )?;
        tracing::debug!(%identity, serial = %bundle.serial, "issued a workload certificate");
        Ok(bundle)
    }

    /// Issues the CA server's own TLS certificate for `key`: DNS SANs `dns_names` (at least
    /// one) and one SPIFFE URI SAN `identity`, extended key usage serverAuth only (so it
    /// cannot authenticate as a workload client), valid for `ttl` (zero: 24 h, at most 90
    /// days) from `now`, chaining to the same root as workload certificates.
    ///
    /// Workload certificates ([`sign`](Self::sign)) never carry DNS names; this is the only
    /// way to get one that does.
    ///
    /// # Errors
    /// [`Error::InvalidCertificate`] for no or invalid DNS names; [`Error::TtlTooLong`].
    pub fn issue_server_cert_at(
        &self,
        key: &KeyPair,
        dns_names: &[String],
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<CertBundle, Error> {
        let ttl = if ttl.is_zero() {
            DEFAULT_WORKLOAD_CERT_TTL
        } else {
            ttl
        };
        if ttl > MAX_WORKLOAD_CERT_TTL {
            return Err(Error::TtlTooLong {
                requested: ttl,
                max: MAX_WORKLOAD_CERT_TTL,
            });
        }
        let invalid = |reason: String| Error::InvalidCertificate {
            what: "the server certificate's DNS names".to_owned(),
            reason,
        };
        if dns_names.is_empty() {
            return Err(invalid("at least one DNS name is required".to_owned()));
        }
        if let Some(bad) = dns_names.iter().find(|n| !valid_dns_name(n)) {
            return Err(invalid(format!("{bad:?} is not a valid DNS name")));
        }
        let bundle = self.sign_leaf(
            key,
            &key.public_key_der(),
            identity,
            dns_names,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            ttl,
            now,
        )?;
        tracing::debug!(%identity, serial = %bundle.serial, dns = ?dns_names, "issued the server certificate");
        Ok(bundle)
    }

    /// [`issue_server_cert_at`](Self::issue_server_cert_at) now.
    ///
    /// # Errors
    /// As [`issue_server_cert_at`](Self::issue_server_cert_at).
    pub fn issue_server_cert(
        &self,
        key: &KeyPair,
        dns_names: &[String],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertBundle, Error> {
        self.issue_server_cert_at(key, dns_names, identity, ttl, SystemTime::now())
    }

    /// Builds and signs a leaf for `public_key` (its SPKI is `spki_der`): empty subject,
    /// exactly one URI SAN (`identity`) plus `dns_names`, `CA:FALSE`, digitalSignature +
    /// keyEncipherment, `ekus`, random serial, validity `now - skew ..= now + ttl` (capped at
    /// the CA's expiry). `ttl` has been checked already.
    #[allow(clippy::too_many_arguments)]
    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spki_der: &[u8],
        identity: &Identity,
        dns_names: &[String],
        ekus: &[ExtendedKeyUsagePurpose],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<CertBundle, Error> {
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        let not_after = validity_end(now, ttl, "the certificate")?.min(self.ca_not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string())
            .map_err(|e| Error::rcgen("encoding the SPIFFE URI", e))?;
        params.subject_alt_names = Vec::with_capacity(dns_names.len() + 1);
        for name in dns_names {
            let name = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|e| Error::rcgen("encoding a DNS name", e))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.subject_alt_names.push(SanType::URI(uri));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = ekus.to_vec();
        params.serial_number = Some(random_serial()?);
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| Error::rcgen("signing the workload certificate", e))?;

        let leaf = parse_cert(cert.der(), "the issued certificate")?;
        if leaf.public_key().raw != spki_der {
            return Err(Error::csr(
                "its public key cannot be carried into a certificate unchanged",
            ));
        }
        let serial = serial_hex(leaf.raw_serial());
        let not_before = system_time(leaf.validity().not_before.timestamp());
        let not_after = system_time(leaf.validity().not_after.timestamp());
        let leaf_pem = cert.pem();
        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(leaf_pem.clone());
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root_pem.clone());
        Ok(CertBundle {
            leaf_pem,
            chain,
            identity: identity.clone(),
            serial,
            not_before,
            not_after,
        })
    }

    /// Makes a CSR for `identity` with `key` and signs it: what a workload does against an
    /// in-process CA, and what `mesh-ca issue` does.
    ///
    /// # Errors
    /// As [`sign`](Self::sign).
    pub fn issue(
        &self,
        identity: &Identity,
        key: &KeyPair,
        ttl: Duration,
    ) -> Result<CertBundle, Error> {
        self.sign(&csr::generate(identity, key)?, identity, ttl)
    }

    /// Mints a bootstrap token for `identity`, valid for `ttl` (at most 30 days) from `now`.
    /// See [`crate::token`] for the format.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero or too long TTL.
    pub fn mint_token(
        &self,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, Error> {
        self.token_key.mint(identity, ttl, now)
    }

    /// Checks a bootstrap token minted with this CA's key and returns the identity it is
    /// bound to.
    ///
    /// # Errors
    /// [`Error::TokenMalformed`], [`Error::TokenBadMac`] or [`Error::TokenExpired`].
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<Identity, Error> {
        self.token_key.verify(token, now)
    }

    /// `ca-cert.pem`, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The root the issued chains end at, PEM.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// All roots of `root-cert.pem` (the trust bundle to hand to workloads).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// The certificates an issued chain carries between the leaf and the root.
    pub fn intermediates_pem(&self) -> &[String] {
        &self.intermediates
    }

    /// When `ca-cert.pem` expires (no issued certificate outlives it).
    pub fn ca_not_after(&self) -> SystemTime {
        self.ca_not_after
    }

    /// The CA key's algorithm.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }
}

// === helpers ===

/// A DNS name a certificate may carry: labels of letters, digits and `-` (not at either
/// end), 1–63 bytes each, 253 in all; a leading `*.` wildcard label is allowed.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn ca_params(
    options: &CaOptions,
    constraints: BasicConstraints,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = options.distinguished_name();
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = offset_date_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
    params.not_after = offset_date_time(not_after)?;
    Ok(params)
}

/// Builds rcgen's issuer for a CA certificate, and checks that what it signs names the CA
/// exactly (rcgen re-encodes the subject) and verifies with the CA's key.
fn issuer_for(
    ca_der: &[u8],
    ca_cert: &X509Certificate<'_>,
    key: KeyPair,
    what: &str,
) -> Result<Issuer<'static, KeyPair>, Error> {
    // rcgen panics on an empty RDN and refuses multi-valued ones: check first.
    if !ca_cert.subject().iter().all(|rdn| rdn.iter().count() == 1) {
        return Err(Error::ca(format!(
            "{what}'s subject has multi-valued or empty name components, which cannot be reproduced exactly"
        )));
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der.to_vec().into(), key)
        .map_err(|e| Error::rcgen("reading the CA certificate", e))?;
    // Self-test: sign a throwaway certificate for the CA's own key and check it chains.
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    let probe = params
        .signed_by(issuer.key(), &issuer)
        .map_err(|e| Error::rcgen("signing a test certificate", e))?;
    if !signed_by(probe.der(), ca_der) {
        return Err(Error::ca(format!(
            "certificates signed with {what} would not chain to it (its subject cannot be re-encoded exactly)"
        )));
    }
    Ok(issuer)
}

/// Finds the root of `roots` that `chain` (with trailing roots already removed) ends at.
/// When the CA is itself a root, `chain` is emptied.
fn chain_anchor(chain: &mut Vec<Vec<u8>>, roots: &[Vec<u8>]) -> Result<Vec<u8>, Error> {
    let Some(last) = chain.last() else {
        return Err(Error::ca("cert-chain.pem is empty"));
    };
    if roots.contains(last) {
        // The CA is a root itself.
        let root = last.clone();
        chain.clear();
        return Ok(root);
    }
    roots
        .iter()
        .find(|root| signed_by(last, root))
        .cloned()
        .ok_or_else(|| {
            Error::ca(format!(
                "the chain does not end at a root of root-cert.pem: {} is issued by {}, which is not in root-cert.pem",
                subject_of(last),
                issuer_of(last),
            ))
        })
}

/// True when `child` names `parent` as issuer and its signature verifies with `parent`'s key.
pub(crate) fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        X509Certificate::from_der(child),
        X509Certificate::from_der(parent),
    ) else {
        return false;
    };
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn subject_of(der: &[u8]) -> String {
    X509Certificate::from_der(der).map_or_else(|_| "?".to_owned(), |(_, c)| name(c.subject()))
}

fn issuer_of(der: &[u8]) -> String {
    X509Certificate::from_der(der).map_or_else(|_| "?".to_owned(), |(_, c)| name(c.issuer()))
}

fn name(n: &x509_parser::x509::X509Name<'_>) -> String {
    let s = n.to_string();
    if s.is_empty() {
        "(empty subject)".to_owned()
    } else {
        s
    }
}

fn check_key_matches(
    key: &KeyPair,
    cert: &X509Certificate<'_>,
    key_what: &str,
    cert_what: &str,
) -> Result<(), Error> {
    if key.public_key_der() != cert.public_key().raw {
        return Err(Error::ca(format!(
            "{key_what} is not the key of {cert_what} (their public keys differ)"
        )));
    }
    Ok(())
}

fn check_is_ca(cert: &X509Certificate<'_>, what: &str) -> Result<(), Error> {
    let ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !ca {
        return Err(Error::ca(format!(
            "{what} ({}) is not a CA certificate (no basicConstraints CA:TRUE)",
            name(cert.subject())
        )));
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(Error::ca(format!(
            "{what} ({}) may not sign certificates (its key usage lacks keyCertSign)",
            name(cert.subject())
        )));
    }
    Ok(())
}

fn check_valid_now(cert: &X509Certificate<'_>, what: &str, now: SystemTime) -> Result<(), Error> {
    let not_before = system_time(cert.validity().not_before.timestamp());
    let not_after = system_time(cert.validity().not_after.timestamp());
    if now > not_after {
        return Err(Error::ca(format!(
            "{what} ({}) expired at {}",
            name(cert.subject()),
            crate::inspect::rfc3339(not_after)
        )));
    }
    if now + CLOCK_SKEW < not_before {
        return Err(Error::ca(format!(
            "{what} ({}) is not valid before {}",
            name(cert.subject()),
            crate::inspect::rfc3339(not_before)
        )));
    }
    Ok(())
}

/// The DER of every `CERTIFICATE` block in `text`; at least one.
pub(crate) fn parse_certs(text: &str, what: &str) -> Result<Vec<Vec<u8>>, Error> {
    let invalid = |reason: String| Error::InvalidCertificate {
        what: what.to_owned(),
        reason,
    };
    let blocks = pem::parse(text).map_err(|e| invalid(format!("bad PEM: {e}")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect();
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block".to_owned()));
    }
    for (i, der) in certs.iter().enumerate() {
        parse_cert(der, &format!("{what} (certificate {})", i + 1))?;
    }
    Ok(certs)
}

fn single_cert(text: &str, what: &str) -> Result<Vec<u8>, Error> {
    let mut certs = parse_certs(text, what)?;
    if certs.len() != 1 {
        return Err(Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("expected one certificate, found {}", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, Error> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(Error::InvalidCertificate {
            what: what.to_owned(),
            reason: "trailing bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("not an X.509 certificate: {e}"),
        }),
    }
}

/// The URI SANs of a certificate.
pub(crate) fn san_uris(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// Upper-case hex of a DER INTEGER's content, without the sign-padding zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw.get(first..)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn random_serial() -> Result<SerialNumber, Error> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = [0u8; 16];
    loop {
        rng.fill(&mut bytes).map_err(|_| Error::InvalidCa {
            reason: "the system random number generator failed".to_owned(),
        })?;
        if bytes.iter().any(|&b| b != 0) {
            return Ok(SerialNumber::from_slice(&bytes));
        }
    }
}

fn validity_end(now: SystemTime, ttl: Duration, what: &str) -> Result<SystemTime, Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidTtl {
            reason: format!("{what} needs a TTL above zero"),
        });
    }
    now.checked_add(ttl)
        .filter(|t| {
            t.duration_since(UNIX_EPOCH)
                .is_ok_and(|d| d.as_secs() < 253_402_300_800)
        })
        .ok_or_else(|| Error::InvalidTtl {
            reason: format!("{what}'s TTL reaches past the year 9999"),
        })
}

/// Whole seconds since the epoch as an `OffsetDateTime` (certificates carry seconds).
fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime, Error> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| Error::InvalidTtl {
        reason: "time out of range".to_owned(),
    })
}

pub(crate) fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyAlgorithm;

    fn p256() -> KeyPair {
        KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap()
    }

    fn id(sa: &str) -> Identity {
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn two_level() -> (RootCa, Cacerts, CertificateAuthority) {
        let root = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
        let cacerts =
            Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("c1")).unwrap();
        let ca = CertificateAuthority::new(&cacerts).unwrap();
        (root, cacerts, ca)
    }

    #[test]
    fn signs_one_uri_san_and_fixed_usages() {
        let (_, _, ca) = two_level();
        let key = p256();
        let now = SystemTime::now();
        let bundle = ca
            .sign_at(
                &csr::generate(&id("reviews"), &key).unwrap(),
                &id("reviews"),
                Duration::ZERO,
                now,
            )
            .unwrap();
        assert_eq!(bundle.chain.len(), 3);
        assert_eq!(bundle.leaf_pem, bundle.chain[0]);
        assert_eq!(bundle.identity, id("reviews"));
        let der = pem::parse(&bundle.leaf_pem).unwrap().remove(0).der;
        let leaf = parse_cert(&der, "leaf").unwrap();
        assert_eq!(san_uris(&leaf), vec![id("reviews").to_string()]);
        assert!(!leaf.is_ca());
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(nb, now_s - 60);
        assert_eq!(na, now_s + 24 * 3600);
        assert_eq!(bundle.not_after, system_time(na));
        assert_eq!(bundle.serial, serial_hex(leaf.raw_serial()));
        // Chain: leaf ← intermediate ← root.
        let ders: Vec<Vec<u8>> = bundle
            .chain
            .iter()
            .map(|p| pem::parse(p).unwrap().remove(0).der)
            .collect();
        assert!(signed_by(&ders[0], &ders[1]));
        assert!(signed_by(&ders[1], &ders[2]));
        assert!(signed_by(&ders[2], &ders[2]));
    }

    #[test]
    fn server_certs_carry_dns_names_and_one_uri() {
        let (_, _, ca) = two_level();
        let key = p256();
        let names = vec!["localhost".to_owned(), "mesh-ca".to_owned()];
        let server_id: Identity = "spiffe://cluster.local/ns/istio-system/sa/mesh-ca"
            .parse()
            .unwrap();
        let bundle = ca
            .issue_server_cert(&key, &names, &server_id, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(bundle.chain.len(), 3);
        let der = pem::parse(&bundle.leaf_pem).unwrap().remove(0).der;
        let leaf = parse_cert(&der, "leaf").unwrap();
        assert_eq!(san_uris(&leaf), vec![server_id.to_string()]);
        let dns: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(dns, names);
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(signed_by(
            &der,
            &pem::parse(&bundle.chain[1]).unwrap().remove(0).der
        ));

        // Names are checked; workload certificates still carry no DNS name.
        for bad in [vec![], vec!["bad name".to_owned()], vec!["a..b".to_owned()]] {
            let err = ca
                .issue_server_cert(&key, &bad, &server_id, Duration::ZERO)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidCertificate { .. }), "{err}");
        }
        let err = ca
            .issue_server_cert(&key, &names, &server_id, Duration::from_secs(91 * 86_400))
            .unwrap_err();
        assert!(matches!(err, Error::TtlTooLong { .. }), "{err}");
        let workload = ca.issue(&id("a"), &key, Duration::ZERO).unwrap();
        let der = pem::parse(&workload.leaf_pem).unwrap().remove(0).der;
        let leaf = parse_cert(&der, "leaf").unwrap();
        assert_eq!(
            leaf.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .len(),
            1
        );
    }

    #[test]
    fn serials_are_random_and_128_bits() {
        let (_, _, ca) = two_level();
        let key = p256();
        let a = ca.issue(&id("a"), &key, Duration::ZERO).unwrap();
        let b = ca.issue(&id("a"), &key, Duration::ZERO).unwrap();
        assert_ne!(a.serial, b.serial, "same key, same identity, new serial");
        assert!(a.serial.len() <= 32 && a.serial.len() >= 28, "{}", a.serial);
    }

    #[test]
    fn ttl_rules_are_istiods() {
        let (_, _, ca) = two_level();
        let key = p256();
        let csr = csr::generate(&id("r"), &key).unwrap();
        let ok = ca.sign(&csr, &id("r"), MAX_WORKLOAD_CERT_TTL).unwrap();
        assert!(ok.not_after > SystemTime::now() + MAX_WORKLOAD_CERT_TTL - Duration::from_secs(5));
        let err = ca
            .sign(
                &csr,
                &id("r"),
                MAX_WORKLOAD_CERT_TTL + Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "requested TTL 2160h0m1s is greater than the max allowed TTL 2160h0m0s"
        );
        assert_eq!(ttl_from_seconds(-5), Duration::ZERO);
        assert_eq!(ttl_from_seconds(0), Duration::ZERO);
        assert_eq!(ttl_from_seconds(3600), Duration::from_secs(3600));
    }

    #[test]
    fn issued_certificates_never_outlive_the_ca() {
        let root = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
        let mut opts = CaOptions::intermediate("c1");
        opts.ttl = Duration::from_secs(3600);
        let cacerts = Cacerts::intermediate(&root, &p256(), &opts).unwrap();
        let ca = CertificateAuthority::new(&cacerts).unwrap();
        let bundle = ca.issue(&id("r"), &p256(), Duration::ZERO).unwrap();
        assert_eq!(bundle.not_after, ca.ca_not_after());
    }

    #[test]
    fn self_signed_mode_returns_leaf_and_root() {
        let ca = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
        let bundle = ca.issue(&id("r"), &p256(), Duration::ZERO).unwrap();
        assert_eq!(bundle.chain.len(), 2);
        assert_eq!(bundle.root_pem(), ca.root_cert_pem());
        assert!(bundle.intermediates().is_empty());
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (_, mut cacerts, _) = two_level();
        cacerts.ca_key = p256().to_pem();
        let err = CertificateAuthority::new(&cacerts).unwrap_err();
        assert!(
            err.to_string()
                .contains("ca-key.pem is not the key of ca-cert.pem"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_chain_to_another_root() {
        let (_, mut cacerts, _) = two_level();
        let other = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
        cacerts.root_cert = other.cert_pem.clone();
        cacerts.cert_chain = cacerts.ca_cert.clone();
        let err = CertificateAuthority::new(&cacerts).unwrap_err();
        assert!(err.to_string().contains("does not end at a root"), "{err}");
    }

    #[test]
    fn refuses_an_out_of_order_chain() {
        let root = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
        let (root2, ..) = two_level();
        let cacerts = Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("c")).unwrap();
        // Put an unrelated CA between the intermediate and the root.
        let bad = Cacerts {
            cert_chain: format!("{}{}{}", cacerts.ca_cert, root2.cert_pem, root.cert_pem),
            ..cacerts.clone()
        };
        let err = CertificateAuthority::new(&bad).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        // Without cert-chain.pem the chain is rebuilt from ca-cert.pem and root-cert.pem.
        let bare = Cacerts {
            cert_chain: String::new(),
            ..cacerts
        };
        let ca = CertificateAuthority::new(&bare).unwrap();
        assert_eq!(
            ca.issue(&id("r"), &p256(), Duration::ZERO)
                .unwrap()
                .chain
                .len(),
            3
        );
    }

    #[test]
    fn refuses_a_leaf_as_ca() {
        let (_, cacerts, ca) = two_level();
        let key = p256();
        let bundle = ca.issue(&id("r"), &key, Duration::ZERO).unwrap();
        let leaf_as_ca = Cacerts {
            ca_cert: bundle.leaf_pem.clone(),
            ca_key: key.to_pem(),
            cert_chain: bundle.chain_pem(),
            root_cert: cacerts.root_cert.clone(),
        };
        let err = CertificateAuthority::new(&leaf_as_ca).unwrap_err();
        assert!(err.to_string().contains("is not a CA certificate"), "{err}");
    }

    #[test]
    fn refuses_an_intermediate_outliving_its_root() {
        let mut opts = CaOptions::root();
        opts.ttl = Duration::from_secs(3600);
        let root = RootCa::generate(&p256(), &opts).unwrap();
        let err = Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("c")).unwrap_err();
        assert!(err.to_string().contains("outlive its root"), "{err}");
    }

    #[test]
    fn expired_ca_is_refused() {
        let (_, cacerts, _) = two_level();
        let later = SystemTime::now() + Duration::from_secs(800 * 24 * 3600);
        let err = CertificateAuthority::new_at(&cacerts, later).unwrap_err();
        assert!(err.to_string().contains("expired at"), "{err}");
    }

    #[test]
    fn bundle_from_chain_reads_a_response() {
        let (_, _, ca) = two_level();
        let bundle = ca.issue(&id("r"), &p256(), Duration::ZERO).unwrap();
        let back = CertBundle::from_chain(&bundle.chain).unwrap();
        assert_eq!(back, bundle);
        // One element holding the whole chain is split.
        let back = CertBundle::from_chain(&[bundle.chain_pem()]).unwrap();
        assert_eq!(back.chain, bundle.chain);
        assert!(CertBundle::from_chain(&bundle.chain[..1]).is_err());
    }

    #[test]
    fn tokens_are_bound_to_the_ca_key() {
        let (_, _, ca) = two_level();
        let (_, _, other) = two_level();
        let now = SystemTime::now();
        let token = ca
            .mint_token(&id("r"), Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(ca.verify_token(&token, now).unwrap(), id("r"));
        assert!(matches!(
            other.verify_token(&token, now),
            Err(Error::TokenBadMac)
        ));
        // Loading the same files again gives the same token key.
        let (_, cacerts, _) = two_level();
        let a = CertificateAuthority::new(&cacerts).unwrap();
        let b = CertificateAuthority::new(&cacerts).unwrap();
        let t = a
            .mint_token(&id("x"), Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(b.verify_token(&t, now).unwrap(), id("x"));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let (root, cacerts, ca) = two_level();
        let key_line = cacerts
            .ca_key
            .expose_secret()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        for s in [
            format!("{ca:?}"),
            format!("{cacerts:?}"),
            format!("{root:?}"),
        ] {
            assert!(!s.contains(&key_line), "{s}");
            assert!(s.contains("redacted"), "{s}");
        }
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CertificateAuthority>();
        check::<CertBundle>();
    }
}
