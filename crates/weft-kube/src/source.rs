//! The reflectors: one kube-rs watcher per kind, each keeping a store of
//! what the API server holds (re-watching after a cut connection,
//! re-listing after `410 Gone`, backing off on errors), and one signal
//! that something changed. [`Reflectors::cluster`] reads every store at
//! once into a [`Cluster`] for [`crate::convert::documents`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::convert::Cluster;
pub use weft_core::names::plural;

/// The kinds of weft's configuration read from the cluster as they are
/// (group, version, kind): every kind weft reads except `Secret` (typed
/// below), at its newest version.
pub fn configuration_kinds() -> Vec<ApiResource> {
    weft_config::kinds::served_kinds()
        .into_iter()
        .filter(|(group, _, _)| !group.is_empty())
        .map(|(group, version, kind)| ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: format!("{group}/{version}"),
            kind: kind.to_owned(),
            plural: plural(kind),
        })
        .collect()
}

/// The stores, kept current by their watchers.
pub struct Reflectors {
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    /// The Deployments weft control made for Gateways (by label).
    deployments: Store<Deployment>,
    resources: Vec<(ApiResource, Store<DynamicObject>)>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Reflectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflectors")
            .field("kinds", &(7 + self.resources.len()))
            .finish_non_exhaustive()
    }
}

impl Drop for Reflectors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The objects of a store, owned.
/// Runs one watcher into a store, signalling every change.
pub(crate) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    what: String,
    changed: Arc<Notify>,
    writer: reflector::store::Writer<K>,
) -> JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        tracing::info!(kind = %what, "watching again");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(kind = %what, error = %e, "cannot watch; retrying with backoff (is its CRD installed, and may weft list it?)");
                    }
                    failing = true;
                }
            }
        }
    })
}

impl Reflectors {
    /// Starts a watcher for every kind weft reads.
    pub fn start(client: &Client) -> Reflectors {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        macro_rules! typed {
            ($k:ty, $what:literal) => {{
                let (store, writer) = reflector::store::<$k>();
                tasks.push(reflect(
                    Api::<$k>::all(client.clone()),
                    watcher::Config::default(),
                    $what.into(),
                    changed.clone(),
                    writer,
                ));
                store
            }};
        }
        let namespaces = typed!(Namespace, "Namespace");
        let nodes = typed!(Node, "Node");
        let services = typed!(Service, "Service");
        let pods = typed!(Pod, "Pod");
        let slices = typed!(EndpointSlice, "EndpointSlice");
        let secrets = typed!(Secret, "Secret");
        let deployments = {
            let (store, writer) = reflector::store::<Deployment>();
            let (key, value) = crate::labels::MANAGED_BY;
            tasks.push(reflect(
                Api::<Deployment>::all(client.clone()),
                watcher::Config::default().labels(&format!("{key}={value}")),
                "Deployment".into(),
                changed.clone(),
                writer,
            ));
            store
        };
        let resources = configuration_kinds()
            .into_iter()
            .map(|ar| {
                let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
                let store = writer.as_reader();
                tasks.push(reflect(
                    Api::<DynamicObject>::all_with(client.clone(), &ar),
                    watcher::Config::default(),
                    ar.api_version.clone() + "/" + &ar.kind,
                    changed.clone(),
                    writer,
                ));
                (ar, store)
            })
            .collect();
        Reflectors {
            namespaces,
            nodes,
            services,
            pods,
            slices,
            secrets,
            deployments,
            resources,
            changed,
            tasks,
        }
    }

    /// Waits until every store has its first list, or `limit` has passed
    /// (kinds whose CRD is not installed never list: they count as empty,
    /// and are named in the result).
    pub async fn ready(&self, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut missing = Vec::new();
        macro_rules! wait {
            ($store:expr, $what:expr) => {
                if tokio::time::timeout_at(deadline, $store.wait_until_ready())
                    .await
                    .is_err()
                {
                    missing.push($what.to_string());
                }
            };
        }
        wait!(self.namespaces, "Namespace");
        wait!(self.nodes, "Node");
        wait!(self.services, "Service");
        wait!(self.pods, "Pod");
        wait!(self.slices, "EndpointSlice");
        wait!(self.secrets, "Secret");
        wait!(self.deployments, "Deployment");
        for (ar, store) in &self.resources {
            wait!(store, format!("{}/{}", ar.api_version, ar.kind));
        }
        missing
    }

    /// Resolves at the next change since the last call (none is lost).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Everything the stores hold now.
    pub fn cluster(&self) -> Cluster {
        let mut resources: Vec<Value> = Vec::new();
        for (ar, store) in &self.resources {
            for o in store.state() {
                let mut v = serde_json::to_value(&*o).unwrap_or(Value::Null);
                // Objects from a list carry no type; the store knows it.
                v["apiVersion"] = Value::String(ar.api_version.clone());
                v["kind"] = Value::String(ar.kind.clone());
                resources.push(v);
            }
        }
        // Certificates and API keys; never service-account tokens or
        // registry credentials.
        for s in self.secrets.state().into_iter().filter(|s| {
            matches!(
                s.type_.as_deref(),
                None | Some("Opaque" | "kubernetes.io/tls")
            )
        }) {
            let mut v = serde_json::to_value(&*s).unwrap_or(Value::Null);
            v["apiVersion"] = Value::String("v1".into());
            v["kind"] = Value::String("Secret".into());
            resources.push(v);
        }
        Cluster {
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            services: self.services.state(),
            pods: self.pods.state(),
            endpoint_slices: self.slices.state(),
            deployments: self.deployments.state(),
            resources,
        }
    }
}
