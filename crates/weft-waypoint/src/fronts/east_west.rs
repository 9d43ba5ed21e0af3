//! The east-west gateway's listener (a Gateway of class `weft-east-west`
//! or `istio-east-west`): where tunnels from other networks enter this
//! one. Each is an outer HBONE tunnel, mTLS with this gateway's identity,
//! naming a service's `host:port` (Istio ambient's double HBONE); the
//! gateway picks an endpoint of that service in its own network and
//! forwards the tunnel's bytes — the caller's end-to-end TLS session with
//! the endpoint's node, which it cannot read — to that endpoint's HBONE
//! port.
//!
//! It is no open relay: a tunnel must name a service of the registry by
//! host name (an `ip:port` is refused), and goes only to the HBONE port
//! of one of that service's endpoints in this network behind a weft node;
//! the endpoint's node then checks the caller's own identity against its
//! policies. Callers must prove an identity of the mesh's trust domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use weft_hbone::server::{OpenFuture, Upstream};
use weft_hbone::{Inbound, InboundHandler, Refusal};
use weft_state::MeshView;

/// How many endpoints one tunnel tries before it is refused.
const ATTEMPTS: usize = 3;

/// Tunnels into this network.
pub struct EastWest {
    /// The mesh as this gateway sees it, updated on every change.
    pub view: Arc<ArcSwap<MeshView>>,
    /// The network this gateway admits into.
    pub network: String,
    /// TCP connect timeout to endpoints' nodes.
    pub connect_timeout: Duration,
    /// Spreads tunnels over a service's endpoints.
    pub turn: AtomicUsize,
}

/// The HBONE addresses of the endpoints of service `host` that serve port
/// `port` in `network` behind a weft node, nearest turn first; or why the
/// tunnel cannot go anywhere.
pub fn endpoints(
    view: &MeshView,
    network: &str,
    host: &str,
    port: u16,
    turn: usize,
) -> Result<Vec<SocketAddr>, Refusal> {
    let service = view
        .service_by_host(host)
        .ok_or_else(|| Refusal::BadRequest(format!("no service {host} in the registry")))?;
    let mut found: Vec<SocketAddr> = view
        .endpoints_of(service)
        .filter(|w| w.network_gateway.is_none() && !w.node.is_empty())
        .filter(|w| w.network.is_empty() || network.is_empty() || w.network == network)
        .filter(|w| {
            w.services
                .get(service)
                .is_some_and(|p| p.contains_key(&port))
        })
        .map(|w| SocketAddr::new(w.ip, weft_hbone::PORT))
        .collect();
    if found.is_empty() {
        return Err(Refusal::Unreachable(format!(
            "{host} has no endpoint serving port {port} in network {network:?}"
        )));
    }
    let len = found.len();
    found.rotate_left(turn % len);
    Ok(found)
}

impl InboundHandler for EastWest {
    fn resolve(&self, host: &str, port: u16, _local: SocketAddr) -> Result<SocketAddr, Refusal> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        endpoints(&self.view.load(), &self.network, host, port, turn).map(|e| e[0])
    }

    fn open(&self, request: Inbound) -> OpenFuture {
        let Some((host, port)) = request.service.clone() else {
            return Box::pin(async move {
                Err(Refusal::BadRequest(format!(
                    "{}: an east-west gateway forwards tunnels to services (host:port), not to addresses",
                    request.target
                )))
            });
        };
        // The chosen endpoint first, then the others in turn.
        let mut order = vec![request.target];
        let turn = self.turn.load(Ordering::Relaxed);
        if let Ok(others) = endpoints(&self.view.load(), &self.network, &host, port, turn) {
            order.extend(others.into_iter().filter(|e| *e != request.target));
        }
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let mut why = String::new();
            for endpoint in order.into_iter().take(ATTEMPTS) {
                match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        tracing::debug!(peer = %request.peer, from = %request.peer_addr, service = %host, port, %endpoint, "east-west tunnel forwarded");
                        return Ok(Box::new(tcp) as Box<dyn Upstream>);
                    }
                    Ok(Err(e)) => why = format!("{endpoint}: {e}"),
                    Err(_) => why = format!("{endpoint}: connect timed out"),
                }
            }
            Err(Refusal::Unreachable(format!("{host}:{port}: {why}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use weft_core::Identity;
    use weft_state::{NamespacedName, WorkloadInfo};

    fn w(uid: &str, ip: [u8; 4], network: &str, port: u16) -> WorkloadInfo {
        WorkloadInfo {
            uid: uid.into(),
            name: NamespacedName::new("shop", uid),
            ip: ip.into(),
            identity: Identity::new("cluster.local", "shop", "reviews").expect("id"),
            node: "node-1".into(),
            locality: Default::default(),
            cluster: "west".into(),
            network: network.into(),
            network_gateway: None,
            services: HashMap::from([("shop/reviews.shop".into(), HashMap::from([(port, 8080)]))]),
            policies: Vec::new(),
            permissive: false,
            waypoint: false,
            gateway: false,
            enforced: false,
            canonical_service: String::new(),
            canonical_revision: String::new(),
        }
    }

    #[test]
    fn tunnels_go_only_to_the_services_endpoints_in_this_network() {
        let mut far = w("far", [10, 9, 0, 1], "net-east", 9080);
        far.network_gateway = Some("192.0.2.1:15008".parse().expect("addr"));
        let mut unmeshed = w("unmeshed", [10, 2, 0, 9], "net-west", 9080);
        unmeshed.node.clear();
        let workloads = [
            w("a", [10, 2, 0, 1], "net-west", 9080),
            w("b", [10, 2, 0, 2], "net-west", 9080),
            w("other-port", [10, 2, 0, 3], "net-west", 9090),
            w("other-net", [10, 3, 0, 1], "net-north", 9080),
            far,
            unmeshed,
        ];
        let mut view = MeshView::default();
        for e in workloads {
            view.endpoints
                .entry("shop/reviews.shop".into())
                .or_default()
                .push(e.uid.clone());
            view.workloads.insert(e.uid.clone(), Arc::new(e));
        }
        view.services_by_host
            .insert("reviews.shop".into(), "shop/reviews.shop".into());
        let hbone = |ip: &str| format!("{ip}:15008").parse::<SocketAddr>().expect("addr");
        assert_eq!(
            endpoints(&view, "net-west", "reviews.shop", 9080, 0),
            Ok(vec![hbone("10.2.0.1"), hbone("10.2.0.2")])
        );
        assert_eq!(
            endpoints(&view, "net-west", "Reviews.Shop", 9080, 1),
            Ok(vec![hbone("10.2.0.2"), hbone("10.2.0.1")])
        );
        assert!(matches!(
            endpoints(&view, "net-west", "reviews.shop", 7000, 0),
            Err(Refusal::Unreachable(_))
        ));
        assert!(matches!(
            endpoints(&view, "net-west", "ledger.shop", 9080, 0),
            Err(Refusal::BadRequest(_))
        ));
    }
}
