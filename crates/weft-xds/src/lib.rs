//! # weft-xds
//!
//! The configuration stream between `weft control` and the proxies: the
//! delta variant of Envoy's aggregated discovery service carrying Istio's
//! Workload API resources (`istio.workload.Address`,
//! `istio.security.Authorization`), wire-compatible with what istiod sends
//! to ztunnel, and weft's own `weft.config.v1alpha1.L7Service` for
//! waypoints and gateways.
//!
//! - [`resources`]: snapshot → versioned resources, re-encoding only what
//!   a change touched;
//! - [`export`]: what this cluster lets the clusters it peers with read,
//!   and [`peers`] who they are;
//! - [`delta`]: what changed between two sets, and between what a client
//!   holds and what is current (pure, table-tested);
//! - [`server`]: per-stream delta state, ACK/NACK, pushes on change;
//! - [`client`]: subscribe, validate, apply, ACK/NACK, keep the last good
//!   state through control plane outages, resume with versions;
//! - [`state`]: what the client holds, shared with the copy a proxy keeps
//!   on disk between runs (`kept`).

#![forbid(unsafe_code)]

pub mod authz;
pub mod client;
pub mod delta;
pub mod export;
mod kept;
pub mod peers;
pub mod proto;
pub mod resources;
pub mod server;
pub mod state;
pub mod wire;

pub use client::{ClientOptions, ClientState, Transport, XdsClient};
pub use export::EXPORT_TYPE;
pub use resources::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, GATEWAY_TYPE, L7_SERVICE_TYPE, LISTENERS_TYPE, MESH_TYPE,
    ResourceSet,
};
pub use server::{XdsMetrics, XdsServer};

/// A validator that checks resources decode as the type they claim
/// (Workload API addresses and authorizations).
pub fn decode_validator() -> client::Validator {
    use prost::Message;
    std::sync::Arc::new(|type_url: &str, body: &prost_types::Any| match type_url {
        ADDRESS_TYPE | EXPORT_TYPE => proto::workload::Address::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid istio.workload.Address: {e}")),
        AUTHORIZATION_TYPE => proto::security::Authorization::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid istio.security.Authorization: {e}")),
        MESH_TYPE => proto::weft::MeshConfig::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid weft.config.v1alpha1.MeshConfig: {e}")),
        LISTENERS_TYPE => proto::weft::WorkloadListeners::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid weft.config.v1alpha1.WorkloadListeners: {e}")),
        L7_SERVICE_TYPE => proto::weft::L7Service::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid weft.config.v1alpha1.L7Service: {e}")),
        GATEWAY_TYPE => proto::weft::Gateway::decode(body.value.as_slice())
            .map(|_| ())
            .map_err(|e| format!("not a valid weft.config.v1alpha1.Gateway: {e}")),
        other => Err(format!("unexpected type {other}")),
    })
}
