//! Opening connections: a connector (hyper-util's [`HttpConnector`], or the mutual-TLS
//! [`MtlsConnector`] over it) establishes the IO, hyper's `client::conn` handshake makes a
//! sender for it, and the connection's driver runs on a Tokio task of its own.
//!
//! [`HttpConnector`]: hyper_util::client::legacy::connect::HttpConnector
//! [`MtlsConnector`]: crate::tls::MtlsConnector

use std::{future::Future, pin::Pin};

use http::Uri;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::BoxError;
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::{
    body::Body,
    tls::{ClientIo, PeerIdentity},
};

/// A connection's IO as the pool needs it: hyper's traits, plus the server's identity when
/// the connection is mutual TLS (it goes into each response's extensions).
pub(super) trait PoolIo:
    hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static
{
    /// The server's verified identity, for a mutual-TLS connection.
    fn peer_identity(&self) -> Option<PeerIdentity>;
}

impl PoolIo for TokioIo<TcpStream> {
    fn peer_identity(&self) -> Option<PeerIdentity> {
        None
    }
}

impl PoolIo for TokioIo<ClientIo> {
    fn peer_identity(&self) -> Option<PeerIdentity> {
        self.inner().peer_identity().cloned()
    }
}

/// A new connection's sender and the server's identity (mutual TLS only).
pub(super) type Dialed<S> = (S, Option<PeerIdentity>);

/// A connection being opened.
pub(super) type Dialing<S> = Pin<Box<dyn Future<Output = Result<Dialed<S>, BoxError>> + Send>>;

/// Opens connections to one kind of endpoint; object-safe so that a pool does not depend on
/// its connector's type.
pub(super) trait Dial: Send + Sync + 'static {
    /// Connects to `dst` (`http://address:port/`) and performs the HTTP/1.1 handshake.
    fn http1(&self, dst: Uri, builder: &http1::Builder) -> Dialing<http1::SendRequest<Body>>;

    /// Connects to `dst` and performs the HTTP/2 handshake (prior knowledge, or ALPN `h2`).
    fn http2(
        &self,
        dst: Uri,
        builder: &http2::Builder<TokioExecutor>,
    ) -> Dialing<http2::SendRequest<Body>>;
}

impl<C> Dial for C
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: PoolIo,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    fn http1(&self, dst: Uri, builder: &http1::Builder) -> Dialing<http1::SendRequest<Body>> {
        let connecting = self.clone().oneshot(dst);
        let builder = builder.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            let peer = io.peer_identity();
            let (tx, conn) = builder.handshake::<_, Body>(io).await?;
            // With upgrades: a `101 Switching Protocols` (WebSocket) or a `CONNECT` tunnel
            // hands the connection to the caller (`hyper::upgrade::on`).
            drive(conn.with_upgrades(), "HTTP/1.1");
            Ok((tx, peer))
        })
    }

    fn http2(
        &self,
        dst: Uri,
        builder: &http2::Builder<TokioExecutor>,
    ) -> Dialing<http2::SendRequest<Body>> {
        let connecting = self.clone().oneshot(dst);
        let builder = builder.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            let peer = io.peer_identity();
            let (tx, conn) = builder.handshake::<_, Body>(io).await?;
            drive(conn, "HTTP/2");
            Ok((tx, peer))
        })
    }
}

/// Runs a connection's driver on a task of its own until the connection ends.
fn drive<F>(conn: F, protocol: &'static str)
where
    F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, protocol, "upstream connection ended with an error");
        }
    });
}
