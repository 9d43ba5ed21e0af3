//! # weft-control
//!
//! The control plane. It turns a directory of YAML kept in git into live
//! state in every proxy: the directory is watched ([`config`]), each change
//! validated as a whole and debounced ([`debounce`]); valid snapshots are
//! streamed to proxies over delta xDS (`weft-xds`), invalid ones rejected
//! with the previous one kept. It also runs the certificate authority
//! (`weft-ca`), which authorizes against the same snapshot.
//!
//! Ports: 15010 config stream in plaintext (loopback only), 15012 config
//! stream and certificate service over mTLS, 15000 admin (`/certs`), 15014
//! monitoring (`/debug/config-status`), 15020 metrics.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_admin::{Reply, Routes};
use weft_ca::authz::{BootstrapTokens, control_identity};
use weft_ca::service::{CertificateService, tls_incoming};
use weft_ca::tls::{SpiffeClientVerifier, server_config};
use weft_ca::{Authority, CaOptions, CertManager, ManagerOptions, TrustBundle};
use weft_xds::{XdsMetrics, XdsServer};

pub mod config;
pub mod crossings;
pub mod dashboard;
pub mod debounce;
pub mod guard;
pub mod imports;
pub mod kubernetes;
pub mod observe;
pub mod peering;
pub mod stream_auth;

pub use config::{ConfigMetrics, ConfigStatus, LiveConfig};
pub use debounce::Debounce;

/// How long [`Running::stop`] lets in-flight requests finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of YAML configuration, watched for changes.
    pub config_dir: PathBuf,
    /// Directory of the CA files.
    pub ca_dir: PathBuf,
    /// Plaintext config stream; must be a loopback address.
    pub xds_addr: SocketAddr,
    /// Config stream and certificate service over mTLS.
    pub tls_addr: SocketAddr,
    /// Admin endpoints.
    pub admin_addr: SocketAddr,
    /// Monitoring endpoints.
    pub monitoring_addr: SocketAddr,
    /// Prometheus metrics.
    pub metrics_addr: SocketAddr,
    /// File of `<node> <token>` bootstrap tokens.
    pub bootstrap_tokens: Option<PathBuf>,
    /// Default lifetime of workload certificates.
    pub workload_ttl: Duration,
    /// Coalescing of file changes.
    pub debounce: Debounce,
    /// Where the service graph's numbers come from (the proxies to
    /// scrape, or a Prometheus).
    pub observe: observe::Source,
    /// How often proxies are scraped.
    pub scrape_interval: Duration,
    /// Share (0–1) of services or workloads one configuration change may
    /// remove before it is held back for confirmation (1: no limit; an
    /// emptied configuration is always held).
    pub max_removal: f64,
    /// Read the configuration from a Kubernetes cluster (`config_dir`,
    /// if it exists, is read as well).
    pub kubernetes: Option<kubernetes::KubeSource>,
    /// DNS names the certificate on the mTLS port carries besides the
    /// control plane's SPIFFE ID (clients that check the server by name).
    pub server_names: Vec<String>,
    /// This cluster's ID and default network, where the `Mesh` names
    /// none (`--cluster-id`, `--network`).
    pub topology: weft_config::Topology,
}

