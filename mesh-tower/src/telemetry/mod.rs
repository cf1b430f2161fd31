//! Telemetry building blocks: Istio's access log and trace context propagation.
//!
//! What exists now:
//!
//! - [`access_log`]: the [`AccessLogEntry`](access_log::AccessLogEntry) of one request,
//!   written in Istio's default text format or its JSON encoding into a caller's buffer (and
//!   parsed back), and the [`AccessLogSink`](access_log::AccessLogSink) that writes lines to
//!   standard output or a file from a background task, dropping (and counting) lines rather
//!   than making a request wait.
//! - [`propagation`]: W3C Trace Context and B3 extraction and injection
//!   ([`TraceContext`](propagation::TraceContext)), and `x-request-id` generation.
//!
//! What issue #8 adds next: the per-request layers that fill these in (an inbound and an
//! outbound `TelemetryLayer` that time the request, count body bytes, read
//! [`ResponseFlags`](crate::flags::ResponseFlags), the [`Target`](crate::target::Target),
//! the [`PickedEndpoint`](crate::target::PickedEndpoint) and the peer's address and identity
//! from the extensions), Istio's metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, ... with the standard labels), span export to a
//! tracing provider, and the mesh wiring (`Telemetry` resources and mesh config choosing the
//! access log encoding and file, and the sampling rate).

pub mod access_log;
pub mod propagation;
