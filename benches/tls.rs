//! The mTLS side of the end-to-end bench: certificates from one mesh CA, and the bare
//! baseline (hyper + tokio-rustls with client certificates, the same ring cipher suites) that
//! the mesh over mutual TLS is compared with.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use mesh_ca::{
    CaOptions, CertificateAuthority,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
};
use mesh_tower::tls::{IdentityWatch, TlsIdentity};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::ring, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HOUR: Duration = Duration::from_secs(3600);

/// One CA and what both ends need from it.
pub struct Pki {
    ca: Arc<CertificateAuthority>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh self-signed mesh CA.
    pub fn new() -> Self {
        Self {
            ca: Arc::new(CertificateAuthority::self_signed(&CaOptions::root()).expect("CA")),
        }
    }

    fn id(sa: &str) -> Identity {
        Identity::in_default_trust_domain("default", sa).expect("identity")
    }

    /// A fixed identity source for service account `sa`, as `MeshBuilder::identity` takes.
    pub fn identity(&self, sa: &str) -> IdentityWatch {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let bundle = self.ca.issue(&Self::id(sa), &key, HOUR).expect("issue");
        let tls = TlsIdentity::from_pem(
            bundle.chain_pem(),
            key.to_pem().expose_secret(),
            self.ca.trust_bundle_pem(),
        )
        .expect("credentials");
        let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(tls)));
        std::mem::forget(tx);
        rx
    }

    fn roots(&self) -> RootCertStore {
        roots_from_pem(self.ca.trust_bundle_pem().as_bytes()).expect("roots")
    }

    /// The bare server's TLS: a `localhost` certificate, client certificates required and
    /// verified against the CA (rustls' stock verifier).
    pub fn bare_server(&self) -> Arc<ServerConfig> {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let bundle = self
            .ca
            .issue_server_cert(&key, &["localhost".to_owned()], &Self::id("server"), HOUR)
            .expect("server cert");
        let (chain, key) = chain_and_key_from_pem(
            bundle.chain_pem().as_bytes(),
            key.to_pem().expose_secret().as_bytes(),
        )
        .expect("chain and key");
        server_config(chain, key, self.roots(), &[b"http/1.1"]).expect("server config")
    }

    /// The bare client's TLS: the CA as the only root, a workload certificate as the client's.
    pub fn bare_client(&self) -> Arc<ClientConfig> {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let bundle = self
            .ca
            .issue(&Self::id("client"), &key, HOUR)
            .expect("issue");
        let (chain, key) = chain_and_key_from_pem(
            bundle.chain_pem().as_bytes(),
            key.to_pem().expose_secret().as_bytes(),
        )
        .expect("chain and key");
        client_config(chain, key, self.roots(), b"http/1.1").expect("client config")
    }
}

/// A certificate chain and its private key, from PEM.
///
/// # Errors
/// A PEM section that does not parse, or no private key.
pub fn chain_and_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rustls_pki_types::pem::Error> {
    let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    Ok((chain, key))
}

/// A root store holding every certificate of a PEM trust bundle.
///
/// # Errors
/// A certificate that does not parse or that rustls refuses as a root.
pub fn roots_from_pem(bundle_pem: &[u8]) -> Result<RootCertStore, BoxError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

/// A bare rustls server (ring, the stock cipher suites and versions): `chain` as its
/// certificate, client certificates required and verified against `roots`, ALPN `alpn`.
///
/// # Errors
/// rustls refuses the key or the roots.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, BoxError> {
    let provider = Arc::new(ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A bare rustls client (ring, the stock cipher suites and versions): `roots` as its only
/// roots, `chain` as its client certificate, ALPN `alpn`.
///
/// # Errors
/// rustls refuses the key.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, BoxError> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS stream as hyper-util's client wants it.
pub struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// hyper-util connector: TCP, then TLS to `localhost` with the bare client's config.
#[derive(Clone)]
pub struct BareTlsConnector(pub tokio_rustls::TlsConnector);

impl tower::Service<http::Uri> for BareTlsConnector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let addr = format!(
                "{}:{}",
                uri.host().unwrap_or("127.0.0.1"),
                uri.port_u16().unwrap_or(443)
            );
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost").expect("name");
            Ok(TlsIo(TokioIo::new(tls.connect(name, tcp).await?)))
        })
    }
}
