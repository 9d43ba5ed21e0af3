//! `weft authz check`: would this caller be allowed to reach this service?
//! Answered offline from a configuration directory, with the decision
//! functions the proxies run, naming the policy and rule that decided:
//! the waypoint's request-level decision (`weft_waypoint::policy::authz::decide`)
//! when the service has a waypoint and attached policies, and the
//! destination node's L4 decision (`weft_node::authz::explain`) — which,
//! behind a waypoint, sees the waypoint as the caller. A caller from
//! another cluster (`--source-cluster`) reaches the endpoints directly
//! (a waypoint is its own cluster's), through the endpoints' network's
//! east-west gateway when its network differs.

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
    /// The caller's cluster, when it is another cluster of the mesh (a
    /// `RemoteCluster` of this configuration; name the caller by identity
    /// or service account). Says whether its calls reach the service at
    /// all (exported namespace, not cluster-local) and, across networks,
    /// through which east-west gateway — whose address the endpoint's
    /// node then sees as the caller's.
    #[arg(long)]
    source_cluster: Option<String>,
    /// Request method (request-level policies).
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path (request-level policies).
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, `name=value` (repeatable).
    #[arg(long = "header", value_parser = pair)]
    headers: Vec<(String, String)>,
    /// A verified JWT claim, `name=value` (repeatable).
    #[arg(long = "claim", value_parser = pair)]
    claims: Vec<(String, String)>,
    /// The verified JWT's `iss/sub`.
    #[arg(long)]
    request_principal: Option<String>,
}

fn pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: use name=value"))
}

/// The waypoint's request-level decision, when the service has one and
/// policies attached to it; `None` otherwise.
fn request_level(
    args: &CheckArgs,
    snapshot: &Snapshot,
    service: &weft_core::model::Service,
    port: u16,
    identity: &Identity,
    source_ip: IpAddr,
) -> Result<Option<bool>, String> {
    let policies = match snapshot.l7.get(&service.name) {
        Some(p) if !p.authz.is_empty() && service.waypoint.is_some() => &p.authz,
        _ => return Ok(None),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &args.headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("--header {k}: {e}"))?;
        let value = http::HeaderValue::from_str(v).map_err(|e| format!("--header {k}: {e}"))?;
        headers.insert(name, value);
    }
    let claims: std::collections::HashMap<String, String> = args.claims.iter().cloned().collect();
    let principal = identity.to_string();
    let principal = principal.strip_prefix("spiffe://").unwrap_or(&principal);
    let host = service.hosts.first().map_or("", String::as_str);
    let request = weft_waypoint::policy::authz::Request {
        principal: Some(principal),
        namespace: Some(identity.namespace()),
        source_ip: Some(source_ip),
        request_principal: args.request_principal.as_deref(),
        claims: Some(&claims),
        host,
        port,
        method: &args.method,
        path: &args.path,
        headers: Some(&headers),
    };
    let d = weft_waypoint::policy::authz::decide(policies, &request);
    let reason = match (&d.policy, d.allowed) {
        (Some(p), true) => format!("allowed by ALLOW policy {p}"),
        (Some(p), false) => format!("denied by DENY policy {p}"),
        (None, true) => "no ALLOW policy applies".to_owned(),
        (None, false) => "not allowed by any ALLOW policy".to_owned(),
    };
    let rule = d.rule.map(|r| format!(" (rule {r})")).unwrap_or_default();
    println!(
        "{:<5} {} -> {} {} {}  {reason}{rule} [waypoint, request level]",
        if d.allowed { "ALLOW" } else { "DENY" },
        identity,
        service.name,
        args.method,
        args.path
    );
    for shadow in &d.shadow {
        println!("      (matched, not enforced: {shadow})");
    }
    // CUSTOM policies ask their authorizer first; offline there is no
    // answer, only the question that would be asked.
    for p in weft_waypoint::policy::authz::custom(policies, &request) {
        let provider = p.provider.as_ref().map_or("?", |p| p.name.as_str());
        println!(
            "      (first, CUSTOM policy {} asks provider {provider}: its answer is not known offline)",
            p.policy
        );
    }
    Ok(Some(d.allowed))
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
    // Policies the node reads differently from how they are written
    // (request-level fields without targetRef) say so before the answer.
    for w in config.warnings.iter().filter(|w| {
        w.object.as_deref().is_some_and(|o| {
            o.starts_with("AuthorizationPolicy ") || o.starts_with("RequestAuthentication ")
        })
    }) {
        println!("{w}");
    }
    let snapshot = &config.snapshot;
    let (identity, ip) = caller(snapshot, &args.from)?;
    let source_ip = args
        .source_ip
        .or(ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let service = match args.to.split_once('/') {
        Some((ns, name)) => snapshot
            .services
            .get(&NamespacedName::new(ns, name))
            .map(|s| &**s),
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
    let remote = match args.source_cluster.as_deref() {
        Some(c) if c != snapshot.mesh.cluster => Some(remote_cluster(args, snapshot, c)?),
        _ => None,
    };
    if let Some(remote) = remote {
        return Ok(from_remote(
            snapshot, service, port, remote, &identity, source_ip,
        ));
    }
    let mut all_allowed = true;
    let mut any = false;
    if let Some(allowed) =
        request_level(args, snapshot, service, port.number, &identity, source_ip)?
    {
        all_allowed &= allowed;
    }
    // Behind a waypoint, the destination node sees the waypoint as the caller.
    let (identity, source_ip) = match service
        .waypoint
        .as_ref()
        .and_then(|w| snapshot.workloads.get(w))
    {
        Some(w) => (
            w.identity.clone(),
            match w.address {
                WorkloadAddress::Ip(ip) => ip,
                WorkloadAddress::Hostname(_) => source_ip,
            },
        ),
        None => (identity, source_ip),
    };
    for w in snapshot.endpoints(service) {
        let WorkloadAddress::Ip(_) = w.address else {
            continue;
        };
        any = true;
        all_allowed &= node_level(snapshot, service, port, w, &identity, source_ip, "");
    }
    if !any {
        return Err(format!("{} has no endpoints with an address", service.name));
    }
    Ok(all_allowed)
}

/// The destination node's L4 decision for one endpoint, printed with
/// `note` after it; whether it allows.
fn node_level(
    snapshot: &Snapshot,
    service: &weft_core::model::Service,
    port: &weft_core::model::ServicePort,
    w: &weft_core::model::Workload,
    identity: &Identity,
    source_ip: IpAddr,
    note: &str,
) -> bool {
    let WorkloadAddress::Ip(w_ip) = w.address else {
        return false;
    };
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
            source: Some(identity),
            source_ip,
            destination_ip: w_ip,
            destination_port: target,
        },
    );
    let rule = verdict
        .rule
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default();
    println!(
        "{:<5} {} -> {} {}:{}  {}{}{note}",
        if verdict.allowed { "ALLOW" } else { "DENY" },
        identity,
        w.name,
        w_ip,
        target,
        verdict.reason,
        rule
    );
    verdict.allowed
}

