//! Inbound: HBONE tunnels to a local workload (checked against its
//! exposed ports, the waypoint its service uses and L4 authorization, then
//! delivered and registered so a policy change can close them), captured
//! plaintext under `PERMISSIVE`, and re-checking open connections when
//! policy changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use tokio::net::TcpStream;
use weft_hbone::server::{OpenFuture, Upstream};
use weft_hbone::{Inbound, InboundHandler, Refusal};
use weft_state::{MeshView, WorkloadInfo};

use crate::netns::Netns;
use crate::shared::Shared;
use crate::telemetry::{Counted, TcpLabels, TcpMetrics, tunnel_labels};
use weft_telemetry::flags::{Flag, Flags};
use weft_telemetry::labels::{Peer, Reporter};

/// Checks every open inbound connection against the policies now in
/// force; closes the ones no longer allowed.
pub(crate) fn recheck_open_connections(shared: &Shared, view: &MeshView) {
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

/// A plaintext connection to captured workload `uid` (nftables sent it to
/// port 15006): refused under `STRICT`; under `PERMISSIVE` checked against
/// L4 policy as an unauthenticated caller and delivered.
pub(crate) async fn plaintext_inbound(
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
    let labels = |flag| plaintext_labels(&w, dst.port(), flag);
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
        shared
            .metrics
            .refused(labels(Flags::from(Flag::Denied)), reason);
        return;
    }
    match tokio::time::timeout(shared.connect_timeout, ns.connect(dst)).await {
        Ok(Ok(mut app)) => {
            let _ = app.set_nodelay(true);
            let guard = shared.metrics.open(labels(Flags::NONE));
            let mut counted = Counted::new(&mut client, guard, true);
            let _ = weft_hbone::copy::bidirectional(&mut counted, &mut app).await;
        }
        Ok(Err(e)) => shared.metrics.refused(
            labels(Flags::from(Flag::UpstreamFailure)),
            format!("{dst}: {e}"),
        ),
        Err(_) => shared.metrics.refused(
            labels(Flags::from(Flag::UpstreamFailure)),
            format!("{dst}: connect timed out"),
        ),
    }
}

/// Labels for plaintext from an unknown caller to workload `w`.
fn plaintext_labels(w: &WorkloadInfo, port: u16, flags: Flags) -> TcpLabels {
    use weft_telemetry::labels::{Peer, Reporter, Service};
    let service = w
        .services
        .iter()
        .find(|(_, ports)| ports.values().any(|target| *target == port))
        .map(|(s, _)| s.name.as_str());
    weft_telemetry::labels::tcp(
        Reporter::Destination,
        &Peer::unknown(),
        &w.peer(),
        &service.map_or_else(Service::unknown, |h| Service::from_host(h, None)),
        flags,
        false,
    )
}

/// A connection to `addr`, made from `ns` when given.
async fn connect(addr: SocketAddr, ns: Option<&Netns>) -> std::io::Result<TcpStream> {
    match ns {
        Some(ns) => ns.connect(addr).await,
        None => TcpStream::connect(addr).await,
    }
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
        .map(|(s, _)| s.name.as_str());
    match (matching.next(), matching.next()) {
        (Some(only), None) => only.to_owned(),
        _ => String::new(),
    }
}

/// Inbound tunnels for one local workload.
pub(crate) struct InboundFor {
    /// The workload the tunnels are for.
    pub(crate) workload: Arc<WorkloadInfo>,
    /// Where the workload runs, in captured mode.
    pub(crate) ns: Option<Arc<Netns>>,
    /// How long delivering to the workload may take to connect.
    pub(crate) connect_timeout: Duration,
    /// Where connections are counted.
    pub(crate) metrics: TcpMetrics,
    /// The mesh view, loaded per tunnel.
    pub(crate) view: Arc<ArcSwap<MeshView>>,
    /// Open connections, re-checked when policy changes.
    pub(crate) open: crate::revocable::Registry,
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
    /// A tunnel naming a service (double HBONE, through an east-west
    /// gateway) goes to the port this workload serves it on.
    fn resolve(&self, host: &str, port: u16, _local: SocketAddr) -> Result<SocketAddr, Refusal> {
        let view = self.view.load();
        let workload = view
            .workloads
            .get(&self.workload.uid)
            .unwrap_or(&self.workload);
        crate::route::service_target(workload, host, port).map_err(Refusal::BadRequest)
    }

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
            // The registry's current view of the workload (a pod captured
            // before the registry had it was listened for from what its
            // CNI plugin said).
            let workload = view
                .load()
                .workloads
                .get(&workload.uid)
                .cloned()
                .unwrap_or(workload);
            if let Err(why) = crate::route::check_target(&workload, request.target) {
                return Err(Refusal::BadRequest(why));
            }
            // The caller as its proven identity and its baggage describe
            // it (a telemetry peer, not a registry workload).
            let caller: Peer = weft_telemetry::labels::peer_from_baggage(
                request
                    .headers
                    .get("baggage")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                &request.peer.to_string(),
            );
            // No skipping a waypoint, then L4 authorization against the
            // policies in force now.
            let decision = {
                let view = view.load();
                let current = workload.clone();
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
            let service = called_service(&request, &workload);
            let labels = |flags: Flags| {
                tunnel_labels(
                    Reporter::Destination,
                    &caller,
                    Some(&workload),
                    &service,
                    flags,
                )
            };
            if let Err(reason) = decision {
                metrics.refused(labels(Flag::Denied.into()), &reason);
                return Err(Refusal::Denied(reason));
            }
            match tokio::time::timeout(timeout, connect(request.target, ns.as_deref())).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = metrics.open(labels(Flags::NONE));
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
                    metrics.refused(labels(Flag::UpstreamFailure.into()), &reason);
                    Err(Refusal::Unreachable(reason))
                }
            }
        })
    }
}
