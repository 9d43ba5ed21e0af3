//! Istio's standard metric labels, filled in one place for node proxies
//! (`reporter` `source` or `destination`), waypoints (`waypoint`) and
//! gateways (`source`, as Istio's gateways report).
//!
//! A value nobody knows is `unknown`, as in Istio.

use prometheus_client::encoding::EncodeLabelSet;

use crate::flags::Flags;

/// Who reports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's side (a node's outbound, or an ingress gateway).
    Source,
    /// The callee's side (a node's inbound).
    Destination,
    /// A waypoint, between the two.
    Waypoint,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// What is known about one end of a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Workload name.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// SPIFFE identity (`spiffe://…`), if proven.
    pub principal: String,
    /// Canonical service (the `app` label, else the workload name).
    pub canonical_service: String,
    /// Canonical revision (the `version` label, else `latest`).
    pub canonical_revision: String,
    /// Its cluster (`topology.istio.io/cluster`).
    pub cluster: String,
}

/// The label value for what is not known.
pub const UNKNOWN: &str = "unknown";

impl Default for Peer {
    fn default() -> Self {
        Peer::unknown()
    }
}

impl Peer {
    /// Nothing known.
    pub fn unknown() -> Peer {
        Peer {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }

    /// Nothing known, shared: made once, cloned by reference.
    pub fn shared_unknown() -> &'static std::sync::Arc<Peer> {
        static UNKNOWN_PEER: std::sync::LazyLock<std::sync::Arc<Peer>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(Peer::unknown()));
        &UNKNOWN_PEER
    }

    /// Only the identity is known (`spiffe://td/ns/<ns>/sa/<sa>`): its
    /// namespace, and nothing more.
    pub fn from_principal(principal: &str) -> Peer {
        let namespace = principal
            .split("/ns/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or(UNKNOWN);
        Peer {
            namespace: namespace.to_owned(),
            principal: principal.to_owned(),
            ..Peer::unknown()
        }
    }
}

/// The `baggage` header describing `peer` on a tunnel (the keys ztunnel
/// sends: `k8s.cluster.name`, `k8s.namespace.name`, `k8s.pod.name`,
/// `service.name`, `service.version`), so the proxy at the other end can
/// name its caller.
pub fn baggage(peer: &Peer) -> String {
    format!(
        "k8s.cluster.name={},k8s.namespace.name={},k8s.pod.name={},service.name={},service.version={}",
        peer.cluster,
        peer.namespace,
        peer.workload,
        peer.canonical_service,
        peer.canonical_revision
    )
}

/// The caller a tunnel's `baggage` describes, with `principal`, the
/// identity the tunnel proved (its namespace stands in when the baggage
/// names none). Missing keys are `unknown`.
pub fn peer_from_baggage(baggage: &str, principal: &str) -> Peer {
    let get = |key: &str| {
        baggage
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let proven = Peer::from_principal(principal);
    Peer {
        workload: get("k8s.pod.name").unwrap_or(proven.workload),
        namespace: get("k8s.namespace.name").unwrap_or(proven.namespace),
        principal: proven.principal,
        canonical_service: get("service.name").unwrap_or(proven.canonical_service),
        canonical_revision: get("service.version").unwrap_or(proven.canonical_revision),
        cluster: get("k8s.cluster.name").unwrap_or(proven.cluster),
    }
}

/// The service a call is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// Its hostname (`destination_service`).
    pub host: String,
    /// Its name (`destination_service_name`).
    pub name: String,
    /// Its namespace (`destination_service_namespace`).
    pub namespace: String,
}

impl Service {
    /// Not known (a connection to a workload address, say).
    pub fn unknown() -> Service {
        Service {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }

    /// Not known, shared: made once, cloned by reference.
    pub fn shared_unknown() -> &'static std::sync::Arc<Service> {
        static UNKNOWN_SERVICE: std::sync::LazyLock<std::sync::Arc<Service>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(Service::unknown()));
        &UNKNOWN_SERVICE
    }

    /// From a hostname `name.namespace.svc…`, or any other hostname
    /// (name = the first label, namespace unknown unless given).
    pub fn from_host(host: &str, namespace: Option<&str>) -> Service {
        let mut parts = host.split('.');
        let name = parts.next().unwrap_or(UNKNOWN).to_owned();
        let namespace = namespace
            .map(str::to_owned)
            .or_else(|| parts.next().map(str::to_owned))
            .unwrap_or_else(|| UNKNOWN.into());
        Service {
            host: host.to_owned(),
            name,
            namespace,
        }
    }
}

