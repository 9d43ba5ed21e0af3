//! The certificate service over real gRPC and mTLS: node proxies obtain
//! certificates for workloads on their node only, with a bootstrap token or
//! their node certificate; the control plane going away at renewal time does
//! not cost the workload its valid certificate.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use weft_ca::authz::{BootstrapTokens, control_identity, node_identity};
use weft_ca::client::{GrpcCaClient, NodeCredential};
use weft_ca::manager::CaClient;
use weft_ca::service::{CertificateService, serve};
use weft_ca::tls::{self, SpiffeClientVerifier};
use weft_ca::{CertManager, KeyAndCsr, ManagerOptions};
use weft_core::model::Snapshot;

const TD: &str = "cluster.local";
const TOKEN_1: &str = "node-1-token-0123456789";

const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  workloadSelector: {labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: orders-1, namespace: shop}
spec: {address: 127.0.1.10, serviceAccount: orders, labels: {app: shop, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments-1, namespace: shop}
spec: {address: 127.0.2.10, serviceAccount: payments, labels: {app: shop, weft.dev/node: node-2}}
"#;

fn registry() -> Arc<ArcSwap<Snapshot>> {
    let config = weft_config::load_sources([(Path::new("registry.yaml"), REGISTRY)])
        .unwrap_or_else(|p| panic!("{p}"));
    Arc::new(ArcSwap::new(config.snapshot))
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.done.await;
    }
}

/// Starts the certificate service the way `weft control` does: its own
/// serving certificate comes from the same CA through a manager.
async fn start(ca: &TestCa, bind: SocketAddr) -> Server {
    let own = CertManager::new(ca.authority.clone(), ManagerOptions::default());
    let control = control_identity(TD).expect("id");
    own.fetch(&control)
        .await
        .expect("control plane certificate");
    let config = tls::server_config(
        own.source(&control),
        SpiffeClientVerifier::new(ca.bundle(), TD).optional(),
    )
    .expect("server config");
    let tokens = BootstrapTokens::new([("node-1".to_owned(), TOKEN_1.to_owned())]);
    let service = CertificateService::new(ca.authority.clone(), registry(), tokens);
    let listener = TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(async move {
        let _keep = own;
        serve(listener, config, service, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Server {
        addr,
        stop: Some(stop),
        done,
    }
}

fn client(ca: &TestCa, addr: SocketAddr, credential: NodeCredential) -> GrpcCaClient {
    GrpcCaClient::new(
        addr,
        ca.bundle(),
        control_identity(TD).expect("id"),
        credential,
    )
    .expect("client")
}

fn token(t: &str) -> NodeCredential {
    NodeCredential::Token(t.into())
}

#[tokio::test]
async fn nodes_get_certificates_only_for_their_workloads() {
    let ca = TestCa::new(TD);
    let server = start(&ca, "127.0.0.1:0".parse().expect("addr")).await;
    let orders = id(TD, "shop", "orders");
    let payments = id(TD, "shop", "payments");

    // node-1 with its bootstrap token: its workload's identity is issued.
    let node1 = Arc::new(client(&ca, server.addr, token(TOKEN_1)));
    let manager = CertManager::new(node1.clone(), ManagerOptions::default());
    let cert = manager.fetch(&orders).await.expect("orders certificate");
    assert_eq!(cert.identity(), &orders);
    assert_eq!(cert.chain().len(), 2, "leaf and root");

    // ...but not an identity of a workload on node-2.
    let err = manager
        .fetch(&payments)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("PermissionDenied")
            && err.contains("node node-1 may not obtain")
            && err.contains("node-2"),
        "{err}"
    );

    // A wrong token is unauthenticated.
    let stranger = client(&ca, server.addr, token("not-a-valid-token-at-all"));
    let csr = KeyAndCsr::generate(&orders).expect("csr");
    let err = stranger
        .sign(&orders, &csr.csr_pem, Duration::ZERO)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("unauthenticated"), "{err}");

    // A CSR whose SAN differs from the identity asked for is refused.
    let csr_for_payments = KeyAndCsr::generate(&payments).expect("csr");
    let err = node1
        .sign(&orders, &csr_for_payments.csr_pem, Duration::ZERO)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("InvalidArgument")
            && err.contains(&payments.to_string())
            && err.contains(&orders.to_string()),
        "{err}"
    );

    // node-1 obtains its node certificate, then authenticates with it alone.
    let node_id = node_identity(TD, "node-1").expect("id");
    manager.fetch(&node_id).await.expect("node certificate");
    let by_cert = Arc::new(client(
        &ca,
        server.addr,
        NodeCredential::Certificate(manager.source(&node_id)),
    ));
    let by_cert_manager = CertManager::new(by_cert, ManagerOptions::default());
    by_cert_manager
        .fetch(&orders)
        .await
        .expect("orders via node certificate");
    let err = by_cert_manager
        .fetch(&payments)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("node node-1 may not obtain"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_at_renewal_keeps_the_certificate() {
    let ca = TestCa::new(TD);
    let server = start(&ca, "127.0.0.1:0".parse().expect("addr")).await;
    let addr = server.addr;
    let orders = id(TD, "shop", "orders");
    let options = ManagerOptions {
        ttl: Duration::from_secs(6),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..ManagerOptions::default()
    };
    let manager = CertManager::new(Arc::new(client(&ca, addr, token(TOKEN_1))), options);
    let first = manager.fetch(&orders).await.expect("first");

    server.stop().await;
    wait_until(Duration::from_secs(8), || {
        manager.states()[0].1.last_error.is_some()
    })
    .await;
    let held = manager
        .fetch(&orders)
        .await
        .expect("the valid certificate is kept");
    assert_eq!(held.info().serial, first.info().serial);
    let error = manager.states()[0].1.last_error.clone().unwrap_or_default();
    assert!(error.contains(&addr.to_string()), "{error}");

    // The control plane comes back on the same address: renewal succeeds
    // before the first certificate expires.
    let server = start(&ca, addr).await;
    wait_until(Duration::from_secs(4), || {
        manager.states()[0]
            .1
            .cert
            .as_ref()
            .is_some_and(|c| c.info().serial != first.info().serial)
    })
    .await;
    assert!(manager.fetch(&orders).await.is_ok());
    server.stop().await;
}
