//! Kubernetes objects → the documents weft's configuration pipeline
//! reads, as pure functions. A `Service` becomes a `ServiceEntry` (its
//! cluster IPs as VIPs, `<name>.<namespace>.svc.<cluster domain>` as host,
//! ports with Istio's protocol detection, its selector as the workload
//! selector); a running, enrolled `Pod` with an IP becomes a
//! `WorkloadEntry` (its IP, labels, service account, node, and the
//! locality of its `Node`), a service endpoint only while it is ready. Istio's CRDs (and Gateway API's, weft's) are read as they are.
//! Every object becomes one document, named `k8s/<group>/<Kind>/<ns>/<name>`,
//! so a problem points at the object and one bad object can be set aside
//! without the rest.
//!
//! A Service without a selector takes its endpoints from its
//! `EndpointSlice`s (ready endpoints, ports by name) as the
//! ServiceEntry's inline endpoints.
//!
//! Enrollment follows Istio's labels: `istio.io/dataplane-mode: ambient`
//! on the namespace or the pod (`none` on a pod opts it out). A pod
//! labelled `gateway.networking.k8s.io/gateway-name` runs that Gateway:
//! it becomes the workload of the Gateway's name, a waypoint (class
//! `weft-waypoint`/`istio-waypoint`, or named by `istio.io/use-waypoint`)
//! or an ingress gateway (class `weft`/`istio`), enrolled or not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use crate::pod_documents::{Document, PodDocuments};
use crate::pod_documents::{fingerprint, version};
use serde_json::{Value, json};
use weft_config::kinds::gateway::{CLASSES, EAST_WEST_CLASSES, WAYPOINT_CLASSES};
use weft_core::model::{
    CLIENT_ONLY_ANNOTATION, GATEWAY_LABEL, NODE_LABEL, NOT_READY_ANNOTATION, USE_WAYPOINT_LABEL,
    WAYPOINT_LABEL,
};

/// The label that enrolls a namespace or pod (Istio's).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Region of a Node.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Zone of a Node.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Subzone of a Node, as Istio names it.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// The label Gateway API implementations put on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster as the reflectors hold it (shared with their stores, not
/// copied).
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Nodes.
    pub nodes: Vec<Arc<Node>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// EndpointSlices (used for Services without a selector).
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// The Deployments weft control made for Gateways (their rollout).
    pub deployments: Vec<Arc<k8s_openapi::api::apps::v1::Deployment>>,
    /// Objects of the kinds weft reads as they are (Istio, Gateway API,
    /// weft's own, `Secret`s): their JSON.
    pub resources: Vec<Value>,
}

/// Settings of the conversion.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Whether a pod is in the mesh: its own `istio.io/dataplane-mode` label
/// decides (`ambient` in, `none` out), else its namespace's.
pub fn enrolled(namespace: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    match pod.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => namespace
            .get(DATAPLANE_MODE_LABEL)
            .is_some_and(|m| m == "ambient"),
    }
}

/// A Service port's protocol, as Istio detects it: `appProtocol` first,
/// then the port name's prefix (`http-web`, `grpc`, …); TCP otherwise.
pub fn protocol(port: &ServicePort) -> &'static str {
    let by_name = |name: &str| -> Option<&'static str> {
        let name = name.to_ascii_lowercase();
        let prefix = name.split('-').next().unwrap_or("");
        Some(match prefix {
            "http" => "HTTP",
            "http2" | "h2c" => "HTTP2",
            "https" => "HTTPS",
            "grpc" | "grpc_web" => "GRPC",
            "tls" => "TLS",
            "tcp" => "TCP",
            _ => return None,
        })
    };
    if let Some(app) = &port.app_protocol {
        let app = app.to_ascii_lowercase();
        let known = match app.as_str() {
            "kubernetes.io/h2c" => Some("HTTP2"),
            "kubernetes.io/ws" | "kubernetes.io/wss" => Some("HTTP"),
            other => by_name(other),
        };
        if let Some(p) = known {
            return p;
        }
    }
    port.name.as_deref().and_then(by_name).unwrap_or("TCP")
}

