//! [`TraceLayer`]: the inbound and outbound span layers, and their future and body.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    KeyValue, Value,
    trace::{SpanKind, Status},
};
use opentelemetry_sdk::trace::SpanData;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{CURRENT, RequestTrace, Scoped, Tracing, current};
use crate::{
    BoxError,
    body::Body,
    flags::ResponseFlags,
    mirror::Mirrored,
    server::PeerAddr,
    target::{PickedEndpoint, Target},
    telemetry::propagation::{
        B3, TRACEPARENT, TraceContext, TraceHeaders, X_B3_TRACEID, ensure_request_id, propagate,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

// === TraceLayer ===

/// Starts a span per request and propagates the trace; see the [module docs](super).
///
/// Both forms take and return `http::Request<Body>` / `http::Response<Body>` (the mesh's
/// [`Body`]); a sampled response's body is wrapped to end the span when it ends.
#[derive(Clone, Debug)]
#[must_use]
pub struct TraceLayer {
    tracing: Tracing,
    direction: Direction,
    port: Option<u16>,
}

impl TraceLayer {
    /// The server side: wraps the application (below the server, above authorization, so
    /// denied requests are traced too).
    pub fn inbound(tracing: Tracing) -> Self {
        Self {
            tracing,
            direction: Direction::Inbound,
            port: None,
        }
    }

    /// The client side: wraps the whole outbound stack (above the rescue layer, so local
    /// replies are traced, and above retries, so one span covers every try).
    pub fn outbound(tracing: Tracing) -> Self {
        Self {
            tracing,
            direction: Direction::Outbound,
            port: None,
        }
    }

    /// The listener's port (inbound): in the span name and `upstream_cluster`
    /// (`inbound|9080||`). Without it, the port of the request's `Host`, else 80.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            tracing: self.tracing.clone(),
            direction: self.direction,
            port: self.port,
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
    tracing: Tracing,
    direction: Direction,
    port: Option<u16>,
}

impl<S> Trace<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for Trace<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.direction {
            Direction::Inbound => self.call_inbound(req),
            Direction::Outbound => self.call_outbound(req),
        }
    }
}

impl<S> Trace<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    fn call_inbound(&mut self, mut req: Request<Body>) -> ResponseFuture<S::Future> {
        if !self.tracing.is_exporting() && !has_trace_context(req.headers()) {
            // Nothing to record and no trace to continue: only Envoy's request id. Starting
            // a trace here would cost every untraced request new ids, five injected headers
            // and a task-local scope for nothing.
            ensure_request_id(req.headers_mut());
            return ResponseFuture {
                kind: Kind::Plain {
                    fut: self.inner.call(req),
                },
                state: None,
            };
        }
        let found = TraceHeaders::of(req.headers());
        let parent = found.extract();
        if !self.tracing.is_exporting() {
            // Not a tracer: no span of ours will be recorded, so the caller's context goes
            // on as it came (as through an Envoy without a tracer), and calls the
            // application makes through the mesh are children of the caller's span, not of
            // one no backend will ever see.
            let Some(context) = parent else {
                // Trace headers, none valid: nothing to continue.
                ensure_request_id(req.headers_mut());
                return ResponseFuture {
                    kind: Kind::Plain {
                        fut: self.inner.call(req),
                    },
                    state: None,
                };
            };
            let request_id = match found.request_id() {
                Some(id) if !id.is_empty() => id.clone(),
                _ => ensure_request_id(req.headers_mut()).clone(),
            };
            return self.call_scoped(
                req,
                RequestTrace {
                    context,
                    request_id: Some(request_id),
                },
                None,
            );
        }
        let mut ctx = match parent {
            Some(parent) => parent.child(),
            None => TraceContext::new_root(
                found
                    .bare_sampling_decision()
                    .unwrap_or_else(|| self.tracing.sample()),
            ),
        };
        let seen = (found.stale(), found.request_id().cloned());
        if ctx.sampled.is_none() && !ctx.debug {
            ctx.sampled = Some(self.tracing.sample());
        }
        // Towards the application the headers carry the server span, as Envoy writes them:
        // an application forwarding them by hand makes its calls children of this span.
        let request_id = propagate(&ctx, req.headers_mut(), seen, None);

        let port = self
            .port
            .or_else(|| host_port(&req))
            .unwrap_or(default_port(&req));
        let span = self.tracing.start(
            &ctx,
            SpanKind::Server,
            || {
                let host = match self.tracing.service_host() {
                    Some(host) => host,
                    None => host_name(&req).unwrap_or("unknown"),
                };
                span_name(host, port).into()
            },
            |attrs| {
                request_attributes(&req, &request_id, attrs);
                attrs.push(KeyValue::new("downstream_cluster", "-"));
                if let Some(peer) = req.extensions().get::<PeerAddr>() {
                    attrs.push(KeyValue::new("peer.address", ip_text(peer.0.ip())));
                }
            },
        );
        let state = span.map(|span| {
            let request_bytes = count_request_body(&mut req);
            Box::new(SpanState {
                span,
                tracing: self.tracing.clone(),
                request_bytes,
                response_bytes: 0,
                place: Place::Inbound { port },
            })
        });

