//! The etcd store against a real etcd (`/usr/bin/etcd`, Debian's `etcd-server`) on free
//! loopback ports: the file store's semantics, watches across handles and restarts, leases,
//! and static stability of the config watcher.
#![cfg(feature = "etcd")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, CompactionOptions, GetOptions};
use mesh_core::{
    config::{Kind, Resource, ResourceKey, load_str},
    store::{
        Action, ApplyOutcome, BoxFuture, Changes, ConfigStatus, ConfigWatcher, EtcdStore, Listing,
        Store, StoreError,
    },
    validate::Findings,
};
use testkit::EtcdCluster;
use tokio::time::{Instant, timeout};

/// How long to wait for something that should happen before failing a test.
const PATIENCE: Duration = Duration::from_secs(10);

type Keys = Vec<ResourceKey>;

fn parse(yaml: &str) -> Vec<Resource> {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    loaded.resources
}

fn ap(name: &str) -> Vec<Resource> {
    parse(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\nspec: {{}}\n"
    ))
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::AuthorizationPolicy, "default", name)
}

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
";

const VS_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
";

fn workload_entry(name: &str, port: u16) -> Resource {
    parse(&format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: reviews}}}}\n"
    ))
    .remove(0)
}

fn entry_key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::WorkloadEntry, "default", name)
}

fn compile(rs: &[Resource]) -> Result<Keys, Findings> {
    Ok(rs.iter().map(Resource::key).collect())
}

fn store(etcd: &EtcdCluster) -> Arc<dyn Store> {
    mesh_core::store::open(&etcd.store_url()).unwrap()
}

async fn raw_client(etcd: &EtcdCluster) -> Client {
    Client::connect(etcd.endpoints(), None).await.unwrap()
}

/// Waits until `pred` holds for the watcher, waking on every status change.
async fn wait_until(
    watcher: &ConfigWatcher<Keys>,
    what: &str,
    pred: impl Fn(&Keys, &ConfigStatus) -> bool,
) -> ConfigStatus {
    let mut rx = watcher.status_changes();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = rx.borrow_and_update().clone();
        if pred(&watcher.current(), &status) {
            return status;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting until {what}; status: {status:?}");
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `within` passes; returns the time taken.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn apply_get_list_delete_mirror_the_file_store() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    let outcome = store.apply(ap("a")).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Created);
    assert_eq!(
        outcome.to_string(),
        "authorizationpolicy.security.istio.io/a created\n"
    );
    let stored = store.get(&key("a")).await.unwrap().expect("stored");
    let created = stored
        .metadata
        .creation_timestamp
        .clone()
        .expect("creationTimestamp");
    let v1: i64 = stored
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(stored.metadata.namespace.as_deref(), Some("default"));

    // It lives under the prefix, by kind, namespace and name, as JSON.
    let mut raw = raw_client(&etcd).await;
    let resp = raw
        .get("/mesh/authorizationpolicies/default/a", None)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(resp.kvs()[0].value()).unwrap();
    assert_eq!(value["kind"], "AuthorizationPolicy");
    assert_eq!(resp.kvs()[0].mod_revision(), v1);

    // The same content again is unchanged and writes nothing.
    let again = store.apply(ap("a")).await.unwrap();
    assert_eq!(again.results[0].action, Action::Unchanged);
    assert!(!again.changed());
    let same = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(
        same.metadata.resource_version,
        stored.metadata.resource_version
    );

    // An update keeps the creation timestamp and moves the resourceVersion.
    let mut edited = same.clone();
    edited.metadata.labels.insert("edit".into(), "1".into());
    let outcome = store.apply(vec![edited]).await.unwrap();
    assert_eq!(outcome.results[0].action, Action::Configured);
    let updated = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(
        updated.metadata.creation_timestamp.as_deref(),
        Some(created.as_str())
    );
    let v2: i64 = updated.metadata.resource_version.unwrap().parse().unwrap();
    assert!(v2 > v1);

    store.apply(ap("b")).await.unwrap();
    let listing = store.list().await.unwrap();
    assert_eq!(
        listing
            .resources
            .iter()
            .map(Resource::key)
            .collect::<Vec<_>>(),
        [key("a"), key("b")]
    );
    assert!(listing.findings.0.is_empty(), "{}", listing.findings);
    assert!(listing.revision >= v2.unsigned_abs());

    assert!(store.delete(&key("a")).await.unwrap());
    assert!(!store.delete(&key("a")).await.unwrap());
    assert!(store.get(&key("a")).await.unwrap().is_none());
    assert_eq!(store.list().await.unwrap().resources.len(), 1);
}

