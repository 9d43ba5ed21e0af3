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
//! Every problem becomes a [`Diagnostic`] naming file, document, line,
//! object and field; all of them are reported at once as [`Problems`]. A
//! configuration with any problem yields no snapshot, so the caller keeps
//! the last good one.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use weft_core::model::Snapshot;

mod cross;
pub mod diag;
pub mod kinds;
pub mod loader;
pub mod resource;
mod translate;
mod yaml;

pub use diag::{Diagnostic, Problems};
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
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path itself could not be read (`weft validate` exits 2).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The configuration has problems (`weft validate` exits 1).
    #[error("{count} problem(s) in the configuration:\n{0}", count = .0.len())]
    Invalid(Problems),
}

/// Loads, validates and translates every YAML file under `path` (a
/// directory, or one file).
pub fn load_path(path: &Path) -> Result<Config, LoadError> {
    let files = loader::yaml_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    let mut problems = Vec::new();
    for file in files {
        match std::fs::read(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push((file, text)),
                Err(_) => problems.push(Diagnostic::file(file, None, "is not UTF-8 text")),
            },
            Err(e) => problems.push(Diagnostic::file(file, None, format!("cannot be read: {e}"))),
        }
    }
    load_sources_with(
        sources.iter().map(|(p, t)| (p.as_path(), t.as_str())),
        problems,
    )
    .map_err(LoadError::Invalid)
}

/// Loads a configuration from in-memory `(file name, YAML text)` pairs, as
/// tests and the in-process harness do.
pub fn load_sources<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Result<Config, Problems> {
    load_sources_with(sources, Vec::new())
}

fn load_sources_with<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
    mut problems: Vec<Diagnostic>,
) -> Result<Config, Problems> {
    let mut resources = Resources::default();
    for (file, text) in sources {
        loader::add_file(file, text, &mut resources, &mut problems);
    }
    cross::check(&resources, &mut problems);
    if !problems.is_empty() {
        // File order reads best; within a document, the order checks ran.
        problems.sort_by(|a, b| (&a.file, a.doc, a.line).cmp(&(&b.file, b.doc, b.line)));
        return Err(Problems(problems));
    }
    let snapshot = translate::translate(&resources, &mut problems);
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(Config {
        resources,
        snapshot: Arc::new(snapshot),
    })
}
