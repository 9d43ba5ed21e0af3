//! What a node proxy knows, rebuilt from the config stream on every change:
//! workloads by uid and by address, services and their endpoints, and the
//! explicit outbound listeners of workloads on this node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;
use weft_core::Identity;
use weft_xds::ClientState;
use weft_xds::proto::security::{Authorization, Scope};
use weft_xds::proto::weft::{MeshConfig, MtlsMode, OutboundPolicy, WorkloadListeners};
use weft_xds::proto::workload::{Address, address::Type, gateway_address};

/// A workload as the node proxy needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadInfo {
    /// xDS name.
    pub uid: String,
    /// Namespace/name, for logs.
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
    /// Its SPIFFE identity.
    pub identity: Identity,
    /// The node it runs on (empty: not behind a weft node).
    pub node: String,
    /// (region, zone, subzone).
    pub locality: (String, String, String),
    /// Service name → (service port → target port).
    pub services: HashMap<String, HashMap<u16, u16>>,
    /// Selector-based authorization policies that select it (`ns/name`).
    pub policies: Vec<String>,
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
    /// Canonical service and revision (its `app` and `version` labels),
    /// for telemetry.
    pub canonical: (String, String),
}

impl WorkloadInfo {
    /// This workload as a telemetry peer.
    pub fn peer(&self) -> weft_telemetry::labels::Peer {
        let (namespace, name) = self.name.split_once('/').unwrap_or(("", &self.name));
        let or_unknown = |s: &str| {
            if s.is_empty() {
                weft_telemetry::labels::UNKNOWN.to_owned()
            } else {
                s.to_owned()
            }
        };
        weft_telemetry::labels::Peer {
            workload: or_unknown(name),
            namespace: or_unknown(namespace),
            principal: self.identity.to_string(),
            canonical_service: or_unknown(&self.canonical.0),
            canonical_revision: or_unknown(&self.canonical.1),
        }
    }
}

/// What the node needs about a service beyond its endpoints.
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
    /// The workload it belongs to.
    pub workload: String,
    /// Port on the workload's address.
    pub local_port: u16,
    /// Service name (`namespace/hostname`).
    pub service: String,
    /// Service port.
    pub service_port: u16,
}

/// The node's view of the mesh.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Workloads by uid.
    pub workloads: HashMap<String, Arc<WorkloadInfo>>,
    /// Workload uid by address.
    pub by_ip: HashMap<IpAddr, String>,
    /// Service name → endpoint uids, sorted.
    pub endpoints: HashMap<String, Vec<String>>,
    /// Listeners of workloads on this node.
    pub listeners: Vec<Listener>,
    /// Service name (`namespace/hostname`) by hostname.
    pub services_by_host: HashMap<String, String>,
    /// Service name by virtual IP.
    pub services_by_vip: HashMap<IpAddr, String>,
    /// Services by name (`namespace/hostname`).
    pub services: HashMap<String, ServiceInfo>,
    /// Authorization policies by `ns/name`.
    pub policies: HashMap<String, Arc<Authorization>>,
    /// Whether traffic to destinations outside the registry passes through
    /// (`Mesh` `outboundTrafficPolicy: ALLOW_ANY`, the default).
    pub registry_only: bool,
}

