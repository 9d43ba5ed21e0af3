//! Path normalization closes the policy bypass it exists for, end to end:
//! `weft up` runs a mesh whose backend (written here) normalizes request
//! paths the way many servers do — percent-decoding everything, `\` as
//! `/`, merged slashes, dot segments resolved — and serves a secret under
//! `/partner/`. The ingress gateway guards `/partner/*` with a CUSTOM
//! (API key) policy attached by an Istio `selector`; the service's
//! waypoint guards it with a DENY policy on the same paths. With the
//! mesh's `DECODE_AND_MERGE_SLASHES`, no spelling of the path reaches the
//! secret without the key, at either proxy; with the key it is served.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::Up;

const BACKEND: &str = "127.0.1.70:8080";
const GATEWAY: &str = "127.0.1.71:8080";
/// The client's outbound port to the service (through its waypoint).
const VIA_WAYPOINT: &str = "127.0.2.72:9001";
const SECRET: &str = "partner-secret";

const CONFIG: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec:
  pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}
  extensionProviders:
  - name: partner-keys
    apiKey: {secret: istio-system/partner-keys, header: x-api-key}
---
# `echo demo-key | weft hash-key`
apiVersion: v1
kind: Secret
metadata: {name: partner-keys, namespace: istio-system}
stringData:
  demo-partner: sha256:c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: partner
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  hosts: [partner.shop.svc.cluster.local]
  addresses: [240.240.8.1]
  location: MESH_INTERNAL
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: partner}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: partner-1, namespace: shop}
spec: {address: 127.0.1.70, serviceAccount: partner, labels: {app: partner, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: waypoint, namespace: shop}
spec: {address: 127.0.1.73, serviceAccount: waypoint, labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 127.0.1.71, serviceAccount: ingress, labels: {istio: ingressgateway, weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9001=partner.shop.svc.cluster.local:80"
spec: {address: 127.0.2.72, serviceAccount: client, labels: {app: client, weft.dev/node: node-2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{route: [{destination: {host: partner}}]}]
---
# At the gateway: the sidecar-era way, by selector.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partner-keys, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: partner-keys}
  rules: [{to: [{operation: {paths: ["/partner/*"]}}]}]
---
# At the waypoint: deny the partner paths to anyone without the key.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partner-only, namespace: shop}
spec:
  targetRef: {kind: Service, name: partner}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/partner/*"]}}]
    when: [{key: "request.headers[x-api-key]", notValues: [demo-key]}]
"#;

/// Every spelling of `/partner/x` a normalizing backend would serve as
/// the protected path (and a few it would not), in origin and absolute
/// form.
const VARIANTS: &[&str] = &[
    "/partner/x",
    "//partner/x",
    "///partner//x",
    "/x/../partner/x",
    "/./partner/x",
    "/x/%2e%2e/partner/x",
    "/x/%2E%2E/partner/x",
    "/%70artner/x",
    "/%70ARTNER/x",
    "/partner%2Fx",
    "/partner%2fx",
    "/%2Fpartner/x",
    "/partner%5Cx",
    "/partner/%2e/x",
    "/partner/x?a=b",
    "/partner;a=b/x",
    "/partner%252Fx",
    "/../partner/x",
    "/x/..%2Fpartner/x",
    "http://partner.example/partner/x",
    "http://partner.example//partner/x",
];

/// The backend: decodes every escape, turns `\` into `/`, merges slashes
/// and resolves dot segments — then serves the secret under `/partner/`.
fn backend(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if header == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let target = line.split(' ').nth(1).unwrap_or("/");
            let path = normalize(target.split('?').next().unwrap_or("/"));
            let body = if path.starts_with("/partner/") {
                SECRET
            } else {
                "public"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

/// A lax server's idea of a path (see [`backend`]).
fn normalize(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'\\', _, _) => {
                decoded.push(b'/');
                i += 1;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// One request: (status, body); `None` when the connection fails.
fn get(addr: &str, target: &str, key: Option<&str>) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let key = key
        .map(|k| format!("x-api-key: {k}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {target} HTTP/1.1\r\nhost: partner.example\r\n{key}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[test]
fn no_spelling_of_a_protected_path_passes_gateway_or_waypoint_policy() {
    // The backend's idea of the variants: each is the protected path to
    // it, or harmlessly something else.
    assert_eq!(normalize("/x/..%2Fpartner/x"), "/partner/x");
    assert_eq!(normalize("/partner%5Cx"), "/partner/x");
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("mkdir");
    std::fs::write(config.join("mesh.yaml"), CONFIG).expect("config");
    let listener = TcpListener::bind(BACKEND).expect("backend address");
    std::thread::spawn(move || backend(listener));

    let _up = Up::start(&config, &[]);
    // Readiness: the public path answers through both proxies.
    for addr in [GATEWAY, VIA_WAYPOINT] {
        let started = Instant::now();
        while get(addr, "/", None).is_none_or(|(s, b)| s != 200 || b != "public") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{addr} not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (addr, proxy) in [(GATEWAY, "gateway"), (VIA_WAYPOINT, "waypoint")] {
        for variant in VARIANTS {
            let answer = get(addr, variant, None);
            assert!(
                answer.as_ref().is_none_or(|(_, body)| body != SECRET),
                "{proxy}: {variant:?} reached the secret without the key: {answer:?}"
            );
        }
        for variant in VARIANTS {
            let answer = get(addr, variant, Some("wrong-key"));
            assert!(
                answer.as_ref().is_none_or(|(_, body)| body != SECRET),
                "{proxy}: {variant:?} reached the secret with a wrong key: {answer:?}"
            );
        }
        let with_key = get(addr, "/partner/x", Some("demo-key"));
        assert_eq!(
            with_key,
            Some((200, SECRET.to_owned())),
            "{proxy}: the key opens the protected path"
        );
        let normalized = get(addr, "//partner/%2e/x", Some("demo-key"));
        assert_eq!(
            normalized,
            Some((200, SECRET.to_owned())),
            "{proxy}: a variant is served normalized with the key"
        );
    }
}
