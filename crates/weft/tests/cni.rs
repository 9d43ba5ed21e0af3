//! The CNI plugin in the chain a container runtime runs (root only): the
//! `weft` binary installed as `weft-cni` beside Debian's reference
//! plugins, after `bridge` + `host-local`, invoked exactly as the CRI
//! does (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS` with the pod, `CNI_PATH`, each plugin's configuration with
//! the previous result on stdin) on network namespaces the test creates.
//! The node agent's side is played by a socket server here that records
//! what it is asked and answers by namespace, and checks at the moment it
//! answers that no redirect rule exists yet.
//!
//! What must hold: a captured pod gets its redirect rules only after the
//! agent answered, and the bridge's result is passed on unchanged; a pod
//! the agent does not capture, and one of an excluded namespace (never
//! asked), are untouched; `CHECK` passes; `DEL` tells the agent and
//! removes the rules; with no agent, `ADD` fails "try again later" naming
//! the pod, and no rules are written.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weft_core::attach::{PodReply, PodRequest};

fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces and nftables need root)".into());
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "containernetworking-plugins missing (.ci/run installs it)"
        );
        return Some("containernetworking-plugins is not installed".into());
    }
    None
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The nftables table `ip weft` inside `netns`, if any.
fn table(netns: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["nft", "list", "table", "ip", "weft"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent's stand-in: answers each request by the pod's namespace
/// (`shop` is captured), recording it and whether rules already existed
/// when it answered.
struct Agent {
    asked: Arc<Mutex<Vec<(PodRequest, bool)>>>,
}

impl Agent {
    fn start(socket: &Path) -> Agent {
        let listener = UnixListener::bind(socket).expect("bind the agent socket");
        let asked: Arc<Mutex<Vec<(PodRequest, bool)>>> = Arc::default();
        let record = asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let Ok(request) = serde_json::from_str::<PodRequest>(&line) else {
                    continue;
                };
                let (captured, rules_before) = match &request {
                    PodRequest::Capture { pod, netns, .. } => {
                        (pod.namespace == "shop", table(netns).is_some())
                    }
                    PodRequest::Check { pod } => (pod.namespace == "shop", false),
                    PodRequest::Release { .. } => (false, false),
                };
                record.lock().expect("record").push((request, rules_before));
                let reply = PodReply {
                    captured,
                    ..PodReply::default()
                };
                let _ = writeln!(stream, "{}", serde_json::to_string(&reply).expect("reply"));
            }
        });
        Agent { asked }
    }

    fn requests(&self) -> Vec<(PodRequest, bool)> {
        self.asked.lock().expect("requests").clone()
    }
}

/// The plugins and their chain, in a temporary directory.
struct Chain {
    dir: tempfile::TempDir,
    bin: PathBuf,
    conflist: Value,
    bridge: String,
}