impl Options {
    /// Every listener on an ephemeral loopback port, no bootstrap tokens,
    /// default lifetimes: for tests, benchmarks and embedding.
    pub fn ephemeral(config_dir: PathBuf, ca_dir: PathBuf) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Options {
            config_dir,
            ca_dir,
            xds_addr: any,
            tls_addr: any,
            admin_addr: any,
            monitoring_addr: any,
            metrics_addr: any,
            bootstrap_tokens: None,
            workload_ttl: Duration::from_secs(3600),
            debounce: Debounce::default(),
            observe: observe::Source::Scrape(Vec::new()),
            scrape_interval: Duration::from_secs(5),
            max_removal: guard::DEFAULT_MAX_REMOVAL,
            kubernetes: None,
            server_names: Vec::new(),
            topology: weft_config::Topology::default(),
        }
    }
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid or unreadable.
    #[error(transparent)]
    Config(#[from] config::InitialLoadError),
    /// The CA could not start.
    #[error(transparent)]
    Ca(#[from] weft_ca::CaError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] weft_admin::BindError),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Plaintext config stream address.
    pub xds_addr: SocketAddr,
    /// mTLS config stream and certificate service address.
    pub tls_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Monitoring address.
    pub monitoring_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// The trust domain.
    pub trust_domain: String,
    /// The root certificate file proxies should trust.
    pub root_cert: PathBuf,
    /// The live configuration.
    pub config: Arc<LiveConfig>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The scraper for the service graph: holds no connection open, so
    /// it is stopped at once rather than drained.
    scraper: tokio::task::JoinHandle<()>,
    /// The root certificate publisher (Kubernetes), stopped at once too.
    roots: Option<tokio::task::JoinHandle<()>>,
    /// The streams to the clusters this one peers with.
    peering: tokio::task::JoinHandle<()>,
    _watch: config::WatchGuard,
    _own_certs: CertManager,
}

impl Running {
    /// Stops every server: no new connections, open streams closed, then
    /// waits up to [`DRAIN_TIMEOUT`] for in-flight requests before closing
    /// what is left.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.scraper.abort();
        self.peering.abort();
        if let Some(roots) = &self.roots {
            roots.abort();
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for mut server in self.servers {
            if tokio::time::timeout_at(deadline, &mut server)
                .await
                .is_err()
            {
                tracing::warn!("drain deadline passed; closing remaining connections");
                server.abort();
            }
        }
    }
}

fn addr(l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|e| StartError::Other(e.to_string()))
}

