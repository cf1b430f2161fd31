//! The signing service: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! over [`CertificateAuthority`], served over TLS by [`CaServer`] (`mesh-ca serve`).
//!
//! # Authentication
//!
//! The caller is authenticated first, in istiod's order (the first that succeeds wins):
//!
//! 1. **mTLS renewal**: the TLS server asks for (but does not require) a client certificate.
//!    A caller that presents a still-valid workload certificate chaining to this CA's trust
//!    bundle (`root-cert.pem`), with extended key usage clientAuth and exactly one SPIFFE URI
//!    SAN in the service's trust domain, is authenticated as that identity; no token needed.
//!    Certificates of a foreign CA and expired ones already fail the TLS handshake (rustls'
//!    WebPKI client verifier); one of another trust domain, or with no or several URI SANs,
//!    is refused here.
//! 2. **Bootstrap token**: `authorization: Bearer <token>` metadata, minted with this CA's key
//!    and bound to one identity (see [`CertificateAuthority::verify_token`]).
//!
//! When neither works the call fails with `UNAUTHENTICATED` "request authenticate failure".
//! The CSR's SANs are then replaced by the authenticated identity. TTL ≤ 0 means the 24 h
//! default; above 90 days, a bad CSR, or a CSR signature that does not verify are
//! `INVALID_ARGUMENT`. Every attempt writes an audit line (tracing target `mesh_ca::audit`:
//! caller, identity, method, outcome, serial, not-after) and is counted in [`CaMetrics`],
//! which renders istiod's Prometheus counter names ([`CaMetrics::render_prometheus`],
//! served by [`serve_metrics`]).
//!
//! # Serving
//!
//! [`CaServer`] binds a TCP listener, issues its own TLS certificate from the CA at start-up
//! (DNS `localhost`, `mesh-ca` and any extra names, plus the SPIFFE id
//! `spiffe://<trust-domain>/ns/istio-system/sa/mesh-ca`; renewed at half its lifetime) and
//! serves the service with rustls (ring provider, TLS 1.2 and 1.3, ALPN `h2`).
//! [`CaService`] can also be served by any other tonic transport (plaintext in tests); then
//! only tokens authenticate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tonic::{Request, Response, Status};

use crate::authority::{CertificateAuthority, parse_cert, parse_certs, san_uris, ttl_from_seconds};
use crate::csr::CsrPem;
use crate::error::Error;
use crate::grpc::istio_certificate_service_server::IstioCertificateService;
use crate::grpc::{IstioCertificateRequest, IstioCertificateResponse};
use crate::identity::{DEFAULT_TRUST_DOMAIN, Identity};

mod metrics_http;
mod tls;

pub use metrics_http::serve_metrics;
pub use tls::{CaServer, DEFAULT_SERVER_DNS_NAMES, ServerOptions};

/// The audit log's tracing target.
pub const AUDIT_TARGET: &str = "mesh_ca::audit";

/// The service's counters.
#[derive(Debug, Default)]
pub struct CaMetrics {
    /// Certificate requests received (istiod's `citadel_server_csr_count`).
    pub requests: AtomicU64,
    /// Certificates issued (`citadel_server_success_cert_issuance_count`).
    pub issued: AtomicU64,
    /// Calls rejected because the caller could not be authenticated
    /// (`citadel_server_authentication_failure_count`).
    pub authn_failures: AtomicU64,
    /// Authenticated calls whose signing failed: bad CSR, TTL too long, …
    /// (`citadel_server_csr_sign_err_count`).
    pub sign_errors: AtomicU64,
    /// Calls authenticated by a bootstrap token.
    pub authn_by_token: AtomicU64,
    /// Calls authenticated by an mTLS client certificate (renewals).
    pub authn_by_cert: AtomicU64,
}

