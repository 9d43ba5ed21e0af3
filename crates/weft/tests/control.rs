//! `weft control` as a user runs it: a root appears in the CA directory, a
//! node proxy with its bootstrap token obtains certificates for workloads
//! on its node over gRPC, `weft certs` shows the control plane's own
//! certificate, and the metrics carry seconds until expiry.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use weft_ca::authz::control_identity;
use weft_ca::cert::certs_from_pem;
use weft_ca::client::{GrpcCaClient, NodeCredential};
use weft_ca::{CertManager, ManagerOptions, TrustBundle};
use weft_core::Identity;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

struct Control {
    _guard: Guard,
    ca: SocketAddr,
    xds: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    root: PathBuf,
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

fn start_control(dir: &Path) -> Control {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "node-1 node-1-secret-token-000\nnode-2 node-2-secret-token-000\n",
    )
    .expect("tokens");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["control", "--config-dir"])
        .arg(repo("examples/demo"))
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args([
            "--tls-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--bootstrap-tokens")
        .arg(&tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft control");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.starts_with("weft control ready"), "{line:?}");
    Control {
        _guard: Guard(child),
        ca: field(&line, "tls").parse().expect("tls addr"),
        xds: field(&line, "xds").parse().expect("xds addr"),
        admin: field(&line, "admin").parse().expect("admin addr"),
        metrics: field(&line, "metrics").parse().expect("metrics addr"),
        root: PathBuf::from(field(&line, "root")),
    }
}

fn weft(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn control_plane_issues_certificates_to_nodes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let control = start_control(tmp.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("ca/root-key.pem"))
            .expect("root key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let root = certs_from_pem(&std::fs::read(&control.root).expect("root"), "root").expect("pem");
    let bundle = TrustBundle::new(root).expect("bundle");
    let server = control_identity("cluster.local").expect("id");
    let node1 = GrpcCaClient::new(
        control.ca,
        bundle,
        server,
        NodeCredential::Token("node-1-secret-token-000".into()),
    )
    .expect("client");
    let manager = CertManager::new(Arc::new(node1), ManagerOptions::default());

    // frontend-1 runs on node-1 (examples/demo/workloads.yaml).
    let frontend: Identity = "spiffe://cluster.local/ns/shop/sa/frontend"
        .parse()
        .expect("id");
    let cert = manager
        .fetch(&frontend)
        .await
        .expect("frontend certificate");
    assert_eq!(cert.identity(), &frontend);
    // reviews has one workload on node-1 and one on node-2.
    let reviews: Identity = "spiffe://cluster.local/ns/shop/sa/reviews"
        .parse()
        .expect("id");
    let reviews_cert = manager.fetch(&reviews).await;
    assert!(
        reviews_cert.is_ok(),
        "reviews-v1 runs on node-1 too: {reviews_cert:?}"
    );
    let loadgen: Identity = "spiffe://cluster.local/ns/shop/sa/loadgen"
        .parse()
        .expect("id");
    let err = manager
        .fetch(&loadgen)
        .await
        .expect_err("loadgen is on node-2")
        .to_string();
    assert!(
        err.contains("node node-1 may not obtain") && err.contains("node-2"),
        "{err}"
    );

    // `weft certs` shows the control plane's own certificate.
    let admin = control.admin.to_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || weft(&["certs", &admin]))
        .await
        .expect("join");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("IDENTITY"), "{stdout}");
    assert!(
        stdout.contains("spiffe://cluster.local/ns/weft-system/sa/weft-control"),
        "{stdout}"
    );
    assert!(stdout.contains("weft root CA"), "{stdout}");

    // Metrics: seconds until expiry, about a day.
    let metrics = control.metrics.to_string();
    let text = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(&metrics).expect("connect");
        use std::io::{Read, Write};
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut s = String::new();
        conn.read_to_string(&mut s).expect("read");
        s
    })
    .await
    .expect("join");
    let line = text
        .lines()
        .find(|l| l.starts_with("weft_cert_expiry_seconds{identity=\"spiffe://cluster.local/ns/weft-system/sa/weft-control\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(value > 86_000.0 && value <= 86_400.0, "{line}");
}

#[test]
fn certs_against_nothing_fails_clearly() {
    let (code, _, stderr) = weft(&["certs", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
}

#[test]
fn control_refuses_a_broken_configuration() {
    let (code, _, stderr) = weft(&[
        "control",
        "--config-dir",
        repo("crates/weft-config/tests/data/broken")
            .to_str()
            .expect("utf-8"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.ports[0].number"), "{stderr}");
}

/// `weft config-dump` shows what a subscriber holds, per resource, with
/// versions (here a subscriber in this test serves its dump the way every
/// proxy's admin port does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_what_a_subscriber_holds() {
    use weft_xds::client::{ClientOptions, Transport, XdsClient};
    let tmp = tempfile::tempdir().expect("tempdir");
    let control = start_control(tmp.path());
    let client = Arc::new(XdsClient::start(
        Transport::Plaintext(control.xds),
        ClientOptions {
            node_id: "node-1".into(),
            types: vec![
                weft_xds::ADDRESS_TYPE.into(),
                weft_xds::AUTHORIZATION_TYPE.into(),
            ],
            initial_backoff: std::time::Duration::from_millis(50),
            max_backoff: std::time::Duration::from_millis(200),
            validator: weft_xds::decode_validator(),
        },
    ));
    let mut rx = client.watch();
    tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|s| s.synced))
        .await
        .expect("synced in time")
        .expect("client running");
    let listener = weft_admin::bind("127.0.0.1:0".parse().expect("addr"), "admin")
        .await
        .expect("bind");
    let admin = listener.local_addr().expect("addr").to_string();
    let dump_of = client.clone();
    tokio::spawn(weft_admin::serve(
        listener,
        weft_admin::Routes::new().get("/config_dump", move || {
            weft_admin::Reply::json(dump_of.dump_json())
        }),
        std::future::pending(),
    ));
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || weft(&["config-dump", &admin]))
            .await
            .expect("join");
    assert_eq!(code, 0, "{stderr}");
    let dump: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(dump["connected"], true);
    assert_eq!(dump["version"], "1");
    let addresses = dump["resources"][weft_xds::ADDRESS_TYPE]
        .as_array()
        .expect("addresses");
    // 4 services and 9 workloads (the waypoint and the gateway included).
    assert_eq!(addresses.len(), 13);
    assert!(
        addresses.iter().any(|a| a["name"] == "weft/shop/frontend-1"
            && a["version"].as_str().is_some_and(|v| v.len() == 16)),
        "{stdout}"
    );
}

/// `weft node` as its own process against a running `weft control`: it
/// gets its node certificate with the bootstrap token, then certificates
/// for its workloads, and stops cleanly on SIGTERM.
#[test]
fn node_process_joins_the_control_plane() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let control = start_control(tmp.path());
    let token = tmp.path().join("node-1.token");
    std::fs::write(&token, "node-1-secret-token-000\n").expect("token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["node", "--name", "node-1"])
        .arg("--state-dir")
        .arg(tmp.path().join("node-1"))
        .args([
            "--xds-addr",
            &control.xds.to_string(),
            "--ca-addr",
            &control.ca.to_string(),
        ])
        .arg("--root-cert")
        .arg(&control.root)
        .arg("--token-file")
        .arg(&token)
        .args([
            "--admin-addr",
            "127.0.1.1:0",
            "--metrics-addr",
            "127.0.1.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let mut node = Guard(child);
    assert!(line.starts_with("weft node node-1 ready"), "{line:?}");
    let admin = field(&line, "admin");
    let start = std::time::Instant::now();
    loop {
        let mut conn = std::net::TcpStream::connect(&admin).expect("admin");
        use std::io::{Read, Write};
        conn.write_all(b"GET /certs HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut certs = String::new();
        conn.read_to_string(&mut certs).expect("read");
        if certs.contains("sa/weft-node.node-1") && certs.contains("ns/shop/sa/frontend") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "node-1 never held its certificates:\n{certs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = node.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    assert_eq!(node.0.wait().expect("wait").code(), Some(0));
}
