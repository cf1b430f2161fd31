//! The per-request telemetry layer: Istio's request metrics, reported by each side, and the
//! access log, from one pair of timestamps and one body wrapper.
//!
//! [`TelemetryLayer::outbound`] goes above the whole outbound stack (above `rescue`, so local
//! replies such as 503 `UH`/`UF`/`UO`, 404 `NR` and injected `FI` aborts are counted with
//! their flags) and reports `reporter="source"`. [`TelemetryLayer::inbound`] goes around the
//! application, outermost (so a 403 from authorization is counted), and reports
//! `reporter="destination"`.
//!
//! # Labels
//!
//! Every label of Istio's telemetry contract, `unknown` when a value is missing:
//!
//! - **source side** (`reporter="source"`): `source_*` from the workload itself
//!   ([`LocalWorkload`]); `source_principal` is its SPIFFE id when the connection to the
//!   endpoint was mutual TLS (the response carries the server's
//!   [`PeerIdentity`]), else `unknown`. `destination_*` from the
//!   endpoint the balancer picked ([`PickedEndpoint`]: its WorkloadEntry's name, namespace,
//!   labels, service account) and the destination host the route layer chose (FQDN, name and
//!   namespace from `<name>.<ns>.svc.<domain>`). `connection_security_policy="unknown"`, as
//!   Istio reports on the source side.
//! - **destination side** (`reporter="destination"`): `destination_*` from the workload
//!   itself and the service it backs (`<app>.<ns>.svc.<domain>`);
//!   `connection_security_policy` is `mutual_tls` when the request came over mutual TLS (a
//!   `PeerIdentity` is in its extensions), else `none`; `source_principal` and
//!   `source_workload_namespace` from that verified identity; the other `source_*` labels
//!   from the metadata exchange below.
//! - both: `response_code`, `response_flags` (the [`ResponseFlags`] in the response's
//!   extensions, `-` when none; `DC` is added when the response body is dropped before its
//!   end), `request_protocol` (`grpc` for `application/grpc*` requests, else `http`) and, for
//!   gRPC only, `grpc_response_status` (from `grpc-status` in the headers or the trailers,
//!   else mapped from the HTTP status as Envoy does, else `unknown`). For plain HTTP
//!   requests `grpc_response_status` is left out, which Prometheus treats as Istio's empty
//!   value. gRPC requests also count their messages each way
//!   (`istio_request_messages_total`, `istio_response_messages_total`), read from the
//!   length-prefixed framing of the bodies.
//!
//! # Metadata exchange
//!
//! A server only knows who called it from the connection (the verified SPIFFE id, under
//! mutual TLS); Istio's sidecars exchange the rest in `x-envoy-peer-metadata`, its ambient
//! mode in a W3C `baggage` header. The outbound layer adds one precomputed `baggage` value
//! (`k8s.namespace.name`, `k8s.deployment.name` = the workload name, `service.name` = the
//! canonical service, `service.version` = the canonical revision, `k8s.cluster.name`); when
//! the application already sends a `baggage` header, the mesh's members are put in front of
//! the application's. The inbound layer parses it ([`Baggage::parse`], never failing; cached
//! per distinct header value) and trusts it only as far as it agrees with the verified
//! identity: a baggage namespace that differs from the peer certificate's is discarded
//! whole. On plaintext every source label but the principal is the caller's claim.
//!
//! # Cost
//!
//! Label sets are resolved once per edge. Each side keeps the four request instruments
//! bound ([`IstioMetrics::bind`]) per key: (peer, destination service, response code, flags,
//! gRPC status, connection security, protocol), in maps read through an [`ArcSwap`] (no lock
//! on the hot path; an insert copies the map under a mutex). An outbound request whose
//! (endpoint, route host, response) was seen before then costs one lookup keyed by the
//! addresses of the snapshot's endpoint and host (no reference count touched), an inbound
//! one two (its caller, then its edge); plus an `Instant` pair and the instruments' updates. The maps are capped
//! ([`TelemetryLayer::max_series`], default [`DEFAULT_MAX_SERIES`]); beyond the cap a
//! request resolves its labels and records through the unbound instruments (slower, still
//! counted, [`TelemetryLayer::uncached`] counts them), and the OpenTelemetry SDK's own
//! cardinality limit (2000 series per instrument) then folds further series into one with
//! `otel_metric_overflow="true"`.
//!
//! Time is measured with [`tokio::time::Instant`], from the call to the end of the response
//! body (or its drop: a response cut short is recorded with what was seen, as Envoy does on
//! a reset). Bytes are body bytes: a request body whose size is known up front is not
//! wrapped.
//!
//! # Access log
//!
//! With [`TelemetryLayer::access_log`] (off by default, as in Istio) the same layer writes
//! one [`AccessLogEntry`] per request when its response ends.
//!
//! # Examples
//!
//! ```
//! use mesh_tower::{mesh::Workload, telemetry::{layer::{LocalWorkload, TelemetryLayer}, metrics::IstioMetrics}};
//! let metrics = IstioMetrics::new();
//! let me = LocalWorkload::from_workload(&Workload::new("productpage-v1", "default").label("app", "productpage"));
//! let outbound = TelemetryLayer::outbound(&metrics, me.clone());
//! let inbound = TelemetryLayer::inbound(&metrics, me);
//! # let _ = (outbound, inbound);
//! ```

