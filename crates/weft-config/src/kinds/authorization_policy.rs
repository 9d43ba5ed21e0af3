//! Istio `AuthorizationPolicy` (`security.istio.io/v1`): who may call a
//! workload. The node proxy enforces the L4 subset — principals,
//! namespaces, IP blocks, ports, and `when` conditions on L4 attributes.
//! Request-level fields (methods, paths, hosts, request principals) need a
//! waypoint and are rejected by name until weft has one.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_core::model::AuthzKey;

use crate::diag::Ctx;
use crate::kinds::service_entry::parse_net;
use crate::resource::Spec;

/// `spec` of an `AuthorizationPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace it applies to (all when absent).
    pub selector: Option<Selector>,
    /// `ALLOW` (default) or `DENY`.
    pub action: Option<ActionSpec>,
    /// Rules, OR-ed.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// `spec.selector`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Labels the workload must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `spec.action`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ActionSpec {
    /// Allow matching traffic.
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny matching traffic.
    #[serde(rename = "DENY")]
    Deny,
    /// Log only (not supported yet).
    #[serde(rename = "AUDIT")]
    Audit,
    /// External authorization (not supported yet).
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// One rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RuleSpec {
    /// Sources, OR-ed.
    #[serde(default)]
    pub from: Vec<FromSpec>,
    /// Operations, OR-ed.
    #[serde(default)]
    pub to: Vec<ToSpec>,
    /// Conditions, AND-ed.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FromSpec {
    /// The source.
    #[serde(default)]
    pub source: SourceSpec,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Peer identities without `spiffe://`, e.g. `cluster.local/ns/shop/sa/orders`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Source namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Source IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// IPs or CIDRs that must not match.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ToSpec {
    /// The operation.
    #[serde(default)]
    pub operation: OperationSpec,
}

/// `rules[].to[].operation` (L4 fields).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    /// Destination ports, as strings in Istio's API.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default)]
    pub not_ports: Vec<String>,
}

/// `rules[].when[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSpec {
    /// The attribute, e.g. `source.namespace`.
    pub key: String,
    /// Values, OR-ed.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

const NEEDS_WAYPOINT: &str = "request-level (L7) authorization in waypoints is not supported yet; use L4 fields (principals, namespaces, ipBlocks, ports)";

impl Spec for AuthorizationPolicySpec {
    const KIND: &'static str = "AuthorizationPolicy";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        ("spec.rules.from.source.requestPrincipals", NEEDS_WAYPOINT),
        (
            "spec.rules.from.source.notRequestPrincipals",
            NEEDS_WAYPOINT,
        ),
        ("spec.rules.from.source.remoteIpBlocks", NEEDS_WAYPOINT),
        ("spec.rules.from.source.notRemoteIpBlocks", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.hosts", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.notHosts", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.methods", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.notMethods", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.paths", NEEDS_WAYPOINT),
        ("spec.rules.to.operation.notPaths", NEEDS_WAYPOINT),
        (
            "spec.provider",
            "CUSTOM actions (external authorization) are not supported yet",
        ),
        (
            "spec.targetRef",
            "policies attached with targetRef need a waypoint; use selector",
        ),
        (
            "spec.targetRefs",
            "policies attached with targetRefs need a waypoint; use selector",
        ),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        match self.action {
            Some(ActionSpec::Audit) => ctx.error(
                "spec.action",
                "AUDIT is not supported yet; use ALLOW or DENY",
            ),
            Some(ActionSpec::Custom) => ctx.error(
                "spec.action",
                "CUSTOM (external authorization) is not supported yet",
            ),
            _ => {}
        }
        if let Some(selector) = &self.selector
            && selector.match_labels.is_empty()
        {
            ctx.error(
                "spec.selector.matchLabels",
                "an empty selector selects nothing; omit selector to apply to the whole namespace",
            );
        }
        for (r, rule) in self.rules.iter().enumerate() {
            for (f, from) in rule.from.iter().enumerate() {
                let base = format!("spec.rules[{r}].from[{f}].source");
                for (field, list) in [
                    ("ipBlocks", &from.source.ip_blocks),
                    ("notIpBlocks", &from.source.not_ip_blocks),
                ] {
                    for (i, block) in list.iter().enumerate() {
                        if parse_net(block).is_none() {
                            ctx.error(
                                &format!("{base}.{field}[{i}]"),
                                format!("{block:?} is not an IP address or CIDR"),
                            );
                        }
                    }
                }
            }
            for (t, to) in rule.to.iter().enumerate() {
                let base = format!("spec.rules[{r}].to[{t}].operation");
                for (field, list) in [
                    ("ports", &to.operation.ports),
                    ("notPorts", &to.operation.not_ports),
                ] {
                    for (i, port) in list.iter().enumerate() {
                        if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                            ctx.error(
                                &format!("{base}.{field}[{i}]"),
                                format!("{port:?} is not a valid port (1-65535)"),
                            );
                        }
                    }
                }
            }
            for (w, cond) in rule.when.iter().enumerate() {
                let base = format!("spec.rules[{r}].when[{w}]");
                match AuthzKey::parse(&cond.key) {
                    None => {
                        let known: Vec<&str> = AuthzKey::ALL.iter().map(|(n, _)| *n).collect();
                        ctx.error(
                            &format!("{base}.key"),
                            format!(
                                "{:?} is not an L4 attribute weft can check; use one of {}",
                                cond.key,
                                known.join(", ")
                            ),
                        );
                    }
                    Some(key) => {
                        for (field, list) in
                            [("values", &cond.values), ("notValues", &cond.not_values)]
                        {
                            for (i, v) in list.iter().enumerate() {
                                let ok = match key {
                                    AuthzKey::SourceIp | AuthzKey::DestinationIp => {
                                        parse_net(v).is_some()
                                    }
                                    AuthzKey::DestinationPort => v.parse::<u16>().is_ok(),
                                    _ => !v.is_empty(),
                                };
                                if !ok {
                                    ctx.error(
                                        &format!("{base}.{field}[{i}]"),
                                        format!("{v:?} is not a valid value for {}", cond.key),
                                    );
                                }
                            }
                        }
                        if cond.values.is_empty() && cond.not_values.is_empty() {
                            ctx.error(&base, "a condition needs values or notValues");
                        }
                    }
                }
            }
        }
    }
}
