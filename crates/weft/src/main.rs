//! # weft
//!
//! The one `weft` binary. Each subcommand is a thin shell over a library
//! crate: `validate` over `weft-config`, `sample-app` over `weft-sample-app`,
//! `control` over `weft-control`, `node` over `weft-node`, `up` over every
//! crate (a local mesh), `waypoint` over `weft-waypoint`, `run` over
//! `weft-node`'s captured mode.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc instead of the system allocator: long-lived processes that
/// build and drop large configuration snapshots fragment glibc's heap (the
/// control plane benchmark's steady RSS drops from ~1.8 GiB to ~0.9 GiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weft: a sidecar-less service mesh.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info` or `weft=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log_level: Option<String>,

    /// Log format: `text`, or `json` (one object per line, access logs
    /// included).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration directory (or file) and list every problem.
    ///
    /// Exit status: 0 valid, 1 problems found, 2 the path cannot be read.
    Validate {
        /// Directory of YAML resources, or a single YAML file.
        path: PathBuf,
    },
    /// Run the sample application used by examples, tests and benchmarks.
    SampleApp(cmd::sample_app::Args),
    /// Print the version.
    Version,
    /// Run the control plane: config stream, certificate authority.
    Control(Box<cmd::control::Args>),
    /// Show the certificates a weft process holds (from its admin port).
    Certs(cmd::certs::Args),
    /// Show what a proxy holds from the config stream (from its admin port).
    ConfigDump(cmd::config_dump::Args),
    /// Run one node proxy (local mode) as its own process.
    Node(cmd::node::Args),
    /// Authorization tools: `weft authz check` decides a call offline.
    Authz(cmd::authz::Args),
    /// Run a program as a captured workload in its own network namespace
    /// (root): its TCP goes through the node proxy unchanged.
    Run(cmd::run::Args),
    /// Run a waypoint: L7 routing, timeouts, retries within budgets for
    /// the services that name it.
    Waypoint(cmd::waypoint::Args),
    /// Run an ingress gateway: a Gateway API `Gateway`'s HTTP and HTTPS
    /// listeners, authentication, authorization and rate limits, then into
    /// the mesh over HBONE.
    Gateway(cmd::waypoint::Args),
    /// Who calls whom: edges with rate, errors, latency, mTLS, allowed
    /// and denied counts, from the control plane (`--to payments`: its
    /// callers).
    Graph(cmd::graph::Args),
    /// Print the hash an API-key Secret stores for a key
    /// (`sha256:<hex>`); the key is read from standard input, one line.
    HashKey,
    /// Start a whole local mesh from a directory: control plane, node
    /// proxies, apps.
    Up(cmd::up::Args),
    /// Print the manifests that install weft on a Kubernetes cluster
    /// (`weft install --crds | kubectl apply -f -`, then without
    /// `--crds`).
    Install(cmd::install::Args),
}

fn main() -> ExitCode {
    // Installed in the CNI bin directory as `weft-cni`, it is the CNI
    // plugin (which speaks through its environment and stdin).
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if invoked_as.as_deref() == Some("weft-cni") {
        return ExitCode::from(u8::try_from(weft_cni::main()).unwrap_or(1));
    }
    let cli = Cli::parse();
    // `weft up` keeps its console for the summary: it logs to files.
    if !matches!(cli.command, Command::Up(_)) {
        init_logging(cli.log_level.as_deref(), cli.log_format == "json");
    }
    match cli.command {
        Command::Validate { path } => cmd::validate::run(&path),
        Command::SampleApp(args) => cmd::sample_app::run(args),
        Command::Version => {
            println!("weft {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Control(args) => cmd::control::run(*args),
        Command::Certs(args) => cmd::certs::run(args),
        Command::ConfigDump(args) => cmd::config_dump::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Waypoint(args) => cmd::waypoint::run(args),
        Command::Gateway(args) => cmd::waypoint::run_gateway(args),
        Command::Up(args) => cmd::up::run(args, cli.log_level.as_deref(), cli.log_format == "json"),
        Command::Run(args) => cmd::run::run(args),
        Command::Authz(args) => cmd::authz::run(args),
        Command::Graph(args) => cmd::graph::run(args),
        Command::Install(args) => cmd::install::run(args),
        Command::HashKey => {
            let mut key = String::new();
            match std::io::stdin().read_line(&mut key) {
                Ok(_) if !key.trim().is_empty() => {
                    println!(
                        "sha256:{}",
                        weft_waypoint::policy::extauthz::hash_key(key.trim())
                    );
                    ExitCode::SUCCESS
                }
                _ => {
                    eprintln!("weft hash-key: give the key on standard input");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: Option<&str>, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
