//! Upgrading the node agent without refusing a connection. A new agent
//! started beside the running one (the DaemonSet's `maxSurge: 1`) asks it
//! for its listening sockets over `handover.sock` in the shared state
//! directory, before opening any listener of its own; the running agent
//! passes each one (`SCM_RIGHTS`) with its listener key. Both processes
//! then hold the same sockets and both accept from them, so a connection
//! is queued on a socket that stays open whichever agent takes it. When
//! the old agent is stopped (SIGTERM) it closes its descriptors, which
//! leaves the sockets open in the new one, tells the HBONE peers of its
//! inbound connections to go elsewhere (HTTP/2 GOAWAY) and drains its
//! open connections up to its deadline.
//!
//! The socket is 0600 in the agent's private state directory, and both
//! sides check that the other runs as root or as their own user: whoever
//! holds these sockets receives every pod's traffic.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::netns::{peer_uid, receive_listener, send_listener};
use crate::shared::{Shared, lock};

/// The hand-over socket's name in the state directory.
pub(crate) const SOCKET: &str = "handover.sock";

/// How long either side waits for the other at each step.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `uid` may take part in a hand-over with this process.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Takes the listening sockets of the agent serving `path`, if one runs;
/// none (and a log line saying why) otherwise. Never fails the start: a
/// listener not taken over is bound afresh.
pub(crate) async fn take(path: &Path) -> HashMap<String, std::net::TcpListener> {
    let path = path.to_owned();
    let taken = tokio::task::spawn_blocking(move || receive_all(&path)).await;
    match taken {
        Ok(Ok(taken)) => taken,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no listeners taken over from a previous agent");
            HashMap::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "hand-over task failed");
            HashMap::new()
        }
    }
}

fn receive_all(path: &Path) -> std::io::Result<HashMap<String, std::net::TcpListener>> {
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        // No agent ran before, or it is gone: nothing to take.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::debug!(socket = %path.display(), "no running agent to take over from");
            return Ok(HashMap::new());
        }
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "cannot reach the running agent at {}: {e}",
                path.display()
            )));
        }
    };
    let uid = peer_uid(&stream)?;
    if !trusted(uid) {
        return Err(std::io::Error::other(format!(
            "{} is served by uid {uid}, neither root nor this agent's user; not trusted",
            path.display()
        )));
    }
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut taken = HashMap::new();
    loop {
        match receive_listener(&stream) {
            Ok(Some((key, listener))) => {
                taken.insert(key, listener);
            }
            Ok(None) => break,
            Err(e) => {
                // What arrived is kept; the rest is bound afresh.
                tracing::warn!(error = %e, taken = taken.len(), "hand-over ended early");
                break;
            }
        }
    }
    tracing::info!(
        listeners = taken.len(),
        socket = %path.display(),
        "took over the running agent's listening sockets"
    );
    Ok(taken)
}

/// Serves this agent's listening sockets on `path` to the agent that
/// replaces it.
pub(crate) fn serve(path: &Path, shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    // The previous agent's socket, if any: its sockets were taken first.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let sockets: Vec<(String, OwnedFd)> = lock(&shared.listening)
                .iter()
                .filter_map(|(key, fd)| Some((key.clone(), fd.try_clone().ok()?)))
                .collect();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = hand(stream, &sockets) {
                    tracing::warn!(error = %e, "hand-over to a new agent failed");
                }
            });
        }
    }))
}

fn hand(stream: tokio::net::UnixStream, sockets: &[(String, OwnedFd)]) -> std::io::Result<()> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let uid = peer_uid(&stream)?;
    if !trusted(uid) {
        tracing::warn!(
            uid,
            "hand-over refused: only root or this agent's user may take its sockets"
        );
        return Ok(());
    }
    stream.set_write_timeout(Some(TIMEOUT))?;
    for (key, fd) in sockets {
        send_listener(&stream, key, fd.as_fd())?;
    }
    tracing::info!(
        listeners = sockets.len(),
        "handed the listening sockets to a new agent; both accept until this one is stopped"
    );
    Ok(())
}
