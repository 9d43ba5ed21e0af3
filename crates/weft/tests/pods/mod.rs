//! What the tests of pods on a node share (root only): the CNI chain a
//! container runtime runs (Debian's `bridge`, `host-local` and `loopback`,
//! then `weft-cni`), invoked as the CRI does on network namespaces the
//! test creates; a container runtime (containerd 1.6 and runc from
//! Debian, started by the test with its own root, state and socket) that
//! runs each pod's programs in its namespace on a root file system
//! assembled from host files (`ldd`; no image registry is reachable); and
//! a one-node cluster around them: the fake API server holding the pods'
//! objects, `weft control --kubernetes` reading them and the arguments of
//! the node agent (`weft node --kubernetes`).
//!
//! `ctr run --cni` cannot pass the pod metadata the CRI passes
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` in `CNI_ARGS`), so
//! the test creates each pod's namespace, runs the chain on it exactly as
//! the CRI does, then starts the pod's containers in it (`ctr run
//! --with-ns network:…`).

// Each test binary uses a part of this.
#![allow(dead_code)]

mod chain;
mod runtime;

pub(crate) use chain::*;
pub(crate) use runtime::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A process killed (and waited for) when dropped.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weft args…` and returns it with its first stdout line.
pub(crate) fn weft(args: &[&str]) -> (Child, String) {
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

pub(crate) fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// Enrolls namespace `name` in the mesh, or takes it out.
pub(crate) fn enroll(fake: &weft_kube_fake::FakeApiServer, name: &str, enrolled: bool) {
    let labels = if enrolled {
        json!({"istio.io/dataplane-mode": "ambient"})
    } else {
        json!({})
    };
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}));
}

/// Waits up to 20 s for `what` to hold.
pub(crate) fn wait_for(what: &str, mut holds: impl FnMut() -> bool) {
    let started = Instant::now();
    while !holds() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster IP of the `server` Service in [`Cluster`].
pub(crate) const VIP: &str = "10.96.77.80";

/// One node of a cluster whose API is the fake server: namespaces `shop`
/// (enrolled), `legacy` and `late`, Services `server` and `late`, pods
/// `shop/server-1`, `shop/client-1`, `legacy/old-1` and `late/late-1`
/// scheduled on `node-1`; `weft control
/// --kubernetes` running; the node's CNI configuration as its network
/// plugin left it (bridge only).
pub(crate) struct Cluster {
    /// Dropped first: its containers go before their namespaces.
    runtime: Mutex<Containerd>,
    rootfs: PathBuf,
    pub(crate) fake: weft_kube_fake::FakeApiServer,
    pub(crate) chain: Chain,
    /// The pods' uids, by name.
    pub(crate) uids: HashMap<String, String>,
    /// The node agent's arguments.
    pub(crate) node_args: Vec<String>,
    net_d: PathBuf,
    _control: Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The host's probe table the agent made (each test binary runs
        // one cluster at a time).
        sh(&["nft", "delete", "table", "ip", "weft-host"]);
    }
}

/// A pod's object as the test's API server holds it.
pub(crate) fn pod_object(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "serviceAccountName": app,
                 "containers": [{"name": "app", "image": "app"}]}})
}

/// A pod whose namespace the CNI chain set up.
pub(crate) struct Pod {
    pub(crate) netns: Netns,
    /// Its `CNI_ARGS`.
    pub(crate) args: String,
    /// The chain's result.
    pub(crate) result: Value,
    pub(crate) ip: String,
}

