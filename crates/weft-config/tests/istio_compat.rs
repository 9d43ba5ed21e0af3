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

/// Istio's bookinfo sample gateway, as upstream writes it, with the
/// `reviews` service and a credential for an HTTPS server.
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  addresses: [240.240.0.31]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: bookinfo}
spec: {address: 10.0.0.31, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec: {address: 10.0.0.8, labels: {istio: ingressgateway, app: istio-ingressgateway, weft.dev/gateway: "true"}}
---
apiVersion: v1
kind: Secret
metadata: {name: bookinfo-credential, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: bookinfo
spec:
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

#[test]
fn istio_gateway_and_bound_virtual_service_become_gateway_listeners_and_routes() {
    let config = load_ok(&format!("{MESH}---{BOOKINFO_GATEWAY}"));
    let gw = &config.snapshot.gateways[&name("istio-system", "istio-ingressgateway")];
    assert_eq!(gw.listeners.len(), 1);
    let l = &gw.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.port, l.tls.is_none()),
        ("istio-8080", 8080, true)
    );
    assert_eq!(gw.policy.routes.len(), 1);
    let route = &gw.policy.routes[0];
    assert!(route.hosts.is_empty(), "\"*\" on both sides: any host");
    assert_eq!(route.listeners, ["istio-8080"]);
    assert_eq!(route.matches.len(), 5);
    assert_eq!(
        route.destinations[0].service,
        "bookinfo/productpage.bookinfo.svc.cluster.local"
    );
    assert_eq!(route.destinations[0].port, Some(9080));
    // Bound to the gateway only: the "*" host is no service, and
    // productpage's own (mesh) routes are untouched.
    assert!(
        config
            .snapshot
            .l7
            .get(&name("bookinfo", "productpage"))
            .is_none_or(|p| p.routes.is_empty())
    );
}

#[test]
fn https_mutual_passthrough_and_redirect_servers() {
    let yaml = format!(
        "{MESH}---{BOOKINFO_GATEWAY}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure, namespace: bookinfo}}
spec:
  selector: {{app: istio-ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [bookinfo/secure.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [bookinfo/secure.example.com]
    tls: {{mode: MUTUAL, credentialName: bookinfo-credential}}
  - port: {{number: 8443, name: tls, protocol: TLS}}
    hosts: [\"*.passthrough.example.com\"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: bookinfo}}
spec:
  hosts: [secure.example.com, db.passthrough.example.com]
  gateways: [bookinfo/secure]
  http:
  - route: [{{destination: {{host: reviews}}}}]
  tls:
  - match: [{{sniHosts: [db.passthrough.example.com], port: 8443}}]
    route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
"
    );
    let config = load_ok(&yaml);
    let gw = &config.snapshot.gateways[&name("istio-system", "istio-ingressgateway")];
    let names: Vec<&str> = gw.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["istio-8080", "istio-80", "istio-443", "istio-8443"]);
    let https = &gw.listeners[2];
    let tls = https.tls.as_ref().expect("tls");
    assert_eq!(
        tls.certificates[0].secret,
        "istio-system/bookinfo-credential"
    );
    assert_eq!(tls.client_ca.as_deref(), Some("CA"));
    assert!(!tls.client_certificate_optional);
    assert_eq!(
        gw.listeners[3].passthrough,
        Some(weft_core::l7::Passthrough::Tls)
    );
    // The redirect comes first on port 80, for the server's host.
    let redirect = gw
        .policy
        .routes
        .iter()
        .find(|r| r.listeners == ["istio-80"])
        .expect("redirect route");
    assert_eq!(redirect.hosts, ["secure.example.com"]);
    assert_eq!(
        redirect.redirect.as_ref().and_then(|r| r.scheme.as_deref()),
        Some("https")
    );
    // The VirtualService's route on 80 and 443 for its host; port filled.
    let on = |listener: &str| {
        gw.policy
            .routes
            .iter()
            .filter(|r| r.listeners == [listener] && r.redirect.is_none())
            .collect::<Vec<_>>()
    };
    assert_eq!(on("istio-443")[0].hosts, ["secure.example.com"]);
    assert_eq!(on("istio-443")[0].destinations[0].port, Some(9080));
    assert_eq!(on("istio-80").len(), 1);
    assert!(
        on("istio-8080")
            .iter()
            .all(|r| r.name.starts_with("bookinfo/bookinfo"))
    );
    let passthrough = &gw.tls_routes[0];
    assert_eq!(passthrough.listeners, ["istio-8443"]);
    assert_eq!(passthrough.hosts, ["db.passthrough.example.com"]);
}

#[test]
fn istio_gateway_problems_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: nobody, namespace: bookinfo}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
",
            "Gateway bookinfo/nobody: spec.selector: selects no gateway workload",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bad, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL}}
",
            "spec.servers[0].port.protocol: ISTIO_MUTUAL is for Istio's sidecars",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: nocert, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: missing}}
",
            "spec.servers[0].tls.credentialName: no Secret istio-system/missing",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: clash, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: tcp, protocol: TCP}, hosts: ['*']}
",
            "istio-system/istio-ingressgateway: port 8080 already serves another protocol",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: lost, namespace: bookinfo}
spec:
  hosts: ['*']
  gateways: [no-such-gateway]
  http: [{route: [{destination: {host: productpage}}]}]
",
            "spec.gateways[0]: no Istio Gateway (networking.istio.io) bookinfo/no-such-gateway",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: narrow, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 9000, name: http, protocol: HTTP}, hosts: [other/*]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stranger, namespace: bookinfo}
spec:
  hosts: ['*']
  gateways: [narrow]
  http: [{route: [{destination: {host: productpage}}]}]
",
            "spec.gateways[0]: none of spec.hosts [\"*\"] is served by Gateway bookinfo/narrow to namespace bookinfo",
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: bookinfo}
spec:
  hosts: ['*']
  http: [{route: [{destination: {host: productpage}}]}]
",
            "spec.hosts[0]: \"*\": routes for the mesh name services",
        ),
    ];
    for (extra, want) in cases {
        let yaml = format!("{MESH}---{BOOKINFO_GATEWAY}---\n{extra}");
        let problems = load(&yaml).expect_err(want).to_string();
        assert!(problems.contains(want), "want {want:?} in:\n{problems}");
    }
}
