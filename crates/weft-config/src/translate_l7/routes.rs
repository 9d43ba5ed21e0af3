//! Routes → the L7 route model: `VirtualService` HTTP routes and the
//! rules of Gateway API `HTTPRoute`/`GRPCRoute`, their destinations
//! resolved to services.

use std::collections::BTreeMap;

use weft_core::l7::{
    Destination, Fault, Headers, HttpMatch, HttpRoute, L7Policy, Mirror, Redirect, Retries,
    Rewrite, StringMatch,
};
use weft_core::model::{NamespacedName, Service, Snapshot};

use super::common::{
    DEFAULT_RETRY_ON, headers, parse_duration, report, resolve_host, service_key, string_match,
};
use crate::diag::Diagnostic;
use crate::kinds::VirtualServiceSpec;
use crate::kinds::virtual_service::{DestinationSpec, HttpRouteSpec};
use crate::resource::{Resource, Spec};

pub(crate) fn destination(
    snapshot: &Snapshot,
    policies: &BTreeMap<NamespacedName, L7Policy>,
    vs: &Resource<VirtualServiceSpec>,
    field: &str,
    d: &DestinationSpec,
    weight: u32,
    out: &mut Vec<Diagnostic>,
) -> Option<Destination> {
    let Some(service) = resolve_host(snapshot, &vs.name.namespace, &d.host) else {
        report(
            out,
            vs,
            &format!("{field}.host"),
            format!("{:?} is not a service in the registry", d.host),
        );
        return None;
    };
    if let Some(subset) = &d.subset
        && !policies
            .get(&service.name)
            .is_some_and(|p| p.subsets.contains_key(subset))
    {
        report(
            out,
            vs,
            &format!("{field}.subset"),
            format!(
                "no DestinationRule for {} defines subset {subset:?}",
                service.name
            ),
        );
        return None;
    }
    let port = d.port.as_ref().and_then(|p| u16::try_from(p.number).ok());
    if let Some(p) = port
        && service.port(p).is_none()
    {
        report(
            out,
            vs,
            &format!("{field}.port.number"),
            format!("{} has no port {p}", service.name),
        );
        return None;
    }
    Some(Destination {
        service: service_key(service),
        subset: d.subset.clone(),
        port,
        weight,
    })
}

pub(crate) fn http_route(
    snapshot: &Snapshot,
    policies: &BTreeMap<NamespacedName, L7Policy>,
    vs: &Resource<VirtualServiceSpec>,
    index: usize,
    spec: &HttpRouteSpec,
    out: &mut Vec<Diagnostic>,
) -> Option<HttpRoute> {
    let base = format!("spec.http[{index}]");
    let all_unweighted = spec.route.iter().all(|d| d.weight.is_none());
    let mut destinations = Vec::new();
    let mut request_headers = headers(spec.headers.as_ref().and_then(|h| h.request.as_ref()));
    let mut response_headers = headers(spec.headers.as_ref().and_then(|h| h.response.as_ref()));
    for (d, dest) in spec.route.iter().enumerate() {
        let weight = if all_unweighted {
            1
        } else {
            dest.weight.unwrap_or(0)
        };
        let field = format!("{base}.route[{d}].destination");
        destinations.push(destination(
            snapshot,
            policies,
            vs,
            &field,
            &dest.destination,
            weight,
            out,
        )?);
        // Per-destination header changes apply to the route (weft applies
        // header changes per route).
        if let Some(h) = &dest.headers {
            for (target, ops) in [
                (&mut request_headers, &h.request),
                (&mut response_headers, &h.response),
            ] {
                let more = headers(ops.as_ref());
                target.set.extend(more.set);
                target.add.extend(more.add);
                target.remove.extend(more.remove);
            }
        }
    }
    let matches: Vec<HttpMatch> = spec
        .matches
        .iter()
        .map(|m| HttpMatch {
            path: m.uri.as_ref().and_then(string_match),
            method: m.method.as_ref().and_then(|x| x.exact.clone()),
            headers: m
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), string_match(v)?)))
                .collect(),
            query: m
                .query_params
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), string_match(v)?)))
                .collect(),
        })
        .collect();
    // Istio's rewrite.uri replaces the matched prefix; with an exact match
    // (or none) it replaces the whole path.
    let rewrite = spec.rewrite.as_ref().map(|r| {
        let prefix = spec
            .matches
            .iter()
            .find_map(|m| m.uri.as_ref()?.prefix.clone());
        Rewrite {
            prefix: match (&r.uri, &prefix) {
                (Some(to), Some(from)) => Some((from.clone(), to.clone())),
                _ => None,
            },
            full_path: match (&r.uri, &prefix) {
                (Some(to), None) => Some(to.clone()),
                _ => None,
            },
            host: r.authority.clone(),
        }
    });
    let mirror = match &spec.mirror {
        Some(m) => Some(Mirror {
            destination: destination(snapshot, policies, vs, &format!("{base}.mirror"), m, 1, out)?,
            percent: spec.mirror_share(),
        }),
        None => None,
    };
    Some(HttpRoute {
        hosts: Vec::new(),
        listeners: Vec::new(),
        name: spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{}/{}[{index}]", vs.name.namespace, vs.name.name)),
        matches,
        destinations,
        timeout: parse_duration(spec.timeout.as_deref()),
        retries: spec.retries.as_ref().map(|r| Retries {
            attempts: r.attempts.unwrap_or(2),
            per_try_timeout: parse_duration(r.per_try_timeout.as_deref()),
            retry_on: r
                .retry_on
                .clone()
                .unwrap_or_else(|| DEFAULT_RETRY_ON.into()),
            statuses: Vec::new(),
        }),
        fault: spec.fault.as_ref().map(|f| Fault {
            delay: f
                .delay
                .as_ref()
                .and_then(|d| Some((d.share(), parse_duration(d.fixed_delay.as_deref())?))),
            abort: f.abort.as_ref().and_then(|a| {
                Some((
                    a.percentage.as_ref().map_or(100.0, |p| p.value),
                    u16::try_from(a.http_status?).ok()?,
                ))
            }),
        }),
        redirect: spec.redirect.as_ref().map(|r| Redirect {
            scheme: r.scheme.clone(),
            host: r.authority.clone(),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            path: r.uri.clone(),
            status: r
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        }),
        rewrite,
        request_headers,
        response_headers,
        mirror,
    })
}

