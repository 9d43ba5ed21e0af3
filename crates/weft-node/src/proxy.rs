//! The running node proxy: certificates from the CA, state from the config
//! stream, an HBONE listener on each local workload's address (presenting
//! that workload's identity, as ztunnel's in-pod mode does), and the
//! workloads' explicit outbound listeners.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weft_admin::{Reply, Routes};
use weft_ca::authz::node_identity;
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_ca::{CertManager, TrustBundle};
use weft_hbone::server::{Limits, OpenFuture, Upstream};
use weft_hbone::{HbonePool, Inbound, InboundHandler, PoolKey, Refusal};
use weft_xds::client::{ClientOptions, Transport, XdsClient};

use crate::netns::Netns;
use crate::route::{Destination, Route, decide, decide_original, resolve};
use crate::telemetry::{Counted, TcpLabels, TcpMetrics};
use crate::view::{Listener, NodeView, WorkloadInfo};

/// Captured outbound connections arrive here, inside the workload's
/// namespace (nftables redirects them).
pub const CAPTURE_PORT: u16 = 15001;
/// Captured inbound plaintext arrives here, inside the workload's
/// namespace; accepted only when the workload is `PERMISSIVE`.
pub const PLAINTEXT_PORT: u16 = 15006;
/// Ports that are never valid tunnel targets (they would loop).
pub const LOOP_PORTS: [u16; 4] = crate::route::LOOP_PORTS;
/// How long an endpoint that failed to connect is skipped.
pub const FAILED_ENDPOINT_BACKOFF: Duration = Duration::from_secs(5);
/// Endpoints tried per outbound connection before giving up.
pub const ATTEMPTS: usize = 3;

/// How to run a node proxy.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Node name (`weft.dev/node`).
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// The control plane's plaintext config stream (local mode).
    pub xds_addr: SocketAddr,
    /// The control plane's certificate service.
    pub ca_addr: SocketAddr,
    /// Roots to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// This node's bootstrap token.
    pub token: String,
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
pub enum NodeError {
    /// Something in setup failed.
    #[error("node proxy: {0}")]
    Setup(String),
}

/// A running node proxy.
pub struct NodeProxy {
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// The current view.
    pub view: Arc<ArcSwap<NodeView>>,
    reconcile: JoinHandle<()>,
    admin: JoinHandle<()>,
    metrics: JoinHandle<()>,
    attach: Option<JoinHandle<()>>,
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
    /// Graceful drain: stops accepting (every listener closes), lets open
    /// connections finish for up to `deadline`, then stops. Returns how
    /// many connections were still open at the deadline.
    pub async fn drain(self, deadline: Duration) -> u64 {
        self.reconcile.abort();
        for (_, task) in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.abort();
        }
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
        self.reconcile.abort();
        self.admin.abort();
        self.metrics.abort();
        if let Some(attach) = &self.attach {
            attach.abort();
        }
        for (_, task) in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.abort();
        }
    }
}

/// Endpoints that recently failed to connect.
#[derive(Default, Debug)]
struct Health(Mutex<HashMap<String, Instant>>);

impl Health {
    fn mark_failed(&self, uid: &str) {
        let until = Instant::now() + FAILED_ENDPOINT_BACKOFF;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_owned(), until);
    }
    fn is_unhealthy(&self, uid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|until| Instant::now() < *until)
    }
}

pub(crate) struct Shared {
    pub(crate) node: String,
    trust_domain: String,
    certs: CertManager,
    bundle: TrustBundle,
    pool: HbonePool,
    pub(crate) view: Arc<ArcSwap<NodeView>>,
    health: Health,
    turn: AtomicUsize,
    connect_timeout: Duration,
    metrics: TcpMetrics,
    open: crate::revocable::Registry,
    /// Captured workloads' network namespaces, by workload uid.
    pub(crate) captured: Mutex<HashMap<String, Arc<Netns>>>,
    /// Wakes the reconcile loop (a workload was attached or detached).
    pub(crate) wake: tokio::sync::Notify,
    /// Keys of the listeners that are bound and accepting.
    pub(crate) ready: Mutex<HashSet<String>>,
}

