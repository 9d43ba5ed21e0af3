//! `weft.dev/v1alpha1` `RemoteCluster`: another cluster of the mesh, with
//! its own control plane, that this one peers with. Its cluster ID is
//! `spec.clusterId`, or its name. This control plane follows the remote's exported services
//! and endpoints over an mTLS stream to `address` (both control planes
//! prove `spiffe://<trustDomain>/ns/weft-system/sa/weft-control` under the
//! shared root), and serves the remote the namespaces listed in
//! `exportedNamespaces` when it asks. Peering is mutual: each side names
//! the other. Cluster-scoped.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: RemoteCluster
//! metadata: {name: west}
//! spec:
//!   address: 10.20.0.2:15012
//!   network: net-west
//!   exportedNamespaces: [shop]
//!   staleAfter: 30s
//! ```

use serde::Deserialize;
use weft_core::duration;
use weft_core::identity::check_trust_domain;

use crate::diag::Ctx;
use crate::resource::Spec;

/// How long a remote's last known state goes unconfirmed before it is
/// reported stale, when `staleAfter` is not given.
pub const DEFAULT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// `spec` of a `RemoteCluster`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterSpec {
    /// The remote's cluster ID (`topology.istio.io/cluster`; default: the
    /// resource's name).
    pub cluster_id: Option<String>,
    /// The remote control plane's mTLS port, `host:port`.
    pub address: String,
    /// The remote's network (default: what its workloads say).
    pub network: Option<String>,
    /// The trust domain of the remote control plane's identity (default:
    /// this mesh's).
    pub trust_domain: Option<String>,
    /// The namespaces this cluster lets the remote read (`*`: all; none
    /// by default).
    #[serde(default)]
    pub exported_namespaces: Vec<String>,
    /// When its last known state is reported stale, e.g. `30s` (default
    /// `60s`).
    pub stale_after: Option<String>,
}

impl Spec for RemoteClusterSpec {
    const KIND: &'static str = "RemoteCluster";
    const NAMESPACED: bool = false;

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if let Some(id) = &self.cluster_id {
            ctx.check("spec.clusterId", weft_core::names::check_label_value(id));
        }
        if self.address.is_empty() {
            ctx.error(
                "spec.address",
                "required: the remote control plane's mTLS address, host:port (port 15012 by default)",
            );
        } else if !has_port(&self.address) {
            ctx.error(
                "spec.address",
                format!(
                    "{:?} has no port; write host:port, e.g. {}:15012",
                    self.address, self.address
                ),
            );
        }
        if let Some(n) = &self.network {
            ctx.check("spec.network", weft_core::names::check_label_value(n));
        }
        if let Some(td) = &self.trust_domain {
            ctx.check(
                "spec.trustDomain",
                check_trust_domain(td).map_err(|e| e.to_string()),
            );
        }
        for (i, ns) in self.exported_namespaces.iter().enumerate() {
            if ns != "*" {
                ctx.check(
                    &format!("spec.exportedNamespaces[{i}]"),
                    weft_core::names::check_label(ns),
                );
            }
        }
        if let Some(t) = &self.stale_after {
            match duration::parse(t) {
                Ok(d) if d.is_zero() => ctx.error("spec.staleAfter", "must be greater than zero"),
                Ok(_) => {}
                Err(e) => ctx.error("spec.staleAfter", e),
            }
        }
    }
}

/// Whether `address` ends in a port (`host:port`, `[v6]:port`).
fn has_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_need_a_port() {
        for (address, ok) in [
            ("10.0.0.1:15012", true),
            ("control.west.example:15012", true),
            ("[fd00::1]:15012", true),
            ("10.0.0.1", false),
            (":15012", false),
            ("host:0", false),
            ("host:http", false),
        ] {
            assert_eq!(super::has_port(address), ok, "{address}");
        }
    }
}
