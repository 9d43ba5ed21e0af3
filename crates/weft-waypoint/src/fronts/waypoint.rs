//! The running waypoint: its certificate from the CA, the registry from the
//! config stream, HBONE on its own address (port 15008), and the L7 engine
//! behind it. Node proxies send it the traffic of the services that name
//! it (`istio.io/use-waypoint`), addressed to the service's VIP and port;
//! it routes each request and forwards it to an endpoint over HBONE with
//! its own identity.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use weft_admin::Routes;
use weft_ca::TrustBundle;
use weft_ca::authz::control_identity;
use weft_ca::client::token_cert_manager;
use weft_ca::tls::{SpiffeClientVerifier, client_config, server_config};
use weft_core::Identity;
use weft_hbone::server::{Limits, OpenFuture, Upstream};
use weft_hbone::{HbonePool, Inbound, InboundHandler, Refusal};
use weft_state::MeshView;
use weft_xds::client::{ClientOptions, Transport, XdsClient};

use crate::engine::{Config, Engine};
use crate::fronts::hbone::{HboneConnector, Peers};
use crate::telemetry::metrics::Metrics;

/// How long to wait for the waypoint's own workload to appear.
pub const REGISTRY_WAIT: Duration = Duration::from_secs(30);

/// How to run a waypoint.
#[derive(Debug, Clone)]
pub struct WaypointOptions {
    /// The waypoint's workload, `namespace/name`.
    pub name: String,
    /// The node it runs on (its bootstrap token is that node's).
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// The control plane's plaintext config stream, read only to find the
    /// proxy's own workload and identity.
    pub xds_addr: SocketAddr,
    /// The control plane's mTLS port: certificate service and, once the
    /// proxy holds its certificate, the config stream.
    pub ca_addr: SocketAddr,
    /// Roots to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// The node's bootstrap token.
    pub token: String,
    /// Prometheus metrics (`/metrics`).
    pub metrics_addr: SocketAddr,
    /// TCP connect timeout to endpoints.
    pub connect_timeout: Duration,
    /// Roots trusted, besides the system's, for fetching JWKS from
    /// issuers (`jwksUri`).
    pub jwks_roots: Vec<CertificateDer<'static>>,
    /// Gateways only: each listener's connection limits and deadlines
    /// (usually `ConnLimits::default()`).
    pub connections: crate::fronts::admission::ConnLimits,
}

/// Why a waypoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// Something in setup failed.
    #[error("waypoint: {0}")]
    Setup(String),
}

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

/// What waypoints and gateways share: the workload they run as (found in
/// the registry), its certificate, the config stream, and an engine that
/// forwards over HBONE with that identity.
pub(crate) struct Core {
    pub(crate) me: Arc<weft_state::WorkloadInfo>,
    pub(crate) bundle: TrustBundle,
    pub(crate) certs: weft_ca::CertManager,
    pub(crate) xds: Arc<XdsClient>,
    pub(crate) changes: tokio::sync::watch::Receiver<Arc<weft_xds::ClientState>>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) metrics: Metrics,
    pub(crate) peers: Peers,
    pub(crate) via: crate::fronts::hbone::Via,
    /// Opens HBONE tunnels with this proxy's identity (the engine's
    /// upstream, and a gateway's passthrough listeners).
    pub(crate) connector: HboneConnector,
}

