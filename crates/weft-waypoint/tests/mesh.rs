//! A waypoint in a running mesh, in one process: control plane, two node
//! proxies, a waypoint and sample apps on loopback addresses. The caller
//! uses its explicit outbound listener; its node proxy sends the service's
//! traffic to the waypoint (the service names it with
//! `istio.io/use-waypoint`), which routes each request by the service's
//! `VirtualService` (subsets from its `DestinationRule`) and forwards it
//! over HBONE to an endpoint.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_sample_app::AppConfig;
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::setup::WaypointOptions;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: shop
  labels: {istio.io/use-waypoint: shop-waypoint}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [240.240.7.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9002=reviews.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.110
  serviceAccount: frontend
  locality: eu/a
  labels: {app: frontend, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop-waypoint, namespace: shop}
spec:
  address: 127.0.1.140
  serviceAccount: shop-waypoint
  locality: eu/a
  labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-a, namespace: shop}
spec:
  address: 127.0.1.112
  serviceAccount: reviews
  locality: eu/a
  labels: {app: reviews, zone: a, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-b, namespace: shop}
spec:
  address: 127.0.2.112
  serviceAccount: reviews
  locality: eu/b
  labels: {app: reviews, zone: b, weft.dev/node: node-2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: a, labels: {zone: a}}
  - {name: b, labels: {zone: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: reviews, subset: b}}]
    headers: {response: {set: {x-routed-by: canary}}}
  - name: stable
    route: [{destination: {host: reviews, subset: a}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
"#;

async fn get(addr: &str) -> Option<String> {
    get_with(addr, "").await
}

async fn get_with(addr: &str, headers: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    conn.write_all(
        format!("GET / HTTP/1.1\r\nhost: reviews\r\n{headers}connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// A control plane, two node proxies and a waypoint over `config`.
struct Mesh {
    inner: TestMesh,
    waypoint: weft_waypoint::fronts::waypoint::Waypoint,
}

impl Mesh {
    async fn start(config_yaml: &str, waypoint: &str, waypoint_ip: &str) -> Mesh {
        Mesh::start_with(config_yaml, waypoint, waypoint_ip, Vec::new()).await
    }

    /// As [`Mesh::start`], the waypoint trusting `jwks_roots` for JWKS.
    async fn start_with(
        config_yaml: &str,
        waypoint: &str,
        waypoint_ip: &str,
        jwks_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    ) -> Mesh {
        let inner = TestMesh::start(config_yaml, 2).await;
        let waypoint = weft_waypoint::fronts::waypoint::start(WaypointOptions {
            wasm: Default::default(),
            name: waypoint.into(),
            node: "node-1".into(),
            trust_domain: "cluster.local".into(),
            ca_addr: inner.control.tls_addr.into(),
            roots: inner.roots.clone(),
            token: weft_testkit::token(1).into(),
            metrics_addr: format!("{waypoint_ip}:0").parse().expect("addr"),
            connect_timeout: Duration::from_secs(1),
            jwks_roots,
            connections: Default::default(),
        })
        .await
        .expect("waypoint");
        Mesh { inner, waypoint }
    }

    fn stop(self) {
        self.waypoint.stop();
        for n in self.inner.nodes {
            n.stop();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_traffic_goes_through_its_waypoint() {
    let mesh = Mesh::start(CONFIG, "shop/shop-waypoint", "127.0.1.140").await;
    let waypoint = &mesh.waypoint;
    assert_eq!(waypoint.hbone_addr.to_string(), "127.0.1.140:15008");
    app("127.0.1.112:8080", "reviews-a").await;
    app("127.0.2.112:8080", "reviews-b").await;

    // frontend → its outbound listener → node-1 → waypoint → reviews.
    let started = Instant::now();
    let response = loop {
        if let Some(r) = get("127.0.1.110:9002").await
            && r.starts_with("HTTP/1.1 200")
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no answer through the waypoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The VirtualService's stable route: subset a.
    assert!(response.contains("x-weft-app: reviews-a"), "{response}");
    for _ in 0..10 {
        let r = get("127.0.1.110:9002").await.expect("response");
        assert!(r.contains("x-weft-app: reviews-a"), "{r}");
    }
    // Its canary route, by header: subset b, with the response header set.
    for _ in 0..10 {
        let r = get_with("127.0.1.110:9002", "x-canary: yes\r\n")
            .await
            .expect("response");
        assert!(r.contains("x-weft-app: reviews-b"), "{r}");
        assert!(r.contains("x-routed-by: canary"), "{r}");
    }
    // The waypoint saw and counted the requests as L7.
    let metrics = waypoint.metrics.encode();
    let counted = metrics.lines().any(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"waypoint\"")
            && l.contains("destination_service=\"reviews.shop.svc.cluster.local\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")
            && l.contains("response_code=\"200\"")
            && !l.ends_with(" 0")
    });
    assert!(counted, "{metrics}");
    // Both ends are named as Istio names them: the caller from its node's
    // baggage, the endpoint each try went to from the registry.
    for (source, destination) in [("frontend", "reviews-a"), ("frontend", "reviews-b")] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{")
                    && l.contains(&format!("source_workload=\"{source}\""))
                    && l.contains("source_canonical_service=\"frontend\"")
                    && l.contains(&format!("destination_workload=\"{destination}\""))
                    && l.contains("destination_canonical_service=\"reviews\"")
                    && l.contains("destination_workload_namespace=\"shop\"")),
            "{source} -> {destination}: {metrics}"
        );
    }
    mesh.stop();
}

/// Scenario 1 through node proxies and the waypoint, configured the way a
/// user writes it: `VirtualService` retries (3 attempts, 0.5 s per try,
/// 2 s overall, on 5xx) and a `DestinationRule` retry budget of 20 % plus
/// 1 retry per second. B fails half of its requests.
const SCENARIO_1: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: b
  namespace: shop
  labels: {istio.io/use-waypoint: b-waypoint}
spec:
  hosts: [b.shop.svc.cluster.local]
  addresses: [240.240.7.2]
  location: MESH_INTERNAL
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: a
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9003=b.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.210
  serviceAccount: a
  labels: {app: a, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b-waypoint, namespace: shop}
spec:
  address: 127.0.1.240
  serviceAccount: b-waypoint
  labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b-1, namespace: shop}
spec:
  address: 127.0.2.212
  serviceAccount: b
  labels: {app: b, weft.dev/node: node-2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: shop}
spec:
  hosts: [b]
  http:
  - route: [{destination: {host: b}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: b
  namespace: shop
  annotations:
    weft.dev/retry-budget-ratio: "0.2"
    weft.dev/retry-budget-min-per-second: "1"
spec:
  host: b
"#;

fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_retries_within_the_configured_budget_through_the_mesh() {
    let mesh = Mesh::start(SCENARIO_1, "shop/b-waypoint", "127.0.1.240").await;
    let listener = TcpListener::bind("127.0.2.212:8080").await.expect("bind b");
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        AppConfig {
            name: "b".into(),
            fail_ratio: 0.5,
            ..AppConfig::default()
        },
        std::future::pending(),
    ));
    // Readiness: a request gets an answer from B through the waypoint.
    let started = Instant::now();
    while !get("127.0.1.210:9003")
        .await
        .is_some_and(|r| r.contains("x-weft-app: b"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "mesh not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = mesh.waypoint.metrics.encode();
    let (retries_before, ok_before, all_before) = (
        counter(&before, "weft_upstream_retries_total", &[]),
        counter(&before, "istio_requests_total", &["response_code=\"200\""]),
        counter(&before, "istio_requests_total", &[]),
    );

    // 600 requests from A, 6 at a time, on kept-alive connections.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let n = 600usize;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = client
                    .get("http://127.0.1.210:9003/".parse().expect("uri"))
                    .await
                    .expect("an answer");
                ok += usize::from(r.status() == 200);
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
            }
            ok
        }));
    }
    let mut ok = 0;
    for w in workers {
        ok += w.await.expect("worker");
    }
    let after = mesh.waypoint.metrics.encode();
    let retries = counter(&after, "weft_upstream_retries_total", &[]) - retries_before;
    let served = counter(&after, "istio_requests_total", &[]) - all_before;
    let served_ok = counter(&after, "istio_requests_total", &["response_code=\"200\""]) - ok_before;
    assert_eq!(served as usize, n, "the waypoint saw every request");
    assert_eq!(
        served_ok as usize, ok,
        "the caller saw what the waypoint counted"
    );
    // The budget: 20 % of requests plus 1/s over the 10 s window (the
    // run is shorter than a window; allow one more window's floor).
    let cap = 0.2 * n as f64 + 20.0;
    assert!(
        retries as f64 <= cap,
        "{retries} retries for {n} requests (cap {cap})"
    );
    assert!(counter(&after, "weft_retry_budget_exhausted_total", &[]) > 0);
    // Success is what the budgeted retries buy: half the originals and
    // half the retries. Each attempt is a coin toss, so the bound is four
    // standard deviations of that sum (a false alarm about once in 15,000
    // runs), not a fixed margin.
    let rate = ok as f64 / n as f64;
    let expected = (0.5 * n as f64 + 0.5 * retries as f64) / n as f64;
    let tolerance = 4.0 * (0.25 * (n as f64 + retries as f64)).sqrt() / n as f64;
    assert!(
        (rate - expected).abs() < tolerance,
        "success {rate}, expected {expected} ± {tolerance}"
    );
    mesh.stop();
}

/// A port declared `GRPC`: the waypoint speaks HTTP/2 to the endpoint
/// whatever the caller spoke, and h2c callers (gRPC clients) work end to
/// end. Its routes come from a Gateway API `HTTPRoute`.
const HTTP2_PORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: grpc
  namespace: shop
  labels: {istio.io/use-waypoint: grpc-waypoint}
spec:
  hosts: [grpc.shop.svc.cluster.local]
  addresses: [240.240.7.3]
  location: MESH_INTERNAL
  ports: [{name: grpc, number: 50051, protocol: GRPC, targetPort: 8080}]
  workloadSelector: {labels: {app: grpc}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: grpc-client
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9004=grpc.shop.svc.cluster.local:50051"
spec:
  address: 127.0.1.151
  labels: {app: grpc-client, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: grpc-waypoint, namespace: shop}
spec:
  address: 127.0.1.150
  labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: grpc-1, namespace: shop}
spec:
  address: 127.0.2.152
  labels: {app: grpc, weft.dev/node: node-2}
---
# Gateway API for the mesh (GAMMA): a route whose parent is the service.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: grpc, port: 50051}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: gamma}]}
    backendRefs: [{name: grpc, port: 50051}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ports_are_spoken_to_in_http2() {
    let mesh = Mesh::start(HTTP2_PORT, "shop/grpc-waypoint", "127.0.1.150").await;
    app("127.0.2.152:8080", "grpc-1").await;
    // An HTTP/1.1 caller: the endpoint still receives HTTP/2.
    let started = Instant::now();
    let response = loop {
        if let Some(r) = get("127.0.1.151:9004").await
            && r.starts_with("HTTP/1.1 200")
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "mesh not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(response.contains("x-weft-protocol: HTTP/2"), "{response}");
    // The service's HTTPRoute applied.
    assert!(response.contains("x-route: gamma"), "{response}");
    // An h2c caller (as gRPC clients are) works through node and waypoint.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for _ in 0..5 {
        let r = client
            .get("http://127.0.1.151:9004/".parse().expect("uri"))
            .await
            .expect("h2c through the mesh");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(
            r.headers().get("x-weft-protocol").map(|v| v.as_bytes()),
            Some(&b"HTTP/2"[..])
        );
    }
    // The endpoint sees the service's host as `:authority` (finding 19 of
    // the security review: it used to see its own ip:port), and no
    // separate `Host` that could disagree with it.
    let mut conn = TcpStream::connect("127.0.1.151:9004")
        .await
        .expect("connect");
    conn.write_all(
        b"GET /headers HTTP/1.1\r\nhost: grpc.shop.svc.cluster.local:50051\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("send");
    let mut out = String::new();
    conn.read_to_string(&mut out).await.expect("read");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let body = if out
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk: size line, data, terminator.
        body.split("\r\n").nth(1).unwrap_or_default()
    } else {
        body
    };
    let seen: serde_json::Value = serde_json::from_str(body).expect(&out);
    assert_eq!(
        seen["headers"][":authority"], "grpc.shop.svc.cluster.local:50051",
        "{out}"
    );
    assert!(seen["headers"].get("host").is_none(), "{out}");
    assert!(!out.contains("127.0.2.152"), "{out}");
    mesh.stop();
}

/// Scenario 4's policy written as users write it, applied by the waypoint
/// per caller identity (local mode here; the global mode's Redis path is
/// tested in tests/ratelimit.rs).
const RATE_LIMITED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: limited
  namespace: shop
  labels: {istio.io/use-waypoint: rl-waypoint}
spec:
  hosts: [limited.shop.svc.cluster.local]
  addresses: [240.240.7.4]
  location: MESH_INTERNAL
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: limited}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: rl-client
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9005=limited.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.161
  serviceAccount: rl-client
  labels: {app: rl-client, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: rl-waypoint, namespace: shop}
spec:
  address: 127.0.1.160
  labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: limited-1, namespace: shop}
