//! Mutual TLS end to end on loopback: certificates from mesh-ca, rustls on both sides, and
//! `openssl s_client` as an independent peer.

use std::{
    net::SocketAddr,
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_ca::{
    CaOptions, Cacerts, CertBundle, CertificateAuthority, RootCa, csr,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
};
use mesh_tower::tls::{
    Alpn, ExpectedIdentities, IdentityWatch, InboundMode, MtlsConnector, PeerIdentity, TlsAcceptor,
    TlsConnector, TlsError, TlsIdentity, UpstreamTls,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};

const HOUR: Duration = Duration::from_secs(3600);
/// Upper bound for any single step, so a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

// === fixtures ===

fn new_ca() -> CertificateAuthority {
    CertificateAuthority::self_signed(&CaOptions::root()).expect("self-signed CA")
}

fn id(sa: &str) -> Identity {
    Identity::in_default_trust_domain("default", sa).expect("identity")
}

/// A workload certificate from `ca` for `sa`, trusting `roots_pem`.
struct Issued {
    tls: TlsIdentity,
    bundle: CertBundle,
    key_pem: String,
    roots_pem: String,
}

fn issue_at(
    ca: &CertificateAuthority,
    sa: &str,
    roots_pem: &str,
    ttl: Duration,
    now: SystemTime,
) -> Issued {
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let identity = id(sa);
    let bundle = ca
        .sign_at(
            &csr::generate(&identity, &key).expect("csr"),
            &identity,
            ttl,
            now,
        )
        .expect("sign");
    let key_pem = key.to_pem().expose_secret().to_owned();
    let tls = TlsIdentity::from_pem(bundle.chain_pem(), &key_pem, roots_pem).expect("credentials");
    Issued {
        tls,
        bundle,
        key_pem,
        roots_pem: roots_pem.to_owned(),
    }
}

fn issue(ca: &CertificateAuthority, sa: &str) -> Issued {
    issue_at(ca, sa, ca.trust_bundle_pem(), HOUR, SystemTime::now())
}

fn publish(issued: &Issued) -> (watch::Sender<Option<Arc<TlsIdentity>>>, IdentityWatch) {
    watch::channel(Some(Arc::new(
        TlsIdentity::from_pem(
            issued.bundle.chain_pem(),
            &issued.key_pem,
            &issued.roots_pem,
        )
        .expect("credentials"),
    )))
}

fn source(issued: &Issued) -> IdentityWatch {
    let (tx, rx) = publish(issued);
    // Keep the channel open for the test's lifetime.
    std::mem::forget(tx);
    rx
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// What the test server saw for one connection.
#[derive(Debug)]
struct Seen {
    result: Result<(bool, Option<PeerIdentity>, Option<Alpn>), TlsError>,
}

/// Accepts connections with `acceptor` in `mode`, reports each outcome, and echoes what the
/// peer sends on accepted connections.
fn spawn_echo_server(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mode: InboundMode,
) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept_with_mode(tcp, mode).await {
                    Ok(accepted) => {
                        let peer = accepted.peer_identity().cloned();
                        let (mut io, _) = accepted.into_io();
                        let alpn = io.alpn();
                        let _ = tx.send(Seen {
                            result: Ok((io.is_tls(), peer, alpn)),
                        });
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Seen { result: Err(e) });
                    }
                }
            });
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("the server reports in time")
        .expect("server running")
}

/// Writes `ping` and expects it back.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<()> {
    tokio::time::timeout(PATIENCE, async {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    })
    .await
    .expect("echo in time")
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    expected: ExpectedIdentities,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Option<Alpn>,
        PeerIdentity,
    ),
    TlsError,
> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(PATIENCE, connector.connect(tcp, expected))
        .await
        .expect("handshake in time")
}

fn assert_rustls_cert_error(e: &TlsError, want: &str) {
    let rustls = e
        .rustls_error()
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"));
    assert!(
        format!("{rustls:?}").contains(want),
        "{rustls:?} should mention {want}"
    );
}

