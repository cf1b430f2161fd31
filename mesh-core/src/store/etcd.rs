//! The etcd store: the mesh's configuration and registry shared by many machines; see
//! [`EtcdStore`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::{
    sync::{Mutex, OnceCell, watch},
    task::AbortHandle,
};

use super::{
    Action, Applied, ApplyOutcome, BoxFuture, Changes, Check, Listing, Store, StoreError,
    normalize_prefix, rfc3339_utc,
};
use crate::{
    config::{self, Kind, Resource, ResourceKey},
    validate::{Finding, Findings, Severity, codes},
};

/// The key prefix used unless the URL or [`EtcdStore::prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "/mesh";

/// How long a registration outlives its process unless set otherwise (Istio's default
/// WorkloadEntry auto-registration cleanup is of the same order).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How long connecting to an etcd member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one etcd request may take before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive pings: a member that vanished without closing its connection is noticed
/// within interval + timeout. etcd closes a connection whose client pings more often than its
/// `--grpc-keepalive-min-time` (5 s by default) three times in a row (GOAWAY
/// `too_many_pings`): with 1 s pings every idle connection broke after 3–4 s, and its watch
/// with it. Go's gRPC client never pings more often than every 10 s either.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff between reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often an apply or delete reads and validates again when another writer won the race.
const ATTEMPTS: usize = 10;

/// The most resources one transaction writes: etcd's default `--max-txn-ops` is 128, and the
/// marker takes one.
const MAX_TXN_WRITES: usize = 127;

/// The marker key (below the prefix) that every apply and delete bumps.
const MARKER: &str = ".revision";

/// How many deletions the mirror remembers for [`Store::changes_since`]; a reader further
/// behind lists again.
const MAX_TOMBSTONES: usize = 10_000;

/// A [`Store`] in etcd: the configuration and registry of a mesh that spans machines.
///
/// Cloning is cheap; clones share the connection, the watch task and the registrations.
///
/// # Layout
/// Each resource is one key, `PREFIX/<kind plural>/<namespace>/<name>`
/// (`/mesh/virtualservices/shop/reviews`), holding the resource as JSON. The prefix is `/mesh`
/// unless the URL says otherwise (`etcd://host:2379?prefix=/prod/mesh`), so several meshes
/// can share one etcd. `metadata.resourceVersion` is the key's etcd `mod_revision`, as the
/// Kubernetes API server does it; `metadata.creationTimestamp` is written on creation and
/// kept on update.
///
/// # Consistency
/// [`apply`](Store::apply) and [`delete`](Store::delete) read the whole prefix, validate the
/// configuration as it would be, and write in one etcd transaction that also bumps the marker
/// key `PREFIX/.revision`. The transaction only commits if the marker and every written key
/// are still at the revisions that were read, so two applies on two machines never both pass
/// validation against a state that one of them changed; the loser reads again and validates
/// again (up to ten times before it gives up with [`StoreError::Conflict`]). etcd takes at
/// most 128 operations in a transaction (`--max-txn-ops`), so an apply of more than 127
/// resources is written as several transactions, each guarded by the marker the one before
/// it wrote: it is validated as a whole but not written atomically, and a watcher may see
/// its first part (which it validates like any other configuration) before the rest.
///
/// # Registrations and leases
/// [`register`](Store::register) writes the WorkloadEntry with an etcd lease (TTL 10 s by
/// default, `?lease_ttl=2s` in the URL or [`EtcdStore::lease_ttl`]) that a background task
/// keeps alive at a third of the TTL. If the process dies, the keep-alives stop and etcd
/// deletes the entry when the lease expires, so callers stop sending to a crashed workload
/// within the TTL. If etcd was unreachable for longer than the TTL and the lease expired, the
/// task grants a new lease and writes the entry again as soon as etcd answers.
/// [`deregister`](Store::deregister) deletes the entry and revokes the lease at once. Dropping
/// the last handle of the store stops the keep-alives without deregistering: the entry leaves
/// when its lease expires, as after a crash.
///
/// # Watching and static stability
/// [`watch`](Store::watch) starts one task that watches the prefix from the last revision it
/// saw. The revision channel carries etcd's cluster-wide revision. When the connection drops
/// the task resumes from the next revision once etcd answers again, with backoff from 100 ms
/// to 2 s; when that revision has been compacted away it lists again instead. Every failure
/// also ticks the channel without changing it, so a [`ConfigWatcher`](crate::store::ConfigWatcher)
/// reads again, fails, keeps its last good snapshot and reports the error in
/// [`ConfigStatus::store_error`](crate::store::ConfigStatus::store_error); when etcd returns, the
/// next tick clears the error and loads what changed meanwhile.
///
/// The watch task also keeps a decoded copy of the prefix (it reads the whole prefix when it
/// starts and after a compaction, then applies every event), from which
/// [`changes_since`](Store::changes_since) answers without asking etcd: a
/// [`ConfigWatcher`](crate::store::ConfigWatcher) then applies the few changed resources
/// instead of listing and decoding every key. While the watch is interrupted it answers
/// `None`, so the watcher lists, and sees the error. [`list`](Store::list) always reads etcd
/// (a listing reflects every change made before it started), but decodes only the values
/// that changed since the copy was made.
///
/// The client is created on first use, not by [`open`](crate::store::open), so a mesh can start
/// while etcd is down and pick it up when it comes.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), mesh_core::store::StoreError> {
/// use std::time::Duration;
/// use mesh_core::{config::load_str, store::{EtcdStore, Store}};
/// let store = EtcdStore::new(["127.0.0.1:2379", "127.0.0.1:22379"])
///     .prefix("/prod/mesh")
///     .lease_ttl(Duration::from_secs(5));
/// let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
///             metadata: { name: allow-nothing }\nspec: {}\n";
/// store.apply(load_str(yaml, None).resources).await?;
/// assert_eq!(store.list().await?.resources.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// The connection, shared with background tasks (which must not keep [`Inner`] alive).
struct Conn {
    endpoints: Vec<String>,
    url: String,
    client: OnceCell<Client>,
}

struct Inner {
    conn: Arc<Conn>,
    prefix: String,
    lease_ttl: Duration,
    revision: watch::Sender<u64>,
    watch_task: std::sync::Mutex<Option<AbortHandle>>,
    registrations: Mutex<HashMap<ResourceKey, Registration>>,
    /// The prefix as decoded values, kept current by the watch task (shared with it).
    mirror: Arc<std::sync::Mutex<Mirror>>,
}

