//! Pods handed over by the CNI plugin (`weft-cni`), on Kubernetes. Unlike
//! `weft run`'s attachments, which last as long as its connection, a
//! pod's capture lasts from the plugin's `ADD` to its `DEL`: the agent
//! asks its [`PodPolicy`] whether the pod is captured (and as whom), and
//! if so opens the pod's listeners inside its namespace before answering,
//! so the plugin writes the redirect rules only once something listens.
//!
//! What is captured is kept in the state directory (`pods.json`, 0600,
//! written atomically at every change): a restarted agent opens every
//! captured pod's listeners again at start, so pods whose rules stayed in
//! place are not redirected to nothing for longer than the restart.
//!
//! The pod is not in the registry yet when its namespace is created (it
//! has no address in the API until it runs): the agent serves it from a
//! provisional workload built from what the plugin and the policy say —
//! its address, name and identity — until the registry has it. Inbound
//! tunnels to it wait for its certificate, which the control plane issues
//! once the pod runs.
//!
//! The host's own connections to a captured pod (the kubelet's probes)
//! are let through in plaintext from a fixed source, as in Istio
//! (`weft_cni::rules::host_allow`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_core::Identity;
use weft_core::attach::{PodRef, PodReply, PodRequest};
use weft_core::model::NamespacedName;
use weft_state::WorkloadInfo;

use crate::netns::Netns;
use crate::shared::{Shared, listener_key, lock};

pub use crate::pod_policy::{Deciding, PodPolicy, Verdict};

/// How long a capture waits for the pod's listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The workload a captured pod is served as until the registry has it.
fn provisional(shared: &Shared, pod: &PodRef, ip: IpAddr, identity: Identity) -> WorkloadInfo {
    WorkloadInfo {
        uid: uid(pod),
        name: NamespacedName::new(&pod.namespace, &pod.name),
        ip,
        identity,
        node: shared.node.clone(),
        locality: Default::default(),
        cluster: String::new(),
        network: String::new(),
        network_gateway: None,
        services: Default::default(),
        policies: Vec::new(),
        permissive: false,
        waypoint: false,
        gateway: false,
        enforced: false,
        canonical_service: pod.name.clone(),
        canonical_revision: "latest".into(),
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
    match hold(shared, pod, std::path::Path::new(netns), ip, identity).await {
        Ok(()) => PodReply {
            captured: true,
            reason: "listeners open".into(),
            ..PodReply::default()
        },
        Err(e) => failure(e),
    }
}

/// Captures `pod` in the namespace at `netns` as `identity`: opens its
/// listeners there and returns once they are open (the caller writes the
/// redirect rules then).
pub(crate) async fn hold(
    shared: &Arc<Shared>,
    pod: &PodRef,
    netns: &std::path::Path,
    ip: IpAddr,
    identity: Identity,
) -> Result<(), String> {
    let ns = Arc::new(Netns::open(netns).map_err(|e| format!("{pod}: {e}"))?);
    let id = uid(pod);
    let w = Arc::new(provisional(shared, pod, ip, identity));
    lock(&shared.provisional).insert(id.clone(), w.clone());
    lock(&shared.captured).insert(id.clone(), ns.clone());
    shared.wake.notify_one();
    let until = Instant::now() + READY_TIMEOUT;
    while !listeners_ready(shared, &w, &ns) {
        if Instant::now() > until {
            release(shared, &id);
            return Err(format!(
                "{pod}: its listeners in {} were not open within {READY_TIMEOUT:?}; see the node agent's log",
                netns.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    save(shared);
    allow_probes(ip).await;
    tracing::info!(%pod, netns = %netns.display(), %ip, identity = %w.identity, "pod captured");
    Ok(())
}

/// Lets the host's own connections to a captured pod at `ip` (the
/// kubelet's probes) through, as Istio does (`weft_cni::rules`).
async fn allow_probes(ip: IpAddr) {
    let allowed = tokio::task::spawn_blocking(move || weft_cni::rules::host_allow(ip)).await;
    if let Ok(Err(e)) = allowed {
        tracing::warn!(%ip, error = %e, "the kubelet's probes of this pod will be refused");
    }
}

pub(crate) fn release(shared: &Shared, id: &str) {
    let had = lock(&shared.captured).remove(id).is_some();
    if let Some(w) = lock(&shared.provisional).remove(id) {
        let ip = w.ip;
        tokio::task::spawn_blocking(move || weft_cni::rules::host_forget(ip));
    }
    if had {
        save(shared);
        tracing::info!(workload = %id, "pod released");
    }
    shared.wake.notify_one();
}

/// One captured pod as kept on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Kept {
    namespace: String,
    name: String,
    netns: std::path::PathBuf,
    ip: IpAddr,
    identity: String,
}

/// Writes the captured pods to the state file (if the agent keeps one).
fn save(shared: &Shared) {
    let Some(file) = &shared.pods_file else {
        return;
    };
    let captured = lock(&shared.captured).clone();
    let kept: Vec<Kept> = lock(&shared.provisional)
        .values()
        .filter_map(|w| {
            Some(Kept {
                namespace: w.name.namespace.clone(),
                name: w.name.name.clone(),
                netns: captured.get(&w.uid)?.path().to_owned(),
                ip: w.ip,
                identity: w.identity.to_string(),
            })
        })
        .collect();
    let text = serde_json::to_vec_pretty(&kept).unwrap_or_default();
    if let Err(e) = weft_ca::secret::write_private(file, &text) {
        tracing::warn!(file = %file.display(), error = %e, "cannot keep the captured pods; a restart will not find them");
    }
}

/// Takes back the pods a previous run captured whose namespaces still
/// exist (their rules stayed); returns how many.
pub(crate) fn restore(shared: &Shared) -> usize {
    let Some(file) = &shared.pods_file else {
        return 0;
    };
    let Ok(text) = std::fs::read(file) else {
        return 0;
    };
    let kept: Vec<Kept> = match serde_json::from_slice(&text) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "the kept captured pods do not parse; ignored");
            return 0;
        }
    };
    let mut restored = 0;
    for k in kept {
        let pod = PodRef {
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            uid: String::new(),
        };
        let (Ok(identity), Ok(ns)) = (k.identity.parse::<Identity>(), Netns::open(&k.netns)) else {
            tracing::info!(%pod, netns = %k.netns.display(), "a kept pod is gone; not restored");
            continue;
        };
        let id = uid(&pod);
        lock(&shared.provisional).insert(
            id.clone(),
            Arc::new(provisional(shared, &pod, k.ip, identity)),
        );
        lock(&shared.captured).insert(id, Arc::new(ns));
        tokio::spawn(allow_probes(k.ip));
        restored += 1;
    }
    if restored > 0 {
        tracing::info!(pods = restored, "captured pods taken back after a restart");
        shared.wake.notify_one();
    }
    restored
}
