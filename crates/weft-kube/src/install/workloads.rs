//! The control plane (Deployment, PodDisruptionBudget, Service), the node
//! agent (DaemonSet), the namespace and the mesh settings.
//!
//! The control plane runs unprivileged with a read-only root file system;
//! every replica serves the config stream and certificates on 15012 (the
//! only port its Service exposes: 15010 is plaintext and stays on the
//! pod's loopback, like admin and monitoring), readiness is
//! `/healthz/ready` on the metrics port 15020.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, HostPathVolumeSource, Namespace, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;

use super::rbac::NODE_AGENT;
use super::{Install, InstallError, to_json};
use crate::pods::{
    METRICS_PORT, ROOT_DIR, TOKEN_DIR, TOKEN_FILE, field_env, port, quantities, readiness,
    restricted, root_cert_volume, scraped, token_volume, unprivileged_pod,
};

/// The port the control plane serves proxies and certificates on.
pub(super) const CONFIG_PORT: i32 = 15012;
/// The control plane's scratch space (an emptyDir, in memory).
const RUN_DIR: &str = "/var/run/weft";
/// Where it keeps its CA files, a directory it creates 0700 inside the
/// emptyDir (the CA itself lives in the `cacerts` Secret).
const CA_DIR: &str = "/var/run/weft/ca";

/// The namespace.
pub(crate) fn namespace(install: &Install) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(install.namespace.clone()),
            labels: Some(install.labels("namespace")),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The `Mesh` named `default` carrying the trust domain.
pub(crate) fn mesh(install: &Install) -> serde_json::Value {
    json!({
        "apiVersion": format!("{}/{}", super::GROUP, super::VERSION),
        "kind": "Mesh",
        "metadata": {"name": "default", "labels": install.labels("mesh")},
        "spec": {"trustDomain": install.trust_domain},
    })
}

fn selector(install: &Install, component: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (super::PART_OF.0.to_owned(), super::PART_OF.1.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ]);
    if let Some(rev) = &install.revision {
        labels.insert("weft.dev/rev".to_owned(), rev.clone());
    }
    labels
}

