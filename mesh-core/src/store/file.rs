//! The file store: one directory, one resource per file, watched with inotify (or the
//! platform's equivalent).
//!
//! # Layout
//! The store writes each resource to `DIR/<namespace>/<kind plural>/<name>.yaml`
//! (`DIR/shop/virtualservices/reviews.yaml`) in canonical YAML. It *reads* every `.yaml`,
//! `.yml` and `.json` file below `DIR` (hidden files and directories skipped), so people can
//! drop their own files, multi-document ones included, next to the store's. When a resource
//! that is applied or deleted lives in such a file, the store rewrites that file without it
//! (keeping the other documents and their comments), so a resource is never defined twice.
//!
//! # Atomicity
//! - Every write goes to a hidden temporary file in the target's directory, is synced, and is
//!   renamed over the target, so a reader sees the old file or the new one, never a torn one.
//! - `apply` and `delete` hold an exclusive lock on `DIR/.mesh.lock` for the whole
//!   read-validate-write, so concurrent applies (threads or processes) serialize and none
//!   is validated against stale content. `list` takes a shared lock, so it never sees half of
//!   an apply that touches several files. People editing files by hand take no lock; the
//!   watcher and validation are what protect the mesh from their half-written files.
//! - An apply that touches several files is not crash-atomic: if the process dies between
//!   two renames, some files are new and some old. New files are written before resources are
//!   removed from their old files, so a crash can leave a resource defined twice (reported
//!   as an error) but never lose one.
//!
//! # Watching
//! [`Store::watch`] starts a recursive notify watcher on `DIR` (creating it if needed) that
//! ignores the store's lock and temporary files and plain reads, and ticks the revision once
//! a burst of events has been quiet for 150 ms (or after 1 s of continuous events). The
//! store also ticks the revision itself after its own writes, so a watcher in the same
//! process reloads without waiting for the debounce.
//!
//! The debouncing is done here rather than with `notify-debouncer-full`, which drops the
//! events of a file created and removed within its window: when a reload happened to read
//! the file in between, nothing would ever tell the watcher it had gone. Here every event
//! counts; a tick means "look again", never "this is the net change".

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use notify::{
    Event, EventKind, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode},
};
use tokio::sync::watch;

use super::{
    Action, Applied, ApplyOutcome, BoxFuture, Check, Listing, Store, StoreError, relative_path,
    rfc3339_utc,
};
use crate::{
    config::{self, Resource, ResourceKey},
    source,
    validate::{Finding, Findings},
};

/// The lock file, relative to the store directory.
const LOCK_FILE: &str = ".mesh.lock";

/// How long the watcher waits for a burst of file events to settle.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// How often the fallback watcher polls when the platform's watcher cannot be used.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest the watcher delays a tick while events keep coming.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// How the store's temporary files end (they also start with `.`).
const TMP_SUFFIX: &str = ".mesh-tmp";

/// Makes temporary file names unique within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A [`Store`] in a directory: the embedded default.
///
/// Cloning is cheap and clones share the revision counter and the watcher.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mesh_core::store::StoreError> {
/// use mesh_core::{config::load_str, store::{Action, FileStore, Store}};
/// let dir = std::env::temp_dir().join(format!("mesh-doc-{}", std::process::id()));
/// let store = FileStore::new(&dir);
/// let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
///             metadata: { name: allow-nothing }\nspec: {}\n";
/// let outcome = store.apply(load_str(yaml, None).resources).await?;
/// assert_eq!(outcome.results[0].action, Action::Created);
/// assert!(dir.join("default/authorizationpolicies/allow-nothing.yaml").is_file());
/// assert_eq!(store.list().await?.resources.len(), 1);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    revision: watch::Sender<u64>,
    watcher: Mutex<Option<Box<dyn Watcher + Send>>>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("revision", &*self.inner.revision.borrow())
            .finish_non_exhaustive()
    }
}

// === impl FileStore ===

