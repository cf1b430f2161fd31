//! Unit tests: credentials parsing, protocol detection, expected identities, error mapping.
//! Handshakes are tested end to end in `tests/tls.rs`.

use std::{io, process::Command, sync::Arc, time::Duration};

use mesh_ca::{
    CaOptions, CertificateAuthority,
    key::{KeyAlgorithm, KeyPair},
};
use mesh_core::{config::security::peer_authentication::MtlsMode, identity::Identity};

use super::{
    Alpn, ExpectedIdentities, InboundMode, TlsError, TlsIdentity,
    error::RejectedPeer,
    server::{Detected, classify},
};

fn id(sa: &str) -> Identity {
    Identity::in_default_trust_domain("default", sa).expect("identity")
}

struct Pem {
    chain: String,
    key: String,
    roots: String,
}

fn issue(ca: &CertificateAuthority, sa: &str) -> (Pem, mesh_ca::CertBundle) {
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let bundle = ca
        .issue(&id(sa), &key, Duration::from_secs(3600))
        .expect("issue");
    let pem = Pem {
        chain: bundle.chain_pem(),
        key: key.to_pem().expose_secret().to_owned(),
        roots: ca.trust_bundle_pem().to_owned(),
    };
    (pem, bundle)
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::self_signed(&CaOptions::root()).expect("CA")
}

fn invalid(result: Result<TlsIdentity, TlsError>) -> (&'static str, String) {
    match result {
        Err(TlsError::InvalidCredentials { what, reason }) => (what, reason),
        other => panic!("expected InvalidCredentials, got {other:?}"),
    }
}

#[test]
fn from_pem_reads_identity_serial_chain_and_roots() {
    let ca = ca();
    let (pem, bundle) = issue(&ca, "reviews");
    let tls = TlsIdentity::from_pem(&pem.chain, &pem.key, &pem.roots).expect("credentials");
    assert_eq!(tls.identity(), &id("reviews"));
    assert_eq!(tls.serial(), bundle.serial);
    assert_eq!(tls.not_after(), bundle.not_after);
    assert_eq!(tls.not_before(), bundle.not_before);
    assert_eq!(tls.chain().len(), 2);
    assert_eq!(tls.roots().len(), 1);

    // Several roots at once.
    let other = self::ca();
    let both = format!("{}{}", pem.roots, other.trust_bundle_pem());
    let tls = TlsIdentity::from_pem(&pem.chain, &pem.key, both).expect("two roots");
    assert_eq!(tls.roots().len(), 2);
}

#[test]
fn from_pem_names_what_is_wrong() {
    let ca = ca();
    let (pem, _) = issue(&ca, "reviews");
    let (other, _) = issue(&ca, "ratings");

    let cases: Vec<(Result<TlsIdentity, TlsError>, &str, &str)> = vec![
        (
            TlsIdentity::from_pem("", &pem.key, &pem.roots),
            "certificate chain",
            "no CERTIFICATE block",
        ),
        (
            TlsIdentity::from_pem(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                &pem.key,
                &pem.roots,
            ),
            "certificate chain",
            "unreadable PEM",
        ),
        (
            TlsIdentity::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &pem.key,
                &pem.roots,
            ),
            "certificate chain",
            "not a valid X.509 certificate",
        ),
        (
            TlsIdentity::from_pem(&pem.chain, "", &pem.roots),
            "private key",
            "no PRIVATE KEY block",
        ),
        (
            TlsIdentity::from_pem(
                &pem.chain,
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                &pem.roots,
            ),
            "private key",
            "encrypted",
        ),
        (
            TlsIdentity::from_pem(&pem.chain, &other.key, &pem.roots),
            "private key",
            "does not belong to the leaf",
        ),
        (
            TlsIdentity::from_pem(&pem.chain, &pem.key, ""),
            "trust bundle",
            "no CERTIFICATE block",
        ),
        (
            TlsIdentity::from_pem(
                &pem.chain,
                &pem.key,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            "trust bundle",
            "certificate 1 cannot be a trust anchor",
        ),
    ];
    for (result, want_what, want_reason) in cases {
        let (what, reason) = invalid(result);
        assert_eq!(what, want_what, "{reason}");
        assert!(reason.contains(want_reason), "{what}: {reason}");
    }
    let err = TlsIdentity::from_pem("", "", "").expect_err("empty");
    assert!(
        err.to_string().starts_with("invalid certificate chain: "),
        "{err}"
    );
}

