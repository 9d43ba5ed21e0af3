//! L4 benchmark (not a test): one bulk TCP stream's throughput, and small
//! request/response latency at a fixed rate, directly over loopback and
//! through weft (client → node-1 → HBONE/mTLS → node-2 → server), plus the
//! memory of 1,000 open tunnels and the CPU cost per 1,000 requests. The
//! control plane, both node proxies and the echo server run in this
//! process, so RSS and CPU figures include them all. Each node proxy gets
//! its own single-threaded runtime on its own thread, as `weft node` runs
//! by default (`--worker-threads 1`), and so does the echo server; the load
//! generator and control plane share the main one. So every hop between
//! client, proxies and server crosses threads, as it crosses processes in
//! a real deployment.
//!
//! Every measure is also taken through two plain TCP relays on the same
//! kind of threads (no TLS, no HTTP/2, no policy): the floor any two-hop
//! proxy pays on this machine, so weft's own cost shows as a ratio to it.
//! Per-thread CPU (user, system, sleeps per request) is printed for each
//! latency run.
//!
//! ```sh
//! cargo run --release -p weft-bench-l4 --bin l4
//! ```

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_control::Options;
use weft_node::NodeOptions;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: bench}
spec:
  hosts: [echo.bench.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: tcp, number: 7000, protocol: TCP}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: bench}
spec: {address: 127.0.2.50, serviceAccount: echo, labels: {app: echo, weft.dev/node: node-2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-local, namespace: bench}
spec:
  hosts: [echo-local.bench.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: tcp, number: 7000, protocol: TCP}]
  workloadSelector: {labels: {app: echo-local}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-local-1, namespace: bench}
spec: {address: 127.0.1.51, serviceAccount: echo, labels: {app: echo-local, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  namespace: bench
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9100=echo.bench.svc.cluster.local:7000, 9101=echo-local.bench.svc.cluster.local:7000"
spec: {address: 127.0.1.50, serviceAccount: client, labels: {app: client, weft.dev/node: node-1}}
"#;

const DIRECT: &str = "127.0.2.50:7000";
const VIA_WEFT: &str = "127.0.1.50:9100";
/// An echo server on node-1 itself: node-1 carries both ends of the
/// tunnel (outbound, HBONE/mTLS to its own inbound, then the server) on its
/// one thread, as a node does for two pods it hosts.
const DIRECT_LOCAL: &str = "127.0.1.51:7000";
const VIA_WEFT_ONE_NODE: &str = "127.0.1.50:9101";
/// The baseline for any two-hop proxy: two plain TCP relays (no TLS, no
/// HTTP/2, no policy), each on its own thread like a node proxy.
const VIA_RELAY: &str = "127.0.1.60:9200";
const RELAY_HOP: &str = "127.0.2.60:9201";

/// Serves `listen` on its own thread and single-threaded runtime (as a
/// process of its own would), handing the listener to `serve`.
fn serve_on_thread<F, Fut>(name: &str, listen: &str, serve: F) -> Result<()>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                serve(TcpListener::from_std(listener).expect("listener")).await;
            });
        })?;
    Ok(())
}

/// Starts a plain TCP relay from `listen` to `upstream` on its own thread:
/// the least a proxy can do per request.
fn start_relay(name: &str, listen: &str, upstream: &'static str) -> Result<()> {
    serve_on_thread(name, listen, move |listener| async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

fn proc_field(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Process CPU time (user + system), from /proc/self/stat clock ticks.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")" the 12th and 13th fields are utime and stime; 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Per-thread CPU (user and system seconds) and voluntary context switches,
/// by thread name, from /proc/self/task. Threads of the same name add up.
fn thread_cpu() -> std::collections::BTreeMap<String, (f64, f64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|(_, n)| n).unwrap_or("?");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 100.0
        };
        let switches = proc_field(
            &dir.join("status").to_string_lossy(),
            "voluntary_ctxt_switches:",
        );
        let entry = out.entry(name.to_string()).or_insert((0.0, 0.0, 0));
        entry.0 += tick(11);
        entry.1 += tick(12);
        entry.2 += switches;
    }
    out
}

