//! What this cluster exports to the clusters it peers with
//! ([`EXPORT_TYPE`]): its services and their endpoints as Workload API
//! addresses, the way its own proxies see them, but without what stays
//! home — services labelled cluster-local (and their endpoints' ports for
//! them), waypoints and gateways — and with each endpoint's network
//! gateway (the east-west gateway of its network) filled in, so a
//! caller in another network knows where to tunnel.
//!
//! This cluster's east-west gateways are exported too, as workloads
//! without services (`<namespace>/gateway/<name>`, whatever their
//! namespace): a caller's node checks the gateway's identity.
//!
//! Every exportable resource is built once per change; each peer's
//! session sends only the namespaces exported to it
//! ([`Peers::readable_by`]). Names are `<namespace>/service/<host>`,
//! `<namespace>/workload/<name>` and `<namespace>/gateway/<name>`.

use weft_core::model::{Snapshot, WorkloadAddress};

use crate::proto::workload::{self as wl, address::Type};
use crate::resources::{
    Entry, ResourceSet, Resources, backs, ip_bytes, service_message, workload_message,
};

pub use crate::peers::{PEER_NODE_PREFIX, Peers};
pub use crate::resources::EXPORT_TYPE;

/// Adds to `set` (built from `snapshot`) what it exports, and who may
/// read it.
pub fn add_to(set: &mut ResourceSet, snapshot: &Snapshot) {
    set.types.insert(EXPORT_TYPE, build(snapshot));
    set.peers = Peers::of(snapshot);
}

/// Every exportable address of `snapshot` (none when it peers with no
/// cluster).
pub fn build(snapshot: &Snapshot) -> Resources {
    let mut out = Resources::new();
    if snapshot.remotes.is_empty() {
        return out;
    }
    let exported = |s: &weft_core::model::Service| {
        !s.cluster_local && s.location == weft_core::model::ServiceLocation::MeshInternal
    };
    for service in snapshot.services.values().filter(|s| exported(s)) {
        for host in &service.hosts {
            let mut message = service_message(snapshot, service, host);
            // A waypoint of this cluster is not reachable from others.
            message.waypoint = None;
            let address = wl::Address {
                r#type: Some(Type::Service(message)),
            };
            out.extend([Entry::new(
                format!("{}/service/{host}", service.name.namespace),
                EXPORT_TYPE,
                &address,
            )]);
        }
    }
    let backs = backs(snapshot);
    for w in snapshot.workloads.values() {
        if w.waypoint || w.gateway || w.node.is_none() {
            continue;
        }
        let WorkloadAddress::Ip(_) = w.address else {
            continue;
        };
        let services: Vec<_> = backs
            .get(&w.name)
            .map(|v| v.iter().copied().filter(|s| exported(s)).collect())
            .unwrap_or_default();
        if services.is_empty() {
            continue;
        }
        let mut message = workload_message(&services, &[], w);
        if message.cluster_id.is_empty() {
            message.cluster_id.clone_from(&snapshot.mesh.cluster);
        }
        message.network_gateway =
            snapshot
                .network_gateways
                .get(&w.network)
                .map(|g| wl::GatewayAddress {
                    destination: Some(wl::gateway_address::Destination::Address(
                        wl::NetworkAddress {
                            network: w.network.clone(),
                            address: ip_bytes(g.address),
                        },
                    )),
                    hbone_mtls_port: u32::from(g.port),
                });
        let address = wl::Address {
            r#type: Some(Type::Workload(message)),
        };
        out.extend([Entry::new(
            format!("{}/workload/{}", w.name.namespace, w.name.name),
            EXPORT_TYPE,
            &address,
        )]);
    }
    for g in snapshot.network_gateways.values() {
        let Some(w) = snapshot.workloads.get(&g.name) else {
            continue;
        };
        let mut message = workload_message(&[], &[], w);
        message.addresses = vec![ip_bytes(g.address)];
        if message.cluster_id.is_empty() {
            message.cluster_id.clone_from(&snapshot.mesh.cluster);
        }
        message.node.clear();
        let address = wl::Address {
            r#type: Some(Type::Workload(message)),
        };
        out.extend([Entry::new(
            format!("{}/gateway/{}", g.name.namespace, g.name.name),
            EXPORT_TYPE,
            &address,
        )]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use weft_core::Identity;

    #[test]
    fn exports_are_read_only_by_the_cluster_they_are_exported_to() {
        let control = Identity::new("cluster.local", "weft-system", "weft-control").ok();
        let node = Identity::new("cluster.local", "weft-system", "node-a").ok();
        let peers = Peers(Arc::new(
            [
                (
                    "west".to_owned(),
                    (control.clone().expect("id"), vec!["shop".to_owned()]),
                ),
                (
                    "north".to_owned(),
                    (control.clone().expect("id"), vec!["*".to_owned()]),
                ),
            ]
            .into(),
        ));
        let cases = [
            (
                "shop/service/reviews",
                "remote-cluster~west",
                &control,
                true,
            ),
            (
                "shop/workload/reviews-1",
                "remote-cluster~west",
                &control,
                true,
            ),
            (
                "billing/service/pay",
                "remote-cluster~west",
                &control,
                false,
            ),
            (
                "billing/service/pay",
                "remote-cluster~north",
                &control,
                true,
            ),
            (
                "shop/service/reviews",
                "remote-cluster~south",
                &control,
                false,
            ),
            ("shop/service/reviews", "west", &control, false),
            ("shop/service/reviews", "remote-cluster~west", &node, false),
            ("shop/service/reviews", "remote-cluster~west", &None, false),
        ];
        for (name, node_id, peer, expected) in cases {
            assert_eq!(
                peers.readable_by(name, node_id, peer.as_ref()),
                expected,
                "{name} by {node_id} as {peer:?}"
            );
        }
    }
}
