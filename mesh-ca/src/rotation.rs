//! Workload certificate rotation: [`CertManager`] keeps one identity's certificate fresh.
//!
//! The manager runs one background task per identity, as istio-agent's secret cache and
//! ztunnel's `SecretManager` do. The task
//!
//! 1. generates a new private key in memory ([`KeyPair::generate`]; the key never leaves the
//!    process, and every renewal gets a new one, as istio-agent does),
//! 2. builds a CSR for the identity and asks its [`CaClient`] to sign it, requesting
//!    [`CertManagerConfig::ttl`] (istio-agent's `SECRET_TTL`, 24 h),
//! 3. checks the answer (the identity and the public key must be the ones asked for, and the
//!    certificate must not be expired) and publishes it as an `Arc<`[`WorkloadCert`]`>` on a
//!    [`tokio::sync::watch`] channel,
//! 4. sleeps until [`refresh_fraction`](CertManagerConfig::refresh_fraction) of the
//!    certificate's lifetime has elapsed (0.5: istio-agent's `SECRET_GRACE_PERIOD_RATIO`),
//!    moved by a random offset of up to ±[`refresh_jitter`](CertManagerConfig::refresh_jitter)
//!    of the lifetime (±1 %: `SECRET_GRACE_PERIOD_RATIO_JITTER`, against thundering herds),
//!    and clamped to [`min_refresh`](CertManagerConfig::min_refresh)..=
//!    [`max_refresh`](CertManagerConfig::max_refresh) (linkerd's identity client bounds); the
//!    schedule is the pure [`refresh_in`] and [`CertManagerConfig::refresh_delay`];
//! 5. and repeats.
//!
//! When a request fails the task retries with exponential backoff ([`backoff_delay`]: 1 s,
//! 2 s, 4 s, … up to 1 min, each ±10 %), and the certificate it has **stays published**:
//! subscribers never see it disappear. If it expires while the CA is still unreachable, it
//! stays published too (handshakes with it fail on their own), the task keeps retrying, and
//! [`CertManager::state`] says [`CertState::Expired`] so that health checks and metrics can
//! tell.
//!
//! # Time
//!
//! The task only sleeps on [`tokio::time`], so tests run it under paused time
//! (`#[tokio::test(start_paused = true)]`). Certificates carry wall-clock validity
//! ([`SystemTime`]), and under paused time the wall clock does not move with tokio's. The
//! manager therefore reads the wall clock **once per received certificate**, at the moment it
//! arrives, and turns the certificate's times into deadlines on tokio's clock right away:
//! the refresh deadline is `arrival + refresh_delay(not_before, not_after, wall_now)` and the
//! expiry deadline is `arrival + (not_after - wall_now)`. From then on everything (sleeps,
//! [`CertManager::state`], [`CertManager::seconds_until_expiry`]) is measured on tokio's
//! monotonic clock. In production the two clocks agree (and wall-clock steps between
//! renewals do not disturb the schedule); in tests, paused time drives expiry and renewal
//! while every certificate is still issued with real validity times that verify.
//!
//! # Stopping
//!
//! Dropping the [`CertManager`] aborts its task. Receivers obtained from
//! [`CertManager::receiver`] keep the last certificate; their `changed()` then returns an
//! error.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    CertBundle,
    authority::{DEFAULT_WORKLOAD_CERT_TTL, parse_cert, parse_certs},
    client::{CaClient, ClientError},
    csr,
    identity::Identity,
    key::{KeyAlgorithm, KeyPair, PrivateKeyPem},
};

/// The fraction of a certificate's lifetime after which it is renewed (istio-agent's
/// `SECRET_GRACE_PERIOD_RATIO`: renew when half the lifetime remains).
pub const DEFAULT_REFRESH_FRACTION: f64 = 0.5;
/// The largest random move of the renewal time, as a fraction of the lifetime
/// (`SECRET_GRACE_PERIOD_RATIO_JITTER`).
pub const DEFAULT_REFRESH_JITTER: f64 = 0.01;
/// The shortest wait before a renewal, whatever the certificate says.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest wait before a renewal, whatever the certificate says.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The first retry delay after a failed request.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay (before jitter).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The largest random move of a retry delay, as a fraction of it.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.1;
/// How long one request to the CA may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// === Schedule ===

