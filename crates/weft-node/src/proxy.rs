//! The running node proxy: certificates from the CA, state from the config
//! stream, then the listeners ([`listeners`](crate::listeners)) of every
//! local workload, kept in step with the view; graceful drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use weft_admin::{Reply, Routes};
use weft_ca::TrustBundle;
use weft_ca::authz::node_identity;
use weft_hbone::HbonePool;
use weft_state::MeshView;
use weft_xds::client::{ClientOptions, Transport, XdsClient};

use crate::inbound::recheck_open_connections;
use crate::listeners::reconcile_listeners;
use crate::shared::{Health, Shared, lock};
use crate::telemetry::TcpMetrics;

/// How to run a node proxy.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Node name (`weft.dev/node`).
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// The control plane's plaintext config stream (local mode, loopback);
    /// `None`: the config stream over mTLS on `ca_addr`, with the node's
    /// certificate (in a cluster).
    pub xds_addr: Option<SocketAddr>,
    /// The control plane's certificate service (and, without `xds_addr`,
    /// its config stream), by address or host name.
    pub ca_addr: weft_ca::client::ControlAddr,
    /// Roots to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// This node's token: a bootstrap token, or on Kubernetes the node
    /// agent's service-account token bound to its pod (a file, read again
    /// at every use).
    pub token: weft_ca::client::Token,
    /// Admin endpoints (`/config_dump`, `/certs`).
    pub admin_addr: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    pub metrics_addr: SocketAddr,
    /// TCP connect timeout to workloads and peers.
    pub connect_timeout: Duration,
    /// Where `weft run` attaches captured workloads (a Unix socket);
    /// `None` disables captured mode.
    pub attach_socket: Option<PathBuf>,
    /// A private directory where the node keeps its certificates and its
    /// last good configuration (0600 files), so that it starts and serves
    /// from them while the control plane is unreachable (until the
    /// certificates expire). `None`: nothing kept.
    pub state_dir: Option<PathBuf>,
}

