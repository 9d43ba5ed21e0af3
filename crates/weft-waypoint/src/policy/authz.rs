//! Request-level authorization in waypoints (Istio `AuthorizationPolicy`
//! attached to a service): a pure decision over what is known about a
//! request — the caller's identity and address, the JWT's principal and
//! claims, host, port, method, path, headers. DENY policies are checked
//! first, then ALLOW ones (if any applies, one must match). AUDIT policies
//! only log. A dry-run policy is evaluated and logged, never enforced.
//!
//! Strings match as Istio's do: exact, `prefix*`, `*suffix`, or `*` (any
//! non-empty value).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
pub use weft_core::l7::{AuthzAction, L7Authz, L7AuthzRule, L7Condition, L7Operation, L7Source};

/// What is known about one request.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The caller's SPIFFE identity without `spiffe://`, if proven.
    pub principal: Option<&'a str>,
    /// The caller's namespace, if proven.
    pub namespace: Option<&'a str>,
    /// The caller's address.
    pub source_ip: Option<IpAddr>,
    /// The JWT's `iss/sub`, if one verified.
    pub request_principal: Option<&'a str>,
    /// The JWT's claims.
    pub claims: Option<&'a HashMap<String, String>>,
    /// Host (authority).
    pub host: &'a str,
    /// Destination (service) port.
    pub port: u16,
    /// Method.
    pub method: &'a str,
    /// Path (without the query).
    pub path: &'a str,
    /// Headers.
    pub headers: Option<&'a http::HeaderMap>,
}

/// Istio's string match: exact, `prefix*`, `*suffix`, `*`.
pub fn string_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

fn any(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

/// `values` must match (when set) and `not_values` must not.
fn field(values: &[String], not_values: &[String], value: Option<&str>) -> bool {
    (values.is_empty() || any(values, value)) && !any(not_values, value)
}

fn in_blocks(blocks: &[String], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| {
        blocks.iter().any(|b| {
            b.parse::<IpNet>()
                .map(|n| n.contains(&ip))
                .or_else(|_| b.parse::<IpAddr>().map(|a| a == ip))
                .unwrap_or(false)
        })
    })
}

fn source_matches(s: &L7Source, r: &Request<'_>) -> bool {
    field(&s.principals, &s.not_principals, r.principal)
        && field(&s.namespaces, &s.not_namespaces, r.namespace)
        && field(
            &s.request_principals,
            &s.not_request_principals,
            r.request_principal,
        )
        && (s.ip_blocks.is_empty() || in_blocks(&s.ip_blocks, r.source_ip))
        && !in_blocks(&s.not_ip_blocks, r.source_ip)
        // The remote (original client) address is the downstream one, as
        // Istio's with no trusted proxies.
        && (s.remote_ip_blocks.is_empty() || in_blocks(&s.remote_ip_blocks, r.source_ip))
        && !in_blocks(&s.not_remote_ip_blocks, r.source_ip)
}

fn operation_matches(o: &L7Operation, r: &Request<'_>) -> bool {
    let port = r.port.to_string();
    field(&o.hosts, &o.not_hosts, Some(r.host))
        && field(&o.ports, &o.not_ports, Some(&port))
        && field(&o.methods, &o.not_methods, Some(r.method))
        && field(&o.paths, &o.not_paths, Some(r.path))
}

/// The value of a `when` key for this request.
fn attribute(key: &str, r: &Request<'_>) -> Option<String> {
    let bracket = |prefix: &str| {
        key.strip_prefix(prefix)?
            .strip_suffix(']')
            .map(str::to_owned)
    };
    if let Some(claim) = bracket("request.auth.claims[") {
        return r.claims?.get(&claim).cloned();
    }
    if let Some(header) = bracket("request.headers[") {
        return r
            .headers?
            .get(header.to_ascii_lowercase().as_str())?
            .to_str()
            .ok()
            .map(str::to_owned);
    }
    match key {
        "request.auth.principal" => r.request_principal.map(str::to_owned),
        "source.principal" => r.principal.map(str::to_owned),
        "source.namespace" => r.namespace.map(str::to_owned),
        "source.ip" | "remote.ip" => r.source_ip.map(|ip| ip.to_string()),
        "destination.port" => Some(r.port.to_string()),
        _ => None,
    }
}

