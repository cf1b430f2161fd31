//! Where the mesh's configuration lives: the [`Store`] trait, its backends, and the
//! [`ConfigWatcher`] that turns stored resources into a live, validated snapshot.
//!
//! A store holds Istio resources keyed by kind, namespace and name, and offers what
//! `kubectl` offers for them: [`apply`](Store::apply) (create or replace, validated as a whole
//! before anything is written), [`get`](Store::get), [`list`](Store::list),
//! [`delete`](Store::delete), and a [`watch`](Store::watch) that ticks when the stored
//! configuration changed, however it changed (this process, another process, a person editing
//! a file).
//!
//! | backend | URL | what it is for |
//! |---|---|---|
//! | [`FileStore`] | `file:DIR` or a plain path | one machine; the embedded default |
//! | [`EtcdStore`] | `etcd://host:2379[,host:2379…][?prefix=/mesh&lease_ttl=10s]` | many machines: leases, watches (cargo feature `etcd`, on by default) |
//!
//! The trait is object safe (its methods return boxed futures), so callers hold an
//! `Arc<dyn Store>` from [`open`] and do not care which backend they got.
//!
//! # Examples
//! ```no_run
//! # async fn run() -> Result<(), mesh_core::store::StoreError> {
//! use mesh_core::{config::load_str, store};
//! let store = store::open("file:/etc/mesh")?;
//! let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
//!             metadata: { name: allow-nothing, namespace: shop }\nspec: {}\n";
//! let outcome = store.apply(load_str(yaml, None).resources).await?;
//! println!("{outcome}"); // authorizationpolicy.security.istio.io/allow-nothing created
//! # Ok(()) }
//! ```
//!
//! # Consistency
//! A change is validated as a whole: [`Store::apply`] merges the new resources into the
//! stored set, runs [`validate_all`](crate::validate::validate_all) on the result, and writes
//! nothing unless it has no errors. The [`ConfigWatcher`] validates again what it reads (a
//! person may have dropped a broken file into the directory) and keeps the last good snapshot
//! when the new content does not validate.

#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use self::etcd::{DEFAULT_LEASE_TTL, DEFAULT_PREFIX, EtcdStore};
pub use self::{
    file::FileStore,
    watch::{ConfigStatus, ConfigWatcher},
};
use crate::{
    config::{Kind, Resource, ResourceKey},
    validate::Findings,
};

/// A boxed, sendable future: what the [`Store`] methods return so the trait stays object
/// safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place that keeps Istio resources, keyed by kind, namespace and name.
///
/// Implementations are shared as `Arc<dyn Store>` and must be safe to call from many tasks at
/// once; every method is atomic with respect to the others.
pub trait Store: Send + Sync + fmt::Debug {
    /// Every stored resource, sorted by key, with findings for stored content that could not
    /// be read (a file with a syntax or schema error).
    ///
    /// The listing is not validated: a resource defined twice, for example, is listed twice;
    /// [`validate_all`](crate::validate::validate_all) reports it.
    fn list(&self) -> BoxFuture<'_, Result<Listing, StoreError>>;

    /// One resource, or `None` if the store has none with that key.
    fn get<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Resource>, StoreError>> {
        Box::pin(async move {
            let listing = self.list().await?;
            Ok(listing.resources.into_iter().find(|r| &r.key() == key))
        })
    }

