//! The in-process data plane: tower layers that do for a service what a sidecar proxy does
//! for it under Istio, configured from Istio's YAML through [`mesh_core`].
//!
//! ```text
//! outbound: rescue → route → fault → timeout → retry → per-try timeout → balance → connect
//! inbound:  accept → (telemetry, authz) → app
//! ```
//!
//! Each concern is its own module with a public `Layer`; [`stack`](crate) composes them.

pub mod body;
pub mod error;
pub mod flags;
pub mod target;

pub use mesh_core::BoxError;
