//! Who is calling: the one answer the certificate service and the config
//! stream on 15012 share. A client certificate issued by this CA proves
//! its identity (a node certificate proves its node while the node is
//! enrolled); otherwise an `authorization: Bearer <token>` header may
//! carry a bootstrap token (local mode) or a token another authority
//! vouches for ([`crate::review`]: Kubernetes service-account tokens, as
//! Istio's ztunnel sends them).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::metadata::MetadataMap;
use weft_core::Identity;
use weft_core::model::Snapshot;

use crate::authz::{BootstrapTokens, Caller};
use crate::review::TokenReviewer;

/// Decides who a request comes from.
#[derive(Clone)]
pub struct Authenticator {
    registry: Arc<ArcSwap<Snapshot>>,
    tokens: BootstrapTokens,
    reviewer: Option<Reviewer>,
}

/// Tokens reviewed elsewhere, and the node agent's service account.
#[derive(Clone)]
struct Reviewer {
    reviewer: Arc<dyn TokenReviewer>,
    node_agent: (String, String),
}

impl Authenticator {
    /// Certificates and bootstrap `tokens`; the trust domain is the
    /// registry's current one.
    pub fn new(registry: Arc<ArcSwap<Snapshot>>, tokens: BootstrapTokens) -> Self {
        Authenticator {
            registry,
            tokens,
            reviewer: None,
        }
    }

    /// Also accepts bearer tokens `reviewer` vouches for; `node_agent` is
    /// the node agent's (namespace, service account).
    pub fn with_reviewer(
        mut self,
        reviewer: Arc<dyn TokenReviewer>,
        node_agent: (String, String),
    ) -> Self {
        self.reviewer = Some(Reviewer {
            reviewer,
            node_agent,
        });
        self
    }

    /// Whether a workload with `identity` is in the mesh now (a token
    /// proves an identity; only one the registry knows reads what that
    /// identity may, as the certificate service decides too).
    pub fn in_mesh(&self, identity: &Identity) -> bool {
        self.registry
            .load()
            .workloads
            .values()
            .any(|w| &w.identity == identity)
    }

    /// The caller of a request with these extensions and metadata
    /// ([`Caller::Anonymous`] when nothing proves one; why is logged).
    pub async fn caller(&self, peer: Option<&PeerInfo>, metadata: &MetadataMap) -> Caller {
        if let Some(identity) = peer.and_then(|p| p.identity.clone()) {
            let caller = Caller::from_identity(identity);
            // A node certificate proves a node only while the node is still
            // enrolled (its bootstrap token is listed), when tokens are used.
            if let Caller::Node(node) = &caller
                && !self.tokens.is_empty()
                && !self.tokens.has_node(node)
            {
                return Caller::Anonymous;
            }
            return caller;
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token.map(str::trim) else {
            return Caller::Anonymous;
        };
        if let Some(node) = self.tokens.node_for(token) {
            return Caller::Node(node.to_owned());
        }
        let Some(r) = &self.reviewer else {
            return Caller::Anonymous;
        };
        let trust_domain = self.registry.load().mesh.trust_domain.clone();
        let reviewed = r.reviewer.review(token).await.and_then(|t| {
            crate::review::caller_of(&t, (&r.node_agent.0, &r.node_agent.1), &trust_domain)
        });
        match reviewed {
            Ok(caller) => caller,
            Err(why) => {
                tracing::info!(reason = %why, "bearer token not accepted");
                Caller::Anonymous
            }
        }
    }
}

/// What a request knows about the connection it came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The identity its client certificate proved, if it sent one.
    pub identity: Option<Identity>,
}
