//! `httpbin`: the few endpoints of [httpbin](https://httpbin.org) that Istio's tasks use (the
//! circuit-breaking task loads it with fortio; here with `meshctl load`).
//!
//! | request | answer |
//! |---|---|
//! | `ANY /status/<code>` | that status with an empty body, for a code from 200 to 599 (1xx codes are not final statuses: 400) |
//! | `ANY /delay/<seconds>` | after `seconds` (fractional allowed, at most 10 s as httpbin caps it), 200 with the `/get` JSON |
//! | `GET /headers` | `{"headers": {"Host": "httpbin:8000", …}}`, names in httpbin's `Title-Case` |
//! | `GET /get` | `{"args": {…}, "headers": {…}, "origin": "127.0.0.1", "url": "http://httpbin:8000/get?…"}` |
//! | `GET /health` | `{"status": "ok"}` |
//!
//! A malformed code or delay answers 400 `{"error": …}`. In the mesh the service is `httpbin`
//! on port [`PORT`] (`http://httpbin:8000/…`, as in Istio's sample); the workload has the
//! labels `app: httpbin`, `version: v1` and the service account `httpbin`.

use std::time::Duration;

use axum::{
    Router,
    extract::{Path, Request, rejection::PathRejection},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use http::{HeaderMap, StatusCode, Uri};
use mesh_tower::server::PeerAddr;
use serde_json::{Map, Value, json};

use super::{decode_component, json, json_error};

/// The port of `httpbin` in the mesh, as in Istio's sample (`http://httpbin:8000`).
pub const PORT: u16 = 8000;

/// The longest `/delay/<seconds>` waits, as httpbin caps it.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// The httpbin router.
pub fn router() -> Router {
    Router::new()
        .route("/status/{code}", any(status))
        .route("/delay/{seconds}", any(delay))
        .route("/headers", get(headers))
        .route("/get", get(get_json))
        .route(
            "/health",
            get(|| async { json(StatusCode::OK, &json!({"status": "ok"})) }),
        )
}

/// Parses the code of `/status/<code>`: three digits, from 200 to 599.
///
/// # Errors
/// A message for the 400 answer.
pub fn parse_status(code: &str) -> Result<StatusCode, String> {
    let valid = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    let status = valid
        .then(|| StatusCode::from_bytes(code.as_bytes()).ok())
        .flatten()
        .filter(|s| (200..=599).contains(&s.as_u16()));
    status.ok_or_else(|| format!("invalid status code {code:?}: expected 3 digits, 200 to 599"))
}

/// Parses the seconds of `/delay/<seconds>` (`2`, `0.5`), capped at [`MAX_DELAY`].
///
/// # Errors
/// Not a finite, non-negative decimal number: a message for the 400 answer.
pub fn parse_delay(seconds: &str) -> Result<Duration, String> {
    // Digits and at most one dot only: no `inf`, `NaN`, exponents or signs.
    let plain = !seconds.is_empty()
        && seconds != "."
        && seconds.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && seconds.bytes().filter(|&b| b == b'.').count() <= 1;
    let secs = plain
        .then(|| seconds.parse::<f64>().ok())
        .flatten()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("invalid delay {seconds:?}: expected seconds, e.g. 2 or 0.5"))?;
    Ok(Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64())))
}

/// The request headers as httpbin shows them: `Title-Case` names, repeated headers joined
/// with `,`, bytes that are not UTF-8 replaced.
pub fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let value = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.insert(title_case(name.as_str()), Value::String(value));
    }
    out
}

/// The query arguments as httpbin shows them: a string per argument, a list of strings for
/// an argument given more than once.
pub fn args_json(query: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            decode_component(s, true)
                .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into())
        };
        let (k, v) = (decode(k), Value::String(decode(v)));
        match out.get_mut(&k) {
            None => {
                out.insert(k, v);
            }
            Some(Value::Array(values)) => values.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
        }
    }
    out
}

/// The `/get` answer for a request.
pub fn get_body(uri: &Uri, headers: &HeaderMap, peer: Option<std::net::SocketAddr>) -> Value {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("httpbin:{PORT}"));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    json!({
        "args": args_json(uri.query()),
        "headers": headers_json(headers),
        "origin": peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        "url": format!("http://{host}{path}"),
    })
}

