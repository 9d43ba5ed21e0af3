//! Gateway API `TLSRoute` (`gateway.networking.k8s.io/v1alpha2`,
//! `v1alpha3`): TLS connections a Gateway's passthrough listener receives,
//! chosen by the SNI of their ClientHello and passed, still encrypted, to
//! a backend service. The gateway never holds the backend's key.
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

impl Spec for TlsRouteSpec {
    const KIND: &'static str = "TLSRoute";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.parent_refs.is_empty() {
            ctx.error("spec.parentRefs", "name the Gateway (kind: Gateway)");
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if !p.is_gateway() {
                ctx.error(
                    &format!("spec.parentRefs[{i}]"),
                    "a TLSRoute attaches to a Gateway (kind: Gateway); mesh TLS needs no route",
                );
            }
        }
        match self.rules.as_slice() {
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
                "a TLSRoute has exactly one rule (connections carry nothing else to match on)",
            ),
        }
    }
}
