//! The delta xDS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`).
//!
//! Per stream and type it tracks what the client holds (name → version):
//! the first request of a type starts from the client's
//! `initial_resource_versions`, so a reconnecting client receives only the
//! difference; every later push sends only changed resources and removals.
//! ACKs confirm; a NACK is logged with the client's reason, counted, and
//! the resources of that response are marked unknown so they are sent
//! again with the next change.
//!
//! What a stream may read depends on who opened it: resources that carry
//! secrets (gateway configurations with private keys) are filtered by
//! [`readable_by`] against the identity the client's certificate proved on
//! the mTLS port; a plaintext stream has none and never receives them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::delta::{diff, diff_names};
use crate::export::EXPORT_TYPE;
use crate::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use crate::resources::{
    GATEWAY_TYPE, Known, ResourceSet, Resources, TYPES, parse_version, readable_by,
};

/// Most resources in one response: larger pushes are split, so no stream
/// holds a huge message (or a huge encode buffer) and memory stays bounded
/// when many proxies (re)connect together.
pub const MAX_RESOURCES_PER_RESPONSE: usize = 2000;
/// Responses queued per stream before the session waits for the client.
const QUEUED_RESPONSES: usize = 4;
/// How many sessions may stream a push of several responses (an initial
/// sync) at once; the others wait their turn, which bounds the memory of
/// many proxies connecting together.
pub const CONCURRENT_LARGE_PUSHES: usize = 8;

/// Labels of per-type xDS metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The resource type URL.
    pub type_url: String,
}

/// Metrics of the xDS server, registered explicitly.
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    /// Responses sent.
    pub pushes: Family<TypeLabels, Counter>,
    /// Responses a client rejected.
    pub nacks: Family<TypeLabels, Counter>,
    /// Streams open now.
    pub connected: Gauge,
}

impl XdsMetrics {
    /// Registers the metrics under `weft_xds_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            weft_telemetry::names::XDS_PUSHES,
            "xDS responses sent to proxies",
            self.pushes.clone(),
        );
        registry.register(
            weft_telemetry::names::XDS_NACKS,
            "xDS responses proxies rejected (NACK)",
            self.nacks.clone(),
        );
        registry.register(
            weft_telemetry::names::XDS_CONNECTED_PROXIES,
            "Proxies with an open config stream",
            self.connected.clone(),
        );
    }
}

/// Serves the current [`ResourceSet`] to every subscriber.
#[derive(Clone)]
pub struct XdsServer {
    state: watch::Receiver<Arc<ResourceSet>>,
    metrics: XdsMetrics,
    closing: Option<watch::Receiver<bool>>,
    large_pushes: Arc<tokio::sync::Semaphore>,
}

