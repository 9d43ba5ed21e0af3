//! Over 700 lines: the routing decision and its table tests, more than
//! half of the file, belong together.
//!
//! The outbound routing decision, as pure functions: from (view, source
//! workload, service and port — or, in captured mode, the original
//! destination — and endpoint health) to a [`Route`]. I/O happens after,
//! from the decision.
//!
//! Endpoint choice is locality-aware: the best tier that has a healthy
//! endpoint wins — the caller's own cluster first (same node, then same
//! zone, then same region, then anywhere in it), then other clusters in
//! the same order. Within a tier endpoints take turns. When the caller's
//! locality has no healthy endpoint, traffic fails over to the next tier,
//! and returns when the local ones recover.
//!
//! An endpoint on another network is reached through its network's
//! east-west gateway ([`Route::Gateway`], double HBONE, addressed by
//! service host name as Istio ambient does); one on another network
//! without a gateway is not reachable and never chosen.

use std::net::SocketAddr;

use weft_core::Identity;

use weft_state::{MeshView, NamespacedName, Reach, WorkloadInfo};

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through an HBONE tunnel to an endpoint.
    Tunnel {
        /// Endpoint uid (for health marking and logs).
        endpoint: String,
        /// `:authority`: the endpoint's address and target port.
        target: SocketAddr,
        /// The endpoint's HBONE address.
        hbone: SocketAddr,
        /// The identity the endpoint must prove.
        identity: Identity,
    },
    /// Through the east-west gateway of the endpoint's network: an outer
    /// HBONE tunnel to the gateway, and the end-to-end one inside it
    /// (double HBONE); the gateway picks the endpoint.
    Gateway {
        /// The endpoint chosen (for health marking and logs); the gateway
        /// may deliver to another of the service's endpoints there.
        endpoint: String,
        /// The gateway's HBONE address.
        gateway: SocketAddr,
        /// The identity the gateway must prove.
        gateway_identity: Identity,
        /// `:authority` of both tunnels: the service's host name and port.
        authority: String,
        /// Identities the far end of the inner tunnel may prove: those of
        /// the service's endpoints behind that gateway.
        identities: Vec<Identity>,
    },
    /// To an address outside the registry, in plaintext (the `Mesh`
    /// outbound policy is `ALLOW_ANY`).
    Passthrough(SocketAddr),
    /// Refused, with the reason.
    Deny(String),
}

/// Ports that are never valid tunnel targets: the node proxy's own
/// (15001 captured outbound, 15006 plaintext inbound, 15008 HBONE, 15080
/// SOCKS5), which would loop.
pub const LOOP_PORTS: [u16; 4] = [15001, 15006, 15008, 15080];

/// The ports weft's own processes serve on a host's loopback addresses:
/// admin (15000), the control plane's config stream and certificate
/// service (15010, 15012), its dashboard (15014), metrics (15020) and
/// readiness (15021). A passthrough connection never reaches them: the
/// node would lend its own network position to the caller.
pub const CONTROL_PORTS: [u16; 6] = [15000, 15010, 15012, 15014, 15020, 15021];

/// Whether a connection to `addr`, outside the registry, may pass through
/// from the node in plaintext. Never to an unspecified address or one of
/// the proxy's own ports; never to loopback for a captured workload (the
/// node's loopback is not the workload's); in local mode, where every
/// workload lives on loopback, other loopback addresses pass but weft's
/// own ports there ([`CONTROL_PORTS`]) do not.
pub fn check_passthrough(addr: SocketAddr, captured: bool) -> Result<(), String> {
    let ip = addr.ip();
    let port = addr.port();
    if ip.is_unspecified() {
        return Err(format!("{addr} is not a valid destination"));
    }
    if LOOP_PORTS.contains(&port) {
        return Err(format!("port {port} is never a valid destination"));
    }
    if ip.is_loopback() && captured {
        return Err(format!(
            "{addr} is the node's loopback, not a destination for a captured workload"
        ));
    }
    if ip.is_loopback() && CONTROL_PORTS.contains(&port) {
        return Err(format!(
            "{addr} is a weft control or admin port on this host; passthrough refused"
        ));
    }
    Ok(())
}

