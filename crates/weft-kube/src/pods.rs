//! Pieces of the pod specs weft puts in a cluster (its control plane and
//! node agent from `weft install`, the waypoints and gateways its
//! controller deploys): environment from the downward API, ports,
//! resources, the restricted security context and the readiness probe.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The port of metrics and readiness (`/healthz/ready`) of every weft
/// process.
pub(crate) const METRICS_PORT: i32 = 15020;

/// An environment variable from a field of the pod (downward API).
pub(crate) fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Resource quantities by name.
pub(crate) fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

/// A TCP container port.
pub(crate) fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

/// Unprivileged, nothing to escalate to, read-only root.
pub(crate) fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `/healthz/ready` on the metrics port.
pub(crate) fn readiness() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".to_owned()),
            port: IntOrString::Int(METRICS_PORT),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Where a proxy's service-account token for the CA is mounted.
pub(crate) const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The token file's name in [`TOKEN_DIR`] (Istio's).
pub(crate) const TOKEN_FILE: &str = "istio-token";
/// Where the mesh's root certificate (`istio-ca-root-cert`) is mounted.
pub(crate) const ROOT_DIR: &str = "/var/run/secrets/istio";

/// A projected service-account token for the `istio-ca` audience, valid
/// 12 h (the kubelet rewrites it well before), as volume `name`.
pub(crate) fn token_volume(name: &str) -> k8s_openapi::api::core::v1::Volume {
    use k8s_openapi::api::core::v1::{
        ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
    };
    Volume {
        name: name.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(crate::tokens::ISTIO_CA_AUDIENCE.to_owned()),
                    expiration_seconds: Some(43200),
                    path: TOKEN_FILE.to_owned(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The root certificate ConfigMap weft control publishes in every
/// namespace, as volume `name`.
pub(crate) fn root_cert_volume(name: &str) -> k8s_openapi::api::core::v1::Volume {
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Volume};
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: crate::roots::CONFIG_MAP.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A read-only mount of volume `name` at `path`.
pub(crate) fn read_only_mount(name: &str, path: &str) -> k8s_openapi::api::core::v1::VolumeMount {
    k8s_openapi::api::core::v1::VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The pod-level security of weft's unprivileged pods: not root (uid and
/// gid 1337, as Istio's proxies), the runtime's default seccomp profile.
pub(crate) fn unprivileged_pod() -> k8s_openapi::api::core::v1::PodSecurityContext {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SeccompProfile};
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(1337),
        run_as_group: Some(1337),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Annotations asking Prometheus to scrape the metrics port.
pub(crate) fn scraped() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
    ])
}
