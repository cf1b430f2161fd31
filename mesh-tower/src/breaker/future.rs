//! The circuit breaker's response future and response body.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::state::{Acquire, Permits};
use crate::body::{self, Body};

pin_project! {
    /// The inner service's response, once the request got its slots; or the
    /// [`UpstreamOverflow`](crate::error::UpstreamOverflow) error.
    ///
    /// A pending request waits here for a connection slot. Dropping the future (a timeout
    /// above, the caller going away) gives back every slot it holds; a response keeps them
    /// until its body ends or is dropped.
    pub struct ResponseFuture<S, F> {
        #[pin]
        state: State<S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Called {
            #[pin]
            future: F,
            permits: Option<Permits>,
        },
        Waiting {
            // Boxed: only pending requests need it, and it would make every request's
            // future larger.
            waiting: Box<Waiting<S>>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

/// A pending request: its slots so far, and the call to make once it has a connection slot.
struct Waiting<S> {
    acquire: Acquire,
    pending: Option<OwnedSemaphorePermit>,
    permits: Option<Permits>,
    call: Option<(S, Request<Body>)>,
}

impl<S, F> ResponseFuture<S, F> {
    pub(super) fn called(future: F, permits: Option<Permits>) -> Self {
        Self {
            state: State::Called { future, permits },
        }
    }

    pub(super) fn waiting(
        acquire: Acquire,
        pending: OwnedSemaphorePermit,
        permits: Permits,
        service: S,
        req: Request<Body>,
    ) -> Self {
        Self {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    acquire,
                    pending: Some(pending),
                    permits: Some(permits),
                    call: Some((service, req)),
                }),
            },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S, E> Future for ResponseFuture<S, S::Future>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = E>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Called { future, permits } => {
                    let res = ready!(future.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(hold_until_end(res, permits.take())));
                }
                StateProj::Waiting { waiting } => {
                    let connection = ready!(waiting.acquire.as_mut().poll(cx))
                        .map_err(|_| BoxError::from("circuit breaker closed"))?;
                    // No longer pending.
                    drop(waiting.pending.take());
                    let mut permits = waiting.permits.take().unwrap_or_default();
                    permits.connection = Some(connection);
                    let Some((mut service, req)) = waiting.call.take() else {
                        return Poll::Ready(Err(
                            "breaker response future polled after completion".into()
                        ));
                    };
                    // `service` was polled ready before it was moved here.
                    let future = service.call(req);
                    self.as_mut().project().state.set(State::Called {
                        future,
                        permits: Some(permits),
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        "breaker response future polled after completion".into()
                    })));
                }
            }
        }
    }
}

impl<S, F> std::fmt::Debug for ResponseFuture<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The response, its body holding `permits` until it ends.
fn hold_until_end(res: Response<Body>, permits: Option<Permits>) -> Response<Body> {
    match permits {
        Some(permits) if !res.body().is_end_stream() => res.map(|body| {
            body::boxed(HoldBody {
                body,
                permits: Some(permits),
            })
        }),
        // Nothing to stream: the slots are free now.
        _ => res,
    }
}

pin_project! {
    /// A response body holding the request's slots until it ends or is dropped: an HTTP/1.1
    /// connection is busy until the whole response was read.
    struct HoldBody {
        #[pin]
        body: Body,
        permits: Option<Permits>,
    }
}

impl http_body::Body for HoldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // The end, or an error: the request is over.
            this.permits.take();
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
