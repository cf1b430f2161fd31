//! The signing service over TLS ([`CaServer`]): called through the client stub generated
//! from the proto with tonic's own TLS client, with CSRs made by `openssl req`; mTLS renewal;
//! and [`GrpcCa`] with a [`CertManager`] against a real server on loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use mesh_ca::client::{CaClient, ClientError, GrpcCa};
use mesh_ca::grpc::IstioCertificateRequest;
use mesh_ca::grpc::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_ca::key::{KeyAlgorithm, KeyPair};
use mesh_ca::rotation::{CertManager, CertManagerConfig, WorkloadCert};
use mesh_ca::server::{CaMetrics, CaServer, ServerOptions};
use mesh_ca::{
    CaOptions, Cacerts, CertBundle, CertificateAuthority, RootCa, csr, identity::Identity,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// A root and an intermediate that signs (chains are leaf, intermediate, root).
fn two_level_ca() -> Arc<CertificateAuthority> {
    let p256 = || KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let root = RootCa::generate(&p256(), &CaOptions::root()).unwrap();
    let cacerts = Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("c1")).unwrap();
    Arc::new(CertificateAuthority::new(&cacerts).unwrap())
}

struct Running {
    addr: SocketAddr,
    metrics: Arc<CaMetrics>,
    server_chain: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), mesh_ca::Error>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

async fn start(ca: Arc<CertificateAuthority>, options: ServerOptions) -> Running {
    let server = CaServer::bind("127.0.0.1:0", ca, options).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let metrics = server.metrics();
    let server_chain = server.server_cert_chain();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        metrics,
        server_chain,
        stop: Some(stop),
        task,
    }
}

