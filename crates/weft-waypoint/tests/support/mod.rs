//! What the extension tests share: a gateway's (or waypoint's) options
//! for an in-process mesh, and the YAML of a backend service, its
//! endpoint and a gateway workload with HTTP listeners.

#![allow(dead_code)]

use std::time::Duration;

use weft_testkit::TestMesh;
use weft_waypoint::fronts::setup::WaypointOptions;

/// The options of proxy `name` (`namespace/name`) on node-1 of `mesh`,
/// serving metrics on `ip`.
pub(crate) fn options(mesh: &TestMesh, name: &str, ip: &str) -> WaypointOptions {
    WaypointOptions {
        wasm: Default::default(),
        name: name.into(),
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        ca_addr: mesh.control.tls_addr.into(),
        roots: mesh.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: format!("{ip}:0").parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: Default::default(),
    }
}

/// Service `shop/backend` (VIP `vip`, port 80 → 8080) with one endpoint
/// at `endpoint`, and gateway `shop/edge` at `gateway` with an HTTP
/// listener per `(name, port)`, routing everything to the backend.
pub(crate) fn edge_to_backend(
    vip: &str,
    endpoint: &str,
    gateway: &str,
    listeners: &[(&str, u16)],
) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(name, port)| format!("  - {{name: {name}, port: {port}, protocol: HTTP}}\n"))
        .collect();
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: shop}}
spec:
  hosts: [backend.shop.svc.cluster.local]
  addresses: [{vip}]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-1, namespace: shop}}
spec:
  address: {endpoint}
  labels: {{app: backend, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: edge, namespace: shop}}
spec:
  address: {gateway}
  serviceAccount: edge
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners:
{listeners}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-backend, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: edge}}]
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
"#
    )
}
