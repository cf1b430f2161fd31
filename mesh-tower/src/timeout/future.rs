//! The route timeout's response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::target::TimeoutSignal;

pin_project! {
    /// The response of a [`Timeout`](super::Timeout) service: the inner response, or
    /// [`RouteTimeout`](crate::error::RouteTimeout) if the timeout elapses first.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        signal: Option<TimeoutSignal>,
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, timeout: Option<Duration>, signal: Option<TimeoutSignal>) -> Self {
        Self {
            inner,
            sleep: timeout.map(tokio::time::sleep),
            signal,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            // Before the inner future is dropped: the balancer below counts the cut.
            if let Some(signal) = this.signal.as_ref() {
                signal.fire();
            }
            return Poll::Ready(Err(super::elapsed()));
        }
        Poll::Pending
    }
}