spec:
  address: 127.0.2.162
  labels: {app: limited, weft.dev/node: node-2}
---
apiVersion: weft.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: tiers, namespace: shop}
spec:
  targetRef: {kind: Service, name: limited}
  rules:
  - name: platinum
    match: [{header: {name: x-customer-tier, value: platinum}}]
    countBy: [sourcePrincipal]
    limit: {requests: 20, per: 1h}
  - name: default
    countBy: [sourcePrincipal]
    limit: {requests: 5, per: 1h}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_policy_applies_per_caller_in_the_waypoint() {
    let mesh = Mesh::start(RATE_LIMITED, "shop/rl-waypoint", "127.0.1.160").await;
    app("127.0.2.162:8080", "limited-1").await;
    let statuses = |headers: &'static str, n: usize| async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = get_with("127.0.1.161:9005", headers)
                .await
                .unwrap_or_default();
            out.push(r.get(9..12).unwrap_or("---").to_owned());
        }
        out
    };
    // Readiness: the first answer from the service (it counts: 1 of 5).
    let started = Instant::now();
    while !get("127.0.1.161:9005")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "mesh not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let default = statuses("", 10).await;
    assert_eq!(
        default.iter().filter(|s| *s == "200").count(),
        4,
        "{default:?}"
    );
    assert_eq!(
        default.iter().filter(|s| *s == "429").count(),
        6,
        "{default:?}"
    );
    let platinum = statuses("x-customer-tier: platinum\r\n", 25).await;
    assert_eq!(
        platinum.iter().filter(|s| *s == "200").count(),
        20,
        "{platinum:?}"
    );
    mesh.stop();
}

