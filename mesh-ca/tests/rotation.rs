//! Workload certificate rotation under paused time: the first certificate, renewal at half
//! life, backoff while the CA is down with the old certificate still served, expiry while
//! down, and no key material in `Debug`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use mesh_ca::{
    client::{CaClient, ScriptedCa},
    identity::Identity,
    key::KeyPair,
    rotation::{CertManager, CertManagerConfig, CertState, WorkloadCert, refresh_in},
};
use tokio::time::Instant;
use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};

const HOUR: Duration = Duration::from_secs(3600);

fn reviews() -> Identity {
    "spiffe://cluster.local/ns/default/sa/reviews"
        .parse()
        .expect("a valid identity")
}

/// One-hour certificates; no jitter unless a test asks for it, so times are exact.
fn exact(ttl: Duration) -> CertManagerConfig {
    CertManagerConfig {
        ttl,
        refresh_jitter: 0.0,
        backoff_jitter: 0.0,
        ..Default::default()
    }
}

fn start(ca: &Arc<ScriptedCa>, config: CertManagerConfig) -> CertManager {
    let client: Arc<dyn CaClient> = ca.clone();
    CertManager::start(reviews(), client, config).expect("inside a runtime")
}

/// Records every value the channel publishes, from a subscriber's point of view.
fn record(manager: &CertManager) -> Arc<Mutex<Vec<Option<Arc<WorkloadCert>>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut rx = manager.receiver();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let value = rx.borrow_and_update().clone();
            log.lock().expect("not poisoned").push(value);
        }
    });
    seen
}

fn serials(seen: &Mutex<Vec<Option<Arc<WorkloadCert>>>>) -> Vec<Option<String>> {
    seen.lock()
        .expect("not poisoned")
        .iter()
        .map(|c| c.as_ref().map(|c| c.serial().to_owned()))
        .collect()
}

