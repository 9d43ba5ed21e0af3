//! The certificate manager every proxy uses: obtains a certificate per
//! identity on first use (concurrent requests for one identity share one
//! fetch), renews it at about half its lifetime with jitter, retries failures
//! with exponential backoff, and keeps serving a still-valid certificate
//! while renewal fails. A valid certificate is never dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use weft_core::Identity;

use crate::tls::CertSource;
use crate::workload::{KeyAndCsr, WorkloadCert};

/// A certificate request that did not produce a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// Boxed future returned by [`CaClient::sign`].
pub type SignFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<CertificateDer<'static>>, FetchError>> + Send + 'a>>;

/// Something that signs CSRs: the gRPC client of `weft control`, or an
/// in-process authority.
pub trait CaClient: Send + Sync + 'static {
    /// Asks for a certificate for `identity` from a PEM CSR; `ttl` zero
    /// means the CA's default. Returns the leaf followed by its chain.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a>;
}

/// Tuning of the manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Lifetime to ask for (zero: the CA's default).
    pub ttl: Duration,
    /// Renew when this fraction of the lifetime has passed.
    pub renew_fraction: f64,
    /// Random spread around `renew_fraction` (± this fraction of the lifetime).
    pub jitter: f64,
    /// First retry delay after a failed request.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Where issued certificates are kept on disk; `None`: memory only.
    pub store: Option<CertStore>,
}

/// A private directory (0700) where each certificate and its key are kept
/// (0600) once issued, and read back at start if they still chain to
/// `trust` and are valid: a proxy restarted while the CA is unreachable
/// serves with them until they expire.
#[derive(Debug, Clone)]
pub struct CertStore {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The roots a kept certificate must chain to (after a root rotation,
    /// older ones are not used).
    pub trust: crate::TrustBundle,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            ttl: Duration::ZERO,
            renew_fraction: 0.5,
            jitter: 0.05,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            store: None,
        }
    }
}

/// Why no certificate is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertManagerError {
    /// The CA could not be reached or refused, and no valid certificate is held.
    #[error("no valid certificate for {identity}: {reason}")]
    Unavailable {
        /// The identity.
        identity: String,
        /// The last failure.
        reason: String,
    },
    /// The manager was shut down.
    #[error("certificate manager stopped")]
    Stopped,
}

/// What the manager holds for one identity.
#[derive(Debug, Clone, Default)]
pub struct CertState {
    /// The newest certificate obtained (kept while renewals fail).
    pub cert: Option<Arc<WorkloadCert>>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// When the next renewal is due.
    pub renew_at: Option<SystemTime>,
    /// Whether at least one attempt has finished.
    attempted: bool,
}

struct Slot {
    rx: watch::Receiver<CertState>,
    task: AbortHandle,
}

struct Inner {
    client: Arc<dyn CaClient>,
    options: ManagerOptions,
    slots: Mutex<HashMap<Identity, Slot>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(slots) = self.slots.get_mut() {
            for slot in slots.values() {
                slot.task.abort();
            }
        }
    }
}

