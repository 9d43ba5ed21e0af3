//! The configuration from a Kubernetes cluster (`weft control
//! --kubernetes`): the reflectors of `weft-kube` feed the same
//! [`LiveConfig`] a directory does. Each change — coalesced by the
//! [`Debounce`] — is converted, loaded with bad objects set aside (their
//! last good version in force), and applied; the problems of the objects
//! set aside are kept in `/debug/config-status`, counted in
//! `weft_config_rejected_total{kind}`, and written to the objects'
//! statuses and Events (`weft_kube::status`). The leader also deploys
//! the Gateways' waypoints and gateways (`weft_kube::deploy`) when told
//! which image they run. A directory
//! given as well (`--config-dir`, e.g. ServiceEntries for VMs) is read
//! with every change. The share-of-removal guard is off (the cluster is
//! the truth, and there is no directory to confirm in); an emptied mesh
//! is still held back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_kube::convert::{PodDocuments, Settings, documents_reusing};
use weft_kube::deploy::Deployer;
use weft_kube::isolate::{Isolating, Loaded};
use weft_kube::source::Reflectors;
use weft_kube::status::StatusWriter;

use crate::config::{ConfigMetrics, LiveConfig, WatchGuard};
use crate::{Debounce, StartError};

/// How long the first sync may take before kinds that never listed (their
/// CRD not installed) are taken as empty.
pub const INITIAL_SYNC: Duration = Duration::from_secs(10);

/// How watch events are coalesced: shorter than a directory's quiet
/// period (the API server sends whole objects, never half-written files),
/// still at most 1 s behind a steady stream (a rollout), and the first
/// change after a quiet spell taken at once.
pub const DEBOUNCE: Debounce = Debounce {
    quiet: Duration::from_millis(30),
    max_delay: Duration::from_secs(1),
    idle_at_once: true,
};

/// Where the cluster is and how to read it.
#[derive(Clone)]
pub struct KubeSource {
    /// The API server's client (kube-rs).
    pub client: kube::Client,
    /// Conversion settings (cluster domain).
    pub settings: Settings,
    /// What `/debug/config-status` calls the source (the server's URL).
    pub origin: String,
    /// A directory read as well, if any.
    pub extra_dir: Option<PathBuf>,
    /// Audiences a service-account token may be for to obtain
    /// certificates (`istio-ca`, what Istio's agents ask for).
    pub token_audiences: Vec<String>,
    /// The node agent's (namespace, service account): its token, bound
    /// to a pod on a node, proves that node.
    pub node_agent: (String, String),
    /// The control plane's own namespace (its CA Secret and Lease).
    pub namespace: String,
    /// The Secret holding the CA in Istio's plug-in layout (`cacerts`):
    /// read into the CA directory at start, created with a new root when
    /// absent. `None`: the CA directory alone.
    pub ca_secret: Option<String>,
    /// Leader election among replicas: only the leader writes statuses
    /// and Events. `None`: this replica always does (one replica).
    pub election: Option<weft_kube::leader::Election>,
    /// How often the root certificate ConfigMap (`istio-ca-root-cert`) is
    /// checked in every namespace; `None`: not published.
    pub publish_roots: Option<Duration>,
    /// What the waypoints and gateways deployed for Gateways run; `None`:
    /// Gateways are not deployed (their proxies are run by hand).
    pub deploy: Option<weft_kube::deploy::ProxySettings>,
    /// This cluster's ID and network (`--cluster-id`, `--network`), where
    /// the `Mesh` names none.
    pub topology: weft_config::Topology,
}

impl KubeSource {
    /// A source with the defaults: cluster domain `cluster.local`,
    /// audience `istio-ca`, node agent `weft-system/weft-node`.
    pub fn new(client: kube::Client, origin: String) -> Self {
        KubeSource {
            client,
            settings: Settings::default(),
            origin,
            extra_dir: None,
            token_audiences: vec![weft_kube::tokens::ISTIO_CA_AUDIENCE.to_owned()],
            node_agent: ("weft-system".to_owned(), "weft-node".to_owned()),
            namespace: "weft-system".to_owned(),
            ca_secret: None,
            election: None,
            publish_roots: Some(weft_kube::roots::RESYNC),
            deploy: None,
            topology: weft_config::Topology::default(),
        }
    }
}

