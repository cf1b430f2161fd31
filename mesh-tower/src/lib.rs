//! The in-process data plane: tower layers that do for a service what a sidecar proxy does
//! for it under Istio, configured from Istio's YAML through [`mesh_core`].
//!
//! ```text
//! outbound: rescue → route → cors → respond (redirect, direct response) → headers/rewrite
//!           → mirror → timeout (route) → fault → retry (budget, per-try timeout)
//!           → balance → connect
//! inbound:  accept → (telemetry, authz) → app
//! ```

pub mod balance;
pub mod body;
pub mod connect;
pub mod cors;
pub mod error;
pub mod fault;
pub mod flags;
pub mod headers;
pub mod mirror;
pub mod respond;
pub mod rescue;
pub mod route;
pub mod server;
pub mod retry;
pub mod target;
pub mod timeout;

pub use mesh_core::BoxError;
