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
use weft_kube_fake::FakeApiServer;
use weft_node::NodeOptions;
use weft_state::{MeshView, NamespacedName};

mod common;
use common::{
    control_over, namespace, node_object, object_until, pod, pod_on, service, virtual_service,
};

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
    let control = control_over(&fake, &tmp, Some(tokens)).await;
    let roots =
        weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert).expect("root"), "root")
            .expect("pem");
    let node = weft_node::start(NodeOptions {
        attach_socket: None,
        state_dir: None,
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        xds_addr: Some(control.xds_addr),
        ca_addr: control.tls_addr.into(),
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

    // Not ready: out of the endpoints (still known: it may call out);
    // ready again: back.
    let endpoint = |v: &MeshView, name: &str| {
        v.services
            .keys()
            .any(|s| v.endpoints_of(s).any(|w| w.name.name == name))
    };
    fake.apply(pod("reviews-2", "127.0.3.2", false));
    seen(&view, "a pod no longer ready", |v| {
        has_pod(v, "reviews-2") && !endpoint(v, "reviews-2")
    })
    .await;
    fake.apply(pod("reviews-2", "127.0.3.2", true));
    seen(&view, "a pod ready again", |v| endpoint(v, "reviews-2")).await;

    // A Service without a selector: its EndpointSlice's ready endpoints,
    // as they change.
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"name": "tcp", "port": 5432}]}}));
    let db_slice = |ready: bool| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "ports": [{"name": "tcp", "port": 5432}],
            "endpoints": [{"addresses": ["127.0.3.9"], "conditions": {"ready": ready}}]})
    };
    let db_endpoint = |v: &MeshView| {
        v.workloads
            .values()
            .any(|w| w.name.name.starts_with("db[") && w.ip.to_string() == "127.0.3.9")
    };
    fake.apply(db_slice(true));
    seen(&view, "an EndpointSlice's endpoint", db_endpoint).await;
    fake.apply(db_slice(false));
    seen(&view, "an EndpointSlice endpoint no longer ready", |v| {
        !db_endpoint(v)
    })
    .await;
    fake.apply(db_slice(true));
    seen(&view, "an EndpointSlice endpoint ready again", db_endpoint).await;
    assert!(fake.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "db-1"));
    seen(&view, "a deleted EndpointSlice", |v| !db_endpoint(v)).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_get_a_status_naming_the_field_while_the_rest_applies() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(namespace("shop", true));
    fake.apply(service(80));
    fake.apply(pod("reviews-1", "127.0.3.1", true));
    fake.apply(virtual_service(json!({"prefix": "/v1", "exact": "/v1"})));
    fake.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "canary", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                 "rules": [{"backendRefs": [{"name": "nope", "port": 80}]}]}}),
    );
    fake.apply(
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ports", "namespace": "shop"},
        "spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}}),
    );
    fake.apply(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"app": "reviews"}}]}}),
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    // Bad objects do not stop it.
    let control = control_over(&fake, &tmp, None).await;

    // The valid objects apply.
    let snapshot = control.config.snapshot.load();
    let policy = &snapshot.l7[&NamespacedName::new("shop", "reviews")];
    assert!(
        policy.subsets.contains_key("v1"),
        "the DestinationRule applies"
    );
    assert!(
        policy.routes.is_empty(),
        "the invalid VirtualService does not"
    );
    assert!(snapshot.policies.is_empty(), "nor the invalid policy");
    assert_eq!(control.config.status().objects_set_aside.len(), 3);

    // Each invalid object's status names the field.
    let described = |o: &Value, needle: &str| {
        o["status"]["validationMessages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| {
                m["description"]
                    .as_str()
                    .is_some_and(|d| d.contains(needle))
            })
    };
    let vs = ("networking.istio.io/v1", "VirtualService", "reviews");
    object_until(&fake, vs, "the VirtualService's status", |o| {
        o["status"]["conditions"][0]["status"] == "False"
            && described(
                o,
                "spec.http[0].match[0].uri: set exactly one of exact, prefix, regex",
            )
    })
    .await;
    object_until(
        &fake,
        ("security.istio.io/v1", "AuthorizationPolicy", "ports"),
        "the AuthorizationPolicy's status",
        |o| described(o, "spec.rules[0].to[0].operation.ports[0]"),
    )
    .await;
    let route = object_until(
        &fake,
        ("gateway.networking.k8s.io/v1", "HTTPRoute", "canary"),
        "the HTTPRoute's status",
        |o| o["status"]["parents"][0]["conditions"][0]["status"] == "False",
    )
    .await;
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "weft.dev/control");
    assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
    assert!(parent["conditions"][0]["lastTransitionTime"].is_string());
    // Valid objects are accepted.
    object_until(
        &fake,
        ("networking.istio.io/v1", "DestinationRule", "reviews"),
        "the DestinationRule's status",
        |o| o["status"]["conditions"][0]["status"] == "True",
    )
    .await;
    // An Event for each problem.
    let events = fake.list("v1", "Event");
    assert!(
        events
            .iter()
            .any(|e| e["involvedObject"]["kind"] == "VirtualService"
                && e["type"] == "Warning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spec.http[0].match[0].uri"))),
        "{events:?}"
    );

    // Fixed: the condition clears and the route applies.
    fake.apply(virtual_service(json!({"prefix": "/v2"})));
    object_until(&fake, vs, "the fixed VirtualService's status", |o| {
        o["status"]["conditions"][0]["status"] == "True"
            && o["status"]["validationMessages"] == json!([])
    })
    .await;
    let started = Instant::now();
    while control.config.snapshot.load().l7[&NamespacedName::new("shop", "reviews")]
        .routes
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the fixed route never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    control.stop().await;
}

