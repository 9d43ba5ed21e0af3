//! `weft authz check` agrees with the live data path: the demo mesh runs
//! (`weft up`) with a policy letting only orders call payments (node level)
//! and one refusing DELETE on reviews (its waypoint, request level); each
//! case is asked offline and then tried for real, and the answers must
//! match.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PAYMENTS: &str = "payments.billing.svc.cluster.local";

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-callers, namespace: billing}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/orders]}}]
---
# Enforced by reviews' waypoint, at request level.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-read-only, namespace: shop}
spec:
  targetRef: {kind: Service, name: reviews}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE, PUT]}}]
";

struct Guard(Child);

impl Drop for Guard {
    /// SIGTERM, so `weft up` stops its apps too; SIGKILL only as a last
    /// resort (it would leave the apps running).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Through the caller's SOCKS5 port to payments: did a 200 come back?
fn live(socks: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut conn = TcpStream::connect(socks)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(&[5, 1, 0])?;
        let mut choice = [0u8; 2];
        conn.read_exact(&mut choice)?;
        let mut request = vec![5, 1, 0, 3, PAYMENTS.len() as u8];
        request.extend_from_slice(PAYMENTS.as_bytes());
        request.extend_from_slice(&80u16.to_be_bytes());
        conn.write_all(&request)?;
        let mut reply = [0u8; 10];
        conn.read_exact(&mut reply)?;
        if reply[1] != 0 {
            return Ok(false);
        }
        conn.write_all(b"GET / HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")?;
        let mut response = String::new();
        let _ = conn.read_to_string(&mut response);
        Ok(response.starts_with("HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}

/// Through frontend's outbound listener to reviews (via its waypoint):
/// the status of `method /`.
fn live_reviews(method: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut conn = TcpStream::connect("127.0.1.10:9002")?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            conn,
            "{method} / HTTP/1.1\r\nhost: reviews\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        let _ = conn.read_to_string(&mut response);
        Ok(response.get(9..12).unwrap_or_default().to_owned())
    };
    attempt().unwrap_or_default()
}

/// Offline: the exit status of `weft authz check`.
fn offline(config: &Path, from: &str) -> bool {
    offline_to(config, from, PAYMENTS, "GET")
}

fn offline_to(config: &Path, from: &str, to: &str, method: &str) -> bool {
    let status = Command::new(WEFT)
        .args(["authz", "check"])
        .arg(config)
        .args(["--from", from, "--to", to, "--method", method])
        .stdout(Stdio::null())
        .status()
        .expect("weft authz check");
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("weft authz check could not answer: {other:?}"),
    }
}

#[test]
fn offline_answers_match_the_data_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("mkdir");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    for f in ["mesh.yaml", "services.yaml", "workloads.yaml"] {
        std::fs::copy(demo.join(f), config.join(f)).expect("copy demo");
    }
    std::fs::write(config.join("policy.yaml"), POLICY).expect("policy");
    let mut child = Command::new(WEFT)
        .arg("up")
        .arg(&config)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft up");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Guard(child);
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").starts_with("weft up: ready") {
            break;
        }
    }
    // Readiness: orders reaches payments (allowed) through the mesh.
    let started = Instant::now();
    while !live("127.0.1.11:15080") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "mesh not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // (caller workload, its SOCKS5 address, expected)
    let cases = [
        ("shop/orders-1", "127.0.1.11:15080", true),
        ("shop/frontend-1", "127.0.1.10:15080", false),
        ("shop/loadgen", "127.0.2.30:15080", false),
    ];
    for (from, socks, expected) in cases {
        let (said, did) = (offline(&config, from), live(socks));
        assert_eq!(
            said, did,
            "{from}: weft authz check said {said}, the mesh did {did}"
        );
        assert_eq!(did, expected, "{from}");
    }
    // Request level, in reviews' waypoint: reads pass, DELETE is refused.
    let reviews = "reviews.shop.svc.cluster.local";
    for (method, expected) in [("GET", "200"), ("DELETE", "403")] {
        let did = live_reviews(method);
        assert_eq!(did, expected, "{method} through the waypoint");
        let said = offline_to(&config, "shop/frontend-1", reviews, method);
        assert_eq!(
            said,
            did == "200",
            "{method}: weft authz check said {said}, the mesh answered {did}"
        );
    }
}