impl FileStore {
    /// A store in `dir`. Does no I/O: the directory is created by the first write or watch,
    /// and a missing directory lists as empty.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                revision: watch::Sender::new(0),
                watcher: Mutex::new(None),
            }),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file the store writes `key` to: `DIR/<namespace>/<kind plural>/<name>.yaml`.
    ///
    /// A resource read from a file someone dropped into the directory may live elsewhere.
    pub fn path_of(&self, key: &ResourceKey) -> PathBuf {
        self.inner.dir.join(relative_path(key))
    }

    /// Runs `f` on the blocking thread pool (file locks and I/O block).
    fn blocking<R, F>(&self, f: F) -> BoxFuture<'static, Result<R, StoreError>>
    where
        R: Send + 'static,
        F: FnOnce(&Inner) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&inner)).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(StoreError::Cancelled),
            }
        })
    }
}

impl Store for FileStore {
    fn list(&self) -> BoxFuture<'_, Result<Listing, StoreError>> {
        self.blocking(Inner::list)
    }

    fn get<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Resource>, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let listing = inner.list()?;
            Ok(listing.resources.into_iter().find(|r| r.key() == key))
        })
    }

    fn apply(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        self.blocking(move |inner| inner.apply(resources, SystemTime::now(), Check::Whole))
    }

    fn register(&self, entry: Resource) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        self.blocking(move |inner| {
            if entry.kind() != crate::config::Kind::WorkloadEntry {
                return Err(StoreError::NotAWorkloadEntry { key: entry.key() });
            }
            inner.apply(vec![entry], SystemTime::now(), Check::EntryOnly)
        })
    }

    fn deregister<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| inner.delete(&key, Check::EntryOnly))
    }

    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| inner.delete(&key, Check::Whole))
    }

    fn watch(&self) -> BoxFuture<'_, Result<watch::Receiver<u64>, StoreError>> {
        self.blocking(|inner| {
            inner.start_watcher()?;
            Ok(inner.revision.subscribe())
        })
    }

    fn url(&self) -> String {
        format!("file:{}", self.inner.dir.display())
    }
}

/// The directory's content as the loaders read it.
struct Current {
    /// Every resource read, sorted by key (duplicates next to each other).
    resources: Vec<Resource>,
    /// What the loaders reported (syntax and schema errors, unsupported kinds).
    findings: Vec<Finding>,
}

impl Current {
    /// The files that hold `key`.
    fn files_of(&self, key: &ResourceKey) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .resources
            .iter()
            .filter(|r| &r.key() == key)
            .filter_map(file_of)
            .collect();
        files.dedup();
        files
    }
}

fn file_of(r: &Resource) -> Option<PathBuf> {
    r.source
        .as_ref()?
        .origin
        .file
        .as_deref()
        .map(Path::to_path_buf)
}

