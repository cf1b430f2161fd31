//! The [`Mesh`] handle: one per workload process, what a sidecar and its agent are under
//! Istio.
//!
//! A `Mesh` is built from a [`Store`] and the workload's identity ([`Workload`]: name,
//! namespace, labels, service account, listen address). Starting it loads and watches the
//! configuration (a [`ConfigWatcher`] keeps an immutable [`Snapshot`] up to date) and
//! registers the workload's own WorkloadEntry, so other workloads find it. From it the
//! application gets:
//!
//! - [`Mesh::http_client`]: a cloneable tower service that sends `http://reviews:9080/…`
//!   through the outbound stack (routing, faults, timeouts, retries, load balancing);
//! - [`Mesh::serve`]: serves the application's tower service on a listener (HTTP/1.1 and
//!   HTTP/2), deregisters first on shutdown so callers move away, then drains;
//! - [`Mesh::ready`]: resolves once the first configuration is loaded (and, with an
//!   identity, the first certificate), so the application never serves or calls before the
//!   mesh is ready (no start-up race, no `holdApplicationUntilProxyStarts`).
//!
//! # Mutual TLS
//!
//! With [`MeshBuilder::identity`] (the workload's certificates, e.g. a certificate manager's
//! channel through [`tls::watch_credentials`]) the mesh speaks mutual TLS as Istio's
//! sidecars do:
//!
//! - **Inbound** ([`Mesh::serve`]): every connection is accepted with the PeerAuthentication
//!   mode for this workload and the listener's port, computed from the current snapshot when
//!   the connection arrives (mesh → namespace → workload, `portLevelMtls`; `UNSET` is
//!   PERMISSIVE). The caller's verified [`PeerIdentity`](crate::tls::PeerIdentity) is in each
//!   request's extensions, where AuthorizationPolicy reads `principals` and `namespaces`.
//! - **Registration**: the WorkloadEntry carries the label
//!   `security.istio.io/tlsMode: istio` ([`tls::policy::TLS_MODE_LABEL`]), as Istio's
//!   injector labels sidecar pods; auto-mTLS keys on it.
//! - **Outbound** ([`Mesh::http_client`]): each new connection asks
//!   [`tls::policy::upstream_tls`] (DestinationRule `tls`, else auto-mTLS: mutual TLS to
//!   endpoints carrying the label, plaintext elsewhere) and checks the server's identity
//!   against the service accounts registered for that endpoint (secure naming). A failed
//!   handshake is a `503 UF` connect failure, retried on another endpoint.
//!
//! Without an identity nothing changes: plaintext both ways, no detection, no label.
//!
//! # Examples
//! ```no_run
//! # async fn run() -> Result<(), mesh_core::BoxError> {
//! use mesh_tower::mesh::{Mesh, Workload};
//! use tower::ServiceExt;
//! let store = mesh_core::store::open("file:/tmp/mesh")?;
//! let mesh = Mesh::builder(store, Workload::new("productpage-v1", "default").label("app", "productpage"))
//!     .start()
//!     .await?;
//! mesh.ready().await;
//! let req = http::Request::get("http://reviews:9080/reviews/0").body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let res = mesh.http_client().oneshot(req).await?;
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use mesh_core::{
    BoxError,
    config::{
        Kind, ObjectMeta, Resource, ResourceKey, Spec, networking::workload_entry::WorkloadEntry,
    },
    snapshot::{MeshSettings, Snapshot},
    store::{ConfigStatus, ConfigWatcher, Store, StoreError},
    validate::{Finding, Findings, Severity, codes},
};
use tokio::net::TcpListener;
use tower::Service;

use crate::{
    body::{self, Body},
    connect::Connect,
    route::Caller,
    server::{self, InboundTls, InboundTlsStats, ServeSummary, ShutdownOptions},
    stack::{self, StackParts},
    telemetry::{
        access_log::{AccessLogConfig, AccessLogSink},
        layer::{LocalWorkload, Telemetry, TelemetryLayer},
        metrics::{IstioMetrics, MeshCounters},
        trace::{RecordTarget, Trace, TraceLayer, Tracing},
    },
    tls::{self, IdentityWatch, TlsAcceptor},
};

