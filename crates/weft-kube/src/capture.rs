//! Whether the node agent captures a pod its CNI plugin hands over, as
//! Istio's CNI agent decides: the pod is read from the API server when
//! its namespace is created (before it runs, so before the control plane
//! lists it as a workload), with its namespace. It is captured when it
//! runs on this agent's node, is not on the host's network, and is
//! enrolled (`istio.io/dataplane-mode: ambient` on it or its namespace,
//! `none` on it opting out); its identity is its service account's.
//!
//! [`decide`] is the pure rule; [`PodDecider`] reads the objects.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, Client};
use weft_core::Identity;
use weft_core::attach::PodRef;

use crate::convert::{enrolled, labels};

/// What the agent does with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Capture it, as this identity.
    Capture(Identity),
    /// Leave it alone, and why.
    Leave(String),
}

/// The rule, for a pod and its namespace as the API server has them.
pub fn decide(
    pod: &Pod,
    namespace: Option<&Namespace>,
    node: &str,
    trust_domain: &str,
    asked: &PodRef,
) -> Result<Decision, String> {
    if !asked.uid.is_empty() && pod.metadata.uid.as_deref() != Some(asked.uid.as_str()) {
        return Err(format!(
            "{asked}: its uid is {}, not {} (deleted and created again?)",
            pod.metadata.uid.as_deref().unwrap_or("unknown"),
            asked.uid
        ));
    }
    let spec = pod.spec.as_ref();
    let scheduled = spec.and_then(|s| s.node_name.as_deref());
    if scheduled != Some(node) {
        return Err(format!(
            "{asked} is scheduled on node {}, not on this agent's node {node}",
            scheduled.unwrap_or("(none)")
        ));
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Ok(Decision::Leave("on the host's network".into()));
    }
    let ns_labels = namespace.map(|n| labels(&n.metadata)).unwrap_or_default();
    if !enrolled(&ns_labels, &labels(&pod.metadata)) {
        return Ok(Decision::Leave(
            "not enrolled (istio.io/dataplane-mode: ambient on neither the pod nor its namespace, or none on the pod)".into(),
        ));
    }
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    Identity::new(trust_domain, &asked.namespace, account)
        .map(Decision::Capture)
        .map_err(|e| format!("{asked}: {e}"))
}

/// Reads pods and namespaces for [`decide`].
#[derive(Clone)]
pub struct PodDecider {
    client: Client,
    node: String,
    trust_domain: String,
}

impl std::fmt::Debug for PodDecider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodDecider")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PodDecider {
    /// A decider for the agent of `node`.
    pub fn new(client: Client, node: &str, trust_domain: &str) -> Self {
        PodDecider {
            client,
            node: node.to_owned(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// Reads the pod and its namespace, then decides.
    pub async fn decide(&self, asked: &PodRef) -> Result<Decision, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &asked.namespace);
        let pod = pods
            .get_opt(&asked.name)
            .await
            .map_err(|e| format!("{asked}: cannot read it from the API server: {e}"))?
            .ok_or_else(|| format!("{asked} does not exist in the API server"))?;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = namespaces
            .get_opt(&asked.namespace)
            .await
            .map_err(|e| format!("{asked}: cannot read its namespace: {e}"))?;
        decide(
            &pod,
            namespace.as_ref(),
            &self.node,
            &self.trust_domain,
            asked,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value, node: &str, host_network: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "a", "uid": "u-1", "labels": labels},
            "spec": {"nodeName": node, "serviceAccountName": "orders", "hostNetwork": host_network,
                     "containers": [{"name": "app"}]}}))
        .expect("pod")
    }

    fn namespace(mode: Option<&str>) -> Namespace {
        let labels = mode.map_or(json!({}), |m| json!({"istio.io/dataplane-mode": m}));
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": labels}}))
            .expect("namespace")
    }

    #[test]
    fn enrolled_pods_on_this_node_are_captured_as_their_account() {
        let asked = PodRef {
            namespace: "shop".into(),
            name: "a".into(),
            uid: "u-1".into(),
        };
        let identity = Identity::new("cluster.local", "shop", "orders").expect("id");
        let ambient = namespace(Some("ambient"));
        for (pod, ns, wanted) in [
            (
                pod(json!({}), "node-1", false),
                Some(&ambient),
                Ok(Some(identity.clone())),
            ),
            (pod(json!({}), "node-1", false), None, Ok(None)),
            (
                pod(
                    json!({"istio.io/dataplane-mode": "ambient"}),
                    "node-1",
                    false,
                ),
                None,
                Ok(Some(identity.clone())),
            ),
            (
                pod(json!({"istio.io/dataplane-mode": "none"}), "node-1", false),
                Some(&ambient),
                Ok(None),
            ),
            (pod(json!({}), "node-1", true), Some(&ambient), Ok(None)),
            (
                pod(json!({}), "node-2", false),
                Some(&ambient),
                Err("scheduled on node node-2"),
            ),
        ] {
            let got = decide(&pod, ns, "node-1", "cluster.local", &asked);
            match (got, wanted) {
                (Ok(Decision::Capture(id)), Ok(Some(want))) => assert_eq!(id, want),
                (Ok(Decision::Leave(_)), Ok(None)) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{e}"),
                (got, want) => panic!("{got:?}, wanted {want:?}"),
            }
        }
        let other = PodRef {
            uid: "u-2".into(),
            ..asked
        };
        let e = decide(
            &pod(json!({}), "node-1", false),
            Some(&ambient),
            "node-1",
            "cluster.local",
            &other,
        )
        .expect_err("another pod of that name");
        assert!(e.contains("u-1") && e.contains("u-2"), "{e}");
    }
}
