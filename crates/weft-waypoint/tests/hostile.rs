//! Hostile requests at an ingress gateway, each an attack that worked
//! before weft normalized requests first (issue 15):
//!
//! - a DENY on `hosts` dodged by case, a trailing dot, the default port, or
//!   an HTTP/2 `:authority` without `Host` (finding 4); `Host` and
//!   `:authority` that disagree are refused with 400;
//! - a DENY on `/partner/status/*` dodged by `/partner//status/200`, which
//!   the prefix rewrite turned into `/status/200` (finding 5);
//! - headers weft sets itself (API-key client, client certificate, a JWT
//!   claim header) supplied by the client and passed on (finding 11);
//! - hop-by-hop headers forwarded upstream (finding 17);
//!
//! and what held in the review, kept holding: request smuggling with both
//! Content-Length and chunked framing, a 50 MB body streamed intact.
//!
//! Real processes' parts in one process: control plane, node proxy,
//! gateway, the sample app as the backend (whose `/headers` shows what
//! reached it).

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::setup::WaypointOptions;

const IP: &str = "127.0.1.240";
const PORT: u16 = 18095;
const BACKEND: &str = "127.0.1.241";

fn config(jwks: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: shop}}
spec:
  hosts: [backend.shop.svc.cluster.local]
  addresses: [240.240.9.40]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-1, namespace: shop}}
spec:
  address: {BACKEND}
  labels: {{app: backend, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: edge, namespace: shop}}
spec:
  address: {IP}
  serviceAccount: edge
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners: [{{name: http, port: {PORT}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: edge-to-backend, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /partner}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: backend, port: 80}}]
  - backendRefs: [{{name: backend, port: 80}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-tier, claim: tier}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-partner-host, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: DENY
  rules: [{{to: [{{operation: {{hosts: [partner.example]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-partner-status, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/partner/status/*"]}}}}]}}]
"#
    )
}

/// A raw HTTP/1.1 request (`head` without the final blank line): the
/// status and the body.
async fn raw(head: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect((IP, PORT)).await.expect("connect");
    tcp.write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// An HTTP/2 (prior knowledge) GET of `uri`, with no `host` header: the
/// status.
async fn h2(uri: &str) -> u16 {
    let tcp = TcpStream::connect((IP, PORT)).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("request");
    assert!(request.headers().get("host").is_none());
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_normalized_before_policy() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let raw_key = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
        "x": b64(&raw_key[1..33]), "y": b64(&raw_key[33..65]),
    }]})
    .to_string();
    app(&format!("{BACKEND}:8080"), "backend").await;
    let mesh = TestMesh::start(&config(&jwks), 1).await;
    let gateway = weft_waypoint::fronts::gateway::start(WaypointOptions {
        wasm: Default::default(),
        name: "shop/edge".into(),
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        ca_addr: mesh.control.tls_addr.into(),
        roots: mesh.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: format!("{IP}:0").parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: Default::default(),
    })
    .await
    .expect("gateway");

    // Ready: an ordinary request reaches the backend.
    let started = Instant::now();
    loop {
        let (status, _) = raw("GET /headers HTTP/1.1\r\nhost: shop.example").await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway not serving: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Finding 4: every spelling of the denied host is denied.
    for host in [
        "partner.example",
        "PARTNER.example",
        "Partner.Example.",
        "partner.example:80",
        "partner.example.:80",
    ] {
        let (status, body) = raw(&format!("GET /headers HTTP/1.1\r\nhost: {host}")).await;
        assert_eq!(status, 403, "Host: {host} must be denied: {body}");
    }
    // HTTP/2 with :authority only, in any case.
    assert_eq!(h2("http://PARTNER.example/headers").await, 403);
    assert_eq!(h2("http://partner.example./headers").await, 403);
    assert_eq!(h2("http://shop.example/headers").await, 200);
    // Absolute-form target and Host that disagree: refused as malformed.
    let (status, _) =
        raw("GET http://shop.example/headers HTTP/1.1\r\nhost: partner.example").await;
    assert_eq!(status, 400);
    let (status, _) = raw("GET /headers HTTP/1.1\r\nhost: a.example\r\nhost: b.example").await;
    assert_eq!(status, 400, "two Host headers");

    // Finding 5: the DENY holds, and the rewrite keeps the extra slash, so
    // the backend is not asked for /status/200.
    let (status, _) = raw("GET /partner/status/200 HTTP/1.1\r\nhost: shop.example").await;
    assert_eq!(status, 403);
    let (status, body) = raw("GET /partner//status/200 HTTP/1.1\r\nhost: shop.example").await;
    assert_ne!(
        status, 200,
        "/partner//status/200 reached /status/200: {body}"
    );
    let (status, _) = raw("GET /partner/status/200x HTTP/1.1\r\nhost: shop.example").await;
    assert_eq!(status, 403, "the rewrite does not matter to the DENY");

    // Findings 11 and 17: weft's own headers and hop-by-hop headers sent
    // by the client never reach the backend; others do.
    let (status, body) = raw(concat!(
        "GET /headers HTTP/1.1\r\nhost: shop.example\r\n",
        "x-weft-api-client: admin\r\n",
        "x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/admin\r\n",
        "x-jwt-claims: e30\r\n",
        "x-tier: platinum\r\n",
        "keep-alive: timeout=5\r\n",
        "proxy-connection: keep-alive\r\n",
        "x-hop-secret: 1\r\n",
        "connection: x-hop-secret\r\n",
        "te: gzip\r\n",
        "upgrade: h2c\r\n",
        "x-kept: yes",
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("backend's JSON");
    let seen = json["headers"].as_object().expect("headers");
    for name in [
        "x-weft-api-client",
        "x-forwarded-client-cert",
        "x-jwt-claims",
        "x-tier",
        "keep-alive",
        "proxy-connection",
        "x-hop-secret",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the backend: {body}"
        );
    }
    assert_eq!(seen["x-kept"], "yes", "{body}");
    assert_eq!(seen["host"], "shop.example", "{body}");

    // Held in the review, kept by this test: request smuggling. A head with
    // both Content-Length and chunked framing, whose chunked body ends
    // early and hides a second request for a denied path: whichever way
    // the gateway frames it, the hidden request is either not a request
    // or one the gateway itself sees, and denies.
    let mut tcp = TcpStream::connect((IP, PORT)).await.expect("connect");
    let hidden =
        "GET /partner/status/200 HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n";
    let smuggle = format!(
        "POST /echo HTTP/1.1\r\nhost: shop.example\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
        5 + hidden.len()
    );
    tcp.write_all(smuggle.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert!(!statuses.is_empty(), "no answer: {out}");
    assert!(
        statuses.iter().skip(1).all(|s| *s == "403" || *s == "400"),
        "the hidden request was served: {statuses:?} {out}"
    );

    // Held: a 50 MB body streams through to the backend and back intact.
    let tcp = TcpStream::connect((IP, PORT)).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let big = Bytes::from(vec![b'z'; 50 * 1024 * 1024]);
    let response = sender
        .send_request(
            http::Request::post("/echo")
                .header("host", "shop.example")
                .body(http_body_util::Full::new(big.clone()))
                .expect("request"),
        )
        .await
        .expect("50 MB response");
    assert_eq!(response.status(), 200);
    let echoed = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "50 MB body changed on the way");

    gateway.stop();
    mesh.stop().await;
}
