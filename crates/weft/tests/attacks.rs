//! The attack suite: what an adversarial review of weft found (issue 15),
//! each tried again against a real `weft up` mesh — real processes, real
//! sockets — as the attacker would: a local user with a shell on a mesh
//! host, an anonymous client of the gateway, an operator's mistake. Each
//! test names its finding and failed on the code before the fix; floods
//! are bounded in count and time and aim at loopback only. The meshes use
//! the same loopback addresses, so the tests run one at a time.
//!
//! Attacks closer to one component live beside it: hostile requests at the
//! gateway (`weft-waypoint/tests/hostile.rs`), connection floods
//! (`weft-waypoint/tests/flood.rs`, `weft-hbone/tests/bad_input.rs`),
//! tokens (`weft-waypoint/src/jwt.rs`), reserved identities
//! (`weft-config/tests/data/broken`), certificate renewal
//! (`weft-ca/src/authz.rs`), secret files (`weft-ca/src/secret.rs`).
//! `docs/security.md` lists them all.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{Up, counter, http_get};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

/// A copy of the demo the test may change while it runs.
fn demo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(demo()).expect("demo") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// Polls `f` until it returns `Some`, for at most `limit`.
fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SOCKS5 CONNECT to `ip:port` through `proxy`: the reply code.
fn socks_reply(proxy: &str, ip: [u8; 4], port: u16) -> u8 {
    let mut s = TcpStream::connect(proxy).expect("SOCKS proxy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut method = [0u8; 2];
    s.read_exact(&mut method).expect("method");
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip);
    request.extend_from_slice(&port.to_be_bytes());
    s.write_all(&request).expect("request");
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).expect("reply");
    reply[1]
}

/// Findings 1 and 16: the gateway's address doubled as a node proxy (SOCKS5
/// and HBONE presenting the gateway's identity), and SOCKS5 reached the
/// control plane's plaintext port on loopback.
#[test]
fn the_gateway_address_lends_no_identity_and_socks_reaches_no_control_port() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _up = Up::start(&demo(), &["--background-load", "0"]);
    eventually(
        "frontend's outbound listener",
        Duration::from_secs(15),
        || {
            http_get("127.0.1.10:9001", "/", "")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        },
    );
    for port in [15080, 15008] {
        assert!(
            TcpStream::connect(("127.0.1.50", port)).is_err(),
            "something listens on the gateway's address, port {port}"
        );
    }
    // The gateway itself still serves.
    let edge = http_get("127.0.1.50:8080", "/", "").expect("gateway");
    assert!(edge.starts_with("HTTP/1.1 200"), "{edge}");
    // SOCKS5 at a workload: weft's own ports are refused (2: not allowed).
    for port in [15010, 15012, 15000, 15014, 15020] {
        assert_eq!(
            socks_reply("127.0.1.10:15080", [127, 0, 0, 1], port),
            2,
            "SOCKS to 127.0.0.1:{port}"
        );
    }
}

/// A request with an explicit `Host`: the status line.
fn status_with_host(addr: &str, path: &str, host: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

/// Finding 18: the admin and dashboard ports answered any `Host` (a page
/// in the operator's browser could read them through DNS rebinding), and
/// the gateway's metrics were served on its public address.
#[test]
fn local_endpoints_answer_local_names_only() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _up = Up::start(&demo(), &["--background-load", "0"]);
    for (addr, path) in [
        ("127.0.0.1:15000", "/certs"),
        ("127.0.0.1:15014", "/debug/config-status"),
        ("127.0.0.1:15014", "/api/graph"),
        ("127.0.1.1:15000", "/config_dump"),
    ] {
        let foreign = status_with_host(addr, path, "rebound.attacker.example");
        assert!(foreign.contains(" 421 "), "{addr}{path} answered {foreign}");
        let local = status_with_host(addr, path, "localhost");
        assert!(local.contains(" 200 "), "{addr}{path} answered {local}");
    }
    // Metrics stay scrapeable by address (Prometheus sends its target).
    let metrics = status_with_host("127.0.1.1:15020", "/metrics", "10.0.0.1:15020");
    assert!(metrics.contains(" 200 "), "{metrics}");
    // The gateway's metrics are on loopback, not on its public address.
    assert!(TcpStream::connect("127.0.1.50:15020").is_err());
    let gw = http_get("127.0.0.1:15090", "/metrics", "").expect("gateway metrics");
    assert!(
        gw.contains("istio_requests_total") || gw.starts_with("HTTP/1.1 200"),
        "{gw}"
    );
}

