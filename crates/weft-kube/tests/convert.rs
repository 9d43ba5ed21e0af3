//! Kubernetes objects through the conversion and the configuration
//! pipeline: the snapshot weft serves, and one bad object set aside while
//! the rest applies.

use std::path::PathBuf;

use serde_json::{Value, json};
use weft_core::model::{NamespacedName, Protocol, WorkloadAddress};
use weft_kube::convert::{Cluster, PodDocuments, Settings, documents, documents_reusing};
use weft_kube::isolate::Isolating;

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> std::sync::Arc<T> {
    std::sync::Arc::new(serde_json::from_value(v).expect("object"))
}

fn namespace(name: &str, mode: Option<&str>) -> Value {
    let labels = mode.map_or(json!({}), |m| json!({"istio.io/dataplane-mode": m}));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": zone}}})
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name}, "ports": [
            {"name": "http-web", "port": 80, "targetPort": 8080},
            {"name": "api", "port": 9090, "appProtocol": "grpc", "targetPort": "grpc-port"},
            {"name": "db", "port": 5432}]}})
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": app,
                 "containers": [{"name": "app", "image": "app", "ports": [{"name": "grpc-port", "containerPort": 19090}]}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn cluster() -> Cluster {
    Cluster {
        namespaces: vec![
            typed(namespace("shop", Some("ambient"))),
            typed(namespace("legacy", None)),
        ],
        nodes: vec![
            typed(node("node-1", "eu-west-1a")),
            typed(node("ip-10-0-0-2.ec2.internal", "eu-west-1b")),
        ],
        services: vec![
            typed(service("shop", "reviews", "10.96.0.10")),
            typed(service("legacy", "old", "10.96.0.20")),
        ],
        pods: vec![
            typed(pod(
                "shop",
                "reviews-1",
                "reviews",
                "10.1.0.1",
                "node-1",
                true,
            )),
            typed(pod(
                "shop",
                "reviews-2",
                "reviews",
                "10.1.0.2",
                "ip-10-0-0-2.ec2.internal",
                true,
            )),
            typed(pod(
                "shop",
                "reviews-3",
                "reviews",
                "10.1.0.3",
                "node-1",
                false,
            )),
            typed(pod("shop", "client", "client", "10.1.0.4", "node-1", true)),
            typed(pod("legacy", "old-1", "old", "10.1.0.5", "node-1", true)),
        ],
        endpoint_slices: Vec::new(),
        deployments: Vec::new(),
        resources: Vec::new(),
    }
}

fn name(ns: &str, n: &str) -> NamespacedName {
    NamespacedName::new(ns, n)
}

#[test]
fn services_and_ready_enrolled_pods_become_the_registry() {
    let mut loader = Isolating::default();
    let loaded = loader.load(documents(&cluster(), &Settings::default()));
    assert!(loaded.set_aside.is_empty(), "{:?}", loaded.problems);
    let snap = loaded.config.expect("config").snapshot;
    let reviews = &snap.services[&name("shop", "reviews")];
    assert_eq!(reviews.hosts, ["reviews.shop.svc.cluster.local"]);
    assert_eq!(reviews.addresses.len(), 1);
    let protocols: Vec<Protocol> = reviews.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [Protocol::Http, Protocol::Grpc, Protocol::Tcp]);
    // Ready pods of the enrolled namespace, with node, identity, locality.
    let r1 = &snap.workloads[&name("shop", "reviews-1")];
    assert_eq!(r1.address, WorkloadAddress::Ip([10, 1, 0, 1].into()));
    assert_eq!(r1.node.as_deref(), Some("node-1"));
    assert_eq!(
        r1.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    assert_eq!(r1.locality.to_string(), "eu-west/eu-west-1a");
    // A node name with dots (as on EKS) is a node name.
    let r2 = &snap.workloads[&name("shop", "reviews-2")];
    assert_eq!(r2.node.as_deref(), Some("ip-10-0-0-2.ec2.internal"));
    // The named targetPort means the container's port.
    let api = reviews
        .ports
        .iter()
        .find(|p| p.number == 9090)
        .expect("api port");
    assert_eq!(reviews.target_port(api, r1), 19090);
    // Not enrolled: not in the mesh.
    // Running but not ready: known (it may call out), no endpoint.
    assert!(snap.workloads.contains_key(&name("shop", "reviews-3")));
    assert!(
        !reviews.endpoints.contains(&name("shop", "reviews-3")),
        "{:?}",
        reviews.endpoints
    );
    assert!(!snap.workloads.contains_key(&name("legacy", "old-1")));
    // A pod no Service selects only calls.
    assert!(snap.workloads[&name("shop", "client")].client_only);
}

#[test]
fn a_pod_opts_out_and_a_namespace_label_enrolls() {
    let mut c = cluster();
    let mut opted_out = pod("shop", "reviews-4", "reviews", "10.1.0.6", "node-1", true);
    opted_out["metadata"]["labels"]["istio.io/dataplane-mode"] = json!("none");
    c.pods.push(typed(opted_out));
    c.namespaces[1] = typed(namespace("legacy", Some("ambient")));
    let loaded = Isolating::default().load(documents(&c, &Settings::default()));
    let snap = loaded.config.expect("config").snapshot;
    assert!(!snap.workloads.contains_key(&name("shop", "reviews-4")));
    assert!(snap.workloads.contains_key(&name("legacy", "old-1")));
}

/// Pods running Gateways become the workloads of the Gateways' names, as
/// waypoint or gateway by class, enrolled or not, ready or not (they get
/// ready only after reading their own workload); a pod labelled for a
/// Gateway of another class stays an ordinary (here: unenrolled) pod.
#[test]
fn gateway_pods_run_their_gateway_by_class() {
    let mut c = cluster();
    let gateway = |name: &str, class: &str, listener: Value| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"namespace": "legacy", "name": name},
            "spec": {"gatewayClassName": class, "listeners": [listener]}})
    };
    c.resources.push(gateway(
        "waypoint",
        "istio-waypoint",
        json!({"name": "mesh", "port": 15008, "protocol": "HBONE"}),
    ));
    c.resources.push(gateway(
        "edge",
        "weft",
        json!({"name": "http", "port": 80, "protocol": "HTTP"}),
    ));
    for (pod_name, gw, ip, ready) in [
        ("waypoint-7d9f-abcde", "waypoint", "10.1.0.20", false),
        ("edge-5c4b-fghij", "edge", "10.1.0.21", true),
        ("other-1", "someone-elses", "10.1.0.22", true),
    ] {
        let mut p = pod("legacy", pod_name, gw, ip, "node-1", ready);
        p["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = json!(gw);
        c.pods.push(typed(p));
    }
    let loaded = Isolating::default().load(documents(&c, &Settings::default()));
    assert!(loaded.set_aside.is_empty(), "{:?}", loaded.problems);
    let snap = loaded.config.expect("config").snapshot;
    let waypoint = &snap.workloads[&name("legacy", "waypoint")];
    assert!(waypoint.waypoint && !waypoint.gateway);
    assert_eq!(waypoint.address, WorkloadAddress::Ip([10, 1, 0, 20].into()));
    let edge = &snap.workloads[&name("legacy", "edge")];
    assert!(edge.gateway && !edge.waypoint);
    assert!(snap.gateways.contains_key(&name("legacy", "edge")));
    assert!(!snap.gateways.contains_key(&name("legacy", "waypoint")));
    assert!(!snap.workloads.contains_key(&name("legacy", "other-1")));
    assert!(
        !snap
            .workloads
            .contains_key(&name("legacy", "someone-elses"))
    );
}

