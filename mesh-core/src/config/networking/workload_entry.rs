//! Istio's `WorkloadEntry`: one workload instance (an endpoint) with its labels and identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The spec of a WorkloadEntry (also used inline as a ServiceEntry endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address or DNS name (required unless `network` is set).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port name → port number, overriding the service's port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels (`app`, `version`…), matched by subsets and selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network the endpoint is on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Locality (`region/zone/subzone`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The service account (identity) of the workload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}
