//! [`MeshView`]: the decoded mesh, built from the config stream's client
//! state on every change, and its lookups.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;
use weft_core::Identity;
use weft_core::model::{Locality, NamespacedName};
use weft_xds::ClientState;
use weft_xds::proto::security::{Authorization, Scope};
use weft_xds::proto::weft::{MeshConfig, MtlsMode, OutboundPolicy, WorkloadListeners};
use weft_xds::proto::workload::{Address, Workload, address::Type, gateway_address};

use crate::workload::{Listener, ServiceInfo, WorkloadInfo};

/// The mesh as a proxy on node `node` sees it: an immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    /// Workloads by uid.
    pub workloads: HashMap<String, Arc<WorkloadInfo>>,
    /// Workload uid by address.
    pub by_ip: HashMap<IpAddr, String>,
    /// Endpoint uids of each service, sorted.
    pub endpoints: HashMap<NamespacedName, Vec<String>>,
    /// Explicit outbound listeners of workloads on this node, sorted by
    /// workload and port.
    pub listeners: Vec<Listener>,
    /// Services by lower-case host name.
    pub services_by_host: HashMap<String, NamespacedName>,
    /// Services by virtual IP.
    pub services_by_vip: HashMap<IpAddr, NamespacedName>,
    /// Services by namespace and host name.
    pub services: HashMap<NamespacedName, ServiceInfo>,
    /// Authorization policies by namespace and name.
    pub policies: HashMap<NamespacedName, Arc<Authorization>>,
    /// Whether traffic to destinations outside the registry is refused
    /// (`Mesh` `outboundTrafficPolicy: REGISTRY_ONLY`); by default
    /// (`ALLOW_ANY`) it passes through.
    pub registry_only: bool,
}

impl MeshView {
    /// Builds the view for a proxy on node `node` from what the config
    /// stream holds. Resources that do not decode are skipped (the client
    /// NACKs them).
    pub fn build(state: &ClientState, node: &str) -> MeshView {
        let mut view = MeshView::default();
        for body in bodies(state, weft_xds::ADDRESS_TYPE) {
            match Address::decode(body) {
                Ok(Address {
                    r#type: Some(Type::Workload(w)),
                }) => view.add_workload(&w),
                Ok(Address {
                    r#type: Some(Type::Service(s)),
                }) => {
                    let name = NamespacedName::new(&s.namespace, &s.hostname);
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
                }
                _ => {}
            }
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
        for body in bodies(state, weft_xds::AUTHORIZATION_TYPE) {
            if let Ok(p) = Authorization::decode(body) {
                view.policies
                    .insert(NamespacedName::new(&p.namespace, &p.name), Arc::new(p));
            }
        }
        for body in bodies(state, weft_xds::LISTENERS_TYPE) {
            if let Ok(l) = WorkloadListeners::decode(body) {
                view.add_listeners(l, node);
            }
        }
        view.listeners
            .sort_by(|a, b| (&a.workload, a.local_port).cmp(&(&b.workload, b.local_port)));
        view
    }

    fn add_workload(&mut self, w: &Workload) {
        let Some(ip) = ip_of(w.addresses.first().map(Vec::as_slice).unwrap_or_default()) else {
            return;
        };
        let or = |s: &str, default: &'static str| if s.is_empty() { default } else { s }.to_owned();
        let Ok(identity) = Identity::new(
            &or(&w.trust_domain, "cluster.local"),
            &w.namespace,
            &or(&w.service_account, "default"),
        ) else {
            return;
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
                (NamespacedName::from_key(name), map)
            })
            .collect();
        let locality = w.locality.clone().unwrap_or_default();
        let info = WorkloadInfo {
            uid: w.uid.clone(),
            name: NamespacedName::new(&w.namespace, &w.name),
            ip,
            identity,
            node: w.node.clone(),
            locality: Locality {
                region: locality.region,
                zone: locality.zone,
                subzone: locality.subzone,
            },
            services,
            cluster: w.cluster_id.clone(),
            network: w.network.clone(),
            network_gateway: w.network_gateway.as_ref().and_then(gateway_address),
            policies: w
                .authorization_policies
                .iter()
                .map(|p| NamespacedName::from_key(p))
                .collect(),
            permissive: false,
            waypoint: false,
            gateway: false,
            enforced: false,
            canonical_service: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
        };
        for service in info.services.keys() {
            self.endpoints
                .entry(service.clone())
                .or_default()
                .push(info.uid.clone());
        }
        // A workload behind another network's gateway is not reachable at
        // its address (which may be one of this network's too).
        if info.network_gateway.is_none() {
            self.by_ip.insert(ip, info.uid.clone());
        }
        self.workloads.insert(info.uid.clone(), Arc::new(info));
    }