/// A lock on `DIR/.mesh.lock`, released when dropped.
struct DirLock(#[allow(dead_code)] Option<File>);

/// One file the store will write, or delete when `contents` is `None`.
struct FileChange {
    path: PathBuf,
    contents: Option<String>,
}

// === impl Inner ===

impl Inner {
    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    /// Takes the directory lock. An exclusive lock creates the directory; a shared one on a
    /// directory that does not exist, or is read-only and has no lock file, is no lock at all
    /// (nobody can be writing there through the store).
    fn lock(&self, exclusive: bool) -> Result<DirLock, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        if exclusive {
            fs::create_dir_all(&self.dir)
                .map_err(|e| StoreError::io("create directory", &self.dir, e))?;
        } else if !self.dir.is_dir() {
            return Ok(DirLock(None));
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) if !exclusive => match File::open(&path) {
                Ok(f) => f,
                Err(_) => return Ok(DirLock(None)),
            },
            Err(e) => return Err(StoreError::io("open lock file", &path, e)),
        };
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(|e| StoreError::io("lock", &path, e))?;
        Ok(DirLock(Some(file)))
    }

    fn read_current(&self) -> Current {
        if !self.dir.is_dir() {
            return Current {
                resources: Vec::new(),
                findings: Vec::new(),
            };
        }
        let loaded = config::load_path(&self.dir);
        let mut resources = loaded.resources;
        resources.sort_by_cached_key(|r| {
            (
                r.key(),
                file_of(r),
                r.source.as_ref().map(|s| s.origin.line),
            )
        });
        Current {
            resources,
            findings: loaded.findings,
        }
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let revision = *self.revision.borrow();
        let _lock = self.lock(false)?;
        let current = self.read_current();
        let mut findings = Findings(current.findings);
        findings.sort();
        Ok(Listing {
            resources: current.resources,
            findings,
            revision,
        })
    }

    fn apply(
        &self,
        resources: Vec<Resource>,
        now: SystemTime,
        check: Check,
    ) -> Result<ApplyOutcome, StoreError> {
        if resources.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let input = resources;
        // Keep the caller's order for the outcome.
        let order: Vec<ResourceKey> = input.iter().map(Resource::key).collect();
        let applied_keys: BTreeSet<ResourceKey> = order.iter().cloned().collect();

        let _lock = self.lock(true)?;
        let current = self.read_current();
        // Content that does not parse blocks every apply: it may define anything. (A
        // resource defined twice is an error of the merged set below, unless this apply
        // settles it.)
        let refuse: Vec<Finding> = match check {
            Check::Whole => current
                .findings
                .iter()
                .filter(|f| f.is_error())
                .cloned()
                .collect(),
            Check::EntryOnly => Vec::new(),
        };

        // Decide what each resource becomes.
        let mut results = BTreeMap::new();
        let mut candidates = Vec::with_capacity(input.len());
        for r in input {
            let key = r.key();
            let existing: Vec<&Resource> = current
                .resources
                .iter()
                .filter(|e| e.key() == key)
                .collect();
            // Optimistic concurrency, as the API server does it: a resourceVersion in the
            // applied resource must be the stored one.
            if let Some(theirs) = r.metadata.resource_version.as_deref()
                && let Some(stored) = existing.first()
                && stored.metadata.resource_version.as_deref() != Some(theirs)
            {
                return Err(StoreError::Conflict {
                    key,
                    reason: format!(
                        "the object has been modified (resourceVersion is {}, the applied one is {theirs}); get the latest version and apply again",
                        stored
                            .metadata
                            .resource_version
                            .as_deref()
                            .unwrap_or("unset")
                    ),
                });
            }
            let mut candidate = r;
            candidate.source = None;
            candidate.metadata.namespace = Some(key.namespace.clone());
            let action = match existing.first() {
                None => {
                    candidate.metadata.creation_timestamp = Some(rfc3339_utc(now));
                    candidate.metadata.resource_version = Some("1".to_owned());
                    Action::Created
                }
                Some(old) => {
                    if old.metadata.creation_timestamp.is_some() {
                        candidate.metadata.creation_timestamp =
                            old.metadata.creation_timestamp.clone();
                    }
                    candidate.metadata.resource_version = old.metadata.resource_version.clone();
                    if existing.len() == 1 && same_content(old, &candidate) {
                        // Keep the stored one as it is (source included) for validation.
                        candidate = (*old).clone();
                        Action::Unchanged
                    } else {
                        candidate.metadata.resource_version =
                            Some(next_version(old.metadata.resource_version.as_deref()));
                        Action::Configured
                    }
                }
            };
            results.insert(key, action);
            candidates.push(candidate);
        }

        // Validate the configuration as it would be.
        let merged = || {
            let mut merged: Vec<Resource> = current
                .resources
                .iter()
                .filter(|r| !applied_keys.contains(&r.key()))
                .cloned()
                .collect();
            merged.extend(candidates.iter().cloned());
            merged
        };
        let validation = super::validate_write(check, merged, &candidates, refuse)?;

        // Plan the writes: new files first, then the old files the resources leave.
        let mut writes = Vec::new();
        let mut leave: BTreeMap<PathBuf, BTreeSet<ResourceKey>> = BTreeMap::new();
        for c in &candidates {
            let key = c.key();
            if results[&key] == Action::Unchanged {
                continue;
            }
            let path = self.checked_path(&key)?;
            self.check_target_free(&current, &key, &path)?;
            writes.push(FileChange {
                path: path.clone(),
                contents: Some(c.to_yaml()),
            });
            for file in current.files_of(&key) {
                if file != path {
                    leave.entry(file).or_default().insert(key.clone());
                }
            }
        }
        for (file, keys) in &leave {
            writes.push(self.without(file, keys)?);
        }

        self.commit_all(&writes)?;

        let warnings = Findings(
            validation
                .0
                .into_iter()
                .filter(|f| {
                    f.resource
                        .as_ref()
                        .is_some_and(|k| applied_keys.contains(k))
                })
                .collect(),
        );
        Ok(ApplyOutcome {
            results: order
                .into_iter()
                .map(|key| {
                    let action = results[&key];
                    Applied { key, action }
                })
                .collect(),
            warnings,
        })
    }

    fn delete(&self, key: &ResourceKey, check: Check) -> Result<bool, StoreError> {
        if !self.dir.is_dir() {
            return Ok(false);
        }
        let _lock = self.lock(true)?;
        let current = self.read_current();
        let files = current.files_of(key);
        if files.is_empty() {
            return Ok(false);
        }
        // Refuse a deletion that breaks what was valid (registry entries are not config:
        // nothing can depend on them being present).
        if check == Check::EntryOnly {
            let keys = BTreeSet::from([key.clone()]);
            let writes = files
                .iter()
                .map(|file| self.without(file, &keys))
                .collect::<Result<Vec<_>, _>>()?;
            self.commit_all(&writes)?;
            return Ok(true);
        }
        // Refuse a deletion that breaks what was valid.
        super::validate_delete(&current.resources, key)?;
        let keys = BTreeSet::from([key.clone()]);
        let mut writes = Vec::new();
        for file in &files {
            writes.push(self.without(file, &keys)?);
        }
        self.commit_all(&writes)?;
        Ok(true)
    }

    /// The canonical path of `key`, refusing names that are not DNS names (validation has
    /// already refused them; this keeps a path like `../x` out of the file system for sure).
    fn checked_path(&self, key: &ResourceKey) -> Result<PathBuf, StoreError> {
        if !config::is_dns1123_label(&key.namespace) || !config::is_dns1123_subdomain(&key.name) {
            return Err(StoreError::Conflict {
                key: key.clone(),
                reason: "the name or namespace is not a valid DNS name".to_owned(),
            });
        }
        Ok(self.dir.join(relative_path(key)))
    }

    /// Refuses to overwrite a canonical path that holds anything besides `key`.
    fn check_target_free(
        &self,
        current: &Current,
        key: &ResourceKey,
        path: &Path,
    ) -> Result<(), StoreError> {
        let others = current
            .resources
            .iter()
            .filter(|r| file_of(r).as_deref() == Some(path))
            .any(|r| &r.key() != key);
        let foreign = current.findings.iter().any(|f| {
            f.file
                .as_ref()
                .and_then(|o| o.file.as_deref())
                .is_some_and(|file| file == path)
        });
        if others || foreign {
            return Err(StoreError::Conflict {
                key: key.clone(),
                reason: format!(
                    "{} holds other documents; move them to their own files",
                    path.display()
                ),
            });
        }
        Ok(())
    }

    /// The change that removes `keys` from `file`: its new text, or its deletion when nothing
    /// is left.
    fn without(&self, file: &Path, keys: &BTreeSet<ResourceKey>) -> Result<FileChange, StoreError> {
        let text = fs::read_to_string(file).map_err(|e| StoreError::io("read", file, e))?;
        let Some(first) = keys.first() else {
            return Ok(FileChange {
                path: file.to_path_buf(),
                contents: Some(text),
            });
        };
        let json = file.extension().is_some_and(|e| e == "json");
        match remove_documents(&text, keys, json) {
            Ok(new) => {
                let empty = source::parse_documents(&new, None).is_ok_and(|d| d.is_empty());
                Ok(FileChange {
                    path: file.to_path_buf(),
                    contents: (!empty).then_some(new),
                })
            }
            Err(reason) => Err(StoreError::Conflict {
                key: first.clone(),
                reason: format!("cannot remove it from {}: {reason}", file.display()),
            }),
        }
    }

    /// Makes `changes` in order and ticks the revision if any was made (even when a later
    /// one fails, so watchers look again).
    fn commit_all(&self, changes: &[FileChange]) -> Result<(), StoreError> {
        let mut made = 0;
        let result = changes.iter().try_for_each(|c| {
            self.commit(c)?;
            made += 1;
            Ok(())
        });
        if made > 0 {
            self.bump();
        }
        result
    }

    fn commit(&self, change: &FileChange) -> Result<(), StoreError> {
        match &change.contents {
            Some(text) => write_atomic(&change.path, text.as_bytes()),
            None => {
                fs::remove_file(&change.path)
                    .map_err(|e| StoreError::io("remove", &change.path, e))?;
                self.remove_empty_parents(&change.path);
                Ok(())
            }
        }
    }

    /// Removes the `<namespace>/<plural>` directories a deletion left empty (only those of
    /// the store's own layout; directories people made stay).
    fn remove_empty_parents(&self, file: &Path) {
        let Ok(rel) = file.strip_prefix(&self.dir) else {
            return;
        };
        let parts: Vec<_> = rel.components().collect();
        let own_layout = parts.len() == 3
            && config::Kind::ALL
                .iter()
                .any(|k| parts[1].as_os_str() == k.plural());
        if !own_layout {
            return;
        }
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d == self.dir || !d.starts_with(&self.dir) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    fn start_watcher(&self) -> Result<(), StoreError> {
        let mut guard = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_some() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::io("create directory", &self.dir, e))?;
        // notify's callback only signals; a thread debounces and ticks the revision.
        let (tx, rx) = mpsc::channel::<()>();
        let watcher = match self.native_watcher(tx.clone()) {
            Ok(w) => w,
            Err(e) => {
                // inotify watches are a per-user limit that containers often exhaust; polling
                // is slower to notice but still works.
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    "cannot watch the config directory natively; polling it every {POLL_INTERVAL:?}"
                );
                self.poll_watcher(tx)?
            }
        };
        let revision = self.revision.clone();
        std::thread::Builder::new()
            .name("mesh-config-watch".to_owned())
            .spawn(move || debounce(&rx, || revision.send_modify(|r| *r += 1)))
            .map_err(|e| StoreError::io("start watcher thread for", &self.dir, e))?;
        *guard = Some(watcher);
        Ok(())
    }

    fn native_watcher(&self, tx: mpsc::Sender<()>) -> notify::Result<Box<dyn Watcher + Send>> {
        let mut w = notify::recommended_watcher(event_handler(self.dir.clone(), tx))?;
        w.watch(&self.dir, RecursiveMode::Recursive)?;
        Ok(Box::new(w))
    }

    fn poll_watcher(&self, tx: mpsc::Sender<()>) -> Result<Box<dyn Watcher + Send>, StoreError> {
        let to_io =
            |e: notify::Error| StoreError::io("watch", &self.dir, io::Error::other(e.to_string()));
        let config = notify::Config::default().with_poll_interval(POLL_INTERVAL);
        let mut w =
            notify::PollWatcher::new(event_handler(self.dir.clone(), tx), config).map_err(to_io)?;
        w.watch(&self.dir, RecursiveMode::Recursive)
            .map_err(to_io)?;
        Ok(Box::new(w))
    }
}

