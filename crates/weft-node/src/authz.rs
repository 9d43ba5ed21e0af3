//! L4 authorization at the destination's node, as one pure function over
//! the policies the config stream delivers (`istio.security.Authorization`):
//! DENY wins; if any ALLOW policy applies, only matching traffic passes.
//! A rule matches when all its clauses match; a clause when any of its
//! matches does; a match when every field it sets matches.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::Identity;
use weft_xds::proto::security::{self as sec, string_match::MatchType};

/// What is known about a connection at L4.
#[derive(Debug, Clone)]
pub struct Conn<'a> {
    /// The caller's proven identity (`None`: plaintext).
    pub source: Option<&'a Identity>,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// The workload's address.
    pub destination_ip: IpAddr,
    /// The workload port.
    pub destination_port: u16,
}

fn principal(id: &Identity) -> String {
    let s = id.to_string();
    s.strip_prefix("spiffe://").unwrap_or(&s).to_owned()
}

fn string_matches(m: &sec::StringMatch, value: &str) -> bool {
    match &m.match_type {
        Some(MatchType::Exact(e)) => value == e,
        Some(MatchType::Prefix(p)) => value.starts_with(p.as_str()),
        Some(MatchType::Suffix(s)) => value.ends_with(s.as_str()),
        Some(MatchType::Presence(())) => !value.is_empty(),
        None => false,
    }
}

fn net(a: &sec::Address) -> Option<IpNet> {
    let ip: IpAddr = match a.address.len() {
        4 => <[u8; 4]>::try_from(a.address.as_slice()).ok()?.into(),
        16 => <[u8; 16]>::try_from(a.address.as_slice()).ok()?.into(),
        _ => return None,
    };
    IpNet::new(ip, u8::try_from(a.length).ok()?).ok()
}

fn in_nets(list: &[sec::Address], ip: IpAddr) -> bool {
    list.iter().filter_map(net).any(|n| n.contains(&ip))
}

/// Whether one `Match` holds (unset fields are ignored).
fn match_holds(m: &sec::Match, c: &Conn<'_>) -> bool {
    // Plaintext callers have no namespace or principal: only rules that do
    // not ask for them can match.
    let ns = c.source.map(Identity::namespace).unwrap_or_default();
    let pr = c.source.map(principal).unwrap_or_default();
    let port = u32::from(c.destination_port);
    let any = |list: &[sec::StringMatch], v: &str| list.iter().any(|m| string_matches(m, v));
    (m.namespaces.is_empty() || any(&m.namespaces, ns))
        && !any(&m.not_namespaces, ns)
        && (m.principals.is_empty() || any(&m.principals, &pr))
        && !any(&m.not_principals, &pr)
        && (m.source_ips.is_empty() || in_nets(&m.source_ips, c.source_ip))
        && !in_nets(&m.not_source_ips, c.source_ip)
        && (m.destination_ips.is_empty() || in_nets(&m.destination_ips, c.destination_ip))
        && !in_nets(&m.not_destination_ips, c.destination_ip)
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&port))
        && !m.not_destination_ports.contains(&port)
}

/// The index of the first rule of `p` that matches.
fn matching_rule(p: &sec::Authorization, c: &Conn<'_>) -> Option<usize> {
    p.rules.iter().position(|rule| {
        rule.clauses
            .iter()
            .all(|clause| clause.matches.iter().any(|m| match_holds(m, c)))
    })
}

fn label(p: &sec::Authorization) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// A decision with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The deciding policy (`namespace/name`), when one decided.
    pub policy: Option<String>,
    /// The index of its matching rule, when one matched.
    pub rule: Option<usize>,
    /// The explanation, in the words the logs use.
    pub reason: String,
}

/// Decides a connection against the policies that apply to its
/// destination, saying which policy and rule decided: DENY policies
/// first, then ALLOW ones (if any applies, one must match).
pub fn explain(policies: &[&sec::Authorization], c: &Conn<'_>) -> Verdict {
    let (deny, allow): (Vec<&sec::Authorization>, Vec<&sec::Authorization>) = policies
        .iter()
        .partition(|p| p.action == sec::Action::Deny as i32);
    let verdict = |allowed, p: Option<&sec::Authorization>, rule, reason| Verdict {
        allowed,
        policy: p.map(label),
        rule,
        reason,
    };
    if let Some((p, rule)) = deny.iter().find_map(|p| Some((*p, matching_rule(p, c)?))) {
        let reason = format!("denied by DENY policy {}", label(p));
        return verdict(false, Some(p), Some(rule), reason);
    }
    if allow.is_empty() {
        return verdict(true, None, None, "no ALLOW policy applies".into());
    }
    if let Some((p, rule)) = allow.iter().find_map(|p| Some((*p, matching_rule(p, c)?))) {
        let reason = format!("allowed by ALLOW policy {}", label(p));
        return verdict(true, Some(p), Some(rule), reason);
    }
    let names: Vec<String> = allow.iter().map(|p| label(p)).collect();
    let reason = format!("not allowed by any ALLOW policy ({})", names.join(", "));
    verdict(false, None, None, reason)
}

