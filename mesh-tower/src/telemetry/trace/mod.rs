//! Distributed tracing through the mesh: one span per request on each side, continued across
//! services without the application copying headers.
//!
//! Istio's sidecars start a server span when a request arrives and a client span when the
//! application calls out, join them by the trace headers ([`propagation`]), and export them
//! to a collector. Here the same is done by two tower layers and one handle:
//!
//! - [`Tracing`]: the sampling percentage, the exporter (OTLP over gRPC or HTTP/protobuf, or
//!   any [`SpanExporter`]), the service name and the Istio attributes added to every span.
//!   Cheap to clone; one per workload, built on its own [`SdkTracerProvider`] (never the
//!   global one). [`Tracing::force_flush`] and [`Tracing::shutdown`] flush on exit.
//! - [`TraceLayer::inbound`]: extracts the caller's context (W3C first, then B3), or starts a
//!   new trace per the sampling percentage; makes sure the request has an `x-request-id`;
//!   starts the SERVER span; rewrites the trace headers to the server span (as Envoy does
//!   towards the application, so an application forwarding headers by hand continues the
//!   trace); and carries the span's context through the request path: in the request's
//!   extensions ([`RequestTrace`]) and in a tokio task-local around the application's future
//!   ([`current`]), so outbound calls made while handling the request continue the trace.
//! - [`TraceLayer::outbound`]: picks the parent (a [`RequestTrace`] or [`TraceContext`] in the
//!   request's extensions, else the task-local [`current`], else trace headers already on the
//!   request, else a new trace), starts the CLIENT span, and writes W3C and B3 headers for it
//!   and the `x-request-id`. It sits above the whole outbound stack, so one client span
//!   covers every retry, as Envoy's one span per downstream request.
//!
//! A span ends when the response body ends (or is dropped). Only sampled requests build
//! spans, and only when the [`Tracing`] has an exporter. The layers build each span directly
//! as the [`SpanData`] the exporter's span processor takes, with the ids of the context they
//! propagate, and hand it over when it ends: no SDK span object per request. The provider
//! ([`Tracing::provider`]) shares that processor, so the application's own spans go to the
//! same exporter, batch and resource.
//!
//! # Without an exporter
//!
//! A [`Tracing`] without an exporter ([`Tracing::disabled`], the mesh's default) records
//! nothing, so the layers make up no span ids either: the caller's context goes on as it
//! came, as through an Envoy without a tracer. Inbound, the trace headers reach the
//! application untouched (only `x-request-id` is added when missing) and the caller's
//! context is the request's [`RequestTrace`] and task-local [`current`]; outbound, a call
//! made while serving it carries that context (W3C and B3 headers with the caller's ids) and
//! the request's `x-request-id`, and a call outside any served request goes as it is. So the
//! spans a later hop records are children of a span its backend has (the caller's), not of
//! ids no backend will ever see. A request without trace context gets no trace at all.
//!
//! # Span names and attributes
//!
//! Names are Istio's: `<host>:<port>/*`, e.g. `reviews.default.svc.cluster.local:9080/*`
//! (the route name Envoy's decorator uses for Istio's default routes). Attributes are
//! Envoy's tracing tags (`envoy/tracing/trace_context.h` / `source/common/tracing/
//! http_tracer_impl.cc`: `component`, `node_id`, `guid:x-request-id`, `http.url`,
//! `http.method`, `downstream_cluster`, `user_agent`, `http.protocol`, `peer.address`,
//! `request_size`, `response_size`, `response_flags`, `http.status_code`,
//! `upstream_cluster`, `upstream_cluster.name`, `upstream_address`, `error`), with Envoy's
//! string values, plus the custom tags Istio adds to every span (`pilot/pkg/networking/core/
//! tracing.go`: `istio.canonical_service`, `istio.canonical_revision`, `istio.namespace`,
//! `istio.mesh_id`, `istio.cluster_id`). A 5xx response, or a failed request, sets the span's
//! status to error.
//!
//! # Sampling
//!
//! A decision in the incoming headers is obeyed (`traceparent` flags, `x-b3-sampled`,
//! `b3: 0`, B3 debug), as Envoy does; otherwise a new trace is sampled with the configured
//! percentage (Istio's default: 1 %). The ids are propagated either way, so a later hop
//! keeps the same trace id even when this one does not record.
//!
//! # Examples
//!
//! ```
//! use mesh_tower::telemetry::trace::{TraceLayer, Tracing};
//! use opentelemetry_sdk::trace::InMemorySpanExporter;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), mesh_core::BoxError> {
//! let exporter = InMemorySpanExporter::default();
//! let tracing = Tracing::builder()
//!     .canonical_service("productpage")
//!     .namespace("default")
//!     .sampling(100.0)
//!     .exporter(exporter.clone())
//!     .build()?;
//! let inbound = TraceLayer::inbound(tracing.clone()).port(9080); // around the application
//! let outbound = TraceLayer::outbound(tracing.clone()); // around the mesh client
//! # let _ = (inbound, outbound);
//! // ... serve, then on exit:
//! tracing.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! A workload exporting to a collector only names its endpoint:
//!
//! ```no_run
//! # use mesh_tower::telemetry::trace::Tracing;
//! # async fn run() -> Result<(), mesh_core::BoxError> {
//! let tracing = Tracing::builder()
//!     .otlp("http://otel-collector.istio-system:4317") // gRPC; `…:4318/v1/traces` is HTTP
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! [`propagation`]: super::propagation
//! [`SpanExporter`]: opentelemetry_sdk::trace::SpanExporter
//! [`SdkTracerProvider`]: opentelemetry_sdk::trace::SdkTracerProvider
//! [`SpanData`]: opentelemetry_sdk::trace::SpanData

