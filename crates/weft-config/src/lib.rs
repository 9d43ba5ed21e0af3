//! # weft-config
//!
//! weft's configuration framework. It reads declarative YAML — users' own
//! Istio resources plus `weft.dev/v1alpha1` kinds — from a directory kept in
//! git, validates it as a whole and translates it into the one internal
//! model proxies consume, [`weft_core::model::Snapshot`].
//!
//! The pipeline, one module per step:
//!
//! 1. [`loader`]: find `*.yaml`/`*.yml` files (recursively, skipping hidden
//!    ones such as `.git`) and split them into documents;
//! 2. `yaml`: parse each document, remembering the line of every field;
//! 3. [`kinds`]: decode each document by `apiVersion` + `kind` into a typed
//!    [`Resource`], rejecting unknown fields by name, and check it alone;
//! 4. `cross`: checks that span resources (duplicates, overlaps, selectors);
//! 5. `translate`: build the snapshot.
//!
//! A [`Loader`] reloading a directory (or Kubernetes objects) repeats only
//! what an edit can affect: unchanged files are not parsed again, and the
//! steps that stay inside a namespace reuse their previous results for
//! every namespace the edit did not touch (`memo`).
//!
//! Every problem becomes a [`Diagnostic`] naming file, document, line,
//! object and field; all of them are reported at once as [`Problems`]. A
//! configuration with any problem yields no snapshot, so the caller keeps
//! the last good one.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weft_core::model::Snapshot;

mod cross;
pub mod diag;
pub mod kinds;
pub mod loader;
mod memo;
mod node_authz;
pub mod resource;
mod select;
mod translate;
pub mod translate_l7;
mod yaml;

pub use diag::{Diagnostic, Problems, Severity};
pub use kinds::Resources;
pub use loader::ReadError;
pub use resource::Resource;

/// A valid configuration: its resources and the snapshot built from them.
#[derive(Debug, Clone)]
pub struct Config {
    /// The resources as written.
    pub resources: Resources,
    /// The internal model, shared read-only with the data path.
    pub snapshot: Arc<Snapshot>,
    /// Warnings: the configuration loads, but these deserve a look
    /// (deprecated fields read, fields without effect where attached).
    pub warnings: Vec<Diagnostic>,
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path itself could not be read (`weft validate` exits 2).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The configuration has problems (`weft validate` exits 1).
    #[error("{count} problem(s) in the configuration:\n{0}", count = .0.errors())]
    Invalid(Problems),
}

/// Loads, validates and translates every YAML file under `path` (a
/// directory, or one file).
pub fn load_path(path: &Path) -> Result<Config, LoadError> {
    Loader::default().load(path)
}

/// Loads a configuration from in-memory `(file name, YAML text)` pairs, as
/// tests and the in-process harness do.
pub fn load_sources<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Result<Config, Problems> {
    let parsed: Vec<Arc<Parsed>> = sources
        .into_iter()
        .map(|(file, text)| Arc::new(Parsed::new(file, text)))
        .collect();
    finish(&parsed, Vec::new(), &mut Memo::default())
}

/// One file, parsed and decoded.
#[derive(Debug)]
struct Parsed {
    /// The text parsed (shared with the resources' origins).
    text: Arc<str>,
    resources: Resources,
    problems: Vec<Diagnostic>,
}

impl Parsed {
    fn new(file: &Path, text: &str) -> Self {
        let mut resources = Resources::default();
        let mut problems = Vec::new();
        let text: Arc<str> = Arc::from(text);
        loader::add_source(file, &text, &mut resources, &mut problems);
        Parsed {
            text,
            resources,
            problems,
        }
    }
}

/// What the namespace-local steps found in the previous load ([`memo`]).
#[derive(Debug, Default)]
struct Memo {
    /// This cluster's ID and network when the `Mesh` names none.
    topology: Topology,
    checked: cross::Local,
    translated: memo::Kept<translate::PartKey, translate::Part>,
}

/// Loads a directory again and again (the control plane's reloads),
/// parsing only the files whose content changed since the last load, and
/// checking and translating again only the namespaces those files touch
/// (checks across namespaces always see everything).
#[derive(Debug, Default)]
pub struct Loader {
    cache: HashMap<PathBuf, Arc<Parsed>>,
    memo: Memo,
}

