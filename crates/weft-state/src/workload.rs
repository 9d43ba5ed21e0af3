//! The records of a [`MeshView`](crate::MeshView): a workload, what a proxy
//! needs about a service beyond its endpoints, and an explicit outbound
//! listener.

use std::collections::HashMap;
use std::net::IpAddr;

use weft_core::Identity;
use weft_core::model::{Locality, NamespacedName};
use weft_telemetry::labels::{Peer, UNKNOWN};

/// A workload as a proxy needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadInfo {
    /// xDS name (unique in the mesh).
    pub uid: String,
    /// Namespace and name, for logs, telemetry and `failoverPriority`.
    pub name: NamespacedName,
    /// Its address.
    pub ip: IpAddr,
    /// Its SPIFFE identity.
    pub identity: Identity,
    /// The node it runs on (empty: not behind a weft node).
    pub node: String,
    /// Where it runs.
    pub locality: Locality,
    /// Its cluster (empty: unnamed).
    pub cluster: String,
    /// Its network (empty: the flat network everyone shares).
    pub network: String,
    /// Where tunnels from other networks reach it: its network's
    /// east-west gateway (its HBONE address), if any.
    pub network_gateway: Option<std::net::SocketAddr>,
    /// The services it is an endpoint of: service → (service port →
    /// target port).
    pub services: HashMap<NamespacedName, HashMap<u16, u16>>,
    /// Selector-based authorization policies that select it.
    pub policies: Vec<NamespacedName>,
    /// Whether it also accepts plaintext (`PeerAuthentication`
    /// `PERMISSIVE`); only captured workloads can receive any.
    pub permissive: bool,
    /// Whether it is a waypoint (it terminates HBONE itself).
    pub waypoint: bool,
    /// Whether it is an ingress gateway (it opens its own listeners).
    pub gateway: bool,
    /// For a waypoint: whether the endpoints of its services accept their
    /// service ports only from it (`istio.io/waypoint-for` is not `none`).
    pub enforced: bool,
    /// Canonical service (its `app` label), for telemetry.
    pub canonical_service: String,
    /// Canonical revision (its `version` label), for telemetry.
    pub canonical_revision: String,
}

/// How a proxy in one network reaches a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Directly: the same network, or either in the flat unnamed one.
    Direct,
    /// Through its network's east-west gateway (double HBONE).
    Gateway(std::net::SocketAddr),
    /// Not at all: another network without a gateway.
    Unreachable,
}

impl WorkloadInfo {
    /// How a proxy in `network` reaches this workload.
    pub fn reached_from(&self, network: &str) -> Reach {
        let same = network.is_empty() || self.network.is_empty() || network == self.network;
        match (same, self.network_gateway) {
            (true, _) => Reach::Direct,
            (false, Some(gateway)) => Reach::Gateway(gateway),
            (false, None) => Reach::Unreachable,
        }
    }

    /// This workload as a telemetry peer.
    pub fn peer(&self) -> Peer {
        let or_unknown = |s: &str| {
            if s.is_empty() {
                UNKNOWN.to_owned()
            } else {
                s.to_owned()
            }
        };
        Peer {
            workload: or_unknown(&self.name.name),
            namespace: or_unknown(&self.name.namespace),
            principal: self.identity.to_string(),
            canonical_service: or_unknown(&self.canonical_service),
            canonical_revision: or_unknown(&self.canonical_revision),
            cluster: or_unknown(&self.cluster),
        }
    }

    /// The target port behind `service:port` on this workload, when it is
    /// an endpoint of that service port.
    pub fn target_port(&self, service: &NamespacedName, port: u16) -> Option<u16> {
        self.services.get(service)?.get(&port).copied()
    }
}

/// What a proxy needs about a service beyond its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its first virtual IP.
    pub vip: Option<IpAddr>,
    /// The address of the waypoint its traffic goes through.
    pub waypoint: Option<IpAddr>,
}

/// One explicit outbound listener of a local workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listener {
    /// The workload it belongs to (uid).
    pub workload: String,
    /// Port on the workload's address.
    pub local_port: u16,
    /// The service it forwards to.
    pub service: NamespacedName,
    /// Service port.
    pub service_port: u16,
}
