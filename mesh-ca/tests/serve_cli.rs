//! The real `mesh-ca serve` binary on loopback: the port it prints, signing through it with
//! the generated client stub, `openssl s_client` against it, metrics, SIGTERM, and its
//! start-up errors.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Output, Stdio},
};

use mesh_ca::CertBundle;
use mesh_ca::grpc::IstioCertificateRequest;
use mesh_ca::grpc::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
}

fn ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mesh-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// root + intermediate; returns the cacerts dir.
fn setup(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let cacerts = dir.join("cacerts");
    ok(&["root", "--out", s(&root)]);
    ok(&[
        "intermediate",
        "--root",
        s(&root),
        "--name",
        "cluster1",
        "--out",
        s(&cacerts),
    ]);
    cacerts
}

/// Kills the server if the test fails before stopping it.
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = bin()
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdout }
    }

    /// The next stdout line, or a panic with stderr when the server ended.
    fn line(&mut self) -> String {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).unwrap() == 0 {
            let status = self.child.wait().unwrap();
            let mut err = String::new();
            if let Some(mut stderr) = self.child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            panic!("mesh-ca serve ended ({status}): {err}");
        }
        line.trim_end().to_owned()
    }

    /// The value after `prefix` on the next line.
    fn expect(&mut self, prefix: &str) -> String {
        let line = self.line();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_owned()
    }

    /// SIGTERM; returns the exit status, the rest of stdout and stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut err).unwrap();
        }
        let status = self.child.wait().unwrap();
        (status, rest, err)
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_signs_over_tls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = setup(dir.path());
    let mut server = Server::start(&[
        "--cacerts",
        s(&cacerts),
        "--listen",
        "127.0.0.1:0",
        "--dns",
        "ca.example.internal",
        "--metrics-listen",
        "127.0.0.1:0",
        "--shutdown-grace",
        "300ms",
    ]);
    let addr = server.expect("listening on ");
    let port: u16 = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    assert_ne!(port, 0, "the real port is printed");
    let root_path = PathBuf::from(server.expect("root certificate: "));
    assert_eq!(root_path, cacerts.join("root-cert.pem"));
    let server_line = server.expect("server certificate: ");
    assert!(
        server_line.starts_with("spiffe://cluster.local/ns/istio-system/sa/mesh-ca")
            && server_line.contains("localhost, mesh-ca, ca.example.internal"),
        "{server_line}"
    );
    let metrics_url = server.expect("metrics on http://");
    let metrics_addr = metrics_url.strip_suffix("/metrics").unwrap().to_owned();
    let root_pem = std::fs::read_to_string(&root_path).unwrap();

    // openssl s_client verifies the server's chain against root-cert.pem and its name.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-CAfile"])
        .arg(&root_path)
        .args(["-verify_return_error", "-verify_hostname", "mesh-ca"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    // Sign a CSR made by openssl, with a token minted by the CLI, through the stub.
    let token = ok(&["token", "--cacerts", s(&cacerts), "--spiffe", REVIEWS])
        .trim()
        .to_owned();
    let key = dir.path().join("w.key");
    let csr = dir.path().join("w.csr");
    let gen_csr = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=w",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(gen_csr.status.success());
    let csr = std::fs::read_to_string(&csr).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = IstioCertificateServiceClient::new(channel);
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            subject_id: String::new(),
            validity_duration: 3600,
            metadata: None,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client
            .create_certificate(request)
            .await
            .unwrap()
            .into_inner()
            .cert_chain
    });
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2].trim(), root_pem.trim());
    assert_eq!(
        CertBundle::from_chain(&chain).unwrap().identity.to_string(),
        REVIEWS
    );
    let leaf = dir.path().join("leaf.pem");
    let cas = dir.path().join("cas.pem");
    std::fs::write(&leaf, &chain[0]).unwrap();
    std::fs::write(&cas, chain[1..].concat()).unwrap();
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&cas)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Prometheus text with istiod's counter names.
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("\ncitadel_server_csr_count 1\n")
            && metrics.contains("\ncitadel_server_success_cert_issuance_count 1\n")
            && metrics.contains("\ncitadel_server_authentication_failure_count 0\n"),
        "{metrics}"
    );

    // SIGTERM: a clean stop, exit 0; the audit line is on stderr. The client's connection is
    // still open and its runtime no longer runs (it cannot answer the server's GOAWAY), so
    // the server closes it after the grace period.
    let (status, rest, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(rest.contains("stopped"), "{rest}");
    assert!(stderr.contains("terminated, stopping"), "{stderr}");
    assert!(
        stderr.contains("after the shutdown grace period"),
        "{stderr}"
    );
    drop(runtime);
    assert!(
        stderr.contains("certificate issued") && stderr.contains(REVIEWS),
        "{stderr}"
    );
}

fn serve_fails(args: &[&str]) -> String {
    let out: Output = bin().arg("serve").args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "nothing served"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn serve_reports_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A missing directory: named.
    let missing = dir.path().join("nope");
    let err = serve_fails(&["--cacerts", s(&missing), "--listen", "127.0.0.1:0"]);
    assert!(err.contains(s(&missing)), "{err}");

    let cacerts = setup(dir.path());
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&["--cacerts", s(&cacerts), "--listen", &addr]);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("caused by"),
        "{err}"
    );
    drop(taken);

    // A key others can read is refused.
    let key = cacerts.join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = serve_fails(&["--cacerts", s(&cacerts), "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("refusing to load private key") && err.contains(s(&key)),
        "{err}"
    );
}
