//! Failures as responses: the one place that maps the mesh's errors to what the caller sees,
//! as Envoy's local replies do.
//!
//! | error | HTTP | flag | body | gRPC status |
//! |---|---|---|---|---|
//! | [`NoRoute`] | 404 | `NR` | (empty) | 12 UNIMPLEMENTED |
//! | [`NoHealthyUpstream`] | 503 | `UH` | `no healthy upstream` | 14 UNAVAILABLE |
//! | [`UpstreamConnectFailure`] | 503 | `UF` | `upstream connect error or disconnect/reset before headers. reset reason: connection failure` (with `, transport failure reason: TLS error: …` when the mTLS handshake failed) | 14 UNAVAILABLE |
//! | [`UpstreamReset`] | 503 | `UC` | `… reset reason: connection termination` | 14 UNAVAILABLE |
//! | [`UpstreamOverflow`] (circuit breaking) | 503 | `UO` | `… reset reason: overflow`, with the `x-envoy-overloaded: true` header | 14 UNAVAILABLE |
//! | [`RouteTimeout`], [`PerTryTimeout`] | 504 | `UT` | `upstream request timeout` | 4 DEADLINE_EXCEEDED |
//! | anything else | 503 | (none) | `upstream error` | 14 UNAVAILABLE |
//!
//! A gRPC request (`content-type: application/grpc…`) gets a trailers-only gRPC answer
//! (HTTP 200 with `grpc-status` and `grpc-message` headers), so a tonic client sees a status,
//! not an HTTP error. Envoy maps 504 to UNAVAILABLE; we answer DEADLINE_EXCEEDED, the status a
//! gRPC caller expects for a timeout. The response flag goes into the response extensions
//! ([`ResponseFlags`]) for telemetry and access logs.
//!
//! [`UpstreamOverflow`]: crate::error::UpstreamOverflow
//!
//! # Examples
//! ```
//! use mesh_tower::{error::NoRoute, flags::ResponseFlags, rescue::error_response};
//! let res = error_response(&NoRoute { host: "reviews".into() }.into(), false);
//! assert_eq!(res.status(), 404);
//! assert_eq!(ResponseFlags::of(&res).to_string(), "NR");
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, StatusCode};
use mesh_core::BoxError;
use tower::{Layer, Service};

use crate::{
    body::{self, Body},
    error::{
        NoHealthyUpstream, NoRoute, PerTryTimeout, RouteTimeout, UpstreamConnectFailure,
        UpstreamOverflow, UpstreamReset, cause_ref,
    },
    flags::{ResponseFlag, ResponseFlags},
};

/// The header Envoy adds to a local reply for a circuit-breaker overflow.
pub const X_ENVOY_OVERLOADED: http::HeaderName =
    http::HeaderName::from_static("x-envoy-overloaded");

/// Turns errors from the inner stack into responses.
#[derive(Clone, Copy, Debug, Default)]
pub struct RescueLayer(());

impl RescueLayer {
    /// The layer.
    pub fn new() -> Self {
        Self(())
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

/// The rescue service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> Rescue<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Is this request gRPC (`content-type: application/grpc…`)?
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The status, flag, body text and gRPC code for an error.
fn classify(err: &BoxError) -> (StatusCode, Option<ResponseFlag>, &'static str, u8) {
    let e: &(dyn std::error::Error + 'static) = &**err;
    if cause_ref::<NoRoute>(e).is_some() {
        (
            StatusCode::NOT_FOUND,
            Some(ResponseFlag::NoRouteFound),
            "",
            12,
        )
    } else if cause_ref::<NoHealthyUpstream>(e).is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ResponseFlag::NoHealthyUpstream),
            "no healthy upstream",
            14,
        )
    } else if cause_ref::<UpstreamConnectFailure>(e).is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ResponseFlag::UpstreamConnectionFailure),
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            14,
        )
    } else if cause_ref::<UpstreamReset>(e).is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ResponseFlag::UpstreamConnectionTermination),
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            14,
        )
    } else if cause_ref::<UpstreamOverflow>(e).is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ResponseFlag::UpstreamOverflow),
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            14,
        )
    } else if cause_ref::<RouteTimeout>(e).is_some() || cause_ref::<PerTryTimeout>(e).is_some() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            Some(ResponseFlag::UpstreamRequestTimeout),
            "upstream request timeout",
            4,
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, None, "upstream error", 14)
    }
}

