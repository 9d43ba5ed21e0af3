//! The internal model of the mesh: services, the workloads behind them and
//! mesh-wide settings, as one immutable [`Snapshot`].
//!
//! Every configuration source (YAML files today, the Kubernetes API later)
//! is translated into this one model; proxies never see the source
//! resources. Values here are already validated: a `Snapshot` that exists
//! is internally consistent (every endpoint names an existing workload).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::Identity;

/// Label on a workload naming the weft node it runs on (see
/// `docs/configuration.md`). Workloads without it are not behind a weft node
/// and are reached without mTLS.
pub const NODE_LABEL: &str = "weft.dev/node";
/// Annotation on a workload with the command `weft up` runs for it.
pub const RUN_ANNOTATION: &str = "weft.dev/run";
/// Annotation declaring a workload's explicit outbound listeners (local
/// mode): `"<local-port>=<service-host>:<port>, …"`. The node proxy listens
/// on the workload's own address at each local port and carries what
/// arrives to the service through the mesh.
pub const OUTBOUND_ANNOTATION: &str = "weft.dev/outbound";
/// Annotation marking a workload that only makes calls, so that it is not an
/// error for no service to select it.
pub const CLIENT_ONLY_ANNOTATION: &str = "weft.dev/client-only";

/// Annotation marking a workload that is not ready (a Kubernetes pod
/// whose readiness fails): known to the mesh — it may call out and
/// obtain its certificate — but no service's endpoint until it is.
pub const NOT_READY_ANNOTATION: &str = "weft.dev/not-ready";

/// Label on a workload marking it as a waypoint (weft's file-mode stand-in
/// for Istio's `istio-waypoint` Gateway): it runs `weft waypoint`, receives
/// HBONE itself, and its node proxy leaves it alone.
pub const WAYPOINT_LABEL: &str = "weft.dev/waypoint";
/// Label on a waypoint saying which traffic it is for (Istio's values:
/// `service`, the default, `workload`, `all`, `none`). In weft anything
/// but `none` also makes the endpoints of its services refuse their
/// service ports to callers other than the waypoint (and gateways).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// Label on a workload marking it as an ingress gateway: it runs `weft
/// gateway` for the Gateway API `Gateway` of the same name and namespace.
pub const GATEWAY_LABEL: &str = "weft.dev/gateway";
/// Label on a service naming the waypoint (a workload of the same
/// namespace, unless `istio.io/use-waypoint-namespace` says otherwise) its
/// traffic goes through, as in Istio.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label on a service asking ingress gateways to send its traffic through
/// its waypoint (as in Istio; by default gateways go to endpoints).
pub const INGRESS_USE_WAYPOINT_LABEL: &str = "istio.io/ingress-use-waypoint";
/// Label naming the namespace of the waypoint in `istio.io/use-waypoint`.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";

pub use crate::names::NamespacedName;

/// Everything a proxy needs to know about the mesh at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Other clusters of the mesh this control plane peers with, by
    /// cluster ID.
    pub remotes: BTreeMap<String, RemoteCluster>,
    /// This cluster's east-west gateways, by the network they admit
    /// tunnels into.
    pub network_gateways: BTreeMap<String, NetworkGateway>,
    /// Mesh-wide settings.
    pub mesh: MeshSettings,
    /// Services by namespace and name.
    pub services: BTreeMap<NamespacedName, Arc<Service>>,
    /// Workloads by namespace and name.
    pub workloads: BTreeMap<NamespacedName, Arc<Workload>>,
    /// Authorization policies by namespace and name.
    pub policies: BTreeMap<NamespacedName, AuthorizationPolicy>,
    /// L7 policy by service (namespace and name of its ServiceEntry).
    pub l7: BTreeMap<NamespacedName, crate::l7::L7Policy>,
    /// Ingress gateways by namespace and name.
    pub gateways: BTreeMap<NamespacedName, crate::l7::GatewayConfig>,
}

pub use crate::topology::{CLUSTER_LOCAL_LABEL, NetworkGateway, RemoteCluster};

impl Snapshot {
    /// The workloads behind a service, in a stable order.
    pub fn endpoints<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Workload> {
        service
            .endpoints
            .iter()
            .filter_map(|name| self.workloads.get(name).map(|w| &**w))
    }

    /// Finds the service that owns a hostname (case-insensitive) or a
    /// virtual IP.
    pub fn service_for_host(&self, host: &str) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
            .map(|s| &**s)
    }

    /// Finds the service whose addresses contain `ip`.
    pub fn service_for_ip(&self, ip: IpAddr) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.addresses.iter().any(|net| net.contains(&ip)))
            .map(|s| &**s)
    }
}

