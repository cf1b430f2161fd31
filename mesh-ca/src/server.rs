//! The signing service: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! over [`CertificateAuthority`].
//!
//! The caller is authenticated first, by an `authorization: Bearer <token>` bootstrap token
//! (see [`CertificateAuthority::verify_token`]); failure is `UNAUTHENTICATED` "request
//! authenticate failure". The CSR's SANs are then replaced by the authenticated identity.
//! TTL ≤ 0 means the 24 h default; above 90 days, a bad CSR, or a CSR signature that does not
//! verify are `INVALID_ARGUMENT`. Every attempt writes an audit line (tracing target
//! `mesh_ca::audit`) and is counted in [`CaMetrics`].
//!
//! Not yet: renewal authenticated by an mTLS client certificate (`peer_certs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use crate::authority::{CertificateAuthority, ttl_from_seconds};
use crate::csr::CsrPem;
use crate::error::Error;
use crate::grpc::istio_certificate_service_server::IstioCertificateService;
use crate::grpc::{IstioCertificateRequest, IstioCertificateResponse};
use crate::identity::Identity;

/// The audit log's tracing target.
pub const AUDIT_TARGET: &str = "mesh_ca::audit";

/// The service's counters.
#[derive(Debug, Default)]
pub struct CaMetrics {
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Calls rejected because the caller could not be authenticated.
    pub authn_failures: AtomicU64,
    /// Authenticated calls whose signing failed (bad CSR, TTL too long, …).
    pub sign_errors: AtomicU64,
}

/// `IstioCertificateService` backed by a [`CertificateAuthority`].
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    metrics: Arc<CaMetrics>,
}

impl CaService {
    /// A service signing with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self {
            ca,
            metrics: Arc::new(CaMetrics::default()),
        }
    }

    /// The service's counters (shared with clones of the service).
    pub fn metrics(&self) -> Arc<CaMetrics> {
        Arc::clone(&self.metrics)
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Option<Identity> {
        let value = request.metadata().get("authorization")?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        self.ca.verify_token(token, SystemTime::now()).ok()
    }
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
        let caller = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let Some(identity) = self.authenticate(&request) else {
            self.metrics.authn_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: AUDIT_TARGET, %caller, identity = "", outcome = "unauthenticated", "certificate request rejected");
            return Err(Status::unauthenticated("request authenticate failure"));
        };
        let req = request.into_inner();
        let ttl = ttl_from_seconds(req.validity_duration);
        match self.ca.sign(&CsrPem::new(req.csr), &identity, ttl) {
            Ok(bundle) => {
                self.metrics.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: AUDIT_TARGET, %caller, %identity, outcome = "issued", serial = %bundle.serial, not_after = unix_seconds(bundle.not_after), "certificate issued");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: bundle.chain,
                }))
            }
            Err(err) => {
                self.metrics.sign_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: AUDIT_TARGET, %caller, %identity, outcome = "rejected", error = %err, "certificate request rejected");
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
