//! The snapshot as xDS resources: Istio Workload API `Address`es (one per
//! workload, one per service hostname) and `Authorization`s, each with a
//! version derived from its encoded bytes, so an unchanged resource keeps
//! its version across snapshots and control plane restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;
use prost_types::Any;
use weft_core::model::{NamespacedName, Service, Snapshot, Workload, WorkloadAddress};

use crate::proto::workload::{self as wl, address::Type};

/// Type URL of Istio Workload API addresses.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of Istio L4 authorization policies.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
/// Type URL of weft's per-service L7 view (waypoints and gateways).
pub const L7_SERVICE_TYPE: &str = "type.googleapis.com/weft.config.v1alpha1.L7Service";
/// Type URL of workloads' explicit outbound listeners (local mode).
pub const LISTENERS_TYPE: &str = "type.googleapis.com/weft.config.v1alpha1.WorkloadListeners";
/// Type URL of the mesh-wide settings nodes need.
pub const MESH_TYPE: &str = "type.googleapis.com/weft.config.v1alpha1.MeshConfig";
/// Type URL of ingress gateways' configuration.
pub const GATEWAY_TYPE: &str = "type.googleapis.com/weft.config.v1alpha1.Gateway";
/// Type URL of the addresses a cluster exports to the clusters it peers
/// with (bodies are `istio.workload.Address`; see `export.rs`).
pub const EXPORT_TYPE: &str = "type.googleapis.com/weft.config.v1alpha1.ExportedAddress";

/// Every type the server offers.
pub const TYPES: [&str; 7] = [
    ADDRESS_TYPE,
    EXPORT_TYPE,
    GATEWAY_TYPE,
    AUTHORIZATION_TYPE,
    L7_SERVICE_TYPE,
    LISTENERS_TYPE,
    MESH_TYPE,
];

/// One resource as sent: its version and encoded body.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Opaque version: a hash of the body (sent as 16 hex digits).
    pub version: u64,
    /// The encoded resource.
    pub body: Any,
    /// The whole `Resource` message (name, version, body), encoded once
    /// for every session that sends it ([`crate::wire`]).
    pub wire: bytes::Bytes,
}

impl Entry {
    /// The entry named `name`: `message` encoded, versioned by its bytes.
    pub fn new(name: String, type_url: &str, message: &impl Message) -> (Arc<str>, Arc<Entry>) {
        let value = message.encode_to_vec();
        let version = fnv1a(&value);
        let body = Any {
            type_url: type_url.to_owned(),
            value,
        };
        let wire = crate::wire::Resource::encode_once(&name, &version_text(version), &body);
        (
            Arc::from(name),
            Arc::new(Entry {
                version,
                body,
                wire,
            }),
        )
    }
}

/// A version as it travels on the wire.
pub fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

/// A version a client reports; anything unrecognized never matches.
pub fn parse_version(text: &str) -> u64 {
    if text.len() == 16 {
        u64::from_str_radix(text, 16).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    }
}

/// Resources of one type, by name (names are shared with every session).
pub type Resources = BTreeMap<Arc<str>, Arc<Entry>>;

/// What a client holds of one type: name → version.
pub type Known = HashMap<Arc<str>, u64>;

/// Everything the server offers at one configuration version.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// The configuration version these were built from.
    pub version: u64,
    /// Type URL → resources.
    pub types: BTreeMap<&'static str, Resources>,
    /// What changed since the previous set, when known.
    pub delta: Option<Delta>,
    /// Who may read the exported addresses.
    pub peers: crate::peers::Peers,
}

/// The names that changed between two consecutive sets.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Version of the previous set.
    pub from: u64,
    /// Type URL → names added, changed or removed.
    pub names: BTreeMap<&'static str, Vec<Arc<str>>>,
}

impl ResourceSet {
    /// The resources of `type_url` (empty for an unknown type).
    pub fn of(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url)
    }
}

/// FNV-1a, 64 bit: a stable, fast version hash (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The xDS name of a workload (its uid).
pub fn workload_uid(w: &Workload) -> String {
    format!("weft/{}/{}", w.name.namespace, w.name.name)
}