use std::{borrow::Cow, fmt, future::Future, sync::Arc, time::Duration};

use http::HeaderValue;
use opentelemetry::{
    Context, InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    runtime,
    trace::{
        Sampler, SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter, SpanProcessor,
        span_processor_with_async_runtime::BatchSpanProcessor,
    },
};
use tokio::task::futures::TaskLocalFuture;

use super::propagation::TraceContext;

mod layer;
#[cfg(test)]
mod tests;

pub use self::layer::{
    RecordTarget, RecordTargetLayer, ResponseFuture, Trace, TraceLayer, TracedBody,
};

/// Istio's default sampling percentage (`meshConfig.defaultConfig.tracing.sampling`).
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// How long an OTLP export may take before it is abandoned (the exporter's default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub use super::layer::{CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL};

// === RequestTrace, current, scope ===

/// The trace position of the request being handled: the server span's context and the
/// request's `x-request-id`.
///
/// [`TraceLayer::inbound`] puts it in the request's extensions and in a task-local for the
/// duration of the application's future ([`current`]); [`TraceLayer::outbound`] continues
/// from it. An application that hands work to another task carries it with [`scope`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTrace {
    /// The context of the span handling the request (its children are the outbound calls).
    pub context: TraceContext,
    /// The request's `x-request-id`, propagated to outbound calls.
    pub request_id: Option<HeaderValue>,
}

tokio::task_local! {
    /// Shared, so that entering and leaving the scope at every poll swaps a pointer, not
    /// the whole context.
    static CURRENT: Option<Arc<RequestTrace>>;
}

/// The future [`scope`] returns.
pub type Scoped<F> = TaskLocalFuture<Option<Arc<RequestTrace>>, F>;

/// The trace of the request being handled by the current task: set by
/// [`TraceLayer::inbound`] while the application's future runs, or by [`scope`].
pub fn current() -> Option<RequestTrace> {
    CURRENT.try_with(|t| t.as_deref().cloned()).ok().flatten()
}

/// True if the code runs while a traced request is served (a [`current`] trace is set),
/// without copying it.
pub(crate) fn in_traced_scope() -> bool {
    CURRENT.try_with(Option::is_some).unwrap_or(false)
}

/// Runs `fut` with `trace` as the [`current`] trace, e.g. in a task the application spawns
/// while handling a request, so the calls it makes through the mesh client continue the
/// request's trace:
///
/// ```
/// use mesh_tower::telemetry::trace;
/// # async fn handler() {
/// let parent = trace::current();
/// tokio::spawn(trace::scope(parent, async {
///     // outbound calls here are children of the request's server span
/// }));
/// # }
/// ```
pub fn scope<F: Future>(trace: Option<RequestTrace>, fut: F) -> Scoped<F> {
    CURRENT.scope(trace.map(Arc::new), fut)
}