/// A `GRPCRoute` in the shape of an `HTTPRoute` (same name and origin, so
/// problems point at the GRPCRoute's file and line).
pub(crate) fn as_http_route(
    g: &Resource<crate::kinds::GrpcRouteSpec>,
) -> Resource<crate::kinds::HttpRouteSpec> {
    use crate::kinds::grpc_route::method_path_regex;
    use crate::kinds::http_route::{MatchSpec, PathSpec, RuleSpec};
    let rules = g
        .spec
        .rules
        .iter()
        .map(|rule| RuleSpec {
            matches: rule
                .matches
                .iter()
                .map(|m| MatchSpec {
                    path: m.method.as_ref().map(|method| PathSpec {
                        kind: Some("RegularExpression".into()),
                        value: Some(method_path_regex(method)),
                    }),
                    headers: m.headers.clone(),
                    method: None,
                    query_params: Vec::new(),
                })
                .collect(),
            filters: rule.filters.clone(),
            backend_refs: rule.backend_refs.clone(),
            timeouts: None,
            retry: None,
            name: rule.name.clone(),
        })
        .collect();
    Resource {
        name: g.name.clone(),
        labels: g.labels.clone(),
        annotations: g.annotations.clone(),
        spec: crate::kinds::HttpRouteSpec {
            hostnames: g.spec.hostnames.clone(),
            parent_refs: g.spec.parent_refs.clone(),
            rules,
        },
        origin: g.origin.clone(),
    }
}

/// The service a `parentRef` or `backendRef` names (by ServiceEntry name).
pub(crate) fn service_ref<'a, S: Spec>(
    snapshot: &'a Snapshot,
    hr: &Resource<S>,
    field: &str,
    r: &crate::kinds::http_route::RefSpec,
    out: &mut Vec<Diagnostic>,
) -> Option<&'a Service> {
    let ns = r.namespace.as_deref().unwrap_or(&hr.name.namespace);
    let wanted = NamespacedName::new(ns, &r.name);
    let Some(service) = snapshot.services.get(&wanted) else {
        report(
            out,
            hr,
            &format!("{field}.name"),
            format!("no service {wanted} in the registry"),
        );
        return None;
    };
    if let Some(port) = r.port.and_then(|p| u16::try_from(p).ok())
        && service.port(port).is_none()
    {
        report(
            out,
            hr,
            &format!("{field}.port"),
            format!("{wanted} has no port {port}"),
        );
        return None;
    }
    Some(service)
}

