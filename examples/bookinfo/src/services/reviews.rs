//! `reviews`: two reviews of the book, as Istio's Java service answers them.
//!
//! - `GET /reviews/<id>` → `{"id":"0","podname":"reviews-v2-…","clustername":"null",
//!   "reviews":[{"reviewer":"Reviewer1","text":"…","rating":{"stars":5,"color":"black"}},…]}`;
//!   404 for an id that is not an integer;
//! - `GET /health` → `{"status":"Reviews is healthy"}`.
//!
//! The version decides the ratings, as Istio's `ENABLE_RATINGS` and `STAR_COLOR` do: `v1` has
//! no `rating` and never calls ratings; `v2` calls `http://ratings:9080/ratings/<id>` (timeout
//! [`Settings::ratings_timeout`], Istio's 10 s) and colours the stars black; `v3` calls it
//! (Istio's 2.5 s) and colours them red. Any other version behaves as `v1`. When the ratings
//! call fails (error, non-200, timeout, not JSON) each review gets
//! `"rating":{"error":"Ratings service is currently unavailable"}`; so does a reviewer the
//! ratings do not name.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, State, rejection::PathRejection},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::get,
};
use http::StatusCode;
use mesh_tower::mesh::HttpClient;
use serde::{Deserialize, Serialize};

use super::{PORT, get_json, json, product_id};
use crate::{Settings, forward::propagated};

/// What reviews answers when it could not get the ratings.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// The two reviewers and what they wrote, as in Istio.
pub const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// The reviews of one product, in Istio's JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviews {
    /// The product id, as a string (Istio's shape).
    pub id: String,
    /// The serving workload (Istio: the pod's hostname).
    pub podname: String,
    /// The cluster; `"null"` (Istio prints its unset `CLUSTER_NAME` so).
    pub clustername: String,
    /// The reviews.
    pub reviews: Vec<Review>,
}

/// One review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Who wrote it.
    pub reviewer: String,
    /// What they wrote.
    pub text: String,
    /// The reviewer's rating; absent in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

/// A review's rating, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rating {
    /// Stars out of five, and their colour (`black` in v2, `red` in v3).
    Stars {
        /// How many stars.
        stars: i64,
        /// `black` or `red`.
        color: String,
    },
    /// The ratings could not be had: [`RATINGS_UNAVAILABLE`].
    Error {
        /// The reason.
        error: String,
    },
}

/// What a version of reviews does about ratings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stars {
    /// No ratings (v1).
    None,
    /// Ratings in black stars (v2).
    Black,
    /// Ratings in red stars (v3).
    Red,
}

impl Stars {
    /// The stars of reviews `version`: `v2` black, `v3` red, anything else none.
    pub fn of_version(version: &str) -> Self {
        match version {
            "v2" => Stars::Black,
            "v3" => Stars::Red,
            _ => Stars::None,
        }
    }

    /// The colour name, if there are stars.
    pub fn color(self) -> Option<&'static str> {
        match self {
            Stars::None => None,
            Stars::Black => Some("black"),
            Stars::Red => Some("red"),
        }
    }
}

#[derive(Debug)]
struct Shared {
    stars: Stars,
    podname: String,
    ratings_timeout: Duration,
    client: HttpClient,
}

/// The reviews router: `settings.version` picks the stars, `settings.workload` is the
/// `podname`, and `client` calls ratings.
pub fn router(settings: Settings, client: HttpClient) -> Router {
    let shared = Arc::new(Shared {
        stars: Stars::of_version(&settings.version),
        podname: settings.workload,
        ratings_timeout: settings.ratings_timeout,
        client,
    });
    Router::new()
        .route("/reviews/{id}", get(reviews))
        .route("/health", get(health))
        .with_state(shared)
}

/// The reviews of product `id` as served by `podname`, with `stars` and the `ratings` JSON
/// (`None` when the ratings call failed).
pub fn compose(
    id: i64,
    podname: &str,
    stars: Stars,
    ratings: Option<&serde_json::Value>,
) -> Reviews {
    let reviews = REVIEWS
        .iter()
        .map(|(reviewer, text)| Review {
            reviewer: (*reviewer).to_owned(),
            text: (*text).to_owned(),
            rating: stars.color().map(|color| {
                match ratings
                    .and_then(|r| r.get("ratings"))
                    .and_then(|r| r.get(*reviewer))
                    .and_then(stars_of)
                {
                    Some(stars) => Rating::Stars {
                        stars,
                        color: color.to_owned(),
                    },
                    None => Rating::Error {
                        error: RATINGS_UNAVAILABLE.to_owned(),
                    },
                }
            }),
        })
        .collect();
    Reviews {
        id: id.to_string(),
        podname: podname.to_owned(),
        clustername: "null".to_owned(),
        reviews,
    }
}

/// A JSON number as whole stars (Java's `getInt` truncates).
fn stars_of(v: &serde_json::Value) -> Option<i64> {
    // `as` truncates toward zero and saturates.
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

async fn reviews(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = id.ok().and_then(|Path(id)| product_id(&id)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let ratings = if shared.stars == Stars::None {
        None
    } else {
        let url = format!("http://ratings:{PORT}/ratings/{id}");
        get_json(
            &shared.client,
            &url,
            &propagated(&headers),
            shared.ratings_timeout,
        )
        .await
        .ok()
        .map(|answer| answer.json)
    };
    json(
        StatusCode::OK,
        &compose(id, &shared.podname, shared.stars, ratings.as_ref()),
    )
}

async fn health() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "Reviews is healthy" }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_has_no_ratings() {
        let r = compose(0, "reviews-v1-x", Stars::None, None);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"0","podname":"reviews-v1-x","clustername":"null","reviews":[{"reviewer":"Reviewer1","text":"An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},{"reviewer":"Reviewer2","text":"Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}]}"#
        );
    }

    #[test]
    fn v2_and_v3_colour_the_ratings() {
        let ratings = serde_json::json!({"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}});
        let r = compose(0, "reviews-v2-x", Stars::Black, Some(&ratings));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"0","podname":"reviews-v2-x","clustername":"null","reviews":[{"reviewer":"Reviewer1","text":"An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!","rating":{"stars":5,"color":"black"}},{"reviewer":"Reviewer2","text":"Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.","rating":{"stars":4,"color":"black"}}]}"#
        );
        let r = compose(0, "reviews-v3-x", Stars::Red, Some(&ratings));
        assert_eq!(
            r.reviews[1].rating,
            Some(Rating::Stars {
                stars: 4,
                color: "red".into()
            })
        );
    }

    #[test]
    fn failed_or_partial_ratings_say_unavailable() {
        let unavailable = Some(Rating::Error {
            error: RATINGS_UNAVAILABLE.into(),
        });
        let r = compose(0, "p", Stars::Red, None);
        assert!(r.reviews.iter().all(|r| r.rating == unavailable));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""rating":{"error":"Ratings service is currently unavailable"}"#));
        let partial = serde_json::json!({"ratings":{"Reviewer1":3.7,"Reviewer2":"x"}});
        let r = compose(0, "p", Stars::Black, Some(&partial));
        assert_eq!(
            r.reviews[0].rating,
            Some(Rating::Stars {
                stars: 3,
                color: "black".into()
            })
        );
        assert_eq!(r.reviews[1].rating, unavailable);
    }

    #[test]
    fn parses_back() {
        let r = compose(3, "p", Stars::Black, None);
        let back: Reviews = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
