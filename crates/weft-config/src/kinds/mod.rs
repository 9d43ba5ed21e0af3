//! The resource kinds weft reads, and the table that maps `apiVersion` +
//! `kind` to a decoder.
//!
//! Adding a kind is local: write its `Spec` in a new file and add one line
//! to the `kinds!` table below (the checklist for what else a kind may
//! need is in `CONTRIBUTING.md`).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use crate::diag::{Diagnostic, Origin};
use crate::resource::{Resource, decode};

pub mod authorization_policy;
pub mod destination_rule;
pub mod ext_proc_policy;
pub mod gateway;
pub mod grpc_route;
pub mod http_route;
pub mod istio_gateway;
pub mod mesh;
pub mod peer_authentication;
pub mod rate_limit_policy;
pub mod remote_cluster;
pub mod request_authentication;
pub mod secret;
pub mod service_entry;
pub mod tls_route;
pub mod virtual_service;
pub mod wasm_plugin;
pub mod workload_entry;

pub use authorization_policy::AuthorizationPolicySpec;
pub use destination_rule::DestinationRuleSpec;
pub use ext_proc_policy::ExtProcPolicySpec;
pub use gateway::GatewaySpec;
pub use grpc_route::GrpcRouteSpec;
pub use http_route::HttpRouteSpec;
pub use istio_gateway::IstioGatewaySpec;
pub use mesh::MeshSpec;
pub use peer_authentication::PeerAuthenticationSpec;
pub use rate_limit_policy::RateLimitPolicySpec;
pub use remote_cluster::RemoteClusterSpec;
pub use request_authentication::RequestAuthenticationSpec;
pub use secret::SecretSpec;
pub use service_entry::ServiceEntrySpec;
pub use tls_route::{TcpRouteSpec, TlsRouteSpec};
pub use virtual_service::VirtualServiceSpec;
pub use wasm_plugin::WasmPluginSpec;
pub use workload_entry::WorkloadEntrySpec;

