//! Bookinfo on etcd: the real `bookinfo up --store etcd://…` (seven processes) against a real
//! etcd on a free loopback port. A VirtualService applied through etcd changes routing; a
//! reviews workload killed with SIGKILL leaves the registry when its lease expires while a
//! steady stream of page loads sees no failure. With etcd down the mesh keeps serving its
//! last configuration and reports the outage; when etcd returns, changes flow again.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mesh_core::config::{Kind, ResourceKey, load_str};
use serde_json::Value;
use support::{Up, free_port, kill};
use testkit::EtcdCluster;

/// The registration lease TTL the workloads get (through the store URL).
const LEASE_TTL: Duration = Duration::from_secs(2);

const REVIEWS_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
";

/// Which reviews workload served a page: the name after "Reviews served by: ".
fn served_by(page: &str) -> Option<&str> {
    let rest = page.split("served by: ").nth(1)?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))?;
    Some(&rest[..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_on_etcd_routes_drops_dead_workloads_and_survives_an_outage() {
    let mut etcd = EtcdCluster::single().await.expect("etcd starts");
    let url = format!("{}?lease_ttl={}s", etcd.store_url(), LEASE_TTL.as_secs());
    let store = mesh_core::store::open(&url).unwrap();
    // Every workload ready and registered in etcd; the page answers with reviews.
    let mut up = Up::start(&["--store", &url, "--mtls", "off"], &[]).await;
    up.wait_ready().await;
    let admin = up.admin;
    let page_url = format!("http://{}/productpage", up.gateway);
    let entries = store.list().await.unwrap().resources;
    let registered = entries
        .iter()
        .filter(|r| r.kind() == Kind::WorkloadEntry)
        .count();
    assert_eq!(registered, 7, "every workload registered in etcd");

    // A VirtualService applied through etcd sends every request to reviews v2.
    let loaded = load_str(REVIEWS_V2, None);
    store.apply(loaded.resources).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut streak = 0;
    while streak < 10 {
        assert!(
            Instant::now() < deadline,
            "routing did not move to reviews v2"
        );
        let (status, page) = up.get_url(&page_url).await.unwrap_or((0, String::new()));
        if status == 200 && served_by(&page).is_some_and(|s| s.starts_with("reviews-v2-")) {
            streak += 1;
        } else {
            streak = 0;
        }
    }

    // A second reviews v2, started by hand (not supervised: nobody deregisters it for it).
    let extra_name = "reviews-v2-extra";
    let mut extra = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args([
            "service",
            "reviews",
            "--version",
            "v2",
            "--name",
            extra_name,
        ])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--store", &url])
        .env_remove("MESH_CONFIG_DIR")
        .env_remove("MESH_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("reviews starts");
    let extra_pid = extra.id();
    // Killed with the others if the test fails half-way.
    up.seen_pids.push(extra_pid);
    let extra_key = ResourceKey::new(Kind::WorkloadEntry, "default", extra_name);
    // Wait until callers use it: some page is served by it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the extra reviews never served a page"
        );
        if let Ok((200, page)) = up.get_url(&page_url).await
            && served_by(&page) == Some(extra_name)
        {
            break;
        }
    }
    assert!(store.get(&extra_key).await.unwrap().is_some());

    // SIGKILL: no deregistration. Its entry leaves when the lease expires; meanwhile every
    // page load still succeeds, served by the other v2.
    assert!(kill("KILL", extra_pid));
    let _ = extra.wait();
    let killed = Instant::now();
    let mut gone_after = None;
    let mut loads = 0;
    while killed.elapsed() < LEASE_TTL + Duration::from_secs(3) {
        let (status, page) = up.get_url(&page_url).await.unwrap_or((0, String::new()));
        loads += 1;
        assert_eq!(
            status, 200,
            "page load {loads} failed after the kill: {page}"
        );
        assert!(
            served_by(&page).is_some_and(|s| s.starts_with("reviews-v2-")),
            "page load {loads} lost its reviews: {page}"
        );
        if gone_after.is_none() && store.get(&extra_key).await.unwrap().is_none() {
            gone_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = gone_after.expect("the killed workload's entry left the registry");
    eprintln!(
        "entry gone {gone_after:?} after SIGKILL (lease TTL {LEASE_TTL:?}); {loads} page loads, none failed"
    );
    // etcd checks expiry every 500 ms or so: allow a second past the TTL.
    assert!(
        gone_after <= LEASE_TTL + Duration::from_secs(1),
        "entry left after {gone_after:?}"
    );

    // etcd goes away entirely: the mesh keeps serving with its last snapshot and every
    // workload reports the outage in its config status.
    let rows: Vec<Value> = match up.get_url(&format!("http://{admin}/workloads")).await {
        Ok((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("/workloads: {other:?}"),
    };
    let productpage_admin = rows
        .iter()
        .find(|r| r["app"] == "productpage")
        .and_then(|r| r["admin"].as_str())
        .expect("productpage's admin URL")
        .trim_end_matches('/')
        .to_owned();
    etcd.stop_all().await;
    let down = Instant::now();
    let mut reported = false;
    let mut loads = 0;
    while down.elapsed() < Duration::from_secs(4) {
        let (status, page) = up.get_url(&page_url).await.unwrap_or((0, String::new()));
        loads += 1;
        assert_eq!(
            status, 200,
            "page load {loads} failed with etcd down: {page}"
        );
        assert!(
            served_by(&page).is_some_and(|s| s.starts_with("reviews-v2-")),
            "page load {loads} with etcd down lost its routing: {page}"
        );
        if !reported
            && let Ok((200, body)) = up.get_url(&format!("{productpage_admin}/config")).await
            && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["storeError"].is_string())
        {
            reported = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reported,
        "productpage's /config never reported the store error"
    );

    // etcd returns: the error clears and a change applied now changes routing.
    etcd.start_all().await.expect("etcd restarts");
    let loaded = load_str(&REVIEWS_V2.replace("subset: v2", "subset: v1"), None);
    store.apply(loaded.resources).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut streak = 0;
    while streak < 10 {
        assert!(
            Instant::now() < deadline,
            "routing did not move to reviews v1 after etcd returned"
        );
        let (status, page) = up.get_url(&page_url).await.unwrap_or((0, String::new()));
        if status == 200 && served_by(&page).is_some_and(|s| s.starts_with("reviews-v1-")) {
            streak += 1;
        } else {
            streak = 0;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = up.get_url(&format!("{productpage_admin}/config")).await
            && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["storeError"].is_null())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the store error never cleared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every workload is registered again (their leases survived or were granted anew).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = store.list().await.map(|l| l.resources).unwrap_or_default();
        if entries
            .iter()
            .filter(|r| r.kind() == Kind::WorkloadEntry)
            .count()
            == 7
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registrations did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
