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

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) fn skip_reason() -> Option<String> {
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

pub(crate) fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The nftables table `ip weft` inside `netns`, if any.
pub(crate) fn table(netns: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["nft", "list", "table", "ip", "weft"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The plugins and their chain, in a temporary directory.
pub(crate) struct Chain {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bin: PathBuf,
    pub(crate) conflist: Value,
    bridge: String,
}

impl Chain {
    /// Chain `n` of this process: its own bridge and subnet.
    pub(crate) fn new(n: u8) -> Chain {
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

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// One plugin, as the runtime runs it: its output, or its error JSON.
    pub(crate) fn plugin(
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
    pub(crate) fn add(&self, netns: &str, pod: &str) -> Result<Value, Value> {
        let mut prev: Option<Value> = None;
        for plugin in self.conflist["plugins"].as_array().expect("plugins") {
            prev = Some(self.plugin(plugin, "ADD", netns, pod, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// `DEL` or `CHECK` through the chain, in reverse, with the cached
    /// result.
    pub(crate) fn after(
        &self,
        command: &str,
        netns: &str,
        pod: &str,
        result: &Value,
    ) -> Result<(), Value> {
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

pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        assert!(sh(&["ip", "netns", "add", &name]), "ip netns add {name}");
        // What the runtime's loopback plugin does before the chain.
        assert!(sh(&["ip", "-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    pub(crate) fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A container id for a pod's `CNI_ARGS` (letters, digits, dashes).
pub(crate) fn container_id(pod_args: &str) -> String {
    let id: String = pod_args
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("c-{id}")
}

pub(crate) fn pod(ns: &str, name: &str) -> String {
    format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}")
}

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

/// Why the runtime's part cannot run here, if it cannot.
pub(crate) fn runtime_missing() -> Option<String> {
    for tool in ["containerd", "ctr", "runc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} missing (.ci/run installs containerd and runc)"
            );
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// A containerd of the test's own: root, state and sockets in `dir`, its
/// containers in their own namespace.
pub(crate) struct Containerd {
    dir: PathBuf,
    namespace: String,
    daemon: Child,
    containers: Vec<String>,
    next: AtomicU32,
}

impl Containerd {
    pub(crate) fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             # No Kubernetes CRI here: the test is the kubelet.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let daemon = Child(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("containerd"),
        );
        let runtime = Containerd {
            dir: dir.to_owned(),
            namespace: format!("weft-test-{}", std::process::id()),
            daemon,
            containers: Vec::new(),
            next: AtomicU32::new(0),
        };
        // Ready once it answers.
        let started = Instant::now();
        while !runtime.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        runtime
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// `ctr run` of `command` on `rootfs` in `pod`'s network namespace,
    /// with the `weft` binary mounted at `/weft`: in the background
    /// (`detach`), or waited for with its output.
    pub(crate) fn run(
        &mut self,
        pod: &Pod,
        rootfs: &Path,
        detach: bool,
        command: &[&str],
    ) -> Output {
        let id = format!(
            "{}-{}",
            pod.netns.0,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let network = format!("network:{}", pod.netns.path());
        let weft = format!(
            "type=bind,src={},dst=/weft,options=rbind:ro",
            env!("CARGO_BIN_EXE_weft")
        );
        let rootfs = rootfs.display().to_string();
        let mut args = vec!["run", "--rootfs", "--with-ns", &network, "--mount", &weft];
        args.push(if detach { "--detach" } else { "--rm" });
        args.extend([rootfs.as_str(), id.as_str()]);
        args.extend(command);
        let out = self.ctr(&args);
        if detach {
            assert!(
                out.status.success(),
                "ctr run {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.containers.push(id);
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            self.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
            let started = Instant::now();
            while !self.ctr(&["task", "delete", &id]).status.success()
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.ctr(&["container", "delete", &id]);
        }
        self.ctr(&["namespace", "remove", &self.namespace]);
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        // What runc's shim keeps outside the daemon's own directories.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A root file system in `dir` holding `binaries` and the libraries `ldd`
/// lists for them (and for the `weft` binary mounted at `/weft`).
pub(crate) fn rootfs(dir: &Path, binaries: &[&str]) -> PathBuf {
    for sub in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(sub)).expect("rootfs dir");
    }
    std::fs::write(dir.join("weft"), b"").expect("mount point");
    let weft = env!("CARGO_BIN_EXE_weft");
    for binary in binaries.iter().copied().chain([weft]) {
        let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
        let libraries = String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let own = (binary != weft).then(|| binary.to_owned());
        for file in libraries.into_iter().chain(own) {
            let target = dir.join(file.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
            std::fs::copy(&file, &target).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    }
    dir.to_owned()
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
