//! Istio `AuthorizationPolicy` (`security.istio.io/v1`): who may call a
//! workload. Attached with `targetRef`, a service's waypoint (or a
//! Gateway) enforces all of it. With a `selector` or namespace-wide, the
//! destination node enforces the L4 part — principals, namespaces, IP
//! blocks, ports, `when` on L4 attributes — and reads request-level
//! fields the fail-safe way Istio ambient does (`node_authz`); a selector
//! that picks gateway or waypoint workloads attaches the policy to them.

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
    /// The service whose waypoint enforces this policy (request-level
    /// fields need one).
    pub target_ref: Option<crate::kinds::http_route::RefSpec>,
    /// Several services.
    #[serde(default)]
    pub target_refs: Vec<crate::kinds::http_route::RefSpec>,
    /// The authorizer of a CUSTOM policy (a `Mesh` extension provider).
    pub provider: Option<ProviderSpec>,
}

/// `spec.provider`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ProviderSpec {
    /// The `Mesh` `extensionProviders[].name`.
    pub name: String,
}

impl AuthorizationPolicySpec {
    /// Whether a waypoint enforces it (it names services).
    pub fn attached(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }
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
    /// Log only (waypoints).
    #[serde(rename = "AUDIT")]
    Audit,
    /// Ask an external authorizer (waypoints and gateways).
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
    /// The original client's IP or CIDR (waypoints and gateways: the
    /// downstream address, as Istio with no trusted proxies).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// JWT `iss/sub` values (waypoints).
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
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
    /// Hosts (waypoints).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Methods (waypoints).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths, with `*` wildcards (waypoints).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_paths: Vec<String>,
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

impl Spec for AuthorizationPolicySpec {
    const KIND: &'static str = "AuthorizationPolicy";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        let attached = self.attached();
        if attached && self.selector.is_some() {
            ctx.error("spec.selector", "use selector or targetRef, not both");
        }
        // Request-level fields without targetRef are read the way Istio
        // ambient reads them (the node's share: `node_authz`; a selector
        // that picks gateways or waypoints: enforced there in full).
        let node_wide = !attached && self.selector.is_none();
        match self.action {
            Some(ActionSpec::Audit) if node_wide => ctx.error(
                "spec.action",
                "AUDIT is enforced by waypoints: attach the policy with targetRef (or select a waypoint), or use ALLOW or DENY",
            ),
            Some(ActionSpec::Custom) if node_wide => ctx.error(
                "spec.action",
                "CUSTOM is enforced by waypoints and gateways: attach the policy with targetRef (or select a gateway)",
            ),
            Some(ActionSpec::Custom) if self.provider.is_none() => ctx.error(
                "spec.provider",
                "a CUSTOM policy names its authorizer: provider: {name: <Mesh extensionProviders name>}",
            ),
            _ => {}
        }
        if self.provider.is_some() && self.action != Some(ActionSpec::Custom) {
            ctx.error("spec.provider", "only CUSTOM policies name a provider");
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
                    ("remoteIpBlocks", &from.source.remote_ip_blocks),
                    ("notRemoteIpBlocks", &from.source.not_remote_ip_blocks),
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
                // Request-level keys: checked by proxies; the node's
                // share drops them (`node_authz`).
                if attached
                    || (AuthzKey::parse(&cond.key).is_none()
                        && weft_core::l7::is_when_key(&cond.key))
                {
                    if !weft_core::l7::is_when_key(&cond.key) {
                        ctx.error(
                            &format!("{base}.key"),
                            format!(
                                "{:?} is not an attribute weft can check; use one of {}",
                                cond.key,
                                weft_core::l7::WHEN_KEYS
                            ),
                        );
                    }
                    continue;
                }
                match AuthzKey::parse(&cond.key) {
                    None => {
                        let known: Vec<&str> = AuthzKey::ALL.iter().map(|(n, _)| *n).collect();
                        ctx.error(
                            &format!("{base}.key"),
                            format!(
                                "{:?} is not an attribute weft can check; use one of {} (nodes), {} (waypoints and gateways)",
                                cond.key,
                                known.join(", "),
                                weft_core::l7::WHEN_KEYS
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
