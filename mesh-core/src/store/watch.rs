//! Keeps a compiled snapshot of a store's configuration up to date.
//!
//! [`ConfigWatcher`] lists the store, validates what it read as a whole, compiles it with a
//! function the caller gives (so any snapshot type plugs in) and swaps the result in
//! atomically ([`ArcSwap`]); readers call [`current`](ConfigWatcher::current) on the request
//! path and never wait for a lock. It reloads on every tick of [`Store::watch`].
//!
//! A change that does not parse, does not validate or does not compile never replaces the
//! last good snapshot: it is logged (`tracing::warn!`), counted, and kept in the
//! [`ConfigStatus`] for the admin endpoint, until a later change is accepted.

use std::{cmp::Ordering, fmt, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};

use super::{Changes, Listing, Store, StoreError};
use crate::{
    config::{Kind, Resource, ResourceKey},
    validate::{Finding, Findings, analysis, check_resource, validate_all},
};

/// A watcher reloads once no tick has arrived for this long after the first …
const COALESCE_QUIET: Duration = Duration::from_millis(10);

/// … or this long after the first tick, whichever comes first.
const COALESCE_MAX: Duration = Duration::from_millis(100);

/// The function that turns validated resources into a snapshot.
type Compile<T> = dyn Fn(&[Resource]) -> Result<T, Findings> + Send + Sync;

/// Where a [`ConfigWatcher`] stands: what is live and what was last refused.
///
/// Serializes to JSON for the admin endpoint.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ConfigStatus {
    /// The store, as a URL.
    pub store: String,
    /// How many snapshots have been built from the store; 0 until the first good config is
    /// loaded (the live snapshot is then the one compiled from no resources).
    pub generation: u64,
    /// The store revision last read.
    pub revision: u64,
    /// The store revision of the live snapshot's configuration (or of a later, identical
    /// one), if a good config was ever loaded.
    pub last_good_revision: Option<u64>,
    /// How many resources the live snapshot was built from.
    pub resources: usize,
    /// Warnings about the live configuration.
    pub warnings: Findings,
    /// Why the most recent change was refused; `None` once a later change is accepted.
    pub last_error: Option<Findings>,
    /// How many changes have been refused since the watcher started (a change is counted
    /// once however many times it is re-read).
    pub rejected_count: u64,
    /// The last failure to read the store at all (the directory is unreadable, every etcd
    /// member is unreachable); `None` once a read succeeds. While it is set the live
    /// snapshot is the last good one, and the watcher keeps trying as the store ticks.
    #[serde(serialize_with = "ser_store_error")]
    pub store_error: Option<StoreError>,
}

