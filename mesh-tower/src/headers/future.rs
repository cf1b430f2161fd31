//! The header operations' response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;

use super::ops::ResponseOps;

pin_project! {
    /// The response of a [`HeaderOps`](super::HeaderOps) service: the inner response with the
    /// response header operations applied.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        ops: ResponseOps,
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, ops: ResponseOps) -> Self {
        Self { inner, ops }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        this.ops.apply(res.headers_mut());
        Poll::Ready(Ok(res))
    }
}
