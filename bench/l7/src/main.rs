//! `bench/l7`: weft's L7 engine against HAProxy and nginx on one machine,
//! in one run, with the same backend program (the sample app, a fresh one
//! per target): `wrk` for HTTP/1.1 keep-alive and `h2load` for HTTP/2
//! (h2c), fixed concurrency, each proxy on one thread. For each target: requests per second, p50 and p99, the
//! proxy's CPU seconds per 1,000 requests, its resident memory after the
//! runs, and what 1,000 idle keep-alive connections add to it.
//!
//! This machine's speed swings by more than a proxy's difference within
//! minutes, so every target is measured in several short rounds, each
//! round in another order; the comparisons are taken within a round and
//! summarised by their median and range (`report.rs`).
//!
//! ```sh
//! cargo build --profile production -p weft -p weft-bench-l7
//! $HOME/.cache/weft-target/production/l7 [SECONDS] [plugins] [--rounds N]
//! ```
//!
//! (`production`: the release profile with the whole program optimized as
//! one, as a deployment builds it; a `--release` build runs the same
//! way.) `instructions.sh` beside it counts instructions per request of
//! one proxy under callgrind, for comparing two builds.
//!
//! SECONDS per run (default 5), N rounds (default 4). With `plugins`,
//! only the direct path and the engine hop are measured, bare and with a
//! no-op and a header-adding Proxy-Wasm plugin (the full run measures
//! those rows too).
//!
//! Needs `wrk`, `h2load` (nghttp2-client), `haproxy` and `nginx` (Debian).
//! Then the mesh paths, both in one `weft up examples/demo` process whose
//! CPU and memory count: (e) the demo's ingress gateway (gateway → HBONE →
//! node → app) and (f) a client's outbound port through a waypoint
//! (node → HBONE → waypoint → HBONE → node → app).

mod hop;
mod load;
mod peers;
mod report;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concurrency of every run: connections, and streams per h2 connection.
const CONNECTIONS: u32 = 32;
const STREAMS: u32 = 10;
/// Idle keep-alive connections whose memory is measured.
const IDLE: usize = 1000;

/// A process stopped when dropped: SIGTERM (so `weft up` stops the apps
/// it started), then SIGKILL if it has not exited within 10 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn spawn(command: &mut Command) -> Result<Proc> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    Ok(Proc(child))
}

/// Waits until `addr` answers `GET /` (60 s at most).
/// A backend (the sample app) of its own for one target, answering: so
/// connections a proxy measured before it pooled to its backend cannot
/// crowd its turn.
async fn start_backend(weft: &std::path::Path) -> Result<(SocketAddr, Proc)> {
    let addr = free_addr()?;
    let app = spawn(
        Command::new(weft)
            .args(["sample-app", "--listen", &addr.to_string(), "--name", "app"])
            .env("RUST_LOG", "warn"),
    )?;
    ready(addr, "the backend").await?;
    Ok((addr, app))
}