impl Chain {
    /// Chain `n` of this process: its own bridge and subnet.
    fn new(n: u8) -> Chain {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(plugin), bin.join(plugin))
                .expect("link plugin");
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weft"), bin.join("weft-cni"))
            .expect("link weft-cni");
        let bridge = format!("wcni{}{n}", std::process::id() % 100_000);
        let subnet = format!("10.251.{}.0/24", 7 + n);
        let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "weft-test",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "isDefaultGateway": true,
             "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "dataDir": dir.path().join("ipam")}},
            {"type": "weft-cni", "attachSocket": dir.path().join("agent.sock"),
             "logFile": dir.path().join("cni.log")},
        ]});
        Chain {
            dir,
            bin,
            conflist,
            bridge,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// One plugin, as the runtime runs it: its output, or its error JSON.
    fn plugin(
        &self,
        plugin: &Value,
        command: &str,
        netns: &str,
        pod: &str,
        prev: Option<&Value>,
    ) -> Result<Value, Value> {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let kind = plugin["type"].as_str().expect("type");
        let mut child = Command::new(self.bin.join(kind))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id(pod))
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;{pod}"))
            .env("CNI_PATH", &self.bin)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write conf");
        let out = child.wait_with_output().expect("plugin output");
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{kind}: {e}: {text}"))
        };
        if out.status.success() {
            Ok(value)
        } else {
            Err(value)
        }
    }

    /// `ADD` through the chain; the last result.
    fn add(&self, netns: &str, pod: &str) -> Result<Value, Value> {
        let mut prev: Option<Value> = None;
        for plugin in self.conflist["plugins"].as_array().expect("plugins") {
            prev = Some(self.plugin(plugin, "ADD", netns, pod, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// `DEL` or `CHECK` through the chain, in reverse, with the cached
    /// result.
    fn after(&self, command: &str, netns: &str, pod: &str, result: &Value) -> Result<(), Value> {
        let plugins = self.conflist["plugins"].as_array().expect("plugins");
        for plugin in plugins.iter().rev() {
            self.plugin(plugin, command, netns, pod, Some(result))?;
        }
        Ok(())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        sh(&["ip", "link", "del", &self.bridge]);
    }
}

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        assert!(sh(&["ip", "netns", "add", &name]), "ip netns add {name}");
        // What the runtime's loopback plugin does before the chain.
        assert!(sh(&["ip", "-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A container id for a pod's `CNI_ARGS` (letters, digits, dashes).
fn container_id(pod_args: &str) -> String {
    let id: String = pod_args
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("c-{id}")
}

fn pod(ns: &str, name: &str) -> String {
    format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}")
}

#[test]
fn the_plugin_captures_pods_the_agent_takes_and_leaves_the_rest() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED the_plugin_captures_pods_the_agent_takes_and_leaves_the_rest: {reason}");
        return;
    }
    let chain = Chain::new(0);
    let agent = Agent::start(&chain.socket());
    let (a, b, c) = (
        Netns::new("wcni-a"),
        Netns::new("wcni-b"),
        Netns::new("wcni-c"),
    );

    // A captured pod: rules after the agent's answer, the result passed on.
    let result = chain.add(&a.path(), &pod("shop", "a")).expect("ADD shop/a");
    let address = result["ips"][0]["address"].as_str().expect("an address");
    assert!(address.starts_with("10.251.7."), "{result}");
    let ip = address.split('/').next().expect("ip");
    let rules = table(&a.path()).expect("rules in shop/a");
    assert!(
        rules.contains("redirect to :15001") && rules.contains(ip),
        "{rules}"
    );
    let asked = agent.requests();
    match asked.as_slice() {
        [
            (
                PodRequest::Capture {
                    pod,
                    netns,
                    ip: Some(seen),
                    interface,
                },
                rules_before,
            ),
        ] => {
            assert_eq!((pod.name.as_str(), pod.uid.as_str()), ("a", "uid-a"));
            assert_eq!(
                (netns.as_str(), interface.as_str()),
                (a.path().as_str(), "eth0")
            );
            assert_eq!(seen.to_string(), ip);
            assert!(!rules_before, "no rule before the agent answered");
        }
        other => panic!("{other:?}"),
    }
    chain
        .after("CHECK", &a.path(), &pod("shop", "a"), &result)
        .expect("CHECK shop/a");

    // Not captured: untouched. Excluded namespace: the agent is not asked.
    let b_result = chain
        .add(&b.path(), &pod("legacy", "b"))
        .expect("ADD legacy/b");
    assert!(table(&b.path()).is_none(), "legacy/b is untouched");
    let c_result = chain
        .add(&c.path(), &pod("kube-system", "dns"))
        .expect("ADD kube-system/dns");
    assert!(table(&c.path()).is_none());
    assert_eq!(agent.requests().len(), 3, "capture a, check a, capture b");

    // DEL: the agent is told, the rules go.
    chain
        .after("DEL", &a.path(), &pod("shop", "a"), &result)
        .expect("DEL shop/a");
    assert!(table(&a.path()).is_none(), "rules removed");
    assert!(matches!(
        agent.requests().last(),
        Some((PodRequest::Release { pod }, _)) if pod.name == "a"
    ));
    let log = std::fs::read_to_string(chain.dir.path().join("cni.log")).expect("log");
    assert!(
        log.contains("Add pod shop/a") && log.contains("Del pod shop/a"),
        "{log}"
    );

    // No agent: try again later, naming the pod; no rules.
    std::fs::remove_file(chain.socket()).expect("agent gone");
    let refused = chain
        .add(&a.path(), &pod("shop", "a2"))
        .expect_err("no agent, no pod");
    assert_eq!(refused["code"], 11, "{refused}");
    assert!(
        refused["msg"]
            .as_str()
            .is_some_and(|m| m.contains("pod shop/a2")),
        "{refused}"
    );
    assert!(table(&a.path()).is_none());

    for (netns, p, r) in [
        (&b, pod("legacy", "b"), &b_result),
        (&c, pod("kube-system", "dns"), &c_result),
    ] {
        let _ = chain.after("DEL", &netns.path(), &p, r);
    }
}

/// A process killed (and waited for) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weft args…` and returns it with its first stdout line.
fn weft(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    (Child(child), line)
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// The whole path on Kubernetes, the kubelet's part played by the test:
/// the pods' objects in the (fake) API server, `weft control
/// --kubernetes` reading them, `weft node --kubernetes` deciding from
/// them, the CNI chain (bridge, host-local, weft-cni) setting up each
/// pod's namespace, then the pods' status written as the kubelet would.
/// An unchanged client in one pod reaches the server pod's Service by its
/// cluster IP, carried over HBONE; a pod of a namespace without the label
/// is left untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_set_up_by_the_cni_chain_join_the_mesh() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED pods_set_up_by_the_cni_chain_join_the_mesh: {reason}");
        return;
    }
    let fake = weft_kube_fake::FakeApiServer::start()
        .await
        .expect("fake API server");
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}));
    let vip = "10.96.77.80";
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "server"},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "selector": {"app": "server"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
    let pod_object = |ns: &str, name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
            "spec": {"nodeName": "node-1", "serviceAccountName": app,
                     "containers": [{"name": "app", "image": "app"}]}})
    };
    let mut uids = std::collections::HashMap::new();
    for (ns, name, app) in [
        ("shop", "server-1", "server"),
        ("shop", "client-1", "client"),
        ("legacy", "old-1", "old"),
    ] {
        let stored = fake.apply(pod_object(ns, name, app));
        let uid = stored["metadata"]["uid"].as_str().expect("uid").to_owned();
        uids.insert(name, uid);
    }

    // The node's CNI configuration as its network plugin left it (bridge
    // only); the agent installs weft-cni into it.
    let mut chain = Chain::new(1);
    let dir = chain.dir.path().to_owned();
    std::fs::remove_file(chain.bin.join("weft-cni")).expect("no plugin yet");
    let net_d = dir.join("net.d");
    std::fs::create_dir(&net_d).expect("net.d");
    let mut network_only = chain.conflist.clone();
    network_only["plugins"]
        .as_array_mut()
        .expect("plugins")
        .retain(|p| p["type"] != "weft-cni");
    std::fs::write(net_d.join("10-bridge.conflist"), network_only.to_string()).expect("conf");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).expect("kubeconfig");
    std::fs::write(dir.join("tokens"), "node-1 node-1-cni-test-token-0000\n").expect("tokens");
    std::fs::write(dir.join("token"), "node-1-cni-test-token-0000").expect("token");
    let path = |p: &str| dir.join(p).display().to_string();
    let (_control, line) = weft(&[
        "control",
        "--kubernetes",
        "--kubeconfig",
        &path("kubeconfig"),
        "--ca-dir",
        &path("ca"),
        "--bootstrap-tokens",
        &path("tokens"),
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
    ]);
    assert!(line.starts_with("weft control ready"), "{line:?}");
    let socket = chain.socket().display().to_string();
    let (ca, root) = (
        // In-cluster style: the control plane by name, the config stream
        // over mTLS with the node's certificate.
        field(&line, "tls").replace("127.0.0.1", "localhost"),
        field(&line, "root"),
    );
    let (bin_dir, conf_dir) = (chain.bin.display().to_string(), net_d.display().to_string());
    let node_args: Vec<String> = [
        "node",
        "--name",
        "node-1",
        "--kubernetes",
        "--kubeconfig",
        &path("kubeconfig"),
        "--ca-addr",
        &ca,
        "--root-cert",
        &root,
        "--token-file",
        &path("token"),
        "--attach-socket",
        &socket,
        "--state-dir",
        &path("node"),
        "--cni-bin-dir",
        &bin_dir,
        "--cni-conf-dir",
        &conf_dir,
        "--admin-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let (node, line) = weft(&node_args);
    assert!(line.starts_with("weft node node-1 ready"), "{line:?}");
    // The agent installed its plugin: copied, and last in the chain.
    let installed = net_d.join("10-bridge.conflist");
    let started = std::time::Instant::now();
    chain.conflist = loop {
        let list: Value = serde_json::from_str(&std::fs::read_to_string(&installed).expect("conf"))
            .expect("conflist");
        if list["plugins"][1]["type"] == "weft-cni" && chain.bin.join("weft-cni").exists() {
            break list;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the agent did not install its CNI plugin: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    // The runtime sets up each pod's namespace, then the kubelet reports
    // it running.
    let (server_ns, client_ns, old_ns) = (
        Netns::new("wcni-server"),
        Netns::new("wcni-client"),
        Netns::new("wcni-old"),
    );
    let mut results = Vec::new();
    for (netns, ns, name, app) in [
        (&server_ns, "shop", "server-1", "server"),
        (&client_ns, "shop", "client-1", "client"),
        (&old_ns, "legacy", "old-1", "old"),
    ] {
        let args = format!(
            "K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={}",
            uids[name]
        );
        let result = chain
            .add(&netns.path(), &args)
            .unwrap_or_else(|e| panic!("ADD {ns}/{name}: {e}"));
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("address")
            .to_owned();
        let mut object = pod_object(ns, name, app);
        object["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]});
        fake.apply(object);
        results.push((netns, args, result, ip));
    }
    assert!(table(&server_ns.path()).is_some(), "server-1 captured");
    assert!(table(&client_ns.path()).is_some(), "client-1 captured");
    assert!(table(&old_ns.path()).is_none(), "legacy/old-1 untouched");

    // The server, unchanged, in its pod; the client calls the Service.
    let server = Child(
        Command::new("ip")
            .args(["netns", "exec", &server_ns.0, env!("CARGO_BIN_EXE_weft")])
            .args(["sample-app", "--listen", "0.0.0.0:8080", "--name", "server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server app"),
    );
    let curl = |url: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client_ns.0,
                "curl",
                "-s",
                "-i",
                "--max-time",
                "3",
                url,
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = std::time::Instant::now();
    let answer = loop {
        let text = curl(&format!("http://{vip}/"));
        if text.contains("x-weft-app: server") {
            break text;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the client never reached the server through the mesh: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // On the wire between the two pods: only TLS to 15008, from the
    // client pod's own address (its tunnels start inside it).
    let (server_ip, client_ip) = (results[0].3.clone(), results[1].3.clone());
    let pcap = chain.dir.path().join("server.pcap");
    let mut capture = Child(
        Command::new("tcpdump")
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
            .arg(format!("host {server_ip} and tcp"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump"),
    );
    // Ready once it says it listens.
    let mut said = BufReader::new(capture.0.stderr.take().expect("tcpdump stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let n = said.read_line(&mut line).expect("tcpdump starts");
        assert!(n > 0, "tcpdump ended before it listened");
    }
    let fresh = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client_ns.0,
            "curl",
            "-s",
            "-i",
            "-H",
            "connection: close",
        ])
        .arg(format!("http://{vip}/anything/secret-path"))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&fresh.stdout).contains("x-weft-app: server"));
    // SIGTERM: tcpdump writes what it holds before it exits.
    sh(&["kill", "-TERM", &capture.0.id().to_string()]);
    let _ = capture.0.wait();
    let read = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("read capture");
    let packets = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        !packets.trim().is_empty(),
        "nothing captured between the pods"
    );
    for line in packets.lines() {
        assert!(
            line.contains(&format!("{client_ip}.")) && line.contains(&format!("{server_ip}.15008")),
            "only the client pod's address to 15008: {line}"
        );
    }
    let raw = std::fs::read(&pcap).expect("pcap");
    assert!(
        !raw.windows(b"secret-path".len())
            .any(|w| w == b"secret-path"),
        "plaintext on the wire"
    );

    // The agent killed and started again: the pods it had captured (their
    // rules still in place) are served again, from what it kept.
    drop(node);
    let (_node, line) = weft(&node_args);
    assert!(line.starts_with("weft node node-1 ready"), "{line:?}");
    let started = std::time::Instant::now();
    while !curl(&format!("http://{vip}/")).contains("x-weft-app: server") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the captured pods were not served again after the agent restarted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Policy sees pods: a DENY by the client pod's address holds.
    fake.apply(
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "no-client-ip"},
        "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"ipBlocks": [format!("{client_ip}/32")]}}]}]}}),
    );
    let started = std::time::Instant::now();
    while curl(&format!("http://{vip}/")).contains("x-weft-app: server") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the ipBlocks DENY never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(server);

    for (netns, args, result, _) in &results {
        let _ = chain.after("DEL", &netns.path(), args, result);
    }
    assert!(table(&server_ns.path()).is_none(), "DEL removed the rules");
}