use std::{
    borrow::{Borrow, Cow},
    future::Future,
    hash::{BuildHasher, Hash, Hasher},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use mesh_core::{BoxError, identity::Identity, snapshot::Endpoint};
use opentelemetry::KeyValue;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{
    body::Body,
    flags::{ResponseFlag, ResponseFlags},
    server::PeerAddr,
    target::{PickedEndpoint, Target},
    telemetry::{
        access_log::{AccessLogEntry, AccessLogSink},
        metrics::{BoundRequestMetrics, IstioMetrics, RequestSample},
    },
    tls::PeerIdentity,
};

mod labels;

pub use labels::{
    Baggage, CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL, DEFAULT_CLUSTER, LocalWorkload,
    MAX_BAGGAGE_LEN, PeerLabels, ServiceLabels, UNKNOWN, WORKLOAD_NAME_LABEL, baggage_keys,
};

/// Label sets each side keeps bound by default.
pub const DEFAULT_MAX_SERIES: usize = 1024;

/// Which side a [`TelemetryLayer`] reports for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The client side: `reporter="source"`.
    Outbound,
    /// The server side: `reporter="destination"`.
    Inbound,
}

/// Where the route layer leaves its decision for the outbound telemetry layer above it: the
/// telemetry layer puts one into the request's extensions, the route layer fills it.
#[derive(Clone, Debug, Default)]
pub struct RouteSlot(Arc<OnceLock<Target>>);

impl RouteSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the route decision (the first one wins).
    pub fn set(&self, target: &Target) {
        let _ = self.0.set(target.clone());
    }

    /// The decision, once made.
    pub fn get(&self) -> Option<&Target> {
        self.0.get()
    }
}

// === caches ===

type FoldMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// A map read without a lock, copied on insert, holding at most `cap` entries.
struct Capped<K, V> {
    map: ArcSwap<FoldMap<K, V>>,
    insert: Mutex<()>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Capped<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: ArcSwap::from_pointee(FoldMap::default()),
            insert: Mutex::new(()),
            cap,
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.load().get(key).cloned()
    }

    /// `f` of the cached value, without cloning it; `None` when `key` is not cached.
    fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.load().get(key).map(f)
    }

    /// The cached value, or `make`'s inserted; `Err` with `make`'s value (not cached) when
    /// the map is full.
    fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Result<V, V> {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        if self.len() >= self.cap {
            // Full: no lock and no copy on the request path.
            return Err(make());
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(v) = current.get(&key) {
            return Ok(v.clone());
        }
        let v = make();
        if current.len() >= self.cap {
            return Err(v);
        }
        let mut next = (*current).clone();
        next.insert(key, v.clone());
        self.map.store(Arc::new(next));
        Ok(v)
    }

    /// Caches `value` under `key`; when the map is full, starts a new map with it alone.
    /// For caches that only speed up a slower path and whose keys go stale (the addresses of
    /// a snapshot's endpoints: every configuration change makes new ones), so old keys do
    /// not fill the map and keep their values alive for good.
    fn insert_or_restart(&self, key: K, value: V) {
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if current.contains_key(&key) {
            return;
        }
        let mut next = if current.len() >= self.cap {
            FoldMap::default()
        } else {
            (*current).clone()
        };
        next.insert(key, value);
        self.map.store(Arc::new(next));
    }

    fn len(&self) -> usize {
        self.map.load().len()
    }
}

/// An `Arc` compared and hashed by address (the caches hold every `Arc` they hand out, so an
/// address is never reused while keyed).
#[derive(Clone, Debug)]
struct ByPtr<T>(Arc<T>);

impl<T> PartialEq for ByPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T> Eq for ByPtr<T> {}
impl<T> Hash for ByPtr<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const () as usize).hash(state);
    }
}

/// Who the peer of a request is, as seen on the request path (borrowed).
enum PeerRef<'a> {
    Unknown,
    Endpoint {
        ep: &'a Arc<Endpoint>,
        mtls: bool,
    },
    Inbound {
        id: Option<&'a Identity>,
        baggage: Option<&'a HeaderValue>,
    },
}

/// [`PeerRef`], owned, kept beside the labels to check a hash hit.
enum PeerOwned {
    Unknown,
    Endpoint {
        ep: Arc<Endpoint>,
        mtls: bool,
    },
    Inbound {
        id: Option<Identity>,
        baggage: Option<HeaderValue>,
    },
}

/// The endpoint fields that make its labels.
fn endpoint_identity(ep: &Endpoint) -> impl Iterator<Item = &str> + '_ {
    const KEYS: [&str; 6] = [
        "app",
        "version",
        CANONICAL_NAME_LABEL,
        CANONICAL_REVISION_LABEL,
        "app.kubernetes.io/name",
        "app.kubernetes.io/version",
    ];
    [
        ep.namespace.as_str(),
        ep.service_account.as_str(),
        ep.workload.as_ref().map_or("", |k| k.name.as_str()),
    ]
    .into_iter()
    .chain(
        KEYS.into_iter()
            .map(|k| ep.labels.get(k).map_or("\0", String::as_str)),
    )
}