/// A chain from a foreign CA. Every test CA is named `O=mesh, CN=Root CA`, so webpki finds
/// an issuer by name and then fails the signature; with distinct names it is UnknownIssuer.
fn assert_foreign_chain_error(e: &TlsError) {
    let rustls = e
        .rustls_error()
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"));
    let text = format!("{rustls:?}");
    assert!(
        text.contains("BadSignature") || text.contains("UnknownIssuer"),
        "{text} should be a chain verification failure"
    );
}

// === tests ===

#[tokio::test]
async fn mutual_tls_sees_both_spiffe_ids_and_negotiates_h2() {
    let ca = new_ca();
    let server = issue(&ca, "reviews");
    let client = issue(&ca, "productpage");
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let connector = TlsConnector::new(source(&client));

    let (mut stream, alpn, server_peer) = connect(&connector, addr, id("reviews").into())
        .await
        .expect("mTLS");
    assert_eq!(alpn, Some(Alpn::H2));
    assert_eq!(server_peer.identity, id("reviews"));
    assert_eq!(*server_peer.serial, *server.bundle.serial);
    echo(&mut stream).await.expect("echo over mTLS");

    let (tls, client_peer, server_alpn) = next(&mut seen).await.result.expect("accepted");
    assert!(tls);
    let client_peer = client_peer.expect("client identity");
    assert_eq!(client_peer.identity, id("productpage"));
    assert_eq!(*client_peer.serial, *client.bundle.serial);
    assert_eq!(server_alpn, Some(Alpn::H2));
}

#[tokio::test]
async fn secure_naming_refuses_a_server_whose_identity_is_not_expected() {
    let ca = new_ca();
    let server = issue(&ca, "reviews");
    let client = issue(&ca, "productpage");
    let (listener, addr) = bind().await;
    let _seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let connector = TlsConnector::new(source(&client));

    let expected = ExpectedIdentities::one_of([id("ratings"), id("details")]);
    let err = connect(&connector, addr, expected.clone())
        .await
        .expect_err("wrong identity");
    match &err {
        TlsError::SecureNaming {
            peer,
            expected: e,
            presented,
        } => {
            assert_eq!(*peer, addr);
            assert_eq!(e, &expected);
            assert_eq!(presented, &id("reviews"));
        }
        other => panic!("expected SecureNaming, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{msg}"
    );
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/ratings"),
        "{msg}"
    );
    assert!(msg.contains(&addr.to_string()), "{msg}");

    // An empty set fails closed; "any in the trust domain" is Istio's no-SAN behaviour.
    let err = connect(&connector, addr, ExpectedIdentities::one_of([]))
        .await
        .expect_err("empty set");
    assert!(matches!(err, TlsError::SecureNaming { .. }), "{err:?}");
    let (_, _, peer) = connect(&connector, addr, ExpectedIdentities::any_in_trust_domain())
        .await
        .expect("any identity of the trust domain");
    assert_eq!(peer.identity, id("reviews"));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ca = new_ca();
    let other_ca = new_ca();
    let server = issue(&ca, "reviews");
    // Signed by another CA; trusts the server's CA so that only the server can refuse.
    let client = issue_at(
        &other_ca,
        "productpage",
        ca.trust_bundle_pem(),
        HOUR,
        SystemTime::now(),
    );
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let connector = TlsConnector::new(source(&client));

    // TLS 1.3: the client's side of the handshake may complete; the refusal arrives as an
    // alert on the first read.
    if let Ok((mut stream, _, _)) = connect(&connector, addr, id("reviews").into()).await {
        assert!(
            echo(&mut stream).await.is_err(),
            "the server must not talk to a foreign client"
        );
    }
    let err = next(&mut seen).await.result.expect_err("refused");
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert_foreign_chain_error(&err);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let ca = new_ca();
    let other_ca = new_ca();
    let server = issue_at(
        &other_ca,
        "reviews",
        ca.trust_bundle_pem(),
        HOUR,
        SystemTime::now(),
    );
    let client = issue(&ca, "productpage");
    let (listener, addr) = bind().await;
    let _seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let err = connect(
        &TlsConnector::new(source(&client)),
        addr,
        id("reviews").into(),
    )
    .await
    .expect_err("foreign server");
    assert_foreign_chain_error(&err);
    assert_eq!(err.peer(), Some(addr));
}

