//! The connector's response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Response, uri::Authority};
use hyper_util::client::legacy;
use mesh_core::BoxError;

use super::{
    classify::classify,
    io::{ConnTag, IdleOnEnd},
};
use crate::body::{self, Body};

/// The upstream's response, with its body boxed into [`Body`], or the failure mapped to the
/// mesh's errors (see the [module docs](super)).
pub struct ResponseFuture {
    inner: legacy::ResponseFuture,
    endpoint: Option<Authority>,
}

impl ResponseFuture {
    pub(super) fn new(inner: legacy::ResponseFuture, endpoint: Option<Authority>) -> Self {
        Self { inner, endpoint }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.inner).poll(cx));
        Poll::Ready(match result {
            Ok(mut res) => {
                if let Some(tag) = res.extensions_mut().remove::<ConnTag>() {
                    let n = tag.responded();
                    if tag.is_limited() {
                        // The connection may close once this response has ended.
                        return Poll::Ready(
                            Ok(res.map(|b| body::boxed(IdleOnEnd::new(b, tag, n)))),
                        );
                    }
                }
                Ok(res.map(body::boxed))
            }
            Err(err) => {
                let endpoint = self.endpoint.as_ref().map_or("", Authority::as_str);
                Err(classify(err, endpoint))
            }
        })
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
