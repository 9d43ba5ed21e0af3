//! `VirtualService` and `DestinationRule` → each service's [`L7Policy`].
//! Names are resolved here: hosts to services (short names in the
//! resource's namespace), subsets to workloads. What cannot be resolved is
//! reported with the resource and field.

use std::collections::BTreeMap;

use weft_core::duration;
use weft_core::l7::{
    Destination, Fault, HashOn, Headers, HttpMatch, HttpRoute, L7Policy, LoadBalancer, Mirror,
    Outlier, Redirect, Retries, RetryBudget, Rewrite, StringMatch, TrafficPolicy,
};
use weft_core::model::{NamespacedName, Service, Snapshot};

use crate::diag::Diagnostic;
use crate::kinds::destination_rule::{BUDGET_MIN_ANNOTATION, BUDGET_RATIO_ANNOTATION};
use crate::kinds::virtual_service::{
    DestinationSpec, HeaderOpsSpec, HttpRouteSpec, StringMatchSpec,
};
use crate::kinds::{DestinationRuleSpec, Resources, VirtualServiceSpec};
use crate::resource::{Resource, Spec};

/// Istio's default `retryOn` when a route sets retries without one.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,gateway-error";

/// The service a host names, seen from `namespace`: the exact host, else
/// the Kubernetes short forms (`reviews`, `reviews.shop`).
pub fn resolve_host<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    host: &str,
) -> Option<&'a Service> {
    let host = host.to_ascii_lowercase();
    [
        host.clone(),
        format!("{host}.{namespace}.svc.cluster.local"),
        format!("{host}.svc.cluster.local"),
    ]
    .iter()
    .find_map(|h| snapshot.service_for_host(h))
}

/// The name destinations use for a service: `namespace/<first host>`.
pub fn service_key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.name.namespace,
        s.hosts.first().map_or("", String::as_str)
    )
}

fn report<S: Spec>(out: &mut Vec<Diagnostic>, r: &Resource<S>, field: &str, message: String) {
    out.push(Diagnostic::at(&r.origin, Some(r.object()), field, message));
}

/// The L7 policy a `targetRef` names: a service's (created on first use)
/// or a Gateway's; `Err` says what is missing.
fn attach_point<'a>(
    snapshot: &'a mut Snapshot,
    namespace: &str,
    target: &crate::kinds::http_route::RefSpec,
) -> Result<&'a mut L7Policy, String> {
    let ns = target.namespace.as_deref().unwrap_or(namespace);
    let wanted = NamespacedName::new(ns, &target.name);
    if target.is_gateway() {
        return snapshot
            .gateways
            .get_mut(&wanted)
            .map(|g| &mut g.policy)
            .ok_or_else(|| format!("no Gateway {wanted} in the configuration"));
    }
    if !snapshot.services.contains_key(&wanted) {
        return Err(format!("no service {wanted} in the registry"));
    }
    Ok(snapshot.l7.entry(wanted).or_default())
}