/// This cluster's ID and default network as the control plane was told
/// them (`weft control --cluster-id --network`): what a configuration
/// whose `Mesh` names neither uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// The cluster ID (empty: unnamed).
    pub cluster: String,
    /// The default network (empty: one flat network).
    pub network: String,
}

impl Loader {
    /// A loader whose configurations default to `topology` where their
    /// `Mesh` is silent.
    pub fn with_topology(topology: Topology) -> Self {
        let mut loader = Loader::default();
        loader.memo.topology = topology;
        loader
    }

    /// Loads, validates and translates every YAML file under `path`.
    pub fn load(&mut self, path: &Path) -> Result<Config, LoadError> {
        let files = loader::yaml_files(path)?;
        let mut problems = Vec::new();
        let mut texts = Vec::with_capacity(files.len());
        for file in files {
            match std::fs::read(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => texts.push((file, text)),
                    Err(_) => problems.push(Diagnostic::file(file, None, "is not UTF-8 text")),
                },
                Err(e) => {
                    problems.push(Diagnostic::file(file, None, format!("cannot be read: {e}")))
                }
            }
        }
        self.load_texts(&texts, problems)
            .map_err(LoadError::Invalid)
    }

    /// Loads, validates and translates in-memory documents, each named by
    /// a path (Kubernetes objects: `k8s/<kind>/<namespace>/<name>`); like
    /// [`Loader::load`], only the ones whose text changed are parsed again.
    pub fn load_documents(&mut self, documents: &[(PathBuf, String)]) -> Result<Config, Problems> {
        self.load_texts(documents, Vec::new())
    }

    fn load_texts(
        &mut self,
        texts: &[(PathBuf, String)],
        problems: Vec<Diagnostic>,
    ) -> Result<Config, Problems> {
        let started = std::time::Instant::now();
        let stale: Vec<&(PathBuf, String)> = texts
            .iter()
            .filter(|(file, text)| self.cache.get(file).is_none_or(|p| *p.text != **text))
            .collect();
        let stale_count = stale.len();
        for (file, parsed) in parse_parallel(&stale) {
            self.cache.insert(file, parsed);
        }
        let mut parsed = Vec::with_capacity(texts.len());
        let mut fresh = HashMap::with_capacity(texts.len());
        for (file, _) in texts {
            if let Some(p) = self.cache.remove(file) {
                parsed.push(p.clone());
                fresh.insert(file.clone(), p);
            }
        }
        // Forget files that are gone.
        self.cache = fresh;
        tracing::debug!(parsed = stale_count, took = ?started.elapsed(), "changed files parsed");
        finish(&parsed, problems, &mut self.memo)
    }
}

/// Parses files on every core; the results come back in input order.
fn parse_parallel(files: &[&(PathBuf, String)]) -> Vec<(PathBuf, Arc<Parsed>)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let chunk = files.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(file, text)| (file.clone(), Arc::new(Parsed::new(file, text))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Checks across resources and translates, given every parsed file.
fn finish(
    parsed: &[Arc<Parsed>],
    mut problems: Vec<Diagnostic>,
    memo: &mut Memo,
) -> Result<Config, Problems> {
    let started = std::time::Instant::now();
    let mut resources = Resources::default();
    for p in parsed {
        resources.extend_from(&p.resources);
        problems.extend(p.problems.iter().cloned());
    }
    let shards = memo::shards(&resources);
    let merged = started.elapsed();
    cross::check(&resources, &shards, &mut memo.checked, &mut problems);
    let checked = started.elapsed();
    // File order reads best; within a document, the order checks ran
    // (the namespace-local checks keep each resource's findings in order,
    // so a reused result sorts exactly like a fresh one).
    let in_order = |problems: &mut Vec<Diagnostic>| {
        problems.sort_by(|a, b| (&a.file, a.doc, a.line).cmp(&(&b.file, b.doc, b.line)));
    };
    if problems.iter().any(Diagnostic::is_error) {
        in_order(&mut problems);
        return Err(Problems(problems));
    }
    let snapshot = translate::translate(
        &resources,
        &shards,
        &memo.topology,
        &mut memo.translated,
        &mut problems,
    );
    tracing::debug!(?merged, ?checked, translated = ?started.elapsed(), "configuration validated");
    in_order(&mut problems);
    if problems.iter().any(Diagnostic::is_error) {
        return Err(Problems(problems));
    }
    Ok(Config {
        resources,
        snapshot: Arc::new(snapshot),
        warnings: problems,
    })
}
