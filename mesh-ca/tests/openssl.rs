//! The CA checked by an independent implementation: the `openssl` CLI.
//!
//! `scripts/test` installs `openssl`; these tests assume it is on `PATH`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use mesh_ca::{
    CertificateAuthority, Error, authority::MAX_WORKLOAD_CERT_TTL, csr::CsrPem, identity::Identity,
    pem,
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn mesh_ca(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .args(args)
        .output()
        .expect("run mesh-ca");
    assert!(
        out.status.success(),
        "mesh-ca {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (scripts/test installs it)")
}

fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `mesh-ca root` + `intermediate` into `dir`; returns the cacerts directory.
fn make_cacerts(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let cacerts = dir.join("cluster1");
    mesh_ca(&["root", "--out", s(&root)]);
    mesh_ca(&[
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

/// `cat ca-cert.pem root-cert.pem > ca-bundle.pem` (instead of `<(…)`).
fn ca_bundle(cacerts: &Path, dir: &Path) -> PathBuf {
    let bundle = dir.join("ca-bundle.pem");
    let text = format!(
        "{}{}",
        std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap(),
        std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap()
    );
    std::fs::write(&bundle, text).unwrap();
    bundle
}

#[test]
fn openssl_verifies_an_issued_workload_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = make_cacerts(dir.path());
    let out = dir.path().join("reviews");
    mesh_ca(&[
        "issue",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--ttl",
        "24h",
        "--out",
        s(&out),
    ]);
    let chain = out.join("cert-chain.pem");
    let bundle = ca_bundle(&cacerts, dir.path());

    // openssl verify -CAfile <(cat ca-cert.pem root-cert.pem) cert.pem
    let verified = openssl_ok(&["verify", "-CAfile", s(&bundle), s(&chain)]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    // …for both TLS roles the extended key usages allow.
    for purpose in ["sslserver", "sslclient"] {
        let v = openssl_ok(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            s(&bundle),
            s(&chain),
        ]);
        assert!(v.trim().ends_with(": OK"), "{purpose}: {v}");
    }
    // The root alone, with the intermediate as untrusted: the chain really goes through it.
    let v = openssl_ok(&[
        "verify",
        "-CAfile",
        s(&cacerts.join("root-cert.pem")),
        "-untrusted",
        s(&cacerts.join("ca-cert.pem")),
        s(&chain),
    ]);
    assert!(v.trim().ends_with(": OK"), "{v}");
    // Not against the root alone.
    let alone = openssl(&[
        "verify",
        "-CAfile",
        s(&cacerts.join("root-cert.pem")),
        s(&chain),
    ]);
    assert!(!alone.status.success());

    let text = openssl_ok(&["x509", "-in", s(&chain), "-text", "-noout"]);
    assert!(text.contains(&format!("URI:{REVIEWS}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("Issuer: O = mesh, L = cluster1, CN = Intermediate CA"),
        "{text}"
    );

    // Not After ≈ now + 24h: still valid in 23h59m, no longer in 24h01m.
    let later = openssl(&["x509", "-in", s(&chain), "-noout", "-checkend", "86340"]);
    assert!(later.status.success(), "expires before now+24h-60s");
    let after = openssl(&["x509", "-in", s(&chain), "-noout", "-checkend", "86460"]);
    assert!(!after.status.success(), "valid after now+24h+60s");

    // The key file holds the key of the leaf.
    let key_pub = openssl_ok(&["pkey", "-in", s(&out.join("key.pem")), "-pubout"]);
    let cert_pub = openssl_ok(&["x509", "-in", s(&chain), "-noout", "-pubkey"]);
    assert_eq!(key_pub, cert_pub);

    // cert-chain.pem of the intermediate: intermediate then root.
    let chain_text = std::fs::read_to_string(cacerts.join("cert-chain.pem")).unwrap();
    let ca_text = std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap();
    let root_text = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    assert_eq!(chain_text, format!("{ca_text}{root_text}"));
    let ca_x509 = openssl_ok(&[
        "x509",
        "-in",
        s(&cacerts.join("ca-cert.pem")),
        "-text",
        "-noout",
    ]);
    assert!(ca_x509.contains("CA:TRUE, pathlen:0"), "{ca_x509}");
    assert!(!ca_x509.contains("Name Constraints"), "{ca_x509}");
    let root_x509 = openssl_ok(&[
        "x509",
        "-in",
        s(&cacerts.join("root-cert.pem")),
        "-text",
        "-noout",
    ]);
    assert!(root_x509.contains("CA:TRUE"), "{root_x509}");
    assert!(
        root_x509.contains("Certificate Sign, CRL Sign"),
        "{root_x509}"
    );
    // Root: 10 years.
    let nine_years = (9 * 365 * 86_400).to_string();
    let eleven_years = (11 * 365 * 86_400).to_string();
    let root_file = cacerts.join("root-cert.pem");
    assert!(
        openssl(&[
            "x509",
            "-in",
            s(&root_file),
            "-noout",
            "-checkend",
            &nine_years
        ])
        .status
        .success()
    );
    assert!(
        !openssl(&[
            "x509",
            "-in",
            s(&root_file),
            "-noout",
            "-checkend",
            &eleven_years
        ])
        .status
        .success()
    );
}

/// Makes a CSR with `openssl req` asking for much more than it may get.
fn openssl_csr(dir: &Path, name: &str, newkey: &[&str]) -> CsrPem {
    let csr = dir.join(format!("{name}.csr"));
    let key = dir.join(format!("{name}.key"));
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        s(&key),
        "-subj",
        "/CN=evil.example/O=attacker",
        "-addext",
        "subjectAltName=DNS:evil.example,DNS:localhost,URI:spiffe://cluster.local/ns/istio-system/sa/istiod",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        s(&csr),
    ]);
    openssl_ok(&args);
    // The request really asks for CA:TRUE and the names.
    let text = openssl_ok(&["req", "-in", s(&csr), "-noout", "-text"]);
    assert!(
        text.contains("CA:TRUE") && text.contains("DNS:evil.example"),
        "{text}"
    );
    CsrPem::new(std::fs::read_to_string(&csr).unwrap())
}

fn load_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::load(make_cacerts(dir)).unwrap()
}

/// Checks the issued leaf with x509-parser and with openssl.
fn assert_only_the_identity(dir: &Path, chain: &[String], identity: &Identity) {
    let der = pem::parse(&chain[0]).unwrap().remove(0).der;
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1, "{:?}", san.general_names);
    assert!(
        matches!(san.general_names[0], GeneralName::URI(u) if u == identity.to_string()),
        "{:?}",
        san.general_names
    );
    assert!(!leaf.is_ca());
    assert!(leaf.subject().iter().next().is_none(), "subject not copied");

    let file = dir.join("leaf.pem");
    std::fs::write(&file, &chain[0]).unwrap();
    let text = openssl_ok(&["x509", "-in", s(&file), "-text", "-noout"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    assert!(!text.contains("evil"), "{text}");
    assert!(!text.contains("istiod"), "{text}");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(text.contains(&format!("URI:{identity}")), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");

    // And the chain verifies (leaf, intermediate, root: one certificate per element).
    assert_eq!(chain.len(), 3);
    let (ca, root) = (dir.join("ca.pem"), dir.join("full.pem"));
    std::fs::write(&ca, format!("{}{}", chain[1], chain[2])).unwrap();
    std::fs::write(&root, chain.concat()).unwrap();
    let v = openssl_ok(&["verify", "-CAfile", s(&ca), s(&file)]);
    assert!(v.trim().ends_with(": OK"), "{v}");
}

#[test]
fn signs_an_openssl_p256_csr_ignoring_what_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_ca(dir.path());
    let csr = openssl_csr(
        dir.path(),
        "p256",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    );
    let id: Identity = REVIEWS.parse().unwrap();
    let bundle = ca.sign(&csr, &id, Duration::ZERO).unwrap();
    assert_only_the_identity(dir.path(), &bundle.chain, &id);
    // The certificate carries the CSR's key.
    let leaf = dir.path().join("leaf.pem");
    let cert_pub = openssl_ok(&["x509", "-in", s(&leaf), "-noout", "-pubkey"]);
    let key_pub = openssl_ok(&["pkey", "-in", s(&dir.path().join("p256.key")), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
}

#[test]
fn signs_an_openssl_rsa2048_csr_ignoring_what_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_ca(dir.path());
    let csr = openssl_csr(dir.path(), "rsa", &["-newkey", "rsa:2048"]);
    let id: Identity = "spiffe://cluster.local/ns/bookinfo/sa/ratings"
        .parse()
        .unwrap();
    let bundle = ca.sign(&csr, &id, Duration::from_secs(3600)).unwrap();
    assert_only_the_identity(dir.path(), &bundle.chain, &id);
    let text = openssl_ok(&[
        "x509",
        "-in",
        s(&dir.path().join("leaf.pem")),
        "-text",
        "-noout",
    ]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
}

#[test]
fn rejects_a_tampered_openssl_csr() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_ca(dir.path());
    let csr = openssl_csr(
        dir.path(),
        "p256",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    );
    let id: Identity = REVIEWS.parse().unwrap();
    let mut der = pem::parse(csr.as_str()).unwrap().remove(0).der;
    // Flip a byte inside the signed CertificationRequestInfo: a letter of the DNS SAN.
    let pos = der
        .windows(12)
        .position(|w| w == b"evil.example")
        .expect("the SAN is in the request");
    der[pos] ^= 0x20;
    let tampered = CsrPem::new(pem::encode("CERTIFICATE REQUEST", &der));
    // OpenSSL agrees the signature is now bad.
    let file = dir.path().join("tampered.csr");
    std::fs::write(&file, tampered.as_str()).unwrap();
    // (OpenSSL 3.0 exits 0 here and only says so.)
    let check = openssl(&["req", "-in", s(&file), "-noout", "-verify"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        said.contains("verify failure") && !said.contains("verify OK"),
        "{said}"
    );
    let original = dir.path().join("p256.csr");
    let check = openssl(&["req", "-in", s(&original), "-noout", "-verify"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains("verify OK"), "{said}");

    let err = ca.sign(&tampered, &id, Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::CsrSignature), "{err}");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    // The public key itself altered: also caught.
    let mut der = pem::parse(csr.as_str()).unwrap().remove(0).der;
    let spki = pem::parse(&openssl_ok(&[
        "pkey",
        "-in",
        s(&dir.path().join("p256.key")),
        "-pubout",
    ]))
    .unwrap()
    .remove(0)
    .der;
    let key_pos = der
        .windows(spki.len())
        .position(|w| w == spki.as_slice())
        .expect("the key is in the request");
    let last = key_pos + spki.len() - 1;
    der[last] ^= 0x01;
    let err = ca
        .sign(
            &CsrPem::new(pem::encode("CERTIFICATE REQUEST", &der)),
            &id,
            Duration::ZERO,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::CsrSignature | Error::InvalidCsr { .. }),
        "{err}"
    );
}

#[test]
fn rejects_a_ttl_above_90_days() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_ca(dir.path());
    let csr = openssl_csr(dir.path(), "rsa", &["-newkey", "rsa:2048"]);
    let id: Identity = REVIEWS.parse().unwrap();
    let err = ca
        .sign(
            &csr,
            &id,
            MAX_WORKLOAD_CERT_TTL + Duration::from_secs(86_400),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested TTL 2184h0m0s is greater than the max allowed TTL 2160h0m0s"
    );
    // Exactly 90 days is allowed, and not clamped.
    let bundle = ca.sign(&csr, &id, MAX_WORKLOAD_CERT_TTL).unwrap();
    let leaf = dir.path().join("leaf90.pem");
    std::fs::write(&leaf, &bundle.leaf_pem).unwrap();
    let in_89_days = (89 * 86_400).to_string();
    assert!(
        openssl(&["x509", "-in", s(&leaf), "-noout", "-checkend", &in_89_days])
            .status
            .success()
    );
}

#[test]
fn an_rsa_ca_loaded_from_openssl_keys_signs_verifiable_chains() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = dir.path().join("root-rsa.pem");
    let int_key = dir.path().join("int-rsa.pem");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&root_key),
    ]);
    // The traditional PKCS #1 form is read too.
    openssl_ok(&["genrsa", "-traditional", "-out", s(&int_key), "2048"]);
    for k in [&root_key, &int_key] {
        std::fs::set_permissions(k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let root = dir.path().join("root");
    let cacerts = dir.path().join("cacerts");
    mesh_ca(&[
        "root",
        "--out",
        s(&root),
        "--algorithm",
        "rsa2048",
        "--key",
        s(&root_key),
    ]);
    mesh_ca(&[
        "intermediate",
        "--root",
        s(&root),
        "--name",
        "c1",
        "--out",
        s(&cacerts),
        "--key",
        s(&int_key),
    ]);
    let out = dir.path().join("w");
    mesh_ca(&[
        "issue",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--out",
        s(&out),
    ]);
    let bundle = ca_bundle(&cacerts, dir.path());
    let chain = out.join("cert-chain.pem");
    let v = openssl_ok(&["verify", "-CAfile", s(&bundle), s(&chain)]);
    assert!(v.trim().ends_with(": OK"), "{v}");
    let text = openssl_ok(&["x509", "-in", s(&chain), "-text", "-noout"]);
    assert!(
        text.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{text}"
    );
    assert!(
        text.contains("id-ecPublicKey"),
        "the workload key is still P-256: {text}"
    );
}

#[test]
fn signs_p384_and_ed25519_csrs_and_refuses_weak_rsa() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_ca(dir.path());
    let id: Identity = REVIEWS.parse().unwrap();
    for (name, newkey) in [
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"][..],
        ),
        ("ed25519", &["-newkey", "ed25519"][..]),
    ] {
        let csr = openssl_csr(dir.path(), name, newkey);
        let bundle = ca
            .sign(&csr, &id, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_only_the_identity(dir.path(), &bundle.chain, &id);
    }
    let csr = openssl_csr(dir.path(), "rsa1024", &["-newkey", "rsa:1024"]);
    let err = ca.sign(&csr, &id, Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("RSA key of 1024 bits"), "{err}");
}

