//! The connector: hyper-util's TCP connector, with a tag on each connection that counts the
//! responses it carried, so a failure can tell a reused (pooled) connection from a new one.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::{Extensions, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use mesh_core::BoxError;
use tokio::net::TcpStream;

/// Counts the responses received on one connection. Travels in the connection's
/// [`Connected`] extras, which hyper-util copies into each response's extensions and keeps on
/// its errors ([`hyper_util::client::legacy::Error::connect_info`]).
#[derive(Clone, Debug, Default)]
pub(super) struct ConnTag(Arc<AtomicU64>);

impl ConnTag {
    /// Notes one more response received on the connection.
    pub(super) fn responded(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// True if the connection carried a response before: it was taken from the pool.
    pub(super) fn reused(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// The tag in a connection's extras.
    pub(super) fn of(connected: &Connected) -> Option<Self> {
        let mut extensions = Extensions::new();
        connected.get_extras(&mut extensions);
        extensions.remove::<Self>()
    }
}

/// A connection (TCP, or mutual TLS over TCP) with its [`ConnTag`].
#[derive(Debug)]
pub(super) struct MeshIo<T = TokioIo<TcpStream>> {
    io: T,
    tag: ConnTag,
}

impl<T: Connection> Connection for MeshIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.tag.clone())
    }
}

impl<T: Read + Unpin> Read for MeshIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for MeshIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A connector (hyper-util's [`HttpConnector`] by default, or the mutual-TLS
/// [`MtlsConnector`](crate::tls::MtlsConnector) over it) returning [`MeshIo`].
#[derive(Clone, Debug)]
pub(super) struct Connector<C = HttpConnector>(pub(super) C);

type Connecting<T> = Pin<Box<dyn Future<Output = Result<MeshIo<T>, BoxError>> + Send>>;

impl<C> tower::Service<Uri> for Connector<C>
where
    C: tower::Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = MeshIo<C::Response>;
    type Error = BoxError;
    type Future = Connecting<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            Ok(MeshIo {
                io,
                tag: ConnTag::default(),
            })
        })
    }
}
