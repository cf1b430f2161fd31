//! Mutual TLS for Bookinfo: the CA files, the CA `bookinfo up` serves, and each workload's
//! certificate.
//!
//! - **CA files** ([`ensure_ca`]): the directory given by `--ca-dir` holds an intermediate CA
//!   in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
//!   `root-cert.pem`), as `mesh-ca intermediate` writes it, and the root that signed it in
//!   `root/` (`root-cert.pem`, `root-key.pem`), as `mesh-ca root` writes it. Missing files are
//!   created (keys `0600`, directories `0700`); existing ones are reused, so certificates
//!   issued in one session chain to the same root in the next.
//! - **The CA** (`bookinfo up`): `mesh_ca::server::CaServer` on `127.0.0.1:0`, Istio's
//!   `IstioCertificateService` over TLS. Each child is started with its address
//!   (`--ca-address`), the root certificate (`--ca-root`) and, in the environment
//!   ([`TOKEN_ENV`]), a bootstrap token bound to its own SPIFFE identity, minted when the child
//!   is started and valid for [`TOKEN_TTL`]. Renewals authenticate with the current
//!   certificate (mTLS), so the token is only needed once.
//! - **A workload** ([`CaArgs::identity`]): a `mesh_ca::rotation::CertManager` keeps its
//!   certificate fresh, through `GrpcCa` (`--ca-address`) or, for a developer running one
//!   workload by hand, an in-process `LocalCa` loaded from `--ca-dir`; the certificates are
//!   turned into the mesh's `IdentityWatch` with `mesh_tower::tls::watch_credentials`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use mesh_ca::{
    CaOptions, Cacerts, CertificateAuthority, RootCa,
    client::{CaClient, GrpcCa, LocalCa},
    files,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
    rotation::{CertManager, CertManagerConfig, WorkloadCert},
};
use mesh_tower::tls::{IdentityWatch, TlsIdentity, watch_credentials};

/// The environment variable carrying a child's bootstrap token (not a flag: command lines are
/// visible to every user of the machine).
pub(crate) const TOKEN_ENV: &str = "BOOKINFO_CA_TOKEN";

/// How long a bootstrap token minted for a child is valid: long enough for its first
/// certificate, retries included.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(300);

/// The sub-directory of the CA directory that holds the root.
pub(crate) const ROOT_DIR: &str = "root";

/// The cluster name written in the intermediate's subject (`L=`), as Istio's Makefile does.
const CLUSTER: &str = "bookinfo";

/// `--mtls on|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MtlsMode {
    /// Mutual TLS between all workloads (STRICT, Istio's `peer-authentication-strict.yaml`),
    /// certificates from the CA in `--ca-dir`.
    #[default]
    On,
    /// Plaintext everywhere: no CA, no PeerAuthentication seeded.
    Off,
}

/// What [`ensure_ca`] did.
#[derive(Debug)]
pub(crate) struct CaFiles {
    /// The loaded signing CA (the intermediate).
    pub(crate) ca: Arc<CertificateAuthority>,
    /// The files written (empty when everything was reused).
    pub(crate) created: Vec<PathBuf>,
}

/// The cacerts files a complete CA directory holds.
const CACERTS: [&str; 4] = [
    files::CA_CERT,
    files::CA_KEY,
    files::CERT_CHAIN,
    files::ROOT_CERT,
];