/// The notify callback: signals `tx` for each event that matters.
fn event_handler(
    dir: PathBuf,
    tx: mpsc::Sender<()>,
) -> impl Fn(notify::Result<Event>) + Send + 'static {
    move |res| {
        let relevant = match res {
            Ok(event) => relevant_event(&dir, &event),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "config directory watch error");
                true
            }
        };
        if relevant {
            let _ = tx.send(());
        }
    }
}

/// Calls `tick` once per burst of signals on `rx`: after [`DEBOUNCE`] without a signal, or
/// [`MAX_DELAY`] after the burst began if the signals never stop. Returns when the sender
/// is dropped.
pub(super) fn debounce(rx: &mpsc::Receiver<()>, tick: impl Fn()) {
    while rx.recv().is_ok() {
        let began = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(began.elapsed());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(DEBOUNCE.min(left)) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    tick();
                    return;
                }
            }
        }
        tick();
    }
}

/// True for an event that may change what the store lists: not a plain read, not only on
/// the store's lock and temporary files.
fn relevant_event(dir: &Path, event: &Event) -> bool {
    let read = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    };
    !read && (event.paths.is_empty() || event.paths.iter().any(|p| relevant_path(dir, p)))
}

/// True unless `path` is the store's own lock file or one of its temporary files.
///
/// Other hidden paths count: a Kubernetes ConfigMap volume swaps its content by renaming
/// the hidden `..data` symlink, and the visible files are symlinks into it.
pub(super) fn relevant_path(dir: &Path, path: &Path) -> bool {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
        return true;
    };
    let ours = (name == LOCK_FILE && path.parent() == Some(dir))
        || (name.starts_with('.') && name.ends_with(TMP_SUFFIX));
    !ours
}