/// An L4 authorization policy (Istio `AuthorizationPolicy`, the subset a
/// node proxy can enforce without reading HTTP).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    /// Namespace and name.
    pub name: NamespacedName,
    /// Labels a workload must carry for the policy to apply; `None`: every
    /// workload of the namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// ALLOW or DENY.
    pub action: AuthzAction,
    /// Rules, OR-ed. ALLOW with no rules allows nothing.
    pub rules: Vec<AuthzRule>,
}

/// What a matching policy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzAction {
    /// Let matching traffic through (and, once any ALLOW applies, only it).
    Allow,
    /// Refuse matching traffic; DENY wins over ALLOW.
    Deny,
}

/// One rule: every part must match (an empty part matches anything).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthzRule {
    /// Sources, OR-ed.
    pub from: Vec<AuthzSource>,
    /// Operations, OR-ed.
    pub to: Vec<AuthzOperation>,
    /// Conditions, AND-ed.
    pub when: Vec<AuthzCondition>,
}

/// Who is calling. Within a field values are OR-ed; fields are AND-ed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthzSource {
    /// `cluster.local/ns/x/sa/y`, with `*` prefix/suffix wildcards.
    pub principals: Vec<String>,
    /// Principals that must not match.
    pub not_principals: Vec<String>,
    /// Source namespaces (`*` wildcards allowed).
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// Source addresses.
    pub ip_blocks: Vec<IpNet>,
    /// Addresses that must not match.
    pub not_ip_blocks: Vec<IpNet>,
}

/// What is being called, at L4.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthzOperation {
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Ports that must not match.
    pub not_ports: Vec<u16>,
}

/// A `when` condition on an L4 attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthzCondition {
    /// The attribute.
    pub key: AuthzKey,
    /// Values, OR-ed.
    pub values: Vec<String>,
    /// Values that must not match.
    pub not_values: Vec<String>,
}

/// L4 attributes a `when` condition may test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzKey {
    /// `source.ip`
    SourceIp,
    /// `source.namespace`
    SourceNamespace,
    /// `source.principal`
    SourcePrincipal,
    /// `destination.ip`
    DestinationIp,
    /// `destination.port`
    DestinationPort,
}

impl AuthzKey {
    /// Every key, with the name configuration uses.
    pub const ALL: [(&'static str, AuthzKey); 5] = [
        ("source.ip", AuthzKey::SourceIp),
        ("source.namespace", AuthzKey::SourceNamespace),
        ("source.principal", AuthzKey::SourcePrincipal),
        ("destination.ip", AuthzKey::DestinationIp),
        ("destination.port", AuthzKey::DestinationPort),
    ];

    /// Parses a key name.
    pub fn parse(s: &str) -> Option<AuthzKey> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }
}

impl AuthorizationPolicy {
    /// Whether it applies to `workload`.
    pub fn applies_to(&self, workload: &Workload) -> bool {
        self.name.namespace == workload.name.namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|sel| sel.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
    }
}

/// Mesh-wide settings (`weft.dev/v1alpha1` `Mesh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The SPIFFE trust domain of every identity in this mesh.
    pub trust_domain: String,
    /// Default mutual-TLS mode for inbound traffic.
    pub mtls_mode: MtlsMode,
    /// What to do with outbound traffic to destinations not in the registry.
    pub outbound_policy: OutboundPolicy,
    /// How long a proxy waits for a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Where waypoints and gateways send spans, if anywhere.
    pub tracing: Option<Tracing>,
    /// How gateways and waypoints normalize request paths before routing
    /// and policy.
    pub path_normalization: PathNormalization,
    /// This cluster's ID: the cluster of workloads without the
    /// `topology.istio.io/cluster` label (empty: unnamed).
    pub cluster: String,
    /// This cluster's default network (empty: one flat network).
    pub network: String,
}

/// How request paths are normalized before routing and policy (Istio's
/// `meshConfig.pathNormalization.normalization`); the rules themselves are
/// in the L7 engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathNormalization {
    /// As received (still refusing invalid escapes and control
    /// characters).
    None,
    /// RFC 3986: unreserved escapes decoded, dot segments removed,
    /// backslashes to slashes (Istio's default).
    #[default]
    Base,
    /// `Base`, then runs of slashes merged.
    MergeSlashes,
    /// `%2F` and `%5C` decoded first, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Every mode, as Istio names them.
    pub const NAMES: [&'static str; 4] =
        ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

    /// The mode Istio names `name` (`DEFAULT` is `BASE`).
    pub fn parse(name: &str) -> Option<PathNormalization> {
        match name {
            "NONE" => Some(PathNormalization::None),
            "BASE" | "DEFAULT" => Some(PathNormalization::Base),
            "MERGE_SLASHES" => Some(PathNormalization::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Some(PathNormalization::DecodeAndMergeSlashes),
            _ => None,
        }
    }
}

/// Span export (the Mesh's default tracing provider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracing {
    /// `http://host:port` of the OTLP collector.
    pub endpoint: String,
    /// OTLP/HTTP path (e.g. `/v1/traces`); `None`: OTLP/gRPC.
    pub http_path: Option<String>,
    /// New traces sampled, in parts per million.
    pub sampling_ppm: u32,
}

