//! Peering with the other clusters of the mesh: for every `RemoteCluster`
//! in force, one config stream to its control plane, over mTLS with this
//! control plane's own certificate (`spiffe://<td>/ns/weft-system/sa/weft-control`)
//! and accepting only the identity the `RemoteCluster` expects, under the
//! shared root. The stream is the proxies' delta xDS client
//! (`weft_xds::XdsClient`): it keeps what it holds while the remote is
//! unreachable, reconnects with backoff and resumes with its versions, so
//! only differences are sent again.
//!
//! Each update is turned into addresses ([`crate::imports::import`]) and
//! joined to this cluster's own ([`LiveConfig::import`]). A remote whose
//! stream has been down longer than its `staleAfter` keeps its last known
//! endpoints in use; `/debug/config-status` and the
//! `weft_remote_cluster_*` metrics say it is stale.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_ca::TrustBundle;
use weft_ca::tls::CertSource;
use weft_core::model::RemoteCluster;
use weft_xds::export::PEER_NODE_PREFIX;
use weft_xds::{ClientOptions, EXPORT_TYPE, Transport, XdsClient};

use crate::config::LiveConfig;
use crate::imports::{RemoteStatus, import, is_stale};

/// How often statuses and staleness are brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Labels of the per-remote metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The remote's cluster ID.
    pub cluster: String,
}

/// Metrics of peering, registered explicitly.
#[derive(Clone, Debug, Default)]
pub struct PeeringMetrics {
    /// 1 while the stream to a remote is up.
    pub connected: Family<ClusterLabels, Gauge>,
    /// 1 while a remote's endpoints in use are stale.
    pub stale: Family<ClusterLabels, Gauge>,
    /// A remote's endpoints in use.
    pub endpoints: Family<ClusterLabels, Gauge>,
    /// Updates received from a remote and applied.
    pub updates: Family<ClusterLabels, Counter>,
}

impl PeeringMetrics {
    /// Registers `weft_remote_cluster_*`.
    pub fn register(&self, registry: &mut Registry) {
        use weft_telemetry::names;
        registry.register(
            names::REMOTE_CLUSTER_CONNECTED,
            "Whether the config stream from a remote cluster's control plane is up",
            self.connected.clone(),
        );
        registry.register(
            names::REMOTE_CLUSTER_STALE,
            "Whether a remote cluster's endpoints in use are its last known ones from a stream down longer than its staleAfter",
            self.stale.clone(),
        );
        registry.register(
            names::REMOTE_CLUSTER_ENDPOINTS,
            "Endpoints of a remote cluster in use here",
            self.endpoints.clone(),
        );
        registry.register(
            names::REMOTE_CLUSTER_UPDATES,
            "Updates received from a remote cluster and applied",
            self.updates.clone(),
        );
    }
}

/// What this control plane proves to its peers, and the roots it checks
/// them against (the shared root).
#[derive(Clone)]
pub struct PeerTls {
    /// Its own certificate.
    pub cert: Arc<dyn CertSource>,
    /// The roots.
    pub bundle: TrustBundle,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// One stream to a remote.
struct Peer {
    remote: RemoteCluster,
    client: XdsClient,
    follower: tokio::task::JoinHandle<()>,
    /// When it last spoke.
    heard: Arc<Mutex<Option<Instant>>>,
    /// Whether its endpoints were reported stale at the last report.
    stale: bool,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Follows every `RemoteCluster` of `live`'s configuration in force, until
/// the task is aborted.
pub fn spawn(
    live: Arc<LiveConfig>,
    tls: PeerTls,
    metrics: PeeringMetrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sets = live.resources();
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            reconcile(&live, &tls, &metrics, &mut peers);
            report(&live, &metrics, &mut peers);
            tokio::select! {
                changed = sets.changed() => if changed.is_err() { break },
                _ = tick.tick() => {}
            }
        }
    })
}

/// Starts streams to new remotes, restarts changed ones, stops removed
/// ones (forgetting what they exported).
fn reconcile(
    live: &Arc<LiveConfig>,
    tls: &PeerTls,
    metrics: &PeeringMetrics,
    peers: &mut BTreeMap<String, Peer>,
) {
    let snapshot = live.snapshot.load();
    let wanted = &snapshot.remotes;
    let gone: Vec<String> = peers
        .iter()
        .filter(|(name, p)| wanted.get(*name) != Some(&p.remote))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        peers.remove(&name);
        let labels = ClusterLabels {
            cluster: name.clone(),
        };
        metrics.connected.remove(&labels);
        metrics.stale.remove(&labels);
        metrics.endpoints.remove(&labels);
        if !wanted.contains_key(&name) {
            tracing::info!(cluster = %name, "no longer peering with this cluster; its endpoints are removed");
            live.import(&name, None);
        }
    }
    for (name, remote) in wanted {
        if peers.contains_key(name) {
            continue;
        }
        match start(live, tls, metrics, remote, &snapshot.mesh.cluster) {
            Ok(peer) => {
                tracing::info!(cluster = %name, address = %remote.address, "peering with a remote cluster");
                peers.insert(name.clone(), peer);
            }
            Err(e) => {
                tracing::error!(cluster = %name, address = %remote.address, error = %e, "cannot peer with this cluster");
            }
        }
    }
}

