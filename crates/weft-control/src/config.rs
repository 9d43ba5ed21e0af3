//! The live configuration: a directory watched for changes, each change
//! validated as a whole. Valid → a new immutable snapshot with a new
//! version, published to the certificate service and the config stream.
//! Invalid, or valid but removing most of the mesh at once (held back
//! until confirmed, [`crate::guard`]) → rejected with every problem logged
//! and kept for `/debug/config-status`; the previous snapshot stays in
//! force.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use weft_config::{LoadError, Loader};
use weft_core::model::Snapshot;
use weft_xds::ResourceSet;

use crate::debounce::Debounce;
use crate::imports::{Imported, RemoteStatus};

/// What `/debug/config-status` shows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    /// The directory.
    pub dir: String,
    /// Version of the snapshot in force.
    pub version: u64,
    /// When it was applied (RFC 3339).
    pub applied_at: Option<String>,
    /// Resources in it.
    pub resources: usize,
    /// Whether the last attempt was rejected.
    pub last_attempt_rejected: bool,
    /// Every problem of the last rejected attempt.
    pub problems: Vec<String>,
    /// Kubernetes: the problems of objects set aside (each one's last good
    /// version, if any, stays in force; the rest applied).
    pub objects_set_aside: Vec<String>,
    /// Warnings of the configuration in force (it loaded; these deserve
    /// a look: deprecated fields, fields without effect).
    pub warnings: Vec<String>,
    /// When the last rejection happened.
    pub rejected_at: Option<String>,
    /// The clusters this one peers with, and how their streams are doing.
    pub remote_clusters: Vec<crate::imports::RemoteStatus>,
}

/// Config metrics, registered explicitly.
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    /// Accepted reloads.
    pub applied: Counter,
    /// Rejections by kind: `configuration` for a whole directory change
    /// refused, else the kind of a Kubernetes object set aside.
    pub rejected: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
    /// Version in force.
    pub version: Gauge,
    /// Warnings of the configuration in force.
    pub warnings: Gauge,
}

impl ConfigMetrics {
    /// Registers `weft_config_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            weft_telemetry::names::CONFIG_APPLIED,
            "Configuration changes validated and applied",
            self.applied.clone(),
        );
        registry.register(
            weft_telemetry::names::CONFIG_REJECTED,
            "Configuration changes rejected as invalid (the previous one stays in force), by kind: configuration (a whole change), or the kind of a Kubernetes object set aside",
            self.rejected.clone(),
        );
        registry.register(
            weft_telemetry::names::CONFIG_WARNINGS,
            "Warnings in the configuration in force (deprecated fields, fields without effect; see /debug/config-status)",
            self.warnings.clone(),
        );
        registry.register(
            weft_telemetry::names::CONFIG_VERSION,
            "Version of the configuration in force",
            self.version.clone(),
        );
    }
}

/// The configuration in force and how to follow it.
pub struct LiveConfig {
    /// The directory, when the configuration comes from one.
    dir: Option<PathBuf>,
    /// Share of services or workloads one change may remove before it is
    /// held back for confirmation ([`crate::guard`]).
    max_removal: f64,
    loader: Mutex<Loader>,
    /// The snapshot in force (the certificate service authorizes against it).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The resources built from the snapshot alone (what the next change
    /// builds on).
    local: Mutex<Arc<ResourceSet>>,
    /// What the clusters this one peers with export, by cluster ID.
    imports: Mutex<BTreeMap<String, Arc<Imported>>>,
    /// Served: the local resources joined with the imports.
    resources: watch::Sender<Arc<ResourceSet>>,
    status: Mutex<ConfigStatus>,
    metrics: ConfigMetrics,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The first load failed; nothing can be served.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InitialLoadError(pub LoadError);

/// Logs and counts the warnings of a configuration about to be applied,
/// returning them as `/debug/config-status` shows them.
fn warnings_of(config: &weft_config::Config, metrics: &ConfigMetrics) -> Vec<String> {
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    metrics
        .warnings
        .set(i64::try_from(warnings.len()).unwrap_or(i64::MAX));
    warnings
}

fn now() -> String {
    weft_ca::manager::rfc3339(SystemTime::now())
}

impl LiveConfig {
    /// Loads `dir` once; an invalid first configuration is an error. Later
    /// changes that remove more than `max_removal` of the services or
    /// workloads wait for confirmation ([`crate::guard`]).
    pub fn load(
        dir: PathBuf,
        max_removal: f64,
        metrics: ConfigMetrics,
    ) -> Result<Arc<Self>, InitialLoadError> {
        Self::load_with(dir, weft_config::Topology::default(), max_removal, metrics)
    }

