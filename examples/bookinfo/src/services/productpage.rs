//! `productpage`: the book's page and its JSON API, as Istio's Python service serves them.
//!
//! - `GET /productpage`: the HTML page ("Simple Bookstore App") for "The Comedy of Errors":
//!   the summary, the details (from `details`), the reviews (from `reviews`) with their stars,
//!   and which reviews workload served them. When a call fails the page says so in Istio's
//!   words ([`DETAILS_UNAVAILABLE`], [`REVIEWS_UNAVAILABLE`]).
//! - `POST /login` (form fields `username`, `passwd`; any user, the password is ignored) sets
//!   the session cookie `session=<user>` and redirects (302) to `/productpage`, which then
//!   greets the user ("Welcome, jason"); `GET /logout` clears it and redirects.
//! - `GET /api/v1/products`, `/api/v1/products/<id>` (details),
//!   `/api/v1/products/<id>/reviews`, `/api/v1/products/<id>/ratings`: Istio's JSON API. A
//!   failed call answers the callee's status (500 when there was none) and
//!   `{"error":"Sorry, product … are currently unavailable for this book."}`.
//! - `GET /` (and `/index.html`): the index page linking to the product page; `GET /health`.
//!
//! Every call carries the [forwarded headers](crate::forward), an `x-request-id` (generated
//! when the request has none) and, when someone is signed in, `end-user: <user>` (an
//! `end-user` header on the request itself is forwarded when nobody is signed in).
//!
//! Timeouts are the application's, as in Istio (they are app code there, not mesh config):
//! details [`Settings::details_timeout`] (3 s), reviews [`Settings::reviews_timeout`] (3 s)
//! tried [`Settings::reviews_retries`]` + 1` times (Istio: twice, so a reviews that never
//! answers makes the page wait ≈ 6 s), ratings (API only) [`Settings::details_timeout`]
//! (Istio: 3 s). The page asks details and reviews concurrently.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    Form, Router,
    extract::{
        Path, Query, State,
        rejection::{FormRejection, PathRejection, QueryRejection},
    },
    http::HeaderMap,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use http::{
    HeaderValue, StatusCode,
    header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE},
};
use mesh_tower::mesh::HttpClient;
use serde::{Deserialize, Serialize};

use super::{
    Answer, CallError, PORT, decode_component, encode_component, get_json, json, json_bytes,
    json_error,
};
use crate::{
    Settings,
    forward::{END_USER, ensure_request_id, propagated},
};

/// The page's error text when details fails, as Istio's.
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
/// The page's error text when reviews fails (after the retry), as Istio's.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
/// The API's error text when ratings fails, as Istio's.
pub const RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";
/// The page's title.
pub const TITLE: &str = "Simple Bookstore App";
/// The name of the session cookie, which holds the signed-in user.
pub const SESSION_COOKIE: &str = "session";

/// A product, as `/api/v1/products` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: i64,
    /// The book's title.
    pub title: String,
    /// Its summary, as HTML.
    #[serde(rename = "descriptionHtml")]
    pub description_html: String,
}

/// The products: "The Comedy of Errors", id 0, as in Istio.
pub fn products() -> Vec<Product> {
    vec![Product {
        id: 0,
        title: "The Comedy of Errors".to_owned(),
        description_html: "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.".to_owned(),
    }]
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
    client: HttpClient,
}

/// The productpage router; `client` calls details, reviews and ratings.
pub fn router(settings: Settings, client: HttpClient) -> Router {
    let shared = Arc::new(Shared { settings, client });
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/health", get(health))
        .route("/login", post(login))
        .route("/logout", get(logout))
        .route("/productpage", get(page))
        .route("/api/v1/products", get(products_api))
        .route("/api/v1/products/{id}", get(details_api))
        .route("/api/v1/products/{id}/reviews", get(reviews_api))
        .route("/api/v1/products/{id}/ratings", get(ratings_api))
        .with_state(shared)
}

/// The signed-in user, from the session cookie; `None` when nobody is signed in.
pub fn session_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .filter_map(|(_, value)| decode_component(value.trim_matches('"'), false))
        .find(|user| !user.is_empty())
}

/// The headers for the calls made while serving a request with `incoming` headers.
pub fn outbound_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = propagated(incoming);
    ensure_request_id(&mut headers);
    if let Some(user) = session_user(incoming)
        && let Ok(value) = HeaderValue::from_bytes(user.as_bytes())
    {
        headers.insert(END_USER, value);
    }
    headers
}