/// Loads the CA from `dir`, creating the root (in `dir/root`) and the intermediate (in `dir`)
/// first when `dir` holds none of the cacerts files.
///
/// # Errors
/// Some cacerts files exist and others do not (a half-written directory is not silently
/// replaced); a file cannot be read or written; a key is readable by others; the files do
/// not form a CA. Every error names the directory or file.
pub(crate) fn ensure_ca(dir: &Path) -> anyhow::Result<CaFiles> {
    let present: Vec<&str> = CACERTS
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    let mut created = Vec::new();
    if present.is_empty() {
        let root_dir = dir.join(ROOT_DIR);
        let root = if root_dir.join(files::ROOT_KEY).exists() {
            files::read_root(&root_dir)
                .with_context(|| format!("cannot read the root CA in {}", root_dir.display()))?
        } else {
            let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)
                .context("cannot generate the root CA key")?;
            let root = RootCa::generate(&key, &CaOptions::root())
                .context("cannot generate the root CA")?;
            created.extend(files::write_root(&root_dir, &root, false).with_context(|| {
                format!("cannot write the root CA into {}", root_dir.display())
            })?);
            root
        };
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256)
            .context("cannot generate the intermediate CA key")?;
        let cacerts = Cacerts::intermediate(&root, &key, &CaOptions::intermediate(CLUSTER))
            .context("cannot generate the intermediate CA")?;
        created.extend(
            files::write_cacerts(dir, &cacerts, false).with_context(|| {
                format!("cannot write the intermediate CA into {}", dir.display())
            })?,
        );
    } else if present.len() < CACERTS.len() {
        let missing: Vec<&str> = CACERTS
            .iter()
            .copied()
            .filter(|f| !present.contains(f))
            .collect();
        anyhow::bail!(
            "the CA directory {} is incomplete: it has {} but not {} (remove it to start over, \
             or restore the missing files)",
            dir.display(),
            present.join(", "),
            missing.join(", ")
        );
    }
    let ca = CertificateAuthority::load(dir)
        .with_context(|| format!("cannot load the CA from {}", dir.display()))?;
    Ok(CaFiles {
        ca: Arc::new(ca),
        created,
    })
}

/// The SPIFFE identity of service account `sa` in `namespace`.
///
/// # Errors
/// The namespace or service account is not a valid name.
pub(crate) fn identity(namespace: &str, sa: &str) -> anyhow::Result<Identity> {
    Identity::in_default_trust_domain(namespace, sa)
        .map_err(|e| anyhow::anyhow!("no SPIFFE identity for {namespace}/{sa}: {e}"))
}

/// Mints a bootstrap token for `id`, valid for [`TOKEN_TTL`].
///
/// # Errors
/// The CA refuses (it never does for this TTL).
pub(crate) fn token(ca: &CertificateAuthority, id: &Identity) -> anyhow::Result<String> {
    ca.mint_token(id, TOKEN_TTL, SystemTime::now())
        .with_context(|| format!("cannot mint a bootstrap token for {id}"))
}

/// Where a workload gets its certificate: flags of `bookinfo service` and `bookinfo gateway`.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct CaArgs {
    /// The CA to get the workload certificate from (`host:port`, `mesh-ca serve` or the CA of
    /// `bookinfo up`); needs --ca-root and a bootstrap token in $BOOKINFO_CA_TOKEN.
    #[arg(long, value_name = "HOST:PORT", requires = "ca_root")]
    pub(crate) ca_address: Option<String>,

    /// The CA's root certificate (`root-cert.pem`): trusted for the CA and for every peer.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_root: Option<PathBuf>,

    /// A CA directory in Istio's cacerts layout (as `bookinfo up --ca-dir` or `mesh-ca
    /// intermediate` makes it): sign this workload's certificates in process, no CA server.
    /// Without --ca-address or --ca-dir the workload speaks plaintext.
    #[arg(long, value_name = "DIR", conflicts_with = "ca_address")]
    pub(crate) ca_dir: Option<PathBuf>,
}

/// A workload's live certificate: keep it alive as long as the mesh uses the identity.
#[derive(Debug)]
pub(crate) struct WorkloadIdentity {
    /// Renews the certificate; dropping it stops renewals.
    pub(crate) manager: CertManager,
    /// The certificates as the mesh reads them.
    pub(crate) watch: IdentityWatch,
    /// Where certificates come from, for logs.
    pub(crate) source: String,
}