#[test]
fn the_leaf_must_carry_exactly_one_spiffe_uri_san() {
    let dir = tempfile::tempdir().expect("tempdir");
    let make = |name: &str, san: Option<&str>| -> (String, String) {
        let key = dir.path().join(format!("{name}.key"));
        let cert = dir.path().join(format!("{name}.pem"));
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=x",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        if let Some(san) = san {
            cmd.args(["-addext", &format!("subjectAltName={san}")]);
        }
        let out = cmd.output().expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read_to_string(cert).expect("cert"),
            std::fs::read_to_string(key).expect("key"),
        )
    };
    let cases = [
        ("none", None, "0 URI SANs"),
        ("dns", Some("DNS:reviews.default.svc"), "0 URI SANs"),
        (
            "two",
            Some("URI:spiffe://cluster.local/ns/a/sa/b,URI:spiffe://cluster.local/ns/a/sa/c"),
            "2 URI SANs",
        ),
        (
            "https",
            Some("URI:https://cluster.local/ns/a/sa/b"),
            "does not start with spiffe://",
        ),
    ];
    for (name, san, want) in cases {
        let (cert, key) = make(name, san);
        let (what, reason) = invalid(TlsIdentity::from_pem(&cert, &key, &cert));
        assert_eq!(what, "certificate chain");
        assert!(reason.contains(want), "{name}: {reason}");
    }
    // DNS names next to the one SPIFFE id are fine.
    let (cert, key) = make(
        "both",
        Some("DNS:reviews.default.svc,URI:spiffe://cluster.local/ns/default/sa/reviews"),
    );
    let tls = TlsIdentity::from_pem(&cert, &key, &cert).expect("DNS + SPIFFE");
    assert_eq!(tls.identity(), &id("reviews"));
}

#[test]
fn debug_never_prints_key_material() {
    let ca = ca();
    let (pem, bundle) = issue(&ca, "reviews");
    let tls = TlsIdentity::from_pem(&pem.chain, &pem.key, &pem.roots).expect("credentials");
    let debug = format!("{tls:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(
        debug.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{debug}"
    );
    assert!(debug.contains(&bundle.serial), "{debug}");
    let key_body: String = pem
        .key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for chunk in key_body.as_bytes().chunks(16) {
        let chunk = std::str::from_utf8(chunk).expect("base64");
        assert!(!debug.contains(chunk), "{debug}");
    }
    assert!(!debug.contains("PRIVATE"), "{debug}");

    let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(tls)));
    let acceptor = format!(
        "{:?}",
        super::TlsAcceptor::new(rx.clone()).expect("acceptor")
    );
    let connector = format!("{:?}", super::TlsConnector::new(rx));
    for text in [acceptor, connector] {
        assert!(text.contains("sa/reviews"), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
    }
}

#[test]
fn detection_reads_the_tls_record_header() {
    let cases: &[(&[u8], Option<Detected>)] = &[
        (b"", Some(Detected::Eof)),
        (&[0x16], None),
        (&[0x16, 0x03], None),
        (&[0x16, 0x03, 0x01], Some(Detected::Tls)),
        (&[0x16, 0x03, 0x03], Some(Detected::Tls)),
        (&[0x16, 0x03, 0x00], Some(Detected::Tls)),
        (&[0x16, 0x03, 0x04], Some(Detected::Tls)),
        (&[0x16, 0x03, 0x05], Some(Detected::Plaintext)),
        (&[0x16, 0x02, 0x01], Some(Detected::Plaintext)),
        (&[0x15, 0x03, 0x01], Some(Detected::Plaintext)),
        (b"G", Some(Detected::Plaintext)),
        (b"GET", Some(Detected::Plaintext)),
        (b"PRI", Some(Detected::Plaintext)),
        (&[0x80, 0x2e, 0x01], Some(Detected::Plaintext)), // SSLv2 ClientHello: not accepted
    ];
    for (bytes, want) in cases {
        assert_eq!(classify(bytes), *want, "{bytes:02x?}");
    }
}

