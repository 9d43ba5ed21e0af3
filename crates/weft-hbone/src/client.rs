//! The HBONE client: a pool of mutual-TLS HTTP/2 connections. One
//! connection serves every tunnel with the same (source identity,
//! destination address, expected destination identities), up to
//! [`MAX_STREAMS_PER_CONNECTION`] at a time; idle connections are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_ca::TrustBundle;
use weft_ca::tls::{CertSource, client_config};
use weft_core::Identity;

use crate::stream::H2Stream;
use crate::{HANDSHAKE_TIMEOUT, MAX_STREAMS_PER_CONNECTION};

/// Idle pooled connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a pooled connection is shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity this side presents.
    pub source: Identity,
    /// Where its TCP connections start: 0 for this process's own network
    /// namespace, else an id of the [`Dial`] used (a pod's namespace), so
    /// connections from different places are never shared.
    pub origin: u64,
    /// The node or waypoint's HBONE address (`ip:15008`).
    pub destination: SocketAddr,
    /// Identities acceptable for the destination, sorted.
    pub expected: Vec<Identity>,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HboneError {
    /// TCP connect failed.
    #[error("connection to {addr} failed: {source}: is port {port} reachable?", port = addr.port())]
    Connect {
        /// The destination.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// TCP connect or TLS handshake took too long.
    #[error("connection to {0} timed out: is port {port} blocked?", port = .0.port())]
    Timeout(SocketAddr),
    /// The TLS handshake failed (wrong identity, untrusted chain, …).
    #[error("mTLS handshake with {addr} failed: {source}")]
    Tls {
        /// The destination.
        addr: SocketAddr,
        /// The reason (names both identities on a mismatch).
        source: std::io::Error,
    },
    /// The TLS config could not be built.
    #[error(transparent)]
    Config(#[from] weft_ca::tls::ConfigError),
    /// HTTP/2 failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    Http {
        /// The destination.
        addr: SocketAddr,
        /// The reason.
        source: h2::Error,
    },
    /// The target cannot be written as a CONNECT authority.
    #[error("{0} cannot be a CONNECT target")]
    InvalidTarget(String),
    /// The end-to-end tunnel inside one through an east-west gateway
    /// failed.
    #[error(
        "the end-to-end tunnel to {target} through the east-west gateway {via} failed: {reason}"
    )]
    Inner {
        /// The gateway.
        via: SocketAddr,
        /// The service asked for.
        target: String,
        /// What failed.
        reason: String,
        /// The status it was refused with, if it was.
        status: Option<StatusCode>,
    },
    /// The far side refused the tunnel.
    #[error("{addr} refused the tunnel to {target} with {status}")]
    Refused {
        /// The destination.
        addr: SocketAddr,
        /// The target (`ip:port`, or a service's `host:port`).
        target: String,
        /// 400, 401 or 503.
        status: StatusCode,
    },
}

impl HboneError {
    /// Whether trying another endpoint may help (connect-level failures).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, HboneError::Connect { .. } | HboneError::Timeout(_))
            || matches!(self, HboneError::Refused { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE)
            || matches!(self, HboneError::Inner { status, .. } if *status != Some(StatusCode::UNAUTHORIZED))
    }
}

/// Opens the TCP connection under a new HBONE connection somewhere other
/// than this process's network namespace (inside a captured pod's, so the
/// destination sees the pod's address).
pub trait Dial: Send + Sync {
    /// A TCP connection to `addr`.
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send + '_>>;
}

/// A pooled connection: its request handle, its stream count, and
/// whether its task has ended.
struct Conn {
    sender: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_used: Instant,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn usable(&self) -> bool {
        !self.is_closed() && self.active.load(Ordering::Relaxed) < MAX_STREAMS_PER_CONNECTION
    }
}

/// A connection's request handle and stream count, lent to one tunnel.
type Lent = (SendRequest<Bytes>, Arc<AtomicUsize>);

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct HbonePool {
    bundle: TrustBundle,
    connect_timeout: Duration,
    conns: Arc<Mutex<HashMap<PoolKey, Vec<Conn>>>>,
    opened: Arc<AtomicUsize>,
}

