//! Gateway API `TLSRoute` (`gateway.networking.k8s.io/v1alpha2`,
//! `v1alpha3`): TLS connections a Gateway's passthrough listener receives,
//! chosen by the SNI of their ClientHello and passed, still encrypted, to
//! a backend service. The gateway never holds the backend's key. And
//! `TCPRoute` (`v1alpha2`): every connection of a `protocol: TCP`
//! listener, passed as it is.
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1alpha2
//! kind: TLSRoute
//! metadata: {name: vault, namespace: shop}
//! spec:
//!   parentRefs: [{kind: Gateway, name: edge, sectionName: tls-passthrough}]
//!   hostnames: [vault.example.com]
//!   rules: [{backendRefs: [{name: vault, port: 8200}]}]
//! ```

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::http_route::RefSpec;
use crate::resource::Spec;

/// `spec` of a `TLSRoute`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteSpec {
    /// The Gateway(s), optionally one listener by `sectionName`.
    #[serde(default)]
    pub parent_refs: Vec<RefSpec>,
    /// SNI host names (`*.` wildcard); omitted: any.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// One rule: its backends.
    #[serde(default)]
    pub rules: Vec<TlsRuleSpec>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRuleSpec {
    /// Backends by weight, each with its port.
    #[serde(default)]
    pub backend_refs: Vec<RefSpec>,
    /// Name (informational).
    pub name: Option<String>,
}

/// `spec` of a `TCPRoute` (`gateway.networking.k8s.io/v1alpha2`): as a
/// TLSRoute without host names — every connection a Gateway's `protocol:
/// TCP` listener accepts goes to its backends.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// The Gateway(s), optionally one listener by `sectionName`.
    #[serde(default)]
    pub parent_refs: Vec<RefSpec>,
    /// One rule: its backends.
    #[serde(default)]
    pub rules: Vec<TlsRuleSpec>,
}

impl Spec for TlsRouteSpec {
    const KIND: &'static str = "TLSRoute";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        check(&self.parent_refs, &self.rules, ctx);
    }
}

impl Spec for TcpRouteSpec {
    const KIND: &'static str = "TCPRoute";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        check(&self.parent_refs, &self.rules, ctx);
    }
}

/// What TLSRoutes and TCPRoutes must have: Gateway parents, one rule,
/// backends with ports.
fn check(parent_refs: &[RefSpec], rules: &[TlsRuleSpec], ctx: &mut Ctx<'_>) {
    if parent_refs.is_empty() {
        ctx.error("spec.parentRefs", "name the Gateway (kind: Gateway)");
    }
    for (i, p) in parent_refs.iter().enumerate() {
        if !p.is_gateway() {
            ctx.error(
                &format!("spec.parentRefs[{i}]"),
                "a TLSRoute or TCPRoute attaches to a Gateway (kind: Gateway); mesh traffic needs no route",
            );
        }
    }
    match rules {
        [rule] => {
            if rule.backend_refs.is_empty() {
                ctx.error("spec.rules[0].backendRefs", "name at least one backend");
            }
            for (b, backend) in rule.backend_refs.iter().enumerate() {
                if backend.port.is_none() {
                    ctx.error(
                        &format!("spec.rules[0].backendRefs[{b}].port"),
                        "name the backend's port",
                    );
                }
            }
        }
        _ => ctx.error(
            "spec.rules",
            "exactly one rule (connections carry nothing else to match on)",
        ),
    }
}
