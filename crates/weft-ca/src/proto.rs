//! Generated protobuf and gRPC types of `istio.v1.auth` (see `proto/ca.proto`).

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("istio.v1.auth");