/// The prefix as this handle last saw it, decoded: by the watch task, which applies every
/// event to it, or else by the last listing. Listings decode only the values that changed
/// since, and [`Store::changes_since`] answers from it without asking etcd.
///
/// # History
/// A reader's copy at revision `S` can be brought up to date from the mirror when every key
/// that changed after `S` is either in `entries` with a newer `mod_revision` or in
/// `tombstones` with a newer revision. That holds from `floor` on, except between a whole
/// read and the one before it (`gap`): a key created and deleted in between was never seen.
#[derive(Default)]
struct Mirror {
    /// The value of every key below the prefix (the marker excepted), decoded.
    entries: HashMap<String, Arc<Entry>>,
    /// True once the watch task has read the whole prefix: from then on only the task
    /// writes the mirror (listings only read it).
    watched: bool,
    /// True while the watch keeps `entries` current: it read the whole prefix and applied
    /// every event since, in order. False before the watch starts and while it is broken.
    synced: bool,
    /// `entries` is exactly the prefix at this revision (its last whole read or event).
    revision: i64,
    /// The oldest revision [`Store::changes_since`] answers for.
    floor: i64,
    /// Revisions strictly between these two are not answered for (see above).
    gap: Option<(i64, i64)>,
    /// Deleted keys with the revision they were deleted at (or, for deletions found by a
    /// whole read, the revision of that read), oldest first.
    tombstones: VecDeque<(i64, String)>,
}

impl Mirror {
    /// True if a reader at revision `since` can be brought up to date from the mirror.
    fn answers(&self, since: i64) -> bool {
        self.synced
            && since >= self.floor
            && !self
                .gap
                .is_some_and(|(from, to)| since > from && since < to)
    }

    /// Replaces `entries` with a whole read of the prefix at `revision`, recording what it
    /// deleted, and keeps the history readers at the previous exact revision (and, when the
    /// watch kept the mirror, before it) need.
    fn replace(&mut self, entries: HashMap<String, Arc<Entry>>, revision: i64) {
        // The entries are exactly the prefix at `self.revision` once anything filled them.
        let exact_before = (self.revision > 0)
            .then_some(self.revision)
            .filter(|before| *before <= revision);
        let mut gone: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| !entries.contains_key(*k))
            .collect();
        gone.sort();
        let gone: Vec<String> = gone.into_iter().cloned().collect();
        match exact_before {
            Some(before) => {
                if !self.watched {
                    // Filled by a listing: only a reader of that very listing is covered.
                    self.floor = before;
                    self.tombstones.clear();
                } else if let Some((_, to)) = self.gap {
                    // One gap at a time: forget the history before the previous one.
                    self.floor = self.floor.max(to);
                }
                self.gap = Some((before, revision));
                self.tombstones
                    .extend(gone.into_iter().map(|k| (revision, k)));
            }
            None => {
                self.floor = revision;
                self.gap = None;
                self.tombstones.clear();
            }
        }
        self.entries = entries;
        self.revision = revision;
        self.prune();
    }

    /// Forgets the oldest deletions beyond [`MAX_TOMBSTONES`]; readers from before them list
    /// again.
    fn prune(&mut self) {
        while self.tombstones.len() > MAX_TOMBSTONES {
            if let Some((rev, _)) = self.tombstones.pop_front() {
                self.floor = self.floor.max(rev);
            }
        }
    }
}

/// One stored value, decoded.
struct Entry {
    mod_revision: i64,
    /// The resource it holds, with `resourceVersion` and `namespace` set; `None` when it
    /// cannot be read (then `findings` says why).
    resource: Option<Arc<Resource>>,
    findings: Vec<Finding>,
}

impl Entry {
    fn decode(dir: &str, key: &str, value: &[u8], mod_revision: i64, lease: i64) -> Self {
        let (stored, findings) = decode(dir, key, value, mod_revision, lease);
        Self {
            mod_revision,
            resource: stored.map(|s| s.resource),
            findings,
        }
    }
}

/// A registered WorkloadEntry and the task that keeps its lease alive.
struct Registration {
    lease: Arc<AtomicI64>,
    value: Arc<std::sync::Mutex<String>>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .watch_task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        for r in self.registrations.get_mut().values() {
            r.task.abort();
        }
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.conn.endpoints)
            .field("prefix", &self.inner.prefix)
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("revision", &*self.inner.revision.borrow())
            .finish_non_exhaustive()
    }
}

/// One stored resource and where it is in etcd.
struct Stored {
    resource: Arc<Resource>,
    mod_revision: i64,
    lease: i64,
}

/// The prefix as read in one request.
struct Current {
    stored: BTreeMap<ResourceKey, Stored>,
    findings: Vec<Finding>,
    revision: i64,
    marker: i64,
}

impl Current {
    fn resources(&self) -> Vec<Resource> {
        self.stored
            .values()
            .map(|s| (*s.resource).clone())
            .collect()
    }
}

// === impl EtcdStore ===

impl EtcdStore {
    /// A store on the etcd members at `endpoints` (`host:port`, or `http://host:port`).
    ///
    /// Does no I/O: the client connects on the first call.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        Self::build(endpoints, DEFAULT_PREFIX.to_owned(), DEFAULT_LEASE_TTL)
    }

    fn build(endpoints: Vec<String>, prefix: String, lease_ttl: Duration) -> Self {
        let url = super::StoreUrl::Etcd {
            endpoints: endpoints.clone(),
            tls: false,
            prefix: (prefix != DEFAULT_PREFIX).then(|| prefix.clone()),
            lease_ttl: (lease_ttl != DEFAULT_LEASE_TTL).then_some(lease_ttl),
        }
        .to_string();
        Self {
            inner: Arc::new(Inner {
                conn: Arc::new(Conn {
                    endpoints,
                    url,
                    client: OnceCell::new(),
                }),
                prefix,
                lease_ttl,
                revision: watch::Sender::new(0),
                watch_task: std::sync::Mutex::new(None),
                registrations: Mutex::new(HashMap::new()),
                mirror: Arc::default(),
            }),
        }
    }

    /// Keeps resources below `prefix` (default [`DEFAULT_PREFIX`]); a trailing `/` is
    /// ignored. Call before using the store: this makes a new, unconnected handle.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = normalize_prefix(&prefix.into());
        Self::build(
            self.inner.conn.endpoints.clone(),
            prefix,
            self.inner.lease_ttl,
        )
    }

    /// The TTL of registration leases (default [`DEFAULT_LEASE_TTL`]), rounded up to whole
    /// seconds, at least 1 s. Call before using the store: this makes a new, unconnected
    /// handle.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        let ttl = Duration::from_secs(ttl_secs(ttl).unsigned_abs());
        Self::build(
            self.inner.conn.endpoints.clone(),
            self.inner.prefix.clone(),
            ttl,
        )
    }

    /// The etcd members' endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.conn.endpoints
    }

    /// The etcd key of `key`: `PREFIX/<kind plural>/<namespace>/<name>`.
    pub fn key_of(&self, key: &ResourceKey) -> String {
        self.inner.key_of(key)
    }

    /// The current lease of a WorkloadEntry this handle registered, if any (for tests and
    /// diagnostics: `etcdctl lease timetolive <id>`).
    pub async fn lease_of(&self, key: &ResourceKey) -> Option<i64> {
        let regs = self.inner.registrations.lock().await;
        regs.get(key).map(|r| r.lease.load(Ordering::SeqCst))
    }
}

