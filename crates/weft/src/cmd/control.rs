//! `weft control`: the control plane (see the `weft-control` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weft_control::{Debounce, Options, StartError};

/// Flags of `weft control`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory of YAML configuration, watched and hot-reloaded (with
    /// `--kubernetes`: read as well, e.g. ServiceEntries for VMs).
    #[arg(long, required_unless_present = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Read the configuration from a Kubernetes cluster: Services, Pods,
    /// Nodes, Namespaces and the Istio, Gateway API and weft kinds.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig to use with `--kubernetes` (default: in-cluster,
    /// else `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// The cluster's DNS domain (service hosts are
    /// `<name>.<namespace>.svc.<domain>`).
    #[arg(long, default_value = "cluster.local", requires = "kubernetes")]
    cluster_domain: String,
    /// With `--kubernetes`: the Secret (in the control plane's namespace,
    /// `$POD_NAMESPACE`, else `weft-system`) holding the CA in Istio's
    /// plug-in layout; created with a new root when absent, so replicas
    /// share one CA.
    #[arg(long, requires = "kubernetes")]
    ca_secret: Option<String>,
    /// With `--kubernetes`: the node agent's service account
    /// (`namespace/name`; default `<own namespace>/weft-node`). Its
    /// pod-bound token proves its node. `istio-system/ztunnel` lets
    /// Istio's ztunnel use weft control as its istiod.
    #[arg(long, requires = "kubernetes", value_name = "NAMESPACE/NAME")]
    node_agent_account: Option<String>,
    /// With `--kubernetes`: elect one replica (a `Lease`) to write
    /// statuses and Events. On by itself in a pod (`$POD_NAME` set).
    #[arg(long, requires = "kubernetes")]
    leader_elect: bool,
    /// The `Lease` replicas elect with (in the control plane's namespace);
    /// give each revision its own.
    #[arg(long, default_value = "weft-control", requires = "kubernetes")]
    lease_name: String,
    /// With `--kubernetes`: the image of the waypoints and gateways
    /// deployed for Gateways of classes `weft-waypoint`/`istio-waypoint`
    /// and `weft`/`istio` (without it, Gateways are not deployed).
    #[arg(long, requires = "kubernetes")]
    proxy_image: Option<String>,
    /// With `--proxy-image`: where the deployed proxies reach this control
    /// plane (`host:port`; default: the first `--tls-dns-name` and the
    /// port of `--tls-addr`).
    #[arg(long, requires = "proxy_image")]
    proxy_control_addr: Option<weft_ca::client::ControlAddr>,
    /// A DNS name the certificate on the mTLS port carries (repeat). With
    /// `--kubernetes`, `istiod.istio-system.svc` is always added, the name
    /// Istio's ztunnel checks by default.
    #[arg(long = "tls-dns-name", value_name = "NAME")]
    tls_dns_names: Vec<String>,
    /// Directory of the CA files: a root is created there on first start, or
    /// put Istio-style `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
    /// `root-cert.pem` there to sign with your own CA.
    #[arg(long, default_value = ".weft/ca")]
    ca_dir: PathBuf,
    /// Plaintext config stream (loopback only).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Config stream and certificate service over mTLS.
    #[arg(long, default_value = "127.0.0.1:15012")]
    tls_addr: SocketAddr,
    /// Admin endpoints (`/certs`); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Monitoring endpoints (`/debug/config-status`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    monitoring_addr: SocketAddr,
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
    /// A proxy to scrape for the service graph, `name=ip:port` of its
    /// metrics (repeat for each).
    #[arg(long = "scrape", value_name = "NAME=ADDR")]
    scrape: Vec<weft_control::observe::Target>,
    /// How often proxies are scraped.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "5s")]
    scrape_interval: Duration,
    /// Largest share (0–1) of services or workloads one configuration
    /// change may remove; a larger removal (or an emptied directory) is
    /// held back until `<config-dir>/.weft-confirm-removal` exists. 1 turns
    /// the share check off.
    #[arg(long, default_value_t = weft_control::guard::DEFAULT_MAX_REMOVAL, value_parser = parse_share)]
    max_removal: f64,
    /// This cluster's ID (`topology.istio.io/cluster`) for workloads
    /// without the label, when the `Mesh` names none; the name its peers
    /// (`RemoteCluster`) know it by.
    #[arg(long, value_parser = parse_label_value)]
    cluster_id: Option<String>,
    /// This cluster's default network (`topology.istio.io/network`), when
    /// the `Mesh` names none.
    #[arg(long, value_parser = parse_label_value)]
    network: Option<String>,
    /// Compute the service graph from this Prometheus (`http://host:9090`)
    /// instead of scraping.
    #[arg(long, conflicts_with = "scrape")]
    prometheus: Option<String>,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (e.g. 0.5)")),
    }
}