#[tokio::test]
async fn invalid_apply_is_refused_and_writes_nothing() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    let mut batch = ap("fine");
    batch.extend(ap("Bad_Name"));
    let err = store.apply(batch).await.unwrap_err();
    assert!(err.findings().is_some_and(Findings::has_errors), "{err}");
    assert!(err.to_string().contains("Bad_Name"), "{err}");
    // A VirtualService routing to a subset nobody defines is refused as a whole.
    let err = store.apply(parse(VS_V1)).await.unwrap_err();
    assert!(err.findings().is_some(), "{err}");
    // The same resource twice in one apply.
    let mut twice = ap("twin");
    twice.extend(ap("twin"));
    let err = store.apply(twice).await.unwrap_err();
    assert!(err.to_string().contains("MESH0004"), "{err}");

    let mut raw = raw_client(&etcd).await;
    let resp = raw
        .get(
            "/mesh/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(resp.count(), 0, "nothing was written");
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    store.apply(ap("a")).await.unwrap();
    let mut edited = store.get(&key("a")).await.unwrap().unwrap();
    edited.metadata.labels.insert("edit".into(), "1".into());
    assert_eq!(
        store.apply(vec![edited.clone()]).await.unwrap().results[0].action,
        Action::Configured
    );
    edited.metadata.labels.insert("edit".into(), "2".into());
    let err = store.apply(vec![edited]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let stored = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!(stored.metadata.labels["edit"], "1");
}

#[tokio::test]
async fn delete_that_breaks_a_reference_is_refused() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    let mut both = parse(DR);
    both.extend(parse(VS_V1));
    store.apply(both).await.unwrap();
    let dr = ResourceKey::new(Kind::DestinationRule, "default", "reviews");
    let err = store.delete(&dr).await.unwrap_err();
    assert!(err.findings().is_some(), "{err}");
    assert!(store.get(&dr).await.unwrap().is_some());
    store
        .delete(&ResourceKey::new(
            Kind::VirtualService,
            "default",
            "reviews",
        ))
        .await
        .unwrap();
    assert!(store.delete(&dr).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_from_two_handles_validate_against_each_other() {
    let etcd = EtcdCluster::single().await.unwrap();
    let a = store(&etcd);
    let b = store(&etcd);
    a.apply(parse(DR)).await.unwrap();
    // One handle adds a route to subset v1 while the other deletes the rule that defines
    // it: whichever commits second must see the first and refuse (or succeed if it is
    // still valid); the store never ends up with a route to a missing subset.
    let dr = ResourceKey::new(Kind::DestinationRule, "default", "reviews");
    let (applied, deleted) = tokio::join!(a.apply(parse(VS_V1)), b.delete(&dr));
    let listing = a.list().await.unwrap();
    let errors = mesh_core::validate::validate_all(&listing.resources);
    assert!(
        !errors.has_errors(),
        "{errors}\napplied {applied:?}\ndeleted {deleted:?}"
    );
    assert!(applied.is_ok() || deleted.is_ok());
}

#[tokio::test]
async fn watch_ticks_on_changes_made_by_another_handle() {
    let etcd = EtcdCluster::single().await.unwrap();
    let writer = store(&etcd);
    let reader = store(&etcd);
    let watcher = ConfigWatcher::start(reader, compile).await.unwrap();
    watcher.ready().await;
    writer.apply(ap("a")).await.unwrap();
    wait_until(&watcher, "a arrives", |keys, _| keys == &[key("a")]).await;
    writer.delete(&key("a")).await.unwrap();
    wait_until(&watcher, "a leaves", |keys, _| keys.is_empty()).await;
}

#[tokio::test]
async fn watch_resumes_after_an_etcd_restart() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let reader = store(&etcd);
    let watcher = ConfigWatcher::start(reader, compile).await.unwrap();
    let writer = store(&etcd);
    writer.apply(ap("before")).await.unwrap();
    wait_until(&watcher, "before arrives", |keys, _| keys.len() == 1).await;

    etcd.stop_member(0).await.unwrap();
    let down = wait_until(&watcher, "the store error is reported", |_, s| {
        s.store_error.is_some()
    })
    .await;
    assert!(
        down.store_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("127.0.0.1"),
        "the error names the store: {:?}",
        down.store_error
    );
    // The last good snapshot stays.
    assert_eq!(watcher.current().as_slice(), &[key("before")]);

    etcd.start_member(0).await.unwrap();
    writer.apply(ap("after")).await.unwrap();
    wait_until(&watcher, "after arrives and the error clears", |keys, s| {
        keys.len() == 2 && s.store_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn relists_when_the_resume_revision_was_compacted() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    // The reader talks to member 2 only; the writer to the others.
    let endpoints = etcd.endpoints();
    let reader = mesh_core::store::open(&format!("etcd://{}", endpoints[2])).unwrap();
    let writer =
        mesh_core::store::open(&format!("etcd://{},{}", endpoints[0], endpoints[1])).unwrap();
    let mut revisions = reader.watch().await.unwrap();
    writer.apply(ap("a")).await.unwrap();
    timeout(PATIENCE, revisions.wait_for(|r| *r > 0))
        .await
        .unwrap()
        .unwrap();
    let seen = *revisions.borrow_and_update();

    // While the reader is cut off, changes happen and history is compacted past them.
    etcd.stop_member(2).await.unwrap();
    for i in 0..5 {
        writer.apply(ap(&format!("b{i}"))).await.unwrap();
    }
    let mut raw = Client::connect(&endpoints[..2], None).await.unwrap();
    let head = compact(&mut raw, true).await;
    assert!(head.unsigned_abs() > seen);
    etcd.start_member(2).await.unwrap();

    // The reader's watch cannot resume from its revision; it lists again and catches up.
    timeout(PATIENCE, revisions.wait_for(|r| *r >= head.unsigned_abs()))
        .await
        .expect("the watch catches up past the compaction")
        .unwrap();
    assert_eq!(reader.list().await.unwrap().resources.len(), 6);
    // And it keeps following changes after that.
    let after = *revisions.borrow_and_update();
    writer.apply(ap("c")).await.unwrap();
    timeout(PATIENCE, revisions.wait_for(|r| *r > after))
        .await
        .expect("changes after the re-list tick")
        .unwrap();
}

#[tokio::test]
async fn registration_lives_with_its_lease() {
    let etcd = EtcdCluster::single().await.unwrap();
    let url = format!("{}?lease_ttl=2s", etcd.store_url());
    let observer = store(&etcd);

    // Registered: visible, with a lease.
    let holder = mesh_core::store::open(&url).unwrap();
    let outcome = holder
        .register(workload_entry("reviews-1", 9080))
        .await
        .unwrap();
    assert_eq!(outcome.results[0].action, Action::Created);
    assert!(
        observer
            .get(&entry_key("reviews-1"))
            .await
            .unwrap()
            .is_some()
    );
    let mut raw = raw_client(&etcd).await;
    let kv = raw
        .get("/mesh/workloadentries/default/reviews-1", None)
        .await
        .unwrap();
    assert_ne!(kv.kvs()[0].lease(), 0, "the entry is attached to a lease");

    // Kept alive past several TTLs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        observer
            .get(&entry_key("reviews-1"))
            .await
            .unwrap()
            .is_some()
    );

    // Re-registering the same content is unchanged and keeps the lease.
    let again = holder
        .register(workload_entry("reviews-1", 9080))
        .await
        .unwrap();
    assert_eq!(again.results[0].action, Action::Unchanged);

    // The holder dies without deregistering: gone within the TTL (plus etcd's expiry tick).
    drop(holder);
    let took = eventually(Duration::from_secs(4), "the entry expires", || async {
        observer
            .get(&entry_key("reviews-1"))
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(took <= Duration::from_secs(4), "{took:?}");

    // Deregistering removes at once.
    let holder = mesh_core::store::open(&url).unwrap();
    holder
        .register(workload_entry("reviews-2", 9081))
        .await
        .unwrap();
    assert!(holder.deregister(&entry_key("reviews-2")).await.unwrap());
    assert!(
        observer
            .get(&entry_key("reviews-2"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!holder.deregister(&entry_key("reviews-2")).await.unwrap());

    // Only WorkloadEntries register, and an invalid one is refused.
    let err = holder.register(ap("x").remove(0)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAWorkloadEntry { .. }), "{err}");
}

#[tokio::test]
async fn registration_is_written_again_after_its_lease_expired_during_an_outage() {
    let etcd = EtcdCluster::single().await.unwrap();
    let holder = EtcdStore::new(etcd.endpoints()).lease_ttl(Duration::from_secs(2));
    holder
        .register(workload_entry("reviews-1", 9080))
        .await
        .unwrap();
    let first = holder.lease_of(&entry_key("reviews-1")).await.unwrap();
    // Revoke the lease behind the holder's back, as if it had expired while etcd was
    // unreachable: the keep-alive finds it gone, grants a new one and writes the entry again.
    // It finds out either on its open stream or, when the revoke comes first, when it opens
    // the stream (etcd-client then fails with "lease not found"; that used to be retried
    // forever with the dead lease, failing this test about one run in three).
    let mut raw = raw_client(&etcd).await;
    raw.lease_revoke(first).await.unwrap();
    let observer = store(&etcd);
    eventually(PATIENCE, "the entry is back with a new lease", || async {
        observer
            .get(&entry_key("reviews-1"))
            .await
            .unwrap()
            .is_some()
            && holder.lease_of(&entry_key("reviews-1")).await != Some(first)
    })
    .await;
}

#[tokio::test]
async fn registration_ignores_broken_configuration() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    // Someone writes garbage under the prefix with etcdctl.
    let mut raw = raw_client(&etcd).await;
    raw.put("/mesh/virtualservices/default/broken", "{not: [json", None)
        .await
        .unwrap();
    let listing = store.list().await.unwrap();
    assert!(listing.findings.has_errors());
    assert!(
        listing
            .findings
            .to_string()
            .contains("etcd:/mesh/virtualservices/default/broken"),
        "{}",
        listing.findings
    );
    // Config changes are refused while it is there; registrations are not.
    assert!(store.apply(ap("a")).await.is_err());
    store
        .register(workload_entry("reviews-1", 9080))
        .await
        .unwrap();
    assert!(store.deregister(&entry_key("reviews-1")).await.unwrap());
}

#[tokio::test]
async fn config_watcher_keeps_serving_while_every_member_is_down() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    let writer = store(&etcd);
    writer.apply(ap("a")).await.unwrap();
    let watcher = ConfigWatcher::start(store(&etcd), compile).await.unwrap();
    wait_until(&watcher, "a is live", |keys, _| keys.len() == 1).await;

    // One member down: nothing changes, changes still flow.
    etcd.stop_member(0).await.unwrap();
    writer.apply(ap("b")).await.unwrap();
    wait_until(&watcher, "b arrives with a member down", |keys, _| {
        keys.len() == 2
    })
    .await;
    assert!(watcher.status().store_error.is_none());

    // Every member down: the last snapshot keeps serving and the error is reported.
    etcd.stop_all().await;
    let status = wait_until(&watcher, "the outage is reported", |_, s| {
        s.store_error.is_some()
    })
    .await;
    assert_eq!(watcher.current().len(), 2);
    let dump = serde_json::to_value(&status).unwrap();
    assert!(
        dump["storeError"]
            .as_str()
            .is_some_and(|e| e.contains("etcd://")),
        "{dump}"
    );

    // Back: the watcher re-syncs, including a change made right after the return.
    etcd.start_all().await.unwrap();
    writer.apply(ap("c")).await.unwrap();
    wait_until(&watcher, "c arrives and the error clears", |keys, s| {
        keys.len() == 3 && s.store_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn an_apply_larger_than_one_etcd_transaction_lands_whole() {
    let etcd = EtcdCluster::single().await.unwrap();
    let store = store(&etcd);
    // etcd takes at most 128 operations per transaction.
    let many: Vec<Resource> = (0..300).flat_map(|i| ap(&format!("p{i}"))).collect();
    let outcome = store.apply(many.clone()).await.unwrap();
    assert_eq!(outcome.results.len(), 300);
    assert!(outcome.results.iter().all(|r| r.action == Action::Created));
    assert_eq!(store.list().await.unwrap().resources.len(), 300);
    let again = store.apply(many).await.unwrap();
    assert!(!again.changed());
}

#[tokio::test]
async fn an_idle_watcher_does_not_reload_in_a_loop() {
    let etcd = EtcdCluster::single().await.unwrap();
    let shared = store(&etcd);
    shared.apply(ap("a")).await.unwrap();
    let mut ticks = shared.watch().await.unwrap();
    let watcher = ConfigWatcher::start(shared.clone(), compile).await.unwrap();
    watcher.ready().await;
    // The watcher's own reads must not tick the channel it reloads on, and the connection
    // must stay up while idle: etcd closes connections that ping more often than its
    // --grpc-keepalive-min-time (5 s by default) after three pings (the watch then broke
    // and every watcher read again, every 4 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    ticks.borrow_and_update();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !ticks.has_changed().unwrap(),
        "the store ticked with no change"
    );
    assert_eq!(watcher.status().generation, 1);
}

/// A store that counts how a watcher reads it: whole listings, and deltas.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Store>,
    lists: AtomicUsize,
    deltas: AtomicUsize,
}

impl Store for Counting {
    fn list(&self) -> BoxFuture<'_, Result<Listing, StoreError>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list()
    }
    fn get<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Resource>, StoreError>> {
        self.inner.get(key)
    }
    fn apply(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        self.inner.apply(resources)
    }
    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.delete(key)
    }
    fn register(&self, entry: Resource) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        self.inner.register(entry)
    }
    fn deregister<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.deregister(key)
    }
    fn watch(&self) -> BoxFuture<'_, Result<tokio::sync::watch::Receiver<u64>, StoreError>> {
        self.inner.watch()
    }
    fn url(&self) -> String {
        self.inner.url()
    }
    fn changes_since(&self, revision: u64) -> BoxFuture<'_, Result<Option<Changes>, StoreError>> {
        Box::pin(async move {
            let changes = self.inner.changes_since(revision).await?;
            if changes.is_some() {
                self.deltas.fetch_add(1, Ordering::SeqCst);
            }
            Ok(changes)
        })
    }
}

