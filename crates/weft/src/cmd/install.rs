//! `weft install`: print the manifests that put weft on a Kubernetes
//! cluster (see `weft_kube::install`).

use std::io::Write;
use std::process::ExitCode;

use weft_kube::install::{Install, render};

/// Flags of `weft install`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print only the CustomResourceDefinitions (apply them first).
    #[arg(long)]
    crds: bool,
    /// Namespace of the control plane and node agent.
    #[arg(long, default_value = "weft-system")]
    namespace: String,
    /// Container image running `weft` (default: this version's).
    #[arg(long)]
    image: Option<String>,
    /// Control plane replicas.
    #[arg(long, default_value_t = 2)]
    replicas: i32,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// A revision label (`weft.dev/rev`), for side-by-side upgrades.
    #[arg(long)]
    revision: Option<String>,
    /// Include the node agent DaemonSet (preview).
    #[arg(long)]
    node_agent: bool,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let defaults = Install::default();
    let install = Install {
        namespace: args.namespace,
        image: args.image.unwrap_or(defaults.image),
        replicas: args.replicas,
        trust_domain: args.trust_domain,
        revision: args.revision,
        node_agent: args.node_agent,
    };
    let objects = if args.crds {
        install.crds()
    } else {
        install.objects()
    };
    match objects.and_then(|o| render(&o)) {
        Ok(yaml) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(yaml.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft install: {e}");
            ExitCode::from(2)
        }
    }
}