/// The workload a [`Mesh`] runs for: its identity and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload instance's name (its WorkloadEntry's name), e.g. `reviews-v2`.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (`app`, `version`, …): subsets select on them, and a label `app: X` makes it
    /// an endpoint of `X.<namespace>.svc.cluster.local`.
    pub labels: BTreeMap<String, String>,
    /// Its service account (identity).
    pub service_account: String,
    /// The address to register (`127.0.0.1:9080`). `None` for a client-only workload; set
    /// from the listener by [`Mesh::serve`] when unset.
    pub address: Option<SocketAddr>,
}

impl Workload {
    /// A workload `name` in `namespace`, service account `default`, no labels.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            service_account: "default".to_owned(),
            address: None,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the service account.
    #[must_use]
    pub fn service_account(mut self, sa: impl Into<String>) -> Self {
        self.service_account = sa.into();
        self
    }

    /// Sets the address to register.
    #[must_use]
    pub fn address(mut self, addr: SocketAddr) -> Self {
        self.address = Some(addr);
        self
    }

    /// The key of this workload's WorkloadEntry.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(Kind::WorkloadEntry, &self.namespace, &self.name)
    }

    /// The WorkloadEntry that registers this workload at `addr`.
    pub fn entry(&self, addr: SocketAddr) -> Resource {
        let spec = WorkloadEntry {
            address: addr.ip().to_string(),
            ports: [("http".to_owned(), u32::from(addr.port()))].into(),
            labels: self.labels.clone(),
            service_account: self.service_account.clone(),
            ..WorkloadEntry::default()
        };
        let metadata = ObjectMeta {
            name: self.name.clone(),
            namespace: Some(self.namespace.clone()),
            labels: [("mesh.io/registered".to_owned(), "true".to_owned())].into(),
            ..ObjectMeta::default()
        };
        Resource::new(metadata, Spec::WorkloadEntry(Box::new(spec)))
    }
}