    /// Creates or replaces `resources`, all or nothing.
    ///
    /// The resources are merged into the stored set and the result is validated as a whole;
    /// on any error nothing is written and the call returns [`StoreError::Invalid`]. A
    /// resource whose content equals the stored one is reported
    /// [`Unchanged`](Action::Unchanged) and not rewritten. When a resource carries
    /// `metadata.resourceVersion` and it differs from the stored one, the call fails with
    /// [`StoreError::Conflict`] (someone changed it since it was read), as the Kubernetes API
    /// server does.
    ///
    /// The store sets `metadata.creationTimestamp` when it creates a resource, keeps it on
    /// update, and counts `metadata.resourceVersion` up on each change.
    fn apply(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>>;

    /// Deletes a resource; `Ok(false)` if there was none.
    ///
    /// The deletion is refused with [`StoreError::Invalid`] when it would introduce a
    /// validation error the stored configuration did not have before (a VirtualService still
    /// routes to the subset of the DestinationRule being deleted): the running mesh would
    /// reject that configuration and keep the old one, so the store would no longer show
    /// what runs. Delete the referring resource first.
    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Registers a workload: creates or replaces one WorkloadEntry, validating only the entry
    /// itself.
    ///
    /// A registration is registry data, not configuration: a broken file or an invalid
    /// VirtualService elsewhere in the store must never stop a workload from joining the
    /// mesh, so the whole-configuration check of [`apply`](Store::apply) does not apply
    /// here. The default implementation is `apply`.
    fn register(&self, entry: Resource) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        self.apply(vec![entry])
    }

    /// Removes a workload's registration; `Ok(false)` if there was none. Unlike
    /// [`delete`](Store::delete), never refused for what the rest of the configuration
    /// says. The default implementation is `delete`.
    fn deregister<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.delete(key)
    }

    /// A channel whose value is the store's revision, a counter that increases after every
    /// change to the stored configuration, however it was made.
    ///
    /// Revisions are only ordered within one store handle; two handles (or processes) on the
    /// same data count independently (the etcd store's revision is etcd's own, the same for
    /// every handle on one cluster). Several changes in a short time may show up as one
    /// tick. A tick that leaves the value as it was means "look again": the etcd store sends
    /// one when it loses or regains its connection, so a [`ConfigWatcher`] reads, and
    /// records the store error or clears it.
    fn watch(&self) -> BoxFuture<'_, Result<tokio::sync::watch::Receiver<u64>, StoreError>>;

    /// Where the store keeps its data, as a URL [`open`] accepts (`file:/etc/mesh`).
    fn url(&self) -> String;

    /// What changed since the listing at `revision` (a [`Listing::revision`] or an earlier
    /// [`Changes::revision`]), for readers that keep their own copy of the stored set and
    /// apply deltas to it instead of listing everything again; [`ConfigWatcher`] does.
    ///
    /// `Ok(None)` means the store cannot say: list again. That is the default, and what the
    /// etcd store answers until its watch has read the whole prefix, while its watch is
    /// interrupted, and for a revision older than its history (before its last full
    /// re-list after a compaction, or too many deletions ago).
    ///
    /// The changes are relative to what the store's watch has seen, which may lag a write
    /// this handle just made; the watch ticks [`watch`](Store::watch) once it has it.
    fn changes_since(&self, revision: u64) -> BoxFuture<'_, Result<Option<Changes>, StoreError>> {
        let _ = revision;
        Box::pin(async { Ok(None) })
    }
}

/// What changed in a store since a revision, from [`Store::changes_since`].
///
/// Applying it to the listing at that revision (replace or insert every resource of
/// `applied`, remove every key of `deleted`, take `findings` as they are) gives the listing
/// at [`revision`](Changes::revision).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Resources created or changed since the revision, each as it is stored now.
    pub applied: Vec<Resource>,
    /// Resources deleted since the revision (or whose stored value no longer reads);
    /// keys the reader does not have are to be ignored.
    pub deleted: Vec<ResourceKey>,
    /// The findings of the whole listing now (as [`Listing::findings`]).
    pub findings: Findings,
    /// The revision these changes bring a listing to.
    pub revision: u64,
}

/// Everything a store holds, from [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The resources that could be read, sorted by key.
    pub resources: Vec<Resource>,
    /// Errors for stored content that could not be read (syntax and schema errors) and
    /// warnings (documents of kinds the mesh does not read).
    pub findings: Findings,
    /// The store's revision when the listing started; the listing reflects at least every
    /// change up to it.
    pub revision: u64,
}

