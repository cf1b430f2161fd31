//! The generated `istio.v1.auth` gRPC types: Istio's `IstioCertificateService`
//! (`CreateCertificate`), its request and response messages, the client stub
//! ([`istio_certificate_service_client::IstioCertificateServiceClient`]) and the server trait
//! ([`istio_certificate_service_server::IstioCertificateService`]).

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]

tonic::include_proto!("istio.v1.auth");
