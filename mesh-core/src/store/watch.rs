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

use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};

use super::{Store, StoreError};
use crate::{
    config::{Kind, Resource},
    validate::{Findings, validate_all},
};

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
    /// Serializes reloads; holds the resources of the live snapshot.
    last_good: Mutex<Option<Vec<Resource>>>,
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
            last_good: Mutex::new(None),
        });
        shared.reload().await;
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            while revisions.changed().await.is_ok() {
                task_shared.reload().await;
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

    /// Reloads now, without waiting for the store to report a change.
    pub async fn reload(&self) {
        self.shared.reload().await;
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

// === impl Shared ===

impl<T> Shared<T> {
    async fn reload(&self) {
        let mut last_good = self.last_good.lock().await;
        let listing = match self.store.list().await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(
                    store = %self.store.url(),
                    error = %e,
                    "cannot read the config store; keeping the current config"
                );
                self.status.send_modify(|s| s.store_error = Some(e));
                return;
            }
        };
        let revision = listing.revision;
        let mut findings = listing.findings;
        findings.0.extend(validate_all(&listing.resources).0);
        findings.sort();
        if findings.has_errors() {
            // The configuration stays the last good one, but the registry (WorkloadEntries
            // that are valid on their own) follows the store: workloads keep joining and
            // leaving while a broken file waits to be fixed.
            if let Some(good) = last_good.as_ref() {
                let registry = with_current_registry(good, &listing.resources);
                if registry != *good
                    && !validate_all(&registry).has_errors()
                    && let Ok(snapshot) = (self.compile)(&registry)
                {
                    self.current.store(Arc::new(snapshot));
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
                    *last_good = Some(registry);
                    self.generation.send_replace(generation);
                }
            }
            self.reject(revision, findings);
            return;
        }
        if last_good.as_deref() == Some(listing.resources.as_slice()) {
            // The same configuration again (our own write echoed by the file watcher, a
            // touched file, a broken file fixed back): nothing to rebuild.
            tracing::debug!(store = %self.store.url(), revision, "config unchanged");
            self.status.send_if_modified(|s| {
                let before = (s.revision, s.last_error.is_some(), s.store_error.is_some());
                s.revision = revision;
                s.last_good_revision = Some(revision);
                s.last_error = None;
                s.store_error = None;
                s.warnings = findings;
                before != (revision, false, false)
            });
            return;
        }
        match (self.compile)(&listing.resources) {
            Ok(snapshot) => {
                self.current.store(Arc::new(snapshot));
                let generation = *self.generation.borrow() + 1;
                let resources = listing.resources.len();
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
                *last_good = Some(listing.resources);
                self.generation.send_replace(generation);
            }
            Err(findings) => self.reject(revision, findings),
        }
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