impl CaArgs {
    /// Starts the certificate manager for `id`; `None` when no CA is configured (plaintext).
    ///
    /// # Errors
    /// The root or the CA directory cannot be read; `--ca-address` without a token.
    pub(crate) fn identity(&self, id: &Identity) -> anyhow::Result<Option<WorkloadIdentity>> {
        let config = CertManagerConfig::default();
        let (manager, trust, source) = match (&self.ca_address, &self.ca_dir) {
            (Some(address), _) => {
                let root_path = self
                    .ca_root
                    .as_deref()
                    .context("--ca-address needs --ca-root")?;
                // The root from --ca-root is what the CA and every peer are checked against.
                let root = files::read_text(root_path)
                    .with_context(|| format!("cannot read the CA root {}", root_path.display()))?;
                let token = std::env::var(TOKEN_ENV)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .with_context(|| {
                        format!("--ca-address needs a bootstrap token for {id} in ${TOKEN_ENV}")
                    })?;
                let client = Arc::new(
                    GrpcCa::new(address, &root)
                        .with_context(|| {
                            format!(
                                "cannot use the CA at {address} with {}",
                                root_path.display()
                            )
                        })?
                        .with_token(token.trim()),
                );
                let manager =
                    CertManager::start(id.clone(), client.clone() as Arc<dyn CaClient>, config)
                        .context("cannot start the certificate manager")?;
                // Renewals authenticate with the current certificate, not the token.
                client.follow(manager.receiver());
                (manager, root, format!("the CA at {address}"))
            }
            (None, Some(dir)) => {
                let ca = CertificateAuthority::load(dir)
                    .with_context(|| format!("cannot load the CA from {}", dir.display()))?;
                let trust = ca.trust_bundle_pem().to_owned();
                let client: Arc<dyn CaClient> = Arc::new(LocalCa::new(Arc::new(ca)));
                let manager = CertManager::start(id.clone(), client, config)
                    .context("cannot start the certificate manager")?;
                (manager, trust, format!("the CA files in {}", dir.display()))
            }
            (None, None) => return Ok(None),
        };
        let watch = watch_credentials(manager.receiver(), move |cert: &WorkloadCert| {
            TlsIdentity::from_pem(cert.bundle.chain_pem(), cert.key.expose_secret(), &trust)
        });
        Ok(Some(WorkloadIdentity {
            manager,
            watch,
            source,
        }))
    }
}

impl WorkloadIdentity {
    /// Waits for the first certificate, logging every few seconds why it has not come; returns
    /// `false` if the manager stopped without one.
    pub(crate) async fn wait_first(&self) -> bool {
        let ready = self.manager.ready();
        tokio::pin!(ready);
        loop {
            tokio::select! {
                cert = &mut ready => {
                    if let Some(cert) = &cert {
                        tracing::debug!(identity = %cert.identity(), serial = cert.serial(),
                            source = %self.source, "workload certificate issued");
                    }
                    return cert.is_some();
                }
                () = tokio::time::sleep(Duration::from_secs(3)) => {
                    match self.manager.last_error() {
                        Some(e) => tracing::warn!(identity = %self.manager.identity(),
                            source = %self.source, error = %e,
                            "waiting for the workload certificate"),
                        None => tracing::warn!(identity = %self.manager.identity(),
                            source = %self.source, "waiting for the workload certificate"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_the_ca_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let first = ensure_ca(&dir).unwrap();
        assert_eq!(first.created.len(), 6, "{:?}", first.created);
        use std::os::unix::fs::PermissionsExt;
        for key in [
            dir.join(files::CA_KEY),
            dir.join(ROOT_DIR).join(files::ROOT_KEY),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let again = ensure_ca(&dir).unwrap();
        assert!(again.created.is_empty());
        assert_eq!(again.ca.root_cert_pem(), first.ca.root_cert_pem());
        assert_eq!(again.ca.ca_cert_pem(), first.ca.ca_cert_pem());

        std::fs::remove_file(dir.join(files::CA_KEY)).unwrap();
        let err = format!("{:#}", ensure_ca(&dir).unwrap_err());
        assert!(
            err.contains("incomplete") && err.contains("ca-key.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_new_intermediate_reuses_an_existing_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let first = ensure_ca(dir).unwrap();
        for f in CACERTS {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        let second = ensure_ca(dir).unwrap();
        assert_eq!(second.created.len(), 4);
        assert_eq!(second.ca.root_cert_pem(), first.ca.root_cert_pem());
        assert_ne!(second.ca.ca_cert_pem(), first.ca.ca_cert_pem());
    }
}