/// Starting or running the mesh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The store failed.
    #[error("config store: {0}")]
    Store(#[from] StoreError),
    /// The TLS configuration could not be built.
    #[error("mutual TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The access log file could not be opened.
    #[error("access log: {0}")]
    AccessLog(#[source] std::io::Error),
}

/// Builds a [`Mesh`].
#[derive(Debug)]
#[must_use]
pub struct MeshBuilder {
    store: Arc<dyn Store>,
    workload: Workload,
    settings: MeshSettings,
    gateway: bool,
    drain_delay: Duration,
    shutdown: ShutdownOptions,
    connect_timeout: Duration,
    identity: Option<IdentityWatch>,
    access_log: Option<AccessLogConfig>,
    /// False: no request metrics ([`MeshBuilder::metrics`]).
    metrics: bool,
    tracing: Tracing,
}

impl MeshBuilder {
    /// Distributed tracing: sampling and where spans go (see
    /// [`Tracing::builder`](crate::telemetry::trace::Tracing::builder)). Without it the mesh
    /// builds no spans and starts no trace of its own, but still continues a trace its caller
    /// started (W3C or B3) through the request path, so the application's outbound calls stay
    /// in that trace; every inbound request gets an `x-request-id`.
    pub fn tracing(mut self, tracing: Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// Writes an access log line per request, on both sides, in Istio's text format or its
    /// JSON form, to standard output or a file (off by default, as in Istio's default
    /// profile). Lines are written by a background task; when it falls behind, lines are
    /// dropped and counted (`mesh_access_log_dropped_total`) rather than making requests
    /// wait.
    pub fn access_log(mut self, config: AccessLogConfig) -> Self {
        self.access_log = Some(config);
        self
    }

    /// Whether this workload reports Istio's request metrics (`istio_requests_total` and the
    /// rest, on both sides; default `true`). `false` is Istio's Telemetry API with
    /// `metrics: [{overrides: [{disabled: true}]}]` for the workload: its requests are not
    /// counted (the access log and tracing are unaffected), and the callers it sends to
    /// still learn who calls (the `baggage` header), so their own metrics keep their source
    /// labels.
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled;
        self
    }

    /// The workload's TLS credentials: with them the mesh speaks mutual TLS (see the
    /// [module docs](self#mutual-tls)); without them it stays plaintext. The value current at
    /// each handshake is used, so a rotated certificate applies to new connections;
    /// [`Mesh::ready`] waits for the first one.
    pub fn identity(mut self, identity: IdentityWatch) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Mesh-wide settings (domain, root namespace, trust domain).
    pub fn settings(mut self, settings: MeshSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Makes this workload a gateway: its client routes with the rules of the Gateways
    /// whose selector matches its labels instead of the `mesh` rules.
    pub fn gateway(mut self, gateway: bool) -> Self {
        self.gateway = gateway;
        self
    }

    /// How long [`Mesh::serve`] keeps accepting after deregistering, so callers see the
    /// workload leave before it stops (default 1 s; the file store's watch reacts within
    /// ~150 ms).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// How long requests in flight may take to finish on shutdown (default 5 s, Istio's
    /// `terminationDrainDuration`).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown.deadline = deadline;
        self
    }

    /// The upstream connect timeout (default 10 s, Istio's `connectTimeout`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Starts the mesh: loads and watches the configuration, and registers the workload if
    /// it has an address.
    ///
    /// # Errors
    /// The store cannot be read or watched, or the registration is refused.
    pub async fn start(self) -> Result<Mesh, MeshError> {
        let settings = self.settings.clone();
        let watcher = ConfigWatcher::start(self.store.clone(), move |rs: &[Resource]| {
            Snapshot::build_with(rs, settings.clone()).map_err(|e| {
                let mut f = Finding::new(
                    codes::SCHEMA_VALIDATION_ERROR,
                    Severity::Error,
                    e.message.clone(),
                );
                f.resource = Some(e.resource);
                Findings(vec![f])
            })
        })
        .await?;
        let caller = Caller::new(self.workload.namespace.clone())
            .labels(self.workload.labels.clone())
            .gateway(self.gateway);
        let snapshots = watcher.handle();
        let connect = Connect::builder()
            .connect_timeout(self.connect_timeout)
            .mutual_tls(
                match &self.identity {
                    Some(identity) => identity.clone(),
                    None => tokio::sync::watch::channel(None).1,
                },
                // Without an identity there is no mutual TLS (the mesh runs plaintext), but
                // TLS origination (DestinationRule SIMPLE/MUTUAL) still applies.
                match self.identity {
                    Some(_) => Box::new(move |authority: &http::uri::Authority| {
                        tls::policy::upstream_tls(&snapshots.load(), authority)
                    })
                        as Box<dyn Fn(&http::uri::Authority) -> tls::UpstreamTls + Send + Sync>,
                    None => Box::new(move |authority: &http::uri::Authority| {
                        match tls::policy::upstream_tls(&snapshots.load(), authority) {
                            tls::UpstreamTls::Mutual(_) => tls::UpstreamTls::Plaintext,
                            other => other,
                        }
                    }),
                },
            );
        let parts = StackParts::with_connect(connect.build());
        // Telemetry: one metrics registry per mesh; the two layers are built once so their
        // label caches are shared by every client and listener of this mesh.
        let access_log = match &self.access_log {
            Some(config) => AccessLogSink::spawn(config).map_err(MeshError::AccessLog)?,
            None => AccessLogSink::off(),
        };
        let metrics = IstioMetrics::new();
        let local = LocalWorkload::from_workload(&self.workload)
            .trust_domain(self.settings.trust_domain.clone())
            .domain(self.settings.domain.clone());
        let outbound_telemetry = TelemetryLayer::outbound(&metrics, local.clone())
            .access_log(access_log.clone())
            .metrics(self.metrics);
        let inbound_telemetry = TelemetryLayer::inbound(&metrics, local)
            .access_log(access_log.clone())
            .metrics(self.metrics);
        // Endpoints that left the registry leave their load counters behind; drop the idle
        // ones on each new snapshot. The task ends with the watcher (its channel closes).
        let stats = parts.endpoint_stats.clone();
        let mut changes = watcher.changed();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                stats.prune_idle();
            }
        });
        let mesh = Mesh {
            inner: Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
                let weak = weak.clone();
                let mut counters = MeshCounters::new()
                    .retries(&metrics, parts.retry_stats.clone())
                    .breakers(&metrics, parts.breakers.clone())
                    .outlier(&metrics, parts.endpoint_stats.clone())
                    .config(&metrics, move || {
                        weak.upgrade()
                            .map(|inner| inner.watcher.status())
                            .unwrap_or_default()
                    })
                    .access_log(&metrics, access_log.clone());
                if let Some(identity) = &self.identity {
                    counters = counters.certificate(&metrics, identity.clone());
                }
                Inner {
                    store: self.store,
                    workload: tokio::sync::Mutex::new(self.workload.clone()),
                    name: self.workload.key(),
                    watcher,
                    caller,
                    parts,
                    drain_delay: self.drain_delay,
                    shutdown: self.shutdown,
                    identity: self.identity,
                    tls_stats: Arc::default(),
                    metrics,
                    counters,
                    outbound_telemetry,
                    inbound_telemetry,
                    tracing: self.tracing,
                }
            }),
        };
        if let Some(addr) = self.workload.address {
            mesh.register(addr).await?;
        }
        Ok(mesh)
    }
}

