//! The HBONE server: mTLS on 15008, HTTP/2, one `CONNECT` per tunnel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use weft_core::Identity;

use crate::stream::H2Stream;

/// A tunnel request that passed mTLS.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The identity the client's certificate proved.
    pub peer: Identity,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The address the client connected to (this proxy's listener).
    pub local_addr: SocketAddr,
    /// The workload address asked for (`:authority`), or where the
    /// service host name asked for resolved ([`InboundHandler::resolve`]).
    pub target: SocketAddr,
    /// The service asked for, when the `:authority` named one
    /// (`host:port`, as double HBONE does through an east-west gateway).
    pub service: Option<(String, u16)>,
    /// The request headers (`forwarded`, `baggage`, `traceparent`, …).
    pub headers: HeaderMap,
}

/// Why a tunnel is refused, and so its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: malformed, or a target this proxy does not serve.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: denied by policy.
    #[error("denied: {0}")]
    Denied(String),
    /// 503: the workload could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A byte stream to the workload a tunnel ends at.
pub trait Upstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Upstream for T {}

/// Boxed future of [`InboundHandler::open`].
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Upstream>, Refusal>> + Send>>;

/// Decides where a tunnel goes: policy checks, then the connection to the
/// workload (the node proxy implements this).
pub trait InboundHandler: Send + Sync + 'static {
    /// Opens the upstream for `request`, or refuses it.
    fn open(&self, request: Inbound) -> OpenFuture;

    /// Where a tunnel to service `host:port`, arriving at `local`, goes:
    /// the address [`InboundHandler::open`] then receives as the target,
    /// or why it cannot go anywhere. Without an answer of the handler's
    /// own, host names are refused (400).
    fn resolve(&self, host: &str, port: u16, local: SocketAddr) -> Result<SocketAddr, Refusal> {
        let _ = local;
        Err(Refusal::BadRequest(format!(
            "{host}:{port}: this proxy serves workload addresses (ip:port) only"
        )))
    }
}

/// Server limits: what a flood of idle or slow clients can take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// Connections still in their TLS handshake at once (each bounded by
    /// `handshake_timeout`); beyond it new ones are closed at once, so
    /// idle connections cannot take every slot.
    pub max_handshakes: usize,
    /// Connections from one source address in their TLS handshake at
    /// once: one host's flood of connections that never start TLS takes
    /// this many slots, and other callers keep the rest.
    pub max_handshakes_per_source: usize,
    /// Longest a client may take to finish the TLS handshake.
    pub handshake_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The server's default TLS handshake deadline: short, since a peer proxy
/// on a working network finishes in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type PendingMap = std::collections::HashMap<std::net::IpAddr, usize>;

/// Handshakes in progress per source address.
#[derive(Debug, Default)]
struct Pending(std::sync::Mutex<PendingMap>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for `ip` if it holds fewer than `max`.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PendingSlot> {
        let mut held = self.lock();
        let n = held.entry(ip).or_default();
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(PendingSlot(self.clone(), ip))
    }
}

/// One source's handshake place, given back when dropped.
struct PendingSlot(Arc<Pending>, std::net::IpAddr);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut held = self.0.lock();
        if let Some(n) = held.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}

