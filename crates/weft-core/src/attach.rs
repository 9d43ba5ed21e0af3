//! What the CNI plugin (`weft-cni`) and the node agent say to each other
//! over the agent's attach socket (one JSON object per line, one answer
//! each): a pod's network namespace handed over when the container
//! runtime creates it (`capture`), given back when it is torn down
//! (`release`), and asked about (`check`). The agent decides whether the
//! pod is captured; the plugin writes the redirect rules only after the
//! agent says its listeners are open in the namespace.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A pod, as the runtime names it in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID` (empty when the runtime does not pass it).
    #[serde(default)]
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}/{}", self.namespace, self.name)
    }
}

/// A request about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PodRequest {
    /// The pod's namespace was created: capture it if the mesh should,
    /// and answer once its listeners are open there.
    Capture {
        /// The pod.
        pod: PodRef,
        /// Its network namespace (`CNI_NETNS`, a path).
        netns: String,
        /// Its address on `interface`, from the previous plugin's result.
        ip: Option<IpAddr>,
        /// The pod's interface (`CNI_IFNAME`).
        interface: String,
    },
    /// The pod's namespace is being torn down: close its listeners.
    Release {
        /// The pod.
        pod: PodRef,
    },
    /// Whether the pod is captured as it should be.
    Check {
        /// The pod.
        pod: PodRef,
    },
}

/// The agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReply {
    /// Why it failed, if it did (the pod must not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the pod is captured (its listeners open): the plugin then
    /// writes the redirect rules. `false`: leave the pod untouched.
    #[serde(default)]
    pub captured: bool,
    /// Why it is or is not captured, for the plugin's log.
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_plugin_writes_them() {
        let text = r#"{"op":"capture","pod":{"namespace":"shop","name":"a","uid":"u"},"netns":"/var/run/netns/cni-1","ip":"10.1.0.5","interface":"eth0"}"#;
        let r: PodRequest = serde_json::from_str(text).expect("parse");
        assert!(matches!(r, PodRequest::Capture { ref pod, .. } if pod.name == "a"));
        assert_eq!(
            serde_json::from_str::<PodRequest>(&serde_json::to_string(&r).expect("write"))
                .expect("round trip"),
            r
        );
        let release: PodRequest =
            serde_json::from_str(r#"{"op":"release","pod":{"namespace":"shop","name":"a"}}"#)
                .expect("release");
        assert!(matches!(release, PodRequest::Release { pod } if pod.uid.is_empty()));
    }
}

/// A pod on the node the API server shows enrolled and running: the node
/// agent captures it even when no CNI plugin handed it over (it ran
/// before its namespace was enrolled, or before the agent started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPod {
    /// The pod.
    pub pod: PodRef,
    /// Its address (`status.podIP`).
    pub ip: IpAddr,
    /// Its identity (its service account's).
    pub identity: crate::Identity,
}

/// What the API server says about the pods of one node: which the node
/// agent should hold, and which it should let go (no longer enrolled, or
/// on the host's network). Pods in neither list (not running yet, or
/// unknown) are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrollment {
    /// Enrolled and running, with an address.
    pub capture: Vec<EnrolledPod>,
    /// Explicitly not in the mesh.
    pub release: Vec<PodRef>,
}