impl PeerRef<'_> {
    fn hash(&self) -> u64 {
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        match self {
            Self::Unknown => 0u8.hash(&mut h),
            Self::Endpoint { ep, mtls } => {
                1u8.hash(&mut h);
                mtls.hash(&mut h);
                for s in endpoint_identity(ep) {
                    s.hash(&mut h);
                }
            }
            Self::Inbound { id, baggage } => {
                2u8.hash(&mut h);
                id.hash(&mut h);
                baggage.map(HeaderValue::as_bytes).hash(&mut h);
            }
        }
        h.finish()
    }

    fn matches(&self, owned: &PeerOwned) -> bool {
        match (self, owned) {
            (Self::Unknown, PeerOwned::Unknown) => true,
            (Self::Endpoint { ep, mtls }, PeerOwned::Endpoint { ep: o, mtls: m }) => {
                mtls == m && (Arc::ptr_eq(ep, o) || endpoint_identity(ep).eq(endpoint_identity(o)))
            }
            (Self::Inbound { id, baggage }, PeerOwned::Inbound { id: i, baggage: b }) => {
                *id == i.as_ref()
                    && baggage.map(HeaderValue::as_bytes) == b.as_ref().map(HeaderValue::as_bytes)
            }
            _ => false,
        }
    }

    fn to_owned(&self) -> PeerOwned {
        match self {
            Self::Unknown => PeerOwned::Unknown,
            Self::Endpoint { ep, mtls } => PeerOwned::Endpoint {
                ep: Arc::clone(ep),
                mtls: *mtls,
            },
            Self::Inbound { id, baggage } => PeerOwned::Inbound {
                id: id.cloned(),
                baggage: baggage.cloned(),
            },
        }
    }
}

/// The address of what an `Arc` points to, as a cache key part: the entry keyed by it
/// holds the `Arc`, so the address is not reused while keyed.
fn addr<T: ?Sized>(arc: &Arc<T>) -> usize {
    Arc::as_ptr(arc).cast::<()>() as usize
}

/// One edge's key: everything its labels depend on. The peer and the service are the
/// addresses of their interned labels (looked up without touching their reference counts).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EdgeKey {
    peer: usize,
    service: usize,
    outcome: Outcome,
}

/// One edge's bound instruments, and the labels its key points to (kept alive).
#[derive(Clone)]
struct Edge {
    _labels: (Arc<PeerLabels>, Arc<ServiceLabels>),
    metrics: BoundRequestMetrics,
}

/// The outbound fast path's key: the endpoint the balancer picked and the host the route
/// chose (their addresses: the snapshot's `Arc`s), with the rest of an [`EdgeKey`]. One
/// lookup instead of the endpoint's, the host's and the edge's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DirectKey {
    endpoint: usize,
    host: usize,
    outcome: Outcome,
}

/// A [`DirectKey`]'s bound instruments, and the endpoint and host it points to (kept alive).
#[derive(Clone)]
struct Direct {
    _keys: (Arc<Endpoint>, Arc<str>),
    metrics: BoundRequestMetrics,
}

// === TelemetryLayer ===

#[derive(Clone, Debug)]
struct Config {
    direction: Direction,
    metrics: IstioMetrics,
    /// False: no request metrics (Istio's Telemetry API with `disabled: true`).
    report_metrics: bool,
    local: LocalWorkload,
    access_log: AccessLogSink,
    max_series: usize,
}