/// Serves HBONE on `listener` until `shutdown` resolves (or the future is
/// dropped). Then every open connection is told to open no new tunnel
/// (HTTP/2 GOAWAY: the peer opens new ones elsewhere, such as a
/// replacing agent on the same socket) and its open tunnels go on.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<dyn InboundHandler>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let pending = Arc::new(Pending::default());
    // Dropped when this function returns or is dropped: tells every
    // connection to stop taking new streams.
    let (_serving, stopped) = tokio::sync::watch::channel(());
    let mut refused: u64 = 0;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (Some(source), Ok(slot), Ok(handshake)) = (
            pending.take(peer_addr.ip(), limits.max_handshakes_per_source),
            slots.clone().try_acquire_owned(),
            handshakes.clone().try_acquire_owned(),
        ) else {
            refused += 1;
            if refused == 1 || refused.is_multiple_of(1000) {
                tracing::warn!(
                    %peer_addr,
                    refused,
                    max_connections = limits.max_connections,
                    max_handshakes = limits.max_handshakes,
                    per_source = limits.max_handshakes_per_source,
                    "HBONE connection refused: too many connections, or unfinished TLS handshakes in all or from this source"
                );
            }
            continue;
        };
        let local_addr = tcp.local_addr().unwrap_or(peer_addr);
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let deadline = limits.handshake_timeout;
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let handshake_result = tokio::time::timeout(deadline, acceptor.accept(tcp)).await;
            drop((handshake, source));
            let tls = match handshake_result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // A TCP probe (readiness check) that never spoke TLS.
                    tracing::debug!(%peer_addr, "HBONE connection closed before the TLS handshake");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer_addr, error = %e, "HBONE TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer_addr, "HBONE TLS handshake timed out");
                    return;
                }
            };
            let peer = match weft_ca::tls::peer_identity(tls.get_ref().1.peer_certificates()) {
                Ok(id) => id,
                Err(e) => {
                    tracing::info!(%peer_addr, error = %e, "HBONE client has no usable identity");
                    return;
                }
            };
            serve_connection(tls, deadline, peer, handler, peer_addr, local_addr, stopped).await;
        });
    }
}

/// Serves one mTLS connection's HTTP/2 until the peer closes it, stops
/// answering pings, or (after `stopped`) its last tunnel ends. Each
/// CONNECT gets one task: its checks, its upstream, its splice.
async fn serve_connection<IO>(
    tls: IO,
    deadline: std::time::Duration,
    peer: Identity,
    handler: Arc<dyn InboundHandler>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    mut stopped: tokio::sync::watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = crate::conn::server_builder().handshake::<_, Bytes>(tls);
    let mut connection = match tokio::time::timeout(deadline, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%peer_addr, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer_addr, "HBONE HTTP/2 handshake timed out");
            return;
        }
    };
    let mut keepalive = std::pin::pin!(crate::conn::keepalive(connection.ping_pong()));
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            next = connection.accept() => next,
            _ = stopped.changed(), if !stopping => {
                // GOAWAY: no new tunnels here; the open ones go on, and
                // accept() ends once they have.
                stopping = true;
                connection.graceful_shutdown();
                continue;
            }
            () = &mut keepalive => return,
        };
        match next {
            Some(Ok((request, respond))) => {
                // The checks and the upstream's connect run boxed, so the
                // task that lives as long as the tunnel keeps only what
                // the splice needs (a few hundred bytes, not the request).
                tokio::spawn(tunnel(Box::pin(answer(
                    request,
                    respond,
                    handler.clone(),
                    peer.clone(),
                    peer_addr,
                    local_addr,
                ))));
            }
            Some(Err(e)) => {
                tracing::debug!(%peer_addr, error = %e, "HBONE connection ended");
                return;
            }
            None => return,
        }
    }
}

fn reply(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Parses `ip:port` (`[v6]:port` for IPv6); never a hostname.
pub fn parse_authority(authority: &str) -> Option<SocketAddr> {
    authority.parse().ok()
}

/// Parses a service `host:port` (a DNS name, lowercased, and a port
/// other than 0), as double HBONE names its target.
pub fn parse_service_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    if !port_digits(port) || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    weft_core::names::check_hostname(host).ok()?;
    Some((host.to_ascii_lowercase(), port))
}

