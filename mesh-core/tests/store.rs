//! The file store and the config watcher, on real temporary directories.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_core::{
    config::{Kind, Resource, ResourceKey, load_str},
    store::{Action, ConfigStatus, ConfigWatcher, FileStore, Store, StoreError},
    validate::Findings,
};

/// How long to wait for the watcher before failing a test.
const PATIENCE: Duration = Duration::from_secs(5);

/// The test snapshot: the keys of the resources it was built from.
type Keys = Vec<ResourceKey>;

/// An AuthorizationPolicy with an empty spec (Istio's allow-nothing policy), valid whatever
/// the spec type grows into.
fn ap(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\nspec: {{}}\n"
    )
}

fn ap_labeled(name: &str, label: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  labels: {{version: {label}}}\nspec: {{}}\n"
    )
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::AuthorizationPolicy, "default", name)
}

/// Where the file store writes an AuthorizationPolicy in `default`.
fn canonical(dir: &Path, name: &str) -> PathBuf {
    FileStore::new(dir).path_of(&key(name))
}

fn parse(yaml: &str) -> Vec<Resource> {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    loaded.resources
}

fn compile(rs: &[Resource]) -> Result<Keys, Findings> {
    Ok(rs.iter().map(Resource::key).collect())
}

async fn start(dir: &Path) -> (Arc<dyn Store>, ConfigWatcher<Keys>) {
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir));
    let watcher = ConfigWatcher::start(store.clone(), compile).await.unwrap();
    (store, watcher)
}

/// Waits, for at most [`PATIENCE`], until `pred` holds for the live snapshot and status;
/// wakes on each status change (every reload that found something new).
async fn wait_until(
    watcher: &ConfigWatcher<Keys>,
    what: &str,
    pred: impl Fn(&Keys, &ConfigStatus) -> bool,
) -> ConfigStatus {
    let mut rx = watcher.status_changes();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = rx.borrow_and_update().clone();
        if pred(&watcher.current(), &status) {
            return status;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "timed out waiting until {what}; snapshot {:?}, status {status:#?}",
                watcher.current()
            );
        }
    }
}

/// Every file below `dir`, hidden ones included, except the lock file.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if entry.file_name() != ".mesh.lock" {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn names(keys: &Keys) -> Vec<&str> {
    keys.iter().map(|k| k.name.as_str()).collect()
}

fn mentions(findings: &Option<Findings>, file: &str) -> bool {
    findings.as_ref().is_some_and(|f| {
        f.errors().any(|e| {
            e.file
                .as_ref()
                .and_then(|o| o.file.as_deref())
                .is_some_and(|p| p.ends_with(file))
        })
    })
}

#[tokio::test]
async fn apply_writes_one_file_and_the_snapshot_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    watcher.ready().await;
    let mut generations = watcher.changed();
    let before = *generations.borrow_and_update();

    let outcome = store.apply(parse(&ap("allow-nothing"))).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Created);
    assert_eq!(
        outcome.to_string(),
        "authorizationpolicy.security.istio.io/allow-nothing created\n"
    );
    let path = tmp
        .path()
        .join("default/authorizationpolicies/allow-nothing.yaml");
    assert_eq!(files(tmp.path()), std::slice::from_ref(&path));

    // The snapshot changes, announced on `changed()`.
    tokio::time::timeout(PATIENCE, generations.changed())
        .await
        .expect("a new snapshot")
        .unwrap();
    assert!(*generations.borrow() > before);
    assert_eq!(names(&watcher.current()), ["allow-nothing"]);

    // list and get show it, with the metadata the store keeps.
    let listing = store.list().await.unwrap();
    assert!(listing.findings.0.is_empty(), "{}", listing.findings);
    assert_eq!(listing.resources.len(), 1);
    let got = store.get(&key("allow-nothing")).await.unwrap().unwrap();
    assert_eq!(got.metadata.resource_version.as_deref(), Some("1"));
    let created = got.metadata.creation_timestamp.clone().unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
    assert_eq!(
        got.source.unwrap().origin.file.as_deref(),
        Some(path.as_path())
    );
    assert!(store.get(&key("other")).await.unwrap().is_none());
}