struct Shared {
    config: Config,
    /// The local workload's labels without and with its principal.
    local: Arc<PeerLabels>,
    local_mtls: Arc<PeerLabels>,
    /// The service the local workload backs (the inbound side's `destination_service`).
    local_service: Arc<ServiceLabels>,
    unknown_peer: Arc<PeerLabels>,
    unknown_service: Arc<ServiceLabels>,
    baggage: HeaderValue,
    peers: Capped<u64, Arc<(PeerOwned, Arc<PeerLabels>)>>,
    /// Endpoints (by address: the snapshot's `Arc`s, held here) → their labels: the fast
    /// path before `peers`, which hashes the endpoint's fields.
    endpoints: Capped<(ByPtr<Endpoint>, bool), Arc<PeerLabels>>,
    services: Capped<Arc<str>, Arc<ServiceLabels>>,
    edges: Capped<EdgeKey, Edge>,
    /// Outbound: (endpoint, host, response) → the edge's instruments, in front of
    /// `endpoints`, `services` and `edges`.
    direct: Capped<DirectKey, Direct>,
    uncached: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.config)
            .field("series", &self.edges.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(config: Config) -> Self {
        let cap = config.max_series.max(1);
        let local_service = match config.local.service_host() {
            Some(host) => ServiceLabels::from_host(&host, &config.local.domain),
            None => ServiceLabels::from_host("", &config.local.domain),
        };
        let baggage = HeaderValue::try_from(config.local.baggage())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Self {
            local: Arc::new(config.local.peer_labels(false)),
            local_mtls: Arc::new(config.local.peer_labels(true)),
            local_service: Arc::new(local_service),
            unknown_peer: Arc::new(PeerLabels::unknown()),
            unknown_service: Arc::new(ServiceLabels::from_host("", "")),
            baggage,
            peers: Capped::new(cap),
            endpoints: Capped::new(cap),
            services: Capped::new(cap),
            edges: Capped::new(cap),
            direct: Capped::new(cap),
            uncached: AtomicU64::new(0),
            config,
        }
    }

    /// The peer's labels, and whether they are cached (interned).
    fn peer(&self, peer: PeerRef<'_>) -> (Arc<PeerLabels>, bool) {
        if matches!(peer, PeerRef::Unknown) {
            return (self.unknown_peer.clone(), true);
        }
        let hash = peer.hash();
        if let Some(e) = self.peers.get(&hash)
            && peer.matches(&e.0)
        {
            return (e.1.clone(), true);
        }
        let make = || Arc::new((peer.to_owned(), Arc::new(self.resolve_peer(&peer))));
        match self.peers.get_or_insert_with(hash, make) {
            Ok(e) if peer.matches(&e.0) => (e.1.clone(), true),
            // A hash collision with another peer, or the cache is full.
            Ok(_) => (Arc::new(self.resolve_peer(&peer)), false),
            Err(e) => (e.1.clone(), false),
        }
    }

    /// The labels of the endpoint the balancer picked.
    fn endpoint_peer(&self, ep: &Arc<Endpoint>, mtls: bool) -> (Arc<PeerLabels>, bool) {
        let key = (ByPtr(ep.clone()), mtls);
        if let Some(labels) = self.endpoints.get(&key) {
            return (labels, true);
        }
        let (labels, cached) = self.peer(PeerRef::Endpoint { ep, mtls });
        if cached {
            self.endpoints.insert_or_restart(key, labels.clone());
        }
        (labels, cached)
    }

    fn resolve_peer(&self, peer: &PeerRef<'_>) -> PeerLabels {
        let local = &self.config.local;
        match peer {
            PeerRef::Unknown => PeerLabels::unknown(),
            PeerRef::Endpoint { ep, mtls } => {
                PeerLabels::from_endpoint(ep, &local.trust_domain, *mtls, &local.cluster)
            }
            PeerRef::Inbound { id, baggage } => {
                let baggage = baggage.map(|b| Baggage::parse(b.as_bytes()));
                PeerLabels::from_peer(*id, baggage.as_ref())
            }
        }
    }

    fn service(&self, host: Option<&Arc<str>>) -> Arc<ServiceLabels> {
        let Some(host) = host else {
            return self.unknown_service.clone();
        };
        if let Some(s) = self.services.get(&**host) {
            return s;
        }
        let make = || Arc::new(ServiceLabels::from_host(host, &self.config.local.domain));
        match self.services.get_or_insert_with(host.clone(), make) {
            Ok(s) | Err(s) => s,
        }
    }

    fn labels(
        &self,
        key: &Outcome,
        peer: &Arc<PeerLabels>,
        svc: &ServiceLabels,
        flags: &ResponseFlags,
    ) -> Vec<KeyValue> {
        let (source, dest) = match self.config.direction {
            Direction::Outbound => (
                if key.mtls {
                    &self.local_mtls
                } else {
                    &self.local
                },
                peer,
            ),
            Direction::Inbound => (
                peer,
                if key.mtls {
                    &self.local_mtls
                } else {
                    &self.local
                },
            ),
        };
        let s = |v: &Arc<str>| opentelemetry::Value::String(v.to_string().into());
        let mut l = vec![
            KeyValue::new(
                "reporter",
                match self.config.direction {
                    Direction::Outbound => "source",
                    Direction::Inbound => "destination",
                },
            ),
            KeyValue::new("source_workload", s(&source.workload)),
            KeyValue::new("source_workload_namespace", s(&source.namespace)),
            KeyValue::new("source_principal", s(&source.principal)),
            KeyValue::new("source_app", s(&source.app)),
            KeyValue::new("source_version", s(&source.version)),
            KeyValue::new("source_canonical_service", s(&source.canonical_service)),
            KeyValue::new("source_canonical_revision", s(&source.canonical_revision)),
            KeyValue::new("source_cluster", s(&source.cluster)),
            KeyValue::new("destination_workload", s(&dest.workload)),
            KeyValue::new("destination_workload_namespace", s(&dest.namespace)),
            KeyValue::new("destination_principal", s(&dest.principal)),
            KeyValue::new("destination_app", s(&dest.app)),
            KeyValue::new("destination_version", s(&dest.version)),
            KeyValue::new("destination_canonical_service", s(&dest.canonical_service)),
            KeyValue::new(
                "destination_canonical_revision",
                s(&dest.canonical_revision),
            ),
            KeyValue::new("destination_cluster", s(&dest.cluster)),
            KeyValue::new("destination_service", s(&svc.host)),
            KeyValue::new("destination_service_name", s(&svc.name)),
            KeyValue::new("destination_service_namespace", s(&svc.namespace)),
            KeyValue::new("request_protocol", if key.grpc { "grpc" } else { "http" }),
            KeyValue::new("response_code", i64::from(key.code).to_string()),
            KeyValue::new("response_flags", flags.to_string()),
            KeyValue::new(
                "connection_security_policy",
                match (self.config.direction, key.mtls) {
                    (Direction::Outbound, _) => UNKNOWN,
                    (Direction::Inbound, true) => "mutual_tls",
                    (Direction::Inbound, false) => "none",
                },
            ),
        ];
        if key.grpc {
            l.push(KeyValue::new(
                "grpc_response_status",
                match key.grpc_status {
                    255 => UNKNOWN.to_owned(),
                    n => n.to_string(),
                },
            ));
        }
        l
    }

    /// Records `sample` on the edge `peer` → `service`; returns its key when the edge's
    /// instruments are bound (cached).
    fn record(
        &self,
        peer: &Arc<PeerLabels>,
        service: &Arc<ServiceLabels>,
        edge: Outcome,
        cached_peer: bool,
        flags: &ResponseFlags,
        sample: RequestSample,
    ) -> Option<EdgeKey> {
        let key = EdgeKey {
            peer: addr(peer),
            service: addr(service),
            outcome: edge,
        };
        if cached_peer {
            if self
                .edges
                .with(&key, |e| e.metrics.record(sample))
                .is_some()
            {
                return Some(key);
            }
            if self.edges.len() < self.edges.cap {
                let bind = || Edge {
                    _labels: (peer.clone(), service.clone()),
                    metrics: {
                        let labels = self.labels(&key.outcome, peer, service, flags);
                        if key.outcome.grpc {
                            self.config.metrics.bind_grpc(&labels)
                        } else {
                            self.config.metrics.bind(&labels)
                        }
                    },
                };
                return match self.edges.get_or_insert_with(key, bind) {
                    Ok(edge) => {
                        edge.metrics.record(sample);
                        Some(key)
                    }
                    Err(edge) => {
                        // Filled up meanwhile.
                        self.uncached.fetch_add(1, Ordering::Relaxed);
                        edge.metrics.record(sample);
                        None
                    }
                };
            }
        }
        self.uncached.fetch_add(1, Ordering::Relaxed);
        self.config
            .metrics
            .record(&self.labels(&key.outcome, peer, service, flags), sample);
        None
    }
}

