//! `AuthorizationPolicy` → the policy a destination node enforces, the
//! fail-safe way Istio ambient's ztunnel does for `selector` (or
//! namespace-wide) policies. A node sees connections, not requests, so
//! request-level attributes — `hosts`, `methods`, `paths` (and their
//! `not*`) in `to`, `requestPrincipals`, `remoteIpBlocks` (and `not*`) in
//! `from`, `when` keys other than `source.ip`, `source.namespace`,
//! `source.principal`, `destination.ip`, `destination.port` — cannot be
//! checked there:
//!
//! - an `ALLOW` rule naming any of them never matches (it allows less);
//! - a `DENY` rule is kept without them (it denies more).
//!
//! Either way the node is never more permissive than the policy. Each
//! such rule yields a warning saying what the node does instead and how
//! to have it enforced as written (attach it with `targetRef`).
//!
//! A policy whose `selector` picks gateway or waypoint workloads is
//! enforced by those proxies, in full, at L7 (`translate_l7`).

use weft_core::model::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzKey, AuthzOperation, AuthzRule,
    AuthzSource, Snapshot,
};

use crate::kinds::AuthorizationPolicySpec;
use crate::kinds::authorization_policy::{ActionSpec, RuleSpec};
use crate::kinds::service_entry::parse_net;
use crate::resource::Resource;

/// A warning about one rule: the field it points at, and the message.
pub(crate) type RuleWarning = (String, String);

/// The request-level attributes a rule names, as `(field path, name)`.
pub(crate) fn request_level(r: usize, rule: &RuleSpec) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (t, to) in rule.to.iter().enumerate() {
        let o = &to.operation;
        for (name, list) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !list.is_empty() {
                found.push((
                    format!("spec.rules[{r}].to[{t}].operation.{name}"),
                    name.to_owned(),
                ));
            }
        }
    }
    for (f, from) in rule.from.iter().enumerate() {
        let s = &from.source;
        for (name, list) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !list.is_empty() {
                found.push((
                    format!("spec.rules[{r}].from[{f}].source.{name}"),
                    name.to_owned(),
                ));
            }
        }
    }
    for (w, cond) in rule.when.iter().enumerate() {
        if AuthzKey::parse(&cond.key).is_none() {
            found.push((format!("spec.rules[{r}].when[{w}].key"), cond.key.clone()));
        }
    }
    found
}

/// The node's policy for `ap`, and a warning for each rule the node
/// enforces differently from how it is written.
pub(crate) fn node_policy(
    ap: &Resource<AuthorizationPolicySpec>,
) -> (AuthorizationPolicy, Vec<RuleWarning>) {
    let action = match ap.spec.action {
        Some(ActionSpec::Deny) => AuthzAction::Deny,
        _ => AuthzAction::Allow,
    };
    let mut warnings = Vec::new();
    let mut rules = Vec::new();
    for (r, rule) in ap.spec.rules.iter().enumerate() {
        let l7 = request_level(r, rule);
        if let Some((field, _)) = l7.first() {
            let names: Vec<&str> = l7.iter().map(|(_, n)| n.as_str()).collect();
            let effect = match action {
                AuthzAction::Allow => {
                    "this ALLOW rule never matches at the node (it allows nothing)"
                }
                AuthzAction::Deny => {
                    "the node drops those conditions, so this DENY rule denies every connection matching the rest"
                }
            };
            warnings.push((
                field.clone(),
                format!(
                    "{} {} request-level: the destination node cannot see it; as in Istio ambient, {effect}. To enforce it as written, attach the policy to the service with targetRef (its waypoint enforces it)",
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" },
                ),
            ));
            if action == AuthzAction::Allow {
                continue;
            }
        }
        rules.push(l4_rule(rule));
    }
    let policy = AuthorizationPolicy {
        name: ap.name.clone(),
        selector: ap.spec.selector.as_ref().map(|s| s.match_labels.clone()),
        action,
        rules,
    };
    (policy, warnings)
}

/// The L4 part of a rule: what the node can check.
fn l4_rule(rule: &RuleSpec) -> AuthzRule {
    let nets = |list: &[String]| list.iter().filter_map(|b| parse_net(b)).collect::<Vec<_>>();
    let ports = |list: &[String]| {
        list.iter()
            .filter_map(|p| p.parse().ok())
            .collect::<Vec<u16>>()
    };
    AuthzRule {
        from: rule
            .from
            .iter()
            .map(|f| AuthzSource {
                principals: f.source.principals.clone(),
                not_principals: f.source.not_principals.clone(),
                namespaces: f.source.namespaces.clone(),
                not_namespaces: f.source.not_namespaces.clone(),
                ip_blocks: nets(&f.source.ip_blocks),
                not_ip_blocks: nets(&f.source.not_ip_blocks),
            })
            .collect(),
        to: rule
            .to
            .iter()
            .map(|t| AuthzOperation {
                ports: ports(&t.operation.ports),
                not_ports: ports(&t.operation.not_ports),
            })
            .collect(),
        when: rule
            .when
            .iter()
            .filter_map(|c| {
                Some(AuthzCondition {
                    key: AuthzKey::parse(&c.key)?,
                    values: c.values.clone(),
                    not_values: c.not_values.clone(),
                })
            })
            .collect(),
    }
}