/// An issuer's JWKS endpoint over HTTPS: serves whatever `document`
/// holds, counting requests. Returns its URL and the CA to trust.
struct JwksServer {
    url: String,
    ca: rustls_pki_types::CertificateDer<'static>,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let tls = rustls::ServerConfig::builder_with_provider(weft_ca::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}/keys", listener.local_addr().expect("addr"));
        let document = Arc::new(std::sync::Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, count) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, served, count) = (acceptor.clone(), served.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().expect("lock").clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        JwksServer {
            url,
            ca: ca.der().clone(),
            document,
            fetches,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().expect("lock") = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Scenario 5 through node proxies and the waypoint: B accepts JWTs from
/// its issuer (`RequestAuthentication` whose keys the waypoint fetches
/// from the issuer's `jwksUri` over HTTPS) and requires one with
/// `tier: platinum` (`AuthorizationPolicy` attached to B). No token → 403
/// by policy; forged, expired, wrong audience → 401; valid without the
/// claim → 403; valid → 200. Then the issuer rotates its key: a token
/// with the new `kid` is accepted (fetched on the unknown kid), the
/// retired key's tokens are refused, and a stream of made-up key ids
/// causes at most one fetch per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_request_level_policy_through_the_mesh() {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let next_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let forger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let jwks = |key: &KeyPair, kid: &str| {
        let raw = key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string()
    };
    let issuer = JwksServer::start(jwks(&key, "k1")).await;
    let jwks_uri = issuer.url.clone();
    let config = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure
  namespace: shop
  labels: {{istio.io/use-waypoint: sec-waypoint}}
spec:
  hosts: [secure.shop.svc.cluster.local]
  addresses: [240.240.7.5]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: secure}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: sec-client
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9006=secure.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.171
  labels: {{app: sec-client, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sec-waypoint, namespace: shop}}
