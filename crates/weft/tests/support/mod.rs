//! What the tests that run `weft up` as a user does share: starting it on
//! a directory and waiting for its readiness line, stopping it with
//! SIGTERM (so it stops the apps it started) however a test ends, and
//! plain HTTP/1.1 requests.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `weft up`.
pub(crate) struct Up {
    /// The process.
    pub(crate) child: Child,
    /// What it printed up to its readiness line.
    pub(crate) printed: String,
    _state: tempfile::TempDir,
}

impl Up {
    /// Runs `weft up <dir> <args>` with its own state directory and waits
    /// for "weft up: ready" (panics with what it printed otherwise).
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Up {
        let state = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("up")
            .arg(dir)
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weft up");
        let stdout = child.stdout.take().expect("stdout");
        let mut up = Up {
            child,
            printed: String::new(),
            _state: state,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            up.printed.push_str(&line);
            up.printed.push('\n');
            if line.starts_with("weft up: ready") {
                return up;
            }
        }
        panic!("weft up did not get ready:\n{}", up.printed);
    }
}

impl Up {
    /// Its state directory (tokens, CA, logs).
    pub(crate) fn state(&self) -> &Path {
        self._state.path()
    }
}

impl Drop for Up {
    /// SIGTERM first, so `weft up` stops the apps it started (SIGKILL
    /// would leave them running), then SIGKILL.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a new connection to `addr`, with extra `headers`
/// (`name: value\r\n` each); the whole response as text.
pub(crate) fn http_get(addr: &str, path: &str, headers: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

/// The sum of the samples of `name` whose labels contain every one of
/// `labels`, in Prometheus text.
pub(crate) fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
