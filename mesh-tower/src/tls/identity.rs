//! Credentials ([`TlsIdentity`]), the identities a destination may present
//! ([`ExpectedIdentities`]) and the verified identity of a peer ([`PeerIdentity`]).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use mesh_core::identity::Identity;
use rustls::{
    RootCertStore,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::watch;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::{TlsError, provider};

/// The live source of the workload's credentials: the glue forwards what the workload's
/// certificate manager publishes. `None` until the first certificate arrives (TLS fails
/// closed meanwhile); every handshake reads the current value.
pub type IdentityWatch = watch::Receiver<Option<Arc<TlsIdentity>>>;

// === TlsIdentity ===

/// A workload's TLS credentials: its certificate chain and private key, and the trust bundle
/// it verifies peers against.
///
/// Everything a handshake needs is prepared once, when the value is built: the signing key
/// is parsed into rustls' [`CertifiedKey`] (and checked against the leaf), the trust bundle
/// into a root store and a client-certificate verifier. A handshake only clones `Arc`s, so
/// rotating credentials costs one parse per rotation, not one per handshake.
///
/// `Debug` prints the identity, serial and validity; never key material. The private key is
/// not kept as bytes: it lives only inside the signing key.
pub struct TlsIdentity {
    identity: Identity,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    certified: Arc<CertifiedKey>,
    roots: Vec<CertificateDer<'static>>,
    root_store: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TlsIdentity {
    /// Builds credentials from DER: `chain` leaf first (intermediates after it; the root may
    /// be included and is then sent too), the leaf's private key, and the trust bundle
    /// `roots` (one or several roots, e.g. old and new while a root rotates).
    ///
    /// The identity is the leaf's one SPIFFE URI SAN.
    ///
    /// # Errors
    /// [`TlsError::InvalidCredentials`] if the chain is empty, the leaf cannot be parsed or
    /// has not exactly one URI SAN holding a SPIFFE identity, the key is unusable or does not
    /// belong to the leaf, or the bundle is empty or holds a certificate that cannot be a
    /// trust anchor.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let invalid = |what, reason: String| TlsError::InvalidCredentials { what, reason };
        let Some(leaf) = chain.first() else {
            return Err(invalid(
                "certificate chain",
                "no certificate (the leaf comes first)".to_owned(),
            ));
        };
        let info = LeafInfo::parse(leaf).map_err(|reason| {
            invalid(
                "certificate chain",
                format!("the leaf certificate: {reason}"),
            )
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            let reason = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "it does not belong to the leaf certificate".to_owned()
                }
                other => format!("rustls cannot use it ({other})"),
            };
            invalid("private key", reason)
        })?;
        if roots.is_empty() {
            return Err(invalid("trust bundle", "no root certificate".to_owned()));
        }
        let mut store = RootCertStore::empty();
        for (i, root) in roots.iter().enumerate() {
            store.add(root.clone()).map_err(|e| {
                invalid(
                    "trust bundle",
                    format!("certificate {} cannot be a trust anchor: {e}", i + 1),
                )
            })?;
        }
        let root_store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(root_store.clone(), provider())
                .build()
                .map_err(|e| invalid("trust bundle", e.to_string()))?;
        Ok(Self {
            identity: info.identity,
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            certified: Arc::new(certified),
            roots,
            root_store,
            client_verifier,
        })
    }

    /// Builds credentials from PEM text: `chain_pem` holds the leaf first, then any
    /// intermediates (and optionally the root); `key_pem` the leaf's private key (PKCS #8,
    /// PKCS #1 or SEC 1, unencrypted); `roots_pem` the trust bundle (one or more roots).
    ///
    /// # Errors
    /// [`TlsError::InvalidCredentials`] naming the input that is wrong: unreadable PEM, no
    /// certificate or key in it, an encrypted key, and everything [`TlsIdentity::new`]
    /// checks.
    pub fn from_pem(
        chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
        roots_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        let chain = certs_from_pem(chain_pem.as_ref(), "certificate chain")?;
        let roots = certs_from_pem(roots_pem.as_ref(), "trust bundle")?;
        let key = key_from_pem(key_pem.as_ref())?;
        Self::new(chain, key, roots)
    }

    /// The workload identity: the leaf's SPIFFE URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The certificate chain presented to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The trust bundle peers are verified against.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The leaf's serial number, upper-case hex without leading zeros (as mesh-ca and
    /// `openssl x509 -serial` write it).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain and signing key, as handshakes use them.
    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The trust bundle as a root store (server certificates are verified against it).
    pub(crate) fn root_store(&self) -> &RootCertStore {
        &self.root_store
    }

    /// rustls' client-certificate verifier for this trust bundle.
    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("identity", &format_args!("{}", self.identity))
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .field("roots", &self.roots.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCredentials {
            what,
            reason: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::InvalidCredentials {
            what,
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let invalid = |reason: String| TlsError::InvalidCredentials {
        what: "private key",
        reason,
    };
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(pem);
            Err(invalid(if text.contains("ENCRYPTED PRIVATE KEY") {
                "the key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)"
                    .to_owned()
            } else {
                "no PRIVATE KEY block found (PKCS #8, PKCS #1 RSA or SEC 1 EC)".to_owned()
            }))
        }
        Err(e) => Err(invalid(format!("unreadable PEM: {e}"))),
    }
}

// === LeafInfo ===

