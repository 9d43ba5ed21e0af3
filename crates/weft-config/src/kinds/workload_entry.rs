//! Istio `WorkloadEntry` (`networking.istio.io/v1`): one workload outside
//! Kubernetes — an address, labels that services select on, a service
//! account (hence an identity), a locality and a network. The same shape is
//! used for the inline `endpoints` of a `ServiceEntry`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use weft_core::model::{Locality, NODE_LABEL, WAYPOINT_FOR_LABEL};
use weft_core::names;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `WorkloadEntry`, with the upstream field names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// IP address or DNS name of the workload.
    pub address: Option<String>,
    /// Port name → port number on this workload.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels that services select on. `weft.dev/node` places it on a node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is attached to.
    pub network: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    /// Load-balancing weight; 0 or absent means 1.
    pub weight: Option<u32>,
    /// Service account, hence the workload's identity (default `default`).
    pub service_account: Option<String>,
}

/// Service account used when a workload names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

impl Spec for WorkloadEntrySpec {
    const KIND: &'static str = "WorkloadEntry";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        self.validate_at(ctx, "spec", true);
    }
}

impl WorkloadEntrySpec {
    /// Checks the fields under `prefix` (`spec`, or `spec.endpoints[i]`).
    /// `needs_address` is false for DNS services whose endpoints may be
    /// given by hostname only.
    pub(crate) fn validate_at(&self, ctx: &mut Ctx<'_>, prefix: &str, needs_address: bool) {
        match &self.address {
            Some(address) => ctx.check(&format!("{prefix}.address"), check_address(address)),
            None if needs_address => ctx.error(&format!("{prefix}.address"), "is required"),
            None => {}
        }
        for (name, port) in &self.ports {
            let field = format!("{prefix}.ports.{name}");
            ctx.check(
                &field,
                names::check_label(name).map_err(|e| format!("port name {e}")),
            );
            ctx.check(&field, check_port(*port));
        }
        if let Some(node) = self.labels.get(NODE_LABEL) {
            ctx.check(
                &format!("{prefix}.labels.{NODE_LABEL}"),
                names::check_subdomain(node).map_err(|e| format!("node name {node:?} {e}")),
            );
        }
        if let Some(v) = self.labels.get(WAYPOINT_FOR_LABEL) {
            ctx.check(
                &format!("{prefix}.labels.{WAYPOINT_FOR_LABEL}"),
                match v.as_str() {
                    "service" | "workload" | "all" | "none" => Ok(()),
                    other => Err(format!(
                        "{other:?} is not one of service, workload, all, none"
                    )),
                },
            );
        }
        if let Some(locality) = &self.locality {
            ctx.check(
                &format!("{prefix}.locality"),
                Locality::parse(locality).map(|_| ()),
            );
        }
        if let Some(sa) = &self.service_account {
            ctx.check(
                &format!("{prefix}.serviceAccount"),
                names::check_subdomain(sa).map_err(|e| format!("service account {sa:?} {e}")),
            );
        }
    }

    /// The address as an IP, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.as_deref().and_then(|a| a.parse().ok())
    }
}

/// A port number in 1–65535 (decoded wider so the error can say so).
pub(crate) fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("{port} is not a valid port (1-65535)"))
    }
}

/// Whether `address` is written like an IPv4 address (digits and dots,
/// last label numeric) — a host name never ends in an all-digit label.
fn looks_like_ipv4(address: &str) -> bool {
    let last = address
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or("");
    address.contains('.')
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && address.parse::<IpAddr>().is_err()
}

/// An IP address or a DNS name; Unix sockets are not supported.
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if address.starts_with("unix://") {
        return Err("Unix domain socket addresses are not supported by weft".into());
    }
    if looks_like_ipv4(address) {
        return Err(format!(
            "{address:?} is not an IPv4 address (four parts, each 0-255) and, ending in a number, cannot be a host name"
        ));
    }
    if address.contains('/') {
        return Err(format!(
            "{address:?} is a CIDR or path; a workload address is one IP or hostname"
        ));
    }
    names::check_hostname(address)
        .map_err(|e| format!("{address:?} is neither an IP address nor a hostname: {e}"))
}