/// Locks a mutex, recovering the data if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of one listener of workload `w`: what it is, where it listens.
pub(crate) fn listener_key(kind: &str, w: &WorkloadInfo, ns: Option<&Netns>) -> String {
    match ns {
        Some(ns) => format!(
            "{kind} {} in {} ({})",
            w.ip,
            ns.path().display(),
            ns.inode()
        ),
        None => format!("{kind} {}", w.ip),
    }
}

/// Starts a node proxy.
pub async fn start(options: NodeOptions) -> Result<NodeProxy, NodeError> {
    let setup = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let bundle = TrustBundle::new(options.roots.clone()).map_err(|e| setup(&e))?;
    let certs = weft_ca::client::token_cert_manager(
        options.ca_addr,
        bundle.clone(),
        &options.trust_domain,
        options.token.clone(),
        options.state_dir.as_ref().map(|d| d.join("certs")),
    )
    .map_err(|e| setup(&e))?;
    if let Some(dir) = &options.state_dir {
        weft_ca::secret::private_dir(dir).map_err(|e| setup(&e))?;
    }
    let me = node_identity(&options.trust_domain, &options.node).map_err(|e| setup(&e))?;
    certs.fetch(&me).await.map_err(|e| setup(&e))?;
    let transport = Transport::Plaintext(options.xds_addr);
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
    let view = Arc::new(ArcSwap::from_pointee(NodeView::default()));
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
        wake: tokio::sync::Notify::new(),
        ready: Mutex::default(),
    });
    let mut registry = prometheus_client::registry::Registry::default();
    shared.metrics.register(&mut registry);
    certs.register(&mut registry);
    let metrics_listener = weft_admin::bind(options.metrics_addr, "metrics")
        .await
        .map_err(|e| setup(&e))?;
    let metrics_addr = metrics_listener.local_addr().map_err(|e| setup(&e))?;
    let metrics = tokio::spawn(weft_admin::serve(
        metrics_listener,
        Routes::new().metrics(Arc::new(Mutex::new(registry))),
        std::future::pending(),
    ));
    let listeners: Arc<Mutex<HashMap<String, JoinHandle<()>>>> = Arc::default();

    let admin_listener = weft_admin::bind(options.admin_addr, "admin")
        .await
        .map_err(|e| setup(&e))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| setup(&e))?;
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
            let next = Arc::new(NodeView::build(&state, &task_shared.node));
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
        Some(path) => Some(crate::capture::serve(path, shared.clone()).map_err(|e| setup(&e))?),
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
        listeners,
        shared,
        _xds: xds,
    })
}

/// How long the caller may keep sending after the destination finished.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Copies both ways between a caller and a tunnel. When the destination
/// side ends, the caller's side gets [`HALF_CLOSE_GRACE`] to finish, so a
/// tunnel the far side closed (or policy revoked) never lingers.
async fn splice<A, B>(caller: &mut A, tunnel: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = Arc::new(tokio::sync::Notify::new());
    let mut tunnel = EofSignal {
        inner: tunnel,
        ended: ended.clone(),
    };
    let copy = weft_hbone::copy::bidirectional(caller, &mut tunnel);
    let grace = async {
        ended.notified().await;
        tokio::time::sleep(HALF_CLOSE_GRACE).await;
    };
    tokio::select! {
        result = copy => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "outbound connection ended with an error");
            }
        }
        () = grace => tracing::debug!("destination finished; the caller did not within the grace period"),
    }
}

/// Signals when the wrapped stream's reads reach the end.
struct EofSignal<S> {
    inner: S,
    ended: Arc<tokio::sync::Notify>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofSignal<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        let at_end = matches!(&poll, std::task::Poll::Ready(Ok(())) if buf.filled().len() == before)
            || matches!(&poll, std::task::Poll::Ready(Err(_)));
        if at_end {
            this.ended.notify_one();
        }
        poll
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EofSignal<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A SOCKS target outside the registry: an address passes through in
/// plaintext when the mesh allows it (`ALLOW_ANY`) and
/// [`check_passthrough`](crate::route::check_passthrough) does; hostnames
/// must be services (weft does no DNS on the caller's behalf).
async fn passthrough(
    shared: &Shared,
    w: &WorkloadInfo,
    captured: bool,
    target: crate::socks::Target,
    mut client: TcpStream,
) {
    use crate::socks::{Reply, Target, reply_bytes};
    let registry_only = shared.view.load().registry_only;
    let checked = match &target {
        Target::Addr(_) if registry_only => {
            Err("not a service in the registry (outbound policy REGISTRY_ONLY)".to_owned())
        }
        Target::Addr(addr) => crate::route::check_passthrough(*addr, captured).map(|()| *addr),
        Target::Host(..) => Err("hostname is not a service in the registry".to_owned()),
    };
    let addr = match checked {
        Ok(addr) => addr,
        Err(reason) => {
            tracing::info!(workload = %w.name, ?target, %reason, "SOCKS target refused");
            let _ = client.write_all(&reply_bytes(Reply::NotAllowed)).await;
            return;
        }
    };
    let upstream = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr)).await;
    let Ok(Ok(upstream)) = upstream else {
        let _ = client.write_all(&reply_bytes(Reply::HostUnreachable)).await;
        return;
    };
    if client
        .write_all(&reply_bytes(Reply::Succeeded))
        .await
        .is_err()
    {
        return;
    }
    splice_plain(shared, w, addr, client, upstream).await;
}

