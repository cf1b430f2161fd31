//! The configuration `bookinfo up` seeds its config directory with: Istio's
//! `destination-rule-all.yaml` (the subsets v1, v2, v3 the routing tasks name) and
//! `bookinfo-gateway.yaml` (the Gateway selecting `istio: ingressgateway` and the
//! VirtualService that sends `/productpage`, `/static`, `/login`, `/logout` and
//! `/api/v1/products` to productpage), embedded from `examples/bookinfo/istio/` unchanged.

use std::path::Path;

use mesh_core::{
    config::{Resource, load_str},
    store::Store,
};

/// Istio's `destination-rule-all.yaml`.
pub(crate) const DESTINATION_RULES: &str = include_str!("../../istio/destination-rule-all.yaml");

/// Istio's `bookinfo-gateway.yaml`.
pub(crate) const GATEWAY: &str = include_str!("../../istio/bookinfo-gateway.yaml");

/// Istio's `peer-authentication-strict.yaml` (it names no namespace: Istio applies it to the
/// root namespace, which makes it mesh-wide).
pub(crate) const PEER_AUTHENTICATION: &str =
    include_str!("../../istio/peer-authentication-strict.yaml");

/// The root namespace, where a PeerAuthentication without selector applies mesh-wide.
pub(crate) const ROOT_NAMESPACE: &str = "istio-system";

/// The seed resources, read from the embedded files; the PeerAuthentication only when
/// `strict_mtls`.
///
/// # Errors
/// An embedded file does not load (a bug: they are tested).
pub(crate) fn resources(strict_mtls: bool) -> anyhow::Result<Vec<Resource>> {
    let mut out = Vec::new();
    let mut files = vec![
        ("destination-rule-all.yaml", DESTINATION_RULES, None),
        ("bookinfo-gateway.yaml", GATEWAY, None),
    ];
    if strict_mtls {
        files.push((
            "peer-authentication-strict.yaml",
            PEER_AUTHENTICATION,
            Some(ROOT_NAMESPACE),
        ));
    }
    for (file, text, namespace) in files {
        let loaded = load_str(text, Some(Path::new(file)));
        let findings = mesh_core::validate::Findings(loaded.findings);
        if findings.has_errors() {
            anyhow::bail!("the embedded {file} does not load:\n{findings}");
        }
        for mut r in loaded.resources {
            if let Some(ns) = namespace
                && r.metadata.namespace.is_none()
            {
                r.metadata.namespace = Some(ns.to_owned());
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// Applies the seed resources (see [`resources`]) the store lacks (a resource already stored,
/// perhaps edited, is kept as it is). Returns what was done, one `kubectl apply`-style line per resource.
///
/// # Errors
/// The store cannot be read, or refuses the apply (a broken file already in the directory).
pub(crate) async fn seed(store: &dyn Store, strict_mtls: bool) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for r in resources(strict_mtls)? {
        if store.get(&r.key()).await?.is_none() {
            missing.push(r);
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let outcome = store.apply(missing).await?;
    Ok(outcome.results.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use mesh_core::{config::Kind, store::FileStore};

    use super::*;

    #[test]
    fn embedded_files_load() {
        let rs = resources(false).unwrap();
        let kinds: Vec<Kind> = rs.iter().map(Resource::kind).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == Kind::DestinationRule)
                .count(),
            4
        );
        assert!(kinds.contains(&Kind::Gateway));
        assert!(kinds.contains(&Kind::VirtualService));
        assert!(!kinds.contains(&Kind::PeerAuthentication));
        let rs = resources(true).unwrap();
        let pa = rs
            .iter()
            .find(|r| r.kind() == Kind::PeerAuthentication)
            .expect("the PeerAuthentication");
        assert_eq!(pa.metadata.namespace(), ROOT_NAMESPACE);
        assert_eq!(pa.metadata.name, "default");
        assert_eq!(
            PEER_AUTHENTICATION,
            include_str!("../../istio/peer-authentication-strict.yaml")
        );
    }

    #[tokio::test]
    async fn seeds_what_is_missing_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let first = seed(&store, false).await.unwrap();
        assert_eq!(first.len(), 6, "{first:?}");
        assert!(first.iter().all(|l| l.ends_with(" created")), "{first:?}");
        assert!(seed(&store, false).await.unwrap().is_empty());
        let strict = seed(&store, true).await.unwrap();
        assert_eq!(strict.len(), 1, "{strict:?}");
        assert!(
            dir.path()
                .join("istio-system/peerauthentications/default.yaml")
                .is_file()
        );
    }
}