/// A lease TTL in whole seconds, rounded up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

impl Store for EtcdStore {
    fn list(&self) -> BoxFuture<'_, Result<Listing, StoreError>> {
        Box::pin(async move {
            let current = self.inner.read().await?;
            let mut findings = Findings(current.findings.clone());
            findings.sort();
            Ok(Listing {
                resources: current.resources(),
                findings,
                revision: current.revision.max(0).unsigned_abs(),
            })
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Resource>, StoreError>> {
        Box::pin(async move {
            let ekey = self.inner.key_of(key);
            let resp = self
                .inner
                .conn
                .call(
                    || format!("get {ekey}"),
                    |mut c| {
                        let k = ekey.clone();
                        async move { c.get(k, None).await }
                    },
                )
                .await?;
            let Some(kv) = resp.kvs().first() else {
                return Ok(None);
            };
            let (stored, _) = decode(
                &self.inner.dir(),
                &ekey,
                kv.value(),
                kv.mod_revision(),
                kv.lease(),
            );
            Ok(stored
                .map(|s| Arc::unwrap_or_clone(s.resource))
                .filter(|r| &r.key() == key))
        })
    }

    fn apply(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        Box::pin(self.inner.apply(resources, SystemTime::now()))
    }

    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.inner.delete(key))
    }

    fn register(&self, entry: Resource) -> BoxFuture<'_, Result<ApplyOutcome, StoreError>> {
        Box::pin(self.inner.register(entry, SystemTime::now()))
    }

    fn deregister<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.inner.deregister(key))
    }

    fn watch(&self) -> BoxFuture<'_, Result<watch::Receiver<u64>, StoreError>> {
        Box::pin(async move {
            let mut task = self
                .inner
                .watch_task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if task.is_none() {
                let handle = tokio::spawn(watch_loop(
                    self.inner.conn.clone(),
                    self.inner.dir(),
                    self.inner.revision.clone(),
                    self.inner.mirror.clone(),
                ));
                *task = Some(handle.abort_handle());
            }
            Ok(self.inner.revision.subscribe())
        })
    }

    fn url(&self) -> String {
        self.inner.conn.url.clone()
    }

    fn changes_since(&self, revision: u64) -> BoxFuture<'_, Result<Option<Changes>, StoreError>> {
        Box::pin(async move { Ok(self.inner.changes_since(revision)) })
    }
}

// === impl Conn ===

impl Conn {
    /// The client, connecting on first use (a failed connect is tried again next time).
    async fn client(&self) -> Result<Client, StoreError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let urls: Vec<String> = self
                    .endpoints
                    .iter()
                    .map(|e| {
                        if e.starts_with("http://") || e.starts_with("https://") {
                            e.clone()
                        } else {
                            format!("http://{e}")
                        }
                    })
                    .collect();
                let options = ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                    .with_keep_alive_while_idle(true)
                    // A member cut off from the quorum fails watches instead of going quiet.
                    .with_require_leader(true);
                Client::connect(urls, Some(options))
                    .await
                    .map_err(|e| self.error("connect", &e))
            })
            .await?;
        Ok(client.clone())
    }

    /// Runs one request, trying again up to four times (after 100 ms, 300 ms, 900 ms and
    /// 1 s) when it failed in transport: the first requests after a member stops or restarts
    /// can be sent to its broken connection until the client's balancer drops it. A repeated
    /// write is safe: every write here is a guarded transaction or an idempotent put or
    /// delete.
    async fn call<T, F, Fut>(&self, op: impl Fn() -> String, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client().await?;
            match f(client).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < 5 && transient(&e) => {
                    tracing::debug!(store = %self.url, op = %op(), error = %error_text(&e), "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 3).min(Duration::from_secs(1));
                }
                Err(e) => return Err(self.error(op(), &e)),
            }
        }
    }

    fn error(&self, op: impl Into<String>, e: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable {
            url: self.url.clone(),
            op: op.into(),
            reason: error_text(e),
        }
    }
}

/// True for errors of the connection rather than of the request.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// An etcd client error in one line (tonic's status, not its debug dump).
fn error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.is_empty() {
                format!("{:?}", status.code())
            } else {
                format!("{:?}: {msg}", status.code())
            }
        }
        other => other.to_string(),
    }
}

// === impl Inner ===