fn condition_holds(c: &L7Condition, r: &Request<'_>) -> bool {
    let v = attribute(&c.key, r);
    let v = v.as_deref();
    let ip_like = matches!(c.key.as_str(), "source.ip" | "remote.ip");
    if ip_like {
        let ip = v.and_then(|s| s.parse().ok());
        return (c.values.is_empty() || in_blocks(&c.values, ip)) && !in_blocks(&c.not_values, ip);
    }
    field(&c.values, &c.not_values, v)
}

/// The index of the first rule of `p` that matches the request.
fn matching_rule(p: &L7Authz, r: &Request<'_>) -> Option<usize> {
    p.rules.iter().position(|rule| {
        (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, r)))
            && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, r)))
            && rule.when.iter().all(|c| condition_holds(c, r))
    })
}

/// A decision and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The deciding policy (`namespace/name`), if one decided.
    pub policy: Option<String>,
    /// Its matching rule.
    pub rule: Option<usize>,
    /// Policies in dry-run or AUDIT mode that matched, with what they
    /// would have done (for the log).
    pub shadow: Vec<String>,
}

/// The CUSTOM policies whose rules match the request, in order: each
/// one's provider must allow it before DENY and ALLOW policies are
/// looked at (dry-run ones are left out: the caller logs nothing for
/// them, as their provider is never asked).
pub fn custom<'a>(policies: &'a [L7Authz], r: &Request<'_>) -> Vec<&'a L7Authz> {
    policies
        .iter()
        .filter(|p| p.action == AuthzAction::Custom && !p.dry_run && p.provider.is_some())
        .filter(|p| matching_rule(p, r).is_some())
        .collect()
}

