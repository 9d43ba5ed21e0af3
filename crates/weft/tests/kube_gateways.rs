//! Gateways deployed for the user on Kubernetes, end to end: `weft control
//! --kubernetes` (as a process, against the fake API server) creates the
//! ServiceAccount, Deployment and Service of a waypoint Gateway, owned by
//! it; the `weft waypoint` its Deployment describes — run here with those
//! very arguments, the pod's token and the root certificate ConfigMap as
//! the kubelet would mount them — finds its workload by its pod, obtains
//! its certificate with its service-account token over the control
//! plane's host name, and gets ready; the Gateway is `Programmed` once the
//! Deployment has an available replica, with its Service's address; and
//! deleting the Gateway removes what was deployed for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_kube_fake::FakeApiServer;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `check` gives a value (the control plane works in the
/// background), naming `what` if it never does.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over HTTP/1.0; the status code.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

fn start_control(fake: &FakeApiServer, dir: &Path, tls_port: u16) -> Guard {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).expect("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["control", "--kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args([
            "--tls-addr",
            &format!("127.0.0.1:{tls_port}"),
            "--xds-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--proxy-image",
            "weft:test",
            "--tls-dns-name",
            "localhost",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft control");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.starts_with("weft control ready"), "{line:?}");
    Guard(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gateway_is_deployed_runs_and_is_removed_with_it() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}));
    let tmp = tempfile::tempdir().expect("tempdir");
    let tls_port = free_port();
    let _control = start_control(&fake, tmp.path(), tls_port);

    let gateway = fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "waypoint"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}));
    let uid = gateway["metadata"]["uid"].clone();

    // Deployed, owned by the Gateway.
    let deployment = until("the Deployment", || {
        fake.get("apps/v1", "Deployment", "shop", "waypoint")
    })
    .await;
    for (api_version, kind) in [
        ("v1", "ServiceAccount"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
    ] {
        let o = until(kind, || fake.get(api_version, kind, "shop", "waypoint")).await;
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (&json!("Gateway"), &uid, &json!(true)),
            "{kind}"
        );
    }
    let pending = until("Programmed: Pending", || {
        let g = fake.get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )?;
        (condition(&g, "Programmed")?["reason"] == "Pending").then_some(g)
    })
    .await;
    assert_eq!(
        condition(&pending, "Accepted").expect("Accepted")["status"],
        "True"
    );

    // The kubelet's part: the pod, its token and the root ConfigMap.
    let pod_ip = "127.0.3.10";
    let template = &deployment["spec"]["template"];
    fake.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "shop", "name": "waypoint-5d8c-x7k2p",
                     "labels": template["metadata"]["labels"]},
        "spec": {"nodeName": "node-1", "serviceAccountName": template["spec"]["serviceAccountName"],
                 "containers": template["spec"]["containers"]},
        "status": {"phase": "Running", "podIP": pod_ip,
                   "conditions": [{"type": "Ready", "status": "False"}]}}));
    fake.add_token(
        "waypoint-pod-token",
        "system:serviceaccount:shop:waypoint",
        Some("node-1"),
    );
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(secrets.join("tokens")).expect("token dir");
    std::fs::create_dir_all(secrets.join("istio")).expect("root dir");
    std::fs::write(secrets.join("tokens/istio-token"), "waypoint-pod-token").expect("token");
    let roots = until("the root certificate ConfigMap", || {
        fake.get("v1", "ConfigMap", "shop", "istio-ca-root-cert")
    })
    .await;
    std::fs::write(
        secrets.join("istio/root-cert.pem"),
        roots["data"]["root-cert.pem"].as_str().expect("root pem"),
    )
    .expect("root");

    // The container, with its arguments as the Deployment has them
    // (the downward API's variables and the mounts filled in).
    let container = &template["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            a.as_str()
                .expect("arg")
                .replace("$(POD_NAMESPACE)", "shop")
                .replace("$(NODE_NAME)", "node-1")
                .replace("/var/run/secrets", &secrets.display().to_string())
                .replace("0.0.0.0:15020", &format!("{pod_ip}:15020"))
        })
        .collect();
    assert!(
        args.contains(&format!("--ca-addr=localhost:{tls_port}")),
        "{args:?}"
    );
    let mut waypoint = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the waypoint");
    let out = waypoint.stdout.take().expect("stdout");
    let _waypoint = Guard(waypoint);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("ready line");
    assert!(
        line.starts_with("weft waypoint shop/waypoint ready"),
        "{line:?}"
    );
    assert!(line.contains(&format!("hbone={pod_ip}:15008")), "{line:?}");
    let probe = format!("{pod_ip}:15020");
    assert_eq!(http_status(&probe, "/healthz/ready"), Some(200));

    // The Deployment has an available replica; its Service an address.
    let mut d = fake
        .get("apps/v1", "Deployment", "shop", "waypoint")
        .expect("deployment");
    d["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    fake.apply(d);
    let mut s = fake
        .get("v1", "Service", "shop", "waypoint")
        .expect("service");
    s["spec"]["clusterIP"] = json!("10.96.0.50");
    fake.apply(s);
    let programmed = until("Programmed: True", || {
        let g = fake.get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )?;
        (condition(&g, "Programmed")?["status"] == "True").then_some(g)
    })
    .await;
    assert_eq!(
        programmed["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.50"}])
    );

    // Deleted with its Gateway.
    assert!(fake.delete(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        "shop",
        "waypoint"
    ));
    until("everything removed", || {
        let left = [
            ("v1", "ServiceAccount"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
        ]
        .iter()
        .any(|(v, k)| fake.get(v, k, "shop", "waypoint").is_some());
        (!left).then_some(())
    })
    .await;
}

/// Attack: a Gateway named after objects weft did not create (a user's
/// Deployment and ServiceAccount) takes none of them over and runs as
/// nobody's identity; a Gateway beside it is deployed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_never_takes_over_objects_weft_did_not_create() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    let users = fake.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"namespace": "shop", "name": "checkout", "labels": {"app": "checkout"}},
        "spec": {"selector": {"matchLabels": {"app": "checkout"}},
                 "template": {"metadata": {"labels": {"app": "checkout"}},
                              "spec": {"serviceAccountName": "checkout",
                                       "containers": [{"name": "app", "image": "shop/checkout:1"}]}}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"namespace": "shop", "name": "checkout"}}));
    let tmp = tempfile::tempdir().expect("tempdir");
    let _control = start_control(&fake, tmp.path(), free_port());
    let ingress = |name: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"gatewayClassName": "weft",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    };
    fake.apply(ingress("checkout"));
    fake.apply(ingress("edge"));
    // Both Gateways are reconciled in one pass: once edge's Service is
    // there, checkout's turn has come and gone.
    until("edge deployed", || {
        fake.get("v1", "Service", "shop", "edge")
    })
    .await;
    let after = fake
        .get("apps/v1", "Deployment", "shop", "checkout")
        .expect("the user's Deployment");
    assert_eq!(after, users, "the user's Deployment is untouched");
    let account = fake
        .get("v1", "ServiceAccount", "shop", "checkout")
        .expect("the user's ServiceAccount");
    assert!(account["metadata"]["ownerReferences"].is_null());
    assert!(fake.get("v1", "Service", "shop", "checkout").is_none());
}