fn port_digits(port: &str) -> bool {
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// A CONNECT that was answered 200: the stream, the workload's
/// connection, who asked and for what.
type Answered = (H2Stream, Box<dyn Upstream>, Identity, SocketAddr);

/// Splices an answered tunnel to its upstream until either side ends.
async fn tunnel(answer: Pin<Box<impl Future<Output = Option<Answered>>>>) {
    let Some((mut downstream, mut upstream, peer, target)) = answer.await else {
        return;
    };
    match crate::splice::splice(&mut upstream, &mut downstream, None).await {
        Ok(done) => {
            tracing::debug!(%peer, %target, sent = done.received, received = done.sent, "HBONE tunnel closed")
        }
        Err(e) => {
            tracing::debug!(%peer, %target, error = %e, "HBONE tunnel ended with an error");
            // End the stream cleanly so the client's side of the tunnel
            // finishes too, rather than waiting on a reset.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut downstream).await;
        }
    }
}

/// Checks one CONNECT, opens its upstream and answers it: 200 with the
/// stream to splice, or the refusal's status (and `None`).
async fn answer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: Arc<dyn InboundHandler>,
    peer: Identity,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
) -> Option<Answered> {
    let refuse = |mut respond: SendResponse<Bytes>, status| {
        let _ = respond.send_response(reply(status), true);
        None
    };
    if request.method() != Method::CONNECT {
        tracing::info!(%peer_addr, method = %request.method(), "HBONE request is not a CONNECT");
        return refuse(respond, StatusCode::BAD_REQUEST);
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let (target, service) = match parse_authority(authority) {
        Some(target) => (target, None),
        None => match parse_service_authority(authority) {
            Some((host, port)) => match handler.resolve(&host, port, local_addr) {
                Ok(target) => (target, Some((host, port))),
                Err(refusal) => {
                    tracing::info!(%peer_addr, %peer, %authority, reason = %refusal, "HBONE tunnel refused");
                    return refuse(respond, refusal.status());
                }
            },
            None => {
                tracing::info!(%peer_addr, uri = %request.uri(), "HBONE CONNECT authority is neither ip:port nor host:port");
                return refuse(respond, StatusCode::BAD_REQUEST);
            }
        },
    };
    let (parts, body) = request.into_parts();
    let inbound = Inbound {
        peer: peer.clone(),
        peer_addr,
        local_addr,
        target,
        service,
        headers: parts.headers,
    };
    let upstream = match handler.open(inbound).await {
        Ok(u) => u,
        Err(refusal) => {
            tracing::info!(%peer_addr, %peer, %target, reason = %refusal, "HBONE tunnel refused");
            return refuse(respond, refusal.status());
        }
    };
    match respond.send_response(reply(StatusCode::OK), false) {
        Ok(send) => Some((H2Stream::new(send, body), upstream, peer, target)),
        Err(e) => {
            tracing::info!(%peer, %target, error = %e, "HBONE tunnel ended before it was answered");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("10.0.0.1:8080"),
            Some("10.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_authority("[::1]:80"),
            Some("[::1]:80".parse().expect("addr"))
        );
        for bad in ["payments.shop:80", "10.0.0.1", "10.0.0.1:99999", ":80", ""] {
            assert_eq!(parse_authority(bad), None, "{bad}");
        }
    }

    #[test]
    fn service_authorities() {
        let ok = |a: &str, host: &str, port: u16| {
            assert_eq!(
                parse_service_authority(a),
                Some((host.to_owned(), port)),
                "{a}"
            );
        };
        ok(
            "reviews.shop.svc.cluster.local:9080",
            "reviews.shop.svc.cluster.local",
            9080,
        );
        ok("Reviews.Shop:80", "reviews.shop", 80);
        for bad in [
            "10.0.0.1:80",
            "reviews.shop",
            "reviews.shop:0",
            "reviews.shop:+80",
            "reviews.shop:99999",
            "re views:80",
            ":80",
            "[::1]:80",
            "",
        ] {
            assert_eq!(parse_service_authority(bad), None, "{bad}");
        }
    }

    #[test]
    fn refusal_statuses() {
        assert_eq!(
            Refusal::BadRequest(String::new()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Refusal::Denied(String::new()).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Refusal::Unreachable(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
