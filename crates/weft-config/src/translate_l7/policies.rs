//! Policies → each service's (and gateway's) request checks:
//! request-level `AuthorizationPolicy` and its CUSTOM providers,
//! `RequestAuthentication` (JWT issuers), `RateLimitPolicy`.

use weft_core::model::{NamespacedName, Snapshot};

use super::common::{attach_point, parse_duration, report};
use crate::diag::Diagnostic;
use crate::kinds::Resources;
use crate::resource::Resource;

/// `AuthorizationPolicy` attached with `targetRef(s)` → the request-level
/// policies of those services (enforced by their waypoints); one whose
/// `selector` picks gateway or waypoint workloads → those proxies'.
pub(crate) fn translate_waypoint_policies(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use crate::kinds::authorization_policy::ActionSpec;
    use weft_core::l7::{AuthzAction, L7Authz, L7AuthzRule, L7Condition, L7Operation, L7Source};
    // Attached with targetRef, or by a selector that picks proxies.
    let mut attached: Vec<&Resource<crate::kinds::AuthorizationPolicySpec>> = r
        .authorization_policies
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.spec.attached() || p.spec.selector.is_some())
        .collect();
    attached.sort_by(|a, b| a.name.cmp(&b.name));
    for ap in attached {
        let proxies = crate::node_authz::reach(
            snapshot,
            &ap.name.namespace,
            ap.spec.selector.as_ref().map(|s| &s.match_labels),
        )
        .proxies;
        if !ap.spec.attached() && proxies.is_empty() {
            continue;
        }
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
        for proxy in proxies {
            attach_to_proxy(snapshot, ap, &proxy, &policy, out);
        }
    }
}

/// A `selector` policy that picks gateway or waypoint workload `proxy`:
/// the gateway's policy, or that of every service the waypoint serves.
fn attach_to_proxy(
    snapshot: &mut Snapshot,
    ap: &Resource<crate::kinds::AuthorizationPolicySpec>,
    proxy: &NamespacedName,
    policy: &weft_core::l7::L7Authz,
    out: &mut Vec<Diagnostic>,
) {
    if snapshot.workloads.get(proxy).is_some_and(|w| w.gateway) {
        match snapshot.gateways.get_mut(proxy) {
            Some(g) => g.policy.authz.push(policy.clone()),
            None => report(
                out,
                ap,
                "spec.selector",
                format!("selects gateway workload {proxy}, which serves no Gateway"),
            ),
        }
        return;
    }
    let served: Vec<NamespacedName> = snapshot
        .services
        .values()
        .filter(|s| s.waypoint.as_ref() == Some(proxy))
        .map(|s| s.name.clone())
        .collect();
    if served.is_empty() {
        super::common::warn(
            out,
            ap,
            "spec.selector",
            format!("selects waypoint {proxy}, which no service uses yet: no effect"),
        );
    }
    for service in served {
        snapshot
            .l7
            .entry(service)
            .or_default()
            .authz
            .push(policy.clone());
    }
}

/// Default bound on one external authorization check.
pub(crate) const AUTHZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The `Mesh` extension provider `name`, resolved: addresses joined,
/// durations parsed, an API-key Secret's hashes read.
pub(crate) fn authz_provider(
    r: &Resources,
    name: &str,
) -> Result<weft_core::l7::AuthzProvider, String> {
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
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `RequestAuthentication` → the accepted issuers of its target services.
pub(crate) fn translate_request_authentications(
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
        if let Some(selector) = &ra.spec.selector {
            jwt_by_selector(snapshot, ra, &selector.match_labels, &issuers, out);
        }
    }
}

/// A `selector` `RequestAuthentication`: the gateways and waypoints it
/// picks check the tokens; other workloads cannot (a warning says so).
fn jwt_by_selector(
    snapshot: &mut Snapshot,
    ra: &Resource<crate::kinds::RequestAuthenticationSpec>,
    selector: &std::collections::BTreeMap<String, String>,
    issuers: &[weft_core::l7::JwtIssuer],
    out: &mut Vec<Diagnostic>,
) {
    let reach = crate::node_authz::reach(snapshot, &ra.name.namespace, Some(selector));
    if reach.proxies.is_empty() && reach.workloads.is_empty() {
        super::common::warn(
            out,
            ra,
            "spec.selector",
            "selects no workload: no effect".into(),
        );
    }
    if !reach.workloads.is_empty() {
        let names: Vec<String> = reach.workloads.iter().map(ToString::to_string).collect();
        super::common::warn(
            out,
            ra,
            "spec.selector",
            format!(
                "no effect on {}: node proxies do not read requests, so they check no JWTs (as in Istio ambient); attach with targetRef to the service for its waypoint to check them",
                names.join(", ")
            ),
        );
    }
    for proxy in reach.proxies {
        let served: Vec<NamespacedName> = snapshot
            .services
            .values()
            .filter(|s| s.waypoint.as_ref() == Some(&proxy))
            .map(|s| s.name.clone())
            .collect();
        if let Some(g) = snapshot.gateways.get_mut(&proxy) {
            g.policy.jwt.extend(issuers.iter().cloned());
        }
        for service in served {
            snapshot
                .l7
                .entry(service)
                .or_default()
                .jwt
                .extend(issuers.iter().cloned());
        }
    }
}

/// `RateLimitPolicy` → the target service's rate limits (one per service).
pub(crate) fn translate_rate_limits(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
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