/// Obtains and rotates workload certificates. Cheap to clone.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager that asks `client` for certificates.
    pub fn new(client: Arc<dyn CaClient>, options: ManagerOptions) -> Self {
        CertManager {
            inner: Arc::new(Inner {
                client,
                options,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The certificate for `identity`, fetching it on first use. Waits for
    /// the first attempt; later calls return the current certificate at once.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CertManagerError> {
        let mut rx = self.watch(identity);
        let state = rx
            .wait_for(|s| s.attempted)
            .await
            .map_err(|_| CertManagerError::Stopped)?
            .clone();
        match state.cert {
            Some(cert) if cert.is_valid_at(SystemTime::now()) => Ok(cert),
            _ => Err(CertManagerError::Unavailable {
                identity: identity.to_string(),
                reason: state
                    .last_error
                    .unwrap_or_else(|| "certificate expired".into()),
            }),
        }
    }

    /// A handle that always yields the newest certificate of `identity`,
    /// for TLS configs that must pick up rotations at every handshake.
    pub fn source(&self, identity: &Identity) -> Arc<dyn CertSource> {
        Arc::new(Watched(self.watch(identity)))
    }

    /// Stops renewing `identity` (its workload left this node).
    pub fn forget(&self, identity: &Identity) {
        if let Some(slot) = self.lock().remove(identity) {
            slot.task.abort();
        }
    }

    /// What is held for every identity, sorted by identity.
    pub fn states(&self) -> Vec<(Identity, CertState)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.rx.borrow().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Registers `weft_cert_expiry_seconds{identity}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ExpiryCollector(self.clone())));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Slot>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(identity) {
            return slot.rx.clone();
        }
        let (tx, rx) = watch::channel(CertState::default());
        let task = tokio::spawn(renew_loop(
            self.inner.client.clone(),
            self.inner.options.clone(),
            identity.clone(),
            tx,
        ))
        .abort_handle();
        slots.insert(
            identity.clone(),
            Slot {
                rx: rx.clone(),
                task,
            },
        );
        rx
    }
}

async fn fetch_once(
    client: &dyn CaClient,
    identity: &Identity,
    ttl: Duration,
) -> Result<WorkloadCert, String> {
    let request = KeyAndCsr::generate(identity).map_err(|e| e.to_string())?;
    let chain = client
        .sign(identity, &request.csr_pem, ttl)
        .await
        .map_err(|e| e.to_string())?;
    request
        .into_cert(identity, chain)
        .map_err(|e| e.to_string())
}

/// A number in [0, 1) for spreading renewals (not a secret; drawn from
/// the OS generator so this crate needs no second one).
fn unit_random() -> f64 {
    crate::secret::random_bytes::<8>().map_or(0.5, |b| {
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// How long after now to renew `cert`.
fn renew_delay(cert: &WorkloadCert, options: &ManagerOptions, now: SystemTime) -> Duration {
    let info = cert.info();
    let lifetime = info.lifetime().as_secs_f64();
    let spread = (unit_random() * 2.0 - 1.0) * options.jitter;
    let fraction = (options.renew_fraction + spread).clamp(0.05, 0.95);
    let due = info.not_before + Duration::from_secs_f64(lifetime * fraction);
    due.duration_since(now).unwrap_or_default()
}

/// Where `identity`'s certificate is kept in `store` (namespaces have no
/// dots, so `<namespace>.<service account>` is unique).
fn stored_path(store: &std::path::Path, identity: &Identity) -> std::path::PathBuf {
    store.join(format!(
        "{}.{}.pem",
        identity.namespace(),
        identity.service_account()
    ))
}

/// The certificate kept for `identity`, if one is there, valid now and
/// chained to the roots trusted now.
fn load_stored(store: &CertStore, identity: &Identity) -> Option<WorkloadCert> {
    let path = stored_path(&store.dir, identity);
    if !path.exists() {
        return None;
    }
    let loaded = crate::secret::check_private(&path)
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::read_to_string(&path).map_err(|e| e.to_string()))
        .and_then(|text| WorkloadCert::from_pem(identity, &text).map_err(|e| e.to_string()))
        .and_then(|cert| {
            store
                .trust
                .check_chain(cert.chain())
                .map(|_| cert)
                .map_err(|e| format!("does not chain to the roots trusted now: {e}"))
        });
    match loaded {
        Ok(cert) if cert.is_valid_at(SystemTime::now()) => Some(cert),
        Ok(_) => {
            tracing::info!(identity = %identity, path = %path.display(), "kept certificate has expired; not used");
            None
        }
        Err(e) => {
            tracing::warn!(identity = %identity, path = %path.display(), error = %e, "kept certificate not usable");
            None
        }
    }
}

/// Keeps `cert` in `store` (0600, atomically).
fn keep(store: &CertStore, cert: &WorkloadCert) {
    let path = stored_path(&store.dir, cert.identity());
    let kept = crate::secret::private_dir(&store.dir)
        .and_then(|()| crate::secret::write_private(&path, cert.to_pem().as_bytes()));
    if let Err(e) = kept {
        tracing::warn!(identity = %cert.identity(), error = %e, "cannot keep the certificate on disk; a restart will need the CA");
    }
}

async fn renew_loop(
    client: Arc<dyn CaClient>,
    options: ManagerOptions,
    identity: Identity,
    tx: watch::Sender<CertState>,
) {
    let mut backoff = options.initial_backoff;
    // A certificate kept from an earlier run serves until it is due for
    // renewal (or at once, if the CA cannot be reached then).
    if let Some(cert) = options
        .store
        .as_ref()
        .and_then(|store| load_stored(store, &identity))
    {
        let now = SystemTime::now();
        let delay = renew_delay(&cert, &options, now);
        tracing::info!(identity = %identity, serial = %cert.info().serial, renew_in = ?delay, "using the certificate kept from the last run");
        tx.send_modify(|s| {
            s.cert = Some(Arc::new(cert));
            s.renew_at = Some(now + delay);
            s.attempted = true;
        });
        tokio::time::sleep(delay).await;
    }
    loop {
        match fetch_once(client.as_ref(), &identity, options.ttl).await {
            Ok(cert) => {
                let now = SystemTime::now();
                let delay = renew_delay(&cert, &options, now);
                tracing::info!(
                    identity = %identity,
                    serial = %cert.info().serial,
                    renew_in = ?delay,
                    "certificate issued"
                );
                if let Some(store) = &options.store {
                    keep(store, &cert);
                }
                tx.send_modify(|s| {
                    s.cert = Some(Arc::new(cert));
                    s.last_error = None;
                    s.renew_at = Some(now + delay);
                    s.attempted = true;
                });
                backoff = options.initial_backoff;
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                let held = tx.borrow().cert.clone();
                let now = SystemTime::now();
                // Retry sooner than the remaining validity, so a returning CA
                // is used before the held certificate expires.
                let mut delay = backoff;
                if let Some(cert) = held.as_ref().filter(|c| c.is_valid_at(now)) {
                    delay = delay
                        .min(cert.remaining(now) / 4)
                        .max(Duration::from_millis(10));
                }
                let delay = delay.mul_f64(0.8 + unit_random() * 0.4);
                tracing::warn!(
                    identity = %identity,
                    %error,
                    retry_in = ?delay,
                    holding_valid_certificate = held.as_ref().is_some_and(|c| c.is_valid_at(now)),
                    "certificate request failed"
                );
                tx.send_modify(|s| {
                    s.last_error = Some(error);
                    s.renew_at = Some(now + delay);
                    s.attempted = true;
                });
                backoff = (backoff * 2).min(options.max_backoff);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[derive(Debug)]
struct Watched(watch::Receiver<CertState>);

impl CertSource for Watched {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().cert.as_ref().map(|c| c.certified_key())
    }
}

#[derive(Debug)]
struct ExpiryCollector(CertManager);

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            weft_telemetry::names::CERT_EXPIRY_SECONDS,
            "Seconds until the workload certificate expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        let now = SystemTime::now();
        for (identity, state) in self.0.states() {
            let Some(cert) = state.cert else { continue };
            let secs = match cert.info().not_after.duration_since(now) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            };
            let labels = [("identity", identity.to_string())];
            ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One row of `/certs`: what an operator asks about a held certificate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CertReport {
    /// SPIFFE identity.
    pub identity: String,
    /// Serial number (hex).
    pub serial: Option<String>,
    /// Start of validity (RFC 3339).
    pub not_before: Option<String>,
    /// End of validity (RFC 3339).
    pub not_after: Option<String>,
    /// Seconds until expiry (negative once expired).
    pub expires_in_seconds: Option<i64>,
    /// Seconds until the next renewal attempt.
    pub renews_in_seconds: Option<i64>,
    /// Issuing CA (subject of the issuer).
    pub issuer: Option<String>,
    /// The last renewal failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Seconds from `now` to `t`, negative when `t` is past.
fn signed_secs(t: SystemTime, now: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// RFC 3339 time, e.g. `2026-11-28T14:25:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

impl CertManager {
    /// What `/certs` shows, one row per identity.
    pub fn report(&self) -> Vec<CertReport> {
        let now = SystemTime::now();
        self.states()
            .into_iter()
            .map(|(identity, state)| {
                let info = state.cert.as_ref().map(|c| c.info().clone());
                CertReport {
                    identity: identity.to_string(),
                    serial: info.as_ref().map(|i| i.serial.clone()),
                    not_before: info.as_ref().map(|i| rfc3339(i.not_before)),
                    not_after: info.as_ref().map(|i| rfc3339(i.not_after)),
                    expires_in_seconds: info.as_ref().map(|i| signed_secs(i.not_after, now)),
                    renews_in_seconds: state.renew_at.map(|t| signed_secs(t, now)),
                    issuer: info.map(|i| i.issuer),
                    last_error: state.last_error,
                }
            })
            .collect()
    }

    /// `/certs` as JSON.
    pub fn report_json(&self) -> String {
        serde_json::to_string_pretty(&self.report())
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