impl Shared {
    /// Records an outbound request answered by `ep` for the route's `host`: one lookup when
    /// this (endpoint, host, response) was seen before, else the labels are resolved, bound
    /// and remembered.
    fn record_endpoint(
        &self,
        ep: &Arc<Endpoint>,
        host: Option<&Arc<str>>,
        outcome: Outcome,
        flags: &ResponseFlags,
        sample: RequestSample,
    ) {
        let key = host.map(|host| DirectKey {
            endpoint: addr(ep),
            host: addr(host),
            outcome,
        });
        if let Some(key) = &key
            && self
                .direct
                .with(key, |d| d.metrics.record(sample))
                .is_some()
        {
            return;
        }
        let (peer, cached) = self.endpoint_peer(ep, outcome.mtls);
        let service = self.service(host);
        let bound = self.record(&peer, &service, outcome, cached, flags, sample);
        if let (Some(key), Some(host), Some(edge)) = (key, host, bound)
            && let Some(edge) = self.edges.get(&edge)
        {
            self.direct.insert_or_restart(
                key,
                Direct {
                    _keys: (ep.clone(), host.clone()),
                    metrics: edge.metrics,
                },
            );
        }
    }
}

/// What an edge's key takes from the response.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Outcome {
    code: u16,
    flags: u32,
    /// 255 when not gRPC.
    grpc_status: u8,
    mtls: bool,
    grpc: bool,
}

/// Reports Istio's request metrics (and the access log) for one side; see the
/// [module docs](self).
///
/// # Clone
///
/// Clones share the caches; a builder method called on a clone starts new ones.
#[derive(Clone, Debug)]
#[must_use]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

impl TelemetryLayer {
    /// The client side (`reporter="source"`), for `local`'s outbound requests.
    pub fn outbound(metrics: &IstioMetrics, local: LocalWorkload) -> Self {
        Self::new(Direction::Outbound, metrics, local)
    }

    /// The server side (`reporter="destination"`), for requests `local` serves.
    pub fn inbound(metrics: &IstioMetrics, local: LocalWorkload) -> Self {
        Self::new(Direction::Inbound, metrics, local)
    }

    /// A layer for `direction`.
    pub fn new(direction: Direction, metrics: &IstioMetrics, local: LocalWorkload) -> Self {
        Self {
            shared: Arc::new(Shared::new(Config {
                direction,
                metrics: metrics.clone(),
                report_metrics: true,
                local,
                access_log: AccessLogSink::off(),
                max_series: DEFAULT_MAX_SERIES,
            })),
        }
    }