/// The xDS name of a service hostname.
pub fn service_name(namespace: &str, host: &str) -> String {
    format!("{namespace}/{host}")
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Builds every resource from a snapshot.
pub fn build(snapshot: &Snapshot, version: u64) -> ResourceSet {
    build_from(snapshot, version, None)
}

/// Builds every resource from `snapshot`. With `previous` (the snapshot
/// the previous set was built from, and that set), the address and L7
/// maps start as copies of the previous ones (sharing every entry) and
/// only what the change touched is encoded again: the result is the same
/// as [`build`]'s, at the cost of the change.
pub fn build_from(
    snapshot: &Snapshot,
    version: u64,
    previous: Option<(&Snapshot, &ResourceSet)>,
) -> ResourceSet {
    let (addresses, l7) = match previous {
        Some((before, set)) => update(before, set, snapshot),
        None => {
            let mut addresses = Resources::new();
            let mut l7 = Resources::new();
            for service in snapshot.services.values() {
                addresses.extend(service_entries(snapshot, service));
                l7.extend([l7_entry(snapshot, service)]);
            }
            let backs = backs(snapshot);
            let policies: Vec<_> = snapshot.policies.values().collect();
            for workload in snapshot.workloads.values() {
                addresses.extend([workload_entry(&backs, &policies, workload)]);
            }
            (addresses, l7)
        }
    };
    let mut gateways = Resources::new();
    for (name, gateway) in &snapshot.gateways {
        let message = crate::proto::weft::Gateway {
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            // Serializing plain data cannot fail.
            config_json: serde_json::to_string(gateway).unwrap_or_default(),
        };
        gateways.extend([Entry::new(name.to_string(), GATEWAY_TYPE, &message)]);
    }
    let mut listeners = Resources::new();
    let mode = |m: weft_core::model::MtlsMode| match m {
        weft_core::model::MtlsMode::Strict => crate::proto::weft::MtlsMode::Strict,
        weft_core::model::MtlsMode::Permissive => crate::proto::weft::MtlsMode::Permissive,
    } as i32;
    for w in snapshot.workloads.values().filter(|w| {
        !w.outbound.is_empty() || w.mtls_mode != snapshot.mesh.mtls_mode || w.waypoint || w.gateway
    }) {
        let message = crate::proto::weft::WorkloadListeners {
            workload_uid: workload_uid(w),
            outbound: w
                .outbound
                .iter()
                .filter_map(|l| {
                    // Validation guarantees the host exists; find its namespace.
                    let service = snapshot.service_for_host(&l.host)?;
                    Some(crate::proto::weft::OutboundListener {
                        local_port: u32::from(l.local_port),
                        service: service_name(&service.name.namespace, &l.host),
                        service_port: u32::from(l.port),
                    })
                })
                .collect(),
            mtls_mode: mode(w.mtls_mode),
            waypoint: w.waypoint,
            gateway: w.gateway,
            waypoint_for: if w.waypoint {
                w.labels
                    .get(weft_core::model::WAYPOINT_FOR_LABEL)
                    .cloned()
                    .unwrap_or_else(|| "service".to_owned())
            } else {
                String::new()
            },
        };
        listeners.extend([Entry::new(workload_uid(w), LISTENERS_TYPE, &message)]);
    }
    let mut authorizations = Resources::new();
    for policy in snapshot.policies.values() {
        authorizations.extend([Entry::new(
            policy.name.to_string(),
            AUTHORIZATION_TYPE,
            &crate::authz::to_proto(policy),
        )]);
    }
    let mesh = &snapshot.mesh;
    let mesh_message = crate::proto::weft::MeshConfig {
        trust_domain: mesh.trust_domain.clone(),
        outbound_policy: match mesh.outbound_policy {
            weft_core::model::OutboundPolicy::AllowAny => {
                crate::proto::weft::OutboundPolicy::AllowAny
            }
            weft_core::model::OutboundPolicy::RegistryOnly => {
                crate::proto::weft::OutboundPolicy::RegistryOnly
            }
        } as i32,
        connect_timeout_ms: u32::try_from(mesh.connect_timeout.as_millis()).unwrap_or(u32::MAX),
        mtls_mode: mode(mesh.mtls_mode),
        tracing_endpoint: mesh
            .tracing
            .as_ref()
            .map(|t| t.endpoint.clone())
            .unwrap_or_default(),
        tracing_http_path: mesh
            .tracing
            .as_ref()
            .and_then(|t| t.http_path.clone())
            .unwrap_or_default(),
        tracing_sampling_ppm: mesh.tracing.as_ref().map_or(0, |t| t.sampling_ppm),
        path_normalization: {
            use crate::proto::weft::PathNormalization as P;
            use weft_core::model::PathNormalization as M;
            match mesh.path_normalization {
                M::Base => P::Base,
                M::None => P::None,
                M::MergeSlashes => P::MergeSlashes,
                M::DecodeAndMergeSlashes => P::DecodeAndMergeSlashes,
            }
        } as i32,
    };
    let mut types = BTreeMap::new();
    types.insert(
        MESH_TYPE,
        Resources::from([Entry::new("mesh".into(), MESH_TYPE, &mesh_message)]),
    );
    types.insert(LISTENERS_TYPE, listeners);
    types.insert(ADDRESS_TYPE, addresses);
    types.insert(L7_SERVICE_TYPE, l7);
    types.insert(GATEWAY_TYPE, gateways);
    types.insert(AUTHORIZATION_TYPE, authorizations);
    ResourceSet {
        version,
        types,
        delta: None,
        peers: crate::peers::Peers::default(),
    }
}

/// Which services each workload backs, found once rather than per workload.
pub(crate) fn backs(snapshot: &Snapshot) -> HashMap<&NamespacedName, Vec<&Service>> {
    let mut backs: HashMap<&NamespacedName, Vec<&Service>> = HashMap::new();
    for service in snapshot.services.values() {
        for endpoint in &service.endpoints {
            backs.entry(endpoint).or_default().push(service);
        }
    }
    backs
}

/// A service's addresses, one per hostname.
fn service_entries<'a>(
    snapshot: &'a Snapshot,
    service: &'a Service,
) -> impl Iterator<Item = (Arc<str>, Arc<Entry>)> + 'a {
    service.hosts.iter().map(move |host| {
        let message = wl::Address {
            r#type: Some(Type::Service(service_message(snapshot, service, host))),
        };
        Entry::new(
            service_name(&service.name.namespace, host),
            ADDRESS_TYPE,
            &message,
        )
    })
}

