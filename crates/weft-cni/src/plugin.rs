//! What each command does, with the node agent, the rules and the log
//! behind [`Host`] so the decisions are tested on their own; [`System`]
//! is the real one (the attach socket, `nsenter` + `nft`, a log file).

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use weft_core::attach::{PodReply, PodRequest};

use crate::spec::{self, CniError, Command, NetConf};

/// What the plugin needs from the machine.
pub trait Host {
    /// Asks the node agent at `socket`; `Err` when it cannot be reached or
    /// does not answer in `timeout`.
    fn ask(
        &self,
        socket: &Path,
        request: &PodRequest,
        timeout: Duration,
    ) -> Result<PodReply, String>;
    /// Writes the redirect rules inside `netns`.
    fn install_rules(&self, netns: &str, ip: IpAddr, interface: &str) -> Result<(), String>;
    /// Removes them (best effort).
    fn remove_rules(&self, netns: &str);
    /// Whether they are in place.
    fn check_rules(&self, netns: &str, ip: IpAddr) -> Result<(), String>;
    /// Appends one line to the log file.
    fn log(&self, file: &Path, line: &str);
}

/// The real machine.
#[derive(Debug, Clone, Copy)]
pub struct System;

impl Host for System {
    fn ask(
        &self,
        socket: &Path,
        request: &PodRequest,
        timeout: Duration,
    ) -> Result<PodReply, String> {
        let mut stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("cannot write to {}: {e}", socket.display()))?;
        let mut answer = String::new();
        BufReader::new(std::io::Read::take(&stream, 64 * 1024))
            .read_line(&mut answer)
            .map_err(|e| {
                format!(
                    "no answer from {} within {timeout:?}: {e}",
                    socket.display()
                )
            })?;
        serde_json::from_str(&answer)
            .map_err(|e| format!("the answer from {} is malformed: {e}", socket.display()))
    }

    fn install_rules(&self, netns: &str, ip: IpAddr, interface: &str) -> Result<(), String> {
        crate::rules::install(netns, ip, interface).map_err(|e| e.to_string())
    }

    fn remove_rules(&self, netns: &str) {
        crate::rules::remove(netns);
    }

    fn check_rules(&self, netns: &str, ip: IpAddr) -> Result<(), String> {
        crate::rules::check(netns, ip).map_err(|e| e.to_string())
    }

    fn log(&self, file: &Path, line: &str) {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{now:.3} {line}");
        }
    }
}

/// The outcome of one invocation: what to print, and the version to
/// print an error in.
#[derive(Debug)]
pub struct Outcome {
    /// The result to print (`None`: nothing), or the error.
    pub output: Result<Option<String>, CniError>,
    /// The configuration's version (the latest when it had none).
    pub version: String,
}

/// Runs one invocation: `vars` the environment, `stdin` the
/// configuration.
pub fn run(vars: &[(String, String)], stdin: &str, host: &dyn Host) -> Outcome {
    let env = match spec::env(vars) {
        Ok(e) => e,
        Err(e) => return failed(e, spec::LATEST),
    };
    if env.command == Command::Version {
        return Outcome {
            output: Ok(Some(spec::versions())),
            version: spec::LATEST.to_owned(),
        };
    }
    let conf = match spec::config(stdin) {
        Ok(c) => c,
        Err(e) => return failed(e, spec::LATEST),
    };
    let output = match env.command {
        Command::Add => add(&env, &conf, host),
        Command::Del => del(&env, &conf, host).map(|()| None),
        Command::Check => check(&env, &conf, host).map(|()| None),
        Command::Version => unreachable_version(),
    };
    let what = env.pod.as_ref().map_or_else(
        || format!("container {}", env.container_id),
        ToString::to_string,
    );
    let outcome = match &output {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error {}: {e}", e.code),
    };
    host.log(
        &conf.log_file,
        &format!("{:?} {what} netns={} {outcome}", env.command, env.netns),
    );
    Outcome {
        output,
        version: conf.cni_version,
    }
}

fn unreachable_version() -> Result<Option<String>, CniError> {
    Ok(Some(spec::versions()))
}

fn failed(e: CniError, version: &str) -> Outcome {
    Outcome {
        output: Err(e),
        version: version.to_owned(),
    }
}

