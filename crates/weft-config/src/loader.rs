//! Finding and reading configuration files, and dispatching each document
//! to its kind's decoder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::diag::{Diagnostic, Origin};
use crate::kinds::{self, Resources};
use crate::yaml;

/// Directories nested deeper than this are not read (guards symlink loops).
const MAX_DEPTH: usize = 16;

/// Why a configuration path could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path does not exist or is not accessible.
    #[error("cannot read configuration at {path}: {source}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Lists the YAML files under `path` (recursively, sorted, skipping hidden
/// files and directories such as `.git`), or `path` itself if it is a file.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    // Read the top level eagerly so an unreadable directory is a ReadError.
    std::fs::read_dir(path).map_err(io)?;
    let mut files = Vec::new();
    walk(path, 0, &mut files);
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Reported when the file inside is read; nothing to list here.
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        // Follows symlinks, so a ConfigMap-style `..data` swap works.
        let Ok(meta) = std::fs::metadata(&path) else {
            files.push(path); // a dangling link: reading it reports the problem
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, files);
            }
        } else if is_yaml(&path) {
            files.push(path);
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Parses one file's text and adds its resources; problems go to `out`.
#[cfg(test)]
pub(crate) fn add_file(
    file: &Path,
    text: &str,
    resources: &mut Resources,
    out: &mut Vec<Diagnostic>,
) {
    add_source(file, &Arc::from(text), resources, out);
}

/// Parses one file's text, already shared (the resources' origins keep it
/// for line numbers), and adds its resources; problems go to `out`.
pub(crate) fn add_source(
    file: &Path,
    source: &Arc<str>,
    resources: &mut Resources,
    out: &mut Vec<Diagnostic>,
) {
    let text: &str = source;
    let docs = match yaml::parse(text) {
        Ok(docs) => docs,
        Err(e) => {
            out.push(Diagnostic::file(
                file,
                e.line,
                format!("not valid YAML: {}", e.message),
            ));
            return;
        }
    };
    let file = Arc::new(file.to_owned());
    for doc in docs {
        let origin = Origin {
            file: file.clone(),
            doc: doc.index,
            source: source.clone(),
        };
        add_document(&doc.value, &origin, resources, out);
    }
}

fn add_document(
    value: &Value,
    origin: &Origin,
    resources: &mut Resources,
    out: &mut Vec<Diagnostic>,
) {
    if !value.is_object() {
        out.push(Diagnostic::at(
            origin,
            None,
            "",
            "a resource must be a mapping with apiVersion, kind, metadata and spec",
        ));
        return;
    }
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        let missing = if field("apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        out.push(Diagnostic::at(
            origin,
            None,
            missing,
            "is required (a string)",
        ));
        return;
    };
    match kinds::lookup(api_version, kind) {
        Ok(def) => (def.add)(value, origin, resources, out),
        Err((field, message)) => out.push(Diagnostic::at(origin, None, field, message)),
    }
}
