//! Traffic cannot skip a waypoint: the destination node refuses a tunnel
//! (or plaintext connection) to a service port of a workload whose service
//! uses a waypoint, unless it comes from that waypoint — or from an
//! ingress gateway, a weft L7 proxy that applied its own policy and goes
//! through the waypoint only when `istio.io/ingress-use-waypoint` asks.
//! Otherwise a caller that knows an endpoint's address would call it
//! directly and skip the JWT checks, L7 authorization and rate limits the
//! waypoint applies.
//!
//! A waypoint labelled `istio.io/waypoint-for: none` is not enforced this
//! way. One pure function, table-tested.

use weft_core::Identity;

use weft_state::{MeshView, NamespacedName, WorkloadInfo};

/// Whether a connection from `caller` (`None`: plaintext) may reach
/// workload `w` on `port`; `Err` says which waypoint it skipped.
pub fn check(
    view: &MeshView,
    w: &WorkloadInfo,
    port: u16,
    caller: Option<&Identity>,
) -> Result<(), String> {
    let mut services: Vec<(&NamespacedName, &std::collections::HashMap<u16, u16>)> =
        w.services.iter().collect();
    services.sort_by_key(|(name, _)| *name);
    for (service, ports) in services {
        if !ports.values().any(|target| *target == port) {
            continue;
        }
        let Some(waypoint) = view
            .services
            .get(service)
            .and_then(|s| s.waypoint)
            .and_then(|ip| view.workload_at(ip))
            .filter(|wp| wp.enforced)
        else {
            continue;
        };
        let from_waypoint = caller == Some(&waypoint.identity);
        let from_gateway = caller.is_some_and(|c| {
            view.workloads
                .values()
                .any(|g| g.gateway && &g.identity == c)
        });
        if !from_waypoint && !from_gateway {
            return Err(format!(
                "{} port {port} serves {service}, whose traffic goes through waypoint {}: a direct call from {} skips it",
                w.name,
                waypoint.name,
                caller.map_or_else(|| "a plaintext caller".to_owned(), ToString::to_string)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use weft_state::ServiceInfo;

    fn workload(name: &str, ip: [u8; 4]) -> WorkloadInfo {
        WorkloadInfo {
            uid: name.into(),
            name: NamespacedName::new("shop", name),
            ip: ip.into(),
            identity: Identity::new("cluster.local", "shop", name).expect("id"),
            node: "node-1".into(),
            locality: Default::default(),
            cluster: String::new(),
            network: String::new(),
            network_gateway: None,
            services: HashMap::new(),
            policies: Vec::new(),
            permissive: false,
            waypoint: false,
            gateway: false,
            enforced: false,
            canonical_service: String::new(),
            canonical_revision: String::new(),
        }
    }

    /// reviews (port 80 → 8080) uses waypoint `wp`; payments (80 → 9090)
    /// uses none; `edge` is a gateway.
    fn view(enforced: bool) -> (MeshView, WorkloadInfo) {
        let mut v = MeshView::default();
        let mut wp = workload("wp", [10, 0, 0, 40]);
        wp.waypoint = true;
        wp.enforced = enforced;
        let mut edge = workload("edge", [10, 0, 0, 50]);
        edge.gateway = true;
        let mut reviews = workload("reviews", [10, 0, 0, 12]);
        reviews.services = HashMap::from([
            ("shop/reviews".into(), HashMap::from([(80, 8080)])),
            ("shop/payments".into(), HashMap::from([(80, 9090)])),
        ]);
        v.services.insert(
            "shop/reviews".into(),
            ServiceInfo {
                vip: None,
                waypoint: Some(wp.ip),
            },
        );
        v.services
            .insert("shop/payments".into(), ServiceInfo::default());
        for w in [&wp, &edge, &reviews] {
            v.by_ip.insert(w.ip, w.uid.clone());
            v.workloads.insert(w.uid.clone(), Arc::new(w.clone()));
        }
        (v, reviews)
    }

    #[test]
    fn only_the_waypoint_or_a_gateway_reaches_a_waypointed_port() {
        let id = |sa: &str| Identity::new("cluster.local", "shop", sa).expect("id");
        let (wp, edge, frontend) = (id("wp"), id("edge"), id("frontend"));
        // (enforced, port, caller, allowed)
        let cases: [(bool, u16, Option<&Identity>, bool); 9] = [
            (true, 8080, Some(&wp), true),
            (true, 8080, Some(&edge), true),
            (true, 8080, Some(&frontend), false),
            (true, 8080, None, false),
            // Another service's port on the same workload: no waypoint.
            (true, 9090, Some(&frontend), true),
            (true, 9090, None, true),
            // A port no service maps to is check_target's business.
            (true, 7000, Some(&frontend), true),
            // waypoint-for: none.
            (false, 8080, Some(&frontend), true),
            (false, 8080, None, true),
        ];
        for (enforced, port, caller, allowed) in cases {
            let (v, reviews) = view(enforced);
            let got = check(&v, &reviews, port, caller);
            assert_eq!(
                got.is_ok(),
                allowed,
                "enforced={enforced} port={port} caller={caller:?}: {got:?}"
            );
            if let Err(why) = got {
                assert!(why.contains("waypoint shop/wp"), "{why}");
            }
        }
    }
}