fn start(
    live: &Arc<LiveConfig>,
    tls: &PeerTls,
    metrics: &PeeringMetrics,
    remote: &RemoteCluster,
    own_cluster: &str,
) -> Result<Peer, String> {
    let address: weft_ca::client::ControlAddr = remote.address.parse()?;
    let config = weft_ca::tls::client_config(
        Some(tls.cert.clone()),
        tls.bundle.clone(),
        vec![remote.identity.clone()],
    )
    .map_err(|e| e.to_string())?;
    let client = XdsClient::start(
        Transport::Tls(address, Arc::new(config)),
        ClientOptions {
            node_id: format!("{PEER_NODE_PREFIX}{own_cluster}"),
            types: vec![EXPORT_TYPE.to_owned()],
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            validator: weft_xds::decode_validator(),
        },
    );
    let heard = Arc::new(Mutex::new(None));
    let follower = tokio::spawn(follow(
        Arc::downgrade(live),
        remote.clone(),
        client.watch(),
        heard.clone(),
        metrics.clone(),
    ));
    Ok(Peer {
        remote: remote.clone(),
        client,
        follower,
        heard,
        stale: false,
    })
}

/// Imports every update the stream applies.
async fn follow(
    live: std::sync::Weak<LiveConfig>,
    remote: RemoteCluster,
    mut states: tokio::sync::watch::Receiver<Arc<weft_xds::ClientState>>,
    heard: Arc<Mutex<Option<Instant>>>,
    metrics: PeeringMetrics,
) {
    let labels = ClusterLabels {
        cluster: remote.name.clone(),
    };
    let mut applied = 0;
    while states.changed().await.is_ok() {
        let state = states.borrow_and_update().clone();
        if state.connected {
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        if state.acks == applied {
            continue;
        }
        applied = state.acks;
        let Some(live) = live.upgrade() else {
            return;
        };
        let empty = BTreeMap::new();
        let imported = import(&remote, state.resources.get(EXPORT_TYPE).unwrap_or(&empty));
        tracing::info!(
            cluster = %remote.name,
            services = imported.services.len(),
            endpoints = imported.endpoints(),
            "remote cluster's exports applied"
        );
        metrics
            .endpoints
            .get_or_create(&labels)
            .set(i64::try_from(imported.endpoints()).unwrap_or(i64::MAX));
        metrics.updates.get_or_create(&labels).inc();
        live.import(&remote.name, Some(Arc::new(imported)));
    }
}

/// Brings statuses and the connected and stale gauges up to date.
fn report(live: &LiveConfig, metrics: &PeeringMetrics, peers: &mut BTreeMap<String, Peer>) {
    let now = Instant::now();
    let mut statuses = Vec::with_capacity(peers.len());
    for (name, peer) in peers.iter_mut() {
        let state = peer.client.state();
        let mut heard = peer.heard.lock().unwrap_or_else(|p| p.into_inner());
        if state.connected {
            *heard = Some(now);
        }
        let stale = is_stale(state.connected, *heard, now, peer.remote.stale_after);
        if stale != peer.stale {
            peer.stale = stale;
            if stale {
                tracing::warn!(cluster = %name, address = %peer.remote.address, error = ?state.last_error, "remote cluster unreachable for longer than its staleAfter; its last known endpoints stay in use, reported stale");
            } else {
                tracing::info!(cluster = %name, "remote cluster reachable again; its endpoints are current");
            }
        }
        let labels = ClusterLabels {
            cluster: name.clone(),
        };
        metrics
            .connected
            .get_or_create(&labels)
            .set(i64::from(state.connected));
        metrics.stale.get_or_create(&labels).set(i64::from(stale));
        let resources = state.resources.get(EXPORT_TYPE);
        let count = |kind: &str| {
            resources.map_or(0, |r| {
                r.keys()
                    .filter(|n| n.split('/').nth(1) == Some(kind))
                    .count()
            })
        };
        let heard_at = heard.map(|t| {
            let ago = now.saturating_duration_since(t);
            weft_ca::manager::rfc3339(std::time::SystemTime::now() - ago)
        });
        statuses.push(RemoteStatus {
            cluster: name.clone(),
            address: peer.remote.address.clone(),
            connected: state.connected,
            stale,
            last_heard: heard_at,
            services: count("service"),
            endpoints: count("workload"),
            last_error: state.last_error.clone(),
            last_update: state.last_response.get(EXPORT_TYPE).copied(),
        });
    }
    live.set_remote_status(statuses);
}
