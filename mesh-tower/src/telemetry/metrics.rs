//! Istio's standard metrics and the mesh's own counters, as OpenTelemetry instruments read
//! out in Prometheus text format.
//!
//! [`IstioMetrics`] owns one [`SdkMeterProvider`] per mesh (never the global one) whose reader
//! is a [`ManualReader`]; [`IstioMetrics::encode`] collects it and writes the Prometheus text
//! exposition format 0.0.4 (`# HELP`, `# TYPE`, one line per series), which any Prometheus
//! (Debian's 2.42 included) scrapes from the admin endpoint's `/metrics`.
//!
//! The instruments are Istio's:
//!
//! | name | type | unit |
//! |---|---|---|
//! | `istio_requests_total` | counter | requests |
//! | `istio_request_duration_milliseconds` | histogram | milliseconds, to the last response byte |
//! | `istio_request_bytes` | histogram | request body bytes |
//! | `istio_response_bytes` | histogram | response body bytes |
//!
//! with Istio's labels (see [`crate::telemetry::layer`]), recorded by the
//! [`TelemetryLayer`](crate::telemetry::layer::TelemetryLayer). Byte histograms count body
//! bytes; Istio's `request.total_size` also counts the headers, whose encoded size depends
//! on the protocol (HPACK) and is not known to a tower layer.
//!
//! # Why not `opentelemetry-prometheus`
//!
//! Its exporter (0.33) adds `otel_scope_name`/`otel_scope_version` labels to every series
//! unless told otherwise, derives names from units, converts through the `prometheus` crate's
//! protobuf model and needs that crate's encoder. The encoder here writes the collected
//! [`ResourceMetrics`] directly with the instrument names as given, so the names and label
//! sets are exactly Istio's.
//!
//! # Buckets
//!
//! Istio's stats plugin records its histograms in Envoy histograms without bucket settings
//! unless a pod sets `sidecar.istio.io/statsHistogramBuckets`, so all three use Envoy's
//! default buckets ([`ENVOY_DEFAULT_BUCKETS`]; Envoy `source/common/stats/histogram_impl.cc`,
//! `HistogramSettingsImpl::defaultBuckets`).
//!
//! # Examples
//!
//! ```
//! use mesh_tower::telemetry::metrics::IstioMetrics;
//! let metrics = IstioMetrics::new();
//! let text = metrics.encode();
//! assert!(text.is_empty() || text.starts_with("# HELP"));
//! ```

use std::{
    fmt::Write as _,
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    KeyValue, Value,
    metrics::{Counter, Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};

mod counters;

pub use counters::MeshCounters;

/// Envoy's default histogram buckets, which Istio's duration and size histograms use.
pub const ENVOY_DEFAULT_BUCKETS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// `istio_requests_total`.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// `istio_request_duration_milliseconds`.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// `istio_request_bytes`.
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// `istio_response_bytes`.
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
/// Istio's gRPC request message counter (gRPC requests only).
pub const REQUEST_MESSAGES: &str = "istio_request_messages_total";
/// Istio's gRPC response message counter (gRPC requests only).
pub const RESPONSE_MESSAGES: &str = "istio_response_messages_total";

/// Istio's request metrics over a meter provider of their own; see the [module docs](self).
///
/// # Clone
///
/// Clones share the provider and the instruments.
#[derive(Clone, Debug)]
pub struct IstioMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    meter: Meter,
    requests: Counter<u64>,
    duration: Histogram<f64>,
    request_bytes: Histogram<u64>,
    response_bytes: Histogram<u64>,
    request_messages: Counter<u64>,
    response_messages: Counter<u64>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IstioMetrics {
    /// A fresh provider with Istio's instruments.
    pub fn new() -> Self {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = provider.meter("mesh");
        let requests = meter
            .u64_counter(REQUESTS_TOTAL)
            .with_description("Requests, by source, destination and outcome (Istio)")
            .build();
        let duration = meter
            .f64_histogram(REQUEST_DURATION)
            .with_description("Request duration in milliseconds, to the last response byte (Istio)")
            .with_boundaries(ENVOY_DEFAULT_BUCKETS.to_vec())
            .build();
        let request_bytes = meter
            .u64_histogram(REQUEST_BYTES)
            .with_description("Request body sizes in bytes (Istio)")
            .with_boundaries(ENVOY_DEFAULT_BUCKETS.to_vec())
            .build();
        let response_bytes = meter
            .u64_histogram(RESPONSE_BYTES)
            .with_description("Response body sizes in bytes (Istio)")
            .with_boundaries(ENVOY_DEFAULT_BUCKETS.to_vec())
            .build();
        let request_messages = meter
            .u64_counter(REQUEST_MESSAGES)
            .with_description("gRPC messages sent by the client, for gRPC requests (Istio)")
            .build();
        let response_messages = meter
            .u64_counter(RESPONSE_MESSAGES)
            .with_description("gRPC messages sent by the server, for gRPC requests (Istio)")
            .build();
        Self {
            inner: Arc::new(Inner {
                provider,
                reader,
                meter,
                requests,
                duration,
                request_bytes,
                response_bytes,
                request_messages,
                response_messages,
            }),
        }
    }

    /// The meter the instruments were made with, for more instruments on the same provider
    /// (they appear in [`encode`](Self::encode) too).
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The provider.
    pub fn provider(&self) -> &SdkMeterProvider {
        &self.inner.provider
    }

    /// Binds the four request instruments to one label set: what the telemetry layer keeps
    /// per edge, so recording a request resolves no labels.
    pub fn bind(&self, labels: &[KeyValue]) -> BoundRequestMetrics {
        BoundRequestMetrics {
            requests: self.inner.requests.bind(labels),
            duration: self.inner.duration.bind(labels),
            request_bytes: self.inner.request_bytes.bind(labels),
            response_bytes: self.inner.response_bytes.bind(labels),
            messages: None,
        }
    }

    /// [`bind`](Self::bind) for a gRPC label set: also binds the two message counters (only
    /// gRPC series have them, as in Istio).
    pub fn bind_grpc(&self, labels: &[KeyValue]) -> BoundRequestMetrics {
        BoundRequestMetrics {
            messages: Some((
                self.inner.request_messages.bind(labels),
                self.inner.response_messages.bind(labels),
            )),
            ..self.bind(labels)
        }
    }

    /// Records one request with `labels` without binding (the slow path, for label sets
    /// beyond the layer's cache).
    pub fn record(&self, labels: &[KeyValue], sample: RequestSample) {
        self.inner.requests.add(1, labels);
        self.inner
            .duration
            .record(millis_f64(sample.duration), labels);
        self.inner
            .request_bytes
            .record(sample.request_bytes, labels);
        self.inner
            .response_bytes
            .record(sample.response_bytes, labels);
        if let Some((sent, received)) = sample.messages {
            self.inner.request_messages.add(sent, labels);
            self.inner.response_messages.add(received, labels);
        }
    }

    /// Everything recorded so far in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.encode_into(&mut out);
        out
    }

    /// [`encode`](Self::encode) appending to `out`.
    pub fn encode_into(&self, out: &mut String) {
        let mut rm = ResourceMetrics::default();
        if let Err(e) = self.inner.reader.collect(&mut rm) {
            tracing::warn!(error = %e, "collecting metrics failed");
            return;
        }
        encode_resource_metrics(&rm, out);
    }
}

