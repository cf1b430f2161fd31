//! Mutual TLS wired into `Mesh`: workloads with certificates from mesh-ca serve and call each
//! other on loopback, with PeerAuthentication, AuthorizationPolicy, secure naming, auto-mTLS,
//! `openssl s_client` as an independent client, and certificate rotation under load.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_ca::{
    CaOptions, CertificateAuthority,
    client::{CaClient, LocalCa},
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
    rotation::{CertManager, CertManagerConfig, WorkloadCert},
};
use mesh_core::{
    config::load_str,
    snapshot::Snapshot,
    store::{FileStore, Store},
};
use mesh_tower::{
    body::{self, Body},
    connect::Connect,
    flags::ResponseFlags,
    mesh::{Mesh, Workload},
    server::ServeSummary,
    tls::{self, IdentityWatch, InboundMode, PeerIdentity, TlsIdentity, UpstreamTls, policy},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceExt;

const PATIENCE: Duration = Duration::from_secs(15);
const HOUR: Duration = Duration::from_secs(3600);

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
";

const PERMISSIVE: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: PERMISSIVE } }
";

// === fixtures ===

fn new_ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::self_signed(&CaOptions::root()).expect("CA"))
}

fn id(sa: &str) -> Identity {
    Identity::in_default_trust_domain("default", sa).expect("identity")
}

/// A certificate for `sa` valid for an hour, its key PEM, and the identity built from them.
fn issue(ca: &CertificateAuthority, sa: &str) -> (mesh_ca::CertBundle, String, TlsIdentity) {
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let bundle = ca.issue(&id(sa), &key, HOUR).expect("issue");
    let key_pem = key.to_pem().expose_secret().to_owned();
    let tls = TlsIdentity::from_pem(bundle.chain_pem(), &key_pem, ca.trust_bundle_pem())
        .expect("credentials");
    (bundle, key_pem, tls)
}

/// A fixed identity source for `sa` (the sender is kept alive for the test).
fn identity(ca: &CertificateAuthority, sa: &str) -> IdentityWatch {
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(issue(ca, sa).2)));
    std::mem::forget(tx);
    rx
}

fn file_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    (dir, store)
}

async fn apply(store: &Arc<dyn Store>, yaml: &str) {
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    store.apply(loaded.resources).await.expect("apply");
}

/// Waits until `mesh`'s snapshot satisfies `pred`.
async fn until(mesh: &Mesh, what: &str, pred: impl Fn(&Snapshot) -> bool) {
    let mut rx = mesh.changed();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if pred(&mesh.snapshot()) {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}");
        }
    }
}

fn endpoint_count(mesh: &Mesh, app: &str) -> usize {
    mesh.snapshot()
        .endpoints(&format!("{app}.default.svc.cluster.local"), None)
        .len()
}

/// A serving workload. Its app answers `<name> <caller identity or -> <caller serial or ->`;
/// `/close` also asks the client to close the connection.
struct Server {
    mesh: Mesh,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<ServeSummary>,
}

impl Server {
    async fn start(
        store: &Arc<dyn Store>,
        name: &str,
        app: &str,
        sa: &str,
        identity: Option<IdentityWatch>,
    ) -> Server {
        let mut builder = Mesh::builder(
            store.clone(),
            Workload::new(name, "default")
                .label("app", app)
                .service_account(sa),
        )
        .drain_delay(Duration::from_millis(100));
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        let mesh = builder.start().await.expect("mesh");
        mesh.ready().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel::<()>();
        let who = name.to_owned();
        let counter = hits.clone();
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let peer = req.extensions().get::<PeerIdentity>();
            let text = format!(
                "{who} {} {}",
                peer.map_or_else(|| "-".to_owned(), |p| p.identity.to_string()),
                peer.map_or("-", |p| &*p.serial),
            );
            let mut res = http::Response::new(body::full(text));
            if req.uri().path() == "/close" {
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            std::future::ready(Ok::<_, Infallible>(res))
        });
        let serving = mesh.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, svc, async {
                    let _ = rx.await;
                })
                .await
                .expect("serve")
        });
        Server {
            mesh,
            addr,
            hits,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) -> ServeSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("server task")
    }
}