        let trace = RequestTrace {
            context: ctx,
            request_id: Some(request_id),
        };
        self.call_scoped(req, trace, state)
    }

    /// Calls the application with `trace` in the request's extensions and as the
    /// task-local [`current`] trace.
    fn call_scoped(
        &mut self,
        mut req: Request<Body>,
        trace: RequestTrace,
        state: Option<Box<SpanState>>,
    ) -> ResponseFuture<S::Future> {
        req.extensions_mut().insert(trace.clone());
        let trace = Arc::new(trace);
        let inner = &mut self.inner;
        let fut = CURRENT.sync_scope(Some(trace.clone()), || inner.call(req));
        ResponseFuture {
            kind: Kind::Scoped {
                fut: CURRENT.scope(Some(trace), fut),
            },
            state,
        }
    }

    fn call_outbound(&mut self, mut req: Request<Body>) -> ResponseFuture<S::Future> {
        let ext = req.extensions();
        let parent = ext
            .get::<RequestTrace>()
            .cloned()
            .or_else(|| {
                ext.get::<TraceContext>().map(|c| RequestTrace {
                    context: c.clone(),
                    request_id: None,
                })
            })
            .or_else(current);
        let exporting = self.tracing.is_exporting();
        if parent.is_none() && !exporting {
            // No trace to record and none from the request being served: the request goes
            // as it is (with the trace headers the application forwarded, if any, as
            // through an Envoy without a tracer).
            return ResponseFuture {
                kind: Kind::Plain {
                    fut: self.inner.call(req),
                },
                state: None,
            };
        }
        let found = TraceHeaders::of(req.headers());
        if !exporting && let Some(parent) = parent {
            // Not a tracer: the served request's context goes on unchanged (see
            // `call_inbound`), with its request id.
            let seen = (found.stale(), found.request_id().cloned());
            propagate(&parent.context, req.headers_mut(), seen, parent.request_id);
            return ResponseFuture {
                kind: Kind::Plain {
                    fut: self.inner.call(req),
                },
                state: None,
            };
        }
        let (mut ctx, request_id) = match parent {
            Some(parent) => (parent.context.child(), parent.request_id),
            // Headers the application forwarded by hand: continue that trace.
            None => match found.extract() {
                Some(parent) => (parent.child(), None),
                None => (
                    TraceContext::new_root(
                        found
                            .bare_sampling_decision()
                            .unwrap_or_else(|| self.tracing.sample()),
                    ),
                    None,
                ),
            },
        };
        let seen = (found.stale(), found.request_id().cloned());
        if ctx.sampled.is_none() && !ctx.debug {
            ctx.sampled = Some(self.tracing.sample());
        }
        // An id the application set wins; else the inbound request's; else a new one.
        let request_id = propagate(&ctx, req.headers_mut(), seen, request_id);

        // Named when it ends: after the route's decision (the usual name), or after the
        // request's authority when none arrives.
        let span = self.tracing.start(
            &ctx,
            SpanKind::Client,
            || "".into(),
            |attrs| request_attributes(&req, &request_id, attrs),
        );
        let state = span.map(|span| {
            let authority = (
                host_name(&req).unwrap_or("unknown").to_owned(),
                host_port(&req).unwrap_or_else(|| default_port(&req)),
            );
            let request_bytes = count_request_body(&mut req);
            let slot = TargetSlot::default();
            req.extensions_mut().insert(slot.clone());
            Box::new(SpanState {
                span,
                tracing: self.tracing.clone(),
                request_bytes,
                response_bytes: 0,
                place: Place::Outbound { slot, authority },
            })
        });
        ResponseFuture {
            kind: Kind::Plain {
                fut: self.inner.call(req),
            },
            state,
        }
    }
}

/// True if the request carries a trace context (W3C or B3) to continue: the untraced fast
/// path's check, lighter than the full [`TraceHeaders`] scan the traced path makes.
fn has_trace_context(headers: &HeaderMap) -> bool {
    // Most requests carry a few headers: one pass over their names costs less than three
    // hashed lookups.
    if headers.keys_len() <= 16 {
        headers
            .keys()
            .any(|k| matches!(k.as_str(), "traceparent" | "b3" | "x-b3-traceid"))
    } else {
        headers.contains_key(&TRACEPARENT)
            || headers.contains_key(&B3)
            || headers.contains_key(&X_B3_TRACEID)
    }
}

