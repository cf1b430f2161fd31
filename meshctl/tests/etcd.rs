//! `meshctl --store etcd://…` as a user runs it: the real binary against a real etcd on a
//! free loopback port (Debian's `etcd-server`).

mod support;

use support::{Run, compat};
use testkit::EtcdCluster;

/// `meshctl --store STORE …`.
fn meshctl(store: &str, args: &[&str], stdin: Option<&str>) -> Run {
    support::meshctl(&["--store", store], args, stdin)
}

#[tokio::test]
async fn apply_get_analyze_delete_through_etcd() {
    let etcd = EtcdCluster::single().await.unwrap();
    let s = &etcd.store_url();
    let r = meshctl(
        s,
        &[
            "apply",
            "-f",
            &compat("destination-rule-all.yaml"),
            "-f",
            &compat("virtual-service-all-v1.yaml"),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("virtualservice.networking.istio.io/reviews created"),
        "{}",
        r.stdout
    );
    let r = meshctl(
        s,
        &["apply", "-f", &compat("destination-rule-all.yaml")],
        None,
    );
    assert!(
        r.stdout
            .contains("destinationrule.networking.istio.io/reviews unchanged"),
        "{}",
        r.stdout
    );

    // Another process (another machine, as far as etcd knows) reads what was applied.
    let r = meshctl(s, &["get", "vs"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("NAME") && r.stdout.contains("reviews"),
        "{}",
        r.stdout
    );
    let r = meshctl(s, &["get", "virtualservice", "reviews", "-o", "json"], None);
    let vs: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(vs["metadata"]["resourceVersion"].as_str().is_some(), "{vs}");
    assert!(
        vs["metadata"]["creationTimestamp"].as_str().is_some(),
        "{vs}"
    );

    // `get -o yaml` output applies back unchanged (its resourceVersions still match).
    let r = meshctl(s, &["get", "dr", "-o", "yaml"], None);
    let again = meshctl(s, &["apply", "-f", "-"], Some(&r.stdout));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        4,
        "{}",
        again.stdout
    );

    // analyze checks files against what etcd holds: a route to a subset nobody defines.
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v9}\n";
    let r = meshctl(s, &["analyze", "-f", "-"], Some(bad));
    assert_eq!(r.code, 79, "{}\n{}", r.stdout, r.stderr);
    let r = meshctl(s, &["analyze"], None);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    // A refused apply writes nothing.
    let r = meshctl(s, &["apply", "-f", "-"], Some(bad));
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("v9"), "{}", r.stderr);
    let r = meshctl(s, &["get", "vs", "broken"], None);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);

    // Deleting a rule still in use is refused; route first, then rule.
    let r = meshctl(s, &["delete", "destinationrule", "reviews"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("reviews+v1"), "{}", r.stderr);
    let r = meshctl(s, &["delete", "vs", "reviews"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("virtualservice.networking.istio.io \"reviews\" deleted")
    );
    let r = meshctl(s, &["get", "vs", "reviews"], None);
    assert_eq!(r.code, 1);
}

#[tokio::test]
async fn unreachable_etcd_is_an_error_naming_the_store() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("etcd://127.0.0.1:{port}");
    let r = meshctl(&url, &["get", "vs"], None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
}