/// How long from `now` until `fraction + jitter_draw` of the lifetime
/// `not_before..not_after` has elapsed; zero if that moment has passed.
///
/// `jitter_draw` is the random offset already scaled to a fraction of the lifetime (for
/// Istio's ±1 %: a value in `-0.01..=0.01`). The sum is clamped to `0.0..=1.0`; a non-finite
/// `fraction` counts as [`DEFAULT_REFRESH_FRACTION`] and a non-finite draw as zero. An
/// inverted validity has a lifetime of zero. This function is pure; clamping to the
/// configured bounds is [`CertManagerConfig::refresh_delay`].
///
/// # Examples
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use mesh_ca::rotation::refresh_in;
///
/// let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
/// let na = nb + Duration::from_secs(3600);
/// // Half of a one-hour certificate, asked ten minutes after it started: 20 minutes to go.
/// let now = nb + Duration::from_secs(600);
/// assert_eq!(refresh_in(nb, na, now, 0.5, 0.0), Duration::from_secs(1200));
/// // One percent later.
/// assert_eq!(refresh_in(nb, na, now, 0.5, 0.01), Duration::from_secs(1236));
/// ```
pub fn refresh_in(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    fraction: f64,
    jitter_draw: f64,
) -> Duration {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = if fraction.is_finite() {
        fraction
    } else {
        DEFAULT_REFRESH_FRACTION
    };
    let draw = if jitter_draw.is_finite() {
        jitter_draw
    } else {
        0.0
    };
    let fraction = (fraction + draw).clamp(0.0, 1.0);
    let offset = Duration::try_from_secs_f64(lifetime.as_secs_f64() * fraction)
        .unwrap_or(lifetime)
        .min(lifetime);
    let at = not_before.checked_add(offset).unwrap_or(not_after);
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// The wait before retry number `failures` (1 for the first retry): `base` doubled for each
/// earlier failure, capped at `max`, then moved by `jitter * unit_draw` of itself.
///
/// `unit_draw` is a random value in `-1.0..=1.0` (clamped; non-finite counts as zero) and
/// `jitter` a fraction (clamped to `0.0..=1.0`). With `base` 1 s, `max` 1 min and no jitter
/// the waits are 1, 2, 4, 8, 16, 32, 60, 60, … seconds.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mesh_ca::rotation::backoff_delay;
///
/// let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(backoff_delay(3, base, max, 0.0, 0.0), Duration::from_secs(4));
/// assert_eq!(backoff_delay(30, base, max, 0.0, 0.0), max);
/// assert_eq!(backoff_delay(1, base, max, 0.1, 1.0), Duration::from_millis(1100));
/// ```
pub fn backoff_delay(
    failures: u32,
    base: Duration,
    max: Duration,
    jitter: f64,
    unit_draw: f64,
) -> Duration {
    let doublings = failures.saturating_sub(1);
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    let delay = base.saturating_mul(factor).min(max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let draw = if unit_draw.is_finite() {
        unit_draw.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    Duration::try_from_secs_f64(delay.as_secs_f64() * (1.0 + jitter * draw)).unwrap_or(delay)
}

/// A uniform random value in `-1.0..1.0` from the system generator; zero if it fails (no
/// jitter is better than no renewal).
fn unit_draw() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    // 53 random bits: exactly representable, uniform in [0, 1).
    let unit = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

// === Configuration ===

/// How a [`CertManager`] asks for and renews certificates. `Default` gives Istio's agent
/// defaults.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mesh_ca::rotation::CertManagerConfig;
///
/// let config = CertManagerConfig { ttl: Duration::from_secs(3600), ..Default::default() };
/// assert_eq!(config.refresh_fraction, 0.5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CertManagerConfig {
    /// The lifetime asked for (istio-agent's `SECRET_TTL`, 24 h). Zero asks for the CA's
    /// default; the CA may also cap it.
    pub ttl: Duration,
    /// The fraction of the lifetime after which the certificate is renewed (0.5).
    pub refresh_fraction: f64,
    /// The largest random move of the renewal time, as a fraction of the lifetime (0.01).
    pub refresh_jitter: f64,
    /// The shortest wait before a renewal (10 s): protects the CA from certificates that
    /// arrive nearly expired.
    pub min_refresh: Duration,
    /// The longest wait before a renewal (24 h).
    pub max_refresh: Duration,
    /// The first retry delay after a failure (1 s).
    pub backoff_base: Duration,
    /// The longest retry delay before jitter (1 min).
    pub backoff_max: Duration,
    /// The largest random move of a retry delay, as a fraction of it (0.1).
    pub backoff_jitter: f64,
    /// How long one request may take before it counts as failed (30 s; zero: no limit).
    pub request_timeout: Duration,
    /// The algorithm of the generated keys (ECDSA P-256; RSA keys cannot be generated in
    /// process, see [`crate::key`]).
    pub key_algorithm: KeyAlgorithm,
}

impl Default for CertManagerConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_WORKLOAD_CERT_TTL,
            refresh_fraction: DEFAULT_REFRESH_FRACTION,
            refresh_jitter: DEFAULT_REFRESH_JITTER,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            backoff_jitter: DEFAULT_BACKOFF_JITTER,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            key_algorithm: KeyAlgorithm::EcdsaP256,
        }
    }
}

