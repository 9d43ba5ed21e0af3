//! A flood of connections that send the HTTP/2 preface and then nothing
//! (issue 15, finding 3: 16,500 of them took every slot of a gateway
//! listener and legitimate clients got nothing for ~35 s). Scaled down
//! here (a listener of 64 connections, 16 per source, floods from eight
//! addresses): each source holds at most its share, the newest idle
//! connections are shed for new ones, a silent connection is closed after
//! the header timeout, and legitimate requests on new connections keep
//! succeeding throughout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::admission::ConnLimits;
use weft_waypoint::fronts::setup::WaypointOptions;

const IP: &str = "127.0.1.245";
const PORT: u16 = 18096;
const BACKEND: &str = "127.0.1.246";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn config() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: shop}}
spec:
  hosts: [backend.shop.svc.cluster.local]
  addresses: [240.240.9.45]
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
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
"#
    )
}

/// An attacker's connection from `source`: the HTTP/2 preface and an
/// empty SETTINGS frame, then silence.
async fn silent_h2(source: &str) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{source}:0").parse().ok()?).ok()?;
    let mut tcp = socket
        .connect(format!("{IP}:{PORT}").parse().ok()?)
        .await
        .ok()?;
    tcp.write_all(PREFACE).await.ok()?;
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.ok()?;
    Some(tcp)
}

/// A legitimate GET on a new HTTP/1.1 connection: its status, or why not.
async fn legit() -> Result<u16, String> {
    let tcp = TcpStream::connect((IP, PORT))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        sender.send_request(
            http::Request::get("/status/200")
                .header("host", "shop.example")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        ),
    )
    .await
    .map_err(|_| "no answer in 5 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// The value of the counter line of `metrics` that has every `needle`.
fn counter(metrics: &str, needles: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_flood_leaves_legitimate_clients_served() {
    app(&format!("{BACKEND}:8080"), "backend").await;
    let mesh = TestMesh::start(&config(), 1).await;
    let limits = ConnLimits {
        max_connections: 64,
        max_per_source: 16,
        header_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(30),
        max_duration: None,
    };
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
        connections: limits,
    })
    .await
    .expect("gateway");
    let started = Instant::now();
    while legit().await != Ok(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway not serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flood: eight sources, 24 connections each (8 more than a
    // source's share), renewed while legitimate clients call.
    let sources: Vec<String> = (1..=8).map(|i| format!("127.0.9.{i}")).collect();
    let mut held = Vec::new();
    let (mut ok, mut tries) = (0, 0);
    for round in 0..5 {
        for s in &sources {
            for _ in 0..24 {
                if let Some(c) = silent_h2(s).await {
                    held.push(c);
                }
            }
        }
        for _ in 0..10 {
            tries += 1;
            match legit().await {
                Ok(200) => ok += 1,
                other => eprintln!("round {round}: legitimate request failed: {other:?}"),
            }
        }
    }
    assert!(
        ok * 100 >= tries * 95,
        "only {ok} of {tries} legitimate requests succeeded during the flood"
    );
    let metrics = metrics_of(gateway.metrics_addr).await;
    let per_source = counter(
        &metrics,
        &[
            "weft_gateway_connections_refused_total{",
            "per_source_limit",
        ],
    );
    let shed = counter(
        &metrics,
        &["weft_gateway_connections_closed_total{", "overload_shed"],
    );
    assert!(
        per_source >= 1.0,
        "no per-source refusal counted:\n{metrics}"
    );
    assert!(shed >= 1.0, "no idle connection shed:\n{metrics}");

    // A silent connection is closed once the header timeout passes.
    drop(held);
    let mut lone = silent_h2("127.0.9.20").await.expect("connect");
    let opened = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), lone.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("a silent connection was still open after 10 s"),
        }
    }
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_secs(2) && lived < Duration::from_secs(10),
        "closed after {lived:?}, expected the 3 s header timeout"
    );
    let metrics = metrics_of(gateway.metrics_addr).await;
    assert!(
        counter(
            &metrics,
            &["weft_gateway_connections_closed_total{", "header_timeout"]
        ) >= 1.0,
        "{metrics}"
    );
    gateway.stop();
    mesh.stop().await;
}
