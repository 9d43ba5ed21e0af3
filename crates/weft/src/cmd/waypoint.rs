//! `weft waypoint`: one waypoint as its own process. It authenticates to
//! the certificate service with the bootstrap token of the node it runs
//! on, listens for HBONE on its workload's address, and applies L7 policy
//! to the services that name it (`istio.io/use-waypoint`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weft_waypoint::proxy::WaypointOptions;

/// Flags of `weft waypoint`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The waypoint's workload, `namespace/name` (a WorkloadEntry labelled
    /// `weft.dev/waypoint: "true"`).
    #[arg(long)]
    name: String,
    /// The node it runs on (whose bootstrap token it uses).
    #[arg(long)]
    node: String,
    /// The control plane's plaintext config stream.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// The control plane's certificate service (mTLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    ca_addr: SocketAddr,
    /// Root certificate(s) to trust (the control plane's root-cert.pem).
    #[arg(long)]
    root_cert: PathBuf,
    /// File holding the node's bootstrap token.
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

async fn waypoint(args: Args) -> Result<(), String> {
    let (roots, token) = super::proxy_credentials(&args.root_cert, &args.token_file)?;
    let jwks_roots = match &args.jwks_ca {
        Some(path) => super::read_roots(path)?,
        None => Vec::new(),
    };
    let waypoint = weft_waypoint::proxy::start(WaypointOptions {
        name: args.name.clone(),
        node: args.node,
        trust_domain: args.trust_domain,
        xds_addr: args.xds_addr,
        ca_addr: args.ca_addr,
        roots,
        token,
        metrics_addr: args.metrics_addr,
        connect_timeout: args.connect_timeout,
        jwks_roots,
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "weft waypoint {} ready: hbone={} metrics={}",
        args.name, waypoint.hbone_addr, waypoint.metrics_addr
    );
    super::shutdown_signal().await;
    waypoint.stop();
    Ok(())
}
