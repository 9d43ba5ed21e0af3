//! `failoverPriority` (a `DestinationRule`'s
//! `trafficPolicy.loadBalancer.localityLbSetting`): how close an endpoint
//! is to its caller, as a rank (0 closest), the way Istio computes it.
//!
//! Each listed key is a label; the caller's value and the endpoint's are
//! compared in order, and the first key that differs decides: with `n`
//! keys, an endpoint that differs at key `i` (from 0) has rank `n - i`,
//! one that matches on every key rank 0. A key written `key=value` compares
//! the endpoint with `value` instead of the caller's own. A missing label
//! is the empty value, so two workloads that both lack it match.
//!
//! As in Istio, a workload answers to topology keys from what it is, not
//! only from its labels: [`CLUSTER_LABEL`] is its cluster, [`NETWORK_LABEL`]
//! its network, [`REGION_LABEL`], [`ZONE_LABEL`] and [`SUBZONE_LABEL`] its
//! locality — each when set, over a label of the same name.

use crate::model::Workload;

/// The key of a workload's cluster.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// The key of a workload's network.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The key of a workload's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The key of a workload's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The key of a workload's subzone.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// What `w` answers to under `key`: its topology for the topology keys
/// (when set), else its label; empty when it has neither.
pub fn value<'a>(w: &'a Workload, key: &str) -> &'a str {
    let own = match key {
        CLUSTER_LABEL => w.cluster.as_str(),
        NETWORK_LABEL => w.network.as_str(),
        REGION_LABEL => w.locality.region.as_str(),
        ZONE_LABEL => w.locality.zone.as_str(),
        SUBZONE_LABEL => w.locality.subzone.as_str(),
        _ => "",
    };
    if own.is_empty() {
        w.labels.get(key).map_or("", String::as_str)
    } else {
        own
    }
}

/// The rank of `endpoint` for `caller` under `keys` (0 closest; see the
/// module's comment).
pub fn rank(keys: &[String], caller: &Workload, endpoint: &Workload) -> u8 {
    let differs = keys.iter().position(|key| {
        let (key, wanted) = match key.split_once('=') {
            Some((key, wanted)) => (key, wanted),
            None => (key.as_str(), value(caller, key)),
        };
        value(endpoint, key) != wanted
    });
    match differs {
        Some(i) => u8::try_from(keys.len() - i).unwrap_or(u8::MAX),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::identity::Identity;
    use crate::locality::Locality;
    use crate::model::{MtlsMode, NamespacedName, WorkloadAddress};

    /// A workload in `cluster`, `network` and `locality`, with `labels`.
    fn at(cluster: &str, network: &str, locality: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: NamespacedName::new("shop", "w"),
            address: WorkloadAddress::Ip([10, 0, 0, 1].into()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: BTreeMap::new(),
            identity: Identity::new("cluster.local", "shop", "default").expect("valid"),
            network: network.to_owned(),
            cluster: cluster.to_owned(),
            locality: Locality::parse(locality).expect("locality"),
            weight: 1,
            node: None,
            run: None,
            client_only: false,
            outbound: Vec::new(),
            mtls_mode: MtlsMode::Strict,
            waypoint: false,
            gateway: false,
        }
    }

    #[test]
    fn ranks_as_istio_does() {
        let caller = at("east", "net-a", "eu/eu-1a/r1", &[("version", "v1")]);
        let cases: &[(&str, &[&str], Workload, u8)] = &[
            (
                "same cluster",
                &[CLUSTER_LABEL],
                at("east", "net-b", "", &[]),
                0,
            ),
            (
                "other cluster",
                &[CLUSTER_LABEL],
                at("west", "net-a", "", &[]),
                1,
            ),
            (
                "network first: same network, other cluster",
                &[NETWORK_LABEL, CLUSTER_LABEL],
                at("west", "net-a", "", &[]),
                1,
            ),
            (
                "network first: other network",
                &[NETWORK_LABEL, CLUSTER_LABEL],
                at("east", "net-b", "", &[]),
                2,
            ),
            (
                "cluster before region: same cluster, other region",
                &[CLUSTER_LABEL, REGION_LABEL],
                at("east", "", "us/us-1a", &[]),
                1,
            ),
            (
                "region, zone, subzone all equal",
                &[REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL],
                at("west", "", "eu/eu-1a/r1", &[]),
                0,
            ),
            (
                "same region, other zone",
                &[REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL],
                at("west", "", "eu/eu-1b/r1", &[]),
                2,
            ),
            (
                "a plain label",
                &["version", CLUSTER_LABEL],
                at("west", "", "", &[("version", "v1")]),
                1,
            ),
            (
                "a plain label that differs",
                &["version", CLUSTER_LABEL],
                at("east", "", "", &[("version", "v2")]),
                2,
            ),
            (
                "an override: prefer cluster west whatever the caller's",
                &["topology.istio.io/cluster=west"],
                at("west", "", "", &[]),
                0,
            ),
            (
                "an override the endpoint misses",
                &["topology.istio.io/cluster=west", NETWORK_LABEL],
                at("east", "net-a", "", &[]),
                2,
            ),
            (
                "a label both lack is equal",
                &["tier"],
                at("west", "", "", &[]),
                0,
            ),
            (
                "a topology key falls back to a label of that name",
                &[CLUSTER_LABEL],
                at("", "", "", &[(CLUSTER_LABEL, "east")]),
                0,
            ),
            ("no keys", &[], at("west", "net-b", "us", &[]), 0),
        ];
        for (what, keys, endpoint, want) in cases {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            assert_eq!(rank(&keys, &caller, endpoint), *want, "{what}");
        }
    }
}
