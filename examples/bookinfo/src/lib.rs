//! Istio's Bookinfo, rebuilt on the in-process mesh.
//!
//! Four services, as Istio ships them: `productpage` (the page and its JSON API), `details`,
//! `reviews` (v1 without ratings, v2 with black stars, v3 with red stars) and `ratings`. Each
//! is an axum `Router` built by [`app`]; its outbound calls go through the workload's
//! [`Mesh`](mesh_tower::mesh::Mesh) client, so Istio's routing, fault injection, timeouts and
//! retries apply to them. A fifth, [`httpbin`](services::httpbin), is the target of Istio's
//! circuit-breaking task (`bookinfo up --with httpbin`).

pub mod forward;
pub mod graph;
pub mod services;

use std::time::Duration;

use mesh_tower::mesh::HttpClient;

/// The Bookinfo services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Service {
    /// The product page and its JSON API.
    Productpage,
    /// Book details.
    Details,
    /// Book reviews (v1, v2, v3).
    Reviews,
    /// Book ratings.
    Ratings,
    /// httpbin (`/status/<code>`, `/delay/<seconds>`, `/headers`, `/get`), for Istio's
    /// circuit-breaking task; not part of Bookinfo itself.
    Httpbin,
}

impl Service {
    /// The service's name, as its `app` label and host (`reviews`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Productpage => "productpage",
            Service::Details => "details",
            Service::Reviews => "reviews",
            Service::Ratings => "ratings",
            Service::Httpbin => "httpbin",
        }
    }

    /// The workload's service account: `bookinfo-<service>` as in Istio's Bookinfo manifests,
    /// `httpbin` for httpbin as in Istio's httpbin sample.
    pub fn service_account(self) -> String {
        match self {
            Service::Httpbin => "httpbin".to_owned(),
            other => format!("bookinfo-{}", other.name()),
        }
    }
}

/// How one Bookinfo workload behaves: Istio's hard-coded application timeouts, overridable so
/// tests can run the fault-injection tasks in less time (the defaults are Istio's).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `v1`, `v2`, `v3`.
    pub version: String,
    /// The workload instance's name, as reviews reports it in `podname` (`reviews-v2-…`).
    pub workload: String,
    /// productpage → reviews timeout (Istio: 3 s) …
    pub reviews_timeout: Duration,
    /// … and how many times productpage retries reviews (Istio: 1).
    pub reviews_retries: u32,
    /// productpage → details timeout (Istio: 3 s).
    pub details_timeout: Duration,
    /// reviews → ratings timeout (Istio: 10 s for v2, 2.5 s for v3).
    pub ratings_timeout: Duration,
}

impl Settings {
    /// Istio's defaults for `service` at `version`.
    pub fn istio(service: Service, version: &str, workload: &str) -> Self {
        let ratings_timeout = match (service, version) {
            (Service::Reviews, "v3") => Duration::from_millis(2500),
            _ => Duration::from_secs(10),
        };
        Self {
            version: version.to_owned(),
            workload: workload.to_owned(),
            reviews_timeout: Duration::from_secs(3),
            reviews_retries: 1,
            details_timeout: Duration::from_secs(3),
            ratings_timeout,
        }
    }
}

/// The service's application: an axum router whose outbound calls use `client`.
pub fn app(service: Service, settings: Settings, client: HttpClient) -> axum::Router {
    match service {
        Service::Productpage => services::productpage::router(settings, client),
        Service::Details => services::details::router(settings),
        Service::Reviews => services::reviews::router(settings, client),
        Service::Ratings => services::ratings::router(settings),
        Service::Httpbin => services::httpbin::router(),
    }
}
