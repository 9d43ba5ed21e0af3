//! What every part of the node proxy shares: the node's certificates,
//! tunnel pool and current [`MeshView`], endpoint health, metrics, the
//! registry of open inbound connections, captured namespaces and which
//! listeners are ready. Built once by [`start`](crate::start).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use weft_ca::{CertManager, TrustBundle};
use weft_hbone::HbonePool;
use weft_state::{MeshView, WorkloadInfo};

use crate::netns::Netns;
use crate::telemetry::TcpMetrics;

/// How long an endpoint that failed to connect is skipped.
pub const FAILED_ENDPOINT_BACKOFF: Duration = Duration::from_secs(5);

/// Endpoints that recently failed to connect.
#[derive(Default, Debug)]
pub(crate) struct Health(Mutex<HashMap<String, Instant>>);

impl Health {
    pub(crate) fn mark_failed(&self, uid: &str) {
        let until = Instant::now() + FAILED_ENDPOINT_BACKOFF;
        lock(&self.0).insert(uid.to_owned(), until);
    }
    pub(crate) fn is_unhealthy(&self, uid: &str) -> bool {
        lock(&self.0)
            .get(uid)
            .is_some_and(|until| Instant::now() < *until)
    }
}

/// The node proxy's shared state.
pub(crate) struct Shared {
    pub(crate) node: String,
    pub(crate) trust_domain: String,
    pub(crate) certs: CertManager,
    pub(crate) bundle: TrustBundle,
    pub(crate) pool: HbonePool,
    pub(crate) view: Arc<ArcSwap<MeshView>>,
    pub(crate) health: Health,
    pub(crate) turn: AtomicUsize,
    pub(crate) connect_timeout: Duration,
    pub(crate) metrics: TcpMetrics,
    pub(crate) open: crate::revocable::Registry,
    /// Captured workloads' network namespaces, by workload uid.
    pub(crate) captured: Mutex<HashMap<String, Arc<Netns>>>,
    /// Pods captured before the registry has them, by workload uid
    /// (served from what the CNI plugin said until it does).
    pub(crate) provisional: Mutex<HashMap<String, Arc<WorkloadInfo>>>,
    /// Decides which pods handed over by the CNI plugin are captured
    /// (`None`: no pods taken).
    pub(crate) pods: Option<Arc<dyn crate::pod_policy::PodPolicy>>,
    /// Where the captured pods are kept across restarts.
    pub(crate) pods_file: Option<std::path::PathBuf>,
    /// Wakes the reconcile loop (a workload was attached or detached).
    pub(crate) wake: tokio::sync::Notify,
    /// Keys of the listeners that are bound and accepting.
    pub(crate) ready: Mutex<HashSet<String>>,
    /// A descriptor of every listening socket, by listener key: what an
    /// upgrade hands to the next agent.
    pub(crate) listening: Mutex<HashMap<String, OwnedFd>>,
    /// Listening sockets taken over from the previous agent, by key, until
    /// the listener that wants each takes it.
    pub(crate) inherited: Mutex<HashMap<String, std::net::TcpListener>>,
}

impl Shared {
    /// The listening socket for `key` the previous agent handed over, if
    /// any.
    pub(crate) fn inherit(&self, key: &str) -> std::io::Result<Option<TcpListener>> {
        let Some(taken) = lock(&self.inherited).remove(key) else {
            return Ok(None);
        };
        taken.set_nonblocking(true)?;
        tracing::debug!(listener = %key, "taken over from the previous agent");
        TcpListener::from_std(taken).map(Some)
    }

    /// Keeps a descriptor of `listener` for the agent that replaces this
    /// one.
    pub(crate) fn keep(&self, key: &str, listener: &TcpListener) -> std::io::Result<()> {
        let kept = listener.as_fd().try_clone_to_owned()?;
        lock(&self.listening).insert(key.to_owned(), kept);
        Ok(())
    }

    /// Forgets a closed listener.
    pub(crate) fn closed(&self, key: &str) {
        lock(&self.ready).remove(key);
        lock(&self.listening).remove(key);
    }
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