impl Cluster {
    /// Starts it with chain `n` (its own bridge and subnet); `node_extra`
    /// is added to the node agent's arguments.
    pub(crate) async fn start(n: u8, node_extra: &[&str]) -> Cluster {
        let fake = weft_kube_fake::FakeApiServer::start()
            .await
            .expect("fake API server");
        fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
        fake.apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}}),
        );
        fake.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}));
        fake.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": "server"},
            "spec": {"clusterIP": VIP, "clusterIPs": [VIP], "selector": {"app": "server"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        fake.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "late", "name": "late"},
            "spec": {"clusterIP": "10.96.77.81", "clusterIPs": ["10.96.77.81"],
                     "selector": {"app": "late"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        let mut uids = HashMap::new();
        for (ns, name, app) in [
            ("shop", "server-1", "server"),
            ("shop", "client-1", "client"),
            ("legacy", "old-1", "old"),
            ("late", "late-1", "late"),
        ] {
            let stored = fake.apply(pod_object(ns, name, app));
            let uid = stored["metadata"]["uid"].as_str().expect("uid").to_owned();
            uids.insert(name.to_owned(), uid);
        }

        // The node's CNI configuration as its network plugin left it
        // (bridge only); the agent installs weft-cni into it.
        let chain = Chain::new(n);
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
        std::fs::write(dir.join("kubeconfig"), fake.kubeconfig()).expect("kubeconfig");
        std::fs::write(dir.join("tokens"), "node-1 node-1-cni-test-token-0000\n").expect("tokens");
        std::fs::write(dir.join("token"), "node-1-cni-test-token-0000").expect("token");
        let path = |p: &str| dir.join(p).display().to_string();
        let (control, line) = weft(&[
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
        // In-cluster style: the control plane by name, the config stream
        // over mTLS with the node's certificate.
        let ca = field(&line, "tls").replace("127.0.0.1", "localhost");
        let root = field(&line, "root");
        let mut node_args: Vec<String> = [
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
            &chain.socket().display().to_string(),
            "--state-dir",
            &path("node"),
            "--cni-bin-dir",
            &chain.bin.display().to_string(),
            "--cni-conf-dir",
            &net_d.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        node_args.extend(node_extra.iter().map(|s| (*s).to_owned()));
        for (flag, default) in [
            ("--admin-addr", "127.0.0.1:0"),
            ("--metrics-addr", "127.0.0.1:0"),
        ] {
            if !node_extra.contains(&flag) {
                node_args.extend([flag.to_owned(), default.to_owned()]);
            }
        }
        let runtime = Mutex::new(Containerd::start(&dir.join("containerd")));
        let rootfs = rootfs(&dir.join("rootfs"), &["/usr/bin/curl"]);
        Cluster {
            runtime,
            rootfs,
            fake,
            chain,
            uids,
            node_args,
            net_d,
            _control: control,
        }
    }

    /// Starts a node agent; returns it once it said it is ready.
    pub(crate) fn node(&self) -> Child {
        let args: Vec<&str> = self.node_args.iter().map(String::as_str).collect();
        let (node, line) = weft(&args);
        assert!(line.starts_with("weft node node-1 ready"), "{line:?}");
        node
    }

    /// Waits until the agent installed its plugin (copied, and last in
    /// the chain), and runs the chain as the node's configuration now is.
    pub(crate) fn wait_for_plugin(&mut self) {
        let installed = self.net_d.join("10-bridge.conflist");
        let started = Instant::now();
        self.chain.conflist = loop {
            let list: Value =
                serde_json::from_str(&std::fs::read_to_string(&installed).expect("conf"))
                    .expect("conflist");
            if list["plugins"][1]["type"] == "weft-cni" && self.chain.bin.join("weft-cni").exists()
            {
                break list;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the agent did not install its CNI plugin: {list}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
    }

    /// The runtime sets up the pod's namespace (`ADD` through the chain),
    /// then the kubelet reports it running.
    pub(crate) fn run_pod(&self, ns: &str, name: &str, app: &str) -> Pod {
        let netns = Netns::new(&format!("wcni-{name}"));
        let args = format!(
            "K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={}",
            self.uids[name]
        );
        let result = self
            .chain
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
        self.fake.apply(object);
        Pod {
            netns,
            args,
            result,
            ip,
        }
    }

    /// `DEL` through the chain, as the runtime does when the pod goes.
    pub(crate) fn delete_pod(&self, pod: &Pod) {
        let _ = self
            .chain
            .after("DEL", &pod.netns.path(), &pod.args, &pod.result);
    }
}

impl Cluster {
    /// Runs the sample app, unchanged, as a container of `pod` (port
    /// 8080, answering as `name`); it runs until the cluster is dropped.
    pub(crate) fn serve(&self, pod: &Pod, name: &str) {
        let command = [
            "/weft",
            "sample-app",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            name,
        ];
        let mut runtime = self.runtime.lock().expect("runtime");
        runtime.run(pod, &self.rootfs, true, &command);
    }

    /// `curl -s -i` run as a container of `pod`: what it printed.
    pub(crate) fn curl(&self, pod: &Pod, url: &str) -> String {
        let command = ["/usr/bin/curl", "-s", "-i", "--max-time", "3", url];
        let mut runtime = self.runtime.lock().expect("runtime");
        let out = runtime.run(pod, &self.rootfs, false, &command);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls `url` from `pod` until the server's answer comes (30 s at
    /// most).
    pub(crate) fn until_served(&self, pod: &Pod, url: &str) -> String {
        let started = Instant::now();
        loop {
            let text = self.curl(pod, url);
            if text.contains("x-weft-app: server") {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the client never reached the server through the mesh: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Captures every TCP packet to or from `server_ip` on the host while
/// `call` runs (tcpdump on all interfaces, the bridge among them), then
/// checks that they all went from `client_ip` to port 15008 and that
/// `marker`, sent in the request, never crossed in the clear.
pub(crate) fn only_tls_between(
    cluster: &Cluster,
    client_ip: &str,
    server_ip: &str,
    marker: &str,
    call: impl FnOnce(),
) {
    let pcap = cluster.chain.dir.path().join(format!("{server_ip}.pcap"));
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
    call();
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
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the wire"
    );
}
