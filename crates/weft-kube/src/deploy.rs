//! Waypoints and gateways deployed for the user, as Gateway API's
//! automated deployment asks (and istiod does): a `Gateway` of class
//! `weft-waypoint` or `istio-waypoint` gets a `ServiceAccount`, a
//! `Deployment` running `weft waypoint` and a `Service` exposing HBONE on
//! 15008; one of class `weft` or `istio` gets the same running `weft
//! gateway`, its Service (`LoadBalancer`) exposing the listeners' ports.
//! All three carry the Gateway's name, an owner reference to it (so the
//! cluster's garbage collector removes them with it) and the label
//! `app.kubernetes.io/managed-by: weft-control`; weft control also
//! deletes them itself when their Gateway is gone (a Gateway deleted
//! while no replica led). Objects of that name it did not create are
//! left alone.
//!
//! The proxies start with their pod's service-account token (audience
//! `istio-ca`) and the root certificate from the `istio-ca-root-cert`
//! ConfigMap, and reach the control plane by its Service's DNS name. A
//! Gateway is `Programmed` once its Deployment has an available replica;
//! its `status.addresses` is its Service's address.
//!
//! [`objects`] and [`rollouts`] are pure functions; [`Deployer`] applies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Service,
    ServiceAccount, ServicePort, ServiceSpec, Sysctl,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use weft_config::kinds::gateway::{CLASSES, EAST_WEST_CLASSES, HBONE_PORT, WAYPOINT_CLASSES};

use crate::convert::{DATAPLANE_MODE_LABEL, GATEWAY_NAME_LABEL, gateway_class};
use crate::pods::{
    METRICS_PORT, ROOT_DIR, TOKEN_DIR, TOKEN_FILE, field_env, port, quantities, read_only_mount,
    readiness, restricted, root_cert_volume, scraped, token_volume, unprivileged_pod,
};

pub use crate::labels::MANAGED_BY;

/// What the deployed proxies run and where they find the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The container image running `weft`.
    pub image: String,
    /// The control plane's TLS port by DNS name
    /// (`weft-control.weft-system.svc:15012`).
    pub control: String,
    /// The mesh's trust domain (followed from the configuration).
    pub trust_domain: String,
}

/// What a Gateway's class makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `weft-waypoint`, `istio-waypoint`.
    Waypoint,
    /// `weft`, `istio`; and `weft-east-west`, `istio-east-west` (run by
    /// `weft gateway` too, its HBONE listener behind a load balancer).
    Gateway,
}

/// The role of a Gateway class weft deploys, if it deploys it.
pub fn role(class: &str) -> Option<Role> {
    if WAYPOINT_CLASSES.contains(&class) {
        Some(Role::Waypoint)
    } else if CLASSES.contains(&class) || EAST_WEST_CLASSES.contains(&class) {
        Some(Role::Gateway)
    } else {
        None
    }
}

/// The `ServiceAccount`, `Deployment` and `Service` that run `gateway`
/// (its JSON), in the order they are created; `None` when weft does not
/// deploy its class or it has no uid yet.
pub fn objects(gateway: &Value, settings: &ProxySettings) -> Option<Vec<Value>> {
    let (ns, name, class) = gateway_class(gateway)?;
    let role = role(class)?;
    let uid = gateway["metadata"]["uid"].as_str()?;
    let api_version = gateway["apiVersion"].as_str()?;
    let labels = BTreeMap::from([
        (GATEWAY_NAME_LABEL.to_owned(), name.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (
            crate::labels::PART_OF.0.to_owned(),
            crate::labels::PART_OF.1.to_owned(),
        ),
    ]);
    let meta = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![OwnerReference {
            api_version: api_version.to_owned(),
            kind: "Gateway".to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())]);
    let ports: Vec<(String, i32)> = match role {
        Role::Waypoint => vec![("mesh".to_owned(), HBONE_PORT as i32)],
        Role::Gateway => listener_ports(gateway),
    };
    let account = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    let deployment = deployment(meta.clone(), &selector, role, name, &ports, settings);
    let service = Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            type_: Some(
                match role {
                    Role::Waypoint => "ClusterIP",
                    Role::Gateway => "LoadBalancer",
                }
                .to_owned(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, number)| ServicePort {
                        name: Some(port_name.clone()),
                        port: *number,
                        target_port: Some(IntOrString::Int(*number)),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let typed = |kind: &str, api_version: &str, mut v: Value| {
        v["apiVersion"] = json!(api_version);
        v["kind"] = json!(kind);
        v
    };
    Some(vec![
        typed("ServiceAccount", "v1", serde_json::to_value(account).ok()?),
        typed(
            "Deployment",
            "apps/v1",
            serde_json::to_value(deployment).ok()?,
        ),
        typed("Service", "v1", serde_json::to_value(service).ok()?),
    ])
}

/// An ingress Gateway's distinct listener ports, named `<protocol>-<port>`.
fn listener_ports(gateway: &Value) -> Vec<(String, i32)> {
    let mut seen = BTreeSet::new();
    gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let number = i32::try_from(l["port"].as_i64()?).ok()?;
            let protocol = l["protocol"].as_str().unwrap_or("tcp").to_ascii_lowercase();
            seen.insert(number)
                .then(|| (format!("{protocol}-{number}"), number))
        })
        .collect()
}