spec:
  address: 127.0.1.170
  labels: {{weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: secure-1, namespace: shop}}
spec:
  address: 127.0.2.172
  labels: {{app: secure, weft.dev/node: node-2}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: secure-jwt, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: secure}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [secure]
    jwksUri: {jwks_uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: secure-platinum, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: secure}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['https://issuer.example/*']}}}}]
    when: [{{key: 'request.auth.claims[tier]', values: [platinum]}}]
"#
    );
    let mesh = Mesh::start_with(
        &config,
        "shop/sec-waypoint",
        "127.0.1.170",
        vec![issuer.ca.clone()],
    )
    .await;
    app("127.0.2.172:8080", "secure-1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = |signer: &KeyPair, kid: &str, claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let pem = EncodingKey::from_ec_pem(signer.serialize_pem().as_bytes()).expect("pem");
        format!(
            "authorization: Bearer {}\r\n",
            encode(&header, &claims, &pem).expect("sign")
        )
    };
    let claims = |tier: &str| {
        serde_json::json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": "secure",
            "exp": now + 600, "tier": tier,
        })
    };
    let token = |signer: &KeyPair, tier: &str| signed(signer, "k1", claims(tier));
    let status = |headers: String| async move {
        get_with("127.0.1.171:9006", &headers)
            .await
            .and_then(|r| r.get(9..12).map(str::to_owned))
            .unwrap_or_default()
    };
    // Readiness: the policy is in force once a valid token gets through.
    let started = Instant::now();
    while status(token(&key, "platinum")).await != "200" {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "mesh not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(String::new()).await,
        "403",
        "no token: denied by policy"
    );
    assert_eq!(
        status(token(&forger, "platinum")).await,
        "401",
        "forged signature"
    );
    assert_eq!(
        status(token(&key, "gold")).await,
        "403",
        "valid, without the claim"
    );
    assert_eq!(status(token(&key, "platinum")).await, "200", "valid");
    let mut expired = claims("platinum");
    expired["exp"] = serde_json::json!(now - 3600);
    assert_eq!(status(signed(&key, "k1", expired)).await, "401", "expired");
    let mut other_audience = claims("platinum");
    other_audience["aud"] = serde_json::json!("elsewhere");
    assert_eq!(
        status(signed(&key, "k1", other_audience)).await,
        "401",
        "wrong audience"
    );
    // The issuer rotates to k2 and retires k1.
    issuer.serve(jwks(&next_key, "k2"));
    let rotated = Instant::now();
    while status(signed(&next_key, "k2", claims("platinum"))).await != "200" {
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "a token with the new kid was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(token(&key, "platinum")).await,
        "401",
        "the retired key's tokens are refused"
    );
    // Made-up key ids: refused, and the issuer is not hammered.
    let before = issuer.fetches();
    let flood = Instant::now();
    for i in 0..30 {
        assert_eq!(
            status(signed(&next_key, &format!("bogus-{i}"), claims("platinum"))).await,
            "401"
        );
    }
    let seconds = flood.elapsed().as_secs() as usize;
    assert!(
        issuer.fetches() - before <= seconds + 1,
        "{} fetches for 30 unknown kids in {seconds}s",
        issuer.fetches() - before
    );
    mesh.stop();
}
