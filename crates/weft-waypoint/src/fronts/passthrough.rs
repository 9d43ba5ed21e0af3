//! Passthrough at a gateway. On a TLS passthrough listener (`protocol:
//! TLS`, `tls.mode: Passthrough`, with `TLSRoute`s) the gateway reads the
//! client's ClientHello without answering it, picks the route by its SNI
//! ([`select`], pure), picks an endpoint of the route's backend as HTTP
//! routes do, opens an HBONE tunnel to it with the gateway's identity, and
//! splices the connection — the ClientHello first — so the client's TLS
//! session ends at the backend: the gateway never holds the backend's key
//! and sees nothing past the ClientHello. A TCP listener (`protocol: TCP`,
//! with `TCPRoute`s) does the same without reading anything first.
//!
//! Bounded like the other listeners: the ClientHello must arrive within
//! the TLS handshake timeout and [`MAX_CLIENT_HELLO`] bytes; refusals
//! (`tls_handshake`, `tls_timeout`, `no_route`, `no_healthy_upstream`,
//! `upstream_connect`) are logged and counted in
//! `weft_gateway_connections_refused_total`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::engine::Engine;
use crate::engine::route::{PassRoute, pick_weighted};
use crate::fronts::hbone::HboneConnector;
use crate::telemetry::metrics::Metrics;
use weft_core::l7::Passthrough;

/// Largest ClientHello read before giving up on finding its end.
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// The route for a connection whose ClientHello named `sni`: the first
/// whose host names match (a route without host names matches any
/// connection, with or without SNI).
pub fn select<'a>(routes: &'a [PassRoute], sni: Option<&str>) -> Option<&'a PassRoute> {
    routes.iter().find(|r| {
        r.hosts.is_empty()
            || sni.is_some_and(|name| r.hosts.iter().any(|h| weft_core::l7::host_matches(h, name)))
    })
}

