//! The `mesh-ca` binary: help, exit codes, messages on stderr, file modes, refusals.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::SystemTime,
};

use mesh_ca::CertificateAuthority;

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .args(args)
        .output()
        .expect("run mesh-ca")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "mesh-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with `code`; returns its stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "mesh-ca {args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// root + intermediate in `dir`; returns (root dir, cacerts dir).
fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
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
    (root, cacerts)
}

#[test]
fn help_lists_the_commands() {
    let help = ok(&["--help"]);
    for cmd in ["root", "intermediate", "issue", "inspect", "token", "serve"] {
        assert!(help.contains(cmd), "{help}");
    }
    assert!(help.contains("openssl genpkey"), "RSA advice: {help}");
    let issue = ok(&["issue", "--help"]);
    assert!(
        issue.contains("--spiffe") && issue.contains("--ttl") && issue.contains("--csr"),
        "{issue}"
    );
    // Usage errors: clap's exit code 2.
    let err = fails(&["issue"], 2);
    assert!(err.contains("--cacerts"), "{err}");
    let err = fails(&["root", "--out", "x", "--algorithm", "dsa"], 2);
    assert!(err.contains("unknown key algorithm"), "{err}");
}

#[test]
fn writes_istio_layouts_with_private_key_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cacerts) = setup(dir.path());
    assert_eq!(mode(&root.join("root-key.pem")), 0o600);
    assert_eq!(mode(&root.join("root-cert.pem")), 0o644);
    assert_eq!(mode(&cacerts.join("ca-key.pem")), 0o600);
    for f in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
        assert_eq!(mode(&cacerts.join(f)), 0o644, "{f}");
    }
    let out = dir.path().join("w");
    let stdout = ok(&[
        "issue",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains(&format!("issued {REVIEWS}")), "{stdout}");
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(mode(&out), 0o700);
    let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 3);
    // No temporary files left.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn refuses_a_key_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cacerts) = setup(dir.path());
    let ca_key = cacerts.join("ca-key.pem");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.path().join("w");
    let err = fails(
        &[
            "issue",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            REVIEWS,
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(err.contains(s(&ca_key)), "names the file: {err}");
    assert!(
        err.contains(&format!("chmod 600 {}", ca_key.display())),
        "gives the fix: {err}"
    );
    assert!(!out.exists(), "nothing written");
    let err = fails(&["token", "--cacerts", s(&cacerts), "--spiffe", REVIEWS], 1);
    assert!(err.contains("chmod 600"), "{err}");

    let root_key = root.join("root-key.pem");
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = fails(
        &[
            "intermediate",
            "--root",
            s(&root),
            "--name",
            "c2",
            "--out",
            s(&dir.path().join("c2")),
        ],
        1,
    );
    assert!(
        err.contains(&format!("chmod 600 {}", root_key.display())),
        "{err}"
    );
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    ok(&["root", "--out", s(&root)]);
    let before = std::fs::read(root.join("root-key.pem")).unwrap();
    let err = fails(&["root", "--out", s(&root)], 1);
    assert!(
        err.contains("--force") && err.contains("root-key.pem"),
        "{err}"
    );
    assert_eq!(std::fs::read(root.join("root-key.pem")).unwrap(), before);
    ok(&["root", "--out", s(&root), "--force"]);
    assert_ne!(std::fs::read(root.join("root-key.pem")).unwrap(), before);
}

#[test]
fn rsa_generation_explains_the_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        &[
            "root",
            "--out",
            s(&dir.path().join("r")),
            "--algorithm",
            "rsa4096",
        ],
        1,
    );
    assert!(err.contains("cannot generate rsa4096 keys"), "{err}");
    assert!(
        err.contains("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096"),
        "{err}"
    );
    assert!(err.contains("--key"), "{err}");
}