/// The `RemoteCluster` `--source-cluster` names.
fn remote_cluster<'a>(
    args: &CheckArgs,
    snapshot: &'a Snapshot,
    cluster: &str,
) -> Result<&'a weft_core::model::RemoteCluster, String> {
    if let Some(remote) = snapshot.remotes.get(cluster) {
        return Ok(remote);
    }
    let known: Vec<&str> = snapshot.remotes.keys().map(String::as_str).collect();
    Err(format!(
        "--source-cluster {cluster:?}: {} has no RemoteCluster of that name (this cluster is {:?}; its peers: {}) — callers from a cluster it does not peer with never reach it",
        args.config.display(),
        snapshot.mesh.cluster,
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    ))
}

/// A call from cluster `remote`: refused when the service is not exported
/// to it; else each endpoint's node decides, seeing the east-west
/// gateway's address as the caller's when the networks differ.
fn from_remote(
    snapshot: &Snapshot,
    service: &weft_core::model::Service,
    port: &weft_core::model::ServicePort,
    remote: &weft_core::model::RemoteCluster,
    identity: &Identity,
    source_ip: IpAddr,
) -> bool {
    let refuse = |why: String| {
        println!(
            "DENY  {identity} from cluster {} -> {}  {why}",
            remote.name, service.name
        );
        false
    };
    if service.cluster_local {
        return refuse(format!(
            "the service is cluster-local ({}): it is not exported to other clusters",
            weft_core::model::CLUSTER_LOCAL_LABEL
        ));
    }
    if !remote.exports(&service.name.namespace) {
        return refuse(format!(
            "namespace {} is not exported to cluster {} (RemoteCluster {} spec.exportedNamespaces)",
            service.name.namespace, remote.name, remote.name
        ));
    }
    if let Some(waypoint) = &service.waypoint {
        return refuse(format!(
            "its traffic goes through waypoint {waypoint}, which takes no calls from other clusters: their nodes call endpoints directly and the endpoints' node refuses a call that skips the waypoint"
        ));
    }
    let mut all_allowed = true;
    let mut any = false;
    for w in snapshot.endpoints(service) {
        let WorkloadAddress::Ip(_) = w.address else {
            continue;
        };
        any = true;
        let flat = !remote.network.is_empty() && remote.network == w.network;
        let gateway = snapshot.network_gateways.get(&w.network).filter(|_| !flat);
        let (source_ip, note) = match gateway {
            Some(g) => {
                let seen = snapshot
                    .workloads
                    .get(&g.name)
                    .and_then(|gw| match gw.address {
                        WorkloadAddress::Ip(ip) => Some(ip),
                        WorkloadAddress::Hostname(_) => None,
                    })
                    .unwrap_or(g.address);
                (
                    seen,
                    format!(
                        "  [from cluster {} through east-west gateway {} ({}:{}); the node sees {seen} as the caller's address]",
                        remote.name, g.name, g.address, g.port
                    ),
                )
            }
            None if flat || w.network.is_empty() => (
                source_ip,
                format!("  [from cluster {}, same network: direct]", remote.name),
            ),
            None => {
                all_allowed &= refuse(format!(
                    "endpoint {} is in network {:?}, which has no east-west gateway, and cluster {} is in network {:?}",
                    w.name, w.network, remote.name, remote.network
                ));
                continue;
            }
        };
        all_allowed &= node_level(snapshot, service, port, w, identity, source_ip, &note);
    }
    if !any {
        return refuse("it has no endpoints with an address in this cluster".to_owned());
    }
    all_allowed
}