/// What the mesh reads from a leaf certificate.
#[derive(Debug)]
pub(crate) struct LeafInfo {
    pub(crate) identity: Identity,
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl LeafInfo {
    /// Parses a leaf: it must carry exactly one URI SAN, a SPIFFE identity (the X.509-SVID
    /// rule); DNS and IP SANs may be present too and are ignored.
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subjectAltName ({e})"))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(format!(
                "it has {} URI SANs; a workload certificate carries exactly one SPIFFE id",
                uris.len()
            ));
        };
        let identity: Identity = uri.parse().map_err(|e| format!("{e}"))?;
        Ok(Self {
            identity,
            serial: serial_hex(cert.raw_serial()),
            not_before: system_time(cert.validity().not_before.timestamp()),
            not_after: system_time(cert.validity().not_after.timestamp()),
        })
    }
}

fn serial_hex(raw: &[u8]) -> String {
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

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

// === PeerIdentity ===

/// The verified identity of the peer of a mutual-TLS connection: the SPIFFE id in its
/// certificate, which chained to the trust bundle during the handshake.
///
/// The server puts it into each request's extensions; the client connector puts it into
/// the connection's extras (hyper-util copies them into each response's extensions). Cheap
/// to clone (its strings are shared): it is copied into every request of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The peer's SPIFFE identity.
    pub identity: Identity,
    /// The serial of the peer's leaf certificate, upper-case hex.
    pub serial: Arc<str>,
    /// The end of the peer certificate's validity.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// A peer identity as a verified certificate states it.
    pub fn new(identity: Identity, serial: impl Into<Arc<str>>, not_after: SystemTime) -> Self {
        Self {
            identity,
            serial: serial.into(),
            not_after,
        }
    }

    pub(crate) fn from_certs(certs: Option<&[CertificateDer<'_>]>) -> Result<Self, String> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| "the peer presented no certificate".to_owned())?;
        let info = LeafInfo::parse(leaf)?;
        Ok(Self {
            identity: info.identity,
            serial: info.serial.into(),
            not_after: info.not_after,
        })
    }
}

// === ExpectedIdentities ===

/// The identities a destination may present: the service accounts that back it (Istio's
/// secure naming, from WorkloadEntry `serviceAccount` / ServiceEntry `subjectAltNames`).
///
/// Cheap to clone. An empty set ([`ExpectedIdentities::one_of`] with no identities) accepts
/// no server at all (fail closed); Istio's behaviour for destinations that list no service
/// accounts (any identity of the trust bundle) is the explicit
/// [`ExpectedIdentities::any_in_trust_domain`].
///
/// ```
/// use mesh_core::identity::Identity;
/// use mesh_tower::tls::ExpectedIdentities;
/// let reviews: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let expected = ExpectedIdentities::one_of([reviews.clone()]);
/// assert!(expected.identities().contains(&reviews));
/// assert_eq!(expected.to_string(), "one of [spiffe://cluster.local/ns/default/sa/reviews]");
/// # Ok::<_, mesh_core::identity::InvalidIdentity>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExpectedIdentities(Expected);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Expected {
    AnyInTrustDomain,
    OneOf(Arc<[Identity]>),
}

impl ExpectedIdentities {
    /// The server must present one of `identities` (sorted and deduplicated here).
    pub fn one_of(identities: impl IntoIterator<Item = Identity>) -> Self {
        let mut ids: Vec<Identity> = identities.into_iter().collect();
        ids.sort();
        ids.dedup();
        Self(Expected::OneOf(ids.into()))
    }

    /// Any identity of the local trust domain that chains to the trust bundle (what Istio
    /// does when a destination lists no service accounts).
    pub fn any_in_trust_domain() -> Self {
        Self(Expected::AnyInTrustDomain)
    }

    /// The listed identities (empty for [`ExpectedIdentities::any_in_trust_domain`]).
    pub fn identities(&self) -> &[Identity] {
        match &self.0 {
            Expected::AnyInTrustDomain => &[],
            Expected::OneOf(ids) => ids,
        }
    }

    /// True for [`ExpectedIdentities::any_in_trust_domain`].
    pub fn is_any_in_trust_domain(&self) -> bool {
        matches!(self.0, Expected::AnyInTrustDomain)
    }

    /// True if a server presenting `presented` is acceptable to a client of the trust domain
    /// `local_trust_domain`.
    pub fn accepts(&self, presented: &Identity, local_trust_domain: &str) -> bool {
        match &self.0 {
            Expected::AnyInTrustDomain => presented.trust_domain() == local_trust_domain,
            Expected::OneOf(ids) => ids.binary_search(presented).is_ok(),
        }
    }
}

impl From<Identity> for ExpectedIdentities {
    fn from(identity: Identity) -> Self {
        Self::one_of([identity])
    }
}

impl FromIterator<Identity> for ExpectedIdentities {
    fn from_iter<I: IntoIterator<Item = Identity>>(iter: I) -> Self {
        Self::one_of(iter)
    }
}

impl fmt::Display for ExpectedIdentities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Expected::AnyInTrustDomain => f.write_str("any identity of the local trust domain"),
            Expected::OneOf(ids) if ids.is_empty() => {
                f.write_str("no identity (the destination lists no service accounts)")
            }
            Expected::OneOf(ids) => {
                f.write_str("one of [")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                f.write_str("]")
            }
        }
    }
}
