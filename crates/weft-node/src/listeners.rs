//! Listener management: which listeners the local workloads need (HBONE
//! inbound, SOCKS5, explicit outbound, and in captured mode the redirected
//! outbound and plaintext inbound ports inside the workload's namespace),
//! reconciled against the running ones on every view change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_hbone::server::Limits;
use weft_state::{Listener, MeshView, WorkloadInfo};

use crate::inbound::{InboundFor, plaintext_inbound};
use crate::netns::Netns;
use crate::outbound::{Target, outbound};
use crate::shared::{Shared, listener_key, lock};
use crate::socks5::{SOCKS_PORT, socks_client};

/// Captured outbound connections arrive here, inside the workload's
/// namespace (nftables redirects them).
pub const CAPTURE_PORT: u16 = 15001;
/// Captured inbound plaintext arrives here, inside the workload's
/// namespace; accepted only when the workload is `PERMISSIVE`.
pub const PLAINTEXT_PORT: u16 = 15006;

/// Opens listeners for new local workloads and outbound listeners, and
/// closes those that left.
pub(crate) async fn reconcile_listeners(
    shared: &Arc<Shared>,
    view: &MeshView,
    tasks: &Mutex<HashMap<String, JoinHandle<()>>>,
) {
    // A captured workload's listeners live in its network namespace; the
    // others on the node's own (local mode).
    let captured = lock(&shared.captured).clone();
    let mut wanted: HashMap<String, Listening> = HashMap::new();
    // Pods captured before the registry has them, then the registry's.
    let provisional: Vec<Arc<WorkloadInfo>> = lock(&shared.provisional)
        .values()
        .filter(|w| !view.workloads.contains_key(&w.uid))
        .cloned()
        .collect();
    for w in provisional.iter().chain(view.local(&shared.node)) {
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
    // Sockets the previous agent handed over that nothing here wants.
    lock(&shared.inherited).retain(|key, _| wanted.contains_key(key));
    let mut running = lock(tasks);
    running.retain(|key, task| {
        let keep = wanted.contains_key(key) && !task.is_finished();
        if !keep {
            task.abort();
            shared.closed(key);
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
                // Tried again until it runs or is no longer wanted (the
                // reconcile aborts it then).
                loop {
                    match what.clone().run(shared.clone(), &label).await {
                        Ok(()) => return,
                        Err(ListenError::NotHere(e)) => {
                            return tracing::info!(listener = %label, "{e}");
                        }
                        Err(ListenError::Failed(e)) => {
                            tracing::error!(listener = %label, error = %e, "listener failed; trying again in {RETRY:?}");
                            shared.closed(&label);
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }),
        );
    }
}

/// One listener the node proxy runs for a local workload; the namespace,
/// when there is one, is where it listens (captured mode).
#[derive(Clone)]
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

impl Listening {
    async fn run(self, shared: Arc<Shared>, key: &str) -> Result<(), ListenError> {
        let ready = |shared: &Shared| {
            lock(&shared.ready).insert(key.to_owned());
        };
        match self {
            Listening::Inbound(w, ns) => {
                // Bound first: tunnels that arrive before the certificate
                // wait in the backlog (a pod just captured gets its
                // certificate once the registry has it).
                let addr = SocketAddr::new(w.ip, weft_hbone::PORT);
                let listener = open(&shared, key, addr, ns.as_deref()).await?;
                ready(&shared);
                fetch_until_issued(&shared, &w).await;
                let tls = server_config(
                    shared.certs.source(&w.identity),
                    SpiffeClientVerifier::new(shared.bundle.clone(), &shared.trust_domain),
                )
                .map_err(|e| ListenError::Failed(e.to_string()))?;
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
                let listener = open(&shared, key, addr, ns.as_deref()).await?;
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
                let listener = open(&shared, key, addr, ns.as_deref()).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, service = %l.service, port = l.service_port, "outbound listener ready");
                accept_forever(listener, addr, |client, peer| {
                    let target = Target::Service(l.service.clone(), l.service_port);
                    tokio::spawn(outbound(
                        shared.clone(),
                        w.clone(),
                        target,
                        client,
                        peer,
                        false,
                    ));
                })
                .await
            }
            Listening::Captured(w, ns) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], CAPTURE_PORT));
                let listener = open(&shared, key, addr, Some(&ns)).await?;
                ready(&shared);
                tracing::info!(workload = %w.name, %addr, netns = %ns.path().display(), "captured outbound listener ready");
                accept_forever(listener, addr, |client, peer| {
                    // The registry's current view of it (a pod captured
                    // before the registry had it is served as it is now).
                    let w = (shared.view.load().workloads.get(&w.uid).cloned())
                        .unwrap_or_else(|| w.clone());
                    match crate::netns::original_destination(&client) {
                        Ok(dst) => {
                            let target = Target::Original(dst);
                            tokio::spawn(outbound(shared.clone(), w, target, client, peer, false));
                        }
                        Err(e) => tracing::warn!(workload = %w.name, %peer, error = %e,
                            "captured connection has no original destination (not redirected by nftables?); closed"),
                    }
                })
                .await
            }
            Listening::Plaintext(w, ns) => {
                let addr = SocketAddr::from(([0, 0, 0, 0], PLAINTEXT_PORT));
                let listener = open(&shared, key, addr, Some(&ns)).await?;
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

/// Obtains `w`'s certificate, trying again (1 s, doubling to 30 s) until
/// the certificate service issues it.
async fn fetch_until_issued(shared: &Shared, w: &WorkloadInfo) {
    let mut delay = Duration::from_secs(1);
    loop {
        match shared.certs.fetch(&w.identity).await {
            Ok(_) => return,
            Err(e) => {
                tracing::info!(workload = %w.name, identity = %w.identity, error = %e, retry_in = ?delay, "no certificate yet; inbound tunnels wait");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How long a failed listener waits before the next reconcile tries it
/// again (e.g. its port is still held by a stopping agent).
const RETRY: Duration = Duration::from_secs(2);

/// Why a listener is not running.
enum ListenError {
    /// The workload's address is not on this host: it runs in captured
    /// mode and `weft run` has not attached it yet (not a fault).
    NotHere(String),
    /// Anything else.
    Failed(String),
}

impl From<std::io::Error> for ListenError {
    fn from(e: std::io::Error) -> Self {
        ListenError::Failed(e.to_string())
    }
}

/// The listener `key` on `addr` (in `ns` when given): taken over from the
/// previous agent, or bound; kept for the next.
async fn open(
    shared: &Shared,
    key: &str,
    addr: SocketAddr,
    ns: Option<&Netns>,
) -> Result<TcpListener, ListenError> {
    let listener = match shared.inherit(key)? {
        Some(taken) => taken,
        None => bind(addr, ns).await?,
    };
    shared.keep(key, &listener)?;
    Ok(listener)
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
