//! The signing service over plaintext gRPC (tonic's own server, token callers only), called
//! through the client stub generated from the proto, with CSRs made by `openssl req`. The
//! same over TLS, with mTLS renewal, is in `tls.rs`; the `mesh-ca serve` binary in
//! `serve_cli.rs`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use mesh_ca::grpc::IstioCertificateRequest;
use mesh_ca::grpc::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_ca::grpc::istio_certificate_service_server::IstioCertificateServiceServer;
use mesh_ca::server::CaService;
use mesh_ca::{CaOptions, CertificateAuthority, identity::Identity};
use tonic::Code;

fn openssl_csr(dir: &std::path::Path, name: &str, newkey: &[&str], san: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.arg("req")
        .arg("-new")
        .args(newkey)
        .arg("-nodes")
        .arg("-keyout")
        .arg(&key);
    cmd.arg("-out")
        .arg(&csr)
        .args(["-subj", "/O=test", "-addext"])
        .arg(format!("subjectAltName=URI:{san}"));
    let out = cmd.output().expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(csr).unwrap()
}

async fn start() -> (Arc<CertificateAuthority>, CaService, String) {
    let ca = Arc::new(CertificateAuthority::self_signed(&CaOptions::root()).unwrap());
    let service = CaService::new(Arc::clone(&ca));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = service.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(svc))
            .serve_with_incoming(tokio_stream_incoming(listener))
            .await
            .unwrap();
    });
    (ca, service, format!("http://{addr}"))
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

fn request(csr: String, ttl: i64, token: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        subject_id: String::new(),
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test]
async fn signs_authenticates_and_rejects() {
    let (ca, service, url) = start().await;
    let metrics = service.metrics();
    let mut client = IstioCertificateServiceClient::connect(url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a: Identity = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
    let token = ca
        .mint_token(&a, Duration::from_secs(3600), SystemTime::now())
        .unwrap();

    // P-256 and RSA 2048 CSRs asking for B are signed for A, leaf first, root last.
    let ec = openssl_csr(
        dir.path(),
        "ec",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "spiffe://cluster.local/ns/default/sa/b",
    );
    let rsa = openssl_csr(
        dir.path(),
        "rsa",
        &["-newkey", "rsa:2048"],
        "spiffe://cluster.local/ns/default/sa/b",
    );
    for csr in [ec.clone(), rsa] {
        let chain = client
            .create_certificate(request(csr, 0, Some(&token)))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].trim(), ca.root_cert_pem().trim());
        let leaf = dir.path().join("leaf.pem");
        let root = dir.path().join("root.pem");
        std::fs::write(&leaf, &chain[0]).unwrap();
        std::fs::write(&root, &chain[1]).unwrap();
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&leaf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("URI:spiffe://cluster.local/ns/default/sa/a"),
            "{text}"
        );
        assert!(!text.contains("sa/b"), "{text}");
    }
    assert_eq!(metrics.issued.load(Ordering::Relaxed), 2);

    // No token; expired token: UNAUTHENTICATED.
    let err = client
        .create_certificate(request(ec.clone(), 0, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "request authenticate failure");
    let old = ca
        .mint_token(
            &a,
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(7200),
        )
        .unwrap();
    let err = client
        .create_certificate(request(ec.clone(), 0, Some(&old)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // TTL above 90 days; tampered CSR: INVALID_ARGUMENT.
    let err = client
        .create_certificate(request(ec.clone(), 91 * 86_400, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("is greater than the max allowed TTL"),
        "{}",
        err.message()
    );
    let tampered = {
        let mut lines: Vec<String> = ec.lines().map(str::to_owned).collect();
        let l = &mut lines[3];
        let c = if l.starts_with('A') { "B" } else { "A" };
        l.replace_range(0..1, c);
        lines.join("\n") + "\n"
    };
    let err = client
        .create_certificate(request(tampered, 0, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert_eq!(metrics.issued.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.authn_failures.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.sign_errors.load(Ordering::Relaxed), 2);
}