/// Starts the control plane.
pub async fn start(options: Options) -> Result<Running, StartError> {
    if !options.xds_addr.ip().is_loopback() {
        return Err(StartError::Other(format!(
            "the plaintext config stream must listen on loopback, not {}; remote proxies use the mTLS port",
            options.xds_addr
        )));
    }
    let config_metrics = ConfigMetrics::default();
    let (live, watch_guard) = match options.kubernetes.clone() {
        Some(source) => kubernetes::start(source, config_metrics.clone(), options.debounce).await?,
        None => {
            let live = LiveConfig::load_with(
                options.config_dir.clone(),
                options.topology.clone(),
                options.max_removal,
                config_metrics.clone(),
            )?;
            let guard = live.watch(options.debounce).map_err(|e| {
                StartError::Other(format!(
                    "cannot watch {}: {e}",
                    options.config_dir.display()
                ))
            })?;
            (live, guard)
        }
    };
    let trust_domain = live.snapshot.load().mesh.trust_domain.clone();
    if let Some(k) = &options.kubernetes {
        kubernetes::fetch_ca(k, &options.ca_dir, &trust_domain).await?;
    }
    let authority = Arc::new(
        Authority::load_or_create(&CaOptions {
            dir: options.ca_dir.clone(),
            trust_domain: trust_domain.clone(),
            workload_ttl: options.workload_ttl,
        })?
        .with_server_names(
            control_identity(&trust_domain).map_err(|e| StartError::Other(e.to_string()))?,
            options.server_names.clone(),
        )?,
    );
    // The root, in every namespace of the cluster (istio-ca-root-cert).
    let roots = options.kubernetes.as_ref().and_then(|k| {
        let every = k.publish_roots?;
        let pem = weft_ca::authority::chain_pem(authority.trust_bundle());
        Some(weft_kube::roots::spawn(k.client.clone(), pem, every))
    });
    let tokens = match &options.bootstrap_tokens {
        Some(path) => {
            BootstrapTokens::from_file(path).map_err(|e| StartError::Other(e.to_string()))?
        }
        None => {
            tracing::warn!(
                "no bootstrap tokens: only nodes holding a node certificate can obtain certificates"
            );
            BootstrapTokens::default()
        }
    };

    // The control plane's own serving certificate, from its own CA.
    let own = CertManager::new(authority.clone(), ManagerOptions::default());
    let me = control_identity(&trust_domain).map_err(|e| StartError::Other(e.to_string()))?;
    own.fetch(&me)
        .await
        .map_err(|e| StartError::Other(e.to_string()))?;
    let bundle = TrustBundle::new(authority.trust_bundle().to_vec())
        .map_err(|e| StartError::Other(e.to_string()))?;
    let tls = server_config(
        own.source(&me),
        SpiffeClientVerifier::new(bundle.clone(), &trust_domain).optional(),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;

    let mut registry = prometheus_client::registry::Registry::default();
    own.register(&mut registry);
    config_metrics.register(&mut registry);
    let xds_metrics = XdsMetrics::default();
    xds_metrics.register(&mut registry);
    let peering_metrics = peering::PeeringMetrics::default();
    peering_metrics.register(&mut registry);
    let peering = peering::spawn(
        live.clone(),
        peering::PeerTls {
            cert: own.source(&me),
            bundle: bundle.clone(),
        },
        peering_metrics,
    );
    let registry = Arc::new(Mutex::new(registry));

    let xds_listener = weft_admin::bind(options.xds_addr, "the plaintext config stream").await?;
    let tls_listener = weft_admin::bind(
        options.tls_addr,
        "the mTLS config stream and certificate service",
    )
    .await?;
    let admin_listener = weft_admin::bind(options.admin_addr, "admin").await?;
    let monitoring_listener = weft_admin::bind(options.monitoring_addr, "monitoring").await?;
    let metrics_listener = weft_admin::bind(options.metrics_addr, "metrics").await?;

    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let xds = XdsServer::new(live.resources(), xds_metrics).with_shutdown(stop.subscribe());
    let mut servers = Vec::new();

    let running_addrs = (
        addr(&xds_listener)?,
        addr(&tls_listener)?,
        addr(&admin_listener)?,
        addr(&monitoring_listener)?,
        addr(&metrics_listener)?,
    );

    // 15010: plaintext, loopback only.
    let plain = xds.clone().into_service();
    let plain_stop = stopped();
    servers.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds_listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(plain)
            .serve_with_incoming_shutdown(incoming, plain_stop)
            .await
        {
            tracing::error!(error = %e, "plaintext config stream stopped");
        }
    }));

    // 15012: mTLS; the certificate service and the config stream admit
    // the same callers (certificates, bootstrap or service-account tokens).
    let ca_service = kubernetes::reviewed(
        CertificateService::new(authority.clone(), live.snapshot.clone(), tokens),
        options.kubernetes.as_ref(),
    );
    let tls_xds = stream_auth::Authenticated::new(xds.into_service(), ca_service.authenticator());
    let ca_service = ca_service.into_server();
    let tls_stop = stopped();
    servers.push(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(ca_service)
            .add_service(tls_xds)
            .serve_with_incoming_shutdown(tls_incoming(tls_listener, tls), tls_stop)
            .await
        {
            tracing::error!(error = %e, "mTLS config stream and certificate service stopped");
        }
    }));

    let certs = own.clone();
    let admin_bound = admin_listener.local_addr().unwrap_or(options.admin_addr);
    let monitoring_bound = monitoring_listener
        .local_addr()
        .unwrap_or(options.monitoring_addr);
    servers.push(tokio::spawn(weft_admin::serve(
        admin_listener,
        Routes::new()
            .get("/certs", move || Reply::json(certs.report_json()))
            .local_hosts_only_on(admin_bound),
        stopped(),
    )));
    let status_of = live.clone();
    let aggregator = observe::Aggregator::new(options.observe.clone(), options.scrape_interval);
    let scraper = aggregator.spawn();
    servers.push(tokio::spawn(weft_admin::serve(
        monitoring_listener,
        dashboard::routes(
            Routes::new().get("/debug/config-status", move || {
                Reply::json(serde_json::to_string_pretty(&status_of.status()).unwrap_or_default())
            }),
            aggregator,
            live.clone(),
        )
        .local_hosts_only_on(monitoring_bound),
        stopped(),
    )));
    servers.push(tokio::spawn(weft_admin::serve(
        metrics_listener,
        // Readiness: serving means the first configuration is loaded and
        // every listener is bound.
        Routes::new()
            .metrics(registry)
            .get("/healthz/ready", || Reply::text("ready\n")),
        stopped(),
    )));

    Ok(Running {
        xds_addr: running_addrs.0,
        tls_addr: running_addrs.1,
        admin_addr: running_addrs.2,
        monitoring_addr: running_addrs.3,
        metrics_addr: running_addrs.4,
        trust_domain,
        root_cert: options.ca_dir.join("root-cert.pem"),
        config: live,
        stop,
        servers,
        scraper,
        roots,
        peering,
        _watch: watch_guard,
        _own_certs: own,
    })
}
