//! Which PeerAuthentication mode applies to a workload, with Istio's precedence.
//!
//! Istio's `ComposePeerAuthentication`: of the policies that select a workload, the oldest
//! mesh-wide one (root namespace, no selector), the oldest namespace-wide one (no selector)
//! and the oldest workload one (a selector with labels, not in the root namespace) are kept;
//! newer ones at the same level are ignored. The mode starts as `PERMISSIVE`, then each level
//! that sets a mode (not `UNSET`) overrides the one above it: mesh, namespace, workload.
//! `portLevelMtls` of the workload policy overrides per port, `UNSET` there meaning the
//! workload's mode.
//!
//! The API's own text contradicts itself on selector policies in the root namespace (the
//! header says they are ignored, the field doc says they match workloads everywhere). Istio's
//! code ignores them, and so do we.

use std::collections::BTreeMap;

use crate::config::{
    Resource, ResourceKey, Spec,
    security::{PeerAuthentication, peer_authentication::MtlsMode},
};

/// The mTLS mode a workload enforces, per port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveMtls {
    /// The workload's mode (never `UNSET`).
    pub mode: MtlsMode,
    /// Per-port modes (never `UNSET`).
    pub per_port: BTreeMap<u16, MtlsMode>,
    /// The policies that decided, most specific last.
    pub decided_by: Vec<ResourceKey>,
}

impl EffectiveMtls {
    /// The mode on `port`.
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }
}

/// Composes the mode for a workload in `namespace` with `labels`.
///
/// # Examples
/// ```
/// use std::collections::BTreeMap;
/// use mesh_core::{config::{load_str, security::peer_authentication::MtlsMode}, policy::peer_authn::compose};
/// let pa = load_str("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
///     metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n", None);
/// let m = compose(&pa.resources, "istio-system", "default", &BTreeMap::new());
/// assert_eq!(m.mode, MtlsMode::Strict);
/// ```
pub fn compose(
    resources: &[Resource],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> EffectiveMtls {
    let older = |a: &Resource, b: &Resource| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            < (&b.metadata.creation_timestamp, &b.metadata.name)
    };
    let mut mesh: Option<(&Resource, &PeerAuthentication)> = None;
    let mut ns: Option<(&Resource, &PeerAuthentication)> = None;
    let mut workload: Option<(&Resource, &PeerAuthentication)> = None;
    for r in resources {
        let Spec::PeerAuthentication(pa) = &r.spec else {
            continue;
        };
        let rns = r.namespace();
        if rns != namespace && rns != root_namespace {
            continue;
        }
        let labelled = pa
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        let slot = if !labelled {
            if rns == root_namespace {
                &mut mesh
            } else {
                &mut ns
            }
        } else if rns != root_namespace {
            if !pa.selector.as_ref().is_some_and(|s| s.matches(labels)) {
                continue;
            }
            &mut workload
        } else {
            // A selector policy in the root namespace: ignored, as Istio's code does.
            continue;
        };
        if slot.is_none_or(|(cur, _)| older(r, cur)) {
            *slot = Some((r, pa));
        }
    }
    let mut out = EffectiveMtls {
        mode: MtlsMode::Permissive,
        per_port: BTreeMap::new(),
        decided_by: Vec::new(),
    };
    for (r, pa) in [mesh, ns].into_iter().flatten() {
        if pa.mode() != MtlsMode::Unset {
            out.mode = pa.mode();
            out.decided_by.push(r.key());
        }
    }
    if let Some((r, pa)) = workload {
        if pa.mode() != MtlsMode::Unset {
            out.mode = pa.mode();
        }
        for (port, mode) in pa.port_modes() {
            let mode = if mode == MtlsMode::Unset {
                out.mode
            } else {
                mode
            };
            out.per_port.insert(port, mode);
        }
        if pa.mode() != MtlsMode::Unset || !out.per_port.is_empty() {
            out.decided_by.push(r.key());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn pa(name: &str, ns: &str, ts: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{ts}\"}}\nspec: {spec}\n---\n"
        )
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    #[test]
    fn precedence_mesh_namespace_workload_port() {
        let text = [
            pa("mesh", "istio-system", "2020-01-01T00:00:00Z", "{mtls: {mode: STRICT}}"),
            pa("ns", "shop", "2020-01-01T00:00:00Z", "{mtls: {mode: PERMISSIVE}}"),
            pa(
                "api",
                "shop",
                "2020-01-01T00:00:00Z",
                "{selector: {matchLabels: {app: api}}, mtls: {mode: UNSET}, portLevelMtls: {'8080': {mode: DISABLE}, '9090': {}}}",
            ),
        ]
        .concat();
        let loaded = load_str(&text, None);
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let rs = &loaded.resources;
        // Mesh-wide STRICT applies to another namespace.
        assert_eq!(
            compose(rs, "istio-system", "other", &labels("x")).mode,
            MtlsMode::Strict
        );
        // The namespace policy overrides the mesh.
        let web = compose(rs, "istio-system", "shop", &labels("web"));
        assert_eq!(web.mode, MtlsMode::Permissive);
        // The workload policy: UNSET inherits the namespace's mode; ports override.
        let api = compose(rs, "istio-system", "shop", &labels("api"));
        assert_eq!(api.mode, MtlsMode::Permissive);
        assert_eq!(api.mode_for_port(8080), MtlsMode::Disable);
        assert_eq!(api.mode_for_port(9090), MtlsMode::Permissive);
        assert_eq!(api.mode_for_port(1), MtlsMode::Permissive);
    }

    #[test]
    fn oldest_wins_and_root_selector_policies_are_ignored() {
        let text = [
            pa(
                "newer",
                "shop",
                "2021-01-01T00:00:00Z",
                "{mtls: {mode: DISABLE}}",
            ),
            pa(
                "older",
                "shop",
                "2020-01-01T00:00:00Z",
                "{mtls: {mode: STRICT}}",
            ),
            pa(
                "root-sel",
                "istio-system",
                "2019-01-01T00:00:00Z",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
            ),
        ]
        .concat();
        let loaded = load_str(&text, None);
        let m = compose(&loaded.resources, "istio-system", "shop", &labels("web"));
        assert_eq!(m.mode, MtlsMode::Strict);
        assert_eq!(m.decided_by[0].name, "older");
    }

    #[test]
    fn nothing_means_permissive() {
        let m = compose(&[], "istio-system", "default", &BTreeMap::new());
        assert_eq!(m.mode, MtlsMode::Permissive);
        assert!(m.decided_by.is_empty());
    }
}
