//! The mesh across clusters, as the model holds it: the other clusters
//! a control plane peers with ([`RemoteCluster`]), the east-west gateways
//! of its networks ([`NetworkGateway`]), and the label that keeps a
//! service inside its cluster.

use std::net::IpAddr;
use std::time::Duration;

use crate::Identity;
use crate::names::NamespacedName;

/// The label that keeps a service inside its cluster (`"true"`): its
/// endpoints are not exported to remote clusters, and endpoints other
/// clusters export under its name are not joined to it.
pub const CLUSTER_LOCAL_LABEL: &str = "weft.dev/cluster-local";

/// Another cluster of the mesh (a `RemoteCluster`): where its control
/// plane is, and what this cluster lets it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCluster {
    /// Its cluster ID.
    pub name: String,
    /// Its control plane's mTLS address (`host:port`).
    pub address: String,
    /// The identity its control plane must prove.
    pub identity: Identity,
    /// Its network, when the configuration names it (else its workloads
    /// say).
    pub network: String,
    /// The namespaces this cluster exports to it (`*`: all).
    pub exported_namespaces: Vec<String>,
    /// How long its last known services and endpoints may go without a
    /// word from it before they are reported stale (they stay in use).
    pub stale_after: Duration,
}

/// An east-west gateway: where tunnels from other networks enter a
/// network (a Gateway of class `weft-east-west` or `istio-east-west`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkGateway {
    /// The Gateway (and the workload it runs as).
    pub name: NamespacedName,
    /// Its address, as other networks reach it.
    pub address: IpAddr,
    /// Its HBONE port (15008).
    pub port: u16,
    /// The identity it proves.
    pub identity: Identity,
}

impl RemoteCluster {
    /// Whether `namespace` is exported to this remote.
    pub fn exports(&self, namespace: &str) -> bool {
        self.exported_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace)
    }
}