/// Copies between a caller and a plaintext upstream outside the mesh,
/// counted with `connection_security_policy="none"`.
async fn splice_plain(
    shared: &Shared,
    w: &WorkloadInfo,
    addr: SocketAddr,
    mut client: TcpStream,
    mut upstream: TcpStream,
) {
    let mut l = labels("source", w, None, &addr.to_string(), "-");
    l.connection_security_policy = "none";
    let guard = shared.metrics.open(l);
    let mut counted = Counted::new(&mut client, guard, true);
    let _ = weft_hbone::copy::bidirectional(&mut counted, &mut upstream).await;
}

/// A captured connection to an address outside the registry, which the
/// mesh's outbound policy lets through: connected from the node, in
/// plaintext. Loopback and the proxy's own ports are never targets.
async fn captured_passthrough(
    shared: &Shared,
    w: &WorkloadInfo,
    addr: SocketAddr,
    client: TcpStream,
) {
    let mut l = labels("source", w, None, &addr.to_string(), "UF");
    l.connection_security_policy = "none";
    if let Err(reason) = crate::route::check_passthrough(addr, true) {
        shared.metrics.refused(l, reason);
        return;
    }
    match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(upstream)) => splice_plain(shared, w, addr, client, upstream).await,
        Ok(Err(e)) => shared
            .metrics
            .refused(l, format!("passthrough to {addr}: {e}")),
        Err(_) => shared
            .metrics
            .refused(l, format!("passthrough to {addr}: connect timed out")),
    }
}

/// Checks every open inbound connection against the policies now in
/// force; closes the ones no longer allowed.
fn recheck_open_connections(shared: &Shared, view: &NodeView) {
    let closed = shared.open.recheck(|c| {
        let Some(w) = view.workloads.get(&c.workload) else {
            return Err("the destination workload left the registry".into());
        };
        let conn = crate::authz::Conn {
            source: Some(&c.peer),
            source_ip: c.peer_ip,
            destination_ip: c.target_ip,
            destination_port: c.target_port,
        };
        crate::authz::check(&view.policies_for(w), &conn)
    });
    for (conn, reason) in closed {
        tracing::info!(peer = %conn.peer, workload = %conn.workload, %reason, "open connection closed: policy changed");
    }
}