/// What [`Store::apply`] did to each resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// One entry per applied resource, in the order they were given.
    pub results: Vec<Applied>,
    /// Warnings about the applied resources (errors refuse the whole apply instead).
    pub warnings: Findings,
}

impl ApplyOutcome {
    /// True if anything was created or changed.
    pub fn changed(&self) -> bool {
        self.results.iter().any(|r| r.action != Action::Unchanged)
    }
}

impl fmt::Display for ApplyOutcome {
    /// One line per resource, as `kubectl apply` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What happened to one resource in an apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The resource.
    pub key: ResourceKey,
    /// What was done to it.
    pub action: Action,
}

impl fmt::Display for Applied {
    /// `virtualservice.networking.istio.io/reviews configured`, as `kubectl apply` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}/{} {}",
            self.key.kind.as_str().to_ascii_lowercase(),
            self.key.kind.group(),
            self.key.name,
            self.action
        )
    }
}

/// What [`Store::apply`] did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and was replaced.
    Configured,
    /// It existed with the same content; nothing was written.
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        })
    }
}

/// A store operation failed.
///
/// `Clone` (I/O errors are shared through an `Arc`) so it can travel through a `watch`
/// channel in a [`ConfigStatus`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the store's files failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename`, `lock`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The change was refused because the configuration it would produce (or the stored
    /// content it would be merged with) has errors; nothing was written.
    #[error("{}", invalid_message(.0))]
    Invalid(Findings),
    /// The change conflicts with what is stored: the resource changed since it was read
    /// (`metadata.resourceVersion` differs), or the file it must be written to holds
    /// something else.
    #[error("conflict on {key}: {reason}")]
    Conflict {
        /// The resource.
        key: ResourceKey,
        /// Why, in words.
        reason: String,
    },
    /// The store URL could not be parsed.
    #[error("invalid store url {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store URL names a backend this build does not have (`etcd://` without the
    /// `etcd` cargo feature, `etcds://`: this build has no etcd TLS).
    #[error("the {scheme} store is not supported yet (use file:DIR)")]
    Unsupported {
        /// The URL scheme (`etcd`).
        scheme: String,
    },
    /// A remote store (etcd) could not be reached or refused a request; the operation did
    /// not happen, or it is unknown whether it did.
    #[error("{url}: cannot {op}: {reason}")]
    Unavailable {
        /// The store, as a URL.
        url: String,
        /// What was being done (`list /mesh/`, `put /mesh/workloadentries/default/a`).
        op: String,
        /// The cause, as the client reported it.
        reason: String,
    },
    /// [`Store::register`] was given something other than a WorkloadEntry.
    #[error("only a WorkloadEntry can be registered, not {key}")]
    NotAWorkloadEntry {
        /// The resource given.
        key: ResourceKey,
    },
    /// The runtime shut down while the operation was running; it may or may not have
    /// completed.
    #[error("the store operation was cancelled")]
    Cancelled,
}

fn invalid_message(findings: &Findings) -> String {
    let mut errors = findings.errors();
    match errors.next() {
        None => "configuration refused".to_owned(),
        Some(first) => match errors.count() {
            0 => format!("configuration refused: {first}"),
            n => format!("configuration refused: {first} (and {n} more errors)"),
        },
    }
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    /// The findings of an [`Invalid`](StoreError::Invalid) error.
    pub fn findings(&self) -> Option<&Findings> {
        match self {
            StoreError::Invalid(f) => Some(f),
            _ => None,
        }
    }
}