/// Default trust domain, as in Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            mtls_mode: MtlsMode::Strict,
            outbound_policy: OutboundPolicy::AllowAny,
            connect_timeout: Duration::from_secs(10),
            tracing: None,
            path_normalization: PathNormalization::Base,
            cluster: String::new(),
            network: String::new(),
        }
    }
}

/// Whether inbound plaintext is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Only mutual TLS is accepted.
    Strict,
    /// Mutual TLS and plaintext are both accepted.
    Permissive,
}

/// Handling of outbound traffic to unknown destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Pass it through unchanged.
    AllowAny,
    /// Refuse it.
    RegistryOnly,
}

/// A service: names, virtual addresses, ports and the workloads behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Namespace and name of the resource that declared it.
    pub name: NamespacedName,
    /// Hostnames that reach this service (lowercase).
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs that reach this service.
    pub addresses: Vec<IpNet>,
    /// Ports the service exposes.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    pub location: ServiceLocation,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// The workloads behind the service, by name, sorted.
    pub endpoints: Vec<NamespacedName>,
    /// The waypoint (a workload) its traffic goes through, if any.
    pub waypoint: Option<NamespacedName>,
    /// Kept inside this cluster: never exported to remote clusters
    /// (label [`CLUSTER_LOCAL_LABEL`]).
    pub cluster_local: bool,
}

impl Service {
    /// The port on `workload` that receives traffic sent to service port
    /// `port`: the workload's own mapping for the port's name, else the
    /// port's `targetPort`, else the port number itself.
    pub fn target_port(&self, port: &ServicePort, workload: &Workload) -> u16 {
        workload
            .ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }

    /// The service port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name, unique within the service.
    pub name: String,
    /// Port number clients connect to.
    pub number: u16,
    /// Application protocol.
    pub protocol: Protocol,
    /// Default port on the endpoints, when it differs from `number`.
    pub target_port: Option<u16>,
}

/// Application protocol of a port, as Istio names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and h2c upgrade).
    Http,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// HTTP over TLS originated by the client.
    Https,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// TLS originated by the client, opaque to the mesh.
    Tls,
}

impl Protocol {
    /// All protocols, with the names configuration uses.
    pub const ALL: [(&'static str, Protocol); 6] = [
        ("HTTP", Protocol::Http),
        ("HTTP2", Protocol::Http2),
        ("HTTPS", Protocol::Https),
        ("GRPC", Protocol::Grpc),
        ("TCP", Protocol::Tcp),
        ("TLS", Protocol::Tls),
    ];

    /// Parses a protocol name, case-insensitively.
    pub fn parse(s: &str) -> Option<Protocol> {
        Self::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, p)| *p)
    }

    /// Whether a waypoint can read requests on this protocol.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, p)| p == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Whether a service is part of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceLocation {
    /// Endpoints run inside the mesh, behind weft nodes.
    MeshInternal,
    /// Endpoints are outside the mesh.
    MeshExternal,
}

/// How a service's endpoints are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Connect to the original destination address.
    None,
    /// Endpoints are the listed IP addresses.
    Static,
    /// Endpoint hostnames are resolved by DNS; all addresses are used.
    Dns,
    /// Endpoint hostnames are resolved by DNS; one address is used per connection.
    DnsRoundRobin,
}

/// Where a workload can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadAddress {
    /// A literal IP address.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting.
    Hostname(String),
}

impl fmt::Display for WorkloadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadAddress::Ip(ip) => ip.fmt(f),
            WorkloadAddress::Hostname(h) => f.write_str(h),
        }
    }
}

pub use crate::locality::Locality;

