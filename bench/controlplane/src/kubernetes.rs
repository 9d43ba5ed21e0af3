//! Control plane scale on Kubernetes (not a test): 1,000 Services and
//! 10,000 Pods on 100 Nodes, served by the fake API server (in this
//! process; no real API server can run here), read by `weft control
//! --kubernetes` as its own process through kube-rs. Reports the initial
//! sync (process start to ready: list, convert, validate, first
//! snapshot), 100 subscribers syncing, the time from a one-pod watch
//! event to all 100 subscribers holding the change (p50/p99), and the
//! control plane's RSS.
//!
//! ```sh
//! cargo build --release -p weft && cargo run --release -p weft-bench --bin controlplane-kubernetes
//! ```
//!
//! Options: `--services N --pods-per-service N --nodes N --subscribers N --changes N`.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weft_kube_fake::FakeApiServer;

/// The simulated proxies use the allocator `weft` itself runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{Guard, http_get, percentile, rss_kib, subscriber};

struct Args {
    services: usize,
    per_service: usize,
    nodes: usize,
    subscribers: usize,
    changes: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        services: 1_000,
        per_service: 10,
        nodes: 100,
        subscribers: 100,
        changes: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it.next().context("flag needs a value")?.parse()?;
        match flag.as_str() {
            "--services" => a.services = value,
            "--pods-per-service" => a.per_service = value,
            "--nodes" => a.nodes = value,
            "--subscribers" => a.subscribers = value,
            "--changes" => a.changes = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Services per namespace.
const PER_NAMESPACE: usize = 100;

fn pod(args: &Args, s: usize, p: usize, ip_salt: usize) -> Value {
    let id = s * args.per_service + p;
    let ns = s / PER_NAMESPACE;
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("svc-{s}-{p}"), "namespace": format!("ns-{ns}"),
                     "labels": {"app": format!("svc-{s}")}},
        "spec": {"nodeName": format!("node-{}", id % args.nodes), "serviceAccountName": format!("svc-{s}"),
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running",
                   "podIP": format!("10.{}.{}.{}", ((id + ip_salt) >> 16) & 255, ((id + ip_salt) >> 8) & 255, (id + ip_salt) & 255),
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn populate(fake: &FakeApiServer, args: &Args) {
    for n in 0..args.nodes {
        fake.apply(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}"),
            "labels": {"topology.kubernetes.io/region": format!("region-{}", n % 3),
                       "topology.kubernetes.io/zone": format!("zone-{}", n % 6)}}}),
        );
    }
    for ns in 0..args.services.div_ceil(PER_NAMESPACE) {
        fake.apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{ns}"),
            "labels": {"istio.io/dataplane-mode": "ambient"}}}),
        );
    }
    for s in 0..args.services {
        fake.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{s}"), "namespace": format!("ns-{}", s / PER_NAMESPACE)},
            "spec": {"clusterIP": format!("10.96.{}.{}", (s >> 8) & 255, s & 255),
                     "selector": {"app": format!("svc-{s}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        for p in 0..args.per_service {
            fake.apply(pod(args, s, p, 0));
        }
    }
}

fn config_version(monitoring: SocketAddr) -> Result<u64> {
    let json: Value = serde_json::from_str(&http_get(monitoring, "/debug/config-status")?)?;
    json["version"].as_u64().context("version")
}

fn rss_mib(pid: u32, field: &str) -> u64 {
    rss_kib(pid, field) / 1024
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let fake = FakeApiServer::start().await?;
    let started = Instant::now();
    populate(&fake, &args);
    let pods = args.services * args.per_service;
    println!(
        "fake API server: {} services, {pods} pods, {} nodes in {:?}",
        args.services,
        args.nodes,
        started.elapsed()
    );
    let tmp = tempfile::tempdir()?;
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig())?;

    let weft = std::env::current_exe()?.with_file_name("weft");
    if !weft.exists() {
        bail!(
            "{} not found: run `cargo build --release -p weft` first",
            weft.display()
        );
    }
    let started = Instant::now();
    let mut child = Command::new(&weft)
        .arg("--log-level")
        .arg(std::env::var("WEFT_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .args(["control", "--kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--ca-dir")
        .arg(tmp.path().join("ca"))
        .args(["--xds-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    let stdout = child.stdout.take().context("stdout")?;
    let _guard = Guard(child);
    // Reading the ready line blocks; the fake API server answers on this
    // runtime's other threads meanwhile.
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let initial_sync = started.elapsed();
    let field = |key: &str| -> Result<SocketAddr> {
        Ok(line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .with_context(|| format!("ready line {line:?}"))?
            .parse()?)
    };
    let xds = field("xds")?;
    let monitoring = field("monitoring")?;
    println!(
        "initial sync (process start to serving): {initial_sync:?}; RSS {} MiB",
        rss_mib(pid, "VmRSS:")
    );

    let expected = args.services + pods;
    let complete = |s: &Arc<weft_xds::ClientState>| {
        s.resources
            .get(weft_xds::ADDRESS_TYPE)
            .map_or(0, |r| r.len())
            >= expected
    };
    let started = Instant::now();
    let subs: Vec<_> = (0..args.subscribers).map(|i| subscriber(xds, i)).collect();
    for s in &subs {
        s.watch().wait_for(complete).await?;
    }
    println!(
        "{} subscribers synced ({expected} resources each) in {:?}; RSS {} MiB",
        subs.len(),
        started.elapsed(),
        rss_mib(pid, "VmRSS:")
    );

    // One pod changes (a new IP, as after a restart); from the watch
    // event to every subscriber holding the new configuration.
    let mut latencies = Vec::new();
    for change in 0..args.changes {
        let version = config_version(monitoring)?;
        let target = (version + 1).to_string();
        let s = (change * 37) % args.services;
        let event = Instant::now();
        fake.apply(pod(&args, s, 0, 1_000_000 + change));
        for sub in &subs {
            sub.watch().wait_for(|st| st.version == target).await?;
            latencies.push(event.elapsed());
        }
        let last = subs[0]
            .state()
            .last_response
            .get(weft_xds::ADDRESS_TYPE)
            .copied();
        println!(
            "change {change}: all {} subscribers after {:?}; last response {last:?} (resources, removed)",
            subs.len(),
            event.elapsed()
        );
    }
    latencies.sort();
    println!(
        "one-pod change to {} subscribers, from the watch event: p50 {:?} p99 {:?}",
        subs.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "control plane RSS now {} MiB, peak {} MiB",
        rss_mib(pid, "VmRSS:"),
        rss_mib(pid, "VmHWM:")
    );
    Ok(())
}