impl std::fmt::Debug for HbonePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbonePool")
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl HbonePool {
    /// A pool verifying destinations against `bundle`.
    pub fn new(bundle: TrustBundle, connect_timeout: Duration) -> Self {
        HbonePool {
            bundle,
            connect_timeout,
            conns: Arc::default(),
            opened: Arc::default(),
        }
    }

    /// The roots destinations are verified against.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// How many TLS connections this pool has opened so far.
    pub fn connections_opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the pooled connection whose stream counter is `active`.
    fn evict(&self, key: &PoolKey, active: &Arc<AtomicUsize>) {
        if let Some(list) = self.lock().get_mut(key) {
            list.retain(|c| !Arc::ptr_eq(&c.active, active));
        }
    }

    /// A pooled connection with room for one more stream, marked busy.
    fn reuse(&self, key: &PoolKey) -> Option<Lent> {
        let mut conns = self.lock();
        let now = Instant::now();
        let list = conns.get_mut(key)?;
        list.retain(|c| {
            let idle = c.active.load(Ordering::Relaxed) == 0
                && now.duration_since(c.last_used) > IDLE_TIMEOUT;
            !c.is_closed() && !idle
        });
        let conn = list.iter_mut().find(|c| c.usable())?;
        conn.active.fetch_add(1, Ordering::Relaxed);
        conn.last_used = now;
        Some((conn.sender.clone(), conn.active.clone()))
    }

    async fn open(
        &self,
        key: &PoolKey,
        cert: Arc<dyn CertSource>,
        dial: Option<&dyn Dial>,
    ) -> Result<Lent, HboneError> {
        let addr = key.destination;
        let connecting = async {
            match dial {
                Some(d) => d.dial(addr).await,
                None => TcpStream::connect(addr).await,
            }
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| HboneError::Timeout(addr))?
            .map_err(|source| HboneError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let config = client_config(Some(cert), self.bundle.clone(), key.expected.clone())?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(Arc::new(config))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp),
        )
        .await
        .map_err(|_| HboneError::Timeout(addr))?
        .map_err(|source| HboneError::Tls { addr, source })?;
        let (sender, mut connection) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            crate::conn::client_builder().handshake::<_, Bytes>(tls),
        )
        .await
        .map_err(|_| HboneError::Timeout(addr))?
        .map_err(|source| HboneError::Http { addr, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            let keepalive = crate::conn::keepalive(connection.ping_pong());
            tokio::select! {
                result = &mut connection => if let Err(e) = result {
                    tracing::debug!(%addr, error = %e, "HBONE client connection ended");
                },
                () = keepalive => {}
            }
            ended.store(true, Ordering::Relaxed);
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        let active = Arc::new(AtomicUsize::new(1));
        self.lock().entry(key.clone()).or_default().push(Conn {
            sender: sender.clone(),
            active: active.clone(),
            closed,
            last_used: Instant::now(),
        });
        Ok((sender, active))
    }

    /// Opens a tunnel to `target` through `key.destination`, presenting
    /// `cert` (the source identity's) and sending `headers` with the CONNECT.
    pub async fn connect(
        &self,
        key: &PoolKey,
        cert: Arc<dyn CertSource>,
        target: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Tunnel, HboneError> {
        self.connect_from(key, cert, target, headers, None).await
    }

    /// As [`HbonePool::connect`], a new connection's TCP opened by `dial`
    /// when given (`key.origin` names where).
    pub async fn connect_from(
        &self,
        key: &PoolKey,
        cert: Arc<dyn CertSource>,
        target: SocketAddr,
        headers: HeaderMap,
        dial: Option<&dyn Dial>,
    ) -> Result<Tunnel, HboneError> {
        self.connect_to(key, cert, &target.to_string(), headers, dial)
            .await
    }

    /// As [`HbonePool::connect_from`], to `target` written as the CONNECT's
    /// `:authority`: a workload's `ip:port`, or a service's `host:port`
    /// (what an east-west gateway is asked for, see `nested.rs`).
    pub async fn connect_to(
        &self,
        key: &PoolKey,
        cert: Arc<dyn CertSource>,
        target: &str,
        headers: HeaderMap,
        dial: Option<&dyn Dial>,
    ) -> Result<Tunnel, HboneError> {
        let addr = key.destination;
        let uri: http::Uri = target
            .parse()
            .map_err(|_| HboneError::InvalidTarget(target.to_owned()))?;
        let request = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::CONNECT;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            request
        };
        // A pooled connection the peer is closing (GOAWAY: a node agent
        // draining after an upgrade) or that went quiet is forgotten, and
        // the tunnel asked for once on a new connection (none of its bytes
        // has been sent yet).
        let reused = match self.reuse(key) {
            Some(conn) => match self.attempt(key, conn, request(), addr).await {
                Ok(done) => Some(done),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "pooled HBONE connection unusable; opening a new one");
                    None
                }
            },
            None => None,
        };
        let ((response, send), guard) = match reused {
            Some(done) => done,
            None => {
                let conn = self.open(key, cert, dial).await?;
                self.attempt(key, conn, request(), addr).await?
            }
        };
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                addr,
                target: target.to_owned(),
                status: response.status(),
            });
        }
        Ok(Tunnel {
            io: H2Stream::new(send, response.into_body()),
            _guard: guard,
        })
    }
}

impl HbonePool {
    /// Sends one CONNECT on a pooled connection, waiting at most the
    /// connect timeout for its answer (a connection whose peer vanished
    /// never answers); a connection that fails is forgotten.
    async fn attempt(
        &self,
        key: &PoolKey,
        (sender, active): Lent,
        request: Request<()>,
        addr: SocketAddr,
    ) -> Result<(Answered, ActiveGuard), HboneError> {
        let guard = ActiveGuard(active);
        let send = async {
            let mut sender = sender.ready().await?;
            let (response, stream) = sender.send_request(request, false)?;
            Ok::<_, h2::Error>((response.await?, stream))
        };
        let sent = match tokio::time::timeout(self.connect_timeout, send).await {
            Ok(sent) => sent.map_err(|source| HboneError::Http { addr, source }),
            Err(_) => Err(HboneError::Timeout(addr)),
        };
        match sent {
            Ok(answered) => Ok((answered, guard)),
            Err(e) => {
                self.evict(key, &guard.0);
                Err(e)
            }
        }
    }
}

/// The far side's answer to a CONNECT, and the stream's sending half.
type Answered = (http::Response<h2::RecvStream>, h2::SendStream<Bytes>);

/// Frees the stream slot of a pooled connection when a tunnel ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open tunnel: bytes in and out of the far workload.
pub struct Tunnel {
    io: H2Stream,
    _guard: ActiveGuard,
}

impl Tunnel {
    /// Splices `plain` (a caller's connection) to this tunnel both ways
    /// without copying on the tunnel's side; with `grace`, at most that
    /// long after the far side ended (see [`crate::splice`]).
    pub async fn splice<P>(
        &mut self,
        plain: &mut P,
        grace: Option<Duration>,
    ) -> std::io::Result<crate::splice::Spliced>
    where
        P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        crate::splice::splice(plain, &mut self.io, grace).await
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
