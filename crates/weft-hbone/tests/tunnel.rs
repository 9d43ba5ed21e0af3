//! HBONE over real sockets and real mTLS: bytes both ways, half-close,
//! pooling (one connection for many tunnels, a new one past 100 streams),
//! identity checks, and refusals with their HTTP status.

mod common;

use common::*;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_hbone::client::HboneError;

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
