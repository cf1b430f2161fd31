//! The two certificate verifiers. Both read the current trust bundle from the
//! [`IdentityWatch`] on every handshake, so a rotated bundle applies to the next handshake.

use std::sync::Arc;

use rustls::{
    DistinguishedName, Error,
    client::{
        danger::{ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    server::{
        ParsedCertificate,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{
    ExpectedIdentities, IdentityWatch, TlsIdentity, error::RejectedPeer, identity::LeafInfo,
    provider,
};

/// The three handshake-signature methods of a rustls verifier, checked with the crypto
/// provider in `self.$provider` (every verifier of the mesh checks them the same way).
macro_rules! handshake_signatures {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(super) use handshake_signatures;

fn current(source: &IdentityWatch) -> Result<Arc<TlsIdentity>, Error> {
    source.borrow().clone().ok_or_else(|| {
        Error::General("no workload certificate and trust bundle yet: failing closed".to_owned())
    })
}

fn leaf_identity(end_entity: &CertificateDer<'_>) -> Result<LeafInfo, Error> {
    LeafInfo::parse(end_entity).map_err(|reason| {
        RejectedPeer::Identity(format!("the peer's leaf: {reason}")).into_rustls()
    })
}

// === SpiffeClientVerifier ===

/// Server side: verifies client certificates. The chain goes through rustls'
/// `WebPkiClientVerifier` built for the current bundle (cached in the [`TlsIdentity`]); then
/// the leaf must carry exactly one SPIFFE URI SAN in the server's own trust domain.
///
/// Client certificates are always required: the plaintext path of PERMISSIVE never reaches
/// TLS.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    source: IdentityWatch,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(source: IdentityWatch) -> Self {
        Self {
            source,
            provider: provider(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names are sent: the bundle rotates, and the answer must borrow from `self`.
    /// Clients send their one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let current = current(&self.source)?;
        current
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        let leaf = leaf_identity(end_entity)?;
        let local = current.identity().trust_domain();
        if leaf.identity.trust_domain() != local {
            return Err(RejectedPeer::Identity(format!(
                "{} is not in the trust domain {local}",
                leaf.identity
            ))
            .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!(provider);
}

// === SpiffeServerVerifier ===

/// Client side: verifies the server's chain against the current bundle with webpki
/// (extended key usage serverAuth, validity, signatures; the DNS name is ignored: mesh
/// certificates carry none), reads its SPIFFE id and enforces secure naming.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    source: IdentityWatch,
    expected: ExpectedIdentities,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(source: IdentityWatch, expected: ExpectedIdentities) -> Self {
        Self {
            source,
            expected,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let current = current(&self.source)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            current.root_store(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let leaf = leaf_identity(end_entity)?;
        if !self
            .expected
            .accepts(&leaf.identity, current.identity().trust_domain())
        {
            return Err(RejectedPeer::SecureNaming {
                expected: self.expected.clone(),
                presented: leaf.identity,
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!(provider);
}