/// Reads the CA Secret into `dir` (creating it when absent), when the
/// source names one.
pub async fn fetch_ca(
    source: &KubeSource,
    dir: &std::path::Path,
    trust_domain: &str,
) -> Result<(), StartError> {
    let Some(name) = &source.ca_secret else {
        return Ok(());
    };
    let origin = weft_kube::ca_secret::fetch_or_create(
        &source.client,
        &source.namespace,
        name,
        dir,
        trust_domain,
    )
    .await
    .map_err(|e| StartError::Other(e.to_string()))?;
    tracing::info!(secret = %format!("{}/{name}", source.namespace), ?origin, "CA from its Secret");
    Ok(())
}

/// The certificate service, accepting the cluster's service-account
/// tokens (by `TokenReview`) when the configuration comes from one.
pub fn reviewed(
    service: weft_ca::service::CertificateService,
    source: Option<&KubeSource>,
) -> weft_ca::service::CertificateService {
    match source {
        Some(k) => service.with_reviewer(
            Arc::new(weft_kube::tokens::KubeTokenReviewer::new(
                k.client.clone(),
                k.token_audiences.clone(),
            )),
            k.node_agent.clone(),
        ),
        None => service,
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("origin", &self.origin)
            .field("extra_dir", &self.extra_dir)
            .finish_non_exhaustive()
    }
}

/// The documents of a directory (unreadable files are skipped, logged).
fn directory_documents(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    let files = match weft_config::loader::yaml_files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the configuration directory");
            return Vec::new();
        }
    };
    files
        .into_iter()
        .filter_map(|f| match std::fs::read_to_string(&f) {
            Ok(text) => Some((f, text)),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "cannot read");
                None
            }
        })
        .collect()
}

/// Loads the cluster as it is now; also returns the cluster read, whose
/// statuses and deployments follow the load.
fn load(
    source: &KubeSource,
    reflectors: &Reflectors,
    isolating: &mut Isolating,
    pods: &mut PodDocuments,
) -> (Loaded, weft_kube::convert::Cluster) {
    let started = std::time::Instant::now();
    let cluster = reflectors.cluster();
    let copied = started.elapsed();
    let mut docs = documents_reusing(&cluster, &source.settings, pods);
    if let Some(dir) = &source.extra_dir {
        docs.extend(directory_documents(dir));
    }
    let converted = started.elapsed();
    let loaded = isolating.load(docs);
    tracing::debug!(?copied, ?converted, loaded = ?started.elapsed(), "cluster loaded");
    (loaded, cluster)
}

/// What the leader writes after a load: the Gateways' deployments, then
/// every status.
struct Leader {
    writer: StatusWriter,
    deployer: Option<Deployer>,
}

impl Leader {
    /// Forgets what it wrote (leadership was regained).
    fn forget(&mut self) {
        self.writer.forget();
        if let Some(d) = &mut self.deployer {
            d.forget();
        }
    }

    async fn write(&mut self, cluster: &weft_kube::convert::Cluster, loaded: &Loaded) {
        let rollouts = match &mut self.deployer {
            Some(d) => {
                if let Some(config) = &loaded.config {
                    d.set_trust_domain(&config.snapshot.mesh.trust_domain);
                }
                d.reconcile(&cluster.resources, &cluster.deployments, &cluster.services)
                    .await;
                weft_kube::deploy::rollouts(
                    &cluster.resources,
                    &cluster.deployments,
                    &cluster.services,
                )
            }
            None => Default::default(),
        };
        self.writer
            .report(&cluster.resources, &loaded.problems, &rollouts)
            .await;
    }
}

/// The kinds of the documents set aside now and not before.
fn newly(loaded: &Loaded, before: &BTreeSet<PathBuf>) -> Vec<String> {
    loaded
        .set_aside
        .difference(before)
        .filter_map(|p| p.iter().nth(2).map(|k| k.to_string_lossy().into_owned()))
        .collect()
}

