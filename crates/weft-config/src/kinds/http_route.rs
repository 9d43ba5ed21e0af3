//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) for the mesh
//! (GAMMA): a route whose parent is a service applies to that service's
//! traffic, in its waypoint. Matches on path, headers and method; filters
//! for header changes, redirects, rewrites and mirroring; weighted
//! backends; request and backend-request timeouts; retries (GEP-1731).
//! Parents and backends are services by name: `kind: Service` names the
//! ServiceEntry of that name in the namespace, `kind: ServiceEntry`
//! (group `networking.istio.io`) likewise, as Istio allows.

use serde::Deserialize;
use weft_core::duration;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of an `HTTPRoute`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The services the rules apply to.
    #[serde(default)]
    pub parent_refs: Vec<RefSpec>,
    /// Rules, first match wins (in order).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Host names the route answers at a Gateway (`*.` wildcards).
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// A `parentRef` or `backendRef`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RefSpec {
    /// `""` (core) or `networking.istio.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default) or `ServiceEntry`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name, in the route's namespace unless `namespace` says otherwise.
    pub name: String,
    /// Namespace.
    pub namespace: Option<String>,
    /// Port.
    pub port: Option<u32>,
    /// Weight (backends).
    pub weight: Option<u32>,
    /// A Gateway listener's name (parents).
    #[serde(rename = "sectionName")]
    pub section_name: Option<String>,
}

impl RefSpec {
    /// Whether it names a Gateway API `Gateway`.
    pub fn is_gateway(&self) -> bool {
        self.kind.as_deref() == Some("Gateway")
            && matches!(
                self.group.as_deref(),
                None | Some("gateway.networking.k8s.io")
            )
    }
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// Conditions; any one holds. None: everything.
    #[serde(default)]
    pub matches: Vec<MatchSpec>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Backends by weight.
    #[serde(default)]
    pub backend_refs: Vec<RefSpec>,
    /// Timeouts.
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries.
    pub retry: Option<RetrySpec>,
    /// Name (informational).
    pub name: Option<String>,
}

/// `matches[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MatchSpec {
    /// Path.
    pub path: Option<PathSpec>,
    /// Headers, all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatchSpec>,
    /// Method.
    pub method: Option<String>,
    /// Query parameters, all must hold.
    #[serde(default, rename = "queryParams")]
    pub query_params: Vec<HeaderMatchSpec>,
}

/// `matches[].path`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PathSpec {
    /// `PathPrefix` (default), `Exact`, `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The value (default `/`).
    pub value: Option<String>,
}

/// `matches[].headers[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderMatchSpec {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Header name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `filters[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FilterSpec {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: String,
    /// Request header changes.
    pub request_header_modifier: Option<HeaderModifierSpec>,
    /// Response header changes.
    pub response_header_modifier: Option<HeaderModifierSpec>,
    /// Redirect.
    pub request_redirect: Option<RedirectSpec>,
    /// Rewrite.
    pub url_rewrite: Option<RewriteSpec>,
    /// Mirror.
    pub request_mirror: Option<MirrorSpec>,
}

