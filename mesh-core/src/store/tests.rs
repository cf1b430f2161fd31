use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, UNIX_EPOCH},
};

use super::{
    StoreError, StoreUrl,
    file::{debounce, relevant_path, remove_documents, split_documents},
    rfc3339_utc,
};
use crate::config::{Kind, ResourceKey};

#[test]
fn formats_rfc3339_timestamps() {
    let at = |secs| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    assert_eq!(
        rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)),
        "1970-01-01T00:00:00Z"
    );
}

#[test]
fn parses_store_urls() {
    let file = |s: &str| s.parse::<StoreUrl>().unwrap();
    assert_eq!(file("file:conf"), StoreUrl::File(PathBuf::from("conf")));
    assert_eq!(
        file("file:/etc/mesh"),
        StoreUrl::File(PathBuf::from("/etc/mesh"))
    );
    assert_eq!(
        file("file:///etc/mesh"),
        StoreUrl::File(PathBuf::from("/etc/mesh"))
    );
    assert_eq!(
        file("file://localhost/etc/mesh"),
        StoreUrl::File(PathBuf::from("/etc/mesh"))
    );
    assert_eq!(file("./conf"), StoreUrl::File(PathBuf::from("./conf")));
    assert_eq!(
        file("/etc/mesh"),
        StoreUrl::File(PathBuf::from("/etc/mesh"))
    );
    assert_eq!(
        file("etcd://a:2379,b:2379"),
        StoreUrl::Etcd {
            endpoints: vec!["a:2379".into(), "b:2379".into()],
            tls: false,
            prefix: None,
            lease_ttl: None,
        }
    );
    assert_eq!(file("etcd://a:2379").to_string(), "etcd://a:2379");
    assert_eq!(
        file("etcd://a:2379,b:1/?lease_ttl=2s&prefix=prod/mesh/"),
        StoreUrl::Etcd {
            endpoints: vec!["a:2379".into(), "b:1".into()],
            tls: false,
            prefix: Some("/prod/mesh".into()),
            lease_ttl: Some(Duration::from_secs(2)),
        }
    );
    assert_eq!(
        file("etcd://a:2379?lease_ttl=1500ms&prefix=/m").to_string(),
        "etcd://a:2379?prefix=/m&lease_ttl=1.5s"
    );
    for bad in [
        "",
        "file:",
        "file://host/x",
        "ftp://x",
        "etcd://",
        "etcd://a:1?lease_ttl=100ms",
        "etcd://a:1?lease_ttl=soon",
        "etcd://a:1?ttl=2s",
    ] {
        let err = bad.parse::<StoreUrl>().unwrap_err();
        assert!(matches!(err, StoreError::BadUrl { .. }), "{bad:?}: {err}");
    }
    let err = super::open("etcds://127.0.0.1:2379").unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the etcds store is not supported yet (use file:DIR)"
    );
    let etcd = super::open("etcd://127.0.0.1:2379?lease_ttl=3s");
    if cfg!(feature = "etcd") {
        assert_eq!(etcd.unwrap().url(), "etcd://127.0.0.1:2379?lease_ttl=3s");
    } else {
        assert!(matches!(etcd, Err(StoreError::Unsupported { .. })));
    }
}

#[test]
fn splits_documents_at_markers() {
    let text = "# head\na: 1\n---\nb: 2\n--- # c\nc: |\n  ---x\n----\n---";
    let docs = split_documents(text);
    assert_eq!(docs.concat(), text);
    assert_eq!(
        docs,
        [
            "# head\na: 1\n",
            "---\nb: 2\n",
            "--- # c\nc: |\n  ---x\n----\n",
            "---"
        ]
    );
    assert_eq!(split_documents(""), [""]);
    assert_eq!(split_documents("---\na: 1\n"), ["---\na: 1\n"]);
}

fn ap(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\nspec: {{}}\n"
    )
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::AuthorizationPolicy, "default", name)
}

#[test]
fn removes_one_document_and_keeps_the_rest_verbatim() {
    let service = "---\n# a Kubernetes Service, not ours\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
    let text = format!("# first\n{}---\n{}{service}", ap("a"), ap("b"));
    let out = remove_documents(&text, &BTreeSet::from([key("b")]), false).unwrap();
    assert_eq!(out, format!("# first\n{}{service}", ap("a")));
    let out = remove_documents(&text, &BTreeSet::from([key("a")]), false).unwrap();
    assert_eq!(out, format!("---\n{}{service}", ap("b")));
}

#[test]
fn rewrites_a_list_that_mixes_kept_and_removed_items() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a}\n  spec: {}\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: b}\n  spec: {}\n";
    let out = remove_documents(text, &BTreeSet::from([key("a")]), false).unwrap();
    let loaded = crate::config::load_str(&out, None);
    assert_eq!(
        loaded.resources.iter().map(|r| r.key()).collect::<Vec<_>>(),
        [key("b")]
    );
    let json = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "a"}, "spec": {}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "b"}, "spec": {}},
    ]})
    .to_string();
    let out = remove_documents(&json, &BTreeSet::from([key("b")]), true).unwrap();
    assert!(out.trim_start().starts_with('{'), "{out}");
    let loaded = crate::config::load_str(&out, None);
    assert_eq!(
        loaded.resources.iter().map(|r| r.key()).collect::<Vec<_>>(),
        [key("a")]
    );
}

#[test]
fn refuses_to_split_a_list_with_foreign_items() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a}\n  spec: {}\n";
    assert!(remove_documents(text, &BTreeSet::from([key("a")]), false).is_err());
}

#[test]
fn debounces_a_burst_into_one_tick() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };
    let (tx, rx) = mpsc::channel();
    let ticks = AtomicUsize::new(0);
    for _ in 0..20 {
        tx.send(()).unwrap();
    }
    drop(tx);
    // The sender is gone after the burst: one tick for it, then `debounce` returns.
    debounce(&rx, || {
        ticks.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(ticks.load(Ordering::SeqCst), 1);
}

#[test]
fn ignores_only_the_stores_own_lock_and_temporary_files() {
    let dir = std::path::Path::new("/cfg");
    let relevant = |p: &str| relevant_path(dir, p.as_ref());
    assert!(relevant("/cfg/default/virtualservices/a.yaml"));
    assert!(relevant("/cfg/default"));
    assert!(!relevant("/cfg/.mesh.lock"));
    assert!(!relevant(
        "/cfg/default/virtualservices/.a.yaml.1.2.mesh-tmp"
    ));
    // A ConfigMap volume swaps its content through hidden paths.
    assert!(relevant("/cfg/..data"));
    assert!(relevant("/cfg/..2024_01_01_00_00_00.1/a.yaml"));
}
