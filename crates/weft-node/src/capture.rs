//! Captured mode, the node proxy's side: a Unix socket where `weft run`
//! (which creates the namespace, its veth pair and its nftables rules)
//! asks which workload a namespace is for, then attaches it. Attaching
//! makes the proxy open that workload's listeners inside the namespace;
//! the attachment lasts as long as the `weft run` connection, so a workload
//! whose runner exits is detached even if it was killed.
//!
//! Protocol: one JSON object per line. Requests are
//! `{"op":"resolve"|"attach","netns":"<name or path>","workload":"<ns/name>"?}`;
//! each gets one [`Reply`]. The CNI plugin's requests about pods
//! (`capture`, `release`, `check`: `weft_core::attach`) are answered by
//! [`crate::pods`]. The socket is created mode 0600: only root
//! (who can create namespaces anyway) may attach.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::netns::Netns;
use crate::shared::{Shared, listener_key, lock};
use weft_state::WorkloadInfo;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long an attach waits for the workload's listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request from `weft run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// `resolve` (which workload?) or `attach` (open its listeners).
    pub op: Op,
    /// Namespace name under `/run/netns`, or a path.
    pub netns: String,
    /// The workload (`ns/name` or `name`); defaults to the one named like
    /// the namespace.
    #[serde(default)]
    pub workload: Option<String>,
}

/// What a request asks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Find the workload.
    Resolve,
    /// Open its listeners in the namespace; hold until the connection ends.
    Attach,
}

/// The answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The workload (`ns/name`).
    #[serde(default)]
    pub workload: String,
    /// Its address, which the namespace must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

/// Where a namespace name lives.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// Listens on `path` (replacing a stale socket).
pub(crate) fn serve(path: &Path, shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "captured mode: waiting for `weft run`");
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "attach socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

/// How long `weft run` has to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn handle(stream: UnixStream, shared: Arc<Shared>) {
    // Only root or the node's own user may attach workloads: the socket is
    // made 0600 just after it is bound, and this check closes that window.
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => {}
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                "attach refused: only root or the node's user may attach workloads"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "attach refused: the caller's credentials are unknown");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    if !matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await,
        Ok(Ok(_))
    ) {
        return;
    }
    // A pod from the CNI plugin: answered, not held.
    if let Ok(request) = serde_json::from_str::<weft_core::attach::PodRequest>(&line) {
        let reply = crate::pods::answer(&shared, request).await;
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        let _ = write.write_all(out.as_bytes()).await;
        return;
    }
    let (reply, attached) = match serde_json::from_str::<Request>(&line) {
        Ok(request) => answer(&shared, &request).await,
        Err(e) => (failure(format!("malformed request: {e}")), None),
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_default();
    out.push('\n');
    if write.write_all(out.as_bytes()).await.is_err() {
        if let Some((uid, ns)) = attached {
            detach(&shared, &uid, &ns);
        }
        return;
    }
    let Some((uid, ns)) = attached else {
        return;
    };
    // Held until `weft run` goes away (EOF or error).
    let mut rest = reader.into_inner().into_inner();
    let mut sink = [0u8; 64];
    while matches!(rest.read(&mut sink).await, Ok(n) if n > 0) {}
    detach(&shared, &uid, &ns);
}

fn failure(error: String) -> Reply {
    Reply {
        error: Some(error),
        ..Reply::default()
    }
}

async fn answer(shared: &Arc<Shared>, request: &Request) -> (Reply, Option<(String, Arc<Netns>)>) {
    let w = match find(shared, request) {
        Ok(w) => w,
        Err(e) => return (failure(e), None),
    };
    let found = Reply {
        error: None,
        workload: w.name.to_string(),
        ip: Some(w.ip),
    };
    if request.op == Op::Resolve {
        return (found, None);
    }
    let path = netns_path(&request.netns);
    let ns = match Netns::open(&path) {
        Ok(ns) => Arc::new(ns),
        Err(e) => return (failure(e.to_string()), None),
    };
    lock(&shared.captured).insert(w.uid.clone(), ns.clone());
    shared.wake.notify_one();
    let wanted: Vec<String> = ["inbound", "captured", "plaintext"]
        .iter()
        .map(|kind| listener_key(kind, &w, Some(&ns)))
        .collect();
    let until = Instant::now() + READY_TIMEOUT;
    loop {
        if wanted.iter().all(|k| lock(&shared.ready).contains(k)) {
            tracing::info!(workload = %w.name, netns = %path.display(), "workload attached (captured mode)");
            return (found, Some((w.uid.clone(), ns)));
        }
        if Instant::now() > until {
            detach(shared, &w.uid, &ns);
            return (
                failure(format!(
                    "listeners for {} in {} were not ready within {READY_TIMEOUT:?}; see the node's log",
                    w.name,
                    path.display()
                )),
                None,
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn detach(shared: &Shared, uid: &str, ns: &Arc<Netns>) {
    let mut captured = lock(&shared.captured);
    if captured.get(uid).is_some_and(|held| Arc::ptr_eq(held, ns)) {
        captured.remove(uid);
        tracing::info!(workload = %uid, netns = %ns.path().display(), "workload detached");
    }
    drop(captured);
    shared.wake.notify_one();
}

/// The local workload a request names.
fn find(shared: &Shared, request: &Request) -> Result<Arc<WorkloadInfo>, String> {
    let view = shared.view.load();
    let wanted = request.workload.as_deref().unwrap_or(&request.netns);
    let matches =
        |w: &WorkloadInfo| w.name.to_string() == wanted || w.uid == wanted || w.name.name == wanted;
    let local: Vec<&Arc<WorkloadInfo>> = view.local(&shared.node).collect();
    let found: Vec<&&Arc<WorkloadInfo>> = local.iter().filter(|w| matches(w)).collect();
    match found.as_slice() {
        [one] => Ok((**one).clone()),
        [] => {
            let mut names: Vec<String> = local.iter().map(|w| w.name.to_string()).collect();
            names.sort_unstable();
            Err(format!(
                "no workload {wanted:?} on node {} (its workloads: {}); name one with --workload",
                shared.node,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        }
        many => Err(format!(
            "{wanted:?} names {} workloads on node {}; give --workload <namespace>/<name>",
            many.len(),
            shared.node
        )),
    }
}