pub(crate) fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The document name of an object.
pub fn document_path(group: &str, kind: &str, namespace: &str, name: &str) -> PathBuf {
    let group = if group.is_empty() { "core" } else { group };
    PathBuf::from(format!("k8s/{group}/{kind}/{namespace}/{name}"))
}

/// A Service → a `ServiceEntry` document; `None` for Services weft does
/// not carry (no selector: ExternalName and hand-made endpoints).
pub fn service_entry(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
    slices: &[Arc<EndpointSlice>],
    settings: &Settings,
) -> Option<Value> {
    let name = svc.metadata.name.as_deref()?;
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    if selector.is_none() && spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let addresses: Vec<String> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip != "None" && !ip.is_empty())
        .collect();
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let mut port = json!({
                "name": p.name.clone().unwrap_or_else(|| format!("port-{}", p.port)),
                "number": p.port,
                "protocol": protocol(p),
            });
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) =
                &p.target_port
            {
                port["targetPort"] = json!(t);
            }
            port
        })
        .collect();
    let mut own_labels = labels(&svc.metadata);
    // `istio.io/use-waypoint` on the namespace applies unless the service
    // says otherwise.
    if !own_labels.contains_key(USE_WAYPOINT_LABEL)
        && let Some(w) = namespace_labels.get(USE_WAYPOINT_LABEL)
    {
        own_labels.insert(USE_WAYPOINT_LABEL.into(), w.clone());
    }
    own_labels.retain(|k, v| k != USE_WAYPOINT_LABEL || v != "none");
    let mut se = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns, "labels": own_labels},
        "spec": {
            "hosts": [format!("{name}.{ns}.svc.{}", settings.cluster_domain)],
            "addresses": addresses,
            "ports": ports,
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
        }
    });
    match selector {
        Some(selector) => se["spec"]["workloadSelector"] = json!({"labels": selector}),
        None => {
            // Slices name ports as the Service does; an unnamed one is
            // the Service's single unnamed port.
            let unnamed = spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("").is_empty())
                .map(|p| format!("port-{}", p.port));
            let mut endpoints = slice_endpoints(name, ns, slices);
            for e in &mut endpoints {
                // An unnamed port the Service does not have is dropped.
                if let Some(ports) = e["ports"].as_object_mut()
                    && let Some(p) = ports.remove("")
                    && let Some(unnamed) = &unnamed
                {
                    ports.insert(unnamed.clone(), p);
                }
            }
            se["spec"]["endpoints"] = Value::Array(endpoints);
        }
    }
    Some(se)
}