// === the span processor, shared ===

/// The exporter's span processor, shared by the provider (the application's own spans) and
/// the trace layers, which hand it finished spans directly: a request's span is built once,
/// as the [`SpanData`] the processor takes, without the SDK's span object in between.
#[derive(Clone, Debug)]
struct SharedProcessor(Arc<dyn SpanProcessor>);

impl SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    // `set_resource` is left to the default (nothing): the processor was given the
    // provider's resource before it was shared.
}

// === Tracing ===

/// A workload's tracing: sampling, exporter, attributes; see the [module docs](self).
/// Cheap to clone: clones share the tracer provider.
#[derive(Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
}

struct Inner {
    /// Percent of new traces sampled, 0 to 100.
    sampling: f64,
    provider: Option<SdkTracerProvider>,
    /// The provider's span processor, which the layers hand their spans to.
    processor: Option<Arc<dyn SpanProcessor>>,
    /// Added to every span: `component`, `node_id`, `istio.*`.
    attributes: Vec<KeyValue>,
    /// The workload's service host for inbound span names
    /// (`productpage.default.svc.cluster.local`).
    service_host: Option<Arc<str>>,
}

impl Drop for Inner {
    /// The SDK shuts a provider down when its last handle drops, and the batch processor's
    /// shutdown blocks until its task on the runtime answers: on a runtime thread (always, on
    /// a current-thread runtime) that would never return. The last handles are dropped on a
    /// plain thread instead. Spans still in flight hold the provider too: call
    /// [`Tracing::shutdown`] before dropping the last handle.
    fn drop(&mut self) {
        let processor = self.processor.take();
        let Some(provider) = self.provider.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("mesh-trace-shutdown".to_owned())
                .spawn(move || drop((processor, provider)));
        }
    }
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling", &self.inner.sampling)
            .field("exporting", &self.inner.processor.is_some())
            .field("service_host", &self.inner.service_host)
            .finish_non_exhaustive()
    }
}

impl Default for Tracing {
    /// Propagation only: no exporter, Istio's default sampling.
    fn default() -> Self {
        Self::disabled()
    }
}

impl Tracing {
    /// A builder; see [`TracingBuilder`].
    pub fn builder() -> TracingBuilder {
        TracingBuilder::default()
    }