/// Decides a connection against the policies that apply to its
/// destination. `Err` carries the reason, naming the deciding policy.
pub fn check(policies: &[&sec::Authorization], c: &Conn<'_>) -> Result<(), String> {
    let v = explain(policies, c);
    if v.allowed { Ok(()) } else { Err(v.reason) }
}

#[cfg(test)]
mod tests {
    use weft_core::model::{
        AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzKey, AuthzOperation, AuthzRule,
        AuthzSource, NamespacedName,
    };
    use weft_xds::authz::to_proto;

    use super::*;

    fn policy(name: &str, action: AuthzAction, rules: Vec<AuthzRule>) -> sec::Authorization {
        to_proto(&AuthorizationPolicy {
            name: NamespacedName::new("billing", name),
            selector: None,
            action,
            rules,
        })
    }

    fn from_principals(p: &[&str]) -> AuthzRule {
        AuthzRule {
            from: vec![AuthzSource {
                principals: p.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let orders = Identity::new("cluster.local", "shop", "orders").expect("id");
        let frontend = Identity::new("cluster.local", "shop", "frontend").expect("id");
        let ops = Identity::new("cluster.local", "ops", "debug").expect("id");
        let conn = |id| Conn {
            source: Some(id),
            source_ip: [127, 0, 1, 11].into(),
            destination_ip: [127, 0, 2, 20].into(),
            destination_port: 8080,
        };
        let only_orders = policy(
            "only-orders",
            AuthzAction::Allow,
            vec![from_principals(&["cluster.local/ns/shop/sa/orders"])],
        );
        let shop_wildcard = policy(
            "shop",
            AuthzAction::Allow,
            vec![from_principals(&["cluster.local/ns/shop/*"])],
        );
        let deny_ops = policy(
            "no-ops",
            AuthzAction::Deny,
            vec![AuthzRule {
                when: vec![AuthzCondition {
                    key: AuthzKey::SourceNamespace,
                    values: vec!["ops".into()],
                    not_values: vec![],
                }],
                ..Default::default()
            }],
        );
        let allow_all = policy("all", AuthzAction::Allow, vec![AuthzRule::default()]);
        let allow_none = policy("none", AuthzAction::Allow, vec![]);
        let port_9090 = policy(
            "port-9090",
            AuthzAction::Allow,
            vec![AuthzRule {
                to: vec![AuthzOperation {
                    ports: vec![9090],
                    not_ports: vec![],
                }],
                ..Default::default()
            }],
        );
        // (what, policies, caller, expected outcome)
        type Case<'a> = (
            &'a str,
            Vec<&'a sec::Authorization>,
            &'a Identity,
            Result<(), &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("no policy allows", vec![], &frontend, Ok(())),
            (
                "allow list admits orders",
                vec![&only_orders],
                &orders,
                Ok(()),
            ),
            (
                "allow list refuses frontend",
                vec![&only_orders],
                &frontend,
                Err("not allowed by any ALLOW policy (billing/only-orders)"),
            ),
            ("suffix wildcard", vec![&shop_wildcard], &frontend, Ok(())),
            (
                "deny wins over allow-all",
                vec![&allow_all, &deny_ops],
                &ops,
                Err("denied by DENY policy billing/no-ops"),
            ),
            (
                "deny does not touch others",
                vec![&allow_all, &deny_ops],
                &orders,
                Ok(()),
            ),
            (
                "an ALLOW with no rules allows nothing",
                vec![&allow_none],
                &orders,
                Err("not allowed"),
            ),
            (
                "ports are checked",
                vec![&port_9090],
                &orders,
                Err("not allowed"),
            ),
        ];
        // Plaintext callers (PERMISSIVE) match only identity-free rules.
        let plain = Conn {
            source: None,
            ..conn(&orders)
        };
        assert!(check(&[&allow_all], &plain).is_ok());
        assert!(check(&[&shop_wildcard], &plain).is_err());
        assert!(check(&[&allow_all, &deny_ops], &plain).is_ok());
        for (what, policies, id, want) in cases {
            let got = check(&policies, &conn(id));
            match (&want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(needle), Err(msg)) if msg.contains(needle) => {}
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