/// A certificate request with `token` for `identity`: the certificate
/// service's answer (`Ok` or the refusal).
async fn ask(control: &weft_control::Running, token: &str, identity: &str) -> Result<(), String> {
    use weft_ca::manager::CaClient;
    let bundle = weft_ca::tls::TrustBundle::new(
        weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert).expect("root"), "root")
            .expect("pem"),
    )
    .expect("bundle");
    let server = weft_ca::authz::control_identity("cluster.local").expect("id");
    let client = weft_ca::client::GrpcCaClient::new(
        control.tls_addr,
        bundle,
        server,
        weft_ca::client::NodeCredential::Token(token.into()),
    )
    .expect("client");
    let identity: weft_core::Identity = identity.parse().expect("identity");
    let csr = weft_ca::KeyAndCsr::generate(&identity).expect("csr");
    client
        .sign(&identity, &csr.csr_pem, Duration::ZERO)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_obtain_certificates_for_pods_on_their_node_only() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(namespace("shop", true));
    fake.apply(service(80));
    fake.apply(pod_on("reviews-1", "reviews", "127.0.3.1", "node-1"));
    fake.apply(pod_on("ratings-1", "ratings", "127.0.3.2", "node-2"));
    fake.add_token(
        "agent-on-node-1",
        "system:serviceaccount:weft-system:weft-node",
        Some("node-1"),
    );
    fake.add_token(
        "agent-unbound",
        "system:serviceaccount:weft-system:weft-node",
        None,
    );
    fake.add_token(
        "reviews-pod",
        "system:serviceaccount:shop:reviews",
        Some("node-1"),
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let control = control_over(&fake, &tmp, None).await;
    let reviews = "spiffe://cluster.local/ns/shop/sa/reviews";
    let ratings = "spiffe://cluster.local/ns/shop/sa/ratings";

    // The node agent, by its token bound to node-1: a pod on node-1, yes…
    ask(&control, "agent-on-node-1", reviews)
        .await
        .expect("a pod on its node");
    // …a pod on node-2, no, with both nodes named.
    let refused = ask(&control, "agent-on-node-1", ratings)
        .await
        .expect_err("another node's pod");
    assert!(
        refused.contains("node node-1 may not obtain") && refused.contains("node-2"),
        "{refused}"
    );
    // Its token must say which node it is on.
    let unbound = ask(&control, "agent-unbound", reviews)
        .await
        .expect_err("no node");
    assert!(unbound.contains("unauthenticated"), "{unbound}");
    // A pod's own token: its own identity only.
    ask(&control, "reviews-pod", reviews)
        .await
        .expect("its own identity");
    let other = ask(&control, "reviews-pod", ratings)
        .await
        .expect_err("not another's");
    assert!(other.contains("may renew only its own identity"), "{other}");
    // A token the API server does not vouch for.
    let unknown = ask(&control, "made-up", reviews)
        .await
        .expect_err("unknown token");
    assert!(unknown.contains("unauthenticated"), "{unknown}");
    control.stop().await;
}
