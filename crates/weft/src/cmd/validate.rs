//! `weft validate <path>`: every problem at once, one per line — errors,
//! then a count; warnings (marked `warning:`) alone do not fail it.

use std::path::Path;
use std::process::ExitCode;

use weft_config::{LoadError, load_path};

pub(crate) fn run(path: &Path) -> ExitCode {
    match load_path(path) {
        Ok(config) => {
            for warning in &config.warnings {
                println!("{warning}");
            }
            let s = &config.snapshot;
            let warned = match config.warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warning(s))"),
            };
            println!(
                "{}: valid{warned}: {} resources, {} services, {} workloads, trust domain {}",
                path.display(),
                config.resources.len(),
                s.services.len(),
                s.workloads.len(),
                s.mesh.trust_domain
            );
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(problems)) => {
            for problem in problems.iter() {
                println!("{problem}");
            }
            let warned = match problems.warnings() {
                0 => String::new(),
                n => format!(" and {n} warning(s)"),
            };
            eprintln!(
                "{}: {} problem(s){warned}",
                path.display(),
                problems.errors()
            );
            ExitCode::from(1)
        }
        Err(LoadError::Read(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