async fn ready(addr: SocketAddr, what: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        if load::idle_connections(addr, 1).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{what} did not answer on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One proxy (or none) in front of the backend.
struct Target {
    name: &'static str,
    h1: SocketAddr,
    h2: SocketAddr,
    /// The processes whose CPU and memory count (none for direct).
    pids: Vec<u32>,
    _procs: Vec<Proc>,
}

/// Warms `target` up (its connections to the backend opened): a burst
/// of new connections can overflow the backend's accept queue, and a
/// proxy whose connect timeout passes answers 504 here. That is
/// reported, not fatal: the measured runs must be all 200.
async fn warm(target: &Target, dir: &std::path::Path) -> Result<()> {
    ready(target.h1, target.name).await?;
    eprintln!("== {}: warming up", target.name);
    if let Err(e) = load::wrk(&url(target.h1), 2, CONNECTIONS, &target.pids) {
        eprintln!("== {}: warm-up (HTTP/1.1): {e:#}", target.name);
    }
    let log = dir.join(format!("{}.warm.log", target.name));
    if let Err(e) = load::h2load(&url(target.h2), 2, CONNECTIONS, STREAMS, &target.pids, &log) {
        eprintln!("== {}: warm-up (HTTP/2): {e:#}", target.name);
    }
    Ok(())
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// One round of `target`: `wrk`, then `h2load`, `seconds` each.
fn round(target: &Target, seconds: u32, dir: &std::path::Path) -> Result<report::Round> {
    eprintln!("== {}: wrk {seconds} s", target.name);
    let h1 = load::wrk(&url(target.h1), seconds, CONNECTIONS, &target.pids)?;
    eprintln!("== {}: h2load {seconds} s", target.name);
    let log = dir.join(format!("{}.h2load.log", target.name));
    let h2 = load::h2load(
        &url(target.h2),
        seconds,
        CONNECTIONS,
        STREAMS,
        &target.pids,
        &log,
    )?;
    Ok(report::Round { h1, h2 })
}

/// `target`'s resident memory, and what {IDLE} idle keep-alive
/// connections add to it.
async fn memory(target: &Target) -> report::Memory {
    let rss = load::rss_kib(&target.pids);
    eprintln!("== {}: {IDLE} idle keep-alive connections", target.name);
    let idle = match load::idle_connections(target.h1, IDLE).await {
        Ok(idle) => idle,
        Err(e) => {
            eprintln!("== {}: idle connections not measured: {e}", target.name);
            Vec::new()
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_idle = if idle.len() == IDLE {
        load::rss_kib(&target.pids)
    } else {
        0
    };
    drop(idle);
    report::Memory {
        rss_mib: rss as f64 / 1024.0,
        idle_mib_per_1000: if with_idle == 0 {
            f64::NAN
        } else {
            with_idle.saturating_sub(rss) as f64 / 1024.0 * 1000.0 / IDLE as f64
        },
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hop") {
        let listen = args
            .get(2)
            .context("hop LISTEN UPSTREAM [PLUGIN]")?
            .parse()?;
        let upstream = args
            .get(3)
            .context("hop LISTEN UPSTREAM [PLUGIN]")?
            .parse()?;
        return hop::run(listen, upstream, args.get(4).map(String::as_str));
    }
    let (mut seconds, mut rounds, mut only_plugins) = (5, 4, false);
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "plugins" => only_plugins = true,
            "--rounds" => {
                rounds = rest
                    .next()
                    .context("--rounds N")?
                    .parse()
                    .context("--rounds N")?;
            }
            n => seconds = n.parse().context("l7 [SECONDS] [plugins] [--rounds N]")?,
        }
    }
    if rounds == 0 || seconds == 0 {
        bail!("SECONDS and --rounds must be at least 1");
    }
    tokio::runtime::Runtime::new()?.block_on(bench(seconds, rounds, only_plugins))
}

async fn bench(seconds: u32, rounds: usize, only_plugins: bool) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-file limit")?;
    for tool in ["wrk", "h2load", "haproxy", "nginx"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .status
            .success();
        if !found {
            bail!("{tool} is not installed (apt-get install wrk nghttp2-client haproxy nginx)");
        }
    }
    let me = std::env::current_exe()?;
    let weft = me.with_file_name("weft");
    if !weft.exists() {
        bail!(
            "{} is missing: cargo build --release -p weft",
            weft.display()
        );
    }
    let dir = tempfile::tempdir()?;

    let (backend, app) = start_backend(&weft).await?;
    eprintln!("backend (the sample app) on {backend}, pid {}", app.0.id());

    let mut targets = vec![Target {
        name: "direct",
        h1: backend,
        h2: backend,
        pids: vec![],
        _procs: vec![app],
    }];
    let hop = free_addr()?;
    let (backend, app) = start_backend(&weft).await?;
    let weft_hop = spawn(Command::new(&me).args(["hop", &hop.to_string(), &backend.to_string()]))?;
    targets.push(Target {
        name: "weft engine",
        h1: hop,
        h2: hop,
        pids: vec![weft_hop.0.id()],
        _procs: vec![weft_hop, app],
    });
    // (b') The same hop with one Proxy-Wasm plugin on every request.
    for (name, kind) in [
        ("weft engine + no-op plugin", "noop"),
        ("weft engine + header plugin", "header"),
    ] {
        let hop = free_addr()?;
        let (backend, app) = start_backend(&weft).await?;
        let proc =
            spawn(Command::new(&me).args(["hop", &hop.to_string(), &backend.to_string(), kind]))?;
        targets.push(Target {
            name,
            h1: hop,
            h2: hop,
            pids: vec![proc.0.id()],
            _procs: vec![proc, app],
        });
    }
    if only_plugins {
        return run_and_print(&targets, seconds, rounds, dir.path(), None).await;
    }
    let (h1, h2) = (free_addr()?, free_addr()?);
    let (backend, app) = start_backend(&weft).await?;
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, peers::haproxy(h1, h2, backend))?;
    let haproxy = spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&config))?;
    targets.push(Target {
        name: "HAProxy",
        h1,
        h2,
        pids: vec![haproxy.0.id()],
        _procs: vec![haproxy, app],
    });
    let (h1, h2) = (free_addr()?, free_addr()?);
    let (backend, app) = start_backend(&weft).await?;
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let config = nginx_dir.join("nginx.conf");
    std::fs::write(&config, peers::nginx(h1, h2, backend, &nginx_dir))?;
    let nginx = spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&nginx_dir),
    )?;
    targets.push(Target {
        name: "nginx",
        h1,
        h2,
        pids: vec![nginx.0.id()],
        _procs: vec![nginx, app],
    });

    // (e) The mesh path: the demo's ingress gateway `edge` (HTTP listener,
    // then HBONE/mTLS to the frontend's node, then the frontend, a sample
    // app), all of weft in the one `weft up` process.
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let up = spawn(
        Command::new(&weft)
            .args(["--log-level", "warn", "up"])
            .arg(&demo)
            .arg("--state-dir")
            .arg(dir.path().join("up"))
            .args(["--background-load", "0"]),
    )?;
    let edge: SocketAddr = "127.0.1.50:8080".parse()?;
    let up_pid = up.0.id();
    targets.push(Target {
        name: "weft gateway (mesh)",
        h1: edge,
        h2: edge,
        pids: vec![up_pid],
        _procs: vec![up],
    });
    // (f) The path through a waypoint, in the same `weft up`: frontend's
    // outbound listener for reviews (node-1), HBONE to the waypoint
    // shop-waypoint (which routes each request), HBONE to a reviews
    // endpoint's node, then the app. The load generator stands in for
    // frontend on its outbound port.
    let via_waypoint: SocketAddr = "127.0.1.10:9002".parse()?;
    targets.push(Target {
        name: "weft via waypoint (mesh)",
        h1: via_waypoint,
        h2: via_waypoint,
        pids: vec![up_pid],
        _procs: Vec::new(),
    });

    run_and_print(&targets, seconds, rounds, dir.path(), Some(&nginx_dir)).await
}