fn workload_entry(
    backs: &HashMap<&NamespacedName, Vec<&Service>>,
    policies: &[&weft_core::model::AuthorizationPolicy],
    workload: &Workload,
) -> (Arc<str>, Arc<Entry>) {
    let services = backs.get(&workload.name).map_or(&[][..], Vec::as_slice);
    let message = wl::Address {
        r#type: Some(Type::Workload(workload_message(
            services, policies, workload,
        ))),
    };
    Entry::new(workload_uid(workload), ADDRESS_TYPE, &message)
}

fn l7_name(service: &NamespacedName) -> String {
    format!("{}/{}", service.namespace, service.name)
}

fn l7_entry(snapshot: &Snapshot, service: &Service) -> (Arc<str>, Arc<Entry>) {
    let policy = snapshot.l7.get(&service.name);
    Entry::new(
        l7_name(&service.name),
        L7_SERVICE_TYPE,
        &l7_message(service, policy),
    )
}

/// Calls `f` for every key of either map, in key order, with its value
/// on each side (one walk over both).
pub(crate) fn walk<'a, K: Ord, V>(
    before: &'a BTreeMap<K, V>,
    now: &'a BTreeMap<K, V>,
    mut f: impl FnMut(&'a K, Option<&'a V>, Option<&'a V>),
) {
    let mut old = before.iter().peekable();
    for (key, value) in now {
        while let Some((gone, was)) = old.next_if(|(o, _)| *o < key) {
            f(gone, Some(was), None);
        }
        let was = old.next_if(|(o, _)| *o == key).map(|(_, v)| v);
        f(key, was, Some(value));
    }
    for (gone, was) in old {
        f(gone, Some(was), None);
    }
}