/// The next `resourceVersion` after `v` (a counter; an unreadable one restarts at 1).
fn next_version(v: Option<&str>) -> String {
    let n = v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (n + 1).to_string()
}

/// True if `candidate` would store the same thing as `old` (the namespace written out or
/// not).
fn same_content(old: &Resource, candidate: &Resource) -> bool {
    let mut old_meta = old.metadata.clone();
    old_meta.namespace = Some(old.namespace().to_owned());
    old.api_version == candidate.api_version
        && old_meta == candidate.metadata
        && old.spec == candidate.spec
}

/// Writes `contents` to `path` atomically: a hidden temporary file in the same directory,
/// synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    let name = path
        .file_name()
        .map_or_else(|| "resource".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(
        ".{name}.{}.{}{TMP_SUFFIX}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        // Keep the permissions of a file someone else wrote.
        if let Ok(meta) = fs::metadata(path) {
            let _ = f.set_permissions(meta.permissions());
        }
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; not every platform can sync a directory, so best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Splits YAML text into documents at `---` marker lines; the pieces concatenate back to
/// `text`, each marker staying at the start of its document.
pub(crate) fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if is_marker && pos > start {
            out.push(&text[start..pos]);
            start = pos;
        }
        pos += line.len();
    }
    if pos > start || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// `text` without the documents that define `keys`.
///
/// Other documents keep their text, comments included. A document that defines a kept
/// resource next to a removed one (a `kind: List`) is rewritten from the parsed resources.
/// The result is checked by parsing it again: it must define exactly the old resources minus
/// `keys`, and the same number of other documents.
pub(crate) fn remove_documents(
    text: &str,
    keys: &BTreeSet<ResourceKey>,
    json: bool,
) -> Result<String, String> {
    let before = config::load_str(text, None);
    if before.findings.iter().any(Finding::is_error) {
        return Err("the file does not parse".to_owned());
    }
    let mut out = String::new();
    for chunk in split_documents(text) {
        let loaded = config::load_str(chunk, None);
        if loaded.findings.iter().any(Finding::is_error) {
            return Err("a document in it does not parse on its own".to_owned());
        }
        let hits = loaded
            .resources
            .iter()
            .filter(|r| keys.contains(&r.key()))
            .count();
        if hits == 0 {
            out.push_str(chunk);
            continue;
        }
        if !loaded.findings.is_empty() {
            return Err("it shares a list with documents of other kinds".to_owned());
        }
        let kept: Vec<&Resource> = loaded
            .resources
            .iter()
            .filter(|r| !keys.contains(&r.key()))
            .collect();
        if kept.is_empty() {
            continue;
        }
        if json {
            let items: Vec<serde_json::Value> = kept.iter().map(|r| r.to_value()).collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            out.push_str(&serde_json::to_string_pretty(&list).unwrap_or_default());
            out.push('\n');
        } else {
            for r in kept {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("---\n");
                out.push_str(&r.to_yaml());
            }
        }
    }
    // Check the result means what it should.
    let after = config::load_str(&out, None);
    let keys_of = |rs: &[Resource]| {
        let mut k: Vec<ResourceKey> = rs.iter().map(Resource::key).collect();
        k.sort();
        k
    };
    let expected: Vec<ResourceKey> = keys_of(&before.resources)
        .into_iter()
        .filter(|k| !keys.contains(k))
        .collect();
    if keys_of(&after.resources) != expected || after.findings.len() != before.findings.len() {
        return Err("its documents cannot be separated safely; edit it by hand".to_owned());
    }
    Ok(out)
}