/// `content-type` → `Content-Type`, as httpbin (Werkzeug) prints header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn status(code: Result<Path<String>, PathRejection>) -> Response {
    match code
        .map_err(|e| e.body_text())
        .and_then(|Path(c)| parse_status(&c))
    {
        Ok(status) => status.into_response(),
        Err(message) => json_error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn delay(seconds: Result<Path<String>, PathRejection>, req: Request) -> Response {
    let wait = match seconds
        .map_err(|e| e.body_text())
        .and_then(|Path(s)| parse_delay(&s))
    {
        Ok(wait) => wait,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    tokio::time::sleep(wait).await;
    get_json(req).await
}

async fn headers(req: Request) -> Response {
    json(
        StatusCode::OK,
        &json!({ "headers": headers_json(req.headers()) }),
    )
}

async fn get_json(req: Request) -> Response {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    json(StatusCode::OK, &get_body(req.uri(), req.headers(), peer))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn call(req: http::Request<Body>) -> (StatusCode, Value) {
        let res = router().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, value)
    }

    fn get(uri: &str) -> http::Request<Body> {
        http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[test]
    fn status_codes() {
        assert_eq!(parse_status("503"), Ok(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(parse_status("200"), Ok(StatusCode::OK));
        assert_eq!(parse_status("599").map(|s| s.as_u16()), Ok(599));
        for bad in [
            "",
            "5",
            "5030",
            "abc",
            "+50",
            "100",
            "199",
            "600",
            "999",
            "０００",
        ] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_delay("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay(".25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_delay("3600"), Ok(MAX_DELAY));
        for bad in ["", ".", "-1", "x", "1e3", "inf", "NaN", "1.2.3", "1s", " 1"] {
            let err = parse_delay(bad).unwrap_err();
            assert!(err.contains("invalid delay"), "{bad}: {err}");
        }
    }

    #[test]
    fn header_names_are_title_case() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(title_case("host"), "Host");
        assert_eq!(title_case("a--b"), "A--B");
    }

    #[test]
    fn args_repeat_and_decode() {
        let args = args_json(Some("a=1&b=x%20y&a=2&c&a=3&d=p+q"));
        assert_eq!(
            Value::Object(args),
            json!({"a": ["1", "2", "3"], "b": "x y", "c": "", "d": "p q"})
        );
        assert!(args_json(None).is_empty());
        assert!(args_json(Some("&&")).is_empty());
    }

    #[tokio::test]
    async fn status_answers_the_code() {
        let (s, body) = call(get("/status/503")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, Value::Null);
        let post = http::Request::post("/status/201")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(post).await.0, StatusCode::CREATED);
        let (s, body) = call(get("/status/teapot")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("teapot"), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_waits_then_answers_get() {
        let started = tokio::time::Instant::now();
        let (s, body) = call(get("/delay/1.5?x=1")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(body["args"], json!({"x": "1"}));
        let started = tokio::time::Instant::now();
        assert_eq!(call(get("/delay/60")).await.0, StatusCode::OK);
        assert_eq!(started.elapsed(), MAX_DELAY);
        let (s, body) = call(get("/delay/soon")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("soon"), "{body}");
        assert_eq!(call(get("/delay/-1")).await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn headers_echoes_the_request_headers() {
        let req = http::Request::get("/headers")
            .header("host", "httpbin:8000")
            .header("x-thing", "a")
            .header("x-thing", "b")
            .body(Body::empty())
            .unwrap();
        let (s, body) = call(req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            json!({"headers": {"Host": "httpbin:8000", "X-Thing": "a,b"}})
        );
    }

    #[tokio::test]
    async fn get_shows_args_headers_url_and_origin() {
        let mut req = http::Request::get("/get?show_env=1&a=b")
            .header("host", "httpbin:8000")
            .header("user-agent", "test")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.7:4321".parse().unwrap()));
        let (s, body) = call(req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "args": {"show_env": "1", "a": "b"},
                "headers": {"Host": "httpbin:8000", "User-Agent": "test"},
                "origin": "127.0.0.7",
                "url": "http://httpbin:8000/get?show_env=1&a=b",
            })
        );
        let post = http::Request::post("/get").body(Body::empty()).unwrap();
        assert_eq!(call(post).await.0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