/// Reused pod documents are exactly what a fresh conversion makes: after
/// nothing changed, after a namespace leaves the mesh, after a Service
/// stops selecting, after a pod changes — each change a new
/// `resourceVersion`, as the API server writes them.
#[test]
fn reused_pod_documents_follow_what_they_depend_on() {
    let versioned = |mut v: Value, rv: &str| {
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_owned();
        v["metadata"]["uid"] = json!(format!("uid-{name}"));
        v["metadata"]["resourceVersion"] = json!(rv);
        v
    };
    let mut c = cluster();
    c.namespaces = vec![
        typed(versioned(namespace("shop", Some("ambient")), "1")),
        typed(versioned(namespace("legacy", None), "1")),
    ];
    c.services = vec![typed(versioned(
        service("shop", "reviews", "10.96.0.10"),
        "1",
    ))];
    c.pods = vec![
        typed(versioned(
            pod("shop", "reviews-1", "reviews", "10.1.0.1", "node-1", true),
            "1",
        )),
        typed(versioned(
            pod("shop", "client", "client", "10.1.0.5", "node-1", true),
            "1",
        )),
    ];
    let mut cache = PodDocuments::default();
    let settings = Settings::default();
    let mut check = |c: &Cluster, what: &str| {
        assert_eq!(
            documents_reusing(c, &settings, &mut cache),
            documents(c, &settings),
            "{what}"
        );
    };
    check(&c, "first");
    check(&c, "nothing changed");
    // The Service now selects nothing: reviews-1 only makes calls.
    let mut s = service("shop", "reviews", "10.96.0.10");
    s["spec"]["selector"] = json!({"app": "nobody"});
    c.services = vec![typed(versioned(s, "2"))];
    check(&c, "service selector changed");
    // A pod's IP changes.
    c.pods[0] = typed(versioned(
        pod("shop", "reviews-1", "reviews", "10.1.0.9", "node-1", true),
        "2",
    ));
    check(&c, "pod changed");
    // Reuse is real: a pod rewritten under the same resourceVersion (which
    // the API server never does) keeps its previous document.
    c.pods[0] = typed(versioned(
        pod("shop", "reviews-1", "reviews", "10.1.0.77", "node-1", true),
        "2",
    ));
    let reused = documents_reusing(&c, &settings, &mut cache);
    assert!(reused.iter().any(|(_, d)| d.contains("10.1.0.9")));
    assert!(!reused.iter().any(|(_, d)| d.contains("10.1.0.77")));
    let mut check = |c: &Cluster, what: &str| {
        assert_eq!(
            documents_reusing(c, &settings, &mut cache),
            documents(c, &settings),
            "{what}"
        );
    };
    // The namespace leaves the mesh.
    c.namespaces[0] = typed(versioned(namespace("shop", None), "2"));
    check(&c, "namespace unenrolled");
    assert!(
        !documents(&c, &settings)
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("/Pod/"))
    );
}