impl Inner {
    /// The prefix with its trailing `/`: what every key starts with.
    fn dir(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn key_of(&self, key: &ResourceKey) -> String {
        format!(
            "{}/{}/{}/{}",
            self.prefix,
            key.kind.plural(),
            key.namespace,
            key.name
        )
    }

    fn marker(&self) -> String {
        format!("{}/{MARKER}", self.prefix)
    }

    /// Raises the revision channel to `revision`, ticking it only if that is new (a tick
    /// makes every watcher read again, and reading lands here).
    fn tick(&self, revision: i64) {
        raise(&self.revision, revision);
    }

    /// Reads the whole prefix in one request, decoding only the values the mirror does not
    /// hold at the same revision.
    async fn read(&self) -> Result<Current, StoreError> {
        let dir = self.dir();
        let resp = self
            .conn
            .call(
                || format!("list {dir}"),
                |mut c| {
                    let d = dir.clone();
                    async move { c.get(d, Some(GetOptions::new().with_prefix())).await }
                },
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let marker = self.marker();
        let mut current = Current {
            stored: BTreeMap::new(),
            findings: Vec::new(),
            revision,
            marker: 0,
        };
        let kvs: Vec<_> = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((std::str::from_utf8(kv.key()).ok()?, kv)))
            .filter(|(key, kv)| {
                if *key == marker {
                    current.marker = kv.mod_revision();
                    false
                } else {
                    true
                }
            })
            .collect();
        let entries = decode_all(&self.mirror, &dir, &kvs);
        for ((_, kv), entry) in kvs.iter().zip(&entries) {
            current.findings.extend(entry.findings.iter().cloned());
            if let Some(r) = &entry.resource {
                current.stored.insert(
                    r.key(),
                    Stored {
                        resource: r.clone(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    },
                );
            }
        }
        {
            // Until the watch has read the prefix, the listing is the freshest view: keep it
            // for the next listing, and for the watch to start its history from. After that,
            // the watch task owns the mirror (it replays what it missed after an outage).
            let mut mirror = lock(&self.mirror);
            if !mirror.watched && revision >= mirror.revision {
                let entries = kvs
                    .iter()
                    .zip(entries)
                    .map(|((key, _), entry)| ((*key).to_owned(), entry))
                    .collect();
                mirror.replace(entries, revision);
            }
        }
        self.tick(revision);
        Ok(current)
    }

    /// What changed since `since`, from the mirror; see [`Store::changes_since`].
    fn changes_since(&self, since: u64) -> Option<Changes> {
        let since = i64::try_from(since).ok()?;
        let mirror = lock(&self.mirror);
        if !mirror.answers(since) {
            return None;
        }
        let dir = self.dir();
        let mut changes = Changes {
            revision: mirror.revision.max(since).unsigned_abs(),
            ..Changes::default()
        };
        let mut findings = Vec::new();
        for (key, entry) in &mirror.entries {
            findings.extend(entry.findings.iter().cloned());
            if entry.mod_revision <= since {
                continue;
            }
            match &entry.resource {
                Some(r) => changes.applied.push((**r).clone()),
                None => changes.deleted.extend(key_of_path(&dir, key)),
            }
        }
        for (_, key) in mirror
            .tombstones
            .iter()
            .rev()
            .take_while(|(rev, _)| *rev > since)
        {
            if !mirror.entries.contains_key(key) {
                changes.deleted.extend(key_of_path(&dir, key));
            }
        }
        drop(mirror);
        changes.applied.sort_by_cached_key(Resource::key);
        changes.deleted.sort();
        changes.deleted.dedup();
        changes.findings = Findings(findings);
        changes.findings.sort();
        Some(changes)
    }

    async fn apply(
        &self,
        resources: Vec<Resource>,
        now: SystemTime,
    ) -> Result<ApplyOutcome, StoreError> {
        let Some(first_key) = resources.first().map(Resource::key) else {
            return Ok(ApplyOutcome::default());
        };
        // The outcome of the first attempt that wrote anything: a retry after a partly
        // written apply finds those resources unchanged.
        let mut first: Option<ApplyOutcome> = None;
        for _ in 0..ATTEMPTS {
            let current = self.read().await?;
            let plan = plan(&current, &resources, now, Check::Whole)?;
            if plan.writes.is_empty() {
                return Ok(first.unwrap_or(plan.outcome));
            }
            // etcd refuses transactions of more than 128 operations (`--max-txn-ops`): a
            // larger apply is written in chunks, each guarded by the marker the previous one
            // left, so nobody else's write slips in between unnoticed.
            let mut marker = current.marker;
            let mut done = true;
            for chunk in plan.writes.chunks(MAX_TXN_WRITES) {
                let mut when = vec![Compare::mod_revision(
                    self.marker(),
                    CompareOp::Equal,
                    marker,
                )];
                let mut ops = vec![TxnOp::put(self.marker(), "", None)];
                for r in chunk {
                    let key = r.key();
                    let seen = current.stored.get(&key).map_or(0, |s| s.mod_revision);
                    let ekey = self.key_of(&key);
                    when.push(Compare::mod_revision(ekey.as_str(), CompareOp::Equal, seen));
                    ops.push(TxnOp::put(ekey, encode(r), None));
                }
                match self.commit(when, ops).await? {
                    Some(revision) => {
                        marker = revision;
                        first.get_or_insert_with(|| plan.outcome.clone());
                    }
                    None => {
                        done = false;
                        break;
                    }
                }
            }
            if done {
                return Ok(first.unwrap_or(plan.outcome));
            }
        }
        Err(self.busy(first_key))
    }

    async fn delete(&self, key: &ResourceKey) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let current = self.read().await?;
            let Some(stored) = current.stored.get(key) else {
                return Ok(false);
            };
            // Refuse a deletion that breaks what was valid.
            super::validate_delete(&current.resources(), key)?;
            let ekey = self.key_of(key);
            let when = vec![
                Compare::mod_revision(self.marker(), CompareOp::Equal, current.marker),
                Compare::mod_revision(ekey.as_str(), CompareOp::Equal, stored.mod_revision),
            ];
            let ops = vec![
                TxnOp::delete(ekey, None),
                TxnOp::put(self.marker(), "", None),
            ];
            if self.commit(when, ops).await?.is_some() {
                return Ok(true);
            }
        }
        Err(self.busy(key.clone()))
    }

    /// Runs a transaction: the revision it wrote at, or `None` when a comparison failed
    /// (someone else wrote).
    async fn commit(&self, when: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new().when(when).and_then(ops);
        let resp = self
            .conn
            .call(
                || format!("write below {}", self.dir()),
                |mut c| {
                    let t = txn.clone();
                    async move { c.txn(t).await }
                },
            )
            .await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.tick(revision);
        Ok(Some(revision))
    }

    fn busy(&self, key: ResourceKey) -> StoreError {
        StoreError::Conflict {
            key,
            reason: format!(
                "{} kept changing while the change was validated ({ATTEMPTS} attempts); try again",
                self.conn.url
            ),
        }
    }

