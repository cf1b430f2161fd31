//! TLS originated by the mesh to servers that are not mesh workloads: DestinationRule
//! `tls.mode` `SIMPLE` (server verified) and `MUTUAL` (plus a client certificate from files).
//!
//! The application keeps calling `http://api.example.com`; the connection to the endpoint is
//! TLS, as Istio's egress TLS origination does with a sidecar.
//!
//! | field | meaning here |
//! |---|---|
//! | `caCertificates` | PEM file of the roots the server must chain to; without it, the operating system's roots |
//! | `clientCertificate`, `privateKey` | PEM files (MUTUAL); the chain is sent as is |
//! | `sni` | the server name sent, and checked when `subjectAltNames` is empty; default the destination host |
//! | `subjectAltNames` | the server's certificate must carry one of these SANs (DNS, IP or URI, exact match); then the SNI name is not checked |
//! | `insecureSkipVerify` | the chain and names are not checked (signatures still are) |
//! | `caCrl` | PEM file of CRLs applied to the chain |
//! | `credentialName` | refused: the mesh does not read Kubernetes secrets |
//!
//! Files are read when the first connection needs them and again when one of them changes
//! (modification time or size), so rotated files apply to new connections, as with Istio's
//! file-mounted certificates. A file that cannot be read or parsed fails the connection with
//! an error naming the field and the file (503 `UF` for the caller).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::SystemTime,
};

use mesh_core::config::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    server::ParsedCertificate,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
    pem::PemObject,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::{Alpn, TlsError, error::RejectedPeer, provider};