fn deployment(
    meta: ObjectMeta,
    selector: &BTreeMap<String, String>,
    role: Role,
    name: &str,
    ports: &[(String, i32)],
    settings: &ProxySettings,
) -> Deployment {
    let command = match role {
        Role::Waypoint => "waypoint",
        Role::Gateway => "gateway",
    };
    let args = vec![
        command.to_owned(),
        format!("--name=$(POD_NAMESPACE)/{name}"),
        "--node=$(NODE_NAME)".to_owned(),
        format!("--ca-addr={}", settings.control),
        format!("--root-cert={ROOT_DIR}/{}", crate::roots::KEY),
        format!("--token-file={TOKEN_DIR}/{TOKEN_FILE}"),
        format!("--trust-domain={}", settings.trust_domain),
        format!("--metrics-addr=0.0.0.0:{METRICS_PORT}"),
    ];
    let mut container_ports: Vec<_> = ports
        .iter()
        .map(|(port_name, number)| port(port_name, *number))
        .collect();
    container_ports.push(port("http-metrics", METRICS_PORT));
    let container = Container {
        name: command.to_owned(),
        image: Some(settings.image.clone()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_NAME", "spec.nodeName"),
        ]),
        ports: Some(container_ports),
        readiness_probe: Some(readiness()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "64Mi")])),
            limits: Some(quantities(&[("memory", "1Gi")])),
            ..Default::default()
        }),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![
            read_only_mount("token", TOKEN_DIR),
            read_only_mount("root-cert", ROOT_DIR),
        ]),
        ..Default::default()
    };
    let mut pod_labels = selector.clone();
    // The proxy's own traffic is not captured by the node agent (as
    // Istio labels its waypoints).
    pod_labels.insert(DATAPLANE_MODE_LABEL.to_owned(), "none".to_owned());
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            // One replica: the proxy is the workload of its Gateway's name.
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(scraped()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_owned()),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        // Gateways listen on 80 and 443 without a
                        // capability (a namespaced, safe sysctl).
                        sysctls: (role == Role::Gateway).then(|| {
                            vec![Sysctl {
                                name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
                                value: "0".to_owned(),
                            }]
                        }),
                        ..unprivileged_pod()
                    }),
                    volumes: Some(vec![token_volume("token"), root_cert_volume("root-cert")]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a deployed Gateway stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// `namespace/name` of its Deployment.
    pub deployment: String,
    /// Whether the Deployment has an available replica.
    pub available: bool,
    /// Its Service's address (load balancer's first, else cluster IP).
    pub address: Option<String>,
}

/// The rollout of every Gateway weft deploys, by (namespace, name), from
/// the Deployments and Services the cluster holds.
pub fn rollouts(
    resources: &[Value],
    deployments: &[Arc<Deployment>],
    services: &[Arc<Service>],
) -> BTreeMap<(String, String), Rollout> {
    let key = |meta: &ObjectMeta| {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    let deployments: BTreeMap<_, _> = deployments
        .iter()
        .filter(|d| managed(&d.metadata))
        .map(|d| (key(&d.metadata), d))
        .collect();
    let services: BTreeMap<_, _> = services
        .iter()
        .filter(|s| managed(&s.metadata))
        .map(|s| (key(&s.metadata), s))
        .collect();
    resources
        .iter()
        .filter_map(gateway_class)
        .filter(|(_, _, class)| role(class).is_some())
        .map(|(ns, name, _)| {
            let k = (ns.to_owned(), name.to_owned());
            let available = deployments
                .get(&k)
                .and_then(|d| d.status.as_ref()?.available_replicas)
                .is_some_and(|n| n > 0);
            let address = services.get(&k).and_then(|s| service_address(s));
            let rollout = Rollout {
                deployment: format!("{ns}/{name}"),
                available,
                address,
            };
            (k, rollout)
        })
        .collect()
}

fn service_address(service: &Service) -> Option<String> {
    let balanced = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref()?.first().cloned())
        .and_then(|i| i.ip.or(i.hostname));
    balanced.or_else(|| {
        service
            .spec
            .as_ref()?
            .cluster_ip
            .clone()
            .filter(|ip| !ip.is_empty() && ip != "None")
    })
}