#[tokio::test]
async fn reapplying_is_unchanged_and_updating_keeps_the_creation_timestamp() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    store.apply(parse(&ap_labeled("a", "v1"))).await.unwrap();
    let path = canonical(tmp.path(), "a");
    let first = fs::read_to_string(&path).unwrap();
    let modified = fs::metadata(&path).unwrap().modified().unwrap();

    let outcome = store.apply(parse(&ap_labeled("a", "v1"))).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Unchanged);
    assert!(!outcome.changed());
    assert_eq!(fs::read_to_string(&path).unwrap(), first);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);

    let outcome = store.apply(parse(&ap_labeled("a", "v2"))).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Configured);
    let old = load_str(&first, None).resources.remove(0);
    let new = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(new.metadata.labels["version"], "v2");
    assert_eq!(new.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(
        new.metadata.creation_timestamp,
        old.metadata.creation_timestamp
    );
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    store.apply(parse(&ap("a"))).await.unwrap();
    // Read, edit, apply: the resourceVersion read comes along and matches.
    let mut edited = store.get(&key("a")).await.unwrap().unwrap();
    edited.metadata.labels.insert("edit".into(), "1".into());
    let outcome = store.apply(vec![edited.clone()]).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Configured);
    // Applying the same stale read again conflicts and changes nothing.
    edited.metadata.labels.insert("edit".into(), "2".into());
    let err = store.apply(vec![edited]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let stored = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(stored.metadata.labels["edit"], "1");
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("2"));
}

#[tokio::test]
async fn invalid_apply_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    watcher.ready().await;
    let mut batch = parse(&ap("fine"));
    batch.extend(parse(&ap("Bad_Name")));
    let err = store.apply(batch).await.unwrap_err();
    let findings = err.findings().expect("StoreError::Invalid");
    assert!(findings.has_errors());
    assert!(
        findings.errors().any(|f| f
            .field
            .as_ref()
            .is_some_and(|p| p.as_str() == "metadata.name")),
        "{findings}"
    );
    assert!(err.to_string().contains("Bad_Name"), "{err}");
    assert_eq!(files(tmp.path()), Vec::<PathBuf>::new());
    assert!(store.list().await.unwrap().resources.is_empty());

    // The same resource twice in one apply is refused too.
    let mut twice = parse(&ap("twin"));
    twice.extend(parse(&ap_labeled("twin", "v2")));
    let err = store.apply(twice).await.unwrap_err();
    assert!(err.to_string().contains("MESH0004"), "{err}");
    assert_eq!(files(tmp.path()), Vec::<PathBuf>::new());
    assert!(watcher.current().is_empty());
}

#[tokio::test]
async fn syntax_error_in_a_dropped_file_keeps_the_last_good_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    store.apply(parse(&ap("good"))).await.unwrap();
    wait_until(&watcher, "good is live", |k, _| names(k) == ["good"]).await;
    let good = watcher.current();
    let generation = watcher.status().generation;

    // A person drops a broken file (an unclosed flow mapping).
    let broken = tmp.path().join("broken.yaml");
    fs::write(
        &broken,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dropped\nspec: {}\n",
    )
    .unwrap();
    let status = wait_until(&watcher, "broken.yaml is refused", |_, s| {
        mentions(&s.last_error, "broken.yaml")
    })
    .await;
    assert!(Arc::ptr_eq(&watcher.current(), &good));
    assert_eq!(status.generation, generation);
    assert_eq!(status.rejected_count, 1);
    let error = status.last_error.unwrap();
    assert!(error.to_string().contains("MESH0002"), "{error}");
    assert!(error.to_string().contains("broken.yaml:"), "{error}");

    // Nothing can be applied on top of a directory that does not parse.
    let err = store.apply(parse(&ap("more"))).await.unwrap_err();
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    assert!(store.get(&key("more")).await.unwrap().is_none());

    // Fixing the file recovers.
    fs::write(&broken, ap("dropped")).unwrap();
    let status = wait_until(&watcher, "the fixed file is live", |k, _| {
        names(k) == ["dropped", "good"]
    })
    .await;
    assert!(status.last_error.is_none());
    assert_eq!(status.generation, generation + 1);
    assert_eq!(status.rejected_count, 1);
}