fn ser_store_error<S: serde::Serializer>(e: &Option<StoreError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

/// Watches a [`Store`] and keeps a compiled, validated snapshot of it.
///
/// Cloning is cheap; the background task stops when the last clone is dropped.
///
/// # Incremental reloads
/// The watcher keeps its own copy of the stored set. When the store can say what changed
/// since the watcher's last read ([`Store::changes_since`]; the etcd store answers from its
/// watch), the watcher applies that delta instead of listing everything again, and checks
/// the schema of the changed resources only; the analysis across resources and `compile`
/// still see the whole set. It lists the whole store on start, when the store cannot say
/// (the file store; the etcd store before its watch has read the prefix, while the watch is
/// interrupted, after a compaction), and on [`reload`](Self::reload). Ticks of the store that
/// come less than 10 ms apart (an apply written as several etcd transactions, a burst of
/// registrations) make one reload, delayed by at most 100 ms after the first.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mesh_core::store::StoreError> {
/// use std::sync::Arc;
/// use mesh_core::{config::{Resource, ResourceKey}, store::{ConfigWatcher, FileStore, Store}};
/// let dir = std::env::temp_dir().join(format!("mesh-watch-doc-{}", std::process::id()));
/// let store: Arc<dyn Store> = Arc::new(FileStore::new(&dir));
/// // Any snapshot type: here, the keys of the resources.
/// let watcher = ConfigWatcher::start(store, |rs: &[Resource]| {
///     Ok(rs.iter().map(Resource::key).collect::<Vec<ResourceKey>>())
/// })
/// .await?;
/// watcher.ready().await;
/// assert!(watcher.current().is_empty());
/// assert_eq!(watcher.status().generation, 1);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
pub struct ConfigWatcher<T> {
    shared: Arc<Shared<T>>,
    _task: Arc<AbortOnDrop>,
}

struct Shared<T> {
    store: Arc<dyn Store>,
    compile: Box<Compile<T>>,
    current: Arc<ArcSwap<T>>,
    generation: watch::Sender<u64>,
    status: watch::Sender<ConfigStatus>,
    /// Serializes reloads; what the watcher knows of the store.
    state: Mutex<State>,
}

/// What a watcher knows of its store.
#[derive(Default)]
struct State {
    /// The store's content as last read; `None` until a read succeeds.
    listed: Option<Listed>,
    /// Which configuration the live snapshot was compiled from.
    good: Good,
}

/// The store's content as last read, kept current by applying the store's changes.
struct Listed {
    /// The resources, sorted by key.
    resources: Vec<Resource>,
    /// The schema findings of each resource ([`check_resource`]), in the same order, so that
    /// only changed resources are checked again.
    schema: Vec<Vec<Finding>>,
    /// The listing's own findings (stored content that could not be read).
    findings: Findings,
    /// The store revision it reflects.
    revision: u64,
}

/// The configuration of the live snapshot.
#[derive(Default)]
enum Good {
    /// None yet: the live snapshot is the one compiled from no resources.
    #[default]
    None,
    /// The listed resources.
    Listed,
    /// These resources, while the listed ones are refused.
    Kept(Vec<Resource>),
}

/// What a read did to the listed resources: enough to restore the previous set, which is
/// the live configuration when the new one is refused, without keeping a copy of it.
enum Undo {
    /// The resources did not change.
    Unchanged,
    /// The whole set was replaced; the previous one.
    Whole(Vec<Resource>),
    /// Edits, in the order they were made.
    Edits(Vec<Edit>),
}

enum Edit {
    Inserted(ResourceKey),
    Replaced(Resource),
    Removed(Resource),
}

/// Orders a resource against a key as [`ResourceKey`]'s `Ord` does, without building the key.
fn cmp_key(r: &Resource, key: &ResourceKey) -> Ordering {
    (r.kind(), r.namespace(), r.metadata.name.as_str()).cmp(&(
        key.kind,
        key.namespace.as_str(),
        key.name.as_str(),
    ))
}

/// Orders two resources by key.
fn cmp_resources(a: &Resource, b: &Resource) -> Ordering {
    (a.kind(), a.namespace(), a.metadata.name.as_str()).cmp(&(
        b.kind(),
        b.namespace(),
        b.metadata.name.as_str(),
    ))
}

// === impl Listed ===

impl Listed {
    /// A full listing, re-using the schema findings of `old` for resources that did not
    /// change; with what it did to `old`'s resources.
    fn from_listing(listing: Listing, old: Option<Listed>) -> (Self, Undo, bool) {
        let (old_resources, mut old_schema, old_findings) = match old {
            Some(o) => (o.resources, o.schema, Some(o.findings)),
            None => (Vec::new(), Vec::new(), None),
        };
        let findings_changed = old_findings.as_ref() != Some(&listing.findings);
        // Both are sorted by key: walk them together.
        let mut j = 0;
        let mut same = old_resources.len() == listing.resources.len();
        let schema = listing
            .resources
            .iter()
            .map(|r| {
                while j < old_resources.len()
                    && cmp_resources(&old_resources[j], r) == Ordering::Less
                {
                    j += 1;
                }
                match old_resources.get(j) {
                    Some(o) if o == r => {
                        j += 1;
                        std::mem::take(&mut old_schema[j - 1])
                    }
                    _ => {
                        same = false;
                        check_resource(r)
                    }
                }
            })
            .collect();
        let undo = if same && old_findings.is_some() {
            Undo::Unchanged
        } else {
            Undo::Whole(old_resources)
        };
        let listed = Self {
            resources: listing.resources,
            schema,
            findings: listing.findings,
            revision: listing.revision,
        };
        (listed, undo, findings_changed)
    }

    /// Applies the store's changes; what it did, and whether the listing's findings changed.
    fn apply(&mut self, changes: Changes) -> (Undo, bool) {
        let mut edits = Vec::new();
        for key in changes.deleted {
            if let Ok(i) = self.resources.binary_search_by(|r| cmp_key(r, &key)) {
                self.schema.remove(i);
                edits.push(Edit::Removed(self.resources.remove(i)));
            }
        }
        for r in changes.applied {
            match self.resources.binary_search_by(|x| cmp_resources(x, &r)) {
                Ok(i) if self.resources[i] == r => {}
                Ok(i) => {
                    self.schema[i] = check_resource(&r);
                    edits.push(Edit::Replaced(std::mem::replace(&mut self.resources[i], r)));
                }
                Err(i) => {
                    self.schema.insert(i, check_resource(&r));
                    edits.push(Edit::Inserted(r.key()));
                    self.resources.insert(i, r);
                }
            }
        }
        let findings_changed = self.findings != changes.findings;
        self.findings = changes.findings;
        self.revision = self.revision.max(changes.revision);
        let undo = if edits.is_empty() {
            Undo::Unchanged
        } else {
            Undo::Edits(edits)
        };
        (undo, findings_changed)
    }

    /// Everything [`validate_all`] reports on the resources, plus the listing's findings,
    /// sorted: with the schema checks of unchanged resources re-used.
    fn validate(&self) -> Findings {
        let mut findings = self.findings.clone();
        findings.0.extend(self.schema.iter().flatten().cloned());
        findings.0.extend(analysis::analyze(&self.resources));
        findings.sort();
        findings
    }
}

impl Undo {
    /// The resources before the read that made this, given the ones after it.
    fn previous(self, now: &[Resource]) -> Vec<Resource> {
        match self {
            Undo::Unchanged => now.to_vec(),
            Undo::Whole(old) => old,
            Undo::Edits(edits) => {
                let mut out = now.to_vec();
                for edit in edits.into_iter().rev() {
                    match edit {
                        Edit::Inserted(key) => {
                            if let Ok(i) = out.binary_search_by(|r| cmp_key(r, &key)) {
                                out.remove(i);
                            }
                        }
                        Edit::Replaced(old) => {
                            if let Ok(i) = out.binary_search_by(|r| cmp_resources(r, &old)) {
                                out[i] = old;
                            }
                        }
                        Edit::Removed(old) => {
                            if let Err(i) = out.binary_search_by(|r| cmp_resources(r, &old)) {
                                out.insert(i, old);
                            }
                        }
                    }
                }
                out
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl ConfigWatcher ===

impl<T: Send + Sync + 'static> ConfigWatcher<T> {
    /// Starts watching `store`, compiling each good configuration with `compile`.
    ///
    /// Loads the configuration once before returning, so [`current`](Self::current) is the
    /// stored configuration right away when it is good; when it is not, the live snapshot
    /// is `compile(&[])` until a good one arrives (await [`ready`](Self::ready) to wait for
    /// it). Must be called within a Tokio runtime: a task reloads on every store change.
    ///
    /// # Errors
    /// What [`Store::watch`] fails with (the directory cannot be created or watched), or
    /// [`StoreError::Invalid`] when `compile` refuses even an empty configuration.
    pub async fn start<F>(store: Arc<dyn Store>, compile: F) -> Result<Self, StoreError>
    where
        F: Fn(&[Resource]) -> Result<T, Findings> + Send + Sync + 'static,
    {
        let initial = compile(&[]).map_err(StoreError::Invalid)?;
        let mut revisions = store.watch().await?;
        revisions.borrow_and_update();
        let status = ConfigStatus {
            store: store.url(),
            ..ConfigStatus::default()
        };
        let shared = Arc::new(Shared {
            store,
            compile: Box::new(compile),
            current: Arc::new(ArcSwap::from_pointee(initial)),
            generation: watch::Sender::new(0),
            status: watch::Sender::new(status),
            state: Mutex::new(State::default()),
        });
        shared.reload(true).await;
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            while revisions.changed().await.is_ok() {
                coalesce(&mut revisions).await;
                task_shared.reload(false).await;
            }
        });
        Ok(Self {
            shared,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }
}

impl<T> ConfigWatcher<T> {
    /// The live snapshot.
    pub fn current(&self) -> Arc<T> {
        self.shared.current.load_full()
    }

    /// The cell holding the live snapshot, for readers that should not keep the watcher
    /// (request-path layers call `load()` on it).
    pub fn handle(&self) -> Arc<ArcSwap<T>> {
        self.shared.current.clone()
    }

    /// Where the watcher stands: generation, last error, counts.
    pub fn status(&self) -> ConfigStatus {
        self.shared.status.borrow().clone()
    }

    /// A channel of the generation (how many snapshots have been built); it changes after
    /// each new snapshot is live.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// A channel of the status; it changes after every reload that found something new: a
    /// new snapshot, a refused change, a recovery, a store error.
    pub fn status_changes(&self) -> watch::Receiver<ConfigStatus> {
        self.shared.status.subscribe()
    }

    /// Resolves once a good configuration has been loaded from the store.
    pub async fn ready(&self) {
        let mut rx = self.shared.generation.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|g| *g > 0).await;
    }

    /// Reloads now, without waiting for the store to report a change: lists the whole
    /// store.
    pub async fn reload(&self) {
        self.shared.reload(true).await;
    }

    /// The store being watched.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }
}

impl<T> Clone for ConfigWatcher<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _task: self._task.clone(),
        }
    }
}

