//! Who may ask for which identity.
//!
//! A node proxy proves which node it is — with a bootstrap token (local
//! mode) or its node certificate (`spiffe://<td>/ns/weft-system/sa/weft-node.<node>`)
//! — and may obtain certificates only for its own node identity and for the
//! identities of workloads the registry places on that node. A workload may
//! renew its own identity with its current certificate while the registry
//! still has a workload with that identity: a removed identity stops
//! renewing, and its last certificate expires (24 hours by default,
//! [`crate::authority::DEFAULT_WORKLOAD_TTL`]). Everything else is refused
//! with a reason.

use std::collections::HashMap;
use std::path::Path;

use weft_core::Identity;
use weft_core::model::Snapshot;

pub use weft_core::identity::{CONTROL_SA, NODE_SA_PREFIX, SYSTEM_NAMESPACE};

/// The identity of node `node`'s proxy.
pub fn node_identity(trust_domain: &str, node: &str) -> Result<Identity, weft_core::IdentityError> {
    Identity::new(
        trust_domain,
        SYSTEM_NAMESPACE,
        &format!("{NODE_SA_PREFIX}{node}"),
    )
}

/// The identity of the control plane.
pub fn control_identity(trust_domain: &str) -> Result<Identity, weft_core::IdentityError> {
    Identity::new(trust_domain, SYSTEM_NAMESPACE, CONTROL_SA)
}

/// The node whose proxy `identity` is, if it is a node identity.
pub fn node_of(identity: &Identity) -> Option<&str> {
    if identity.namespace() != SYSTEM_NAMESPACE {
        return None;
    }
    identity.service_account().strip_prefix(NODE_SA_PREFIX)
}

/// Who is asking, as the transport established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node proxy, by node name.
    Node(String),
    /// A workload holding a certificate for this identity.
    Workload(Identity),
    /// Nobody we know.
    Anonymous,
}

impl Caller {
    /// The caller proven by a client certificate identity.
    pub fn from_identity(identity: Identity) -> Caller {
        match node_of(&identity) {
            Some(node) => Caller::Node(node.to_owned()),
            None => Caller::Workload(identity),
        }
    }
}

/// A refusal, worded for the operator reading the node's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Decides whether `caller` may obtain a certificate for `wanted`.
pub fn authorize(snapshot: &Snapshot, caller: &Caller, wanted: &Identity) -> Result<(), Denied> {
    match caller {
        Caller::Anonymous => Err(Denied(
            "unauthenticated: present a bootstrap token or a Kubernetes service-account token (authorization: Bearer …), or a node certificate".into(),
        )),
        Caller::Workload(id) if id == wanted => {
            if snapshot.workloads.values().any(|w| &w.identity == wanted) {
                Ok(())
            } else {
                Err(Denied(format!(
                    "{wanted} is no longer the identity of any workload in the registry; it is not renewed"
                )))
            }
        }
        Caller::Workload(id) => Err(Denied(format!("{id} may renew only its own identity, not {wanted}"))),
        Caller::Node(node) => {
            if node_identity(wanted.trust_domain(), node).as_ref() == Ok(wanted) {
                return Ok(());
            }
            let runs_here = snapshot
                .workloads
                .values()
                .any(|w| w.node.as_deref() == Some(node.as_str()) && &w.identity == wanted);
            if runs_here {
                return Ok(());
            }
            let mut elsewhere: Vec<&str> = snapshot
                .workloads
                .values()
                .filter(|w| &w.identity == wanted)
                .filter_map(|w| w.node.as_deref())
                .collect();
            elsewhere.sort_unstable();
            elsewhere.dedup();
            let hint = if elsewhere.is_empty() {
                "no workload in the registry has that identity".to_owned()
            } else {
                format!("workloads with that identity run on {}", elsewhere.join(", "))
            };
            Err(Denied(format!("node {node} may not obtain {wanted}: no workload with that identity runs on {node} ({hint})")))
        }
    }
}

/// Bootstrap tokens: which secret proves which node (local mode).
#[derive(Default, Clone)]
pub struct BootstrapTokens(HashMap<String, String>);

impl std::fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: only say how many there are.
        write!(f, "BootstrapTokens({} nodes)", self.0.len())
    }
}

/// A bootstrap token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bootstrap token file {path}: {reason}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

