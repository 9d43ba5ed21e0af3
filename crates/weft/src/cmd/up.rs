//! `weft up <dir>`: a whole mesh on this machine, no root needed — the
//! control plane on 127.0.0.1, one node proxy per node named in the
//! configuration (node N on 127.0.N.1), and the apps the workloads'
//! `weft.dev/run` annotations describe. Ctrl-C stops all of it and says
//! what it stopped.
//!
//! The console shows what a user needs: the summary table, the
//! configuration's warnings, warnings and errors as they happen, and the
//! `ready` line. Everything is logged to files under `<state>/logs/`, one
//! per process: `weft-up.log` (control plane, nodes, waypoints, gateways)
//! and `<namespace>-<name>.log` per app. `--verbose` puts the full log
//! stream on the console as well.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use weft_config::{LoadError, load_path};
use weft_control::{Debounce, Options};
use weft_core::model::{Snapshot, WorkloadAddress};
use weft_node::NodeOptions;
use weft_waypoint::fronts::setup::WaypointOptions;

/// A console line that may go nowhere: after Ctrl-C the reader of our
/// standard output may be gone, and that must not stop the shutdown.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Flags of `weft up`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory of YAML resources describing the mesh and its apps.
    dir: PathBuf,
    /// Where CA files, tokens and app logs go.
    #[arg(long, default_value = ".weft")]
    state_dir: PathBuf,
    /// On Ctrl-C or SIGTERM, how long open connections may take to finish.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "5s")]
    drain_timeout: Duration,
    /// How often the control plane scrapes the proxies for the service
    /// graph (`weft graph`, the dashboard).
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "2s")]
    scrape_interval: Duration,
    /// Calls per second `weft up` sends through each outbound listener and
    /// gateway listener, so the service graph shows traffic at once (0:
    /// none).
    #[arg(long, default_value_t = 2.0)]
    background_load: f64,
    /// Also print every log line on the console (they always go to
    /// `<state>/logs/weft-up.log`).
    #[arg(long, short)]
    verbose: bool,
}

/// The log file of `weft up`'s own components.
const LOG_FILE: &str = "weft-up.log";