#[tokio::test]
async fn peers_of_another_trust_domain_are_refused() {
    let ca = new_ca();
    let foreign: Identity = "spiffe://other.domain/ns/default/sa/productpage"
        .parse()
        .expect("identity");
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let bundle = ca
        .sign(&csr::generate(&foreign, &key).expect("csr"), &foreign, HOUR)
        .expect("sign");
    let foreign_tls = TlsIdentity::from_pem(
        bundle.chain_pem(),
        key.to_pem().expose_secret(),
        ca.trust_bundle_pem(),
    )
    .expect("credentials");
    let (_keep, foreign_source) = watch::channel(Some(Arc::new(foreign_tls)));

    // A client of another trust domain, chained to the same root: the server refuses it.
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Strict,
    );
    if let Ok((mut stream, _, _)) = connect(
        &TlsConnector::new(foreign_source.clone()),
        addr,
        id("reviews").into(),
    )
    .await
    {
        assert!(echo(&mut stream).await.is_err());
    }
    let err = next(&mut seen)
        .await
        .result
        .expect_err("foreign trust domain");
    match &err {
        TlsError::PeerRejected { reason, .. } => {
            assert!(
                reason.contains("not in the trust domain cluster.local"),
                "{reason}"
            )
        }
        other => panic!("expected PeerRejected, got {other:?}"),
    }

    // A server of another trust domain: "any identity of the trust domain" refuses it.
    let (listener, addr) = bind().await;
    let _seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(foreign_source).expect("acceptor"),
        InboundMode::Strict,
    );
    let err = connect(
        &TlsConnector::new(source(&issue(&ca, "productpage"))),
        addr,
        ExpectedIdentities::any_in_trust_domain(),
    )
    .await
    .expect_err("foreign server");
    assert!(matches!(err, TlsError::SecureNaming { .. }), "{err:?}");
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = new_ca();
    let two_hours_ago = SystemTime::now() - 2 * HOUR;
    let expired_client = issue_at(
        &ca,
        "productpage",
        ca.trust_bundle_pem(),
        Duration::from_secs(60),
        two_hours_ago,
    );
    let expired_server = issue_at(
        &ca,
        "reviews",
        ca.trust_bundle_pem(),
        Duration::from_secs(60),
        two_hours_ago,
    );
    assert!(expired_client.tls.not_after() < SystemTime::now());

    // An expired client certificate: the server refuses it.
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Strict,
    );
    if let Ok((mut stream, _, _)) = connect(
        &TlsConnector::new(source(&expired_client)),
        addr,
        id("reviews").into(),
    )
    .await
    {
        assert!(echo(&mut stream).await.is_err());
    }
    let err = next(&mut seen).await.result.expect_err("expired client");
    assert_rustls_cert_error(&err, "Expired");

    // An expired server certificate: the client refuses it.
    let (listener, addr) = bind().await;
    let _seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&expired_server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let err = connect(
        &TlsConnector::new(source(&issue(&ca, "productpage"))),
        addr,
        id("reviews").into(),
    )
    .await
    .expect_err("expired server");
    assert_rustls_cert_error(&err, "Expired");
}

#[tokio::test]
async fn plaintext_to_a_strict_port_is_refused() {
    let ca = new_ca();
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Strict,
    );
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")
        .await
        .expect("write");
    let err = next(&mut seen).await.result.expect_err("plaintext refused");
    match &err {
        TlsError::PlaintextRefused { peer } => assert_eq!(*peer, local),
        other => panic!("expected PlaintextRefused, got {other:?}"),
    }
    assert!(err.to_string().contains("STRICT"), "{err}");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection is closed: {read:?}"
    );

    // `accept` is STRICT too.
    let (listener, addr) = bind().await;
    let acceptor = TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let (accepted, _) = listener.accept().await.expect("accept");
    let err = acceptor.accept(accepted).await.expect_err("h2c refused");
    assert!(matches!(err, TlsError::PlaintextRefused { .. }), "{err:?}");
}

