//! Gateway API `GRPCRoute` (`gateway.networking.k8s.io/v1`): like
//! `HTTPRoute`, with matches on the gRPC service and method (a path of
//! `/<service>/<method>`) and headers. Parents are services (the mesh) or
//! a Gateway (ingress, where `hostnames` apply), backends are services, as
//! for `HTTPRoute`.

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::http_route::{FilterSpec, HeaderMatchSpec, RefSpec};
use crate::resource::Spec;

/// `spec` of a `GRPCRoute`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// The services (or the Gateway) the rules apply to.
    #[serde(default)]
    pub parent_refs: Vec<RefSpec>,
    /// Host names (`:authority`) the route answers at a Gateway.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in order.
    #[serde(default)]
    pub rules: Vec<GrpcRuleSpec>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRuleSpec {
    /// Conditions; any one holds.
    #[serde(default)]
    pub matches: Vec<GrpcMatchSpec>,
    /// Filters (header modifiers, mirror).
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Backends by weight.
    #[serde(default)]
    pub backend_refs: Vec<RefSpec>,
    /// Name (informational).
    pub name: Option<String>,
}

/// `matches[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GrpcMatchSpec {
    /// The gRPC method.
    pub method: Option<GrpcMethodSpec>,
    /// Headers, all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatchSpec>,
}

/// `matches[].method`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GrpcMethodSpec {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Fully qualified service, e.g. `shop.Reviews`.
    pub service: Option<String>,
    /// Method, e.g. `List`.
    pub method: Option<String>,
}

/// Filters a gRPC route may use.
pub const GRPC_FILTERS: [&str; 3] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

impl Spec for GrpcRouteSpec {
    const KIND: &'static str = "GRPCRoute";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        (
            "spec.rules.backendRefs.filters",
            "per-backend filters are not supported; use rule filters",
        ),
        (
            "spec.rules.sessionPersistence",
            "use a DestinationRule consistentHash",
        ),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        crate::kinds::http_route::check_parents(&self.parent_refs, &self.hostnames, ctx);
        for (r, rule) in self.rules.iter().enumerate() {
            let base = format!("spec.rules[{r}]");
            if rule.backend_refs.is_empty() {
                ctx.error(&format!("{base}.backendRefs"), "name at least one backend");
            }
            for (m, cond) in rule.matches.iter().enumerate() {
                if let Some(method) = &cond.method {
                    let at = format!("{base}.matches[{m}].method");
                    match method.kind.as_deref().unwrap_or("Exact") {
                        "Exact" => {}
                        "RegularExpression" => {
                            for part in [&method.service, &method.method].into_iter().flatten() {
                                if let Err(e) = regex_syntax::Parser::new().parse(part) {
                                    ctx.error(&at, format!("not a valid regular expression: {e}"));
                                }
                            }
                        }
                        other => ctx.error(
                            &format!("{at}.type"),
                            format!("{other:?}: use Exact or RegularExpression"),
                        ),
                    }
                    if method.service.is_none() && method.method.is_none() {
                        ctx.error(&at, "set service, method or both");
                    }
                }
            }
            for (f, filter) in rule.filters.iter().enumerate() {
                if !GRPC_FILTERS.contains(&filter.kind.as_str()) {
                    ctx.error(
                        &format!("{base}.filters[{f}].type"),
                        format!(
                            "{:?} is not supported on gRPC routes; use {}",
                            filter.kind,
                            GRPC_FILTERS.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// The path condition for a gRPC method match, as a regular expression
/// over `/<service>/<method>` (regex parts kept, exact parts escaped).
pub fn method_path_regex(m: &GrpcMethodSpec) -> String {
    let regex = m.kind.as_deref() == Some("RegularExpression");
    let part = |p: &Option<String>| match (p, regex) {
        (Some(v), true) => v.clone(),
        (Some(v), false) => regex_syntax::escape(v),
        (None, _) => "[^/]+".to_owned(),
    };
    format!("/{}/{}", part(&m.service), part(&m.method))
}
