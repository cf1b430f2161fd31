//! The balancer's response future.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use mesh_core::BoxError;
use pin_project_lite::pin_project;

use http::HeaderValue;
use mesh_core::policy::outlier::{LocalOrigin, Outcome};

use super::{
    outlier::{OutlierCtx, outcome_of_error},
    stats::InFlight,
};
use crate::{
    body::Body,
    error::{UpstreamConnectFailure, cause_ref},
    target::{PickedEndpoint, TimeoutSignal},
};

pin_project! {
    /// The response of the chosen endpoint, with [`PickedEndpoint`] copied into its
    /// extensions; or the balancer's own error ([`NoHealthyUpstream`]).
    ///
    /// The endpoint counts the request as in flight until this future completes or is
    /// dropped. When the destination configures outlier detection, the outcome (status
    /// code, or connect failure, reset or timeout) is recorded for the endpoint; a future
    /// dropped before it completes records a timeout if a route or per-try timeout cut it
    /// ([`TimeoutSignal`]), and nothing otherwise. A hash cookie generated for the request
    /// is set on the response.
    ///
    /// [`NoHealthyUpstream`]: crate::error::NoHealthyUpstream
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the endpoint answered. A timeout that cut the request counts
            // for outlier detection (Envoy's `LocalOriginTimeout`); a caller that went away
            // does not.
            if let StateProj::Called { in_flight, extras, .. } = this.project().state.project()
                && let Some(load) = in_flight.take()
                && let Some(extras) = extras.as_mut()
                && extras.cut.as_ref().is_some_and(TimeoutSignal::fired)
                && let Some(outlier) = extras.outlier.take()
            {
                outlier.record(load.load(), Outcome::LocalOrigin(LocalOrigin::Timeout));
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            picked: Option<PickedEndpoint>,
            in_flight: Option<InFlight>,
            extras: Option<Box<Extras>>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

/// What only some requests carry: a generated hash cookie, outlier detection. Boxed, so
/// the common future stays small.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub(super) set_cookie: Option<HeaderValue>,
    pub(super) outlier: Option<OutlierCtx>,
    /// The signal of the timeout timing the request, when outlier detection is on.
    pub(super) cut: Option<TimeoutSignal>,
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(
        future: F,
        picked: Option<PickedEndpoint>,
        in_flight: Option<InFlight>,
        extras: Option<Box<Extras>>,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                picked,
                in_flight,
                extras,
            },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                picked,
                in_flight,
                extras,
            } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                // The request is no longer in flight; a connect failure makes the balancer
                // avoid the endpoint for a while, a response clears that.
                if let Some(load) = in_flight.take() {
                    match &result {
                        Ok(_) => load.load().responded(),
                        Err(e) if cause_ref::<UpstreamConnectFailure>(&**e).is_some() => {
                            load.load().connect_failed();
                        }
                        Err(_) => {}
                    }
                    if let Some(outlier) = extras.as_mut().and_then(|x| x.outlier.take()) {
                        let outcome = match &result {
                            Ok(res) => Some(Outcome::Response(res.status().as_u16())),
                            Err(e) => outcome_of_error(e),
                        };
                        if let Some(outcome) = outcome {
                            outlier.record(load.load(), outcome);
                        }
                    }
                }
                let mut res = result?;
                if let Some(picked) = picked.take() {
                    res.extensions_mut().insert(picked);
                }
                if let Some(cookie) = extras.as_mut().and_then(|x| x.set_cookie.take()) {
                    super::hash::append_set_cookie(res.headers_mut(), cookie);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "balance response future polled after completion".into()))),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
