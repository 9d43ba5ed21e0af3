//! The `weft` binary as a user runs it: exit codes, output, the sample app.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    weft().args(args).output().expect("weft runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_demo_exits_zero() {
    let out = run(&["validate", repo("examples/demo").to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("valid: 18 resources, 4 services, 9 workloads"),
        "{stdout}"
    );
}

#[test]
fn validate_broken_lists_every_problem_and_exits_one() {
    let dir = repo("crates/weft-config/tests/data/broken");
    let out = run(&["validate", dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected = std::fs::read_to_string(repo("crates/weft-config/tests/data/broken.expected"))
        .expect("expected file");
    assert_eq!(stdout.lines().count(), expected.lines().count(), "{stdout}");
    assert!(
        stdout.contains("ports.yaml#1:12 ServiceEntry shop/payments: spec.ports[0].number: 70000 is not a valid port (1-65535)"),
        "{stdout}"
    );
    let warnings = expected
        .lines()
        .filter(|l| l.contains(": warning: "))
        .count();
    assert!(warnings > 0, "the broken directory has warnings too");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} problem(s) and {warnings} warning(s)",
            expected.lines().count() - warnings
        )),
        "{stderr}"
    );
}

#[test]
fn validate_exits_zero_for_warnings_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("old.yaml"),
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop]
  addresses: [240.0.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  endpoints: [{address: 10.9.0.1, labels: {weft.dev/node: n1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop]
  http:
  - fault: {delay: {fixedDelay: 7s, percent: 100}}
    route: [{destination: {host: ratings.shop}}]
",
    )
    .expect("write");
    let out = run(&["validate", dir.path().to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("VirtualService shop/ratings: warning: spec.http[0].fault.delay.percent: deprecated; read as percentage: {value: 100}"),
        "{stdout}"
    );
    assert!(stdout.contains("valid (1 warning(s))"), "{stdout}");
}

#[test]
fn certs_make_a_shared_root_and_intermediates_openssl_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (root, east) = (tmp.path().join("root"), tmp.path().join("east"));
    let p = |d: &Path| d.to_str().expect("utf-8").to_owned();
    let out = run(&["certs", "root", "--out", &p(&root)]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let out = run(&[
        "certs",
        "intermediate",
        "--root",
        &p(&root),
        "--out",
        &p(&east),
        "--cluster",
        "east",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("weft control --ca-dir"),
        "{}",
        text(&out.stdout)
    );
    for (key, dir) in [("root-key.pem", &root), ("ca-key.pem", &east)] {
        let mode = std::fs::metadata(dir.join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
    }
    // The intermediate chains to the root, as weft and Istio read it.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(root.join("root-cert.pem"))
        .arg(east.join("ca-cert.pem"))
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    // Nothing is ever replaced.
    let again = run(&["certs", "root", "--out", &p(&root)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("refusing to replace"),
        "{}",
        text(&again.stderr)
    );
    let again = run(&[
        "certs",
        "intermediate",
        "--root",
        &p(&root),
        "--out",
        &p(&east),
        "--cluster",
        "east",
    ]);
    assert_eq!(again.status.code(), Some(1));
    // An intermediate outliving its root is refused.
    let long = run(&[
        "certs",
        "intermediate",
        "--root",
        &p(&root),
        "--out",
        &p(&tmp.path().join("west")),
        "--cluster",
        "west",
        "--days",
        "100000",
    ]);
    assert_eq!(long.status.code(), Some(1));
    assert!(
        text(&long.stderr).contains("the root expires"),
        "{}",
        text(&long.stderr)
    );
}

#[test]
fn validate_unreadable_path_exits_two_with_one_line() {
    let out = run(&["validate", "/nonexistent/weft-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/weft-config"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn version_and_waypoint_flags() {
    let out = run(&["version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("weft {}", env!("CARGO_PKG_VERSION"))
    );
    // A waypoint needs to know who it is.
    let out = run(&["waypoint"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--name"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "waypoint",
        "--name",
        "shop/wp",
        "--node",
        "node-1",
        "--root-cert",
        "/nonexistent/root-cert.pem",
        "--token-file",
        "/nonexistent/token",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/root-cert.pem"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sample_app_rejects_bad_flags() {
    let out = run(&["sample-app", "--fail-ratio", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("1.5"), "{}", text(&out.stderr));
    let out = run(&["sample-app", "--latency", "5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no unit"),
        "{}",
        text(&out.stderr)
    );
}

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weft sample-app` on an ephemeral port and returns it with its
/// address, read from its readiness line.
fn start_sample_app(extra: &[&str]) -> (Guard, String) {
    let mut child = weft()
        .args(["sample-app", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("readiness line");
    let addr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
        .to_owned();
    (Guard(child), addr)
}

#[test]
fn sample_app_serves_http_and_stops_on_sigterm() {
    let (mut app, addr) = start_sample_app(&["--name", "orders", "--version", "v2"]);
    let mut conn = TcpStream::connect(&addr).expect("connect");
    conn.write_all(b"GET /status/418 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 418"), "{response}");
    assert!(response.contains("x-weft-app: orders"), "{response}");
    assert!(response.contains("x-weft-version: v2"), "{response}");

    let pid = app.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = app.0.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "graceful exit on SIGTERM");
}

#[test]
fn sample_app_tcp_echo() {
    let (_app, addr) = start_sample_app(&["--tcp-echo"]);
    let mut conn = TcpStream::connect(&addr).expect("connect");
    conn.write_all(b"hello weft").expect("write");
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut back = Vec::new();
    conn.read_to_end(&mut back).expect("read");
    assert_eq!(back, b"hello weft");
}

#[test]
fn hash_key_prints_what_api_key_secrets_store() {
    use std::io::Write as _;
    let mut child = weft()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"abc\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let out = run(&["gateway"]);
    assert_eq!(out.status.code(), Some(2), "the gateway needs --name");
}

#[test]
fn authz_check_names_the_custom_authorizer_it_cannot_ask() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [240.240.0.12]
  location: MESH_INTERNAL
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: reviews, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: wp, namespace: shop}
spec: {address: 10.0.0.2, labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: fe, namespace: shop, annotations: {weft.dev/client-only: "true"}}
spec: {address: 10.0.0.3, serviceAccount: fe, labels: {weft.dev/node: node-1}}
---
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec:
  extensionProviders:
  - {name: ext, envoyExtAuthzGrpc: {service: 127.0.0.1, port: 9000}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRef: {kind: Service, name: reviews}
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
"#,
    )
    .expect("config");
    let config = dir.path().to_str().expect("utf-8");
    let ask = |path: &str| {
        let out = run(&[
            "authz",
            "check",
            config,
            "--from",
            "shop/fe",
            "--to",
            "shop/reviews",
            "--path",
            path,
        ]);
        (out.status.code(), text(&out.stdout))
    };
    let (code, stdout) = ask("/admin/x");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("CUSTOM policy shop/ext asks provider ext"),
        "{stdout}"
    );
    let (_, stdout) = ask("/public");
    assert!(!stdout.contains("CUSTOM"), "{stdout}");
}

#[test]
fn authz_check_says_how_the_node_reads_request_level_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = repo("examples/demo");
    for f in ["mesh.yaml", "services.yaml", "workloads.yaml"] {
        std::fs::copy(demo.join(f), dir.path().join(f)).expect("copy demo");
    }
    // Sidecar-era: a selector policy allowing only GETs to payments. The
    // node cannot see methods: as in Istio ambient, the rule never matches.
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: billing}
spec:
  selector: {matchLabels: {app: payments}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
",
    )
    .expect("policy");
    let out = run(&[
        "authz",
        "check",
        dir.path().to_str().expect("utf-8"),
        "--from",
        "shop/orders-1",
        "--to",
        "payments.billing.svc.cluster.local",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "denied at the node: {stdout}");
    assert!(
        stdout.contains("AuthorizationPolicy billing/get-only: warning: spec.rules[0].to[0].operation.methods: methods is request-level"),
        "{stdout}"
    );
    assert!(stdout.contains("never matches"), "{stdout}");
}

#[test]
fn authz_check_answers_for_a_caller_from_another_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |exported: &str, labels: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{cluster: west, network: net-west}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: shop, labels: {{{labels}}}}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [240.240.9.2]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-west, namespace: shop}}
spec:
  address: 10.2.0.12
  serviceAccount: reviews
  labels: {{app: reviews, weft.dev/node: node-1}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-from-frontend, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/frontend]}}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: east-west, namespace: weft-system}}
spec:
  gatewayClassName: weft-east-west
  addresses: [{{value: 192.0.2.2}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: east-west, namespace: weft-system}}
spec:
  address: 10.2.0.2
  serviceAccount: east-west
  labels: {{weft.dev/gateway: \"true\", weft.dev/node: node-1}}
---
apiVersion: weft.dev/v1alpha1
kind: RemoteCluster
metadata: {{name: east}}
spec: {{address: \"192.0.2.1:15012\", network: net-east, exportedNamespaces: [{exported}]}}
"
        )
    };
    let path = dir.path().join("mesh.yaml");
    let ask = |from: &str, cluster: &str| {
        let out = run(&[
            "authz",
            "check",
            path.to_str().expect("utf-8"),
            "--from",
            from,
            "--source-cluster",
            cluster,
            "--to",
            "reviews.shop.svc.cluster.local",
        ]);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    std::fs::write(&path, config("shop", "")).expect("config");
    let (code, stdout, stderr) = ask("shop/sa/frontend", "east");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ALLOW")
            && stdout.contains("from cluster east through east-west gateway weft-system/east-west (192.0.2.2:15008)")
            && stdout.contains("the node sees 10.2.0.2 as the caller's address"),
        "{stdout}"
    );
    let (code, stdout, _) = ask("shop/sa/intruder", "east");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("DENY"), "{stdout}");
    // Its own cluster: the ordinary answer.
    let (code, stdout, _) = ask("shop/sa/frontend", "west");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("east-west gateway"), "{stdout}");
    let (code, _, stderr) = ask("shop/sa/frontend", "south");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--source-cluster \"south\"") && stderr.contains("its peers: east"),
        "{stderr}"
    );
    std::fs::write(&path, config("billing", "")).expect("config");
    let (code, stdout, _) = ask("shop/sa/frontend", "east");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("namespace shop is not exported to cluster east"),
        "{stdout}"
    );
    std::fs::write(&path, config("shop", "weft.dev/cluster-local: \"true\"")).expect("config");
    let (code, stdout, _) = ask("shop/sa/frontend", "east");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("cluster-local"), "{stdout}");
}
