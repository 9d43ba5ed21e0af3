//! `weft validate <path>`: every problem at once, one per line.

use std::path::Path;
use std::process::ExitCode;

use weft_config::{LoadError, load_path};

pub(crate) fn run(path: &Path) -> ExitCode {
    match load_path(path) {
        Ok(config) => {
            let s = &config.snapshot;
            println!(
                "{}: valid: {} resources, {} services, {} workloads, trust domain {}",
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
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            ExitCode::from(1)
        }
        Err(LoadError::Read(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