fn problems(loaded: &Loaded) -> Vec<String> {
    loaded
        .problems
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect()
}

/// Aborts a task when dropped (with the task that holds it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the reflectors, waits for the first sync and loads it; then
/// follows every change until the returned guard is dropped.
pub async fn start(
    source: KubeSource,
    metrics: ConfigMetrics,
    debounce: Debounce,
) -> Result<(Arc<LiveConfig>, WatchGuard), StartError> {
    let reflectors = Reflectors::start(&source.client);
    let missing = reflectors.ready(INITIAL_SYNC).await;
    if !missing.is_empty() {
        tracing::warn!(kinds = ?missing, "not listed within {INITIAL_SYNC:?} (CRD not installed, or not allowed?): taken as empty until they are");
    }
    let mut isolating = Isolating::with_topology(source.topology.clone());
    let mut writer = StatusWriter::new(source.client.clone());
    // Only the leader writes; without an election this replica leads.
    let (leading, election) = match source.election.clone() {
        Some(e) => {
            let (rx, task) = e.spawn(source.client.clone());
            writer = writer.with_leadership(rx.clone());
            (Some(rx), Some(AbortOnDrop(task)))
        }
        None => (None, None),
    };
    let leading_rx = leading.clone();
    let is_leader = move || leading.as_ref().is_none_or(|rx| *rx.borrow());
    let mut was_leader = is_leader();
    let mut leader = Leader {
        writer,
        deployer: (source.deploy.clone()).map(|s| Deployer::new(source.client.clone(), s)),
    };
    let mut pods = PodDocuments::default();
    let (loaded, cluster) = load(&source, &reflectors, &mut isolating, &mut pods);
    if was_leader {
        leader.write(&cluster, &loaded).await;
    }
    drop(cluster);
    let set_aside = problems(&loaded);
    let mut before = loaded.set_aside.clone();
    let first = newly(&loaded, &BTreeSet::new());
    let config = loaded.config.ok_or_else(|| {
        StartError::Other(format!(
            "the cluster's configuration does not load, even without the objects at fault:\n{}",
            set_aside.join("\n")
        ))
    })?;
    // The cluster is the truth: a namespace leaving the mesh removes all
    // its workloads at once, and there is no directory to confirm in. The
    // reflectors keep their state across API errors; only an emptied
    // mesh is still held back.
    let live = LiveConfig::from_config(source.origin.clone(), config, 1.0, metrics);
    live.set_aside(set_aside, &first);
    let follower = live.clone();
    let reflectors = Arc::new(reflectors);
    // Changes arrive through the reflectors' signal; the debounce
    // coalesces bursts (a Deployment rolling out) into one load. Gaining
    // or losing leadership reloads too (a new leader writes every status
    // afresh).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let signal = AbortOnDrop(tokio::spawn({
        let reflectors = reflectors.clone();
        let mut leading = leading_rx;
        async move {
            loop {
                match &mut leading {
                    Some(l) => tokio::select! {
                        () = reflectors.changed() => {}
                        changed = l.changed() => if changed.is_err() { leading = None; },
                    },
                    None => reflectors.changed().await,
                }
                // Full: a load is already due.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    return;
                }
            }
        }
    }));
    let task = tokio::spawn(async move {
        let _signal = signal;
        let _election = election;
        while debounce.next(&mut rx).await {
            let started = std::time::Instant::now();
            let (loaded, cluster) = load(&source, &reflectors, &mut isolating, &mut pods);
            let loading = started.elapsed();
            let set_aside = problems(&loaded);
            let fresh = newly(&loaded, &before);
            before = loaded.set_aside.clone();
            let leads = is_leader();
            if leads {
                if !was_leader {
                    leader.forget();
                }
                leader.write(&cluster, &loaded).await;
            }
            drop(cluster);
            was_leader = leads;
            match loaded.config {
                Some(config) => follower.apply(Ok(config)),
                None => follower.apply(Err(set_aside.clone())),
            };
            follower.set_aside(set_aside, &fresh);
            tracing::debug!(?loading, total = ?started.elapsed(), "cluster change applied");
        }
    });
    Ok((live, WatchGuard::task(task)))
}