/// The pod to hand over, unless it is not a Kubernetes pod or its
/// namespace is excluded.
fn handled<'a>(env: &'a spec::Env, conf: &NetConf) -> Option<&'a weft_core::attach::PodRef> {
    env.pod
        .as_ref()
        .filter(|p| !conf.exclude_namespaces.contains(&p.namespace))
}

fn add(env: &spec::Env, conf: &NetConf, host: &dyn Host) -> Result<Option<String>, CniError> {
    let Some(pod) = handled(env, conf) else {
        return Ok(Some(spec::result(conf)));
    };
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            spec::INVALID_CONFIG,
            format!("{pod}: weft-cni has no prevResult; chain it after the plugin that gives pods their address"),
        )
    })?;
    let ip = spec::pod_ip(prev, &env.interface);
    let timeout = Duration::from_secs(conf.timeout_seconds);
    let request = PodRequest::Capture {
        pod: pod.clone(),
        netns: env.netns.clone(),
        ip,
        interface: env.interface.clone(),
    };
    let reply = host
        .ask(&conf.attach_socket, &request, timeout)
        .map_err(|why| {
            CniError::new(
                spec::TRY_AGAIN_LATER,
                format!("{pod}: the weft node agent is not reachable; the pod does not start outside the mesh (the runtime retries)"),
            )
            .detailed(why)
        })?;
    if let Some(error) = reply.error {
        return Err(CniError::new(spec::REFUSED, naming(pod, error)));
    }
    if !reply.captured {
        return Ok(Some(spec::result(conf)));
    }
    let Some(ip) = ip else {
        release(pod, conf, host);
        return Err(CniError::new(
            spec::INVALID_CONFIG,
            format!(
                "{pod}: the previous plugin's result gives interface {} no address",
                env.interface
            ),
        ));
    };
    if let Err(why) = host.install_rules(&env.netns, ip, &env.interface) {
        release(pod, conf, host);
        return Err(CniError::new(spec::IO_FAILURE, format!("{pod}: {why}")));
    }
    Ok(Some(spec::result(conf)))
}

/// The agent's message, with the pod named once.
fn naming(pod: &weft_core::attach::PodRef, message: String) -> String {
    if message.contains(&pod.to_string()) {
        message
    } else {
        format!("{pod}: {message}")
    }
}

/// Tells the agent a pod is gone (best effort: an agent that is down
/// finds out when it returns).
fn release(pod: &weft_core::attach::PodRef, conf: &NetConf, host: &dyn Host) {
    let request = PodRequest::Release { pod: pod.clone() };
    if let Err(why) = host.ask(
        &conf.attach_socket,
        &request,
        Duration::from_secs(conf.timeout_seconds),
    ) {
        host.log(
            &conf.log_file,
            &format!("{pod}: could not tell the agent it is released: {why}"),
        );
    }
}

fn del(env: &spec::Env, conf: &NetConf, host: &dyn Host) -> Result<(), CniError> {
    let Some(pod) = handled(env, conf) else {
        return Ok(());
    };
    release(pod, conf, host);
    if !env.netns.is_empty() && Path::new(&env.netns).exists() {
        host.remove_rules(&env.netns);
    }
    Ok(())
}