#[tokio::test]
async fn permissive_accepts_tls_and_plaintext_on_one_listener() {
    let ca = new_ca();
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Permissive,
    );

    let (mut stream, _, _) = connect(
        &TlsConnector::new(source(&issue(&ca, "productpage"))),
        addr,
        id("reviews").into(),
    )
    .await
    .expect("mTLS on a PERMISSIVE port");
    echo(&mut stream).await.expect("TLS echo");
    let (tls, peer, _) = next(&mut seen).await.result.expect("TLS accepted");
    assert!(tls);
    assert_eq!(peer.expect("identity").identity, id("productpage"));

    // Plaintext on the same listener; the peeked bytes reach the application.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    echo(&mut tcp).await.expect("plaintext echo");
    let (tls, peer, _) = next(&mut seen).await.result.expect("plaintext accepted");
    assert!(!tls);
    assert!(peer.is_none());
}

#[tokio::test]
async fn disable_serves_plaintext_only() {
    let ca = new_ca();
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Disable,
    );
    // A TLS client gets its own ClientHello echoed back: no handshake happens.
    let result = connect(
        &TlsConnector::new(source(&issue(&ca, "productpage"))),
        addr,
        id("reviews").into(),
    )
    .await;
    assert!(result.is_err(), "no TLS on a DISABLE port");
    let (tls, _, _) = next(&mut seen).await.result.expect("plaintext");
    assert!(!tls);
}

#[tokio::test]
async fn rotation_presents_the_new_certificate_while_established_connections_keep_working() {
    let ca = new_ca();
    let first = issue(&ca, "reviews");
    let (publish_server, server_source) = publish(&first);
    let client_first = issue(&ca, "productpage");
    let (publish_client, client_source) = publish(&client_first);
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(server_source).expect("acceptor"),
        InboundMode::Strict,
    );
    let connector = TlsConnector::new(client_source);

    let (mut established, _, peer) = connect(&connector, addr, id("reviews").into())
        .await
        .expect("first");
    assert_eq!(*peer.serial, *first.bundle.serial);
    let seen_first = next(&mut seen)
        .await
        .result
        .expect("first accepted")
        .1
        .expect("peer");
    assert_eq!(*seen_first.serial, *client_first.bundle.serial);

    // Both workloads rotate.
    let second = issue(&ca, "reviews");
    let client_second = issue(&ca, "productpage");
    assert_ne!(second.bundle.serial, first.bundle.serial);
    publish_server.send_replace(Some(Arc::new(second.tls)));
    publish_client.send_replace(Some(Arc::new(client_second.tls)));

    let (mut fresh, _, peer) = connect(&connector, addr, id("reviews").into())
        .await
        .expect("after rotation");
    assert_eq!(
        *peer.serial, *second.bundle.serial,
        "the next handshake presents the new certificate"
    );
    let seen_second = next(&mut seen)
        .await
        .result
        .expect("second accepted")
        .1
        .expect("peer");
    assert_eq!(*seen_second.serial, *client_second.bundle.serial);
    echo(&mut fresh).await.expect("new connection");
    echo(&mut established)
        .await
        .expect("the established connection carries on");
}

