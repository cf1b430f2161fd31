//! The fault layer's response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use super::service::{Abort, abort_response};
use crate::{
    body::Body,
    flags::{ResponseFlag, ResponseFlags},
};

pin_project! {
    /// The response of a [`Fault`](super::Fault) service: the inner service's response, or
    /// an injected abort, possibly after an injected delay.
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S::Future, S, R>,
        delayed: bool,
    }
}

impl<S, R> std::fmt::Debug for ResponseFuture<S, R>
where
    S: Service<R>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("delayed", &self.delayed)
            .finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        // The inner service was called.
        Called {
            #[pin]
            future: F,
        },
        // Sleeping the injected delay; then call a clone of the inner service with the
        // request (`Ok`) or abort (`Err`).
        Delayed {
            sleep: Pin<Box<Sleep>>,
            then: Option<Result<(S, R), Abort>>,
        },
        // The delay is over; driving the clone to readiness.
        Readying {
            service: S,
            request: Option<R>,
        },
        // Aborted without a delay.
        Aborted {
            response: Option<http::Response<Body>>,
        },
    }
}

// === impl ResponseFuture ===

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
{
    pub(super) fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
            delayed: false,
        }
    }

    pub(super) fn aborted(response: http::Response<Body>) -> Self {
        Self {
            state: State::Aborted {
                response: Some(response),
            },
            delayed: false,
        }
    }

    pub(super) fn delayed(delay: Duration, then: Result<(S, R), Abort>) -> Self {
        Self {
            state: State::Delayed {
                sleep: Box::pin(tokio::time::sleep(delay)),
                then: Some(then),
            },
            delayed: true,
        }
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let mut res = ready!(future.poll(cx)).map_err(Into::into)?;
                    if *this.delayed {
                        ResponseFlags::add_to(&mut res, ResponseFlag::DelayInjected);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Delayed { sleep, then } => {
                    ready!(sleep.as_mut().poll(cx));
                    match then.take() {
                        Some(Ok((service, request))) => this.state.set(State::Readying {
                            service,
                            request: Some(request),
                        }),
                        Some(Err(abort)) => return Poll::Ready(Ok(abort_response(abort, true))),
                        None => return Poll::Ready(Err(polled_after_completion())),
                    }
                }
                StateProj::Readying { service, request } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = service.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Aborted { response } => {
                    return Poll::Ready(response.take().ok_or_else(polled_after_completion));
                }
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "fault: response future polled after completion".into()
}
