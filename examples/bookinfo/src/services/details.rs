//! `details`: the book's details, as Istio's Ruby service answers them.
//!
//! - `GET /details/<id>` → `{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback",
//!   "pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890",
//!   "ISBN-13":"123-1234567890"}` for any integer id (the id is echoed), or 400
//!   `{"error":"please provide numeric product id"}`;
//! - `GET /health` → `{"status":"Details is healthy"}`.
//!
//! Istio's details can fetch from Google Books (`ENABLE_EXTERNAL_BOOK_SERVICE`); this one never
//! does, so it makes no outbound calls.

use axum::{
    Router,
    extract::{Path, rejection::PathRejection},
    response::Response,
    routing::get,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{json, json_error, product_id};
use crate::Settings;

/// A book's details, in Istio's field order and names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    /// The product id asked for.
    pub id: i64,
    /// The author.
    pub author: String,
    /// The year of publication.
    pub year: u32,
    /// `paperback`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The number of pages.
    pub pages: u32,
    /// The publisher.
    pub publisher: String,
    /// The language.
    pub language: String,
    /// The ISBN-10.
    #[serde(rename = "ISBN-10")]
    pub isbn_10: String,
    /// The ISBN-13.
    #[serde(rename = "ISBN-13")]
    pub isbn_13: String,
}

impl Details {
    /// The details of "The Comedy of Errors" under product id `id`, as Istio hard-codes them.
    pub fn of(id: i64) -> Self {
        Self {
            id,
            author: "William Shakespeare".to_owned(),
            year: 1595,
            kind: "paperback".to_owned(),
            pages: 200,
            publisher: "PublisherA".to_owned(),
            language: "English".to_owned(),
            isbn_10: "1234567890".to_owned(),
            isbn_13: "123-1234567890".to_owned(),
        }
    }
}

/// The details router. `settings` is unused: every version of details behaves the same.
pub fn router(settings: Settings) -> Router {
    let _ = settings;
    Router::new()
        .route("/details", get(no_id))
        .route("/details/", get(no_id))
        .route("/details/{id}", get(details))
        .route("/health", get(health))
}

async fn details(id: Result<Path<String>, PathRejection>) -> Response {
    match id.ok().and_then(|Path(id)| product_id(&id)) {
        Some(id) => json(StatusCode::OK, &Details::of(id)),
        None => no_id().await,
    }
}

async fn no_id() -> Response {
    json_error(StatusCode::BAD_REQUEST, "please provide numeric product id")
}

async fn health() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "Details is healthy" }),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::Service;

    async fn get(path: &str) -> (StatusCode, String) {
        let app = router(Settings::istio(Service::Details, "v1", "details-v1"));
        let res = app
            .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_istios_details() {
        let (status, body) = get("/details/0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
        );
        let (_, body) = get("/details/7").await;
        assert!(body.starts_with(r#"{"id":7,"#), "{body}");
    }

    #[tokio::test]
    async fn rejects_a_non_numeric_id() {
        for path in ["/details/abc", "/details", "/details/", "/details/%FF"] {
            let (status, body) = get(path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(body, r#"{"error":"please provide numeric product id"}"#);
        }
    }

    #[tokio::test]
    async fn is_healthy() {
        assert_eq!(
            get("/health").await,
            (
                StatusCode::OK,
                r#"{"status":"Details is healthy"}"#.to_owned()
            )
        );
    }
}