impl CertManagerConfig {
    /// The wait from `now` until a certificate valid `not_before..not_after` is renewed:
    /// [`refresh_in`] with `refresh_fraction` and a jitter of `unit_draw * refresh_jitter`
    /// (`unit_draw` in `-1.0..=1.0`, clamped), then clamped to `min_refresh..=max_refresh`
    /// (a `max_refresh` below `min_refresh` counts as `min_refresh`).
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use mesh_ca::rotation::CertManagerConfig;
    ///
    /// let config = CertManagerConfig::default();
    /// let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
    /// let na = nb + Duration::from_secs(24 * 3600);
    /// assert_eq!(config.refresh_delay(nb, na, nb, 0.0), Duration::from_secs(12 * 3600));
    /// // Already expired: renewed after min_refresh, not in a hot loop.
    /// assert_eq!(config.refresh_delay(nb, na, na, 0.0), config.min_refresh);
    /// ```
    pub fn refresh_delay(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        now: SystemTime,
        unit_draw: f64,
    ) -> Duration {
        let jitter = if self.refresh_jitter.is_finite() {
            self.refresh_jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let draw = if unit_draw.is_finite() {
            unit_draw.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let delay = refresh_in(
            not_before,
            not_after,
            now,
            self.refresh_fraction,
            draw * jitter,
        );
        delay
            .max(self.min_refresh)
            .min(self.max_refresh.max(self.min_refresh))
    }

    /// The wait before retry number `failures` (1 for the first): [`backoff_delay`] with
    /// this configuration.
    pub fn retry_delay(&self, failures: u32, unit_draw: f64) -> Duration {
        backoff_delay(
            failures,
            self.backoff_base,
            self.backoff_max,
            self.backoff_jitter,
            unit_draw,
        )
    }
}

// === WorkloadCert ===

/// A workload's certificate chain and its private key, as a [`CertManager`] publishes it.
///
/// `Debug` prints the identity, serial and validity, and `key: "<redacted>"`; never key
/// material.
#[derive(Clone)]
pub struct WorkloadCert {
    /// The certificate chain, leaf first, root last.
    pub bundle: CertBundle,
    /// The private key of the leaf, PKCS #8 PEM (for the TLS layer; never logged).
    pub key: PrivateKeyPem,
}

impl WorkloadCert {
    /// Pairs a chain with its key.
    pub fn new(bundle: CertBundle, key: PrivateKeyPem) -> Self {
        Self { bundle, key }
    }

    /// The identity in the leaf.
    pub fn identity(&self) -> &Identity {
        &self.bundle.identity
    }

    /// The leaf's serial number, upper-case hex.
    pub fn serial(&self) -> &str {
        &self.bundle.serial
    }

    /// The end of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.bundle.not_after
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.bundle.identity.to_string())
            .field("serial", &self.bundle.serial)
            .field("not_before", &self.bundle.not_before)
            .field("not_after", &self.bundle.not_after)
            .field("chain_len", &self.bundle.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

// === CertManager ===

/// Where a [`CertManager`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertState {
    /// No certificate yet (the first request is under way or being retried).
    Pending,
    /// A valid certificate is published and the last request succeeded.
    Valid,
    /// A valid certificate is published, but renewing it is failing and being retried.
    Retrying,
    /// The published certificate has expired and renewing it is still failing.
    Expired,
}

/// What the task shares with the handle.
#[derive(Debug, Default)]
struct Shared {
    renewals: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Status {
    /// When the published certificate expires, on tokio's clock.
    expires_at: Option<Instant>,
    /// When the task next asks the CA, on tokio's clock.
    next_attempt: Option<Instant>,
    /// The error of the last request, if it failed.
    last_error: Option<ClientError>,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps one identity's certificate fresh: fetches it from a [`CaClient`], publishes it on a
/// `watch` channel, renews it at half its lifetime and retries with backoff while the CA is
/// unreachable (see the [module docs](self)).
///
/// `Debug` prints the identity, state, serial and counters; never the key. Dropping the
/// manager stops its task.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use mesh_ca::{CaOptions, CertificateAuthority, client::LocalCa, identity::Identity};
/// use mesh_ca::rotation::{CertManager, CertManagerConfig, CertState};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The embedded default: an in-process CA, no server.
/// let ca = Arc::new(CertificateAuthority::self_signed(&CaOptions::root())?);
/// let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let manager = CertManager::start(id.clone(), Arc::new(LocalCa::new(ca)), CertManagerConfig::default())?;
///
/// let cert = manager.ready().await.ok_or("the manager stopped")?;
/// assert_eq!(cert.identity(), &id);
/// assert_eq!(manager.state(), CertState::Valid);
///
/// // The TLS layer reads the latest certificate per handshake.
/// let rx = manager.receiver();
/// assert!(rx.borrow().is_some());
/// # Ok(())
/// # }
/// ```
pub struct CertManager {
    identity: Identity,
    config: CertManagerConfig,
    rx: watch::Receiver<Option<Arc<WorkloadCert>>>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl CertManager {
    /// Starts the background task for `identity` on the current Tokio runtime; the first
    /// request is made right away.
    ///
    /// # Errors
    /// [`tokio::runtime::TryCurrentError`] when called outside a Tokio runtime.
    pub fn start(
        identity: Identity,
        client: Arc<dyn CaClient>,
        config: CertManagerConfig,
    ) -> Result<Self, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let (tx, rx) = watch::channel(None);
        let shared = Arc::new(Shared::default());
        let task = runtime.spawn(run(
            identity.clone(),
            client,
            config.clone(),
            tx,
            Arc::clone(&shared),
        ));
        Ok(Self {
            identity,
            config,
            rx,
            shared,
            task,
        })
    }

    /// The identity this manager keeps a certificate for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CertManagerConfig {
        &self.config
    }

    /// A receiver of the published certificate: `None` until the first one arrives, then
    /// always the latest (a failed renewal never replaces it).
    pub fn receiver(&self) -> watch::Receiver<Option<Arc<WorkloadCert>>> {
        self.rx.clone()
    }

    /// The published certificate, if any.
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.rx.borrow().clone()
    }

    /// Waits for the first certificate and returns the latest one; `None` only if the task
    /// has stopped before publishing any.
    pub async fn ready(&self) -> Option<Arc<WorkloadCert>> {
        let mut rx = self.rx.clone();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// When the published certificate expires (its `not_after`).
    pub fn expiry(&self) -> Option<SystemTime> {
        self.rx.borrow().as_ref().map(|c| c.bundle.not_after)
    }

    /// Seconds until the published certificate expires, negative once it has: the gauge to
    /// export as a metric. Measured on tokio's clock from the certificate's arrival (see
    /// [Time](self#time)). `None` before the first certificate.
    pub fn seconds_until_expiry(&self) -> Option<f64> {
        let expires_at = self.shared.status().expires_at?;
        let now = Instant::now();
        Some(if now <= expires_at {
            (expires_at - now).as_secs_f64()
        } else {
            -(now - expires_at).as_secs_f64()
        })
    }

    /// Where the manager stands: pending, valid, retrying a renewal, or expired.
    pub fn state(&self) -> CertState {
        let Some(expires_at) = self.shared.status().expires_at else {
            return CertState::Pending;
        };
        if Instant::now() >= expires_at {
            CertState::Expired
        } else if self.consecutive_failures() > 0 {
            CertState::Retrying
        } else {
            CertState::Valid
        }
    }

    /// How many certificates replaced an earlier one.
    pub fn renewals(&self) -> u64 {
        self.shared.renewals.load(Ordering::Relaxed)
    }

    /// How many requests failed, in total.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// How many requests in a row have failed since the last certificate (zero when the last
    /// one succeeded).
    pub fn consecutive_failures(&self) -> u32 {
        self.shared.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Why the last request failed; `None` once one succeeds.
    pub fn last_error(&self) -> Option<ClientError> {
        self.shared.status().last_error.clone()
    }

    /// When the task next asks the CA, on tokio's clock; `None` while a request is under way.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.shared.status().next_attempt
    }
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        f.debug_struct("CertManager")
            .field("identity", &self.identity.to_string())
            .field("state", &self.state())
            .field("serial", &current.as_ref().map(|c| c.serial().to_owned()))
            .field("not_after", &current.as_ref().map(|c| c.not_after()))
            .field("renewals", &self.renewals())
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === The task ===

async fn run(
    identity: Identity,
    client: Arc<dyn CaClient>,
    config: CertManagerConfig,
    tx: watch::Sender<Option<Arc<WorkloadCert>>>,
    shared: Arc<Shared>,
) {
    let mut expiry_reported = false;
    loop {
        shared.status().next_attempt = None;
        match fetch(&identity, client.as_ref(), &config).await {
            Ok(cert) => {
                // The one wall-clock reading for this certificate (see "Time").
                let arrived = Instant::now();
                let wall = SystemTime::now();
                let (not_before, not_after) = (cert.bundle.not_before, cert.bundle.not_after);
                let delay = config.refresh_delay(not_before, not_after, wall, unit_draw());
                let refresh_at = deadline(arrived, delay);
                let expires_at = deadline(
                    arrived,
                    not_after.duration_since(wall).unwrap_or(Duration::ZERO),
                );
                let renewed = tx.borrow().is_some();
                {
                    let mut status = shared.status();
                    status.expires_at = Some(expires_at);
                    status.next_attempt = Some(refresh_at);
                    status.last_error = None;
                }
                shared.consecutive_failures.store(0, Ordering::Relaxed);
                if renewed {
                    shared.renewals.fetch_add(1, Ordering::Relaxed);
                }
                expiry_reported = false;
                tracing::info!(
                    %identity,
                    serial = %cert.bundle.serial,
                    not_after = %crate::inspect::rfc3339(not_after),
                    refresh_in_secs = delay.as_secs(),
                    renewed,
                    "workload certificate published"
                );
                tx.send_replace(Some(Arc::new(cert)));
                tokio::time::sleep_until(refresh_at).await;
            }
            Err(error) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                let failures = shared
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                let delay = config.retry_delay(failures, unit_draw());
                let now = Instant::now();
                let expired = {
                    let mut status = shared.status();
                    status.next_attempt = Some(deadline(now, delay));
                    status.last_error = Some(error.clone());
                    status.expires_at.is_some_and(|at| now >= at)
                };
                if expired && !expiry_reported {
                    expiry_reported = true;
                    tracing::error!(
                        %identity,
                        %error,
                        failures,
                        "workload certificate expired while the CA is unreachable; still retrying"
                    );
                } else {
                    tracing::warn!(
                        %identity,
                        %error,
                        failures,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "workload certificate request failed; keeping the current certificate"
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `from + delay`, or a far-away instant when that overflows (a huge configured bound).
fn deadline(from: Instant, delay: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    from.checked_add(delay)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// One request: a new key, a CSR, the CA's answer, and checks of that answer.
async fn fetch(
    identity: &Identity,
    client: &dyn CaClient,
    config: &CertManagerConfig,
) -> Result<WorkloadCert, ClientError> {
    let key = KeyPair::generate(config.key_algorithm)?;
    let csr = csr::generate(identity, &key)?;
    let request = client.sign(&csr, identity, config.ttl);
    let bundle = if config.request_timeout.is_zero() {
        request.await?
    } else {
        tokio::time::timeout(config.request_timeout, request)
            .await
            .map_err(|_| ClientError::Timeout {
                after: config.request_timeout,
            })??
    };
    check_bundle(&bundle, identity, &key)?;
    Ok(WorkloadCert::new(bundle, key.to_pem()))
}

/// The certificate must name `identity`, carry `key`'s public key and not be expired.
fn check_bundle(
    bundle: &CertBundle,
    identity: &Identity,
    key: &KeyPair,
) -> Result<(), ClientError> {
    let invalid = |reason: String| ClientError::InvalidResponse { reason };
    if &bundle.identity != identity {
        return Err(invalid(format!(
            "it names {} instead of {identity}",
            bundle.identity
        )));
    }
    let ders = parse_certs(&bundle.leaf_pem, "the issued certificate")?;
    let [der] = ders.as_slice() else {
        return Err(invalid(format!(
            "the leaf field holds {} certificates",
            ders.len()
        )));
    };
    let leaf = parse_cert(der, "the issued certificate")?;
    if leaf.public_key().raw != key.public_key_der().as_slice() {
        return Err(invalid(
            "its public key is not the one in the request".to_owned(),
        ));
    }
    if bundle.not_after <= SystemTime::now() {
        return Err(invalid(format!(
            "it expired at {}",
            crate::inspect::rfc3339(bundle.not_after)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ScriptedCa;
    use std::time::UNIX_EPOCH;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn refresh_in_table() {
        // (not_before, not_after, now, fraction, draw) -> expected
        let cases = [
            // Half of one hour, asked at the start.
            ((0, 3600, 0), 0.5, 0.0, Duration::from_secs(1800)),
            // Asked later: the remainder.
            ((0, 3600, 1000), 0.5, 0.0, Duration::from_secs(800)),
            // Past the point: zero.
            ((0, 3600, 2000), 0.5, 0.0, Duration::ZERO),
            ((0, 3600, 9000), 0.5, 0.0, Duration::ZERO),
            // Other fractions (linkerd uses 0.7).
            ((0, 3600, 0), 0.7, 0.0, Duration::from_secs(2520)),
            ((0, 3600, 0), 0.0, 0.0, Duration::ZERO),
            ((0, 3600, 0), 1.0, 0.0, Duration::from_secs(3600)),
            // Jitter of ±1 % of the lifetime.
            ((0, 3600, 0), 0.5, 0.01, Duration::from_secs(1836)),
            ((0, 3600, 0), 0.5, -0.01, Duration::from_secs(1764)),
            // 24 h, Istio's default: 12 h ± 14.4 min.
            ((0, 86_400, 0), 0.5, 0.0, Duration::from_secs(43_200)),
            ((0, 86_400, 0), 0.5, 0.01, Duration::from_secs(44_064)),
            // The sum is clamped to [0, 1].
            ((0, 3600, 0), 0.995, 0.01, Duration::from_secs(3600)),
            ((0, 3600, 0), 1.5, 0.0, Duration::from_secs(3600)),
            ((0, 3600, 0), -0.5, 0.0, Duration::ZERO),
            // Non-finite inputs fall back to the default / no jitter.
            ((0, 3600, 0), f64::NAN, 0.0, Duration::from_secs(1800)),
            ((0, 3600, 0), 0.5, f64::INFINITY, Duration::from_secs(1800)),
            // A not_before in the future (CA clock ahead): counted from not_before.
            ((100, 3700, 0), 0.5, 0.0, Duration::from_secs(1900)),
            // Inverted validity: lifetime zero.
            ((3600, 0, 0), 0.5, 0.0, Duration::from_secs(3600)),
        ];
        for ((nb, na, now), fraction, draw, want) in cases {
            let got = refresh_in(at(nb), at(na), at(now), fraction, draw);
            assert_eq!(got, want, "nb={nb} na={na} now={now} f={fraction} d={draw}");
        }
    }

    #[test]
    fn refresh_delay_applies_jitter_bounds_and_clamps() {
        let config = CertManagerConfig::default();
        let (nb, na) = (at(0), at(3600));
        // The unit draw is scaled by refresh_jitter (1 %) and clamped to [-1, 1].
        assert_eq!(
            config.refresh_delay(nb, na, nb, 1.0),
            Duration::from_secs(1836)
        );
        assert_eq!(
            config.refresh_delay(nb, na, nb, -1.0),
            Duration::from_secs(1764)
        );
        assert_eq!(
            config.refresh_delay(nb, na, nb, 7.0),
            Duration::from_secs(1836)
        );
        assert_eq!(
            config.refresh_delay(nb, na, nb, f64::NAN),
            Duration::from_secs(1800)
        );
        // Random draws stay within ±1 % of the lifetime.
        for _ in 0..200 {
            let d = config.refresh_delay(nb, na, nb, unit_draw());
            assert!(
                (1764..=1836).contains(&d.as_secs()),
                "{d:?} outside 1800 s ± 36 s"
            );
        }
        // Clamped to [min_refresh, max_refresh].
        let clamped = CertManagerConfig {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(600),
            ..Default::default()
        };
        assert_eq!(
            clamped.refresh_delay(nb, na, nb, 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(
            clamped.refresh_delay(nb, na, at(1790), 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(
            clamped.refresh_delay(nb, na, at(5000), 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(
            clamped.refresh_delay(nb, na, at(1500), 0.0),
            Duration::from_secs(300)
        );
        // max below min counts as min; no panic.
        let inverted = CertManagerConfig {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(
            inverted.refresh_delay(nb, na, nb, 0.0),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(n, base, max, 0.0, 0.0).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(0, base, max, 0.0, 0.0), base);
        assert_eq!(backoff_delay(u32::MAX, base, max, 0.0, 0.0), max);
        assert_eq!(
            backoff_delay(1, base, max, 0.1, -1.0),
            Duration::from_millis(900)
        );
        assert_eq!(
            backoff_delay(7, base, max, 0.1, 1.0),
            Duration::from_secs(66)
        );
        assert_eq!(backoff_delay(2, base, max, f64::NAN, 1.0), 2 * base);
        for n in 1..=10 {
            let plain = backoff_delay(n, base, max, 0.0, 0.0);
            let jittered = backoff_delay(n, base, max, 0.1, unit_draw());
            assert!(jittered >= plain.mul_f64(0.9) && jittered <= plain.mul_f64(1.1));
        }
    }

    #[test]
    fn huge_bounds_do_not_overflow() {
        let config = CertManagerConfig {
            min_refresh: Duration::MAX,
            max_refresh: Duration::MAX,
            backoff_base: Duration::MAX,
            backoff_max: Duration::MAX,
            ..Default::default()
        };
        assert_eq!(
            config.refresh_delay(at(0), at(3600), at(0), 1.0),
            Duration::MAX
        );
        assert!(config.retry_delay(40, 1.0) >= Duration::from_secs(u64::MAX / 2));
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
    }

    #[test]
    fn unit_draws_stay_in_range() {
        for _ in 0..1000 {
            let d = unit_draw();
            assert!((-1.0..1.0).contains(&d), "{d}");
        }
    }

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_the_first_certificate() {
        let ca = Arc::new(ScriptedCa::self_signed().unwrap());
        let manager = CertManager::start(
            id(),
            ca.clone(),
            CertManagerConfig {
                ttl: HOUR,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(manager.state(), CertState::Pending);
        let cert = manager.ready().await.unwrap();
        assert_eq!(cert.identity(), &id());
        assert_eq!(manager.state(), CertState::Valid);
        assert_eq!(manager.expiry(), Some(cert.not_after()));
        let left = manager.seconds_until_expiry().unwrap();
        assert!((3590.0..=3600.0).contains(&left), "{left}");
        assert_eq!(ca.requested_ttls(), vec![HOUR]);
        assert_eq!((manager.renewals(), manager.failures()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_a_certificate_for_another_identity() {
        let ca = Arc::new(ScriptedCa::self_signed().unwrap());
        let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let other: Identity = "spiffe://cluster.local/ns/default/sa/other"
            .parse()
            .unwrap();
        let bundle = ca
            .authority()
            .sign(&csr::generate(&other, &key).unwrap(), &other, HOUR)
            .unwrap();
        let err = check_bundle(&bundle, &id(), &key).unwrap_err();
        assert!(err.to_string().contains("instead of"), "{err}");
        let stranger = KeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let err = check_bundle(&bundle, &other, &stranger).unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");
        assert!(check_bundle(&bundle, &other, &key).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_a_slow_ca() {
        let ca = Arc::new(ScriptedCa::self_signed().unwrap());
        ca.set_latency(Duration::from_secs(120));
        let manager = CertManager::start(
            id(),
            ca.clone(),
            CertManagerConfig {
                request_timeout: Duration::from_secs(5),
                backoff_jitter: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(manager.failures(), 1);
        assert!(
            matches!(manager.last_error(), Some(ClientError::Timeout { .. })),
            "{:?}",
            manager.last_error()
        );
        assert_eq!(manager.state(), CertState::Pending);
        ca.set_latency(Duration::ZERO);
        let cert = manager.ready().await.unwrap();
        assert_eq!(cert.identity(), &id());
        assert_eq!(manager.last_error().map(|e| e.to_string()), None);
    }
}
