//! SPIFFE workload identities of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict: anything that is not exactly that shape is rejected
//! with an [`IdentityError`] that says what is wrong, because an identity
//! that parses "loosely" is an authorization bug waiting to happen.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID the SPIFFE specification allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain the SPIFFE specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Namespace of weft's own components' identities.
pub const SYSTEM_NAMESPACE: &str = "weft-system";
/// Service account prefix of node proxy identities (`weft-node.<node>`).
pub const NODE_SA_PREFIX: &str = "weft-node.";
/// Service account of the control plane.
pub const CONTROL_SA: &str = "weft-control";

/// Whether `namespace`/`service_account` names one of weft's own
/// identities (the control plane's or a node proxy's). No workload may
/// have one: a node that could obtain it would act as the control plane or
/// as another node.
pub fn is_reserved(namespace: &str, service_account: &str) -> bool {
    namespace == SYSTEM_NAMESPACE
        && (service_account == CONTROL_SA || service_account.starts_with(NODE_SA_PREFIX))
}

/// A workload identity: trust domain, namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a valid weft identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The ID does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    /// The ID is longer than the SPIFFE limit.
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
    /// The trust domain is empty or has characters SPIFFE forbids.
    #[error("trust domain {0:?} is invalid: use lowercase letters, digits, '.', '-' and '_' only")]
    TrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE ID {0:?} must have the path /ns/<namespace>/sa/<service-account>")]
    Path(String),
    /// A namespace or service account segment is empty or has bad characters.
    #[error("{what} {value:?} in SPIFFE ID is invalid: use letters, digits, '.', '-' and '_' only")]
    Segment {
        /// `namespace` or `service account`.
        what: &'static str,
        /// The offending segment.
        value: String,
    },
}

impl Identity {
    /// Builds an identity from its parts, checking each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace, e.g. `shop`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account, e.g. `payments`.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Checks a trust domain as SPIFFE defines it (`[a-z0-9._-]+`, no port).
pub fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(td.to_owned()))
    }
}

fn check_segment(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            what,
            value: value.to_owned(),
        })
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_owned()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(td)?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => Identity::new(td, ns, sa),
            _ => Err(IdentityError::Path(s.to_owned())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = "spiffe://cluster.local/ns/shop/sa/payments";
        let id: Identity = s.parse().expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "payments");
        assert_eq!(id.to_string(), s);
    }

    #[test]
    fn rejects_malformed() {
        let long = format!("spiffe://td/ns/a/sa/{}", "x".repeat(2100));
        let cases: &[(&str, &str)] = &[
            ("", "must start"),
            ("http://cluster.local/ns/a/sa/b", "must start"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "must start"),
            ("spiffe://", "trust domain"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local:8080/ns/a/sa/b", "trust domain"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local", "path"),
            ("spiffe://cluster.local/", "path"),
            ("spiffe://cluster.local/ns/a", "path"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "path"),
            ("spiffe://cluster.local/sa/b/ns/a", "path"),
            ("spiffe://cluster.local/ns//sa/b", "namespace"),
            ("spiffe://cluster.local/ns/../sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/b%20c", "service account"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "service account"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "service account"),
            (&long, "2048"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<Identity>().expect_err(input).to_string();
            assert!(
                err.contains(needle),
                "{input:?}: {err:?} should mention {needle:?}"
            );
        }
    }
}