/// Warms every target up, then measures them in `rounds` rounds, each
/// in another order (rotated, every other one reversed), so that a slow
/// stretch of the machine falls on different targets and every
/// comparison can be made within a round; then each target's memory.
async fn run_and_print(
    targets: &[Target],
    seconds: u32,
    rounds: usize,
    dir: &std::path::Path,
    nginx_dir: Option<&std::path::Path>,
) -> Result<()> {
    for target in targets {
        warm(target, dir).await?;
    }
    let n = targets.len();
    let mut measured: Vec<Vec<Result<report::Round, String>>> = vec![Vec::new(); n];
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..n).map(|i| (i + r) % n).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let target = &targets[i];
            eprintln!("== round {}/{rounds}", r + 1);
            let result = round(target, seconds, dir);
            if let (Err(_), "nginx", Some(nginx_dir)) = (&result, target.name, nginx_dir) {
                let log = std::fs::read_to_string(nginx_dir.join("error.log")).unwrap_or_default();
                eprintln!(
                    "nginx's error log:\n{}",
                    log.lines().take(5).collect::<Vec<_>>().join("\n")
                );
            }
            // One target failing a round (a peer's connect timeouts, say)
            // is reported in its row; the others still count.
            measured[i].push(result.map_err(|e| {
                eprintln!("== {}: not measured: {e:#}", target.name);
                format!("{e:#}")
            }));
        }
    }
    let mut results = Vec::new();
    for (target, rounds) in targets.iter().zip(measured) {
        results.push(report::Target {
            name: target.name,
            rounds,
            memory: memory(target).await,
        });
    }
    report::print(&results, seconds, CONNECTIONS, STREAMS, IDLE);
    Ok(())
}
