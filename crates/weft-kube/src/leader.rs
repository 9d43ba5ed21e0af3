//! Leader election over a `coordination.k8s.io/v1` `Lease`, as
//! Kubernetes controllers do it: every replica serves proxies and
//! certificates, one — the Lease's holder — writes statuses and Events.
//!
//! Each replica tries every `retry` period: it creates the Lease if there
//! is none, renews it while it holds it, and takes it over when the
//! holder has not renewed for `duration` (measured on this replica's
//! clock from when it last saw the record change, so clocks need not
//! agree). Every write names the `resourceVersion` it read, so of two
//! replicas racing only one wins (the other gets `409 Conflict`). A
//! leader whose renewals fail steps down two thirds of `duration` after
//! its last renewal (client-go's renew deadline), before anyone else may
//! take over, so two replicas never lead at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How to take part in an election.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's name in the Lease (its pod name).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
    /// How often each replica tries.
    pub retry: Duration,
}

impl Election {
    /// The defaults of Kubernetes' own controllers: 15 s lease, 2 s
    /// retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Election {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }

    /// Takes part until the returned receiver's senders are dropped
    /// (the task ends with the runtime or when aborted); the receiver
    /// says whether this replica leads now.
    pub fn spawn(
        self,
        client: kube::Client,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let api: Api<Lease> = Api::namespaced(client, &self.namespace);
            let deadline = self.duration * 2 / 3;
            let mut seen: Option<(String, Instant)> = None;
            let mut renewed = Instant::now();
            loop {
                let leading = *tx.borrow();
                let attempt = Instant::now();
                // A round never outlasts the renew deadline: a hung API
                // server must not keep a leader leading.
                let budget = if leading {
                    (renewed + deadline).saturating_duration_since(attempt)
                } else {
                    deadline
                };
                let outcome = tokio::time::timeout(budget, self.try_once(&api, &mut seen))
                    .await
                    .unwrap_or_else(|_| Err(RoundError::TimedOut(budget)));
                let now_leading = match outcome {
                    Ok(true) => {
                        renewed = attempt;
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        tracing::warn!(lease = %format!("{}/{}", self.namespace, self.name), error = %e, "leader election: cannot read or write the Lease");
                        // Keep leading only while the Lease we hold is
                        // surely still ours.
                        leading && renewed.elapsed() < deadline
                    }
                };
                if leading != now_leading {
                    tracing::info!(identity = %self.identity, leading = now_leading, "leader election");
                    let _ = tx.send(now_leading);
                }
                tokio::time::sleep(self.retry).await;
            }
        });
        (rx, task)
    }

    /// One round: whether this replica holds the Lease afterwards.
    async fn try_once(
        &self,
        api: &Api<Lease>,
        seen: &mut Option<(String, Instant)>,
    ) -> Result<bool, RoundError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(current) = api.get_opt(&self.name).await.map_err(RoundError::Api)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(RoundError::Api(e)),
            };
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        // When did this record last change, by our clock?
        let changed_at = match seen {
            Some((v, at)) if *v == version => *at,
            _ => {
                *seen = Some((version.clone(), Instant::now()));
                Instant::now()
            }
        };
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
        );
        let mine = holder == self.identity;
        let expired = holder.is_empty() || changed_at.elapsed() >= held_for;
        if !mine && !expired {
            return Ok(false);
        }
        let mut next = current;
        let spec = next.spec.get_or_insert_with(Default::default);
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        match api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(written) => {
                *seen = written
                    .metadata
                    .resource_version
                    .map(|v| (v, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(RoundError::Api(e)),
        }
    }
}

/// Why a round did not decide.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// The API server refused or failed.
    #[error(transparent)]
    Api(kube::Error),
    /// It did not answer within the renew deadline.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}