/// Sets up [`Core`] for workload `options.name`, following the config
/// stream's `extra` types besides the registry's. `label` says what the
/// workload must be labelled, for the error when it does not appear.
pub(crate) async fn core(
    options: &WaypointOptions,
    extra: &[&str],
    label: &str,
    as_gateway: bool,
) -> Result<Core, WaypointError> {
    let setup = |e: &dyn std::fmt::Display| WaypointError::Setup(e.to_string());
    let bundle = TrustBundle::new(options.roots.clone()).map_err(|e| setup(&e))?;
    let certs = token_cert_manager(
        options.ca_addr,
        bundle.clone(),
        &options.trust_domain,
        options.token.clone(),
        None,
    )
    .map_err(|e| setup(&e))?;
    let client_options = |types: Vec<String>| ClientOptions {
        node_id: options.node.clone(),
        types,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(15),
        validator: weft_xds::decode_validator(),
    };
    // Its own workload (address and identity) from the registry on the
    // plaintext stream; everything else over mTLS with that identity.
    let bootstrap = XdsClient::start(
        Transport::Plaintext(options.xds_addr),
        client_options(vec![weft_xds::ADDRESS_TYPE.into()]),
    );
    let mut changes = bootstrap.watch();
    let me = tokio::time::timeout(REGISTRY_WAIT, async {
        loop {
            let view = MeshView::build(&changes.borrow_and_update(), &options.node);
            if let Some(w) = view.workload_named(&options.name.as_str().into()) {
                return Ok(w.clone());
            }
            if changes.changed().await.is_err() {
                return Err(());
            }
        }
    })
    .await
    .map_err(|_| {
        WaypointError::Setup(format!(
            "workload {} did not appear in the registry within {REGISTRY_WAIT:?}; declare it with the label {label}",
            options.name
        ))
    })?
    .map_err(|()| WaypointError::Setup("the config stream ended".into()))?;
    drop(bootstrap);
    certs.fetch(&me.identity).await.map_err(|e| setup(&e))?;
    let mut types = vec![
        weft_xds::ADDRESS_TYPE.into(),
        weft_xds::LISTENERS_TYPE.into(),
        weft_xds::MESH_TYPE.into(),
        weft_xds::L7_SERVICE_TYPE.into(),
    ];
    types.extend(extra.iter().map(|t| (*t).to_owned()));
    let control = control_identity(&options.trust_domain).map_err(|e| setup(&e))?;
    let tls = client_config(
        Some(certs.source(&me.identity)),
        bundle.clone(),
        vec![control],
    )
    .map_err(|e| setup(&e))?;
    let xds = Arc::new(XdsClient::start(
        Transport::Tls(options.ca_addr, Arc::new(tls)),
        client_options(types),
    ));
    let mut changes = xds.watch();
    let synced = tokio::time::timeout(REGISTRY_WAIT, changes.wait_for(|s| s.synced))
        .await
        .is_ok_and(|r| r.is_ok());
    if !synced {
        let why = changes.borrow().last_error.clone().unwrap_or_default();
        return Err(WaypointError::Setup(format!(
            "the config stream over mTLS at {} did not sync within {REGISTRY_WAIT:?} {why}",
            options.ca_addr
        )));
    }
    let metrics = Metrics::default();
    let peers: Peers = Arc::default();
    let via: crate::fronts::hbone::Via = Arc::default();
    let connector = HboneConnector::new(
        HbonePool::new(bundle.clone(), options.connect_timeout),
        me.identity.clone(),
        certs.source(&me.identity),
        peers.clone(),
    )
    .with_peer(&me.peer())
    .with_via(via.clone());
    let engine = Engine::with_upstream(
        Config::default(),
        metrics.clone(),
        crate::engine::Upstream::over(connector.clone()),
    );
    let engine = Arc::new(if as_gateway {
        engine.reporting_as_source(me.peer())
    } else {
        engine
    });
    Ok(Core {
        me,
        bundle,
        certs,
        xds,
        changes,
        engine,
        metrics,
        peers,
        via,
        connector,
    })
}

impl Core {
    /// What the registry says now, for building a configuration: the
    /// node's view (peers' identities refreshed for the HBONE connector)
    /// and the services' L7 policies, with Redis connections and fetched
    /// keys carried over.
    pub(crate) async fn refresh(
        &mut self,
        node: &str,
        redis: &mut HashMap<String, redis::aio::ConnectionManager>,
        jwks: &crate::policy::jwks::Fetcher,
    ) -> (Arc<MeshView>, crate::configure::Services) {
        let view = Arc::new(MeshView::build(&self.changes.borrow_and_update(), node));
        self.peers.store(Arc::new(
            view.workloads
                .values()
                .map(|w| (w.ip, w.identity.clone()))
                .collect::<HashMap<IpAddr, Identity>>(),
        ));
        self.via.store(Arc::new(
            view.services
                .values()
                .filter_map(|s| Some((s.vip?, s.waypoint?)))
                .collect(),
        ));
        self.follow_tracing();
        let mut services = services(&self.changes.borrow());
        connect_redis(&services, redis).await;
        services.redis = redis.clone();
        services.jwks = jwks.clone();
        (view, services)
    }

    /// Starts, changes or stops span export as the mesh's tracing settings
    /// say (a tracer is replaced only when its settings change).
    fn follow_tracing(&self) {
        use prost::Message;
        use weft_telemetry::trace::{ExportConfig, Tracer};
        let state = self.changes.borrow();
        let mesh = state
            .resources
            .get(weft_xds::MESH_TYPE)
            .and_then(|m| m.get("mesh"))
            .and_then(|held| {
                weft_xds::proto::weft::MeshConfig::decode(held.body.value.as_slice()).ok()
            });
        let (namespace, name) = (&self.me.name.namespace, &self.me.name.name);
        let wanted = mesh
            .filter(|m| !m.tracing_endpoint.is_empty())
            .map(|m| ExportConfig {
                endpoint: m.tracing_endpoint,
                http_path: (!m.tracing_http_path.is_empty()).then_some(m.tracing_http_path),
                sampling_ratio: f64::from(m.tracing_sampling_ppm) / 1_000_000.0,
                service_name: format!("{name}.{namespace}"),
            });
        let current = self.engine.tracer();
        if current.config() == wanted.as_ref() {
            return;
        }
        match wanted {
            Some(config) => {
                tracing::info!(endpoint = %config.endpoint, http = config.http_path.is_some(), ratio = config.sampling_ratio, "exporting spans");
                self.engine.set_tracer(Tracer::start(config));
            }
            None => self.engine.set_tracer(Tracer::disabled()),
        }
    }

