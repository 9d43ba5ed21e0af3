//! Names: the namespace-qualified name every object has
//! ([`NamespacedName`]), and the rules shared by every resource —
//! Kubernetes DNS-1123 labels and subdomains, hostnames as they appear in
//! `ServiceEntry.hosts`, and the plural the Kubernetes API gives a kind's
//! collection.
//!
//! Each check returns `Err(reason)` with a sentence an operator can act on.

/// Longest DNS-1123 label (a namespace, a service account).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain (an object name, a hostname).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// Checks a DNS-1123 label: lowercase letters, digits and `-`, starting and
/// ending with a letter or digit, at most 63 characters.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_LABEL_LEN} are allowed",
            s.len()
        ));
    }
    let bytes = s.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(ok_inner) || !ok_edge(&bytes[0]) || !ok_edge(&bytes[bytes.len() - 1]) {
        return Err(
            "must consist of lowercase letters, digits and '-', and start and end with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Checks a Kubernetes label value as a cluster or network ID is written
/// (`topology.istio.io/cluster: Kubernetes`): letters, digits, `-`, `_`
/// and `.`, starting and ending with a letter or digit, at most 63
/// characters, not empty.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_LABEL_LEN} are allowed",
            s.len()
        ));
    }
    let bytes = s.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !bytes.iter().all(inner)
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return Err(
            "must consist of letters, digits, '-', '_' and '.', and start and end with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_SUBDOMAIN_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_SUBDOMAIN_LEN} are allowed",
            s.len()
        ));
    }
    if !s.contains('.') {
        return check_label(s);
    }
    for part in s.split('.') {
        check_label(part).map_err(|e| format!("part {part:?} {e}"))?;
    }
    Ok(())
}

/// Checks a hostname as used in `ServiceEntry.hosts`: a DNS-1123 subdomain
/// that may contain uppercase letters (compared case-insensitively).
pub fn check_hostname(s: &str) -> Result<(), String> {
    check_subdomain(&s.to_ascii_lowercase())
}

/// The plural of a kind, as the API names its collection.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with("ss")
        || lower.ends_with("ch")
        || lower.ends_with("sh")
        || lower.ends_with('x')
    {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        lower
    } else {
        format!("{lower}s")
    }
}

/// A namespace-qualified name, displayed as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    /// The namespace (`default` when a resource names none).
    pub namespace: String,
    /// The name within the namespace.
    pub name: String,
}

impl NamespacedName {
    /// Builds a name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Reads the `namespace/name` form that [`Display`](std::fmt::Display)
    /// writes (xDS resource keys use it). A key without a slash is a name
    /// in no namespace.
    pub fn from_key(key: &str) -> Self {
        match key.split_once('/') {
            Some((namespace, name)) => NamespacedName::new(namespace, name),
            None => NamespacedName::new("", key),
        }
    }
}

impl From<&str> for NamespacedName {
    fn from(key: &str) -> Self {
        NamespacedName::from_key(key)
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        for (kind, want) in [
            ("Pod", "pods"),
            ("Service", "services"),
            ("EndpointSlice", "endpointslices"),
            ("AuthorizationPolicy", "authorizationpolicies"),
            ("Gateway", "gateways"),
            ("Ingress", "ingresses"),
            ("GatewayClass", "gatewayclasses"),
            ("Endpoints", "endpoints"),
            ("Mesh", "meshes"),
            ("RateLimitPolicy", "ratelimitpolicies"),
            ("Namespace", "namespaces"),
        ] {
            assert_eq!(plural(kind), want);
        }
    }

    #[test]
    fn labels() {
        for ok in ["a", "shop", "payments-v2", "0abc", &"a".repeat(63)] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Shop", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains_and_hosts() {
        assert!(check_subdomain("payments.shop.svc.cluster.local").is_ok());
        assert!(check_subdomain("a..b").is_err());
        assert!(check_subdomain(".a").is_err());
        assert!(check_hostname("API.example.com").is_ok());
        assert!(check_hostname("*.example.com").is_err());
    }
}