/// `/mesh/` → `/mesh`; `mesh` → `/mesh`; `/` → `` (the key prefix of an etcd URL).
pub(crate) fn normalize_prefix(p: &str) -> String {
    let trimmed = p.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// A parsed store URL, as `--config-dir` / `MESH_CONFIG_DIR` and [`open`] take it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `file:DIR`, `file:///abs/dir` or a plain path: a [`FileStore`] in that directory.
    File(PathBuf),
    /// `etcd://host:2379[,host:2379…][?prefix=/mesh&lease_ttl=10s]` (also `etcds://`,
    /// `http://`, `https://`): etcd endpoints and options.
    Etcd {
        /// The endpoints, as written.
        endpoints: Vec<String>,
        /// True for `etcds://` and `https://`.
        tls: bool,
        /// `?prefix=`: the key prefix (default `/mesh`), without a trailing `/`.
        prefix: Option<String>,
        /// `?lease_ttl=`: the registration lease TTL (default 10 s), a Go duration.
        lease_ttl: Option<Duration>,
    },
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    /// Accepts `file:DIR`, `file:///abs/dir`, `file://localhost/abs/dir`, a plain path
    /// (`./config`, `/etc/mesh`) and `etcd://host:port[,host:port][?prefix=P&lease_ttl=D]`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.trim().is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = url.strip_prefix("file:") {
            let path = match rest.strip_prefix("//") {
                None => rest,
                Some(abs) if abs.starts_with('/') => abs,
                Some(host) => match host.strip_prefix("localhost") {
                    Some(abs) if abs.starts_with('/') => abs,
                    _ => {
                        return Err(bad(
                            "file://HOST/… names another machine; use file:DIR or file:///abs/dir",
                        ));
                    }
                },
            };
            if path.is_empty() {
                return Err(bad("no directory after file:"));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some((scheme, rest)) = url.split_once("://") {
            let tls = match scheme {
                "etcd" | "http" => false,
                "etcds" | "https" => true,
                _ => {
                    return Err(bad(&format!(
                        "unknown scheme {scheme:?}; expected file:DIR or etcd://host:port"
                    )));
                }
            };
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut prefix = None;
            let mut lease_ttl = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                match name {
                    "prefix" => prefix = Some(normalize_prefix(value)),
                    "lease_ttl" => {
                        let d = value
                            .parse::<crate::duration::Duration>()
                            .map_err(|e| bad(&format!("lease_ttl: {e}")))?
                            .as_std();
                        if d < Duration::from_secs(1) {
                            return Err(bad("lease_ttl must be at least 1s"));
                        }
                        lease_ttl = Some(d);
                    }
                    other => {
                        return Err(bad(&format!(
                            "unknown option {other:?}; expected prefix or lease_ttl"
                        )));
                    }
                }
            }
            let endpoints: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            if endpoints.is_empty() {
                return Err(bad("no etcd endpoint"));
            }
            return Ok(StoreUrl::Etcd {
                endpoints,
                tls,
                prefix,
                lease_ttl,
            });
        }
        Ok(StoreUrl::File(PathBuf::from(url)))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(dir) => write!(f, "file:{}", dir.display()),
            StoreUrl::Etcd {
                endpoints,
                tls,
                prefix,
                lease_ttl,
            } => {
                let scheme = if *tls { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}", endpoints.join(","))?;
                let mut sep = '?';
                if let Some(p) = prefix {
                    write!(f, "{sep}prefix={p}")?;
                    sep = '&';
                }
                if let Some(d) = lease_ttl {
                    write!(
                        f,
                        "{sep}lease_ttl={}",
                        crate::duration::Duration::from_std(*d)
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl StoreUrl {
    /// Opens the store this URL names.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] for a backend this build does not have: etcd without
    /// the `etcd` cargo feature, or `etcds://` (no etcd TLS in this build).
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreUrl::File(dir) => Ok(Arc::new(FileStore::new(dir.clone()))),
            #[cfg(feature = "etcd")]
            StoreUrl::Etcd {
                endpoints,
                tls: false,
                prefix,
                lease_ttl,
            } => {
                let mut store = EtcdStore::new(endpoints.iter().cloned());
                if let Some(p) = prefix {
                    store = store.prefix(p.clone());
                }
                if let Some(d) = lease_ttl {
                    store = store.lease_ttl(*d);
                }
                Ok(Arc::new(store))
            }
            StoreUrl::Etcd { tls, .. } => Err(StoreError::Unsupported {
                scheme: if *tls { "etcds" } else { "etcd" }.to_owned(),
            }),
        }
    }
}

/// Opens the store at `url`: `file:DIR`, a plain path, or `etcd://host:port[,…]`.
///
/// Opening does no I/O; a [`FileStore`] creates its directory on the first write or watch,
/// an etcd store connects on its first call.
///
/// # Errors
/// [`StoreError::BadUrl`] for a URL that cannot be parsed, [`StoreError::Unsupported`] for a
/// backend this build does not have.
///
/// # Examples
/// ```
/// let store = mesh_core::store::open("file:/tmp/mesh-config")?;
/// assert_eq!(store.url(), "file:/tmp/mesh-config");
/// let err = mesh_core::store::open("etcds://127.0.0.1:2379").unwrap_err();
/// assert!(err.to_string().contains("not supported yet"));
/// # Ok::<_, mesh_core::store::StoreError>(())
/// ```
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    url.parse::<StoreUrl>()?.open()
}

/// Refuses deleting `key` from the stored `resources` when that would add validation errors
/// (a rule left referring to it): the errors it would add, as [`StoreError::Invalid`].
pub(crate) fn validate_delete(
    resources: &[Resource],
    key: &crate::config::ResourceKey,
) -> Result<(), StoreError> {
    use std::collections::HashSet;

    use crate::validate::{Finding, validate_all};
    let fingerprint = |f: &Finding| {
        (
            f.code,
            f.resource.clone(),
            f.field.clone(),
            f.message.clone(),
        )
    };
    let before: HashSet<_> = validate_all(resources).errors().map(fingerprint).collect();
    let remaining: Vec<Resource> = resources
        .iter()
        .filter(|r| &r.key() != key)
        .cloned()
        .collect();
    let new_errors: Vec<Finding> = validate_all(&remaining)
        .errors()
        .filter(|f| !before.contains(&fingerprint(f)))
        .cloned()
        .collect();
    if new_errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(Findings(new_errors)))
    }
}