/// The host of the request: its URI's, else its `Host` header's.
fn host_name<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| {
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        Some(match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        })
    })
}

/// The port of the request: its URI's, else its `Host` header's.
fn host_port<B>(req: &Request<B>) -> Option<u16> {
    req.uri().port_u16().or_else(|| {
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        host.rsplit_once(':')?.1.parse().ok()
    })
}

fn default_port<B>(req: &Request<B>) -> u16 {
    if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    }
}

/// Envoy's request tags (`http.url`, `http.method`, `http.protocol`, `user_agent`,
/// `guid:x-request-id`).
fn request_attributes<B>(
    req: &Request<B>,
    request_id: &http::HeaderValue,
    attrs: &mut Vec<KeyValue>,
) {
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // Envoy truncates the URL tag at 256 characters.
    let mut url = [scheme, "://", authority, path].concat();
    if url.len() > 256 {
        let mut end = 256;
        while !url.is_char_boundary(end) {
            end -= 1;
        }
        url.truncate(end);
    }
    attrs.push(KeyValue::new("http.url", url));
    attrs.push(KeyValue::new("http.method", method_value(req.method())));
    attrs.push(KeyValue::new("http.protocol", protocol(req.version())));
    attrs.push(KeyValue::new(
        "user_agent",
        header_str(req.headers(), http::header::USER_AGENT),
    ));
    attrs.push(KeyValue::new("guid:x-request-id", lossy(request_id)));
}

fn header_str(headers: &HeaderMap, name: http::HeaderName) -> Value {
    headers
        .get(name)
        .map_or(Value::from("-"), |v| Value::from(lossy(v)))
}

/// A header value as text: one allocation of its length when it is UTF-8 (always, in
/// practice), bad bytes replaced otherwise.
fn lossy(value: &http::HeaderValue) -> String {
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

/// Istio's span name: `reviews.default.svc.cluster.local:9080/*`.
fn span_name(host: &str, port: u16) -> String {
    [host, ":", itoa::Buffer::new().format(port), "/*"].concat()
}

/// An address as Envoy's `peer.address` tag; IPv4 without the formatting machinery.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let mut text = [
                itoa::Buffer::new(),
                itoa::Buffer::new(),
                itoa::Buffer::new(),
                itoa::Buffer::new(),
            ];
            let [ta, tb, tc, td] = &mut text;
            [
                ta.format(a),
                ".",
                tb.format(b),
                ".",
                tc.format(c),
                ".",
                td.format(d),
            ]
            .concat()
        }
        std::net::IpAddr::V6(_) => ip.to_string(),
    }
}

/// The method as a span attribute value: the standard ones without allocating.
fn method_value(method: &http::Method) -> Value {
    use http::Method;
    let known: &'static str = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Value::from(method.as_str().to_owned()),
    };
    Value::from(known)
}

/// A status code as Envoy's `http.status_code` tag: the common ones without allocating.
fn status_value(status: http::StatusCode) -> Value {
    let known: &'static str = match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        code => return Value::from(code.to_string()),
    };
    Value::from(known)
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Replaces the request's body with one that counts its bytes.
fn count_request_body(req: &mut Request<Body>) -> Arc<AtomicU64> {
    let counter = Arc::new(AtomicU64::new(0));
    let body = std::mem::take(req.body_mut());
    *req.body_mut() = Body::new(CountingBody {
        inner: body,
        counter: counter.clone(),
    });
    counter
}

// === the span of one request ===

/// Where the outbound span learns the route's decision: [`RecordTarget`], at the leaf of
/// the outbound stack, fills it from the request's [`Target`].
#[derive(Clone, Debug, Default)]
struct TargetSlot(Arc<OnceLock<Target>>);

struct SpanState {
    /// The span as it will be exported: filled in as the request goes.
    span: SpanData,
    /// Where it goes when it ends.
    tracing: Tracing,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    place: Place,
}

/// Which side a span is on, with what its name and `upstream_cluster` come from.
enum Place {
    /// The listener's port: `inbound|9080||`.
    Inbound { port: u16 },
    /// The route's decision arrives in `slot`; without one, the request's authority
    /// (host and port) names the span.
    Outbound {
        slot: TargetSlot,
        authority: (String, u16),
    },
}

impl SpanState {
    /// Records what the response head says.
    fn response(&mut self, res: &Response<Body>) {
        let status = res.status();
        let attrs = &mut self.span.attributes;
        attrs.push(KeyValue::new("http.status_code", status_value(status)));
        let flags = ResponseFlags::of(res);
        attrs.push(KeyValue::new(
            "response_flags",
            if flags.is_empty() {
                Value::from("-")
            } else {
                Value::from(flags.to_string())
            },
        ));
        if matches!(self.place, Place::Outbound { .. })
            && let Some(picked) = res.extensions().get::<PickedEndpoint>()
        {
            attrs.push(KeyValue::new(
                "upstream_address",
                picked.authority.as_str().to_owned(),
            ));
        }
        if status.is_server_error() {
            attrs.push(KeyValue::new("error", "true"));
            self.span.status = Status::error(status.to_string());
        }
    }

