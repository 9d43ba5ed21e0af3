//! HBONE over real sockets and real mTLS: bytes both ways, half-close,
//! pooling (one connection for many tunnels, a new one past 100 streams),
//! identity checks, and refusals with their HTTP status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_ca::{Authority, CaOptions, CertManager, ManagerOptions, TrustBundle};
use weft_core::Identity;
use weft_hbone::client::HboneError;
use weft_hbone::server::{Limits, OpenFuture, serve};
use weft_hbone::{HbonePool, Inbound, InboundHandler, PoolKey, Refusal};

const TD: &str = "cluster.local";

fn id(sa: &str) -> Identity {
    Identity::new(TD, "shop", sa).expect("id")
}

struct Mesh {
    _dir: tempfile::TempDir,
    certs: CertManager,
    bundle: TrustBundle,
}

impl Mesh {
    fn new() -> Self {
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
struct Direct {
    deny: Option<Identity>,
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

async fn echo_server() -> SocketAddr {
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

async fn hbone_server(mesh: &Mesh, identity: &Identity, deny: Option<Identity>) -> SocketAddr {
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
        Limits::default(),
        std::future::pending(),
    ));
    addr
}

async fn client(mesh: &Mesh, source: &Identity) -> HbonePool {
    mesh.certs.fetch(source).await.expect("client cert");
    HbonePool::new(mesh.bundle.clone(), Duration::from_secs(2))
}

fn key(source: &Identity, destination: SocketAddr, expected: &Identity) -> PoolKey {
    PoolKey {
        source: source.clone(),
        destination,
        expected: vec![expected.clone()],
    }
}

#[tokio::test]
async fn bytes_flow_both_ways_with_half_close() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let hbone = hbone_server(&mesh, &node, None).await;
    let echo = echo_server().await;
    let pool = client(&mesh, &orders).await;
    let tunnel = pool
        .connect(
            &key(&orders, hbone, &node),
            mesh.certs.source(&orders),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect("tunnel");
    // 8 MiB each way, more than the stream window, so flow control is exercised.
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back)
        .await
        .expect("read to the echo's close");
    writer.await.expect("writer");
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "echoed bytes differ");
}

#[tokio::test]
async fn tunnels_share_pooled_connections() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let hbone = hbone_server(&mesh, &node, None).await;
    let echo = echo_server().await;
    let pool = client(&mesh, &orders).await;
    let k = key(&orders, hbone, &node);

    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(
            pool.connect(&k, mesh.certs.source(&orders), echo, HeaderMap::new())
                .await
                .expect("tunnel"),
        );
    }
    assert_eq!(
        pool.connections_opened(),
        1,
        "ten tunnels, one TLS connection"
    );
    for _ in 10..150 {
        open.push(
            pool.connect(&k, mesh.certs.source(&orders), echo, HeaderMap::new())
                .await
                .expect("tunnel"),
        );
    }
    assert_eq!(
        pool.connections_opened(),
        2,
        "past 100 streams a second connection opens"
    );
    // Every tunnel works.
    for t in &mut open {
        t.write_all(b"ping").await.expect("write");
    }
    for t in &mut open {
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }
    // Closed tunnels free their slots: new tunnels reuse connections.
    open.clear();
    tokio::task::yield_now().await;
    pool.connect(&k, mesh.certs.source(&orders), echo, HeaderMap::new())
        .await
        .expect("tunnel");
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test]
async fn identities_and_refusals() {
    let mesh = Mesh::new();
    let (node, orders, stranger) = (id("node-b"), id("orders"), id("stranger"));
    let hbone = hbone_server(&mesh, &node, Some(stranger.clone())).await;
    let echo = echo_server().await;
    let pool = client(&mesh, &orders).await;

    // Expecting another identity: the handshake fails, naming both.
    let other = id("node-c");
    let err = pool
        .connect(
            &key(&orders, hbone, &other),
            mesh.certs.source(&orders),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect_err("wrong identity");
    let msg = err.to_string();
    assert!(
        msg.contains(&node.to_string()) && msg.contains(&other.to_string()),
        "{msg}"
    );

    // Denied by the handler: 401.
    let strangers = client(&mesh, &stranger).await;
    let err = strangers
        .connect(
            &key(&stranger, hbone, &node),
            mesh.certs.source(&stranger),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect_err("denied");
    assert!(
        matches!(
            err,
            HboneError::Refused {
                status: StatusCode::UNAUTHORIZED,
                ..
            }
        ),
        "{err}"
    );

    // A target nobody listens on: 503, a connect-level failure.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let err = pool
        .connect(
            &key(&orders, hbone, &node),
            mesh.certs.source(&orders),
            closed,
            HeaderMap::new(),
        )
        .await
        .expect_err("unreachable");
    assert!(
        matches!(
            err,
            HboneError::Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_connect_failure());

    // Nothing on the HBONE port: a clear connect error.
    let err = pool
        .connect(
            &key(&orders, closed, &node),
            mesh.certs.source(&orders),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect_err("no server");
    assert!(err.to_string().contains("is port"), "{err}");
    assert!(err.is_connect_failure());
}