/// Opens listeners for new local workloads and outbound listeners, and
/// closes those that left.
async fn reconcile_listeners(
    shared: &Arc<Shared>,
    view: &NodeView,
    tasks: &Mutex<HashMap<String, JoinHandle<()>>>,
) {
    // A captured workload's listeners live in its network namespace; the
    // others on the node's own (local mode).
    let captured = lock(&shared.captured).clone();
    let mut wanted: HashMap<String, Listening> = HashMap::new();
    for w in view.local(&shared.node) {
        let ns = captured.get(&w.uid).cloned();
        let key = |kind| listener_key(kind, w, ns.as_deref());
        wanted.insert(key("inbound"), Listening::Inbound(w.clone(), ns.clone()));
        wanted.insert(key("socks"), Listening::Socks(w.clone(), ns.clone()));
        if let Some(ns) = &ns {
            wanted.insert(key("captured"), Listening::Captured(w.clone(), ns.clone()));
            wanted.insert(
                key("plaintext"),
                Listening::Plaintext(w.clone(), ns.clone()),
            );
        }
    }
    for l in &view.listeners {
        // Only workloads the node serves (never an L7 proxy's address).
        if let Some(w) = view.workloads.get(&l.workload)
            && !w.waypoint
            && !w.gateway
        {
            let ns = captured.get(&w.uid).cloned();
            wanted.insert(
                listener_key(&format!("outbound :{}", l.local_port), w, ns.as_deref()),
                Listening::Outbound(w.clone(), l.clone(), ns),
            );
        }
    }
    let mut running = lock(tasks);
    running.retain(|key, task| {
        let keep = wanted.contains_key(key) && !task.is_finished();
        if !keep {
            task.abort();
            lock(&shared.ready).remove(key);
            tracing::info!(listener = %key, "closed");
        }
        keep
    });
    for (key, what) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let shared = shared.clone();
        let label = key.clone();
        running.insert(
            key,
            tokio::spawn(async move {
                match what.run(shared, &label).await {
                    Ok(()) => {}
                    Err(ListenError::NotHere(e)) => tracing::info!(listener = %label, "{e}"),
                    Err(ListenError::Failed(e)) => {
                        tracing::error!(listener = %label, error = %e, "listener failed");
                    }
                }
            }),
        );
    }
}

/// One listener the node proxy runs for a local workload; the namespace,
/// when there is one, is where it listens (captured mode).
enum Listening {
    /// HBONE on the workload's address, port 15008.
    Inbound(Arc<WorkloadInfo>, Option<Arc<Netns>>),
    /// An explicit outbound listener.
    Outbound(Arc<WorkloadInfo>, Listener, Option<Arc<Netns>>),
    /// SOCKS5 on the workload's address, port 15080.
    Socks(Arc<WorkloadInfo>, Option<Arc<Netns>>),
    /// Redirected outbound connections, `127.0.0.1:15001` in the namespace.
    Captured(Arc<WorkloadInfo>, Arc<Netns>),
    /// Redirected inbound plaintext, port 15006 in the namespace.
    Plaintext(Arc<WorkloadInfo>, Arc<Netns>),
}

/// The SOCKS5 port, on each local workload's address.
pub const SOCKS_PORT: u16 = 15080;

/// A SOCKS client on workload `w`'s address (inside its namespace when
/// `captured`): handshake, find the service, then the same path as an
/// outbound listener.
async fn socks_client(
    shared: Arc<Shared>,
    w: Arc<WorkloadInfo>,
    captured: bool,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    use crate::socks::{Target, handshake};
    let target = match handshake(&mut client).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(workload = %w.name, %peer, error = %e, "SOCKS handshake failed");
            return;
        }
    };
    let view = shared.view.load();
    // A service by name or VIP is load balanced; a workload of the registry
    // by address is reached over HBONE like a captured connection (its node
    // then applies its policies, waypoint included); anything else may
    // pass through.
    let to = match &target {
        Target::Host(host, port) => view
            .services_by_host
            .get(host)
            .map(|s| self::Target::Service(s.clone(), *port)),
        Target::Addr(addr) => match view.services_by_vip.get(&addr.ip()) {
            Some(s) => Some(self::Target::Service(s.clone(), addr.port())),
            None => view
                .by_ip
                .contains_key(&addr.ip())
                .then_some(self::Target::Original(*addr)),
        },
    };
    drop(view);
    let Some(to) = to else {
        return passthrough(&shared, &w, captured, target, client).await;
    };
    outbound(shared, w, to, client, peer, true).await;
}

