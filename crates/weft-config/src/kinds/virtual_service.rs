//! Istio `VirtualService` (`networking.istio.io/v1`): HTTP routing for the
//! services it names in `hosts`, applied by their waypoint. Matches on
//! path, method and headers; weighted destinations (subsets from
//! `DestinationRule`); timeouts, retries, faults, mirroring, redirects,
//! rewrites and header changes. Bound to Istio `Gateway`s with
//! `gateways`, its `http`, `tls` (by SNI) and `tcp` routes serve the
//! gateways' servers whose hosts match `hosts`.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_core::duration;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `VirtualService`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct VirtualServiceSpec {
    /// Services the routes apply to (hostnames; short names resolve in the
    /// resource's namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where the routes apply: Istio `Gateway`s (`[namespace/]name`)
    /// and/or `mesh` (the services in `hosts`, through their waypoints).
    /// Empty: the mesh only.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRouteSpec>,
    /// TLS routes by SNI (gateways' passthrough servers).
    #[serde(default)]
    pub tls: Vec<TlsRouteSpec>,
    /// TCP routes (gateways' TCP servers).
    #[serde(default)]
    pub tcp: Vec<TcpRouteSpec>,
}

/// The name in `gateways` that means the mesh.
pub const MESH_GATEWAY: &str = "mesh";

impl VirtualServiceSpec {
    /// Whether the routes apply to the mesh (its services' waypoints).
    pub fn binds_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }

    /// The Istio Gateways named, as (index in `gateways`, namespace, name).
    pub fn bound_gateways<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (usize, &'a str, &'a str)> + 'a {
        self.gateways
            .iter()
            .enumerate()
            .filter(|(_, g)| *g != MESH_GATEWAY)
            .map(move |(i, g)| match g.split_once('/') {
                Some((ns, name)) => (i, ns, name),
                None => (i, namespace, g.as_str()),
            })
    }
}

/// `spec.tls[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TlsRouteSpec {
    /// Conditions; any one must hold.
    #[serde(rename = "match", default)]
    pub matches: Vec<TlsMatchSpec>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<L4DestinationSpec>,
}

/// `spec.tls[].match[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchSpec {
    /// SNI names (`*.` wildcards).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// The gateway port.
    pub port: Option<u32>,
}

/// `spec.tcp[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TcpRouteSpec {
    /// Conditions; any one must hold.
    #[serde(rename = "match", default)]
    pub matches: Vec<TcpMatchSpec>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<L4DestinationSpec>,
}

/// `spec.tcp[].match[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TcpMatchSpec {
    /// The gateway port.
    pub port: Option<u32>,
}

/// `route[]` of a TLS or TCP route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct L4DestinationSpec {
    /// Where.
    pub destination: DestinationSpec,
    /// Relative weight.
    pub weight: Option<u32>,
}

/// `spec.http[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Name, for logs.
    pub name: Option<String>,
    /// Conditions; any one must hold.
    #[serde(rename = "match", default)]
    pub matches: Vec<MatchSpec>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestinationSpec>,
    /// Redirect.
    pub redirect: Option<RedirectSpec>,
    /// Rewrite.
    pub rewrite: Option<RewriteSpec>,
    /// Overall timeout, e.g. `2s`.
    pub timeout: Option<String>,
    /// Retries.
    pub retries: Option<RetriesSpec>,
    /// Fault injection.
    pub fault: Option<FaultSpec>,
    /// Mirror destination.
    pub mirror: Option<DestinationSpec>,
    /// Share mirrored (default 100).
    pub mirror_percentage: Option<PercentSpec>,
    /// Deprecated in Istio for `mirrorPercentage`; read in its place,
    /// with a warning.
    pub mirror_percent: Option<u32>,
    /// Header changes.
    pub headers: Option<HeadersSpec>,
}

/// `match[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatchSpec {
    /// Name (informational).
    pub name: Option<String>,
    /// Path.
    pub uri: Option<StringMatchSpec>,
    /// Method.
    pub method: Option<StringMatchSpec>,
    /// Headers by name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    /// Query parameters by name (`exact` or `regex`).
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
}

/// Istio's `StringMatch`: exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StringMatchSpec {
    /// Equal.
    pub exact: Option<String>,
    /// Starts with.
    pub prefix: Option<String>,
    /// RE2 regular expression over the whole value.
    pub regex: Option<String>,
}

/// `route[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RouteDestinationSpec {
    /// Where.
    pub destination: DestinationSpec,
    /// Relative weight (all 0 or absent: equal).
    pub weight: Option<u32>,
    /// Header changes for this destination.
    pub headers: Option<HeadersSpec>,
}