/// Whether an inbound connection may be delivered to `target` on workload
/// `w`: the address must be the workload's, the port one it exposes (a
/// target port of one of its services) and never one of the proxy's own.
pub fn check_target(w: &WorkloadInfo, target: SocketAddr) -> Result<(), String> {
    if target.ip() != w.ip {
        return Err(format!(
            "authority {target} is not the workload this tunnel arrived for ({})",
            w.ip
        ));
    }
    let port = target.port();
    if LOOP_PORTS.contains(&port) {
        return Err(format!("port {port} is never a valid destination"));
    }
    let mut exposed: Vec<u16> = w
        .services
        .values()
        .flat_map(|ports| ports.values().copied())
        .collect();
    if !exposed.contains(&port) {
        exposed.sort_unstable();
        exposed.dedup();
        let list: Vec<String> = exposed.iter().map(u16::to_string).collect();
        return Err(format!(
            "port {port} is not exposed by workload {} (its ports: {})",
            w.name,
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        ));
    }
    Ok(())
}

/// Where a tunnel that names service `host:port` (double HBONE, through
/// an east-west gateway) goes on workload `w`: the target port `w` serves
/// that service port on. Refused when `w` does not back that service, or
/// not on that port.
pub fn service_target(w: &WorkloadInfo, host: &str, port: u16) -> Result<SocketAddr, String> {
    let ports = w
        .services
        .iter()
        .find(|(s, _)| s.name.eq_ignore_ascii_case(host))
        .map(|(_, ports)| ports)
        .ok_or_else(|| format!("workload {} is not an endpoint of {host}", w.name))?;
    let target = ports
        .get(&port)
        .ok_or_else(|| format!("{host} has no port {port} on workload {}", w.name))?;
    Ok(SocketAddr::new(w.ip, *target))
}

/// What an original destination (captured mode) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A service's virtual IP and service port.
    Service {
        /// Namespace and host name.
        service: NamespacedName,
        /// Service port.
        port: u16,
    },
    /// A workload's own address: that workload, not its service.
    Workload {
        /// The workload's uid.
        uid: String,
        /// The port on the workload.
        port: u16,
    },
    /// Not in the registry.
    Unknown(SocketAddr),
}

/// Names the original destination of a captured connection.
pub fn resolve(view: &MeshView, dst: SocketAddr) -> Destination {
    if let Some(service) = view.services_by_vip.get(&dst.ip()) {
        Destination::Service {
            service: service.clone(),
            port: dst.port(),
        }
    } else if let Some(uid) = view.by_ip.get(&dst.ip()) {
        Destination::Workload {
            uid: uid.clone(),
            port: dst.port(),
        }
    } else {
        Destination::Unknown(dst)
    }
}

/// The route to `endpoint` of `service:port` on another network, through
/// `gateway` (double HBONE): the gateway must be a workload of the
/// registry (its identity is checked), and the inner tunnel accepts the
/// identities of the service's endpoints behind it.
fn through_gateway(
    view: &MeshView,
    service: &NamespacedName,
    port: u16,
    endpoint: &WorkloadInfo,
    gateway: SocketAddr,
    candidates: &[(&WorkloadInfo, u16)],
) -> Route {
    let Some(gw) = view.workload_at(gateway.ip()) else {
        return Route::Deny(format!(
            "the east-west gateway {gateway} of network {:?} is not in the registry",
            endpoint.network
        ));
    };
    let mut identities: Vec<Identity> = candidates
        .iter()
        .filter(|(w, _)| w.network_gateway == Some(gateway))
        .map(|(w, _)| w.identity.clone())
        .collect();
    identities.sort();
    identities.dedup();
    Route::Gateway {
        endpoint: endpoint.uid.clone(),
        gateway,
        gateway_identity: gw.identity.clone(),
        authority: format!("{}:{port}", service.name),
        identities,
    }
}

/// The route for a captured connection from `source` to `dst`: a service
/// VIP is load balanced as [`decide`] does; a workload address goes to that
/// workload over HBONE; anything else passes through or is denied by the
/// mesh's outbound policy.
pub fn decide_original(
    view: &MeshView,
    source: &WorkloadInfo,
    dst: SocketAddr,
    unhealthy: &dyn Fn(&str) -> bool,
    turn: usize,
) -> Route {
    match resolve(view, dst) {
        Destination::Service { service, port } => {
            decide(view, source, &service, port, unhealthy, turn)
        }
        Destination::Workload { uid, port } => match view.workloads.get(&uid) {
            Some(w) => Route::Tunnel {
                endpoint: w.uid.clone(),
                target: SocketAddr::new(w.ip, port),
                hbone: SocketAddr::new(w.ip, weft_hbone::PORT),
                identity: w.identity.clone(),
            },
            None => Route::Deny(format!("workload {uid} left the registry")),
        },
        Destination::Unknown(addr) if view.registry_only => Route::Deny(format!(
            "{addr} is not in the registry and the mesh's outbound policy is REGISTRY_ONLY"
        )),
        Destination::Unknown(addr) => Route::Passthrough(addr),
    }
}

