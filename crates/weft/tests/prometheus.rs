//! The service graph from a real Prometheus (`weft control --prometheus`):
//! Prometheus (Debian's package, started here) scrapes two node proxies;
//! the control plane computes the graph from `increase(…)` queries instead
//! of scraping. orders calls payments, an intruder is denied: both edges
//! appear, the intruder's as denied.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::{Setup, TestMesh, app};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: billing}
spec:
  hosts: [payments.billing.svc.cluster.local]
  addresses: [240.240.9.3]
  location: MESH_INTERNAL
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: orders-1
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9201=payments.billing.svc.cluster.local:80"
spec:
  address: 127.0.1.71
  serviceAccount: orders
  labels: {app: orders, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: intruder
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9202=payments.billing.svc.cluster.local:80"
spec:
  address: 127.0.1.72
  serviceAccount: intruder
  labels: {app: intruder, weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments-1, namespace: billing}
spec:
  address: 127.0.2.71
  serviceAccount: payments
  labels: {app: payments, weft.dev/node: node-2}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-callers, namespace: billing}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/orders]}}]
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn call(addr: &str) {
    if let Ok(mut conn) = TcpStream::connect(addr).await {
        let _ = conn
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut out)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = conn
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_from_a_real_prometheus() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed; .ci/run installs it"
        );
        println!("SKIPPED: no prometheus binary here (.ci/run installs Debian's)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = |n: u8| SocketAddr::from(([127, 0, n, 1], 15921));
    // Prometheus on a free port, scraping both nodes every second.
    let prom_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    std::fs::write(
        tmp.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: weft\n  static_configs:\n  - targets: ['{}', '{}']\n",
            metrics(1),
            metrics(2)
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                tmp.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom_url = format!("http://127.0.0.1:{prom_port}");

    let mesh = TestMesh::start_with(
        CONFIG,
        Setup {
            nodes: 2,
            node_metrics: |n| SocketAddr::from(([127, 0, n, 1], 15921)),
            control: Box::new(move |o| {
                o.observe = weft_control::observe::Source::Prometheus(prom_url);
            }),
        },
    )
    .await;
    app("127.0.2.71:8080", "payments").await;
    // Traffic until the graph from Prometheus shows both callers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let monitoring = mesh.control.monitoring_addr;
    loop {
        for _ in 0..5 {
            call("127.0.1.71:9201").await;
        }
        call("127.0.1.72:9202").await;
        let body = http_get(monitoring, "/api/graph?window=1m").await;
        let graph: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let edges = graph["edges"].as_array().cloned().unwrap_or_default();
        let edge = |source: &str| edges.iter().find(|e| e["source"] == source).cloned();
        if let (Some(orders), Some(intruder)) = (edge("orders"), edge("intruder"))
            && orders["requests"].as_f64().unwrap_or(0.0) > 0.0
            && intruder["denied"].as_f64().unwrap_or(0.0) > 0.0
        {
            assert_eq!(orders["destination"], "payments.billing.svc.cluster.local");
            assert_eq!(orders["denied"], 0.0, "{body}");
            assert_eq!(intruder["allowed"], 0.0, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the graph from Prometheus never showed both callers: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    mesh.stop().await;
}