/// Prints what each thread spent between two `thread_cpu` readings, per
/// 1,000 requests.
fn print_thread_cpu(
    before: &std::collections::BTreeMap<String, (f64, f64, u64)>,
    after: &std::collections::BTreeMap<String, (f64, f64, u64)>,
    requests: f64,
) {
    for (name, &(user, sys, switches)) in after {
        let (u0, s0, w0) = before.get(name).copied().unwrap_or_default();
        let (user, sys) = (user - u0, sys - s0);
        if user + sys < 0.005 {
            continue;
        }
        println!(
            "    thread {name:<16} user {:.3} s, system {:.3} s per 1,000 requests; {:.2} sleeps per request",
            user * 1000.0 / requests,
            sys * 1000.0 / requests,
            switches.saturating_sub(w0) as f64 / requests
        );
    }
}

/// One echo stream: write `total` bytes while reading them back.
async fn bulk(addr: &str, total: usize) -> Result<f64> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut r, mut w) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            w.write_all(&chunk[..n]).await?;
            sent += n;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await??;
    anyhow::ensure!(got == total, "echoed {got} of {total} bytes");
    Ok(total as f64 / started.elapsed().as_secs_f64() / (1024.0 * 1024.0))
}

/// Requests of 64 bytes at `rate` per second on one connection; returns
/// sorted round-trip times.
async fn latency(addr: &str, rate: u32, seconds: u32) -> Result<Vec<Duration>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = [1u8; 64];
    let mut response = [0u8; 64];
    // Warm up.
    for _ in 0..100 {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
    }
    let mut samples = Vec::with_capacity((rate * seconds) as usize);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..rate * seconds {
        tick.tick().await;
        let started = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok(samples)
}

