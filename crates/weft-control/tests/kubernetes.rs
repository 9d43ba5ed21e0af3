//! `weft control` reading a cluster: a fake API server (named as such:
//! no real one can run here) with the real kube-rs client behind the
//! control plane, and a node proxy subscribed to it. Namespaces, Nodes,
//! Services and Pods added, changed and deleted reach the node's view
//! within a second; cut watches and `410 Gone` lose and duplicate
//! nothing; a pod that stops being ready leaves the endpoints; the
//! namespace's `istio.io/dataplane-mode: ambient` enrolls and its removal
//! withdraws.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_control::Options;
use weft_control::kubernetes::KubeSource;
use weft_kube_fake::FakeApiServer;
use weft_node::NodeOptions;
use weft_state::{MeshView, NamespacedName};

fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({"istio.io/dataplane-mode": "ambient"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn node_object(zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {
        "topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": zone}}})
}

fn service(port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "reviews"},
                 "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
}

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "reviews",
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Waits (1 s at most) until the node's view satisfies `done`.
async fn seen(
    view: &Arc<arc_swap::ArcSwap<MeshView>>,
    what: &str,
    done: impl Fn(&MeshView) -> bool,
) {
    seen_within(view, what, Duration::from_secs(1), done).await;
}

/// Waits (`limit` at most) until the node's view satisfies `done`.
async fn seen_within(
    view: &Arc<arc_swap::ArcSwap<MeshView>>,
    what: &str,
    limit: Duration,
    done: impl Fn(&MeshView) -> bool,
) {
    let started = Instant::now();
    loop {
        if done(&view.load()) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not in the node's view within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The service as the node names it (namespace and host).
fn reviews() -> NamespacedName {
    NamespacedName::new("shop", "reviews.shop.svc.cluster.local")
}

fn endpoints(v: &MeshView) -> Vec<String> {
    let mut e = v.endpoints.get(&reviews()).cloned().unwrap_or_default();
    e.sort();
    e
}

fn has_pod(v: &MeshView, name: &str) -> bool {
    v.workloads.values().any(|w| w.name.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_reaches_a_node_proxy_and_follows_every_change() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(namespace("shop", true));
    fake.apply(node_object("eu-west-1a"));
    fake.apply(service(80));
    fake.apply(pod("reviews-1", "127.0.3.1", true));

    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "node-1 node-1-token-0123456789\n").expect("tokens");
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let control = weft_control::start(Options {
        bootstrap_tokens: Some(tokens),
        kubernetes: Some(KubeSource {
            client,
            settings: Default::default(),
            origin: format!("kubernetes {}", fake.url()),
            extra_dir: None,
        }),
        ..Options::ephemeral(tmp.path().join("none"), tmp.path().join("ca"))
    })
    .await
    .expect("control plane");
    let roots =
        weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert).expect("root"), "root")
            .expect("pem");
    let node = weft_node::start(NodeOptions {
        attach_socket: None,
        state_dir: None,
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        xds_addr: control.xds_addr,
        ca_addr: control.tls_addr,
        roots,
        token: "node-1-token-0123456789".into(),
        admin_addr: "127.0.3.254:0".parse().expect("addr"),
        metrics_addr: "127.0.3.254:0".parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
    })
    .await
    .expect("node proxy");
    let view = node.view.clone();

    // The initial sync: the service with its VIP and host, the pod as its
    // endpoint, with its node's locality.
    let started = Instant::now();
    while !has_pod(&view.load(), "reviews-1") {
        assert!(started.elapsed() < Duration::from_secs(10), "initial sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        let v = view.load();
        assert_eq!(
            v.services_by_host.get("reviews.shop.svc.cluster.local"),
            Some(&reviews())
        );
        assert_eq!(v.services[&reviews()].vip, Some([10, 96, 0, 10].into()));
        let w = v
            .workloads
            .values()
            .find(|w| w.name.name == "reviews-1")
            .expect("pod");
        assert_eq!(
            w.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
        assert_eq!(w.locality.to_string(), "eu-west/eu-west-1a");
        assert_eq!(endpoints(&v).len(), 1, "{:?}", endpoints(&v));
    }

    // Added, changed, deleted.
    fake.apply(pod("reviews-2", "127.0.3.2", true));
    seen(&view, "a new pod", |v| endpoints(v).len() == 2).await;
    fake.apply(service(9080));
    seen(&view, "a changed port", |v| {
        v.workloads
            .values()
            .find(|w| w.name.name == "reviews-1")
            .is_some_and(|w| {
                w.services
                    .get(&reviews())
                    .is_some_and(|p| p.contains_key(&9080))
            })
    })
    .await;
    fake.apply(node_object("eu-west-1b"));
    seen(&view, "a node's new zone", |v| {
        v.workloads
            .values()
            .any(|w| w.name.name == "reviews-1" && w.locality.to_string() == "eu-west/eu-west-1b")
    })
    .await;

    // Not ready: out of the endpoints; ready again: back.
    fake.apply(pod("reviews-2", "127.0.3.2", false));
    seen(&view, "a pod no longer ready", |v| !has_pod(v, "reviews-2")).await;
    fake.apply(pod("reviews-2", "127.0.3.2", true));
    seen(&view, "a pod ready again", |v| has_pod(v, "reviews-2")).await;

    // A cut watch: what changed meanwhile arrives.
    fake.drop_watches();
    assert!(fake.delete("v1", "Pod", "shop", "reviews-2"));
    seen(&view, "a deletion across a cut watch", |v| {
        !has_pod(v, "reviews-2")
    })
    .await;

    // 410 Gone: the reflectors list again (after kube-rs's backoff, under
    // a second or two); nothing lost or duplicated. The namespace leaves
    // the mesh meanwhile: its pods are withdrawn.
    fake.compact();
    fake.apply(pod("reviews-3", "127.0.3.3", true));
    let relist = Duration::from_secs(5);
    seen_within(&view, "a pod after 410 Gone", relist, |v| {
        has_pod(v, "reviews-3")
    })
    .await;
    assert_eq!(
        endpoints(&view.load()).len(),
        2,
        "reviews-1 and reviews-3, once each"
    );
    fake.apply(namespace("shop", false));
    seen_within(&view, "withdrawn with the namespace label", relist, |v| {
        endpoints(v).is_empty()
    })
    .await;
    fake.apply(namespace("shop", true));
    seen(&view, "enrolled again", |v| endpoints(v).len() == 2).await;
    assert!(
        has_pod(&view.load(), "reviews-1") && has_pod(&view.load(), "reviews-3"),
        "once each"
    );

    // The service goes.
    assert!(fake.delete("v1", "Service", "shop", "reviews"));
    seen(&view, "a deleted service", |v| {
        !v.services.contains_key(&reviews())
    })
    .await;

    node.stop();
    control.stop().await;
}
