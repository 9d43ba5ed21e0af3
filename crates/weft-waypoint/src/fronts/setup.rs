//! What every weft L7 proxy sets up before it serves (the waypoint and the
//! gateway alike): its own workload from the registry (read over TLS with
//! its token), its certificate from the CA, the config stream over mTLS
//! with that identity, the engine with its HBONE connector, metrics, and
//! the loop that turns each change of the stream into a mesh view and L7
//! policies. Everything goes to the control plane's one TLS port, by
//! address or (in a cluster) by host name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use weft_admin::Routes;
use weft_ca::TrustBundle;
use weft_ca::authz::control_identity;
use weft_ca::client::{ControlAddr, Token, token_cert_manager};
use weft_ca::tls::client_config;
use weft_core::Identity;
use weft_hbone::HbonePool;
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
    /// The node it runs on (the proxy's id on the config stream).
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// The control plane's TLS port: the config stream (with the token
    /// until the proxy holds its certificate) and the certificate service.
    pub ca_addr: ControlAddr,
    /// Roots to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// Its token: the node's bootstrap token, or on Kubernetes its pod's
    /// service-account token (a file, read again at every use).
    pub token: Token,
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
    /// Proxy-Wasm plugins' limits: memory per instance, CPU per callback
    /// (usually `Default::default()`).
    pub wasm: crate::extension::WasmLimits,
}

