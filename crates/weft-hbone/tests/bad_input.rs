//! Hostile and broken peers: requests that are not CONNECT, authorities
//! that are not `ip:port`, certificates from another trust domain, and
//! floods of idle connections — each refused or bounded, while an
//! established tunnel keeps working and other callers keep connecting.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_ca::tls::client_config;
use weft_core::Identity;
use weft_hbone::server::Limits;

/// Sends one raw HTTP/2 request over weft mTLS and returns its status.
async fn raw(
    mesh: &Mesh,
    source: &Identity,
    server: &Identity,
    addr: std::net::SocketAddr,
    method: Method,
    uri: &str,
) -> StatusCode {
    mesh.certs.fetch(source).await.expect("cert");
    let config = client_config(
        Some(mesh.certs.source(source)),
        mesh.bundle.clone(),
        vec![server.clone()],
    )
    .expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("handshake");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri.parse().expect("uri");
    sender
        .send_request(request)
        .await
        .expect("response")
        .status()
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let hbone = hbone_server(&mesh, &node, None).await;
    let echo = echo_server().await;
    assert_eq!(
        raw(
            &mesh,
            &orders,
            &node,
            hbone,
            Method::GET,
            &format!("http://{echo}/")
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        raw(
            &mesh,
            &orders,
            &node,
            hbone,
            Method::CONNECT,
            "payments.shop:80"
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    // The same server still tunnels a good request.
    assert_eq!(
        raw(
            &mesh,
            &orders,
            &node,
            hbone,
            Method::CONNECT,
            &echo.to_string()
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn another_trust_domain_is_refused_and_others_are_served() {
    let mesh = Mesh::new();
    let node = id("node-b");
    let hbone = hbone_server(&mesh, &node, None).await;
    let echo = echo_server().await;
    // A client with a certificate from another mesh's CA and trust domain.
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign_ca = Arc::new(
        weft_ca::Authority::load_or_create(&weft_ca::CaOptions {
            dir: foreign_dir.path().join("ca"),
            trust_domain: "other.example".into(),
            workload_ttl: Duration::from_secs(600),
        })
        .expect("ca"),
    );
    let foreign_certs =
        weft_ca::CertManager::new(foreign_ca.clone(), weft_ca::ManagerOptions::default());
    let stranger = Identity::new("other.example", "shop", "orders").expect("id");
    foreign_certs.fetch(&stranger).await.expect("cert");
    // Even trusting both roots on the client side, the server refuses.
    let mut roots = mesh.bundle.roots();
    roots.extend(foreign_ca.trust_bundle().iter().cloned());
    let bundle = weft_ca::TrustBundle::new(roots).expect("bundle");
    let pool = weft_hbone::HbonePool::new(bundle, Duration::from_secs(2));
    let foreign_key = weft_hbone::PoolKey {
        source: stranger.clone(),
        origin: 0,
        destination: hbone,
        expected: vec![node.clone()],
    };
    let err = pool
        .connect(
            &foreign_key,
            foreign_certs.source(&stranger),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect_err("refused");
    assert!(
        !matches!(err, weft_hbone::client::HboneError::Refused { .. }),
        "refused at the handshake, not by status: {err}"
    );

    let orders = id("orders");
    let ok = client(&mesh, &orders).await;
    ok.connect(
        &key(&orders, hbone, &node),
        mesh.certs.source(&orders),
        echo,
        HeaderMap::new(),
    )
    .await
    .expect("a good client is still served");
}

/// 10,000 idle connections: at most `max_handshakes` wait in their TLS
/// handshake, the rest are closed at once, and an established tunnel keeps
/// flowing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_flood_is_bounded() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let limits = Limits {
        max_connections: 10_000,
        max_handshakes: 256,
        ..Limits::default()
    };
    let hbone = hbone_server_with(&mesh, &node, None, limits).await;
    let echo = echo_server().await;
    let pool = client(&mesh, &orders).await;
    let mut tunnel = pool
        .connect(
            &key(&orders, hbone, &node),
            mesh.certs.source(&orders),
            echo,
            HeaderMap::new(),
        )
        .await
        .expect("tunnel before the flood");

    let mut idle = Vec::new();
    for _ in 0..10_000 {
        match TcpStream::connect(hbone).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect during flood: {e}"),
        }
    }
    // Connections beyond the handshake limit were closed by the server:
    // reading them ends at once.
    let mut closed = 0;
    let start = Instant::now();
    for s in idle.iter_mut().rev().take(1000) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
        {
            closed += 1;
        }
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(
        closed > 900,
        "only {closed} of the last 1000 idle connections were closed"
    );

    // The established tunnel still works.
    tunnel.write_all(b"still here").await.expect("write");
    let mut buf = [0u8; 10];
    tunnel.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"still here");

    // Once the flood goes away, new clients are served.
    drop(idle);
    let start = Instant::now();
    loop {
        let fresh = client(&mesh, &orders).await;
        match fresh
            .connect(
                &key(&orders, hbone, &node),
                mesh.certs.source(&orders),
                echo,
                HeaderMap::new(),
            )
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(15),
                "not served after the flood: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 2,100 connections from one host that never start TLS (issue 15,
/// finding 9: they used to fill all 1,024 handshake slots for seconds):
/// that host holds at most `max_handshakes_per_source` of them, and new
/// tunnels from elsewhere keep being accepted during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hosts_handshake_flood_leaves_room_for_others() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let hbone = hbone_server_with(&mesh, &node, None, Limits::default()).await;
    let echo = echo_server().await;
    let mut flood = Vec::new();
    for _ in 0..2_100 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.9.1:0".parse().expect("addr"))
            .expect("bind the attacker's address");
        flood.push(socket.connect(hbone).await.expect("connect during flood"));
    }
    // Legitimate tunnels from another address, each on a new connection,
    // while the flood holds on.
    let mut served = 0;
    for _ in 0..40 {
        let pool = client(&mesh, &orders).await;
        if let Ok(mut t) = pool
            .connect(
                &key(&orders, hbone, &node),
                mesh.certs.source(&orders),
                echo,
                HeaderMap::new(),
            )
            .await
        {
            t.write_all(b"ok").await.expect("write");
            let mut buf = [0u8; 2];
            t.read_exact(&mut buf).await.expect("read");
            served += 1;
        }
    }
    assert!(
        served >= 38,
        "only {served} of 40 tunnels opened during the flood"
    );
    // The flood's connections beyond its share were closed at once.
    let mut closed = 0;
    for s in flood.iter_mut().rev().take(200) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 190,
        "only {closed} of the flood's last 200 were closed"
    );
}

/// A peer that finishes mutual TLS and then never sends the HTTP/2
/// preface is closed once the handshake deadline passes, rather than
/// holding a connection slot forever.
#[tokio::test]
async fn a_silent_peer_after_tls_is_closed_at_the_deadline() {
    let mesh = Mesh::new();
    let (node, orders) = (id("node-b"), id("orders"));
    let limits = Limits {
        handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let hbone = hbone_server_with(&mesh, &node, None, limits).await;
    mesh.certs.fetch(&orders).await.expect("cert");
    let config = client_config(
        Some(mesh.certs.source(&orders)),
        mesh.bundle.clone(),
        vec![node.clone()],
    )
    .expect("tls");
    let tcp = TcpStream::connect(hbone).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
        .await
        .expect("handshake");
    let started = Instant::now();
    // Whatever the server sends (its SETTINGS), it then closes.
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the silent peer was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the deadline: {:?}",
        started.elapsed()
    );
}
