//! Upgrading the node agent under load (root only), on the one-node
//! cluster of `tests/pods/`: a client pod opens new connections to
//! the server pod's Service continuously (about 200 a second) and holds
//! four long-lived ones, while a second agent process starts beside the
//! first (as the DaemonSet's `maxSurge: 1` rolling update does) and the
//! first is then stopped with SIGTERM (drain deadline 3 s).
//!
//! What must hold: no new connection is refused, reset or answered
//! wrongly at any point; the long-lived connections the client ends
//! during the drain finish cleanly, and those it holds are served until
//! the old agent's drain deadline and closed only then; the new agent
//! serves the node's metrics port afterwards. The counts are printed.

mod pods;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pods::*;

const DRAIN: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Enters `pod`'s network namespace on this thread: the sockets it makes
/// from now on are the pod's.
fn enter(pod_netns: &str) {
    let file = std::fs::File::open(pod_netns).expect("the pod's namespace");
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// One request on a new connection (`Connection: close`).
fn one_request(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: server\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.contains("x-weft-app: server") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", text.lines().next().unwrap_or("")))
    }
}

/// How a long-lived connection ended.
#[derive(Debug)]
enum Ended {
    /// The client closed it after this many requests, all answered.
    Finished(u64),
    /// It was closed under it after this many requests, at this instant.
    Closed(u64, Instant, String),
}

/// A keep-alive connection sending a request every 50 ms until `until`
/// says stop, or until it is closed.
fn long_lived(addr: SocketAddr, until: impl Fn() -> bool) -> Ended {
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return Ended::Closed(0, Instant::now(), format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut served = 0;
    loop {
        if until() {
            return Ended::Finished(served);
        }
        let exchange = (|| -> Result<(), String> {
            writer
                .write_all(b"GET / HTTP/1.1\r\nhost: server\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut length = None;
            let mut status = String::new();
            reader
                .read_line(&mut status)
                .map_err(|e| format!("read: {e}"))?;
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!("status line {status:?}"));
            }
            loop {
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("read: {e}"))?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
            let mut body = vec![0; length.ok_or("no content-length")?];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("body: {e}"))?;
            Ok(())
        })();
        match exchange {
            Ok(()) => served += 1,
            Err(e) => return Ended::Closed(served, Instant::now(), e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_over_without_refusing_a_connection() {
    if let Some(reason) = skip_reason().or_else(runtime_missing) {
        println!("SKIPPED an_upgrade_hands_over_without_refusing_a_connection: {reason}");
        return;
    }
    let (metrics, admin) = (free_port(), free_port());
    let (metrics_addr, admin_addr) = (format!("127.0.0.1:{metrics}"), format!("127.0.0.1:{admin}"));
    let mut cluster = Cluster::start(
        2,
        &[
            "--drain-timeout",
            "3s",
            "--metrics-addr",
            &metrics_addr,
            "--admin-addr",
            &admin_addr,
        ],
    )
    .await;
    let mut old = cluster.node();
    cluster.wait_for_plugin();
    // Whoever holds the hand-over socket may take every pod's traffic: it
    // is the agent's alone.
    let socket = cluster.chain.dir.path().join("node/handover.sock");
    let meta = std::fs::metadata(&socket).expect("the hand-over socket");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let server = cluster.run_pod("shop", "server-1", "server");
    let client = cluster.run_pod("shop", "client-1", "client");
    cluster.serve(&server, "server");
    cluster.until_served(&client, &format!("http://{VIP}/"));
    let service: SocketAddr = format!("{VIP}:80").parse().expect("address");

    // Long-lived connections, opened before the new agent starts: two end
    // 1 s into the old agent's drain, two are held.
    let stopped_at: Arc<OnceLock<Instant>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut held = Vec::new();
    for finishing in [true, true, false, false] {
        let (netns, stopped_at, done) = (client.netns.path(), stopped_at.clone(), done.clone());
        held.push((
            finishing,
            std::thread::spawn(move || {
                enter(&netns);
                long_lived(service, || {
                    done.load(Ordering::Relaxed)
                        || (finishing
                            && stopped_at
                                .get()
                                .is_some_and(|t| t.elapsed() > Duration::from_secs(1)))
                })
            }),
        ));
    }

    // New connections: four clients, 50 a second each.
    let served = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (netns, done, served, failures) = (
            client.netns.path(),
            done.clone(),
            served.clone(),
            failures.clone(),
        );
        load.push(std::thread::spawn(move || {
            enter(&netns);
            let start = Instant::now();
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) {
                match one_request(service) {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures
                        .lock()
                        .expect("failures")
                        .push(format!("{:?}: {e}", start.elapsed())),
                }
                n += 1;
                let next = start + Duration::from_millis(20) * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }));
    }

    std::thread::sleep(Duration::from_secs(1));
    let before = served.load(Ordering::Relaxed);
    // The new agent beside the old; both accept for a while.
    let _new = cluster.node();
    std::thread::sleep(Duration::from_secs(1));
    let beside = served.load(Ordering::Relaxed);
    // The old one is stopped as the kubelet stops it.
    let sigterm = Instant::now();
    stopped_at.set(sigterm).expect("once");
    sh(&["kill", "-TERM", &old.0.id().to_string()]);
    let exited = loop {
        if old.0.try_wait().expect("wait").is_some() {
            break sigterm.elapsed();
        }
        assert!(
            sigterm.elapsed() < DRAIN + Duration::from_secs(10),
            "the old agent did not exit after its drain deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The new agent alone.
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    let ended: Vec<(bool, Ended)> = held
        .into_iter()
        .map(|(finishing, t)| (finishing, t.join().expect("long-lived thread")))
        .collect();
    let served = served.load(Ordering::Relaxed);
    let failures = failures.lock().expect("failures").clone();
    let long: Vec<String> = ended
        .iter()
        .map(|(_, end)| match end {
            Ended::Finished(n) => format!("finished by the client after {n} requests"),
            Ended::Closed(n, at, why) => format!(
                "closed {:?} after SIGTERM after {n} requests ({why})",
                at.duration_since(sigterm)
            ),
        })
        .collect();
    println!(
        "upgrade under load: {served} new connections served ({before} before the new agent, \
         {} beside it, {} after the old one was stopped), {} failed; the old agent exited \
         {exited:?} after SIGTERM (drain deadline {DRAIN:?}); long-lived: {}",
        beside - before,
        served - beside,
        failures.len(),
        long.join("; "),
    );
    assert!(
        failures.is_empty(),
        "new connections failed during the hand-over: {failures:?}"
    );
    assert!(
        served > 500,
        "too few connections to say anything: {served}"
    );
    assert!(exited >= DRAIN, "the old agent left before its deadline");
    for (finishing, end) in &ended {
        match (finishing, end) {
            (true, Ended::Finished(n)) => assert!(*n > 20, "{end:?}"),
            (false, Ended::Closed(n, at, _)) => {
                let after = at.duration_since(sigterm);
                assert!(*n > 20, "{end:?}");
                assert!(
                    after >= DRAIN && after <= exited + Duration::from_secs(1),
                    "a held connection was closed {after:?} after SIGTERM, not at the deadline"
                );
            }
            _ => panic!("a long-lived connection ended wrongly: {end:?}"),
        }
    }

    // The node's metrics port, handed over too, is the new agent's now.
    let mut probe = TcpStream::connect(("127.0.0.1", metrics)).expect("metrics port");
    probe
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n")
        .expect("probe");
    let mut answer = String::new();
    probe.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for pod in [&server, &client] {
        cluster.delete_pod(pod);
    }
}