fn managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// Applies what [`objects`] asks for and deletes what no Gateway asks
/// for any more, remembering what it applied (only changes are sent).
pub struct Deployer {
    client: Client,
    settings: ProxySettings,
    /// (apiVersion, kind, namespace, name) → the object last applied.
    applied: BTreeMap<(String, String, String, String), Value>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("settings", &self.settings)
            .field("applied", &self.applied.len())
            .finish_non_exhaustive()
    }
}

type Key = (String, String, String, String);

fn object_key(v: &Value) -> Key {
    let s = |x: &Value| x.as_str().unwrap_or("").to_owned();
    (
        s(&v["apiVersion"]),
        s(&v["kind"]),
        s(&v["metadata"]["namespace"]),
        s(&v["metadata"]["name"]),
    )
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        plural: weft_core::names::plural(kind),
    }
}

impl Deployer {
    /// A deployer using `client`.
    pub fn new(client: Client, settings: ProxySettings) -> Self {
        Deployer {
            client,
            settings,
            applied: BTreeMap::new(),
        }
    }

    /// Follows the mesh's trust domain (from its `Mesh`), which the
    /// deployed proxies are started with.
    pub fn set_trust_domain(&mut self, trust_domain: &str) {
        if self.settings.trust_domain != trust_domain {
            self.settings.trust_domain = trust_domain.to_owned();
        }
    }

    /// Forgets what it applied (another replica may have changed things):
    /// the next reconcile checks every object again.
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    /// Brings the cluster in line with its Gateways (`resources`: the
    /// objects of the kinds weft reads). `deployments` and `services`
    /// (the reflected ones) reveal objects deleted behind its back and
    /// leftovers of Gateways deleted while no replica led. Failures are
    /// logged and retried at the next change.
    pub async fn reconcile(
        &mut self,
        resources: &[Value],
        deployments: &[Arc<Deployment>],
        services: &[Arc<Service>],
    ) {
        let key = |api_version: &str, kind: &str, meta: &ObjectMeta| -> Key {
            (
                api_version.to_owned(),
                kind.to_owned(),
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            )
        };
        let present: BTreeSet<Key> = deployments
            .iter()
            .map(|d| key("apps/v1", "Deployment", &d.metadata))
            .chain(services.iter().map(|s| key("v1", "Service", &s.metadata)))
            .collect();
        // Per Gateway, in creation order (the ServiceAccount before the
        // pods using it); one object it may not take stops the rest, so a
        // Gateway named after a user's ServiceAccount never runs as it.
        let per_gateway: Vec<Vec<(Key, Value)>> = resources
            .iter()
            .filter_map(|g| objects(g, &self.settings))
            .map(|objects| objects.into_iter().map(|o| (object_key(&o), o)).collect())
            .collect();
        for objects in &per_gateway {
            for (key, object) in objects {
                let (_, kind, _, _) = key;
                let tracked = kind == "ServiceAccount" || present.contains(key);
                if tracked && self.applied.get(key) == Some(object) {
                    continue;
                }
                if !self.apply(key, object).await {
                    break;
                }
                self.applied.insert(key.clone(), object.clone());
            }
        }
        let wanted: Vec<&(Key, Value)> = per_gateway.iter().flatten().collect();
        // What it deployed, or finds labelled as its own, for a Gateway
        // that is gone.
        let running: BTreeSet<(&str, &str)> = wanted
            .iter()
            .map(|((_, _, ns, name), _)| (ns.as_str(), name.as_str()))
            .collect();
        let leftovers: BTreeSet<(String, String)> = self
            .applied
            .keys()
            .map(|(_, _, ns, name)| (ns.clone(), name.clone()))
            .chain(
                deployments
                    .iter()
                    .map(|d| &d.metadata)
                    .chain(services.iter().map(|s| &s.metadata))
                    .filter(|m| managed(m))
                    .filter_map(|m| Some((m.namespace.clone()?, m.name.clone()?))),
            )
            .filter(|(ns, name)| !running.contains(&(ns.as_str(), name.as_str())))
            .collect();
        for (ns, name) in leftovers {
            self.remove(&ns, &name).await;
        }
    }

