//! `weft control`: the control plane. Today it runs the certificate
//! authority and its gRPC certificate service (15012), with the control
//! plane's own certificate on the admin port (15000, `/certs`) and metrics
//! (15020). Configuration streaming joins it with the config-stream work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use weft_admin::{Reply, Routes};
use weft_ca::authz::{BootstrapTokens, control_identity};
use weft_ca::service::{CertificateService, serve};
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_ca::{Authority, CaOptions, CertManager, ManagerOptions, TrustBundle};
use weft_config::{LoadError, load_path};

/// Flags of `weft control`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory of YAML configuration (the registry decides which node may
    /// obtain which identity).
    #[arg(long)]
    config_dir: PathBuf,
    /// Directory of the CA files: a root is created there on first start, or
    /// put Istio-style `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
    /// `root-cert.pem` there to sign with your own CA.
    #[arg(long, default_value = ".weft/ca")]
    ca_dir: PathBuf,
    /// Certificate service (gRPC over mTLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    ca_addr: SocketAddr,
    /// Admin endpoints (`/certs`); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:15020")]
    metrics_addr: SocketAddr,
    /// File of `<node> <token>` lines: the bootstrap tokens node proxies
    /// present until they hold a node certificate.
    #[arg(long)]
    bootstrap_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates when a request asks for none.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "24h")]
    workload_ttl: Duration,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let config = match load_path(&args.config_dir) {
        Ok(c) => c,
        Err(LoadError::Invalid(problems)) => {
            eprintln!(
                "weft control: the configuration in {} has problems:\n{problems}",
                args.config_dir.display()
            );
            return ExitCode::from(1);
        }
        Err(LoadError::Read(e)) => {
            eprintln!("weft control: {e}");
            return ExitCode::from(2);
        }
    };
    let result = super::runtime().and_then(|rt| rt.block_on(start(args, config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft control: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: Args, config: weft_config::Config) -> Result<(), String> {
    let trust_domain = config.snapshot.mesh.trust_domain.clone();
    let authority = Arc::new(
        Authority::load_or_create(&CaOptions {
            dir: args.ca_dir.clone(),
            trust_domain: trust_domain.clone(),
            workload_ttl: args.workload_ttl,
        })
        .map_err(|e| e.to_string())?,
    );
    let tokens = match &args.bootstrap_tokens {
        Some(path) => BootstrapTokens::from_file(path).map_err(|e| e.to_string())?,
        None => {
            tracing::warn!(
                "no --bootstrap-tokens: only nodes holding a node certificate can obtain certificates"
            );
            BootstrapTokens::default()
        }
    };
    let registry = Arc::new(ArcSwap::new(config.snapshot));

    // The control plane's own serving certificate, from its own CA, rotated
    // like any workload's.
    let own = CertManager::new(authority.clone(), ManagerOptions::default());
    let me = control_identity(&trust_domain).map_err(|e| e.to_string())?;
    own.fetch(&me).await.map_err(|e| e.to_string())?;
    let bundle = TrustBundle::new(authority.trust_bundle().to_vec()).map_err(|e| e.to_string())?;
    let tls = server_config(
        own.source(&me),
        SpiffeClientVerifier::new(bundle, &trust_domain).optional(),
    )
    .map_err(|e| e.to_string())?;

    let mut metrics = prometheus_client::registry::Registry::default();
    own.register(&mut metrics);
    let metrics = Arc::new(Mutex::new(metrics));

    let ca_listener = weft_admin::bind(args.ca_addr, "the certificate service")
        .await
        .map_err(|e| e.to_string())?;
    let admin_listener = weft_admin::bind(args.admin_addr, "admin")
        .await
        .map_err(|e| e.to_string())?;
    let metrics_listener = weft_admin::bind(args.metrics_addr, "metrics")
        .await
        .map_err(|e| e.to_string())?;
    let addr =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!(
        "weft control ready: ca={} admin={} metrics={} trust-domain={} root={}",
        addr(&ca_listener),
        addr(&admin_listener),
        addr(&metrics_listener),
        trust_domain,
        args.ca_dir.join("root-cert.pem").display()
    );

    let certs = own.clone();
    let admin_routes = Routes::new().get("/certs", move || Reply::json(certs.report_json()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(weft_admin::serve(admin_listener, admin_routes, stopped()));
    tokio::spawn(weft_admin::serve(
        metrics_listener,
        Routes::new().metrics(metrics),
        stopped(),
    ));
    tokio::spawn(async move {
        super::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let service = CertificateService::new(authority, registry, tokens);
    serve(ca_listener, tls, service, stopped())
        .await
        .map_err(|e| e.to_string())
}
