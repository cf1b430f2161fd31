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
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.trust_bundle_pem().as_bytes()) {
            roots.add(cert.expect("root")).expect("root");
        }
        roots
    }

    fn chain_and_key(
        chain_pem: &str,
        key: &KeyPair,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key =
            PrivateKeyDer::from_pem_slice(key.to_pem().expose_secret().as_bytes()).expect("key");
        (chain, key)
    }

    /// The bare server's TLS: a `localhost` certificate, client certificates required and
    /// verified against the CA (rustls' stock verifier).
    pub fn bare_server(&self) -> Arc<ServerConfig> {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let bundle = self
            .ca
            .issue_server_cert(&key, &["localhost".to_owned()], &Self::id("server"), HOUR)
            .expect("server cert");
        let (chain, key) = Self::chain_and_key(&bundle.chain_pem(), &key);
        let provider = Arc::new(ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()), provider.clone())
                .build()
                .expect("verifier");
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The bare client's TLS: the CA as the only root, a workload certificate as the client's.
    pub fn bare_client(&self) -> Arc<ClientConfig> {
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let bundle = self
            .ca
            .issue(&Self::id("client"), &key, HOUR)
            .expect("issue");
        let (chain, key) = Self::chain_and_key(&bundle.chain_pem(), &key);
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .expect("client config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
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
