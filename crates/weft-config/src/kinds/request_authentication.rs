//! Istio `RequestAuthentication` (`security.istio.io/v1`): which JWTs a
//! service accepts, checked by its waypoint. A request with an invalid
//! token is refused (401); a request without one passes and is left to
//! authorization. Attached to services or Gateways with `targetRef(s)` (as
//! Istio does for waypoints), or with a `selector` that picks gateway or
//! waypoint workloads (on other workloads a selector has no effect, as in
//! Istio ambient: a warning says so); keys are given inline (`jwks`) or
//! fetched by the proxy from `jwksUri` (HTTPS), cached and refreshed.

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
    /// Workloads of the namespace (Istio's sidecar-era attachment): a
    /// gateway or waypoint it picks checks the tokens; on other workloads
    /// it has no effect (node proxies do not read requests), as in Istio
    /// ambient, and a warning says so.
    pub selector: Option<crate::kinds::authorization_policy::Selector>,
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
    /// Where to fetch the JWKS (`https://…`).
    pub jwks_uri: Option<String>,
    /// How long one fetch may take (default `5s`).
    pub timeout: Option<String>,
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
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[(
        "spec.jwtRules.outputPayloadToHeader",
        "use outputClaimToHeaders",
    )];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        let targeted = self.target_ref.is_some() || !self.target_refs.is_empty();
        match (targeted, &self.selector) {
            (false, None) => ctx.error(
                "spec.targetRef",
                "name the service whose waypoint checks the tokens (or the Gateway)",
            ),
            (true, Some(_)) => ctx.error("spec.selector", "use selector or targetRef, not both"),
            (false, Some(s)) if s.match_labels.is_empty() => ctx.error(
                "spec.selector.matchLabels",
                "an empty selector selects nothing; name labels, or attach with targetRef",
            ),
            _ => {}
        }
        if self.jwt_rules.is_empty() {
            ctx.error("spec.jwtRules", "add at least one issuer");
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            let base = format!("spec.jwtRules[{i}]");
            if rule.issuer.is_empty() {
                ctx.error(&format!("{base}.issuer"), "required");
            }
            match (rule.jwks.as_deref(), rule.jwks_uri.as_deref()) {
                (None, None) => ctx.error(
                    &format!("{base}.jwks"),
                    "required: the issuer's public keys, inline (jwks) or by address (jwksUri)",
                ),
                (Some(_), Some(_)) => ctx.error(
                    &format!("{base}.jwksUri"),
                    "give the keys inline (jwks) or by address (jwksUri), not both",
                ),
                (None, Some(uri)) => {
                    if let Err(e) = check_jwks_uri(uri) {
                        ctx.error(&format!("{base}.jwksUri"), e);
                    }
                }
                (Some(j), None) => match serde_json::from_str::<serde_json::Value>(j) {
                    Ok(v) if v["keys"].as_array().is_some_and(|k| !k.is_empty()) => {}
                    Ok(_) => ctx.error(
                        &format!("{base}.jwks"),
                        "a JWKS with at least one key in \"keys\"",
                    ),
                    Err(e) => ctx.error(&format!("{base}.jwks"), format!("not JSON: {e}")),
                },
            }
            if let Some(t) = &rule.timeout {
                match weft_core::duration::parse(t) {
                    Ok(d) if d.is_zero() => {
                        ctx.error(&format!("{base}.timeout"), "must be greater than zero")
                    }
                    Ok(_) => {}
                    Err(e) => ctx.error(&format!("{base}.timeout"), e),
                }
            }
        }
    }
}

/// A JWKS address must be an absolute `https://` (or `http://`) URL with
/// a host.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
    match parsed.scheme_str() {
        Some("https" | "http") if parsed.host().is_some() => Ok(()),
        _ => Err(format!(
            "{uri:?} must be an absolute https:// URL with a host"
        )),
    }
}