/// Seconds between consecutive calls to the CA, from call `from` on.
fn gaps(ca: &ScriptedCa, from: usize) -> Vec<f64> {
    let times = ca.call_times();
    times
        .windows(2)
        .skip(from)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

fn assert_gaps(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "gaps {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 0.01, "gaps {got:?}, want {want:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn publishes_the_first_certificate_and_ready_resolves() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    assert!(
        manager.receiver().borrow().is_none(),
        "None until the first"
    );
    assert_eq!(manager.expiry(), None);
    assert_eq!(manager.seconds_until_expiry(), None);

    let cert = manager.ready().await.expect("a certificate");
    assert_eq!(manager.state(), CertState::Valid);
    assert_eq!(cert.identity(), &reviews());
    assert_eq!(manager.expiry(), Some(cert.not_after()));
    assert_eq!(
        manager.current().map(|c| c.serial().to_owned()),
        Some(cert.serial().to_owned())
    );
    assert_eq!(ca.calls(), 1);
    assert_eq!(ca.requested_ttls(), vec![HOUR]);

    // The SPIFFE id in the certificate is the identity asked for, and the certificate
    // carries the published key's public half.
    let (_, pem) = parse_x509_pem(cert.bundle.leaf_pem.as_bytes()).expect("PEM");
    let leaf = pem.parse_x509().expect("a certificate");
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .expect("well-formed SAN")
        .expect("a SAN extension")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![reviews().to_string()]);
    let key = KeyPair::from_pem(&cert.key, "the published key").expect("a usable key");
    assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());

    // About an hour to go, counted on tokio's clock.
    let left = manager.seconds_until_expiry().expect("a certificate");
    assert!((3590.0..=3600.0).contains(&left), "{left}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    let later = manager.seconds_until_expiry().expect("a certificate");
    assert!((left - later - 600.0).abs() < 0.01, "{left} then {later}");
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_within_one_percent() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    // Istio's jitter: ±1 % of the lifetime.
    let manager = start(
        &ca,
        CertManagerConfig {
            ttl: HOUR,
            ..Default::default()
        },
    );
    let first = manager.ready().await.expect("a certificate");
    let started = Instant::now();
    let (nb, na) = (first.bundle.not_before, first.bundle.not_after);
    let lifetime = na.duration_since(nb).expect("ordered").as_secs_f64();
    // Half of the lifetime from not_before, as seen now (not_before is one minute back).
    let centre = refresh_in(nb, na, SystemTime::now(), 0.5, 0.0).as_secs_f64();
    assert!((1700.0..=1800.0).contains(&centre), "{centre}");

    let mut rx = manager.receiver();
    rx.borrow_and_update();
    rx.changed().await.expect("a renewal");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (elapsed - centre).abs() <= 0.01 * lifetime + 2.0,
        "renewed after {elapsed} s; half life is {centre} s ± {} s",
        0.01 * lifetime
    );
    assert_eq!(manager.renewals(), 1);
    assert_eq!(ca.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn each_renewal_has_a_new_key_and_serial() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    let mut rx = manager.receiver();
    let mut certs = vec![manager.ready().await.expect("a certificate")];
    rx.borrow_and_update();
    for _ in 0..3 {
        rx.changed().await.expect("a renewal");
        certs.push(rx.borrow_and_update().clone().expect("never None"));
    }
    assert_eq!(manager.renewals(), 3);
    for (i, a) in certs.iter().enumerate() {
        for b in &certs[i + 1..] {
            assert_ne!(a.serial(), b.serial());
            assert_ne!(a.key.expose_secret(), b.key.expose_secret());
            assert_ne!(a.bundle.leaf_pem, b.bundle.leaf_pem);
        }
        assert_eq!(a.identity(), &reviews());
    }
    // No jitter: every renewal is the same distance from the previous one.
    let renewal_gaps = gaps(&ca, 0);
    assert_eq!(renewal_gaps.len(), 3);
    for g in &renewal_gaps {
        assert!((1700.0..=1800.0).contains(g), "{renewal_gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn keeps_old_cert_and_backs_off_while_the_ca_is_down() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    let seen = record(&manager);
    let first = manager.ready().await.expect("a certificate");
    let refresh_at = manager.next_attempt().expect("a renewal is scheduled");

    ca.set_down(true);
    tokio::time::sleep_until(refresh_at + Duration::from_millis(500)).await;
    assert_eq!(ca.calls(), 2, "the renewal was attempted");
    assert_eq!(manager.state(), CertState::Retrying);
    assert_eq!(manager.consecutive_failures(), 1);
    assert!(manager.last_error().is_some());

    // 1 + 2 + 4 + 8 + 16 + 32 + 60 + 60 seconds of retries.
    tokio::time::sleep(Duration::from_secs(183)).await;
    assert_gaps(&gaps(&ca, 1), &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
    assert_eq!(manager.failures(), 9);
    assert_eq!(manager.renewals(), 0);
    // The old certificate is still served.
    assert_eq!(
        manager.current().map(|c| c.serial().to_owned()),
        Some(first.serial().to_owned())
    );
    assert_eq!(manager.state(), CertState::Retrying);

    // The CA comes back: the next retry (60 s later) brings a new certificate.
    ca.set_down(false);
    let mut rx = manager.receiver();
    rx.borrow_and_update();
    let before = Instant::now();
    rx.changed().await.expect("a new certificate");
    let waited = before.elapsed().as_secs_f64();
    assert!(waited <= 60.0, "{waited}");
    let second = manager.current().expect("a certificate");
    assert_ne!(second.serial(), first.serial());
    assert_eq!(manager.state(), CertState::Valid);
    assert_eq!(manager.consecutive_failures(), 0);
    assert_eq!(manager.renewals(), 1);
    assert!(manager.last_error().is_none());

    // Subscribers saw exactly two certificates and never `None`.
    tokio::task::yield_now().await;
    let seen = serials(&seen);
    assert_eq!(
        seen,
        vec![
            Some(first.serial().to_owned()),
            Some(second.serial().to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_jitter_stays_within_ten_percent() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    ca.set_down(true);
    let manager = start(
        &ca,
        CertManagerConfig {
            ttl: HOUR,
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(400)).await;
    let got = gaps(&ca, 0);
    assert!(got.len() >= 8, "{got:?}");
    for (i, g) in got.iter().enumerate() {
        let plain = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
            .get(i)
            .copied()
            .unwrap_or(60.0);
        assert!(
            (g - plain).abs() <= plain * 0.1 + 0.01,
            "retry {i}: {g} s, want {plain} s ± 10 %"
        );
    }
    assert_eq!(manager.state(), CertState::Pending);
}

#[tokio::test(start_paused = true)]
async fn first_request_retries_until_the_ca_answers() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    ca.fail_next(3);
    let started = Instant::now();
    let manager = start(&ca, exact(HOUR));
    let cert = manager.ready().await.expect("a certificate");
    // Failures at 0, 1 and 3 s; success at 7 s.
    assert!(
        (started.elapsed().as_secs_f64() - 7.0).abs() < 0.01,
        "{:?}",
        started.elapsed()
    );
    assert_gaps(&gaps(&ca, 0), &[1.0, 2.0, 4.0]);
    assert_eq!(cert.identity(), &reviews());
    assert_eq!((manager.failures(), manager.renewals()), (3, 0));
    assert_eq!(manager.state(), CertState::Valid);
}

#[tokio::test(start_paused = true)]
async fn expired_certificate_stays_published_while_retrying() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    let seen = record(&manager);
    let first = manager.ready().await.expect("a certificate");
    ca.set_down(true);

    tokio::time::sleep(2 * HOUR).await;
    assert_eq!(manager.state(), CertState::Expired);
    let left = manager.seconds_until_expiry().expect("a certificate");
    assert!(left < -3000.0, "{left}");
    assert_eq!(
        manager.current().map(|c| c.serial().to_owned()),
        Some(first.serial().to_owned())
    );
    // Still retrying, at most a minute apart.
    let calls = ca.calls();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(ca.calls() > calls);

    ca.set_down(false);
    let mut rx = manager.receiver();
    rx.borrow_and_update();
    rx.changed().await.expect("a new certificate");
    assert_eq!(manager.state(), CertState::Valid);
    let left = manager.seconds_until_expiry().expect("a certificate");
    assert!(left > 3500.0, "{left}");
    tokio::task::yield_now().await;
    let seen = serials(&seen);
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(Option::is_some), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn debug_never_prints_key_material() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    let cert = manager.ready().await.expect("a certificate");
    let secret = cert.key.expose_secret();
    assert!(secret.contains("PRIVATE KEY"));
    let body: Vec<&str> = secret
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .collect();
    assert!(!body.is_empty());
    for text in [
        format!("{cert:?}"),
        format!("{cert:#?}"),
        format!("{manager:?}"),
        format!("{manager:#?}"),
        format!("{:?}", manager.current()),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for line in &body {
            assert!(!text.contains(line), "{text}");
        }
    }
    let text = format!("{cert:?}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains(cert.serial()), "{text}");
    let text = format!("{manager:?}");
    assert!(
        text.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_manager_stops_the_task() {
    let ca = Arc::new(ScriptedCa::self_signed().expect("a CA"));
    let manager = start(&ca, exact(HOUR));
    let mut rx = manager.receiver();
    let cert = manager.ready().await.expect("a certificate");
    rx.borrow_and_update();
    drop(manager);
    tokio::time::sleep(4 * HOUR).await;
    assert_eq!(ca.calls(), 1, "no renewal after drop");
    assert!(rx.changed().await.is_err(), "the sender is gone");
    // The last certificate stays readable.
    assert_eq!(
        rx.borrow().as_ref().map(|c| c.serial().to_owned()),
        Some(cert.serial().to_owned())
    );
}
