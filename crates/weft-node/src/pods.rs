//! Pods handed over by the CNI plugin (`weft-cni`), on Kubernetes. Unlike
//! `weft run`'s attachments, which last as long as its connection, a
//! pod's capture lasts from the plugin's `ADD` to its `DEL`: the agent
//! asks its [`PodPolicy`] whether the pod is captured (and as whom), and
//! if so opens the pod's listeners inside its namespace before answering,
//! so the plugin writes the redirect rules only once something listens.
//!
//! The pod is not in the registry yet when its namespace is created (it
//! has no address in the API until it runs): the agent serves it from a
//! provisional workload built from what the plugin and the policy say —
//! its address, name and identity — until the registry has it. Inbound
//! tunnels to it wait for its certificate, which the control plane issues
//! once the pod runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_core::attach::{PodRef, PodReply, PodRequest};
use weft_core::model::NamespacedName;
use weft_state::WorkloadInfo;

use crate::netns::Netns;
use crate::shared::{Shared, listener_key, lock};

/// How long a capture waits for the pod's listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::pod_policy::{Deciding, PodPolicy, Verdict};

/// The registry's uid of a pod's workload.
pub(crate) fn uid(pod: &PodRef) -> String {
    format!("weft/{}/{}", pod.namespace, pod.name)
}

fn failure(error: String) -> PodReply {
    PodReply {
        error: Some(error),
        ..PodReply::default()
    }
}

/// Answers one request from the CNI plugin.
pub(crate) async fn answer(shared: &Arc<Shared>, request: PodRequest) -> PodReply {
    let Some(policy) = shared.pods.clone() else {
        return failure(format!(
            "the node agent of {} takes no pods from a CNI plugin (start it with --kubernetes)",
            shared.node
        ));
    };
    match request {
        PodRequest::Capture {
            pod,
            netns,
            ip,
            interface: _,
        } => capture(shared, policy.as_ref(), &pod, &netns, ip).await,
        PodRequest::Release { pod } => {
            release(shared, &uid(&pod));
            PodReply {
                reason: "released".into(),
                ..PodReply::default()
            }
        }
        PodRequest::Check { pod } => {
            let id = uid(&pod);
            let held = lock(&shared.captured).get(&id).cloned();
            let provisional = lock(&shared.provisional).get(&id).cloned();
            match (held, provisional) {
                (Some(ns), Some(w)) if listeners_ready(shared, &w, &ns) => PodReply {
                    captured: true,
                    reason: "listeners open".into(),
                    ..PodReply::default()
                },
                (Some(_), _) => failure(format!("{pod}: captured, but its listeners are not open")),
                (None, _) => match policy.decide(&pod).await {
                    Ok(Verdict::Capture(_)) => {
                        failure(format!("{pod} should be captured and is not"))
                    }
                    Ok(Verdict::Leave(reason)) => PodReply {
                        reason,
                        ..PodReply::default()
                    },
                    Err(e) => failure(e),
                },
            }
        }
    }
}

fn listeners_ready(shared: &Shared, w: &WorkloadInfo, ns: &Netns) -> bool {
    let ready = lock(&shared.ready);
    ["inbound", "captured", "plaintext"]
        .iter()
        .all(|kind| ready.contains(&listener_key(kind, w, Some(ns))))
}

async fn capture(
    shared: &Arc<Shared>,
    policy: &dyn PodPolicy,
    pod: &PodRef,
    netns: &str,
    ip: Option<IpAddr>,
) -> PodReply {
    let identity = match policy.decide(pod).await {
        Ok(Verdict::Capture(identity)) => identity,
        Ok(Verdict::Leave(reason)) => {
            tracing::info!(%pod, %reason, "pod left alone");
            return PodReply {
                reason,
                ..PodReply::default()
            };
        }
        Err(e) => return failure(e),
    };
    let Some(ip) = ip else {
        return failure(format!("{pod}: the CNI plugin gave no address for it"));
    };
    let ns = match Netns::open(std::path::Path::new(netns)) {
        Ok(ns) => Arc::new(ns),
        Err(e) => return failure(format!("{pod}: {e}")),
    };
    let id = uid(pod);
    let w = Arc::new(WorkloadInfo {
        uid: id.clone(),
        name: NamespacedName::new(&pod.namespace, &pod.name),
        ip,
        identity,
        node: shared.node.clone(),
        locality: Default::default(),
        services: Default::default(),
        policies: Vec::new(),
        permissive: false,
        waypoint: false,
        gateway: false,
        enforced: false,
        canonical_service: pod.name.clone(),
        canonical_revision: "latest".into(),
    });
    lock(&shared.provisional).insert(id.clone(), w.clone());
    lock(&shared.captured).insert(id.clone(), ns.clone());
    shared.wake.notify_one();
    let until = Instant::now() + READY_TIMEOUT;
    while !listeners_ready(shared, &w, &ns) {
        if Instant::now() > until {
            release(shared, &id);
            return failure(format!(
                "{pod}: its listeners in {netns} were not open within {READY_TIMEOUT:?}; see the node agent's log"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(%pod, %netns, %ip, identity = %w.identity, "pod captured");
    PodReply {
        captured: true,
        reason: "listeners open".into(),
        ..PodReply::default()
    }
}

fn release(shared: &Shared, id: &str) {
    let had = lock(&shared.captured).remove(id).is_some();
    lock(&shared.provisional).remove(id);
    if had {
        tracing::info!(workload = %id, "pod released");
    }
    shared.wake.notify_one();
}