    /// As [`LiveConfig::load`], with this cluster's ID and network where
    /// the `Mesh` names none.
    pub fn load_with(
        dir: PathBuf,
        topology: weft_config::Topology,
        max_removal: f64,
        metrics: ConfigMetrics,
    ) -> Result<Arc<Self>, InitialLoadError> {
        let mut loader = Loader::with_topology(topology);
        let config = loader.load(&dir).map_err(InitialLoadError)?;
        let origin = dir.display().to_string();
        Ok(Self::start_with(
            origin,
            Some(dir),
            loader,
            config,
            max_removal,
            metrics,
        ))
    }

    /// A configuration fed from outside (the Kubernetes source): `origin`
    /// names it in the status; changes come with [`LiveConfig::apply`].
    pub fn from_config(
        origin: String,
        config: weft_config::Config,
        max_removal: f64,
        metrics: ConfigMetrics,
    ) -> Arc<Self> {
        Self::start_with(
            origin,
            None,
            Loader::default(),
            config,
            max_removal,
            metrics,
        )
    }

    fn start_with(
        origin: String,
        dir: Option<PathBuf>,
        loader: Loader,
        config: weft_config::Config,
        max_removal: f64,
        metrics: ConfigMetrics,
    ) -> Arc<Self> {
        let version = 1;
        let mut resources = weft_xds::resources::build(&config.snapshot, version);
        weft_xds::export::add_to(&mut resources, &config.snapshot);
        let resources = Arc::new(resources);
        let (tx, _) = watch::channel(resources.clone());
        metrics.applied.inc();
        metrics.version.set(1);
        let status = ConfigStatus {
            dir: origin,
            version,
            applied_at: Some(now()),
            resources: config.resources.len(),
            warnings: warnings_of(&config, &metrics),
            ..Default::default()
        };
        Arc::new(LiveConfig {
            dir,
            max_removal,
            loader: Mutex::new(loader),
            snapshot: Arc::new(ArcSwap::new(config.snapshot)),
            local: Mutex::new(resources),
            imports: Mutex::new(BTreeMap::new()),
            resources: tx,
            status: Mutex::new(status),
            metrics,
        })
    }

    /// Records the problems of the objects set aside in the last change
    /// (Kubernetes mode), and counts each object newly set aside by kind.
    pub fn set_aside(&self, problems: Vec<String>, newly: &[String]) {
        for p in &problems {
            tracing::warn!("object set aside: {p}");
        }
        for kind in newly {
            self.metrics
                .rejected
                .get_or_create(&vec![("kind".to_owned(), kind.clone())])
                .inc();
        }
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .objects_set_aside = problems;
    }