    async fn register(&self, entry: Resource, now: SystemTime) -> Result<ApplyOutcome, StoreError> {
        if entry.kind() != Kind::WorkloadEntry {
            return Err(StoreError::NotAWorkloadEntry { key: entry.key() });
        }
        let key = entry.key();
        let ekey = self.key_of(&key);
        // One registration at a time: the lease map and the write go together.
        let mut regs = self.registrations.lock().await;
        let resp = self
            .conn
            .call(
                || format!("get {ekey}"),
                |mut c| {
                    let k = ekey.clone();
                    async move { c.get(k, None).await }
                },
            )
            .await?;
        let mut client = self.conn.client().await?;
        let mut current = Current {
            stored: BTreeMap::new(),
            findings: Vec::new(),
            revision: resp.header().map_or(0, |h| h.revision()),
            marker: 0,
        };
        if let Some(kv) = resp.kvs().first() {
            let (stored, _) = decode(
                &self.dir(),
                &ekey,
                kv.value(),
                kv.mod_revision(),
                kv.lease(),
            );
            if let Some(s) = stored {
                current.stored.insert(s.resource.key(), s);
            }
        }
        let plan = plan(
            &current,
            std::slice::from_ref(&entry),
            now,
            Check::EntryOnly,
        )?;
        let candidate = plan.candidates.into_iter().next();
        let Some(candidate) = candidate else {
            return Ok(plan.outcome);
        };
        let value = encode(&candidate);
        let (lease, fresh) = match regs.get(&key) {
            Some(r) => (r.lease.load(Ordering::SeqCst), false),
            None => {
                let granted = client
                    .lease_grant(ttl_secs(self.lease_ttl), None)
                    .await
                    .map_err(|e| self.conn.error(format!("grant a lease for {ekey}"), &e))?;
                (granted.id(), true)
            }
        };
        let attached = current.stored.get(&key).is_some_and(|s| s.lease == lease);
        if !plan.writes.is_empty() || !attached {
            let put = client
                .put(
                    ekey.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await;
            match put {
                Ok(resp) => self.tick(resp.header().map_or(0, |h| h.revision())),
                Err(e) => {
                    if fresh {
                        let _ = client.lease_revoke(lease).await;
                    }
                    return Err(self.conn.error(format!("put {ekey}"), &e));
                }
            }
        }
        match regs.get(&key) {
            Some(r) => {
                *r.value
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
            }
            None => {
                let lease_cell = Arc::new(AtomicI64::new(lease));
                let value_cell = Arc::new(std::sync::Mutex::new(value));
                let task = tokio::spawn(keep_alive(
                    self.conn.clone(),
                    ekey,
                    value_cell.clone(),
                    lease_cell.clone(),
                    self.lease_ttl,
                ));
                regs.insert(
                    key,
                    Registration {
                        lease: lease_cell,
                        value: value_cell,
                        task: task.abort_handle(),
                    },
                );
            }
        }
        Ok(plan.outcome)
    }

    async fn deregister(&self, key: &ResourceKey) -> Result<bool, StoreError> {
        let ekey = self.key_of(key);
        let registration = self.registrations.lock().await.remove(key);
        let lease = registration.map(|r| {
            r.task.abort();
            r.lease.load(Ordering::SeqCst)
        });
        let resp = self
            .conn
            .call(
                || format!("delete {ekey}"),
                |mut c| {
                    let k = ekey.clone();
                    async move { c.delete(k, None).await }
                },
            )
            .await?;
        let mut client = self.conn.client().await?;
        self.tick(resp.header().map_or(0, |h| h.revision()));
        if let Some(lease) = lease
            && let Err(e) = client.lease_revoke(lease).await
        {
            // The entry is gone; a lease that outlives it only holds nothing until its TTL.
            tracing::debug!(store = %self.conn.url, lease, error = %error_text(&e), "cannot revoke lease");
        }
        Ok(resp.deleted() > 0)
    }
}

/// What an apply will do.
struct Plan {
    outcome: ApplyOutcome,
    /// The resources to write (created or configured), without `resourceVersion`.
    writes: Vec<Resource>,
    /// Every applied resource as it will be stored, unchanged ones included.
    candidates: Vec<Resource>,
}

/// Decides what each applied resource becomes and validates the result, as the file store
/// does: resourceVersion conflicts, creationTimestamp, Unchanged, validation of the merged set
/// (or of the entries alone for registrations).
fn plan(
    current: &Current,
    input: &[Resource],
    now: SystemTime,
    check: Check,
) -> Result<Plan, StoreError> {
    let refuse: Vec<Finding> = match check {
        Check::Whole => current
            .findings
            .iter()
            .filter(|f| f.is_error())
            .cloned()
            .collect(),
        Check::EntryOnly => Vec::new(),
    };
    let order: Vec<ResourceKey> = input.iter().map(Resource::key).collect();
    let applied: HashSet<&ResourceKey> = order.iter().collect();
    let mut results: BTreeMap<ResourceKey, Action> = BTreeMap::new();
    // In the caller's order, duplicates kept: validation refuses a resource given twice.
    let mut candidates: Vec<Resource> = Vec::with_capacity(input.len());
    for r in input {
        let key = r.key();
        let existing = current.stored.get(&key);
        if let Some(theirs) = r.metadata.resource_version.as_deref()
            && let Some(stored) = existing
            && stored.resource.metadata.resource_version.as_deref() != Some(theirs)
        {
            return Err(StoreError::Conflict {
                key,
                reason: format!(
                    "the object has been modified (resourceVersion is {}, the applied one is {theirs}); get the latest version and apply again",
                    stored.mod_revision
                ),
            });
        }
        let mut candidate = r.clone();
        candidate.source = None;
        candidate.metadata.namespace = Some(key.namespace.clone());
        candidate.metadata.resource_version = None;
        let action = match existing {
            None => {
                candidate.metadata.creation_timestamp = Some(rfc3339_utc(now));
                Action::Created
            }
            Some(old) => {
                if old.resource.metadata.creation_timestamp.is_some() {
                    candidate.metadata.creation_timestamp =
                        old.resource.metadata.creation_timestamp.clone();
                }
                if same_content(&old.resource, &candidate) {
                    Action::Unchanged
                } else {
                    Action::Configured
                }
            }
        };
        results.insert(key, action);
        candidates.push(candidate);
    }

    let merged = || {
        let mut merged: Vec<Resource> = current
            .stored
            .iter()
            .filter(|(k, _)| !applied.contains(k))
            .map(|(_, s)| (*s.resource).clone())
            .collect();
        merged.extend(candidates.iter().cloned());
        merged
    };
    let validation = super::validate_write(check, merged, &candidates, refuse)?;
    let warnings = Findings(
        validation
            .0
            .into_iter()
            .filter(|f| f.resource.as_ref().is_some_and(|k| applied.contains(k)))
            .collect(),
    );
    let writes = candidates
        .iter()
        .filter(|r| results[&r.key()] != Action::Unchanged)
        .cloned()
        .collect();
    Ok(Plan {
        outcome: ApplyOutcome {
            results: order
                .into_iter()
                .map(|key| {
                    let action = results[&key];
                    Applied { key, action }
                })
                .collect(),
            warnings,
        },
        writes,
        candidates,
    })
}

/// True if `candidate` (without a resourceVersion) would store the same thing as `old`.
fn same_content(old: &Resource, candidate: &Resource) -> bool {
    let mut old_meta = old.metadata.clone();
    old_meta.namespace = Some(old.namespace().to_owned());
    old_meta.resource_version = None;
    old.api_version == candidate.api_version
        && old_meta == candidate.metadata
        && old.spec == candidate.spec
}

/// The stored form of a resource: its JSON, without `resourceVersion` (etcd keeps that).
fn encode(r: &Resource) -> String {
    let mut r = r.clone();
    r.metadata.resource_version = None;
    r.source = None;
    r.to_value().to_string()
}

/// Parses a stored value; findings name the etcd key as their file.
fn load_value(key: &str, value: &[u8]) -> config::Loaded {
    let origin = format!("etcd:{key}");
    match std::str::from_utf8(value) {
        Ok(text) => {
            // What the store writes: one JSON object, read directly (several times faster
            // than through the YAML reader, which every watcher's first read and every
            // apply's validation pay for each value). Anything else (YAML written by another
            // tool, a syntax error) goes through the YAML reader, for its line-exact
            // findings.
            let mut loaded = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value @ serde_json::Value::Object(_)) => {
                    config::load_json_value(value, Some(Path::new(&origin)))
                }
                _ => config::load_str(text, Some(Path::new(&origin))),
            };
            // The value is one line of JSON: a field → line index says nothing and costs
            // memory in every watcher, per resource. Findings keep the key as their file.
            static NO_LINES: std::sync::OnceLock<Arc<crate::source::LineIndex>> =
                std::sync::OnceLock::new();
            let empty = NO_LINES.get_or_init(Arc::default);
            for r in &mut loaded.resources {
                if let Some(source) = &mut r.source {
                    source.lines = empty.clone();
                }
            }
            loaded
        }
        Err(_) => {
            let mut f = Finding::new(
                codes::SYNTAX_ERROR,
                Severity::Error,
                "the value is not UTF-8 text",
            );
            f.file = Some(crate::source::Origin {
                file: Some(Arc::from(Path::new(&origin))),
                line: 1,
            });
            config::Loaded {
                resources: Vec::new(),
                findings: vec![f],
            }
        }
    }
}

