//! Upstream over HBONE: a connector for hyper's client that opens an
//! HBONE tunnel (mTLS, HTTP/2 CONNECT, pooled) to the endpoint's node,
//! presenting the waypoint's identity and expecting the endpoint's — or,
//! for a handle standing for endpoints of another network
//! ([`crate::configure::remote`]), an outer tunnel to that network's
//! east-west gateway and the end-to-end tunnel inside it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderMap, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use weft_ca::tls::CertSource;
use weft_core::Identity;
use weft_hbone::nested::Far;
use weft_hbone::{HbonePool, PoolKey};

use crate::configure::remote::{RemoteRoutes, is_handle};

/// Who may be at an endpoint address: the identity its certificate must
/// carry. Swapped whole when the registry changes.
pub type Peers = Arc<ArcSwap<HashMap<IpAddr, Identity>>>;

/// Service addresses whose tunnels go to a waypoint instead: VIP → the
/// waypoint's address (an ingress gateway sending a service's traffic
/// through its waypoint, `CONNECT <VIP>:<port>` as node proxies do).
pub type Via = Arc<ArcSwap<HashMap<IpAddr, IpAddr>>>;

/// The routes of handles (endpoints of other networks). Swapped whole
/// when the registry changes.
pub type Remotes = Arc<ArcSwap<RemoteRoutes>>;

/// Opens HBONE tunnels for hyper's client.
#[derive(Clone)]
pub struct HboneConnector {
    pool: HbonePool,
    source: Identity,
    cert: Arc<dyn CertSource>,
    peers: Peers,
    via: Via,
    remotes: Remotes,
    /// Headers sent on every CONNECT (`baggage` describing this proxy).
    headers: HeaderMap,
}

impl std::fmt::Debug for HboneConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HboneConnector({})", self.source)
    }
}

impl HboneConnector {
    /// Tunnels from `source` (presenting `cert`) to endpoints in `peers`.
    pub fn new(pool: HbonePool, source: Identity, cert: Arc<dyn CertSource>, peers: Peers) -> Self {
        HboneConnector {
            pool,
            source,
            cert,
            peers,
            via: Arc::default(),
            remotes: Arc::default(),
            headers: HeaderMap::new(),
        }
    }

    /// Sends tunnels for the VIPs in `via` to their waypoints.
    pub fn with_via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    /// Reaches the handles in `remotes` through their east-west gateways.
    pub fn with_remotes(mut self, remotes: Remotes) -> Self {
        self.remotes = remotes;
        self
    }

    /// Describes this proxy to destination nodes (`baggage`, as node
    /// proxies describe their workloads), so their telemetry names it.
    pub fn with_peer(mut self, me: &weft_telemetry::labels::Peer) -> Self {
        if let Ok(v) = weft_telemetry::labels::baggage(me).parse() {
            self.headers.insert("baggage", v);
        }
        self
    }
}

impl HboneConnector {
    /// Opens a tunnel to endpoint `target` (through its service's waypoint
    /// when `target` is a VIP in `via`; through an east-west gateway when
    /// it is a handle), expecting the identity the registry gives that
    /// address.
    pub async fn tunnel(&self, target: SocketAddr) -> Result<Far, ConnectError> {
        if is_handle(target.ip()) {
            return self.through_gateway(target).await;
        }
        let dial = self
            .via
            .load()
            .get(&target.ip())
            .copied()
            .unwrap_or(target.ip());
        let expected = self
            .peers
            .load()
            .get(&dial)
            .cloned()
            .ok_or(ConnectError::Unknown(dial))?;
        let key = PoolKey {
            source: self.source.clone(),
            origin: 0,
            destination: SocketAddr::new(dial, weft_hbone::PORT),
            expected: vec![expected],
        };
        Ok(Far::Tunnel(
            self.pool
                .connect(&key, self.cert.clone(), target, self.headers.clone())
                .await?,
        ))
    }

    /// Double HBONE to the endpoints `handle` stands for: the outer tunnel
    /// proves the gateway's identity, the inner one theirs; both name the
    /// service's `host:port`.
    async fn through_gateway(&self, handle: SocketAddr) -> Result<Far, ConnectError> {
        let route = self
            .remotes
            .load()
            .get(&handle)
            .cloned()
            .ok_or(ConnectError::Unknown(handle.ip()))?;
        let key = PoolKey {
            source: self.source.clone(),
            origin: 0,
            destination: route.gateway,
            expected: vec![route.gateway_identity],
        };
        let outer = self
            .pool
            .connect_to(
                &key,
                self.cert.clone(),
                &route.authority,
                self.headers.clone(),
                None,
            )
            .await?;
        Ok(Far::Nested(
            weft_hbone::nested::open(
                outer,
                route.gateway,
                self.cert.clone(),
                self.pool.bundle().clone(),
                route.identities,
                &route.authority,
                self.headers.clone(),
            )
            .await?,
        ))
    }
}

/// Why no tunnel was opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URI does not name an `ip:port`.
    #[error("upstream {0} is not an ip:port")]
    Target(String),
    /// The address is not a known endpoint.
    #[error("no endpoint at {0} in the registry")]
    Unknown(IpAddr),
    /// The tunnel failed.
    #[error(transparent)]
    Hbone(#[from] weft_hbone::client::HboneError),
}

impl tower_service::Service<Uri> for HboneConnector {
    type Response = TunnelIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TunnelIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let target: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| ConnectError::Target(uri.to_string()))?;
            Ok(TunnelIo(TokioIo::new(this.tunnel(target).await?)))
        })
    }
}

/// A tunnel as hyper's client sees a connection.
pub struct TunnelIo(TokioIo<Far>);

impl Connection for TunnelIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
