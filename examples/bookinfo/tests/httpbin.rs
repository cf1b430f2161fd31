//! `bookinfo service httpbin`, the real binary on a temporary config dir: it registers as
//! `app: httpbin`, `version: v1`, service account `httpbin`, and a client workload reaches it
//! through the mesh at `http://httpbin:8000/…`.

use std::{process::Stdio, sync::Arc, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_core::{
    config::Spec,
    store::{self, Store},
};
use mesh_tower::mesh::{HttpClient, Mesh, Workload};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;

const PATIENCE: Duration = Duration::from_secs(30);

async fn call(client: &HttpClient, path: &str) -> (StatusCode, Value) {
    let req = http::Request::get(format!("http://httpbin:8000{path}"))
        .header("x-test", "yes")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpbin_runs_alone_and_answers_through_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bookinfo"))
        .args(["service", "httpbin", "--supervised", "--drain-delay", "0s"])
        .arg("--config-dir")
        .arg(dir.path())
        .env_remove("MESH_CONFIG_DIR")
        .env_remove("MESH_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = tokio::time::timeout(PATIENCE, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("exited before ready");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v.get("ready").is_some()
            {
                return v;
            }
        }
    })
    .await
    .expect("httpbin is not ready");
    assert_eq!(ready["ready"]["app"], "httpbin");
    assert_eq!(ready["ready"]["version"], "v1");

    let store: Arc<dyn Store> = store::open(&format!("file:{}", dir.path().display())).unwrap();
    let entry = store
        .list()
        .await
        .unwrap()
        .resources
        .into_iter()
        .find_map(|r| match r.spec {
            Spec::WorkloadEntry(we) if r.metadata.name.starts_with("httpbin-v1-") => Some(we),
            _ => None,
        })
        .expect("httpbin registered");
    assert_eq!(entry.labels.get("app").map(String::as_str), Some("httpbin"));
    assert_eq!(entry.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(entry.service_account, "httpbin");

    let client = Mesh::builder(
        store,
        Workload::new("sleep", "default").label("app", "sleep"),
    )
    .start()
    .await
    .unwrap();
    client.ready().await;
    let client = client.http_client();

    let (status, body) = call(&client, "/status/503").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, Value::Null);
    let (status, body) = call(&client, "/headers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["headers"]["X-Test"], "yes", "{body}");
    assert_eq!(body["headers"]["Host"], "httpbin:8000", "{body}");
    let (status, body) = call(&client, "/get?a=1&a=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["args"]["a"], serde_json::json!(["1", "2"]), "{body}");
    assert_eq!(body["url"], "http://httpbin:8000/get?a=1&a=2", "{body}");
    assert_eq!(body["origin"], "127.0.0.1", "{body}");
    let (status, body) = call(&client, "/delay/0.01").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["url"], "http://httpbin:8000/delay/0.01", "{body}");
    let (status, body) = call(&client, "/delay/later").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("later"), "{body}");

    // End of stdin: deregister, drain, exit 0.
    drop(stdin);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