/// `destination`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DestinationSpec {
    /// Service hostname.
    pub host: String,
    /// Subset (from a `DestinationRule`).
    pub subset: Option<String>,
    /// Port.
    pub port: Option<PortSelectorSpec>,
}

/// `port`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PortSelectorSpec {
    /// Port number.
    pub number: u32,
}

/// `redirect`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    /// New path.
    pub uri: Option<String>,
    /// New host.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status, default 301.
    pub redirect_code: Option<u32>,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RewriteSpec {
    /// Replaces the matched prefix (or the whole path with an exact match).
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
}

/// `retries`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetriesSpec {
    /// Retries (not counting the first try).
    pub attempts: Option<u32>,
    /// Per-try timeout.
    pub per_try_timeout: Option<String>,
    /// Conditions, comma separated.
    pub retry_on: Option<String>,
}

/// `fault`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FaultSpec {
    /// Delay.
    pub delay: Option<DelaySpec>,
    /// Abort.
    pub abort: Option<AbortSpec>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelaySpec {
    /// How long.
    pub fixed_delay: Option<String>,
    /// Share delayed (default 100).
    pub percentage: Option<PercentSpec>,
    /// Deprecated in Istio for `percentage`; read in its place, with a
    /// warning.
    pub percent: Option<u32>,
}

impl DelaySpec {
    /// The share of requests delayed, in percent.
    pub fn share(&self) -> f64 {
        match (&self.percentage, self.percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => f64::from(p),
            (None, None) => 100.0,
        }
    }
}

impl HttpRouteSpec {
    /// The share of requests mirrored, in percent.
    pub fn mirror_share(&self) -> f64 {
        match (&self.mirror_percentage, self.mirror_percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => f64::from(p),
            (None, None) => 100.0,
        }
    }
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AbortSpec {
    /// Status returned.
    pub http_status: Option<u32>,
    /// Share aborted (default 100).
    pub percentage: Option<PercentSpec>,
}

/// `{value: <percent>}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PercentSpec {
    /// 0–100.
    pub value: f64,
}

/// `headers`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeadersSpec {
    /// Request changes.
    pub request: Option<HeaderOpsSpec>,
    /// Response changes.
    pub response: Option<HeaderOpsSpec>,
}

/// `headers.request` / `headers.response`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderOpsSpec {
    /// Replace.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

const NOT_YET: &str = "is not supported by weft's waypoint yet";
const NOT_AT_GATEWAYS_YET: &str = "is not supported by weft's gateway yet";

