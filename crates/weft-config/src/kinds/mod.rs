//! The resource kinds weft reads, and the table that maps `apiVersion` +
//! `kind` to a decoder.
//!
//! Adding a kind is local: write its `Spec` in a new file, add a field to
//! [`Resources`] and one row to [`KINDS`].

use std::sync::Arc;

use serde_json::Value;

use crate::diag::{Diagnostic, Origin};
use crate::resource::{Resource, decode};

pub mod authorization_policy;
pub mod destination_rule;
pub mod gateway;
pub mod grpc_route;
pub mod http_route;
pub mod mesh;
pub mod peer_authentication;
pub mod rate_limit_policy;
pub mod request_authentication;
pub mod secret;
pub mod service_entry;
pub mod tls_route;
pub mod virtual_service;
pub mod workload_entry;

pub use authorization_policy::AuthorizationPolicySpec;
pub use destination_rule::DestinationRuleSpec;
pub use gateway::GatewaySpec;
pub use grpc_route::GrpcRouteSpec;
pub use http_route::HttpRouteSpec;
pub use mesh::MeshSpec;
pub use peer_authentication::PeerAuthenticationSpec;
pub use rate_limit_policy::RateLimitPolicySpec;
pub use request_authentication::RequestAuthenticationSpec;
pub use secret::SecretSpec;
pub use service_entry::ServiceEntrySpec;
pub use tls_route::{TcpRouteSpec, TlsRouteSpec};
pub use virtual_service::VirtualServiceSpec;
pub use workload_entry::WorkloadEntrySpec;

/// Every decoded resource of a configuration, grouped by kind, in load
/// order. Resources are shared (`Arc`) so that a reload reuses the
/// resources of files that did not change.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Istio `ServiceEntry`.
    pub service_entries: Vec<Arc<Resource<ServiceEntrySpec>>>,
    /// Istio `WorkloadEntry`.
    pub workload_entries: Vec<Arc<Resource<WorkloadEntrySpec>>>,
    /// weft `Mesh`.
    pub meshes: Vec<Arc<Resource<MeshSpec>>>,
    /// Istio `AuthorizationPolicy`.
    pub authorization_policies: Vec<Arc<Resource<AuthorizationPolicySpec>>>,
    /// Istio `PeerAuthentication`.
    pub peer_authentications: Vec<Arc<Resource<PeerAuthenticationSpec>>>,
    /// Istio `VirtualService`.
    pub virtual_services: Vec<Arc<Resource<VirtualServiceSpec>>>,
    /// Istio `DestinationRule`.
    pub destination_rules: Vec<Arc<Resource<DestinationRuleSpec>>>,
    /// Gateway API `HTTPRoute`.
    pub http_routes: Vec<Arc<Resource<HttpRouteSpec>>>,
    /// Gateway API `GRPCRoute`.
    pub grpc_routes: Vec<Arc<Resource<GrpcRouteSpec>>>,
    /// Gateway API `TLSRoute`.
    pub tls_routes: Vec<Arc<Resource<TlsRouteSpec>>>,
    /// Gateway API `TCPRoute`.
    pub tcp_routes: Vec<Arc<Resource<TcpRouteSpec>>>,
    /// weft `RateLimitPolicy`.
    pub rate_limit_policies: Vec<Arc<Resource<RateLimitPolicySpec>>>,
    /// Istio `RequestAuthentication`.
    pub request_authentications: Vec<Arc<Resource<RequestAuthenticationSpec>>>,
    /// Kubernetes `Secret`.
    pub secrets: Vec<Arc<Resource<SecretSpec>>>,
    /// Gateway API `Gateway`.
    pub gateways: Vec<Arc<Resource<GatewaySpec>>>,
}

impl Resources {
    /// How many resources there are of every kind.
    pub fn len(&self) -> usize {
        self.service_entries.len()
            + self.workload_entries.len()
            + self.meshes.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.rate_limit_policies.len()
            + self.request_authentications.len()
            + self.secrets.len()
            + self.gateways.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends every resource of `other` (shared, not copied).
    pub fn extend_from(&mut self, other: &Resources) {
        self.service_entries
            .extend(other.service_entries.iter().cloned());
        self.workload_entries
            .extend(other.workload_entries.iter().cloned());
        self.meshes.extend(other.meshes.iter().cloned());
        self.authorization_policies
            .extend(other.authorization_policies.iter().cloned());
        self.peer_authentications
            .extend(other.peer_authentications.iter().cloned());
        self.virtual_services
            .extend(other.virtual_services.iter().cloned());
        self.destination_rules
            .extend(other.destination_rules.iter().cloned());
        self.http_routes.extend(other.http_routes.iter().cloned());
        self.grpc_routes.extend(other.grpc_routes.iter().cloned());
        self.tls_routes.extend(other.tls_routes.iter().cloned());
        self.tcp_routes.extend(other.tcp_routes.iter().cloned());
        self.rate_limit_policies
            .extend(other.rate_limit_policies.iter().cloned());
        self.request_authentications
            .extend(other.request_authentications.iter().cloned());
        self.secrets.extend(other.secrets.iter().cloned());
        self.gateways.extend(other.gateways.iter().cloned());
    }

    /// The Secret `namespace/name`, if loaded.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Resource<SecretSpec>> {
        self.secrets
            .iter()
            .map(|s| s.as_ref())
            .find(|s| s.name.namespace == namespace && s.name.name == name)
    }
}