/// A workload's handle on the mesh; see the [module docs](self). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    workload: tokio::sync::Mutex<Workload>,
    name: ResourceKey,
    watcher: ConfigWatcher<Snapshot>,
    caller: Caller,
    parts: StackParts,
    drain_delay: Duration,
    shutdown: ShutdownOptions,
    identity: Option<IdentityWatch>,
    tls_stats: Arc<InboundTlsStats>,
    metrics: IstioMetrics,
    /// Reports the mesh's own counters at scrape time while it lives.
    #[allow(dead_code)]
    counters: MeshCounters,
    outbound_telemetry: TelemetryLayer,
    inbound_telemetry: TelemetryLayer,
    tracing: Tracing,
}

impl Mesh {
    /// A builder for the mesh of `workload`, configured from `store`.
    pub fn builder(store: Arc<dyn Store>, workload: Workload) -> MeshBuilder {
        MeshBuilder {
            store,
            workload,
            settings: MeshSettings::default(),
            gateway: false,
            drain_delay: Duration::from_secs(1),
            shutdown: ShutdownOptions::default(),
            connect_timeout: Duration::from_secs(10),
            identity: None,
            access_log: None,
            metrics: true,
            tracing: Tracing::disabled(),
        }
    }

    /// Resolves once the first good configuration is loaded and, with an identity, the first
    /// certificate has arrived (until then mutual TLS fails closed). If the identity source
    /// closes without ever publishing one, resolves anyway.
    pub async fn ready(&self) {
        self.inner.watcher.ready().await;
        if let Some(identity) = &self.inner.identity {
            let mut identity = identity.clone();
            if identity.wait_for(Option::is_some).await.is_err() {
                tracing::warn!(workload = %self.inner.name, "the identity source closed before a certificate arrived; mutual TLS fails closed");
            }
        }
    }

    /// True if the mesh speaks mutual TLS (built with [`MeshBuilder::identity`]).
    pub fn is_mutual_tls(&self) -> bool {
        self.inner.identity.is_some()
    }

    /// True if [`Mesh::serve`] accepts mutual TLS: a workload with an identity. A gateway's
    /// listeners are its public ports: as in Istio, PeerAuthentication does not apply to them
    /// (a Gateway resource's `tls` would; TLS termination at the gateway is not implemented),
    /// so a gateway serves plaintext and uses its identity only for the calls it makes.
    pub fn serves_mutual_tls(&self) -> bool {
        self.inner.identity.is_some() && !self.inner.caller.gateway
    }