    /// Propagation without export: headers and `x-request-id` are handled, no span is
    /// built. New traces are sampled at Istio's default 1 %, so downstream workloads that
    /// do export see the usual decision.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                sampling: DEFAULT_SAMPLING,
                provider: None,
                processor: None,
                attributes: Vec::new(),
                service_host: None,
            }),
        }
    }

    /// The percentage of new traces sampled.
    pub fn sampling(&self) -> f64 {
        self.inner.sampling
    }

    /// True if spans are exported (an exporter is configured).
    pub fn is_exporting(&self) -> bool {
        self.inner.processor.is_some()
    }

    /// The tracer provider, when exporting (e.g. to build spans of the application's own
    /// with the same resource and exporter).
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.inner.provider.as_ref()
    }

    /// Exports every finished span now.
    ///
    /// # Errors
    /// The exporter failed or the provider is shut down.
    pub async fn force_flush(&self) -> Result<(), TracingError> {
        let Some(provider) = self.inner.provider.clone() else {
            return Ok(());
        };
        // The batch processor's flush blocks until its task (on this runtime) answers: run
        // it off the runtime's threads, so a current-thread runtime is not deadlocked.
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .map_err(|e| TracingError::Task(e.to_string()))??;
        Ok(())
    }

    /// Exports the remaining spans and stops the exporter; later spans are dropped. Call it
    /// when the workload exits.
    ///
    /// # Errors
    /// The exporter failed or the provider was shut down already.
    pub async fn shutdown(&self) -> Result<(), TracingError> {
        let Some(provider) = self.inner.provider.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .map_err(|e| TracingError::Task(e.to_string()))??;
        Ok(())
    }

    /// A sampling decision for a new trace.
    pub(crate) fn sample(&self) -> bool {
        let p = self.inner.sampling;
        // 53 random bits as a uniform float in [0, 1), from the per-thread generator the
        // ids come from (a ChaCha block from `rand` would cost more than the rest).
        let uniform = (super::propagation::fast_u64() >> 11) as f64 / (1u64 << 53) as f64;
        p >= 100.0 || (p > 0.0 && uniform * 100.0 < p)
    }

    pub(crate) fn service_host(&self) -> Option<&str> {
        self.inner.service_host.as_deref()
    }

    /// Starts the span `ctx` describes (its ids; its parent, remote, when it has one), when
    /// the context is sampled and spans are exported; `name` and `attributes` are only
    /// called then. The span is exported by [`Tracing::end`].
    pub(crate) fn start(
        &self,
        ctx: &TraceContext,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce(&mut Vec<KeyValue>),
    ) -> Option<SpanData> {
        self.inner.processor.as_ref()?;
        if !ctx.is_sampled() {
            return None;
        }
        let state = ctx
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<TraceState>().ok())
            .unwrap_or_default();
        // Room for every attribute a request's span gets, so none reallocates.
        let mut attrs = Vec::with_capacity(24);
        attributes(&mut attrs);
        attrs.extend(self.inner.attributes.iter().cloned());
        let start_time = opentelemetry::time::now();
        Some(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(ctx.trace_id),
                SpanId::from_bytes(ctx.span_id),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: ctx
                .parent_span_id
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: ctx.parent_span_id.is_some(),
            span_kind: kind,
            name: name(),
            start_time,
            end_time: start_time,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: scope_of_spans(),
        })
    }

    /// Ends a span [`Tracing::start`] began, now, and hands it to the exporter's processor.
    pub(crate) fn end(&self, mut span: SpanData) {
        span.end_time = opentelemetry::time::now();
        if let Some(processor) = &self.inner.processor {
            processor.on_end(span);
        }
    }
}

/// The instrumentation scope of the layers' spans (as a tracer named `mesh-tower` had).
fn scope_of_spans() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| InstrumentationScope::builder("mesh-tower").build())
        .clone()
}

/// The wire protocol of an OTLP endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The protocol an endpoint URL implies: HTTP when its path ends with `/v1/traces` or
    /// its port is 4318, gRPC otherwise.
    pub fn of(endpoint: &str) -> Self {
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if uri.path().ends_with("/v1/traces") || uri.port_u16() == Some(4318) => {
                Self::HttpProtobuf
            }
            _ => Self::Grpc,
        }
    }
}

/// Makes the span processor of an exporter.
type Install = Box<dyn FnOnce() -> Box<dyn SpanProcessor> + Send>;

enum ExporterChoice {
    Otlp {
        endpoint: String,
        protocol: Option<OtlpProtocol>,
    },
    Custom(Install),
}

/// Builds a [`Tracing`]. The last call of each setter wins.
#[must_use]
pub struct TracingBuilder {
    sampling: f64,
    exporter: Option<ExporterChoice>,
    export_timeout: Duration,
    service_name: Option<String>,
    canonical_service: Option<String>,
    canonical_revision: Option<String>,
    namespace: Option<String>,
    mesh_id: Option<String>,
    cluster_id: Option<String>,
    node_id: Option<String>,
    service_host: Option<String>,
    resource: Vec<KeyValue>,
}

impl Default for TracingBuilder {
    fn default() -> Self {
        Self {
            sampling: DEFAULT_SAMPLING,
            exporter: None,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            service_name: None,
            canonical_service: None,
            canonical_revision: None,
            namespace: None,
            mesh_id: None,
            cluster_id: None,
            node_id: None,
            service_host: None,
            resource: Vec::new(),
        }
    }
}

