//! What this cluster learned from the clusters it peers with, and how it
//! joins its own resources (pure; the streams are in `peering.rs`).
//!
//! A remote cluster exports Workload API addresses ([`weft_xds::EXPORT_TYPE`]).
//! [`import`] turns them into addresses this cluster's proxies can hold
//! beside its own: each workload renamed `remote/<cluster>/<ns>/<name>` (so
//! it cannot collide with a local one), its cluster ID set to the remote's
//! (a remote cannot speak for another cluster), its network to the one
//! the `RemoteCluster` names (when it names one), its node name prefixed
//! with the cluster (node names are per cluster), its policies and
//! waypoint dropped (they are the remote's to enforce).
//!
//! [`merge`] joins them to the local set. A workload names the services it
//! backs as `<namespace>/<hostname>`, so a remote endpoint of
//! `shop/reviews.shop.svc.cluster.local` is an endpoint of this cluster's
//! service of that name: namespace sameness falls out of the names. A
//! remote service this cluster lacks is added; one it has keeps its local
//! definition. A local service labelled cluster-local takes no remote
//! endpoints.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prost::Message;
use weft_core::model::{RemoteCluster, Snapshot};
use weft_xds::ADDRESS_TYPE;
use weft_xds::client::Held;
use weft_xds::proto::workload::{self as wl, address::Type};
use weft_xds::resources::{Entry, ResourceSet, Resources, service_name};

/// How the stream from one remote cluster is doing
/// (`/debug/config-status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteStatus {
    /// Its cluster ID.
    pub cluster: String,
    /// Its control plane's address.
    pub address: String,
    /// Whether the stream is up now.
    pub connected: bool,
    /// Whether the endpoints in use are its last known ones from a
    /// stream that has been down longer than its `staleAfter` (they stay
    /// in use).
    pub stale: bool,
    /// When the remote last spoke (RFC 3339), if ever.
    pub last_heard: Option<String>,
    /// Its services in use here.
    pub services: usize,
    /// Its endpoints in use here.
    pub endpoints: usize,
    /// The stream's last error.
    pub last_error: Option<String>,
    /// Resources changed and removed by the last update received: after
    /// a reconnection, only what changed meanwhile.
    pub last_update: Option<(usize, usize)>,
}

/// Whether what a remote last sent is stale: its stream is down and it
/// last spoke `stale_after` or longer ago (never heard: nothing to be
/// stale).
pub fn is_stale(
    connected: bool,
    last_heard: Option<std::time::Instant>,
    now: std::time::Instant,
    stale_after: std::time::Duration,
) -> bool {
    !connected && last_heard.is_some_and(|t| now.saturating_duration_since(t) >= stale_after)
}

/// The prefix of an imported workload's name.
pub const REMOTE_PREFIX: &str = "remote";

/// One imported workload: its address entry and the message it encodes
/// (kept to drop services a local cluster-local one shadows).
#[derive(Debug, Clone)]
pub struct ImportedWorkload {
    /// Its name in this cluster's set.
    pub name: Arc<str>,
    /// The encoded address.
    pub entry: Arc<Entry>,
    /// The workload.
    pub message: wl::Workload,
}

/// A remote cluster's exported services and endpoints, ready to merge.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// The remote's cluster ID.
    pub cluster: String,
    /// Its services, named `<namespace>/<hostname>`.
    pub services: Resources,
    /// Its endpoints.
    pub workloads: Vec<ImportedWorkload>,
}

impl Imported {
    /// How many endpoints it holds.
    pub fn endpoints(&self) -> usize {
        self.workloads.len()
    }
}

/// Turns what `remote` exported (its stream's resources, by name) into
/// addresses for this cluster (see the module's comment). Resources that
/// do not decode are skipped (the stream's validator refuses them first).
pub fn import(remote: &RemoteCluster, held: &BTreeMap<String, Held>) -> Imported {
    let mut out = Imported {
        cluster: remote.name.clone(),
        ..Imported::default()
    };
    for h in held.values() {
        let Ok(address) = wl::Address::decode(h.body.value.as_slice()) else {
            continue;
        };
        match address.r#type {
            Some(Type::Service(mut s)) if !s.namespace.is_empty() && !s.hostname.is_empty() => {
                s.waypoint = None;
                let name = service_name(&s.namespace, &s.hostname);
                let message = wl::Address {
                    r#type: Some(Type::Service(s)),
                };
                out.services
                    .extend([Entry::new(name, ADDRESS_TYPE, &message)]);
            }
            Some(Type::Workload(mut w)) if !w.namespace.is_empty() && !w.name.is_empty() => {
                w.uid = format!("{REMOTE_PREFIX}/{}/{}/{}", remote.name, w.namespace, w.name);
                w.cluster_id.clone_from(&remote.name);
                if !remote.network.is_empty() {
                    w.network.clone_from(&remote.network);
                }
                if !w.node.is_empty() {
                    w.node = format!("{}/{}", remote.name, w.node);
                }
                w.authorization_policies.clear();
                w.waypoint = None;
                let (name, entry) = encode(&w);
                out.workloads.push(ImportedWorkload {
                    name,
                    entry,
                    message: w,
                });
            }
            _ => {}
        }
    }
    out
}

