//! The running waypoint: its certificate from the CA, the registry from the
//! config stream, HBONE on its own address (port 15008), and the L7 engine
//! behind it. Node proxies send it the traffic of the services that name
//! it (`istio.io/use-waypoint`), addressed to the service's VIP and port;
//! it routes each request and forwards it to an endpoint over HBONE with
//! its own identity.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_hbone::server::{Limits, OpenFuture, Upstream};
use weft_hbone::{Inbound, InboundHandler, Refusal};
use weft_state::MeshView;
use weft_xds::client::XdsClient;

use crate::engine::Engine;
use crate::fronts::setup::{WaypointError, WaypointOptions, core};
use crate::telemetry::metrics::Metrics;

/// A running waypoint.
pub struct Waypoint {
    /// Where it receives HBONE.
    pub hbone_addr: SocketAddr,
    /// Where its metrics are.
    pub metrics_addr: SocketAddr,
    /// Its request metrics.
    pub metrics: Metrics,
    tasks: Vec<JoinHandle<()>>,
    _xds: Arc<XdsClient>,
}

impl std::fmt::Debug for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waypoint")
            .field("hbone_addr", &self.hbone_addr)
            .finish_non_exhaustive()
    }
}

impl Waypoint {
    /// Stops listening and following the config stream.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a waypoint.
pub async fn start(options: WaypointOptions) -> Result<Waypoint, WaypointError> {
    let proxy = "waypoint";
    let mut core = core(&options, &[], "weft.dev/waypoint: \"true\"", false).await?;
    let (metrics_addr, served) = core.serve_metrics(options.metrics_addr).await?;
    let tls = server_config(
        core.certs.source(&core.me.identity),
        SpiffeClientVerifier::new(core.bundle.clone(), &options.trust_domain),
    )
    .map_err(|source| WaypointError::Tls { proxy, source })?;
    let me = core.me.clone();
    let (engine, metrics, xds) = (core.engine.clone(), core.metrics.clone(), core.xds.clone());
    let view = Arc::new(ArcSwap::from_pointee(MeshView::default()));
    let (task_view, node) = (view.clone(), options.node.clone());
    let jwks = crate::policy::jwks::Fetcher::new(&options.jwks_roots);
    let reconcile = tokio::spawn(async move {
        let mut redis = HashMap::new();
        loop {
            let (next, mut services) = core.refresh(&node, &mut redis, &jwks).await;
            // The plugins of the services this waypoint serves.
            let mine: Vec<&weft_core::l7::WasmPlugin> = services
                .policies
                .iter()
                .filter(|(name, _)| {
                    next.services
                        .get(*name)
                        .is_some_and(|s| s.waypoint == Some(core.me.ip))
                })
                .flat_map(|(_, p)| &p.wasm)
                .collect();
            services.plugins = core.plugins.load(mine).await;
            let previous = core.engine.current();
            core.engine.update(crate::configure::config_for(
                &next,
                &core.me,
                &services,
                Some(&previous),
            ));
            task_view.store(next);
            if core.changes.changed().await.is_err() {
                return;
            }
        }
    });
    let hbone_addr = SocketAddr::new(me.ip, weft_hbone::PORT);
    let listener = tokio::net::TcpListener::bind(hbone_addr)
        .await
        .map_err(|source| WaypointError::Listen {
            proxy,
            addr: hbone_addr,
            source,
        })?;
    let handler = Arc::new(WaypointInbound { engine, view });
    let hbone = tokio::spawn(weft_hbone::server::serve(
        listener,
        Arc::new(tls),
        handler,
        Limits::default(),
        std::future::pending(),
    ));
    tracing::info!(waypoint = %options.name, %hbone_addr, identity = %me.identity, "waypoint ready");
    Ok(Waypoint {
        hbone_addr,
        metrics_addr,
        metrics,
        tasks: vec![reconcile, hbone, served],
        _xds: xds,
    })
}

/// The caller as its node described it in the tunnel's `baggage`.
fn source_peer(request: &Inbound) -> weft_telemetry::labels::Peer {
    let baggage = request
        .headers
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    weft_telemetry::labels::peer_from_baggage(baggage, &request.peer.to_string())
}

/// HBONE into the waypoint: each tunnel is an HTTP connection for the
/// service its `:authority` (VIP and port) names.
struct WaypointInbound {
    engine: Arc<Engine>,
    view: Arc<ArcSwap<MeshView>>,
}

impl InboundHandler for WaypointInbound {
    fn open(&self, request: Inbound) -> OpenFuture {
        let service = self
            .view
            .load()
            .services_by_vip
            .get(&request.target.ip())
            .cloned();
        let engine = self.engine.clone();
        Box::pin(async move {
            let service = service.ok_or_else(|| {
                Refusal::BadRequest(format!(
                    "{} is not the address of a service this waypoint serves",
                    request.target
                ))
            })?;
            let target = format!("{service}:{}", request.target.port());
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let peer = request.peer.clone();
            let (source, from) = (request.peer.clone(), request.peer_addr);
            let caller = Arc::new(source_peer(&request));
            tokio::spawn(async move {
                let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(crate::engine::SourceIdentity(source.clone()));
                    req.extensions_mut().insert(crate::engine::PeerAddr(from));
                    req.extensions_mut()
                        .insert(crate::engine::SourcePeer(caller.clone()));
                    let (engine, target) = (engine.clone(), target.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            engine.handle_for(Some(&target), req).await,
                        )
                    }
                });
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(ours), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "waypoint connection ended");
                }
            });
            Ok(Box::new(theirs) as Box<dyn Upstream>)
        })
    }
}
