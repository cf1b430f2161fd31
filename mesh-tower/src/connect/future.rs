//! The connector's response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use mesh_core::BoxError;

use crate::body::Body;

type Inner = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The upstream's response, with its body boxed into [`Body`], or the failure mapped to the
/// mesh's errors (see the [module docs](super)).
pub struct ResponseFuture {
    inner: Inner,
}

impl ResponseFuture {
    pub(super) fn new(
        inner: impl Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }

    /// A future that fails at once with `err`.
    pub(super) fn failed(err: BoxError) -> Self {
        Self::new(std::future::ready(Err(err)))
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
