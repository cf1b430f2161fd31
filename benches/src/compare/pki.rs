//! Certificates from one mesh CA, written to files so every process of a run (and HAProxy)
//! can load them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use benches::tls;
use mesh_ca::{
    CaOptions, CertificateAuthority,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The directory of certificates of one run.
///
/// - `ca.pem`: the trust bundle;
/// - `bench.{crt,key}`, `caller.{crt,key}`: SPIFFE identities of the mesh server and client
///   (`spiffe://cluster.local/ns/default/sa/bench`, `.../sa/caller`);
/// - `server.{crt,key}`: a `localhost` server certificate (bare + rustls, server-side proxy);
/// - `client.{crt,key}`: a client certificate (bare + rustls, client-side proxy);
/// - `server.pem`, `client.pem`: chain and key in one file, as HAProxy's `crt` wants.
#[derive(Debug)]
pub(crate) struct PkiFiles {
    pub(crate) dir: PathBuf,
}

impl PkiFiles {
    /// A fresh CA and every certificate above, in `dir`.
    pub(crate) fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = CertificateAuthority::self_signed(&CaOptions::root()).context("creating a CA")?;
        let put = |name: &str, text: &str| -> anyhow::Result<()> {
            let file = dir.join(name);
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
        };
        put("ca.pem", ca.trust_bundle_pem())?;
        let id = |sa: &str| {
            Identity::in_default_trust_domain("default", sa)
                .with_context(|| format!("identity of service account {sa}"))
        };
        for (name, sa, dns) in [
            ("bench", "bench", false),
            ("caller", "caller", false),
            ("server", "server", true),
            ("client", "client", false),
        ] {
            let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).context("generating a key")?;
            let bundle = if dns {
                ca.issue_server_cert(&key, &["localhost".to_owned()], &id(sa)?, LIFETIME)
            } else {
                ca.issue(&id(sa)?, &key, LIFETIME)
            }
            .with_context(|| format!("issuing the {name} certificate"))?;
            let chain = bundle.chain_pem();
            let key_pem = key.to_pem();
            put(&format!("{name}.crt"), &chain)?;
            put(&format!("{name}.key"), key_pem.expose_secret())?;
            put(
                &format!("{name}.pem"),
                &format!("{chain}{}", key_pem.expose_secret()),
            )?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let file = dir.join(name);
    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))
}

/// `(chain, key, trust bundle)` PEM of certificate `name` in `dir`.
pub(crate) fn load(dir: &Path, name: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    Ok((
        read(dir, &format!("{name}.crt"))?,
        read(dir, &format!("{name}.key"))?,
        read(dir, "ca.pem")?,
    ))
}

fn rustls_parts(
    dir: &Path,
    name: &str,
) -> anyhow::Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    RootCertStore,
)> {
    let (chain, key, ca) = load(dir, name)?;
    let (chain, key) =
        tls::chain_and_key_from_pem(&chain, &key).with_context(|| format!("{name}.crt/.key"))?;
    let roots = tls::roots_from_pem(&ca).map_err(|e| anyhow::anyhow!("ca.pem: {e}"))?;
    Ok((chain, key, roots))
}

/// Bare server TLS: the `localhost` certificate, client certificates required and verified
/// by rustls' stock verifier, ring, ALPN `h2` and `http/1.1`.
pub(crate) fn bare_server(dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key, roots) = rustls_parts(dir, "server")?;
    tls::server_config(chain, key, roots, &[b"h2", b"http/1.1"])
        .map_err(|e| anyhow::anyhow!("server TLS from {}: {e}", dir.display()))
}

/// Bare client TLS: the CA as the only root, the client certificate, ALPN `alpn`.
pub(crate) fn bare_client(dir: &Path, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let (chain, key, roots) = rustls_parts(dir, "client")?;
    tls::client_config(chain, key, roots, alpn)
        .map_err(|e| anyhow::anyhow!("client TLS from {}: {e}", dir.display()))
}
