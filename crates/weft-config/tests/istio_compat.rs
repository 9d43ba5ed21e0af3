//! Istio configuration as Istio reads it: sidecar-era `selector`
//! policies, deprecated fields, Istio `Gateway`s with the VirtualServices
//! bound to them.

use std::path::Path;

use weft_config::{Config, Problems, load_sources};
use weft_core::model::NamespacedName;

fn load(yaml: &str) -> Result<Config, Problems> {
    load_sources([(Path::new("test.yaml"), yaml)])
}

fn load_ok(yaml: &str) -> Config {
    load(yaml).unwrap_or_else(|p| panic!("expected a valid config, got:\n{p}"))
}

fn name(ns: &str, n: &str) -> NamespacedName {
    NamespacedName::new(ns, n)
}

fn warnings(config: &Config) -> Vec<String> {
    config.warnings.iter().map(ToString::to_string).collect()
}

/// A service with one workload, and a gateway workload labelled as
/// Istio's ingress gateway is.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: bookinfo}
spec:
  hosts: [productpage.bookinfo.svc.cluster.local]
  addresses: [240.240.0.30]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage-v1, namespace: bookinfo}
spec: {address: 10.0.0.30, labels: {app: productpage, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingressgateway, namespace: bookinfo}
spec: {address: 10.0.0.9, labels: {istio: ingressgateway, weft.dev/gateway: "true"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingressgateway, namespace: bookinfo}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

#[test]
fn selector_policy_on_a_gateway_workload_is_enforced_there_in_full() {
    let config = load_ok(&format!(
        "{MESH}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: partner, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/partner/*]}}}}]}}]
"
    ));
    let gw = &config.snapshot.gateways[&name("bookinfo", "ingressgateway")];
    assert_eq!(gw.policy.authz.len(), 1);
    assert_eq!(gw.policy.authz[0].rules[0].to[0].paths, ["/partner/*"]);
    // Not the node's: the gateway reads the path.
    assert!(config.snapshot.policies.is_empty());
    assert!(warnings(&config).is_empty(), "{:?}", warnings(&config));
}

#[test]
fn selector_policy_on_ordinary_workloads_is_the_nodes_with_a_warning() {
    let config = load_ok(&format!(
        "{MESH}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: get-only, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]
"
    ));
    let p = &config.snapshot.policies[&name("bookinfo", "get-only")];
    assert!(
        p.rules.is_empty(),
        "the ALLOW rule never matches at the node"
    );
    let w = warnings(&config);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("AuthorizationPolicy bookinfo/get-only: warning: spec.rules[0].to[0].operation.methods: methods is request-level"), "{w:?}");
}

#[test]
fn selector_request_authentication_checks_at_gateways_and_warns_elsewhere() {
    let jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#;
    let ra = |labels: &str| {
        format!(
            "{MESH}---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {labels}}}
  jwtRules: [{{issuer: i, jwks: '{jwks}'}}]
"
        )
    };
    let on_gateway = load_ok(&ra("{istio: ingressgateway}"));
    let gw = &on_gateway.snapshot.gateways[&name("bookinfo", "ingressgateway")];
    assert_eq!(gw.policy.jwt.len(), 1);
    assert!(warnings(&on_gateway).is_empty());
    let on_workloads = load_ok(&ra("{app: productpage}"));
    let w = warnings(&on_workloads);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("spec.selector: no effect on bookinfo/productpage-v1"),
        "{w:?}"
    );
}
