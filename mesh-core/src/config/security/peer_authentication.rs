//! Istio's `PeerAuthentication`: whether a workload accepts plaintext, mTLS or both.
//!
//! Scope: no `selector` applies the policy to the whole namespace (to the whole mesh in the
//! root namespace); a `selector` narrows it to matching workloads. Precedence (workload >
//! namespace > mesh, oldest wins among equals) is applied when the snapshot is compiled, not
//! here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::parse_port;
use crate::{
    config::common::WorkloadSelector,
    validate::{Checker, Validate},
};

/// The spec of a PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Workloads the policy applies to; absent means every workload in the namespace (the mesh,
    /// in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mTLS mode for the workload's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the **workload** port (not the service port), written as a
    /// string (`"8080"`) because YAML and JSON map keys are strings. Requires a `selector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// Mutual TLS settings: one mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode; absent means `UNSET` (inherit from the parent policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// How a workload treats inbound connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent policy; `PERMISSIVE` when there is none.
    #[default]
    Unset,
    /// Plaintext only: mTLS is not used.
    Disable,
    /// Plaintext and mTLS are both accepted.
    Permissive,
    /// Only mTLS with a client certificate is accepted.
    Strict,
}

// === impl PeerAuthentication ===

impl PeerAuthentication {
    /// The workload-wide mode (`UNSET` when `mtls` or its `mode` is absent).
    pub fn mode(&self) -> MtlsMode {
        self.mtls.unwrap_or_default().mode()
    }

    /// The per-port overrides whose key is a valid port, by port number.
    pub fn port_modes(&self) -> impl Iterator<Item = (u16, MtlsMode)> + '_ {
        self.port_level_mtls
            .iter()
            .filter_map(|(port, mtls)| Some((parse_port(port)?, mtls.mode())))
    }

    /// The mode for `port`: its override when there is one, else the workload-wide mode.
    /// (`UNSET` on either level still means "inherit"; resolving it needs the parent policy.)
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.port_modes()
            .find(|(p, _)| *p == port)
            .map_or_else(|| self.mode(), |(_, mode)| mode)
    }
}

impl Validate for PeerAuthentication {
    /// Istio's rules: `portLevelMtls` needs a selector with labels, and every key is a port.
    fn validate(&self, cx: &mut Checker<'_>) {
        if let Some(selector) = &self.selector {
            cx.field("selector", selector);
            if selector.match_labels.is_empty() {
                cx.at("selector").warning(
                    "workload selector specified without labels; it selects every workload",
                );
            }
        }
        if self.port_level_mtls.is_empty() {
            return;
        }
        let has_selector = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        let mut ports = cx.at("portLevelMtls");
        if !has_selector {
            ports.error(
                "requires a selector with labels: a mesh- or namespace-wide policy cannot have port level mTLS",
            );
        }
        for port in self.port_level_mtls.keys() {
            if parse_port(port).is_none() {
                ports.at(port).error(format!(
                    "{port:?} is not a port: keys must be workload port numbers between 1 and 65535"
                ));
            }
        }
    }
}

// === impl MutualTls ===

impl MutualTls {
    /// The mode (`UNSET` when absent).
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or_default()
    }
}

// === impl MtlsMode ===

impl MtlsMode {
    /// The mode as Istio spells it (`STRICT`).
    pub const fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