    fn add_listeners(&mut self, l: WorkloadListeners, node: &str) {
        let Some(w) = self.workloads.get_mut(&l.workload_uid) else {
            return;
        };
        let w = Arc::make_mut(w);
        w.permissive = l.mtls_mode == MtlsMode::Permissive as i32;
        w.waypoint = l.waypoint;
        w.gateway = l.gateway;
        w.enforced = l.waypoint && l.waypoint_for != "none";
        if w.node != node {
            return;
        }
        for o in l.outbound {
            let (Ok(local_port), Ok(service_port)) =
                (u16::try_from(o.local_port), u16::try_from(o.service_port))
            else {
                continue;
            };
            self.listeners.push(Listener {
                workload: l.workload_uid.clone(),
                local_port,
                service: NamespacedName::from_key(&o.service),
                service_port,
            });
        }
    }

    /// The workload with uid `uid`.
    pub fn workload(&self, uid: &str) -> Option<&Arc<WorkloadInfo>> {
        self.workloads.get(uid)
    }

    /// The workload at address `ip`.
    pub fn workload_at(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workloads.get(self.by_ip.get(&ip)?)
    }

    /// The workload named `name` (namespace and name).
    pub fn workload_named(&self, name: &NamespacedName) -> Option<&Arc<WorkloadInfo>> {
        self.workloads.values().find(|w| &w.name == name)
    }

    /// The service with host name `host` (any case).
    pub fn service_by_host(&self, host: &str) -> Option<&NamespacedName> {
        self.services_by_host.get(&host.to_ascii_lowercase())
    }

    /// The endpoints of `service`, in uid order.
    pub fn endpoints_of<'a>(
        &'a self,
        service: &NamespacedName,
    ) -> impl Iterator<Item = &'a Arc<WorkloadInfo>> + 'a {
        self.endpoints
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.workloads.get(uid))
    }

    /// The policies that apply to `w`: mesh-wide ones, its namespace's, and
    /// the selector-based ones that select it.
    pub fn policies_for(&self, w: &WorkloadInfo) -> Vec<&Authorization> {
        self.policies
            .iter()
            .filter(|(name, p)| match Scope::try_from(p.scope) {
                Ok(Scope::Global) => true,
                Ok(Scope::Namespace) => p.namespace == w.name.namespace,
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

/// The encoded bodies of every resource of `type_url` the client holds.
fn bodies<'a>(state: &'a ClientState, type_url: &str) -> impl Iterator<Item = &'a [u8]> {
    state
        .resources
        .get(type_url)
        .into_iter()
        .flat_map(|m| m.values())
        .map(|held| held.body.value.as_slice())
}

/// The HBONE address of a gateway given by IP (one given by host name is
/// not followed).
fn gateway_address(g: &weft_xds::proto::workload::GatewayAddress) -> Option<std::net::SocketAddr> {
    use weft_xds::proto::workload::gateway_address::Destination;
    let Some(Destination::Address(a)) = &g.destination else {
        return None;
    };
    let port = u16::try_from(g.hbone_mtls_port).ok().filter(|p| *p != 0)?;
    Some(std::net::SocketAddr::new(ip_of(&a.address)?, port))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