#[tokio::test]
async fn schema_error_in_a_dropped_file_keeps_the_last_good_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    store.apply(parse(&ap("good"))).await.unwrap();
    wait_until(&watcher, "good is live", |k, _| names(k) == ["good"]).await;
    let good = watcher.current();

    // A name Kubernetes would refuse: validation rejects it.
    let bad_name = tmp.path().join("bad-name.yaml");
    fs::write(&bad_name, ap("Bad_Name")).unwrap();
    let status = wait_until(&watcher, "bad-name.yaml is refused", |_, s| {
        mentions(&s.last_error, "bad-name.yaml")
    })
    .await;
    assert!(Arc::ptr_eq(&watcher.current(), &good));
    let error = status.last_error.unwrap();
    assert!(
        error.errors().any(|f| f
            .field
            .as_ref()
            .is_some_and(|p| p.as_str() == "metadata.name")),
        "{error}"
    );

    // Removing the file recovers the same configuration: no rebuild, the error clears.
    fs::remove_file(&bad_name).unwrap();
    let status = wait_until(&watcher, "the error clears", |_, s| s.last_error.is_none()).await;
    assert!(Arc::ptr_eq(&watcher.current(), &good));
    assert_eq!(status.rejected_count, 1);

    // A field Istio does not have: the loader rejects the document.
    let unknown = tmp.path().join("team/unknown-field.yaml");
    fs::create_dir_all(unknown.parent().unwrap()).unwrap();
    fs::write(
        &unknown,
        ap("extra").replace("spec: {}", "spec: {notAField: 1}"),
    )
    .unwrap();
    let status = wait_until(&watcher, "unknown-field.yaml is refused", |_, s| {
        mentions(&s.last_error, "unknown-field.yaml")
    })
    .await;
    assert!(Arc::ptr_eq(&watcher.current(), &good));
    assert_eq!(status.rejected_count, 2);
    let error = status.last_error.unwrap();
    assert!(error.to_string().contains("spec.notAField"), "{error}");

    fs::write(&unknown, ap("extra")).unwrap();
    wait_until(&watcher, "the fixed file is live", |k, s| {
        names(k) == ["extra", "good"] && s.last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn delete_removes_the_resource_and_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    let mut both = parse(&ap("a"));
    both.extend(parse(&ap("b")));
    store.apply(both).await.unwrap();
    wait_until(&watcher, "a and b are live", |k, _| names(k) == ["a", "b"]).await;

    assert!(store.delete(&key("a")).await.unwrap());
    assert_eq!(
        files(tmp.path()),
        [tmp.path().join("default/authorizationpolicies/b.yaml")]
    );
    wait_until(&watcher, "only b is live", |k, _| names(k) == ["b"]).await;
    assert!(!store.delete(&key("a")).await.unwrap());

    assert!(store.delete(&key("b")).await.unwrap());
    wait_until(&watcher, "nothing is live", |k, _| k.is_empty()).await;
    // The emptied namespace and kind directories go too.
    assert_eq!(files(tmp.path()), Vec::<PathBuf>::new());
    assert!(!tmp.path().join("default").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_applies_all_land_and_no_file_is_torn() {
    const TASKS: usize = 8;
    const PAIRS: usize = 6;
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    // A second handle on the same directory stands for another process: it shares no
    // memory with the first, only the lock file.
    let other: Arc<dyn Store> = Arc::new(FileStore::new(tmp.path()));
    let done = Arc::new(AtomicBool::new(false));

    // Readers that check every observation while the writers run.
    let lister = {
        let (other, done) = (other.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            while !done.load(Ordering::Relaxed) {
                let listing = other.list().await.unwrap();
                assert!(!listing.findings.has_errors(), "{}", listing.findings);
                // Each apply writes a pair; a listing sees both or neither.
                let names: BTreeSet<String> = listing
                    .resources
                    .iter()
                    .map(|r| r.metadata.name.clone())
                    .collect();
                for n in &names {
                    if let Some(stem) = n.strip_suffix("-x") {
                        assert!(
                            names.contains(&format!("{stem}-y")),
                            "half an apply: {names:?}"
                        );
                    }
                }
                seen += 1;
            }
            seen
        })
    };
    let raw_reader = {
        let (dir, done) = (tmp.path().to_path_buf(), done.clone());
        tokio::task::spawn_blocking(move || {
            // Reads without the lock, as a person or another tool would.
            while !done.load(Ordering::Relaxed) {
                for file in files(&dir) {
                    let name = file.file_name().unwrap().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let Ok(text) = fs::read_to_string(&file) else {
                        continue;
                    };
                    let loaded = load_str(&text, Some(&file));
                    assert!(loaded.findings.is_empty(), "torn file {name}: {text:?}");
                    assert_eq!(loaded.resources.len(), 1, "{name}");
                }
            }
        })
    };

    let mut writers = Vec::new();
    for t in 0..TASKS {
        let store = if t % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        writers.push(tokio::spawn(async move {
            for p in 0..PAIRS {
                let mut pair = parse(&ap(&format!("w{t}-p{p}-x")));
                pair.extend(parse(&ap(&format!("w{t}-p{p}-y"))));
                let outcome = store.apply(pair).await.unwrap();
                assert!(outcome.results.iter().all(|r| r.action == Action::Created));
                // Everyone also rewrites one shared resource.
                store
                    .apply(parse(&ap_labeled("shared", &format!("w{t}-p{p}"))))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(lister.await.unwrap() > 0);
    raw_reader.await.unwrap();

    let listing = store.list().await.unwrap();
    assert!(listing.findings.0.is_empty(), "{}", listing.findings);
    assert_eq!(listing.resources.len(), TASKS * PAIRS * 2 + 1);
    let shared = store.get(&key("shared")).await.unwrap().unwrap();
    // Created once, then configured by every later apply (TASKS * PAIRS in all).
    assert_eq!(
        shared.metadata.resource_version,
        Some((TASKS * PAIRS).to_string())
    );
    // No temporary file is left behind.
    let all = files(tmp.path());
    assert_eq!(all.len(), TASKS * PAIRS * 2 + 1, "{all:?}");
    assert!(
        all.iter()
            .all(|f| f.extension().is_some_and(|e| e == "yaml"))
    );
    wait_until(&watcher, "every resource is live", |k, _| {
        k.len() == TASKS * PAIRS * 2 + 1
    })
    .await;
}

#[tokio::test]
async fn apply_moves_a_resource_out_of_a_multi_document_file() {
    let tmp = tempfile::tempdir().unwrap();
    let service = "---\n# not an Istio resource; the mesh ignores it\napiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\n";
    let bundle = tmp.path().join("bundle.yaml");
    fs::write(
        &bundle,
        format!(
            "# the team's policies\n{}---\n{}{service}",
            ap("a"),
            ap("b")
        ),
    )
    .unwrap();
    let (store, watcher) = start(tmp.path()).await;
    wait_until(&watcher, "a and b are live", |k, _| names(k) == ["a", "b"]).await;

    // Changing b moves it to its own file; a and the Service stay, comments included.
    let outcome = store.apply(parse(&ap_labeled("b", "v2"))).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Configured);
    assert_eq!(
        fs::read_to_string(&bundle).unwrap(),
        format!("# the team's policies\n{}{service}", ap("a"))
    );
    assert!(canonical(tmp.path(), "b").is_file());
    let listing = store.list().await.unwrap();
    assert_eq!(listing.resources.len(), 2);
    assert!(!listing.findings.has_errors(), "{}", listing.findings);
    let status = wait_until(&watcher, "b v2 is live", |_, s| s.last_error.is_none()).await;
    assert!(status.last_error.is_none());

    // Applying a unchanged leaves it where it is.
    let outcome = store.apply(parse(&ap("a"))).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Unchanged);
    assert!(!canonical(tmp.path(), "a").exists());

    // Deleting a takes it out of the bundle, which keeps the Service.
    assert!(store.delete(&key("a")).await.unwrap());
    let left = fs::read_to_string(&bundle).unwrap();
    assert!(
        left.contains("kind: Service") && !left.contains("AuthorizationPolicy"),
        "{left}"
    );
    wait_until(&watcher, "only b is live", |k, _| names(k) == ["b"]).await;
}

#[tokio::test]
async fn duplicate_definitions_are_refused_until_applied_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    store.apply(parse(&ap("keep"))).await.unwrap();
    wait_until(&watcher, "keep is live", |k, _| names(k) == ["keep"]).await;

    fs::write(tmp.path().join("one.yaml"), ap_labeled("twin", "one")).unwrap();
    fs::write(tmp.path().join("two.yml"), ap_labeled("twin", "two")).unwrap();
    let status = wait_until(&watcher, "the duplicate is refused", |_, s| {
        s.last_error
            .as_ref()
            .is_some_and(|f| f.to_string().contains("MESH0004"))
    })
    .await;
    assert_eq!(names(&watcher.current()), ["keep"]);
    assert!(status.rejected_count >= 1);

    // Applying the resource settles which definition is meant.
    let outcome = store
        .apply(parse(&ap_labeled("twin", "three")))
        .await
        .unwrap();
    assert_eq!(outcome.results[0].action, Action::Configured);
    assert_eq!(
        files(tmp.path()),
        [canonical(tmp.path(), "keep"), canonical(tmp.path(), "twin"),]
    );
    wait_until(&watcher, "twin is live", |k, s| {
        names(k) == ["keep", "twin"] && s.last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn watcher_creates_a_missing_directory_and_starts_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not/there/yet");
    let (store, watcher) = start(&dir).await;
    assert!(dir.is_dir());
    tokio::time::timeout(PATIENCE, watcher.ready())
        .await
        .expect("an empty directory is a good configuration");
    assert!(watcher.current().is_empty());
    assert_eq!(watcher.status().generation, 1);

    store.apply(parse(&ap("first"))).await.unwrap();
    wait_until(&watcher, "first is live", |k, _| names(k) == ["first"]).await;
}

#[tokio::test]
async fn own_writes_echoed_by_the_file_watcher_do_not_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, watcher) = start(tmp.path()).await;
    let mut revisions = store.watch().await.unwrap();
    store.apply(parse(&ap("a"))).await.unwrap();
    let after_apply = *revisions.borrow_and_update();
    let status = wait_until(&watcher, "a is live", |k, _| names(k) == ["a"]).await;

    // The file watcher reports the write a moment later; the watcher re-reads the same
    // configuration and keeps the snapshot.
    let echoed = wait_until(&watcher, "the echo is read", |_, s| {
        s.revision > after_apply
    })
    .await;
    assert_eq!(echoed.generation, status.generation);
    assert_eq!(names(&watcher.current()), ["a"]);
    assert_eq!(echoed.rejected_count, 0);
}

#[tokio::test]
async fn open_accepts_file_urls_and_plain_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file:{}", tmp.path().display());
    let store = mesh_core::store::open(&url).unwrap();
    assert_eq!(store.url(), url);
    store.apply(parse(&ap("a"))).await.unwrap();
    let plain = mesh_core::store::open(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(plain.list().await.unwrap().resources.len(), 1);
    let err = mesh_core::store::open("etcds://127.0.0.1:2379").unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
}

/// A Kubernetes ConfigMap volume: visible symlinks into a hidden `..data` directory that is
/// swapped by renaming a symlink.
#[cfg(unix)]
#[tokio::test]
async fn configmap_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir(dir.join("..v1")).unwrap();
    fs::write(dir.join("..v1/policy.yaml"), ap_labeled("cm", "v1")).unwrap();
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
    let (_store, watcher) = start(dir).await;
    wait_until(&watcher, "v1 is live", |k, _| names(k) == ["cm"]).await;
    let generation = watcher.status().generation;

    // The kubelet's swap: a new hidden directory, then an atomic rename of `..data`.
    fs::create_dir(dir.join("..v2")).unwrap();
    fs::write(dir.join("..v2/policy.yaml"), ap_labeled("cm", "v2")).unwrap();
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_until(&watcher, "v2 is read", |_, s| s.generation > generation).await;
}

fn workload_entry(name: &str, port: u16) -> Resource {
    parse(&format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: reviews}}}}\n"
    ))
    .remove(0)
}