/// Finding 2: the bootstrap token file was created 0644 and chmod-ed
/// after; everything secret `weft up` writes must be private from the
/// start.
#[cfg(unix)]
#[test]
fn weft_up_writes_its_secrets_privately() {
    use std::os::unix::fs::PermissionsExt;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&demo(), &["--background-load", "0"]);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let state = up.state();
    assert_eq!(mode(state), 0o700, "state directory");
    assert_eq!(mode(&state.join("bootstrap-tokens")), 0o600);
    assert_eq!(mode(&state.join("ca")), 0o700, "CA directory");
    assert_eq!(mode(&state.join("ca/root-key.pem")), 0o600);
    let tokens = std::fs::read_to_string(state.join("bootstrap-tokens")).expect("tokens");
    for line in tokens.lines() {
        let token = line.split_whitespace().nth(1).expect("token");
        assert!(token.len() >= 32, "short token in {line:?}");
    }
}

/// The control plane's `/debug/config-status`.
fn config_status() -> serde_json::Value {
    let r = http_get("127.0.0.1:15014", "/debug/config-status", "").expect("status");
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("config status {body:?}: {e}"))
}

/// Finding 10: an emptied configuration directory (a half-finished
/// checkout) was applied and removed the whole mesh. It is held back, the
/// mesh keeps serving, the hold is reported; the marker file confirms it.
#[test]
fn an_emptied_config_directory_is_held_back_until_confirmed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = demo_copy();
    let _up = Up::start(dir.path(), &["--background-load", "0"]);
    let ok = || {
        http_get("127.0.1.10:9001", "/", "")
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    };
    eventually("frontend → orders", Duration::from_secs(15), ok);
    let version = config_status()["version"].as_u64().expect("version");
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    let status = eventually("the hold reported", Duration::from_secs(10), || {
        let s = config_status();
        (s["last_attempt_rejected"] == true).then_some(s)
    });
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("held back") && problems.contains(".weft-confirm-removal"),
        "{problems}"
    );
    assert_eq!(status["version"].as_u64(), Some(version), "nothing applied");
    let metrics = http_get("127.0.0.1:15020", "/metrics", "").expect("metrics");
    assert!(
        counter(&metrics, "weft_config_rejected_total", &[]) >= 1.0,
        "{metrics}"
    );
    // Traffic is unaffected.
    for _ in 0..20 {
        assert!(
            ok().is_some(),
            "traffic failed while the removal was held back"
        );
    }
    // Confirmed: applied, and the marker is consumed.
    std::fs::write(dir.path().join(".weft-confirm-removal"), "").expect("marker");
    let status = eventually("the removal applied", Duration::from_secs(10), || {
        let s = config_status();
        (s["version"].as_u64() > Some(version)).then_some(s)
    });
    assert_eq!(status["last_attempt_rejected"], false, "{status}");
    assert!(!dir.path().join(".weft-confirm-removal").exists());
    eventually(
        "frontend's listener closed",
        Duration::from_secs(10),
        || ok().is_none().then_some(()),
    );
}