/// Adds every service's L7 policy to the snapshot.
pub(crate) fn translate(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    let mut policies: BTreeMap<NamespacedName, L7Policy> = BTreeMap::new();
    let mut rules: Vec<&Resource<DestinationRuleSpec>> =
        r.destination_rules.iter().map(|d| d.as_ref()).collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    for dr in rules {
        let Some(service) = resolve_host(snapshot, &dr.name.namespace, &dr.spec.host) else {
            report(
                out,
                dr,
                "spec.host",
                format!("{:?} is not a service in the registry", dr.spec.host),
            );
            continue;
        };
        let policy = policies.entry(service.name.clone()).or_default();
        policy.traffic = traffic_policy(dr, out);
        if let Some(keys) = dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|t| t.load_balancer.as_ref())
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .map(|l| &l.failover_priority)
            .filter(|k| !k.is_empty())
        {
            // Ranked against the waypoint that calls the endpoints.
            match service
                .waypoint
                .as_ref()
                .and_then(|w| snapshot.workloads.get(w))
            {
                Some(caller) => {
                    for w in snapshot.endpoints(service) {
                        let same = keys
                            .iter()
                            .take_while(|k| {
                                caller.labels.contains_key(*k)
                                    && caller.labels.get(*k) == w.labels.get(*k)
                            })
                            .count();
                        let rank = u8::try_from(keys.len() - same).unwrap_or(u8::MAX);
                        policy
                            .traffic
                            .locality
                            .priority
                            .insert(w.name.to_string(), rank);
                    }
                }
                None => report(
                    out,
                    dr,
                    "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
                    format!(
                        "{} has no waypoint to rank its endpoints against",
                        service.name
                    ),
                ),
            }
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let members: Vec<String> = snapshot
                .endpoints(service)
                .filter(|w| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .map(|w| w.name.to_string())
                .collect();
            if members.is_empty() {
                report(
                    out,
                    dr,
                    &format!("spec.subsets[{i}].labels"),
                    format!(
                        "subset {:?} selects none of {}'s endpoints",
                        subset.name, service.name
                    ),
                );
            }
            policy.subsets.insert(subset.name.clone(), members);
        }
    }
    let mut services: Vec<&Resource<VirtualServiceSpec>> =
        r.virtual_services.iter().map(|v| v.as_ref()).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for vs in services {
        let mut routes = Vec::new();
        for (i, spec) in vs.spec.http.iter().enumerate() {
            if let Some(route) = http_route(snapshot, &policies, vs, i, spec, out) {
                routes.extend(per_matched_prefix(route));
            }
        }
        for (h, host) in vs.spec.hosts.iter().enumerate() {
            match resolve_host(snapshot, &vs.name.namespace, host) {
                Some(service) => policies
                    .entry(service.name.clone())
                    .or_default()
                    .routes
                    .extend(routes.iter().cloned()),
                None => report(
                    out,
                    vs,
                    &format!("spec.hosts[{h}]"),
                    format!("{host:?} is not a service in the registry"),
                ),
            }
        }
    }
    for se in &r.service_entries {
        if se
            .labels
            .get(weft_core::model::INGRESS_USE_WAYPOINT_LABEL)
            .is_some_and(|v| v == "true")
        {
            policies
                .entry(se.name.clone())
                .or_default()
                .ingress_use_waypoint = true;
        }
    }
    snapshot.l7 = policies;
    translate_gateways(r, snapshot, out);
    translate_http_routes(r, snapshot, out);
    translate_tls_routes(r, snapshot, out);
    translate_rate_limits(r, snapshot, out);
    translate_request_authentications(r, snapshot, out);
    translate_waypoint_policies(r, snapshot, out);
}