impl<T> fmt::Debug for ConfigWatcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("store", &self.shared.store)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

/// `good` with its WorkloadEntries replaced by the individually valid ones in `listed`.
fn with_current_registry(good: &[Resource], listed: &[Resource]) -> Vec<Resource> {
    let is_entry = |r: &&Resource| r.kind() == Kind::WorkloadEntry;
    let mut out: Vec<Resource> = good.iter().filter(|r| !is_entry(r)).cloned().collect();
    out.extend(
        listed
            .iter()
            .filter(is_entry)
            .filter(|r| {
                !crate::validate::check_resource(r)
                    .iter()
                    .any(|f| f.is_error())
            })
            .cloned(),
    );
    out.sort_by_cached_key(Resource::key);
    out
}

/// Waits until ticks stop arriving for [`COALESCE_QUIET`] (at most [`COALESCE_MAX`] after
/// the first), so that a burst of changes makes one reload.
async fn coalesce(revisions: &mut watch::Receiver<u64>) {
    let deadline = tokio::time::Instant::now() + COALESCE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + COALESCE_QUIET).min(deadline);
        match tokio::time::timeout_at(quiet, revisions.changed()).await {
            Ok(Ok(())) if tokio::time::Instant::now() < deadline => {}
            _ => break,
        }
    }
    revisions.borrow_and_update();
}

