//! The crate's error type.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{identity::InvalidIdentity, key::KeyAlgorithm};

/// What went wrong in the CA, its files or its tokens.
///
/// `Clone` (sources are behind `Arc`) so that it can travel through a `watch` channel.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create directory`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A private key file can be read or written by group or others.
    #[error(
        "refusing to load private key {}: its mode {mode:04o} lets group or others access it; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// An output file exists and overwriting was not asked for.
    #[error("refusing to overwrite existing {}", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },

    /// A certificate (or certificate file) cannot be used.
    #[error("invalid certificate in {what}: {reason}")]
    InvalidCertificate {
        /// The file or field it came from.
        what: String,
        /// Why.
        reason: String,
    },

    /// A private key cannot be used.
    #[error("invalid private key in {what}: {reason}")]
    InvalidKey {
        /// The file or field it came from.
        what: String,
        /// Why.
        reason: String,
    },

    /// The CA material does not form a usable CA (key and certificate differ, not a CA,
    /// expired, chain out of order).
    #[error("unusable CA: {reason}")]
    InvalidCa {
        /// Why.
        reason: String,
    },

    /// The certificate signing request cannot be parsed or uses something unsupported.
    #[error("invalid CSR: {reason}")]
    InvalidCsr {
        /// Why.
        reason: String,
    },

    /// The CSR's signature does not verify with the public key it carries.
    #[error(
        "invalid CSR: its signature does not verify with its public key (the request was altered or not signed by that key)"
    )]
    CsrSignature,

    /// The requested TTL exceeds the maximum; istiod's message, not clamped.
    #[error(
        "requested TTL {} is greater than the max allowed TTL {}",
        go_duration(*requested),
        go_duration(*max)
    )]
    TtlTooLong {
        /// What was asked for.
        requested: Duration,
        /// The maximum.
        max: Duration,
    },

    /// A TTL that cannot be used (zero where a value is required, or out of range).
    #[error("invalid TTL: {reason}")]
    InvalidTtl {
        /// Why.
        reason: String,
    },

    /// Keys of this algorithm cannot be generated with the ring backend.
    #[error(
        "cannot generate {algorithm} keys in process (the ring backend has no RSA key generation); create one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:{} -out key.pem` and load it (mesh-ca: --key key.pem)",
        rsa_bits(algorithm)
    )]
    KeyGenerationUnavailable {
        /// The algorithm asked for.
        algorithm: KeyAlgorithm,
    },

    /// A loaded key is not of the algorithm asked for.
    #[error("the key is {found}, but {expected} was asked for")]
    KeyAlgorithmMismatch {
        /// What was asked for.
        expected: KeyAlgorithm,
        /// What the key is.
        found: KeyAlgorithm,
    },

    /// rcgen failed to build or sign a certificate or request.
    #[error("{action} failed")]
    Certificate {
        /// What was being done.
        action: &'static str,
        /// rcgen's error.
        #[source]
        source: Arc<rcgen::Error>,
    },

    /// A SPIFFE identity is invalid.
    #[error(transparent)]
    Identity(#[from] InvalidIdentity),

    /// A bootstrap token is not in the `v1.<payload>.<mac>` form or its payload is unreadable.
    #[error("malformed bootstrap token: {reason}")]
    TokenMalformed {
        /// Why.
        reason: &'static str,
    },

    /// A bootstrap token's MAC does not verify: minted by another CA key, or altered.
    #[error("bootstrap token does not verify (minted with another CA key, or altered)")]
    TokenBadMac,

    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// The cause (address in use, permission denied…).
        #[source]
        source: Arc<std::io::Error>,
    },

    /// TLS could not be set up (certificate or key rejected by rustls, bad trust bundle).
    #[error("TLS setup failed: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },

    /// The gRPC server stopped with an error.
    #[error("the signing service failed: {reason}")]
    Serve {
        /// Why.
        reason: String,
    },

    /// A CA address cannot be used.
    #[error("invalid CA address {address:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why.
        reason: String,
    },

    /// A bootstrap token has expired.
    #[error("bootstrap token expired at {}", crate::inspect::rfc3339_unix(*expired_at))]
    TokenExpired {
        /// When it expired, in seconds since the Unix epoch.
        expired_at: i64,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn rcgen(action: &'static str, source: rcgen::Error) -> Self {
        Error::Certificate {
            action,
            source: Arc::new(source),
        }
    }

    pub(crate) fn ca(reason: impl Into<String>) -> Self {
        Error::InvalidCa {
            reason: reason.into(),
        }
    }

    pub(crate) fn tls(reason: impl Into<String>) -> Self {
        Error::Tls {
            reason: reason.into(),
        }
    }

    pub(crate) fn csr(reason: impl Into<String>) -> Self {
        Error::InvalidCsr {
            reason: reason.into(),
        }
    }
}

fn rsa_bits(algorithm: &KeyAlgorithm) -> usize {
    match algorithm {
        KeyAlgorithm::Rsa4096 => 4096,
        KeyAlgorithm::RsaOther { bits } => *bits,
        _ => 2048,
    }
}

/// Formats a duration as Go's `time.Duration.String()` does (`24h0m0s`, `2160h0m0s`), as
/// istiod's messages show them.
pub fn go_duration(d: Duration) -> String {
    mesh_core::duration::Duration::from_std(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_message_is_istiods() {
        let err = Error::TtlTooLong {
            requested: Duration::from_secs(91 * 86_400),
            max: Duration::from_secs(90 * 86_400),
        };
        assert_eq!(
            err.to_string(),
            "requested TTL 2184h0m0s is greater than the max allowed TTL 2160h0m0s"
        );
    }

    #[test]
    fn insecure_key_message_names_the_file_and_the_fix() {
        let err = Error::InsecureKeyFile {
            path: "/etc/cacerts/ca-key.pem".into(),
            mode: 0o644,
        };
        let msg = err.to_string();
        assert!(msg.contains("/etc/cacerts/ca-key.pem"), "{msg}");
        assert!(msg.contains("0644"), "{msg}");
        assert!(msg.contains("chmod 600 /etc/cacerts/ca-key.pem"), "{msg}");
    }

    #[test]
    fn error_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Error>();
    }
}