/// `AuthorizationPolicy` attached with `targetRef(s)` → the request-level
/// policies of those services (enforced by their waypoints).
fn translate_waypoint_policies(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    use crate::kinds::authorization_policy::ActionSpec;
    use weft_core::l7::{AuthzAction, L7Authz, L7AuthzRule, L7Condition, L7Operation, L7Source};
    let mut attached: Vec<&Resource<crate::kinds::AuthorizationPolicySpec>> = r
        .authorization_policies
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.spec.attached())
        .collect();
    attached.sort_by(|a, b| a.name.cmp(&b.name));
    for ap in attached {
        let provider = match &ap.spec.provider {
            Some(p) if ap.spec.action == Some(ActionSpec::Custom) => {
                match authz_provider(r, &p.name) {
                    Ok(provider) => Some(provider),
                    Err(e) => {
                        report(out, ap, "spec.provider.name", e);
                        continue;
                    }
                }
            }
            _ => None,
        };
        let policy = L7Authz {
            policy: ap.name.to_string(),
            provider,
            action: match ap.spec.action {
                Some(ActionSpec::Deny) => AuthzAction::Deny,
                Some(ActionSpec::Audit) => AuthzAction::Audit,
                Some(ActionSpec::Custom) => AuthzAction::Custom,
                _ => AuthzAction::Allow,
            },
            dry_run: ap
                .annotations
                .get("istio.io/dry-run")
                .is_some_and(|v| v == "true"),
            rules: ap
                .spec
                .rules
                .iter()
                .map(|rule| L7AuthzRule {
                    from: rule
                        .from
                        .iter()
                        .map(|f| {
                            let s = &f.source;
                            L7Source {
                                principals: s.principals.clone(),
                                not_principals: s.not_principals.clone(),
                                namespaces: s.namespaces.clone(),
                                not_namespaces: s.not_namespaces.clone(),
                                request_principals: s.request_principals.clone(),
                                not_request_principals: s.not_request_principals.clone(),
                                ip_blocks: s.ip_blocks.clone(),
                                not_ip_blocks: s.not_ip_blocks.clone(),
                                remote_ip_blocks: s.remote_ip_blocks.clone(),
                                not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                            }
                        })
                        .collect(),
                    to: rule
                        .to
                        .iter()
                        .map(|t| {
                            let o = &t.operation;
                            L7Operation {
                                hosts: o.hosts.clone(),
                                not_hosts: o.not_hosts.clone(),
                                ports: o.ports.clone(),
                                not_ports: o.not_ports.clone(),
                                methods: o.methods.clone(),
                                not_methods: o.not_methods.clone(),
                                paths: o.paths.clone(),
                                not_paths: o.not_paths.clone(),
                            }
                        })
                        .collect(),
                    when: rule
                        .when
                        .iter()
                        .map(|c| L7Condition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let targets = ap.spec.target_ref.iter().chain(ap.spec.target_refs.iter());
        for target in targets {
            match attach_point(snapshot, &ap.name.namespace, target) {
                Ok(p) => p.authz.push(policy.clone()),
                Err(e) => report(out, ap, "spec.targetRef.name", e),
            }
        }
    }
}

/// Default bound on one external authorization check.
const AUTHZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The `Mesh` extension provider `name`, resolved: addresses joined,
/// durations parsed, an API-key Secret's hashes read.
fn authz_provider(r: &Resources, name: &str) -> Result<weft_core::l7::AuthzProvider, String> {
    use crate::kinds::mesh::parse_status;
    use weft_core::l7::{AuthzProvider, ProviderKind};
    let spec = r
        .meshes
        .iter()
        .flat_map(|m| m.spec.extension_providers.iter())
        .find(|p| p.name == name)
        .ok_or_else(|| {
            format!(
                "no extension provider {name:?}; declare it in the Mesh's spec.extensionProviders"
            )
        })?;
    let timeout = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| weft_core::duration::parse(t).ok())
            .unwrap_or(AUTHZ_TIMEOUT)
    };
    let status = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| parse_status(s).ok())
            .unwrap_or(403)
    };
    let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect::<Vec<_>>();
    let provider = |kind, timeout, fail_open, status_on_error| AuthzProvider {
        name: name.to_owned(),
        kind,
        timeout,
        fail_open,
        status_on_error,
    };
    if let Some(g) = &spec.envoy_ext_authz_grpc {
        return Ok(provider(
            ProviderKind::Grpc {
                address: join_host_port(&g.service, g.port),
            },
            timeout(&g.timeout),
            g.fail_open,
            status(&g.status_on_error),
        ));
    }
    if let Some(h) = &spec.envoy_ext_authz_http {
        return Ok(provider(
            ProviderKind::Http {
                address: join_host_port(&h.service, h.port),
                path_prefix: h.path_prefix.clone().unwrap_or_default(),
                include_headers: lower(&h.include_request_headers_in_check),
                headers_to_upstream: lower(&h.headers_to_upstream_on_allow),
                headers_to_downstream: lower(&h.headers_to_downstream_on_deny),
            },
            timeout(&h.timeout),
            h.fail_open,
            status(&h.status_on_error),
        ));
    }
    let Some(k) = &spec.api_key else {
        return Err(format!(
            "extension provider {name:?} is not an authorizer (envoyExtAuthzGrpc, envoyExtAuthzHttp or apiKey)"
        ));
    };
    let (ns, secret_name) = k
        .secret
        .split_once('/')
        .unwrap_or(("weft-system", &k.secret));
    let secret = r.secret(ns, secret_name).ok_or_else(|| {
        format!("extension provider {name:?} reads API keys from Secret {ns}/{secret_name}, which is not in the configuration")
    })?;
    let mut keys = std::collections::BTreeMap::new();
    for (client, value) in secret.spec.values() {
        let text = String::from_utf8_lossy(&value).trim().to_owned();
        let hash = text
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                format!("Secret {ns}/{secret_name} entry {client:?} is not sha256:<64 hex digits>; keys are stored hashed (weft hash-key <key>)")
            })?;
        keys.insert(hash.to_ascii_lowercase(), client);
    }
    Ok(provider(
        ProviderKind::ApiKey {
            header: k
                .header
                .as_deref()
                .unwrap_or("x-api-key")
                .to_ascii_lowercase(),
            query: k.query.clone(),
            keys,
            client_header: k
                .client_header
                .as_deref()
                .unwrap_or("x-weft-api-client")
                .to_ascii_lowercase(),
        },
        AUTHZ_TIMEOUT,
        false,
        401,
    ))
}

