//! Validated policy types built from Istio's fields: what the layers are configured with.
//!
//! Ratios are integers (parts per million) so policies derive `Eq + Hash` and an old and a new
//! snapshot can be compared.

pub mod authz;
pub mod balance;
pub mod fault;
pub mod hash;
pub mod outlier;
pub mod peer_authn;
pub mod retry;