/// Whether two shared values are equal (the same one, most often).
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The previous address and L7 maps, brought up to date with `now`. An
/// entry is encoded again only when something its encoding reads
/// changed: a service's own fields, its waypoint's address, its L7
/// policy; a workload's own fields, the services it backs (any service
/// it is or was an endpoint of changed) or the authorization policies.
fn update(before: &Snapshot, set: &ResourceSet, now: &Snapshot) -> (Resources, Resources) {
    let mut addresses = set.of(ADDRESS_TYPE).cloned().unwrap_or_default();
    let mut l7 = set.of(L7_SERVICE_TYPE).cloned().unwrap_or_default();
    let mut changed = Vec::new();
    walk(&before.services, &now.services, |_, old, new| {
        match (old, new) {
            (Some(a), Some(b)) if same(a, b) => {}
            _ => changed.push((old, new)),
        }
    });
    // Every old name goes before any new one comes: a hostname may move
    // from one service to another in the same change.
    let mut touched: HashSet<&NamespacedName> = HashSet::new();
    for old in changed.iter().filter_map(|(old, _)| *old) {
        for host in &old.hosts {
            addresses.remove(service_name(&old.name.namespace, host).as_str());
        }
        l7.remove(l7_name(&old.name).as_str());
        touched.extend(&old.endpoints);
    }
    for new in changed.iter().filter_map(|(_, new)| *new) {
        addresses.extend(service_entries(now, new));
        l7.extend([l7_entry(now, new)]);
        touched.extend(&new.endpoints);
    }
    // L7 policies that changed on their own.
    walk(&before.l7, &now.l7, |name, old, new| {
        if old != new
            && let Some(service) = now.services.get(name)
        {
            l7.extend([l7_entry(now, service)]);
        }
    });
    let same_policies = before.policies == now.policies;
    let policies: Vec<_> = now.policies.values().collect();
    let mut moved: HashSet<&NamespacedName> = HashSet::new();
    walk(&before.workloads, &now.workloads, |name, old, new| {
        if old.map(|w| &w.address) != new.map(|w| &w.address) {
            moved.insert(name);
        }
        match (old, new) {
            (Some(old), None) => {
                addresses.remove(workload_uid(old).as_str());
            }
            (Some(old), Some(new))
                if same_policies && same(old, new) && !touched.contains(name) => {}
            (_, Some(new)) => {
                // A workload backs services of its own namespace only
                // (selectors and inline endpoints stay there).
                let namespace = NamespacedName::new(name.namespace.as_str(), "");
                let backs = HashMap::from([(
                    name,
                    now.services
                        .range(namespace..)
                        .take_while(|(s, _)| s.namespace == name.namespace)
                        .filter(|(_, s)| s.endpoints.contains(name))
                        .map(|(_, s)| &**s)
                        .collect(),
                )]);
                addresses.extend([workload_entry(&backs, &policies, new)]);
            }
            (None, None) => {}
        }
    });
    // Services whose waypoint moved (or came or went) carry its address.
    if !moved.is_empty() {
        for service in now.services.values() {
            if service.waypoint.as_ref().is_some_and(|w| moved.contains(w)) {
                addresses.extend(service_entries(now, service));
            }
        }
    }
    (addresses, l7)
}

fn l7_message(
    service: &Service,
    policy: Option<&weft_core::l7::L7Policy>,
) -> crate::proto::weft::L7Service {
    use crate::proto::weft::{Protocol as P, ServicePort};
    use weft_core::model::Protocol;
    crate::proto::weft::L7Service {
        // Serializing plain data cannot fail; an empty string means none.
        policy_json: policy
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default(),
        name: service.name.name.clone(),
        namespace: service.name.namespace.clone(),
        hostnames: service.hosts.clone(),
        ports: service
            .ports
            .iter()
            .map(|p| ServicePort {
                number: u32::from(p.number),
                name: p.name.clone(),
                protocol: match p.protocol {
                    Protocol::Tcp => P::Tcp,
                    Protocol::Http => P::Http,
                    Protocol::Http2 => P::Http2,
                    Protocol::Grpc => P::Grpc,
                    Protocol::Https => P::Https,
                    Protocol::Tls => P::Tls,
                } as i32,
                target_port: u32::from(p.target_port.unwrap_or(p.number)),
            })
            .collect(),
    }
}

