//! `weft sample-app`: the httpbin-like test server, or a TCP echo.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use weft_sample_app::AppConfig;

/// Flags of `weft sample-app`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name returned in the x-weft-app header.
    #[arg(long, default_value = "sample-app")]
    name: String,
    /// Version returned in the x-weft-version header.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Locality (region/zone/subzone) returned in the x-weft-locality header.
    #[arg(long, default_value = "")]
    locality: String,
    /// Fraction of requests (0.0-1.0) answered with an injected 503.
    #[arg(long, default_value_t = 0.0)]
    fail_ratio: f64,
    /// Latency added before every response, e.g. 20ms.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    latency: Duration,
    /// Echo raw TCP instead of serving HTTP.
    #[arg(long)]
    tcp_echo: bool,
    /// On Ctrl-C or SIGTERM, how long open connections may take to finish.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    drain_timeout: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_core::duration::parse(s)
}

pub(crate) fn run(args: Args) -> ExitCode {
    let config = AppConfig {
        name: args.name,
        version: args.version,
        locality: args.locality,
        fail_ratio: args.fail_ratio,
        latency: args.latency,
    };
    if let Err(e) = config.validate() {
        eprintln!("weft sample-app: {e}");
        return ExitCode::from(2);
    }
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft sample-app: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let mode = if args.tcp_echo { "tcp-echo" } else { "http" };
        // A plain line on stdout: scripts and tests wait for it as the readiness signal.
        println!("weft sample-app {} listening on {local} ({mode})", config.name);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |extra: Duration| {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(extra).await;
            }
        };
        let serve = async {
            if args.tcp_echo {
                weft_sample_app::serve_tcp_echo(listener, stopped(Duration::ZERO)).await
            } else {
                weft_sample_app::serve_http(listener, config, stopped(Duration::ZERO)).await
            }
        };
        tokio::select! {
            served = serve => served.map_err(|e| e.to_string()),
            () = stopped(args.drain_timeout) => {
                tracing::warn!(timeout = ?args.drain_timeout, "drain deadline passed; closing the remaining connections");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft sample-app: {e}");
            ExitCode::FAILURE
        }
    }
}