    /// The xDS resources, updated on every applied change.
    pub fn resources(&self) -> watch::Receiver<Arc<ResourceSet>> {
        self.resources.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the directory again; applies it if valid. Returns whether it
    /// was applied. (Without a directory: nothing to load, `false`.)
    pub fn reload(&self) -> bool {
        let Some(dir) = &self.dir else {
            return false;
        };
        let started = std::time::Instant::now();
        let loaded = self
            .loader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .load(dir);
        tracing::debug!(took = ?started.elapsed(), "directory loaded");
        self.apply(loaded.map_err(|e| match e {
            LoadError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
            LoadError::Read(r) => vec![r.to_string()],
        }))
    }

    /// Applies a loaded configuration (or records why there is none: the
    /// problems), the previous one staying in force when it is not
    /// applied. Returns whether it was applied.
    pub fn apply(&self, loaded: Result<weft_config::Config, Vec<String>>) -> bool {
        let started = std::time::Instant::now();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        // A valid change that would remove most of the mesh waits for the
        // operator's confirmation (a marker file beside a directory).
        let marker = self
            .dir
            .as_ref()
            .map(|d| d.join(crate::guard::CONFIRM_MARKER));
        let loaded = loaded.and_then(|config| {
            let held = crate::guard::held_back(&self.snapshot.load(), &config.snapshot, self.max_removal);
            match (held, &marker) {
                (None, _) => Ok(config),
                (Some(why), None) => Err(vec![format!("held back, not applied: {why}")]),
                (Some(why), Some(marker)) if !marker.exists() => Err(vec![format!(
                    "held back, not applied: {why}; if this is intended, confirm with: touch {}",
                    marker.display()
                )]),
                (Some(why), Some(marker)) => {
                    tracing::warn!(%why, marker = %marker.display(), "large removal confirmed by the marker file; applying it");
                    if let Err(e) = std::fs::remove_file(marker) {
                        tracing::warn!(marker = %marker.display(), error = %e, "cannot remove the confirmation marker; the guard stays off until it is removed");
                    }
                    Ok(config)
                }
            }
        });
        match loaded {
            Ok(config) => {
                let version = status.version + 1;
                status.warnings = warnings_of(&config, &self.metrics);
                let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
                let guarded = started.elapsed();
                // Only what the change touched is encoded again.
                let mut resources = weft_xds::resources::build_from(
                    &config.snapshot,
                    self.resources.borrow().version + 1,
                    Some((&self.snapshot.load(), &local)),
                );
                weft_xds::export::add_to(&mut resources, &config.snapshot);
                let built = started.elapsed();
                *local = Arc::new(resources);
                self.publish(&local, &config.snapshot);
                tracing::debug!(?guarded, ?built, delta = ?started.elapsed(), "xDS resources built");
                drop(local);
                self.snapshot.store(config.snapshot);
                status.version = version;
                status.applied_at = Some(now());
                status.resources = config.resources.len();
                status.last_attempt_rejected = false;
                self.metrics.applied.inc();
                self.metrics
                    .version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                tracing::info!(version, resources = status.resources, took = ?started.elapsed(), "configuration applied");
                true
            }
            Err(problems) => {
                tracing::error!(
                    source = %status.dir,
                    version_in_force = status.version,
                    "configuration rejected; the previous one stays in force:\n{}",
                    problems.join("\n")
                );
                status.last_attempt_rejected = true;
                status.problems = problems;
                status.rejected_at = Some(now());
                self.metrics
                    .rejected
                    .get_or_create(&vec![("kind".to_owned(), "configuration".to_owned())])
                    .inc();
                false
            }
        }
    }

    /// Serves `local` (built from `snapshot`) joined with the imports, as
    /// the next version, with what changed since the set served before.
    fn publish(&self, local: &Arc<ResourceSet>, snapshot: &Snapshot) {
        let imports = self.imports.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.resources.borrow().clone();
        let version = previous.version + 1;
        let set = if imports.is_empty() {
            ResourceSet {
                version,
                ..(**local).clone()
            }
        } else {
            crate::imports::merge(local, snapshot, &imports, version)
        };
        self.resources
            .send_replace(Arc::new(set.with_delta_from(&previous)));
    }

    /// Replaces what cluster `cluster` exports (`None`: forgets it), and
    /// serves the result.
    pub fn import(&self, cluster: &str, imported: Option<Arc<Imported>>) {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut imports = self.imports.lock().unwrap_or_else(|p| p.into_inner());
            match imported {
                Some(i) => imports.insert(cluster.to_owned(), i),
                None => imports.remove(cluster),
            };
        }
        self.publish(&local, &self.snapshot.load());
    }

    /// Which gateway calls between clusters pass, from the snapshot in
    /// force and the imports.
    pub fn crossings(&self) -> crate::crossings::Crossings {
        let imports = self.imports.lock().unwrap_or_else(|p| p.into_inner());
        crate::crossings::Crossings::new(&self.snapshot.load(), &imports)
    }

    /// Records how the streams to the clusters this one peers with are
    /// doing, for `/debug/config-status`.
    pub fn set_remote_status(&self, remotes: Vec<RemoteStatus>) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remote_clusters = remotes;
    }

    /// Watches the directory and reloads after each burst of changes,
    /// until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>, debounce: Debounce) -> Result<WatchGuard, notify::Error> {
        let (tx, mut rx) = mpsc::channel::<()>(1024);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    // A full channel already means "something changed".
                    let _ = tx.try_send(());
                }
            })?;
        let Some(dir) = &self.dir else {
            return Err(notify::Error::generic(
                "the configuration does not come from a directory",
            ));
        };
        watcher.watch(dir, RecursiveMode::Recursive)?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            while debounce.next(&mut rx).await {
                let me = me.clone();
                // Loading reads files: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        });
        Ok(WatchGuard {
            _watcher: Some(Box::new(watcher)),
            task,
        })
    }
}

/// Keeps a directory watch alive.
pub struct WatchGuard {
    _watcher: Option<Box<dyn Watcher + Send>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchGuard {
    /// Keeps a task that feeds the configuration (the Kubernetes source)
    /// alive, and stops it when dropped.
    pub fn task(task: tokio::task::JoinHandle<()>) -> Self {
        WatchGuard {
            _watcher: None,
            task,
        }
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchGuard")
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
