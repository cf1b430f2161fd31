//! The in-process data plane: tower layers that do for a service what a sidecar proxy does
//! for it under Istio, configured from Istio's YAML through [`mesh_core`].
//!
//! ```text
//! outbound: rescue → route → cors → respond (redirect, direct response) → rewrite/headers
//!           → timeout (route) → fault → mirror → retry (budget, per-try timeout)
//!           → breaker (connectionPool limits) → balance → connect
//! inbound:  accept → (telemetry, authz) → app
//! ```

pub mod admin;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod connect;
pub mod cors;
pub mod error;
pub mod fault;
pub mod flags;
pub mod headers;
pub mod mesh;
pub mod mirror;
pub mod rescue;
pub mod respond;
pub mod retry;
pub mod route;
pub mod server;
pub mod stack;
pub mod target;
pub mod telemetry;
pub mod timeout;
pub mod tls;

pub use mesh_core::BoxError;
