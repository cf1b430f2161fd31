//! TLS origination (DestinationRule `tls.mode` SIMPLE and MUTUAL) with `openssl s_server` as
//! the real server outside the mesh, and certificates made with the `openssl` CLI.
//!
//! The application calls `http://…`; the mesh connects with TLS, verifies the server as the
//! rule says, and presents the client certificate from files for MUTUAL.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::{
    config::load_str,
    store::{FileStore, Store},
};
use mesh_tower::{
    flags::ResponseFlags,
    mesh::{Mesh, Workload},
};
use tower::ServiceExt;

const PATIENCE: Duration = Duration::from_secs(15);

// === fixtures ===

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`/`.key`) and leaves signed by it, made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Self { dir };
        pki.ca("test");
        pki.ca("other");
        // The server: DNS localhost and api.example.test, IP 127.0.0.1.
        pki.leaf(
            "test",
            "server",
            "subjectAltName=DNS:localhost,DNS:api.example.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        );
        pki.leaf("test", "client", "extendedKeyUsage=clientAuth");
        pki.leaf("other", "stranger", "extendedKeyUsage=clientAuth");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name} root"),
                "-days",
                "2",
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn leaf(&self, ca: &str, name: &str, ext: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}-ca.pem"),
                "-CAkey",
                &format!("{ca}-ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// `openssl s_server -www` on a free loopback port: answers `GET /` with a status page.
struct SServer {
    child: Child,
    addr: SocketAddr,
}

impl SServer {
    /// A server with the `server` certificate; with `client_ca`, client certificates are
    /// required and must chain to it.
    async fn start(pki: &Pki, client_ca: Option<&str>) -> Self {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(pki.path("server.pem"))
            .arg("-key")
            .arg(pki.path("server.key"));
        if let Some(ca) = client_ca {
            cmd.args(["-Verify", "1", "-verify_return_error", "-CAfile"])
                .arg(pki.path(ca));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "openssl s_server never listened on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, addr }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A caller mesh (no identity of its own) over a store holding `yaml`.
async fn caller(yaml: &str) -> (tempfile::TempDir, Mesh) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path()));
    let loaded = load_str(yaml, None);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    store.apply(loaded.resources).await.expect("apply");
    let mesh = Mesh::builder(
        store,
        Workload::new("sleep", "default").label("app", "sleep"),
    )
    .start()
    .await
    .expect("mesh");
    mesh.ready().await;
    (dir, mesh)
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

/// A ServiceEntry `api.example.test` with a static endpoint at `addr`, and a DestinationRule
/// whose `trafficPolicy.tls` is `tls` (flow YAML).
fn static_entry(addr: SocketAddr, tls: &str) -> String {
    entry(addr.port(), "STATIC", "127.0.0.1", tls)
}

/// A ServiceEntry `api.example.test` on `port` with `resolution` and one endpoint at
/// `address`, and a DestinationRule whose `trafficPolicy.tls` is `tls` (flow YAML).
fn entry(port: u16, resolution: &str, address: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: api, namespace: default }}
spec:
  hosts: [api.example.test]
  ports: [{{ number: {port}, name: http, protocol: HTTP }}]
  location: MESH_EXTERNAL
  resolution: {resolution}
  endpoints: [{{ address: {address} }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: api, namespace: default }}
spec:
  host: api.example.test
  trafficPolicy: {{ tls: {tls} }}
"
    )
}

fn is_s_server_page(body: &str) -> bool {
    body.contains("s_server")
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tls_origination_verifies_the_server_by_name_and_ca() {
    let pki = Pki::new();
    let server = SServer::start(&pki, None).await;
    let ca = pki.path("test-ca.pem");
    let uri = format!("http://api.example.test:{}/", server.addr.port());

    // SIMPLE with the CA: the server's certificate names api.example.test (the host).
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!("{{ mode: SIMPLE, caCertificates: {} }}", ca.display()),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_s_server_page(&body), "{body}");

    // Another CA: the handshake fails, the caller gets 503 UF naming the TLS failure.
    let other = pki.path("other-ca.pem");
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!("{{ mode: SIMPLE, caCertificates: {} }}", other.display()),
    ))
    .await;
    let (status, body, flags) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");
    assert!(flags.to_string().contains("UF"), "{flags} {body}");
    assert!(body.contains("TLS"), "{body}");

    // SNI (and so the name checked) that the certificate does not carry: refused.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!(
            "{{ mode: SIMPLE, caCertificates: {}, sni: wrong.example.test }}",
            ca.display()
        ),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("TLS"), "{body}");

    // insecureSkipVerify accepts the server whatever its CA.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        "{ mode: SIMPLE, insecureSkipVerify: true }",
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 200, "{body}");

    // A CA file that does not exist: 503 UF naming the field and the file.
    let missing = pki.path("nowhere.pem");
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!("{{ mode: SIMPLE, caCertificates: {} }}", missing.display()),
    ))
    .await;
    let (status, body, flags) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");
    assert!(flags.to_string().contains("UF"), "{flags}");
    assert!(
        body.contains("caCertificates") && body.contains("nowhere.pem"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_alt_names_replace_the_name_check() {
    let pki = Pki::new();
    let server = SServer::start(&pki, None).await;
    let ca = pki.path("test-ca.pem");
    let uri = format!("http://api.example.test:{}/", server.addr.port());

    // One of the certificate's SANs, whatever the SNI.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!(
            "{{ mode: SIMPLE, caCertificates: {}, sni: elsewhere.test, subjectAltNames: [localhost] }}",
            ca.display()
        ),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 200, "{body}");

    // None of them: refused, and the reason lists what the server presented.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!(
            "{{ mode: SIMPLE, caCertificates: {}, subjectAltNames: [billing.example.test] }}",
            ca.display()
        ),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("billing.example.test") && body.contains("api.example.test"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_origination_presents_the_client_certificate_from_files() {
    let pki = Pki::new();
    // The server requires a client certificate from the test CA.
    let server = SServer::start(&pki, Some("test-ca.pem")).await;
    let ca = pki.path("test-ca.pem");
    let uri = format!("http://api.example.test:{}/", server.addr.port());
    let mutual = |cert: &str, key: &str| {
        format!(
            "{{ mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {} }}",
            ca.display(),
            pki.path(cert).display(),
            pki.path(key).display()
        )
    };

    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &mutual("client.pem", "client.key"),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_s_server_page(&body), "{body}");

    // A client certificate from another CA is refused by the server.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &mutual("stranger.pem", "stranger.key"),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");

    // SIMPLE (no client certificate) to the same server is refused too.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &format!("{{ mode: SIMPLE, caCertificates: {} }}", ca.display()),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");

    // A key that does not match the certificate: 503 naming both files.
    let (_d, mesh) = caller(&static_entry(
        server.addr,
        &mutual("client.pem", "stranger.key"),
    ))
    .await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("client.pem"), "{body}");
}

/// A DNS ServiceEntry whose endpoint is a name: the mesh resolves it with the system's
/// resolver when it connects (`localhost`, from `/etc/hosts`: no DNS server is asked), and originates TLS as the
/// DestinationRule says, checking the certificate against the service's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_to_an_endpoint_reached_by_dns_name() {
    let pki = Pki::new();
    let server = SServer::start(&pki, None).await;
    let ca = pki.path("test-ca.pem");
    let port = server.addr.port();
    let tls = format!("{{ mode: SIMPLE, caCertificates: {} }}", ca.display());
    let uri = format!("http://api.example.test:{port}/");

    let (_d, mesh) = caller(&entry(port, "DNS", "localhost", &tls)).await;
    let (status, body, _) = get(&mesh, &uri).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_s_server_page(&body), "{body}");
}