/// What a write is validated against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The whole resulting configuration (`apply`, `delete`).
    Whole,
    /// Only the written entry itself (`register`, `deregister`): registry data.
    EntryOnly,
}

/// Validates a write before anything is written, for every backend: the whole configuration
/// it leads to (`merged`, built only for [`Check::Whole`]) or, for registry data, the written
/// entries alone. Findings the backend already refused the write for (`refuse`) and any
/// error make it [`StoreError::Invalid`]; otherwise the findings (warnings) are returned.
pub(crate) fn validate_write(
    check: Check,
    merged: impl FnOnce() -> Vec<Resource>,
    candidates: &[Resource],
    mut refuse: Vec<crate::validate::Finding>,
) -> Result<Findings, StoreError> {
    let validation = match check {
        Check::Whole => crate::validate::validate_all(&merged()),
        Check::EntryOnly => {
            let mut f = Findings(
                candidates
                    .iter()
                    .flat_map(crate::validate::check_resource)
                    .collect(),
            );
            f.sort();
            f
        }
    };
    if !refuse.is_empty() || validation.has_errors() {
        refuse.extend(validation.0);
        let mut findings = Findings(refuse);
        findings.sort();
        return Err(StoreError::Invalid(findings));
    }
    Ok(validation)
}

/// `DIR/<namespace>/<kind plural>/<name>.yaml`: where the file store keeps one resource.
pub(crate) fn relative_path(key: &ResourceKey) -> PathBuf {
    let mut p = PathBuf::from(&key.namespace);
    p.push(Kind::plural(key.kind));
    p.push(format!("{}.yaml", key.name));
    p
}

/// Formats `t` as an RFC 3339 UTC timestamp with whole seconds (`2024-05-01T12:00:00Z`), as
/// Kubernetes writes `creationTimestamp`.
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d and m are small and positive by construction.
    (y, m as u32, d as u32)
}
