//! Istio `ServiceEntry` (`networking.istio.io/v1`): a service — hostnames,
//! virtual addresses, ports — and where its endpoints come from (inline
//! `endpoints`, or `WorkloadEntry`s picked by `workloadSelector`).

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use serde::Deserialize;
use weft_core::model::Protocol;
use weft_core::names;

use super::workload_entry::{WorkloadEntrySpec, check_port};
use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `ServiceEntry`, with the upstream field names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Hostnames of the service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports the service exposes.
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// Inside or outside the mesh (default `MESH_EXTERNAL`, as in Istio).
    pub location: Option<LocationSpec>,
    /// How endpoints are resolved (default `NONE`, as in Istio).
    pub resolution: Option<ResolutionSpec>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects `WorkloadEntry`s in the same namespace as endpoints.
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility; weft only accepts `"*"` (visible everywhere).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One port of a `ServiceEntry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// Port number clients use.
    pub number: u32,
    /// `HTTP`, `HTTP2`, `HTTPS`, `GRPC`, `TCP` or `TLS` (default `TCP`).
    pub protocol: Option<String>,
    /// Port name, unique within the service.
    pub name: Option<String>,
    /// Port on the endpoints, when it differs from `number`.
    pub target_port: Option<u32>,
}

/// `spec.location`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum LocationSpec {
    /// Endpoints are outside the mesh.
    #[serde(rename = "MESH_EXTERNAL")]
    MeshExternal,
    /// Endpoints are inside the mesh.
    #[serde(rename = "MESH_INTERNAL")]
    MeshInternal,
}

/// `spec.resolution`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ResolutionSpec {
    /// Forward to the original destination address.
    #[serde(rename = "NONE")]
    None,
    /// Endpoints are IP addresses.
    #[serde(rename = "STATIC")]
    Static,
    /// Endpoint hostnames are resolved by DNS.
    #[serde(rename = "DNS")]
    Dns,
    /// Resolved by DNS; one address per connection.
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
}

impl ResolutionSpec {
    /// The name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            ResolutionSpec::None => "NONE",
            ResolutionSpec::Static => "STATIC",
            ResolutionSpec::Dns => "DNS",
            ResolutionSpec::DnsRoundRobin => "DNS_ROUND_ROBIN",
        }
    }

    /// Whether endpoints may be host names (resolved by DNS).
    pub fn resolves_names(self) -> bool {
        matches!(self, ResolutionSpec::Dns | ResolutionSpec::DnsRoundRobin)
    }
}

/// `spec.workloadSelector`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct WorkloadSelector {
    /// Every label must match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl ServiceEntrySpec {
    /// `location`, with Istio's default.
    pub fn location(&self) -> LocationSpec {
        self.location.unwrap_or(LocationSpec::MeshExternal)
    }

    /// `resolution`, with Istio's default.
    pub fn resolution(&self) -> ResolutionSpec {
        self.resolution.unwrap_or(ResolutionSpec::None)
    }

    /// The parsed virtual addresses (invalid ones are skipped; validation
    /// reports them).
    pub fn networks(&self) -> Vec<IpNet> {
        self.addresses.iter().filter_map(|a| parse_net(a)).collect()
    }
}

/// Parses an IP address (as a host network) or a CIDR.
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

impl Spec for ServiceEntrySpec {
    const KIND: &'static str = "ServiceEntry";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[(
        "spec.subjectAltNames",
        "TLS origination to external services is not implemented; remove subjectAltNames",
    )];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.hosts.is_empty() {
            ctx.error("spec.hosts", "at least one host is required");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let field = format!("spec.hosts[{i}]");
            if host.contains('*') {
                ctx.error(
                    &field,
                    format!("wildcard host {host:?} is not supported by weft; list each host"),
                );
            } else {
                ctx.check(
                    &field,
                    names::check_hostname(host).map_err(|e| format!("{host:?} {e}")),
                );
            }
        }
        for (i, address) in self.addresses.iter().enumerate() {
            if parse_net(address).is_none() {
                ctx.error(
                    &format!("spec.addresses[{i}]"),
                    format!("{address:?} is not an IP address or CIDR (e.g. 10.96.0.10 or 240.240.0.0/16)"),
                );
            }
        }
        self.validate_ports(ctx);
        for (i, scope) in self.export_to.iter().enumerate() {
            if scope != "*" {
                ctx.error(
                    &format!("spec.exportTo[{i}]"),
                    format!("{scope:?}: weft does not scope visibility; only \"*\" is accepted (or omit exportTo)"),
                );
            }
        }
        self.validate_endpoints(ctx);
    }
}

impl ServiceEntrySpec {
    fn validate_ports(&self, ctx: &mut Ctx<'_>) {
        if self.ports.is_empty() {
            ctx.error("spec.ports", "at least one port is required");
        }
        let mut numbers = HashSet::new();
        let mut port_names = HashSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            ctx.check(&format!("{field}.number"), check_port(port.number));
            if !numbers.insert(port.number) {
                ctx.error(
                    &format!("{field}.number"),
                    format!("port {} is listed twice", port.number),
                );
            }
            match &port.name {
                None => ctx.error(&format!("{field}.name"), "is required"),
                Some(name) => {
                    ctx.check(
                        &format!("{field}.name"),
                        names::check_label(name).map_err(|e| format!("{name:?} {e}")),
                    );
                    if !port_names.insert(name.as_str()) {
                        ctx.error(
                            &format!("{field}.name"),
                            format!("port name {name:?} is used twice"),
                        );
                    }
                }
            }
            if let Some(target) = port.target_port {
                ctx.check(&format!("{field}.targetPort"), check_port(target));
            }
            if let Some(protocol) = &port.protocol
                && Protocol::parse(protocol).is_none()
            {
                let known: Vec<&str> = Protocol::ALL.iter().map(|(n, _)| *n).collect();
                ctx.error(
                    &format!("{field}.protocol"),
                    format!(
                        "protocol {protocol:?} is not supported by weft; use one of {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    fn validate_endpoints(&self, ctx: &mut Ctx<'_>) {
        let resolution = self.resolution();
        if let Some(selector) = &self.workload_selector {
            if !self.endpoints.is_empty() {
                ctx.error(
                    "spec.workloadSelector",
                    "endpoints and workloadSelector cannot both be set",
                );
            }
            if selector.labels.is_empty() {
                ctx.error(
                    "spec.workloadSelector.labels",
                    "at least one label is required",
                );
            }
            if self.location() == LocationSpec::MeshExternal {
                ctx.error(
                    "spec.workloadSelector",
                    "workloadSelector selects mesh workloads; set location: MESH_INTERNAL",
                );
            }
        }
        match resolution {
            ResolutionSpec::None if !self.endpoints.is_empty() => {
                ctx.error("spec.endpoints", "resolution NONE forwards to the original destination; remove endpoints or set resolution STATIC or DNS");
            }
            ResolutionSpec::DnsRoundRobin if self.endpoints.len() > 1 => {
                ctx.error(
                    "spec.endpoints",
                    "resolution DNS_ROUND_ROBIN allows at most one endpoint",
                );
            }
            _ => {}
        }
        let dns = matches!(
            resolution,
            ResolutionSpec::Dns | ResolutionSpec::DnsRoundRobin
        );
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let prefix = format!("spec.endpoints[{i}]");
            endpoint.validate_at(ctx, &prefix, true);
            if resolution == ResolutionSpec::Static
                && endpoint.address.is_some()
                && endpoint.ip().is_none()
            {
                ctx.error(
                    &format!("{prefix}.address"),
                    "resolution STATIC needs an IP address; use resolution DNS for hostnames",
                );
            }
            if !dns {
                for name in endpoint.ports.keys() {
                    if !self.ports.iter().any(|p| p.name.as_deref() == Some(name)) {
                        ctx.error(
                            &format!("{prefix}.ports.{name}"),
                            "names no port of this ServiceEntry",
                        );
                    }
                }
            }
        }
    }
}
