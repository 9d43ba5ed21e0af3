//! # weft-cni
//!
//! weft's CNI plugin, chained after the network plugin that gives a pod
//! its interface and address (`bridge`, Calico, Cilium, …), as Istio's CNI
//! plugin is. CNI spec 1.0 (`ADD`, `DEL`, `CHECK`, `VERSION`); it reads the
//! previous plugin's result and passes it on unchanged.
//!
//! On `ADD` it hands the pod (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
//! `K8S_POD_UID` from `CNI_ARGS`), its network namespace and its address
//! to the node agent over the agent's attach socket. The agent decides
//! whether the mesh captures the pod; if it does, it opens the pod's
//! listeners inside the namespace and only then answers, and the plugin
//! writes the redirect rules (nftables, inside the namespace only): a pod
//! is never redirected to nothing. A pod the mesh does not capture, or in
//! a namespace the configuration excludes, is passed through untouched.
//! An agent that cannot be reached fails the `ADD` ("try again later"):
//! the runtime retries, and no pod that should be in the mesh starts
//! outside it. `DEL` tells the agent and removes the rules (a namespace
//! already gone is fine); `CHECK` asks the agent and looks for the rules.
//!
//! Every invocation is logged, one line, to the configured file
//! (`/var/run/weft/cni.log` by default); errors name the pod.
//!
//! The `weft` binary is the plugin when invoked as `weft-cni` (a copy or
//! link in the CNI bin directory): [`main`].

#![forbid(unsafe_code)]

pub mod install;
pub mod plugin;
pub mod rules;
pub mod spec;

use std::io::Read;

/// Runs the plugin with the process's environment and stdin, prints its
/// result or error as the CNI spec says, and returns the exit code.
pub fn main() -> i32 {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_string(&mut stdin) {
        let error = spec::CniError::new(spec::IO_FAILURE, format!("cannot read stdin: {e}"));
        println!("{}", error.to_json(spec::LATEST));
        return 1;
    }
    let outcome = plugin::run(&env, &stdin, &plugin::System);
    match outcome.output {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            println!("{}", e.to_json(&outcome.version));
            1
        }
    }
}
