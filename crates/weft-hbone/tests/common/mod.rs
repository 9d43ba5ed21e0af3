//! Helpers shared by the HBONE tests: a CA, servers, an echo upstream.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_ca::{Authority, CaOptions, CertManager, ManagerOptions, TrustBundle};
use weft_core::Identity;
use weft_hbone::server::{Limits, OpenFuture, serve};
use weft_hbone::{HbonePool, Inbound, InboundHandler, PoolKey, Refusal};

pub const TD: &str = "cluster.local";

pub fn id(sa: &str) -> Identity {
    Identity::new(TD, "shop", sa).expect("id")
}

pub struct Mesh {
    _dir: tempfile::TempDir,
    pub certs: CertManager,
    pub bundle: TrustBundle,
}

impl Mesh {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority = Arc::new(
            Authority::load_or_create(&CaOptions {
                dir: dir.path().join("ca"),
                trust_domain: TD.into(),
                workload_ttl: Duration::from_secs(3600),
            })
            .expect("ca"),
        );
        let bundle = TrustBundle::new(authority.trust_bundle().to_vec()).expect("bundle");
        Mesh {
            _dir: dir,
            certs: CertManager::new(authority, ManagerOptions::default()),
            bundle,
        }
    }
}

/// Connects every tunnel to its target over plain TCP, except the ones the
/// test asks to deny.
pub struct Direct {
    pub deny: Option<Identity>,
}

impl InboundHandler for Direct {
    fn open(&self, request: Inbound) -> OpenFuture {
        let deny = self.deny.clone();
        Box::pin(async move {
            if deny.as_ref() == Some(&request.peer) {
                return Err(Refusal::Denied(format!("{} is not allowed", request.peer)));
            }
            match TcpStream::connect(request.target).await {
                Ok(s) => Ok(Box::new(s) as Box<dyn weft_hbone::server::Upstream>),
                Err(e) => Err(Refusal::Unreachable(e.to_string())),
            }
        })
    }
}

pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

pub async fn hbone_server(mesh: &Mesh, identity: &Identity, deny: Option<Identity>) -> SocketAddr {
    hbone_server_with(mesh, identity, deny, Limits::default()).await
}

pub async fn hbone_server_with(
    mesh: &Mesh,
    identity: &Identity,
    deny: Option<Identity>,
    limits: Limits,
) -> SocketAddr {
    mesh.certs.fetch(identity).await.expect("server cert");
    let tls = server_config(
        mesh.certs.source(identity),
        SpiffeClientVerifier::new(mesh.bundle.clone(), TD),
    )
    .expect("tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(
        listener,
        Arc::new(tls),
        Arc::new(Direct { deny }),
        limits,
        std::future::pending(),
    ));
    addr
}

pub async fn client(mesh: &Mesh, source: &Identity) -> HbonePool {
    mesh.certs.fetch(source).await.expect("client cert");
    HbonePool::new(mesh.bundle.clone(), Duration::from_secs(2))
}

pub fn key(source: &Identity, destination: SocketAddr, expected: &Identity) -> PoolKey {
    PoolKey {
        source: source.clone(),
        origin: 0,
        destination,
        expected: vec![expected.clone()],
    }
}