impl Spec for VirtualServiceSpec {
    const KIND: &'static str = "VirtualService";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        ("spec.tls.match.destinationSubnets", NOT_AT_GATEWAYS_YET),
        ("spec.tls.match.sourceLabels", NOT_AT_GATEWAYS_YET),
        ("spec.tls.match.gateways", NOT_AT_GATEWAYS_YET),
        ("spec.tls.match.sourceNamespace", NOT_AT_GATEWAYS_YET),
        ("spec.tcp.match.destinationSubnets", NOT_AT_GATEWAYS_YET),
        ("spec.tcp.match.sourceLabels", NOT_AT_GATEWAYS_YET),
        ("spec.tcp.match.gateways", NOT_AT_GATEWAYS_YET),
        ("spec.tcp.match.sourceNamespace", NOT_AT_GATEWAYS_YET),
        ("spec.tcp.match.sourceSubnet", NOT_AT_GATEWAYS_YET),
        (
            "spec.exportTo",
            "exportTo is not supported: every route is visible mesh-wide",
        ),
        ("spec.http.match.scheme", NOT_YET),
        ("spec.http.match.authority", NOT_YET),
        ("spec.http.match.port", NOT_YET),
        ("spec.http.match.sourceLabels", NOT_YET),
        ("spec.http.match.gateways", NOT_YET),
        ("spec.http.match.sourceNamespace", NOT_YET),
        ("spec.http.match.ignoreUriCase", NOT_YET),
        ("spec.http.match.withoutHeaders", NOT_YET),
        ("spec.http.match.statPrefix", NOT_YET),
        ("spec.http.corsPolicy", NOT_YET),
        ("spec.http.delegate", NOT_YET),
        ("spec.http.directResponse", NOT_YET),
        ("spec.http.retries.retryRemoteLocalities", NOT_YET),
        ("spec.http.retries.backoff", NOT_YET),
        (
            "spec.http.mirrors",
            "use mirror and mirrorPercentage (one mirror per route)",
        ),
        ("spec.http.fault.delay.exponentialDelay", NOT_YET),
        ("spec.http.fault.abort.grpcStatus", NOT_YET),
        ("spec.http.fault.abort.http2Error", NOT_YET),
        ("spec.http.rewrite.uriRegexRewrite", NOT_YET),
        ("spec.http.redirect.derivePort", NOT_YET),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.hosts.is_empty() {
            ctx.error("spec.hosts", "name at least one host");
        }
        for (i, g) in self.gateways.iter().enumerate() {
            let name = g.rsplit('/').next().unwrap_or(g);
            let ns = g.split_once('/').map(|(ns, _)| ns);
            let bad = ns.is_some_and(|ns| weft_core::names::check_label(ns).is_err())
                || weft_core::names::check_subdomain(name).is_err();
            if bad {
                ctx.error(
                    &format!("spec.gateways[{i}]"),
                    format!("{g:?} is not \"mesh\" or an Istio Gateway's [namespace/]name"),
                );
            }
        }
        if self.binds_mesh() {
            for (h, host) in self.hosts.iter().enumerate() {
                if host.contains('*') {
                    ctx.error(
                        &format!("spec.hosts[{h}]"),
                        format!("{host:?}: routes for the mesh name services; wildcards apply at gateways only"),
                    );
                }
            }
            for (field, present) in [
                ("spec.tls", !self.tls.is_empty()),
                ("spec.tcp", !self.tcp.is_empty()),
            ] {
                if present && self.gateways.is_empty() {
                    ctx.error(
                        field,
                        "TLS and TCP routes apply at gateways: name the Gateway in spec.gateways (in the mesh, L4 traffic goes to the service directly)",
                    );
                }
            }
        }
        for (r, route) in self.tls.iter().enumerate() {
            let base = format!("spec.tls[{r}]");
            if route.matches.iter().all(|m| m.sni_hosts.is_empty()) {
                ctx.error(
                    &format!("{base}.match"),
                    "a TLS route matches on sniHosts: name at least one",
                );
            }
            check_l4_destinations(ctx, &base, &route.route);
        }
        for (r, route) in self.tcp.iter().enumerate() {
            check_l4_destinations(ctx, &format!("spec.tcp[{r}]"), &route.route);
        }
        for (r, route) in self.http.iter().enumerate() {
            let base = format!("spec.http[{r}]");
            match (&route.redirect, route.route.is_empty()) {
                (Some(_), false) => {
                    ctx.error(&base, "a route has either redirect or route, not both")
                }
                (None, true) => ctx.error(
                    &format!("{base}.route"),
                    "name at least one destination (or a redirect)",
                ),
                _ => {}
            }
            for (m, cond) in route.matches.iter().enumerate() {
                let at = format!("{base}.match[{m}]");
                if let Some(uri) = &cond.uri {
                    check_string_match(ctx, &format!("{at}.uri"), uri);
                }
                if let Some(method) = &cond.method {
                    check_string_match(ctx, &format!("{at}.method"), method);
                    if method.exact.is_none() {
                        ctx.error(&format!("{at}.method"), "methods match exactly: use exact");
                    }
                }
                for (name, h) in &cond.headers {
                    check_string_match(ctx, &format!("{at}.headers.{name}"), h);
                }
                for (name, q) in &cond.query_params {
                    check_string_match(ctx, &format!("{at}.queryParams.{name}"), q);
                }
            }
            for (d, dest) in route.route.iter().enumerate() {
                if dest.destination.host.is_empty() {
                    ctx.error(&format!("{base}.route[{d}].destination.host"), "required");
                }
            }
            check_duration(ctx, &format!("{base}.timeout"), route.timeout.as_deref());
            if let Some(retries) = &route.retries {
                check_duration(
                    ctx,
                    &format!("{base}.retries.perTryTimeout"),
                    retries.per_try_timeout.as_deref(),
                );
                if let Some(on) = &retries.retry_on {
                    ctx.check(&format!("{base}.retries.retryOn"), check_retry_on(on));
                }
            }
            if let Some(fault) = &route.fault {
                if let Some(delay) = &fault.delay {
                    if delay.fixed_delay.is_none() {
                        ctx.error(&format!("{base}.fault.delay.fixedDelay"), "required");
                    }
                    check_duration(
                        ctx,
                        &format!("{base}.fault.delay.fixedDelay"),
                        delay.fixed_delay.as_deref(),
                    );
                    check_percent(
                        ctx,
                        &format!("{base}.fault.delay.percentage.value"),
                        delay.percentage.as_ref(),
                    );
                    deprecated_percent(
                        ctx,
                        &format!("{base}.fault.delay"),
                        ("percent", delay.percent),
                        ("percentage", delay.percentage.is_some()),
                    );
                }
                if let Some(abort) = &fault.abort {
                    match abort.http_status {
                        Some(s) if (200..600).contains(&s) => {}
                        _ => ctx.error(
                            &format!("{base}.fault.abort.httpStatus"),
                            "an HTTP status (200-599) is required",
                        ),
                    }
                    check_percent(
                        ctx,
                        &format!("{base}.fault.abort.percentage.value"),
                        abort.percentage.as_ref(),
                    );
                }
            }
            check_percent(
                ctx,
                &format!("{base}.mirrorPercentage.value"),
                route.mirror_percentage.as_ref(),
            );
            deprecated_percent(
                ctx,
                &base,
                ("mirrorPercent", route.mirror_percent),
                ("mirrorPercentage", route.mirror_percentage.is_some()),
            );
            if let Some(redirect) = &route.redirect
                && let Some(code) = redirect.redirect_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                ctx.error(
                    &format!("{base}.redirect.redirectCode"),
                    format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
                );
            }
        }
    }
}

