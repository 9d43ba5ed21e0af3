//! No key material in logs at debug level. A test binary of its own: the
//! capture uses a thread-local subscriber, which other tests running in
//! the same process at the same time would disturb.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use weft_ca::{CertManager, ManagerOptions};

const TD: &str = "cluster.local";

/// Everything the identity code logs at debug level, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn keys_never_appear_in_debug_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let root_key;
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let ca = TestCa::new(TD);
        root_key =
            std::fs::read_to_string(ca.dir.path().join("ca/root-key.pem")).expect("root key");
        rt.block_on(async {
            let manager = CertManager::new(ca.authority.clone(), ManagerOptions { ttl: Duration::from_secs(60), ..ManagerOptions::default() });
            let cert = manager.fetch(&id(TD, "shop", "orders")).await.expect("cert");
            tracing::debug!(?cert, ?manager, authority = ?ca.authority, "debug dump of identity objects");
            manager.forget(&id(TD, "shop", "orders"));
            // A refused request logs its error too.
            let refused = manager.fetch(&id("other.example", "shop", "x")).await;
            assert!(refused.is_err());
        });
    }
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logs.contains("certificate issued"),
        "debug logs were captured:\n{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
    for line in root_key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "root key material in logs");
    }
}