    /// The request failed before a response.
    fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.span.attributes.push(KeyValue::new("error", "true"));
        self.span.status = Status::error(error.to_string());
    }

    fn end(self: Box<Self>) {
        let SpanState {
            mut span,
            tracing,
            request_bytes,
            response_bytes,
            place,
        } = *self;
        let cluster = match &place {
            Place::Inbound { port } => {
                ["inbound|", itoa::Buffer::new().format(*port), "||"].concat()
            }
            Place::Outbound { slot, authority } => {
                let (host, port, subset) = match slot.0.get() {
                    Some(target) => (&*target.host, target.port, target.subset.as_deref()),
                    None => (authority.0.as_str(), authority.1, None),
                };
                span.name = span_name(host, port).into();
                crate::target::cluster_name(port, subset, host)
            }
        };
        // One string for both tags.
        let cluster = Arc::<str>::from(cluster);
        let mut size = itoa::Buffer::new();
        let request_size = size
            .format(request_bytes.load(Ordering::Relaxed))
            .to_owned();
        let response_size = size.format(response_bytes).to_owned();
        span.attributes.extend([
            KeyValue::new("upstream_cluster.name", cluster.clone()),
            KeyValue::new("upstream_cluster", cluster),
            KeyValue::new("request_size", request_size),
            KeyValue::new("response_size", response_size),
        ]);
        tracing.end(span);
    }
}

/// Ends the span when dropped (a response body dropped before its end, a cancelled
/// request).
struct SpanGuard(Option<Box<SpanState>>);

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.end();
        }
    }
}

// === ResponseFuture ===

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Scoped { #[pin] fut: Scoped<F> },
        Plain { #[pin] fut: F },
    }
}

pin_project! {
    /// The future of [`Trace`]: the inner response, its body wrapped when the request is
    /// traced.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        state: Option<Box<SpanState>>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("traced", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.kind.project() {
            KindProj::Scoped { fut } => std::task::ready!(fut.poll(cx)),
            KindProj::Plain { fut } => std::task::ready!(fut.poll(cx)),
        };
        let Some(mut state) = this.state.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(res) => {
                state.response(&res);
                if res.body().is_end_stream() {
                    state.end();
                    Ok(res)
                } else {
                    Ok(res.map(|inner| {
                        Body::new(TracedBody {
                            inner,
                            guard: SpanGuard(Some(state)),
                        })
                    }))
                }
            }
            Err(e) => {
                state.failed(&e);
                state.end();
                Err(e)
            }
        })
    }
}

// === bodies ===

pin_project! {
    /// A traced response's body: counts its bytes and ends the span when it ends, fails or
    /// is dropped.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        guard: SpanGuard,
    }
}

impl<B> std::fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody").finish_non_exhaustive()
    }
}

impl<B> HttpBody for TracedBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(state) = this.guard.0.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        state.response_bytes += data.len() as u64;
                    }
                }
                Some(Err(e)) => {
                    state.failed(e);
                    if let Some(state) = this.guard.0.take() {
                        state.end();
                    }
                }
                None => {
                    if let Some(state) = this.guard.0.take() {
                        state.end();
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    struct CountingBody {
        #[pin]
        inner: Body,
        counter: Arc<AtomicU64>,
    }
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === RecordTarget ===

/// Places [`RecordTarget`] at the leaf of the outbound stack (over the connection pools),
/// where requests carry the route's [`Target`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordTargetLayer;

impl<S> Layer<S> for RecordTargetLayer {
    type Service = RecordTarget<S>;

    fn layer(&self, inner: S) -> RecordTarget<S> {
        RecordTarget { inner }
    }
}

/// Tells a traced request's client span which route it took (the destination host, port
/// and subset, for Istio's span name `reviews.default.svc.cluster.local:9080/*` and
/// `upstream_cluster` `outbound|9080|v1|reviews.default.svc.cluster.local`). Without it the
/// client span is named after the request's authority. Does nothing for untraced requests.
#[derive(Clone, Debug)]
pub struct RecordTarget<S> {
    inner: S,
}

impl<S> RecordTarget<S> {
    /// Wraps the leaf service (the connection pools).
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for RecordTarget<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        if let Some(slot) = ext.get::<TargetSlot>()
            && ext.get::<Mirrored>().is_none()
            && let Some(target) = ext.get::<Target>()
        {
            // The first try decides; retries go to the same route.
            let _ = slot.0.set(target.clone());
        }
        self.inner.call(req)
    }
}
