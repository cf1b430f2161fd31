//! Telemetry: Istio's request metrics and access log per request, the mesh's own counters,
//! and trace context propagation.
//!
//! What exists now:
//!
//! - [`layer`]: the per-request [`TelemetryLayer`](layer::TelemetryLayer), an outbound form
//!   (`reporter="source"`, above the whole outbound stack) and an inbound one
//!   (`reporter="destination"`, around the application). It times each request to the end of
//!   its response body, counts body bytes, reads the
//!   [`ResponseFlags`](crate::flags::ResponseFlags), the route decision and the
//!   [`PickedEndpoint`](crate::target::PickedEndpoint) (outbound) or the peer's verified
//!   identity and `baggage` metadata (inbound), records Istio's metrics with the standard
//!   labels and, when configured, writes the access log line.
//! - [`metrics`]: [`IstioMetrics`](metrics::IstioMetrics), Istio's instruments
//!   (`istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//!   `istio_response_bytes`) on a meter provider per mesh, encoded in Prometheus text format
//!   for the admin endpoint; [`MeshCounters`](metrics::MeshCounters), the mesh's own
//!   `mesh_*` counters read at scrape time.
//! - [`access_log`]: the [`AccessLogEntry`](access_log::AccessLogEntry) of one request,
//!   written in Istio's default text format or its JSON encoding into a caller's buffer (and
//!   parsed back), and the [`AccessLogSink`](access_log::AccessLogSink) that writes lines to
//!   standard output or a file from a background task, dropping (and counting) lines rather
//!   than making a request wait.
//! - [`propagation`]: W3C Trace Context and B3 extraction and injection
//!   ([`TraceContext`](propagation::TraceContext)), and `x-request-id` generation.
//! - [`trace`]: distributed tracing: the [`Tracing`](trace::Tracing) handle (sampling, OTLP
//!   export over gRPC or HTTP, Istio's span attributes) and the inbound and outbound
//!   [`TraceLayer`](trace::TraceLayer)s, which start one span per request on each side and
//!   carry the trace through the request path, so outbound calls continue it without the
//!   application copying headers.
//!
//! [`Mesh`](crate::mesh::Mesh) stacks these layers on both sides and serves the metrics on its
//! admin endpoint ([`crate::admin`]). Not read: Istio's `Telemetry` resources (the access log,
//! tracing and sampling are set on the [`MeshBuilder`](crate::mesh::MeshBuilder) instead).

pub mod access_log;
pub mod layer;
pub mod metrics;
pub mod propagation;
pub mod trace;