impl Shared {
    async fn details(&self, id: &str, headers: &HeaderMap) -> Result<Answer, CallError> {
        let url = format!("http://details:{PORT}/details/{}", encode_component(id));
        get_json(&self.client, &url, headers, self.settings.details_timeout).await
    }

    /// Reviews, tried `reviews_retries + 1` times, each within `reviews_timeout`, as Istio's
    /// productpage does ("Bug introduced explicitly for illustration in fault injection
    /// task").
    async fn reviews(&self, id: &str, headers: &HeaderMap) -> Result<Answer, CallError> {
        let url = format!("http://reviews:{PORT}/reviews/{}", encode_component(id));
        let mut result = Err(CallError::Failed);
        for _ in 0..=self.settings.reviews_retries {
            result = get_json(&self.client, &url, headers, self.settings.reviews_timeout).await;
            if result.is_ok() {
                break;
            }
        }
        result
    }

    async fn ratings(&self, id: &str, headers: &HeaderMap) -> Result<Answer, CallError> {
        let url = format!("http://ratings:{PORT}/ratings/{}", encode_component(id));
        get_json(&self.client, &url, headers, self.settings.details_timeout).await
    }
}

async fn health() -> Response {
    "Product page is healthy".into_response()
}

/// The login form: Istio reads `username` (and ignores `passwd`).
#[derive(Debug, Default, Deserialize)]
struct Login {
    username: Option<String>,
}

fn redirect_to_page(cookie: String) -> Response {
    let mut res = StatusCode::FOUND.into_response();
    res.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/productpage"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(SET_COOKIE, cookie);
    }
    res
}

fn clear_session() -> String {
    format!("{SESSION_COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/")
}

async fn login(
    query: Result<Query<Login>, QueryRejection>,
    form: Result<Form<Login>, FormRejection>,
) -> Response {
    let user = form
        .ok()
        .and_then(|Form(l)| l.username)
        .or_else(|| query.ok().and_then(|Query(l)| l.username))
        .filter(|u| !u.is_empty());
    match user {
        Some(user) => redirect_to_page(format!(
            "{SESSION_COOKIE}={}; HttpOnly; Path=/",
            encode_component(&user)
        )),
        None => redirect_to_page(clear_session()),
    }
}

async fn logout() -> Response {
    redirect_to_page(clear_session())
}

async fn page(State(shared): State<Arc<Shared>>, incoming: HeaderMap) -> Response {
    let headers = outbound_headers(&incoming);
    let user = session_user(&incoming);
    let product = products().swap_remove(0);
    let id = product.id.to_string();
    let (details, reviews) =
        tokio::join!(shared.details(&id, &headers), shared.reviews(&id, &headers));
    Html(render_page(
        user.as_deref(),
        &product,
        details.as_ref().ok().map(|a| &a.json),
        reviews.as_ref().ok().map(|a| &a.json),
    ))
    .into_response()
}

async fn products_api() -> Response {
    json(StatusCode::OK, &products())
}

fn path_id(id: Result<Path<String>, PathRejection>) -> String {
    id.map(|Path(id)| id).unwrap_or_default()
}

fn api_answer(result: Result<Answer, CallError>, error: &str) -> Response {
    match result {
        Ok(answer) => json_bytes(StatusCode::OK, answer.raw),
        Err(e) => json_error(e.status(), error),
    }
}

async fn details_api(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    incoming: HeaderMap,
) -> Response {
    let headers = outbound_headers(&incoming);
    let result = shared.details(&path_id(id), &headers).await;
    api_answer(result, DETAILS_UNAVAILABLE)
}

async fn reviews_api(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    incoming: HeaderMap,
) -> Response {
    let headers = outbound_headers(&incoming);
    let result = shared.reviews(&path_id(id), &headers).await;
    api_answer(result, REVIEWS_UNAVAILABLE)
}

async fn ratings_api(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    incoming: HeaderMap,
) -> Response {
    let headers = outbound_headers(&incoming);
    let result = shared.ratings(&path_id(id), &headers).await;
    api_answer(result, RATINGS_UNAVAILABLE)
}

/// Escapes text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text, as Jinja prints it: strings as they are, numbers and booleans
/// in JSON, anything missing as nothing.
fn text_of(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => escape(s),
        Some(other) => escape(&other.to_string()),
    }
}

/// A star colour safe to put in a style attribute: a colour name or `#hex`, else black.
fn safe_color(v: Option<&serde_json::Value>) -> &str {
    match v.and_then(serde_json::Value::as_str) {
        Some(c)
            if !c.is_empty()
                && c.len() <= 32
                && c.chars().all(|c| c.is_ascii_alphanumeric() || c == '#') =>
        {
            c
        }
        _ => "black",
    }
}