pub(crate) fn service_message(snapshot: &Snapshot, service: &Service, host: &str) -> wl::Service {
    // The waypoint, by address (validation guarantees it has an IP).
    let waypoint = service
        .waypoint
        .as_ref()
        .and_then(|name| snapshot.workloads.get(name))
        .and_then(|w| match &w.address {
            WorkloadAddress::Ip(ip) => Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Address(
                    wl::NetworkAddress {
                        network: String::new(),
                        address: ip_bytes(*ip),
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            WorkloadAddress::Hostname(_) => None,
        });
    wl::Service {
        waypoint,
        name: service.name.name.clone(),
        namespace: service.name.namespace.clone(),
        hostname: host.to_owned(),
        // The Workload API carries single addresses; CIDR ranges stay in
        // weft's own model.
        addresses: service
            .addresses
            .iter()
            .filter(|net| net.prefix_len() == net.max_prefix_len())
            .map(|net| wl::NetworkAddress {
                network: String::new(),
                address: ip_bytes(net.addr()),
            })
            .collect(),
        ports: service
            .ports
            .iter()
            .map(|p| wl::Port {
                service_port: u32::from(p.number),
                target_port: u32::from(p.target_port.unwrap_or(p.number)),
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn workload_message(
    backed: &[&Service],
    policies: &[&weft_core::model::AuthorizationPolicy],
    w: &Workload,
) -> wl::Workload {
    let (addresses, hostname) = match &w.address {
        WorkloadAddress::Ip(ip) => (vec![ip_bytes(*ip)], String::new()),
        WorkloadAddress::Hostname(h) => (Vec::new(), h.clone()),
    };
    let mut services = BTreeMap::new();
    for service in backed {
        let ports = wl::PortList {
            ports: service
                .ports
                .iter()
                .map(|p| wl::Port {
                    service_port: u32::from(p.number),
                    target_port: u32::from(service.target_port(p, w)),
                })
                .collect(),
        };
        for host in &service.hosts {
            services.insert(service_name(&service.name.namespace, host), ports.clone());
        }
    }
    wl::Workload {
        uid: workload_uid(w),
        name: w.name.name.clone(),
        namespace: w.name.namespace.clone(),
        addresses,
        hostname,
        network: w.network.clone(),
        cluster_id: w.cluster.clone(),
        tunnel_protocol: if w.node.is_some() {
            wl::TunnelProtocol::Hbone as i32
        } else {
            wl::TunnelProtocol::None as i32
        },
        trust_domain: w.identity.trust_domain().to_owned(),
        service_account: w.identity.service_account().to_owned(),
        node: w.node.clone().unwrap_or_default(),
        canonical_name: w.canonical_name().to_owned(),
        canonical_revision: w.canonical_revision().to_owned(),
        workload_name: w.name.name.clone(),
        services,
        locality: (!w.locality.is_empty()).then(|| wl::Locality {
            region: w.locality.region.clone(),
            zone: w.locality.zone.clone(),
            subzone: w.locality.subzone.clone(),
        }),
        capacity: Some(w.weight),
        // Selector-based policies that select this workload (namespace-wide
        // ones travel as NAMESPACE-scoped resources).
        authorization_policies: policies
            .iter()
            .filter(|p| p.selector.is_some() && p.applies_to(w))
            .map(|p| p.name.to_string())
            .collect(),
        ..Default::default()
    }
}

/// Whether a subscriber that proved `peer` (over mTLS; `None` on the
/// plaintext port) may receive resource `name` of `type_url`. Gateway
/// configurations carry their listeners' private keys, so they go only to
/// workloads of the gateway's own namespace (the rule Istio applies to
/// gateway credentials); everything else goes to every subscriber.
pub fn readable_by(type_url: &str, name: &str, peer: Option<&weft_core::Identity>) -> bool {
    if type_url != GATEWAY_TYPE {
        return true;
    }
    let namespace = name.split_once('/').map(|(ns, _)| ns);
    peer.is_some_and(|p| namespace == Some(p.namespace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_configurations_are_readable_only_in_their_namespace() {
        let id = |ns: &str| weft_core::Identity::new("cluster.local", ns, "edge").ok();
        let cases = [
            (GATEWAY_TYPE, "shop/edge", id("shop"), true),
            (GATEWAY_TYPE, "shop/edge", id("billing"), false),
            (GATEWAY_TYPE, "shop/edge", id("weft-system"), false),
            (GATEWAY_TYPE, "shop/edge", None, false),
            (GATEWAY_TYPE, "edge", id("shop"), false),
            (ADDRESS_TYPE, "shop/orders", None, true),
            (L7_SERVICE_TYPE, "shop/orders", id("billing"), true),
        ];
        for (type_url, name, peer, expected) in cases {
            assert_eq!(
                readable_by(type_url, name, peer.as_ref()),
                expected,
                "{type_url} {name} by {peer:?}"
            );
        }
    }

    #[test]
    fn versions_are_stable_and_content_addressed() {
        let (_, a) = Entry::new(
            "a".into(),
            ADDRESS_TYPE,
            &wl::Locality {
                region: "eu".into(),
                ..Default::default()
            },
        );
        let (_, b) = Entry::new(
            "b".into(),
            ADDRESS_TYPE,
            &wl::Locality {
                region: "eu".into(),
                ..Default::default()
            },
        );
        let (_, c) = Entry::new(
            "c".into(),
            ADDRESS_TYPE,
            &wl::Locality {
                region: "us".into(),
                ..Default::default()
            },
        );
        assert_eq!(a.version, b.version);
        assert_eq!(parse_version(&version_text(a.version)), a.version);
        assert_eq!(parse_version("not-a-version"), u64::MAX);
        assert_ne!(a.version, c.version);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
