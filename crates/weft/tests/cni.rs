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

mod pods;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pods::*;
use serde_json::json;
use weft_core::attach::{PodReply, PodRequest};

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

/// The whole path on Kubernetes, the kubelet's part played by the test:
/// the pods' objects in the (fake) API server, `weft control
/// --kubernetes` reading them, `weft node --kubernetes` deciding from
/// them, the CNI chain (bridge, host-local, weft-cni) setting up each
/// pod's namespace, then the pods' status written as the kubelet would,
/// and each pod's programs run as containers of containerd in it. An
/// unchanged client container reaches the server container's Service by
/// its cluster IP, carried over HBONE; a pod of a namespace without the label
/// is left untouched; the node's own connections (the kubelet's probes)
/// reach a captured pod, another pod's plaintext does not; policy by
/// service account and by pod address holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_set_up_by_the_cni_chain_join_the_mesh() {
    if let Some(reason) = skip_reason().or_else(runtime_missing) {
        println!("SKIPPED pods_set_up_by_the_cni_chain_join_the_mesh: {reason}");
        return;
    }
    let mut cluster = Cluster::start(1, &[]).await;
    let node = cluster.node();
    cluster.wait_for_plugin();
    let server = cluster.run_pod("shop", "server-1", "server");
    let client = cluster.run_pod("shop", "client-1", "client");
    let old = cluster.run_pod("legacy", "old-1", "old");
    assert!(table(&server.netns.path()).is_some(), "server-1 captured");
    assert!(table(&client.netns.path()).is_some(), "client-1 captured");
    assert!(table(&old.netns.path()).is_none(), "legacy/old-1 untouched");

    // The server, unchanged, in its pod; the client calls the Service.
    cluster.serve(&server, "server");
    let url = format!("http://{VIP}/");
    let answer = cluster.until_served(&client, &url);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The kubelet's probes come from the node, in plaintext: let through.
    // A pod outside the mesh is no probe: its plaintext is refused.
    let pod_port = format!("http://{}:8080/", server.ip);
    let probe = Command::new("curl")
        .args(["-s", "-i", "--max-time", "3", &pod_port])
        .output()
        .expect("curl");
    let probe = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.contains("x-weft-app: server"), "probe: {probe}");
    let outsider = cluster.curl(&old, &pod_port);
    assert!(
        !outsider.contains("x-weft-app: server"),
        "plaintext from a pod outside the mesh reached a captured pod: {outsider}"
    );

    // On the wire between the two pods: only TLS to 15008, from the
    // client pod's own address (its tunnels start inside it).
    only_tls_between(&cluster, &client.ip, &server.ip, "secret-path", || {
        let fresh = cluster.curl(&client, &format!("http://{VIP}/anything/secret-path"));
        assert!(fresh.contains("x-weft-app: server"), "{fresh}");
    });

    // A pod that runs before its namespace is enrolled: untouched, then
    // captured where it runs once the namespace is enrolled (reached over
    // HBONE: plaintext to it would be refused), then let go again.
    let late = cluster.run_pod("late", "late-1", "late");
    cluster.serve(&late, "late");
    assert!(table(&late.netns.path()).is_none(), "late-1 untouched");
    let direct = format!("http://{}:8080/", late.ip);
    let from_host = || {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "3", &direct])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).contains("x-weft-app: late")
    };
    wait_for("the pod outside the mesh answering in the clear", from_host);
    enroll(&cluster.fake, "late", true);
    wait_for("late-1 captured once enrolled", || {
        table(&late.netns.path()).is_some()
    });
    wait_for("the client reaching late-1 through the mesh", || {
        cluster.curl(&client, &direct).contains("x-weft-app: late")
    });
    enroll(&cluster.fake, "late", false);
    wait_for("late-1 let go once unenrolled", || {
        table(&late.netns.path()).is_none()
    });
    wait_for("late-1 answering in the clear again", from_host);

    // The agent killed and started again: the pods it had captured (their
    // rules still in place) are served again, from what it kept.
    drop(node);
    let _node = cluster.node();
    let started = Instant::now();
    while !cluster.curl(&client, &url).contains("x-weft-app: server") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the captured pods were not served again after the agent restarted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Policy by service account: only `other` may call the server, so
    // the client (service account `client`) may not; then only `client`.
    let served = |on: bool, what: &str| {
        let started = Instant::now();
        while cluster.curl(&client, &url).contains("x-weft-app: server") != on {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what} never applied"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let allow_only = |sa: &str| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"namespace": "shop", "name": "server-callers"},
            "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": [
                         format!("cluster.local/ns/shop/sa/{sa}")]}}]}]}})
    };
    cluster.fake.apply(allow_only("other"));
    served(false, "an ALLOW for service account other only");
    cluster.fake.apply(allow_only("client"));
    served(true, "an ALLOW for service account client");

    // Policy sees pods: a DENY by the client pod's address holds.
    cluster.fake.apply(
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "no-client-ip"},
        "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"ipBlocks": [format!("{}/32", client.ip)]}}]}]}}),
    );
    served(false, "the ipBlocks DENY");

    for pod in [&server, &client, &old] {
        cluster.delete_pod(pod);
    }
    assert!(
        table(&server.netns.path()).is_none(),
        "DEL removed the rules"
    );
}
