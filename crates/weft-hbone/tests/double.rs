//! Double HBONE over real sockets: a caller reaches a service's endpoint
//! through a relay standing for an east-west gateway. The relay sees the
//! caller's identity and the service asked for, never the payload (its
//! bytes are the inner TLS session's); the endpoint's proxy sees the
//! caller's own identity end to end; a wrong endpoint identity fails the
//! inner handshake.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_core::Identity;
use weft_hbone::server::{Limits, OpenFuture, Upstream, serve};
use weft_hbone::{Inbound, InboundHandler, Refusal};

const SERVICE: &str = "reviews.shop.svc.cluster.local:9080";

/// What a server's handler saw: (peer identity, service asked for).
type Seen = Arc<Mutex<Vec<(Identity, Option<(String, u16)>)>>>;

/// Sends a service's tunnels to `to` as they are (raw TCP), counting the
/// bytes that pass and keeping a copy of them.
struct Relay {
    to: SocketAddr,
    seen: Seen,
    copied: Arc<Mutex<Vec<u8>>>,
}

impl InboundHandler for Relay {
    fn resolve(&self, host: &str, port: u16, _local: SocketAddr) -> Result<SocketAddr, Refusal> {
        if format!("{host}:{port}") == SERVICE {
            Ok(self.to)
        } else {
            Err(Refusal::BadRequest(format!(
                "no service {host}:{port} here"
            )))
        }
    }

    fn open(&self, request: Inbound) -> OpenFuture {
        self.seen
            .lock()
            .expect("lock")
            .push((request.peer.clone(), request.service.clone()));
        let copied = self.copied.clone();
        Box::pin(async move {
            let upstream = TcpStream::connect(request.target)
                .await
                .map_err(|e| Refusal::Unreachable(e.to_string()))?;
            Ok(Box::new(Tap {
                inner: upstream,
                copied,
            }) as Box<dyn Upstream>)
        })
    }
}

/// A stream that keeps a copy of what is written to it.
struct Tap {
    inner: TcpStream,
    copied: Arc<Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = &mut *self;
        let written = std::pin::Pin::new(&mut me.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            me.copied
                .lock()
                .expect("lock")
                .extend_from_slice(&buf[..*n]);
        }
        written
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Delivers a service's tunnels to `app`, recording who asked.
struct Endpoint {
    app: SocketAddr,
    seen: Seen,
}

impl InboundHandler for Endpoint {
    fn resolve(&self, _host: &str, _port: u16, _local: SocketAddr) -> Result<SocketAddr, Refusal> {
        Ok(self.app)
    }

    fn open(&self, request: Inbound) -> OpenFuture {
        self.seen
            .lock()
            .expect("lock")
            .push((request.peer.clone(), request.service.clone()));
        Box::pin(async move {
            TcpStream::connect(request.target)
                .await
                .map(|s| Box::new(s) as Box<dyn Upstream>)
                .map_err(|e| Refusal::Unreachable(e.to_string()))
        })
    }
}

async fn server(mesh: &Mesh, identity: &Identity, handler: Arc<dyn InboundHandler>) -> SocketAddr {
    mesh.certs.fetch(identity).await.expect("cert");
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
        handler,
        Limits::default(),
        std::future::pending(),
    ));
    addr
}

#[tokio::test]
async fn an_end_to_end_tunnel_crosses_a_gateway_that_cannot_read_it() {
    let mesh = Mesh::new();
    let (frontend, reviews, gateway) = (id("frontend"), id("reviews"), id("east-west"));
    let app = echo_server().await;
    let endpoint_seen = Seen::default();
    let endpoint = server(
        &mesh,
        &reviews,
        Arc::new(Endpoint {
            app,
            seen: endpoint_seen.clone(),
        }),
    )
    .await;
    let (relay_seen, copied) = (Seen::default(), Arc::new(Mutex::new(Vec::new())));
    let relay = server(
        &mesh,
        &gateway,
        Arc::new(Relay {
            to: endpoint,
            seen: relay_seen.clone(),
            copied: copied.clone(),
        }),
    )
    .await;
    let pool = client(&mesh, &frontend).await;

    let outer = pool
        .connect_to(
            &key(&frontend, relay, &gateway),
            mesh.certs.source(&frontend),
            SERVICE,
            HeaderMap::new(),
            None,
        )
        .await
        .expect("outer tunnel");
    let mut inner = weft_hbone::nested::open(
        outer,
        relay,
        mesh.certs.source(&frontend),
        mesh.bundle.clone(),
        vec![reviews.clone()],
        SERVICE,
        HeaderMap::new(),
    )
    .await
    .expect("inner tunnel");
    let secret = b"the payload only the endpoint may read";
    inner.write_all(secret).await.expect("write");
    inner.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    inner.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, secret);

    let service = Some(("reviews.shop.svc.cluster.local".to_owned(), 9080));
    // The gateway saw who connected and where to …
    assert_eq!(
        *relay_seen.lock().expect("lock"),
        [(frontend.clone(), service.clone())]
    );
    // … the endpoint saw the caller itself (end-to-end mTLS) …
    assert_eq!(
        *endpoint_seen.lock().expect("lock"),
        [(frontend.clone(), service)]
    );
    // … and what the gateway forwarded does not contain the payload.
    let copied = copied.lock().expect("lock").clone();
    assert!(
        copied.len() > secret.len(),
        "the inner session passed the relay"
    );
    assert!(
        !copied.windows(secret.len()).any(|w| w == secret),
        "the gateway saw the payload in clear"
    );

    // The inner session checks the endpoint's identity, not the gateway's.
    let outer = pool
        .connect_to(
            &key(&frontend, relay, &gateway),
            mesh.certs.source(&frontend),
            SERVICE,
            HeaderMap::new(),
            None,
        )
        .await
        .expect("outer tunnel");
    let err = weft_hbone::nested::open(
        outer,
        relay,
        mesh.certs.source(&frontend),
        mesh.bundle.clone(),
        vec![id("ratings")],
        SERVICE,
        HeaderMap::new(),
    )
    .await
    .expect_err("wrong endpoint identity");
    assert!(err.to_string().contains("mTLS handshake"), "{err}");

    // A service the gateway does not serve is refused before any byte flows.
    let err = pool
        .connect_to(
            &key(&frontend, relay, &gateway),
            mesh.certs.source(&frontend),
            "ledger.shop.svc.cluster.local:9080",
            HeaderMap::new(),
            None,
        )
        .await
        .expect_err("unknown service");
    assert!(err.to_string().contains("400"), "{err}");
}