    fn api(&self, api_version: &str, kind: &str, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &resource(api_version, kind))
    }

    /// Creates `object`, or merges it into the one of its name if weft
    /// created that one. Whether it is in place.
    async fn apply(&self, key: &Key, object: &Value) -> bool {
        let (api_version, kind, ns, name) = key;
        let api = self.api(api_version, kind, ns);
        let existing = match api.get_opt(name).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%kind, namespace = %ns, %name, error = %e, "cannot read a Gateway's object");
                return false;
            }
        };
        let result = match existing {
            None => {
                let Ok(o) = serde_json::from_value::<DynamicObject>(object.clone()) else {
                    return false;
                };
                api.create(&PostParams::default(), &o).await.map(|_| ())
            }
            Some(e) if !managed(&e.metadata) => {
                tracing::warn!(%kind, namespace = %ns, %name, "Gateway {ns}/{name} is not deployed: a {kind} of its name exists that weft did not create; left alone (rename the Gateway, or delete that {kind})");
                return false;
            }
            Some(_) => api
                .patch(name, &PatchParams::default(), &Patch::Merge(object))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {
                tracing::info!(%kind, namespace = %ns, %name, "deployed for its Gateway");
                true
            }
            Err(e) => {
                tracing::warn!(%kind, namespace = %ns, %name, error = %e, "cannot deploy for its Gateway");
                false
            }
        }
    }

    /// Deletes the three objects of a Gateway that is gone (those weft
    /// created only).
    async fn remove(&mut self, ns: &str, name: &str) {
        for (api_version, kind) in [
            ("v1", "Service"),
            ("apps/v1", "Deployment"),
            ("v1", "ServiceAccount"),
        ] {
            let api = self.api(api_version, kind, ns);
            match api.get_opt(name).await {
                Ok(Some(e)) if managed(&e.metadata) => {
                    match api.delete(name, &DeleteParams::background()).await {
                        Ok(_) => {
                            tracing::info!(%kind, namespace = %ns, %name, "removed: its Gateway is gone")
                        }
                        Err(e) => {
                            tracing::warn!(%kind, namespace = %ns, %name, error = %e, "cannot remove");
                            continue;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%kind, namespace = %ns, %name, error = %e, "cannot read");
                    continue;
                }
            }
            self.applied.remove(&(
                api_version.to_owned(),
                kind.to_owned(),
                ns.to_owned(),
                name.to_owned(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProxySettings {
        ProxySettings {
            image: "weft:test".into(),
            control: "weft-control.weft-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
        }
    }

    fn gateway(class: &str) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "shop", "name": "edge", "uid": "u-1"},
            "spec": {"gatewayClassName": class, "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "https", "port": 443, "protocol": "HTTPS"},
                {"name": "https-2", "port": 443, "protocol": "HTTPS"},
            ]},
        })
    }

    #[test]
    fn classes_decide_what_is_deployed() {
        for (class, command, service_type, ports) in [
            ("weft-waypoint", "waypoint", "ClusterIP", vec![15008]),
            ("istio-waypoint", "waypoint", "ClusterIP", vec![15008]),
            ("weft", "gateway", "LoadBalancer", vec![80, 443]),
            ("istio", "gateway", "LoadBalancer", vec![80, 443]),
        ] {
            let objects = objects(&gateway(class), &settings()).expect(class);
            let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
            assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service"]);
            for o in &objects {
                assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u-1");
                assert_eq!(o["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
            }
            let pod = &objects[1]["spec"]["template"];
            let args = &pod["spec"]["containers"][0]["args"];
            assert_eq!(args[0], command, "{class}");
            assert!(
                args.as_array()
                    .expect("args")
                    .contains(&json!("--ca-addr=weft-control.weft-system.svc:15012"))
            );
            assert_eq!(pod["metadata"]["labels"][DATAPLANE_MODE_LABEL], "none");
            assert_eq!(objects[2]["spec"]["type"], service_type);
            let service_ports: Vec<i64> = objects[2]["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            assert_eq!(service_ports, ports, "{class}");
        }
        assert!(objects(&gateway("other"), &settings()).is_none());
        let mut no_uid = gateway("weft");
        no_uid["metadata"]["uid"] = Value::Null;
        assert!(objects(&no_uid, &settings()).is_none());
    }

    #[test]
    fn a_gateway_is_available_with_its_deployment() {
        let resources = vec![gateway("weft-waypoint"), {
            let mut g = gateway("weft");
            g["metadata"]["name"] = json!("ingress");
            g
        }];
        let managed_meta = |name: &str| ObjectMeta {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..Default::default()
        };
        let deployment = Arc::new(Deployment {
            metadata: managed_meta("edge"),
            status: Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                available_replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        });
        let service = Arc::new(Service {
            metadata: managed_meta("edge"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.0.0.7".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let r = rollouts(&resources, &[deployment], &[service]);
        let edge = &r[&("shop".to_owned(), "edge".to_owned())];
        assert!(edge.available);
        assert_eq!(edge.address.as_deref(), Some("10.0.0.7"));
        let ingress = &r[&("shop".to_owned(), "ingress".to_owned())];
        assert!(!ingress.available && ingress.address.is_none());
    }
}