/// `requestHeaderModifier` / `responseHeaderModifier`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderModifierSpec {
    /// Replace.
    #[serde(default)]
    pub set: Vec<HeaderSpec>,
    /// Append.
    #[serde(default)]
    pub add: Vec<HeaderSpec>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `{name, value}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderSpec {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `requestRedirect`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifierSpec>,
    /// New port.
    pub port: Option<u32>,
    /// 301 or 302 (default 302).
    pub status_code: Option<u32>,
}

/// `urlRewrite`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RewriteSpec {
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifierSpec>,
}

/// A path modifier.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathModifierSpec {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `ReplaceFullPath`.
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    pub replace_prefix_match: Option<String>,
}

/// `requestMirror`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    /// Where copies go.
    pub backend_ref: RefSpec,
    /// Share copied (default 100).
    pub percent: Option<u32>,
}

/// `timeouts`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// The whole request.
    pub request: Option<String>,
    /// Each try.
    pub backend_request: Option<String>,
}

/// `retry` (GEP-1731).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RetrySpec {
    /// Retries after the first try.
    pub attempts: Option<u32>,
    /// Statuses retried (besides connection failures).
    #[serde(default)]
    pub codes: Vec<u32>,
    /// Accepted; weft's backoff is exponential with jitter from 25 ms.
    pub backoff: Option<String>,
}

/// Filter types weft applies.
pub const FILTERS: [&str; 5] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
];

/// Whether a reference names a service (`Service`, or Istio's
/// `ServiceEntry`).
fn is_service(r: &RefSpec) -> bool {
    matches!(
        (
            r.group.as_deref().unwrap_or(""),
            r.kind.as_deref().unwrap_or("Service")
        ),
        ("", "Service") | ("networking.istio.io", "ServiceEntry")
    )
}

/// Checks a route's parents (services, or a Gateway) and hostnames (only
/// with a Gateway parent): shared by `HTTPRoute` and `GRPCRoute`.
pub(crate) fn check_parents(parent_refs: &[RefSpec], hostnames: &[String], ctx: &mut Ctx<'_>) {
    if parent_refs.is_empty() {
        ctx.error(
            "spec.parentRefs",
            "name the service this route applies to (kind: Service), or a Gateway",
        );
    }
    for (i, p) in parent_refs.iter().enumerate() {
        if !is_service(p) && !p.is_gateway() {
            ctx.error(
                &format!("spec.parentRefs[{i}]"),
                "parents are services (kind: Service, or ServiceEntry of networking.istio.io) or a Gateway (kind: Gateway)",
            );
        }
        if p.section_name.is_some() && !p.is_gateway() {
            ctx.error(
                &format!("spec.parentRefs[{i}].sectionName"),
                "sectionName names a Gateway listener",
            );
        }
    }
    if !hostnames.is_empty() && !parent_refs.iter().any(RefSpec::is_gateway) {
        ctx.error(
            "spec.hostnames",
            "hostnames apply at gateways; a mesh route applies to its parent service",
        );
    }
}

impl Spec for HttpRouteSpec {
    const KIND: &'static str = "HTTPRoute";
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
        check_parents(&self.parent_refs, &self.hostnames, ctx);
        for (r, rule) in self.rules.iter().enumerate() {
            let base = format!("spec.rules[{r}]");
            for (m, cond) in rule.matches.iter().enumerate() {
                if let Some(path) = &cond.path {
                    match path.kind.as_deref().unwrap_or("PathPrefix") {
                        "PathPrefix" | "Exact" => {}
                        "RegularExpression" => {
                            if let Err(e) = regex_syntax::Parser::new()
                                .parse(path.value.as_deref().unwrap_or(""))
                            {
                                ctx.error(
                                    &format!("{base}.matches[{m}].path.value"),
                                    format!("not a valid regular expression: {e}"),
                                );
                            }
                        }
                        other => ctx.error(
                            &format!("{base}.matches[{m}].path.type"),
                            format!("{other:?}: use PathPrefix, Exact or RegularExpression"),
                        ),
                    }
                }
                for (h, header) in cond.headers.iter().enumerate() {
                    if !matches!(
                        header.kind.as_deref().unwrap_or("Exact"),
                        "Exact" | "RegularExpression"
                    ) {
                        ctx.error(
                            &format!("{base}.matches[{m}].headers[{h}].type"),
                            "use Exact or RegularExpression",
                        );
                    }
                }
            }
            for (b, backend) in rule.backend_refs.iter().enumerate() {
                if !is_service(backend) {
                    ctx.error(
                        &format!("{base}.backendRefs[{b}]"),
                        "backends are services (kind: Service or ServiceEntry)",
                    );
                }
            }
            for (f, filter) in rule.filters.iter().enumerate() {
                if !FILTERS.contains(&filter.kind.as_str()) {
                    ctx.error(
                        &format!("{base}.filters[{f}].type"),
                        format!(
                            "{:?} is not supported; use {}",
                            filter.kind,
                            FILTERS.join(", ")
                        ),
                    );
                }
            }
            let redirects = rule.filters.iter().any(|f| f.kind == "RequestRedirect");
            if redirects && !rule.backend_refs.is_empty() {
                ctx.error(&base, "a rule with RequestRedirect has no backendRefs");
            }
            if !redirects && rule.backend_refs.is_empty() {
                ctx.error(
                    &format!("{base}.backendRefs"),
                    "name at least one backend (or a RequestRedirect)",
                );
            }
            if let Some(t) = &rule.timeouts {
                for (field, v) in [
                    ("request", &t.request),
                    ("backendRequest", &t.backend_request),
                ] {
                    if let Some(v) = v
                        && let Err(e) = duration::parse(v)
                    {
                        ctx.error(&format!("{base}.timeouts.{field}"), e);
                    }
                }
            }
            if let Some(retry) = &rule.retry {
                for (c, code) in retry.codes.iter().enumerate() {
                    if !(400..600).contains(code) {
                        ctx.error(
                            &format!("{base}.retry.codes[{c}]"),
                            format!("{code} is not an error status (400-599)"),
                        );
                    }
                }
            }
        }
    }
}
