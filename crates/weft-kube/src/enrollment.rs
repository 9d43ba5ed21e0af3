//! Which pods of one node the mesh holds, followed from the API server by
//! the node agent: pods that run there and are enrolled are captured even
//! when no CNI plugin handed them over (they ran before their namespace
//! was enrolled, or before the agent started), and pods no longer
//! enrolled are let go, as Istio's CNI node agent does.
//!
//! [`enrollment`] is the pure rule (the same as [`crate::capture::decide`]
//! for each pod); [`follow`] keeps it current from two watchers (the
//! node's pods, by field selector, and namespaces).

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use weft_core::attach::{EnrolledPod, Enrollment, PodRef};

use crate::capture::{Decision, decide};

/// The pods of `node` the agent should hold and let go, from the pods
/// and namespaces the API server has.
pub fn enrollment(
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
    node: &str,
    trust_domain: &str,
) -> Enrollment {
    let mut out = Enrollment::default();
    for pod in pods {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            continue;
        };
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        // A pod being deleted is torn down by the runtime (CNI `DEL`).
        let going = pod.metadata.deletion_timestamp.is_some();
        if !on_node || going || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let asked = PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let ns = namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(namespace.as_str()));
        match decide(pod, ns.map(|n| &**n), node, trust_domain, &asked) {
            Ok(Decision::Capture(identity)) => {
                let ip = status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                if let (Some(ip), Some("Running")) = (ip, phase) {
                    out.capture.push(EnrolledPod {
                        pod: asked,
                        ip,
                        identity,
                    });
                }
            }
            Ok(Decision::Leave(_)) => out.release.push(asked),
            Err(_) => {}
        }
    }
    let key = |p: &PodRef| (p.namespace.clone(), p.name.clone());
    out.capture.sort_by_key(|e| key(&e.pod));
    out.release.sort_by_key(key);
    out
}

/// Follows the enrollment of `node`'s pods: the receiver has the current
/// one (empty until both watchers have listed), the task keeps it so
/// until dropped.
pub fn follow(
    client: &Client,
    node: &str,
    trust_domain: &str,
) -> (watch::Receiver<Enrollment>, JoinHandle<()>) {
    let changed = Arc::new(Notify::new());
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let watchers = [
        crate::source::reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            "Pod".into(),
            changed.clone(),
            pod_writer,
        ),
        crate::source::reflect(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            "Namespace".into(),
            changed.clone(),
            ns_writer,
        ),
    ];
    let (tx, rx) = watch::channel(Enrollment::default());
    let (node, trust_domain) = (node.to_owned(), trust_domain.to_owned());
    let task = tokio::spawn(async move {
        // Aborted with this task.
        struct Abort([JoinHandle<()>; 2]);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.iter().for_each(JoinHandle::abort);
            }
        }
        let _watchers = Abort(watchers);
        let _ = pods.wait_until_ready().await;
        let _ = namespaces.wait_until_ready().await;
        loop {
            let now = enrollment(&pods.state(), &namespaces.state(), &node, &trust_domain);
            tx.send_if_modified(|held| {
                let modified = *held != now;
                *held = now;
                modified
            });
            changed.notified().await;
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, phase: &str, ip: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "uid": format!("u-{name}")},
                "spec": {"nodeName": node, "serviceAccountName": "sa", "containers": [{"name": "app"}]},
                "status": {"phase": phase, "podIP": ip}}))
            .expect("pod"),
        )
    }

    fn namespace(name: &str, enrolled: bool) -> Arc<Namespace> {
        let labels = if enrolled {
            json!({"istio.io/dataplane-mode": "ambient"})
        } else {
            json!({})
        };
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("namespace"),
        )
    }

    #[test]
    fn running_enrolled_pods_of_this_node_are_held_and_the_others_let_go() {
        let pods = [
            pod("shop", "a", "node-1", "Running", Some("10.0.0.5")),
            pod("shop", "pending", "node-1", "Pending", None),
            pod("shop", "elsewhere", "node-2", "Running", Some("10.0.1.5")),
            pod("shop", "done", "node-1", "Succeeded", Some("10.0.0.6")),
            pod("legacy", "b", "node-1", "Running", Some("10.0.0.7")),
        ];
        let namespaces = [namespace("shop", true), namespace("legacy", false)];
        let e = enrollment(&pods, &namespaces, "node-1", "cluster.local");
        assert_eq!(e.capture.len(), 1, "{e:?}");
        assert_eq!(e.capture[0].pod.name, "a");
        assert_eq!(e.capture[0].pod.uid, "u-a");
        assert_eq!(e.capture[0].ip.to_string(), "10.0.0.5");
        assert_eq!(
            e.capture[0].identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/sa"
        );
        // A pending pod is neither held nor let go: the CNI plugin may be
        // handing it over right now.
        let released: Vec<&str> = e.release.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(released, ["b"]);
    }

    #[test]
    fn unenrolling_a_namespace_lets_its_pods_go() {
        let pods = [pod("shop", "a", "node-1", "Running", Some("10.0.0.5"))];
        let held = enrollment(&pods, &[namespace("shop", true)], "node-1", "cluster.local");
        let gone = enrollment(
            &pods,
            &[namespace("shop", false)],
            "node-1",
            "cluster.local",
        );
        assert_eq!((held.capture.len(), held.release.len()), (1, 0));
        assert_eq!((gone.capture.len(), gone.release.len()), (0, 1));
    }
}