/// Reads a TLS ClientHello from `io` without answering it: the bytes read
/// (to be replayed to the backend) and the SNI it names, if any.
pub async fn client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a complete ClientHello".into());
        }
        read.extend_from_slice(&chunk[..n]);
        if read.len() > MAX_CLIENT_HELLO {
            return Err(format!(
                "no complete ClientHello in {MAX_CLIENT_HELLO} bytes"
            ));
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) => return Err("ClientHello larger than the TLS reader holds".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((read, sni));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

/// A passthrough listener, as its connections need it.
pub struct Listener {
    /// Its target (`gateway/<listener>`), which names its routes.
    pub target: String,
    /// TLS (by SNI) or TCP.
    pub kind: Passthrough,
    /// Tunnels with the gateway's identity.
    pub connector: HboneConnector,
}

/// Serves one connection accepted on passthrough listener `to`.
pub async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    engine: Arc<Engine>,
    to: Listener,
    metrics: Metrics,
) {
    let Listener {
        target,
        kind,
        connector,
    } = to;
    let refuse = |reason: &'static str, why: String| {
        metrics.connection_refused(&target, reason);
        tracing::info!(%peer, listener = %target, "passthrough connection refused: {why}");
    };
    let (hello, sni) = match kind {
        // Served by `fronts/east_west.rs`, never here.
        Passthrough::EastWest => return refuse("no_route", "not a passthrough listener".into()),
        Passthrough::Tcp => (Vec::new(), None),
        Passthrough::Tls => {
            let hello = tokio::time::timeout(
                crate::fronts::admission::HANDSHAKE_TIMEOUT,
                client_hello(&mut tcp),
            )
            .await;
            match hello {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => return refuse("tls_handshake", e),
                Err(_) => {
                    return refuse(
                        "tls_timeout",
                        format!(
                            "no ClientHello within {:?}",
                            crate::fronts::admission::HANDSHAKE_TIMEOUT
                        ),
                    );
                }
            }
        }
    };
    let config = engine.current();
    let routes = config
        .passthrough
        .get(&target)
        .map_or(&[][..], Vec::as_slice);
    let Some(route) = select(routes, sni.as_deref()) else {
        let why = match kind {
            Passthrough::Tls => format!("no TLSRoute for SNI {:?}", sni.as_deref().unwrap_or("")),
            Passthrough::Tcp | Passthrough::EastWest => "no TCPRoute".to_owned(),
        };
        return refuse("no_route", why);
    };
    let Some(cluster) = pick_weighted(&route.backends, fastrand::f64())
        .and_then(|b| config.clusters.get(&b.service))
    else {
        return refuse(
            "no_healthy_upstream",
            format!("{} has no backend", route.name),
        );
    };
    let Some(index) = cluster
        .balancer
        .pick(fastrand::usize(..), fastrand::usize(..), None)
    else {
        return refuse(
            "no_healthy_upstream",
            format!("{} has no endpoint", cluster.name),
        );
    };
    let endpoint = cluster.balancer.endpoints()[index].addr;
    let _active = cluster.balancer.start(index);
    let mut tunnel = match connector.tunnel(endpoint).await {
        Ok(t) => t,
        Err(e) => {
            cluster
                .balancer
                .report(index, crate::engine::retry::Outcome::ConnectFailure);
            return refuse("upstream_connect", format!("{endpoint}: {e}"));
        }
    };
    if let Err(e) = tunnel.write_all(&hello).await {
        return refuse("upstream_connect", format!("{endpoint}: {e}"));
    }
    let copied = tunnel
        .splice(&mut tcp, None)
        .await
        .map(|done| (done.sent, done.received));
    tracing::info!(
        %peer,
        listener = %target,
        route = %route.name,
        sni = sni.as_deref().unwrap_or("-"),
        upstream = %endpoint,
        sent = copied.as_ref().map_or(0, |c| c.0 + hello.len() as u64),
        received = copied.as_ref().map_or(0, |c| c.1),
        "passthrough connection closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str]) -> PassRoute {
        PassRoute {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            backends: Vec::new(),
        }
    }

    #[test]
    fn routes_are_chosen_by_sni() {
        let routes = [
            route("vault", &["vault.example.com"]),
            route("wild", &["*.example.com"]),
            route("any", &[]),
        ];
        let cases = [
            (Some("vault.example.com"), Some("vault")),
            (Some("VAULT.example.com"), Some("vault")),
            (Some("db.example.com"), Some("wild")),
            (Some("example.com"), Some("any")),
            (Some("other.org"), Some("any")),
            (None, Some("any")),
        ];
        for (sni, want) in cases {
            assert_eq!(
                select(&routes, sni).map(|r| r.name.as_str()),
                want,
                "{sni:?}"
            );
        }
        let strict = [route("vault", &["vault.example.com"])];
        assert!(
            select(&strict, None).is_none(),
            "no SNI, no host-named route"
        );
        assert!(select(&strict, Some("db.example.com")).is_none());
    }

    /// A real ClientHello (rustls's client) is read whole, its SNI found,
    /// and the bytes kept for the backend.
    #[tokio::test]
    async fn a_client_hello_is_read_without_answering() {
        let (mut client, mut gateway) = tokio::io::duplex(64 * 1024);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut tls = rustls::ClientConnection::new(
            Arc::new(config),
            "vault.example.com".try_into().expect("name"),
        )
        .expect("client");
        let mut hello = Vec::new();
        tls.write_tls(&mut hello).expect("hello");
        client.write_all(&hello).await.expect("write");
        let (read, sni) = client_hello(&mut gateway).await.expect("hello");
        assert_eq!(sni.as_deref(), Some("vault.example.com"));
        assert_eq!(read, hello, "every byte kept for the backend");
    }

    #[tokio::test]
    async fn hostile_openings_are_refused() {
        for (bytes, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                "not a TLS ClientHello",
            ),
            (
                &[0x16, 0x03, 0x01, 0x00][..],
                "closed before a complete ClientHello",
            ),
        ] {
            let (mut client, mut gateway) = tokio::io::duplex(1024);
            client.write_all(bytes).await.expect("write");
            drop(client);
            let err = client_hello(&mut gateway).await.expect_err("refused");
            assert!(err.contains(want), "{err}");
        }
    }
}
