//! `weft run --netns <name> [--node <node>] -- <cmd>`: runs an unchanged
//! program as a captured workload (root only). It plays the part a CNI
//! plugin plays in Kubernetes:
//!
//! 1. asks the node proxy (over its attach socket) which workload the
//!    namespace is for, and its address;
//! 2. creates the network namespace, a veth pair (`eth0` inside, `wv…` on
//!    the host), the workload's address and routes;
//! 3. installs nftables rules inside the namespace: outbound TCP is
//!    redirected to the node proxy's port 15001, inbound TCP other than
//!    HBONE (15008) to 15006;
//! 4. attaches the namespace: the node proxy opens its listeners inside;
//! 5. runs the command in the namespace, and on exit (or Ctrl-C) detaches
//!    and deletes the namespace.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use weft_node::capture::{Op, Reply, Request};

/// The host side's address on every veth: the namespace's gateway.
const GATEWAY: &str = "169.254.7.1";

/// Flags of `weft run`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Network namespace to create (a name under /run/netns). It must not
    /// exist yet.
    #[arg(long)]
    netns: String,
    /// The node proxy that carries the workload's traffic.
    #[arg(long, default_value = "node-1")]
    node: String,
    /// The workload, `namespace/name` (default: the workload on that node
    /// named like the network namespace).
    #[arg(long)]
    workload: Option<String>,
    /// The node proxy's attach socket (default `/run/weft/<node>.sock`).
    #[arg(long)]
    attach_socket: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match super::runtime().and_then(|rt| rt.block_on(main(args))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft run: {e}");
            ExitCode::from(125)
        }
    }
}

/// The node proxy's default attach socket.
pub(crate) fn default_socket(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/weft/{node}.sock"))
}

async fn ask(socket: &PathBuf, request: &Request) -> Result<(Reply, UnixStream), String> {
    let mut stream = UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the node proxy at {}: {e} (is `weft node` running as root?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut reply = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut reply)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| format!("{}: unexpected reply: {e}", socket.display()))?;
    match reply.error {
        Some(e) => Err(format!("node proxy: {e}")),
        None => Ok((reply, stream)),
    }
}

async fn main(args: Args) -> Result<ExitCode, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "captured mode needs root (it creates network namespaces and nftables rules); \
             without root, use explicit outbound listeners or SOCKS5 (docs/capture.md)"
                .into(),
        );
    }
    if args.netns.contains('/') || args.netns.is_empty() || args.netns.len() > 64 {
        return Err(format!(
            "--netns {:?}: give a plain name (it is created under /run/netns)",
            args.netns
        ));
    }
    let socket = args
        .attach_socket
        .clone()
        .unwrap_or_else(|| default_socket(&args.node));
    let request = |op| Request {
        op,
        netns: args.netns.clone(),
        workload: args.workload.clone(),
    };
    let (found, _) = ask(&socket, &request(Op::Resolve)).await?;
    let ip = found.ip.ok_or("node proxy: no address for the workload")?;
    let plumbing = Plumbing::create(&args.netns, ip)?;
    let (_, attached) = ask(&socket, &request(Op::Attach)).await?;
    eprintln!(
        "weft run: {} in network namespace {} at {ip}, captured by {}",
        found.workload, args.netns, args.node
    );
    let code = run_command(&args.netns, &args.command).await;
    drop(attached);
    drop(plumbing);
    code
}

/// Runs the command inside the namespace; Ctrl-C or SIGTERM is passed on.
async fn run_command(netns: &str, command: &[String]) -> Result<ExitCode, String> {
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(command)
        .stdin(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let status = tokio::select! {
        status = child.wait() => status,
        () = super::shutdown_signal() => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            child.wait().await
        }
    }
    .map_err(|e| format!("waiting for {command:?}: {e}"))?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128 + 15),
    })
}

/// The namespace and its wiring; removed when dropped.
struct Plumbing {
    netns: String,
    host_if: String,
}

/// Runs `program args…`, turning a failure into a message naming it.
fn sh(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (install iproute2 and nftables)"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Plumbing {
    fn create(netns: &str, ip: IpAddr) -> Result<Plumbing, String> {
        if std::path::Path::new("/run/netns").join(netns).exists() {
            return Err(format!(
                "network namespace {netns} already exists; remove it (`ip netns del {netns}`) or pick another name"
            ));
        }
        let host_if = format!("wv{:08x}", fnv(netns));
        sh("ip", &["netns", "add", netns], None)?;
        let plumbing = Plumbing {
            netns: netns.to_owned(),
            host_if: host_if.clone(),
        };
        let (addr, gw_route) = match ip {
            IpAddr::V4(_) => (format!("{ip}/32"), vec![GATEWAY]),
            IpAddr::V6(_) => (format!("{ip}/128"), vec![]),
        };
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", netns];
            all.extend_from_slice(args);
            sh("ip", &all, None)
        };
        sh(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
            None,
        )?;
        sh("ip", &["link", "set", &host_if, "up"], None)?;
        sh(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/32"), "dev", &host_if],
            None,
        )?;
        sh("ip", &["route", "add", &addr, "dev", &host_if], None)?;
        ns(&["link", "set", "lo", "up"])?;
        ns(&["link", "set", "eth0", "up"])?;
        ns(&["addr", "add", &addr, "dev", "eth0"])?;
        for gw in gw_route {
            ns(&["route", "add", gw, "dev", "eth0"])?;
            ns(&["route", "add", "default", "via", gw, "dev", "eth0"])?;
        }
        sh(
            "ip",
            &["netns", "exec", netns, "nft", "-f", "-"],
            Some(&weft_cni::rules::text(ip, "eth0")),
        )?;
        Ok(plumbing)
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.host_if], None);
        if let Err(e) = sh("ip", &["netns", "del", &self.netns], None) {
            eprintln!("weft run: cleanup: {e}");
        }
    }
}

/// A short stable hash for interface names (15 bytes at most).
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_the_kernel_limit() {
        let name = format!("wv{:08x}", fnv("a-rather-long-namespace-name"));
        assert!(name.len() <= 15, "{name}");
        assert_ne!(fnv("a"), fnv("b"));
    }
}
