//! `AuthorizationPolicy` (weft's model) → Istio's `istio.security.Authorization`
//! as ztunnel receives it: rules of clauses (AND) of matches (OR).
//! Principals travel without `spiffe://`; `*` wildcards become prefix,
//! suffix or presence matches.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::model::{AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzKey};

use crate::proto::security::{self as sec, string_match::MatchType};

/// A value with `*` wildcards as a string match.
pub fn string_match(value: &str) -> sec::StringMatch {
    let match_type = if value == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = value.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = value.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(value.to_owned())
    };
    sec::StringMatch {
        match_type: Some(match_type),
    }
}

fn address(net: &IpNet) -> sec::Address {
    let address = match net.addr() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    sec::Address {
        address,
        length: u32::from(net.prefix_len()),
    }
}

fn nets(values: &[String]) -> Vec<sec::Address> {
    values
        .iter()
        .filter_map(|v| {
            v.parse::<IpNet>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .map(|n| address(&n))
        .collect()
}

fn condition(c: &AuthzCondition) -> sec::Match {
    let sm = |list: &[String]| list.iter().map(|v| string_match(v)).collect::<Vec<_>>();
    let ports = |list: &[String]| {
        list.iter()
            .filter_map(|v| v.parse::<u32>().ok())
            .collect::<Vec<_>>()
    };
    let mut m = sec::Match::default();
    match c.key {
        AuthzKey::SourceIp => {
            m.source_ips = nets(&c.values);
            m.not_source_ips = nets(&c.not_values);
        }
        AuthzKey::SourceNamespace => {
            m.namespaces = sm(&c.values);
            m.not_namespaces = sm(&c.not_values);
        }
        AuthzKey::SourcePrincipal => {
            m.principals = sm(&c.values);
            m.not_principals = sm(&c.not_values);
        }
        AuthzKey::DestinationIp => {
            m.destination_ips = nets(&c.values);
            m.not_destination_ips = nets(&c.not_values);
        }
        AuthzKey::DestinationPort => {
            m.destination_ports = ports(&c.values);
            m.not_destination_ports = ports(&c.not_values);
        }
    }
    m
}

/// Translates one policy.
pub fn to_proto(policy: &AuthorizationPolicy) -> sec::Authorization {
    let sm = |list: &[String]| list.iter().map(|v| string_match(v)).collect::<Vec<_>>();
    let rules = policy
        .rules
        .iter()
        .map(|rule| {
            let mut clauses = Vec::new();
            if !rule.from.is_empty() {
                clauses.push(sec::Clause {
                    matches: rule
                        .from
                        .iter()
                        .map(|s| sec::Match {
                            namespaces: sm(&s.namespaces),
                            not_namespaces: sm(&s.not_namespaces),
                            principals: sm(&s.principals),
                            not_principals: sm(&s.not_principals),
                            source_ips: s.ip_blocks.iter().map(address).collect(),
                            not_source_ips: s.not_ip_blocks.iter().map(address).collect(),
                            ..Default::default()
                        })
                        .collect(),
                });
            }
            if !rule.to.is_empty() {
                clauses.push(sec::Clause {
                    matches: rule
                        .to
                        .iter()
                        .map(|o| sec::Match {
                            destination_ports: o.ports.iter().map(|p| u32::from(*p)).collect(),
                            not_destination_ports: o
                                .not_ports
                                .iter()
                                .map(|p| u32::from(*p))
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                });
            }
            for c in &rule.when {
                clauses.push(sec::Clause {
                    matches: vec![condition(c)],
                });
            }
            sec::Rule { clauses }
        })
        .collect();
    sec::Authorization {
        name: policy.name.name.clone(),
        namespace: policy.name.namespace.clone(),
        scope: if policy.selector.is_some() {
            sec::Scope::WorkloadSelector as i32
        } else {
            sec::Scope::Namespace as i32
        },
        action: match policy.action {
            AuthzAction::Allow => sec::Action::Allow as i32,
            AuthzAction::Deny => sec::Action::Deny as i32,
        },
        rules,
    }
}