/// The one resource the value of `key` holds, checked against the key (which must be exactly
/// `DIR<kind plural>/<namespace>/<name>`, so that a key and a resource name each other), and
/// the findings of reading it.
fn decode(
    dir: &str,
    key: &str,
    value: &[u8],
    mod_revision: i64,
    lease: i64,
) -> (Option<Stored>, Vec<Finding>) {
    let loaded = load_value(key, value);
    let mut findings = loaded.findings;
    let unread = !findings.is_empty();
    let mut problem = |message: String| {
        let mut f = Finding::new(codes::SYNTAX_ERROR, Severity::Error, message);
        f.file = Some(crate::source::Origin {
            file: Some(Arc::from(Path::new(&format!("etcd:{key}")))),
            line: 1,
        });
        f.line = Some(1);
        findings.push(f);
    };
    let count = loaded.resources.len();
    let mut resources = loaded.resources.into_iter();
    let resource = match (resources.next(), count) {
        (None, _) if !unread => {
            problem("the value holds no resource".to_owned());
            None
        }
        (None, _) => None,
        (Some(mut r), 1) => {
            let expected = key.strip_prefix(dir).unwrap_or(key);
            if key_of_path(dir, key).is_some_and(|k| k == r.key()) {
                r.metadata.resource_version = Some(mod_revision.to_string());
                r.metadata.namespace = Some(r.namespace().to_owned());
                Some(Stored {
                    resource: Arc::new(r),
                    mod_revision,
                    lease,
                })
            } else {
                problem(format!(
                    "the value holds {} but the key says {expected}",
                    r.key(),
                ));
                None
            }
        }
        (Some(_), more) => {
            problem(format!("the value holds {more} resources; a key holds one"));
            None
        }
    };
    (resource, findings)
}

/// The resource `key` names: `DIR<kind plural>/<namespace>/<name>`.
fn key_of_path(dir: &str, key: &str) -> Option<ResourceKey> {
    let mut parts = key.strip_prefix(dir)?.split('/');
    let (plural, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || name.is_empty() {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.plural() == plural)?;
    Some(ResourceKey::new(kind, namespace, name))
}

/// Locks the mirror (a panic elsewhere cannot leave it half-updated: every update is one
/// assignment or a loop of inserts that cannot panic).
fn lock(mirror: &std::sync::Mutex<Mirror>) -> std::sync::MutexGuard<'_, Mirror> {
    mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The decoded entries of `kvs` (keys below `dir`, as UTF-8): the mirror's where it holds the
/// same revision, else decoded now (outside the lock).
fn decode_all(
    mirror: &std::sync::Mutex<Mirror>,
    dir: &str,
    kvs: &[(&str, &etcd_client::KeyValue)],
) -> Vec<Arc<Entry>> {
    let known: Vec<Option<Arc<Entry>>> = {
        let mirror = lock(mirror);
        kvs.iter()
            .map(|(key, kv)| {
                mirror
                    .entries
                    .get(*key)
                    .filter(|e| e.mod_revision == kv.mod_revision())
                    .cloned()
            })
            .collect()
    };
    kvs.iter()
        .zip(known)
        .map(|((key, kv), known)| {
            known.unwrap_or_else(|| {
                Arc::new(Entry::decode(
                    dir,
                    key,
                    kv.value(),
                    kv.mod_revision(),
                    kv.lease(),
                ))
            })
        })
        .collect()
}

/// Exponential backoff, doubling from [`MIN_BACKOFF`] to a maximum.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Up to [`MAX_BACKOFF`].
    fn new() -> Self {
        Self::up_to(MAX_BACKOFF)
    }

    fn up_to(max: Duration) -> Self {
        Self {
            next: MIN_BACKOFF.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = MIN_BACKOFF.min(self.max);
    }

    async fn wait(&mut self) {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(d).await;
    }
}

/// Raises `channel` to `revision` if that is higher, ticking it only then.
fn raise(channel: &watch::Sender<u64>, revision: i64) {
    let revision = revision.max(0).unsigned_abs();
    channel.send_if_modified(|r| {
        let newer = revision > *r;
        if newer {
            *r = revision;
        }
        newer
    });
}

/// Watches `dir`, keeps `mirror` current and ticks `revision` on every change; see the
/// type's docs.
///
/// On start and after a compaction it reads the whole prefix into the mirror, then applies
/// every event to it in order. When the watch breaks it marks the mirror out of sync (readers
/// list again, and see the error) and resumes from the next revision, which replays what it
/// missed; when that revision was compacted it reads the whole prefix again.
async fn watch_loop(
    conn: Arc<Conn>,
    dir: String,
    revision: watch::Sender<u64>,
    mirror: Arc<std::sync::Mutex<Mirror>>,
) {
    // Always ticks, even when the revision is not new (a write of this handle raised it
    // first): the mirror changed, so a reader that found it behind must look again.
    let changed = |rev: i64| {
        let rev = rev.max(0).unsigned_abs();
        revision.send_modify(|r| *r = (*r).max(rev));
    };
    let mut backoff = Backoff::new();
    // The next revision to watch from; 0 when the prefix must be read whole.
    let mut next: i64 = 0;
    let mut failing = false;
    loop {
        let fail = |what: String, failing: &mut bool| {
            lock(&mirror).synced = false;
            if !*failing {
                tracing::warn!(store = %conn.url, error = %what, "etcd watch interrupted; retrying");
            } else {
                tracing::debug!(store = %conn.url, error = %what, "etcd still unreachable");
            }
            *failing = true;
            // Tick without changing the revision: watchers read again and see the error.
            revision.send_modify(|_| {});
        };
        let mut client = match conn.client().await {
            Ok(c) => c,
            Err(e) => {
                fail(e.to_string(), &mut failing);
                backoff.wait().await;
                continue;
            }
        };
        if next == 0 {
            match client
                .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(resp) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    resync(&mirror, &dir, &resp, rev);
                    next = rev + 1;
                    // A re-list (first start or after compaction): watchers read again.
                    changed(rev);
                }
                Err(e) => {
                    fail(error_text(&e), &mut failing);
                    backoff.wait().await;
                    continue;
                }
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next)
            .with_progress_notify();
        let mut stream = match client.watch(dir.as_str(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                fail(error_text(&e), &mut failing);
                backoff.wait().await;
                continue;
            }
        };
        let mut ended = None;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            store = %conn.url,
                            from = next,
                            compacted = resp.compact_revision(),
                            "etcd compacted past the last seen revision; listing again"
                        );
                        lock(&mirror).synced = false;
                        next = 0;
                        break;
                    }
                    if resp.canceled() {
                        ended = Some(format!("watch canceled: {}", resp.cancel_reason()));
                        break;
                    }
                    if resp.created() {
                        // The watch replays everything from `next` on: the mirror, as of
                        // `next - 1`, stays exact.
                        lock(&mirror).synced = true;
                        if failing {
                            tracing::info!(store = %conn.url, "etcd reachable again");
                            failing = false;
                            // Read again now: clears the store error, catches up.
                            changed(next - 1);
                        }
                    }
                    backoff.reset();
                    if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
                        next = next.max(last.mod_revision() + 1);
                        apply_events(&mirror, &dir, resp.events());
                        changed(resp.header().map_or(last.mod_revision(), |h| h.revision()));
                    }
                }
                Ok(None) => {
                    ended = Some("the watch stream ended".to_owned());
                    break;
                }
                Err(e) => {
                    ended = Some(error_text(&e));
                    break;
                }
            }
        }
        if let Some(why) = ended {
            fail(why, &mut failing);
            backoff.wait().await;
        }
    }
}

