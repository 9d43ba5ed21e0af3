//! L4 telemetry with Istio's standard metric names and labels, so existing
//! dashboards work: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`. One guard per connection counts its
//! bytes and, when the connection closes, emits the metrics and one access
//! log line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_state::WorkloadInfo;
use weft_telemetry::flags::Flags;
use weft_telemetry::labels::{Peer, Reporter, Service};
use weft_telemetry::names;

pub use weft_telemetry::labels::TcpLabels;

/// The four TCP metric families, registered explicitly.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    active: Arc<AtomicU64>,
    /// One shared copy of each label set in use, so an open connection
    /// holds a pointer rather than a dozen strings of its own. It holds
    /// what the families hold (every label set ever counted), no more.
    interned: Arc<Mutex<HashSet<Arc<TcpLabels>>>>,
}

impl TcpMetrics {
    /// Registers the families under their Istio names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            names::TCP_OPENED,
            "TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            names::TCP_CLOSED,
            "TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            names::TCP_SENT_BYTES,
            "Bytes sent during TCP connections (toward the destination)",
            self.sent.clone(),
        );
        registry.register(
            names::TCP_RECEIVED_BYTES,
            "Bytes received during TCP connections (from the destination)",
            self.received.clone(),
        );
    }

    /// Connections open now (what a drain waits for).
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts accounting for one connection.
    pub fn open(&self, labels: TcpLabels) -> Arc<ConnectionGuard> {
        self.open_to(labels, None)
    }

    /// Like [`Metrics::open`], for a connection to an address outside the
    /// registry: its labels say `unknown` (as Istio's do), the access
    /// line names the address.
    pub fn open_to(&self, labels: TcpLabels, address: Option<SocketAddr>) -> Arc<ConnectionGuard> {
        self.opened.get_or_create(&labels).inc();
        self.active.fetch_add(1, Ordering::Relaxed);
        Arc::new(ConnectionGuard {
            metrics: self.clone(),
            labels: self.intern(labels),
            address,
            started: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reason: None,
        })
    }

    /// The shared copy of `labels`.
    fn intern(&self, labels: TcpLabels) -> Arc<TcpLabels> {
        let mut interned = self.interned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = interned.get(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        interned.insert(shared.clone());
        shared
    }

    /// Counts and logs a connection that was refused or failed before any
    /// byte flowed, with the reason in its access log line.
    pub fn refused(&self, labels: TcpLabels, reason: impl std::fmt::Display) {
        self.opened.get_or_create(&labels).inc();
        self.active.fetch_add(1, Ordering::Relaxed);
        drop(ConnectionGuard {
            metrics: self.clone(),
            labels: Arc::new(labels),
            address: None,
            started: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reason: Some(reason.to_string()),
        });
    }
}

/// One connection's accounting; emits on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: TcpMetrics,
    /// Shared with every other connection that has the same labels.
    labels: Arc<TcpLabels>,
    /// The destination address, when no service names it.
    address: Option<SocketAddr>,
    started: Instant,
    sent: AtomicU64,
    received: AtomicU64,
    reason: Option<String>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.active.fetch_sub(1, Ordering::Relaxed);
        let (sent, received) = (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        );
        self.metrics.closed.get_or_create(&self.labels).inc();
        self.metrics.sent.get_or_create(&self.labels).inc_by(sent);
        self.metrics
            .received
            .get_or_create(&self.labels)
            .inc_by(received);
        let l = &self.labels;
        tracing::info!(
            target: "weft::access",
            reporter = l.parties.reporter,
            src = %format!("{}/{}", l.parties.source_workload_namespace, l.parties.source_workload),
            src_principal = %l.parties.source_principal,
            dst = %format!("{}/{}", l.parties.destination_workload_namespace, l.parties.destination_workload),
            dst_principal = %l.parties.destination_principal,
            service = %l.parties.destination_service,
            dst_addr = %self.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            flags = l.response_flags,
            security = l.connection_security_policy,
            sent,
            received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason = self.reason.as_deref().unwrap_or("-"),
            "connection closed"
        );
    }
}

/// A stream that counts what passes through it into a [`ConnectionGuard`]:
/// bytes read from it count as `sent` when it is the caller's side
/// (`reads_are_sent`), as `received` otherwise.
pub struct Counted<S> {
    inner: S,
    guard: Arc<ConnectionGuard>,
    reads_are_sent: bool,
}

impl<S> Counted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, guard: Arc<ConnectionGuard>, reads_are_sent: bool) -> Self {
        Counted {
            inner,
            guard,
            reads_are_sent,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        let counter = if this.reads_are_sent {
            &this.guard.sent
        } else {
            &this.guard.received
        };
        counter.fetch_add(n, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            let counter = if this.reads_are_sent {
                &this.guard.received
            } else {
                &this.guard.sent
            };
            counter.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Istio labels for a connection from `source` to `destination` of
/// `service` (its host name; empty: unknown), over HBONE (mutual TLS).
pub(crate) fn tunnel_labels(
    reporter: Reporter,
    source: &Peer,
    destination: Option<&WorkloadInfo>,
    service: &str,
    flags: impl Into<Flags>,
) -> TcpLabels {
    weft_telemetry::labels::tcp(
        reporter,
        source,
        &destination.map_or_else(Peer::unknown, WorkloadInfo::peer),
        &if service.is_empty() {
            Service::unknown()
        } else {
            Service::from_host(service, None)
        },
        flags.into(),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_with_the_same_labels_share_one_copy_and_still_count_apart() {
        let metrics = TcpMetrics::default();
        let labels = |service| {
            tunnel_labels(
                Reporter::Source,
                &Peer::unknown(),
                None,
                service,
                Flags::NONE,
            )
        };
        let a = metrics.open(labels("a.shop.svc.cluster.local"));
        let b = metrics.open(labels("a.shop.svc.cluster.local"));
        let c = metrics.open(labels("c.shop.svc.cluster.local"));
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(!Arc::ptr_eq(&a.labels, &c.labels));
        assert_eq!(metrics.active(), 3);
        assert_eq!(
            metrics
                .opened
                .get_or_create(&labels("a.shop.svc.cluster.local"))
                .get(),
            2
        );
        drop((a, b, c));
        assert_eq!(metrics.active(), 0);
        assert_eq!(
            metrics
                .closed
                .get_or_create(&labels("a.shop.svc.cluster.local"))
                .get(),
            2
        );
        assert_eq!(metrics.interned.lock().expect("interned").len(), 2);
    }
}