#[test]
fn ttl_and_identity_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cacerts) = setup(dir.path());
    let out = dir.path().join("w");
    let err = fails(
        &[
            "issue",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            REVIEWS,
            "--ttl",
            "2161h",
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(
        err.contains("requested TTL 2161h0m0s is greater than the max allowed TTL 2160h0m0s"),
        "{err}"
    );
    let err = fails(
        &[
            "issue",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            "spiffe://cluster.local/default/reviews",
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(err.contains("expected exactly 5 path segments"), "{err}");
    let err = fails(
        &[
            "issue",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            REVIEWS,
            "--ttl",
            "1d",
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn a_tampered_csr_is_refused_by_issue() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cacerts) = setup(dir.path());
    let key = mesh_ca::key::KeyPair::generate(mesh_ca::key::KeyAlgorithm::EcdsaP256).unwrap();
    let id = REVIEWS.parse().unwrap();
    let csr = mesh_ca::csr::generate(&id, &key).unwrap();
    let good = dir.path().join("good.csr");
    std::fs::write(&good, csr.as_str()).unwrap();
    let out = dir.path().join("w");
    ok(&[
        "issue",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--csr",
        s(&good),
        "--out",
        s(&out),
    ]);
    assert!(!out.join("key.pem").exists(), "no key for a CSR");

    let mut der = mesh_ca::pem::parse(csr.as_str()).unwrap().remove(0).der;
    let pos = der.windows(7).position(|w| w == b"reviews").unwrap();
    der[pos] ^= 0x01;
    let bad = dir.path().join("bad.csr");
    std::fs::write(&bad, mesh_ca::pem::encode("CERTIFICATE REQUEST", &der)).unwrap();
    let err = fails(
        &[
            "issue",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            REVIEWS,
            "--csr",
            s(&bad),
            "--out",
            s(&dir.path().join("x")),
        ],
        1,
    );
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(err.contains("bad.csr"), "{err}");
}

#[test]
fn inspect_shows_sans_validity_and_chain_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cacerts) = setup(dir.path());
    let out = dir.path().join("w");
    ok(&[
        "issue",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--out",
        s(&out),
    ]);
    let chain = out.join("cert-chain.pem");
    let text = ok(&["inspect", s(&chain)]);
    assert!(text.contains(&format!("SAN URI:     {REVIEWS}")), "{text}");
    assert!(
        text.contains("certificate 1 is signed by certificate 2: yes"),
        "{text}"
    );
    assert!(
        text.contains("certificate 2 is signed by certificate 3: yes"),
        "{text}"
    );
    assert!(
        text.contains("certificate 3 is self-signed (a root): yes"),
        "{text}"
    );
    assert!(text.contains("(expires in 23h 5"), "{text}");
    assert!(text.contains("CA:          yes (path length 0)"), "{text}");
    assert!(
        text.contains("key usage:   Digital Signature, Key Encipherment"),
        "{text}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "-o", "json", s(&chain)])).unwrap();
    assert_eq!(json["chain_ok"], true);
    assert_eq!(json["certificates"][0]["uris"][0], REVIEWS);
    assert_eq!(json["certificates"][0]["is_ca"], false);
    assert_eq!(json["certificates"][2]["self_signed"], true);
    assert_eq!(
        json["chain"][0]["text"],
        "certificate 1 is signed by certificate 2: yes"
    );

    // Wrong order: printed, and exit code 3.
    let c = std::fs::read_to_string(&chain).unwrap();
    let certs: Vec<&str> = c.split_inclusive("-----END CERTIFICATE-----\n").collect();
    let swapped = dir.path().join("swapped.pem");
    std::fs::write(&swapped, format!("{}{}{}", certs[0], certs[2], certs[1])).unwrap();
    let out = run(&["inspect", s(&swapped)]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("certificate 1 is signed by certificate 2: no"),
        "{text}"
    );

    // A key file: no certificate, error; the key is not printed.
    let err = fails(&["inspect", s(&dir.path().join("w/key.pem"))], 1);
    assert!(err.contains("no CERTIFICATE"), "{err}");
    assert!(!err.contains("BEGIN PRIVATE KEY"), "{err}");
    fails(&["inspect", s(&dir.path().join("missing.pem"))], 1);
}

#[test]
fn token_is_bound_to_one_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cacerts) = setup(dir.path());
    let token = ok(&[
        "token",
        "--cacerts",
        s(&cacerts),
        "--spiffe",
        REVIEWS,
        "--ttl",
        "1h",
    ]);
    let token = token.trim();
    assert!(
        token.starts_with("v1.") && token.split('.').count() == 3,
        "{token}"
    );
    let ca = CertificateAuthority::load(&cacerts).unwrap();
    let now = SystemTime::now();
    assert_eq!(ca.verify_token(token, now).unwrap().to_string(), REVIEWS);
    let expired = ca.verify_token(token, now + std::time::Duration::from_secs(3601));
    assert!(
        matches!(expired, Err(mesh_ca::Error::TokenExpired { .. })),
        "{expired:?}"
    );
    // Another CA does not accept it.
    let other = tempfile::tempdir().unwrap();
    let (_, other_cacerts) = setup(other.path());
    let other_ca = CertificateAuthority::load(&other_cacerts).unwrap();
    assert!(matches!(
        other_ca.verify_token(token, now),
        Err(mesh_ca::Error::TokenBadMac)
    ));
    let err = fails(
        &[
            "token",
            "--cacerts",
            s(&cacerts),
            "--spiffe",
            REVIEWS,
            "--ttl",
            "721h",
        ],
        1,
    );
    assert!(err.contains("at most 720h0m0s"), "{err}");
}
