//! The body type the mesh's stacks carry.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use mesh_core::BoxError;

/// A boxed HTTP body: what every mesh layer sends and receives, so layers compose without
/// naming each other's body types.
///
/// A named type rather than an alias of `UnsyncBoxBody<Bytes, BoxError>`: with the trait
/// object in the type, rustc cannot prove generic futures over it `Send` (rust-lang/rust
/// #110338), which breaks `tokio::spawn` of generic services (axum has its own `Body` for the
/// same reason).
///
/// The bodies every request meets (hyper's `Incoming`, a complete buffer, nothing) are held
/// as they are; only other body types are boxed, so most requests allocate no body.
pub struct Body(Kind);

enum Kind {
    Empty,
    Full(Full<Bytes>),
    Incoming(hyper::body::Incoming),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("size_hint", &self.size_hint())
            .finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

impl Body {
    /// Boxes `body` (see [`boxed`]).
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        boxed(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Full(b) => b.is_end_stream(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => b.size_hint(),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

/// Turns any body into a [`Body`]. A [`Body`] is returned as it is (never boxed twice);
/// hyper's `Incoming` and `Full<Bytes>` are kept without boxing.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    let any = &mut slot as &mut dyn std::any::Any;
    if let Some(b) = any.downcast_mut::<Option<Body>>() {
        return b.take().unwrap_or_default();
    }
    if let Some(b) = any.downcast_mut::<Option<hyper::body::Incoming>>() {
        return b.take().map_or_else(empty, |b| Body(Kind::Incoming(b)));
    }
    if any.is::<Option<http_body_util::Empty<Bytes>>>() {
        return empty();
    }
    if let Some(b) = any.downcast_mut::<Option<Full<Bytes>>>() {
        return b.take().map_or_else(empty, |b| Body(Kind::Full(b)));
    }
    match slot {
        Some(body) => Body(Kind::Boxed(body.map_err(Into::into).boxed_unsync())),
        None => empty(),
    }
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body(Kind::Full(Full::new(bytes.into())))
}

/// An empty body.
pub fn empty() -> Body {
    Body(Kind::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn boxing_a_body_twice_does_not_nest() {
        let b = boxed(full("abc"));
        assert_eq!(b.size_hint().exact(), Some(3));
        let bytes = b.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(
            boxed(Full::new(Bytes::from_static(b"x")))
                .size_hint()
                .exact(),
            Some(1)
        );
    }
}
