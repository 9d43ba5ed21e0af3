//! Outbound: a local workload's connection to a service (explicit
//! listener, SOCKS5) or to its original destination (captured mode) —
//! choose an endpoint ([`route`](crate::route)), open an HBONE tunnel,
//! trying the next endpoint when one fails to connect, splice, count.
//! Destinations outside the registry pass through in plaintext when the
//! mesh allows it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weft_hbone::PoolKey;
use weft_hbone::nested::Far;
use weft_state::{NamespacedName, WorkloadInfo};

use crate::route::{Destination, Route, decide, decide_original, resolve};
use crate::shared::{Shared, lock};
use crate::telemetry::{ConnectionGuard, Counted, tunnel_labels};
use weft_telemetry::flags::{Flag, Flags};
use weft_telemetry::labels::Reporter;

/// Endpoints tried per outbound connection before giving up.
pub const ATTEMPTS: usize = 3;

/// What an outbound connection asked for.
pub(crate) enum Target {
    /// A service port (explicit listener, SOCKS).
    Service(NamespacedName, u16),
    /// The original destination of a captured connection.
    Original(SocketAddr),
}

/// One outbound connection: choose an endpoint, open a tunnel (trying the
/// next endpoint on a connect failure), splice, log.
///
/// The connection's task lives as long as the connection, and a future is
/// as large as its largest state plus its arguments: setting up
/// (certificates, routing, the tunnel's TLS and HTTP/2 steps) is boxed
/// and freed once done, and the splice's future takes only that box, so
/// an open connection keeps only what its splice needs.
pub(crate) fn outbound(
    shared: Arc<Shared>,
    source: Arc<WorkloadInfo>,
    target: Target,
    client: TcpStream,
    peer: SocketAddr,
    socks: bool,
) -> impl Future<Output = ()> + Send {
    splice_opened(Box::pin(open(shared, source, target, client, peer, socks)))
}

/// What an outbound connection is spliced with once set up.
type Opened = (TcpStream, Far, Arc<ConnectionGuard>);

/// The next hop a route names, before its tunnel is opened.
enum Hop {
    /// `target` at the node (or waypoint) at `hbone`, proving `identity`.
    Direct {
        target: SocketAddr,
        hbone: SocketAddr,
        identity: weft_core::Identity,
    },
    /// The service `authority` through the east-west gateway `gateway`.
    Gateway {
        gateway: SocketAddr,
        gateway_identity: weft_core::Identity,
        authority: String,
        identities: Vec<weft_core::Identity>,
    },
}

/// Splices a connection [`open`] set up (nothing when it did not).
async fn splice_opened(opened: std::pin::Pin<Box<impl Future<Output = Option<Opened>>>>) {
    let Some((mut client, tunnel, guard)) = opened.await else {
        return;
    };
    // The guard logs the access line and emits the metrics when the copy ends.
    let mut counted = Counted::new(&mut client, guard, true);
    splice(&mut counted, tunnel).await;
}

