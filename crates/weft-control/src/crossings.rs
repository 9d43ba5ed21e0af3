//! Which east-west gateway a call from one cluster to another passes, for
//! the service graph (pure).
//!
//! A node reaches an endpoint on another network through that network's
//! east-west gateway, and one in the same network directly. So a call
//! from cluster `a` to cluster `b` passes `b`'s network's gateway when the
//! two clusters' networks differ, and none when they are the same (a flat
//! network). Each cluster's network is what its `RemoteCluster` names,
//! else what its workloads carry; the gateways are this cluster's own
//! ([`Snapshot::network_gateways`]) and those the remotes export.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use weft_core::model::Snapshot;
use weft_xds::proto::workload::gateway_address::Destination;

use crate::imports::Imported;

/// The HBONE port of a gateway that names none.
const HBONE_PORT: u16 = 15008;

/// An east-west gateway, as the graph names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayRef {
    /// Its Gateway, `namespace/name`.
    pub name: String,
    /// The cluster it runs in.
    pub cluster: String,
    /// Where other networks reach it, `ip:port`.
    pub address: String,
}

/// Clusters' networks and networks' gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crossings {
    networks: BTreeMap<String, String>,
    gateways: BTreeMap<String, GatewayRef>,
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

impl Crossings {
    /// What `snapshot` (this cluster) and `imports` (the remotes') say.
    pub fn new(snapshot: &Snapshot, imports: &BTreeMap<String, Arc<Imported>>) -> Crossings {
        let mut out = Crossings::default();
        for (name, remote) in &snapshot.remotes {
            if !remote.network.is_empty() {
                out.networks.insert(name.clone(), remote.network.clone());
            }
        }
        for w in snapshot.workloads.values() {
            let cluster = if w.cluster.is_empty() {
                &snapshot.mesh.cluster
            } else {
                &w.cluster
            };
            if !cluster.is_empty() && !w.network.is_empty() {
                out.networks
                    .entry(cluster.clone())
                    .or_insert_with(|| w.network.clone());
            }
        }
        for (network, g) in &snapshot.network_gateways {
            out.gateways.insert(
                network.clone(),
                GatewayRef {
                    name: g.name.to_string(),
                    cluster: snapshot.mesh.cluster.clone(),
                    address: std::net::SocketAddr::new(g.address, g.port).to_string(),
                },
            );
        }
        for import in imports.values() {
            for w in &import.workloads {
                let w = &w.message;
                if !w.network.is_empty() {
                    out.networks
                        .entry(import.cluster.clone())
                        .or_insert_with(|| w.network.clone());
                }
                let Some(Destination::Address(gateway)) = w
                    .network_gateway
                    .as_ref()
                    .and_then(|g| g.destination.as_ref())
                else {
                    continue;
                };
                let Some(ip) = ip_of(&gateway.address) else {
                    continue;
                };
                let port = w
                    .network_gateway
                    .as_ref()
                    .and_then(|g| u16::try_from(g.hbone_mtls_port).ok())
                    .filter(|p| *p != 0)
                    .unwrap_or(HBONE_PORT);
                // The gateway itself is exported as a workload at that
                // address; name it by its Gateway when it is.
                let name = import
                    .workloads
                    .iter()
                    .map(|g| &g.message)
                    .find(|g| g.addresses.iter().any(|a| ip_of(a) == Some(ip)))
                    .map_or_else(|| ip.to_string(), |g| format!("{}/{}", g.namespace, g.name));
                out.gateways
                    .entry(gateway.network.clone())
                    .or_insert_with(|| GatewayRef {
                        name,
                        cluster: import.cluster.clone(),
                        address: std::net::SocketAddr::new(ip, port).to_string(),
                    });
            }
        }
        out
    }

