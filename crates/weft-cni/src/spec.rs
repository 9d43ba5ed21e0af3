//! The CNI specification's side (1.0, accepting configurations of 0.3.0
//! and later): the environment a runtime sets, the plugin's configuration
//! from stdin, the previous plugin's result, and errors as JSON. Pure
//! functions, tested on their own.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};
use weft_core::attach::PodRef;

/// The version this plugin speaks.
pub const LATEST: &str = "1.0.0";
/// The configuration versions it accepts (each with a `prevResult` in the
/// 0.3/0.4/1.0 result format, which is the same where it reads it).
pub const SUPPORTED: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Error codes of the specification.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// A required environment variable is missing or malformed.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// An I/O failure (the rules could not be written).
pub const IO_FAILURE: u32 = 5;
/// The configuration or a message could not be decoded.
pub const DECODE_FAILURE: u32 = 6;
/// The configuration is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// A transient failure: the runtime should try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// The node agent refused the pod (plugin-specific, above 100).
pub const REFUSED: u32 = 101;

/// What the runtime asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A container's namespace was set up.
    Add,
    /// It is being torn down.
    Del,
    /// Is it as `ADD` left it?
    Check,
    /// Which versions are spoken.
    Version,
}

/// The runtime's environment, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on `DEL`).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// The pod from `CNI_ARGS`, when the runtime is Kubernetes'.
    pub pod: Option<PodRef>,
}

/// A failure, as the specification's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The code (1–99 the specification's, above 100 weft's).
    pub code: u32,
    /// What failed.
    pub msg: String,
    /// Detail, for the operator.
    pub details: String,
}

impl CniError {
    /// An error with no detail.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// With detail.
    pub fn detailed(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, version: &str) -> String {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
            .to_string()
    }
}

/// Reads the environment (`CNI_*` variables).
pub fn env(vars: &[(String, String)]) -> Result<Env, CniError> {
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let command = match get("CNI_COMMAND") {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"),
            ));
        }
        None => return Err(CniError::new(INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
    };
    let required = |name: &str| -> Result<String, CniError> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("{name} is not set"),
            )),
        }
    };
    if command == Command::Version {
        return Ok(Env {
            command,
            container_id: String::new(),
            netns: String::new(),
            interface: String::new(),
            pod: None,
        });
    }
    Ok(Env {
        command,
        container_id: required("CNI_CONTAINERID")?,
        // DEL may come after the namespace is gone.
        netns: if command == Command::Del {
            get("CNI_NETNS").unwrap_or("").to_owned()
        } else {
            required("CNI_NETNS")?
        },
        interface: required("CNI_IFNAME")?,
        pod: pod(get("CNI_ARGS").unwrap_or("")),
    })
}

/// The pod named in `CNI_ARGS` (`K=V;K=V`), if it names one.
pub fn pod(args: &str) -> Option<PodRef> {
    let value = |key: &str| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    Some(PodRef {
        namespace: value("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())?,
        name: value("K8S_POD_NAME").filter(|v| !v.is_empty())?,
        uid: value("K8S_POD_UID").unwrap_or_default(),
    })
}

/// The plugin's configuration (its entry in the configuration list, with
/// `prevResult` inserted by the runtime).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The configuration's version.
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// `weft-cni`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The previous plugin's result (required for `ADD` in a chain).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The node agent's attach socket.
    #[serde(default = "default_socket")]
    pub attach_socket: PathBuf,
    /// Where each invocation is logged.
    #[serde(default = "default_log")]
    pub log_file: PathBuf,
    /// Namespaces never handed to the agent (the mesh's own, the
    /// system's).
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
    /// How long the agent may take to answer (seconds).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from("/var/run/weft/attach.sock")
}

fn default_log() -> PathBuf {
    PathBuf::from("/var/run/weft/cni.log")
}

fn default_excluded() -> Vec<String> {
    vec!["kube-system".to_owned(), "weft-system".to_owned()]
}

fn default_timeout() -> u64 {
    30
}

/// Reads the configuration; checks its version.
pub fn config(stdin: &str) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            DECODE_FAILURE,
            "the network configuration is not valid JSON for weft-cni",
        )
        .detailed(e.to_string())
    })?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not one weft-cni speaks ({})",
                conf.cni_version,
                SUPPORTED.join(", ")
            ),
        ));
    }
    if !(1..=300).contains(&conf.timeout_seconds) {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "timeoutSeconds {} is not within 1-300",
                conf.timeout_seconds
            ),
        ));
    }
    Ok(conf)
}

