//! Open inbound connections that policy can take back: each is registered
//! with what authorization needs, and when the policies change every open
//! connection is checked again; newly denied ones are closed at once, even
//! when idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_core::Identity;

/// What authorization needs to know about an open connection.
#[derive(Debug, Clone)]
pub struct OpenConn {
    /// The destination workload's uid.
    pub workload: String,
    /// The caller's identity.
    pub peer: Identity,
    /// The caller's address.
    pub peer_ip: IpAddr,
    /// The workload address.
    pub target_ip: IpAddr,
    /// The workload port.
    pub target_port: u16,
}

/// One open connection: what authorization needs, and the revocation
/// signal — a flag read on every I/O (cheap) and the waker of a read that
/// waits, so a stream idle when it is raised still ends. One allocation,
/// shared by the registry and the stream.
struct Entry {
    conn: OpenConn,
    revoked: AtomicBool,
    waiting: Mutex<Option<Waker>>,
}

impl Entry {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every open inbound connection of a node.
#[derive(Default, Clone)]
pub struct Registry {
    next: Arc<AtomicU64>,
    open: Arc<Mutex<HashMap<u64, Arc<Entry>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} open)", self.lock().len())
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn`; the returned stream ends when it is revoked, and
    /// unregisters itself when dropped.
    pub fn wrap<S>(&self, conn: OpenConn, inner: S) -> Revocable<S> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            conn,
            revoked: AtomicBool::new(false),
            waiting: Mutex::new(None),
        });
        self.lock().insert(id, entry.clone());
        Revocable {
            inner,
            entry,
            registry: self.clone(),
            id,
        }
    }

    /// Closes every open connection `still_allowed` rejects; returns how
    /// many were closed and why.
    pub fn recheck(
        &self,
        still_allowed: impl Fn(&OpenConn) -> Result<(), String>,
    ) -> Vec<(OpenConn, String)> {
        let mut closed = Vec::new();
        for entry in self.lock().values() {
            if let Err(reason) = still_allowed(&entry.conn) {
                entry.revoked.store(true, Ordering::SeqCst);
                if let Some(waker) = entry.waiting().take() {
                    waker.wake();
                }
                closed.push((entry.conn.clone(), reason));
            }
        }
        closed
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream whose reads end and whose writes fail with `PermissionDenied`
/// once revoked.
pub struct Revocable<S> {
    inner: S,
    /// Its registry entry; a read that waits leaves its waker there, so
    /// busy streams pay one atomic load per I/O.
    entry: Arc<Entry>,
    registry: Registry,
    id: u64,
}

impl<S> Drop for Revocable<S> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl<S> Revocable<S> {
    fn revoked(&self) -> bool {
        self.entry.revoked.load(Ordering::SeqCst)
    }
}

fn denied() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "connection closed: no longer allowed by authorization policy",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Revocable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Revoked: reads end (EOF), so the tunnel closes cleanly toward the
        // caller; writes fail, so nothing more reaches the workload.
        if this.revoked() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                // Leave the waker before looking at the flag again, so a
                // revocation between the two cannot be missed.
                let mut waiting = this.entry.waiting();
                if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waiting = Some(cx.waker().clone());
                }
                drop(waiting);
                if this.revoked() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Revocable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.revoked() {
            return Poll::Ready(Err(denied()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn revoked_idle_streams_fail_and_others_continue() {
        let registry = Registry::default();
        let conn = |sa: &str| OpenConn {
            workload: "w".into(),
            peer: Identity::new("cluster.local", "shop", sa).expect("id"),
            peer_ip: [127, 0, 0, 1].into(),
            target_ip: [127, 0, 0, 2].into(),
            target_port: 80,
        };
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let mut denied = registry.wrap(conn("frontend"), a);
        let mut kept = registry.wrap(conn("orders"), b);
        assert_eq!(registry.len(), 2);
        // An idle read on the denied stream ends once policy changes.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            denied.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        let closed = registry.recheck(|c| {
            if c.peer.service_account() == "frontend" {
                Err("denied".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(closed.len(), 1);
        assert_eq!(
            reader.await.expect("join").expect("EOF"),
            0,
            "revoked reads end"
        );
        assert_eq!(registry.len(), 1, "a dropped stream unregisters");
        // The other keeps working.
        b_peer.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        kept.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
        let _ = a_peer.write_all(b"x").await;
    }
}