/// Replaces the mirror with a whole read of the prefix at `rev` (re-using the values it holds
/// at the same revision) and starts its history there.
fn resync(mirror: &std::sync::Mutex<Mirror>, dir: &str, resp: &etcd_client::GetResponse, rev: i64) {
    let marker = format!("{dir}{MARKER}");
    let kvs: Vec<_> = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((std::str::from_utf8(kv.key()).ok()?, kv)))
        .filter(|(key, _)| *key != marker)
        .collect();
    let entries = decode_all(mirror, dir, &kvs);
    let mut mirror = lock(mirror);
    let entries = kvs
        .iter()
        .zip(entries)
        .map(|((key, _), entry)| ((*key).to_owned(), entry))
        .collect();
    mirror.replace(entries, rev);
    mirror.watched = true;
    mirror.synced = true;
}

/// Applies one watch response's events to the mirror, in order; values are decoded before
/// the lock is taken.
fn apply_events(mirror: &std::sync::Mutex<Mirror>, dir: &str, events: &[etcd_client::Event]) {
    let marker = format!("{dir}{MARKER}");
    let decoded: Vec<(String, i64, Option<Arc<Entry>>)> = events
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            let key = std::str::from_utf8(kv.key()).ok()?;
            if key == marker {
                return None;
            }
            let entry = match e.event_type() {
                etcd_client::EventType::Put => Some(Arc::new(Entry::decode(
                    dir,
                    key,
                    kv.value(),
                    kv.mod_revision(),
                    kv.lease(),
                ))),
                etcd_client::EventType::Delete => None,
            };
            Some((key.to_owned(), kv.mod_revision(), entry))
        })
        .collect();
    let last = events
        .iter()
        .filter_map(|e| e.kv())
        .map(etcd_client::KeyValue::mod_revision)
        .max()
        .unwrap_or(0);
    let mut mirror = lock(mirror);
    for (key, rev, entry) in decoded {
        match entry {
            Some(entry) => {
                mirror.entries.insert(key, entry);
            }
            None => {
                if mirror.entries.remove(&key).is_some() {
                    mirror.tombstones.push_back((rev, key));
                }
            }
        }
    }
    mirror.prune();
    mirror.revision = mirror.revision.max(last);
}

/// Why [`hold`] stopped.
#[derive(Debug)]
enum Held {
    /// etcd says the lease no longer exists (it expired).
    Lost,
    /// The connection failed; the lease may still be alive.
    Broken(String),
}

/// Keeps one registration's lease alive for as long as the task runs; see the module docs.
async fn keep_alive(
    conn: Arc<Conn>,
    ekey: String,
    value: Arc<std::sync::Mutex<String>>,
    lease: Arc<AtomicI64>,
    ttl: Duration,
) {
    // Retry well within the TTL: after an outage, the lease must be renewed before it runs
    // out (etcd gives every lease a fresh TTL when it comes back).
    let mut backoff = Backoff::up_to((ttl / 4).clamp(MIN_BACKOFF, MAX_BACKOFF));
    loop {
        let id = lease.load(Ordering::SeqCst);
        let client = match conn.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(key = %ekey, error = %e, "cannot keep the registration alive");
                backoff.wait().await;
                continue;
            }
        };
        match hold(client.clone(), id, ttl, &mut backoff).await {
            Held::Broken(why) => {
                tracing::warn!(store = %conn.url, key = %ekey, lease = id, error = %why, "registration keep-alive interrupted; retrying");
                backoff.wait().await;
            }
            Held::Lost => {
                tracing::warn!(store = %conn.url, key = %ekey, lease = id, "registration lease expired; registering again");
                let text = value
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                match regrant(client, &ekey, text, ttl).await {
                    Ok(new) => {
                        lease.store(new, Ordering::SeqCst);
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(store = %conn.url, key = %ekey, error = %error_text(&e), "cannot register again; retrying");
                        backoff.wait().await;
                    }
                }
            }
        }
    }
}

/// Sends keep-alives for `id` every third of `ttl` until the lease is gone or the stream
/// breaks.
async fn hold(mut client: Client, id: i64, ttl: Duration, backoff: &mut Backoff) -> Held {
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(pair) => pair,
        // etcd-client opens the stream with a first keep-alive and fails with this error
        // when etcd answers it with TTL 0: the lease is gone (it expired during an outage,
        // or was revoked). Retrying the same lease would fail forever; register again.
        Err(etcd_client::Error::LeaseKeepAliveError(why)) if why == "lease not found" => {
            return Held::Lost;
        }
        Err(e) => return Held::Broken(error_text(&e)),
    };
    let interval = (ttl / 3).max(Duration::from_millis(200));
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return Held::Broken(error_text(&e));
        }
        match tokio::time::timeout(ttl, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => backoff.reset(),
            Ok(Ok(Some(_))) => return Held::Lost,
            Ok(Ok(None)) => return Held::Broken("the keep-alive stream ended".to_owned()),
            Ok(Err(e)) => return Held::Broken(error_text(&e)),
            Err(_) => return Held::Broken("no keep-alive answer within the TTL".to_owned()),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Grants a new lease and writes the entry with it.
async fn regrant(
    mut client: Client,
    ekey: &str,
    value: String,
    ttl: Duration,
) -> Result<i64, etcd_client::Error> {
    let granted = client.lease_grant(ttl_secs(ttl), None).await?;
    client
        .put(
            ekey,
            value,
            Some(PutOptions::new().with_lease(granted.id())),
        )
        .await?;
    Ok(granted.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration's lease that is gone (expired during an outage, or revoked) is
    /// reported lost, so the entry is registered again, both when etcd says so as the
    /// keep-alive stream opens (etcd-client fails with "lease not found": this was taken
    /// for a broken stream and retried with the dead lease forever) and when it says so on
    /// the open stream (TTL 0). Real etcd, both orders forced.
    #[tokio::test]
    async fn a_lease_that_is_gone_is_reported_lost_not_broken() {
        let etcd = testkit::EtcdCluster::single().await.unwrap();
        let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
        let ttl = Duration::from_secs(3);
        let mut backoff = Backoff::up_to(Duration::from_millis(100));

        // Gone before the stream opens.
        let id = client.lease_grant(3, None).await.unwrap().id();
        client.lease_revoke(id).await.unwrap();
        let held = tokio::time::timeout(
            Duration::from_secs(10),
            hold(client.clone(), id, ttl, &mut backoff),
        )
        .await
        .expect("hold returns");
        assert!(matches!(held, Held::Lost), "{held:?}");

        // Gone while the stream is open: `hold` keeps a live lease until it is revoked.
        let id = client.lease_grant(3, None).await.unwrap().id();
        let holding = tokio::spawn({
            let client = client.clone();
            async move {
                let mut backoff = Backoff::up_to(Duration::from_millis(100));
                hold(client, id, ttl, &mut backoff).await
            }
        });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(!holding.is_finished(), "a live lease is held");
        client.lease_revoke(id).await.unwrap();
        let held = tokio::time::timeout(Duration::from_secs(10), holding)
            .await
            .expect("hold returns")
            .unwrap();
        assert!(matches!(held, Held::Lost), "{held:?}");
    }

    #[test]
    fn normalizes_prefixes() {
        assert_eq!(normalize_prefix("/mesh/"), "/mesh");
        assert_eq!(normalize_prefix("mesh"), "/mesh");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("/a/b"), "/a/b");
    }

    #[test]
    fn rounds_lease_ttls_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }

    #[test]
    fn lays_out_keys_by_kind_namespace_and_name() {
        let store = EtcdStore::new(["127.0.0.1:2379"]).prefix("/prod/mesh/");
        let key = ResourceKey::new(Kind::VirtualService, "shop", "reviews");
        assert_eq!(
            store.key_of(&key),
            "/prod/mesh/virtualservices/shop/reviews"
        );
        assert_eq!(store.url(), "etcd://127.0.0.1:2379?prefix=/prod/mesh");
    }

    #[test]
    fn stored_json_reads_as_the_yaml_reader_reads_it() {
        let yaml = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}, weight: 100}]
    timeout: 3s
