//! Following the API server's view of this node's pods ([`Enrollment`]):
//! a running, enrolled pod the agent does not hold yet — it ran before
//! its namespace was enrolled, or before this agent started — is
//! captured where it runs: its network namespace is found by its address
//! (`netns::find_by_address`), its listeners opened there, then its
//! redirect rules written, the order the CNI plugin keeps. A held pod the
//! API server shows no longer enrolled is let go: rules first (so nothing
//! is redirected to a closed port), then its listeners.
//!
//! A pod whose namespace cannot be found yet is tried again at the next
//! change, or after [`RETRY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_core::attach::{EnrolledPod, Enrollment};

use crate::pods::{hold, release, uid};
use crate::shared::{Shared, lock};

/// How often pods that could not be captured are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Runs until `enrollment`'s sender is dropped.
pub(crate) async fn follow(shared: Arc<Shared>, mut enrollment: watch::Receiver<Enrollment>) {
    loop {
        let now = enrollment.borrow_and_update().clone();
        for pod in &now.release {
            let id = uid(pod);
            let Some(ns) = lock(&shared.captured).get(&id).cloned() else {
                continue;
            };
            let path = ns.path().display().to_string();
            tokio::task::spawn_blocking(move || weft_cni::rules::remove(&path))
                .await
                .ok();
            release(&shared, &id);
            tracing::info!(%pod, "no longer enrolled: its rules and listeners are gone");
        }
        let mut missed = 0;
        for enrolled in &now.capture {
            if lock(&shared.captured).contains_key(&uid(&enrolled.pod)) {
                continue;
            }
            if let Err(e) = take(&shared, enrolled).await {
                missed += 1;
                tracing::info!(pod = %enrolled.pod, error = %e, "enrolled pod not captured yet; trying again");
            }
        }
        tokio::select! {
            changed = enrollment.changed() => if changed.is_err() {
                return;
            },
            () = tokio::time::sleep(RETRY), if missed > 0 => {}
        }
    }
}

/// Captures a running pod found by its address.
async fn take(shared: &Arc<Shared>, enrolled: &EnrolledPod) -> Result<(), String> {
    let pod = &enrolled.pod;
    let (path, interface) = crate::netns::find_by_address(enrolled.ip)
        .await
        .map_err(|e| format!("cannot look for its network namespace: {e}"))?
        .ok_or_else(|| format!("no network namespace on this host has {}", enrolled.ip))?;
    hold(shared, pod, &path, enrolled.ip, enrolled.identity.clone()).await?;
    let (netns, ip) = (path.display().to_string(), enrolled.ip);
    let written =
        tokio::task::spawn_blocking(move || weft_cni::rules::install(&netns, ip, &interface))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = written {
        release(shared, &uid(pod));
        return Err(e);
    }
    tracing::info!(%pod, netns = %path.display(), "running pod captured (enrolled after it started)");
    Ok(())
}