/// The cluster to read: a kubeconfig's, or the one weft runs in.
async fn kube_source(args: &Args) -> Result<weft_control::kubernetes::KubeSource, String> {
    let (client, origin) = super::kube_client(args.kubeconfig.as_deref()).await?;
    let mut source = weft_control::kubernetes::KubeSource::new(client, origin);
    source.settings.cluster_domain = args.cluster_domain.clone();
    source.extra_dir = args.config_dir.clone();
    source.topology = weft_config::Topology {
        cluster: args.cluster_id.clone().unwrap_or_default(),
        network: args.network.clone().unwrap_or_default(),
    };
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        source.node_agent.0 = ns.clone();
        source.namespace = ns;
    }
    source.ca_secret = args.ca_secret.clone();
    if let Some(account) = &args.node_agent_account {
        let (ns, name) = account
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| {
                format!("--node-agent-account {account:?}: expected namespace/name, e.g. istio-system/ztunnel")
            })?;
        source.node_agent = (ns.to_owned(), name.to_owned());
    }
    if let Some(image) = &args.proxy_image {
        let control = match (&args.proxy_control_addr, args.tls_dns_names.first()) {
            (Some(a), _) => a.to_string(),
            (None, Some(name)) => format!("{name}:{}", args.tls_addr.port()),
            (None, None) => {
                return Err(
                    "--proxy-image: say where the deployed proxies reach this control plane (--proxy-control-addr or --tls-dns-name)".into(),
                );
            }
        };
        source.deploy = Some(weft_kube::deploy::ProxySettings {
            image: image.clone(),
            control,
            trust_domain: "cluster.local".into(),
        });
    }
    // Replicas elect who writes statuses, each named by its pod. Outside a
    // pod (a workstation) the one process writes, unless asked to elect.
    let pod = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
    if pod.is_some() || args.leader_elect {
        let identity = match pod {
            Some(pod) => pod,
            None => {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-control".into());
                let suffix = weft_ca::secret::random_token(8).map_err(|e| e.to_string())?;
                format!("{host}-{suffix}")
            }
        };
        source.election = Some(weft_kube::leader::Election::new(
            &source.namespace,
            &args.lease_name,
            &identity,
        ));
    }
    Ok(source)
}

/// The DNS names of the mTLS port's certificate: those asked for, and on
/// Kubernetes the name ztunnel expects of istiod.
fn parse_label_value(s: &str) -> Result<String, String> {
    weft_core::names::check_label_value(s).map(|()| s.to_owned())
}

fn server_names(mut names: Vec<String>, kubernetes: bool) -> Vec<String> {
    if kubernetes && !names.iter().any(|n| n == ISTIOD_NAME) {
        names.push(ISTIOD_NAME.to_owned());
    }
    names
}

/// The name Istio's ztunnel checks the control plane's certificate for.
const ISTIOD_NAME: &str = "istiod.istio-system.svc";

pub(crate) fn run(args: Args) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kubernetes = if args.kubernetes {
        match runtime.block_on(kube_source(&args)) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("weft control: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let options = Options {
        config_dir: args.config_dir.unwrap_or_default(),
        ca_dir: args.ca_dir,
        xds_addr: args.xds_addr,
        tls_addr: args.tls_addr,
        admin_addr: args.admin_addr,
        monitoring_addr: args.monitoring_addr,
        metrics_addr: args.metrics_addr,
        bootstrap_tokens: args.bootstrap_tokens,
        workload_ttl: args.workload_ttl,
        debounce: if kubernetes.is_some() {
            weft_control::kubernetes::DEBOUNCE
        } else {
            Debounce::default()
        },
        observe: match args.prometheus {
            Some(url) => weft_control::observe::Source::Prometheus(url),
            None => weft_control::observe::Source::Scrape(args.scrape),
        },
        scrape_interval: args.scrape_interval,
        max_removal: args.max_removal,
        server_names: server_names(args.tls_dns_names, kubernetes.is_some()),
        topology: weft_config::Topology {
            cluster: args.cluster_id.unwrap_or_default(),
            network: args.network.unwrap_or_default(),
        },
        kubernetes,
    };
    runtime.block_on(async move {
        let running = match weft_control::start(options).await {
            Ok(r) => r,
            Err(StartError::Config(e)) => {
                eprintln!("weft control: the configuration cannot be used:\n{e}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("weft control: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "weft control ready: xds={} tls={} admin={} monitoring={} metrics={} trust-domain={} root={}",
            running.xds_addr,
            running.tls_addr,
            running.admin_addr,
            running.monitoring_addr,
            running.metrics_addr,
            running.trust_domain,
            running.root_cert.display()
        );
        super::shutdown_signal().await;
        running.stop().await;
        ExitCode::SUCCESS
    })
}
