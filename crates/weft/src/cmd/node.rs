//! `weft node`: one node proxy as its own process (local mode: plaintext
//! config stream on loopback, certificates over mTLS with a bootstrap
//! token). `weft up` runs the same proxies in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weft_node::NodeOptions;

/// Flags of `weft node`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// This node's name (the `weft.dev/node` label of its workloads).
    #[arg(long)]
    name: String,
    /// The control plane's plaintext config stream (local mode; default
    /// 127.0.0.1:15010). With `--kubernetes` and without it, the config
    /// stream runs over mTLS on `--ca-addr` with the node's certificate.
    #[arg(long)]
    xds_addr: Option<SocketAddr>,
    /// The control plane's certificate service (mTLS): `host:port`, e.g.
    /// `weft-control.weft-system.svc:15012` in a cluster.
    #[arg(long, default_value = "127.0.0.1:15012")]
    ca_addr: weft_ca::client::ControlAddr,
    /// Root certificate(s) to trust (the control plane's root-cert.pem).
    #[arg(long)]
    root_cert: PathBuf,
    /// File holding this node's token (a bootstrap token; in a cluster
    /// the agent's projected service-account token, read again at every
    /// use as the kubelet rotates it).
    #[arg(long)]
    token_file: PathBuf,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Admin endpoints (`/config_dump`, `/certs`).
    #[arg(long)]
    admin_addr: SocketAddr,
    /// Prometheus metrics.
    #[arg(long)]
    metrics_addr: SocketAddr,
    /// TCP connect timeout to workloads and peers.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "10s")]
    connect_timeout: Duration,
    /// Unix socket where `weft run` attaches captured workloads (default
    /// `/run/weft/<name>.sock` when running as root; captured mode is off
    /// otherwise).
    #[arg(long)]
    attach_socket: Option<PathBuf>,
    /// Threads carrying traffic. One (the default) is the cheapest per
    /// request: no cross-thread wakeups (bench/l4 measures 0.05 CPU-s per
    /// 1,000 small requests for two hops, against 0.13 with two threads).
    /// Raise it on nodes that carry more than one core's worth of traffic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
    /// Where the node keeps its certificates and last good configuration
    /// (created 0700, files 0600), to start and serve from them while the
    /// control plane is unreachable. Default: /var/lib/weft/node-<name>
    /// as root, else ~/.local/state/weft/node-<name>.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// On Ctrl-C or SIGTERM, how long open connections may take to finish.
    #[arg(long, value_parser = super::sample_app::parse_duration, default_value = "5s")]
    drain_timeout: Duration,
    /// On Kubernetes: take pods from the CNI plugin (`weft-cni`) over the
    /// attach socket, capturing those the API server shows enrolled and
    /// scheduled on this node (`--name` is the Kubernetes node's name).
    #[arg(long)]
    kubernetes: bool,
    /// With `--kubernetes`: the kubeconfig (default: in-cluster).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With `--kubernetes`: install the CNI plugin — copy this binary to
    /// `<dir>/weft-cni` (the node's CNI bin directory, mounted) …
    #[arg(long, requires_all = ["kubernetes", "cni_conf_dir"])]
    cni_bin_dir: Option<PathBuf>,
    /// … and chain it into the first configuration of this directory.
    #[arg(long, requires = "cni_bin_dir")]
    cni_conf_dir: Option<PathBuf>,
    /// Namespaces whose pods the installed CNI plugin never hands to the
    /// agent (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,weft-system",
        requires = "cni_bin_dir"
    )]
    cni_exclude_namespaces: Vec<String>,
}

