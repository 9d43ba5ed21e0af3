//! Load and what it costs: `wrk` (HTTP/1.1 keep-alive) and `h2load`
//! (h2c) runs parsed into requests per second and latency percentiles,
//! the proxy's CPU time over the run (from `/proc/<pid>/stat`), its
//! resident memory, and the memory idle keep-alive connections hold.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One load run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Measure {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The measured processes' CPU seconds per 1,000 requests.
    pub(crate) cpu_per_1000: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`).
const CLK_TCK: f64 = 100.0;

/// The processes' user + system CPU time, in clock ticks.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces).
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `rest` starts at 3.
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            field(14).unwrap_or(0) + field(15).unwrap_or(0)
        })
        .sum()
}

/// The processes' resident memory, KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// `1.23ms`, `850.00us`, `1.02s` in milliseconds.
fn millis(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency <url>`, the CPU of
/// `pids` over it.
pub(crate) fn wrk(url: &str, seconds: u32, connections: u32, pids: &[u32]) -> Result<Measure> {
    let before = cpu_ticks(pids);
    let text = run(Command::new("wrk").args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
        url,
    ]))?;
    let used = cpu_ticks(pids) - before;
    let word = |line: &str, n: usize| line.split_whitespace().nth(n).map(str::to_owned);
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    let rps: f64 = line("Requests/sec:")
        .and_then(|l| word(&l, 1))
        .and_then(|v| v.parse().ok())
        .context("wrk printed no Requests/sec")?;
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| word(l, 0))
        .and_then(|v| v.parse().ok())
        .context("wrk printed no request count")?;
    let p = |pct: &str| {
        line(&format!("{pct}% "))
            .and_then(|l| word(&l, 1))
            .and_then(|v| millis(&v))
    };
    if let Some(errors) = line("Non-2xx") {
        bail!("wrk saw errors from {url}: {errors}");
    }
    Ok(Measure {
        rps,
        p50_ms: p("50").context("no 50%")?,
        p99_ms: p("99").context("no 99%")?,
        cpu_per_1000: used as f64 / CLK_TCK / requests * 1000.0,
    })
}

/// `h2load -t1 -c<connections> -m<streams> -D<seconds> <url>` (h2c), its
/// percentiles from its per-request log, the CPU of `pids` over it.
pub(crate) fn h2load(
    url: &str,
    seconds: u32,
    connections: u32,
    streams: u32,
    pids: &[u32],
    log: &Path,
) -> Result<Measure> {
    // h2load appends to its log: start from an empty one, or an earlier
    // run's requests would count in this one's.
    match std::fs::remove_file(log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", log.display()));
        }
        _ => {}
    }
    let before = cpu_ticks(pids);
    let text = run(Command::new("h2load")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-m{streams}"),
            &format!("-D{seconds}"),
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(url))?;
    let used = cpu_ticks(pids) - before;
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .context("h2load printed no req/s")?;
    let mut times: Vec<f64> = Vec::new();
    let mut failed: std::collections::BTreeMap<String, u64> = Default::default();
    for line in std::fs::read_to_string(log)?.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [_, status, micros, ..] = fields.as_slice() {
            if *status != "200" {
                *failed.entry((*status).to_owned()).or_default() += 1;
            }
            if let Ok(us) = micros.parse::<f64>() {
                times.push(us / 1000.0);
            }
        }
    }
    if !failed.is_empty() || times.is_empty() {
        bail!(
            "h2load against {url}: answers other than 200 (status: count) {failed:?} of {}",
            times.len()
        );
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok(Measure {
        rps,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_per_1000: used as f64 / CLK_TCK / times.len() as f64 * 1000.0,
    })
}

/// Opens `n` HTTP/1.1 keep-alive connections to `addr`, each answered
/// once, and returns them open and idle.
pub(crate) async fn idle_connections(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            .await?;
        // The whole answer (the sample app's is small): headers, then a
        // body of content-length bytes.
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                bail!("{addr} closed a keep-alive connection");
            }
            got.extend_from_slice(&buf[..read]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    break;
                }
            }
        }
        open.push(stream);
    }
    Ok(open)
}