/// What a connection with originated TLS needs: the DestinationRule's `tls` settings for
/// one destination, resolved (file paths, the server name to send). Built by
/// [`policy::upstream_tls`](super::policy::upstream_tls).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Originate {
    /// `MUTUAL`: present the client certificate.
    pub mutual: bool,
    /// The server name sent with SNI (and verified when `subject_alt_names` is empty).
    pub server_name: String,
    /// `caCertificates`.
    pub ca_certificates: Option<PathBuf>,
    /// `clientCertificate`.
    pub client_certificate: Option<PathBuf>,
    /// `privateKey`.
    pub private_key: Option<PathBuf>,
    /// `caCrl`.
    pub ca_crl: Option<PathBuf>,
    /// `subjectAltNames`.
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`.
    pub insecure_skip_verify: bool,
}

impl Originate {
    /// The origination for `settings` (mode `SIMPLE` or `MUTUAL`) to a destination whose
    /// host is `host`; `Err` with a reason for settings the mesh cannot follow
    /// (`credentialName`, another mode).
    pub fn from_settings(settings: &ClientTlsSettings, host: &str) -> Result<Self, String> {
        let mutual = match settings.mode {
            Some(ClientTlsMode::Simple) => false,
            Some(ClientTlsMode::Mutual) => true,
            other => return Err(format!("tls.mode {other:?} is not TLS origination")),
        };
        let path = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from);
        if settings
            .credential_name
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(
                "DestinationRule tls.credentialName names a Kubernetes secret, which the mesh \
                 does not read; give the files with caCertificates, clientCertificate and \
                 privateKey"
                    .to_owned(),
            );
        }
        let originate = Self {
            mutual,
            server_name: settings
                .sni
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| host.to_owned()),
            ca_certificates: path(&settings.ca_certificates),
            client_certificate: path(&settings.client_certificate),
            private_key: path(&settings.private_key),
            ca_crl: path(&settings.ca_crl),
            subject_alt_names: settings.subject_alt_names.clone(),
            insecure_skip_verify: settings.insecure_skip_verify == Some(true),
        };
        if mutual {
            for (field, file) in [
                ("clientCertificate", &originate.client_certificate),
                ("privateKey", &originate.private_key),
            ] {
                if file.is_none() {
                    return Err(format!(
                        "DestinationRule tls.mode MUTUAL needs tls.{field} (a PEM file)"
                    ));
                }
            }
        }
        Ok(originate)
    }

    /// The files this origination reads, with their field names.
    fn files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("caCertificates", &self.ca_certificates),
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
            ("caCrl", &self.ca_crl),
        ]
        .into_iter()
        .filter_map(|(field, p)| Some((field, p.as_deref()?)))
    }

    /// The server name for the handshake.
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(self.server_name.clone()).map_err(|e| TlsError::InvalidCredentials {
            what: "DestinationRule tls.sni (or destination host)",
            reason: format!("{:?} is not a valid server name: {e}", self.server_name),
        })
    }

    /// Builds the client configuration, reading the files.
    fn build(&self, alpn: &[Alpn]) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(TlsError::Config)?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.insecure_skip_verify {
            Arc::new(NoVerification(provider.clone()))
        } else {
            let roots = Arc::new(match &self.ca_certificates {
                Some(file) => roots_from_file(file)?,
                None => system_roots()?,
            });
            let mut webpki =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone());
            if let Some(file) = &self.ca_crl {
                webpki = webpki.with_crls(crls_from_file(file)?);
            }
            let webpki = webpki.build().map_err(|e| TlsError::InvalidCredentials {
                what: "DestinationRule tls.caCertificates",
                reason: e.to_string(),
            })?;
            if self.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(SanVerifier {
                    webpki,
                    roots,
                    sans: self.subject_alt_names.clone(),
                    provider: provider.clone(),
                })
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (self.mutual, &self.client_certificate, &self.private_key) {
            (true, Some(cert), Some(key)) => {
                let chain = certs_from_file("clientCertificate", cert)?;
                let key_der = key_from_file(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::InvalidCredentials {
                        what: "DestinationRule tls.clientCertificate/privateKey",
                        reason: format!(
                            "{} and {} do not make a usable pair: {e}",
                            cert.display(),
                            key.display()
                        ),
                    }
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Ok(config)
    }
}

/// Client configurations for [`Originate`] settings, rebuilt when a file changes.
#[derive(Debug, Default)]
pub(crate) struct OriginateCache {
    entries: Mutex<HashMap<Arc<Originate>, Loaded>>,
}

/// A built configuration and the stamp of the files it was built from.
type Loaded = (Stamp, Arc<ClientConfig>);

/// The modification time and size of each file, in [`Originate::files`] order.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl OriginateCache {
    /// The client configuration for `originate`, offering `alpn`; read from the files when
    /// first asked for or when one of them changed.
    pub(crate) fn config(
        &self,
        originate: &Arc<Originate>,
        alpn: &[Alpn],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let stamp: Stamp = originate
            .files()
            .map(|(_, p)| {
                let meta = std::fs::metadata(p).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, config)) = entries.get(originate)
            && *s == stamp
        {
            return Ok(config.clone());
        }
        let config = Arc::new(originate.build(alpn)?);
        entries.insert(originate.clone(), (stamp, config.clone()));
        Ok(config)
    }
}

fn read(field: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError::InvalidCredentials {
        what: field_what(field),
        reason: format!("cannot read {}: {e}", file.display()),
    })
}

fn field_what(field: &'static str) -> &'static str {
    match field {
        "caCertificates" => "DestinationRule tls.caCertificates",
        "clientCertificate" => "DestinationRule tls.clientCertificate",
        "privateKey" => "DestinationRule tls.privateKey",
        "caCrl" => "DestinationRule tls.caCrl",
        _ => "DestinationRule tls",
    }
}

fn certs_from_file(
    field: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCredentials {
            what: field_what(field),
            reason: format!("{} is not PEM certificates: {e}", file.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError::InvalidCredentials {
            what: field_what(field),
            reason: format!("{} holds no PEM certificate", file.display()),
        });
    }
    Ok(certs)
}

fn roots_from_file(file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_file("caCertificates", file)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCredentials {
            what: "DestinationRule tls.caCertificates",
            reason: format!(
                "{}: a certificate is not a usable root: {e}",
                file.display()
            ),
        })?;
    }
    Ok(roots)
}

fn key_from_file(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("privateKey", file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::InvalidCredentials {
        what: "DestinationRule tls.privateKey",
        reason: format!("{} holds no PEM private key: {e}", file.display()),
    })
}

fn crls_from_file(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read("caCrl", file)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCredentials {
            what: "DestinationRule tls.caCrl",
            reason: format!("{} is not PEM CRLs: {e}", file.display()),
        })
}

/// The operating system's roots (`rustls-native-certs`), loaded once.
fn system_roots() -> Result<RootCertStore, TlsError> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(format!(
                    "no caCertificates given and the system's roots cannot be loaded ({why})"
                ));
            }
            Ok(roots)
        })
        .clone()
        .map_err(|reason| TlsError::InvalidCredentials {
            what: "DestinationRule tls.caCertificates",
            reason,
        })
}

/// The SANs of a certificate, as strings (DNS names, IP addresses, URIs).
fn sans_of(der: &CertificateDer<'_>) -> Vec<(String, Option<ServerName<'static>>)> {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => {
                Some(((*d).to_owned(), ServerName::try_from((*d).to_owned()).ok()))
            }
            GeneralName::URI(u) => Some(((*u).to_owned(), None)),
            GeneralName::IPAddress(bytes) => {
                let ip: std::net::IpAddr = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok()?.into(),
                    16 => <[u8; 16]>::try_from(*bytes).ok()?.into(),
                    _ => return None,
                };
                Some((ip.to_string(), Some(ServerName::IpAddress(ip.into()))))
            }
            _ => None,
        })
        .collect()
}

// === SanVerifier ===

/// `subjectAltNames`: the chain must verify (with the CRLs) and the leaf carry one of the
/// configured SANs; the SNI name plays no part.
#[derive(Debug)]
struct SanVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    sans: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = sans_of(end_entity);
        let matched = presented
            .iter()
            .find(|(san, _)| self.sans.iter().any(|want| want.eq_ignore_ascii_case(san)));
        match matched {
            // A DNS or IP SAN: webpki checks the chain, the CRLs and that name.
            Some((_, Some(name))) => {
                self.webpki
                    .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            }
            // A URI SAN: the chain only (webpki does not match URIs).
            Some((_, None)) => {
                let parsed = ParsedCertificate::try_from(end_entity)?;
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &self.roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                Ok(ServerCertVerified::assertion())
            }
            None => Err(RejectedPeer::Identity(format!(
                "its certificate carries none of the subjectAltNames {:?} (it has {:?})",
                self.sans,
                presented
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
            ))
            .into_rustls()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

// === NoVerification ===

/// `insecureSkipVerify: true`: any certificate; the handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    super::verify::handshake_signatures!(0);
}
