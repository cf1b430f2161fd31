//! The etcd store at scale: how long a change takes to reach many watching meshes, and what
//! the endpoints cost in memory.
//!
//! Starts a real etcd (`/usr/bin/etcd`, Debian's `etcd-server`) on a free loopback port,
//! stores WorkloadEntries and VirtualServices in it, and starts N [`ConfigWatcher`]s, each
//! with its own etcd connection and the snapshot compiler a `Mesh` uses
//! ([`Snapshot::build_with`]): N meshes, as far as etcd and the config path are concerned.
//! Then it applies changes one at a time and measures, for every watcher, the time from the
//! `apply` call to that watcher's new snapshot being live.
//!
//! ```text
//! cargo bench -p mesh-core --bench etcd_scale            # full: 1,000 entries, 500 VSs, 50 watchers
//! cargo test -p mesh-core --bench etcd_scale             # small, as a smoke test
//! MESH_BENCH_WATCHERS=10 cargo bench -p mesh-core --bench etcd_scale   # fewer watchers
//! ```
//!
//! Memory: the process's RSS (`/proc/self/status`) after the watchers hold the virtual
//! services only, and again once they also hold the entries; the growth divided by the number
//! of watchers is the memory one mesh spends on those endpoints.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mesh_core::{
    config::{Resource, load_str},
    snapshot::{MeshSettings, Snapshot},
    store::{ConfigWatcher, Store},
    validate::{Finding, Findings, Severity, codes, validate_all},
};
use testkit::EtcdCluster;

/// One run's size.
#[derive(Clone, Copy, Debug)]
struct Size {
    entries: usize,
    services: usize,
    watchers: usize,
    changes: usize,
}

const FULL: Size = Size {
    entries: 1_000,
    services: 500,
    watchers: 50,
    changes: 10,
};

const SMALL: Size = Size {
    entries: 40,
    services: 20,
    watchers: 4,
    changes: 3,
};

fn compile(rs: &[Resource]) -> Result<Snapshot, Findings> {
    Snapshot::build_with(rs, MeshSettings::default()).map_err(|e| {
        let mut f = Finding::new(
            codes::SCHEMA_VALIDATION_ERROR,
            Severity::Error,
            e.message.clone(),
        );
        f.resource = Some(e.resource);
        Findings(vec![f])
    })
}

fn parse(yaml: &str) -> Vec<Resource> {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    loaded.resources
}

/// Service `i`: a ServiceEntry for `svc-i` and a VirtualService with a timeout of `t` s.
fn service(i: usize, t: usize) -> Vec<Resource> {
    parse(&format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: svc-{i}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}]
  http:
  - timeout: {t}s
    route:
    - destination: {{host: svc-{i}}}
"
    ))
}

/// Workload entry `i`, one of the endpoints of `svc-(i % services)`.
fn entry(i: usize, services: usize) -> Resource {
    let (a, b) = (i / 250, i % 250 + 1);
    parse(&format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: we-{i}}}
spec:
  address: 127.0.{a}.{b}
  ports: {{http: 9080}}
  labels: {{app: svc-{}, version: v1}}
",
        i % services
    ))
    .remove(0)
}

