//! Load balancing: send each request to one endpoint of its destination.
//!
//! Per request, [`Balance`] reads the route layer's [`Target`]: the candidates are the
//! endpoints of the destination host (and subset) in the target's snapshot, and the policy
//! is the DestinationRule's `trafficPolicy.loadBalancer` and `outlierDetection` for that
//! subset and port, merged as Istio merges them (subset over rule, port-level entries
//! replacing). Without a `loadBalancer` the algorithm is LEAST_REQUEST, as in Istio. The pure
//! choice is [`mesh_core::policy::balance::pick`], whose docs describe each simple algorithm,
//! how weights are used and how Istio's names map (`PASSTHROUGH` balances with
//! LEAST_REQUEST).
//!
//! Up to 16 endpoints, a request looks at each (the choice among those not marked down or
//! already tried). Above that, LEAST_REQUEST, RANDOM and ROUND_ROBIN look only at the one or
//! two endpoints they draw (or the cursor's), as Envoy's balancers do, and fall back to the
//! full pass when weights differ, warmup is on, the request is a retry, an outlier ejection
//! may be running, or a drawn endpoint is marked down: with 1,000 endpoints a least-request
//! choice costs ~1.6 µs instead of ~45 µs (`benches/layers`).
//!
//! # Consistent hashing
//!
//! `consistentHash` picks the endpoint from a ring hash or a Maglev table
//! ([`mesh_core::policy::hash`]) built once per endpoint list and cached per destination (the
//! table is reused while requests carry the same snapshot, and after a configuration change
//! that leaves the endpoints alone); a request costs one hash of its key and one lookup. The
//! key is, as in Envoy:
//!
//! - `httpHeaderName`: the header's value;
//! - `httpCookie`: the cookie's value. When the request has no such cookie and `ttl` is set,
//!   a random value is generated, used, and set on the response as Envoy does:
//!   `Set-Cookie: name="value"; Max-Age=<ttl>; Path=<path>; <attributes>; HttpOnly` (no
//!   `Max-Age` for `ttl: 0s`, a session cookie). Without `ttl` no cookie is generated;
//! - `useSourceIp`: the caller's address: the [`PeerAddr`] in the request's extensions (an
//!   inbound request forwarded with its extensions, as a gateway does), else the workload's
//!   own address, given with [`EndpointStats::with_source_ip`] (a random value per
//!   [`EndpointStats`] otherwise). A sidecar sees its workload's IP as the source of every
//!   outbound request, so every request of one workload goes to the same endpoint in both;
//! - `httpQueryParameterName`: the query parameter's value (raw, first occurrence).
//!
//! A request without a value for its key gets a random hash (Envoy: a random endpoint).
//! Endpoints that are ejected, marked down or already tried by this request are walked past
//! to the next acceptable one on the ring (or in the table).
//!
//! # Warmup
//!
//! With `warmup` (ROUND_ROBIN and LEAST_REQUEST), an endpoint's weight is scaled by Envoy's
//! slow-start factor ([`Warmup::factor`]) for `duration` after the balancer first saw it.
//! First-seen times are recorded per endpoint when a destination with warmup is balanced; an
//! endpoint present when the balancer first balances the destination warms up together with
//! the others, which changes nothing (as for the hosts of a new Envoy cluster).
//!
//! # Outlier detection
//!
//! With `outlierDetection`, the response future reports each outcome to the endpoint's
//! state: the status code, or a local-origin failure (an [`UpstreamConnectFailure`], an
//! [`UpstreamReset`], or a timeout error); other errors, such as a layer's own refusal, do
//! not count. [`mesh_core::policy::outlier`] has the semantics (Envoy's: consecutive 5xx,
//! gateway and local-origin counts, ejection time growing with each ejection and capped at
//! 300 s, return at the next `interval` sweep, `maxEjectionPercent` allowing at least one,
//! `minHealthPercent` panic mode). Ejected endpoints are left out of every algorithm; when all
//! are, the request fails with [`NoHealthyUpstream`] unless `minHealthPercent` puts the
//! destination in panic mode. [`EndpointStats::ejected`] and [`EndpointStats::ejections`]
//! read the state.
//!
//! A fixed list ([`BalanceLayer::new`]) has no DestinationRule: enable it there with
//! [`BalanceLayer::outlier_detection`].
//!
//! The state is per endpoint (`address:port`), shared by every destination and client of a
//! mesh that reaches it, while each destination's own rule decides thresholds and times.
//! A per-try timeout from the retry layer drops this future rather than completing it with
//! an error, so it is not counted; connect timeouts are (they are connect failures).
//!
//! Without a DestinationRule, or with one that configures neither warmup, consistent hashing
//! nor outlier detection, none of this costs anything per request: no lock, allocation or
//! extra map lookup.
//!
//! The chosen endpoint is connected to at `endpoint.address` and the port that
//! [`Endpoint::port_for`] gives for the service port (the registry's port name and
//! `targetPort`; services implied by WorkloadEntry labels have no ports, so the endpoint's
//! only port or the service port). Then the balancer
//!
//! - rewrites the request URI to `http://<address>:<port><path?query>`, which is what
//!   [`Connect`](crate::connect::Connect) connects to and pools by;
//! - sets the `Host` header to the authority the caller addressed (`reviews:9080`), so the
//!   upstream application sees the name it was called by. A request without a URI authority
//!   keeps its `Host` header. Over HTTP/2 the `:authority` pseudo-header is the endpoint
//!   address (hyper derives it from the URI) and `Host` carries the original name;
//! - inserts [`PickedEndpoint`] into the response's extensions (for retries, telemetry and
//!   access logs, Envoy's `%UPSTREAM_HOST%`; the request carries the endpoint in its URI);
//! - records the endpoint in the request's [`TriedEndpoints`], if the retry layer put one
//!   there, and avoids the endpoints recorded by earlier attempts while another candidate
//!   is left (Istio's `retryIgnorePreviousHosts`).
//!
//! LEAST_REQUEST needs the load of each endpoint: [`EndpointStats`] counts the requests in
//! flight per endpoint, shared by every balancer of a mesh. A request counts from the moment
//! it is handed to the inner service until its response future completes (response head
//! received, or an error) or is dropped; the response body is not counted.
//!
//! # Without endpoints
//!
//! When the destination has no endpoints:
//!
//! - a host the registry does not know (an external name reached by the default route) is
//!   connected to as written, at the target port: Istio's default `ALLOW_ANY` outbound
//!   policy (`PassthroughCluster`);
//! - a ServiceEntry without endpoints whose `resolution` is `DNS`, `DNS_ROUND_ROBIN`
//!   or `DYNAMIC_DNS` is connected to by its host name (at the port's `targetPort`, if set),
//!   and one with `resolution: NONE` (the default) at the port the caller addressed, as
//!   Envoy's DNS and original-destination clusters do;
//! - otherwise (a subset without endpoints, a service whose endpoints are all gone) the
//!   request fails with [`NoHealthyUpstream`] (Envoy `UH`, 503).
//!
//! # Readiness
//!
//! The balancer is ready whenever the inner service is: it never waits for an endpoint
//! (ejected endpoints are left out when picking, not waited for).
//!
//! # Errors
//!
//! [`NoHealthyUpstream`] as above, and when outlier detection ejected every endpoint;
//! [`UpstreamConnectFailure`] if an endpoint address does not form a valid URI authority;
//! otherwise the inner service's errors.
//!
//! # Examples
//!
//! A fixed list of endpoints, without the route layer:
//!
//! ```
//! use std::{collections::BTreeMap, sync::Arc};
//!
//! use futures_util::FutureExt;
//! use mesh_core::{policy::balance::Algorithm, snapshot::Endpoint};
//! use mesh_tower::{balance::BalanceLayer, body, target::PickedEndpoint};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let endpoint = |port| {
//!     Arc::new(Endpoint {
//!         address: "127.0.0.1".into(),
//!         ports: BTreeMap::from([("http".to_owned(), port)]),
//!         labels: BTreeMap::new(),
//!         service_account: "default".into(),
//!         namespace: "default".into(),
//!         weight: 1,
//!         workload: None,
//!     })
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(BalanceLayer::new([endpoint(9081), endpoint(9082)], Algorithm::RoundRobin))
//!     .service(service_fn(|req: http::Request<body::Body>| async move {
//!         // What `Connect` would receive.
//!         assert_eq!(req.uri(), "http://127.0.0.1:9081/reviews/1");
//!         assert_eq!(req.headers()["host"], "reviews:9080");
//!         Ok::<_, mesh_core::BoxError>(http::Response::new(body::empty()))
//!     }));
//! let req = http::Request::get("http://reviews:9080/reviews/1").body(body::empty())?;
//! let res = svc.oneshot(req).now_or_never().expect("the mock answers at once")?;
//! assert_eq!(res.extensions().get::<PickedEndpoint>().unwrap().authority, "127.0.0.1:9081");
//! # Ok::<_, mesh_core::BoxError>(())
//! ```
//!
//! In the mesh's outbound stack, under the route layer:
//!
//! ```
//! use mesh_tower::balance::{BalanceLayer, EndpointStats};
//! let stats = EndpointStats::new(); // once per mesh
//! let layer = BalanceLayer::from_target(stats.clone());
//! # let _ = layer;
//! ```
//!
//! [`Target`]: crate::target::Target
//! [`PickedEndpoint`]: crate::target::PickedEndpoint
//! [`TriedEndpoints`]: crate::target::TriedEndpoints
//! [`Endpoint::port_for`]: mesh_core::snapshot::Endpoint::port_for
//! [`NoHealthyUpstream`]: crate::error::NoHealthyUpstream
//! [`UpstreamConnectFailure`]: crate::error::UpstreamConnectFailure
//! [`UpstreamReset`]: crate::error::UpstreamReset
//! [`PeerAddr`]: crate::server::PeerAddr
//! [`Warmup::factor`]: mesh_core::policy::balance::Warmup::factor

pub mod future;
mod hash;
mod layer;
mod outlier;
mod service;
mod stats;

pub use self::{layer::BalanceLayer, service::Balance, stats::EndpointStats};

#[cfg(test)]
mod tests;
