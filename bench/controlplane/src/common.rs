//! What both control plane benchmarks share: the control plane's memory
//! from `/proc`, a plain HTTP GET of its monitoring port, the child
//! process guard, percentiles, and a plaintext xDS subscriber.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use weft_xds::client::{ClientOptions, Transport, XdsClient};

/// A `/proc/<pid>/status` field (`VmRSS:`, `VmHWM:`) in KiB.
pub(crate) fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) `pid` has used so far.
#[allow(dead_code)] // one of the two benchmarks reads it
pub(crate) fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th; clock ticks are 100 per second on Linux.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    std::time::Duration::from_millis(ticks * 10)
}

/// The body of `GET path` (monitoring answers local hosts only).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// Kills the child process when dropped.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `p` quantile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A plaintext subscriber to `Address` resources.
pub(crate) fn subscriber(addr: SocketAddr, i: usize) -> XdsClient {
    XdsClient::start(
        Transport::Plaintext(addr),
        ClientOptions {
            node_id: format!("bench-{i}"),
            types: vec![weft_xds::ADDRESS_TYPE.into()],
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            validator: Arc::new(|_, _| Ok(())),
        },
    )
}