/// `host:port`, bracketing an IPv6 address.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `RequestAuthentication` → the accepted issuers of its target services.
fn translate_request_authentications(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use weft_core::l7::JwtIssuer;
    let mut all: Vec<&Resource<crate::kinds::RequestAuthenticationSpec>> = r
        .request_authentications
        .iter()
        .map(|p| p.as_ref())
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for ra in all {
        let issuers: Vec<JwtIssuer> = ra
            .spec
            .jwt_rules
            .iter()
            .map(|rule| JwtIssuer {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                jwks: rule.jwks.clone().unwrap_or_default(),
                jwks_uri: rule.jwks_uri.clone().unwrap_or_default(),
                fetch_timeout: rule
                    .timeout
                    .as_deref()
                    .and_then(|t| weft_core::duration::parse(t).ok())
                    .unwrap_or(weft_core::l7::JWKS_FETCH_TIMEOUT),
                from_headers: rule
                    .from_headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.prefix.clone()))
                    .collect(),
                from_params: rule.from_params.clone(),
                from_cookies: rule.from_cookies.clone(),
                forward_original_token: rule.forward_original_token,
                claim_to_headers: rule
                    .output_claim_to_headers
                    .iter()
                    .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                    .collect(),
            })
            .collect();
        let targets = ra.spec.target_ref.iter().chain(ra.spec.target_refs.iter());
        for (i, target) in targets.enumerate() {
            match attach_point(snapshot, &ra.name.namespace, target) {
                Ok(policy) => policy.jwt.extend(issuers.iter().cloned()),
                Err(e) => {
                    let field = if i == 0 && ra.spec.target_ref.is_some() {
                        "spec.targetRef.name".to_owned()
                    } else {
                        format!("spec.targetRefs[{i}].name")
                    };
                    report(out, ra, &field, e);
                }
            }
        }
    }
}

/// `RateLimitPolicy` → the target service's rate limits (one per service).
fn translate_rate_limits(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    use crate::kinds::rate_limit_policy::attribute;
    use weft_core::l7::{RateLimit, RateLimitService, RateRule};
    let mut policies: Vec<&Resource<crate::kinds::RateLimitPolicySpec>> =
        r.rate_limit_policies.iter().map(|p| p.as_ref()).collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    for p in policies {
        let Some(target) = &p.spec.target_ref else {
            continue;
        };
        if let Err(e) = attach_point(snapshot, &p.name.namespace, target) {
            report(out, p, "spec.targetRef.name", e);
            continue;
        }
        let rules = p
            .spec
            .rules
            .iter()
            .map(|rule| {
                // With a rate limit service the limits live there: zero here.
                let limit = rule.limit.clone().unwrap_or_default();
                RateRule {
                    name: rule.name.clone(),
                    when: rule.matches.iter().filter_map(|m| m.condition()).collect(),
                    count_by: rule.count_by.iter().filter_map(|c| attribute(c)).collect(),
                    requests: limit.requests,
                    period: parse_duration(Some(&limit.per)).unwrap_or_default(),
                    burst: limit.burst.unwrap_or(limit.requests),
                }
            })
            .collect();
        let service = p
            .spec
            .rate_limit_service
            .as_ref()
            .map(|s| RateLimitService {
                address: s.address.clone(),
                domain: s.domain.clone().unwrap_or_else(|| p.name.namespace.clone()),
                timeout: parse_duration(s.timeout.as_deref())
                    .unwrap_or(std::time::Duration::from_millis(250)),
            });
        let limit = RateLimit {
            policy: p.name.to_string(),
            service,
            redis: p.spec.redis.as_ref().map(|r| r.url.clone()),
            fail_open: p.spec.failure_mode.as_deref() != Some("closed"),
            rules,
        };
        let Ok(policy) = attach_point(snapshot, &p.name.namespace, target) else {
            continue;
        };
        if let Some(existing) = &policy.rate_limit {
            let existing = existing.policy.clone();
            report(
                out,
                p,
                "spec.targetRef",
                format!(
                    "{} is already limited by RateLimitPolicy {existing}; one policy per target",
                    target.name
                ),
            );
            continue;
        }
        policy.rate_limit = Some(limit);
    }
}

