//! The connector: hyper-util's TCP connector, with a tag on each connection that counts the
//! responses it carried, so a failure can tell a reused (pooled) connection from a new one.
//!
//! The tag also retires HTTP/1.1 connections that reached `maxRequestsPerConnection` or
//! `maxConnectionDuration`: hyper-util's pool has no such limits, and hyper closes an idle
//! HTTP/1.1 connection cleanly when its read side ends. So once a connection is *idle* (its
//! last response ended and nothing was written since) and is due, [`MeshIo`] reports the end
//! of the stream to hyper's reader, which closes the connection; the pool then drops it. A
//! request that the pool handed out meanwhile is either written already (the connection is
//! then not idle, and is retired after that response) or still queued, and hyper gives it
//! back unsent and hyper-util retries it on a new connection.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};

use http::{Extensions, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use mesh_core::BoxError;
use tokio::net::TcpStream;

/// Limits on the life of one HTTP/1.1 connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ConnLimits {
    /// Close the connection once idle after this many responses.
    pub(super) max_requests: Option<u64>,
    /// Close the connection once idle after it is this old.
    pub(super) max_duration: Option<Duration>,
}

impl ConnLimits {
    fn is_none(&self) -> bool {
        self.max_requests.is_none() && self.max_duration.is_none()
    }
}

/// Counts the responses received on one connection. Travels in the connection's
/// [`Connected`] extras, which hyper-util copies into each response's extensions and keeps on
/// its errors ([`hyper_util::client::legacy::Error::connect_info`]).
#[derive(Clone, Debug, Default)]
pub(super) struct ConnTag(Arc<TagInner>);

#[derive(Debug, Default)]
struct TagInner {
    /// Responses received (their heads).
    responses: AtomicU64,
    /// `None` for connections without limits (the default pools).
    limits: Option<ConnLimits>,
    /// Requests written: bursts of writes after a read (counted by [`MeshIo`]).
    requests: AtomicU64,
    /// The number of the last response whose body ended (or was dropped).
    ended: AtomicU64,
    /// The connection is due to close when idle (its request limit was reached).
    retire: AtomicBool,
    /// The connection's reader, woken when a response ends.
    reader: AtomicWaker,
}

impl ConnTag {
    fn limited(limits: ConnLimits) -> Self {
        Self(Arc::new(TagInner {
            limits: Some(limits),
            ..TagInner::default()
        }))
    }

    /// Notes one more response received on the connection; returns its number (from 1).
    ///
    /// hyper-util gives an HTTP/1.1 connection back to its pool only when the future that
    /// returns the response completes, just before this is called: responses are numbered
    /// in the order of their requests.
    pub(super) fn responded(&self) -> u64 {
        let n = self.0.responses.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(limits) = &self.0.limits
            && limits.max_requests.is_some_and(|max| n >= max)
        {
            self.0.retire.store(true, Ordering::SeqCst);
        }
        n
    }

    /// True if the connection has limits, so its responses' bodies must report their end
    /// ([`IdleOnEnd`]).
    pub(super) fn is_limited(&self) -> bool {
        self.0.limits.is_some()
    }

    /// True if the connection carried a response before: it was taken from the pool.
    pub(super) fn reused(&self) -> bool {
        self.0.responses.load(Ordering::Relaxed) > 0
    }

    /// Response `n` has ended; wakes the reader, which closes the connection if it is
    /// idle and due.
    fn ended(&self, n: u64) {
        self.0.ended.fetch_max(n, Ordering::SeqCst);
        self.0.reader.wake();
    }

    /// Idle: the response to the last request written has ended.
    fn is_idle(&self) -> bool {
        self.0.ended.load(Ordering::SeqCst) == self.0.requests.load(Ordering::SeqCst)
    }

    fn retiring(&self) -> bool {
        self.0.retire.load(Ordering::SeqCst)
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
    /// When the connection reaches its maximum duration.
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Something was read since the last write: the next write starts a new request.
    read_since_write: bool,
}

impl<T> MeshIo<T> {
    fn new(io: T, tag: ConnTag, expires: Option<Pin<Box<tokio::time::Sleep>>>) -> Self {
        Self {
            io,
            tag,
            expires,
            read_since_write: true,
        }
    }

    /// Counts a request when a write follows a read (HTTP/1.1 does not pipeline: a request
    /// is written after the previous response was read).
    fn wrote(&mut self) {
        if self.read_since_write && self.tag.is_limited() {
            self.tag.0.requests.fetch_add(1, Ordering::SeqCst);
        }
        self.read_since_write = false;
    }

    /// True if the connection is idle and due to close: its reader then sees the end of the
    /// stream, and hyper closes the connection. Registers for a wake-up otherwise.
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.tag.is_limited() {
            return false;
        }
        self.tag.0.reader.register(cx.waker());
        if self.tag.0.requests.load(Ordering::SeqCst) == 0 {
            // Not used yet: hyper writes the first request next.
            return false;
        }
        if !self.tag.is_idle() {
            return false;
        }
        if self.tag.retiring() {
            return true;
        }
        self.expires
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
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
        let this = self.get_mut();
        if this.due(cx) {
            tracing::debug!("closing an idle connection at its request or age limit");
            // Nothing read: the end of the stream.
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) {
            this.read_since_write = true;
        }
        read
    }
}

impl<T: Write + Unpin> Write for MeshIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        Pin::new(&mut this.io).poll_write(cx, buf)
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
        let this = self.get_mut();
        this.wrote();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
}

/// A connector (hyper-util's [`HttpConnector`] by default, or the mutual-TLS
/// [`MtlsConnector`](crate::tls::MtlsConnector) over it) returning [`MeshIo`], with the
/// limits of its connections (HTTP/1.1 only).
#[derive(Clone, Debug)]
pub(super) struct Connector<C = HttpConnector> {
    pub(super) inner: C,
    pub(super) limits: ConnLimits,
}

impl<C> Connector<C> {
    pub(super) fn new(inner: C) -> Self {
        Self {
            inner,
            limits: ConnLimits::default(),
        }
    }

    pub(super) fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }
}

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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limits = self.limits;
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            if limits.is_none() {
                return Ok(MeshIo::new(io, ConnTag::default(), None));
            }
            let expires = limits.max_duration.map(|d| Box::pin(tokio::time::sleep(d)));
            Ok(MeshIo::new(io, ConnTag::limited(limits), expires))
        })
    }
}

pin_project_lite::pin_project! {
    /// The body of response `n` on a connection with limits: reports its end (or its drop)
    /// to the connection's tag, which may then close the idle connection.
    pub(super) struct IdleOnEnd<B> {
        #[pin]
        body: B,
        tag: Option<(ConnTag, u64)>,
    }

    impl<B> PinnedDrop for IdleOnEnd<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((tag, n)) = this.project().tag.take() {
                tag.ended(n);
            }
        }
    }
}

impl<B> IdleOnEnd<B> {
    pub(super) fn new(body: B, tag: ConnTag, n: u64) -> Self {
        Self {
            body,
            tag: Some((tag, n)),
        }
    }
}

impl<B> http_body::Body for IdleOnEnd<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none()
            && let Some((tag, n)) = this.tag.take()
        {
            tag.ended(n);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
