//! The admin endpoint of a running `Mesh`, read over loopback HTTP as an operator (or
//! `curl`) would: readiness, the configuration dump, clusters with endpoint state, and the
//! workload's certificates.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use mesh_ca::{
    CaOptions, CertificateAuthority,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
};
use mesh_core::{
    config::load_str,
    store::{FileStore, Store},
};
use mesh_tower::{
    admin,
    mesh::{Mesh, Workload},
    tls::TlsIdentity,
};
use serde_json::Value;
use tokio::net::TcpListener;

const CONFIG: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1, namespace: default }
spec: { address: 127.0.0.1, ports: { http: 9081 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2, namespace: default }
spec: { address: 127.0.0.2, ports: { http: 9082 }, labels: { app: reviews, version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
";

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = client
        .get(format!("http://{addr}{path}").parse().expect("uri"))
        .await
        .expect("admin answers");
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        ctype,
        String::from_utf8(body.to_vec()).expect("utf-8"),
    )
}

#[tokio::test]
async fn the_admin_endpoint_shows_readiness_config_clusters_and_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let loaded = load_str(CONFIG, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    store.apply(loaded.resources).await.expect("apply");

    let ca = CertificateAuthority::self_signed(&CaOptions::root()).expect("CA");
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let id = Identity::in_default_trust_domain("default", "productpage").expect("id");
    let bundle = ca
        .issue(&id, &key, Duration::from_secs(3600))
        .expect("issue");
    let tls = TlsIdentity::from_pem(
        bundle.chain_pem(),
        key.to_pem().expose_secret(),
        ca.trust_bundle_pem(),
    )
    .expect("credentials");
    // The certificate arrives after the mesh started: /ready must say not ready until then.
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mesh = Mesh::builder(
        store.clone(),
        Workload::new("productpage-v1", "default").label("app", "productpage"),
    )
    .identity(rx)
    .start()
    .await
    .expect("mesh");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(admin::serve(listener, mesh.admin(), async {
        let _ = stop_rx.await;
    }));

    let (status, _, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no workload certificate yet"), "{body}");
    let (_, _, certs) = get(addr, "/certs").await;
    let certs: Value = serde_json::from_str(&certs).expect("certs JSON");
    assert_eq!(certs["identity"], Value::Null);

    tx.send(Some(Arc::new(tls))).expect("send identity");
    mesh.ready().await;
    let (status, ctype, body) = get(addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain"));
    assert!(body.contains("store: reachable"), "{body}");
    assert!(
        body.contains(&format!("file:{}", dir.path().display())),
        "{body}"
    );

    // The configuration dump: the status and every resource of the live snapshot.
    let (status, ctype, body) = get(addr, "/config_dump").await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let dump: Value = serde_json::from_str(&body).expect("config_dump JSON");
    assert_eq!(dump["workload"]["name"], "productpage-v1");
    assert!(
        dump["status"]["generation"].as_u64().unwrap_or(0) >= 1,
        "{dump}"
    );
    let kinds: Vec<&str> = dump["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"DestinationRule"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "WorkloadEntry").count(),
        2,
        "{kinds:?}"
    );

    // Clusters, Envoy-style: the service, and each subset with only its endpoints.
    let (_, _, text) = get(addr, "/clusters").await;
    let host = "reviews.default.svc.cluster.local";
    assert!(
        text.contains(&format!(
            "outbound|0||{host}::127.0.0.1:9081::health_flags::healthy"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "outbound|0|v2|{host}::127.0.0.2:9082::rq_active::0"
        )),
        "{text}"
    );
    assert!(
        !text.contains(&format!("outbound|0|v2|{host}::127.0.0.1:9081")),
        "v1's endpoint listed under v2: {text}"
    );
    let (_, _, json) = get(addr, "/clusters?format=json").await;
    let json: Value = serde_json::from_str(&json).expect("clusters JSON");
    let v1 = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["host"] == host && c["subset"] == "v1")
        .expect("the v1 cluster");
    assert_eq!(v1["endpoints"][0]["address"], "127.0.0.1:9081");
    assert_eq!(v1["endpoints"][0]["workload"], "default/reviews-v1");
    assert_eq!(v1["endpoints"][0]["ejected"], false);

    // Certificates: the identity, the chain with its SPIFFE SAN, and the root.
    let (_, _, certs) = get(addr, "/certs").await;
    let certs: Value = serde_json::from_str(&certs).expect("certs JSON");
    assert_eq!(
        certs["identity"],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    let expiry = certs["secondsUntilExpiry"].as_i64().expect("expiry");
    assert!((3000..=3600).contains(&expiry), "{expiry}");
    assert_eq!(
        certs["chain"][0]["uriSans"][0],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    assert_eq!(certs["chain"][0]["isCa"], false);
    assert_eq!(certs["roots"][0]["isCa"], true);

    // Metrics in Prometheus' text format: the mesh's own counters are there from the start
    // (Istio's request metrics appear with the first request).
    let (status, ctype, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE mesh_config_generation gauge"),
        "{text}"
    );
    assert!(text.contains("mesh_certificate_expiry_seconds"), "{text}");
    // Unknown pages and other methods are refused.
    assert_eq!(get(addr, "/nope").await.0, 404);
    let post = http::Request::post("/ready").body(()).expect("request");
    assert_eq!(mesh.admin().respond(&post).status(), 405);

    let _ = stop_tx.send(());
    serving.await.expect("task").expect("serve");
}
