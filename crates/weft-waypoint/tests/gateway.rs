//! Scenario 6, untrusted ingress, end to end in one process: control
//! plane, a node proxy, the sample app as the backend, and `weft gateway`
//! configured by a Gateway API `Gateway` (HTTP and HTTPS listeners, a
//! certificate chosen by SNI, optional client certificates) and an
//! `HTTPRoute`, with credentials checked at call time:
//!
//! - JWT (`RequestAuthentication` on the Gateway) for `/api/*`;
//! - API key (built-in CUSTOM provider, keys hashed in a Secret) for
//!   `/partner/*`;
//! - client certificate (principal from its SAN) for `/b2b/*`;
//! - an external authorizer (Envoy ext_authz gRPC, written here) for
//!   `/ext/*`, whose added header reaches the backend; an unreachable one
//!   fails closed (`/closed/*`) or open (`/open/*`) as configured.
//!
//! Then hostile input: an unknown SNI, a header bomb, an oversized token —
//! each refused while other clients keep being served. Every key and
//! certificate is made here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::setup::WaypointOptions;
use weft_waypoint::policy::extauthz::proto;

const GATEWAY_IP: &str = "127.0.1.200";
const HTTP_PORT: u16 = 18080;
const HTTPS_PORT: u16 = 18443;

/// A CA and what it signs.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca");
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS SANs): (chain PEM, key PEM, chain DER, key DER).
    fn leaf(
        &self,
        names: &[&str],
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let key = KeyPair::generate().expect("key");
        let cert =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params")
                .signed_by(&key, &self.issuer)
                .expect("leaf");
        (
            cert.pem(),
            key.serialize_pem(),
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
    }
}

/// The external authorizer: allows requests carrying `x-ext-token: good`
/// (adding `x-ext-user: alice` upstream), denies others with 403 and a
/// body of its own.
#[derive(Default)]
struct ExtAuthz;

#[tonic::async_trait]
impl proto::authorization_server::Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<proto::CheckRequest>,
    ) -> Result<tonic::Response<proto::CheckResponse>, tonic::Status> {
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let header = |key: &str, value: &str| proto::HeaderValueOption {
            header: Some(proto::HeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: Vec::new(),
            }),
            append: None,
            append_action: 0,
        };
        let response = if http.headers.get("x-ext-token").map(String::as_str) == Some("good")
            && http.path.starts_with("/ext/")
        {
            proto::CheckResponse {
                status: Some(proto::Status {
                    code: 0,
                    message: String::new(),
                }),
                http_response: Some(proto::check_response::HttpResponse::OkResponse(
                    proto::OkHttpResponse {
                        headers: vec![header("x-ext-user", "alice")],
                        headers_to_remove: vec!["x-ext-token".into()],
                        response_headers_to_add: Vec::new(),
                    },
                )),
            }
        } else {
            proto::CheckResponse {
                status: Some(proto::Status {
                    code: 7,
                    message: "permission denied".into(),
                }),
                http_response: Some(proto::check_response::HttpResponse::DeniedResponse(
                    proto::DeniedHttpResponse {
                        status: Some(proto::HttpStatus { code: 403 }),
                        headers: vec![header("x-ext-reason", "no-token")],
                        body: "ext says no".into(),
                    },
                )),
            }
        };
        Ok(tonic::Response::new(response))
    }
}

fn config(
    ext_addr: SocketAddr,
    closed_port: u16,
    server: &(String, String),
    client_ca: &str,
    jwks: &str,
    key_hash: &str,
) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: shop}}
spec:
  hosts: [backend.shop.svc.cluster.local]
  addresses: [240.240.9.1]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-1, namespace: shop}}
spec:
  address: 127.0.1.201
  labels: {{app: backend, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: edge, namespace: shop}}
spec:
  address: {GATEWAY_IP}
  serviceAccount: edge
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: v1
kind: Secret
metadata: {{name: edge-cert, namespace: shop}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}  tls.key: |
{key}---
apiVersion: v1
kind: Secret
metadata: {{name: partner-ca, namespace: shop}}
stringData:
  ca.crt: |
{ca}---
apiVersion: v1
kind: Secret
metadata: {{name: api-keys, namespace: shop}}
stringData:
  acme: sha256:{key_hash}