/// What one finished request measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestSample {
    /// From the request's start to the end of its response body.
    pub duration: Duration,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// For gRPC: the messages in the request and in the response bodies.
    pub messages: Option<(u64, u64)>,
}

/// The request instruments bound to one label set ([`IstioMetrics::bind`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct BoundRequestMetrics {
    requests: opentelemetry::metrics::BoundCounter<u64>,
    duration: opentelemetry::metrics::BoundHistogram<f64>,
    request_bytes: opentelemetry::metrics::BoundHistogram<u64>,
    response_bytes: opentelemetry::metrics::BoundHistogram<u64>,
    messages: Option<(
        opentelemetry::metrics::BoundCounter<u64>,
        opentelemetry::metrics::BoundCounter<u64>,
    )>,
}

impl BoundRequestMetrics {
    /// Records one request.
    pub fn record(&self, sample: RequestSample) {
        self.requests.add(1);
        self.duration.record(millis_f64(sample.duration));
        self.request_bytes.record(sample.request_bytes);
        self.response_bytes.record(sample.response_bytes);
        if let (Some((req, res)), Some((sent, received))) = (&self.messages, sample.messages) {
            req.add(sent);
            res.add(received);
        }
    }
}

fn millis_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Seconds from `now` to `t` (negative once `t` passed).
pub(crate) fn seconds_until(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Lets the provider own the reader while [`IstioMetrics`] keeps a handle to collect.
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, _kind: InstrumentKind) -> Temporality {
        // Prometheus wants cumulative values.
        Temporality::Cumulative
    }
}

// === encoding ===

/// Writes `rm` in Prometheus text format 0.0.4. Metric and label names are sanitized to
/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, label values and help texts escaped.
pub fn encode_resource_metrics(rm: &ResourceMetrics, out: &mut String) {
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            let name = sanitize_name(metric.name());
            let (kind, points): (&str, Vec<Point>) = match metric.data() {
                AggregatedMetrics::U64(d) => collect(d, |v| v as f64),
                AggregatedMetrics::I64(d) => collect(d, |v| v as f64),
                AggregatedMetrics::F64(d) => collect(d, |v| v),
            };
            if kind.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {}", escape_help(metric.description()));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for p in points {
                match p {
                    Point::Value { labels, value } => {
                        out.push_str(&name);
                        write_labels(out, &labels, None);
                        let _ = writeln!(out, " {}", fmt_f64(value));
                    }
                    Point::Histogram {
                        labels,
                        bounds,
                        counts,
                        count,
                        sum,
                    } => {
                        let mut cumulative = 0u64;
                        for (i, c) in counts.iter().enumerate() {
                            cumulative += c;
                            let le = bounds
                                .get(i)
                                .map_or_else(|| "+Inf".to_owned(), |b| fmt_f64(*b));
                            let _ = write!(out, "{name}_bucket");
                            write_labels(out, &labels, Some(&le));
                            let _ = writeln!(out, " {cumulative}");
                        }
                        if counts.is_empty() {
                            let _ = write!(out, "{name}_bucket");
                            write_labels(out, &labels, Some("+Inf"));
                            let _ = writeln!(out, " {count}");
                        }
                        let _ = write!(out, "{name}_sum");
                        write_labels(out, &labels, None);
                        let _ = writeln!(out, " {}", fmt_f64(sum));
                        let _ = write!(out, "{name}_count");
                        write_labels(out, &labels, None);
                        let _ = writeln!(out, " {count}");
                    }
                }
            }
        }
    }
}

