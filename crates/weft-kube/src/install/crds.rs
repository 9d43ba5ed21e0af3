//! The CustomResourceDefinitions of weft's own kinds (`weft.dev`), with
//! structural OpenAPI schemas the API server checks objects against. The
//! schemas follow the `weft-config` decoders (`kinds/mesh.rs`,
//! `kinds/rate_limit_policy.rs`, `kinds/ext_proc_policy.rs`); the API server refuses what is
//! malformed in shape, `weft control` still checks the meaning (and
//! reports it in `status`). A test validates every `weft.dev` example in
//! the docs against them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::Install;

/// weft's API group.
pub const GROUP: &str = "weft.dev";
/// The version its kinds are served in.
pub const VERSION: &str = "v1alpha1";

/// Every weft CRD.
pub(super) fn all(install: &Install) -> Vec<CustomResourceDefinition> {
    vec![
        crd(install, "Mesh", "meshes", "Cluster", mesh_spec()),
        crd(
            install,
            "RateLimitPolicy",
            "ratelimitpolicies",
            "Namespaced",
            rate_limit_policy_spec(),
        ),
        crd(
            install,
            "ExtProcPolicy",
            "extprocpolicies",
            "Namespaced",
            ext_proc_policy_spec(),
        ),
        crd(
            install,
            "RemoteCluster",
            "remoteclusters",
            "Cluster",
            remote_cluster_spec(),
        ),
    ]
}

fn crd(
    install: &Install,
    kind: &str,
    plural: &str,
    scope: &str,
    spec: Value,
) -> CustomResourceDefinition {
    let schema = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{GROUP}")),
            labels: Some(install.labels("crd")),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: kind.to_owned(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.to_owned(),
                singular: Some(kind.to_ascii_lowercase()),
                categories: Some(vec!["weft".to_owned()]),
                ..Default::default()
            },
            scope: scope.to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(
                        serde_json::from_value::<JSONSchemaProps>(schema)
                            .expect("the CRD schemas are valid JSONSchemaProps"),
                    ),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

fn string() -> Value {
    json!({"type": "string"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn port() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 65535})
}

fn object(required: &[&str], properties: Value) -> Value {
    let mut o = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn enumeration(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// `Mesh.spec` (kinds/mesh.rs).
fn mesh_spec() -> Value {
    let authz_common = |extra: Value| {
        let mut p = json!({
            "service": string(), "port": port(), "timeout": string(),
            "failOpen": {"type": "boolean"}, "statusOnError": string(),
        });
        if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
            p.extend(extra);
        }
        object(&["service", "port"], p)
    };
    object(
        &[],
        json!({
            "trustDomain": string(),
            "mtls": object(&[], json!({"mode": enumeration(&["STRICT", "PERMISSIVE"])})),
            "outboundTrafficPolicy": object(&[], json!({"mode": enumeration(&["ALLOW_ANY", "REGISTRY_ONLY"])})),
            "connectTimeout": string(),
            "extensionProviders": {"type": "array", "items": object(&["name"], json!({
                "name": string(),
                "envoyExtAuthzGrpc": authz_common(json!({})),
                "envoyExtAuthzHttp": authz_common(json!({
                    "pathPrefix": string(),
                    "includeRequestHeadersInCheck": strings(),
                    "headersToUpstreamOnAllow": strings(),
                    "headersToDownstreamOnDeny": strings(),
                })),
                "apiKey": object(&["secret"], json!({
                    "secret": string(), "header": string(), "query": string(), "clientHeader": string(),
                })),
                "opentelemetry": object(&["service", "port"], json!({
                    "service": string(), "port": port(),
                    "http": object(&[], json!({"path": string()})),
                })),
            }))},
            "defaultProviders": object(&[], json!({"tracing": strings()})),
            "tracing": object(&[], json!({"randomSamplingPercentage": {"type": "number", "minimum": 0, "maximum": 100}})),
            "pathNormalization": object(&[], json!({"normalization": string()})),
            "cluster": string(),
            "network": string(),
        }),
    )
}

/// `RemoteCluster.spec` (kinds/remote_cluster.rs).
fn remote_cluster_spec() -> Value {
    object(
        &["address"],
        json!({
            "clusterId": string(),
            "address": string(),
            "network": string(),
            "trustDomain": string(),
            "exportedNamespaces": strings(),
            "staleAfter": string(),
        }),
    )
}

/// `ExtProcPolicy.spec` (kinds/ext_proc_policy.rs).
fn ext_proc_policy_spec() -> Value {
    let send = || enumeration(&["SEND", "SKIP"]);
    let body = || enumeration(&["NONE", "STREAMED", "BUFFERED"]);
    object(
        &["targetRefs", "address"],
        json!({
            "targetRefs": {"type": "array", "minItems": 1, "items": object(&["name"], json!({
                "group": string(), "kind": string(), "name": string(),
                "namespace": string(), "sectionName": string(),
            }))},
            "address": string(),
            "processingMode": object(&[], json!({
                "requestHeaders": send(), "responseHeaders": send(),
                "requestBody": body(), "responseBody": body(),
                "requestTrailers": send(), "responseTrailers": send(),
            })),
            "messageTimeout": string(),
            "failOpen": {"type": "boolean"},
            "allowModeOverride": {"type": "boolean"},
        }),
    )
}

/// `RateLimitPolicy.spec` (kinds/rate_limit_policy.rs).
fn rate_limit_policy_spec() -> Value {
    let named = || {
        object(
            &["name", "value"],
            json!({"name": string(), "value": string()}),
        )
    };
    object(
        &["rules"],
        json!({
            "targetRef": object(&["name"], json!({
                "group": string(), "kind": string(), "name": string(),
                "namespace": string(), "port": port(), "sectionName": string(),
            })),
            "mode": enumeration(&["local", "global"]),
            "redis": object(&["url"], json!({"url": string()})),
            "rateLimitService": object(&["address"], json!({
                "address": string(), "domain": string(), "timeout": string(),
            })),
            "failureMode": enumeration(&["open", "closed"]),
            "rules": {"type": "array", "minItems": 1, "items": object(&["name"], json!({
                "name": string(),
                "match": {"type": "array", "items": object(&[], json!({
                    "header": named(), "claim": named(),
                    "sourcePrincipal": string(), "path": string(), "method": string(),
                }))},
                "countBy": strings(),
                "limit": object(&["requests", "per"], json!({
                    "requests": {"type": "integer", "minimum": 0},
                    "per": string(),
                    "burst": {"type": "integer", "minimum": 0},
                })),
            }))},
        }),
    )
}