/// Logs to `<state>/logs/weft-up.log` (created 0600: logs name identities
/// and addresses) at `level` (default `info`), and to the console only
/// warnings and errors — or everything with `--verbose`.
fn init_logging(args: &Args, level: Option<&str>, json: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let logs = args.state_dir.join("logs");
    weft_ca::secret::private_dir(&args.state_dir).map_err(|e| e.to_string())?;
    weft_ca::secret::private_dir(&logs).map_err(|e| e.to_string())?;
    let path = logs.join(LOG_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let filter = || match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let to_file = fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    let to_file = if json {
        to_file.json().with_filter(filter()).boxed()
    } else {
        to_file.with_filter(filter()).boxed()
    };
    let console = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(if args.verbose {
            filter()
        } else {
            EnvFilter::new("warn")
        });
    tracing_subscriber::registry()
        .with(to_file)
        .with(console)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// Node N's address: `node-N` names give N; other names are numbered in
/// sorted order after the highest `node-N`.
pub(crate) fn node_numbers(names: &BTreeSet<String>) -> Vec<(String, u8)> {
    let explicit = |n: &str| {
        n.strip_prefix("node-")
            .and_then(|d| d.parse::<u8>().ok())
            .filter(|d| *d > 0)
    };
    let mut next = names.iter().filter_map(|n| explicit(n)).max().unwrap_or(0);
    names
        .iter()
        .filter_map(|n| match explicit(n) {
            Some(d) => Some((n.clone(), d)),
            None => {
                next = next.checked_add(1)?;
                Some((n.clone(), next))
            }
        })
        .collect()
}

struct Apps(Vec<(String, Child)>);

impl Drop for Apps {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn run(args: Args, level: Option<&str>, json: bool) -> ExitCode {
    if let Err(e) = init_logging(&args, level, json) {
        eprintln!("weft up: {e}");
        return ExitCode::from(2);
    }
    let config = match load_path(&args.dir) {
        Ok(c) => c,
        Err(LoadError::Invalid(problems)) => {
            eprintln!("weft up: {} has problems:\n{problems}", args.dir.display());
            return ExitCode::from(1);
        }
        Err(LoadError::Read(e)) => {
            eprintln!("weft up: {e}");
            return ExitCode::from(2);
        }
    };
    let result = super::runtime().and_then(|rt| rt.block_on(up(&args, &config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft up: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where an L7 proxy's metrics are served: a waypoint's on its own
/// address (reached by the mesh only), a gateway's never on its public
/// address but on loopback, 127.0.0.1:15090 for the first gateway (by
/// name), 15091 for the next, …
fn proxy_metrics_addr(snapshot: &Snapshot, w: &weft_core::model::Workload) -> Option<SocketAddr> {
    let WorkloadAddress::Ip(ip) = &w.address else {
        return None;
    };
    if !w.gateway {
        return Some(SocketAddr::new(*ip, 15020));
    }
    let index = snapshot
        .workloads
        .values()
        .filter(|g| g.gateway)
        .position(|g| g.name == w.name)?;
    let port = 15090 + u16::try_from(index).ok()?;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

async fn up(args: &Args, config: &weft_config::Config) -> Result<(), String> {
    let snapshot = &config.snapshot;
    let state = &args.state_dir;
    // The state directory holds the bootstrap tokens and the CA: 0700.
    // The state directory (bootstrap tokens, the CA) and its logs were
    // made 0700 with the log file.
    let names: BTreeSet<String> = snapshot
        .workloads
        .values()
        .filter_map(|w| w.node.clone())
        .collect();
    let nodes = node_numbers(&names);
    let tokens: Vec<(String, u8, String)> = nodes
        .iter()
        .map(|(n, i)| Ok((n.clone(), *i, weft_ca::secret::random_token(32)?)))
        .collect::<Result<_, weft_ca::secret::SecretError>>()
        .map_err(|e| e.to_string())?;
    let token_file = state.join("bootstrap-tokens");
    let lines: String = tokens
        .iter()
        .map(|(n, _, t)| format!("{n} {t}\n"))
        .collect();
    weft_ca::secret::write_private(&token_file, lines.as_bytes()).map_err(|e| e.to_string())?;

    let local = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    // Every proxy's metrics, for the service graph: nodes, then waypoints
    // and gateways.
    let mut targets: Vec<weft_control::observe::Target> = tokens
        .iter()
        .map(|(name, n, _)| weft_control::observe::Target {
            name: name.clone(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, *n, 1)), 15020),
        })
        .collect();
    for w in snapshot
        .workloads
        .values()
        .filter(|w| w.waypoint || w.gateway)
    {
        if let Some(addr) = proxy_metrics_addr(snapshot, w) {
            targets.push(weft_control::observe::Target {
                name: w.name.to_string(),
                addr,
            });
        }
    }
    let control = weft_control::start(Options {
        config_dir: args.dir.clone(),
        ca_dir: state.join("ca"),
        xds_addr: local(15010),
        tls_addr: local(15012),
        admin_addr: local(15000),
        monitoring_addr: local(15014),
        metrics_addr: local(15020),
        bootstrap_tokens: Some(token_file),
        workload_ttl: Duration::from_secs(24 * 3600),
        debounce: Debounce::default(),
        observe: weft_control::observe::Source::Scrape(targets),
        scrape_interval: args.scrape_interval,
        max_removal: weft_control::guard::DEFAULT_MAX_REMOVAL,
        kubernetes: None,
        server_names: Vec::new(),
        topology: weft_config::Topology::default(),
    })
    .await
    .map_err(|e| e.to_string())?;
    let roots = weft_ca::cert::certs_from_pem(
        &std::fs::read(&control.root_cert).map_err(|e| e.to_string())?,
        "root-cert.pem",
    )
    .map_err(|e| e.to_string())?;

    let mut proxies = Vec::new();
    for (name, n, token) in &tokens {
        let proxy = weft_node::start(NodeOptions {
            attach_socket: None,
            state_dir: Some(state.join("nodes").join(name)),
            node: name.clone(),
            trust_domain: control.trust_domain.clone(),
            xds_addr: Some(control.xds_addr),
            ca_addr: control.tls_addr.into(),
            roots: roots.clone(),
            token: token.clone().into(),
            admin_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, *n, 1)), 15000),
            metrics_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, *n, 1)), 15020),
            connect_timeout: snapshot.mesh.connect_timeout,
        })
        .await
        .map_err(|e| e.to_string())?;
        proxies.push((name.clone(), *n, proxy));
    }

    // Waypoints and ingress gateways, each with its node's token, on its
    // own address.
    let options = |w: &weft_core::model::Workload| {
        let (Some(node), WorkloadAddress::Ip(ip)) = (&w.node, &w.address) else {
            return None;
        };
        let (_, _, token) = tokens.iter().find(|(n, _, _)| n == node)?;
        Some(WaypointOptions {
            wasm: Default::default(),
            name: w.name.to_string(),
            node: node.clone(),
            trust_domain: control.trust_domain.clone(),
            ca_addr: control.tls_addr.into(),
            roots: roots.clone(),
            token: token.clone().into(),
            metrics_addr: proxy_metrics_addr(snapshot, w).unwrap_or(SocketAddr::new(*ip, 15020)),
            connect_timeout: snapshot.mesh.connect_timeout,
            jwks_roots: Vec::new(),
            connections: Default::default(),
        })
    };
    let mut waypoints = Vec::new();
    for w in snapshot.workloads.values().filter(|w| w.waypoint) {
        if let Some(o) = options(w) {
            let waypoint = weft_waypoint::fronts::waypoint::start(o).await;
            waypoints.push((w.name.to_string(), waypoint.map_err(|e| e.to_string())?));
        }
    }
    let mut gateways = Vec::new();
    for w in snapshot.workloads.values().filter(|w| w.gateway) {
        if let Some(o) = options(w) {
            let gateway = weft_waypoint::fronts::gateway::start(o).await;
            gateways.push((w.name.to_string(), gateway.map_err(|e| e.to_string())?));
        }
    }

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut apps = Apps(Vec::new());
    for w in snapshot.workloads.values() {
        let Some(command) = &w.run else { continue };
        let mut words = command.split_whitespace();
        let Some(program) = words.next() else {
            continue;
        };
        let program = if program == "weft" {
            exe.clone()
        } else {
            PathBuf::from(program)
        };
        let log = state
            .join("logs")
            .join(format!("{}-{}.log", w.name.namespace, w.name.name));
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&program)
            .args(words)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {} for {}: {e}", program.display(), w.name))?;
        apps.0.push((w.name.to_string(), child));
    }

    // Wait until every local workload's HBONE port is open (nodes ready;
    // gateways open no HBONE port, and their nodes nothing for them).
    let deadline = Instant::now() + Duration::from_secs(20);
    for w in snapshot
        .workloads
        .values()
        .filter(|w| w.node.is_some() && !w.gateway)
    {
        if let WorkloadAddress::Ip(ip) = w.address {
            while tokio::net::TcpStream::connect((ip, weft_hbone::PORT))
                .await
                .is_err()
            {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{}'s node never opened {ip}:{}",
                        w.name,
                        weft_hbone::PORT
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    println!("weft up: the mesh in {} is running\n", args.dir.display());
    println!(
        "{:<9} {:<16} {:<22} {:<48} OUTBOUND",
        "NODE", "ADMIN", "WORKLOAD", "IDENTITY"
    );
    for (name, _, proxy) in &proxies {
        let mut first = true;
        for w in snapshot
            .workloads
            .values()
            .filter(|w| w.node.as_deref() == Some(name.as_str()))
        {
            let outbound: Vec<String> = w
                .outbound
                .iter()
                .map(|l| format!("{}:{} -> {}:{}", w.address, l.local_port, l.host, l.port))
                .collect();
            println!(
                "{:<9} {:<16} {:<32} {:<48} {}",
                if first { name.as_str() } else { "" },
                if first {
                    proxy.admin_addr.to_string()
                } else {
                    String::new()
                },
                if w.waypoint {
                    format!("{} {} (waypoint)", w.name, w.address)
                } else if w.gateway {
                    format!("{} {} (gateway)", w.name, w.address)
                } else {
                    format!("{} {}", w.name, w.address)
                },
                w.identity.to_string(),
                outbound.join(", ")
            );
            first = false;
        }
    }
    println!(
        "\ncontrol plane: config stream {} (plaintext) / {} (mTLS), admin {}, status http://{}/debug/config-status, metrics {}",
        control.xds_addr,
        control.tls_addr,
        control.admin_addr,
        control.monitoring_addr,
        control.metrics_addr
    );
    println!(
        "logs: {}/logs/ ({LOG_FILE}: control plane, nodes, waypoints, gateways; <namespace>-<name>.log: each app; --verbose shows them here too)",
        state.display()
    );
    if !config.warnings.is_empty() {
        println!("\nwarnings in {}:", args.dir.display());
        for w in &config.warnings {
            println!("  {w}");
        }
    }
    if let Some((w, l)) = snapshot
        .workloads
        .values()
        .find_map(|w| w.outbound.first().map(|l| (w, l)))
    {
        println!(
            "\ntry it: curl -si http://{}:{}/headers   ({} -> {} over mTLS)",
            w.address, l.local_port, w.name, l.host
        );
    }
    println!(
        "dashboard: http://{}/   (or: weft graph --control {})",
        control.monitoring_addr, control.monitoring_addr
    );
    let load = background_load(snapshot, args.background_load);
    println!("weft up: ready (Ctrl-C stops everything)");

    super::shutdown_signal().await;
    say!(
        "\nweft up: stopping (draining open connections for up to {:?})",
        args.drain_timeout
    );
    if let Some(load) = load {
        load.abort();
    }
    // Nodes stop accepting and drain while the apps still answer; then the
    // apps and the control plane go.
    let drains: Vec<_> = proxies
        .into_iter()
        .map(|(name, _, proxy)| (name, tokio::spawn(proxy.drain(args.drain_timeout))))
        .collect();
    for (name, drain) in drains {
        match drain.await {
            Ok(0) => say!("stopped node {name} (drained)"),
            Ok(left) => say!("stopped node {name} ({left} connection(s) cut at the deadline)"),
            Err(_) => say!("stopped node {name}"),
        }
    }
    for (name, waypoint) in waypoints {
        waypoint.stop();
        say!("stopped waypoint {name}");
    }
    for (name, gateway) in gateways {
        gateway.stop();
        say!("stopped gateway {name}");
    }
    let names: Vec<String> = apps.0.iter().map(|(name, _)| name.clone()).collect();
    drop(apps);
    if !names.is_empty() {
        say!("stopped {} app(s): {}", names.len(), names.join(", "));
    }
    control.stop().await;
    say!("stopped the control plane; weft up: done");
    Ok(())
}

/// Light steady traffic for the demo's graph: `per_second` GETs through
/// every workload's outbound listeners and every plain-HTTP gateway
/// listener (answers are read and dropped). `None` when disabled.
fn background_load(snapshot: &Snapshot, per_second: f64) -> Option<tokio::task::JoinHandle<()>> {
    if per_second <= 0.0 || !per_second.is_finite() {
        return None;
    }
    let mut targets: Vec<SocketAddr> = Vec::new();
    for w in snapshot.workloads.values() {
        if let WorkloadAddress::Ip(ip) = &w.address {
            targets.extend(
                w.outbound
                    .iter()
                    .map(|l| SocketAddr::new(*ip, l.local_port)),
            );
        }
    }
    for (name, gateway) in &snapshot.gateways {
        let Some(WorkloadAddress::Ip(ip)) = snapshot.workloads.get(name).map(|w| &w.address) else {
            continue;
        };
        targets.extend(
            gateway
                .listeners
                .iter()
                .filter(|l| l.tls.is_none())
                .map(|l| SocketAddr::new(*ip, l.port)),
        );
    }
    if targets.is_empty() {
        return None;
    }
    println!(
        "background load: {per_second}/s through {} listeners (--background-load 0 turns it off)",
        targets.len()
    );
    let period = Duration::from_secs_f64(1.0 / per_second);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for target in &targets {
                let target = *target;
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let call = async {
                        let mut conn = tokio::net::TcpStream::connect(target).await?;
                        conn.write_all(b"GET / HTTP/1.1\r\nhost: demo\r\nuser-agent: weft-up-load\r\nconnection: close\r\n\r\n")
                            .await?;
                        let mut sink = Vec::new();
                        conn.read_to_end(&mut sink).await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
                });
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_numbering() {
        let names: BTreeSet<String> = ["node-2", "edge", "node-1", "alpha"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            node_numbers(&names),
            [
                ("alpha".into(), 3),
                ("edge".into(), 4),
                ("node-1".into(), 1),
                ("node-2".into(), 2)
            ]
        );
    }
}
