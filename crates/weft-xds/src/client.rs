//! The delta xDS client every proxy runs. It subscribes to its types,
//! validates each response before applying it (NACKing what it cannot use),
//! and publishes the resulting state. It keeps its last good state
//! indefinitely when the control plane goes away, reconnects with backoff
//! and jitter, and resumes with `initial_resource_versions` so only the
//! difference is sent again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};
use weft_ca::client::{ControlAddr, Token};

use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};

pub use crate::state::{ClientState, Held, Validator};

/// How to reach the control plane.
#[derive(Clone)]
pub enum Transport {
    /// Plaintext gRPC (15010, loopback only).
    Plaintext(SocketAddr),
    /// gRPC over weft mTLS (15012), proven by the client certificate of
    /// `config` (if any).
    Tls(ControlAddr, Arc<rustls::ClientConfig>),
    /// gRPC over TLS (15012) with a bearer token on the stream (a
    /// bootstrap or service-account token), as ztunnel authenticates: how
    /// a proxy finds its own workload before it holds a certificate.
    TlsToken(ControlAddr, Arc<rustls::ClientConfig>, Token),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plaintext(a) => write!(f, "plaintext {a}"),
            Transport::Tls(a, _) => write!(f, "mTLS {a}"),
            Transport::TlsToken(a, _, _) => write!(f, "TLS with a token {a}"),
        }
    }
}

impl Transport {
    fn channel(&self) -> Result<Channel, String> {
        let (address, config) = match self {
            Transport::Plaintext(a) => {
                return Ok(endpoint(&a.to_string())?.connect_lazy());
            }
            Transport::Tls(a, config) | Transport::TlsToken(a, config, _) => (a, config),
        };
        Ok(weft_ca::client::tls_channel(
            endpoint(&address.to_string())?,
            address.clone(),
            config.clone(),
        ))
    }

    fn token(&self) -> Option<&Token> {
        match self {
            Transport::TlsToken(_, _, t) => Some(t),
            _ => None,
        }
    }
}

