//! Distributed tracing end to end: a request through an ingress gateway,
//! then the service's waypoint (`istio.io/ingress-use-waypoint`), then the
//! service, yields spans sharing one trace id with correct parent links —
//! received by an OTLP/HTTP collector written here in Python with the
//! OpenTelemetry protos (`opentelemetry-proto`), not weft's own. The
//! backend sees a `traceparent` naming the waypoint's client span; B3
//! context is honoured; retries are separate client spans.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::setup::WaypointOptions;

const COLLECTOR: &str = r#"
import json, sys, http.server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            service = [a.value.string_value for a in rs.resource.attributes if a.key == "service.name"]
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {}
                    for a in s.attributes:
                        v = a.value
                        attrs[a.key] = v.string_value if v.HasField("string_value") else v.int_value
                    print(json.dumps({
                        "service": service[0] if service else "",
                        "trace": s.trace_id.hex(), "span": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                        "status": s.status.code, "attributes": attrs,
                    }), flush=True)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
print(server.server_port, flush=True)
server.serve_forever()
"#;

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the Python collector; `None` (with the reason) when Python or
/// its package is missing outside CI.
fn collector() -> Option<(Collector, u16, std::sync::mpsc::Receiver<serde_json::Value>)> {
    let mut child = Collector(
        Command::new("python3")
            .args(["-c", COLLECTOR])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let Some(Ok(port)) = lines.next() else {
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "the OTLP collector did not start: {err}"
        );
        println!("SKIPPED: the Python OTLP collector cannot run here: {err}");
        return None;
    };
    let port: u16 = port.trim().parse().expect("port");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Some((child, port, rx))
}

fn config(collector_port: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: shop
  labels: {{istio.io/use-waypoint: shop-waypoint, istio.io/ingress-use-waypoint: "true"}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [240.240.6.1]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-1, namespace: shop}}
spec:
  address: 127.0.1.91
  labels: {{app: reviews, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shop-waypoint, namespace: shop}}
spec:
  address: 127.0.1.92
  serviceAccount: shop-waypoint
  labels: {{weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: edge, namespace: shop}}