/// Deployment, PodDisruptionBudget (with more than one replica) and
/// Service.
pub(crate) fn control_plane(install: &Install) -> Result<Vec<serde_json::Value>, InstallError> {
    let name = install.control_name();
    let meta = || ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(install.namespace.clone()),
        labels: Some(install.labels("control-plane")),
        ..Default::default()
    };
    let match_labels = selector(install, "control-plane");
    let service_host = format!("{name}.{}.svc", install.namespace);
    let args: Vec<String> = [
        "control",
        "--kubernetes",
        "--xds-addr=127.0.0.1:15010",
        "--tls-addr=0.0.0.0:15012",
        "--admin-addr=127.0.0.1:15000",
        "--monitoring-addr=127.0.0.1:15014",
        "--metrics-addr=0.0.0.0:15020",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        format!("--ca-dir={CA_DIR}"),
        "--ca-secret=cacerts".to_owned(),
        format!("--tls-dns-name={service_host}"),
        format!("--lease-name={name}"),
        format!("--proxy-image={}", install.image),
    ])
    .collect();
    let container = Container {
        name: "control".to_owned(),
        image: Some(install.image.clone()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            port("grpc-tls", CONFIG_PORT),
            port("http-metrics", METRICS_PORT),
        ]),
        readiness_probe: Some(readiness()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
            limits: Some(quantities(&[("memory", "1Gi")])),
            ..Default::default()
        }),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![VolumeMount {
            name: "run".to_owned(),
            mount_path: RUN_DIR.to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta(),
        spec: Some(DeploymentSpec {
            replicas: Some(install.replicas),
            selector: LabelSelector {
                match_labels: Some(match_labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(install.labels("control-plane")),
                    annotations: Some(scraped()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    containers: vec![container],
                    security_context: Some(unprivileged_pod()),
                    volumes: Some(vec![Volume {
                        name: "run".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            medium: Some("Memory".to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(),
        spec: Some(ServiceSpec {
            selector: Some(match_labels.clone()),
            ports: Some(vec![ServicePort {
                name: Some("grpc-tls".to_owned()),
                port: CONFIG_PORT,
                target_port: Some(IntOrString::Int(CONFIG_PORT)),
                app_protocol: Some("grpc".to_owned()),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = vec![to_json(&deployment)?];
    if install.replicas > 1 {
        out.push(to_json(&PodDisruptionBudget {
            metadata: meta(),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(match_labels),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })?);
    }
    out.push(to_json(&service)?);
    Ok(out)
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(kind.to_owned()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The node agent DaemonSet. Rolling updates start the new agent beside
/// the old one (`maxSurge: 1, maxUnavailable: 0`) so it can take over the
/// pods' listeners before the old one drains. It needs `NET_ADMIN` (rules
/// inside pod namespaces), `SYS_ADMIN` (`setns` into them) and
/// `NET_RAW`; not privileged. It mounts the CNI directories (to install
/// the plugin), the runtime's network namespaces and the attach socket's
/// directory (its state directory too, so a restarted agent starts from
/// its certificates and configuration), a token for the `istio-ca`
/// audience and the root certificate. It runs on the host's network.
pub(crate) fn node_agent(install: &Install) -> DaemonSet {
    let control = format!("{}.{}.svc", install.control_name(), install.namespace);
    let labels = install.labels("node-agent");
    let container = Container {
        name: "node".to_owned(),
        image: Some(install.image.clone()),
        args: Some(vec![
            "node".to_owned(),
            "--name=$(NODE_NAME)".to_owned(),
            "--kubernetes".to_owned(),
            format!("--ca-addr={control}:{CONFIG_PORT}"),
            format!("--root-cert={ROOT_DIR}/{}", crate::roots::KEY),
            format!("--token-file={TOKEN_DIR}/{TOKEN_FILE}"),
            "--attach-socket=/var/run/weft/attach.sock".to_owned(),
            "--state-dir=/var/run/weft/node".to_owned(),
            "--cni-bin-dir=/host/opt/cni/bin".to_owned(),
            "--cni-conf-dir=/host/etc/cni/net.d".to_owned(),
            format!("--cni-exclude-namespaces=kube-system,{}", install.namespace),
            "--admin-addr=127.0.0.1:15000".to_owned(),
            "--metrics-addr=0.0.0.0:15020".to_owned(),
            // Within the pod's 30 s grace period.
            "--drain-timeout=25s".to_owned(),
        ]),
        env: Some(vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        // No `ports`: on the host's network they become host ports, and
        // the scheduler would not place the surge pod of a rolling update
        // beside the old one. The metrics port is handed over instead.
        readiness_probe: Some(readiness()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "50m"), ("memory", "64Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            privileged: Some(false),
            run_as_user: Some(0),
            capabilities: Some(Capabilities {
                add: Some(vec![
                    "NET_ADMIN".to_owned(),
                    "SYS_ADMIN".to_owned(),
                    "NET_RAW".to_owned(),
                ]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("cni-bin", "/host/opt/cni/bin", false),
            mount("cni-conf", "/host/etc/cni/net.d", false),
            VolumeMount {
                mount_propagation: Some("HostToContainer".to_owned()),
                ..mount("netns", "/var/run/netns", true)
            },
            mount("weft-run", "/var/run/weft", false),
            mount("token", TOKEN_DIR, true),
            mount("root-cert", ROOT_DIR, true),
        ]),
        ..Default::default()
    };
    DaemonSet {
        metadata: ObjectMeta {
            name: Some("weft-node".to_owned()),
            namespace: Some(install.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector(install, "node-agent")),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NODE_AGENT.to_owned()),
                    containers: vec![container],
                    priority_class_name: Some("system-node-critical".to_owned()),
                    // On the host's network: it needs no CNI call of its
                    // own (its plugin would ask it), and reaches pods'
                    // namespaces from the host's.
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(vec![
                        host_path("cni-bin", "/opt/cni/bin", "DirectoryOrCreate"),
                        host_path("cni-conf", "/etc/cni/net.d", "DirectoryOrCreate"),
                        host_path("netns", "/var/run/netns", "DirectoryOrCreate"),
                        host_path("weft-run", "/var/run/weft", "DirectoryOrCreate"),
                        token_volume("token"),
                        root_cert_volume("root-cert"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