/// The response the mesh answers with for `err`; `grpc` for a gRPC caller.
pub fn error_response(err: &BoxError, grpc: bool) -> http::Response<Body> {
    let (status, flag, text, grpc_code) = classify(err);
    // As Envoy: a failed TLS handshake says why (`transport failure reason`).
    let reply: std::borrow::Cow<'static, str> = match cause_ref::<crate::tls::TlsError>(&**err) {
        Some(tls) if flag == Some(ResponseFlag::UpstreamConnectionFailure) => {
            format!("{text}, transport failure reason: TLS error: {tls}").into()
        }
        _ => text.into(),
    };
    let text: &str = &reply;
    let mut res = if grpc {
        let mut res = http::Response::new(body::empty());
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(u16::from(grpc_code)));
        let msg = if text.is_empty() {
            status.as_str()
        } else {
            text
        };
        if let Ok(v) = HeaderValue::from_str(msg) {
            h.insert("grpc-message", v);
        }
        res
    } else {
        let mut res = http::Response::new(body::full(match &reply {
            std::borrow::Cow::Borrowed(t) => bytes::Bytes::from_static(t.as_bytes()),
            std::borrow::Cow::Owned(t) => bytes::Bytes::from(t.clone()),
        }));
        *res.status_mut() = status;
        if !text.is_empty() {
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
        res
    };
    if flag == Some(ResponseFlag::UpstreamOverflow) {
        // As Envoy marks a circuit-breaker overflow, so callers can tell it from an
        // upstream's own 503.
        res.headers_mut()
            .insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    }
    if let Some(flag) = flag {
        ResponseFlags::add_to(&mut res, flag);
    }
    tracing::debug!(error = %err, status = %status, "answering with a local reply");
    res
}

impl<S, B> Service<http::Request<B>> for Rescue<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = is_grpc(&req);
        ResponseFuture {
            inner: self.inner.call(req),
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, or the local reply for its error. Not boxed: the stack's future is
    /// large, and moving it into a box on every request shows in the CPU profile.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match std::task::ready!(this.inner.poll(cx)) {
            Ok(res) => Ok(res),
            Err(e) => Ok(error_response(&e.into(), *this.grpc)),
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn text(res: http::Response<Body>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn maps_each_error_like_envoy() {
        let cases: Vec<(BoxError, u16, &str, &str)> = vec![
            (NoRoute { host: "x".into() }.into(), 404, "NR", ""),
            (
                NoHealthyUpstream {
                    host: "x".into(),
                    subset: None,
                }
                .into(),
                503,
                "UH",
                "no healthy upstream",
            ),
            (
                UpstreamConnectFailure {
                    endpoint: "127.0.0.1:1".into(),
                    source: "refused".into(),
                }
                .into(),
                503,
                "UF",
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            (
                RouteTimeout(()).into(),
                504,
                "UT",
                "upstream request timeout",
            ),
            (
                PerTryTimeout(()).into(),
                504,
                "UT",
                "upstream request timeout",
            ),
            (
                UpstreamOverflow {
                    cluster: "outbound|9080||reviews".into(),
                    limit: crate::error::OverflowLimit::MaxPendingRequests,
                }
                .into(),
                503,
                "UO",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            ("something else".into(), 503, "-", "upstream error"),
        ];
        for (err, status, flag, body) in cases {
            let res = error_response(&err, false);
            assert_eq!(res.status(), status, "{err}");
            assert_eq!(ResponseFlags::of(&res).to_string(), flag, "{err}");
            assert_eq!(text(res).await, body);
        }
    }

    #[test]
    fn an_overflow_is_marked_overloaded_as_envoy_does() {
        let err: BoxError = UpstreamOverflow {
            cluster: "outbound|9080||reviews".into(),
            limit: crate::error::OverflowLimit::MaxRequests,
        }
        .into();
        let res = error_response(&err, false);
        assert_eq!(res.headers()[X_ENVOY_OVERLOADED], "true");
        let res = error_response(&err, true);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()[X_ENVOY_OVERLOADED], "true");
        let res = error_response(&RouteTimeout(()).into(), false);
        assert!(res.headers().get(X_ENVOY_OVERLOADED).is_none());
    }

    #[test]
    fn grpc_callers_get_a_grpc_status() {
        let res = error_response(&RouteTimeout(()).into(), true);
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(res.headers()["grpc-message"], "upstream request timeout");
        let res = error_response(&NoRoute { host: "x".into() }.into(), true);
        assert_eq!(res.headers()["grpc-status"], "12");
    }

    #[tokio::test]
    async fn the_layer_answers_instead_of_failing() {
        use tower::ServiceExt;
        let svc = tower::service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<Body>, BoxError>(NoRoute { host: "x".into() }.into())
        });
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        let res = RescueLayer::new().layer(svc).oneshot(req).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "12");
    }
}