impl BootstrapTokens {
    /// Tokens from `(node, token)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        BootstrapTokens(
            pairs
                .into_iter()
                .map(|(node, token)| (token, node))
                .collect(),
        )
    }

    /// Reads a file of `<node> <token>` lines (`#` starts a comment).
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let err = |reason: String| TokenFileError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(node), Some(token), None) if token.len() >= MIN_TOKEN_LEN => {
                    pairs.push((node.to_owned(), token.to_owned()));
                }
                (Some(_), Some(_), None) => {
                    return Err(err(format!(
                        "line {}: token is shorter than {MIN_TOKEN_LEN} characters",
                        i + 1
                    )));
                }
                _ => return Err(err(format!("line {}: expected \"<node> <token>\"", i + 1))),
            }
        }
        Ok(Self::new(pairs))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `node` has a token (is still enrolled).
    pub fn has_node(&self, node: &str) -> bool {
        self.0.values().any(|n| n == node)
    }

    /// The node a presented token belongs to. Every token is compared in
    /// full, so timing does not reveal how much of a guess was right.
    pub fn node_for(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (token, node) in &self.0 {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_core::model::{Locality, NamespacedName, Workload, WorkloadAddress};

    use super::*;

    const TD: &str = "cluster.local";

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new(TD, ns, sa).expect("valid")
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for (name, sa, node) in [
            ("orders-1", "orders", "node-1"),
            ("payments-1", "payments", "node-2"),
        ] {
            let w = Workload {
                name: NamespacedName::new("shop", name),
                address: WorkloadAddress::Ip([127, 0, 0, 1].into()),
                labels: BTreeMap::new(),
                ports: BTreeMap::new(),
                identity: id("shop", sa),
                network: String::new(),
                cluster: String::new(),
                locality: Locality::default(),
                weight: 1,
                node: Some(node.into()),
                run: None,
                client_only: false,
                outbound: Vec::new(),
                mtls_mode: weft_core::model::MtlsMode::Strict,
                waypoint: false,
                gateway: false,
            };
            s.workloads.insert(w.name.clone(), w.into());
        }
        s
    }

    #[test]
    fn table() {
        let snap = snapshot();
        let node1 = Caller::Node("node-1".into());
        let cases: &[(&Caller, Identity, Result<(), &str>)] = &[
            (&node1, id("shop", "orders"), Ok(())),
            (&node1, node_identity(TD, "node-1").expect("id"), Ok(())),
            (&node1, id("shop", "payments"), Err("run on node-2")),
            (
                &node1,
                id("shop", "ghost"),
                Err("no workload in the registry"),
            ),
            (
                &node1,
                node_identity(TD, "node-2").expect("id"),
                Err("may not obtain"),
            ),
            (
                &Caller::Workload(id("shop", "orders")),
                id("shop", "orders"),
                Ok(()),
            ),
            (
                &Caller::Workload(id("shop", "orders")),
                id("shop", "payments"),
                Err("only its own"),
            ),
            // Removed from the registry: its certificate no longer renews.
            (
                &Caller::Workload(id("shop", "ghost")),
                id("shop", "ghost"),
                Err("no longer the identity of any workload"),
            ),
            (
                &Caller::Anonymous,
                id("shop", "orders"),
                Err("unauthenticated"),
            ),
        ];
        for (caller, wanted, want) in cases {
            let got = authorize(&snap, caller, wanted);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(needle), Err(Denied(msg))) if msg.contains(needle) => {}
                _ => panic!("{caller:?} asking for {wanted}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn callers_from_certificates() {
        assert_eq!(
            Caller::from_identity(node_identity(TD, "node-7").expect("id")),
            Caller::Node("node-7".into())
        );
        assert_eq!(
            Caller::from_identity(id("shop", "orders")),
            Caller::Workload(id("shop", "orders"))
        );
    }

    #[test]
    fn token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# node tokens\nnode-1 0123456789abcdef0123\nnode-2 fedcba9876543210fedc # second\n",
        )
        .expect("write");
        let tokens = BootstrapTokens::from_file(&path).expect("parsed");
        assert_eq!(tokens.node_for("0123456789abcdef0123"), Some("node-1"));
        assert_eq!(tokens.node_for("fedcba9876543210fedc"), Some("node-2"));
        assert_eq!(tokens.node_for("0123456789abcdef012"), None);
        assert!(!format!("{tokens:?}").contains("0123"));
        std::fs::write(&path, "node-1 short\n").expect("write");
        let err = BootstrapTokens::from_file(&path)
            .expect_err("short")
            .to_string();
        assert!(err.contains("line 1") && err.contains("shorter"), "{err}");
        std::fs::write(&path, "node-1\n").expect("write");
        assert!(BootstrapTokens::from_file(&path).is_err());
    }
}