impl CaMetrics {
    /// The counters in the Prometheus text exposition format, under istiod's names
    /// (`citadel_server_*`) plus `mesh_ca_authentications_total{method}`.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let counters = [
            (
                "citadel_server_csr_count",
                "The number of CSRs received by the CA server.",
                &self.requests,
            ),
            (
                "citadel_server_success_cert_issuance_count",
                "The number of certificates issued successfully.",
                &self.issued,
            ),
            (
                "citadel_server_authentication_failure_count",
                "The number of authentication failures.",
                &self.authn_failures,
            ),
            (
                "citadel_server_csr_sign_err_count",
                "The number of errors while signing CSRs of authenticated callers.",
                &self.sign_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "mesh_ca_authentications_total";
        let _ = writeln!(
            out,
            "# HELP {name} Successful caller authentications, by method."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(
            out,
            "{name}{{method=\"token\"}} {}",
            self.authn_by_token.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{method=\"mtls\"}} {}",
            self.authn_by_cert.load(Ordering::Relaxed)
        );
        out
    }
}

/// How a caller was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Token,
    Mtls,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::Mtls => "mtls",
        }
    }
}

/// `IstioCertificateService` backed by a [`CertificateAuthority`].
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    metrics: Arc<CaMetrics>,
    trust_domain: Arc<str>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

impl CaService {
    /// A service signing with `ca`; mTLS callers must be in the trust domain `cluster.local`
    /// (see [`with_trust_domain`](Self::with_trust_domain)).
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        let anchors = trust_anchors(ca.trust_bundle_pem());
        Self {
            ca,
            metrics: Arc::new(CaMetrics::default()),
            trust_domain: Arc::from(DEFAULT_TRUST_DOMAIN),
            anchors: Arc::new(anchors),
        }
    }

    /// Accepts mTLS callers of `trust_domain` only (tokens name their identity themselves).
    #[must_use]
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Arc::from(trust_domain.into());
        self
    }

    /// The trust domain mTLS callers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA that signs.
    pub fn authority(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The service's counters (shared with clones of the service).
    pub fn metrics(&self) -> Arc<CaMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Authenticates the caller: client certificate first, then bearer token. On failure,
    /// the reasons, for the audit log.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<(Identity, Method), String> {
        let now = SystemTime::now();
        let mut reasons = Vec::new();
        if let Some(certs) = request.peer_certs()
            && !certs.is_empty()
        {
            match verify_peer(&certs, &self.anchors, &self.trust_domain, now) {
                Ok(identity) => return Ok((identity, Method::Mtls)),
                Err(reason) => reasons.push(format!("client certificate: {reason}")),
            }
        }
        match bearer_token(request) {
            Some(token) => match self.ca.verify_token(token, now) {
                Ok(identity) => return Ok((identity, Method::Token)),
                Err(err) => reasons.push(format!("token: {err}")),
            },
            None if reasons.is_empty() => {
                reasons.push("no client certificate and no bearer token".to_owned());
            }
            None => {}
        }
        Err(reasons.join("; "))
    }
}

fn bearer_token<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    Some(
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim(),
    )
}

/// The roots of a trust bundle as webpki trust anchors (unusable ones are skipped).
pub(crate) fn trust_anchors(bundle_pem: &str) -> Vec<TrustAnchor<'static>> {
    let ders = parse_certs(bundle_pem, "root-cert.pem").unwrap_or_default();
    ders.into_iter()
        .filter_map(|der| {
            let der = CertificateDer::from(der);
            match webpki::anchor_from_trusted_cert(&der) {
                Ok(anchor) => Some(anchor.to_owned()),
                Err(err) => {
                    tracing::warn!(%err, "a root of the trust bundle cannot be used as a trust anchor");
                    None
                }
            }
        })
        .collect()
}