/// The one registration point of a kind: its field in [`Resources`], its
/// spec type, and its row in the kind table (API group, versions newest
/// first, `kind`, and how a document is prepared before decoding). From
/// this list come the [`Resources`] struct, `len`, `extend_from` and
/// `KINDS`; a new kind is one line here (see `CONTRIBUTING.md`).
macro_rules! kinds {
    ($(
        $(#[$doc:meta])*
        $field:ident: $spec:ty = ($group:expr, $versions:expr, $kind:literal, $prepare:path)
    ),* $(,)?) => {
        /// Every decoded resource of a configuration, grouped by kind, in
        /// load order. Resources are shared (`Arc`) so that a reload reuses
        /// the resources of files that did not change.
        #[derive(Debug, Clone, Default)]
        pub struct Resources {
            $( $(#[$doc])* pub $field: Vec<Arc<Resource<$spec>>>, )*
        }

        impl Resources {
            /// How many resources there are of every kind.
            pub fn len(&self) -> usize {
                0 $( + self.$field.len() )*
            }

            /// Appends every resource of `other` (shared, not copied).
            pub fn extend_from(&mut self, other: &Resources) {
                $( self.$field.extend(other.$field.iter().cloned()); )*
            }
        }

        /// Every kind weft understands.
        pub(crate) const KINDS: &[KindDef] = &[
            $(
                KindDef {
                    group: $group,
                    versions: $versions,
                    kind: $kind,
                    refused: <$spec as crate::resource::Spec>::UNSUPPORTED,
                    add: |v, o, r, out| {
                        r.$field.extend(decode(&$prepare(v), o, out).map(Arc::new))
                    },
                },
            )*
        ];
    };
}

/// A document decoded as written.
fn as_is(v: &Value) -> Cow<'_, Value> {
    Cow::Borrowed(v)
}

/// A `Secret`'s top-level `data`/`stringData` nested under `spec`.
fn secret_spec(v: &Value) -> Cow<'_, Value> {
    Cow::Owned(secret::nest(v))
}

const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";
const WEFT: &str = "weft.dev";
const ISTIO_SECURITY: &str = "security.istio.io";

kinds! {
    /// Istio `ServiceEntry`.
    service_entries: ServiceEntrySpec = (ISTIO_NETWORKING, ISTIO_NETWORKING_VERSIONS, "ServiceEntry", as_is),
    /// Istio `WorkloadEntry`.
    workload_entries: WorkloadEntrySpec = (ISTIO_NETWORKING, ISTIO_NETWORKING_VERSIONS, "WorkloadEntry", as_is),
    /// Istio `VirtualService`.
    virtual_services: VirtualServiceSpec = (ISTIO_NETWORKING, ISTIO_NETWORKING_VERSIONS, "VirtualService", as_is),
    /// Istio `Gateway` (ports and hosts of ingress gateway workloads).
    istio_gateways: IstioGatewaySpec = (ISTIO_NETWORKING, ISTIO_NETWORKING_VERSIONS, "Gateway", as_is),
    /// Istio `DestinationRule`.
    destination_rules: DestinationRuleSpec = (ISTIO_NETWORKING, ISTIO_NETWORKING_VERSIONS, "DestinationRule", as_is),
    /// Gateway API `HTTPRoute`.
    http_routes: HttpRouteSpec = (GATEWAY_API, &["v1", "v1beta1"], "HTTPRoute", as_is),
    /// Gateway API `Gateway`.
    gateways: GatewaySpec = (GATEWAY_API, &["v1", "v1beta1"], "Gateway", as_is),
    /// Gateway API `GRPCRoute`.
    grpc_routes: GrpcRouteSpec = (GATEWAY_API, &["v1"], "GRPCRoute", as_is),
    /// Gateway API `TLSRoute`.
    tls_routes: TlsRouteSpec = (GATEWAY_API, &["v1alpha2", "v1alpha3"], "TLSRoute", as_is),
    /// Gateway API `TCPRoute`.
    tcp_routes: TcpRouteSpec = (GATEWAY_API, &["v1alpha2"], "TCPRoute", as_is),
    /// Istio `AuthorizationPolicy`.
    authorization_policies: AuthorizationPolicySpec = (ISTIO_SECURITY, &["v1", "v1beta1"], "AuthorizationPolicy", as_is),
    /// Istio `RequestAuthentication`.
    request_authentications: RequestAuthenticationSpec = (ISTIO_SECURITY, &["v1", "v1beta1"], "RequestAuthentication", as_is),
    /// Istio `PeerAuthentication`.
    peer_authentications: PeerAuthenticationSpec = (ISTIO_SECURITY, &["v1", "v1beta1"], "PeerAuthentication", as_is),
    /// Istio `WasmPlugin`.
    wasm_plugins: WasmPluginSpec = ("extensions.istio.io", &["v1alpha1"], "WasmPlugin", as_is),
    /// weft `RateLimitPolicy`.
    rate_limit_policies: RateLimitPolicySpec = (WEFT, &["v1alpha1"], "RateLimitPolicy", as_is),
    /// weft `ExtProcPolicy`.
    ext_proc_policies: ExtProcPolicySpec = (WEFT, &["v1alpha1"], "ExtProcPolicy", as_is),
    /// weft `RemoteCluster`.
    remote_clusters: RemoteClusterSpec = (WEFT, &["v1alpha1"], "RemoteCluster", as_is),
    /// weft `Mesh`.
    meshes: MeshSpec = (WEFT, &["v1alpha1"], "Mesh", as_is),
    /// Kubernetes `Secret`.
    secrets: SecretSpec = ("", &["v1"], "Secret", secret_spec),
}

impl Resources {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    /// Fields of the upstream API weft refuses by name, with the reason.
    pub(crate) refused: &'static [(&'static str, &'static str)],
    /// Decodes a document of this kind into `Resources`.
    pub(crate) add: fn(&Value, &Origin, &mut Resources, &mut Vec<Diagnostic>),
}

/// Every kind weft reads, as (group — empty for the core group —, its
/// newest version, `kind`): what a Kubernetes source watches.
pub fn served_kinds() -> Vec<(&'static str, &'static str, &'static str)> {
    KINDS
        .iter()
        .map(|k| (k.group, k.versions[0], k.kind))
        .collect()
}

/// Every field weft refuses by name: (`group`, `kind`, field path without
/// list indices, the reason it gives). docs/configuration.md lists them
/// (a test keeps it complete).
pub fn refused_fields() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    KINDS
        .iter()
        .flat_map(|k| {
            k.refused
                .iter()
                .map(|(path, why)| (k.group, k.kind, *path, *why))
        })
        .collect()
}

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