";
        let resource = config::load_str(yaml, None).resources.remove(0);
        let stored = encode(&resource);
        let key = "/mesh/virtualservices/shop/reviews";
        let fast = load_value(key, stored.as_bytes());
        let slow = config::load_str(
            &stored,
            Some(Path::new("etcd:/mesh/virtualservices/shop/reviews")),
        );
        assert!(fast.findings.is_empty(), "{:?}", fast.findings);
        assert_eq!(fast.resources.len(), 1);
        assert_eq!(fast.resources[0].spec, slow.resources[0].spec);
        assert_eq!(fast.resources[0].metadata, slow.resources[0].metadata);
        assert_eq!(fast.resources[0].spec, resource.spec);
        // Schema errors are reported as the YAML reader reports them, naming the key.
        let bad = stored.replace("\"timeout\":\"3s\"", "\"timeout\":\"3 parsecs\"");
        assert_ne!(bad, stored);
        let fast = load_value(key, bad.as_bytes());
        let slow = config::load_str(
            &bad,
            Some(Path::new("etcd:/mesh/virtualservices/shop/reviews")),
        );
        assert!(fast.resources.is_empty());
        assert_eq!(fast.findings.len(), 1);
        assert_eq!(fast.findings[0].field, slow.findings[0].field);
        assert_eq!(fast.findings[0].message, slow.findings[0].message);
        assert_eq!(
            fast.findings[0]
                .file
                .as_ref()
                .and_then(|o| o.file.as_deref()),
            Some(Path::new("etcd:/mesh/virtualservices/shop/reviews"))
        );
        // YAML (another tool's write) still reads.
        assert_eq!(load_value(key, yaml.as_bytes()).resources.len(), 1);
    }

    #[test]
    fn refuses_a_value_stored_under_another_key() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {}\n";
        let (ok, findings) = decode(
            "/mesh/",
            "/mesh/authorizationpolicies/shop/a",
            yaml.as_bytes(),
            7,
            0,
        );
        assert!(findings.is_empty(), "{findings:?}");
        let ok = ok.expect("decoded");
        assert_eq!(ok.resource.metadata.resource_version.as_deref(), Some("7"));
        let (bad, findings) = decode(
            "/mesh/",
            "/mesh/authorizationpolicies/shop/b",
            yaml.as_bytes(),
            7,
            0,
        );
        assert!(bad.is_none());
        assert!(findings[0].message.contains("the key says"), "{findings:?}");
        assert_eq!(
            findings[0].file.as_ref().and_then(|o| o.file.as_deref()),
            Some(Path::new("etcd:/mesh/authorizationpolicies/shop/b"))
        );
        let (none, findings) = decode("/mesh/", "/mesh/x/y/z", b"\xff", 1, 0);
        assert!(none.is_none() && findings[0].is_error());
        // Only the key the resource names: one key, one resource.
        let (deeper, findings) = decode(
            "/mesh/",
            "/mesh/x/authorizationpolicies/shop/a",
            yaml.as_bytes(),
            7,
            0,
        );
        assert!(deeper.is_none());
        assert!(findings[0].message.contains("the key says"), "{findings:?}");
    }

    #[test]
    fn keys_name_their_resource() {
        assert_eq!(
            key_of_path("/mesh/", "/mesh/virtualservices/shop/reviews"),
            Some(ResourceKey::new(Kind::VirtualService, "shop", "reviews"))
        );
        for odd in [
            "/mesh/.revision",
            "/mesh/virtualservices/shop",
            "/mesh/virtualservices/shop/reviews/x",
            "/mesh/things/shop/reviews",
            "/other/virtualservices/shop/reviews",
            "/mesh/virtualservices//reviews",
        ] {
            assert_eq!(key_of_path("/mesh/", odd), None, "{odd}");
        }
    }

    fn entry(rev: i64) -> Arc<Entry> {
        Arc::new(Entry {
            mod_revision: rev,
            resource: None,
            findings: Vec::new(),
        })
    }

    #[test]
    fn mirror_history_covers_readers_at_exact_revisions_only() {
        let mut m = Mirror::default();
        // Filled by a listing at 10, then read whole by the watch at 15: a reader of that
        // listing (10) or of anything from 15 on is covered; one in between is not.
        m.replace(
            [("k1".to_owned(), entry(3)), ("k2".to_owned(), entry(4))].into(),
            10,
        );
        m.replace([("k1".to_owned(), entry(3))].into(), 15);
        m.watched = true;
        m.synced = true;
        assert!(m.answers(10) && m.answers(15) && m.answers(40));
        assert!(!m.answers(9) && !m.answers(12));
        assert_eq!(m.tombstones, [(15, "k2".to_owned())]);
        // Another whole read (after a compaction) at 30 keeps 15..=20 (the mirror was exact at
        // 20) and drops the history before the previous gap.
        m.revision = 20;
        m.replace(HashMap::new(), 30);
        assert!(m.answers(15) && m.answers(20) && m.answers(30));
        assert!(!m.answers(10) && !m.answers(25));
        assert_eq!(m.tombstones.back(), Some(&(30, "k1".to_owned())));
        // Out of sync: nobody.
        m.synced = false;
        assert!(!m.answers(30));
    }
}