impl XdsServer {
    /// A server publishing whatever `state` holds, pushing on every change.
    pub fn new(state: watch::Receiver<Arc<ResourceSet>>, metrics: XdsMetrics) -> Self {
        XdsServer {
            state,
            metrics,
            closing: None,
            large_pushes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LARGE_PUSHES)),
        }
    }

    /// Ends every open stream once `closing` turns true, so a graceful
    /// shutdown is not held open by long-lived subscriptions (proxies
    /// reconnect, to this process's successor).
    pub fn with_shutdown(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(16 << 20)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request
            .extensions()
            .get::<weft_ca::service::PeerInfo>()
            .and_then(|p| p.identity.clone());
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let session = Session {
            peer,
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            tx,
            subscriptions: HashMap::new(),
            node: String::from("unknown"),
            next_nonce: 0,
            large_pushes: self.large_pushes.clone(),
        };
        let closing = self.closing.clone();
        tokio::spawn(session.run(requests, closing));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What one client holds of one type.
enum Holds {
    /// Exactly this set's resources of the type: the usual case once a
    /// push went out (the set says what the client has; nothing is kept
    /// per name, and the next push looks only at the set's delta).
    Set(Arc<ResourceSet>),
    /// Name → version: a new subscription (empty, or the versions a
    /// resuming client reported), after a rejected response, and always
    /// for gateway configurations (a subscriber receives only those it
    /// may read).
    Names(Known),
}

/// One subscription of a stream.
struct Subscription {
    holds: Holds,
    /// Unacknowledged responses: the names they carried, forgotten on a
    /// NACK so they are offered again.
    pending: HashMap<String, Vec<Arc<str>>>,
}

impl Subscription {
    /// What the client holds as names and versions (built from the set
    /// when it held one exactly: a rejected response makes it differ).
    fn names(&mut self, type_url: &str) -> &mut Known {
        if let Holds::Set(set) = &self.holds {
            let known = set
                .of(type_url)
                .map(|r| r.iter().map(|(n, e)| (n.clone(), e.version)).collect())
                .unwrap_or_default();
            self.holds = Holds::Names(known);
        }
        match &mut self.holds {
            Holds::Names(known) => known,
            Holds::Set(_) => unreachable!("replaced just above"),
        }
    }
}

/// Whether subscribers of `type_url` see only part of it ([`Session::readable`]).
fn filtered(type_url: &str) -> bool {
    type_url == GATEWAY_TYPE || type_url == EXPORT_TYPE
}

struct Session {
    /// The identity the client's certificate proved, on the mTLS port.
    peer: Option<weft_core::Identity>,
    state: watch::Receiver<Arc<ResourceSet>>,
    metrics: XdsMetrics,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    subscriptions: HashMap<String, Subscription>,
    node: String,
    next_nonce: u64,
    large_pushes: Arc<tokio::sync::Semaphore>,
}

impl Session {
    /// Whether this stream may read resource `name` of `type_url`:
    /// gateway configurations only by their namespace's workloads,
    /// exported addresses only by the peers they are exported to.
    fn readable(&self, type_url: &str, name: &str, current: &ResourceSet) -> bool {
        match type_url {
            EXPORT_TYPE => current
                .peers
                .readable_by(name, &self.node, self.peer.as_ref()),
            _ => readable_by(type_url, name, self.peer.as_ref()),
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        closing: Option<watch::Receiver<bool>>,
    ) {
        self.metrics.connected.inc();
        let mut current = self.state.borrow_and_update().clone();
        let closing = async move {
            match closing {
                Some(mut rx) => {
                    let _ = rx.wait_for(|c| *c).await;
                }
                None => std::future::pending().await,
            }
        };
        let mut closing = std::pin::pin!(closing);
        loop {
            tokio::select! {
                () = &mut closing => break,
                message = requests.message() => match message {
                    Ok(Some(request)) => {
                        if self.handle(request, &current).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.node, %status, "config stream ended");
                        break;
                    }
                },
                changed = self.state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = self.state.borrow_and_update().clone();
                    let types: Vec<String> = self.subscriptions.keys().cloned().collect();
                    for type_url in types {
                        if self.push(&type_url, &current, false).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        self.metrics.connected.dec();
        tracing::info!(node = %self.node, "proxy disconnected from the config stream");
    }

    async fn handle(
        &mut self,
        request: DeltaDiscoveryRequest,
        current: &Arc<ResourceSet>,
    ) -> Result<(), ()> {
        if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
            if self.node != node.id {
                tracing::info!(node = %node.id, "proxy connected to the config stream");
            }
            self.node = node.id.clone();
        }
        let type_url = request.type_url;
        if !TYPES.contains(&type_url.as_str()) {
            tracing::warn!(node = %self.node, %type_url, "subscription to a type weft does not serve; ignored");
            return Ok(());
        }
        if !request.response_nonce.is_empty() {
            let Some(sub) = self.subscriptions.get_mut(&type_url) else {
                return Ok(());
            };
            let pending = sub.pending.remove(&request.response_nonce);
            if let Some(error) = request.error_detail {
                tracing::warn!(
                    node = %self.node,
                    %type_url,
                    nonce = %request.response_nonce,
                    reason = %error.message,
                    "proxy rejected configuration (NACK); it keeps its previous state"
                );
                self.metrics
                    .nacks
                    .get_or_create(&TypeLabels {
                        type_url: type_url.clone(),
                    })
                    .inc();
                // Forget what that response carried: the next push offers it again.
                let known = sub.names(&type_url);
                for name in pending.unwrap_or_default() {
                    known.remove(&name);
                }
            }
            return Ok(());
        }
        // A new subscription (or a re-subscription) of this type.
        if type_url == GATEWAY_TYPE && self.peer.is_none() {
            tracing::warn!(
                node = %self.node,
                "gateway configurations carry private keys and are served only over mTLS (15012) to workloads of the gateway's namespace; this plaintext stream gets none"
            );
        }
        let known: Known = request
            .initial_resource_versions
            .iter()
            .map(|(name, version)| (Arc::from(name.as_str()), parse_version(version)))
            .collect();
        let sub = Subscription {
            holds: Holds::Names(known),
            pending: HashMap::new(),
        };
        self.subscriptions.insert(type_url.clone(), sub);
        self.push(&type_url, current, true).await
    }

    /// Sends what `type_url`'s subscriber lacks; with `always`, also an
    /// empty response (the first answer of a subscription).
    async fn push(
        &mut self,
        type_url: &str,
        current: &Arc<ResourceSet>,
        always: bool,
    ) -> Result<(), ()> {
        let started = Instant::now();
        let empty = Default::default();
        let resources = current.of(type_url).unwrap_or(&empty);
        // Types a subscriber sees part of: diffed against what it may read,
        // so what it may no longer read is removed.
        let readable: Option<Resources> = filtered(type_url).then(|| {
            resources
                .iter()
                .filter(|(name, _)| self.readable(type_url, name, current))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect()
        });
        let Some(sub) = self.subscriptions.get_mut(type_url) else {
            return Ok(());
        };
        let (changed, removed) = match (&readable, &sub.holds) {
            (Some(readable), _) => diff(sub.names(type_url), readable),
            (None, Holds::Set(held)) if held.version == current.version => (Vec::new(), Vec::new()),
            (None, Holds::Set(held)) => {
                let before = held.of(type_url).unwrap_or(&empty);
                match current
                    .delta
                    .as_ref()
                    .filter(|d| d.from == held.version)
                    .and_then(|d| d.names.get(type_url))
                {
                    Some(names) => diff_names(before, resources, names),
                    None => diff(before, resources),
                }
            }
            (None, Holds::Names(known)) => diff(known, resources),
        };
        // Once this push is out the client holds exactly `current`, except
        // for what it may not read.
        let exact = readable.is_none();
        if changed.is_empty() && removed.is_empty() && !always {
            if exact {
                sub.holds = Holds::Set(current.clone());
            }
            return Ok(());
        }
        // Split into responses of at most MAX_RESOURCES_PER_RESPONSE;
        // removals ride with the last one.
        let chunks = changed.len().div_ceil(MAX_RESOURCES_PER_RESPONSE).max(1);
        let _turn = if chunks > 1 {
            Some(
                self.large_pushes
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ())?,
            )
        } else {
            None
        };
        let mut changed = changed.into_iter();
        let mut removed = Some(removed);
        let mut sent = (0usize, 0usize, 0usize);
        for chunk in 0..chunks {
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            let mut names = Vec::new();
            let mut out = Vec::new();
            for (name, entry) in changed.by_ref().take(MAX_RESOURCES_PER_RESPONSE) {
                if let Holds::Names(known) = &mut sub.holds
                    && !exact
                {
                    known.insert(name.clone(), entry.version);
                }
                names.push(name.clone());
                // Encoded once for every session.
                out.push(Resource::pre_encoded(entry.wire.clone()));
            }
            let removals = if chunk + 1 == chunks {
                removed.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            for name in &removals {
                if let Holds::Names(known) = &mut sub.holds
                    && !exact
                {
                    known.remove(name);
                }
                names.push(name.clone());
            }
            sub.pending.insert(nonce.clone(), names);
            let response = DeltaDiscoveryResponse {
                system_version_info: current.version.to_string(),
                resources: out,
                type_url: type_url.to_owned(),
                nonce,
                removed_resources: removals.iter().map(ToString::to_string).collect(),
            };
            sent.0 += response.resources.len();
            sent.1 += response.removed_resources.len();
            sent.2 += response.encoded_len();
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
        }
        if exact {
            sub.holds = Holds::Set(current.clone());
        }
        self.metrics
            .pushes
            .get_or_create(&TypeLabels {
                type_url: type_url.to_owned(),
            })
            .inc();
        tracing::info!(
            node = %self.node,
            %type_url,
            version = current.version,
            resources = sent.0,
            removed = sent.1,
            bytes = sent.2,
            responses = chunks,
            took = ?started.elapsed(),
            "pushed configuration"
        );
        Ok(())
    }
}
