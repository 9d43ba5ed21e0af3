//! `weft authz check`: would this caller be allowed to reach this service?
//! Answered offline from a configuration directory, with the same decision
//! function the node proxies run (`weft_node::authz::explain` over the
//! policies as the config stream carries them), naming the policy and rule
//! that decided. L4 attributes today: identity, namespace, source address,
//! port.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use weft_core::Identity;
use weft_core::model::{NamespacedName, Snapshot, WorkloadAddress};

/// `weft authz …`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Decide a call offline and say which policy and rule decided it.
    ///
    /// Exit status: 0 allowed (by every endpoint), 1 denied (by at least
    /// one), 2 the question cannot be answered (bad config, unknown names).
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Configuration directory (or file).
    config: PathBuf,
    /// The caller: a workload (`namespace/name`), an identity
    /// (`spiffe://…`), or a service account (`namespace/sa/name`).
    #[arg(long)]
    from: String,
    /// The destination service: a hostname or `namespace/name`.
    #[arg(long)]
    to: String,
    /// The service port (default: its first).
    #[arg(long)]
    port: Option<u16>,
    /// The caller's address (default: the workload's, if `--from` names one).
    #[arg(long)]
    source_ip: Option<IpAddr>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let Command::Check(args) = args.command;
    match check(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weft authz check: {e}");
            ExitCode::from(2)
        }
    }
}

/// The caller's identity and address.
fn caller(snapshot: &Snapshot, from: &str) -> Result<(Identity, Option<IpAddr>), String> {
    if from.starts_with("spiffe://") {
        return from
            .parse::<Identity>()
            .map(|id| (id, None))
            .map_err(|e| format!("--from {from:?}: {e}"));
    }
    if let Some((ns, rest)) = from.split_once('/') {
        if let Some(sa) = rest.strip_prefix("sa/") {
            return Identity::new(&snapshot.mesh.trust_domain, ns, sa)
                .map(|id| (id, None))
                .map_err(|e| format!("--from {from:?}: {e}"));
        }
        if let Some(w) = snapshot.workloads.get(&NamespacedName::new(ns, rest)) {
            let ip = match w.address {
                WorkloadAddress::Ip(ip) => Some(ip),
                WorkloadAddress::Hostname(_) => None,
            };
            return Ok((w.identity.clone(), ip));
        }
    }
    Err(format!(
        "--from {from:?}: not a workload (namespace/name), an identity (spiffe://…) or a service account (namespace/sa/name)"
    ))
}

fn check(args: &CheckArgs) -> Result<bool, String> {
    let config = weft_config::load_path(&args.config).map_err(|e| e.to_string())?;
    let snapshot = &config.snapshot;
    let (identity, ip) = caller(snapshot, &args.from)?;
    let source_ip = args
        .source_ip
        .or(ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let service = match args.to.split_once('/') {
        Some((ns, name)) => snapshot.services.get(&NamespacedName::new(ns, name)),
        None => snapshot.service_for_host(&args.to),
    }
    .ok_or_else(|| {
        format!(
            "--to {:?}: no such service in {}",
            args.to,
            args.config.display()
        )
    })?;
    let port = match args.port {
        Some(p) => service
            .port(p)
            .ok_or_else(|| format!("--port {p}: {} has no such port", service.name))?,
        None => service
            .ports
            .first()
            .ok_or_else(|| format!("{} has no ports", service.name))?,
    };
    let mut all_allowed = true;
    let mut any = false;
    for w in snapshot.endpoints(service) {
        let WorkloadAddress::Ip(w_ip) = w.address else {
            continue;
        };
        any = true;
        let target = service.target_port(port, w);
        let protos: Vec<_> = snapshot
            .policies
            .values()
            .filter(|p| p.applies_to(w))
            .map(weft_xds::authz::to_proto)
            .collect();
        let refs: Vec<_> = protos.iter().collect();
        let verdict = weft_node::authz::explain(
            &refs,
            &weft_node::authz::Conn {
                source: Some(&identity),
                source_ip,
                destination_ip: w_ip,
                destination_port: target,
            },
        );
        all_allowed &= verdict.allowed;
        let rule = verdict
            .rule
            .map(|r| format!(" (rule {r})"))
            .unwrap_or_default();
        println!(
            "{:<5} {} -> {} {}:{}  {}{}",
            if verdict.allowed { "ALLOW" } else { "DENY" },
            identity,
            w.name,
            w_ip,
            target,
            verdict.reason,
            rule
        );
    }
    if !any {
        return Err(format!("{} has no endpoints with an address", service.name));
    }
    Ok(all_allowed)
}