/// One running instance of an application.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Namespace and name of the resource that declared it.
    pub name: NamespacedName,
    /// Where it listens.
    pub address: WorkloadAddress,
    /// Its labels, which services select on.
    pub labels: BTreeMap<String, String>,
    /// Port name → port number overrides for the services that select it.
    pub ports: BTreeMap<String, u16>,
    /// Its SPIFFE identity, derived from namespace and service account.
    pub identity: Identity,
    /// Network it is attached to (empty: the default network).
    pub network: String,
    /// Cluster it runs in (label `topology.istio.io/cluster`; empty: the
    /// cluster of the control plane that serves it).
    pub cluster: String,
    /// Failure domain it runs in.
    pub locality: Locality,
    /// Relative load-balancing weight (default 1).
    pub weight: u32,
    /// The weft node it runs on (label `weft.dev/node`), if any.
    pub node: Option<String>,
    /// Command `weft up` runs for it (annotation `weft.dev/run`).
    pub run: Option<String>,
    /// Whether it only makes calls (annotation `weft.dev/client-only`).
    pub client_only: bool,
    /// Explicit outbound listeners (annotation `weft.dev/outbound`).
    pub outbound: Vec<OutboundListener>,
    /// Whether it accepts plaintext: the `PeerAuthentication` in force, or
    /// the mesh default.
    pub mtls_mode: MtlsMode,
    /// Whether it is a waypoint (label `weft.dev/waypoint: "true"`).
    pub waypoint: bool,
    /// Whether it is an ingress gateway (label `weft.dev/gateway:
    /// "true"`; the Gateway of the same name configures it).
    pub gateway: bool,
}

impl Workload {
    /// Its canonical service: the `app` label, else its name (as Istio
    /// derives it; telemetry and the service graph name callers so).
    pub fn canonical_name(&self) -> &str {
        self.labels.get("app").unwrap_or(&self.name.name)
    }

    /// Its canonical revision: the `version` label, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        self.labels.get("version").map_or("latest", String::as_str)
    }
}

/// A local port on a workload's address that leads to a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundListener {
    /// Port the node proxy listens on, at the workload's address.
    pub local_port: u16,
    /// The service hostname.
    pub host: String,
    /// The service port.
    pub port: u16,
}

impl OutboundListener {
    /// Parses `"<local-port>=<host>:<port>, …"`.
    pub fn parse_list(s: &str) -> Result<Vec<OutboundListener>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let bad = || format!("{part:?} is not <local-port>=<service-host>:<port>");
                let (local, target) = part.split_once('=').ok_or_else(bad)?;
                let (host, port) = target.trim().rsplit_once(':').ok_or_else(bad)?;
                let local_port: u16 = local.trim().parse().map_err(|_| bad())?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                if local_port == 0 || port == 0 || host.is_empty() {
                    return Err(bad());
                }
                Ok(OutboundListener {
                    local_port,
                    host: host.to_ascii_lowercase(),
                    port,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_listener_lists() {
        let got = OutboundListener::parse_list("9001=orders.shop:80, 9002=Payments.billing:8080")
            .expect("valid");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].local_port, got[1].host.as_str(), got[1].port),
            (9002, "payments.billing", 8080)
        );
        for bad in [
            "9001",
            "9001=orders",
            "x=orders:80",
            "9001=orders:x",
            "0=orders:80",
            "9001=:80",
        ] {
            assert!(OutboundListener::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::parse("http"), Some(Protocol::Http));
        assert_eq!(Protocol::parse("GRPC"), Some(Protocol::Grpc));
        assert_eq!(Protocol::parse("UDP"), None);
        for (name, p) in Protocol::ALL {
            assert_eq!(p.to_string(), name);
        }
    }

    fn workload(ports: &[(&str, u16)]) -> Workload {
        Workload {
            name: NamespacedName::new("shop", "w"),
            address: WorkloadAddress::Ip([10, 0, 0, 1].into()),
            labels: BTreeMap::new(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            identity: Identity::new("cluster.local", "shop", "default").expect("valid"),
            network: String::new(),
            cluster: String::new(),
            locality: Locality::default(),
            weight: 1,
            node: None,
            run: None,
            client_only: false,
            outbound: Vec::new(),
            mtls_mode: crate::model::MtlsMode::Strict,
            waypoint: false,
            gateway: false,
        }
    }

    #[test]
    fn target_port_precedence() {
        let svc = Service {
            name: NamespacedName::new("shop", "s"),
            hosts: vec!["s.shop".into()],
            addresses: vec![],
            ports: vec![],
            location: ServiceLocation::MeshInternal,
            resolution: Resolution::Static,
            endpoints: vec![],
            waypoint: None,
            cluster_local: false,
        };
        let port = |target| ServicePort {
            name: "http".into(),
            number: 80,
            protocol: Protocol::Http,
            target_port: target,
        };
        assert_eq!(svc.target_port(&port(None), &workload(&[])), 80);
        assert_eq!(svc.target_port(&port(Some(8080)), &workload(&[])), 8080);
        assert_eq!(
            svc.target_port(&port(Some(8080)), &workload(&[("http", 9090)])),
            9090
        );
        assert_eq!(
            svc.target_port(&port(None), &workload(&[("grpc", 9090)])),
            80
        );
    }
}