impl NodeView {
    /// Builds the view for node `node` from what the config stream holds.
    /// Resources that do not decode are skipped (the client NACKs them).
    pub fn build(state: &ClientState, node: &str) -> NodeView {
        let mut view = NodeView::default();
        for held in state
            .resources
            .get(weft_xds::ADDRESS_TYPE)
            .into_iter()
            .flat_map(|m| m.values())
        {
            let w = match Address::decode(held.body.value.as_slice()) {
                Ok(Address {
                    r#type: Some(Type::Workload(w)),
                }) => w,
                Ok(Address {
                    r#type: Some(Type::Service(s)),
                }) => {
                    let name = format!("{}/{}", s.namespace, s.hostname);
                    let mut info = ServiceInfo::default();
                    for a in &s.addresses {
                        if let Some(ip) = ip_of(&a.address) {
                            view.services_by_vip.insert(ip, name.clone());
                            info.vip.get_or_insert(ip);
                        }
                    }
                    info.waypoint = s.waypoint.as_ref().and_then(|w| match &w.destination {
                        Some(gateway_address::Destination::Address(a)) => ip_of(&a.address),
                        _ => None,
                    });
                    view.services.insert(name.clone(), info);
                    view.services_by_host
                        .insert(s.hostname.to_ascii_lowercase(), name);
                    continue;
                }
                _ => continue,
            };
            let Some(ip) = ip_of(w.addresses.first().map(Vec::as_slice).unwrap_or_default()) else {
                continue;
            };
            let trust_domain = if w.trust_domain.is_empty() {
                "cluster.local"
            } else {
                &w.trust_domain
            };
            let sa = if w.service_account.is_empty() {
                "default"
            } else {
                &w.service_account
            };
            let Ok(identity) = Identity::new(trust_domain, &w.namespace, sa) else {
                continue;
            };
            let services = w
                .services
                .iter()
                .map(|(name, ports)| {
                    let map = ports
                        .ports
                        .iter()
                        .filter_map(|p| {
                            Some((
                                u16::try_from(p.service_port).ok()?,
                                u16::try_from(p.target_port).ok()?,
                            ))
                        })
                        .collect();
                    (name.clone(), map)
                })
                .collect();
            let locality = w.locality.clone().unwrap_or_default();
            let info = WorkloadInfo {
                uid: w.uid.clone(),
                name: format!("{}/{}", w.namespace, w.name),
                ip,
                identity,
                node: w.node.clone(),
                locality: (locality.region, locality.zone, locality.subzone),
                services,
                policies: w.authorization_policies.clone(),
                permissive: false,
                waypoint: false,
                gateway: false,
                enforced: false,
                canonical: (w.canonical_name.clone(), w.canonical_revision.clone()),
            };
            for service in info.services.keys() {
                view.endpoints
                    .entry(service.clone())
                    .or_default()
                    .push(info.uid.clone());
            }
            view.by_ip.insert(ip, info.uid.clone());
            view.workloads.insert(info.uid.clone(), Arc::new(info));
        }
        for list in view.endpoints.values_mut() {
            list.sort();
        }
        if let Some(held) = state
            .resources
            .get(weft_xds::MESH_TYPE)
            .and_then(|m| m.get("mesh"))
            && let Ok(mesh) = MeshConfig::decode(held.body.value.as_slice())
        {
            view.registry_only = mesh.outbound_policy == OutboundPolicy::RegistryOnly as i32;
            if mesh.mtls_mode == MtlsMode::Permissive as i32 {
                for w in view.workloads.values_mut() {
                    Arc::make_mut(w).permissive = true;
                }
            }
        }
        for held in state
            .resources
            .get(weft_xds::AUTHORIZATION_TYPE)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Ok(p) = Authorization::decode(held.body.value.as_slice()) {
                view.policies
                    .insert(format!("{}/{}", p.namespace, p.name), Arc::new(p));
            }
        }
        for held in state
            .resources
            .get(weft_xds::LISTENERS_TYPE)
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Ok(l) = WorkloadListeners::decode(held.body.value.as_slice()) else {
                continue;
            };
            if let Some(w) = view.workloads.get_mut(&l.workload_uid) {
                let w = Arc::make_mut(w);
                w.permissive = l.mtls_mode == MtlsMode::Permissive as i32;
                w.waypoint = l.waypoint;
                w.gateway = l.gateway;
                w.enforced = l.waypoint && l.waypoint_for != "none";
            }
            let local = view
                .workloads
                .get(&l.workload_uid)
                .is_some_and(|w| w.node == node);
            if !local {
                continue;
            }
            for o in l.outbound {
                let (Ok(local_port), Ok(service_port)) =
                    (u16::try_from(o.local_port), u16::try_from(o.service_port))
                else {
                    continue;
                };
                view.listeners.push(Listener {
                    workload: l.workload_uid.clone(),
                    local_port,
                    service: o.service,
                    service_port,
                });
            }
        }
        view.listeners
            .sort_by(|a, b| (&a.workload, a.local_port).cmp(&(&b.workload, b.local_port)));
        view
    }

    /// The policies that apply to `w`: mesh-wide ones, its namespace's, and
    /// the selector-based ones that select it.
    pub fn policies_for(&self, w: &WorkloadInfo) -> Vec<&Authorization> {
        let namespace = w.name.split('/').next().unwrap_or_default();
        self.policies
            .iter()
            .filter(|(name, p)| match Scope::try_from(p.scope) {
                Ok(Scope::Global) => true,
                Ok(Scope::Namespace) => p.namespace == namespace,
                Ok(Scope::WorkloadSelector) => w.policies.contains(name),
                Err(_) => false,
            })
            .map(|(_, p)| p.as_ref())
            .collect()
    }

    /// Workloads running on `node` that its proxy serves. Waypoints and
    /// gateways serve themselves: the node opens nothing on their
    /// addresses, so their identity is usable by them alone.
    pub fn local<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<WorkloadInfo>> {
        self.workloads
            .values()
            .filter(move |w| w.node == node && !w.waypoint && !w.gateway)
    }
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