/// Who called whom, for which service: the labels every Istio family
/// shares, in Istio's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Parties {
    /// `source`, `destination` or `waypoint`.
    pub reporter: &'static str,
    /// Caller workload.
    pub source_workload: String,
    /// Caller namespace.
    pub source_workload_namespace: String,
    /// Caller identity.
    pub source_principal: String,
    /// Caller canonical service.
    pub source_canonical_service: String,
    /// Caller canonical revision.
    pub source_canonical_revision: String,
    /// Caller cluster.
    pub source_cluster: String,
    /// Callee workload.
    pub destination_workload: String,
    /// Callee namespace.
    pub destination_workload_namespace: String,
    /// Callee identity.
    pub destination_principal: String,
    /// Callee canonical service.
    pub destination_canonical_service: String,
    /// Callee canonical revision.
    pub destination_canonical_revision: String,
    /// Callee cluster.
    pub destination_cluster: String,
    /// Service hostname.
    pub destination_service: String,
    /// Service name.
    pub destination_service_name: String,
    /// Service namespace.
    pub destination_service_namespace: String,
}

impl Parties {
    /// The parties of a call `reporter` saw from `source` to `destination`
    /// for `service`.
    pub fn new(reporter: Reporter, source: &Peer, destination: &Peer, service: &Service) -> Self {
        Parties {
            reporter: reporter.as_str(),
            source_workload: source.workload.clone(),
            source_workload_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            source_cluster: source.cluster.clone(),
            destination_workload: destination.workload.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_cluster: destination.cluster.clone(),
            destination_service: service.host.clone(),
            destination_service_name: service.name.clone(),
            destination_service_namespace: service.namespace.clone(),
        }
    }
}

/// Labels of the `istio_tcp_*` families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Who called whom.
    #[prometheus(flatten)]
    pub parties: Parties,
    /// `tcp`.
    pub request_protocol: &'static str,
    /// `-` or Envoy-style flags (`DENY`, `UF`, …).
    pub response_flags: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
}

/// The `connection_security_policy` label: `mutual_tls` or `none`.
pub fn security(mtls: bool) -> &'static str {
    if mtls { "mutual_tls" } else { "none" }
}

/// The labels of one TCP connection.
pub fn tcp(
    reporter: Reporter,
    source: &Peer,
    destination: &Peer,
    service: &Service,
    flags: Flags,
    mtls: bool,
) -> TcpLabels {
    TcpLabels {
        parties: Parties::new(reporter, source, destination, service),
        request_protocol: "tcp",
        response_flags: flags.as_str(),
        connection_security_policy: security(mtls),
    }
}

/// Labels of `istio_requests_total`, `istio_request_duration_milliseconds`,
/// `istio_request_bytes`, `istio_response_bytes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Who called whom.
    #[prometheus(flatten)]
    pub parties: Parties,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// HTTP status.
    pub response_code: u16,
    /// `-` or Envoy-style flags.
    pub response_flags: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
}

/// The labels of one request.
#[allow(clippy::too_many_arguments)]
pub fn request(
    reporter: Reporter,
    source: &Peer,
    destination: &Peer,
    service: &Service,
    protocol: &'static str,
    code: u16,
    flags: Flags,
    mtls: bool,
) -> RequestLabels {
    RequestLabels {
        parties: Parties::new(reporter, source, destination, service),
        request_protocol: protocol,
        response_code: code,
        response_flags: flags.as_str(),
        connection_security_policy: security(mtls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_services_from_names() {
        let p = Peer::from_principal("spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(
            (p.namespace.as_str(), p.workload.as_str()),
            ("shop", UNKNOWN)
        );
        assert_eq!(Peer::from_principal("garbage").namespace, UNKNOWN);
        let caller = Peer {
            workload: "fe-1".into(),
            canonical_service: "fe".into(),
            canonical_revision: "v1".into(),
            cluster: "east".into(),
            ..p.clone()
        };
        assert_eq!(
            peer_from_baggage(&baggage(&caller), &caller.principal),
            caller
        );
        let bare = peer_from_baggage("", "spiffe://cluster.local/ns/shop/sa/x");
        assert_eq!(
            (bare.namespace.as_str(), bare.workload.as_str()),
            ("shop", UNKNOWN)
        );
        let s = Service::from_host("payments.billing.svc.cluster.local", None);
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("payments", "billing")
        );
        let s = Service::from_host("api", Some("shop"));
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("api", "shop"));
        let l = request(
            Reporter::Waypoint,
            &p,
            &Peer::unknown(),
            &s,
            "http",
            200,
            crate::flags::Flags::NONE,
            true,
        );
        assert_eq!(
            (
                l.parties.reporter,
                l.connection_security_policy,
                l.parties.source_workload_namespace.as_str()
            ),
            ("waypoint", "mutual_tls", "shop")
        );
    }
}