    /// Serves Prometheus metrics (requests and certificate expiry).
    pub(crate) async fn serve_metrics(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, JoinHandle<()>), WaypointError> {
        let setup = |e: &dyn std::fmt::Display| WaypointError::Setup(e.to_string());
        let mut registry = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut registry);
        self.certs.register(&mut registry);
        let listener = weft_admin::bind(addr, "metrics")
            .await
            .map_err(|e| setup(&e))?;
        let bound = listener.local_addr().map_err(|e| setup(&e))?;
        let served = tokio::spawn(weft_admin::serve(
            listener,
            Routes::new().metrics(Arc::new(Mutex::new(registry))),
            std::future::pending(),
        ));
        Ok((bound, served))
    }
}

/// Starts a waypoint.
pub async fn start(options: WaypointOptions) -> Result<Waypoint, WaypointError> {
    let setup = |e: &dyn std::fmt::Display| WaypointError::Setup(e.to_string());
    let mut core = core(&options, &[], "weft.dev/waypoint: \"true\"", false).await?;
    let (metrics_addr, served) = core.serve_metrics(options.metrics_addr).await?;
    let tls = server_config(
        core.certs.source(&core.me.identity),
        SpiffeClientVerifier::new(core.bundle.clone(), &options.trust_domain),
    )
    .map_err(|e| setup(&e))?;
    let me = core.me.clone();
    let (engine, metrics, xds) = (core.engine.clone(), core.metrics.clone(), core.xds.clone());
    let view = Arc::new(ArcSwap::from_pointee(MeshView::default()));
    let (task_view, node) = (view.clone(), options.node.clone());
    let jwks = crate::policy::jwks::Fetcher::new(&options.jwks_roots);
    let reconcile = tokio::spawn(async move {
        let mut redis = HashMap::new();
        loop {
            let (next, services) = core.refresh(&node, &mut redis, &jwks).await;
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
        .map_err(|e| WaypointError::Setup(format!("cannot listen on {hbone_addr}: {e}")))?;
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

/// Opens a Redis connection for every global rate limit's URL not yet
/// connected (each attempt bounded; a failure is logged and tried again
/// at the next configuration change, the limit's failure mode applying
/// meanwhile).
async fn connect_redis(
    services: &crate::configure::Services,
    cache: &mut HashMap<String, redis::aio::ConnectionManager>,
) {
    let urls: Vec<String> = services
        .policies
        .values()
        .filter_map(|p| p.rate_limit.as_ref()?.redis.clone())
        .filter(|u| !cache.contains_key(u))
        .collect();
    for url in urls {
        let connect = async {
            redis::Client::open(url.as_str())?
                .get_connection_manager()
                .await
        };
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(conn)) => {
                tracing::info!(%url, "connected to redis for global rate limits");
                cache.insert(url, conn);
            }
            Ok(Err(e)) => {
                tracing::warn!(%url, error = %e, "cannot connect to redis; global rate limits use their failure mode")
            }
            Err(_) => {
                tracing::warn!(%url, "redis did not answer in 2s; global rate limits use their failure mode")
            }
        }
    }
}

/// The L7 policies and HTTP/2 ports in the config stream's `L7Service`
/// resources, by service (`namespace/hostname`). A policy that does not
/// decode is logged and skipped (the service gets the default route).
fn services(state: &weft_xds::ClientState) -> crate::configure::Services {
    use prost::Message;
    use weft_xds::proto::weft::Protocol;
    let mut out = crate::configure::Services::default();
    for held in state
        .resources
        .get(weft_xds::L7_SERVICE_TYPE)
        .into_iter()
        .flat_map(|m| m.values())
    {
        let Ok(s) = weft_xds::proto::weft::L7Service::decode(held.body.value.as_slice()) else {
            continue;
        };
        let Some(host) = s.hostnames.first() else {
            continue;
        };
        let key = weft_state::NamespacedName::new(&s.namespace, host);
        for p in &s.ports {
            if p.protocol == Protocol::Http2 as i32 || p.protocol == Protocol::Grpc as i32 {
                out.http2.insert(format!("{key}:{}", p.number));
            }
        }
        if s.policy_json.is_empty() {
            continue;
        }
        match serde_json::from_str(&s.policy_json) {
            Ok(policy) => {
                out.policies.insert(key, policy);
            }
            Err(e) => {
                tracing::warn!(service = %s.name, error = %e, "L7 policy not understood; default route used")
            }
        }
    }
    out
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
            let caller = source_peer(&request);
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
