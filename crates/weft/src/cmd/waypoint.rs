//! `weft waypoint`: one waypoint as its own process. It authenticates to
//! the control plane with a token — the bootstrap token of the node it
//! runs on, or on Kubernetes its pod's service-account token — listens
//! for HBONE on its workload's address, and applies L7 policy to the
//! services that name it (`istio.io/use-waypoint`). `weft gateway` takes
//! the same flags and serves the Gateway API `Gateway` of its workload's
//! name on that workload's address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weft_waypoint::fronts::admission::ConnLimits;

use weft_waypoint::fronts::setup::WaypointOptions;

/// Flags of `weft waypoint`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The workload, `namespace/name` (a WorkloadEntry labelled
    /// `weft.dev/waypoint: "true"`, or `weft.dev/gateway: "true"` for
    /// `weft gateway`).
    #[arg(long)]
    name: String,
    /// The node it runs on (its id on the config stream).
    #[arg(long)]
    node: String,
    /// The control plane's TLS port (config stream and certificate
    /// service): `host:port`, e.g. `weft-control.weft-system.svc:15012`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    ca_addr: weft_ca::client::ControlAddr,
    /// Root certificate(s) to trust (the control plane's root-cert.pem; on
    /// Kubernetes the `istio-ca-root-cert` ConfigMap).
    #[arg(long)]
    root_cert: PathBuf,
    /// File holding its token (the node's bootstrap token, or a projected
    /// service-account token, read again at every use as the kubelet
    /// rotates it).
    #[arg(long)]
    token_file: PathBuf,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Prometheus metrics.
    #[arg(long)]
    metrics_addr: SocketAddr,
    /// TCP connect timeout to endpoints.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "10s")]
    connect_timeout: Duration,
    /// PEM file of extra roots trusted when fetching issuers' JWKS
    /// (`jwksUri`), besides the system's.
    #[arg(long)]
    jwks_ca: Option<PathBuf>,
    /// Gateways: connections each listener holds open at once; beyond it
    /// the newest idle one is shed for a new one, and when none is idle
    /// new ones are closed at accept
    /// (`weft_gateway_connections_refused_total{reason="limit"}`).
    #[arg(long, default_value_t = weft_waypoint::fronts::gateway::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Gateways: connections one source address holds open at once per
    /// listener (`reason="per_source_limit"` when refused).
    #[arg(long, default_value_t = ConnLimits::default().max_per_source)]
    max_connections_per_source: usize,
    /// Gateways: from accept to the end of the first request head (TLS
    /// handshake included), and for each later HTTP/1 request head.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "10s")]
    request_headers_timeout: Duration,
    /// Gateways: a connection with no request in flight this long is closed.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "5m")]
    idle_timeout: Duration,
    /// Gateways: a connection this old is asked to finish (0: never).
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "0s")]
    max_connection_duration: Duration,
    /// Proxy-Wasm plugins: linear memory one instance may grow to, in MiB.
    #[arg(long, default_value_t = 64)]
    wasm_memory_mib: usize,
    /// Proxy-Wasm plugins: fuel (about one WebAssembly instruction each)
    /// one callback may burn before it is cut and the plugin's
    /// failStrategy applies; the default is a few milliseconds.
    #[arg(long, default_value_t = weft_waypoint::extension::DEFAULT_FUEL)]
    wasm_fuel: u64,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match super::runtime().and_then(|rt| rt.block_on(waypoint(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft waypoint: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `weft gateway`: the same flags, for a workload labelled
/// `weft.dev/gateway: "true"` serving the Gateway of its name.
pub(crate) fn run_gateway(args: Args) -> ExitCode {
    match super::runtime().and_then(|rt| rt.block_on(gateway(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn gateway(args: Args) -> Result<(), String> {
    let name = args.name.clone();
    let gateway = weft_waypoint::fronts::gateway::start(options(args)?)
        .await
        .map_err(|e| e.to_string())?;
    let listening: Vec<String> = gateway
        .listening()
        .iter()
        .map(|(l, a)| format!("{l}={a}"))
        .collect();
    println!(
        "weft gateway {name} ready: {} metrics={}",
        listening.join(" "),
        gateway.metrics_addr
    );
    super::shutdown_signal().await;
    gateway.stop();
    Ok(())
}

fn options(args: Args) -> Result<WaypointOptions, String> {
    let roots = super::read_roots(&args.root_cert)?;
    let token = weft_ca::client::Token::File(args.token_file);
    token.current()?;
    let jwks_roots = match &args.jwks_ca {
        Some(path) => super::read_roots(path)?,
        None => Vec::new(),
    };
    if args.wasm_memory_mib == 0 || args.wasm_fuel == 0 {
        return Err("--wasm-memory-mib and --wasm-fuel must be greater than zero".into());
    }
    Ok(WaypointOptions {
        wasm: weft_waypoint::extension::WasmLimits {
            memory_bytes: args.wasm_memory_mib << 20,
            fuel_per_call: args.wasm_fuel,
        },
        name: args.name,
        node: args.node,
        trust_domain: args.trust_domain,
        ca_addr: args.ca_addr,
        roots,
        token,
        metrics_addr: args.metrics_addr,
        connect_timeout: args.connect_timeout,
        jwks_roots,
        connections: ConnLimits {
            max_connections: args.max_connections,
            max_per_source: args.max_connections_per_source,
            header_timeout: args.request_headers_timeout,
            idle_timeout: args.idle_timeout,
            max_duration: Some(args.max_connection_duration).filter(|d| !d.is_zero()),
        },
    })
}

async fn waypoint(args: Args) -> Result<(), String> {
    let name = args.name.clone();
    let waypoint = weft_waypoint::fronts::waypoint::start(options(args)?)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "weft waypoint {} ready: hbone={} metrics={}",
        name, waypoint.hbone_addr, waypoint.metrics_addr
    );
    super::shutdown_signal().await;
    waypoint.stop();
    Ok(())
}