// === impl Shared ===

impl<T> Shared<T> {
    /// Reads what changed (everything when `full`, or when the store cannot say), validates
    /// and compiles it, and swaps the snapshot when it is good.
    async fn reload(&self, full: bool) {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let since = state.listed.as_ref().filter(|_| !full).map(|l| l.revision);
        let changes = match since {
            Some(since) => match self.store.changes_since(since).await {
                Ok(changes) => changes,
                Err(e) => return self.unreadable(e),
            },
            None => None,
        };
        let (undo, findings_changed) = match (changes, state.listed.as_mut()) {
            (Some(changes), Some(listed)) => listed.apply(changes),
            _ => match self.store.list().await {
                Ok(listing) => {
                    let (listed, undo, findings_changed) =
                        Listed::from_listing(listing, state.listed.take());
                    state.listed = Some(listed);
                    (undo, findings_changed)
                }
                Err(e) => return self.unreadable(e),
            },
        };
        let Some(listed) = state.listed.as_ref() else {
            return;
        };
        let revision = listed.revision;
        if matches!(undo, Undo::Unchanged)
            && !findings_changed
            && matches!(state.good, Good::Listed)
        {
            // Nothing new (our own write seen again, a reconnect, a touched file).
            self.unchanged(revision, None);
            return;
        }
        let findings = listed.validate();
        if findings.has_errors() {
            if matches!(state.good, Good::Listed) {
                state.good = Good::Kept(undo.previous(&listed.resources));
            }
            // The configuration stays the last good one, but the registry (WorkloadEntries
            // that are valid on their own) follows the store: workloads keep joining and
            // leaving while a broken file waits to be fixed.
            if let Good::Kept(good) = &state.good {
                let registry = with_current_registry(good, &listed.resources);
                if registry != *good
                    && !validate_all(&registry).has_errors()
                    && let Ok(snapshot) = (self.compile)(&registry)
                {
                    let old = self.current.swap(Arc::new(snapshot));
                    let generation = *self.generation.borrow() + 1;
                    tracing::info!(
                        store = %self.store.url(),
                        generation,
                        "registry updated; the rest of the config stays at the last good one"
                    );
                    self.status.send_modify(|s| {
                        s.generation = generation;
                        s.resources = registry.len();
                    });
                    state.good = Good::Kept(registry);
                    self.generation.send_replace(generation);
                    drop(old);
                }
            }
            self.reject(revision, findings);
            return;
        }
        let unchanged = match &state.good {
            Good::None => false,
            Good::Listed => matches!(undo, Undo::Unchanged),
            Good::Kept(good) => *good == listed.resources,
        };
        if unchanged {
            // The same configuration again (a broken file fixed back, a finding that came
            // and went): nothing to rebuild.
            state.good = Good::Listed;
            self.unchanged(revision, Some(findings));
            return;
        }
        match (self.compile)(&listed.resources) {
            Ok(snapshot) => {
                // The old snapshot is dropped after the new one is announced: freeing a big
                // configuration takes a few milliseconds that nobody needs to wait for.
                let old = self.current.swap(Arc::new(snapshot));
                let generation = *self.generation.borrow() + 1;
                let resources = listed.resources.len();
                tracing::info!(
                    store = %self.store.url(),
                    revision,
                    generation,
                    resources,
                    warnings = findings.0.len(),
                    "config loaded"
                );
                self.status.send_modify(|s| {
                    s.generation = generation;
                    s.revision = revision;
                    s.last_good_revision = Some(revision);
                    s.resources = resources;
                    s.warnings = findings;
                    s.last_error = None;
                    s.store_error = None;
                });
                state.good = Good::Listed;
                self.generation.send_replace(generation);
                drop(old);
            }
            Err(findings) => {
                if matches!(state.good, Good::Listed) {
                    state.good = Good::Kept(undo.previous(&listed.resources));
                }
                self.reject(revision, findings);
            }
        }
    }