/// A client stub over tonic's TLS, optionally presenting `identity` (chain PEM, key PEM).
async fn stub(
    addr: SocketAddr,
    root_pem: &str,
    server_name: &str,
    identity: Option<(String, String)>,
) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(server_name);
    if let Some((chain, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(chain, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

/// What a workload presents: leaf and intermediates, and its key.
fn presented(bundle: &CertBundle, key: &KeyPair) -> (String, String) {
    let chain = bundle.chain[..bundle.chain.len() - 1].concat();
    (chain, key.to_pem().expose_secret().to_owned())
}

fn openssl_csr(dir: &std::path::Path, name: &str, newkey: &[&str], san: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let out = Command::new("openssl")
        .args(["req", "-new"])
        .args(newkey)
        .arg("-nodes")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", "/O=test", "-addext"])
        .arg(format!("subjectAltName=URI:{san}"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(csr).unwrap()
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

fn issued(m: &CaMetrics) -> u64 {
    m.issued.load(Ordering::Relaxed)
}

/// `openssl verify` of the leaf against intermediate + root, and the leaf's URI SAN.
fn openssl_check(dir: &std::path::Path, chain: &[String], expect_uri: &str) {
    let leaf = dir.join("leaf.pem");
    let cas = dir.join("cas.pem");
    std::fs::write(&leaf, &chain[0]).unwrap();
    std::fs::write(&cas, chain[1..].concat()).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&cas)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("URI:{expect_uri}")), "{text}");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(!text.contains("DNS:"), "{text}");
}

#[tokio::test]
async fn tls_signs_openssl_csrs_and_rejects_bad_requests() {
    let ca = two_level_ca();
    let server = start(Arc::clone(&ca), ServerOptions::default()).await;
    let metrics = Arc::clone(&server.metrics);
    let root = ca.root_cert_pem();
    let mut client = stub(server.addr, root, "mesh-ca", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_a = ca
        .mint_token(&id(A), Duration::from_secs(3600), SystemTime::now())
        .unwrap();

    // P-256 and RSA 2048 CSRs asking for B, with a token for A: the certificates name A.
    let ec = openssl_csr(
        dir.path(),
        "ec",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        B,
    );
    let rsa = openssl_csr(dir.path(), "rsa", &["-newkey", "rsa:2048"], B);
    for csr in [ec.clone(), rsa] {
        let chain = client
            .create_certificate(request(csr, 3600, Some(&token_a)))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(chain[1].trim(), ca.ca_cert_pem().trim());
        assert_eq!(chain[2].trim(), root.trim());
        let bundle = CertBundle::from_chain(&chain).unwrap();
        assert_eq!(bundle.identity, id(A));
        openssl_check(dir.path(), &chain, A);
    }
    assert_eq!(issued(&metrics), 2);

    // No credentials at all: UNAUTHENTICATED.
    let err = client
        .create_certificate(request(ec.clone(), 0, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "request authenticate failure");
    // A token minted by another CA: UNAUTHENTICATED.
    let foreign = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
    let forged = foreign
        .mint_token(&id(A), Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let err = client
        .create_certificate(request(ec.clone(), 0, Some(&forged)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // TTL above 90 days: INVALID_ARGUMENT, not clamped.
    let err = client
        .create_certificate(request(ec.clone(), 91 * 86_400, Some(&token_a)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("is greater than the max allowed TTL"),
        "{}",
        err.message()
    );
    // A tampered CSR: INVALID_ARGUMENT.
    let tampered = {
        let mut lines: Vec<String> = ec.lines().map(str::to_owned).collect();
        let l = &mut lines[3];
        let c = if l.starts_with('A') { "B" } else { "A" };
        l.replace_range(0..1, c);
        lines.join("\n") + "\n"
    };
    let err = client
        .create_certificate(request(tampered, 0, Some(&token_a)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing was issued for the rejected calls.
    assert_eq!(issued(&metrics), 2);
    assert_eq!(metrics.requests.load(Ordering::Relaxed), 6);
    assert_eq!(metrics.authn_failures.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.sign_errors.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.authn_by_token.load(Ordering::Relaxed), 4);
    let text = metrics.render_prometheus();
    assert!(text.contains("\ncitadel_server_csr_count 6\n"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn server_certificate_names_and_chain() {
    let ca = two_level_ca();
    let server = start(
        Arc::clone(&ca),
        ServerOptions::default().with_dns_name("ca.example.internal"),
    )
    .await;
    // Leaf, intermediate, root: the root is the CA's.
    assert_eq!(server.server_chain.len(), 3);
    assert_eq!(server.server_chain[2].trim(), ca.root_cert_pem().trim());
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("server.pem");
    std::fs::write(&leaf, &server.server_chain[0]).unwrap();
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(&leaf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "DNS:localhost",
        "DNS:mesh-ca",
        "DNS:ca.example.internal",
        "URI:spiffe://cluster.local/ns/istio-system/sa/mesh-ca",
        "TLS Web Server Authentication",
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    assert!(!text.contains("Client Authentication"), "{text}");

    // Each DNS name verifies; another does not.
    for name in ["localhost", "mesh-ca", "ca.example.internal"] {
        stub(server.addr, ca.root_cert_pem(), name, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    assert!(
        stub(
            server.addr,
            ca.root_cert_pem(),
            "istiod.istio-system.svc",
            None
        )
        .await
        .is_err()
    );
    // A client that trusts another root refuses the server.
    let foreign = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
    assert!(
        stub(server.addr, foreign.root_cert_pem(), "mesh-ca", None)
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn mtls_renewal_authenticates_by_certificate() {
    let ca = two_level_ca();
    let server = start(Arc::clone(&ca), ServerOptions::default()).await;
    let metrics = Arc::clone(&server.metrics);
    let root = ca.root_cert_pem();
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let new_key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr_b = csr::generate(&id(B), &new_key).unwrap().as_str().to_owned();

    // A valid workload certificate for A, no token: issued for A (the CSR asks for B).
    let current = ca.issue(&id(A), &key, Duration::from_secs(3600)).unwrap();
    let mut client = stub(
        server.addr,
        root,
        "mesh-ca",
        Some(presented(&current, &key)),
    )
    .await
    .unwrap();
    let chain = client
        .create_certificate(request(csr_b.clone(), 600, None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let renewed = CertBundle::from_chain(&chain).unwrap();
    assert_eq!(renewed.identity, id(A));
    assert_eq!(chain.len(), 3);
    assert_eq!(metrics.authn_by_cert.load(Ordering::Relaxed), 1);
    // The certificate wins over a token for another identity (istiod's order).
    let token_b = ca
        .mint_token(&id(B), Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let chain = client
        .create_certificate(request(csr_b.clone(), 600, Some(&token_b)))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(CertBundle::from_chain(&chain).unwrap().identity, id(A));
    assert_eq!(issued(&metrics), 2);

    // Another trust domain, same CA: the handshake succeeds, the call is UNAUTHENTICATED.
    let other_td: Identity = "spiffe://other.local/ns/default/sa/a".parse().unwrap();
    let other = ca
        .issue(&other_td, &key, Duration::from_secs(3600))
        .unwrap();
    let mut client = stub(server.addr, root, "mesh-ca", Some(presented(&other, &key)))
        .await
        .unwrap();
    let err = client
        .create_certificate(request(csr_b.clone(), 600, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(metrics.authn_failures.load(Ordering::Relaxed), 1);
    // ...unless it also has a valid token, which then authenticates (as B).
    let chain = client
        .create_certificate(request(csr_b.clone(), 600, Some(&token_b)))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(CertBundle::from_chain(&chain).unwrap().identity, id(B));
    assert_eq!(issued(&metrics), 3);

    // A certificate of a foreign CA, or an expired one: rustls' verifier refuses it during
    // the handshake (TLS 1.3: the client learns it from the alert on its first call), and
    // nothing is issued.
    let foreign = CertificateAuthority::self_signed(&CaOptions::root()).unwrap();
    let foreign_cert = foreign
        .issue(&id(A), &key, Duration::from_secs(3600))
        .unwrap();
    let expired = ca
        .sign_at(
            &csr::generate(&id(A), &key).unwrap(),
            &id(A),
            Duration::from_secs(600),
            SystemTime::now() - Duration::from_secs(7200),
        )
        .unwrap();
    for (what, bundle) in [("foreign", foreign_cert), ("expired", expired)] {
        let requests_before = metrics.requests.load(Ordering::Relaxed);
        match stub(server.addr, root, "mesh-ca", Some(presented(&bundle, &key))).await {
            Err(_) => {} // the alert arrived while connecting

            Ok(mut client) => {
                let err = client
                    .create_certificate(request(csr_b.clone(), 600, None))
                    .await
                    .unwrap_err();
                // tonic reports the alert as a transport error.
                assert!(
                    matches!(err.code(), Code::Unknown | Code::Unavailable),
                    "{what}: {err:?}"
                );
            }
        }
        // The request never reached the service.
        assert_eq!(
            metrics.requests.load(Ordering::Relaxed),
            requests_before,
            "{what}"
        );
    }
    assert_eq!(issued(&metrics), 3);
    server.stop().await;
}

fn fast_config(ttl: Duration) -> CertManagerConfig {
    CertManagerConfig {
        ttl,
        refresh_jitter: 0.0,
        min_refresh: Duration::from_millis(300),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..CertManagerConfig::default()
    }
}

/// `CertManager` + `GrpcCa` against a real server: the first certificate by token, the
/// renewals by mTLS with the certificate in hand. Real time: a 60 s certificate is renewed
/// after `min_refresh` (its half-life point, counted from `not_before` one minute back, has
/// passed), so two renewals take about 0.6 s.
#[tokio::test]
async fn cert_manager_renews_over_grpc_with_mtls() {
    let ca = two_level_ca();
    let server = start(Arc::clone(&ca), ServerOptions::default()).await;
    let metrics = Arc::clone(&server.metrics);
    let token = ca
        .mint_token(&id(A), Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let client = Arc::new(
        GrpcCa::new(&server.addr.to_string(), ca.root_cert_pem())
            .unwrap()
            .with_token(token),
    );
    let manager = CertManager::start(
        id(A),
        Arc::clone(&client) as Arc<dyn CaClient>,
        fast_config(Duration::from_secs(60)),
    )
    .unwrap();
    client.follow(manager.receiver());

    let first = manager.ready().await.unwrap();
    assert_eq!(first.identity(), &id(A));
    assert_eq!(first.bundle.chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(first.bundle.chain[2].trim(), ca.root_cert_pem().trim());
    assert_eq!(metrics.authn_by_token.load(Ordering::Relaxed), 1);

    let mut rx = manager.receiver();
    let mut serials = vec![first.serial().to_owned()];
    while serials.len() < 3 {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("renewed in time")
            .unwrap();
        let cert: Arc<WorkloadCert> = rx.borrow_and_update().clone().unwrap();
        if serials.last().map(String::as_str) != Some(cert.serial()) {
            serials.push(cert.serial().to_owned());
        }
    }
    assert!(manager.renewals() >= 2);
    // Every renewal authenticated with the certificate, not the token.
    assert_eq!(metrics.authn_by_token.load(Ordering::Relaxed), 1);
    assert!(metrics.authn_by_cert.load(Ordering::Relaxed) >= 2);
    assert_eq!(metrics.authn_failures.load(Ordering::Relaxed), 0);
    drop(manager);
    server.stop().await;
}

#[tokio::test]
async fn grpc_ca_maps_errors() {
    let ca = two_level_ca();
    // Nobody listens: UNAVAILABLE, retryable.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = csr::generate(&id(A), &key).unwrap();
    let down = GrpcCa::new(&addr.to_string(), ca.root_cert_pem())
        .unwrap()
        .with_token("v1.x.y");
    let err = down.sign(&csr, &id(A), Duration::ZERO).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");

    let server = start(Arc::clone(&ca), ServerOptions::default()).await;
    let addr = server.addr.to_string();
    // No credentials: Rejected(UNAUTHENTICATED), not retryable.
    let anonymous = GrpcCa::new(&addr, ca.root_cert_pem()).unwrap();
    let err = anonymous
        .sign(&csr, &id(A), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Rejected {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // TTL above the maximum: Rejected(INVALID_ARGUMENT) with istiod's message.
    let token = ca
        .mint_token(&id(A), Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let client = GrpcCa::new(&addr, ca.root_cert_pem())
        .unwrap()
        .with_token(token.clone());
    let err = client
        .sign(&csr, &id(A), Duration::from_secs(91 * 86_400))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Rejected {
                code: Code::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max allowed TTL"), "{err}");
    // The server's name does not match: the TLS handshake fails (UNAVAILABLE).
    let misnamed = GrpcCa::new(&addr, ca.root_cert_pem())
        .unwrap()
        .with_server_name("istiod.istio-system.svc")
        .with_token(token.clone());
    let err = misnamed
        .sign(&csr, &id(A), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    // A certificate of another trust domain is refused, and the token is used instead.
    let other: Identity = "spiffe://other.local/ns/default/sa/a".parse().unwrap();
    let other_key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let other_cert = ca
        .issue(&other, &other_key, Duration::from_secs(600))
        .unwrap();
    let fallback = GrpcCa::new(&addr, ca.root_cert_pem())
        .unwrap()
        .with_token(token)
        .with_workload_cert(Arc::new(WorkloadCert::new(other_cert, other_key.to_pem())));
    // The certificate is not for A, so it is not even tried.
    assert!(fallback.renewal_cert(&id(A)).is_none());
    assert!(fallback.renewal_cert(&other).is_some());
    let bundle = fallback.sign(&csr, &id(A), Duration::ZERO).await.unwrap();
    assert_eq!(bundle.identity, id(A));
    let other_csr = csr::generate(&other, &key).unwrap();
    let bundle = fallback
        .sign(&other_csr, &other, Duration::ZERO)
        .await
        .unwrap();
    // UNAUTHENTICATED with the certificate, then issued with the token (for A).
    assert_eq!(bundle.identity, id(A));
    assert_eq!(server.metrics.authn_failures.load(Ordering::Relaxed), 2);
    server.stop().await;
}
