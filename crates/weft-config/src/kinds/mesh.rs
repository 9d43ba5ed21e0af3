//! `weft.dev/v1alpha1` `Mesh`: mesh-wide settings — trust domain, default
//! mutual-TLS mode, what to do with traffic to unknown destinations, and
//! the connect timeout. At most one per configuration; cluster-scoped.

use serde::Deserialize;
use weft_core::duration;
use weft_core::identity::check_trust_domain;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `Mesh`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// SPIFFE trust domain (default `cluster.local`).
    pub trust_domain: Option<String>,
    /// Default mutual-TLS settings for inbound traffic.
    pub mtls: Option<MtlsSpec>,
    /// Handling of outbound traffic to destinations not in the registry.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    /// TCP connect timeout to endpoints, e.g. `5s` (default `10s`).
    pub connect_timeout: Option<String>,
}

/// `spec.mtls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MtlsSpec {
    /// `STRICT` (default) or `PERMISSIVE`.
    pub mode: Option<MtlsModeSpec>,
}

/// `spec.mtls.mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum MtlsModeSpec {
    /// Only mutual TLS.
    #[serde(rename = "STRICT")]
    Strict,
    /// Mutual TLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

/// `spec.outboundTrafficPolicy` (the shape of Istio's MeshConfig field).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OutboundTrafficPolicySpec {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    pub mode: Option<OutboundModeSpec>,
}

/// `spec.outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OutboundModeSpec {
    /// Unknown destinations pass through.
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// Unknown destinations are refused.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

impl Spec for MeshSpec {
    const KIND: &'static str = "Mesh";
    const NAMESPACED: bool = false;

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if let Some(td) = &self.trust_domain {
            ctx.check(
                "spec.trustDomain",
                check_trust_domain(td).map_err(|e| e.to_string()),
            );
        }
        if let Some(timeout) = &self.connect_timeout {
            match duration::parse(timeout) {
                Ok(d) if d.is_zero() => {
                    ctx.error("spec.connectTimeout", "must be greater than zero")
                }
                Ok(_) => {}
                Err(e) => ctx.error("spec.connectTimeout", e),
            }
        }
    }
}