#[tokio::test]
async fn registration_is_not_blocked_by_a_broken_file_and_the_registry_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, watcher) = start(dir.path()).await;
    store.apply(parse(&ap("keep"))).await.unwrap();
    wait_until(&watcher, "first policy", |k, _| names(k) == ["keep"]).await;
    // Someone drops a broken file: config changes are refused from now on...
    fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
    let status = wait_until(&watcher, "error reported", |_, s| s.last_error.is_some()).await;
    assert!(mentions(&status.last_error, "broken.yaml"));
    let err = store.apply(parse(&ap("new"))).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    // ...but a workload still registers, and its entry reaches the snapshot while the rest
    // of the configuration stays the last good one.
    store
        .register(workload_entry("reviews-v1", 9080))
        .await
        .unwrap();
    wait_until(&watcher, "entry in snapshot", |k, _| {
        let mut n = names(k);
        n.sort_unstable();
        n == ["keep", "reviews-v1"]
    })
    .await;
    assert!(
        watcher.status().last_error.is_some(),
        "the broken file is still reported"
    );
    // Deregistering works the same way.
    let key = ResourceKey::new(Kind::WorkloadEntry, "default", "reviews-v1");
    assert!(store.deregister(&key).await.unwrap());
    wait_until(&watcher, "entry gone", |k, _| names(k) == ["keep"]).await;
    assert!(!store.deregister(&key).await.unwrap());
    // Only WorkloadEntries register.
    let err = store
        .register(parse(&ap("sneaky")).remove(0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotAWorkloadEntry { .. }), "{err}");
    // An invalid entry is refused on its own merits.
    let mut bad = workload_entry("reviews-v2", 9080);
    bad.metadata.name = "Bad_Name".into();
    assert!(matches!(
        store.register(bad).await.unwrap_err(),
        StoreError::Invalid(_)
    ));
}