    /// The inbound TLS counters of [`Mesh::serve`] (connections over mutual TLS, plaintext,
    /// refused), shared by every serve call of this mesh; all zero without an identity.
    pub fn inbound_tls_stats(&self) -> &Arc<InboundTlsStats> {
        &self.inner.tls_stats
    }

    /// The live snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.watcher.current()
    }

    /// The configuration status (generation, last error…), for an admin endpoint.
    pub fn status(&self) -> ConfigStatus {
        self.inner.watcher.status()
    }

    /// A receiver that changes whenever a new snapshot goes live.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watcher.changed()
    }

    /// The store the mesh reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The key of this workload's WorkloadEntry.
    pub fn workload_key(&self) -> &ResourceKey {
        &self.inner.name
    }

    /// The workload's admin endpoint (`/ready`, `/config_dump`, `/clusters`, `/certs`,
    /// `/metrics`) as a tower service; serve it with [`admin::serve`](crate::admin::serve)
    /// on a loopback port.
    pub fn admin(&self) -> crate::admin::Admin {
        let metrics = self.inner.metrics.clone();
        crate::admin::Admin::new(
            self.clone(),
            Some(Arc::new(move |out: &mut String| metrics.encode_into(out))),
        )
    }

    /// The workload's metrics: Istio's standard request metrics, reported by its client
    /// (`reporter="source"`) and its listeners (`reporter="destination"`), and the mesh's own
    /// counters; [`IstioMetrics::encode`] gives the Prometheus text `/metrics` serves.
    pub fn metrics(&self) -> &IstioMetrics {
        &self.inner.metrics
    }

    /// The mesh's tracing: call [`Tracing::shutdown`] (or `force_flush`) before the process
    /// exits so the last spans are exported.
    pub fn tracing(&self) -> &Tracing {
        &self.inner.tracing
    }

    /// The balancer's per-endpoint state (requests in flight, ejections), shared by every
    /// client of this mesh.
    pub fn endpoint_stats(&self) -> &crate::balance::EndpointStats {
        &self.inner.parts.endpoint_stats
    }

    /// The workload's current certificate, if it has one.
    pub fn identity(&self) -> Option<Arc<tls::TlsIdentity>> {
        self.inner
            .identity
            .as_ref()
            .and_then(|id| id.borrow().clone())
    }

    /// The outbound client: send any `http::Request` for a mesh host through the mesh.
    ///
    /// Cloning is cheap; clones share connection pools, retry budgets and load balancing
    /// state.
    pub fn http_client(&self) -> HttpClient {
        HttpClient {
            inner: tower::ServiceBuilder::new()
                .layer(self.inner.outbound_telemetry.clone())
                .layer(TraceLayer::outbound(self.inner.tracing.clone()))
                .service(stack::outbound_stack(
                    self.inner.watcher.handle(),
                    self.inner.caller.clone(),
                    &self.inner.parts,
                    RecordTarget::new(self.inner.parts.connect.clone()),
                )),
        }
    }

    /// Registers (or moves) this workload's WorkloadEntry at `addr`.
    ///
    /// # Errors
    /// The store refuses or fails.
    pub async fn register(&self, addr: SocketAddr) -> Result<(), MeshError> {
        let mut workload = self.inner.workload.lock().await;
        workload.address = Some(addr);
        let mut entry = workload.entry(addr);
        if self.serves_mutual_tls()
            && let Spec::WorkloadEntry(we) = &mut entry.spec
        {
            // Auto-mTLS: callers send mutual TLS to endpoints carrying this label.
            we.labels.insert(
                tls::policy::TLS_MODE_LABEL.to_owned(),
                tls::policy::TLS_MODE_ISTIO.to_owned(),
            );
        }
        self.inner.store.register(entry).await?;
        tracing::info!(workload = %self.inner.name, %addr, "registered");
        Ok(())
    }

    /// Removes this workload's WorkloadEntry; `Ok(false)` if it was not registered.
    ///
    /// # Errors
    /// The store fails.
    pub async fn deregister(&self) -> Result<bool, MeshError> {
        let removed = self.inner.store.deregister(&self.inner.name).await?;
        if removed {
            tracing::info!(workload = %self.inner.name, "deregistered");
        }
        Ok(removed)
    }

    /// Serves `app` on `listener` through the inbound stack until `shutdown` completes.
    ///
    /// Registers the workload at the listener's address unless it has an address already.
    /// On shutdown: deregisters, keeps serving for the drain delay so callers move away,
    /// stops accepting, closes connections gracefully (HTTP/2 GOAWAY, `Connection: close`)
    /// and waits for requests in flight up to the deadline.
    ///
    /// # Errors
    /// Registration fails, or the listener fails.
    pub async fn serve<S, B>(
        &self,
        listener: TcpListener,
        app: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ServeSummary, BoxError>
    where
        S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let local = listener.local_addr()?;
        let (registered, namespace, labels) = {
            let w = self.inner.workload.lock().await;
            (w.address, w.namespace.clone(), w.labels.clone())
        };
        let tls = match &self.inner.identity {
            Some(identity) if self.serves_mutual_tls() => {
                self.check_identity(identity);
                let acceptor = TlsAcceptor::new(identity.clone())?;
                let snapshots = self.inner.watcher.handle();
                let (namespace, labels, port) = (namespace.clone(), labels.clone(), local.port());
                let mode =
                    move || tls::policy::inbound_mode(&snapshots.load(), &namespace, &labels, port);
                Some(InboundTls::new(acceptor, mode).with_stats(self.inner.tls_stats.clone()))
            }
            _ => None,
        };
        self.register(registered.unwrap_or(local)).await?;
        // The inbound stack: AuthorizationPolicy in front of the application.
        let source: Arc<dyn crate::route::SnapshotSource> = self.inner.watcher.handle();
        let app = tower::ServiceBuilder::new()
            .layer(self.inner.inbound_telemetry.clone())
            .layer(TraceLayer::inbound(self.inner.tracing.clone()).port(local.port()))
            .layer(crate::authz::AuthorizationLayer::new(
                source,
                namespace,
                labels,
                local.port(),
            ))
            .map_response(box_response::<B> as fn(_) -> _)
            .map_err(into_box_error::<S::Error> as fn(_) -> _)
            .service(app);
        let this = self.clone();
        let stop = async move {
            shutdown.await;
            if let Err(e) = this.deregister().await {
                tracing::warn!(error = %e, "could not deregister; callers will find out by failing");
            }
            tokio::time::sleep(this.inner.drain_delay).await;
        };
        Ok(match tls {
            None => server::serve(listener, app, stop, self.inner.shutdown).await?,
            Some(tls) => server::serve_tls(listener, app, stop, self.inner.shutdown, tls).await?,
        })
    }

    /// Warns when the certificate's identity is not the one the workload registers: callers
    /// will refuse it (secure naming).
    fn check_identity(&self, identity: &IdentityWatch) {
        let Some(current) = identity.borrow().clone() else {
            return;
        };
        let Ok(workload) = self.inner.workload.try_lock() else {
            return;
        };
        let id = current.identity();
        if id.namespace() != workload.namespace || id.service_account() != workload.service_account
        {
            tracing::warn!(
                workload = %self.inner.name,
                certificate = %id,
                registered_namespace = %workload.namespace,
                registered_service_account = %workload.service_account,
                "the workload certificate names another identity than the one registered; callers will refuse it (secure naming)"
            );
        }
    }
}

fn into_box_error<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

fn box_response<B>(res: http::Response<B>) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(crate::body::boxed)
}

/// The outbound client of a [`Mesh`]: a cloneable tower service for any request body.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client,
}

/// The whole outbound stack of a mesh's client.
type Client = Telemetry<Trace<stack::Outbound<RecordTarget<Connect>>>>;

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl<B> Service<http::Request<B>> for HttpClient
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<crate::telemetry::layer::ResponseBody<Body>>;
    type Error = BoxError;
    type Future = <Client as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.inner.call(req.map(body::boxed))
    }
}