impl Listening {
    async fn run(self, shared: Arc<Shared>, key: &str) -> Result<(), ListenError> {
        let ready = |shared: &Shared| {
            lock(&shared.ready).insert(key.to_owned());
        };
        match self {
            Listening::Inbound(w, ns) => {
                shared
                    .certs
                    .fetch(&w.identity)
                    .await
                    .map_err(|e| ListenError::Failed(e.to_string()))?;
                let tls = server_config(
                    shared.certs.source(&w.identity),
                    SpiffeClientVerifier::new(shared.bundle.clone(), &shared.trust_domain),
                )
                .map_err(|e| ListenError::Failed(e.to_string()))?;
                let addr = SocketAddr::new(w.ip, weft_hbone::PORT);
                let listener = bind(addr, ns.as_deref()).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, identity = %w.identity, netns = ?ns, "inbound HBONE listener ready");
                let handler = Arc::new(InboundFor {
                    workload: w.clone(),
                    ns,
                    connect_timeout: shared.connect_timeout,
                    metrics: shared.metrics.clone(),
                    view: shared.view.clone(),
                    open: shared.open.clone(),
                });
                weft_hbone::server::serve(
                    listener,
                    Arc::new(tls),
                    handler,
                    Limits::default(),
                    std::future::pending(),
                )
                .await;
                Ok(())
            }
            Listening::Socks(w, ns) => {
                let addr = SocketAddr::new(w.ip, SOCKS_PORT);
                let listener = bind(addr, ns.as_deref()).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, "SOCKS5 listener ready");
                let captured = ns.is_some();
                accept_forever(listener, addr, |client, peer| {
                    tokio::spawn(socks_client(
                        shared.clone(),
                        w.clone(),
                        captured,
                        client,
                        peer,
                    ));
                })
                .await
            }
            Listening::Outbound(w, l, ns) => {
                let addr = SocketAddr::new(w.ip, l.local_port);
                let listener = bind(addr, ns.as_deref()).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, service = %l.service, port = l.service_port, "outbound listener ready");
                accept_forever(listener, addr, |client, peer| {
                    let (shared, w, l) = (shared.clone(), w.clone(), l.clone());
                    tokio::spawn(async move {
                        let target = Target::Service(l.service, l.service_port);
                        outbound(shared, w, target, client, peer, false).await;
                    });
                })
                .await
            }
            Listening::Captured(w, ns) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], CAPTURE_PORT));
                let listener = bind(addr, Some(&ns)).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, netns = %ns.path().display(), "captured outbound listener ready");
                accept_forever(listener, addr, |client, peer| {
                    let (shared, w) = (shared.clone(), w.clone());
                    tokio::spawn(async move {
                        match crate::netns::original_destination(&client) {
                            Ok(dst) => {
                                outbound(shared, w, Target::Original(dst), client, peer, false)
                                    .await;
                            }
                            Err(e) => tracing::warn!(workload = %w.name, %peer, error = %e,
                                "captured connection has no original destination (not redirected by nftables?); closed"),
                        }
                    });
                })
                .await
            }
            Listening::Plaintext(w, ns) => {
                let addr = SocketAddr::from(([0, 0, 0, 0], PLAINTEXT_PORT));
                let listener = bind(addr, Some(&ns)).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, netns = %ns.path().display(), "plaintext inbound listener ready");
                accept_forever(listener, addr, |client, peer| {
                    let (shared, uid, ns) = (shared.clone(), w.uid.clone(), ns.clone());
                    tokio::spawn(plaintext_inbound(shared, uid, ns, client, peer));
                })
                .await
            }
        }
    }
}

/// A plaintext connection to captured workload `uid` (nftables sent it to
/// port 15006): refused under `STRICT`; under `PERMISSIVE` checked against
/// L4 policy as an unauthenticated caller and delivered.
async fn plaintext_inbound(
    shared: Arc<Shared>,
    uid: String,
    ns: Arc<Netns>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let dst = match crate::netns::original_destination(&client) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "plaintext connection has no original destination; closed");
            return;
        }
    };
    let view = shared.view.load();
    let Some(w) = view.workloads.get(&uid).cloned() else {
        return;
    };
    let labels = |flags| plaintext_labels(&w, dst.port(), flags);
    let refusal = if !w.permissive {
        Some(
            "plaintext refused: the workload requires mutual TLS (PeerAuthentication STRICT)"
                .to_owned(),
        )
    } else if let Err(why) = crate::route::check_target(&w, dst) {
        Some(why)
    } else if let Err(why) = crate::waypoint_guard::check(&view, &w, dst.port(), None) {
        Some(why)
    } else {
        let conn = crate::authz::Conn {
            source: None,
            source_ip: peer.ip(),
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        };
        crate::authz::check(&view.policies_for(&w), &conn).err()
    };
    drop(view);
    if let Some(reason) = refusal {
        tracing::info!(workload = %w.name, %peer, %reason, "plaintext connection refused");
        shared.metrics.refused(labels("DENY"), reason);
        return;
    }
    match tokio::time::timeout(shared.connect_timeout, ns.connect(dst)).await {
        Ok(Ok(mut app)) => {
            let _ = app.set_nodelay(true);
            let guard = shared.metrics.open(labels("-"));
            let mut counted = Counted::new(&mut client, guard, true);
            let _ = weft_hbone::copy::bidirectional(&mut counted, &mut app).await;
        }
        Ok(Err(e)) => shared.metrics.refused(labels("UF"), format!("{dst}: {e}")),
        Err(_) => shared
            .metrics
            .refused(labels("UF"), format!("{dst}: connect timed out")),
    }
}