fn string_match(m: &StringMatchSpec) -> Option<StringMatch> {
    m.exact
        .clone()
        .map(StringMatch::Exact)
        .or_else(|| m.prefix.clone().map(StringMatch::Prefix))
        .or_else(|| m.regex.clone().map(StringMatch::Regex))
}

fn headers(ops: Option<&HeaderOpsSpec>) -> Headers {
    ops.map(|o| Headers {
        set: o.set.clone(),
        add: o.add.clone(),
        remove: o.remove.clone(),
    })
    .unwrap_or_default()
}

fn destination(
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

fn parse_duration(d: Option<&str>) -> Option<std::time::Duration> {
    d.and_then(|v| duration::parse(v).ok())
}

fn http_route(
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
            percent: spec.mirror_percentage.as_ref().map_or(100.0, |p| p.value),
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
            delay: f.delay.as_ref().and_then(|d| {
                Some((
                    d.percentage.as_ref().map_or(100.0, |p| p.value),
                    parse_duration(d.fixed_delay.as_deref())?,
                ))
            }),
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

fn traffic_policy(dr: &Resource<DestinationRuleSpec>, out: &mut Vec<Diagnostic>) -> TrafficPolicy {
    let mut policy = TrafficPolicy::default();
    let mut budget = RetryBudget::default();
    for (annotation, slot) in [
        (BUDGET_RATIO_ANNOTATION, &mut budget.ratio),
        (BUDGET_MIN_ANNOTATION, &mut budget.min_per_second),
    ] {
        if let Some(v) = dr.annotations.get(annotation) {
            match v.parse::<f64>() {
                Ok(x) if x >= 0.0 && x.is_finite() => *slot = x,
                _ => report(
                    out,
                    dr,
                    &format!("metadata.annotations.{annotation}"),
                    format!("{v:?} is not a non-negative number"),
                ),
            }
        }
    }
    let Some(tp) = &dr.spec.traffic_policy else {
        policy.retry_budget = budget;
        return policy;
    };
    if let Some(lb) = &tp.load_balancer {
        policy.load_balancer = match (lb.simple.as_deref(), &lb.consistent_hash) {
            (Some("ROUND_ROBIN"), _) => LoadBalancer::RoundRobin,
            (Some("RANDOM"), _) => LoadBalancer::Random,
            (_, Some(h)) => {
                LoadBalancer::ConsistentHash(match (&h.http_header_name, &h.http_cookie) {
                    (Some(name), _) => HashOn::Header(name.to_ascii_lowercase()),
                    (None, Some(c)) => HashOn::Cookie(c.name.clone()),
                    (None, None) => HashOn::SourceIp,
                })
            }
            _ => LoadBalancer::LeastRequest,
        };
    }
    if let Some(l) = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
    {
        policy.locality = weft_core::l7::LocalityLb {
            enabled: l.enabled.unwrap_or(true),
            failover: l
                .failover
                .iter()
                .map(|f| (f.from.clone(), f.to.clone()))
                .collect(),
            distribute: l
                .distribute
                .iter()
                .map(|d| {
                    (
                        d.from.clone(),
                        d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    )
                })
                .collect(),
            priority: std::collections::BTreeMap::new(),
        };
    }
    if let Some(pool) = &tp.connection_pool {
        let http = pool.http.clone().unwrap_or_default();
        policy.max_requests = http
            .http2_max_requests
            .or(pool.tcp.as_ref().and_then(|t| t.max_connections));
        policy.max_pending = http.http1_max_pending_requests;
        policy.max_retries = http.max_retries;
    }
    if let Some(od) = &tp.outlier_detection {
        policy.outlier = Some(Outlier {
            consecutive_5xx: Some(od.consecutive_5xx_errors.unwrap_or(5)),
            consecutive_gateway_errors: od.consecutive_gateway_errors,
            base_ejection_time: parse_duration(od.base_ejection_time.as_deref())
                .unwrap_or(std::time::Duration::from_secs(30)),
            max_ejection_percent: od.max_ejection_percent.unwrap_or(10),
        });
    }
    if let Some(b) = &tp.retry_budget {
        budget.concurrent_percent = Some(b.percent.as_ref().map_or(20.0, |p| p.value));
        budget.min_concurrency = b.min_retry_concurrency.unwrap_or(3);
    }
    policy.retry_budget = budget;
    policy
}

/// Gateway API `HTTPRoute`s with service parents (GAMMA) → routes of those
/// services. A service takes its routes from one API: a service that also
/// has `VirtualService` routes is reported.
pub(crate) fn translate_http_routes(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use crate::kinds::HttpRouteSpec;
    let from_virtual_services: std::collections::BTreeSet<NamespacedName> = snapshot
        .l7
        .iter()
        .filter(|(_, p)| !p.routes.is_empty())
        .map(|(n, _)| n.clone())
        .collect();
    // GRPCRoutes are HTTPRoutes whose matches are paths `/<service>/<method>`.
    let grpc: Vec<Resource<HttpRouteSpec>> =
        r.grpc_routes.iter().map(|g| as_http_route(g)).collect();
    let mut routes: Vec<&Resource<HttpRouteSpec>> = r
        .http_routes
        .iter()
        .map(|h| h.as_ref())
        .chain(grpc.iter())
        .collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for hr in routes {
        let mut converted = Vec::new();
        for (i, rule) in hr.spec.rules.iter().enumerate() {
            if let Some(route) = gateway_rule(snapshot, hr, i, rule, out) {
                converted.extend(per_matched_prefix(route));
            }
        }
        for (i, parent) in hr.spec.parent_refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            if parent.is_gateway() {
                attach_to_gateway(snapshot, hr, &field, parent, &converted, out);
                continue;
            }
            let Some(service) = service_ref(snapshot, hr, &field, parent, out) else {
                continue;
            };
            let name = service.name.clone();
            if from_virtual_services.contains(&name) {
                report(
                    out,
                    hr,
                    &field,
                    format!(
                        "{name} already has VirtualService routes; route a service with one API"
                    ),
                );
                continue;
            }
            snapshot
                .l7
                .entry(name)
                .or_default()
                .routes
                .extend(converted.iter().cloned());
        }
    }
}

/// Adds a route's rules to the Gateway `parent` names: with the route's
/// host names and listener (`sectionName`), each backend given a port
/// (the service's only port when the route leaves it out).
fn attach_to_gateway(
    snapshot: &mut Snapshot,
    hr: &Resource<crate::kinds::HttpRouteSpec>,
    field: &str,
    parent: &crate::kinds::http_route::RefSpec,
    converted: &[HttpRoute],
    out: &mut Vec<Diagnostic>,
) {
    let ns = parent.namespace.as_deref().unwrap_or(&hr.name.namespace);
    let wanted = NamespacedName::new(ns, &parent.name);
    let Some(gateway) = snapshot.gateways.get(&wanted) else {
        report(
            out,
            hr,
            &format!("{field}.name"),
            format!("no Gateway {wanted} in the configuration"),
        );
        return;
    };
    if let Some(section) = &parent.section_name
        && !gateway.listeners.iter().any(|l| &l.name == section)
    {
        report(
            out,
            hr,
            &format!("{field}.sectionName"),
            format!("Gateway {wanted} has no listener {section:?}"),
        );
        return;
    }
    if let Some(section) = &parent.section_name
        && gateway
            .listeners
            .iter()
            .any(|l| &l.name == section && l.passthrough.is_some())
    {
        report(
            out,
            hr,
            &format!("{field}.sectionName"),
            format!(
                "listener {section:?} passes connections through unopened; attach TLSRoutes or TCPRoutes to it"
            ),
        );
        return;
    }
    let mut routes = converted.to_vec();
    for (r, route) in routes.iter_mut().enumerate() {
        route.hosts = hr.spec.hostnames.clone();
        route.listeners = parent.section_name.iter().cloned().collect();
        for (b, d) in route.destinations.iter_mut().enumerate() {
            if d.port.is_some() {
                continue;
            }
            let only = snapshot
                .services
                .values()
                .find(|s| service_key(s) == d.service)
                .and_then(|s| match s.ports.as_slice() {
                    [one] => Some(one.number),
                    _ => None,
                });
            match only {
                Some(port) => d.port = Some(port),
                None => {
                    report(
                        out,
                        hr,
                        &format!("spec.rules[{r}].backendRefs[{b}].port"),
                        format!(
                            "{} has several ports; name one for routes at a Gateway",
                            d.service
                        ),
                    );
                    return;
                }
            }
        }
    }
    if let Some(g) = snapshot.gateways.get_mut(&wanted) {
        g.policy.routes.extend(routes);
    }
}

/// `Gateway`s → their listeners (certificates and CA bundles read from
/// Secrets), each checked to have its WorkloadEntry.
fn translate_gateways(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    use crate::kinds::gateway::{CLIENT_CERTIFICATE_OPTION, SecretRefSpec};
    use weft_core::l7::{CertificateKey, GatewayConfig, GatewayListener, ListenerTls};
    let mut gateways: Vec<&Resource<crate::kinds::GatewaySpec>> =
        r.gateways.iter().map(|g| g.as_ref()).collect();
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    for gw in gateways {
        let runs_as = snapshot.workloads.get(&gw.name).is_some_and(|w| w.gateway);
        if !runs_as {
            report(
                out,
                gw,
                "metadata.name",
                format!(
                    "no WorkloadEntry {} labelled weft.dev/gateway: \"true\" to run this gateway as",
                    gw.name
                ),
            );
            continue;
        }
        let secret = |field: &str, reference: &SecretRefSpec, out: &mut Vec<Diagnostic>| {
            let ns = reference.namespace.as_deref().unwrap_or(&gw.name.namespace);
            let found = r.secret(ns, &reference.name);
            if found.is_none() {
                report(
                    out,
                    gw,
                    field,
                    format!("no Secret {ns}/{} in the configuration", reference.name),
                );
            }
            found.map(|s| (format!("{ns}/{}", reference.name), s))
        };
        let mut listeners = Vec::new();
        let mut ok = true;
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let base = format!("spec.listeners[{i}].tls");
            let passthrough = match l.protocol.as_str() {
                "TLS" => Some(weft_core::l7::Passthrough::Tls),
                "TCP" => Some(weft_core::l7::Passthrough::Tcp),
                _ => None,
            };
            let tls = match &l.tls {
                None => None,
                Some(_) if passthrough.is_some() => None,
                Some(t) => {
                    let mut certificates = Vec::new();
                    for (c, reference) in t.certificate_refs.iter().enumerate() {
                        let field = format!("{base}.certificateRefs[{c}]");
                        let Some((name, s)) = secret(&field, reference, out) else {
                            ok = false;
                            continue;
                        };
                        match (s.spec.text("tls.crt"), s.spec.text("tls.key")) {
                            (Some(chain_pem), Some(key_pem)) => certificates.push(CertificateKey {
                                secret: name,
                                chain_pem,
                                key_pem,
                            }),
                            _ => {
                                ok = false;
                                report(
                                    out,
                                    gw,
                                    &field,
                                    format!("Secret {name} has no tls.crt and tls.key"),
                                );
                            }
                        }
                    }
                    let mut client_ca = None;
                    if let Some(v) = &t.frontend_validation {
                        let mut bundle = String::new();
                        for (c, reference) in v.ca_certificate_refs.iter().enumerate() {
                            let field = format!("{base}.frontendValidation.caCertificateRefs[{c}]");
                            let Some((name, s)) = secret(&field, reference, out) else {
                                ok = false;
                                continue;
                            };
                            match s.spec.text("ca.crt") {
                                Some(pem) => bundle.push_str(&pem),
                                None => {
                                    ok = false;
                                    report(out, gw, &field, format!("Secret {name} has no ca.crt"));
                                }
                            }
                        }
                        client_ca = Some(bundle);
                    }
                    Some(ListenerTls {
                        certificates,
                        client_ca,
                        client_certificate_optional: t
                            .options
                            .get(CLIENT_CERTIFICATE_OPTION)
                            .is_some_and(|v| v == "optional"),
                    })
                }
            };
            listeners.push(GatewayListener {
                name: l.name.clone(),
                port: u16::try_from(l.port).unwrap_or_default(),
                hostname: l.hostname.clone(),
                tls,
                passthrough,
            });
        }
        if ok {
            snapshot.gateways.insert(
                gw.name.clone(),
                GatewayConfig {
                    name: gw.name.to_string(),
                    listeners,
                    policy: L7Policy::default(),
                    tls_routes: Vec::new(),
                },
            );
        }
    }
}