impl fmt::Debug for TracingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exporter = match &self.exporter {
            None => "none".to_owned(),
            Some(ExporterChoice::Otlp { endpoint, .. }) => format!("otlp {endpoint}"),
            Some(ExporterChoice::Custom(_)) => "custom".to_owned(),
        };
        f.debug_struct("TracingBuilder")
            .field("sampling", &self.sampling)
            .field("exporter", &exporter)
            .field("service_name", &self.service_name)
            .field("canonical_service", &self.canonical_service)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TracingBuilder {
    /// Fills the service, revision, namespace, node id and service host from a workload as
    /// Istio does: the canonical service is the `service.istio.io/canonical-name` label,
    /// else `app.kubernetes.io/name`, else `app`, else the workload's name; the revision is
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else
    /// `version`, else `latest`. The service host (inbound span names) is
    /// `<app>.<namespace>.svc.cluster.local`, the host the workload is an endpoint of.
    pub fn workload(mut self, workload: &crate::mesh::Workload) -> Self {
        // The same rules as the metrics' labels.
        let local = super::layer::LocalWorkload::from_workload(workload);
        let labels = local.peer_labels(false);
        let service = labels.canonical_service.to_string();
        self.service_host = Some(
            local
                .service_host()
                .unwrap_or_else(|| format!("{service}.{}.svc.{}", local.namespace, local.domain)),
        );
        let ip = workload
            .address
            .map_or_else(|| "0.0.0.0".to_owned(), |a| a.ip().to_string());
        // Istio's proxy node id: `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
        self.node_id = Some(format!(
            "sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local",
            workload.name,
            ns = workload.namespace
        ));
        self.canonical_service = Some(service);
        self.canonical_revision = Some(labels.canonical_revision.to_string());
        self.namespace = Some(workload.namespace.clone());
        self
    }

    /// The percentage of new traces to sample, 0 to 100 (default 1, Istio's). Values outside
    /// are clamped; NaN keeps the default. A decision in the incoming headers wins.
    pub fn sampling(mut self, percent: f64) -> Self {
        if !percent.is_nan() {
            self.sampling = percent.clamp(0.0, 100.0);
        }
        self
    }

    /// Exports by OTLP to `endpoint`: `http://host:4317` speaks gRPC,
    /// `http://host:4318/v1/traces` (a path ending in `/v1/traces`, or port 4318) speaks
    /// HTTP/protobuf ([`OtlpProtocol::of`]). Spans are batched and exported from a task on
    /// the tokio runtime.
    pub fn otlp(mut self, endpoint: impl Into<String>) -> Self {
        self.exporter = Some(ExporterChoice::Otlp {
            endpoint: endpoint.into(),
            protocol: None,
        });
        self
    }

    /// Exports by OTLP to `endpoint` with the given protocol (for HTTP, the full URL with
    /// `/v1/traces`).
    pub fn otlp_with(mut self, endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        self.exporter = Some(ExporterChoice::Otlp {
            endpoint: endpoint.into(),
            protocol: Some(protocol),
        });
        self
    }

    /// How long one OTLP export may take (default 10 s).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// Exports through `exporter`, batched from a task on the tokio runtime.
    pub fn exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(ExporterChoice::Custom(Box::new(move || {
            Box::new(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
        })));
        self
    }

    /// Exports through `exporter` as each span ends, on the thread that ends it (no batching;
    /// for tests and debugging, e.g. with an `InMemorySpanExporter`).
    pub fn simple_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(ExporterChoice::Custom(Box::new(move || {
            Box::new(SimpleSpanProcessor::new(exporter))
        })));
        self
    }

    /// The `service.name` resource attribute (default `<canonical service>.<namespace>`, as
    /// Istio names a workload's spans, e.g. `productpage.default`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// `istio.canonical_service` on every span.
    pub fn canonical_service(mut self, service: impl Into<String>) -> Self {
        self.canonical_service = Some(service.into());
        self
    }

    /// `istio.canonical_revision` on every span.
    pub fn canonical_revision(mut self, revision: impl Into<String>) -> Self {
        self.canonical_revision = Some(revision.into());
        self
    }

    /// `istio.namespace` on every span.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// `istio.mesh_id` on every span (Istio's default is the trust domain, `cluster.local`).
    pub fn mesh_id(mut self, mesh_id: impl Into<String>) -> Self {
        self.mesh_id = Some(mesh_id.into());
        self
    }

    /// `istio.cluster_id` on every span (Istio's default `Kubernetes`).
    pub fn cluster_id(mut self, cluster_id: impl Into<String>) -> Self {
        self.cluster_id = Some(cluster_id.into());
        self
    }

    /// `node_id` on every span (Envoy's node id).
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// The host inbound span names start with (`productpage.default.svc.cluster.local`);
    /// without it, the request's `Host`.
    pub fn service_host(mut self, host: impl Into<String>) -> Self {
        self.service_host = Some(host.into());
        self
    }

    /// Adds a resource attribute (`k8s.pod.name`, `deployment.environment`, ...).
    pub fn resource_attribute(mut self, kv: KeyValue) -> Self {
        self.resource.push(kv);
        self
    }

    /// Builds the tracing. With an exporter this must run inside a tokio runtime (the batch
    /// processor's task and the OTLP client's connection live there).
    ///
    /// # Errors
    /// The OTLP endpoint is not a URL, the exporter cannot be built, or an exporter is set
    /// outside a tokio runtime.
    pub fn build(self) -> Result<Tracing, TracingError> {
        let mut attributes = vec![KeyValue::new("component", "proxy")];
        let mut push = |key: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                // Shared: every span clones these, and an `Arc<str>` clone allocates nothing.
                attributes.push(KeyValue::new(key, Arc::<str>::from(v.as_str())));
            }
        };
        push("node_id", &self.node_id);
        push("istio.canonical_service", &self.canonical_service);
        push("istio.canonical_revision", &self.canonical_revision);
        push("istio.namespace", &self.namespace);
        push("istio.mesh_id", &self.mesh_id);
        push("istio.cluster_id", &self.cluster_id);

        let Some(exporter) = self.exporter else {
            return Ok(Tracing {
                inner: Arc::new(Inner {
                    sampling: self.sampling,
                    provider: None,
                    processor: None,
                    attributes,
                    service_host: self.service_host.map(Arc::from),
                }),
            });
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TracingError::NoRuntime);
        }
        let install: Install = match exporter {
            ExporterChoice::Custom(install) => install,
            ExporterChoice::Otlp { endpoint, protocol } => {
                let exporter = otlp_exporter(&endpoint, protocol, self.export_timeout)?;
                Box::new(move || {
                    Box::new(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
                })
            }
        };
        let service_name =
            self.service_name
                .unwrap_or_else(|| match (&self.canonical_service, &self.namespace) {
                    (Some(s), Some(ns)) => format!("{s}.{ns}"),
                    (Some(s), None) => s.clone(),
                    _ => "unknown".to_owned(),
                });
        let resource = Resource::builder_empty()
            .with_service_name(service_name)
            .with_attributes(self.resource)
            .build();
        let mut processor = install();
        processor.set_resource(&resource);
        let processor: Arc<dyn SpanProcessor> = Arc::from(processor);
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .with_span_processor(SharedProcessor(processor.clone()))
            .build();
        Ok(Tracing {
            inner: Arc::new(Inner {
                sampling: self.sampling,
                provider: Some(provider),
                processor: Some(processor),
                attributes,
                service_host: self.service_host.map(Arc::from),
            }),
        })
    }
}

fn otlp_exporter(
    endpoint: &str,
    protocol: Option<OtlpProtocol>,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, TracingError> {
    let uri: http::Uri = endpoint.parse().map_err(|e| TracingError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: format!("not a URL: {e}"),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(TracingError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: "expected http://host:port or https://host:port".to_owned(),
        });
    }
    let protocol = protocol.unwrap_or_else(|| OtlpProtocol::of(endpoint));
    let built = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => {
            // A bare `http://host:4318` gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT
            // does.
            let url = if uri.path().ends_with("/v1/traces") {
                endpoint.to_owned()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(timeout)
                .build()
        }
    };
    built.map_err(|source| TracingError::Exporter {
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// Building or flushing a [`Tracing`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TracingError {
    /// The OTLP endpoint is not usable.
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter for {endpoint:?}: {source}")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// An exporter was configured outside a tokio runtime.
    #[error("tracing with an exporter must be built inside a tokio runtime")]
    NoRuntime,
    /// Flushing or shutting down failed.
    #[error("span export: {0}")]
    Export(#[from] OTelSdkError),
    /// The blocking task that flushes failed.
    #[error("span export task: {0}")]
    Task(String),
}