/// The ready endpoints of a Service's EndpointSlices (those labelled
/// `kubernetes.io/service-name: <name>` in its namespace), each with its
/// ports by name.
pub fn slice_endpoints(
    service: &str,
    namespace: &str,
    slices: &[Arc<EndpointSlice>],
) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for slice in slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && labels(&s.metadata)
                .get(SERVICE_NAME_LABEL)
                .map(String::as_str)
                == Some(service)
            && matches!(s.address_type.as_str(), "IPv4" | "IPv6")
    }) {
        let ports: BTreeMap<String, i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                let mut e = json!({"address": address});
                if !ports.is_empty() {
                    e["ports"] = json!(ports);
                }
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// The locality of a Node: `region/zone/subzone` from its labels.
pub fn locality(node: &Node) -> Option<String> {
    let l = labels(&node.metadata);
    let region = l.get(REGION_LABEL)?;
    let mut out = region.clone();
    if let Some(zone) = l.get(ZONE_LABEL) {
        out.push('/');
        out.push_str(zone);
        if let Some(sub) = l.get(SUBZONE_LABEL) {
            out.push('/');
            out.push_str(sub);
        }
    }
    Some(out)
}

/// Whether a pod runs and is ready, with an IP and a node.
pub fn ready(pod: &Pod) -> bool {
    running(pod)
        && pod.status.as_ref().is_some_and(|status| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Whether a pod runs on a node with an IP and is not being deleted
/// (ready or not).
pub fn running(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
        && pod.metadata.deletion_timestamp.is_none()
}

/// What the Services that select a pod say about it.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Whether any Service selects it (else it only makes calls).
    pub selected: bool,
    /// Service port name → the pod's port, for `targetPort`s that name a
    /// container port.
    pub ports: BTreeMap<String, i32>,
}

/// What a pod running a Gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs<'a> {
    /// The waypoint of this name.
    Waypoint(&'a str),
    /// The ingress gateway of this name.
    Gateway(&'a str),
}

impl<'a> Runs<'a> {
    fn name(self) -> &'a str {
        match self {
            Runs::Waypoint(n) | Runs::Gateway(n) => n,
        }
    }
}

/// A pod → a `WorkloadEntry` document, when it is in the mesh and runs
/// with an address; one that is not ready (and no waypoint or gateway)
/// only makes calls until it is.
/// `runs`: the waypoint or gateway (Gateway) it runs, if it runs one: the
/// workload then takes the Gateway's name.
pub fn workload_entry(
    pod: &Pod,
    node: Option<&Node>,
    selection: &Selection,
    runs: Option<Runs<'_>>,
) -> Option<Value> {
    // A pod is known from the moment it runs with an address (its node
    // agent may then obtain its certificate; its first calls need one),
    // and serves — is a service endpoint — only once ready, as
    // Kubernetes' endpoints go. A waypoint or gateway becomes ready only
    // once it has read its own workload, so it serves as soon as it runs.
    if !running(pod) {
        return None;
    }
    let serving = ready(pod) || runs.is_some();
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    let name = runs.map(Runs::name).or(pod.metadata.name.as_deref())?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut own_labels = labels(&pod.metadata);
    own_labels.insert(NODE_LABEL.into(), spec.node_name.clone()?);
    match runs {
        Some(Runs::Waypoint(_)) => own_labels.insert(WAYPOINT_LABEL.into(), "true".into()),
        Some(Runs::Gateway(_)) => own_labels.insert(GATEWAY_LABEL.into(), "true".into()),
        None => None,
    };
    let mut entry = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "address": status.pod_ip,
            "labels": own_labels,
            "serviceAccount": spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        }
    });
    if let Some(l) = node.and_then(locality) {
        entry["spec"]["locality"] = json!(l);
    }
    if !selection.ports.is_empty() {
        entry["spec"]["ports"] = json!(selection.ports);
    }
    if !selection.selected && runs.is_none() {
        entry["metadata"]["annotations"][CLIENT_ONLY_ANNOTATION] = json!("true");
    }
    if !serving {
        entry["metadata"]["annotations"][NOT_READY_ANNOTATION] = json!("true");
    }
    Some(entry)
}

/// A Gateway API `Gateway`'s namespace, name and class.
pub fn gateway_class(object: &Value) -> Option<(&str, &str, &str)> {
    let api_version = object["apiVersion"].as_str()?;
    if object["kind"] != "Gateway" || !api_version.starts_with("gateway.networking.k8s.io/") {
        return None;
    }
    Some((
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default"),
        object["metadata"]["name"].as_str()?,
        object["spec"]["gatewayClassName"].as_str()?,
    ))
}

/// Every document the cluster makes, in a stable order.
pub fn documents(cluster: &Cluster, settings: &Settings) -> Vec<(PathBuf, String)> {
    documents_reusing(cluster, settings, &mut PodDocuments::default())
}