/// Why a node proxy did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The trust roots given do not parse.
    #[error("node proxy: the trust roots are not usable: {0}")]
    Roots(#[source] weft_ca::cert::CertError),
    /// The certificate client could not be set up.
    #[error("node proxy: certificate client: {0}")]
    CertClient(#[source] weft_ca::client::ClientError),
    /// The config stream's mTLS could not be set up.
    #[error("node proxy: config stream over mTLS: {0}")]
    StreamTls(String),
    /// The node's name makes no SPIFFE identity.
    #[error("node proxy: node name {node:?}: {source}")]
    NodeName {
        /// The name given.
        node: String,
        /// Why it is not usable.
        source: weft_core::IdentityError,
    },
    /// The node's own certificate could not be obtained (bad token, control
    /// plane unreachable and nothing kept).
    #[error("node proxy: no certificate for node {node}: {source}")]
    Enroll {
        /// The node.
        node: String,
        /// Why.
        source: weft_ca::manager::CertManagerError,
    },
    /// The private state directory could not be made.
    #[error("node proxy: state directory {}: {source}", dir.display())]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: weft_ca::secret::SecretError,
    },
    /// The admin or metrics listener could not be bound.
    #[error("node proxy: {0}")]
    Bind(#[from] weft_admin::BindError),
    /// The attach socket for captured mode could not be opened.
    #[error("node proxy: attach socket {}: {source}", path.display())]
    AttachSocket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket a replacing agent takes the listeners from could not be
    /// opened.
    #[error("node proxy: hand-over socket {}: {source}", path.display())]
    HandoverSocket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bound listener's address could not be read.
    #[error("node proxy: {what} listener address: {source}")]
    LocalAddr {
        /// Which listener.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A running node proxy.
pub struct NodeProxy {
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// The current view.
    pub view: Arc<ArcSwap<MeshView>>,
    reconcile: JoinHandle<()>,
    admin: JoinHandle<()>,
    metrics: JoinHandle<()>,
    attach: Option<JoinHandle<()>>,
    handover: Option<JoinHandle<()>>,
    enrollment: Option<JoinHandle<()>>,
    listeners: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    shared: Arc<Shared>,
    _xds: Arc<XdsClient>,
}

impl std::fmt::Debug for NodeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProxy")
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl NodeProxy {
    /// Graceful drain: stops accepting (every listener closes, except in
    /// the agent that took them over), tells HBONE peers to open new
    /// tunnels elsewhere, lets open connections finish for up to
    /// `deadline`, then stops. Returns how
    /// many connections were still open at the deadline.
    pub async fn drain(self, deadline: Duration) -> u64 {
        self.stop_accepting();
        let until = Instant::now() + deadline;
        let open = self.shared.metrics.active();
        tracing::info!(node = %self.shared.node, open, ?deadline, "draining: no new connections");
        while self.shared.metrics.active() > 0 && Instant::now() < until {
            tracing::debug!(open = self.shared.metrics.active(), "draining");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.metrics.active();
        if left > 0 {
            tracing::warn!(node = %self.shared.node, left, "drain deadline passed; closing the remaining connections");
        }
        self.stop();
        left
    }

    /// Stops every listener.
    pub fn stop(self) {
        self.stop_accepting();
        self.admin.abort();
        self.metrics.abort();
    }

    /// Closes the workloads' listeners and stops taking pods, sockets to
    /// hand over and configuration changes.
    fn stop_accepting(&self) {
        self.reconcile.abort();
        let others = self.attach.iter().chain(&self.handover);
        for task in others.chain(&self.enrollment) {
            task.abort();
        }
        for (_, task) in lock(&self.listeners).drain() {
            task.abort();
        }
        // The last descriptors of sockets no successor took: they close
        // (one that took them keeps them open and accepting).
        lock(&self.shared.listening).clear();
    }
}

/// The admin or metrics listener on `addr` (`what`): taken over from the
/// previous agent, or bound; kept for the next.
async fn host_listener(
    shared: &Shared,
    addr: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, NodeError> {
    // Only a fixed port is the same listener in the next agent.
    if addr.port() == 0 {
        return Ok(weft_admin::bind(addr, what).await?);
    }
    let key = format!("{what} {addr}");
    let failed = |source| weft_admin::BindError { addr, what, source };
    let listener = match shared.inherit(&key).map_err(failed)? {
        Some(taken) => taken,
        None => weft_admin::bind(addr, what).await?,
    };
    shared.keep(&key, &listener).map_err(failed)?;
    Ok(listener)
}

/// Starts a node proxy.
pub async fn start(options: NodeOptions) -> Result<NodeProxy, NodeError> {
    start_with_pods(options, None).await
}

/// As [`start`], also taking pods from a CNI plugin over the attach
/// socket (on Kubernetes), captured as `pods` decides.
pub async fn start_with_pods(
    options: NodeOptions,
    pods: Option<Arc<dyn crate::pod_policy::PodPolicy>>,
) -> Result<NodeProxy, NodeError> {
    let bundle = TrustBundle::new(options.roots.clone()).map_err(NodeError::Roots)?;
    let certs = weft_ca::client::token_cert_manager(
        options.ca_addr.clone(),
        bundle.clone(),
        &options.trust_domain,
        options.token.clone(),
        options.state_dir.as_ref().map(|d| d.join("certs")),
    )
    .map_err(NodeError::CertClient)?;
    if let Some(dir) = &options.state_dir {
        weft_ca::secret::private_dir(dir).map_err(|source| NodeError::StateDir {
            dir: dir.clone(),
            source,
        })?;
    }
    let me = node_identity(&options.trust_domain, &options.node).map_err(|source| {
        NodeError::NodeName {
            node: options.node.clone(),
            source,
        }
    })?;
    certs.fetch(&me).await.map_err(|source| NodeError::Enroll {
        node: options.node.clone(),
        source,
    })?;
    let transport = match options.xds_addr {
        Some(addr) => Transport::Plaintext(addr),
        None => {
            let control = weft_ca::authz::control_identity(&options.trust_domain)
                .map_err(|e| NodeError::StreamTls(e.to_string()))?;
            let tls =
                weft_ca::tls::client_config(Some(certs.source(&me)), bundle.clone(), vec![control])
                    .map_err(|e| NodeError::StreamTls(e.to_string()))?;
            Transport::Tls(options.ca_addr.clone(), Arc::new(tls))
        }
    };
    let client_options = ClientOptions {
        node_id: options.node.clone(),
        types: vec![
            weft_xds::ADDRESS_TYPE.into(),
            weft_xds::LISTENERS_TYPE.into(),
            weft_xds::AUTHORIZATION_TYPE.into(),
            weft_xds::MESH_TYPE.into(),
        ],
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(15),
        validator: weft_xds::decode_validator(),
    };
    let xds = Arc::new(match &options.state_dir {
        Some(dir) => XdsClient::start_kept(transport, client_options, dir.join("config.pb")),
        None => XdsClient::start(transport, client_options),
    });
    let view = Arc::new(ArcSwap::from_pointee(MeshView::default()));
    let shared = Arc::new(Shared {
        node: options.node.clone(),
        trust_domain: options.trust_domain.clone(),
        certs: certs.clone(),
        bundle: bundle.clone(),
        pool: HbonePool::new(bundle, options.connect_timeout),
        view: view.clone(),
        health: Health::default(),
        turn: AtomicUsize::new(0),
        connect_timeout: options.connect_timeout,
        metrics: TcpMetrics::default(),
        open: crate::revocable::Registry::default(),
        captured: Mutex::default(),
        provisional: Mutex::default(),
        pods_file: (pods.is_some())
            .then(|| options.state_dir.as_ref().map(|d| d.join("pods.json")))
            .flatten(),
        pods,
        wake: tokio::sync::Notify::new(),
        ready: Mutex::default(),
        listening: Mutex::default(),
        inherited: Mutex::default(),
    });
    // On Kubernetes, an agent started beside a running one (an upgrade)
    // takes its listening sockets before opening any.
    let handover = (shared.pods.is_some())
        .then(|| {
            options
                .state_dir
                .as_ref()
                .map(|d| d.join(crate::handover::SOCKET))
        })
        .flatten();
    if let Some(path) = &handover {
        *lock(&shared.inherited) = crate::handover::take(path).await;
    }
    if shared.pods.is_some() {
        // The kubelet's probes of captured pods (see `pods`).
        let made = tokio::task::spawn_blocking(weft_cni::rules::host_table_ensure).await;
        if let Ok(Err(e)) = made {
            tracing::warn!(error = %e, "the kubelet's probes of captured pods will be refused");
        }
    }
    // Pods captured before a restart: their listeners open again at once.
    crate::pods::restore(&shared);
    let mut registry = prometheus_client::registry::Registry::default();
    shared.metrics.register(&mut registry);
    certs.register(&mut registry);
    let local_addr = |what| move |source| NodeError::LocalAddr { what, source };
    let metrics_listener = host_listener(&shared, options.metrics_addr, "metrics").await?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(local_addr("metrics"))?;
    let metrics = tokio::spawn(weft_admin::serve(
        metrics_listener,
        Routes::new()
            .metrics(Arc::new(Mutex::new(registry)))
            // Ready once the node holds its certificate and serves.
            .get("/healthz/ready", || Reply::text("ready\n")),
        std::future::pending(),
    ));
    let listeners: Arc<Mutex<HashMap<String, JoinHandle<()>>>> = Arc::default();

    let admin_listener = host_listener(&shared, options.admin_addr, "admin").await?;
    let admin_addr = admin_listener.local_addr().map_err(local_addr("admin"))?;
    let (dump_of, certs_of) = (xds.clone(), certs.clone());
    let admin = tokio::spawn(weft_admin::serve(
        admin_listener,
        Routes::new()
            .get("/config_dump", move || Reply::json(dump_of.dump_json()))
            .get("/certs", move || Reply::json(certs_of.report_json()))
            .local_hosts_only_on(admin_addr),
        std::future::pending(),
    ));

    let mut changes = xds.watch();
    let (task_shared, task_listeners) = (shared.clone(), listeners.clone());
    let reconcile = tokio::spawn(async move {
        loop {
            let state = changes.borrow_and_update().clone();
            let next = Arc::new(MeshView::build(&state, &task_shared.node));
            task_shared.view.store(next.clone());
            recheck_open_connections(&task_shared, &next);
            reconcile_listeners(&task_shared, &next, &task_listeners).await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return;
                },
                () = task_shared.wake.notified() => {}
            }
        }
    });
    let attach = match &options.attach_socket {
        Some(path) => Some(
            crate::capture::serve(path, shared.clone()).map_err(|source| {
                NodeError::AttachSocket {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    // Pods the API server shows enrolled on this node but no CNI plugin
    // handed over (and those no longer enrolled).
    let enrollment = (shared.pods.as_ref())
        .and_then(|p| p.enrollment())
        .map(|rx| tokio::spawn(crate::enroll::follow(shared.clone(), rx)));
    let handover = match &handover {
        Some(path) => Some(
            crate::handover::serve(path, shared.clone()).map_err(|source| {
                NodeError::AttachSocket {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    Ok(NodeProxy {
        admin_addr,
        metrics_addr,
        view,
        reconcile,
        admin,
        metrics,
        attach,
        handover,
        enrollment,
        listeners,
        shared,
        _xds: xds,
    })
}
