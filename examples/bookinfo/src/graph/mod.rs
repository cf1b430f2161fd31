//! A live service graph, Kiali's core view without an extra server: the workloads and the
//! calls between them, with request rate, error rate and p99 latency on each edge, computed
//! from the workloads' own Prometheus metrics (Istio's `istio_requests_total` and
//! `istio_request_duration_milliseconds`).
//!
//! - [`parse`]: Prometheus' text exposition format (0.0.4);
//! - [`model`]: two scrapes per workload → nodes and edges (the conventions are Kiali's; see
//!   there);
//! - [`render`]: the self-contained HTML page with its server-rendered SVG;
//! - [`GraphCollector`]: scrapes in the background and serves the page (`bookinfo up` does
//!   at `http://127.0.0.1:15000/graph`).

mod collect;
pub mod model;
pub mod parse;
pub mod render;

pub use self::collect::{GraphCollector, MAX_BODY, Target};