/// One row of the kind table.
pub(crate) struct KindDef {
    /// API group (`networking.istio.io`), empty for the core group.
    pub(crate) group: &'static str,
    /// Versions accepted, newest first.
    pub(crate) versions: &'static [&'static str],
    /// The `kind` field.
    pub(crate) kind: &'static str,
    /// Decodes a document of this kind into `Resources`.
    pub(crate) add: fn(&Value, &Origin, &mut Resources, &mut Vec<Diagnostic>),
}

const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const WEFT: &str = "weft.dev";
const ISTIO_SECURITY: &str = "security.istio.io";

/// Every kind weft understands.
pub(crate) const KINDS: &[KindDef] = &[
    KindDef {
        group: ISTIO_NETWORKING,
        versions: ISTIO_NETWORKING_VERSIONS,
        kind: "ServiceEntry",
        add: |v, o, r, out| r.service_entries.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: ISTIO_NETWORKING,
        versions: ISTIO_NETWORKING_VERSIONS,
        kind: "WorkloadEntry",
        add: |v, o, r, out| r.workload_entries.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: ISTIO_NETWORKING,
        versions: ISTIO_NETWORKING_VERSIONS,
        kind: "VirtualService",
        add: |v, o, r, out| r.virtual_services.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: ISTIO_NETWORKING,
        versions: ISTIO_NETWORKING_VERSIONS,
        kind: "DestinationRule",
        add: |v, o, r, out| r.destination_rules.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1", "v1beta1"],
        kind: "HTTPRoute",
        add: |v, o, r, out| r.http_routes.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1", "v1beta1"],
        kind: "Gateway",
        add: |v, o, r, out| r.gateways.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1"],
        kind: "GRPCRoute",
        add: |v, o, r, out| r.grpc_routes.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1alpha2", "v1alpha3"],
        kind: "TLSRoute",
        add: |v, o, r, out| r.tls_routes.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1alpha2"],
        kind: "TCPRoute",
        add: |v, o, r, out| r.tcp_routes.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: ISTIO_SECURITY,
        versions: &["v1", "v1beta1"],
        kind: "AuthorizationPolicy",
        add: |v, o, r, out| {
            r.authorization_policies
                .extend(decode(v, o, out).map(Arc::new))
        },
    },
    KindDef {
        group: ISTIO_SECURITY,
        versions: &["v1", "v1beta1"],
        kind: "RequestAuthentication",
        add: |v, o, r, out| {
            r.request_authentications
                .extend(decode(v, o, out).map(Arc::new))
        },
    },
    KindDef {
        group: ISTIO_SECURITY,
        versions: &["v1", "v1beta1"],
        kind: "PeerAuthentication",
        add: |v, o, r, out| {
            r.peer_authentications
                .extend(decode(v, o, out).map(Arc::new))
        },
    },
    KindDef {
        group: WEFT,
        versions: &["v1alpha1"],
        kind: "RateLimitPolicy",
        add: |v, o, r, out| {
            r.rate_limit_policies
                .extend(decode(v, o, out).map(Arc::new))
        },
    },
    KindDef {
        group: WEFT,
        versions: &["v1alpha1"],
        kind: "Mesh",
        add: |v, o, r, out| r.meshes.extend(decode(v, o, out).map(Arc::new)),
    },
    KindDef {
        group: "",
        versions: &["v1"],
        kind: "Secret",
        add: |v, o, r, out| {
            r.secrets
                .extend(decode(&secret::nest(v), o, out).map(Arc::new))
        },
    },
];

/// `group/version`, or just `version` for the core group.
fn api_version_of(k: &KindDef, version: &str) -> String {
    if k.group.is_empty() {
        version.to_owned()
    } else {
        format!("{}/{version}", k.group)
    }
}

/// Finds the decoder for a document, or explains why there is none
/// (as the field at fault and a message).
pub(crate) fn lookup(
    api_version: &str,
    kind: &str,
) -> Result<&'static KindDef, (&'static str, String)> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let same_kind: Vec<&KindDef> = KINDS.iter().filter(|k| k.kind == kind).collect();
    if same_kind.is_empty() {
        let known: Vec<String> = KINDS
            .iter()
            .map(|k| format!("{} ({})", k.kind, api_version_of(k, k.versions[0])))
            .collect();
        return Err((
            "kind",
            format!(
                "{kind:?} is not a kind weft supports; supported kinds: {}",
                known.join(", ")
            ),
        ));
    }
    same_kind
        .iter()
        .find(|k| k.group == group && k.versions.contains(&version))
        .copied()
        .ok_or_else(|| {
            let accepted: Vec<String> = same_kind
                .iter()
                .flat_map(|k| k.versions.iter().map(move |v| api_version_of(k, v)))
                .collect();
            (
                "apiVersion",
                format!(
                    "{api_version:?} is not supported for {kind}; use {}",
                    accepted.join(" or ")
                ),
            )
        })
}
