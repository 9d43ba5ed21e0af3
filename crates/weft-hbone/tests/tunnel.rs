//! HBONE over real sockets and real mTLS: bytes both ways, half-close,
//! pooling (one connection for many tunnels, a new one past 100 streams),
//! identity checks, and refusals with their HTTP status.

mod common;

use common::*;
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_hbone::client::HboneError;
use weft_hbone::server::{Limits, serve};

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

/// An upgrade's hand-over in small: two servers accept from one socket;
/// the first stops. Its open tunnel goes on, and new tunnels move to a new
/// connection (the GOAWAY) that the second server takes; none fails.
#[tokio::test]
async fn a_stopping_server_keeps_its_tunnels_and_sends_new_ones_to_its_successor() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    mesh.certs.fetch(&node).await.expect("server cert");
    let tls = Arc::new(
        server_config(
            mesh.certs.source(&node),
            SpiffeClientVerifier::new(mesh.bundle.clone(), TD),
        )
        .expect("tls"),
    );
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let hbone = socket.local_addr().expect("addr");
    let second = socket.try_clone().expect("the successor's descriptor");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        TcpListener::from_std(socket).expect("listener"),
        tls.clone(),
        Arc::new(Direct { deny: None }),
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let echo = echo_server().await;
    let pool = client(&mesh, &orders).await;
    let k = key(&orders, hbone, &node);
    let mut old = pool
        .connect(&k, mesh.certs.source(&orders), echo, HeaderMap::new())
        .await
        .expect("tunnel through the first server");

    tokio::spawn(serve(
        TcpListener::from_std(second).expect("listener"),
        tls,
        Arc::new(Direct { deny: None }),
        Limits::default(),
        std::future::pending(),
    ));
    stop.send(()).expect("stop the first server");
    let started = std::time::Instant::now();
    let mut new = Vec::new();
    while pool.connections_opened() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the pool never left the stopped server's connection"
        );
        new.push(
            pool.connect(&k, mesh.certs.source(&orders), echo, HeaderMap::new())
                .await
                .expect("no tunnel fails during the hand-over"),
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for t in new.iter_mut().chain([&mut old]) {
        t.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }
}