/// The snapshot is the resources themselves, so it can be compared with a listing.
fn compile_all(rs: &[Resource]) -> Result<Vec<Resource>, Findings> {
    Ok(rs.to_vec())
}

/// Waits until the watcher's snapshot is exactly what a fresh handle lists.
async fn converges(etcd: &EtcdCluster, watcher: &ConfigWatcher<Vec<Resource>>, what: &str) {
    let fresh = mesh_core::store::open(&etcd.store_url()).unwrap();
    let listing = fresh.list().await.unwrap();
    let mut rx = watcher.status_changes();
    let deadline = Instant::now() + PATIENCE;
    while *watcher.current() != listing.resources {
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            let have: Vec<_> = watcher.current().iter().map(Resource::key).collect();
            let want: Vec<_> = listing.resources.iter().map(Resource::key).collect();
            panic!(
                "{what}: the watcher drifted from the store\n have {have:?}\n want {want:?}\n status {:?}",
                watcher.status()
            );
        }
    }
    assert!(watcher.status().last_error.is_none(), "{what}");
}

/// The JSON etcd would hold for an AuthorizationPolicy `name` with one rule allowing `path`.
fn raw_policy(name: &str, path: &str) -> String {
    format!(
        r#"{{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"rules":[{{"to":[{{"operation":{{"paths":["{path}"]}}}}]}}]}}}}"#
    )
}

