//! Control plane scale benchmark (not a test): 10,000 services and 50,000
//! workloads generated on the fly. Reports validate+translate time, full
//! push time to one proxy, the time for a one-service change to reach 100
//! connected subscribers (p50/p99), and control plane RSS.
//!
//! ```sh
//! cargo build --release -p weft && cargo run --release -p weft-bench --bin controlplane
//! ```
//!
//! Options: `--services N --workloads-per-service N --subscribers N --changes N`.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

/// The simulated proxies use the allocator `weft` itself runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{Guard, cpu_time, http_get, percentile, rss_kib, subscriber};

struct Args {
    services: usize,
    per_service: usize,
    subscribers: usize,
    changes: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        services: 10_000,
        per_service: 5,
        subscribers: 100,
        changes: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it.next().context("flag needs a value")?.parse()?;
        match flag.as_str() {
            "--services" => a.services = value,
            "--workloads-per-service" => a.per_service = value,
            "--subscribers" => a.subscribers = value,
            "--changes" => a.changes = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

const PER_NAMESPACE: usize = 100;

/// One namespace's file: services and their workloads. `port` varies the
/// first service's port so a change touches exactly one service.
fn namespace_yaml(ns: usize, args: &Args, port: u32) -> String {
    let mut out = String::new();
    let first = ns * PER_NAMESPACE;
    for s in first..(first + PER_NAMESPACE).min(args.services) {
        let p = if s == first { port } else { 80 };
        let _ = write!(
            out,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec:\n  hosts: [svc-{s}.ns-{ns}.svc.cluster.local]\n  addresses: [240.{}.{}.{}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{name: http, number: {p}, protocol: HTTP, targetPort: 8080}}]\n  workloadSelector: {{labels: {{app: svc-{s}}}}}\n---\n",
            (s >> 16) & 255,
            (s >> 8) & 255,
            s & 255
        );
        for w in 0..args.per_service {
            let id = s * args.per_service + w;
            let _ = write!(
                out,
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc-{s}-{w}, namespace: ns-{ns}}}\nspec:\n  address: 10.{}.{}.{}\n  serviceAccount: svc-{s}\n  locality: region-{}/zone-{}\n  labels: {{app: svc-{s}, weft.dev/node: node-{}}}\n---\n",
                (id >> 16) & 255,
                (id >> 8) & 255,
                id & 255,
                id % 3,
                id % 6,
                id % 50
            );
        }
    }
    out
}

