//! Istio's configuration model for an embeddable, in-process service mesh.
//!
//! `mesh-core` reads Istio's own resources (VirtualService, DestinationRule, Gateway,
//! ServiceEntry, WorkloadEntry, PeerAuthentication, AuthorizationPolicy,
//! RequestAuthentication) unchanged from YAML or JSON, validates them as the Kubernetes API
//! server and `istioctl analyze` would, keeps them in a [`store`], and compiles them into an
//! immutable [`snapshot::Snapshot`] that the request path reads without locks.
//!
//! ```text
//! YAML ─▶ source (lines) ─▶ config (serde types) ─▶ validate (schema + analysis)
//!      ─▶ snapshot (compiled routes, subsets, endpoints) ─▶ ArcSwap ─▶ layers
//! ```
//!
//! Nothing here does I/O on its own except the [`store`] backends; nothing reads environment
//! variables.

pub mod config;
pub mod duration;
pub mod host;
pub mod identity;
pub mod policy;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod validate;
pub mod yaml;

/// The boxed error type used at tower boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