fn check_l4_destinations(ctx: &mut Ctx<'_>, base: &str, route: &[L4DestinationSpec]) {
    if route.is_empty() {
        ctx.error(&format!("{base}.route"), "name at least one destination");
    }
    for (d, dest) in route.iter().enumerate() {
        if dest.destination.host.is_empty() {
            ctx.error(&format!("{base}.route[{d}].destination.host"), "required");
        }
    }
}

/// The `retryOn` names weft accepts (Envoy's, as Istio passes them).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

fn check_retry_on(list: &str) -> Result<(), String> {
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !RETRY_ON.contains(&name) {
            return Err(format!(
                "{name:?} is not a retry condition weft knows; use {}",
                RETRY_ON.join(", ")
            ));
        }
    }
    Ok(())
}

fn check_string_match(ctx: &mut Ctx<'_>, field: &str, m: &StringMatchSpec) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        ctx.error(field, "set exactly one of exact, prefix, regex");
    }
    if let Some(re) = &m.regex
        && let Err(e) = regex_syntax::Parser::new().parse(re)
    {
        ctx.error(
            &format!("{field}.regex"),
            format!("not a valid regular expression: {e}"),
        );
    }
}

/// A deprecated whole-number percent field (`old`) read in place of its
/// replacement (`new`): a warning naming the replacement, an error when
/// both are set or the value is not a percentage.
fn deprecated_percent(
    ctx: &mut Ctx<'_>,
    base: &str,
    (old, value): (&str, Option<u32>),
    (new, new_set): (&str, bool),
) {
    let Some(value) = value else {
        return;
    };
    let field = format!("{base}.{old}");
    if new_set {
        ctx.error(
            &field,
            format!("set {new} or the deprecated {old}, not both"),
        );
    } else if value > 100 {
        ctx.error(&field, format!("{value} is not a percentage (0-100)"));
    } else {
        ctx.warn(
            &field,
            format!(
                "deprecated; read as {new}: {{value: {value}}}, which is what to write instead"
            ),
        );
    }
}

fn check_duration(ctx: &mut Ctx<'_>, field: &str, value: Option<&str>) {
    if let Some(v) = value {
        match duration::parse(v) {
            Ok(d) if d.is_zero() => ctx.error(field, "must be greater than zero"),
            Ok(_) => {}
            Err(e) => ctx.error(field, e),
        }
    }
}

fn check_percent(ctx: &mut Ctx<'_>, field: &str, p: Option<&PercentSpec>) {
    if let Some(p) = p
        && !(0.0..=100.0).contains(&p.value)
    {
        ctx.error(field, format!("{} is not a percentage (0-100)", p.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_percents_are_read_in_place_of_their_replacements() {
        let delay = |percentage: Option<f64>, percent: Option<u32>| DelaySpec {
            fixed_delay: Some("1s".into()),
            percentage: percentage.map(|value| PercentSpec { value }),
            percent,
        };
        assert_eq!(delay(None, None).share(), 100.0);
        assert_eq!(delay(None, Some(10)).share(), 10.0);
        assert_eq!(delay(Some(2.5), None).share(), 2.5);
        let route = HttpRouteSpec {
            mirror_percent: Some(5),
            ..Default::default()
        };
        assert_eq!(route.mirror_share(), 5.0);
        assert_eq!(HttpRouteSpec::default().mirror_share(), 100.0);
    }
}
