//! Callers proven by a token someone else vouches for: on Kubernetes, a
//! service-account token checked with the API server's `TokenReview`
//! (audience `istio-ca`, as Istio's agents send it). The review says who
//! the token belongs to; [`caller_of`] turns that into a [`Caller`]:
//!
//! - the node agent's service account (`weft-system/weft-node` by
//!   default), with the node its token is bound to
//!   (`authentication.kubernetes.io/node-name`, in the tokens Kubernetes
//!   binds to a pod), is that node — it may then obtain certificates only
//!   for the pods on its node ([`crate::authz::authorize`]);
//! - any other service account is a workload with that identity, which
//!   may obtain only its own certificate;
//! - anything else is nobody.

use weft_core::Identity;

use crate::authz::Caller;

/// The extra field of a reviewed token naming the node of the pod it is
/// bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What a review established about a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewedToken {
    /// `system:serviceaccount:<namespace>:<name>`, or another user.
    pub username: String,
    /// The node of the pod the token is bound to, when it says.
    pub node: Option<String>,
}

/// Checks bearer tokens that are not bootstrap tokens.
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync {
    /// Who the token belongs to, or why it is not accepted.
    async fn review(&self, token: &str) -> Result<ReviewedToken, String>;
}

/// The caller a reviewed token proves. `node_agent`: the node agent's
/// (namespace, service account).
pub fn caller_of(
    reviewed: &ReviewedToken,
    node_agent: (&str, &str),
    trust_domain: &str,
) -> Result<Caller, String> {
    let Some(account) = reviewed.username.strip_prefix("system:serviceaccount:") else {
        return Err(format!(
            "{:?} is not a service account; only service-account tokens are accepted",
            reviewed.username
        ));
    };
    let Some((ns, sa)) = account.split_once(':') else {
        return Err(format!("{:?} is not a service account", reviewed.username));
    };
    if (ns, sa) == node_agent {
        return match &reviewed.node {
            Some(node) => Ok(Caller::Node(node.clone())),
            None => Err(format!(
                "the node agent's token ({ns}/{sa}) is not bound to a pod on a node (no {NODE_NAME_EXTRA}); use the projected service-account token"
            )),
        };
    }
    Identity::new(trust_domain, ns, sa)
        .map(Caller::Workload)
        .map_err(|e| format!("{:?} is not a valid identity: {e}", reviewed.username))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewed(user: &str, node: Option<&str>) -> ReviewedToken {
        ReviewedToken {
            username: user.into(),
            node: node.map(str::to_owned),
        }
    }

    #[test]
    fn reviewed_tokens_become_callers() {
        let agent = ("weft-system", "weft-node");
        let of = |user, node| caller_of(&reviewed(user, node), agent, "cluster.local");
        assert_eq!(
            of(
                "system:serviceaccount:weft-system:weft-node",
                Some("node-1")
            ),
            Ok(Caller::Node("node-1".into()))
        );
        assert!(
            of("system:serviceaccount:weft-system:weft-node", None)
                .is_err_and(|e| e.contains("not bound to a pod on a node"))
        );
        assert_eq!(
            of("system:serviceaccount:shop:reviews", Some("node-1")),
            Ok(Caller::Workload(
                "spiffe://cluster.local/ns/shop/sa/reviews"
                    .parse()
                    .expect("id")
            ))
        );
        assert!(of("admin", None).is_err_and(|e| e.contains("not a service account")));
        assert!(of("system:serviceaccount:broken", None).is_err());
    }
}