#[tokio::test]
async fn incremental_reloads_never_drift_from_the_store() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    let endpoints = etcd.endpoints();
    // The watcher talks to member 2 only, so it can be cut off; writers to the others.
    let counting = Arc::new(Counting {
        inner: mesh_core::store::open(&format!("etcd://{}", endpoints[2])).unwrap(),
        lists: AtomicUsize::new(0),
        deltas: AtomicUsize::new(0),
    });
    let writer =
        mesh_core::store::open(&format!("etcd://{},{}", endpoints[0], endpoints[1])).unwrap();
    let mut raw = Client::connect(&endpoints[..2], None).await.unwrap();
    for i in 0..20 {
        writer.apply(ap(&format!("p{i}"))).await.unwrap();
    }
    let watcher = ConfigWatcher::start(counting.clone(), compile_all)
        .await
        .unwrap();
    watcher.ready().await;
    converges(&etcd, &watcher, "start").await;
    writer.apply(ap("warm-up")).await.unwrap();
    eventually(PATIENCE, "the first delta", || async {
        counting.deltas.load(Ordering::SeqCst) > 0
    })
    .await;
    converges(&etcd, &watcher, "the first delta").await;
    let lists_at_start = counting.lists.load(Ordering::SeqCst);

    // A burst, with no pause: applies, deletes, registrations, and etcdctl-style raw writes,
    // including keys deleted right after they were written and a value overwritten twice.
    let registrar = mesh_core::store::open(&format!("etcd://{}", endpoints[0])).unwrap();
    for i in 0..10 {
        writer.apply(ap(&format!("q{i}"))).await.unwrap();
        if i % 3 == 0 {
            writer.delete(&key(&format!("q{i}"))).await.unwrap();
        }
        writer.delete(&key(&format!("p{i}"))).await.unwrap();
        registrar
            .register(workload_entry(&format!("we-{i}"), 9000 + i))
            .await
            .unwrap();
        let k = format!("/mesh/authorizationpolicies/default/raw{i}");
        raw.put(k.as_str(), raw_policy(&format!("raw{i}"), "/a"), None)
            .await
            .unwrap();
        raw.put(k.as_str(), raw_policy(&format!("raw{i}"), "/b"), None)
            .await
            .unwrap();
        if i % 2 == 0 {
            raw.delete(k.as_str(), None).await.unwrap();
        }
        if i % 4 == 1 {
            registrar
                .deregister(&entry_key(&format!("we-{}", i - 1)))
                .await
                .unwrap();
        }
    }
    converges(&etcd, &watcher, "after the burst").await;
    assert!(
        counting.deltas.load(Ordering::SeqCst) > 0,
        "the watcher applied deltas"
    );
    assert_eq!(
        counting.lists.load(Ordering::SeqCst),
        lists_at_start,
        "no whole listing while the watch is healthy ({} deltas)",
        counting.deltas.load(Ordering::SeqCst)
    );

    // A compaction while the watch runs changes nothing it has to know.
    compact(&mut raw, false).await;
    writer.apply(ap("after-compaction")).await.unwrap();
    writer.delete(&key("q1")).await.unwrap();
    converges(&etcd, &watcher, "after a compaction").await;

    // Cut off while changes happen and history is compacted past them: the watcher lists
    // again (its watch cannot resume), then follows deltas again.
    etcd.stop_member(2).await.unwrap();
    wait_until_error(&watcher).await;
    for i in 0..5 {
        writer.apply(ap(&format!("r{i}"))).await.unwrap();
        writer.delete(&key(&format!("q{}", 2 * i + 2))).await.ok();
        let k = format!("/mesh/authorizationpolicies/default/gone{i}");
        raw.put(k.as_str(), raw_policy(&format!("gone{i}"), "/x"), None)
            .await
            .unwrap();
        raw.delete(k.as_str(), None).await.unwrap();
    }
    compact(&mut raw, true).await;
    etcd.start_member(2).await.unwrap();
    converges(&etcd, &watcher, "after the outage and the compaction").await;
    let deltas = counting.deltas.load(Ordering::SeqCst);
    writer.apply(ap("last")).await.unwrap();
    writer.delete(&key("r0")).await.unwrap();
    converges(&etcd, &watcher, "after the re-list").await;
    // The watch comes back on its own schedule (its back-off reaches 2 s), and until it does
    // the watcher converges by reading the whole prefix: keep changing the store until a
    // change arrives as a delta.
    let deadline = Instant::now() + PATIENCE;
    let mut more = 0;
    while counting.deltas.load(Ordering::SeqCst) <= deltas {
        assert!(
            Instant::now() < deadline,
            "no delta within {PATIENCE:?} after the re-list ({more} more writes)"
        );
        writer.apply(ap(&format!("more{more}"))).await.unwrap();
        more += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    converges(&etcd, &watcher, "back on deltas").await;
}

async fn wait_until_error(watcher: &ConfigWatcher<Vec<Resource>>) {
    let mut rx = watcher.status_changes();
    timeout(PATIENCE, rx.wait_for(|s| s.store_error.is_some()))
        .await
        .expect("the outage is reported")
        .unwrap();
}

/// Compacts etcd's history up to its current revision (`physical`: and waits until it is
/// removed from the backend); returns that revision.
async fn compact(raw: &mut Client, physical: bool) -> i64 {
    let head = raw
        .get("/mesh/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let options = physical.then(|| CompactionOptions::new().with_physical());
    raw.compact(head, options).await.unwrap();
    head
}
