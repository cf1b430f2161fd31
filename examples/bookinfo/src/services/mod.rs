//! The four Bookinfo services, each an axum `Router` (see [`crate::app`]), and [`httpbin`]
//! for Istio's circuit-breaking task.
//!
//! Every service listens for Istio's paths and answers Istio's JSON; `GET /health` answers
//! 200 on each. Outbound calls go to `http://<service>:9080/…` through the workload's mesh
//! client, carrying the [forwarded headers](crate::forward).

pub mod details;
pub mod httpbin;
pub mod productpage;
pub mod ratings;
pub mod reviews;

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Empty};
use mesh_tower::mesh::HttpClient;
use tower::ServiceExt;

/// The port every Bookinfo service listens on, as in Istio's manifests.
pub const PORT: u16 = 9080;

/// Why an outbound call produced no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The callee answered with this (non-200) status.
    Status(StatusCode),
    /// No answer in time.
    Timeout,
    /// The call failed (connection, mesh error, unreadable body, or a body that is not JSON).
    Failed,
}

impl CallError {
    /// The status to report for the failure, as Istio's productpage does: the callee's status,
    /// or 500 when there was none.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            CallError::Status(s) => s,
            CallError::Timeout | CallError::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A successful call: the body as received, and parsed.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) raw: Bytes,
    pub(crate) json: serde_json::Value,
}

/// `GET url` through the mesh with `headers`, within `timeout` (for the whole exchange, body
/// included); a 200 with a JSON body is an [`Answer`], anything else a [`CallError`].
pub(crate) async fn get_json(
    client: &HttpClient,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<Answer, CallError> {
    let mut req = match http::Request::get(url).body(Empty::<Bytes>::new()) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot build request");
            return Err(CallError::Failed);
        }
    };
    *req.headers_mut() = headers.clone();
    req.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    let call = async {
        let res = client.clone().oneshot(req).await.map_err(|e| {
            tracing::debug!(%url, error = %e, "call failed");
            CallError::Failed
        })?;
        let status = res.status();
        if status != StatusCode::OK {
            tracing::debug!(%url, %status, "call answered an error");
            return Err(CallError::Status(status));
        }
        let raw = res
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                tracing::debug!(%url, error = %e, "reading the answer failed");
                CallError::Failed
            })?
            .to_bytes();
        let json = serde_json::from_slice(&raw).map_err(|e| {
            tracing::debug!(%url, error = %e, "the answer is not JSON");
            CallError::Failed
        })?;
        Ok(Answer { raw, json })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => {
            tracing::debug!(%url, ?timeout, "call timed out");
            Err(CallError::Timeout)
        }
    }
}

/// A JSON response from bytes that are JSON already.
pub(crate) fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A JSON `{"error": message}`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// Percent-encodes `s` for use as one URL path segment (or a cookie value): everything but
/// RFC 3986's unreserved characters is escaped.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set); `None` if the result is
/// not UTF-8. Malformed escapes are kept as they are.
pub(crate) fn decode_component(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a product id as Istio's services do: a decimal integer, optionally signed.
pub(crate) fn product_id(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_round_trip() {
        for s in ["jason", "a b", "ünï", "x;y=z,\"q\"", "100%", "", "~-._"] {
            let e = encode_component(s);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
            );
            assert_eq!(decode_component(&e, false).as_deref(), Some(s));
        }
    }

    #[test]
    fn decoding_is_lenient_and_never_panics() {
        assert_eq!(decode_component("a%2", false).as_deref(), Some("a%2"));
        assert_eq!(decode_component("%", false).as_deref(), Some("%"));
        assert_eq!(decode_component("%zz", false).as_deref(), Some("%zz"));
        assert_eq!(decode_component("a+b", true).as_deref(), Some("a b"));
        assert_eq!(decode_component("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(decode_component("%ff", false), None);
        assert_eq!(decode_component("%e2%98%85", false).as_deref(), Some("★"));
    }

    #[test]
    fn product_ids() {
        assert_eq!(product_id("0"), Some(0));
        assert_eq!(product_id("-1"), Some(-1));
        assert_eq!(product_id("x"), None);
        assert_eq!(product_id(""), None);
    }
}