fn endpoint(address: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// Settings of a client.
#[derive(Clone)]
pub struct ClientOptions {
    /// The proxy's id, shown in the control plane's logs.
    pub node_id: String,
    /// Type URLs to subscribe to.
    pub types: Vec<String>,
    /// First reconnect delay.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Checks resources before they are applied.
    pub validator: Validator,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("node_id", &self.node_id)
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

/// A running client: read its state, or stop it.
#[derive(Debug)]
pub struct XdsClient {
    state: watch::Receiver<Arc<ClientState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsClient {
    /// Starts subscribing over `transport`.
    pub fn start(transport: Transport, options: ClientOptions) -> Self {
        let (tx, rx) = watch::channel(Arc::new(ClientState::default()));
        let task = tokio::spawn(run(transport, options, tx));
        XdsClient { state: rx, task }
    }

    /// As [`XdsClient::start`], keeping what it applies in `file` (0600,
    /// written atomically after every change) and starting from what the
    /// file holds, each resource checked again by the validator: a proxy
    /// restarted while the control plane is unreachable serves its last
    /// good configuration, and resumes with its versions when it returns.
    pub fn start_kept(transport: Transport, options: ClientOptions, file: PathBuf) -> Self {
        let initial = crate::kept::load(&file, &options.validator);
        if !initial.resources.is_empty() {
            tracing::info!(file = %file.display(), resources = initial.resources.values().map(BTreeMap::len).sum::<usize>(), "starting from the configuration kept from the last run");
        }
        let (tx, rx) = watch::channel(Arc::new(initial));
        let mut changes = tx.subscribe();
        let run = run(transport, options, tx);
        let task = tokio::spawn(async move {
            let keep = async move {
                let mut written = changes.borrow_and_update().acks;
                while changes.changed().await.is_ok() {
                    let state = changes.borrow_and_update().clone();
                    if state.acks != written {
                        written = state.acks;
                        crate::kept::save(&file, &state);
                    }
                }
            };
            tokio::join!(run, keep);
        });
        XdsClient { state: rx, task }
    }

    /// A receiver of every new state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClientState>> {
        self.state.clone()
    }

    /// The current state.
    pub fn state(&self) -> Arc<ClientState> {
        self.state.borrow().clone()
    }

    /// `/config_dump`: what the proxy holds, per resource, with versions.
    pub fn dump_json(&self) -> String {
        dump_json(&self.state())
    }
}

/// Renders a client state for `/config_dump`.
pub fn dump_json(state: &ClientState) -> String {
    let resources: BTreeMap<&String, Vec<serde_json::Value>> = state
        .resources
        .iter()
        .map(|(type_url, held)| {
            let items = held
                .iter()
                .map(|(name, h)| serde_json::json!({ "name": name, "version": h.version, "bytes": h.body.value.len() }))
                .collect();
            (type_url, items)
        })
        .collect();
    let json = serde_json::json!({
        "connected": state.connected,
        "synced": state.synced,
        "version": state.version,
        "acks": state.acks,
        "nacks": state.nacks,
        "last_error": state.last_error,
        "resources": resources,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

async fn run(transport: Transport, options: ClientOptions, state: watch::Sender<Arc<ClientState>>) {
    let mut backoff = options.initial_backoff;
    loop {
        let started = tokio::time::Instant::now();
        let error = match transport.channel() {
            Ok(channel) => stream_once(channel, transport.token(), &options, &state).await,
            Err(e) => e,
        };
        state.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.connected = false;
            s.last_error = Some(error.clone());
        });
        // A stream that lived a while resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = options.initial_backoff;
        }
        let delay = backoff.mul_f64(0.8 + fastrand::f64() * 0.4);
        tracing::warn!(control_plane = ?transport, %error, retry_in = ?delay, "config stream down; keeping the last good configuration");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Runs one stream until it fails; returns why.
async fn stream_once(
    channel: Channel,
    token: Option<&Token>,
    options: &ClientOptions,
    state: &watch::Sender<Arc<ClientState>>,
) -> String {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let node = Node {
        id: options.node_id.clone(),
        ..Default::default()
    };
    let held = state.borrow().resources.clone();
    for type_url in &options.types {
        let initial: HashMap<String, String> = held
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(n, h)| (n.clone(), h.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let request = DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.clone(),
            initial_resource_versions: initial,
            ..Default::default()
        };
        if tx.send(request).await.is_err() {
            return "request channel closed".into();
        }
    }
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = token {
        match token.header() {
            Ok(value) => request.metadata_mut().insert("authorization", value),
            Err(e) => return e,
        };
    }
    let mut responses = match client.delta_aggregated_resources(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return format!(
                "cannot open the config stream: {:?}: {}",
                status.code(),
                status.message()
            );
        }
    };
    state.send_modify(|s| {
        let s = Arc::make_mut(s);
        s.connected = true;
    });
    let mut first_seen: std::collections::HashSet<String> = Default::default();
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "the control plane closed the config stream".into(),
            Err(status) => {
                return format!(
                    "config stream failed: {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
        };
        let nonce = response.nonce.clone();
        let type_url = response.type_url.clone();
        let verdict = apply(response, options, state);
        let error_detail = verdict.err().map(|message| {
            tracing::warn!(%type_url, %message, "rejecting configuration (NACK); keeping the previous state");
            Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: Vec::new(),
            }
        });
        first_seen.insert(type_url.clone());
        if first_seen.len() >= options.types.len() {
            state.send_modify(|s| Arc::make_mut(s).synced = true);
        }
        let ack = DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return "request channel closed".into();
        }
    }
}

/// Validates and applies one response; on error nothing is applied.
fn apply(
    response: DeltaDiscoveryResponse,
    options: &ClientOptions,
    state: &watch::Sender<Arc<ClientState>>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for resource in &response.resources {
        match &resource.resource {
            Some(body) if body.type_url == response.type_url => {
                if let Err(e) = (options.validator)(&response.type_url, body) {
                    problems.push(format!("{}: {e}", resource.name));
                }
            }
            Some(body) => problems.push(format!(
                "{}: type {} in a {} response",
                resource.name, body.type_url, response.type_url
            )),
            None => problems.push(format!("{}: no resource body", resource.name)),
        }
    }
    if !problems.is_empty() {
        let message = problems.join("; ");
        state.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.nacks += 1;
            s.last_error = Some(format!(
                "rejected version {}: {message}",
                response.system_version_info
            ));
        });
        return Err(message);
    }
    let sizes = (response.resources.len(), response.removed_resources.len());
    state.send_modify(|s| {
        let s = Arc::make_mut(s);
        let held = s.resources.entry(response.type_url.clone()).or_default();
        // The response is ours: its resources move in, nothing is copied.
        for resource in response.resources {
            if let Some(body) = resource.resource {
                held.insert(
                    resource.name,
                    Held {
                        version: resource.version,
                        body,
                    },
                );
            }
        }
        for name in &response.removed_resources {
            held.remove(name);
        }
        s.version = response.system_version_info;
        s.last_response.insert(response.type_url, sizes);
        s.acks += 1;
        s.last_error = None;
        s.updated = Some(SystemTime::now());
    });
    Ok(())
}
