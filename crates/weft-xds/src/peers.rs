//! Who may read what this cluster exports: for each cluster it peers
//! with, the identity that cluster's control plane proves and the
//! namespaces exported to it (from the `RemoteCluster`s in force).

use std::sync::Arc;

use weft_core::Identity;
use weft_core::model::Snapshot;

/// The node id a peering control plane sends: this prefix, then its
/// cluster ID.
pub const PEER_NODE_PREFIX: &str = "remote-cluster~";

/// What a peer may read: for each cluster this one peers with, the
/// identity its control plane proves and the namespaces exported to it.
#[derive(Debug, Clone, Default)]
pub struct Peers(pub Arc<std::collections::BTreeMap<String, (Identity, Vec<String>)>>);

impl Peers {
    /// The peers of `snapshot`.
    pub fn of(snapshot: &Snapshot) -> Self {
        Peers(Arc::new(
            snapshot
                .remotes
                .values()
                .map(|r| {
                    (
                        r.name.clone(),
                        (r.identity.clone(), r.exported_namespaces.clone()),
                    )
                })
                .collect(),
        ))
    }

    /// Whether the stream of `node` (its node id), proven as `peer`, may
    /// read exported resource `name`: the node id names a cluster this
    /// one peers with, the certificate proves that cluster's control
    /// plane, and the resource's namespace is exported to it (an
    /// east-west gateway, needed to reach anything, always is).
    pub fn readable_by(&self, name: &str, node: &str, peer: Option<&Identity>) -> bool {
        let Some(cluster) = node.strip_prefix(PEER_NODE_PREFIX) else {
            return false;
        };
        let Some((identity, namespaces)) = self.0.get(cluster) else {
            return false;
        };
        let namespace = name.split_once('/').map_or("", |(ns, _)| ns);
        let gateway = name.split('/').nth(1) == Some("gateway");
        peer == Some(identity) && (gateway || namespaces.iter().any(|n| n == "*" || n == namespace))
    }
}
