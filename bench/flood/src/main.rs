//! Legitimate traffic and memory under connection floods (issue 15,
//! findings 3 and 9), against a real `weft up examples/demo` (release
//! build, the `weft` binary beside this one):
//!
//! 1. an idle HTTP/2 flood of the gateway `edge` (127.0.1.50:8080): 16,500
//!    connections from 33 loopback source addresses that send the HTTP/2
//!    preface and an empty SETTINGS frame, then nothing — kept open (and
//!    reopened when closed) for the measurement — while a legitimate client
//!    sends one request every 20 ms, each on a new connection;
//! 2. a TLS-handshake flood of a node's HBONE port (orders, 127.0.1.11:15008):
//!    2,100 TCP connections from one address that never start TLS, while
//!    legitimate calls go frontend → orders (127.0.1.10:9001) on new
//!    connections.
//!
//! The first flood runs twice. Printed: legitimate success ratio and the `weft up` process's resident
//! memory (VmRSS) before and at its peak. Only loopback addresses; every
//! loop is bounded in count and time. Results: docs/benchmarks.md.
//!
//!     cargo build --release -p weft -p weft-bench-flood
//!     target/release/flood     # (CARGO_TARGET_DIR/release/flood)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Flood connections reopened per 20 ms tick at most.
const REOPEN_PER_TICK: usize = 500;

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// One GET on a new connection; whether it was answered 200.
async fn legit(addr: &str) -> bool {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /headers HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.ok()?;
        Some(out.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// An idle connection to `to` from `source`, having sent `hello`.
async fn idle(source: &str, to: SocketAddr, hello: &[&[u8]]) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{source}:0").parse().ok()?).ok()?;
    let mut tcp = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()?;
    for part in hello {
        tcp.write_all(part).await.ok()?;
    }
    Some(tcp)
}

/// Holds `count` idle connections from `sources` to `to` for `hold`,
/// reopening the ones the server closes; meanwhile calls `legit_addr`
/// every 20 ms. Returns (legitimate ok, tries, peak RSS KiB, connections
/// the server closed).
async fn flood(
    pid: u32,
    sources: &[String],
    count: usize,
    to: SocketAddr,
    hello: &'static [&'static [u8]],
    legit_addr: &'static str,
    hold: Duration,
) -> (usize, usize, u64, usize) {
    let per_source = count.div_ceil(sources.len());
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut held = tokio::task::JoinSet::new();
    let mut keep = |source: String, tcp: TcpStream| {
        let closed_tx = closed_tx.clone();
        held.spawn(async move {
            let mut tcp = tcp;
            let mut sink = [0u8; 4096];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            let _ = closed_tx.send(source);
        });
    };
    let mut opened = 0;
    for s in sources {
        for _ in 0..per_source {
            if opened >= count {
                break;
            }
            if let Some(c) = idle(s, to, hello).await {
                keep(s.clone(), c);
                opened += 1;
            }
        }
    }
    println!("  flood: {opened} connections open");
    let (mut ok, mut tries, mut peak, mut closed) = (0, 0, rss_kib(pid), 0);
    let until = Instant::now() + hold;
    while Instant::now() < until {
        tries += 1;
        ok += usize::from(legit(legit_addr).await);
        peak = peak.max(rss_kib(pid));
        // Reopen what the server closed since the last tick, at most
        // REOPEN_PER_TICK (a server refusing at accept closes the reopened
        // connection at once: without the bound this loop would never end).
        for _ in 0..REOPEN_PER_TICK {
            let Ok(source) = closed_rx.try_recv() else {
                break;
            };
            closed += 1;
            if let Some(c) = idle(&source, to, hello).await {
                keep(source, c);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.abort_all();
    (ok, tries, peak, closed)
}

#[tokio::main]
async fn main() -> Result<()> {
    let weft = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .join("weft");
    if !weft.exists() {
        bail!(
            "{} not found: cargo build --release -p weft",
            weft.display()
        );
    }
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let state = std::env::temp_dir().join(format!("weft-flood-{}", std::process::id()));
    let mut child = Command::new(&weft)
        .arg("up")
        .arg(&demo)
        .args(["--background-load", "0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let up = Up(child);
    let pid = up.0.id();
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let found = lines
            .by_ref()
            .any(|l| l.is_ok_and(|l| l.starts_with("weft up: ready")));
        std::thread::spawn(move || for _ in lines {});
        found
    })
    .await?;
    if !ready {
        bail!("weft up did not get ready");
    }
    let start = Instant::now();
    while !(legit("127.0.1.50:8080").await && legit("127.0.1.10:9001").await) {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the demo does not answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = rss_kib(pid);
    println!(
        "weft up (control plane, 2 nodes, waypoint, gateway) RSS at rest: {} MiB",
        baseline / 1024
    );

    let sources: Vec<String> = (1..=33).map(|i| format!("127.0.9.{i}")).collect();
    // Twice: the second round shows whether memory the first one left with
    // the allocator is reused or grows further.
    for round in 1..=2 {
        println!(
            "1.{round} idle HTTP/2 flood of the gateway: 16,500 connections from 33 addresses, 20 s"
        );
        let (ok, tries, peak, closed) = flood(
            pid,
            &sources,
            16_500,
            "127.0.1.50:8080".parse()?,
            &[PREFACE, SETTINGS],
            "127.0.1.50:8080",
            Duration::from_secs(20),
        )
        .await;
        println!(
            "  legitimate: {ok}/{tries} ({:.1} %); RSS peak {} MiB (+{} MiB over rest); flood connections closed by the gateway and reopened: {closed}",
            100.0 * ok as f64 / tries.max(1) as f64,
            peak / 1024,
            peak.saturating_sub(baseline) / 1024
        );
        tokio::time::sleep(Duration::from_secs(12)).await;
        println!("  RSS 12 s after the flood: {} MiB", rss_kib(pid) / 1024);
    }

    println!(
        "2. TLS handshake flood of orders' HBONE port: 2,100 connections from one address, 15 s"
    );
    let (ok, tries, peak, closed) = flood(
        pid,
        &["127.0.9.200".to_owned()],
        2_100,
        "127.0.1.11:15008".parse()?,
        &[],
        "127.0.1.10:9001",
        Duration::from_secs(15),
    )
    .await;
    println!(
        "  legitimate: {ok}/{tries} ({:.1} %); RSS peak {} MiB; flood connections closed by the node and reopened: {closed}",
        100.0 * ok as f64 / tries.max(1) as f64,
        peak / 1024
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