async fn client(
    store: &Arc<dyn Store>,
    name: &str,
    sa: &str,
    identity: Option<IdentityWatch>,
) -> Mesh {
    let mut builder = Mesh::builder(
        store.clone(),
        Workload::new(name, "default")
            .label("app", name)
            .service_account(sa),
    );
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    let mesh = builder.start().await.expect("client mesh");
    mesh.ready().await;
    mesh
}

async fn get(mesh: &Mesh, uri: &str) -> (u16, String, ResponseFlags) {
    let req = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = mesh.http_client().oneshot(req).await.expect("response");
    let status = res.status().as_u16();
    let flags = ResponseFlags::of(&res);
    let text = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&text).into_owned(), flags)
}

/// Sends until the answer's status is `want` (policies travel through the store).
async fn until_status(mesh: &Mesh, uri: &str, want: u16) -> (u16, String, ResponseFlags) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = get(mesh, uri).await;
        if answer.0 == want {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never got {want} from {uri}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshes_over_strict_mtls_see_each_others_identity() {
    let ca = new_ca();
    let (_dir, store) = file_store();
    apply(&store, STRICT).await;
    let reviews = Server::start(
        &store,
        "reviews-v1",
        "reviews",
        "reviews",
        Some(identity(&ca, "reviews")),
    )
    .await;
    let productpage = client(
        &store,
        "productpage",
        "productpage",
        Some(identity(&ca, "productpage")),
    )
    .await;
    until(&productpage, "reviews endpoint", |s| {
        !s.endpoints("reviews.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;
    let ep = &productpage
        .snapshot()
        .endpoints("reviews.default.svc.cluster.local", None)[0]
        .clone();
    assert_eq!(
        ep.labels.get(policy::TLS_MODE_LABEL).map(String::as_str),
        Some("istio"),
        "a mesh with an identity registers for auto-mTLS"
    );

    let (status, body, _) = get(&productpage, "http://reviews:9080/").await;
    assert_eq!(status, 200, "{body}");
    let mut words = body.split(' ');
    assert_eq!(words.next(), Some("reviews-v1"));
    assert_eq!(
        words.next(),
        Some("spiffe://cluster.local/ns/default/sa/productpage"),
        "the server sees the caller's identity"
    );

    // HTTP/2 (gRPC's version) over mutual TLS too.
    let req = http::Request::get("http://reviews:9080/")
        .version(http::Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = productpage.http_client().oneshot(req).await.expect("h2");
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("sa/productpage"),
        "{text:?}"
    );

    let stats = reviews.mesh.inbound_tls_stats().clone();
    assert!(stats.tls() >= 2, "one connection per protocol: {stats:?}");
    assert_eq!(stats.plaintext(), 0);
    assert_eq!(reviews.hits.load(Ordering::SeqCst), 2);
    let summary = reviews.stop().await;
    assert!(summary.drained, "TLS connections drain on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_permissive_accepts_both() {
    let ca = new_ca();
    let (_dir, store) = file_store();
    apply(&store, STRICT).await;
    let ratings = Server::start(
        &store,
        "ratings-v1",
        "ratings",
        "ratings",
        Some(identity(&ca, "ratings")),
    )
    .await;
    // A workload without an identity sends plaintext.
    let plain = client(&store, "legacy", "legacy", None).await;
    let mtls = client(&store, "reviews", "reviews", Some(identity(&ca, "reviews"))).await;
    until(&plain, "ratings endpoint", |s| {
        !s.endpoints("ratings.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;
    until(&mtls, "ratings endpoint", |s| {
        !s.endpoints("ratings.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;

    let (status, body, _) = get(&plain, "http://ratings:9080/").await;
    assert_eq!(status, 503, "plaintext to STRICT is refused: {body}");
    assert_eq!(
        ratings.hits.load(Ordering::SeqCst),
        0,
        "never reached the app"
    );
    assert!(ratings.mesh.inbound_tls_stats().refused() >= 1);
    // A raw plaintext request is closed without an answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(ratings.addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: ratings\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed without a response: {read:?} {buf:?}"
        );
    }
    let (status, body, _) = get(&mtls, "http://ratings:9080/").await;
    assert_eq!(status, 200, "{body}");

    apply(&store, PERMISSIVE).await;
    until(&ratings.mesh, "PERMISSIVE at the server", |s| {
        policy::inbound_mode(
            s,
            "default",
            &[("app".to_owned(), "ratings".to_owned())].into(),
            ratings.addr.port(),
        ) == InboundMode::Permissive
    })
    .await;
    let (_, body, _) = until_status(&plain, "http://ratings:9080/", 200).await;
    assert_eq!(body, "ratings-v1 - -", "plaintext: no peer identity");
    let (status, body, _) = get(&mtls, "http://ratings:9080/").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ratings-v1 spiffe://cluster.local/ns/default/sa/reviews "),
        "{body}"
    );
    let stats = ratings.mesh.inbound_tls_stats();
    assert!(stats.plaintext() >= 1 && stats.tls() >= 1, "{stats:?}");
    ratings.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_principals_over_real_mtls() {
    let ca = new_ca();
    let (_dir, store) = file_store();
    apply(
        &store,
        &format!(
            "{STRICT}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: details-from-productpage, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: details }} }}
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: [cluster.local/ns/default/sa/productpage] }} }}]
"
        ),
    )
    .await;
    let details = Server::start(
        &store,
        "details-v1",
        "details",
        "details",
        Some(identity(&ca, "details")),
    )
    .await;
    let productpage = client(
        &store,
        "productpage",
        "productpage",
        Some(identity(&ca, "productpage")),
    )
    .await;
    let reviews = client(&store, "reviews", "reviews", Some(identity(&ca, "reviews"))).await;
    for mesh in [&productpage, &reviews] {
        until(mesh, "details endpoint", |s| {
            !s.endpoints("details.default.svc.cluster.local", None)
                .is_empty()
        })
        .await;
    }
    let (status, body, _) = get(&productpage, "http://details:9080/details/0").await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = get(&reviews, "http://details:9080/details/0").await;
    assert_eq!(status, 403);
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(
        details.hits.load(Ordering::SeqCst),
        1,
        "denied before the app"
    );
    details.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_naming_refuses_a_server_with_another_identity() {
    let ca = new_ca();
    let (_dir, store) = file_store();
    // Registered as `details`, but its certificate says `impostor`.
    let impostor = Server::start(
        &store,
        "details-impostor",
        "details",
        "details",
        Some(identity(&ca, "impostor")),
    )
    .await;
    let productpage_id = identity(&ca, "productpage");
    let productpage = client(
        &store,
        "productpage",
        "productpage",
        Some(productpage_id.clone()),
    )
    .await;
    until(&productpage, "details endpoint", |s| {
        !s.endpoints("details.default.svc.cluster.local", None)
            .is_empty()
    })
    .await;
    let (status, body, flags) = get(&productpage, "http://details:9080/").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(flags.to_string(), "UF");
    // As Envoy's local reply: the body says why the TLS handshake failed.
    assert!(
        body.contains("transport failure reason: TLS error:") && body.contains("impostor"),
        "{body}"
    );
    assert_eq!(impostor.hits.load(Ordering::SeqCst), 0);

    // The reason is in the connect error, naming the peer and both identities.
    let snapshot = productpage.snapshot();
    let authority: http::uri::Authority = impostor.addr.to_string().parse().expect("authority");
    let UpstreamTls::Mutual(expected) = policy::upstream_tls(&snapshot, &authority) else {
        panic!("auto-mTLS to a mesh workload");
    };
    assert_eq!(expected.identities(), &[id("details")]);
    let connect = Connect::builder()
        .mutual_tls(productpage_id, move |a| policy::upstream_tls(&snapshot, a))
        .build();
    let req = http::Request::get(format!("http://{}/", impostor.addr))
        .body(body::empty())
        .expect("request");
    let err = connect.oneshot(req).await.expect_err("refused");
    let text = error_chain(&*err);
    assert!(text.contains("upstream connect error"), "{text}");
    assert!(text.contains("secure naming"), "{text}");
    assert!(text.contains(&impostor.addr.to_string()), "{text}");
    assert!(
        text.contains("sa/impostor") && text.contains("sa/details"),
        "{text}"
    );

    // With a genuine endpoint next to it, retries move to that one: nothing fails.
    let genuine = Server::start(
        &store,
        "details-v1",
        "details",
        "details",
        Some(identity(&ca, "details")),
    )
    .await;
    until(&productpage, "two details endpoints", |s| {
        s.endpoints("details.default.svc.cluster.local", None).len() == 2
    })
    .await;
    for _ in 0..20 {
        let (status, body, _) = get(&productpage, "http://details:9080/").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("details-v1 "), "{body}");
    }
    assert_eq!(impostor.hits.load(Ordering::SeqCst), 0);
    genuine.stop().await;
    impostor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_a_mesh_certificate_reaches_a_strict_mesh_server() {
    let ca = new_ca();
    let (dir, store) = file_store();
    apply(&store, STRICT).await;
    let reviews = Server::start(
        &store,
        "reviews-v1",
        "reviews",
        "reviews",
        Some(identity(&ca, "reviews")),
    )
    .await;
    let (bundle, key_pem, _) = issue(&ca, "productpage");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let cert = write("client.pem", &bundle.leaf_pem);
    let key = write("client.key", &key_pem);
    let root = write("root.pem", ca.root_cert_pem());
    let connect = reviews.addr.to_string();
    let args = [
        "s_client",
        "-connect",
        &connect,
        "-cert",
        &cert,
        "-key",
        &key,
        "-CAfile",
        &root,
        "-alpn",
        "http/1.1",
        "-verify_return_error",
        "-showcerts",
        "-ign_eof",
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut child = Command::new("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(
                b"GET /productpage HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n",
            );
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("openssl s_client did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        (status.success(), text)
    })
    .await
    .expect("openssl ran");
    let (ok, out) = out;
    assert!(ok, "openssl s_client failed:\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(
        out.contains("reviews-v1 spiffe://cluster.local/ns/default/sa/productpage"),
        "the mesh server saw openssl's certificate:\n{out}"
    );
    // The chain printed ends in the CA's root.
    let last = out
        .rfind("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = out[last..].find("-----END CERTIFICATE-----").expect("end")
        + last
        + "-----END CERTIFICATE-----".len();
    assert_eq!(out[last..end].trim(), ca.root_cert_pem().trim(), "{out}");

    // Without a client certificate the STRICT server refuses the connection.
    let args = ["s_client", "-connect", &connect, "-CAfile", &root].map(str::to_owned);
    let refused = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut child = Command::new("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n");
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        text
    })
    .await
    .expect("openssl ran");
    assert!(!refused.contains("HTTP/1.1 200"), "{refused}");
    assert_eq!(reviews.hits.load(Ordering::SeqCst), 1);
    reviews.stop().await;
}

#[tokio::test]
async fn upstream_tls_follows_destination_rules_and_auto_mtls() {
    let text = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1, namespace: default }
spec:
  address: 10.0.0.1
  ports: { http: 9080 }
  serviceAccount: reviews
  labels: { app: reviews, version: v1, security.istio.io/tlsMode: istio }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2, namespace: default }
spec:
  address: 10.0.0.2
  ports: { http: 9080 }
  serviceAccount: reviews
  labels: { app: reviews, version: v2, security.istio.io/tlsMode: istio }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: legacy, namespace: default }
spec:
  address: 10.0.0.3
  ports: { http: 9080 }
  labels: { app: legacy }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ratings-v1, namespace: default }
spec:
  address: 10.0.0.4
  ports: { http: 9080 }
  serviceAccount: ratings
  labels: { app: ratings, security.istio.io/tlsMode: istio }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: ratings, namespace: default }