/// Labels for plaintext from an unknown caller to workload `w`.
fn plaintext_labels(w: &WorkloadInfo, port: u16, flags: &'static str) -> TcpLabels {
    use weft_telemetry::labels::{Peer, Reporter, Service};
    let service = w
        .services
        .iter()
        .find(|(_, ports)| ports.values().any(|target| *target == port))
        .map(|(s, _)| s.rsplit('/').next().unwrap_or_default().to_owned());
    weft_telemetry::labels::tcp(
        Reporter::Destination,
        &Peer::unknown(),
        &w.peer(),
        &service.map_or_else(Service::unknown, |h| Service::from_host(&h, None)),
        flags,
        false,
    )
}

/// Why a listener is not running.
enum ListenError {
    /// The workload's address is not on this host: it runs in captured
    /// mode and `weft run` has not attached it yet (not a fault).
    NotHere(String),
    /// Anything else.
    Failed(String),
}

/// A listener on `addr`, in `ns` when given.
async fn bind(addr: SocketAddr, ns: Option<&Netns>) -> Result<TcpListener, ListenError> {
    let bound = match ns {
        Some(ns) => ns.listen(addr).await,
        None => TcpListener::bind(addr).await,
    };
    bound.map_err(|e| match ns {
        Some(ns) => ListenError::Failed(format!(
            "cannot listen on {addr} in {}: {e}",
            ns.path().display()
        )),
        None if e.kind() == std::io::ErrorKind::AddrNotAvailable => ListenError::NotHere(format!(
            "{} is not an address of this host; waiting for `weft run` to attach the workload (captured mode)",
            addr.ip()
        )),
        None => ListenError::Failed(format!("cannot listen on {addr}: {e}")),
    })
}

/// A connection to `addr`, made from `ns` when given.
async fn connect(addr: SocketAddr, ns: Option<&Netns>) -> std::io::Result<TcpStream> {
    match ns {
        Some(ns) => ns.connect(addr).await,
        None => TcpStream::connect(addr).await,
    }
}

/// What an outbound connection asked for.
enum Target {
    /// A service port (explicit listener, SOCKS).
    Service(String, u16),
    /// The original destination of a captured connection.
    Original(SocketAddr),
}

