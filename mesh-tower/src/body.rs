//! The body type the mesh's stacks carry.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use mesh_core::BoxError;

/// A boxed HTTP body: what every mesh layer sends and receives, so layers compose without
/// naming each other's body types.
///
/// A named type rather than an alias of `UnsyncBoxBody<Bytes, BoxError>`: with the trait
/// object in the type, rustc cannot prove generic futures over it `Send` (rust-lang/rust
/// #110338), which breaks `tokio::spawn` of generic services (axum has its own `Body` for the
/// same reason).
pub struct Body(UnsyncBoxBody<Bytes, BoxError>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("size_hint", &self.0.size_hint())
            .finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

impl Body {
    /// Boxes any body whose error converts into [`BoxError`].
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
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Boxes any body whose error converts into [`BoxError`] (a [`Body`] is returned as is, a
/// body already at its end becomes the empty body).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(b) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>() {
        return b.take().unwrap_or_default();
    }
    match slot {
        // Nothing to carry (a GET's request body, most often): the empty body, which
        // allocates nothing, instead of a box around a finished stream.
        Some(body) if body.is_end_stream() => empty(),
        Some(body) => Body(body.map_err(Into::into).boxed_unsync()),
        None => empty(),
    }
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body(
        Full::new(bytes.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    )
}

/// An empty body.
pub fn empty() -> Body {
    Body(Empty::new().map_err(|e| match e {}).boxed_unsync())
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