fn check(env: &spec::Env, conf: &NetConf, host: &dyn Host) -> Result<(), CniError> {
    let Some(pod) = handled(env, conf) else {
        return Ok(());
    };
    let reply = host
        .ask(
            &conf.attach_socket,
            &PodRequest::Check { pod: pod.clone() },
            Duration::from_secs(conf.timeout_seconds),
        )
        .map_err(|why| {
            CniError::new(
                spec::TRY_AGAIN_LATER,
                format!("{pod}: the weft node agent is not reachable"),
            )
            .detailed(why)
        })?;
    if let Some(error) = reply.error {
        return Err(CniError::new(spec::REFUSED, naming(pod, error)));
    }
    if !reply.captured {
        return Ok(());
    }
    let ip = conf
        .prev_result
        .as_ref()
        .and_then(|prev| spec::pod_ip(prev, &env.interface))
        .ok_or_else(|| {
            CniError::new(
                spec::INVALID_CONFIG,
                format!("{pod}: no prevResult address to check"),
            )
        })?;
    host.check_rules(&env.netns, ip)
        .map_err(|why| CniError::new(spec::IO_FAILURE, format!("{pod}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what the plugin did; answers as told.
    #[derive(Default)]
    struct Recorder {
        reply: Option<Result<PodReply, String>>,
        rules_fail: bool,
        calls: RefCell<Vec<String>>,
    }

    impl Host for Recorder {
        fn ask(&self, _: &Path, request: &PodRequest, _: Duration) -> Result<PodReply, String> {
            let op = match request {
                PodRequest::Capture { .. } => "capture",
                PodRequest::Release { .. } => "release",
                PodRequest::Check { .. } => "check",
            };
            self.calls.borrow_mut().push(op.to_owned());
            self.reply.clone().unwrap_or_else(|| Err("no agent".into()))
        }
        fn install_rules(&self, _: &str, ip: IpAddr, _: &str) -> Result<(), String> {
            self.calls.borrow_mut().push(format!("rules {ip}"));
            if self.rules_fail {
                Err("nft failed".into())
            } else {
                Ok(())
            }
        }
        fn remove_rules(&self, _: &str) {
            self.calls.borrow_mut().push("unrules".into());
        }
        fn check_rules(&self, _: &str, _: IpAddr) -> Result<(), String> {
            Ok(())
        }
        fn log(&self, _: &Path, _: &str) {}
    }

    fn vars(command: &str, args: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    const POD: &str = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a;K8S_POD_UID=u";
    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"weft-cni",
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
                      "ips":[{"address":"10.22.0.7/16","interface":0}]}}"#;

    fn captured(yes: bool) -> Option<Result<PodReply, String>> {
        Some(Ok(PodReply {
            captured: yes,
            ..PodReply::default()
        }))
    }

    #[test]
    fn add_writes_rules_only_after_the_agent_captured_the_pod() {
        for (args, reply, rules_fail, calls, code) in [
            // Captured: the agent first, then the rules.
            (
                POD,
                captured(true),
                false,
                vec!["capture", "rules 10.22.0.7"],
                None,
            ),
            // Not captured: untouched.
            (POD, captured(false), false, vec!["capture"], None),
            // Excluded namespace or not a pod: the agent is not asked.
            (
                "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns",
                None,
                false,
                vec![],
                None,
            ),
            ("", None, false, vec![], None),
            // No agent: try again later, no rules.
            (
                POD,
                None,
                false,
                vec!["capture"],
                Some(spec::TRY_AGAIN_LATER),
            ),
            // The agent refuses: the pod does not start.
            (
                POD,
                Some(Ok(PodReply {
                    error: Some("no such pod on node-1".into()),
                    ..PodReply::default()
                })),
                false,
                vec!["capture"],
                Some(spec::REFUSED),
            ),
            // Rules that fail are given back to the agent.
            (
                POD,
                captured(true),
                true,
                vec!["capture", "rules 10.22.0.7", "release"],
                Some(spec::IO_FAILURE),
            ),
        ] {
            let host = Recorder {
                reply,
                rules_fail,
                ..Recorder::default()
            };
            let out = run(&vars("ADD", args), CONF, &host);
            assert_eq!(*host.calls.borrow(), calls, "{args}");
            match (out.output, code) {
                (Ok(Some(result)), None) => {
                    let v: serde_json::Value = serde_json::from_str(&result).expect("json");
                    assert_eq!(v["ips"][0]["address"], "10.22.0.7/16", "passed on");
                }
                (Err(e), Some(code)) => {
                    assert_eq!(e.code, code, "{args}: {e}");
                    assert!(e.msg.contains("pod shop/a"), "names the pod: {e}");
                }
                (other, code) => panic!("{args}: {other:?}, wanted {code:?}"),
            }
        }
    }

    #[test]
    fn del_and_check_tolerate_what_is_gone() {
        let host = Recorder::default();
        let out = run(&vars("DEL", POD), CONF, &host);
        assert!(matches!(out.output, Ok(None)), "{:?}", out.output);
        // The agent is told; the namespace is gone, so no rules to remove.
        assert_eq!(*host.calls.borrow(), ["release"]);
        let host = Recorder {
            reply: captured(true),
            ..Recorder::default()
        };
        assert!(matches!(
            run(&vars("CHECK", POD), CONF, &host).output,
            Ok(None)
        ));
        let version = run(&vars("VERSION", ""), "", &Recorder::default());
        assert!(matches!(version.output, Ok(Some(v)) if v.contains("supportedVersions")));
        let bad = run(&vars("ADD", POD), "{", &Recorder::default());
        assert_eq!(bad.output.expect_err("bad conf").code, spec::DECODE_FAILURE);
    }
}