/// As [`documents`], reusing the pod documents in `previous` that nothing
/// changed, and leaving there this conversion's.
pub fn documents_reusing(
    cluster: &Cluster,
    settings: &Settings,
    previous: &mut PodDocuments,
) -> Vec<(PathBuf, String)> {
    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = cluster
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, labels(&n.metadata))))
        .collect();
    let no_labels = BTreeMap::new();
    let labels_of = |ns: &str| ns_labels.get(ns).unwrap_or(&no_labels);
    let nodes: BTreeMap<&str, &Node> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let mut out = Vec::new();
    let mut push = |group: &str, kind: &str, v: &Value| {
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
        let name = v["metadata"]["name"].as_str().unwrap_or("");
        out.push((document_path(group, kind, ns, name), v.to_string()));
    };
    // Waypoints: Gateways of a waypoint class, and those named by
    // use-waypoint; ingress gateways: Gateways of an ingress class.
    let mut waypoints: std::collections::BTreeSet<(String, String)> = Default::default();
    let mut gateways: std::collections::BTreeSet<(String, String)> = Default::default();
    for (ns, name, class) in cluster.resources.iter().filter_map(gateway_class) {
        if WAYPOINT_CLASSES.contains(&class) {
            waypoints.insert((ns.to_owned(), name.to_owned()));
        } else if CLASSES.contains(&class) || EAST_WEST_CLASSES.contains(&class) {
            gateways.insert((ns.to_owned(), name.to_owned()));
        }
    }
    for svc in &cluster.services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(se) = service_entry(svc, labels_of(ns), &cluster.endpoint_slices, settings) {
            if let Some(w) = se["metadata"]["labels"][USE_WAYPOINT_LABEL].as_str() {
                waypoints.insert((ns.to_owned(), w.to_owned()));
            }
            push("", "Service", &se);
        }
    }
    // A pod is selected only by Services of its namespace.
    let mut services_in: BTreeMap<&str, Vec<Arc<Service>>> = BTreeMap::new();
    for svc in &cluster.services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        services_in.entry(ns).or_default().push(svc.clone());
    }
    // What a pod's document depends on beyond the pod itself.
    let ns_versions: BTreeMap<&str, &str> = cluster
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, version(&n.metadata))))
        .collect();
    let services_version: BTreeMap<&str, String> = services_in
        .iter()
        .map(|(ns, list)| {
            let parts: Vec<&str> = list
                .iter()
                .flat_map(|s| {
                    [
                        s.metadata.name.as_deref().unwrap_or(""),
                        version(&s.metadata),
                    ]
                })
                .collect();
            (*ns, fingerprint(&parts).to_string())
        })
        .collect();
    let convert_one = |pod: &Arc<Pod>,
                       ns: &str,
                       pod_labels: &BTreeMap<String, String>,
                       runs: Option<Runs<'_>>,
                       node: Option<&Node>|
     -> Option<(PathBuf, String)> {
        if runs.is_none() && !enrolled(labels_of(ns), pod_labels) {
            return None;
        }
        let selection = selection(
            pod,
            ns,
            pod_labels,
            services_in.get(ns).map_or(&[][..], Vec::as_slice),
        );
        let we = workload_entry(pod, node, &selection, runs)?;
        let name = we["metadata"]["name"].as_str().unwrap_or("");
        Some((document_path("", "Pod", ns, name), we.to_string()))
    };
    // Pods are most of a cluster: converted on every core, each only when
    // something it depends on changed.
    let convert_pod = |pod: &Arc<Pod>| -> (Option<(String, u64)>, Option<Document>) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_labels = labels(&pod.metadata);
        let runs = pod_labels.get(GATEWAY_NAME_LABEL).and_then(|g| {
            let key = (ns.to_owned(), g.clone());
            if waypoints.contains(&key) {
                Some(Runs::Waypoint(g.as_str()))
            } else {
                gateways.contains(&key).then_some(Runs::Gateway(g.as_str()))
            }
        });
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let node = node_name.and_then(|n| nodes.get(n).copied());
        let key = pod
            .metadata
            .uid
            .clone()
            .filter(|_| pod.metadata.resource_version.is_some())
            .map(|uid| {
                let runs = format!("{runs:?}");
                let print = fingerprint(&[
                    version(&pod.metadata),
                    ns_versions.get(ns).copied().unwrap_or(""),
                    node.map_or("", |n| version(&n.metadata)),
                    services_version.get(ns).map_or("", String::as_str),
                    &runs,
                ]);
                (uid, print)
            });
        if let Some((uid, print)) = &key
            && let Some((was, doc)) = previous.by_uid.get(uid)
            && was == print
        {
            return (key, doc.clone());
        }
        (key, convert_one(pod, ns, &pod_labels, runs, node))
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = cluster.pods.len().div_ceil(workers).max(1);
    let converted: Vec<_> = std::thread::scope(|scope| {
        let parts: Vec<_> = cluster
            .pods
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&convert_pod).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut pod_docs = Vec::with_capacity(converted.len());
    previous.by_uid.clear();
    for (key, doc) in converted {
        if let Some((uid, print)) = key {
            previous.by_uid.insert(uid, (print, doc.clone()));
        }
        pod_docs.extend(doc);
    }
    for r in &cluster.resources {
        let api_version = r["apiVersion"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = r["kind"].as_str().unwrap_or("");
        match crate::east_west::load_balanced(r, &cluster.services) {
            Some(with_address) => push(group, kind, &with_address),
            None => push(group, kind, r),
        }
    }
    out.extend(pod_docs);
    out.sort();
    out
}

/// Which Services of its namespace select a pod, and the container ports
/// their named `targetPort`s mean on it.
fn selection(
    pod: &Pod,
    ns: &str,
    pod_labels: &BTreeMap<String, String>,
    services: &[Arc<Service>],
) -> Selection {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let named: BTreeMap<&str, i32> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
        .collect();
    let mut out = Selection::default();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let selects = svc.metadata.namespace.as_deref().unwrap_or("default") == ns
            && spec.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
            });
        if !selects {
            continue;
        }
        out.selected = true;
        for p in spec.ports.iter().flatten() {
            if let Some(IntOrString::String(target)) = &p.target_port
                && let Some(number) = named.get(target.as_str())
            {
                let name = p.name.clone().unwrap_or_else(|| format!("port-{}", p.port));
                out.ports.insert(name, *number);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            port: 80,
            ..ServicePort::default()
        }
    }

    #[test]
    fn protocols_as_istio_detects_them() {
        let cases = [
            (Some("http"), None, "HTTP"),
            (Some("http-web"), None, "HTTP"),
            (Some("HTTP2-x"), None, "HTTP2"),
            (Some("https"), None, "HTTPS"),
            (Some("grpc-api"), None, "GRPC"),
            (Some("tls-db"), None, "TLS"),
            (Some("tcp"), None, "TCP"),
            (Some("web"), None, "TCP"),
            (None, None, "TCP"),
            // appProtocol wins over the name.
            (Some("tcp"), Some("http"), "HTTP"),
            (Some("web"), Some("kubernetes.io/h2c"), "HTTP2"),
            (Some("web"), Some("kubernetes.io/ws"), "HTTP"),
            (Some("http"), Some("mysql"), "HTTP"),
        ];
        for (name, app, want) in cases {
            assert_eq!(protocol(&port(name, app)), want, "{name:?} {app:?}");
        }
    }

    #[test]
    fn enrollment_by_namespace_and_pod_labels() {
        let l = |mode: Option<&str>| {
            mode.map(|m| BTreeMap::from([(DATAPLANE_MODE_LABEL.to_owned(), m.to_owned())]))
                .unwrap_or_default()
        };
        // (namespace, pod, enrolled)
        let cases = [
            (Some("ambient"), None, true),
            (Some("ambient"), Some("none"), false),
            (None, Some("ambient"), true),
            (None, None, false),
            (Some("none"), Some("ambient"), true),
            (Some("sidecar"), None, false),
        ];
        for (ns, pod, want) in cases {
            assert_eq!(enrolled(&l(ns), &l(pod)), want, "{ns:?} {pod:?}");
        }
    }
}