spec:
  address: 127.0.1.93
  serviceAccount: edge
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: weft
  listeners: [{{name: http, port: 18090, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: edge, namespace: shop}}
spec:
  parentRefs: [{{kind: Gateway, name: edge}}]
  rules: [{{backendRefs: [{{name: reviews, port: 80}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - name: reviews-retries
    route: [{{destination: {{host: reviews}}}}]
    retries: {{attempts: 2, perTryTimeout: 1s, retryOn: 5xx}}
---
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec:
  extensionProviders:
  - name: otel
    opentelemetry: {{service: 127.0.0.1, port: {collector_port}, http: {{path: /v1/traces}}}}
  defaultProviders: {{tracing: [otel]}}
  tracing: {{randomSamplingPercentage: 100}}
"#
    )
}

async fn get(path: &str, headers: &str) -> String {
    let mut conn = TcpStream::connect("127.0.1.93:18090")
        .await
        .expect("gateway");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: reviews\r\n{headers}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out).await;
    out
}

/// Spans of trace `trace`, waiting until `enough` holds.
fn spans_of(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    all: &mut Vec<serde_json::Value>,
    trace: &str,
    enough: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let of: Vec<serde_json::Value> = all
            .iter()
            .filter(|s| s["trace"] == trace)
            .cloned()
            .collect();
        if enough(&of) {
            return of;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "spans of {trace} never arrived; have {all:#?}"
        );
        if let Ok(span) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
            all.push(span);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_gateway_through_waypoint_to_service() {
    let Some((_collector, port, rx)) = collector() else {
        return;
    };
    let mesh = TestMesh::start(&config(port), 1).await;
    app("127.0.1.91:8080", "reviews").await;
    let options = |name: &str, ip: &str| WaypointOptions {
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
    };
    let waypoint =
        weft_waypoint::fronts::waypoint::start(options("shop/shop-waypoint", "127.0.1.92"))
            .await
            .expect("waypoint");
    let gateway = weft_waypoint::fronts::gateway::start(options("shop/edge", "127.0.1.93"))
        .await
        .expect("gateway");

    // A request carrying a W3C context: readiness first (the same
    // context each time; the spans are told apart by trace below).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let started = Instant::now();
    let answer = loop {
        let answer = get(
            "/headers",
            &format!("traceparent: 00-{trace}-{caller_span}-01\r\n"),
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never served: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut all = Vec::new();
    let four = |s: &[serde_json::Value]| {
        let server = s.iter().filter(|x| x["kind"] == 2).count();
        let client = s.iter().filter(|x| x["kind"] == 3).count();
        server >= 2 && client >= 2
    };
    let spans = spans_of(&rx, &mut all, trace, four);
    let by = |service: &str, kind: i64| -> Vec<&serde_json::Value> {
        spans
            .iter()
            .filter(|s| s["service"] == service && s["kind"] == kind)
            .collect()
    };
    let gw_server = by("edge.shop", 2);
    let gw_client = by("edge.shop", 3);
    let wp_server = by("shop-waypoint.shop", 2);
    let wp_client = by("shop-waypoint.shop", 3);
    assert!(!gw_server.is_empty() && !wp_server.is_empty(), "{spans:#?}");
    // Links: caller → gateway server → gateway client → waypoint server
    // → waypoint client → the backend's traceparent.
    let ids = |v: &[&serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|s| s["span"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let linked = gw_server.iter().any(|gs| {
        gs["parent"] == caller_span
            && gw_client.iter().any(|gc| {
                gc["parent"] == gs["span"]
                    && wp_server.iter().any(|ws| {
                        ws["parent"] == gc["span"]
                            && wp_client.iter().any(|wc| {
                                wc["parent"] == ws["span"]
                                    && answer.contains(&format!(
                                        "\"traceparent\":\"00-{trace}-{}-01\"",
                                        wc["span"].as_str().unwrap_or("")
                                    ))
                            })
                    })
            })
    });
    assert!(
        linked,
        "parent links broken: gateway server {:?}, gateway client {:?}, waypoint server {:?}, waypoint client {:?}\nbackend saw: {answer}",
        ids(&gw_server),
        ids(&gw_client),
        ids(&wp_server),
        ids(&wp_client)
    );
    let server = gw_server[0];
    assert_eq!(server["attributes"]["http.request.method"], "GET");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert_eq!(server["attributes"]["url.path"], "/headers");

    // B3 multi-header context is honoured (and passed on as B3 too).
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let answer = get(
        "/headers",
        &format!(
            "x-b3-traceid: {b3_trace}\r\nx-b3-spanid: a2fb4a1d1a96d312\r\nx-b3-sampled: 1\r\n"
        ),
    )
    .await;
    assert!(
        answer.contains(&format!("\"x-b3-traceid\":\"{b3_trace}\"")),
        "{answer}"
    );
    let b3 = spans_of(&rx, &mut all, b3_trace, |s| s.len() >= 4);
    assert!(
        b3.iter().any(|s| s["parent"] == "a2fb4a1d1a96d312"),
        "{b3:#?}"
    );

    // Retries are separate client spans under the waypoint's server span.
    let retry_trace = "0af7651916cd43dd8448eb211c80319c";
    let _ = get(
        "/status/503",
        &format!("traceparent: 00-{retry_trace}-b7ad6b7169203331-01\r\n"),
    )
    .await;
    let retried = spans_of(&rx, &mut all, retry_trace, |s| {
        s.iter()
            .filter(|x| x["service"] == "shop-waypoint.shop" && x["kind"] == 3)
            .count()
            >= 3
    });
    let tries: Vec<&serde_json::Value> = retried
        .iter()
        .filter(|x| x["service"] == "shop-waypoint.shop" && x["kind"] == 3)
        .collect();
    let parents: HashMap<&str, usize> = tries.iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t["parent"].as_str().unwrap_or("")).or_default() += 1;
        m
    });
    assert!(
        parents.values().any(|n| *n >= 3),
        "tries under one server span: {tries:#?}"
    );
    assert!(
        tries
            .iter()
            .any(|t| t["attributes"]["http.request.resend_count"] == 2),
        "{tries:#?}"
    );
    assert!(
        tries.iter().all(|t| t["status"] == 2),
        "failed tries are errors: {tries:#?}"
    );

    gateway.stop();
    waypoint.stop();
    mesh.stop().await;
}