/// Installs the CNI plugin once the agent listens, trying again every 5 s
/// while the node's network plugin has written no configuration yet.
fn install_cni(args: &Args, attach_socket: Option<&std::path::Path>) -> Result<(), String> {
    let (Some(bin), Some(conf)) = (args.cni_bin_dir.clone(), args.cni_conf_dir.clone()) else {
        return Ok(());
    };
    let socket = attach_socket
        .ok_or("--cni-bin-dir needs the attach socket (run as root, or give --attach-socket)")?
        .to_owned();
    let settings = weft_cni::install::PluginSettings {
        log_file: socket.with_file_name("cni.log"),
        attach_socket: socket,
        exclude_namespaces: args.cni_exclude_namespaces.clone(),
    };
    let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    tokio::spawn(async move {
        let mut waiting = false;
        loop {
            match weft_cni::install::install(&binary, &bin, &conf, &settings) {
                Ok(file) => {
                    tracing::info!(plugin = %bin.join("weft-cni").display(), config = %file.display(), "CNI plugin installed");
                    return;
                }
                Err(weft_cni::install::InstallError::NoConfiguration(dir)) => {
                    if !waiting {
                        tracing::warn!(dir = %dir.display(), "no CNI configuration yet; installing the plugin once the network plugin writes one");
                        waiting = true;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the CNI plugin; retrying");
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    Ok(())
}

/// The pod policy of a node agent on Kubernetes: the API server decides,
/// and the node's pods are followed (their enrollment) while it lives.
struct KubePods {
    decider: weft_kube::capture::PodDecider,
    enrollment: tokio::sync::watch::Receiver<weft_core::attach::Enrollment>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for KubePods {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl weft_node::pods::PodPolicy for KubePods {
    fn decide<'a>(&'a self, pod: &'a weft_core::attach::PodRef) -> weft_node::pods::Deciding<'a> {
        use weft_kube::capture::Decision;
        use weft_node::pods::Verdict;
        Box::pin(async move {
            Ok(match self.decider.decide(pod).await? {
                Decision::Capture(identity) => Verdict::Capture(identity),
                Decision::Leave(reason) => Verdict::Leave(reason),
            })
        })
    }

    fn enrollment(&self) -> Option<tokio::sync::watch::Receiver<weft_core::attach::Enrollment>> {
        Some(self.enrollment.clone())
    }
}

/// Where node `name` keeps its state unless told otherwise.
fn default_state_dir(name: &str) -> PathBuf {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/weft")
    } else {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".local/state/weft")
    };
    base.join(format!("node-{name}"))
}

pub(crate) fn run(args: Args) -> ExitCode {
    let runtime = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
    .map_err(|e| format!("cannot start the async runtime: {e}"));
    let result = runtime.and_then(|rt| rt.block_on(node(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn node(args: Args) -> Result<(), String> {
    let attach_socket = args.attach_socket.clone().or_else(|| {
        nix::unistd::geteuid()
            .is_root()
            .then(|| super::run::default_socket(&args.name))
    });
    let roots = super::read_roots(&args.root_cert)?;
    let token = weft_ca::client::Token::File(args.token_file.clone());
    token.current()?;
    let xds_addr = match (args.xds_addr, args.kubernetes) {
        (Some(a), _) => Some(a),
        (None, true) => None,
        (None, false) => Some(SocketAddr::from(([127, 0, 0, 1], 15010))),
    };
    let pods: Option<std::sync::Arc<dyn weft_node::pods::PodPolicy>> = if args.kubernetes {
        let (client, origin) = super::kube_client(args.kubeconfig.as_deref()).await?;
        tracing::info!(cluster = %origin, node = %args.name, "taking pods from the CNI plugin");
        let (enrollment, follower) =
            weft_kube::enrollment::follow(&client, &args.name, &args.trust_domain);
        Some(std::sync::Arc::new(KubePods {
            decider: weft_kube::capture::PodDecider::new(client, &args.name, &args.trust_domain),
            enrollment,
            follower,
        }))
    } else {
        None
    };
    let proxy = weft_node::start_with_pods(
        NodeOptions {
            node: args.name.clone(),
            trust_domain: args.trust_domain.clone(),
            xds_addr,
            ca_addr: args.ca_addr.clone(),
            roots,
            token,
            admin_addr: args.admin_addr,
            metrics_addr: args.metrics_addr,
            connect_timeout: args.connect_timeout,
            attach_socket: attach_socket.clone(),
            state_dir: Some(
                args.state_dir
                    .clone()
                    .unwrap_or_else(|| default_state_dir(&args.name)),
            ),
        },
        pods,
    )
    .await
    .map_err(|e| e.to_string())?;
    install_cni(&args, attach_socket.as_deref())?;
    println!(
        "weft node {} ready: admin={} metrics={}",
        args.name, proxy.admin_addr, proxy.metrics_addr
    );
    super::shutdown_signal().await;
    proxy.drain(args.drain_timeout).await;
    Ok(())
}