fn encode(w: &wl::Workload) -> (Arc<str>, Arc<Entry>) {
    let message = wl::Address {
        r#type: Some(Type::Workload(w.clone())),
    };
    Entry::new(w.uid.clone(), ADDRESS_TYPE, &message)
}

/// `local` (built from `snapshot`) with every import joined to its
/// addresses, as version `version` (see the module's comment).
pub fn merge(
    local: &ResourceSet,
    snapshot: &Snapshot,
    imports: &BTreeMap<String, Arc<Imported>>,
    version: u64,
) -> ResourceSet {
    let mut set = ResourceSet {
        version,
        types: local.types.clone(),
        delta: None,
        peers: local.peers.clone(),
    };
    let cluster_local: HashSet<String> = snapshot
        .services
        .values()
        .filter(|s| s.cluster_local)
        .flat_map(|s| s.hosts.iter().map(|h| service_name(&s.name.namespace, h)))
        .collect();
    let addresses = set.types.entry(ADDRESS_TYPE).or_default();
    for imported in imports.values() {
        for (name, entry) in &imported.services {
            if !addresses.contains_key(name) && !cluster_local.contains(name.as_ref()) {
                addresses.insert(name.clone(), entry.clone());
            }
        }
        for w in &imported.workloads {
            if addresses.contains_key(&w.name) {
                continue;
            }
            if w.message.services.keys().any(|k| cluster_local.contains(k)) {
                let mut message = w.message.clone();
                message.services.retain(|k, _| !cluster_local.contains(k));
                if !message.services.is_empty() {
                    let (name, entry) = encode(&message);
                    addresses.insert(name, entry);
                }
            } else {
                addresses.insert(w.name.clone(), w.entry.clone());
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use weft_core::Identity;

    fn remote(network: &str) -> RemoteCluster {
        RemoteCluster {
            name: "west".into(),
            address: "10.0.0.2:15012".into(),
            identity: Identity::new("cluster.local", "weft-system", "weft-control").expect("id"),
            network: network.into(),
            exported_namespaces: vec!["shop".into()],
            stale_after: Duration::from_secs(60),
        }
    }

    fn held(address: wl::Address) -> Held {
        Held {
            version: "1".into(),
            body: prost_types::Any {
                type_url: weft_xds::EXPORT_TYPE.into(),
                value: address.encode_to_vec(),
            },
        }
    }

    fn workload(name: &str, services: &[&str]) -> wl::Address {
        wl::Address {
            r#type: Some(Type::Workload(wl::Workload {
                uid: format!("weft/shop/{name}"),
                name: name.into(),
                namespace: "shop".into(),
                addresses: vec![vec![10, 1, 0, 7]],
                network: "net-west".into(),
                cluster_id: "north".into(),
                node: "node-1".into(),
                authorization_policies: vec!["shop/deny".into()],
                services: services
                    .iter()
                    .map(|s| ((*s).to_owned(), wl::PortList::default()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn service(host: &str) -> wl::Address {
        wl::Address {
            r#type: Some(Type::Service(wl::Service {
                name: host.split('.').next().unwrap_or(host).into(),
                namespace: "shop".into(),
                hostname: host.into(),
                ..Default::default()
            })),
        }
    }

    fn decoded(set: &ResourceSet, name: &str) -> Option<wl::Workload> {
        let entry = set.of(ADDRESS_TYPE)?.get(name)?;
        match wl::Address::decode(entry.body.value.as_slice())
            .ok()?
            .r#type
        {
            Some(Type::Workload(w)) => Some(w),
            _ => None,
        }
    }

    #[test]
    fn last_known_state_goes_stale_only_while_the_stream_is_down() {
        let t0 = std::time::Instant::now();
        let after = Duration::from_secs(30);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (connected, last heard, now, stale)
        let cases = [
            (true, Some(t0), at(100), false),
            (false, Some(t0), at(29), false),
            (false, Some(t0), at(30), true),
            (false, None, at(100), false),
            (true, None, at(100), false),
        ];
        for (connected, heard, now, stale) in cases {
            assert_eq!(
                is_stale(connected, heard, now, after),
                stale,
                "{connected} {heard:?} {now:?}"
            );
        }
    }

    #[test]
    fn imported_workloads_are_renamed_and_speak_only_for_their_cluster() {
        let exported = BTreeMap::from([
            (
                "shop/workload/reviews-1".to_owned(),
                held(workload(
                    "reviews-1",
                    &["shop/reviews.shop.svc.cluster.local"],
                )),
            ),
            (
                "shop/service/reviews.shop.svc.cluster.local".to_owned(),
                held(service("reviews.shop.svc.cluster.local")),
            ),
            (
                "junk".to_owned(),
                Held {
                    version: "1".into(),
                    body: prost_types::Any {
                        type_url: String::new(),
                        value: vec![0xff, 0xff],
                    },
                },
            ),
        ]);
        let imported = import(&remote("net-edge"), &exported);
        assert_eq!(imported.endpoints(), 1);
        let w = &imported.workloads[0].message;
        assert_eq!(w.uid, "remote/west/shop/reviews-1");
        assert_eq!(&*imported.workloads[0].name, "remote/west/shop/reviews-1");
        assert_eq!(
            w.cluster_id, "west",
            "a remote cannot claim another cluster"
        );
        assert_eq!(w.network, "net-edge", "the RemoteCluster's network wins");
        assert_eq!(w.node, "west/node-1");
        assert!(w.authorization_policies.is_empty());
        assert!(
            imported
                .services
                .contains_key("shop/reviews.shop.svc.cluster.local")
        );
        // Without a network in the RemoteCluster, the workload's own stays.
        let imported = import(&remote(""), &exported);
        assert_eq!(imported.workloads[0].message.network, "net-west");
    }

    #[test]
    fn merged_sets_join_services_by_name_and_keep_cluster_local_ones_home() {
        use weft_core::model::{NamespacedName, Resolution, Service, ServiceLocation};
        let exported = BTreeMap::from([
            (
                "a".to_owned(),
                held(workload(
                    "reviews-1",
                    &["shop/reviews.shop.svc.cluster.local"],
                )),
            ),
            (
                "b".to_owned(),
                held(workload(
                    "ledger-1",
                    &["shop/ledger.shop.svc.cluster.local"],
                )),
            ),
            (
                "c".to_owned(),
                held(workload(
                    "both-1",
                    &[
                        "shop/ledger.shop.svc.cluster.local",
                        "shop/ratings.shop.svc.cluster.local",
                    ],
                )),
            ),
            (
                "d".to_owned(),
                held(service("reviews.shop.svc.cluster.local")),
            ),
            (
                "e".to_owned(),
                held(service("ratings.shop.svc.cluster.local")),
            ),
        ]);
        let imports =
            BTreeMap::from([("west".to_owned(), Arc::new(import(&remote(""), &exported)))]);
        let svc = |name: &str, cluster_local: bool| Service {
            name: NamespacedName::new("shop", name),
            hosts: vec![format!("{name}.shop.svc.cluster.local")],
            addresses: Vec::new(),
            ports: Vec::new(),
            location: ServiceLocation::MeshInternal,
            resolution: Resolution::Static,
            endpoints: Vec::new(),
            waypoint: None,
            cluster_local,
        };
        let mut snapshot = Snapshot::default();
        for s in [svc("reviews", false), svc("ledger", true)] {
            snapshot.services.insert(s.name.clone(), Arc::new(s));
        }
        let local = weft_xds::resources::build(&snapshot, 7);
        let local_reviews = local
            .of(ADDRESS_TYPE)
            .and_then(|a| a.get("shop/reviews.shop.svc.cluster.local"))
            .cloned();
        let merged = merge(&local, &snapshot, &imports, 8);
        assert_eq!(merged.version, 8);
        let addresses = merged.of(ADDRESS_TYPE).expect("addresses");
        // The local definition of a shared service stays.
        assert_eq!(
            addresses
                .get("shop/reviews.shop.svc.cluster.local")
                .cloned(),
            local_reviews
        );
        // A service only the remote has is added.
        assert!(addresses.contains_key("shop/ratings.shop.svc.cluster.local"));
        // An endpoint of a shared service joins it.
        assert!(decoded(&merged, "remote/west/shop/reviews-1").is_some());
        // An endpoint of a cluster-local service does not …
        assert!(decoded(&merged, "remote/west/shop/ledger-1").is_none());
        // … and one of both keeps only the other.
        let both = decoded(&merged, "remote/west/shop/both-1").expect("kept");
        assert_eq!(
            both.services.keys().collect::<Vec<_>>(),
            ["shop/ratings.shop.svc.cluster.local"]
        );
        // Nothing else changed.
        assert_eq!(
            merged.of(weft_xds::MESH_TYPE),
            local.of(weft_xds::MESH_TYPE)
        );
    }
}