    /// The store could not be read: keep everything, report the error.
    fn unreadable(&self, e: StoreError) {
        tracing::warn!(
            store = %self.store.url(),
            error = %e,
            "cannot read the config store; keeping the current config"
        );
        self.status.send_modify(|s| s.store_error = Some(e));
    }

    /// The live configuration is the stored one, read again at `revision`; `warnings` are
    /// its warnings when they were computed again.
    fn unchanged(&self, revision: u64, warnings: Option<Findings>) {
        tracing::debug!(store = %self.store.url(), revision, "config unchanged");
        self.status.send_if_modified(|s| {
            let before = (s.revision, s.last_error.is_some(), s.store_error.is_some());
            let warned = warnings.as_ref().is_some_and(|w| *w != s.warnings);
            s.revision = revision;
            s.last_good_revision = Some(revision);
            s.last_error = None;
            s.store_error = None;
            if let Some(w) = warnings {
                s.warnings = w;
            }
            warned || before != (revision, false, false)
        });
    }

    fn reject(&self, revision: u64, findings: Findings) {
        let repeated = self.status.borrow().last_error.as_ref() == Some(&findings);
        if !repeated {
            tracing::warn!(
                store = %self.store.url(),
                revision,
                errors = findings.errors().count(),
                "config change refused; keeping the last good config:\n{findings}"
            );
        }
        self.status.send_modify(|s| {
            s.revision = revision;
            s.store_error = None;
            if !repeated {
                s.rejected_count += 1;
            }
            s.last_error = Some(findings);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn policy(name: &str, path: &str) -> Resource {
        load_str(
            &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec: {{rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]}}\n"
            ),
            None,
        )
        .resources
        .remove(0)
    }

    fn listing(resources: Vec<Resource>) -> Listing {
        Listing {
            resources,
            findings: Findings::default(),
            revision: 7,
        }
    }

    #[test]
    fn applied_changes_keep_the_listing_sorted_and_can_be_undone() {
        let before = vec![policy("a", "/a"), policy("c", "/c"), policy("e", "/e")];
        let (mut listed, _, _) = Listed::from_listing(listing(before.clone()), None);
        let (undo, findings_changed) = listed.apply(Changes {
            applied: vec![policy("b", "/b"), policy("c", "/c2"), policy("e", "/e")],
            deleted: vec![
                policy("a", "/").key(),
                ResourceKey::new(Kind::AuthorizationPolicy, "default", "never-seen"),
            ],
            findings: Findings::default(),
            revision: 9,
        });
        assert!(!findings_changed);
        let names: Vec<&str> = listed
            .resources
            .iter()
            .map(|r| r.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["b", "c", "e"]);
        assert_eq!(listed.resources[1], policy("c", "/c2"));
        assert_eq!(listed.schema.len(), listed.resources.len());
        assert_eq!(listed.revision, 9);
        // Three edits (the unchanged `e` is none); undone, they give the old set back.
        assert!(matches!(&undo, Undo::Edits(e) if e.len() == 3));
        assert_eq!(undo.previous(&listed.resources), before);
    }

    #[test]
    fn a_listing_equal_to_the_last_one_is_unchanged_and_reuses_its_checks() {
        let resources = vec![policy("a", "/a"), policy("b", "/b")];
        let (first, _, _) = Listed::from_listing(listing(resources.clone()), None);
        let (again, undo, findings_changed) =
            Listed::from_listing(listing(resources.clone()), Some(first));
        assert!(matches!(undo, Undo::Unchanged));
        assert!(!findings_changed);
        let mut changed = resources.clone();
        changed[1] = policy("b", "/b2");
        let (_, undo, _) = Listed::from_listing(listing(changed), Some(again));
        assert!(matches!(&undo, Undo::Whole(old) if *old == resources));
    }
}