/// Checks an mTLS caller's chain (leaf first) at `now`: it must chain to `anchors` for
/// clientAuth, and the leaf must carry exactly one URI SAN, a SPIFFE identity of
/// `trust_domain`. Returns that identity.
pub(crate) fn verify_peer(
    certs: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Identity, String> {
    let Some((leaf_der, intermediates)) = certs.split_first() else {
        return Err("no certificate".to_owned());
    };
    let leaf = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?;
    leaf.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        anchors,
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| format!("does not verify against this CA's trust bundle: {e}"))?;
    let cert =
        parse_cert(leaf_der.as_ref(), "the client certificate").map_err(|e| e.to_string())?;
    let uris = san_uris(&cert);
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "a workload certificate has exactly one URI SAN; this one has {}",
            uris.len()
        ));
    };
    let identity: Identity = uri.parse().map_err(|e| format!("{e}"))?;
    if identity.trust_domain() != trust_domain {
        return Err(format!(
            "{identity} is not in the trust domain {trust_domain}"
        ));
    }
    Ok(identity)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let caller = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let (identity, method) = match self.authenticate(&request) {
            Ok(found) => found,
            Err(reason) => {
                self.metrics.authn_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: AUDIT_TARGET, %caller, identity = "", outcome = "unauthenticated", %reason, "certificate request rejected");
                return Err(Status::unauthenticated("request authenticate failure"));
            }
        };
        match method {
            Method::Token => &self.metrics.authn_by_token,
            Method::Mtls => &self.metrics.authn_by_cert,
        }
        .fetch_add(1, Ordering::Relaxed);
        let method = method.as_str();
        let req = request.into_inner();
        let ttl = ttl_from_seconds(req.validity_duration);
        match self.ca.sign(&CsrPem::new(req.csr), &identity, ttl) {
            Ok(bundle) => {
                self.metrics.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: AUDIT_TARGET, %caller, %identity, method, outcome = "issued", serial = %bundle.serial, not_after = unix_seconds(bundle.not_after), "certificate issued");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: bundle.chain,
                }))
            }
            Err(err) => {
                self.metrics.sign_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: AUDIT_TARGET, %caller, %identity, method, outcome = "rejected", error = %err, "certificate request rejected");
                Err(match err {
                    Error::TtlTooLong { .. } | Error::CsrSignature | Error::InvalidCsr { .. } => {
                        Status::invalid_argument(err.to_string())
                    }
                    other => Status::internal(other.to_string()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CaOptions;
    use crate::key::{KeyAlgorithm, KeyPair};

    fn der_chain(chain: &[String]) -> Vec<CertificateDer<'static>> {
        chain
            .iter()
            .flat_map(|pem| parse_certs(pem, "chain").unwrap())
            .map(CertificateDer::from)
            .collect()
    }

    #[test]
    fn verifies_peer_chains() {
        let ca = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
        let anchors = trust_anchors(ca.trust_bundle_pem());
        assert_eq!(anchors.len(), 1);
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let now = SystemTime::now();
        let a: Identity = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        let good = ca.issue(&a, &key, Duration::from_secs(3600)).unwrap();
        let chain = der_chain(&good.chain[..good.chain.len() - 1]);
        assert_eq!(
            verify_peer(&chain, &anchors, "cluster.local", now).unwrap(),
            a
        );
        // Later than not_after: expired.
        let err = verify_peer(
            &chain,
            &anchors,
            "cluster.local",
            now + Duration::from_secs(7200),
        )
        .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // Another trust domain.
        let err = verify_peer(&chain, &anchors, "other.local", now).unwrap_err();
        assert!(err.contains("not in the trust domain other.local"), "{err}");
        // Another CA.
        let foreign = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
        let other = foreign.issue(&a, &key, Duration::from_secs(3600)).unwrap();
        let err = verify_peer(
            &der_chain(&other.chain[..1]),
            &anchors,
            "cluster.local",
            now,
        )
        .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // A server certificate (serverAuth only) cannot authenticate a client.
        let server = ca
            .issue_server_cert(&key, &["mesh-ca".to_owned()], &a, Duration::from_secs(3600))
            .unwrap();
        let err = verify_peer(
            &der_chain(&server.chain[..1]),
            &anchors,
            "cluster.local",
            now,
        )
        .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        assert!(verify_peer(&[], &anchors, "cluster.local", now).is_err());
    }

    #[test]
    fn renders_istiod_counter_names() {
        let metrics = CaMetrics::default();
        metrics.requests.store(5, Ordering::Relaxed);
        metrics.issued.store(3, Ordering::Relaxed);
        metrics.authn_failures.store(1, Ordering::Relaxed);
        metrics.sign_errors.store(1, Ordering::Relaxed);
        metrics.authn_by_cert.store(2, Ordering::Relaxed);
        let text = metrics.render_prometheus();
        for line in [
            "citadel_server_csr_count 5",
            "citadel_server_success_cert_issuance_count 3",
            "citadel_server_authentication_failure_count 1",
            "citadel_server_csr_sign_err_count 1",
            "mesh_ca_authentications_total{method=\"mtls\"} 2",
            "# TYPE citadel_server_csr_count counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
