//! How the node agent decides which pods handed over by the CNI plugin
//! it captures, and learns which running pods it should hold (on
//! Kubernetes, from the API server: see `weft-kube`'s `capture` and
//! `enrollment` modules, wired in by the `weft` binary).

use std::future::Future;
use std::pin::Pin;

use weft_core::Identity;
use weft_core::attach::{Enrollment, PodRef};

/// What becomes of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Captured, as this identity.
    Capture(Identity),
    /// Left alone, and why.
    Leave(String),
}

/// A decision under way (`Err` when it cannot be made: the plugin fails,
/// and the runtime tries again).
pub type Deciding<'a> = Pin<Box<dyn Future<Output = Result<Verdict, String>> + Send + 'a>>;

/// Decides whether a pod is captured.
pub trait PodPolicy: Send + Sync {
    /// The decision for `pod`.
    fn decide<'a>(&'a self, pod: &'a PodRef) -> Deciding<'a>;

    /// The node's pods the agent should hold and let go, kept current
    /// (`None`: only what the CNI plugin hands over is captured).
    fn enrollment(&self) -> Option<tokio::sync::watch::Receiver<Enrollment>> {
        None
    }
}