/// Where a `selector` policy applies: the gateway and waypoint workloads
/// it picks (enforced there at L7), and whether it picks anything else or
/// has no selector (enforced by nodes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Gateway and waypoint workloads selected.
    pub(crate) proxies: Vec<weft_core::model::NamespacedName>,
    /// Ordinary workloads selected (by name), for messages.
    pub(crate) workloads: Vec<weft_core::model::NamespacedName>,
    /// Whether nodes enforce it: no selector, or one that picks an
    /// ordinary workload or none at all (it may pick one later).
    pub(crate) nodes: bool,
}

/// What a policy's `selector` (its `matchLabels`) picks in `namespace`.
pub(crate) fn reach(
    snapshot: &Snapshot,
    namespace: &str,
    selector: Option<&std::collections::BTreeMap<String, String>>,
) -> Reach {
    let Some(selector) = selector else {
        return Reach {
            nodes: true,
            ..Reach::default()
        };
    };
    let mut reach = Reach::default();
    for w in snapshot.workloads.values() {
        let picked = w.name.namespace == namespace
            && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v));
        if !picked {
            continue;
        }
        if w.gateway || w.waypoint {
            reach.proxies.push(w.name.clone());
        } else {
            reach.workloads.push(w.name.clone());
        }
    }
    reach.nodes = reach.proxies.is_empty() || !reach.workloads.is_empty();
    reach
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_sources;

    fn policy(yaml: &str) -> (AuthorizationPolicy, Vec<RuleWarning>) {
        let file = std::path::Path::new("p.yaml");
        let mut resources = crate::Resources::default();
        let mut problems = Vec::new();
        crate::loader::add_file(file, yaml, &mut resources, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        node_policy(&resources.authorization_policies[0])
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
";

    #[test]
    fn allow_rules_with_request_attributes_never_match() {
        let (p, warnings) = policy(&format!(
            "{HEAD}  rules:
  - from: [{{source: {{namespaces: [shop]}}}}]
    to: [{{operation: {{methods: [GET], ports: [\"80\"]}}}}]
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
  - when: [{{key: \"request.headers[x-user]\", values: [jason]}}]
  - from: [{{source: {{namespaces: [web]}}}}]
"
        ));
        assert_eq!(p.action, AuthzAction::Allow);
        // Only the purely L4 rule is left.
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].from[0].namespaces, vec!["web".to_owned()]);
        let fields: Vec<&str> = warnings.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].to[0].operation.methods",
                "spec.rules[1].from[0].source.requestPrincipals",
                "spec.rules[2].when[0].key",
            ]
        );
        assert!(warnings[0].1.contains("never matches"), "{}", warnings[0].1);
    }

    #[test]
    fn deny_rules_drop_request_attributes_and_deny_more() {
        let (p, warnings) = policy(&format!(
            "{HEAD}  action: DENY
  rules:
  - to: [{{operation: {{paths: [/partner/*], ports: [\"9080\"]}}}}]
    when: [{{key: \"request.auth.claims[group]\", values: [guest]}}, {{key: source.namespace, values: [web]}}]
"
        ));
        assert_eq!(p.action, AuthzAction::Deny);
        assert_eq!(p.rules.len(), 1);
        let rule = &p.rules[0];
        // The path is gone, the port stays; the claim condition is gone,
        // the namespace condition stays.
        assert_eq!(rule.to[0].ports, vec![9080]);
        assert_eq!(rule.when.len(), 1);
        assert_eq!(rule.when[0].key, AuthzKey::SourceNamespace);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .1
                .contains("paths, request.auth.claims[group] are request-level")
        );
        assert!(warnings[0].1.contains("denies every connection"));
    }

    #[test]
    fn l4_only_policies_are_unchanged_and_quiet() {
        let (p, warnings) = policy(&format!(
            "{HEAD}  rules:
  - from: [{{source: {{principals: [cluster.local/ns/web/sa/front]}}}}]
    to: [{{operation: {{ports: [\"80\"]}}}}]
    when: [{{key: source.ip, values: [10.0.0.0/8]}}]
"
        ));
        assert!(warnings.is_empty());
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].when[0].key, AuthzKey::SourceIp);
    }

    #[test]
    fn an_allow_policy_left_with_no_rules_denies_at_the_node() {
        // Every rule names a method: the node allows nothing.
        let dir = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop]
  addresses: [240.0.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: shop}
spec: {address: 10.9.0.1, labels: {app: ratings, weft.dev/node: n1}}
---
";
        let text = format!(
            "{dir}{HEAD}  rules:
  - to: [{{operation: {{methods: [GET]}}}}]
"
        );
        let config = load_sources([(std::path::Path::new("a.yaml"), text.as_str())])
            .unwrap_or_else(|e| panic!("{e}"));
        let p = config
            .snapshot
            .policies
            .values()
            .next()
            .expect("node policy");
        assert_eq!((p.action, p.rules.len()), (AuthzAction::Allow, 0));
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].to_string().contains(
            ": warning: spec.rules[0].to[0].operation.methods: methods is request-level"
        ));
    }
}