spec:
  selector: { matchLabels: { app: ratings } }
  mtls: { mode: DISABLE }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  subsets:
  - name: v2
    labels: { version: v2 }
    trafficPolicy: { tls: { mode: DISABLE } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api, namespace: default }
spec:
  hosts: [api.example.com]
  ports: [{ number: 443, name: https, protocol: TLS }]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{ address: 10.0.0.5 }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: api, namespace: default }
spec:
  host: api.example.com
  trafficPolicy: { tls: { mode: SIMPLE } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: secret-api, namespace: default }
spec:
  hosts: [secret.example.com]
  ports: [{ number: 443, name: https, protocol: TLS }]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{ address: 10.0.0.7 }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: secret-api, namespace: default }
spec:
  host: secret.example.com
  trafficPolicy: { tls: { mode: MUTUAL, credentialName: api-client } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-name, namespace: default }
spec:
  hosts: [files.example.com]
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: 443 }]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: by-name, namespace: default }
spec:
  host: files.example.com
  trafficPolicy:
    tls: { mode: SIMPLE, sni: cdn.example.net }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: mesh-vm, namespace: default }
spec:
  hosts: [vm.internal]
  ports: [{ number: 8080, name: http }]
  location: MESH_INTERNAL
  resolution: STATIC
  subjectAltNames: [spiffe://cluster.local/ns/vms/sa/vm]
  endpoints: [{ address: 10.0.0.6, serviceAccount: vm-sa }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: mesh-vm, namespace: default }
spec:
  host: vm.internal
  trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }
";
    let loaded = load_str(text, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let snapshot = Snapshot::build(&loaded.resources).expect("snapshot");
    let decide = |a: &str| policy::upstream_tls(&snapshot, &a.parse().expect("authority"));

    // Auto-mTLS to a labelled mesh workload, expecting its service account.
    assert_eq!(
        decide("10.0.0.1:9080"),
        UpstreamTls::Mutual(tls::ExpectedIdentities::one_of([id("reviews")]))
    );
    // A subset with tls DISABLE.
    assert_eq!(decide("10.0.0.2:9080"), UpstreamTls::Plaintext);
    // No label: not a mesh workload with a certificate.
    assert_eq!(decide("10.0.0.3:9080"), UpstreamTls::Plaintext);
    // The destination's PeerAuthentication disables mTLS.
    assert_eq!(decide("10.0.0.4:9080"), UpstreamTls::Plaintext);
    // SIMPLE originates TLS, sending the service's host as the server name.
    let UpstreamTls::Originate(originate) = decide("10.0.0.5:443") else {
        panic!("SIMPLE originates TLS");
    };
    assert!(!originate.mutual);
    assert_eq!(originate.server_name, "api.example.com");
    assert_eq!(originate.ca_certificates, None);
    // A DNS ServiceEntry without endpoints is connected to by name (at its targetPort):
    // its rule applies there, with the configured SNI.
    let UpstreamTls::Originate(originate) = decide("files.example.com:443") else {
        panic!("SIMPLE originates TLS to a host reached by name");
    };
    assert_eq!(originate.server_name, "cdn.example.net");
    assert_eq!(decide("other.example.com:443"), UpstreamTls::Plaintext);
    // credentialName (a Kubernetes secret) is refused with a reason.
    let UpstreamTls::Refuse(reason) = decide("10.0.0.7:443") else {
        panic!("credentialName is refused");
    };
    assert!(reason.contains("credentialName"), "{reason}");
    // ISTIO_MUTUAL to a ServiceEntry endpoint: its service account plus the entry's SANs.
    assert_eq!(
        decide("10.0.0.6:8080"),
        UpstreamTls::Mutual(tls::ExpectedIdentities::one_of([
            Identity::in_default_trust_domain("default", "vm-sa").expect("id"),
            Identity::in_default_trust_domain("vms", "vm").expect("id"),
        ]))
    );
    // Unknown addresses: plaintext.
    assert_eq!(decide("192.0.2.1:80"), UpstreamTls::Plaintext);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotating_every_few_seconds_drop_no_request_under_load() {
    const RUN: Duration = Duration::from_secs(60);
    let ca = new_ca();
    let signer: Arc<dyn CaClient> = Arc::new(LocalCa::new(ca.clone()));
    let config = CertManagerConfig {
        ttl: Duration::from_secs(10),
        // The CA backdates certificates by a minute, so half the lifetime has always
        // passed: renewals happen every `min_refresh`.
        min_refresh: Duration::from_secs(3),
        ..CertManagerConfig::default()
    };
    let bundle = ca.trust_bundle_pem().to_owned();
    let watch = |manager: &CertManager| {
        let bundle = bundle.clone();
        tls::watch_credentials(manager.receiver(), move |cert: &WorkloadCert| {
            TlsIdentity::from_pem(cert.bundle.chain_pem(), cert.key.expose_secret(), &bundle)
        })
    };
    let server_certs =
        CertManager::start(id("reviews"), signer.clone(), config.clone()).expect("manager");
    let client_certs = CertManager::start(id("productpage"), signer, config).expect("manager");

    let (_dir, store) = file_store();
    apply(&store, STRICT).await;
    let reviews = Server::start(
        &store,
        "reviews-v1",
        "reviews",
        "reviews",
        Some(watch(&server_certs)),
    )
    .await;
    let productpage = client(
        &store,
        "productpage",
        "productpage",
        Some(watch(&client_certs)),
    )
    .await;
    until(&productpage, "reviews endpoint", |_| {
        endpoint_count(&productpage, "reviews") == 1
    })
    .await;

    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let serials = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (mesh, failures, serials, sent) = (
            productpage.clone(),
            failures.clone(),
            serials.clone(),
            sent.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while start.elapsed() < RUN {
                i += 1;
                // Every other request closes its connection, so handshakes keep happening
                // with whatever certificates are current.
                let path = if (i + worker).is_multiple_of(2) {
                    "/close"
                } else {
                    "/"
                };
                let (status, body, flags) = get(&mesh, &format!("http://reviews:9080{path}")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status == 200 {
                    if let Some(serial) = body.split(' ').nth(2) {
                        serials.lock().expect("lock").insert(serial.to_owned());
                    }
                } else {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("{status} {flags} {body}"));
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let sent = sent.load(Ordering::Relaxed);
    let failures = failures.lock().expect("lock").clone();
    let serials = serials.lock().expect("lock").len();
    let handshakes = reviews.mesh.inbound_tls_stats().tls();
    let renewals = (server_certs.renewals(), client_certs.renewals());
    eprintln!(
        "rotation: {sent} requests, {handshakes} handshakes, {serials} client certificates seen, renewals {renewals:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(sent > 1000, "steady traffic: {sent}");
    assert!(
        serials >= 6,
        "the client certificate rotated: {serials} seen"
    );
    assert!(
        renewals.0 >= 6,
        "the server certificate rotated: {renewals:?}"
    );
    assert!(handshakes > 100, "new connections throughout: {handshakes}");
    assert_eq!(reviews.mesh.inbound_tls_stats().refused(), 0);
    reviews.stop().await;
}

/// A certificate for `sa` from `ca`, trusting the roots in `bundle` (PEM).
fn issue_trusting(ca: &CertificateAuthority, sa: &str, bundle: &str) -> Arc<TlsIdentity> {
    let (cert, key_pem, _) = issue(ca, sa);
    Arc::new(TlsIdentity::from_pem(cert.chain_pem(), &key_pem, bundle).expect("credentials"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_with_overlapping_bundles_drops_no_request_under_load() {
    let (old, new) = (new_ca(), new_ca());
    let old_only = old.trust_bundle_pem().to_owned();
    let both = format!("{}{}", old.trust_bundle_pem(), new.trust_bundle_pem());
    let new_only = new.trust_bundle_pem().to_owned();
    let (publish_server, server_source) =
        tokio::sync::watch::channel(Some(issue_trusting(&old, "reviews", &old_only)));
    let (publish_client, client_source) =
        tokio::sync::watch::channel(Some(issue_trusting(&old, "productpage", &old_only)));

    let (_dir, store) = file_store();
    apply(&store, STRICT).await;
    let reviews = Server::start(
        &store,
        "reviews-v1",
        "reviews",
        "reviews",
        Some(server_source),
    )
    .await;
    let productpage = client(&store, "productpage", "productpage", Some(client_source)).await;
    until(&productpage, "reviews endpoint", |_| {
        endpoint_count(&productpage, "reviews") == 1
    })
    .await;
    let (status, body, _) = get(&productpage, "http://reviews:9080/").await;
    assert_eq!(status, 200, "{body}");

    // Steady traffic from two callers; every third request closes its connection, so new
    // handshakes happen all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (mesh, stop, failures, sent) = (
                productpage.clone(),
                stop.clone(),
                failures.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    let path = if n % 3 == 0 { "/close" } else { "/" };
                    let (status, body, flags) =
                        get(&mesh, &format!("http://reviews:9080{path}")).await;
                    if status != 200 {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("{status} {flags}: {body}"));
                    }
                }
            })
        })
        .collect();

    // Istio's procedure: both trust both roots, the server then the client move to
    // certificates from the new root, and finally the old root leaves the bundles.
    let pause = Duration::from_millis(400);
    let steps: [(&str, Arc<TlsIdentity>, Arc<TlsIdentity>); 4] = [
        (
            "both trust both roots",
            issue_trusting(&old, "reviews", &both),
            issue_trusting(&old, "productpage", &both),
        ),
        (
            "the server moves to the new root",
            issue_trusting(&new, "reviews", &both),
            issue_trusting(&old, "productpage", &both),
        ),
        (
            "the client moves to the new root",
            issue_trusting(&new, "reviews", &both),
            issue_trusting(&new, "productpage", &both),
        ),
        (
            "the old root leaves the bundles",
            issue_trusting(&new, "reviews", &new_only),
            issue_trusting(&new, "productpage", &new_only),
        ),
    ];
    for (step, server, client) in steps {
        let before = sent.load(Ordering::SeqCst);
        publish_server.send_replace(Some(server));
        publish_client.send_replace(Some(client));
        tokio::time::sleep(pause).await;
        assert!(
            sent.load(Ordering::SeqCst) > before + 10,
            "traffic kept flowing during: {step}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.expect("caller");
    }
    let failures = std::mem::take(&mut *failures.lock().expect("lock"));
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        sent.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    // The server trusts the new root only now: a caller still on the old root is refused.
    let (_keep, stale) = tokio::sync::watch::channel(Some(issue_trusting(&old, "ratings", &both)));
    let ratings = client(&store, "ratings", "ratings", Some(stale)).await;
    until(&ratings, "reviews endpoint", |_| {
        endpoint_count(&ratings, "reviews") == 1
    })
    .await;
    let (status, body, _) = get(&ratings, "http://reviews:9080/").await;
    assert_eq!(status, 503, "{body}");
    drop(publish_client);
    reviews.stop().await;
}