/// Applies `resources` from another thread with its own runtime and connection, as
/// `meshctl` on another machine would: the watchers' work must not delay the write itself.
async fn apply_elsewhere(url: &str, resources: Vec<Resource>) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { mesh_core::store::open(&url)?.apply(resources).await })
    })
    .await
    .expect("the writer thread")
    .expect("the apply");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (clock ticks of
/// 10 ms: precise enough over hundreds of reloads).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The 1-minute load average: the machine may be shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until every watcher's generation passed `from[i]`; returns each one's latency.
async fn wait_all(
    watchers: &[ConfigWatcher<Snapshot>],
    from: &[u64],
    start: Instant,
    patience: Duration,
) -> Vec<Duration> {
    let mut set = tokio::task::JoinSet::new();
    for (w, &g) in watchers.iter().zip(from) {
        let mut rx = w.changed();
        set.spawn(async move {
            tokio::time::timeout(patience, rx.wait_for(|n| *n > g))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|_| start.elapsed())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(
            r.ok()
                .flatten()
                .expect("every watcher sees the change in time"),
        );
    }
    out
}

fn main() {
    // `cargo bench` passes --bench; `cargo bench -- --test` (CI) and `cargo test` run small.
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full")
        || (args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test"));
    let mut size = if full { FULL } else { SMALL };
    // `MESH_BENCH_WATCHERS=10 cargo bench …`: how latency scales with the watcher count.
    if let Some(n) = std::env::var("MESH_BENCH_WATCHERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        size.watchers = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(size));
}

async fn run(size: Size) {
    println!("etcd_scale: {size:?}");
    let etcd = EtcdCluster::single().await.expect("etcd starts");
    let url = etcd.store_url();

    // The services first, in batches (each apply validates the whole set).
    let started = Instant::now();
    let all: Vec<Resource> = (0..size.services).flat_map(|i| service(i, 1)).collect();
    for batch in all.chunks(200) {
        apply_elsewhere(&url, batch.to_vec()).await;
    }
    println!(
        "stored {} services (ServiceEntry + VirtualService) in {:?}",
        size.services,
        started.elapsed()
    );

    // What one watcher's reload costs, step by step, with everything stored.
    let entries: Vec<Resource> = (0..size.entries).map(|i| entry(i, size.services)).collect();
    {
        let probe = mesh_core::store::open(&url).unwrap();
        let t = Instant::now();
        let cold = probe.list().await.unwrap();
        let list_cold = t.elapsed();
        let t = Instant::now();
        let _ = probe.list().await.unwrap();
        let list_warm = t.elapsed();
        let mut with_entries = cold.resources.clone();
        with_entries.extend(entries.iter().cloned());
        let t = Instant::now();
        let findings = validate_all(&with_entries);
        let validate = t.elapsed();
        assert!(!findings.has_errors(), "{findings}");
        let t = Instant::now();
        let _ = compile(&with_entries).unwrap();
        let build = t.elapsed();
        println!(
            "one reload: list of {} stored resources {:.1} ms (first, parsing every value) / {:.1} ms (later, parsing only changed values); for {} resources: validate_all {:.1} ms, Snapshot::build {:.1} ms",
            cold.resources.len(),
            list_cold.as_secs_f64() * 1e3,
            list_warm.as_secs_f64() * 1e3,
            with_entries.len(),
            validate.as_secs_f64() * 1e3,
            build.as_secs_f64() * 1e3,
        );
    }

    let rss_before = rss_kib();
    let mut watchers = Vec::with_capacity(size.watchers);
    let started = Instant::now();
    for _ in 0..size.watchers {
        let store: Arc<dyn Store> = mesh_core::store::open(&url).unwrap();
        let w = ConfigWatcher::start(store, compile).await.unwrap();
        w.ready().await;
        watchers.push(w);
    }
    println!(
        "{} watchers loaded in {:?}",
        size.watchers,
        started.elapsed()
    );
    let rss_services = rss_kib();

    // The endpoints: registered in batches; wait until every watcher has all of them.
    let started = Instant::now();
    let entries: Vec<Resource> = (0..size.entries).map(|i| entry(i, size.services)).collect();
    for batch in entries.chunks(250) {
        apply_elsewhere(&url, batch.to_vec()).await;
    }
    let want = size.services * 2 + size.entries;
    for w in &watchers {
        let mut rx = w.status_changes();
        tokio::time::timeout(
            Duration::from_secs(120),
            rx.wait_for(|s| s.resources == want),
        )
        .await
        .expect("every watcher loads every entry")
        .unwrap();
    }
    println!(
        "stored {} workload entries; every watcher has them after {:?}",
        size.entries,
        started.elapsed()
    );
    let rss_entries = rss_kib();
    let snapshot = watchers[0].current();
    let endpoints = snapshot
        .services()
        .map(|s| snapshot.endpoints(&s.host, None).len())
        .sum::<usize>();
    println!("endpoints in one snapshot: {endpoints}");

    // Changes, one at a time: a VirtualService's timeout.
    let mut samples = Vec::new();
    let mut worst_per_change = Vec::new();
    let mut applies = Vec::new();
    let cpu_before = cpu_time();
    let load_before = load_average();
    for c in 0..size.changes {
        let from: Vec<u64> = watchers.iter().map(|w| *w.changed().borrow()).collect();
        let svc = (c * 7) % size.services;
        let start = Instant::now();
        apply_elsewhere(&url, service(svc, 2 + c)).await;
        applies.push(start.elapsed());
        let lat = wait_all(&watchers, &from, start, Duration::from_secs(30)).await;
        worst_per_change.push(lat.iter().copied().max().unwrap_or_default());
        samples.extend(lat);
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    samples.sort();
    worst_per_change.sort();
    applies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "the apply itself (a fresh handle: it reads and decodes every stored value, validates, writes): p50 {:.0} ms, max {:.0} ms",
        ms(percentile(&applies, 50.0)),
        ms(*applies.last().unwrap_or(&Duration::ZERO)),
    );
    let reloads = (size.changes * size.watchers).max(1);
    println!(
        "CPU during the changes: {:.0} ms in this process, {:.1} ms per watcher reload (load average {} before, {} after)",
        ms(cpu),
        ms(cpu) / reloads as f64,
        load_before,
        load_average(),
    );
    println!(
        "change → every watcher's new snapshot, {} samples ({} changes × {} watchers): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        size.changes,
        size.watchers,
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "time until the last watcher has a change: p50 {:.0} ms, p99 {:.0} ms",
        ms(percentile(&worst_per_change, 50.0)),
        ms(percentile(&worst_per_change, 99.0)),
    );
    let per_watcher_services =
        rss_services.saturating_sub(rss_before) as f64 / size.watchers as f64;
    let per_watcher_entries =
        rss_entries.saturating_sub(rss_services) as f64 / size.watchers as f64;
    let per_1000 = per_watcher_entries * 1000.0 / size.entries.max(1) as f64;
    println!(
        "RSS: {} KiB before watchers, {} KiB with {} services, {} KiB with {} entries",
        rss_before, rss_services, size.services, rss_entries, size.entries
    );
    println!(
        "memory per watcher: {:.0} KiB for {} services; {:.0} KiB per 1,000 endpoints",
        per_watcher_services, size.services, per_1000
    );
    drop(watchers);
}