#[tokio::test]
async fn root_rotation_with_overlapping_bundles_accepts_peers_of_both_roots() {
    let old_ca = new_ca();
    let new_ca = new_ca();
    let both = format!("{}{}", old_ca.trust_bundle_pem(), new_ca.trust_bundle_pem());
    let now = SystemTime::now();
    let server = issue_at(&new_ca, "reviews", &both, HOUR, now);
    assert_eq!(server.tls.roots().len(), 2);
    let (publish_server, server_source) = publish(&server);
    let old_client = issue_at(&old_ca, "productpage", &both, HOUR, now);
    let new_client = issue_at(&new_ca, "details", &both, HOUR, now);
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(server_source).expect("acceptor"),
        InboundMode::Strict,
    );

    for (client, sa) in [(&old_client, "productpage"), (&new_client, "details")] {
        let (mut stream, _, peer) = connect(
            &TlsConnector::new(source(client)),
            addr,
            id("reviews").into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{sa}: {e:?}"));
        assert_eq!(peer.identity, id("reviews"));
        echo(&mut stream).await.expect("echo");
        let seen_peer = next(&mut seen)
            .await
            .result
            .expect("accepted")
            .1
            .expect("peer");
        assert_eq!(seen_peer.identity, id(sa));
    }

    // The old root leaves the server's bundle: its clients are refused from then on.
    let server_new_only = issue_at(&new_ca, "reviews", new_ca.trust_bundle_pem(), HOUR, now);
    publish_server.send_replace(Some(Arc::new(server_new_only.tls)));
    if let Ok((mut stream, _, _)) = connect(
        &TlsConnector::new(source(&old_client)),
        addr,
        id("reviews").into(),
    )
    .await
    {
        assert!(echo(&mut stream).await.is_err());
    }
    let err = next(&mut seen)
        .await
        .result
        .expect_err("old root no longer trusted");
    assert_foreign_chain_error(&err);
}

#[tokio::test]
async fn handshakes_fail_closed_before_the_first_certificate() {
    let ca = new_ca();
    let (publish_server, server_source) = watch::channel(None::<Arc<TlsIdentity>>);
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(server_source).expect("acceptor"),
        InboundMode::Permissive,
    );
    let connector = TlsConnector::new(source(&issue(&ca, "productpage")));

    let err = connect(&connector, addr, id("reviews").into())
        .await
        .expect_err("no server certificate");
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    let err = next(&mut seen).await.result.expect_err("fails closed");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");

    // The client side fails closed too, before sending anything.
    let (_none, empty) = watch::channel(None::<Arc<TlsIdentity>>);
    let err = connect(&TlsConnector::new(empty), addr, id("reviews").into())
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(err, TlsError::NoCertificate { peer } if peer == addr),
        "{err:?}"
    );

    // Once the first certificate is published, handshakes succeed.
    publish_server.send_replace(Some(Arc::new(issue(&ca, "reviews").tls)));
    let (mut stream, _, _) = connect(&connector, addr, id("reviews").into())
        .await
        .expect("after the first certificate");
    echo(&mut stream).await.expect("echo");
}

#[tokio::test]
async fn a_silent_peer_times_out_with_its_address_in_the_error() {
    let ca = new_ca();
    let timeout = Duration::from_millis(200);
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews")))
            .expect("acceptor")
            .handshake_timeout(timeout),
        InboundMode::Strict,
    );
    // Sends nothing at all.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let err = next(&mut seen).await.result.expect_err("timeout");
    assert!(
        matches!(err, TlsError::HandshakeTimeout { peer, .. } if peer == silent.local_addr().expect("addr")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&silent.local_addr().expect("addr").to_string()),
        "{err}"
    );
    // Starts a TLS record and stops.
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial.write_all(&[0x16, 0x03]).await.expect("write");
    let err = next(&mut seen).await.result.expect_err("timeout");
    assert!(matches!(err, TlsError::HandshakeTimeout { .. }), "{err:?}");

    // The client side: a server that accepts TCP and never answers.
    let (mute, mute_addr) = bind().await;
    let connector =
        TlsConnector::new(source(&issue(&ca, "productpage"))).handshake_timeout(timeout);
    let err = connect(&connector, mute_addr, id("reviews").into())
        .await
        .expect_err("timeout");
    assert!(
        matches!(err, TlsError::HandshakeTimeout { peer, .. } if peer == mute_addr),
        "{err:?}"
    );
    drop((mute, silent, partial));
}