#[test]
fn expected_identities_implement_secure_naming() {
    let reviews = id("reviews");
    let ratings = id("ratings");
    let foreign: Identity = "spiffe://other.domain/ns/default/sa/reviews"
        .parse()
        .expect("identity");

    let one_of = ExpectedIdentities::one_of([ratings.clone(), reviews.clone(), reviews.clone()]);
    assert_eq!(one_of.identities(), [ratings.clone(), reviews.clone()]);
    assert!(one_of.accepts(&reviews, "cluster.local"));
    assert!(!one_of.accepts(&id("details"), "cluster.local"));
    assert!(!one_of.accepts(&foreign, "cluster.local"));
    assert_eq!(
        one_of.to_string(),
        "one of [spiffe://cluster.local/ns/default/sa/ratings, spiffe://cluster.local/ns/default/sa/reviews]"
    );
    assert_eq!(
        one_of,
        [reviews.clone(), ratings.clone()].into_iter().collect()
    );

    let none = ExpectedIdentities::one_of([]);
    assert!(!none.accepts(&reviews, "cluster.local"));
    assert!(none.to_string().contains("no identity"));

    let any = ExpectedIdentities::any_in_trust_domain();
    assert!(any.is_any_in_trust_domain());
    assert!(any.identities().is_empty());
    assert!(any.accepts(&reviews, "cluster.local"));
    assert!(!any.accepts(&foreign, "cluster.local"));

    assert_eq!(
        ExpectedIdentities::from(reviews.clone()).identities(),
        [reviews]
    );
}

#[test]
fn inbound_mode_follows_peer_authentication() {
    assert_eq!(InboundMode::from(MtlsMode::Strict), InboundMode::Strict);
    assert_eq!(
        InboundMode::from(MtlsMode::Permissive),
        InboundMode::Permissive
    );
    assert_eq!(InboundMode::from(MtlsMode::Disable), InboundMode::Disable);
    assert_eq!(InboundMode::from(MtlsMode::Unset), InboundMode::Permissive);
    assert_eq!(InboundMode::default(), InboundMode::Permissive);
}

#[test]
fn alpn_ids_round_trip() {
    for alpn in [Alpn::H2, Alpn::Http11] {
        assert_eq!(Alpn::from_bytes(alpn.as_bytes()), Some(alpn));
    }
    assert_eq!(Alpn::from_bytes(b"istio"), None);
    assert_eq!(
        super::alpn_protocols(),
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

#[test]
fn handshake_errors_keep_the_verifiers_reasons() {
    let peer = "127.0.0.1:15006".parse().expect("addr");
    let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);

    let naming = RejectedPeer::SecureNaming {
        expected: ExpectedIdentities::one_of([id("ratings")]),
        presented: id("reviews"),
    };
    let err = TlsError::from_handshake(peer, wrap(naming.into_rustls()));
    assert!(
        matches!(&err, TlsError::SecureNaming { presented, .. } if *presented == id("reviews")),
        "{err:?}"
    );
    assert_eq!(err.peer(), Some(peer));
    assert_eq!(
        err.to_string(),
        "secure naming: 127.0.0.1:15006 presented spiffe://cluster.local/ns/default/sa/reviews, \
         expected one of [spiffe://cluster.local/ns/default/sa/ratings]"
    );

    let bad = RejectedPeer::Identity("it has 2 URI SANs".to_owned());
    let err = TlsError::from_handshake(peer, wrap(bad.into_rustls()));
    assert!(matches!(&err, TlsError::PeerRejected { reason, .. } if reason.contains("2 URI SANs")));

    let other = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
    let err = TlsError::from_handshake(peer, wrap(other.clone()));
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert_eq!(err.rustls_error(), Some(&other));
    assert!(err.to_string().contains("127.0.0.1:15006"), "{err}");
}