---
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec:
  extensionProviders:
  - name: ext-grpc
    envoyExtAuthzGrpc: {{service: {ext_ip}, port: {ext_port}, timeout: 2s}}
  - name: down-closed
    envoyExtAuthzGrpc: {{service: 127.0.0.1, port: {closed_port}, timeout: 500ms, statusOnError: "503"}}
  - name: down-open
    envoyExtAuthzGrpc: {{service: 127.0.0.1, port: {closed_port}, timeout: 500ms, failOpen: true}}
  - name: api-keys
    apiKey: {{secret: shop/api-keys}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners:
  - {{name: http, port: {HTTP_PORT}, protocol: HTTP}}
  - name: https
    port: {HTTPS_PORT}
    protocol: HTTPS
    hostname: "*.example.com"
    tls:
      certificateRefs: [{{name: edge-cert}}]
      frontendValidation: {{caCertificateRefs: [{{name: partner-ca}}]}}
      options: {{weft.dev/client-certificate: optional}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: edge-to-backend, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: edge}}]
  rules:
{rules}---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [edge]
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: CUSTOM
  provider: {{name: ext-grpc}}
  rules: [{{to: [{{operation: {{paths: ["/ext/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: partners, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: CUSTOM
  provider: {{name: api-keys}}
  rules: [{{to: [{{operation: {{paths: ["/partner/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: closed, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: CUSTOM
  provider: {{name: down-closed}}
  rules: [{{to: [{{operation: {{paths: ["/closed/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: open, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: CUSTOM
  provider: {{name: down-open}}
  rules: [{{to: [{{operation: {{paths: ["/open/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-allow, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: edge}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/ext/*", "/partner/*", "/closed/*", "/open/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["https://issuer.example/*"]}}}}]
    to: [{{operation: {{paths: ["/api/*"]}}}}]
  - from: [{{source: {{principals: ["acme.partners.example"]}}}}]
    to: [{{operation: {{paths: ["/b2b/*"]}}}}]
"#,
        rules = ["api", "partner", "b2b", "ext", "closed", "open"]
            .iter()
            .map(|p| format!(
                "  - matches: [{{path: {{type: PathPrefix, value: /{p}}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n    backendRefs: [{{name: backend}}]\n"
            ))
            .collect::<String>(),
        cert = indent(&server.0),
        key = indent(&server.1),
        ca = indent(client_ca),
        ext_ip = ext_addr.ip(),
        ext_port = ext_addr.port(),
    )
}

/// One request over HTTPS (`sni`, trusting `roots`, presenting `client`
/// when given): (status, body, headers) — or the handshake error.
async fn https(
    sni: &str,
    roots: &CertificateDer<'static>,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(u16, String), String> {
    let mut store = rustls::RootCertStore::empty();
    store.add(roots.clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(weft_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store);
    let mut tls = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect((GATEWAY_IP, HTTPS_PORT))
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(sni.to_owned()).expect("sni"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    request(TokioIo::new(stream), sni, path, headers).await
}

/// The certificate the HTTPS listener presents for `sni`.
async fn presented(
    sni: &str,
    roots: &CertificateDer<'static>,
) -> Result<CertificateDer<'static>, String> {
    let mut store = rustls::RootCertStore::empty();
    store.add(roots.clone()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(weft_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect((GATEWAY_IP, HTTPS_PORT))
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(sni.to_owned()).expect("sni"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_owned())
}

async fn plain(path: &str, headers: &[(&str, String)]) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect((GATEWAY_IP, HTTP_PORT))
        .await
        .map_err(|e| e.to_string())?;
    request(TokioIo::new(tcp), "edge.example.com", path, headers).await
}

async fn request<I>(
    io: TokioIo<I>,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(u16, String), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ingress_is_authenticated_and_authorized_at_call_time() {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    // Credentials.
    let public_ca = Ca::new("public CA");
    let server = public_ca.leaf(&["api.example.com", "*.example.com"]);
    let partner_ca = Ca::new("partner CA");
    let partner = partner_ca.leaf(&["acme.partners.example"]);
    let stranger = Ca::new("someone else").leaf(&["acme.partners.example"]);
    let jwt_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = jwt_key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let jwt = |aud: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let pem = EncodingKey::from_ec_pem(jwt_key.serialize_pem().as_bytes()).expect("pem");
        let claims = serde_json::json!({
            "iss": "https://issuer.example", "sub": "carol", "aud": aud, "exp": now + 600,
        });
        format!("Bearer {}", encode(&header, &claims, &pem).expect("sign"))
    };

    // The external authorizer, and a port with nothing behind it.
    let ext = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ext_addr = ext.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::authorization_server::AuthorizationServer::new(
                ExtAuthz,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(ext)),
    );
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();

    // The mesh.
    let yaml = config(
        ext_addr,
        closed_port,
        &(server.0.clone(), server.1.clone()),
        &partner_ca.cert.pem(),
        &jwks,
        &weft_waypoint::policy::extauthz::hash_key("k-123"),
    );
    let mesh = TestMesh::start(&yaml, 1).await;
    let rotate = |new: &(
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    )| {
        config(
            ext_addr,
            closed_port,
            &(new.0.clone(), new.1.clone()),
            &partner_ca.cert.pem(),
            &jwks,
            &weft_waypoint::policy::extauthz::hash_key("k-123"),
        )
    };
    app("127.0.1.201:8080", "backend").await;
    let gateway = weft_waypoint::fronts::gateway::start(WaypointOptions {
        wasm: Default::default(),
        name: "shop/edge".into(),
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        ca_addr: mesh.control.tls_addr.into(),
        roots: mesh.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: format!("{GATEWAY_IP}:0").parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: Default::default(),
    })
    .await
    .expect("gateway");
    assert_eq!(gateway.listening().len(), 2, "{gateway:?}");

    let ca = public_ca.cert.der().clone();
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let ca = ca.clone();
        async move {
            https("api.example.com", &ca, None, path, &headers)
                .await
                .expect("request")
        }
    };
    // Readiness: a JWT request reaches the backend.
    let started = Instant::now();
    loop {
        let last = get("/api/", vec![("authorization", jwt("edge"))]).await;
        if last.0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gateway never served: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No credential: denied by policy; a bad token: 401.
    assert_eq!(get("/api/", vec![]).await.0, 403, "no credential");
    assert_eq!(
        get("/api/", vec![("authorization", jwt("elsewhere"))])
            .await
            .0,
        401,
        "token for another audience"
    );
    assert_eq!(
        get("/api/", vec![("authorization", jwt("edge"))]).await.0,
        200,
        "JWT"
    );
    // The plain HTTP listener applies the same phases.
    assert_eq!(plain("/api/", &[]).await.expect("http").0, 403);
    assert_eq!(
        plain("/api/", &[("authorization", jwt("edge"))])
            .await
            .expect("http")
            .0,
        200
    );

    // API key.
    assert_eq!(get("/partner/", vec![]).await.0, 401, "no key");
    assert_eq!(
        get("/partner/", vec![("x-api-key", "k-999".into())])
            .await
            .0,
        401,
        "unknown key"
    );
    let (status, body) = get("/partner/headers", vec![("x-api-key", "k-123".into())]).await;
    assert_eq!(status, 200, "known key: {body}");
    assert!(body.contains("\"x-weft-api-client\":\"acme\""), "{body}");
    assert!(!body.contains("k-123"), "the key went upstream: {body}");

    // Client certificate.
    let b2b = |client| {
        let ca = ca.clone();
        async move { https("api.example.com", &ca, client, "/b2b/", &[]).await }
    };
    assert_eq!(
        b2b(Some((partner.2.clone(), partner.3.clone_key())))
            .await
            .expect("mTLS")
            .0,
        200,
        "partner certificate"
    );
    assert_eq!(b2b(None).await.expect("TLS").0, 403, "no certificate");
    let refused = match b2b(Some((stranger.2.clone(), stranger.3.clone_key()))).await {
        Err(e) => e,
        Ok((status, _)) => format!("status {status}"),
    };
    assert!(
        !refused.starts_with("status 200"),
        "a certificate from another CA must not pass: {refused}"
    );

    // External authorization: allow (its header reaches the backend),
    // deny (its status, header and body reach the client).
    let (status, body) = get("/ext/headers", vec![("x-ext-token", "good".into())]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"x-ext-user\":\"alice\""), "{body}");
    assert!(
        !body.contains("x-ext-token"),
        "removed by the authorizer: {body}"
    );
    let (status, body) = get("/ext/", vec![("x-ext-token", "bad".into())]).await;
    assert_eq!((status, body.trim()), (403, "ext says no"));
    // The authorizer down: fail closed (503 as configured) and fail open.
    assert_eq!(get("/closed/", vec![]).await.0, 503, "fail closed");
    assert_eq!(get("/open/", vec![]).await.0, 200, "fail open");

    // Hostile input.
    let unknown_sni = https("evil.test", &ca, None, "/api/", &[]).await;
    assert!(
        unknown_sni
            .as_ref()
            .is_err_and(|e| e.starts_with("handshake")),
        "unknown SNI: {unknown_sni:?}"
    );
    let mut bomb = TcpStream::connect((GATEWAY_IP, HTTP_PORT))
        .await
        .expect("connect");
    let huge = "a".repeat(100 * 1024);
    let _ = bomb
        .write_all(format!("GET /api/ HTTP/1.1\r\nhost: x\r\nx-bomb: {huge}\r\n\r\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), bomb.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a header bomb is refused: {answer:.80}"
    );
    let oversized = format!("Bearer {}.{}.x", "a".repeat(20_000), "b".repeat(10));
    assert_eq!(
        get("/api/", vec![("authorization", oversized)]).await.0,
        401,
        "oversized token"
    );
    assert_eq!(
        get("/api/", vec![("authorization", "Bearer not-a-jwt".into())])
            .await
            .0,
        401,
        "malformed token"
    );
    // Everyone else is still served.
    assert_eq!(
        get("/api/", vec![("authorization", jwt("edge"))]).await.0,
        200
    );
    let metrics = reqwest_metrics(gateway.metrics_addr).await;
    assert!(
        metrics
            .contains("weft_ext_authz_errors_total{provider=\"down-closed\",decision=\"denied\"}"),
        "{metrics}"
    );
    // The unknown SNI and the foreign client certificate were counted.
    assert!(
        metrics.contains(
            "weft_gateway_connections_refused_total{listener=\"gateway/https\",reason=\"tls_handshake\"}"
        ),
        "{metrics}"
    );

    // The certificate rotates: the listener serves the new one without
    // being rebound; a certificate that does not load leaves the last
    // good one in force.
    assert_eq!(
        presented("api.example.com", &ca).await,
        Ok(server.2.clone())
    );
    let rotated = public_ca.leaf(&["api.example.com", "*.example.com"]);
    std::fs::write(mesh.config_file(), rotate(&rotated)).expect("rewrite");
    let started = Instant::now();
    while presented("api.example.com", &ca).await != Ok(rotated.2.clone()) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let broken = (
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n".to_owned(),
        rotated.1.clone(),
        rotated.2.clone(),
        rotated.3.clone_key(),
    );
    std::fs::write(mesh.config_file(), rotate(&broken)).expect("rewrite");
    // Give the change time to arrive (the control plane's status says when).
    let status = mesh.control.config.status();
    let started = Instant::now();
    while mesh.control.config.status().version == status.version {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the change was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            presented("api.example.com", &ca).await,
            Ok(rotated.2.clone()),
            "the last good certificate stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway.listening().len(), 2, "both listeners still up");
    gateway.stop();
    mesh.stop().await;
}

/// The gateway's Prometheus text.
async fn reqwest_metrics(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.expect("metrics");
    request(TokioIo::new(tcp), "metrics", "/metrics", &[])
        .await
        .expect("metrics")
        .1
}

/// A listener holds at most its connection limit open: when full, a new
/// connection takes the place of the newest idle one (shed, counted); when
/// none is idle, the new one is closed at accept, logged and counted; once
/// the busy ones finish, new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_holds_at_most_its_connection_limit() {
    const IP: &str = "127.0.1.220";
    const PORT: u16 = 18090;
    const LIMIT: usize = 4;
    let route = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: small-to-plain, namespace: shop}
spec:
  parentRefs: [{kind: Gateway, name: small}]
  rules: [{backendRefs: [{name: plain, port: 80}]}]
";
    let backend = HoldingBackend::start("127.0.1.221:8080").await;
    let (mesh, gateway) = small_gateway(IP, &http(PORT), "127.0.1.221", "HTTP", route, LIMIT).await;

    // A kept-alive connection that has been served once, or why not.
    let open = || async {
        let tcp = TcpStream::connect((IP, PORT))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let status = send(&mut sender).await?;
        if status == 200 {
            Ok(sender)
        } else {
            Err(format!("status {status}"))
        }
    };
    // LIMIT connections, each served (retried while the readiness checks'
    // own connections are still being closed by the gateway).
    let mut held = Vec::new();
    let started = Instant::now();
    while held.len() < LIMIT {
        match open().await {
            Ok(sender) => held.push(sender),
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "connection {} never served: {e}",
                held.len() + 1
            ),
        }
    }
    // Full, with every connection idle: a new one is served, and the
    // newest idle one is shed for it (closed by the gateway).
    let newcomer = open()
        .await
        .expect("a new connection is served by shedding an idle one");
    let mut newest = held.pop().expect("held");
    assert!(
        send(&mut newest).await.is_err(),
        "the newest idle connection was not shed"
    );
    held.push(newcomer);
    let metrics = reqwest_metrics(gateway.metrics_addr).await;
    let shed = metrics
        .lines()
        .find(|l| {
            l.starts_with("weft_gateway_connections_closed_total{")
                && l.contains("reason=\"overload_shed\"")
                && l.contains("listener=\"gateway/http\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(shed.is_some_and(|n| n >= 1.0), "{metrics}");
    // Full, with a request in flight on every connection: nothing can be
    // shed, so one more is closed without an answer.
    let mut busy = Vec::new();
    for mut sender in held.drain(..) {
        busy.push(tokio::spawn(
            async move { send_to(&mut sender, "/hold").await },
        ));
    }
    // Every one of them has reached the backend, so the gateway counts
    // each connection busy.
    backend.wait_for_held(LIMIT).await;
    match open().await {
        Ok(_) => panic!("a connection over the limit was served while none was idle"),
        Err(e) => assert!(!e.starts_with("status"), "answered instead of closed: {e}"),
    }
    let metrics = reqwest_metrics(gateway.metrics_addr).await;
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("weft_gateway_connections_refused_total{")
                && l.contains("reason=\"limit\"")
                && l.contains("listener=\"gateway/http\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "{metrics}");
    // The busy ones are answered; once they are done, new connections are
    // served again.
    backend.release();
    for b in busy {
        assert_eq!(b.await.expect("task"), Ok(200));
    }
    let started = Instant::now();
    let fresh = loop {
        match open().await {
            Ok(sender) => break sender,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "no connection served after the busy ones finished: {e}"
            ),
        }
    };
    drop(fresh);
    gateway.stop();
    mesh.stop().await;
}

/// An HTTP/1.1 backend that answers 200 at once, except `/hold`, which it
/// answers only once released; it counts the `/hold` requests that arrived,
/// so a test can wait until they are all in flight instead of sleeping.
struct HoldingBackend {
    held: tokio::sync::watch::Receiver<usize>,
    released: tokio::sync::watch::Sender<bool>,
}

impl HoldingBackend {
    async fn start(addr: &str) -> HoldingBackend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let (count, held) = tokio::sync::watch::channel(0usize);
        let (released, gate) = tokio::sync::watch::channel(false);
        let count = Arc::new(count);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (count, gate) = (count.clone(), gate.clone());
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (count, mut gate) = (count.clone(), gate.clone());
                        async move {
                            if req.uri().path() == "/hold" {
                                count.send_modify(|n| *n += 1);
                                // An error only means the test is over.
                                let _ = gate.wait_for(|open| *open).await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        HoldingBackend { held, released }
    }

    /// Waits (at most 15 s) until `n` `/hold` requests have arrived.
    async fn wait_for_held(&self, n: usize) {
        let mut held = self.held.clone();
        tokio::time::timeout(Duration::from_secs(15), held.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} held requests never reached the backend"))
            .expect("backend running");
    }

    /// Answers every held request, and every later `/hold` at once.
    fn release(&self) {
        self.released.send_replace(true);
    }
}

/// Sends `GET /` on an open HTTP/1.1 connection; the status, or why not.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> Result<u16, String> {
    send_to(sender, "/").await
}

/// Sends `GET path` on an open HTTP/1.1 connection; the status, or why not.
async fn send_to(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<u16, String> {
    let response = sender
        .send_request(
            http::Request::get(path)
                .header("host", "small.example.com")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// A Gateway listener `http` on `port`, as YAML.
fn http(port: u16) -> String {
    format!("{{name: http, port: {port}, protocol: HTTP}}")
}

/// A mesh with one service `plain` (port 80, `protocol`, one endpoint at
/// `backend_ip`:8080, which the caller starts) and a gateway `shop/small`
/// on `ip` with one `listener` (YAML), plus `routes` (YAML).
async fn small_gateway(
    ip: &str,
    listener: &str,
    backend_ip: &str,
    protocol: &str,
    routes: &str,
    limit: usize,
) -> (TestMesh, weft_waypoint::fronts::gateway::Gateway) {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: shop}}
spec:
  hosts: [plain.shop.svc.cluster.local]
  addresses: [240.240.9.2]
  location: MESH_INTERNAL
  ports: [{{name: web, number: 80, protocol: {protocol}, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: plain}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: plain-1, namespace: shop}}
spec:
  address: {backend_ip}
  labels: {{app: plain, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: small, namespace: shop}}
spec:
  address: {ip}
  serviceAccount: small
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: small, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners: [{listener}]
---
{routes}"#
    );
    let mesh = TestMesh::start(&yaml, 1).await;
    let gateway = weft_waypoint::fronts::gateway::start(WaypointOptions {
        wasm: Default::default(),
        name: "shop/small".into(),
        node: "node-1".into(),
        trust_domain: "cluster.local".into(),
        ca_addr: mesh.control.tls_addr.into(),
        roots: mesh.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: format!("{ip}:0").parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: weft_waypoint::fronts::admission::ConnLimits {
            max_connections: limit,
            ..Default::default()
        },
    })
    .await
    .expect("gateway");
    (mesh, gateway)
}

/// A `GRPCRoute` attached to a Gateway: a real gRPC client (tonic, HTTP/2
/// without TLS) calls a real gRPC server through the gateway, routed by
/// service, method and host name; status and trailers come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_at_a_gateway_match_service_method_and_host() {
    const IP: &str = "127.0.1.230";
    const PORT: u16 = 18091;
    let route = "
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: check, namespace: shop}
spec:
  parentRefs: [{kind: Gateway, name: small, sectionName: http}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{method: {service: envoy.service.auth.v3.Authorization, method: Check}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: check}]}
    backendRefs: [{name: plain, port: 80}]
";
    // The backend: a gRPC service (the ext_authz one this file already has).
    let backend = TcpListener::bind("127.0.1.231:8080").await.expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::authorization_server::AuthorizationServer::new(
                ExtAuthz,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(backend)),
    );
    let (mesh, gateway) = small_gateway(
        IP,
        &http(PORT),
        "127.0.1.231",
        "GRPC",
        route,
        weft_waypoint::fronts::gateway::MAX_CONNECTIONS,
    )
    .await;
    let client = |host: &'static str| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{IP}:{PORT}"))
            .expect("endpoint")
            .origin(format!("http://{host}").parse().expect("origin"))
            .connect()
            .await
            .expect("connect");
        proto::authorization_client::AuthorizationClient::new(channel)
    };
    let check = |token: &str| proto::CheckRequest {
        attributes: Some(proto::AttributeContext {
            request: Some(proto::attribute_context::Request {
                http: Some(proto::attribute_context::HttpRequest {
                    path: "/ext/orders".into(),
                    headers: [("x-ext-token".to_owned(), token.to_owned())].into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let mut routed = client("grpc.example.com").await;
    let started = Instant::now();
    let response = loop {
        match routed.check(check("good")).await {
            Ok(r) => break r,
            Err(status) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "the gRPC route never answered: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        response
            .metadata()
            .get("x-route")
            .and_then(|v| v.to_str().ok()),
        Some("check"),
        "the route's filter applied"
    );
    let answer = response.into_inner();
    assert_eq!(
        answer.status.map(|s| s.code),
        Some(0),
        "the server's answer"
    );
    // The server's own answer for another input comes back too.
    let denied = routed.check(check("bad")).await.expect("a second call");
    assert_eq!(denied.into_inner().status.map(|s| s.code), Some(7));
    // Another host name has no route: the gateway answers as gRPC does,
    // UNIMPLEMENTED with its reason.
    let mut elsewhere = client("web.example.com").await;
    let refused = elsewhere.check(check("good")).await.map(|_| ());
    assert_eq!(
        refused.map_err(|s| (s.code(), s.message().to_owned())),
        Err((
            tonic::Code::Unimplemented,
            "no route matches /envoy.service.auth.v3.Authorization/Check".to_owned()
        ))
    );
    gateway.stop();
    mesh.stop().await;
}

/// A rate limit service speaking Envoy's RLS v3 API, written for the test:
/// two requests per descriptor, then OVER_LIMIT; it keeps what it was asked.
#[derive(Default)]
struct Rls {
    counts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    seen: std::sync::Mutex<Vec<weft_waypoint::policy::ratelimit::rls::RateLimitRequest>>,
}

/// The service as tonic serves it (the test keeps the `Rls` to look at).
struct RlsServer(Arc<Rls>);

#[tonic::async_trait]
impl weft_waypoint::policy::ratelimit::rls::rate_limit_service_server::RateLimitService
    for RlsServer
{
    async fn should_rate_limit(
        &self,
        request: tonic::Request<weft_waypoint::policy::ratelimit::rls::RateLimitRequest>,
    ) -> Result<
        tonic::Response<weft_waypoint::policy::ratelimit::rls::RateLimitResponse>,
        tonic::Status,
    > {
        use weft_waypoint::policy::ratelimit::rls::rate_limit_response::{
            Code, DescriptorStatus, RateLimit, rate_limit::Unit,
        };
        let request = request.into_inner();
        let key = format!("{:?}", request.descriptors);
        let used = {
            let mut counts = self.0.counts.lock().expect("counts");
            let n = counts.entry(key).or_default();
            *n += 1;
            *n
        };
        self.0.seen.lock().expect("seen").push(request);
        let code = if used > 2 { Code::OverLimit } else { Code::Ok };
        Ok(tonic::Response::new(
            weft_waypoint::policy::ratelimit::rls::RateLimitResponse {
                overall_code: code as i32,
                statuses: vec![DescriptorStatus {
                    code: code as i32,
                    current_limit: Some(RateLimit {
                        requests_per_unit: 2,
                        unit: Unit::Minute as i32,
                        name: "two a minute".into(),
                    }),
                    limit_remaining: 2u32.saturating_sub(used),
                    duration_until_reset: Some(weft_waypoint::policy::ratelimit::rls::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                }],
                response_headers_to_add: Vec::new(),
            },
        ))
    }
}

/// A `RateLimitPolicy` that asks an external rate limit service (Envoy's
/// RLS API, as lyft/ratelimit speaks it): the gateway sends the rule's
/// descriptor under the policy's domain, refuses what the service says is
/// over the limit (429 with its limit and reset), and when the service is
/// gone applies the failure mode (closed: refused, counted as a store
/// error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_service_decides_through_envoys_api() {
    const IP: &str = "127.0.1.240";
    const PORT: u16 = 18092;
    let rls = Arc::new(Rls::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rls_addr = listener.local_addr().expect("addr");
    let (stop_rls, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                weft_waypoint::policy::ratelimit::rls::rate_limit_service_server::RateLimitServiceServer::new(
                    RlsServer(rls.clone()),
                ),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let routes = format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: small-to-plain, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: small}}]
  rules: [{{backendRefs: [{{name: plain, port: 80}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-user, namespace: shop}}
spec:
  targetRef: {{kind: Gateway, name: small}}
  mode: global
  failureMode: closed
  rateLimitService: {{address: '{rls_addr}', domain: edge, timeout: 1s}}
  rules: [{{name: per-user, countBy: ['header:x-user']}}]
"
    );
    app("127.0.1.241:8080", "plain").await;
    let (mesh, gateway) = small_gateway(
        IP,
        &http(PORT),
        "127.0.1.241",
        "HTTP",
        &routes,
        weft_waypoint::fronts::gateway::MAX_CONNECTIONS,
    )
    .await;
    let get = |user: &'static str| async move {
        let tcp = TcpStream::connect((IP, PORT))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let response = sender
            .send_request(
                http::Request::get("/headers")
                    .header("host", "small.example.com")
                    .header("x-user", user)
                    .body(Empty::<Bytes>::new())
                    .expect("request"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        Ok::<_, String>((
            response.status().as_u16(),
            header("x-ratelimit-limit"),
            header("x-ratelimit-remaining"),
            header("retry-after"),
        ))
    };
    // Ready once the service has been asked (a user of its own).
    let started = Instant::now();
    while rls.seen.lock().expect("seen").is_empty() {
        let _ = get("probe").await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rate limit service was never asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two for alice, then the service says no; bob has his own count.
    assert_eq!(get("alice").await.map(|r| r.0), Ok(200));
    assert_eq!(get("alice").await.map(|r| r.0), Ok(200));
    assert_eq!(
        get("alice").await,
        Ok((429, "2".into(), "0".into(), "30".into())),
        "over the service's limit: its limit and reset"
    );
    assert_eq!(get("bob").await.map(|r| r.0), Ok(200));
    {
        let seen = rls.seen.lock().expect("seen");
        let last = seen.last().expect("a request");
        assert_eq!(last.domain, "edge");
        assert_eq!(last.hits_addend, 1);
        let entries: Vec<(&str, &str)> = last.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(entries, [("rule", "per-user"), ("header:x-user", "bob")]);
    }
    // The service goes away: failure mode closed refuses, counted.
    let _ = stop_rls.send(());
    let started = Instant::now();
    loop {
        let status = get("carol").await.map(|r| r.0);
        if status == Ok(429) {
            break;
        }
        assert_eq!(status, Ok(200), "only allowed until the service is gone");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failure mode never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest_metrics(gateway.metrics_addr).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_ratelimit_decisions_total{")
                && l.contains("decision=\"limited\"")
                && l.contains("store=\"error\"")),
        "{metrics}"
    );
    gateway.stop();
    mesh.stop().await;
}

/// TLS passthrough: a `TLSRoute` on a `protocol: TLS` listener sends a
/// client's TLS session, chosen by SNI, unopened to a backend that holds
/// the only key; the client sees the backend's certificate and talks to
/// it through gateway, HBONE and node. An unknown SNI and a client that
/// does not speak TLS are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_reaches_the_backend_by_sni() {
    const IP: &str = "127.0.1.250";
    const PORT: u16 = 18093;
    let ca = Ca::new("backend CA");
    let leaf = ca.leaf(&["vault.example.com"]);
    // The backend: a TLS echo server with its own certificate.
    let backend = TcpListener::bind("127.0.1.251:8080").await.expect("bind");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.2.clone()], leaf.3.clone_key())
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = backend.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let route = "
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: vault, namespace: shop}
spec:
  parentRefs: [{kind: Gateway, name: small, sectionName: tls}]
  hostnames: [vault.example.com]
  rules: [{backendRefs: [{name: plain, port: 80}]}]
";
    let (mesh, gateway) = small_gateway(
        IP,
        &format!("{{name: tls, port: {PORT}, protocol: TLS, tls: {{mode: Passthrough}}}}"),
        "127.0.1.251",
        "TCP",
        route,
        weft_waypoint::fronts::gateway::MAX_CONNECTIONS,
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connect = |sni: &'static str| {
        let client = client.clone();
        async move {
            let tcp = TcpStream::connect((IP, PORT))
                .await
                .map_err(|e| e.to_string())?;
            tokio_rustls::TlsConnector::from(client)
                .connect(ServerName::try_from(sni).expect("name"), tcp)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let started = Instant::now();
    let mut tls = loop {
        match connect("vault.example.com").await {
            Ok(t) => break t,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "never reached the backend: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The session is the backend's: its certificate, its echo.
    let presented = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
    assert_eq!(presented, Some(leaf.2.clone()));
    tls.write_all(b"through the gateway").await.expect("write");
    let mut echoed = [0u8; 19];
    tls.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"through the gateway");
    // An SNI no route names, and a client that is not TLS: closed.
    assert!(connect("other.example.com").await.is_err(), "unknown SNI");
    let mut plain = TcpStream::connect((IP, PORT)).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: vault.example.com\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing answers a non-TLS client");
    let metrics = reqwest_metrics(gateway.metrics_addr).await;
    for reason in ["no_route", "tls_handshake"] {
        assert!(
            metrics.contains(&format!(
                "weft_gateway_connections_refused_total{{listener=\"gateway/tls\",reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    // The first session still works.
    tls.write_all(b"again").await.expect("write");
    let mut again = [0u8; 5];
    tls.read_exact(&mut again).await.expect("echo");
    assert_eq!(&again, b"again");
    gateway.stop();
    mesh.stop().await;
}

/// TCP passthrough: a `TCPRoute` on a `protocol: TCP` listener carries a
/// plain TCP connection, bytes unchanged and both ways, over HBONE to the
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_carry_plain_connections() {
    const IP: &str = "127.0.1.252";
    const PORT: u16 = 18094;
    let backend = TcpListener::bind("127.0.1.253:8080").await.expect("bind");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let route = "
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: shop}
spec:
  parentRefs: [{kind: Gateway, name: small}]
  rules: [{backendRefs: [{name: plain, port: 80}]}]
";
    let (mesh, gateway) = small_gateway(
        IP,
        &format!("{{name: raw, port: {PORT}, protocol: TCP}}"),
        "127.0.1.253",
        "TCP",
        route,
        weft_waypoint::fronts::gateway::MAX_CONNECTIONS,
    )
    .await;
    // Readiness: an echo comes back through the gateway.
    let echo = |message: &'static [u8]| async move {
        let mut tcp = TcpStream::connect((IP, PORT))
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(message).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; message.len()];
        tcp.read_exact(&mut back).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((tcp, back))
    };
    let started = Instant::now();
    let (mut tcp, back) = loop {
        match echo(b"hello").await {
            Ok(done) => break done,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "never echoed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back, b"hello");
    // Bulk both ways on the same connection, and a half close.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tcp.split();
    let sent = data.clone();
    let writer = async move {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut got = Vec::new();
    let reader = r.read_to_end(&mut got);
    let ((), read) = tokio::join!(writer, reader);
    read.expect("read");
    assert!(
        got == data,
        "{} bytes back, intact: {}",
        got.len(),
        got == data
    );
    gateway.stop();
    mesh.stop().await;
}