/// The address the previous result gives the pod's interface: the first
/// IP on the interface named `interface` inside the sandbox (or, when the
/// result names no interfaces, its first IP).
pub fn pod_ip(prev_result: &Value, interface: &str) -> Option<IpAddr> {
    let interfaces = prev_result["interfaces"].as_array();
    let wanted = interfaces.and_then(|list| {
        list.iter().position(|i| {
            i["name"] == interface && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
        })
    });
    prev_result["ips"]
        .as_array()?
        .iter()
        .filter(|ip| match (wanted, ip["interface"].as_u64()) {
            (Some(w), Some(i)) => usize::try_from(i).is_ok_and(|i| i == w),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}

/// The result `ADD` prints: the previous one, with the configuration's
/// version (an empty one when there was none).
pub fn result(conf: &NetConf) -> String {
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    result["cniVersion"] = json!(conf.cni_version);
    result.to_string()
}

/// `VERSION`'s answer.
pub fn versions() -> String {
    json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_environment_is_read_as_runtimes_set_it() {
        let add = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=orders-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
            ),
        ]);
        let e = env(&add).expect("add");
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.pod,
            Some(PodRef {
                namespace: "shop".into(),
                name: "orders-1".into(),
                uid: "u-1".into()
            })
        );
        for (pairs, wanted) in [
            (vec![], "CNI_COMMAND is not set"),
            (vec![("CNI_COMMAND", "UPDATE")], "\"UPDATE\""),
            (vec![("CNI_COMMAND", "ADD")], "CNI_CONTAINERID is not set"),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS is not set",
            ),
        ] {
            let e = env(&vars(&pairs)).expect_err("refused");
            assert_eq!(e.code, INVALID_ENVIRONMENT);
            assert!(e.msg.contains(wanted), "{}", e.msg);
        }
        // DEL without a namespace (already gone) is fine; no pod args:
        // not a Kubernetes pod.
        let del = env(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("del");
        assert_eq!((del.netns.as_str(), del.pod), ("", None));
        assert_eq!(pod("K8S_POD_NAMESPACE=shop"), None);
    }

    #[test]
    fn configurations_are_checked() {
        let ok = config(r#"{"cniVersion":"1.0.0","name":"k8s","type":"weft-cni"}"#).expect("ok");
        assert_eq!(ok.attach_socket, PathBuf::from("/var/run/weft/attach.sock"));
        assert!(ok.exclude_namespaces.contains(&"kube-system".to_owned()));
        for (text, code) in [
            ("not json", DECODE_FAILURE),
            (
                r#"{"cniVersion":"0.2.0","type":"weft-cni"}"#,
                INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"weft-cni","timeoutSeconds":0}"#,
                INVALID_CONFIG,
            ),
        ] {
            assert_eq!(config(text).expect_err(text).code, code, "{text}");
        }
    }

    #[test]
    fn the_pod_address_is_the_one_on_its_interface() {
        let prev = json!({
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/cni-1"}],
            "ips": [{"address": "10.22.0.7/16", "gateway": "10.22.0.1", "interface": 2}]});
        assert_eq!(
            pod_ip(&prev, "eth0"),
            Some("10.22.0.7".parse().expect("ip"))
        );
        assert_eq!(
            pod_ip(&prev, "net1"),
            Some("10.22.0.7".parse().expect("ip"))
        );
        let elsewhere = json!({
            "interfaces": [{"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [{"address": "10.22.0.7/16", "interface": 1}]});
        assert_eq!(pod_ip(&elsewhere, "eth0"), None);
        assert_eq!(pod_ip(&json!({}), "eth0"), None);
    }

    #[test]
    fn errors_and_results_are_the_specifications_json() {
        let e = CniError::new(TRY_AGAIN_LATER, "agent not reachable").detailed("no socket");
        let v: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("json");
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "1.0.0");
        let conf = config(
            r#"{"cniVersion":"0.4.0","type":"weft-cni","prevResult":{"cniVersion":"0.4.0","ips":[]}}"#,
        )
        .expect("conf");
        let r: Value = serde_json::from_str(&result(&conf)).expect("result");
        assert_eq!(r, json!({"cniVersion": "0.4.0", "ips": []}));
        let v: Value = serde_json::from_str(&versions()).expect("versions");
        assert_eq!(v["supportedVersions"][3], "1.0.0");
    }
}
