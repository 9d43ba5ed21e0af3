//! The certificate manager end to end: shared first fetch, rotation under
//! continuous mTLS traffic with zero failed connections, renewal failure
//! (the valid certificate stays in use, retries back off, recovery), and no
//! key material in logs at debug level.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::CertificateDer;
use weft_ca::manager::{CaClient, FetchError, SignFuture};
use weft_ca::tls::SpiffeClientVerifier;
use weft_ca::{Authority, CertManager, ManagerOptions};
use weft_core::Identity;

const TD: &str = "cluster.local";

/// The in-process CA behind a switch, counting calls.
struct Flaky {
    authority: Arc<Authority>,
    up: AtomicBool,
    calls: AtomicUsize,
}

impl Flaky {
    fn new(authority: Arc<Authority>) -> Arc<Self> {
        Arc::new(Flaky {
            authority,
            up: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        })
    }
}

impl CaClient for Flaky {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // A little latency so concurrent first requests overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !self.up.load(Ordering::SeqCst) {
                return Err(FetchError(
                    "connection to 127.0.0.1:15012 refused: is weft control running?".into(),
                ));
            }
            let chain: Vec<CertificateDer<'static>> = self
                .authority
                .sign_csr(csr_pem, identity, Some(ttl))
                .map_err(|e| FetchError(e.to_string()))?;
            Ok(chain)
        })
    }
}

fn options(ttl: Duration) -> ManagerOptions {
    ManagerOptions {
        ttl,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ..ManagerOptions::default()
    }
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let ca = TestCa::new(TD);
    let client = Flaky::new(ca.authority.clone());
    let manager = CertManager::new(client.clone(), options(Duration::from_secs(3600)));
    let orders = id(TD, "shop", "orders");
    let results = futures_join(&manager, &orders, 8).await;
    let serials: Vec<String> = results.iter().map(|c| c.info().serial.clone()).collect();
    assert!(serials.windows(2).all(|w| w[0] == w[1]), "{serials:?}");
    assert_eq!(client.calls.load(Ordering::SeqCst), 1);
    // A second identity is fetched separately.
    manager
        .fetch(&id(TD, "shop", "payments"))
        .await
        .expect("payments");
    assert_eq!(client.calls.load(Ordering::SeqCst), 2);
    assert_eq!(manager.states().len(), 2);
}

async fn futures_join(
    manager: &CertManager,
    identity: &Identity,
    n: usize,
) -> Vec<Arc<weft_ca::WorkloadCert>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let manager = manager.clone();
        let identity = identity.clone();
        tasks.push(tokio::spawn(async move { manager.fetch(&identity).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join").expect("cert"));
    }
    out
}

/// With a 5-second lifetime, continuous mTLS connections between two
/// endpoints whose certificates come from the manager run through several
/// rotations with zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_has_no_failed_connection() {
    let ca = TestCa::new(TD);
    let manager = CertManager::new(
        Flaky::new(ca.authority.clone()),
        options(Duration::from_secs(5)),
    );
    let server_id = id(TD, "shop", "payments");
    let client_id = id(TD, "shop", "orders");
    manager.fetch(&server_id).await.expect("server cert");
    manager.fetch(&client_id).await.expect("client cert");
    let (addr, mut seen) = echo_server(
        manager.source(&server_id),
        SpiffeClientVerifier::new(ca.bundle(), TD),
    )
    .await;
    let client_source = manager.source(&client_id);

    let mut serials = std::collections::BTreeSet::new();
    let mut connections = 0;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        let got = echo_client(
            addr,
            Some(client_source.clone()),
            ca.bundle(),
            vec![server_id.clone()],
        )
        .await;
        assert_eq!(
            got,
            Ok(server_id.to_string()),
            "connection {connections} failed"
        );
        assert_eq!(seen.recv().await, Some(Ok(client_id.to_string())));
        connections += 1;
        let current = manager.fetch(&server_id).await.expect("current");
        serials.insert(current.info().serial.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 12 s at a 5 s lifetime renewed at ~2.5 s: at least four certificates.
    assert!(
        serials.len() >= 4,
        "saw {} certificates over {connections} connections",
        serials.len()
    );
    assert!(connections > 100, "only {connections} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_failure_keeps_the_valid_certificate_and_recovers() {
    let ca = TestCa::new(TD);
    let client = Flaky::new(ca.authority.clone());
    let manager = CertManager::new(client.clone(), options(Duration::from_secs(6)));
    let orders = id(TD, "shop", "orders");
    let first = manager.fetch(&orders).await.expect("first");

    // The control plane goes away before renewal is due (~3 s).
    client.up.store(false, Ordering::SeqCst);
    let calls_before = client.calls.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(6), || {
        manager.states()[0].1.last_error.is_some()
    })
    .await;
    // Still serving the first, still-valid certificate.
    let held = manager.fetch(&orders).await.expect("still valid");
    assert_eq!(held.info().serial, first.info().serial);
    let state = &manager.states()[0].1;
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{state:?}"
    );

    // It keeps retrying with backoff while the certificate is valid.
    wait_until(Duration::from_secs(3), || {
        client.calls.load(Ordering::SeqCst) >= calls_before + 3
    })
    .await;

    // The control plane returns: a new certificate arrives before the old expires.
    client.up.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(3), || {
        manager.states()[0]
            .1
            .cert
            .as_ref()
            .is_some_and(|c| c.info().serial != first.info().serial)
    })
    .await;
    let renewed = manager.fetch(&orders).await.expect("renewed");
    assert!(renewed.info().not_after > first.info().not_after);
    assert!(manager.states()[0].1.last_error.is_none());
}

#[tokio::test]
async fn no_certificate_and_no_ca_is_an_error_not_a_hang() {
    let ca = TestCa::new(TD);
    let client = Flaky::new(ca.authority.clone());
    client.up.store(false, Ordering::SeqCst);
    let manager = CertManager::new(client, options(Duration::from_secs(60)));
    let err = manager
        .fetch(&id(TD, "shop", "orders"))
        .await
        .expect_err("unavailable");
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/shop/sa/orders") && msg.contains("refused"),
        "{msg}"
    );
}

#[test]
fn metrics_report_seconds_until_expiry() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ca = TestCa::new(TD);
        let manager = CertManager::new(Flaky::new(ca.authority.clone()), options(Duration::from_secs(600)));
        manager.fetch(&id(TD, "shop", "orders")).await.expect("cert");
        let mut registry = prometheus_client::registry::Registry::default();
        manager.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let line = text
            .lines()
            .find(|l| l.starts_with("weft_cert_expiry_seconds{identity=\"spiffe://cluster.local/ns/shop/sa/orders\"}"))
            .unwrap_or_else(|| panic!("metric missing:\n{text}"));
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
        assert!((590.0..=600.0).contains(&value), "{line}");
    });
}