/// A rule whose prefix rewrite (Gateway API `ReplacePrefixMatch`, Istio
/// `rewrite.uri`) follows several path prefixes, as one route per match:
/// each replaces the prefix that matched, not the first one.
pub(crate) fn per_matched_prefix(route: HttpRoute) -> Vec<HttpRoute> {
    let several = route.matches.len() > 1;
    let rewrites_prefix = route.rewrite.as_ref().is_some_and(|r| r.prefix.is_some());
    if !(several && rewrites_prefix) {
        return vec![route];
    }
    route
        .matches
        .iter()
        .map(|m| {
            let mut one = route.clone();
            one.matches = vec![m.clone()];
            if let (Some(StringMatch::SegmentPrefix(from) | StringMatch::Prefix(from)), Some(rw)) =
                (&m.path, one.rewrite.as_mut())
                && let Some(prefix) = rw.prefix.as_mut()
            {
                prefix.0 = from.clone();
            }
            one
        })
        .collect()
}

pub(crate) fn gateway_rule(
    snapshot: &Snapshot,
    hr: &Resource<crate::kinds::HttpRouteSpec>,
    index: usize,
    rule: &crate::kinds::http_route::RuleSpec,
    out: &mut Vec<Diagnostic>,
) -> Option<HttpRoute> {
    let base = format!("spec.rules[{index}]");
    let matches: Vec<HttpMatch> = rule
        .matches
        .iter()
        .map(|m| HttpMatch {
            path: m.path.as_ref().map(|p| {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p.kind.as_deref() {
                    Some("Exact") => StringMatch::Exact(value),
                    Some("RegularExpression") => StringMatch::Regex(value),
                    _ => StringMatch::SegmentPrefix(value),
                }
            }),
            method: m.method.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| {
                    let value = match h.kind.as_deref() {
                        Some("RegularExpression") => StringMatch::Regex(h.value.clone()),
                        _ => StringMatch::Exact(h.value.clone()),
                    };
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect(),
            query: m
                .query_params
                .iter()
                .map(|q| {
                    let value = match q.kind.as_deref() {
                        Some("RegularExpression") => StringMatch::Regex(q.value.clone()),
                        _ => StringMatch::Exact(q.value.clone()),
                    };
                    (q.name.clone(), value)
                })
                .collect(),
        })
        .collect();
    let mut destinations = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let field = format!("{base}.backendRefs[{b}]");
        let service = service_ref(snapshot, hr, &field, backend, out)?;
        destinations.push(Destination {
            service: service_key(service),
            subset: None,
            port: backend.port.and_then(|p| u16::try_from(p).ok()),
            weight: backend.weight.unwrap_or(1),
        });
    }
    let modifier = |m: Option<&crate::kinds::http_route::HeaderModifierSpec>| {
        m.map(|m| Headers {
            set: m
                .set
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            add: m
                .add
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            remove: m.remove.clone(),
        })
        .unwrap_or_default()
    };
    let mut route = HttpRoute {
        name: rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{}/{}[{index}]", hr.name.namespace, hr.name.name)),
        matches,
        destinations,
        ..HttpRoute::default()
    };
    let matched_prefix = rule.matches.iter().find_map(|m| {
        let p = m.path.as_ref()?;
        matches!(p.kind.as_deref(), None | Some("PathPrefix"))
            .then(|| p.value.clone().unwrap_or_else(|| "/".into()))
    });
    for (f, filter) in rule.filters.iter().enumerate() {
        let field = format!("{base}.filters[{f}]");
        match filter.kind.as_str() {
            "RequestHeaderModifier" => {
                route.request_headers = modifier(filter.request_header_modifier.as_ref());
            }
            "ResponseHeaderModifier" => {
                route.response_headers = modifier(filter.response_header_modifier.as_ref());
            }
            "RequestRedirect" => {
                let r = filter.request_redirect.clone().unwrap_or_default();
                let path = match &r.path {
                    Some(p) if p.kind == "ReplaceFullPath" => p.replace_full_path.clone(),
                    Some(p) => {
                        report(
                            out,
                            hr,
                            &format!("{field}.requestRedirect.path.type"),
                            format!(
                                "{:?} is not supported in redirects; use ReplaceFullPath",
                                p.kind
                            ),
                        );
                        return None;
                    }
                    None => None,
                };
                route.redirect = Some(Redirect {
                    scheme: r.scheme,
                    host: r.hostname,
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    path,
                    status: r
                        .status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(302),
                });
            }
            "URLRewrite" => {
                let r = filter.url_rewrite.clone().unwrap_or_default();
                let mut rewrite = Rewrite {
                    host: r.hostname,
                    ..Rewrite::default()
                };
                match r.path {
                    Some(p) if p.kind == "ReplaceFullPath" => {
                        rewrite.full_path = p.replace_full_path
                    }
                    Some(p) => match (&matched_prefix, p.replace_prefix_match) {
                        (Some(from), Some(to)) => rewrite.prefix = Some((from.clone(), to)),
                        _ => {
                            report(out, hr, &format!("{field}.urlRewrite.path"), "ReplacePrefixMatch needs a PathPrefix match and replacePrefixMatch".into());
                            return None;
                        }
                    },
                    None => {}
                }
                route.rewrite = Some(rewrite);
            }
            "RequestMirror" => {
                let m = filter.request_mirror.clone().unwrap_or_default();
                let service = service_ref(
                    snapshot,
                    hr,
                    &format!("{field}.requestMirror.backendRef"),
                    &m.backend_ref,
                    out,
                )?;
                route.mirror = Some(Mirror {
                    destination: Destination {
                        service: service_key(service),
                        subset: None,
                        port: m.backend_ref.port.and_then(|p| u16::try_from(p).ok()),
                        weight: 1,
                    },
                    percent: f64::from(m.percent.unwrap_or(100)),
                });
            }
            _ => {}
        }
    }
    if let Some(t) = &rule.timeouts {
        route.timeout = parse_duration(t.request.as_deref());
    }
    let per_try = rule
        .timeouts
        .as_ref()
        .and_then(|t| parse_duration(t.backend_request.as_deref()));
    if rule.retry.is_some() || per_try.is_some() {
        let retry = rule.retry.clone().unwrap_or_default();
        route.retries = Some(Retries {
            attempts: retry.attempts.unwrap_or(0),
            per_try_timeout: per_try,
            retry_on: "connect-failure,refused-stream".into(),
            statuses: retry
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
        });
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use weft_core::l7::{HttpMatch, Rewrite};

    use super::*;

    fn prefix(p: &str) -> HttpMatch {
        HttpMatch {
            path: Some(StringMatch::SegmentPrefix(p.into())),
            ..HttpMatch::default()
        }
    }

    /// A prefix rewrite over several matched prefixes becomes one route
    /// per prefix, each replacing its own; anything else stays one route.
    #[test]
    fn prefix_rewrites_follow_the_prefix_that_matched() {
        let rewrite = |to: &str| {
            Some(Rewrite {
                prefix: Some(("/api".into(), to.into())),
                ..Rewrite::default()
            })
        };
        // (what, matches, rewrite, want: (match prefix, rewritten from) per route)
        type Case = (
            &'static str,
            Vec<HttpMatch>,
            Option<Rewrite>,
            Vec<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "two prefixes, one rewrite",
                vec![prefix("/api"), prefix("/v1")],
                rewrite("/"),
                vec![("/api", "/api"), ("/v1", "/v1")],
            ),
            (
                "one prefix",
                vec![prefix("/api")],
                rewrite("/"),
                vec![("/api", "/api")],
            ),
            (
                "no rewrite",
                vec![prefix("/a"), prefix("/b")],
                None,
                vec![("/a", ""), ("/b", "")],
            ),
        ];
        for (what, matches, rewrite, want) in cases {
            let route = HttpRoute {
                name: "r".into(),
                matches,
                rewrite,
                ..HttpRoute::default()
            };
            let split = per_matched_prefix(route);
            let got: Vec<(String, String)> = if split.len() == 1 && split[0].matches.len() > 1 {
                split[0]
                    .matches
                    .iter()
                    .map(|m| match &m.path {
                        Some(StringMatch::SegmentPrefix(p)) => (p.clone(), String::new()),
                        _ => (String::new(), String::new()),
                    })
                    .collect()
            } else {
                split
                    .iter()
                    .map(|r| {
                        let matched = match &r.matches[0].path {
                            Some(StringMatch::SegmentPrefix(p)) => p.clone(),
                            _ => String::new(),
                        };
                        let from = r
                            .rewrite
                            .as_ref()
                            .and_then(|rw| rw.prefix.as_ref())
                            .map_or(String::new(), |p| p.0.clone());
                        (matched, from)
                    })
                    .collect()
            };
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }
}