#[tokio::test]
async fn hyper_client_through_the_mtls_connector_speaks_h2_and_learns_the_server_identity() {
    let ca = new_ca();
    let (listener, addr) = bind().await;
    let acceptor = TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(accepted) = acceptor
                    .accept_with_mode(tcp, InboundMode::Permissive)
                    .await
                else {
                    return;
                };
                let (io, peer) = accepted.into_io();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let who = peer
                            .as_ref()
                            .map_or_else(|| "plaintext".to_owned(), |p| p.identity.to_string());
                        let body = format!("{who} {:?}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });

    let expected = ExpectedIdentities::one_of([id("reviews")]);
    let connector = MtlsConnector::new(
        TlsConnector::new(source(&issue(&ca, "productpage"))),
        move |authority| {
            if authority.port_u16() == Some(addr.port()) {
                UpstreamTls::Mutual(expected.clone())
            } else {
                UpstreamTls::Plaintext
            }
        },
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let res = tokio::time::timeout(
        PATIENCE,
        client.get(format!("http://{addr}/").parse().expect("uri")),
    )
    .await
    .expect("in time")
    .expect("response over mTLS");
    assert_eq!(
        res.version(),
        http::Version::HTTP_2,
        "ALPN h2 makes the client speak HTTP/2"
    );
    let server = res
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .expect("server identity in the response");
    assert_eq!(server.identity, id("reviews"));
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        body,
        "spiffe://cluster.local/ns/default/sa/productpage HTTP/2.0"
    );

    // Plaintext where the lookup says so (the PERMISSIVE server takes it).
    let plain = MtlsConnector::new(
        TlsConnector::new(source(&issue(&ca, "productpage"))),
        |_| UpstreamTls::Plaintext,
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(plain);
    let res = tokio::time::timeout(
        PATIENCE,
        client.get(format!("http://{addr}/").parse().expect("uri")),
    )
    .await
    .expect("in time")
    .expect("plaintext response");
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert!(res.extensions().get::<PeerIdentity>().is_none());
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "plaintext HTTP/1.1");

    // Secure naming failures are connect errors.
    let wrong = MtlsConnector::new(
        TlsConnector::new(source(&issue(&ca, "productpage"))),
        |_| UpstreamTls::Mutual(ExpectedIdentities::one_of([id("ratings")])),
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(wrong);
    let err = tokio::time::timeout(
        PATIENCE,
        client.get(format!("http://{addr}/").parse().expect("uri")),
    )
    .await
    .expect("in time")
    .expect_err("secure naming");
    assert!(err.is_connect(), "{err:?}");
    let source = std::error::Error::source(&err).expect("cause");
    assert!(format!("{source:?}").contains("SecureNaming"), "{source:?}");
}

// === openssl s_client as the independent peer ===

struct OpensslFiles {
    dir: tempfile::TempDir,
}

impl OpensslFiles {
    fn write(name: &str, text: &str, dir: &tempfile::TempDir) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write temp file");
        path.to_str().expect("utf-8 path").to_owned()
    }
}

/// A CA with an intermediate, so the chains have three certificates.
fn intermediate_ca() -> (CertificateAuthority, String) {
    let root = RootCa::generate(
        &KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        &CaOptions::root(),
    )
    .expect("root");
    let cacerts = Cacerts::intermediate(
        &root,
        &KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        &CaOptions::intermediate("cluster1"),
    )
    .expect("intermediate");
    let root_pem = root.cert_pem.clone();
    (CertificateAuthority::new(&cacerts).expect("CA"), root_pem)
}

/// Runs `openssl s_client` with stdin at EOF; kills it after [`PATIENCE`].
fn s_client(args: &[&str]) -> (bool, String) {
    use std::io::Read;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for openssl") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("openssl s_client {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    text.push('\n');
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    (status.success(), text)
}

#[tokio::test]
async fn openssl_s_client_with_a_mesh_certificate_completes_mutual_tls() {
    let (ca, root_pem) = intermediate_ca();
    let server = issue(&ca, "reviews");
    assert_eq!(server.tls.chain().len(), 3, "leaf, intermediate, root");
    let client = issue(&ca, "productpage");
    let files = OpensslFiles {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let dir = &files.dir;
    let client_cert = OpensslFiles::write("client.pem", &client.bundle.leaf_pem, dir);
    let client_chain = OpensslFiles::write(
        "client-chain.pem",
        &client.bundle.intermediates().concat(),
        dir,
    );
    let client_key = OpensslFiles::write("client.key", &client.key_pem, dir);
    let root = OpensslFiles::write("root.pem", &root_pem, dir);

    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&server)).expect("acceptor"),
        InboundMode::Strict,
    );
    let connect_to = addr.to_string();
    let args: Vec<String> = [
        "-connect",
        &connect_to,
        "-cert",
        &client_cert,
        "-cert_chain",
        &client_chain,
        "-key",
        &client_key,
        "-CAfile",
        &root,
        "-alpn",
        "h2",
        "-verify_return_error",
        "-showcerts",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        s_client(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("openssl ran");
    assert!(ok, "openssl s_client failed:\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("Certificate chain"), "{out}");
    assert_eq!(
        out.matches("-----BEGIN CERTIFICATE-----").count(),
        3,
        "leaf, intermediate, root:\n{out}"
    );
    assert!(
        out.contains("CN = Intermediate CA") && out.contains("CN = Root CA"),
        "{out}"
    );
    // The chain ends in the root openssl was given.
    let last = out
        .rfind("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = out[last..].find("-----END CERTIFICATE-----").expect("end")
        + last
        + "-----END CERTIFICATE-----".len();
    let last_pem = &out[last..end];
    assert_eq!(
        last_pem.trim(),
        root_pem.trim(),
        "the printed chain ends in the root"
    );

    let (tls, peer, alpn) = next(&mut seen)
        .await
        .result
        .expect("the acceptor took openssl's certificate");
    assert!(tls);
    assert_eq!(peer.expect("peer").identity, id("productpage"));
    assert_eq!(alpn, Some(Alpn::H2));

    // `openssl verify` accepts the server's leaf with the CA files.
    let leaf = OpensslFiles::write("server.pem", &server.bundle.leaf_pem, dir);
    let ca_bundle = OpensslFiles::write(
        "ca-bundle.pem",
        &format!("{}{root_pem}", ca.ca_cert_pem()),
        dir,
    );
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", &ca_bundle, &leaf])
        .output()
        .expect("openssl verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test]
async fn openssl_s_client_without_a_client_certificate_is_refused_in_strict() {
    let ca = new_ca();
    let files = OpensslFiles {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let root = OpensslFiles::write("root.pem", ca.trust_bundle_pem(), &files.dir);
    let (listener, addr) = bind().await;
    let mut seen = spawn_echo_server(
        listener,
        TlsAcceptor::new(source(&issue(&ca, "reviews"))).expect("acceptor"),
        InboundMode::Strict,
    );
    for version in ["-tls1_3", "-tls1_2"] {
        let args = vec![
            "-connect".to_owned(),
            addr.to_string(),
            "-CAfile".to_owned(),
            root.clone(),
            "-alpn".to_owned(),
            "h2".to_owned(),
            "-verify_return_error".to_owned(),
            // Wait for the server's verdict instead of leaving at stdin's EOF: in TLS 1.3
            // the refusal arrives after the client's handshake is done.
            "-ign_eof".to_owned(),
            version.to_owned(),
        ];
        let (ok, out) = tokio::task::spawn_blocking(move || {
            s_client(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("openssl ran");
        let err = next(&mut seen)
            .await
            .result
            .expect_err("no client certificate");
        assert!(
            matches!(err, TlsError::Handshake { .. }),
            "{version}: {err:?}"
        );
        assert_rustls_cert_error(&err, "NoCertificatesPresented");
        assert!(
            out.contains("alert"),
            "{version}: openssl reports the alert:\n{out}"
        );
        if version == "-tls1_2" {
            // In TLS 1.2 the refusal comes before the client's handshake completes.
            assert!(!ok, "{out}");
        }
    }
}