const STYLE: &str = r#"
body { margin: 0; font-family: "Helvetica Neue", Helvetica, Arial, sans-serif; font-size: 14px; color: #333; background: #fff; }
.navbar { display: flex; align-items: center; justify-content: space-between; flex-wrap: wrap; padding: 8px 20px; background: #222; color: #9d9d9d; }
.navbar a { color: #fff; text-decoration: none; }
.brand { font-size: 18px; }
.navbar form { margin: 0; }
.navbar input { padding: 4px 6px; margin-right: 4px; }
.container { max-width: 1140px; margin: 0 auto; padding: 0 20px; }
h3, h4 { text-align: center; color: #337ab7; font-weight: 500; }
.row { display: flex; flex-wrap: wrap; gap: 30px; }
.col { flex: 1 1 420px; }
dt { font-weight: bold; margin-top: 6px; }
dd { margin: 0; }
blockquote { margin: 0 0 20px; padding: 10px 20px; border-left: 5px solid #eee; }
blockquote p { margin: 0 0 8px; font-size: 16px; }
blockquote small { display: block; color: #777; }
.stars { font-size: 20px; margin: 4px 0 0; }
table { border-collapse: collapse; margin: 10px 0; }
td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
"#;

fn head(out: &mut String) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\">\n\
         <title>{TITLE}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
}

/// The product page for `product`, as signed-in `user`, from the details and reviews JSON
/// (`None` for a failed call).
pub fn render_page(
    user: Option<&str>,
    product: &Product,
    details: Option<&serde_json::Value>,
    reviews: Option<&serde_json::Value>,
) -> String {
    let mut out = String::with_capacity(8192);
    head(&mut out);
    out.push_str(
        "<nav class=\"navbar\">\n<a class=\"brand\" href=\"productpage\">BookInfo Sample</a>\n",
    );
    match user {
        Some(user) => {
            let _ = writeln!(
                out,
                "<p class=\"user\">Welcome, {} ( <a href=\"logout\">sign out</a> )</p>",
                escape(user)
            );
        }
        None => out.push_str(
            "<form method=\"post\" action=\"login\" name=\"login_form\">\
             <input type=\"text\" name=\"username\" placeholder=\"User Name\">\
             <input type=\"password\" name=\"passwd\" placeholder=\"Password\">\
             <button type=\"submit\">Sign in</button></form>\n",
        ),
    }
    out.push_str("</nav>\n<div class=\"container\">\n");
    let _ = write!(
        out,
        "<h3>{}</h3>\n<p>Summary: {}</p>\n<div class=\"row\">\n<div class=\"col\">\n",
        escape(&product.title),
        product.description_html
    );
    render_details(&mut out, details);
    out.push_str("</div>\n<div class=\"col\">\n");
    render_reviews(&mut out, reviews);
    out.push_str("</div>\n</div>\n</div>\n</body>\n</html>\n");
    out
}

fn render_details(out: &mut String, details: Option<&serde_json::Value>) {
    let Some(details) = details else {
        let _ = write!(
            out,
            "<h4>Error fetching product details!</h4>\n<p>{DETAILS_UNAVAILABLE}</p>\n"
        );
        return;
    };
    out.push_str("<h4>Book Details</h4>\n<dl>\n");
    for (label, key) in [
        ("Type", "type"),
        ("Pages", "pages"),
        ("Publisher", "publisher"),
        ("Language", "language"),
        ("ISBN-10", "ISBN-10"),
        ("ISBN-13", "ISBN-13"),
    ] {
        let _ = writeln!(
            out,
            "<dt>{label}:</dt><dd>{}</dd>",
            text_of(details.get(key))
        );
    }
    out.push_str("</dl>\n");
}

fn render_reviews(out: &mut String, reviews: Option<&serde_json::Value>) {
    let Some(reviews) = reviews else {
        let _ = write!(
            out,
            "<h4>Error fetching product reviews!</h4>\n<p>{REVIEWS_UNAVAILABLE}</p>\n"
        );
        return;
    };
    out.push_str("<h4>Book Reviews</h4>\n");
    for review in reviews
        .get("reviews")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = write!(
            out,
            "<blockquote>\n<p>{}</p>\n<small>{}</small>\n",
            text_of(review.get("text")),
            text_of(review.get("reviewer"))
        );
        if let Some(rating) = review.get("rating") {
            if let Some(stars) = rating.get("stars").and_then(serde_json::Value::as_i64) {
                let filled = usize::try_from(stars.clamp(0, 5)).unwrap_or(0);
                let _ = writeln!(
                    out,
                    "<p class=\"stars\" style=\"color: {}\" aria-label=\"{filled} of 5 stars\">{}{}</p>",
                    safe_color(rating.get("color")),
                    "★".repeat(filled),
                    "☆".repeat(5 - filled)
                );
            } else if let Some(error) = rating.get("error") {
                let _ = writeln!(out, "<p><i>{}</i></p>", text_of(Some(error)));
            }
        }
        out.push_str("</blockquote>\n");
    }
    let _ = write!(
        out,
        "<p class=\"served\">Reviews served by: {}",
        text_of(reviews.get("podname"))
    );
    if let Some(cluster) = reviews
        .get("clustername")
        .and_then(serde_json::Value::as_str)
        && cluster != "null"
    {
        let _ = write!(out, " on cluster {}", escape(cluster));
    }
    out.push_str("</p>\n");
}

async fn index() -> Response {
    let mut out = String::with_capacity(4096);
    head(&mut out);
    out.push_str(
        "<div class=\"container\">\n\
         <h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n\
         <table>\n<tr><th>name</th><th>endpoint</th><th>children</th></tr>\n\
         <tr><td>http://productpage:9080</td><td>productpage</td><td>\n\
         <table>\n<tr><th>name</th><th>endpoint</th><th>children</th></tr>\n\
         <tr><td>http://details:9080</td><td>details</td><td></td></tr>\n\
         <tr><td>http://reviews:9080</td><td>reviews</td><td>\n\
         <table>\n<tr><th>name</th><th>endpoint</th><th>children</th></tr>\n\
         <tr><td>http://ratings:9080</td><td>ratings</td><td></td></tr>\n</table>\n\
         </td></tr>\n</table>\n</td></tr>\n</table>\n\
         <h4>Click on one of the links below to auto generate a request to the backend as a real user or a tester</h4>\n\
         <p><a href=\"productpage?u=normal\">Normal user</a></p>\n\
         <p><a href=\"productpage?u=test\">Test user</a></p>\n\
         </div>\n</body>\n</html>\n",
    );
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;

    use super::*;
    use crate::services::{
        details::Details,
        reviews::{Stars, compose},
    };

    fn value(v: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    fn product() -> Product {
        products().swap_remove(0)
    }

    #[test]
    fn the_page_shows_details_and_reviews() {
        let details = value(&Details::of(0));
        let ratings = serde_json::json!({"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}});
        let reviews = value(&compose(0, "reviews-v3-abc", Stars::Red, Some(&ratings)));
        let page = render_page(None, &product(), Some(&details), Some(&reviews));
        for needle in [
            "<title>Simple Bookstore App</title>",
            "<h3>The Comedy of Errors</h3>",
            "<b>William Shakespeare's</b> early plays",
            "<dt>Type:</dt><dd>paperback</dd>",
            "<dt>Pages:</dt><dd>200</dd>",
            "<dt>ISBN-13:</dt><dd>123-1234567890</dd>",
            "The slapstick humour is refreshing!",
            "<small>Reviewer2</small>",
            "style=\"color: red\" aria-label=\"5 of 5 stars\">★★★★★</p>",
            "aria-label=\"4 of 5 stars\">★★★★☆</p>",
            "Reviews served by: reviews-v3-abc</p>",
            "name=\"username\"",
            "name=\"passwd\"",
            "Sign in",
        ] {
            assert!(page.contains(needle), "{needle} not in {page}");
        }
        assert!(!page.contains("Welcome"));
        assert!(!page.contains("Sorry"));
    }

    #[test]
    fn v1_reviews_have_no_stars_and_errors_have_istios_words() {
        let reviews = value(&compose(0, "reviews-v1-abc", Stars::None, None));
        let page = render_page(Some("jason"), &product(), None, Some(&reviews));
        assert!(!page.contains('★') && !page.contains('☆'));
        assert!(page.contains("Welcome, jason ( <a href=\"logout\">sign out</a> )"));
        assert!(!page.contains("name=\"passwd\""));
        assert!(page.contains("Sorry, product details are currently unavailable for this book."));
        let reviews = value(&compose(0, "reviews-v2-abc", Stars::Black, None));
        let page = render_page(None, &product(), None, Some(&reviews));
        assert_eq!(
            page.matches("<p><i>Ratings service is currently unavailable</i></p>")
                .count(),
            2
        );
        let page = render_page(None, &product(), None, None);
        assert!(page.contains("Sorry, product reviews are currently unavailable for this book."));
    }

    #[test]
    fn untrusted_values_are_escaped() {
        let reviews = serde_json::json!({
            "podname": "<script>",
            "clustername": "east",
            "reviews": [{"reviewer": "a&b", "text": "\"hi\"",
                         "rating": {"stars": 9, "color": "red\" onclick=\"x"}},
                        {"reviewer": 3, "rating": {"stars": -2, "color": "#c00"}},
                        "not an object"]
        });
        let page = render_page(
            Some("<b>"),
            &product(),
            Some(&serde_json::json!([])),
            Some(&reviews),
        );
        assert!(page.contains("Welcome, &lt;b&gt;"));
        assert!(page.contains("Reviews served by: &lt;script&gt; on cluster east"));
        assert!(page.contains("<small>a&amp;b</small>"));
        assert!(page.contains("<p>&quot;hi&quot;</p>"));
        assert!(page.contains("style=\"color: black\" aria-label=\"5 of 5 stars\""));
        assert!(page.contains("style=\"color: #c00\" aria-label=\"0 of 5 stars\">☆☆☆☆☆"));
        assert!(page.contains("<dt>Type:</dt><dd></dd>"));
    }

    #[test]
    fn the_session_cookie_names_the_user() {
        let mut h = HeaderMap::new();
        assert_eq!(session_user(&h), None);
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; session=jason%20b; c=2"),
        );
        assert_eq!(session_user(&h).as_deref(), Some("jason b"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("session=; session=%FF"));
        h.append(COOKIE, HeaderValue::from_static("session=\"x\""));
        assert_eq!(session_user(&h).as_deref(), Some("x"));
    }

    #[test]
    fn outbound_headers_carry_the_user_and_a_request_id() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("session=jason"));
        h.insert("end-user", HeaderValue::from_static("mallory"));
        h.insert("traceparent", HeaderValue::from_static("00-a-b-01"));
        h.insert("host", HeaderValue::from_static("x"));
        let out = outbound_headers(&h);
        assert_eq!(out.get("end-user").unwrap(), "jason");
        assert_eq!(out.get("traceparent").unwrap(), "00-a-b-01");
        assert_eq!(out.get("cookie").unwrap(), "session=jason");
        assert_eq!(out.get("x-request-id").unwrap().len(), 36);
        assert!(out.get("host").is_none());
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("given"));
        let out = outbound_headers(&h);
        assert_eq!(out.get("x-request-id").unwrap(), "given");
        assert!(out.get("end-user").is_none());
    }

    async fn call(req: http::Request<Body>) -> Response {
        use tower::ServiceExt;
        Router::new()
            .route("/login", post(login))
            .route("/logout", get(logout))
            .route("/", get(index))
            .route("/health", get(health))
            .route("/api/v1/products", get(products_api))
            .oneshot(req)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn login_sets_the_session_and_logout_clears_it() {
        let res = call(
            http::Request::post("/login")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("username=jason&passwd=secret"))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(res.headers()[LOCATION], "/productpage");
        assert_eq!(res.headers()[SET_COOKIE], "session=jason; HttpOnly; Path=/");

        let res = call(
            http::Request::post("/login")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("username=a+b%3B&passwd="))
                .unwrap(),
        )
        .await;
        assert_eq!(
            res.headers()[SET_COOKIE],
            "session=a%20b%3B; HttpOnly; Path=/"
        );

        // No form at all: nobody is signed in, and nothing panics.
        let res = call(
            http::Request::post("/login")
                .body(Body::from("\u{0}"))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert!(
            res.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );

        let res = call(http::Request::get("/logout").body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(res.headers()[LOCATION], "/productpage");
        assert!(
            res.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with("session=; ")
        );
    }

    #[tokio::test]
    async fn index_health_and_products() {
        let res = call(http::Request::get("/").body(Body::empty()).unwrap()).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("href=\"productpage?u=normal\"")
        );
        let res = call(http::Request::get("/health").body(Body::empty()).unwrap()).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"Product page is healthy");
        let res = call(
            http::Request::get("/api/v1/products")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let list: Vec<Product> = serde_json::from_slice(&body).unwrap();
        assert_eq!(list, products());
        assert!(
            std::str::from_utf8(&body).unwrap().starts_with(
                r#"[{"id":0,"title":"The Comedy of Errors","descriptionHtml":"<a href="#
            )
        );
    }
}
