//! `ratings`: the reviewers' star ratings, as Istio's Node.js service answers them.
//!
//! - `GET /ratings/<id>` → `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}` for any integer
//!   id, or what was posted for it; 400 `{"error":"please provide numeric product ID"}`
//!   otherwise;
//! - `POST /ratings/<id>` with a JSON body such as `{"Reviewer1":3,"Reviewer2":1}` replaces
//!   that product's ratings (kept in memory, per workload) and answers them; 400
//!   `{"error":"please provide valid ratings JSON"}` if the body is not JSON;
//! - `GET /health` → `{"status":"Ratings is healthy"}`.
//!
//! Istio's failure-demo versions behave as in Istio: `v-faulty` answers half the requests
//! with 503 `{"error":"Service unavailable"}`, `v-delayed` delays half of them by 7 s,
//! `v-unavailable` always answers 503, and `v-unhealthy` does too and reports itself
//! unhealthy. Every other version (`v1`, `v2`, …) keeps its ratings in memory; Istio's
//! database-backed `v2` needs MongoDB or MySQL, which this one does not.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State, rejection::PathRejection},
    response::Response,
    routing::get,
};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{json, json_error, product_id};
use crate::{Settings, forward::random_u64};

/// A product's ratings: reviewer name → stars.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratings {
    /// The product id.
    pub id: i64,
    /// Stars by reviewer (`{"Reviewer1":5,"Reviewer2":4}`); whatever JSON was posted.
    pub ratings: serde_json::Value,
}

impl Ratings {
    /// Istio's built-in ratings for product `id`: Reviewer1 5 stars, Reviewer2 4.
    pub fn of(id: i64) -> Self {
        Self {
            id,
            ratings: serde_json::json!({ "Reviewer1": 5, "Reviewer2": 4 }),
        }
    }
}

/// How this version of ratings misbehaves, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Faulty,
    Delayed,
    Unavailable,
    Unhealthy,
}

#[derive(Debug)]
struct Shared {
    mode: Mode,
    posted: Mutex<HashMap<i64, serde_json::Value>>,
}

/// How long `v-delayed` delays a request, as in Istio.
const DELAY: Duration = Duration::from_secs(7);

/// The ratings router, behaving as `settings.version`.
pub fn router(settings: Settings) -> Router {
    let mode = match settings.version.as_str() {
        "v-faulty" => Mode::Faulty,
        "v-delayed" => Mode::Delayed,
        "v-unavailable" => Mode::Unavailable,
        "v-unhealthy" => Mode::Unhealthy,
        _ => Mode::Normal,
    };
    let shared = Arc::new(Shared {
        mode,
        posted: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/ratings/{id}", get(ratings).post(post_ratings))
        .route("/health", get(health))
        .with_state(shared)
}

fn coin() -> bool {
    random_u64() & 1 == 0
}

fn unavailable() -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable")
}

fn bad_id() -> Response {
    json_error(StatusCode::BAD_REQUEST, "please provide numeric product ID")
}

impl Shared {
    fn get(&self, id: i64) -> Ratings {
        let posted = self
            .posted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        match posted {
            Some(ratings) => Ratings { id, ratings },
            None => Ratings::of(id),
        }
    }
}

async fn ratings(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(id) = id.ok().and_then(|Path(id)| product_id(&id)) else {
        return bad_id();
    };
    match shared.mode {
        Mode::Unavailable | Mode::Unhealthy => return unavailable(),
        Mode::Faulty if coin() => return unavailable(),
        Mode::Delayed if coin() => tokio::time::sleep(DELAY).await,
        _ => {}
    }
    json(StatusCode::OK, &shared.get(id))
}

async fn post_ratings(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let Some(id) = id.ok().and_then(|Path(id)| product_id(&id)) else {
        return bad_id();
    };
    let Ok(ratings) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "please provide valid ratings JSON");
    };
    shared
        .posted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id, ratings);
    json(StatusCode::OK, &shared.get(id))
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.mode == Mode::Unhealthy {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "status": "Ratings is not healthy" }),
        )
    } else {
        json(
            StatusCode::OK,
            &serde_json::json!({ "status": "Ratings is healthy" }),
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::Service;

    async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn ratings_app(version: &str) -> Router {
        router(Settings::istio(Service::Ratings, version, "ratings-v1"))
    }

    #[tokio::test]
    async fn answers_istios_ratings() {
        let app = ratings_app("v1");
        assert_eq!(
            call(&app, "GET", "/ratings/0", "").await,
            (
                StatusCode::OK,
                r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#.to_owned()
            )
        );
        let (status, body) = call(&app, "GET", "/ratings/x", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, r#"{"error":"please provide numeric product ID"}"#);
        assert_eq!(
            call(&app, "GET", "/health", "").await,
            (
                StatusCode::OK,
                r#"{"status":"Ratings is healthy"}"#.to_owned()
            )
        );
    }

    #[tokio::test]
    async fn posted_ratings_replace_the_built_in_ones() {
        let app = ratings_app("v1");
        let (status, body) = call(&app, "POST", "/ratings/0", r#"{"Reviewer1":1}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":1}}"#);
        let (_, body) = call(&app, "GET", "/ratings/0", "").await;
        assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":1}}"#);
        let (_, body) = call(&app, "GET", "/ratings/1", "").await;
        assert_eq!(body, r#"{"id":1,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#);
        let (status, body) = call(&app, "POST", "/ratings/0", "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, r#"{"error":"please provide valid ratings JSON"}"#);
    }

    #[tokio::test]
    async fn failure_demo_versions() {
        let app = ratings_app("v-unavailable");
        let (status, body) = call(&app, "GET", "/ratings/0", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"error":"Service unavailable"}"#);
        let app = ratings_app("v-unhealthy");
        let (status, _) = call(&app, "GET", "/health", "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let app = ratings_app("v-faulty");
        let mut codes = std::collections::HashSet::new();
        for _ in 0..64 {
            codes.insert(call(&app, "GET", "/ratings/0", "").await.0);
        }
        assert_eq!(
            codes,
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].into()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn v_delayed_delays_some_requests_by_7s() {
        let app = ratings_app("v-delayed");
        let mut delayed = 0;
        for _ in 0..32 {
            let start = tokio::time::Instant::now();
            let (status, _) = call(&app, "GET", "/ratings/0", "").await;
            assert_eq!(status, StatusCode::OK);
            if start.elapsed() >= DELAY {
                delayed += 1;
            }
        }
        assert!((1..32).contains(&delayed), "{delayed}");
    }
}