fn applied_at(monitoring: SocketAddr) -> Result<(u64, SystemTime)> {
    let body = http_get(monitoring, "/debug/config-status")?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    let version = json["version"].as_u64().context("version")?;
    let at = json["applied_at"].as_str().context("applied_at")?;
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)?;
    Ok((version, t.into()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let namespaces = args.services.div_ceil(PER_NAMESPACE);
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config)?;
    let started = Instant::now();
    for ns in 0..namespaces {
        std::fs::write(
            config.join(format!("ns-{ns:04}.yaml")),
            namespace_yaml(ns, &args, 80),
        )?;
    }
    println!(
        "generated {} services, {} workloads in {} files in {:?}",
        args.services,
        args.services * args.per_service,
        namespaces,
        started.elapsed()
    );

    // Validate + translate, in this process.
    let started = Instant::now();
    let loaded = weft_config::load_path(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let validate = started.elapsed();
    let started = Instant::now();
    let set = weft_xds::resources::build(&loaded.snapshot, 1);
    let build = started.elapsed();
    let resources = set.of(weft_xds::ADDRESS_TYPE).map_or(0, |r| r.len());
    drop(set);
    drop(loaded);
    println!(
        "validate+translate: {validate:?}; build xDS resources: {build:?}; {resources} Address resources"
    );

    // The control plane, as its own process.
    let weft = std::env::current_exe()?.with_file_name("weft");
    if !Path::new(&weft).exists() {
        bail!(
            "{} not found: run `cargo build --release -p weft` first",
            weft.display()
        );
    }
    let mut child = Command::new(&weft)
        .arg("--log-level")
        .arg(std::env::var("WEFT_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .args(["control", "--config-dir"])
        .arg(&config)
        .arg("--ca-dir")
        .arg(tmp.path().join("ca"))
        .args([
            "--xds-addr",
            "127.0.0.1:0",
            "--tls-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--monitoring-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // The 100 simulated proxies live in this process, each holding the
    // whole configuration; with transparent huge pages (this kernel uses
    // them even without madvise) their heap growth costs more than the
    // control plane's work. They go off here, after the control plane
    // started with the machine's setting: the harness should cost little.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        println!("(could not turn transparent huge pages off for the subscribers: {e})");
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let _guard = Guard(child);
    let field = |key: &str| -> Result<SocketAddr> {
        Ok(line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .context("ready line")?
            .parse()?)
    };
    let xds = field("xds")?;
    let monitoring = field("monitoring")?;
    println!(
        "control plane RSS after start: {} MiB",
        rss_kib(pid, "VmRSS:") / 1024
    );

    // Full push to one proxy.
    let started = Instant::now();
    let first = subscriber(xds, 0);
    let complete = |s: &Arc<weft_xds::ClientState>| {
        s.resources
            .get(weft_xds::ADDRESS_TYPE)
            .map_or(0, |r| r.len())
            == resources
    };
    first.watch().wait_for(complete).await?;
    let full_push = started.elapsed();
    let held = first
        .state()
        .resources
        .get(weft_xds::ADDRESS_TYPE)
        .map_or(0, |r| r.len());
    println!("full push to one proxy: {full_push:?} ({held} resources)");

    // 100 subscribers.
    let started = Instant::now();
    let cpu_before = cpu_time(pid);
    let own_cpu_before = cpu_time(std::process::id());
    let mut subs = vec![first];
    for i in 1..args.subscribers {
        subs.push(subscriber(xds, i));
    }
    for s in &subs {
        s.watch().wait_for(complete).await?;
    }
    println!(
        "{} subscribers synced in {:?} (control plane CPU {:?}; the subscribers, sharing the machine, {:?}); control plane RSS {} MiB",
        subs.len(),
        started.elapsed(),
        cpu_time(pid).saturating_sub(cpu_before),
        cpu_time(std::process::id()).saturating_sub(own_cpu_before),
        rss_kib(pid, "VmRSS:") / 1024
    );

    // One-service changes.
    let mut from_write = Vec::new();
    let mut from_apply = Vec::new();
    for change in 0..args.changes {
        let (version, _) = applied_at(monitoring)?;
        let port = 81 + u32::try_from(change)?;
        let written = Instant::now();
        let written_at = SystemTime::now();
        let tmp_file = config.join(".ns-0000.tmp");
        std::fs::write(&tmp_file, namespace_yaml(0, &args, port))?;
        std::fs::rename(&tmp_file, config.join("ns-0000.yaml"))?;
        let target = (version + 1).to_string();
        let mut arrivals = Vec::new();
        for s in &subs {
            s.watch().wait_for(|st| st.version == target).await?;
            arrivals.push((written.elapsed(), SystemTime::now()));
        }
        let (_, applied) = applied_at(monitoring)?;
        for (since_write, at) in arrivals {
            from_write.push(since_write);
            from_apply.push(at.duration_since(applied).unwrap_or_default());
        }
        let changed = subs[0]
            .state()
            .last_response
            .get(weft_xds::ADDRESS_TYPE)
            .copied();
        println!(
            "change {change}: applied {:?} after the write; last response {:?} (resources, removed)",
            applied.duration_since(written_at).unwrap_or_default(),
            changed
        );
    }
    from_write.sort();
    from_apply.sort();
    println!(
        "one-service change to {} subscribers, from file write: p50 {:?} p99 {:?}",
        subs.len(),
        percentile(&from_write, 0.5),
        percentile(&from_write, 0.99)
    );
    println!(
        "one-service change to {} subscribers, from snapshot applied: p50 {:?} p99 {:?}",
        subs.len(),
        percentile(&from_apply, 0.5),
        percentile(&from_apply, 0.99)
    );
    println!(
        "control plane RSS now {} MiB, peak {} MiB",
        rss_kib(pid, "VmRSS:") / 1024,
        rss_kib(pid, "VmHWM:") / 1024
    );
    Ok(())
}