/// Accepts until the task is aborted; a failed accept (e.g. out of file
/// descriptors) is logged and retried after a pause, never fatal.
async fn accept_forever(
    listener: TcpListener,
    addr: SocketAddr,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) -> ! {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => on_accept(client, peer),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One outbound connection: choose an endpoint, open a tunnel (trying the
/// next endpoint on a connect failure), splice, log.
async fn outbound(
    shared: Arc<Shared>,
    source: Arc<WorkloadInfo>,
    target: Target,
    mut client: TcpStream,
    peer: SocketAddr,
    socks: bool,
) {
    // A SOCKS client is told the outcome before any bytes flow.
    async fn tell(client: &mut TcpStream, socks: bool, reply: crate::socks::Reply) -> bool {
        !socks
            || client
                .write_all(&crate::socks::reply_bytes(reply))
                .await
                .is_ok()
    }
    let _ = client.set_nodelay(true);
    if let Err(e) = shared.certs.fetch(&source.identity).await {
        tracing::warn!(source = %source.name, error = %e, "no certificate for the source workload; closing");
        return;
    }
    // The service the caller reached, for labels and logs (empty when it
    // named a workload or an outside address).
    let service = match &target {
        Target::Service(service, _) => service.clone(),
        Target::Original(dst) => match resolve(&shared.view.load(), *dst) {
            Destination::Service { service, .. } => service,
            _ => String::new(),
        },
    };
    let host = service.rsplit('/').next().unwrap_or_default();
    let mut last_error = String::new();
    for _ in 0..ATTEMPTS {
        let view = shared.view.load();
        let turn = shared.turn.fetch_add(1, Ordering::Relaxed);
        let unhealthy = |uid: &str| shared.health.is_unhealthy(uid);
        let route = match &target {
            Target::Service(service, port) => {
                decide(&view, &source, service, *port, &unhealthy, turn)
            }
            Target::Original(dst) => decide_original(&view, &source, *dst, &unhealthy, turn),
        };
        drop(view);
        let (endpoint, target, hbone, identity) = match route {
            Route::Tunnel {
                endpoint,
                target,
                hbone,
                identity,
            } => (endpoint, target, hbone, identity),
            Route::Passthrough(addr) => {
                return captured_passthrough(&shared, &source, addr, client).await;
            }
            Route::Deny(reason) => {
                tracing::info!(source = %source.name, service = %service, %reason, "outbound connection denied");
                tell(&mut client, socks, crate::socks::Reply::NotAllowed).await;
                shared
                    .metrics
                    .refused(labels("source", &source, None, host, "DENY"), reason);
                return;
            }
        };
        let key = PoolKey {
            source: source.identity.clone(),
            destination: hbone,
            expected: vec![identity],
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = format!("for=\"{peer}\";host={host}").parse() {
            headers.insert("forwarded", v);
        }
        if let Ok(v) = weft_telemetry::labels::baggage(&source.peer()).parse() {
            headers.insert("baggage", v);
        }
        // Like ztunnel, every tunnel carries a trace context of its own
        // (not sampled: node proxies record no spans; the application's
        // own headers travel inside the tunnel untouched).
        if let Ok(v) = format!(
            "00-{}-{}-00",
            weft_telemetry::trace::hex(&weft_telemetry::trace::trace_id()),
            weft_telemetry::trace::hex(&weft_telemetry::trace::span_id())
        )
        .parse()
        {
            headers.insert("traceparent", v);
        }
        match shared
            .pool
            .connect(&key, shared.certs.source(&source.identity), target, headers)
            .await
        {
            Ok(mut tunnel) => {
                if !tell(&mut client, socks, crate::socks::Reply::Succeeded).await {
                    return;
                }
                let view = shared.view.load();
                let destination = view.workloads.get(&endpoint).cloned();
                let guard = shared.metrics.open(labels(
                    "source",
                    &source,
                    destination.as_deref(),
                    host,
                    "-",
                ));
                // The guard logs the access line and emits the metrics when the copy ends.
                let mut counted = Counted::new(&mut client, guard, true);
                splice(&mut counted, &mut tunnel).await;
                return;
            }
            Err(e) if e.is_connect_failure() => {
                tracing::info!(%endpoint, error = %e, "endpoint failed to connect; trying another");
                shared.health.mark_failed(&endpoint);
                last_error = e.to_string();
            }
            Err(e) => {
                tracing::warn!(source = %source.name, %endpoint, error = %e, "outbound tunnel failed");
                tell(&mut client, socks, crate::socks::Reply::GeneralFailure).await;
                return;
            }
        }
    }
    tracing::warn!(source = %source.name, service = %service, error = %last_error, "no endpoint could be reached");
    tell(&mut client, socks, crate::socks::Reply::HostUnreachable).await;
    shared.metrics.refused(
        labels("source", &source, None, host, "UF"),
        format!("no endpoint could be reached: {last_error}"),
    );
}

/// Istio labels for a connection from `source` to `destination` (over
/// HBONE: mutual TLS).
fn labels(
    reporter: &'static str,
    source: &WorkloadInfo,
    destination: Option<&WorkloadInfo>,
    service: &str,
    flags: &'static str,
) -> TcpLabels {
    use weft_telemetry::labels::{Peer, Reporter, Service};
    let reporter = if reporter == "source" {
        Reporter::Source
    } else {
        Reporter::Destination
    };
    weft_telemetry::labels::tcp(
        reporter,
        &source.peer(),
        &destination.map_or_else(Peer::unknown, WorkloadInfo::peer),
        &if service.is_empty() {
            Service::unknown()
        } else {
            Service::from_host(service, None)
        },
        flags,
        true,
    )
}

/// The service a tunnel is for: the `forwarded` header's `host` (node
/// proxies send it), else the one service of the workload that targets
/// the tunnel's port (waypoints and gateways dial endpoints directly).
fn called_service(request: &weft_hbone::Inbound, workload: &WorkloadInfo) -> String {
    if let Some(host) = header_param(&request.headers, "forwarded", "host") {
        return host.to_owned();
    }
    let port = request.target.port();
    let mut matching = workload
        .services
        .iter()
        .filter(|(_, ports)| ports.values().any(|target| *target == port))
        .map(|(s, _)| s.rsplit('/').next().unwrap_or_default());
    match (matching.next(), matching.next()) {
        (Some(only), None) => only.to_owned(),
        _ => String::new(),
    }
}

/// Inbound tunnels for one local workload.
struct InboundFor {
    workload: Arc<WorkloadInfo>,
    /// Where the workload runs, in captured mode.
    ns: Option<Arc<Netns>>,
    connect_timeout: Duration,
    metrics: TcpMetrics,
    view: Arc<ArcSwap<NodeView>>,
    open: crate::revocable::Registry,
}

/// A `key=value` from a comma-separated header (`baggage`) or a
/// `;`-separated one (`forwarded`).
fn header_param<'a>(headers: &'a HeaderMap, header: &str, key: &str) -> Option<&'a str> {
    headers
        .get(header)?
        .to_str()
        .ok()?
        .split([',', ';'])
        .find_map(|kv| kv.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

impl InboundHandler for InboundFor {
    fn open(&self, request: Inbound) -> OpenFuture {
        let (workload, ns, timeout, metrics, view, open) = (
            self.workload.clone(),
            self.ns.clone(),
            self.connect_timeout,
            self.metrics.clone(),
            self.view.clone(),
            self.open.clone(),
        );
        Box::pin(async move {
            if let Err(why) = crate::route::check_target(&workload, request.target) {
                return Err(Refusal::BadRequest(why));
            }
            // The caller as its identity and baggage describe it.
            let caller = weft_telemetry::labels::peer_from_baggage(
                request
                    .headers
                    .get("baggage")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                &request.peer.to_string(),
            );
            let source = WorkloadInfo {
                uid: String::new(),
                name: format!("{}/{}", caller.namespace, caller.workload),
                ip: request.peer_addr.ip(),
                identity: request.peer.clone(),
                node: String::new(),
                locality: Default::default(),
                services: Default::default(),
                policies: Vec::new(),
                permissive: false,
                waypoint: false,
                gateway: false,
                enforced: false,
                canonical: (caller.canonical_service, caller.canonical_revision),
            };
            // No skipping a waypoint, then L4 authorization against the
            // policies in force now.
            let decision = {
                let view = view.load();
                let current = view
                    .workloads
                    .get(&workload.uid)
                    .cloned()
                    .unwrap_or_else(|| workload.clone());
                let conn = crate::authz::Conn {
                    source: Some(&request.peer),
                    source_ip: request.peer_addr.ip(),
                    destination_ip: request.target.ip(),
                    destination_port: request.target.port(),
                };
                crate::waypoint_guard::check(
                    &view,
                    &current,
                    request.target.port(),
                    Some(&request.peer),
                )
                .and_then(|()| crate::authz::check(&view.policies_for(&current), &conn))
            };
            if let Err(reason) = decision {
                let service = called_service(&request, &workload);
                metrics.refused(
                    labels("destination", &source, Some(&workload), &service, "DENY"),
                    &reason,
                );
                return Err(Refusal::Denied(reason));
            }
            let service = called_service(&request, &workload);
            match tokio::time::timeout(timeout, connect(request.target, ns.as_deref())).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = metrics.open(labels(
                        "destination",
                        &source,
                        Some(&workload),
                        &service,
                        "-",
                    ));
                    let registered = crate::revocable::OpenConn {
                        workload: workload.uid.clone(),
                        peer: request.peer.clone(),
                        peer_ip: request.peer_addr.ip(),
                        target_ip: request.target.ip(),
                        target_port: request.target.port(),
                    };
                    let upstream = open.wrap(registered, Counted::new(stream, guard, false));
                    Ok(Box::new(upstream) as Box<dyn Upstream>)
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => format!("{}: {e}", request.target),
                        _ => format!("{}: connect timed out", request.target),
                    };
                    metrics.refused(
                        labels("destination", &source, Some(&workload), &service, "UF"),
                        &reason,
                    );
                    Err(Refusal::Unreachable(reason))
                }
            }
        })
    }
}
