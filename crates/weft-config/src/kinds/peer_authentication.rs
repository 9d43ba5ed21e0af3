//! Istio `PeerAuthentication` (`security.istio.io/v1`): whether a
//! workload accepts plaintext next to mutual TLS. `STRICT` accepts only
//! mutual TLS; `PERMISSIVE` also accepts plaintext (captured mode, port
//! 15006); `UNSET` inherits. The most specific policy wins: one with a
//! selector in the workload's namespace, then the namespace-wide one, then
//! a namespace-wide one in the root namespace (`weft-system` or
//! `istio-system`), then the `Mesh` default.

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::authorization_policy::Selector;
use crate::resource::Spec;

/// Namespaces whose namespace-wide policy applies to the whole mesh.
pub const ROOT_NAMESPACES: [&str; 2] = ["weft-system", "istio-system"];

/// `spec` of a `PeerAuthentication`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Which workloads of the namespace it applies to (all when absent).
    pub selector: Option<Selector>,
    /// The mode.
    pub mtls: Option<PeerMtlsSpec>,
}

/// `spec.mtls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PeerMtlsSpec {
    /// `UNSET` (inherit), `STRICT`, `PERMISSIVE` or `DISABLE`.
    pub mode: Option<PeerModeSpec>,
}

/// `spec.mtls.mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum PeerModeSpec {
    /// Inherit from the parent scope.
    #[serde(rename = "UNSET")]
    Unset,
    /// Only mutual TLS.
    #[serde(rename = "STRICT")]
    Strict,
    /// Mutual TLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// Plaintext only (not supported).
    #[serde(rename = "DISABLE")]
    Disable,
}

impl Spec for PeerAuthenticationSpec {
    const KIND: &'static str = "PeerAuthentication";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[(
        "spec.portLevelMtls",
        "per-port modes are not supported; set one mode for the workload",
    )];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.mtls.as_ref().and_then(|m| m.mode) == Some(PeerModeSpec::Disable) {
            ctx.error(
                "spec.mtls.mode",
                "DISABLE is not supported: weft always offers mutual TLS; use PERMISSIVE to also accept plaintext",
            );
        }
        if let Some(selector) = &self.selector
            && selector.match_labels.is_empty()
        {
            ctx.error(
                "spec.selector.matchLabels",
                "an empty selector selects nothing; omit selector to apply to the whole namespace",
            );
        }
    }
}