enum Point {
    Value {
        labels: Vec<(String, String)>,
        value: f64,
    },
    Histogram {
        labels: Vec<(String, String)>,
        bounds: Vec<f64>,
        counts: Vec<u64>,
        count: u64,
        sum: f64,
    },
}

/// The labels of a data point, sorted by name so a series always prints alike.
fn labels_of<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = attrs
        .map(|kv| (sanitize_label(kv.key.as_str()), value_str(&kv.value)))
        .collect();
    labels.sort_unstable();
    labels
}

fn value_str(v: &Value) -> String {
    v.as_str().into_owned()
}

fn collect<T: Copy>(d: &MetricData<T>, f: impl Fn(T) -> f64) -> (&'static str, Vec<Point>) {
    match d {
        MetricData::Sum(sum) => (
            if sum.is_monotonic() {
                "counter"
            } else {
                "gauge"
            },
            sum.data_points()
                .map(|p| Point::Value {
                    labels: labels_of(p.attributes()),
                    value: f(p.value()),
                })
                .collect(),
        ),
        MetricData::Gauge(g) => (
            "gauge",
            g.data_points()
                .map(|p| Point::Value {
                    labels: labels_of(p.attributes()),
                    value: f(p.value()),
                })
                .collect(),
        ),
        MetricData::Histogram(h) => (
            "histogram",
            h.data_points()
                .map(|p| Point::Histogram {
                    labels: labels_of(p.attributes()),
                    bounds: p.bounds().collect(),
                    counts: p.bucket_counts().collect(),
                    count: p.count(),
                    sum: f(p.sum()),
                })
                .collect(),
        ),
        // Prometheus text format 0.0.4 has no exponential histograms.
        MetricData::ExponentialHistogram(_) => ("", Vec::new()),
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_value(out, v);
        out.push('"');
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        out.push_str("le=\"");
        out.push_str(le);
        out.push('"');
    }
    out.push('}');
}

fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn sanitize(name: &str, colon: bool) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn sanitize_name(name: &str) -> String {
    sanitize(name, true)
}

fn sanitize_label(name: &str) -> String {
    sanitize(name, false)
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_istio_names_buckets_and_escaped_labels() {
        let m = IstioMetrics::new();
        let labels = [
            KeyValue::new("reporter", "source"),
            KeyValue::new("destination.odd", "a\"b\\c\nd"),
        ];
        let bound = m.bind(&labels);
        bound.record(RequestSample {
            duration: Duration::from_millis(7),
            request_bytes: 3,
            response_bytes: 2_000,
            messages: None,
        });
        m.record(
            &labels,
            RequestSample {
                duration: Duration::from_micros(300),
                request_bytes: 0,
                response_bytes: 0,
                messages: None,
            },
        );
        let text = m.encode();
        assert!(
            text.contains("# TYPE istio_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "istio_requests_total{destination_odd=\"a\\\"b\\\\c\\nd\",reporter=\"source\"} 2\n"
        ));
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
        assert!(text.contains("istio_request_duration_milliseconds_bucket{destination_odd=\"a\\\"b\\\\c\\nd\",reporter=\"source\",le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("le=\"10\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 2\n"));
        assert!(text.contains("istio_request_duration_milliseconds_count{destination_odd=\"a\\\"b\\\\c\\nd\",reporter=\"source\"} 2\n"));
        assert!(text.contains("istio_response_bytes_sum{destination_odd=\"a\\\"b\\\\c\\nd\",reporter=\"source\"} 2000\n"), "{text}");
        assert!(text.contains("istio_request_bytes_bucket"));
        assert!(!text.contains("otel_scope"));
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize_name("a.b-c:d"), "a_b_c:d");
        assert_eq!(sanitize_label("1x:y"), "_1x_y");
        assert_eq!(fmt_f64(3_600_000.0), "3600000");
        assert_eq!(fmt_f64(0.5), "0.5");
        assert!(
            (seconds_until(
                SystemTime::UNIX_EPOCH,
                SystemTime::UNIX_EPOCH + Duration::from_secs(2)
            ) + 2.0)
                .abs()
                < 1e-9
        );
    }
}
