//! Fixtures shared by the Kubernetes tests: cluster objects for the fake
//! API server and a control plane reading it.

#![allow(dead_code)]

pub(crate) mod ads;
pub(crate) mod ztunnel;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_control::Options;
use weft_control::kubernetes::KubeSource;
use weft_kube_fake::FakeApiServer;

pub(crate) fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({"istio.io/dataplane-mode": "ambient"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub(crate) fn node_object(zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {
        "topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": zone}}})
}

pub(crate) fn service(port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "reviews"},
                 "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
}

pub(crate) fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "reviews",
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

pub(crate) fn pod_on(name: &str, app: &str, ip: &str, node: &str) -> Value {
    let mut p = pod(name, ip, true);
    p["metadata"]["labels"]["app"] = json!(app);
    p["spec"]["serviceAccountName"] = json!(app);
    p["spec"]["nodeName"] = json!(node);
    p
}

/// A control plane reading the fake's cluster (state in `tmp`).
pub(crate) async fn control_over(
    fake: &FakeApiServer,
    tmp: &tempfile::TempDir,
    bootstrap_tokens: Option<std::path::PathBuf>,
) -> weft_control::Running {
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    weft_control::start(Options {
        bootstrap_tokens,
        kubernetes: Some(KubeSource::new(
            client,
            format!("kubernetes {}", fake.url()),
        )),
        ..Options::ephemeral(tmp.path().join("none"), tmp.path().join("ca"))
    })
    .await
    .expect("control plane")
}

/// Waits (5 s at most) until `check` holds for an object the fake holds.
pub(crate) async fn object_until(
    fake: &FakeApiServer,
    (api_version, kind, name): (&str, &str, &str),
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let object = fake
            .get(api_version, kind, "shop", name)
            .unwrap_or(Value::Null);
        if check(&object) {
            return object;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {kind} {name} has {}",
            object["status"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn virtual_service(uri: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": uri}],
                 "route": [{"destination": {"host": "reviews"}}]}]}})
}
