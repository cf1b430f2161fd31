//! Errors of the TLS module.

use std::{io, net::SocketAddr, time::Duration};

use mesh_core::identity::Identity;

use super::ExpectedIdentities;

/// Why credentials could not be loaded, a connection could not be accepted or a TLS
/// connection could not be established.
///
/// Every variant about a connection names the peer's address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Certificates, key or trust bundle handed to [`TlsIdentity`](super::TlsIdentity) are
    /// unusable; `what` names the input, `reason` says what is wrong with it.
    #[error("invalid {what}: {reason}")]
    InvalidCredentials {
        /// The input: `certificate chain`, `private key`, `trust bundle`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No workload certificate has been published yet: mutual TLS fails closed.
    #[error(
        "no workload certificate yet: mutual TLS with {peer} fails until the first certificate is published"
    )]
    NoCertificate {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A plaintext connection reached a port that requires mutual TLS (PeerAuthentication
    /// `STRICT`).
    #[error(
        "plaintext connection from {peer} refused: this port requires mutual TLS (PeerAuthentication STRICT)"
    )]
    PlaintextRefused {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// The peer closed the connection before sending anything.
    #[error("{peer} closed the connection before sending anything")]
    ClosedEarly {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// Protocol detection and the TLS handshake did not finish in time.
    #[error("TLS handshake with {peer} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The configured handshake timeout.
        timeout: Duration,
    },
    /// Secure naming: the server's certificate is valid but names an identity that does not
    /// back the destination.
    #[error("secure naming: {peer} presented {presented}, expected {expected}")]
    SecureNaming {
        /// The server's address.
        peer: SocketAddr,
        /// The identities the destination may present.
        expected: ExpectedIdentities,
        /// The identity in the server's certificate.
        presented: Identity,
    },
    /// The peer's certificate chains to the trust bundle but does not carry an acceptable
    /// SPIFFE identity (none or several URI SANs, another trust domain).
    #[error("the certificate of {peer} was refused: {reason}")]
    PeerRejected {
        /// The peer's address.
        peer: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS handshake failed (the peer's chain does not verify, it is expired, no client
    /// certificate, no common protocol version, an alert from the peer, …); the source is the
    /// I/O error wrapping rustls' error.
    #[error("TLS handshake with {peer} failed")]
    Handshake {
        /// The peer's address.
        peer: SocketAddr,
        /// The cause; [`TlsError::rustls_error`] digs out rustls' error.
        #[source]
        source: io::Error,
    },
    /// Reading the first bytes from the peer failed.
    #[error("I/O error on the connection with {peer}")]
    Io {
        /// The peer's address.
        peer: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket has no peer address (it was closed already).
    #[error("the connection has no peer address")]
    NoPeerAddr(#[source] io::Error),
    /// rustls refused the configuration.
    #[error("building the TLS configuration failed")]
    Config(#[source] rustls::Error),
    /// The destination's policy asks for something the mesh does not do (DestinationRule
    /// `tls.mode` SIMPLE or MUTUAL): nothing was sent, the connection was not attempted.
    #[error("not connecting to {destination}: {reason}")]
    Unsupported {
        /// The destination (`address:port`).
        destination: String,
        /// What the policy asks for, and why it is not done.
        reason: String,
    },
}

impl TlsError {
    /// rustls' error behind a [`TlsError::Handshake`] or [`TlsError::Config`], if any.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Handshake { source, .. } => rustls_error_of(source),
            Self::Config(e) => Some(e),
            _ => None,
        }
    }

    /// The peer's address, for errors about a connection.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Self::NoCertificate { peer }
            | Self::PlaintextRefused { peer }
            | Self::ClosedEarly { peer }
            | Self::HandshakeTimeout { peer, .. }
            | Self::SecureNaming { peer, .. }
            | Self::PeerRejected { peer, .. }
            | Self::Handshake { peer, .. }
            | Self::Io { peer, .. } => Some(*peer),
            Self::InvalidCredentials { .. }
            | Self::NoPeerAddr(_)
            | Self::Config(_)
            | Self::Unsupported { .. } => None,
        }
    }

    /// Turns a failed handshake into the most precise error: the verifiers' own refusals
    /// become [`TlsError::SecureNaming`] / [`TlsError::PeerRejected`].
    pub(crate) fn from_handshake(peer: SocketAddr, source: io::Error) -> Self {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            rustls_error_of(&source)
            && let Some(rejected) = other.0.downcast_ref::<RejectedPeer>()
        {
            return match rejected {
                RejectedPeer::SecureNaming {
                    expected,
                    presented,
                } => Self::SecureNaming {
                    peer,
                    expected: expected.clone(),
                    presented: presented.clone(),
                },
                RejectedPeer::Identity(reason) => Self::PeerRejected {
                    peer,
                    reason: reason.clone(),
                },
            };
        }
        Self::Handshake { peer, source }
    }
}

fn rustls_error_of(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A verifier's refusal of a chain that verified: carried through rustls as
/// `CertificateError::Other` and turned back into a [`TlsError`] after the handshake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RejectedPeer {
    #[error("secure naming: the server presented {presented}, expected {expected}")]
    SecureNaming {
        expected: ExpectedIdentities,
        presented: Identity,
    },
    #[error("{0}")]
    Identity(String),
}

impl RejectedPeer {
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(self),
        )))
    }
}