/// Opens 1,000 connections to `addr`, each carrying one echoed byte, and
/// returns the RSS they added in MiB with the open connections (dropping
/// them closes them).
async fn open_connections(addr: &str) -> Result<(f64, Vec<TcpStream>)> {
    let rss_before = proc_field("/proc/self/status", "VmRSS:");
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        open.push(s);
    }
    let rss_after = proc_field("/proc/self/status", "VmRSS:");
    Ok((rss_after.saturating_sub(rss_before) as f64 / 1024.0, open))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // This machine's kernel backs the heap with 2 MiB transparent huge
    // pages even without madvise, so RSS would grow in 2 MiB steps; with
    // them off it counts 4 KiB pages and per-connection figures mean
    // something.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        println!("(could not turn transparent huge pages off: {e}; RSS figures are coarse)");
    }
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("bench.yaml"), CONFIG)?;
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        "node-1 node-1-token-0123456789\nnode-2 node-2-token-0123456789\n",
    )?;
    let control = weft_control::start(Options {
        bootstrap_tokens: Some(tokens),
        ..Options::ephemeral(config, tmp.path().join("ca"))
    })
    .await?;
    let roots = weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert)?, "root")?;
    let rss_before_nodes = proc_field("/proc/self/status", "VmRSS:");
    // Each node proxy runs as `weft node` does by default: its own
    // single-threaded runtime on its own thread (here a thread, there a
    // process). The load generator and echo server share the main one.
    for n in [1u8, 2] {
        let options = NodeOptions {
            attach_socket: None,
            state_dir: None,
            node: format!("node-{n}"),
            trust_domain: "cluster.local".into(),
            xds_addr: Some(control.xds_addr),
            ca_addr: control.tls_addr.into(),
            roots: roots.clone(),
            token: format!("node-{n}-token-0123456789").into(),
            admin_addr: format!("127.0.{n}.1:0").parse()?,
            metrics_addr: format!("127.0.{n}.1:0").parse()?,
            connect_timeout: Duration::from_secs(2),
        };
        let (started, ready) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("node-{n}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match weft_node::start(options).await {
                        Ok(_node) => {
                            let _ = started.send(Ok(()));
                            // Serves until the process exits.
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            let _ = started.send(Err(e.to_string()));
                        }
                    }
                });
            })?;
        ready.await?.map_err(|e| anyhow::anyhow!("node-{n}: {e}"))?;
    }
    // The echo server is another process in real life: its own thread and
    // runtime here, so the direct baseline pays the same cross-thread
    // wakeups a client and a server in two processes do.
    for (name, addr) in [("echo", DIRECT), ("echo-local", DIRECT_LOCAL)] {
        serve_on_thread(name, addr, |echo| async move {
            let _ = weft_sample_app::serve_tcp_echo(echo, std::future::pending()).await;
        })?;
    }
    // Ready once the outbound listener answers.
    let started = Instant::now();
    while bulk(VIA_WEFT, 1024).await.is_err() || bulk(VIA_WEFT_ONE_NODE, 1024).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the mesh never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle_nodes = proc_field("/proc/self/status", "VmRSS:");
    println!(
        "two node proxies (with their certificates and config), idle: +{} MiB RSS over the control plane alone",
        (rss_idle_nodes.saturating_sub(rss_before_nodes)) / 1024
    );
    // (c) Memory per 1,000 open tunnels, measured first so that no earlier
    // run has left freed memory for them to reuse: the same 1,000 connections made
    // straight to the echo server first (and kept open, so the tunnels
    // cannot reuse their memory), so the client's and the server's own
    // share is known and taken out of the nodes' figure.
    let direct = open_connections(DIRECT).await?;
    let tunneled = open_connections(VIA_WEFT).await?;
    println!(
        "1,000 open connections: direct (client and echo server) +{:.1} MiB RSS; tunneled +{:.1} MiB RSS, so {:.2} MiB per node proxy",
        direct.0,
        tunneled.0,
        (tunneled.0 - direct.0) / 2.0
    );
    drop((direct, tunneled));
    // The baseline relays start after the node proxies' idle memory is read.
    start_relay("relay-1", "127.0.1.60:9200", RELAY_HOP)?;
    start_relay("relay-2", RELAY_HOP, DIRECT)?;

    // (a) Bulk throughput (skipped with WEFT_BENCH_SKIP_BULK=1, for profiling
    // the request path alone).
    let total = 1024 * 1024 * 1024;
    let bulk_runs = if std::env::var_os("WEFT_BENCH_SKIP_BULK").is_some() {
        &[][..]
    } else {
        &[
            ("direct", DIRECT),
            ("plain TCP relay (2 hops, no TLS)", VIA_RELAY),
            ("weft (2 hops, mTLS)", VIA_WEFT),
            (
                "weft, one node with one thread carrying both ends (mTLS)",
                VIA_WEFT_ONE_NODE,
            ),
        ][..]
    };
    for &(what, addr) in bulk_runs {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(bulk(addr, total).await?);
        }
        runs.sort_by(f64::total_cmp);
        println!(
            "bulk echo, 1 GiB each way, {what}: median {:.0} MiB/s (runs {:?})",
            runs[1],
            runs.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }

    // (b) Latency at 1,000 requests per second, and (d) CPU per 1,000
    // requests (skipped with WEFT_BENCH_SKIP_LATENCY=1, for profiling the
    // memory of open connections alone).
    let mut cpu = Vec::new();
    let latency_runs = if std::env::var_os("WEFT_BENCH_SKIP_LATENCY").is_some() {
        &[][..]
    } else {
        &[
            ("direct", DIRECT),
            ("plain TCP relay (2 hops, no TLS)", VIA_RELAY),
            ("weft (2 hops, mTLS)", VIA_WEFT),
        ][..]
    };
    for &(what, addr) in latency_runs {
        let before = cpu_seconds();
        let threads = thread_cpu();
        let samples = latency(addr, 1000, 10).await?;
        let used = cpu_seconds() - before;
        let threads_after = thread_cpu();
        cpu.push(used);
        println!(
            "64-byte request/response at 1,000/s for 10 s, {what}: p50 {:?} p99 {:?} max {:?}; process CPU {:.2} s",
            pct(&samples, 0.5),
            pct(&samples, 0.99),
            samples.last().copied().unwrap_or_default(),
            used
        );
        print_thread_cpu(&threads, &threads_after, samples.len() as f64);
    }
    if let [direct, relay, weft] = cpu[..] {
        println!(
            "CPU added per 1,000 requests: plain relay {:.3} s, weft {:.3} s ({:.2}× the relay's)",
            (relay - direct) / 10.0,
            (weft - direct) / 10.0,
            (weft - direct) / (relay - direct).max(f64::EPSILON)
        );
    }

    control.stop().await;
    Ok(())
}