    /// The gateway a call from cluster `source` to cluster `destination`
    /// passes: `destination`'s network's, when the two networks differ;
    /// none within a cluster, within a network, or when a network is not
    /// known.
    pub fn via(&self, source: &str, destination: &str) -> Option<&GatewayRef> {
        if source == destination {
            return None;
        }
        let to = self.networks.get(destination)?;
        if self.networks.get(source) == Some(to) {
            return None;
        }
        self.gateways.get(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::Identity;
    use weft_core::locality::Locality;
    use weft_core::model::{
        MtlsMode, NamespacedName, NetworkGateway, RemoteCluster, Workload, WorkloadAddress,
    };
    use weft_xds::proto::workload as wl;

    fn local(cluster: &str, network: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.mesh.cluster = cluster.into();
        let w = Workload {
            name: NamespacedName::new("shop", "frontend"),
            address: WorkloadAddress::Ip([10, 0, 0, 1].into()),
            labels: BTreeMap::new(),
            ports: BTreeMap::new(),
            identity: Identity::new("cluster.local", "shop", "frontend").expect("identity"),
            network: network.into(),
            cluster: String::new(),
            locality: Locality::default(),
            weight: 1,
            node: None,
            run: None,
            client_only: false,
            outbound: Vec::new(),
            mtls_mode: MtlsMode::Strict,
            waypoint: false,
            gateway: false,
        };
        s.workloads.insert(w.name.clone(), Arc::new(w));
        s.network_gateways.insert(
            network.into(),
            NetworkGateway {
                name: NamespacedName::new("weft-system", "east-west"),
                address: [192, 0, 2, 1].into(),
                port: 15008,
                identity: Identity::new("cluster.local", "weft-system", "east-west")
                    .expect("identity"),
            },
        );
        s
    }

    fn imported(cluster: &str, network: &str, gateway: [u8; 4]) -> Arc<Imported> {
        let endpoint = wl::Workload {
            name: "reviews".into(),
            namespace: "shop".into(),
            network: network.into(),
            addresses: vec![vec![10, 1, 0, 1]],
            network_gateway: Some(wl::GatewayAddress {
                destination: Some(Destination::Address(wl::NetworkAddress {
                    network: network.into(),
                    address: gateway.to_vec(),
                })),
                hbone_mtls_port: 15008,
            }),
            ..wl::Workload::default()
        };
        let gw = wl::Workload {
            name: "east-west".into(),
            namespace: "weft-system".into(),
            network: network.into(),
            addresses: vec![gateway.to_vec()],
            ..wl::Workload::default()
        };
        Arc::new(Imported {
            cluster: cluster.into(),
            workloads: [endpoint, gw]
                .into_iter()
                .map(|message| crate::imports::ImportedWorkload {
                    name: Arc::from(message.name.as_str()),
                    entry: weft_xds::resources::Entry::new(
                        message.name.clone(),
                        weft_xds::ADDRESS_TYPE,
                        &wl::Address::default(),
                    )
                    .1,
                    message,
                })
                .collect(),
            ..Imported::default()
        })
    }

    #[test]
    fn calls_pass_the_destination_networks_gateway_only_across_networks() {
        let mut snapshot = local("east", "net-east");
        snapshot.remotes.insert(
            "flat".into(),
            RemoteCluster {
                name: "flat".into(),
                address: "192.0.2.9:15012".into(),
                identity: Identity::new("cluster.local", "weft-system", "weft-control")
                    .expect("identity"),
                network: "net-east".into(),
                exported_namespaces: vec!["shop".into()],
                stale_after: std::time::Duration::from_secs(60),
            },
        );
        let imports: BTreeMap<String, Arc<Imported>> = [
            (
                "west".to_owned(),
                imported("west", "net-west", [192, 0, 2, 2]),
            ),
            ("flat".to_owned(), imported("flat", "", [192, 0, 2, 3])),
        ]
        .into();
        let c = Crossings::new(&snapshot, &imports);
        let west = GatewayRef {
            name: "weft-system/east-west".into(),
            cluster: "west".into(),
            address: "192.0.2.2:15008".into(),
        };
        let east = GatewayRef {
            name: "weft-system/east-west".into(),
            cluster: "east".into(),
            address: "192.0.2.1:15008".into(),
        };
        let cases: &[(&str, &str, Option<&GatewayRef>)] = &[
            ("east", "west", Some(&west)),
            ("west", "east", Some(&east)),
            ("east", "east", None),
            ("east", "flat", None),
            ("east", "nowhere", None),
            ("nowhere", "west", Some(&west)),
        ];
        for (from, to, want) in cases {
            assert_eq!(c.via(from, to), *want, "{from} -> {to}");
        }
    }
}