/// Why a waypoint or gateway did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaypointError {
    /// The Proxy-Wasm runtime could not be set up.
    #[error("{proxy}: the Proxy-Wasm runtime: {reason}")]
    Plugins {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        reason: String,
    },
    /// The trust roots given do not parse.
    #[error("{proxy}: the trust roots are not usable: {source}")]
    Roots {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        source: weft_ca::cert::CertError,
    },
    /// The certificate client could not be set up.
    #[error("{proxy}: certificate client: {source}")]
    CertClient {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        source: weft_ca::client::ClientError,
    },
    /// Its workload is not in the registry.
    #[error(
        "{proxy}: workload {name} did not appear in the registry within {waited:?}; declare it with the label {label}{why}"
    )]
    NotRegistered {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// `namespace/name`.
        name: String,
        /// The label it needs.
        label: String,
        /// How long it waited.
        waited: Duration,
        /// The config stream's last error, if any (`; ` and the error).
        why: String,
    },
    /// The config stream ended before the workload appeared.
    #[error("{proxy}: the config stream ended")]
    StreamEnded {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
    },
    /// No certificate for its identity.
    #[error("{proxy}: no certificate for {identity}: {source}")]
    Certificate {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// The identity.
        identity: Identity,
        /// Why.
        source: weft_ca::manager::CertManagerError,
    },
    /// The trust domain makes no control-plane identity.
    #[error("{proxy}: trust domain: {source}")]
    TrustDomain {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        source: weft_core::IdentityError,
    },
    /// TLS could not be configured.
    #[error("{proxy}: TLS: {source}")]
    Tls {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        source: weft_ca::tls::ConfigError,
    },
    /// The config stream over mTLS did not sync.
    #[error("{proxy}: the config stream over mTLS at {addr} did not sync within {waited:?} {why}")]
    NotSynced {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// The control plane's mTLS address.
        addr: ControlAddr,
        /// How long it waited.
        waited: Duration,
        /// The stream's last error, if any.
        why: String,
    },
    /// The metrics listener could not be bound.
    #[error("{proxy}: {source}")]
    Bind {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// Why.
        source: weft_admin::BindError,
    },
    /// A listener could not be opened.
    #[error("{proxy}: cannot listen on {addr}: {source}")]
    Listen {
        /// `waypoint` or `gateway`.
        proxy: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What waypoints and gateways share: the workload they run as (found in
/// the registry), its certificate, the config stream, and an engine that
/// forwards over HBONE with that identity.
pub(crate) struct Core {
    /// `waypoint` or `gateway`, for errors.
    pub(crate) proxy: &'static str,
    pub(crate) me: Arc<weft_state::WorkloadInfo>,
    pub(crate) bundle: TrustBundle,
    pub(crate) certs: weft_ca::CertManager,
    pub(crate) xds: Arc<XdsClient>,
    pub(crate) changes: tokio::sync::watch::Receiver<Arc<weft_xds::ClientState>>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) metrics: Metrics,
    pub(crate) peers: Peers,
    pub(crate) via: crate::fronts::hbone::Via,
    /// How the handles of other networks' endpoints are reached.
    pub(crate) remotes: crate::fronts::hbone::Remotes,
    /// Opens HBONE tunnels with this proxy's identity (the engine's
    /// upstream, and a gateway's passthrough listeners).
    pub(crate) connector: HboneConnector,
    /// Loads and keeps Proxy-Wasm plugins.
    pub(crate) plugins: Arc<crate::extension::Loader>,
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
    let proxy = if as_gateway { "gateway" } else { "waypoint" };
    let bundle = TrustBundle::new(options.roots.clone())
        .map_err(|source| WaypointError::Roots { proxy, source })?;
    let certs = token_cert_manager(
        options.ca_addr.clone(),
        bundle.clone(),
        &options.trust_domain,
        options.token.clone(),
        None,
    )
    .map_err(|source| WaypointError::CertClient { proxy, source })?;
    let client_options = |types: Vec<String>| ClientOptions {
        node_id: options.node.clone(),
        types,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(15),
        validator: weft_xds::decode_validator(),
    };
    // Its own workload (address and identity) from the registry, read
    // with its token; everything else over mTLS with that identity.
    let control = control_identity(&options.trust_domain)
        .map_err(|source| WaypointError::TrustDomain { proxy, source })?;
    let anonymous = client_config(None, bundle.clone(), vec![control.clone()])
        .map_err(|source| WaypointError::Tls { proxy, source })?;
    let bootstrap = XdsClient::start(
        Transport::TlsToken(
            options.ca_addr.clone(),
            Arc::new(anonymous),
            options.token.clone(),
        ),
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
    .map_err(|_| WaypointError::NotRegistered {
        proxy,
        name: options.name.clone(),
        label: label.to_owned(),
        waited: REGISTRY_WAIT,
        why: (bootstrap.watch().borrow().last_error.as_ref())
            .map(|e| format!("; the config stream: {e}"))
            .unwrap_or_default(),
    })?
    .map_err(|()| WaypointError::StreamEnded { proxy })?;
    drop(bootstrap);
    certs
        .fetch(&me.identity)
        .await
        .map_err(|source| WaypointError::Certificate {
            proxy,
            identity: me.identity.clone(),
            source,
        })?;
    let mut types = vec![
        weft_xds::ADDRESS_TYPE.into(),
        weft_xds::LISTENERS_TYPE.into(),
        weft_xds::MESH_TYPE.into(),
        weft_xds::L7_SERVICE_TYPE.into(),
    ];
    types.extend(extra.iter().map(|t| (*t).to_owned()));
    let tls = client_config(
        Some(certs.source(&me.identity)),
        bundle.clone(),
        vec![control],
    )
    .map_err(|source| WaypointError::Tls { proxy, source })?;
    let xds = Arc::new(XdsClient::start(
        Transport::Tls(options.ca_addr.clone(), Arc::new(tls)),
        client_options(types),
    ));
    let mut changes = xds.watch();
    let synced = tokio::time::timeout(REGISTRY_WAIT, changes.wait_for(|s| s.synced))
        .await
        .is_ok_and(|r| r.is_ok());
    if !synced {
        let why = changes.borrow().last_error.clone().unwrap_or_default();
        return Err(WaypointError::NotSynced {
            proxy,
            addr: options.ca_addr.clone(),
            waited: REGISTRY_WAIT,
            why,
        });
    }
    let metrics = Metrics::default();
    let peers: Peers = Arc::default();
    let via: crate::fronts::hbone::Via = Arc::default();
    let remotes: crate::fronts::hbone::Remotes = Arc::default();
    let connector = HboneConnector::new(
        HbonePool::new(bundle.clone(), options.connect_timeout),
        me.identity.clone(),
        certs.source(&me.identity),
        peers.clone(),
    )
    .with_peer(&me.peer())
    .with_via(via.clone())
    .with_remotes(remotes.clone());
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
    let plugins = crate::extension::Loader::new(
        options.wasm,
        crate::fetch::client_tls(&options.jwks_roots),
        Arc::new(crate::engine::plugins::EngineDispatch(Arc::downgrade(
            &engine,
        ))),
        metrics.extensions().clone(),
    )
    .map_err(|e| WaypointError::Plugins {
        proxy,
        reason: e.to_string(),
    })?;
    Ok(Core {
        plugins: Arc::new(plugins),
        proxy,
        me,
        bundle,
        certs,
        xds,
        changes,
        engine,
        metrics,
        peers,
        via,
        remotes,
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
        self.peers
            .store(Arc::new(crate::configure::by_address(&view, |w| {
                w.identity.clone()
            })));
        self.remotes
            .store(Arc::new(crate::configure::remote::routes(&view)));
        self.via.store(Arc::new(
            view.services
                .values()
                .filter_map(|s| Some((s.vip?, s.waypoint?)))
                .collect(),
        ));
        self.follow_tracing();
        let mut services = services(&self.changes.borrow());
        services.extension_metrics = self.metrics.extensions().clone();
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

    /// Serves Prometheus metrics (requests and certificate expiry), and
    /// `/healthz/ready` for a readiness probe: served once the proxy holds
    /// its certificate and its first configuration.
    pub(crate) async fn serve_metrics(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, JoinHandle<()>), WaypointError> {
        let proxy = self.proxy;
        let mut registry = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut registry);
        self.certs.register(&mut registry);
        let listener = weft_admin::bind(addr, "metrics")
            .await
            .map_err(|source| WaypointError::Bind { proxy, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| WaypointError::Listen {
                proxy,
                addr,
                source,
            })?;
        let served = tokio::spawn(weft_admin::serve(
            listener,
            Routes::new()
                .metrics(Arc::new(Mutex::new(registry)))
                .get("/healthz/ready", || weft_admin::Reply::text("ready\n")),
            std::future::pending(),
        ));
        Ok((bound, served))
    }
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
    if let Some(mesh) = state
        .resources
        .get(weft_xds::MESH_TYPE)
        .and_then(|m| m.get("mesh"))
        .and_then(|held| weft_xds::proto::weft::MeshConfig::decode(held.body.value.as_slice()).ok())
    {
        use weft_core::model::PathNormalization as M;
        use weft_xds::proto::weft::PathNormalization as P;
        out.path_normalization = match P::try_from(mesh.path_normalization) {
            Ok(P::None) => M::None,
            Ok(P::MergeSlashes) => M::MergeSlashes,
            Ok(P::DecodeAndMergeSlashes) => M::DecodeAndMergeSlashes,
            // BASE, and a value this proxy does not know: the safe default.
            Ok(P::Base) | Err(_) => M::Base,
        };
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use weft_core::model::PathNormalization;
    use weft_xds::client::Held;

    use super::services;

    fn with_mesh(path_normalization: i32) -> weft_xds::ClientState {
        let mesh = weft_xds::proto::weft::MeshConfig {
            path_normalization,
            ..Default::default()
        };
        let held = Held {
            version: String::new(),
            body: prost_types::Any {
                type_url: weft_xds::MESH_TYPE.to_owned(),
                value: mesh.encode_to_vec(),
            },
        };
        let mut state = weft_xds::ClientState::default();
        state.resources.insert(
            weft_xds::MESH_TYPE.to_owned(),
            BTreeMap::from([("mesh".to_owned(), held)]),
        );
        state
    }

    /// The mesh's path normalization reaches the engine's configuration;
    /// a value this proxy does not know falls back to the safe default.
    #[test]
    fn the_mesh_says_how_paths_are_normalized() {
        use weft_xds::proto::weft::PathNormalization as P;
        let cases = [
            (P::Base as i32, PathNormalization::Base),
            (P::None as i32, PathNormalization::None),
            (P::MergeSlashes as i32, PathNormalization::MergeSlashes),
            (
                P::DecodeAndMergeSlashes as i32,
                PathNormalization::DecodeAndMergeSlashes,
            ),
            (99, PathNormalization::Base),
        ];
        for (sent, want) in cases {
            assert_eq!(
                services(&with_mesh(sent)).path_normalization,
                want,
                "{sent}"
            );
        }
        assert_eq!(
            services(&weft_xds::ClientState::default()).path_normalization,
            PathNormalization::Base,
            "no Mesh resource: Istio's default"
        );
    }
}