/// Decides a request against the policies of its service (CUSTOM ones
/// are [`custom`]'s business).
pub fn decide(policies: &[L7Authz], r: &Request<'_>) -> Decision {
    let mut shadow = Vec::new();
    let enforced: Vec<&L7Authz> = policies
        .iter()
        .filter(|p| {
            let observe_only = p.dry_run || p.action == AuthzAction::Audit;
            if observe_only && matching_rule(p, r).is_some() {
                shadow.push(format!(
                    "{} ({:?}{})",
                    p.policy,
                    p.action,
                    if p.dry_run { ", dry-run" } else { "" }
                ));
            }
            !observe_only
        })
        .collect();
    let decision = |allowed, p: Option<&L7Authz>, rule, shadow| Decision {
        allowed,
        policy: p.map(|p| p.policy.clone()),
        rule,
        shadow,
    };
    if let Some((p, rule)) = enforced
        .iter()
        .filter(|p| p.action == AuthzAction::Deny)
        .find_map(|p| Some((*p, matching_rule(p, r)?)))
    {
        return decision(false, Some(p), Some(rule), shadow);
    }
    let allow: Vec<&&L7Authz> = enforced
        .iter()
        .filter(|p| p.action == AuthzAction::Allow)
        .collect();
    if allow.is_empty() {
        return decision(true, None, None, shadow);
    }
    match allow.iter().find_map(|p| Some((**p, matching_rule(p, r)?))) {
        Some((p, rule)) => decision(true, Some(p), Some(rule), shadow),
        None => decision(false, None, None, shadow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, action: AuthzAction, rules: Vec<L7AuthzRule>) -> L7Authz {
        L7Authz {
            policy: format!("shop/{name}"),
            action,
            dry_run: false,
            rules,
            provider: None,
        }
    }

    #[test]
    fn wildcards() {
        for (pattern, value, want) in [
            ("*", "x", true),
            ("*", "", false),
            ("/api/*", "/api/x", true),
            ("*.example.com", "a.example.com", true),
            ("GET", "POST", false),
        ] {
            assert_eq!(string_matches(pattern, value), want, "{pattern} {value}");
        }
    }

    #[test]
    fn table() {
        let jwt_required = policy(
            "jwt-required",
            AuthzAction::Allow,
            vec![L7AuthzRule {
                from: vec![L7Source {
                    request_principals: vec!["https://issuer.example/*".into()],
                    ..L7Source::default()
                }],
                when: vec![L7Condition {
                    key: "request.auth.claims[group]".into(),
                    values: vec!["admins".into()],
                    not_values: vec![],
                }],
                ..L7AuthzRule::default()
            }],
        );
        let no_delete = policy(
            "no-delete",
            AuthzAction::Deny,
            vec![L7AuthzRule {
                to: vec![L7Operation {
                    methods: vec!["DELETE".into()],
                    paths: vec!["/orders/*".into()],
                    ..L7Operation::default()
                }],
                ..L7AuthzRule::default()
            }],
        );
        let admins: HashMap<String, String> = [("group".to_owned(), "admins".to_owned())].into();
        let users: HashMap<String, String> = [("group".to_owned(), "users".to_owned())].into();
        let req = |principal: Option<&'static str>,
                   claims,
                   method: &'static str,
                   path: &'static str| Request {
            request_principal: principal,
            claims,
            method,
            path,
            host: "b",
            port: 80,
            ..Request::default()
        };
        let policies = [jwt_required, no_delete];
        // (what, request, allowed, deciding policy)
        let cases = [
            ("no token", req(None, None, "GET", "/"), false, None),
            (
                "admin",
                req(
                    Some("https://issuer.example/alice"),
                    Some(&admins),
                    "GET",
                    "/",
                ),
                true,
                Some("shop/jwt-required"),
            ),
            (
                "wrong group",
                req(Some("https://issuer.example/bob"), Some(&users), "GET", "/"),
                false,
                None,
            ),
            (
                "other issuer",
                req(Some("https://elsewhere/alice"), Some(&admins), "GET", "/"),
                false,
                None,
            ),
            (
                "deny wins",
                req(
                    Some("https://issuer.example/alice"),
                    Some(&admins),
                    "DELETE",
                    "/orders/1",
                ),
                false,
                Some("shop/no-delete"),
            ),
        ];
        for (what, r, allowed, by) in cases {
            let d = decide(&policies, &r);
            assert_eq!((d.allowed, d.policy.as_deref()), (allowed, by), "{what}");
        }
        // Dry run: logged, not enforced.
        let mut dry = policies.to_vec();
        dry[0].dry_run = true;
        let d = decide(&dry, &req(None, None, "GET", "/"));
        assert!(d.allowed);
        assert!(
            d.shadow.is_empty(),
            "a non-matching dry-run policy leaves no trace"
        );
        assert!(
            weft_core::l7::is_when_key("request.auth.claims[tier]")
                && !weft_core::l7::is_when_key("request.time")
        );
    }

    #[test]
    fn remote_ip_blocks_and_custom_matching() {
        let office = policy(
            "office-only",
            AuthzAction::Allow,
            vec![L7AuthzRule {
                from: vec![L7Source {
                    remote_ip_blocks: vec!["203.0.113.0/24".into()],
                    ..L7Source::default()
                }],
                ..L7AuthzRule::default()
            }],
        );
        let at = |ip: &str| Request {
            source_ip: ip.parse().ok(),
            host: "h",
            method: "GET",
            path: "/partner/x",
            ..Request::default()
        };
        assert!(decide(std::slice::from_ref(&office), &at("203.0.113.7")).allowed);
        assert!(!decide(std::slice::from_ref(&office), &at("198.51.100.1")).allowed);
        // CUSTOM policies are found by their rules, and never decide here.
        let mut keys = policy(
            "keys",
            AuthzAction::Custom,
            vec![L7AuthzRule {
                to: vec![L7Operation {
                    paths: vec!["/partner/*".into()],
                    ..L7Operation::default()
                }],
                ..L7AuthzRule::default()
            }],
        );
        assert!(
            custom(std::slice::from_ref(&keys), &at("10.0.0.1")).is_empty(),
            "no provider"
        );
        keys.provider = Some(weft_core::l7::AuthzProvider {
            name: "k".into(),
            kind: weft_core::l7::ProviderKind::Grpc {
                address: "127.0.0.1:1".into(),
            },
            timeout: std::time::Duration::from_secs(1),
            fail_open: false,
            status_on_error: 403,
        });
        assert_eq!(
            custom(std::slice::from_ref(&keys), &at("10.0.0.1")).len(),
            1
        );
        assert!(decide(std::slice::from_ref(&keys), &at("10.0.0.1")).allowed);
    }
}