/// Sets an outbound connection up: the tunnel it goes through, with its
/// accounting started; `None` when it was refused, failed or passed
/// through outside the mesh (all handled here).
async fn open(
    shared: Arc<Shared>,
    source: Arc<WorkloadInfo>,
    target: Target,
    mut client: TcpStream,
    peer: SocketAddr,
    socks: bool,
) -> Option<Opened> {
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
        return None;
    }
    // The service the caller reached, for labels and logs (empty when it
    // named a workload or an outside address).
    let service = match &target {
        Target::Service(service, _) => Some(service.clone()),
        Target::Original(dst) => match resolve(&shared.view.load(), *dst) {
            Destination::Service { service, .. } => Some(service),
            _ => None,
        },
    };
    // `namespace/host` for logs, the host name for labels and `forwarded`.
    let (service, host) = service.map_or_else(Default::default, |s| (s.to_string(), s.name));
    let host = host.as_str();
    let me = source.peer();
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
        let (endpoint, hop) = match route {
            Route::Tunnel {
                endpoint,
                target,
                hbone,
                identity,
            } => (
                endpoint,
                Hop::Direct {
                    target,
                    hbone,
                    identity,
                },
            ),
            Route::Gateway {
                endpoint,
                gateway,
                gateway_identity,
                authority,
                identities,
            } => (
                endpoint,
                Hop::Gateway {
                    gateway,
                    gateway_identity,
                    authority,
                    identities,
                },
            ),
            Route::Passthrough(addr) => {
                captured_passthrough(&shared, &source, addr, client).await;
                return None;
            }
            Route::Deny(reason) => {
                tracing::info!(source = %source.name, service = %service, %reason, "outbound connection denied");
                tell(&mut client, socks, crate::socks::Reply::NotAllowed).await;
                shared.metrics.refused(
                    tunnel_labels(Reporter::Source, &me, None, host, Flag::Denied),
                    reason,
                );
                return None;
            }
        };
        // A captured pod's tunnels start inside its namespace: the far
        // side sees the pod's address, as with Istio's in-pod mode.
        let from_pod = lock(&shared.captured)
            .get(&source.uid)
            .cloned()
            .map(crate::netns::FromPod);
        let key = |destination, expected| PoolKey {
            source: source.identity.clone(),
            origin: from_pod.as_ref().map_or(0, |p| p.0.inode()),
            destination,
            expected,
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = format!("for=\"{peer}\";host={host}").parse() {
            headers.insert("forwarded", v);
        }
        if let Ok(v) = weft_telemetry::labels::baggage(&me).parse() {
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
        let cert = shared.certs.source(&source.identity);
        let dial = from_pod.as_ref().map(|p| p as &dyn weft_hbone::Dial);
        let connected = match hop {
            Hop::Direct {
                target,
                hbone,
                identity,
            } => shared
                .pool
                .connect_from(&key(hbone, vec![identity]), cert, target, headers, dial)
                .await
                .map(Far::Tunnel),
            Hop::Gateway {
                gateway,
                gateway_identity,
                authority,
                identities,
            } => {
                // Boxed: a rare path that would double the size of every
                // connection's set-up future.
                Box::pin(async {
                    let outer = shared
                        .pool
                        .connect_to(
                            &key(gateway, vec![gateway_identity]),
                            cert.clone(),
                            &authority,
                            headers.clone(),
                            dial,
                        )
                        .await?;
                    weft_hbone::nested::open(
                        outer,
                        gateway,
                        cert,
                        shared.pool.bundle().clone(),
                        identities,
                        &authority,
                        headers,
                    )
                    .await
                    .map(Far::Nested)
                })
                .await
            }
        };
        match connected {
            Ok(tunnel) => {
                if !tell(&mut client, socks, crate::socks::Reply::Succeeded).await {
                    return None;
                }
                let destination = shared.view.load().workloads.get(&endpoint).cloned();
                let guard = shared.metrics.open(tunnel_labels(
                    Reporter::Source,
                    &me,
                    destination.as_deref(),
                    host,
                    Flags::NONE,
                ));
                return Some((client, tunnel, guard));
            }
            Err(e) if e.is_connect_failure() => {
                tracing::info!(%endpoint, error = %e, "endpoint failed to connect; trying another");
                shared.health.mark_failed(&endpoint);
                last_error = e.to_string();
            }
            Err(e) => {
                tracing::warn!(source = %source.name, %endpoint, error = %e, "outbound tunnel failed");
                tell(&mut client, socks, crate::socks::Reply::GeneralFailure).await;
                return None;
            }
        }
    }
    tracing::warn!(source = %source.name, service = %service, error = %last_error, "no endpoint could be reached");
    tell(&mut client, socks, crate::socks::Reply::HostUnreachable).await;
    shared.metrics.refused(
        tunnel_labels(Reporter::Source, &me, None, host, Flag::UpstreamFailure),
        format!("no endpoint could be reached: {last_error}"),
    );
    None
}

/// How long the caller may keep sending after the destination finished.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Copies both ways between a caller and a tunnel. When the destination
/// side ends, the caller's side gets [`HALF_CLOSE_GRACE`] to finish, so a
/// tunnel the far side closed (or policy revoked) never lingers.
async fn splice<A>(caller: &mut A, mut far: Far)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let spliced = far.splice(caller, Some(HALF_CLOSE_GRACE)).await;
    match spliced {
        Ok(done) if done.cut => {
            tracing::debug!("destination finished; the caller did not within the grace period")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "outbound connection ended with an error"),
    }
}

/// Copies between a caller and a plaintext upstream outside the mesh,
/// counted with `connection_security_policy="none"`.
pub(crate) async fn splice_plain(
    shared: &Shared,
    w: &WorkloadInfo,
    addr: SocketAddr,
    mut client: TcpStream,
    mut upstream: TcpStream,
) {
    let mut l = tunnel_labels(
        Reporter::Source,
        &w.peer(),
        None,
        // No service: Istio labels it "unknown" (the address is in the
        // access log), as ztunnel does.
        "",
        Flags::NONE,
    );
    l.connection_security_policy = "none";
    let guard = shared.metrics.open_to(l, Some(addr));
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
    let mut l = tunnel_labels(
        Reporter::Source,
        &w.peer(),
        None,
        // No service: Istio labels it "unknown" (the address is in the
        // access log), as ztunnel does.
        "",
        Flag::UpstreamFailure,
    );
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
