//! The CNI chain a container runtime runs, invoked as the CRI does:
//! Debian's reference plugins and `weft-cni`, each with its configuration
//! and the previous result on stdin, on network namespaces the test
//! creates.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
