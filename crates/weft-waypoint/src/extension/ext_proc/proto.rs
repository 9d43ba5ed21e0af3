//! The messages and service of `proto/ext_proc.proto`, generated.

tonic::include_proto!("envoy.service.ext_proc.v3");