/// A child process killed when the test ends, however it ends.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `weft <args>` and waits for a stdout line starting with `ready`;
/// the process and that line.
fn spawn_ready(args: &[&std::ffi::OsStr], ready: &str) -> (Proc, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn weft");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let proc = Proc(child);
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.starts_with(ready) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (proc, line);
        }
    }
    panic!("weft {args:?} exited before {ready:?}");
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// Finding 14: a node restarted while the control plane was down exited
/// ("no valid certificate"). It now starts from the certificates and
/// configuration it kept (0600 files in its state directory) and serves.
#[test]
fn a_node_restarts_and_serves_while_the_control_plane_is_down() {
    use std::ffi::OsStr;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "node-1 node-1-secret-token-000\n").expect("tokens");
    let token = tmp.path().join("node-1.token");
    std::fs::write(&token, "node-1-secret-token-000\n").expect("token");
    let (ca, state) = (tmp.path().join("ca"), tmp.path().join("node-1"));
    let any = OsStr::new("127.0.0.1:0");
    let (control, line) = spawn_ready(
        &[
            OsStr::new("control"),
            OsStr::new("--config-dir"),
            demo().as_os_str(),
            OsStr::new("--ca-dir"),
            ca.as_os_str(),
            OsStr::new("--bootstrap-tokens"),
            tokens.as_os_str(),
            OsStr::new("--tls-addr"),
            any,
            OsStr::new("--xds-addr"),
            any,
            OsStr::new("--monitoring-addr"),
            any,
            OsStr::new("--admin-addr"),
            any,
            OsStr::new("--metrics-addr"),
            any,
        ],
        "weft control ready",
    );
    let (xds, tls, root) = (
        field(&line, "xds"),
        field(&line, "tls"),
        field(&line, "root"),
    );
    let node = || {
        spawn_ready(
            &[
                OsStr::new("node"),
                OsStr::new("--name"),
                OsStr::new("node-1"),
                OsStr::new("--xds-addr"),
                OsStr::new(&xds),
                OsStr::new("--ca-addr"),
                OsStr::new(&tls),
                OsStr::new("--root-cert"),
                OsStr::new(&root),
                OsStr::new("--token-file"),
                token.as_os_str(),
                OsStr::new("--state-dir"),
                state.as_os_str(),
                OsStr::new("--admin-addr"),
                OsStr::new("127.0.1.1:0"),
                OsStr::new("--metrics-addr"),
                OsStr::new("127.0.1.1:0"),
            ],
            "weft node node-1 ready",
        )
    };
    // The previous test's `weft up` may still be stopping its own orders
    // app on this address: wait until it is free.
    eventually("127.0.1.11:8080 free", Duration::from_secs(10), || {
        std::net::TcpListener::bind("127.0.1.11:8080")
            .ok()
            .map(drop)
    });
    let (_orders, _) = spawn_ready(
        &[
            OsStr::new("sample-app"),
            OsStr::new("--listen"),
            OsStr::new("127.0.1.11:8080"),
            OsStr::new("--name"),
            OsStr::new("orders"),
        ],
        "",
    );
    let served = || {
        http_get("127.0.1.10:9001", "/", "")
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200") && r.contains("x-weft-app: orders"))
    };
    let first = node();
    eventually(
        "frontend → orders through node-1",
        Duration::from_secs(20),
        served,
    );

    // The control plane goes away; then the node restarts.
    drop(control);
    drop(first);
    eventually("node-1's listeners closed", Duration::from_secs(10), || {
        served().is_none().then_some(())
    });
    let _second = node();
    eventually(
        "frontend → orders after the restart, without a control plane",
        Duration::from_secs(20),
        served,
    );
    // What it kept is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("config.pb")), 0o600);
        let certs: Vec<PathBuf> = std::fs::read_dir(state.join("certs"))
            .expect("certs")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(
            certs.len() >= 2,
            "node and workload certificates: {certs:?}"
        );
        for c in certs {
            assert_eq!(mode(&c), 0o600, "{}", c.display());
        }
    }
}

/// Finding 12: calling a workload's address skipped its service's
/// waypoint (and so the L7 policy there). In the demo, reviews goes
/// through the waypoint `shop-waypoint`: by name it still works, by a
/// reviews workload's address the destination node refuses the tunnel
/// (SOCKS5 reply 1, general failure) and counts the refusal.
#[test]
fn a_direct_call_cannot_skip_the_waypoint() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _up = Up::start(&demo(), &["--background-load", "0"]);
    eventually(
        "frontend → reviews through the waypoint",
        Duration::from_secs(15),
        || {
            http_get("127.0.1.10:9002", "/", "")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        },
    );
    // reviews' VIP (or name) goes through the waypoint: allowed.
    let by_vip = eventually("SOCKS to reviews' VIP", Duration::from_secs(10), || {
        let reply = socks_reply("127.0.1.10:15080", [240, 240, 0, 12], 80);
        (reply == 0).then_some(reply)
    });
    assert_eq!(by_vip, 0);
    // reviews-v1's own address (127.0.1.12:8080): refused at its node.
    assert_eq!(
        socks_reply("127.0.1.10:15080", [127, 0, 1, 12], 8080),
        1,
        "a direct call to reviews-v1 was let through"
    );
    let metrics = http_get("127.0.1.1:15020", "/metrics", "").expect("node-1 metrics");
    assert!(
        counter(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "response_flags=\"DENY\"",
                "destination_workload=\"reviews-v1\""
            ]
        ) >= 1.0,
        "the refusal is not counted:\n{metrics}"
    );
}