/// How close an endpoint is to the caller (lower is closer): within the
/// caller's cluster 0 (same node) to 3 (anywhere), in another cluster 4
/// to 7 in the same order. An unnamed cluster is everyone's.
fn tier(source: &WorkloadInfo, endpoint: &WorkloadInfo) -> u8 {
    let (here, there) = (&source.locality, &endpoint.locality);
    let locality = if !source.node.is_empty() && source.node == endpoint.node {
        0
    } else if !here.zone.is_empty() && here.region == there.region && here.zone == there.zone {
        1
    } else if !here.region.is_empty() && here.region == there.region {
        2
    } else {
        3
    };
    let elsewhere = !source.cluster.is_empty()
        && !endpoint.cluster.is_empty()
        && source.cluster != endpoint.cluster;
    if elsewhere { 4 + locality } else { locality }
}

/// Chooses an endpoint of `service:port` for `source`. `unhealthy` says
/// which endpoints recently failed; `turn` spreads load within a tier.
pub fn decide(
    view: &MeshView,
    source: &WorkloadInfo,
    service: &NamespacedName,
    port: u16,
    unhealthy: &dyn Fn(&str) -> bool,
    turn: usize,
) -> Route {
    // A service with a waypoint: everyone but the waypoint itself goes
    // through it, addressed by the service's VIP (as ztunnel does).
    if let Some(info) = view.services.get(service)
        && let Some(waypoint_ip) = info.waypoint
        && source.ip != waypoint_ip
    {
        let waypoint = view.workload_at(waypoint_ip);
        return match (waypoint, info.vip) {
            (Some(w), Some(vip)) => Route::Tunnel {
                endpoint: w.uid.clone(),
                target: SocketAddr::new(vip, port),
                hbone: SocketAddr::new(w.ip, weft_hbone::PORT),
                identity: w.identity.clone(),
            },
            (None, _) => Route::Deny(format!(
                "service {service} uses waypoint {waypoint_ip}, which is not in the registry"
            )),
            (_, None) => Route::Deny(format!(
                "service {service} uses a waypoint but has no virtual IP"
            )),
        };
    }
    if !view.endpoints.contains_key(service) {
        return Route::Deny(format!("no service {service} in the registry"));
    }
    let candidates: Vec<(&WorkloadInfo, u16)> = view
        .endpoints_of(service)
        .filter(|w| w.reached_from(&source.network) != Reach::Unreachable)
        .filter_map(|w| Some((w.as_ref(), w.target_port(service, port)?)))
        .collect();
    if candidates.is_empty() {
        return Route::Deny(format!(
            "service {service} has no endpoint for port {port} this workload can reach"
        ));
    }
    let healthy: Vec<&(&WorkloadInfo, u16)> = candidates
        .iter()
        .filter(|(w, _)| !unhealthy(&w.uid))
        .collect();
    // With nothing healthy, try everyone rather than refuse (fail open).
    let pool: Vec<&(&WorkloadInfo, u16)> = if healthy.is_empty() {
        candidates.iter().collect()
    } else {
        healthy
    };
    let best = pool.iter().map(|(w, _)| tier(source, w)).min().unwrap_or(3);
    let tier_members: Vec<&&(&WorkloadInfo, u16)> = pool
        .iter()
        .filter(|(w, _)| tier(source, w) == best)
        .collect();
    let (endpoint, target_port) = **tier_members[turn % tier_members.len()];
    if let Reach::Gateway(gateway) = endpoint.reached_from(&source.network) {
        return through_gateway(view, service, port, endpoint, gateway, &candidates);
    }
    Route::Tunnel {
        endpoint: endpoint.uid.clone(),
        target: SocketAddr::new(endpoint.ip, target_port),
        hbone: SocketAddr::new(endpoint.ip, weft_hbone::PORT),
        identity: endpoint.identity.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passthrough_targets() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        // (target, captured, allowed)
        let cases = [
            ("203.0.113.7:443", false, true),
            ("203.0.113.7:443", true, true),
            ("127.0.3.99:8080", false, true),
            ("127.0.3.99:8080", true, false),
            ("127.0.0.1:15010", false, false),
            ("127.0.0.1:15000", false, false),
            ("127.0.1.1:15020", false, false),
            ("127.0.0.1:15014", false, false),
            ("[::1]:15012", false, false),
            ("0.0.0.0:80", false, false),
            ("203.0.113.7:15008", false, false),
            ("203.0.113.7:15080", true, false),
        ];
        for (target, captured, allowed) in cases {
            assert_eq!(
                check_passthrough(a(target), captured).is_ok(),
                allowed,
                "{target} captured={captured}"
            );
        }
    }

    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;

    fn w(uid: &str, ip: [u8; 4], node: &str, zone: &str) -> WorkloadInfo {
        WorkloadInfo {
            uid: uid.into(),
            name: NamespacedName::new("shop", uid),
            ip: ip.into(),
            identity: Identity::new("cluster.local", "shop", uid).expect("id"),
            node: node.into(),
            locality: weft_state::Locality {
                region: "eu".into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            cluster: String::new(),
            network: String::new(),
            network_gateway: None,
            services: HashMap::from([("shop/pay".into(), HashMap::from([(80, 8080)]))]),
            policies: Vec::new(),
            permissive: false,
            waypoint: false,
            gateway: false,
            enforced: false,
            canonical_service: String::new(),
            canonical_revision: String::new(),
        }
    }

    fn view(endpoints: &[WorkloadInfo]) -> MeshView {
        let mut v = MeshView::default();
        for e in endpoints {
            v.endpoints
                .entry("shop/pay".into())
                .or_default()
                .push(e.uid.clone());
            v.workloads.insert(e.uid.clone(), Arc::new(e.clone()));
        }
        v
    }

    fn chosen(route: &Route) -> &str {
        match route {
            Route::Tunnel { endpoint, .. } | Route::Gateway { endpoint, .. } => endpoint,
            Route::Passthrough(_) => "passthrough",
            Route::Deny(reason) => reason,
        }
    }

    #[test]
    fn services_with_a_waypoint_go_through_it() {
        let client = w("client", [127, 0, 1, 9], "node-1", "a");
        let pay = w("pay-1", [127, 0, 2, 20], "node-2", "b");
        let mut waypoint = w("waypoint", [127, 0, 1, 50], "node-1", "a");
        waypoint.services.clear();
        waypoint.waypoint = true;
        let mut v = view(std::slice::from_ref(&pay));
        v.by_ip.insert(waypoint.ip, waypoint.uid.clone());
        v.workloads
            .insert(waypoint.uid.clone(), Arc::new(waypoint.clone()));
        let vip = std::net::IpAddr::from([240, 0, 0, 1]);
        v.services.insert(
            "shop/pay".into(),
            weft_state::ServiceInfo {
                vip: Some(vip),
                waypoint: Some(waypoint.ip),
            },
        );
        let none: &dyn Fn(&str) -> bool = &|_| false;
        // The caller reaches the waypoint, naming the service's VIP.
        assert_eq!(
            decide(&v, &client, &"shop/pay".into(), 80, none, 0),
            Route::Tunnel {
                endpoint: "waypoint".into(),
                target: SocketAddr::new(vip, 80),
                hbone: "127.0.1.50:15008".parse().expect("addr"),
                identity: waypoint.identity.clone(),
            }
        );
        // The waypoint itself reaches the endpoints.
        assert_eq!(
            chosen(&decide(&v, &waypoint, &"shop/pay".into(), 80, none, 0)),
            "pay-1"
        );
        // A waypoint missing from the registry is a clear refusal.
        v.workloads.remove("waypoint");
        assert!(
            chosen(&decide(&v, &client, &"shop/pay".into(), 80, none, 0))
                .contains("not in the registry")
        );
    }

    #[test]
    fn inbound_targets() {
        let pay = w("pay-1", [10, 0, 0, 5], "node-2", "b");
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        // (what, target, expected error substring or "" for allowed)
        let cases = [
            ("an exposed port", "10.0.0.5:8080", ""),
            ("another address", "10.0.0.6:8080", "is not the workload"),
            (
                "the proxy's own port",
                "10.0.0.5:15008",
                "never a valid destination",
            ),
            (
                "a port it does not expose",
                "10.0.0.5:22",
                "port 22 is not exposed by workload shop/pay-1 (its ports: 8080)",
            ),
        ];
        for (what, target, want) in cases {
            match check_target(&pay, addr(target)) {
                Ok(()) => assert!(want.is_empty(), "{what}: allowed"),
                Err(e) => assert!(!want.is_empty() && e.contains(want), "{what}: {e}"),
            }
        }
    }

    #[test]
    fn original_destinations() {
        let client = w("client", [127, 0, 1, 9], "node-1", "a");
        let pay = w("pay-1", [10, 0, 0, 5], "node-2", "b");
        let mut v = view(std::slice::from_ref(&pay));
        v.by_ip.insert(pay.ip, pay.uid.clone());
        v.services_by_vip
            .insert([240, 0, 0, 1].into(), "shop/pay".into());
        let none: &dyn Fn(&str) -> bool = &|_| false;
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        // (what, original destination, registry only, expected choice)
        let cases = [
            ("service VIP", "240.0.0.1:80", false, "pay-1"),
            (
                "service VIP, unknown port",
                "240.0.0.1:81",
                false,
                "service shop/pay has no endpoint for port 81 this workload can reach",
            ),
            ("workload address", "10.0.0.5:9000", false, "pay-1"),
            ("outside, ALLOW_ANY", "192.0.2.1:443", false, "passthrough"),
            (
                "outside, REGISTRY_ONLY",
                "192.0.2.1:443",
                true,
                "192.0.2.1:443 is not in the registry and the mesh's outbound policy is REGISTRY_ONLY",
            ),
        ];
        for (what, dst, registry_only, want) in cases {
            v.registry_only = registry_only;
            let got = decide_original(&v, &client, addr(dst), none, 0);
            assert_eq!(chosen(&got), want, "{what}");
        }
        // A workload address keeps the port the caller asked for.
        let route = decide_original(&v, &client, addr("10.0.0.5:9000"), none, 0);
        assert!(matches!(route, Route::Tunnel { target, .. } if target == addr("10.0.0.5:9000")));
        assert_eq!(
            resolve(&v, addr("192.0.2.1:443")),
            Destination::Unknown(addr("192.0.2.1:443"))
        );
    }

    #[test]
    fn table() {
        let client = w("client", [127, 0, 1, 9], "node-1", "a");
        let same_node = w("same-node", [127, 0, 1, 20], "node-1", "a");
        let same_zone = w("same-zone", [127, 0, 3, 20], "node-3", "a");
        let other_zone = w("other-zone", [127, 0, 2, 20], "node-2", "b");
        let all = view(&[same_node.clone(), same_zone.clone(), other_zone.clone()]);
        let none: &dyn Fn(&str) -> bool = &|_| false;
        // (what, service, port, which endpoints are unhealthy, expected choice)
        type Case = (
            &'static str,
            &'static str,
            u16,
            Box<dyn Fn(&str) -> bool>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "prefers the same node",
                "shop/pay",
                80,
                Box::new(|_| false),
                "same-node",
            ),
            (
                "then the same zone",
                "shop/pay",
                80,
                Box::new(|u| u == "same-node"),
                "same-zone",
            ),
            (
                "then the region",
                "shop/pay",
                80,
                Box::new(|u| u != "other-zone"),
                "other-zone",
            ),
            (
                "all unhealthy: best tier anyway",
                "shop/pay",
                80,
                Box::new(|_| true),
                "same-node",
            ),
            (
                "unknown service",
                "shop/nope",
                80,
                Box::new(|_| false),
                "no service shop/nope in the registry",
            ),
            (
                "unknown port",
                "shop/pay",
                81,
                Box::new(|_| false),
                "service shop/pay has no endpoint for port 81 this workload can reach",
            ),
        ];
        for (what, service, port, unhealthy, want) in cases {
            let got = decide(&all, &client, &service.into(), port, &*unhealthy, 0);
            assert_eq!(chosen(&got), want, "{what}");
        }
        // The chosen tunnel targets the endpoint's target port, HBONE on 15008.
        let route = decide(&all, &client, &"shop/pay".into(), 80, none, 0);
        assert_eq!(
            route,
            Route::Tunnel {
                endpoint: "same-node".into(),
                target: "127.0.1.20:8080".parse().expect("addr"),
                hbone: "127.0.1.20:15008".parse().expect("addr"),
                identity: same_node.identity.clone(),
            }
        );
    }

    #[test]
    fn other_clusters_come_after_the_callers_own_and_other_networks_through_their_gateway() {
        let at = |uid: &str, ip: [u8; 4], cluster: &str, network: &str, zone: &str| {
            let mut e = w(uid, ip, &format!("{cluster}/node"), zone);
            e.cluster = cluster.into();
            e.network = network.into();
            e
        };
        let client = at("client", [10, 1, 0, 9], "east", "net-east", "a");
        let east = at("east", [10, 1, 0, 20], "east", "net-east", "b");
        // West, same zone as the caller but another cluster.
        let west_flat = at("west-flat", [10, 1, 5, 20], "west", "net-east", "a");
        let mut west_far = at("west-far", [10, 2, 0, 20], "west", "net-west", "a");
        let gateway: SocketAddr = "192.0.2.10:15008".parse().expect("addr");
        west_far.network_gateway = Some(gateway);
        let lost = at("lost", [10, 3, 0, 20], "north", "net-north", "a");
        let mut all = view(&[
            east.clone(),
            west_flat.clone(),
            west_far.clone(),
            lost.clone(),
        ]);
        let mut gw = at("east-west", [192, 0, 2, 10], "west", "net-west", "a");
        gw.identity = Identity::new("cluster.local", "istio-system", "east-west").expect("id");
        all.by_ip.insert(gw.ip, gw.uid.clone());
        all.workloads.insert(gw.uid.clone(), Arc::new(gw.clone()));
        let down = |names: &'static [&'static str]| move |u: &str| names.contains(&u);
        // (what, unhealthy, choice)
        type Case<'a> = (&'a str, &'a dyn Fn(&str) -> bool, &'a str);
        let cases: [Case<'_>; 4] = [
            (
                "the caller's cluster first, whatever the zone",
                &|_| false,
                "east",
            ),
            (
                "then another cluster, nearest first",
                &down(&["east"]),
                "west-flat",
            ),
            (
                "then another network, through its gateway",
                &down(&["east", "west-flat"]),
                "west-far",
            ),
            (
                "never a network without a gateway",
                &down(&["east", "west-flat", "west-far"]),
                "east",
            ),
        ];
        for (what, unhealthy, want) in cases {
            let got = decide(&all, &client, &"shop/pay".into(), 80, unhealthy, 0);
            assert_eq!(chosen(&got), want, "{what}");
        }
        // Through the gateway: both tunnels name the service's host and
        // port; the outer proves the gateway, the inner the endpoints there.
        let route = decide(
            &all,
            &client,
            &"shop/pay".into(),
            80,
            &down(&["east", "west-flat"]),
            0,
        );
        assert_eq!(
            route,
            Route::Gateway {
                endpoint: "west-far".into(),
                gateway,
                gateway_identity: gw.identity.clone(),
                authority: "pay:80".into(),
                identities: vec![west_far.identity.clone()],
            }
        );
        // A gateway the registry does not know is not trusted blindly.
        all.by_ip.remove(&gw.ip);
        let route = decide(
            &all,
            &client,
            &"shop/pay".into(),
            80,
            &down(&["east", "west-flat"]),
            0,
        );
        assert!(chosen(&route).contains("192.0.2.10:15008"), "{route:?}");
        // A caller on an unnamed network reaches everyone directly.
        let mut flat = client.clone();
        flat.network.clear();
        let route = decide(
            &all,
            &flat,
            &"shop/pay".into(),
            80,
            &down(&["east", "west-flat"]),
            0,
        );
        assert!(matches!(route, Route::Tunnel { .. }), "{route:?}");
    }

    #[test]
    fn tunnels_naming_a_service_reach_its_target_port() {
        let pay = w("pay-1", [10, 2, 0, 20], "node-2", "b");
        let cases = [
            ("pay", 80, Ok("10.2.0.20:8080")),
            ("PAY", 80, Ok("10.2.0.20:8080")),
            ("pay", 81, Err("pay has no port 81 on workload shop/pay-1")),
            (
                "ledger",
                80,
                Err("workload shop/pay-1 is not an endpoint of ledger"),
            ),
        ];
        for (host, port, want) in cases {
            let got = service_target(&pay, host, port);
            match want {
                Ok(addr) => assert_eq!(got, Ok(addr.parse().expect("addr")), "{host}:{port}"),
                Err(why) => assert_eq!(got, Err(why.to_owned()), "{host}:{port}"),
            }
        }
    }

    #[test]
    fn endpoints_of_one_tier_take_turns() {
        let client = w("client", [127, 0, 9, 9], "node-9", "z");
        let a = w("a", [127, 0, 2, 1], "node-2", "b");
        let b = w("b", [127, 0, 2, 2], "node-2", "b");
        let v = view(&[a, b]);
        let picks: Vec<String> = (0..4)
            .map(|t| chosen(&decide(&v, &client, &"shop/pay".into(), 80, &|_| false, t)).to_owned())
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }
}
