//! Captured mode end to end, as root: `weft control`, two `weft node`
//! processes, and unchanged programs (`curl`, `python3`, the sample app)
//! started with `weft run` in their own network namespaces.
//!
//! One test, in order: traffic flows over mTLS and a packet capture on the
//! path sees only TLS on port 15008; a caller outside the ALLOW list is
//! refused and counted with its reason; STRICT refuses plaintext while
//! PERMISSIVE accepts it; stopping the local endpoint fails traffic over to
//! the other zone, and it returns when the endpoint is back; a policy
//! change cuts a now-denied open connection.
//!
//! Skips, saying why, when not root or when `ip`, `nft`, `curl` or
//! `tcpdump` is missing (`.ci/run` installs them and runs as root).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::Proc;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces and nftables need root)".into());
    }
    for tool in ["ip", "nft", "curl", "tcpdump", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn read_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read line");
    line
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("read");
    body
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SERVICES: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec:
  mtls: {mode: STRICT}
  connectTimeout: 1s
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders.shop.svc.cluster.local]
  addresses: [240.240.9.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: orders}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.shop.svc.cluster.local]
  addresses: [240.240.9.2]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy-accepts-plaintext, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: PERMISSIVE}
"#;

fn workload(name: &str, ip: &str, node: &str, zone: &str, app: &str) -> String {
    let client_only = matches!(app, "frontend" | "intruder");
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: shop
  annotations: {{weft.dev/client-only: \"{client_only}\"}}
spec:
  address: {ip}
  serviceAccount: {app}
  locality: eu/{zone}
  labels: {{app: {app}, weft.dev/node: {node}}}
"
    )
}

fn policy(allowed: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/{allowed}]}}}}]
"
    )
}

struct Mesh {
    tmp: tempfile::TempDir,
    prefix: String,
    node_metrics: Vec<String>,
    node_logs: Vec<PathBuf>,
    _procs: Vec<Proc>,
}

