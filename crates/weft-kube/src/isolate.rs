//! One bad object never blocks the rest. Documents are loaded together;
//! when some have errors, each is replaced by its last version that
//! loaded (or left out) and the rest loaded again, until what remains
//! loads. The problems of the objects set aside are returned for status
//! reporting; the configuration in force keeps every good object.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use weft_config::{Config, Diagnostic, Loader};

/// How many rounds of setting objects aside before giving up (each round
/// removes at least one object; a problem that blames no object ends it).
const MAX_ROUNDS: usize = 8;

/// A loader that remembers each document's last good text.
#[derive(Debug, Default)]
pub struct Isolating {
    loader: Loader,
    good: BTreeMap<PathBuf, String>,
}

/// The outcome of one load.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration to apply (`None`: nothing loads, not even
    /// without the objects at fault — keep the previous one).
    pub config: Option<Config>,
    /// Problems, each naming its object's document; errors of objects set
    /// aside (their last good version, if any, in force) and warnings.
    pub problems: Vec<Diagnostic>,
    /// The documents set aside.
    pub set_aside: BTreeSet<PathBuf>,
}

impl Isolating {
    /// A loader whose configurations default to `topology` where their
    /// `Mesh` is silent (the control plane's `--cluster-id`, `--network`).
    pub fn with_topology(topology: weft_config::Topology) -> Self {
        Isolating {
            loader: Loader::with_topology(topology),
            good: BTreeMap::new(),
        }
    }

    /// Loads `documents`, setting aside the ones with errors.
    pub fn load(&mut self, documents: Vec<(PathBuf, String)>) -> Loaded {
        let mut current = documents;
        let mut set_aside = BTreeSet::new();
        let mut reported = Vec::new();
        for _ in 0..MAX_ROUNDS {
            match self.loader.load_documents(&current) {
                Ok(config) => {
                    for (path, text) in &current {
                        if !set_aside.contains(path) && self.good.get(path) != Some(text) {
                            self.good.insert(path.clone(), text.clone());
                        }
                    }
                    let names: BTreeSet<&PathBuf> = current.iter().map(|(p, _)| p).collect();
                    self.good
                        .retain(|p, _| names.contains(p) || set_aside.contains(p));
                    reported.extend(config.warnings.iter().cloned());
                    return Loaded {
                        config: Some(config),
                        problems: reported,
                        set_aside,
                    };
                }
                Err(problems) => {
                    let at_fault: BTreeSet<PathBuf> = problems
                        .iter()
                        .filter(|d| d.is_error())
                        .map(|d| d.file.clone())
                        .filter(|f| current.iter().any(|(p, _)| p == f))
                        .collect();
                    reported.extend(problems.0.into_iter().filter(|d| d.is_error()));
                    if at_fault.is_empty() {
                        break;
                    }
                    current = current
                        .into_iter()
                        .filter_map(|(path, text)| {
                            if !at_fault.contains(&path) {
                                return Some((path, text));
                            }
                            // The first time, its last good version stays
                            // in force; if that fails too, it goes.
                            if set_aside.contains(&path) {
                                return None;
                            }
                            let good = self.good.get(&path).filter(|g| **g != text).cloned();
                            good.map(|g| (path, g))
                        })
                        .collect();
                    set_aside.extend(at_fault);
                }
            }
        }
        Loaded {
            config: None,
            problems: reported,
            set_aside,
        }
    }
}
