//! The outbound side: [`client_config`] and [`TlsConnector`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, SignatureScheme,
    client::{ResolvesClientCert, Resumption},
    sign::CertifiedKey,
};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    Alpn, DEFAULT_HANDSHAKE_TIMEOUT, ExpectedIdentities, IdentityWatch, PeerIdentity, TlsError,
    provider, server::peer_addr, verify::SpiffeServerVerifier,
};

/// Builds the client configuration for a connection to a destination backed by `expected`:
/// the server's chain is verified against the trust bundle current at the handshake (DNS
/// names ignored), its SPIFFE id must be one of `expected` (secure naming), the client
/// presents the certificate current in `source`, ALPN offers `h2` then `http/1.1`, TLS 1.3
/// and 1.2, no session resumption.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions for the crypto provider
/// (not expected with ring).
pub fn client_config(
    source: IdentityWatch,
    expected: ExpectedIdentities,
) -> Result<ClientConfig, TlsError> {
    client_config_offering(source, expected, &[Alpn::H2, Alpn::Http11])
}

/// [`client_config`] offering the protocols in `alpn` (in order of preference).
fn client_config_offering(
    source: IdentityWatch,
    expected: ExpectedIdentities,
    alpn: &[Alpn],
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            source.clone(),
            expected,
        )))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(source)));
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Hands rustls the certificate current in the watch channel.
#[derive(Debug)]
struct CurrentClientCert(IdentityWatch);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .borrow()
            .as_ref()
            .map(|id| id.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

// === TlsConnector ===

/// Opens mutual-TLS connections to other workloads with the workload's current certificate,
/// enforcing secure naming.
///
/// Cheap to clone. A client configuration is built per connection (a few allocations; no
/// session cache to keep, as resumption is off), so the expected identities can differ per
/// connection.
///
/// # TLS 1.3 and client certificates
/// In TLS 1.3 the client finishes its side of the handshake before the server has looked at
/// its certificate: when the server refuses it, [`TlsConnector::connect`] still succeeds and
/// the refusal (an alert) surfaces on the first read.
///
/// ```no_run
/// use std::sync::Arc;
/// use mesh_tower::tls::{ExpectedIdentities, TlsConnector, TlsIdentity};
///
/// # async fn run(identity: TlsIdentity) -> Result<(), Box<dyn std::error::Error>> {
/// let (_publish, source) = tokio::sync::watch::channel(Some(Arc::new(identity)));
/// let connector = TlsConnector::new(source);
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:9080").await?;
/// let reviews = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let (_stream, alpn, server) = connector
///     .connect(tcp, ExpectedIdentities::one_of([reviews]))
///     .await?;
/// println!("{} speaks {alpn:?}", server.identity);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConnector {
    source: IdentityWatch,
    handshake_timeout: Duration,
    alpn: &'static [Alpn],
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field(
                "identity",
                &self
                    .source
                    .borrow()
                    .as_ref()
                    .map(|id| id.identity().to_string()),
            )
            .field("handshake_timeout", &self.handshake_timeout)
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl TlsConnector {
    /// A connector presenting the certificate current in `source`.
    pub fn new(source: IdentityWatch) -> Self {
        Self {
            source,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            alpn: &[Alpn::H2, Alpn::Http11],
        }
    }

    /// Sets the protocols offered with ALPN, in order of preference (default `h2`, then
    /// `http/1.1`). An HTTP/1.1-only client offers only `http/1.1`, so the server does not
    /// pick HTTP/2 for it; an empty list sends no ALPN extension.
    #[must_use]
    pub fn alpn(mut self, protocols: &'static [Alpn]) -> Self {
        self.alpn = protocols;
        self
    }

    /// Sets how long the TLS handshake may take.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The protocols offered with ALPN.
    pub(crate) fn alpn_protocols(&self) -> &'static [Alpn] {
        self.alpn
    }

    /// How long the TLS handshake may take.
    pub(crate) fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    /// The client configuration for a destination backed by `expected` (see
    /// [`client_config`]), offering this connector's ALPN protocols.
    ///
    /// # Errors
    /// As [`client_config`].
    pub fn client_config(&self, expected: ExpectedIdentities) -> Result<ClientConfig, TlsError> {
        client_config_offering(self.source.clone(), expected, self.alpn)
    }

    /// Runs the TLS handshake on `tcp`. Returns the stream, the protocol ALPN chose (`None`
    /// if the server does not do ALPN) and the server's verified identity. No SNI is sent
    /// (the server name is the peer's IP address).
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`] before the first certificate (nothing is sent),
    /// [`TlsError::SecureNaming`] for a server whose identity is not in `expected`,
    /// [`TlsError::PeerRejected`] for one without a usable SPIFFE id,
    /// [`TlsError::Handshake`] (chain does not verify, expired, alerts),
    /// [`TlsError::HandshakeTimeout`].
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expected: ExpectedIdentities,
    ) -> Result<(TlsStream<TcpStream>, Option<Alpn>, PeerIdentity), TlsError> {
        let peer = peer_addr(&tcp)?;
        self.connect_to(tcp, peer, expected).await
    }

    pub(crate) async fn connect_to(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        expected: ExpectedIdentities,
    ) -> Result<(TlsStream<TcpStream>, Option<Alpn>, PeerIdentity), TlsError> {
        if self.source.borrow().is_none() {
            return Err(TlsError::NoCertificate { peer });
        }
        let config = Arc::new(self.client_config(expected)?);
        let name = ServerName::IpAddress(peer.ip().into());
        let connecting = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let stream = match tokio::time::timeout(self.handshake_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(TlsError::from_handshake(peer, e)),
            Err(_) => {
                return Err(TlsError::HandshakeTimeout {
                    peer,
                    timeout: self.handshake_timeout,
                });
            }
        };
        let conn = stream.get_ref().1;
        let alpn = conn.alpn_protocol().and_then(Alpn::from_bytes);
        let server = PeerIdentity::from_certs(conn.peer_certificates())
            .map_err(|reason| TlsError::PeerRejected { peer, reason })?;
        Ok((stream, alpn, server))
    }
}