/// Istio's "plug in CA certificates" flow with files made by OpenSSL, not by us.
#[test]
fn plugs_in_a_ca_made_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = |name: &str| d.join(name).to_str().unwrap().to_owned();
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &f("root-key.pem"),
        "-out",
        &f("root-cert.pem"),
        "-days",
        "3650",
        "-subj",
        "/O=Istio/CN=Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign",
    ]);
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &f("ca-key.pem"),
        "-out",
        &f("ca.csr"),
        "-subj",
        "/O=Istio/CN=Intermediate CA/L=cluster1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\n\
         keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign\n\
         subjectAltName=DNS:istiod.istio-system.svc\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n",
    )
    .unwrap();
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &f("ca.csr"),
        "-CA",
        &f("root-cert.pem"),
        "-CAkey",
        &f("root-key.pem"),
        "-CAcreateserial",
        "-days",
        "730",
        "-extfile",
        &f("ext.cnf"),
        "-out",
        &f("ca-cert.pem"),
    ]);
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("ca-cert.pem")).unwrap(),
        std::fs::read_to_string(d.join("root-cert.pem")).unwrap()
    );
    std::fs::write(d.join("cert-chain.pem"), &chain).unwrap();
    // openssl writes keys 0600 already; make sure.
    std::fs::set_permissions(
        d.join("ca-key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let out = d.join("w");
    mesh_ca(&[
        "issue",
        "--cacerts",
        s(d),
        "--spiffe",
        REVIEWS,
        "--out",
        s(&out),
    ]);
    let bundle = ca_bundle(d, d);
    let v = openssl_ok(&[
        "verify",
        "-CAfile",
        s(&bundle),
        s(&out.join("cert-chain.pem")),
    ]);
    assert!(v.trim().ends_with(": OK"), "{v}");
}
