//! Generated protobuf and gRPC types (see `proto/`).

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]

/// `envoy.service.discovery.v3`: the delta xDS protocol.
pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
    pub use crate::wire::Resource;
}

/// `istio.workload`: the Workload API.
pub mod workload {
    tonic::include_proto!("istio.workload");
}

/// `istio.security`: L4 authorization.
pub mod security {
    tonic::include_proto!("istio.security");
}

/// `weft.config.v1alpha1`: weft's own resources for waypoints and gateways.
pub mod weft {
    tonic::include_proto!("weft.config.v1alpha1");
}