fn slice(service: &str, name: &str, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 15432, "protocol": "TCP"}],
        "endpoints": endpoints})
}

#[test]
fn a_service_without_selector_takes_its_ready_endpoints_from_its_slices() {
    let mut c = cluster();
    c.services
        .push(typed(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 5432}]}})));
    c.endpoint_slices = vec![
        typed(slice(
            "db",
            "db-abc",
            json!([
                {"addresses": ["192.168.1.10"], "conditions": {"ready": true}},
                {"addresses": ["192.168.1.11"], "conditions": {"ready": false}},
            ]),
        )),
        typed(slice(
            "db",
            "db-def",
            json!([{"addresses": ["192.168.1.12"]}]),
        )),
        // Another service's slice.
        typed(slice(
            "cache",
            "cache-abc",
            json!([{"addresses": ["192.168.1.99"]}]),
        )),
    ];
    let loaded = Isolating::default().load(documents(&c, &Settings::default()));
    assert!(loaded.set_aside.is_empty(), "{:?}", loaded.problems);
    let snap = loaded.config.expect("config").snapshot;
    let db = &snap.services[&name("shop", "db")];
    let mut addresses: Vec<(String, u16)> = snap
        .workloads
        .values()
        .filter(|w| w.name.namespace == "shop" && w.name.name.starts_with("db["))
        .map(|w| (w.address.to_string(), db.target_port(&db.ports[0], w)))
        .collect();
    addresses.sort();
    assert_eq!(
        addresses,
        [
            ("192.168.1.10".to_owned(), 15432),
            ("192.168.1.12".to_owned(), 15432)
        ]
    );
}

fn virtual_service(uri_match: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": uri_match.parse::<Value>().expect("json")}],
                 "route": [{"destination": {"host": "reviews"}}]}]}})
}

#[test]
fn one_bad_object_is_set_aside_with_its_last_good_version_kept() {
    let mut c = cluster();
    c.resources.push(virtual_service(r#"{"prefix": "/v1"}"#));
    let mut loader = Isolating::default();
    let first = loader.load(documents(&c, &Settings::default()));
    let routes =
        |config: &weft_config::Config| config.snapshot.l7[&name("shop", "reviews")].routes.len();
    assert_eq!(routes(first.config.as_ref().expect("config")), 1);

    // Broken: two kinds of match at once. The rest applies; the old
    // version of the route stays; the problem names the object's field.
    c.resources[0] = virtual_service(r#"{"prefix": "/v1", "exact": "/v1"}"#);
    c.pods.push(typed(pod(
        "shop",
        "reviews-5",
        "reviews",
        "10.1.0.7",
        "node-1",
        true,
    )));
    let broken = loader.load(documents(&c, &Settings::default()));
    let config = broken.config.expect("the rest applies");
    assert!(
        config
            .snapshot
            .workloads
            .contains_key(&name("shop", "reviews-5"))
    );
    assert_eq!(routes(&config), 1, "the last good version is in force");
    let doc = PathBuf::from("k8s/networking.istio.io/VirtualService/shop/reviews");
    assert_eq!(broken.set_aside.iter().collect::<Vec<_>>(), [&doc]);
    let problem = broken
        .problems
        .iter()
        .find(|d| d.file == doc)
        .expect("problem");
    assert_eq!(problem.field.as_deref(), Some("spec.http[0].match[0].uri"));
    assert!(
        problem
            .to_string()
            .contains("set exactly one of exact, prefix, regex"),
        "{problem}"
    );

    // Fixed: nothing set aside.
    c.resources[0] = virtual_service(r#"{"exact": "/v2"}"#);
    let fixed = loader.load(documents(&c, &Settings::default()));
    assert!(
        fixed.set_aside.is_empty() && fixed.problems.is_empty(),
        "{:?}",
        fixed.problems
    );
}

#[test]
fn a_new_object_that_never_loaded_is_left_out() {
    let mut c = cluster();
    c.resources.push(
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}}),
    );
    let loaded = Isolating::default().load(documents(&c, &Settings::default()));
    let snap = loaded.config.expect("config").snapshot;
    assert!(snap.policies.is_empty());
    assert_eq!(loaded.set_aside.len(), 1);
    assert!(snap.services.contains_key(&name("shop", "reviews")));
}