impl Mesh {
    fn start() -> Mesh {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        let mut workloads = String::new();
        for (name, ip, node, zone, app) in [
            ("frontend", "10.248.1.10", "node-1", "a", "frontend"),
            ("intruder", "10.248.1.11", "node-1", "a", "intruder"),
            ("orders-a", "10.248.1.20", "node-1", "a", "orders"),
            ("orders-b", "10.248.2.20", "node-2", "b", "orders"),
            ("legacy", "10.248.2.30", "node-2", "b", "legacy"),
        ] {
            workloads.push_str(&workload(name, ip, node, zone, app));
        }
        std::fs::write(config.join("mesh.yaml"), SERVICES).expect("write");
        std::fs::write(config.join("workloads.yaml"), workloads).expect("write");
        std::fs::write(config.join("policy.yaml"), policy("frontend")).expect("write");
        let tokens = tmp.path().join("tokens");
        std::fs::write(
            &tokens,
            "node-1 netns-token-0000001\nnode-2 netns-token-0000002\n",
        )
        .expect("tokens");
        let mut control = Command::new(WEFT)
            .args(["control", "--config-dir"])
            .arg(&config)
            .arg("--ca-dir")
            .arg(tmp.path().join("ca"))
            .args(["--tls-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"])
            .args([
                "--monitoring-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(["--metrics-addr", "127.0.0.1:0", "--bootstrap-tokens"])
            .arg(&tokens)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(tmp.path().join("control.log")).expect("log"))
            .spawn()
            .expect("spawn weft control");
        let line = read_line(&mut BufReader::new(control.stdout.take().expect("stdout")));
        assert!(
            line.starts_with("weft control ready"),
            "{line:?}\n{}",
            std::fs::read_to_string(tmp.path().join("control.log")).unwrap_or_default()
        );
        let mut procs = vec![Proc(control)];
        let mut node_metrics = Vec::new();
        let mut node_logs = Vec::new();
        for n in 1..=2 {
            let token = tmp.path().join(format!("node-{n}.token"));
            std::fs::write(&token, format!("netns-token-000000{n}")).expect("token");
            let log = tmp.path().join(format!("node-{n}.log"));
            // node-1 logs text (the default), node-2 JSON.
            let format = if n == 1 { "text" } else { "json" };
            let mut node = Command::new(WEFT)
                .args(["--log-format", format])
                .args(["node", "--name", &format!("node-{n}")])
                .arg("--state-dir")
                .arg(tmp.path().join(format!("node-{n}")))
                .args([
                    "--xds-addr",
                    &field(&line, "xds"),
                    "--ca-addr",
                    &field(&line, "tls"),
                ])
                .arg("--root-cert")
                .arg(field(&line, "root"))
                .arg("--token-file")
                .arg(&token)
                .args([
                    "--admin-addr",
                    "127.0.0.1:0",
                    "--metrics-addr",
                    "127.0.0.1:0",
                ])
                .args(["--connect-timeout", "1s", "--drain-timeout", "1s"])
                .arg("--attach-socket")
                .arg(tmp.path().join(format!("node-{n}.sock")))
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn weft node");
            let ready = read_line(&mut BufReader::new(node.stdout.take().expect("stdout")));
            assert!(ready.contains("ready"), "{ready:?}");
            node_metrics.push(field(&ready, "metrics"));
            node_logs.push(log);
            procs.push(Proc(node));
        }
        Mesh {
            prefix: format!("wt{}", std::process::id() % 100_000),
            tmp,
            node_metrics,
            node_logs,
            _procs: procs,
        }
    }

    fn run(&self, workload: &str, node: u8, command: &[&str]) -> Command {
        let mut cmd = Command::new(WEFT);
        cmd.args(["run", "--netns", &format!("{}-{workload}", self.prefix)])
            .args(["--node", &format!("node-{node}")])
            .args(["--workload", &format!("shop/{workload}")])
            .arg("--attach-socket")
            .arg(self.tmp.path().join(format!("node-{node}.sock")))
            .arg("--")
            .args(command);
        cmd
    }

    /// Starts the sample app as a captured workload; returns once it listens.
    fn app(&self, workload: &str, node: u8) -> Proc {
        let mut child = self
            .run(
                workload,
                node,
                &[
                    WEFT,
                    "sample-app",
                    "--listen",
                    "0.0.0.0:8080",
                    "--name",
                    workload,
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weft run");
        let line = read_line(&mut BufReader::new(child.stdout.take().expect("stdout")));
        assert!(line.contains("listening"), "{workload}: {line:?}");
        Proc(child)
    }

    /// `curl` from a captured workload: (exit code, response headers and body).
    fn curl(&self, from: &str, url: &str) -> (i32, String) {
        let out = self
            .run(from, 1, &["curl", "-sS", "-i", "-m", "5", url])
            .output()
            .expect("weft run curl");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn metrics(&self, node: usize) -> String {
        http_get(&self.node_metrics[node - 1], "/metrics")
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(&self.node_logs[node - 1]).unwrap_or_default()
    }
}

fn served_by(response: &str) -> Option<&str> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-app: ").map(str::trim))
}

#[test]
fn captured_workloads_in_network_namespaces() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED captured_workloads_in_network_namespaces: {reason}");
        return;
    }
    let mesh = Mesh::start();
    let mut orders_a = mesh.app("orders-a", 1);
    let _orders_b = mesh.app("orders-b", 2);
    let _legacy = mesh.app("legacy", 2);

    // 1. An unchanged curl reaches the service VIP; the same-zone endpoint
    //    answers; on the wire there is only TLS on 15008.
    let pcap = mesh.tmp.path().join("path.pcap");
    let mut tcpdump = Command::new("tcpdump")
        .args([
            "-i",
            "any",
            "--immediate-mode",
            "-U",
            "-nn",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .arg("net 10.248.0.0/16")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut err = BufReader::new(tcpdump.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("tcpdump") > 0,
            "tcpdump: {line}"
        );
    }
    let marker = "weft-secret-marker-5d1f";
    let (code, response) = mesh.curl("frontend", &format!("http://240.240.9.1/echo?{marker}"));
    assert_eq!(code, 0, "{response}");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(served_by(&response), Some("orders-a"), "{response}");
    let mut tcpdump = Proc(tcpdump);
    tcpdump.terminate();
    let mut said = String::new();
    let _ = err.read_to_string(&mut said);
    let raw = std::fs::read(&pcap).expect("pcap");
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the wire in plaintext"
    );
    // Every packet to or from a workload address (the path between the
    // node proxies and the namespaces) is on the HBONE port.
    let decoded = Command::new("tcpdump")
        .args(["-r"])
        .arg(&pcap)
        .args(["-nn", "tcp"])
        .output()
        .expect("tcpdump -r");
    let packets = String::from_utf8_lossy(&decoded.stdout);
    let tcp: Vec<&str> = packets
        .lines()
        .filter(|l| l.contains(" IP ") && l.contains(" 10.248."))
        .collect();
    assert!(
        tcp.len() > 4,
        "too few packets captured ({} bytes):\n{packets}\n{}\ntcpdump: {said}\nnode-1:\n{}",
        raw.len(),
        String::from_utf8_lossy(&decoded.stderr),
        mesh.log(1)
    );
    for p in &tcp {
        assert!(p.contains(".15008"), "a packet not on the HBONE port: {p}");
    }

    // 2. A caller outside the ALLOW list is refused, counted and logged
    //    with the reason.
    let (code, response) = mesh.curl("intruder", "http://240.240.9.1/");
    assert_ne!(code, 0, "the intruder got through: {response}");
    let denied = mesh.metrics(1).lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("source_workload=\"intruder\"")
            && l.contains("response_flags=\"DENY\"")
    });
    assert!(denied, "no DENY counted:\n{}", mesh.metrics(1));
    wait_for("the denial in node-1's access log", || {
        mesh.log(1).lines().any(|l| {
            l.contains("intruder")
                && l.contains("not allowed by any ALLOW policy (shop/orders-callers)")
        })
    });

    // 3. STRICT refuses plaintext; PERMISSIVE accepts it. The caller is
    //    the host, outside the mesh.
    let plain = |ip: &str| {
        Command::new("curl")
            .args(["-sS", "-i", "-m", "5", &format!("http://{ip}:8080/")])
            .output()
            .expect("curl")
    };
    let strict = plain("10.248.1.20");
    assert!(!strict.status.success(), "STRICT accepted plaintext");
    let permissive = plain("10.248.2.30");
    let body = String::from_utf8_lossy(&permissive.stdout);
    assert!(
        permissive.status.success() && body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    let m = mesh.metrics(2);
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("connection_security_policy=\"none\"")
                && l.contains("destination_workload=\"legacy\"")
                && l.contains("response_flags=\"-\"")),
        "{m}"
    );
    assert!(
        mesh.metrics(1)
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("connection_security_policy=\"none\"")
                && l.contains("destination_workload=\"orders-a\"")
                && l.contains("response_flags=\"DENY\"")),
        "STRICT refusal not counted"
    );

    // node-2 writes its access log as JSON: one object per connection.
    wait_for(
        "a JSON access log line for the plaintext connection",
        || {
            mesh.log(2).lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["target"] == "weft::access"
                        && v["fields"]["security"] == "none"
                        && v["fields"]["dst"] == "shop/legacy"
                        && v["fields"]["sent"].as_u64().is_some_and(|n| n > 0)
                })
            })
        },
    );

    // 4. Failover: with orders-a gone, zone b serves; back when it returns.
    orders_a.terminate();
    let (code, response) = mesh.curl("frontend", "http://240.240.9.1/");
    assert_eq!(code, 0, "{response}");
    assert_eq!(served_by(&response), Some("orders-b"), "{response}");
    let _orders_a = mesh.app("orders-a", 1);
    wait_for("traffic back in zone a", || {
        let (_, response) = mesh.curl("frontend", "http://240.240.9.1/");
        served_by(&response) == Some("orders-a")
    });

    // 5. A policy change cuts a now-denied open connection.
    let script = "import socket,sys\n\
s=socket.create_connection(('240.240.9.1',80),timeout=30)\n\
s.sendall(b'GET / HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n')\n\
print('open' if s.recv(65536).startswith(b'HTTP/1.1 200') else 'failed',flush=True)\n\
while s.recv(65536): pass\n\
print('closed',flush=True)\n";
    let mut holder = mesh
        .run("frontend", 1, &["python3", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python client");
    let mut out = BufReader::new(holder.stdout.take().expect("stdout"));
    let _holder = Proc(holder);
    assert_eq!(read_line(&mut out).trim(), "open");
    let config = mesh.tmp.path().join("config");
    std::fs::write(config.join("policy.yaml"), policy("nobody")).expect("rewrite policy");
    let started = Instant::now();
    assert_eq!(read_line(&mut out).trim(), "closed");
    assert!(started.elapsed() < Duration::from_secs(15));
}