    fn with_config(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config.clone();
        change(&mut config);
        Self {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// Writes an access log line per request into `sink` (off by default).
    pub fn access_log(self, sink: AccessLogSink) -> Self {
        self.with_config(|c| c.access_log = sink)
    }

    /// Whether requests are counted in Istio's request metrics (default `true`). With
    /// `false`, as with Istio's Telemetry API `metrics: [{overrides: [{disabled: true}]}]`,
    /// this side records none (the access log, when on, still writes its lines); outbound,
    /// the `baggage` that tells the server who calls is still sent, so the server's own
    /// metrics keep their source labels.
    pub fn metrics(self, enabled: bool) -> Self {
        self.with_config(|c| c.report_metrics = enabled)
    }

    /// How many label sets (and peers, and hosts) this side keeps resolved and bound; beyond
    /// it requests are recorded through the unbound instruments (default
    /// [`DEFAULT_MAX_SERIES`]).
    pub fn max_series(self, max: usize) -> Self {
        self.with_config(|c| c.max_series = max)
    }

    /// Which side this layer reports for.
    pub fn direction(&self) -> Direction {
        self.shared.config.direction
    }

    /// Requests recorded without a cached label set (beyond [`max_series`](Self::max_series)).
    pub fn uncached(&self) -> u64 {
        self.shared.uncached.load(Ordering::Relaxed)
    }

    /// Label sets bound so far.
    pub fn series(&self) -> usize {
        self.shared.edges.len()
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of a [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Telemetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// True for a gRPC request (`content-type: application/grpc*`).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a header map, 255 when absent or not a small number.
fn grpc_status_of(headers: &http::HeaderMap) -> Option<u8> {
    let v = headers.get(GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes())
        .ok()?
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|n| *n < 255)
}

/// Envoy's mapping of an HTTP status to a gRPC status when a gRPC response has none
/// (`Grpc::Utility::httpToGrpcStatus`).
fn http_to_grpc(status: u16) -> u8 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn header(v: &Option<HeaderValue>) -> Option<Cow<'_, str>> {
    v.as_ref().and_then(|v| v.to_str().ok()).map(Cow::Borrowed)
}

fn flag_bits(flags: &ResponseFlags) -> u32 {
    flags.iter().fold(0, |b, f| b | 1 << (f as u32 & 31))
}

/// What the request path saw, for the access log (only built when logging).
struct LogRequest {
    start: SystemTime,
    method: http::Method,
    path: Option<String>,
    version: http::Version,
    authority: Option<String>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    peer: Option<PeerAddr>,
}

/// Request body bytes: known up front, or counted by the body wrapper.
enum ReqBytes {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl ReqBytes {
    fn get(&self) -> u64 {
        match self {
            Self::Known(n) => *n,
            Self::Counted(c) => c.load(Ordering::Relaxed),
        }
    }
}

/// The part of a request's record made before the response.
struct Started {
    shared: Arc<Shared>,
    start: Instant,
    grpc: bool,
    request_bytes: ReqBytes,
    /// gRPC messages in the request body, counted by its wrapper.
    request_messages: Option<Arc<AtomicU64>>,
    slot: Option<RouteSlot>,
    /// The inbound peer, resolved from the request.
    inbound_peer: Option<(Arc<PeerLabels>, bool, bool)>,
    log: Option<Box<LogRequest>>,
}

impl<S, RB> Service<Request<Body>> for Telemetry<S>
where
    S: Service<Request<Body>, Response = Response<RB>>,
    RB: HttpBody<Data = Bytes>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        if !shared.config.report_metrics && shared.config.access_log.is_off() {
            // Nothing to record.
            if shared.config.direction == Direction::Outbound {
                add_baggage(req.headers_mut(), &shared.baggage);
            }
            return ResponseFuture {
                inner: self.inner.call(req),
                started: None,
            };
        }
        let start = Instant::now();
        let grpc = is_grpc(&req);
        let mut slot = None;
        let mut inbound_peer = None;
        match shared.config.direction {
            Direction::Outbound => {
                let s = RouteSlot::new();
                req.extensions_mut().insert(s.clone());
                slot = Some(s);
                add_baggage(req.headers_mut(), &shared.baggage);
            }
            Direction::Inbound => {
                let id = req.extensions().get::<PeerIdentity>().map(|p| &p.identity);
                let baggage = req.headers().get(&BAGGAGE);
                let mtls = id.is_some();
                let (labels, cached) = shared.peer(PeerRef::Inbound { id, baggage });
                inbound_peer = Some((labels, cached, mtls));
            }
        }
        let log = (!shared.config.access_log.is_off()).then(|| {
            if shared.config.direction == Direction::Inbound {
                // Envoy's connection manager gives every inbound request an id (the trace
                // layer below then keeps it).
                crate::telemetry::propagation::ensure_request_id(req.headers_mut());
            }
            let h = req.headers();
            Box::new(LogRequest {
                start: SystemTime::now(),
                method: req.method().clone(),
                path: req.uri().path_and_query().map(|p| p.as_str().to_owned()),
                version: req.version(),
                authority: req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        h.get(http::header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    }),
                user_agent: h.get(http::header::USER_AGENT).cloned(),
                // Outbound, the trace layer below adds the id of the inbound request being
                // handled.
                request_id: h
                    .get(crate::telemetry::propagation::X_REQUEST_ID)
                    .cloned()
                    .or_else(|| crate::telemetry::trace::current().and_then(|t| t.request_id)),
                forwarded_for: h.get(X_FORWARDED_FOR).cloned(),
                peer: req.extensions().get::<PeerAddr>().copied(),
            })
        });
        let mut request_messages = None;
        let request_bytes = match req.body().size_hint().exact() {
            Some(n) if !grpc => ReqBytes::Known(n),
            _ => {
                let count = Arc::new(AtomicU64::new(0));
                let c = count.clone();
                let messages = grpc.then(|| Arc::new(AtomicU64::new(0)));
                let frames = messages.clone().map(|m| (GrpcFrames::default(), m));
                request_messages = messages;
                req = req.map(|b| {
                    Body::new(RequestBody {
                        inner: b,
                        count: c,
                        frames,
                    })
                });
                ReqBytes::Counted(count)
            }
        };
        ResponseFuture {
            inner: self.inner.call(req),
            started: Some(Started {
                shared: shared.clone(),
                start,
                grpc,
                request_bytes,
                request_messages,
                slot,
                inbound_peer,
                log,
            }),
        }
    }
}

const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Headers a traced outbound request gets from the mesh: `baggage`, `Host`, and `traceparent`,
/// `tracestate`, `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled` and
/// `x-request-id`.
const TRACED_OUTBOUND_HEADERS: usize = 9;

/// Puts the mesh's metadata in front of the request's `baggage` (or sets it).
fn add_baggage(headers: &mut http::HeaderMap, ours: &HeaderValue) {
    if ours.is_empty() {
        return;
    }
    if headers.is_empty() {
        // Nothing to merge with (and nothing to look up). A call made while serving a traced
        // request gets up to seven trace headers from the trace layer below and `Host` from
        // the balancer: the map is made for them at once (the first insert would make it
        // for six, and the seventh would grow it, a reallocation and a rehash).
        if crate::telemetry::trace::in_traced_scope() {
            headers.reserve(TRACED_OUTBOUND_HEADERS);
        }
        headers.insert(BAGGAGE, ours.clone());
        return;
    }
    // One hashed lookup for both cases.
    match headers.entry(BAGGAGE) {
        http::header::Entry::Vacant(e) => {
            e.insert(ours.clone());
        }
        http::header::Entry::Occupied(mut e) => {
            let theirs = e.get();
            let mut v = Vec::with_capacity(ours.len() + 1 + theirs.len());
            v.extend_from_slice(ours.as_bytes());
            v.push(b',');
            v.extend_from_slice(theirs.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts its bytes (and, for gRPC, its messages).
    struct RequestBody {
        #[pin]
        inner: Body,
        count: Arc<AtomicU64>,
        frames: Option<(GrpcFrames, Arc<AtomicU64>)>,
    }
}

/// Counts the messages of a gRPC body from its DATA chunks: each message is a 5-byte prefix
/// (a compression flag and a big-endian 32-bit length) and that many bytes, and may be split
/// across chunks or share one with others. A message counts when its prefix is complete, as
/// Envoy's gRPC statistics count frames.
#[derive(Clone, Copy, Debug, Default)]
struct GrpcFrames {
    messages: u64,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl GrpcFrames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                self.prefix_len = 0;
            }
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some((frames, messages)) = this.frames.as_mut() {
                frames.feed(data);
                messages.store(frames.messages, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Telemetry`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: HttpBody<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(started) = this.started.take() else {
            // Nothing to record, or polled after completion (the inner future decides what
            // that means).
            return Poll::Ready(result.map(|res| res.map(ResponseBody::untracked)));
        };
        Poll::Ready(match result {
            Ok(res) => {
                let pending = Pending::new(started, &res);
                // An empty body may never be polled: record it now.
                let pending = if res.body().is_end_stream() {
                    pending.finish(0, false);
                    None
                } else {
                    Some(pending)
                };
                let frames = pending
                    .as_ref()
                    .and_then(|p| p.started.grpc.then(GrpcFrames::default));
                Ok(res.map(|inner| ResponseBody {
                    inner,
                    bytes: 0,
                    frames,
                    pending,
                }))
            }
            Err(e) => {
                // No response: the server answers 500 for an application error; a client
                // gets the error itself (Envoy's response code 0).
                let code = match started.shared.config.direction {
                    Direction::Inbound => 500,
                    Direction::Outbound => 0,
                };
                let pending =
                    Pending::from_parts(started, code, ResponseFlags::default(), None, None);
                pending.finish(0, false);
                Err(e)
            }
        })
    }
}

/// A response's record, finished when its body ends.
/// Who a [`Pending`] request's peer is: resolved to labels, or (outbound) the endpoint the
/// balancer picked, resolved when the request ends (through the fast path, mostly).
enum PeerAt {
    /// Inbound: the caller, towards the local workload's service.
    Caller {
        labels: Arc<PeerLabels>,
        cached: bool,
    },
    Resolved {
        labels: Arc<PeerLabels>,
        cached: bool,
        service: Arc<ServiceLabels>,
    },
    Endpoint(Arc<Endpoint>),
}

struct Pending {
    started: Started,
    code: u16,
    flags: ResponseFlags,
    grpc_status: Option<u8>,
    peer: PeerAt,
    mtls: bool,
    /// The endpoint's address, kept for the access log only.
    upstream: Option<http::uri::Authority>,
    /// gRPC messages in the response body so far.
    response_messages: u64,
}

impl Pending {
    fn new<B>(started: Started, res: &Response<B>) -> Self {
        let flags = ResponseFlags::of(res);
        let grpc_status = if started.grpc {
            grpc_status_of(res.headers())
        } else {
            None
        };
        let picked = res.extensions().get::<PickedEndpoint>();
        let server_mtls = res.extensions().get::<PeerIdentity>().is_some();
        let upstream = picked
            .filter(|_| started.log.is_some())
            .map(|p| p.authority.clone());
        let mut pending = Self::from_parts(
            started,
            res.status().as_u16(),
            flags,
            grpc_status,
            picked.map(|p| (&p.endpoint, server_mtls)),
        );
        pending.upstream = upstream;
        pending
    }

    fn from_parts(
        mut started: Started,
        code: u16,
        flags: ResponseFlags,
        grpc_status: Option<u8>,
        picked: Option<(&Arc<Endpoint>, bool)>,
    ) -> Self {
        let shared = &started.shared;
        let (peer, mtls) = match (started.inbound_peer.take(), picked) {
            (Some((labels, cached, mtls)), _) => (PeerAt::Caller { labels, cached }, mtls),
            (None, Some((ep, mtls))) => (PeerAt::Endpoint(ep.clone()), mtls),
            (None, None) => {
                let (labels, cached) = shared.peer(PeerRef::Unknown);
                let host = started
                    .slot
                    .as_ref()
                    .and_then(RouteSlot::get)
                    .map(|t| &t.host);
                (
                    PeerAt::Resolved {
                        labels,
                        cached,
                        service: shared.service(host),
                    },
                    false,
                )
            }
        };
        Self {
            code,
            flags,
            grpc_status,
            peer,
            mtls,
            upstream: None,
            response_messages: 0,
            started,
        }
    }

    fn finish(mut self, response_bytes: u64, dropped_early: bool) {
        if dropped_early {
            self.flags
                .insert(ResponseFlag::DownstreamConnectionTermination);
        }
        let started = &self.started;
        let shared = &started.shared;
        let duration = started.start.elapsed();
        let request_bytes = started.request_bytes.get();
        let grpc_status = if started.grpc {
            self.grpc_status.unwrap_or(if self.code == 200 {
                255
            } else {
                http_to_grpc(self.code)
            })
        } else {
            255
        };
        let outcome = Outcome {
            code: self.code,
            flags: flag_bits(&self.flags),
            grpc_status,
            mtls: self.mtls,
            grpc: started.grpc,
        };
        let sample = RequestSample {
            duration,
            request_bytes,
            response_bytes,
            messages: started.grpc.then(|| {
                (
                    started
                        .request_messages
                        .as_ref()
                        .map_or(0, |m| m.load(Ordering::Relaxed)),
                    self.response_messages,
                )
            }),
        };
        match &self.peer {
            _ if !shared.config.report_metrics => {}
            PeerAt::Caller { labels, cached } => {
                shared.record(
                    labels,
                    &shared.local_service,
                    outcome,
                    *cached,
                    &self.flags,
                    sample,
                );
            }
            PeerAt::Resolved {
                labels,
                cached,
                service,
            } => {
                shared.record(labels, service, outcome, *cached, &self.flags, sample);
            }
            PeerAt::Endpoint(ep) => {
                let host = started
                    .slot
                    .as_ref()
                    .and_then(RouteSlot::get)
                    .map(|t| &t.host);
                shared.record_endpoint(ep, host, outcome, &self.flags, sample);
            }
        }
        if let Some(log) = &started.log {
            let target = started.slot.as_ref().and_then(RouteSlot::get);
            let mut entry = AccessLogEntry::new(log.start);
            entry.method = Some(Cow::Borrowed(log.method.as_str()));
            entry.path = log.path.as_deref().map(Cow::Borrowed);
            entry.protocol = Some(log.version);
            entry.response_code = self.code;
            entry.response_flags = Cow::Borrowed(&self.flags);
            entry.bytes_received = request_bytes;
            entry.bytes_sent = response_bytes;
            entry.duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            entry.user_agent = header(&log.user_agent);
            entry.request_id = header(&log.request_id);
            entry.x_forwarded_for = header(&log.forwarded_for);
            entry.authority = log.authority.as_deref().map(Cow::Borrowed);
            entry.downstream_remote_address = log.peer.map(|p| p.0);
            entry.upstream_host = self.upstream.as_ref().map(|a| Cow::Borrowed(a.as_str()));
            // Outbound only: the cluster and route the route layer chose. (Envoy's inbound
            // cluster names the listener port, which this layer does not know: `-`.)
            entry.upstream_cluster = target.map(|t| Cow::Owned(t.cluster_name()));
            entry.route_name = target
                .and_then(Target::route)
                .and_then(|r| r.name.as_deref())
                .map(Cow::Borrowed);
            shared.config.access_log.log(&entry);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`Telemetry`]: counts the bytes and records the request when the
    /// body ends, or when it is dropped before (with what was seen, flagged `DC`).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        bytes: u64,
        frames: Option<GrpcFrames>,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut p) = this.pending.take() {
                p.response_messages = this.frames.map_or(0, |f| f.messages);
                p.finish(*this.bytes, true);
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    fn untracked(inner: B) -> Self {
        Self {
            inner,
            bytes: 0,
            frames: None,
            pending: None,
        }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let (Some(data), Some(frames)) = (frame.data_ref(), this.frames.as_mut())
        {
            frames.feed(data);
        }
        if let (Some(p), Some(f)) = (this.pending.as_mut(), this.frames.as_ref()) {
            p.response_messages = f.messages;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(p) = this.pending.as_mut()
                    && let Some(status) = grpc_status_of(trailers)
                {
                    p.grpc_status = Some(status);
                }
                if this.inner.is_end_stream()
                    && let Some(p) = this.pending.take()
                {
                    p.finish(*this.bytes, false);
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.finish(*this.bytes, false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut p) = this.pending.take() {
                    p.flags.insert(ResponseFlag::UpstreamRemoteReset);
                    p.finish(*this.bytes, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
