//! Istio `RequestAuthentication` (`security.istio.io/v1`): which JWTs a
//! service accepts, checked by its waypoint. A request with an invalid
//! token is refused (401); a request without one passes and is left to
//! authorization. Attached to services with `targetRef(s)` (as Istio does
//! for waypoints); keys are given inline (`jwks`).

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::http_route::RefSpec;
use crate::resource::Spec;

/// `spec` of a `RequestAuthentication`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// The service.
    pub target_ref: Option<RefSpec>,
    /// Several services.
    #[serde(default)]
    pub target_refs: Vec<RefSpec>,
    /// Issuers and their keys.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// `jwtRules[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtRuleSpec {
    /// `iss`.
    pub issuer: String,
    /// Accepted `aud` values (empty: any).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JWKS, as JSON.
    pub jwks: Option<String>,
    /// Headers carrying the token.
    #[serde(default)]
    pub from_headers: Vec<FromHeaderSpec>,
    /// Query parameters carrying the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token on the forwarded request.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied to request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
}

/// `fromHeaders[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FromHeaderSpec {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    #[serde(default)]
    pub prefix: String,
}

/// `outputClaimToHeaders[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ClaimToHeaderSpec {
    /// Header to set.
    pub header: String,
    /// Claim to copy.
    pub claim: String,
}

impl Spec for RequestAuthenticationSpec {
    const KIND: &'static str = "RequestAuthentication";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        (
            "spec.selector",
            "weft checks JWTs in waypoints: attach with targetRef (kind: Service)",
        ),
        (
            "spec.jwtRules.jwksUri",
            "fetching keys is not supported yet; give them inline with jwks",
        ),
        (
            "spec.jwtRules.outputPayloadToHeader",
            "use outputClaimToHeaders",
        ),
        (
            "spec.jwtRules.timeout",
            "keys are inline; there is nothing to fetch",
        ),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.target_ref.is_none() && self.target_refs.is_empty() {
            ctx.error(
                "spec.targetRef",
                "name the service whose waypoint checks the tokens",
            );
        }
        if self.jwt_rules.is_empty() {
            ctx.error("spec.jwtRules", "add at least one issuer");
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            let base = format!("spec.jwtRules[{i}]");
            if rule.issuer.is_empty() {
                ctx.error(&format!("{base}.issuer"), "required");
            }
            match rule.jwks.as_deref() {
                None => ctx.error(
                    &format!("{base}.jwks"),
                    "required: the issuer's public keys (a JWKS)",
                ),
                Some(j) => match serde_json::from_str::<serde_json::Value>(j) {
                    Ok(v) if v["keys"].as_array().is_some_and(|k| !k.is_empty()) => {}
                    Ok(_) => ctx.error(
                        &format!("{base}.jwks"),
                        "a JWKS with at least one key in \"keys\"",
                    ),
                    Err(e) => ctx.error(&format!("{base}.jwks"), format!("not JSON: {e}")),
                },
            }
        }
    }
}
