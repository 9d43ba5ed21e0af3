//! Endpoints of another network, as the engine balances them: one per
//! (east-west gateway, service, port), since the gateway picks the
//! endpoint behind it. Each is named by a *handle*, an address no workload
//! has (in the IPv6 unique-local prefix `fd77:6566:7400::/48`, derived
//! from the gateway, service and port), so the balancer, outlier detection
//! and connection pools key it like any endpoint, and the HBONE connector
//! finds how to reach it: an outer tunnel to the gateway, the end-to-end
//! tunnel inside it naming the service's `host:port` (double HBONE, as
//! node proxies do). A workload whose own address falls in that prefix is
//! not reachable from a waypoint.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use weft_core::Identity;
use weft_state::{MeshView, NamespacedName};

/// The prefix of handles.
const PREFIX: [u16; 3] = [0xfd77, 0x6566, 0x7400];

/// How to reach the endpoints a handle stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRoute {
    /// The gateway's HBONE address.
    pub gateway: SocketAddr,
    /// The identity the gateway proves.
    pub gateway_identity: Identity,
    /// `host:port` of the service, named in both tunnels.
    pub authority: String,
    /// The identities of the service's endpoints behind that gateway (the
    /// inner tunnel accepts only these).
    pub identities: Vec<Identity>,
}

/// Handles and their routes.
pub type RemoteRoutes = HashMap<SocketAddr, RemoteRoute>;

/// The handle of `service:port`'s endpoints behind `gateway`.
pub fn handle(gateway: SocketAddr, service: &NamespacedName, port: u16) -> SocketAddr {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (gateway, service.to_string()).hash(&mut h);
    let bits = h.finish();
    let [a, b, c] = PREFIX;
    let ip = Ipv6Addr::new(
        a,
        b,
        c,
        0,
        (bits >> 48) as u16,
        (bits >> 32) as u16,
        (bits >> 16) as u16,
        bits as u16,
    );
    SocketAddr::new(IpAddr::V6(ip), port)
}

/// Whether `ip` is a handle rather than an address.
pub fn is_handle(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.segments()[..3] == PREFIX,
        IpAddr::V4(_) => false,
    }
}

/// Every handle the registry implies, with its route: for each workload
/// behind a network gateway, each service port it serves. Gateways not
/// in the registry (their identity unknown) give none.
pub fn routes(view: &MeshView) -> RemoteRoutes {
    let mut out = RemoteRoutes::new();
    for w in view.workloads.values() {
        let Some(gateway) = w.network_gateway else {
            continue;
        };
        let Some(gw) = view.workload_at(gateway.ip()) else {
            continue;
        };
        for (service, ports) in &w.services {
            for port in ports.keys() {
                let route = out
                    .entry(handle(gateway, service, *port))
                    .or_insert_with(|| RemoteRoute {
                        gateway,
                        gateway_identity: gw.identity.clone(),
                        authority: format!("{}:{port}", service.name),
                        identities: Vec::new(),
                    });
                if !route.identities.contains(&w.identity) {
                    route.identities.push(w.identity.clone());
                    route.identities.sort();
                }
            }
        }
    }
    out
}

/// Who answers at each handle, for telemetry: the endpoint behind it when
/// there is one, else what they share (namespace, service, cluster) with
/// the workload `unknown`.
pub fn peers(view: &MeshView) -> HashMap<IpAddr, weft_telemetry::labels::Peer> {
    let mut out: HashMap<IpAddr, weft_telemetry::labels::Peer> = HashMap::new();
    for w in view.workloads.values() {
        let Some(gateway) = w.network_gateway else {
            continue;
        };
        for service in w.services.keys() {
            let ip = handle(gateway, service, 0).ip();
            let peer = w.peer();
            out.entry(ip)
                .and_modify(|p| {
                    let unknown = weft_telemetry::labels::UNKNOWN;
                    if p.workload != peer.workload {
                        p.workload = unknown.to_owned();
                    }
                    if p.principal != peer.principal {
                        p.principal = unknown.to_owned();
                    }
                })
                .or_insert(peer);
        }
    }
    out
}
