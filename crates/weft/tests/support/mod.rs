//! What the tests that run `weft up` as a user does share: starting it on
//! a directory and waiting for its readiness line, stopping it with
//! SIGTERM (so it stops the apps it started) however a test ends, and
//! plain HTTP/1.1 requests; and, for the tests that start `weft` processes
//! one by one, a child stopped on drop ([`Proc`]).

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `weft up`.
pub(crate) struct Up {
    /// The process.
    pub(crate) child: Child,
    /// What it printed up to its readiness line.
    pub(crate) printed: String,
    /// The rest of its standard output, for [`Up::rest`].
    stdout: BufReader<ChildStdout>,
    _state: tempfile::TempDir,
}

impl Up {
    /// Runs `weft up <dir> <args>` with its own state directory and waits
    /// for "weft up: ready" (panics with what it printed otherwise).
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Up {
        let state = tempfile::tempdir().expect("tempdir");
        // The console's error stream, for tests that check what it shows.
        let stderr =
            std::fs::File::create(state.path().join("console-stderr.txt")).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("up")
            .arg(dir)
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn weft up");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut up = Up {
            child,
            printed: String::new(),
            stdout,
            _state: state,
        };
        loop {
            let mut line = String::new();
            match up.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            up.printed.push_str(&line);
            if line.starts_with("weft up: ready") {
                return up;
            }
        }
        panic!("weft up did not get ready:\n{}", up.printed);
    }

    /// What it printed after its readiness line, up to its exit.
    pub(crate) fn rest(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        rest
    }

    /// What it printed on its error stream so far.
    pub(crate) fn console_errors(&self) -> String {
        std::fs::read_to_string(self.state().join("console-stderr.txt")).unwrap_or_default()
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

/// A child process stopped (SIGTERM, then after 10 s SIGKILL) on drop, so
/// a test that fails still cleans up what it started.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    /// Stops it now and waits for it.
    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}