/// `TLSRoute`s and `TCPRoute`s → the passthrough routes of their Gateways.
fn translate_tls_routes(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    use weft_core::l7::Passthrough;
    let mut tls: Vec<&Resource<crate::kinds::TlsRouteSpec>> =
        r.tls_routes.iter().map(|t| t.as_ref()).collect();
    tls.sort_by(|a, b| a.name.cmp(&b.name));
    for tr in tls {
        let s = &tr.spec;
        let route = (&s.parent_refs[..], &s.hostnames[..], &s.rules[..]);
        stream_route(snapshot, tr, route, Passthrough::Tls, out);
    }
    let mut tcp: Vec<&Resource<crate::kinds::TcpRouteSpec>> =
        r.tcp_routes.iter().map(|t| t.as_ref()).collect();
    tcp.sort_by(|a, b| a.name.cmp(&b.name));
    for tr in tcp {
        let s = &tr.spec;
        let route = (&s.parent_refs[..], &[][..], &s.rules[..]);
        stream_route(snapshot, tr, route, Passthrough::Tcp, out);
    }
}

/// One TLSRoute or TCPRoute — its (parents, host names, rules) — attached
/// to the listeners of `kind` it names.
fn stream_route<S: Spec>(
    snapshot: &mut Snapshot,
    res: &Resource<S>,
    (parents, hosts, rules): (
        &[crate::kinds::http_route::RefSpec],
        &[String],
        &[crate::kinds::tls_route::TlsRuleSpec],
    ),
    kind: weft_core::l7::Passthrough,
    out: &mut Vec<Diagnostic>,
) {
    use weft_core::l7::{Passthrough, TlsRoute};
    let Some(rule) = rules.first() else {
        return;
    };
    let mut destinations = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let field = format!("spec.rules[0].backendRefs[{b}]");
        let Some(service) = service_ref(snapshot, res, &field, backend, out) else {
            continue;
        };
        destinations.push(Destination {
            service: service_key(service),
            subset: None,
            port: backend.port.and_then(|p| u16::try_from(p).ok()),
            weight: backend.weight.unwrap_or(1),
        });
    }
    if destinations.len() != rule.backend_refs.len() {
        return;
    }
    let listener_kind = match kind {
        Passthrough::Tls => "TLS passthrough",
        Passthrough::Tcp => "TCP",
    };
    for (i, parent) in parents.iter().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        let ns = parent.namespace.as_deref().unwrap_or(&res.name.namespace);
        let wanted = NamespacedName::new(ns, &parent.name);
        let Some(gateway) = snapshot.gateways.get_mut(&wanted) else {
            report(
                out,
                res,
                &format!("{field}.name"),
                format!("no Gateway {wanted} in the configuration"),
            );
            continue;
        };
        let listeners: Vec<String> = gateway
            .listeners
            .iter()
            .filter(|l| l.passthrough == Some(kind))
            .filter(|l| parent.section_name.as_ref().is_none_or(|s| &l.name == s))
            .map(|l| l.name.clone())
            .collect();
        if listeners.is_empty() {
            let named = parent
                .section_name
                .as_ref()
                .map(|s| format!(" named {s:?}"))
                .unwrap_or_default();
            report(
                out,
                res,
                &field,
                format!("Gateway {wanted} has no {listener_kind} listener{named}"),
            );
            continue;
        }
        gateway.tls_routes.push(TlsRoute {
            name: res.name.to_string(),
            listeners,
            hosts: hosts.to_vec(),
            destinations: destinations.clone(),
        });
    }
}

/// A `GRPCRoute` in the shape of an `HTTPRoute` (same name and origin, so
/// problems point at the GRPCRoute's file and line).
fn as_http_route(
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
fn service_ref<'a, S: Spec>(
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
fn per_matched_prefix(route: HttpRoute) -> Vec<HttpRoute> {
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

fn gateway_rule(
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
