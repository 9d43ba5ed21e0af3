//! Checks that need more than one resource: duplicate names, hosts and
//! addresses claimed twice, workloads no service selects, at most one Mesh.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::model::{CLIENT_ONLY_ANNOTATION, NamespacedName};

use crate::diag::{Diagnostic, Origin};
use crate::kinds::Resources;
use crate::memo::{Kept, Shard};
use crate::resource::{Resource, Spec};
use crate::select::SelectorIndex;

/// What the namespace-local checks found in one namespace, by check.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    service_names: Vec<Diagnostic>,
    workload_names: Vec<Diagnostic>,
    unselected: Vec<Diagnostic>,
}

/// Per namespace, what the namespace-local checks found.
pub(crate) type Local = Kept<(), Findings>;

/// Runs every cross-resource check, appending problems to `out`;
/// namespaces whose ServiceEntries and WorkloadEntries are unchanged
/// since the previous load take the namespace-local checks' findings
/// from `kept`. Findings come out in the order the checks are listed
/// here, whichever way they were found.
pub(crate) fn check(
    r: &Resources,
    shards: &BTreeMap<&str, Shard<'_>>,
    kept: &mut Local,
    out: &mut Vec<Diagnostic>,
) {
    let local = kept.pass(shards, (), |_, shard| {
        let mut found = Findings::default();
        duplicate_names(
            shard.ses.iter().map(|se| se.as_ref()),
            &mut found.service_names,
        );
        duplicate_names(
            shard.wes.iter().map(|we| we.as_ref()),
            &mut found.workload_names,
        );
        found.unselected = unselected_workloads(shard);
        found
    });
    let take = |out: &mut Vec<Diagnostic>, pick: fn(&Findings) -> &Vec<Diagnostic>| {
        for found in &local {
            out.extend(pick(found).iter().cloned());
        }
    };
    // Names are namespaced: duplicates are found namespace by namespace.
    take(out, |f| &f.service_names);
    take(out, |f| &f.workload_names);
    duplicate_names(r.meshes.iter().map(AsRef::as_ref), out);
    duplicate_names(r.authorization_policies.iter().map(AsRef::as_ref), out);
    duplicate_names(r.peer_authentications.iter().map(AsRef::as_ref), out);
    duplicate_names(r.virtual_services.iter().map(AsRef::as_ref), out);
    duplicate_names(r.istio_gateways.iter().map(AsRef::as_ref), out);
    duplicate_names(r.destination_rules.iter().map(AsRef::as_ref), out);
    duplicate_names(r.http_routes.iter().map(AsRef::as_ref), out);
    duplicate_names(r.grpc_routes.iter().map(AsRef::as_ref), out);
    duplicate_names(r.tls_routes.iter().map(AsRef::as_ref), out);
    duplicate_names(r.tcp_routes.iter().map(AsRef::as_ref), out);
    duplicate_names(r.rate_limit_policies.iter().map(AsRef::as_ref), out);
    duplicate_names(r.request_authentications.iter().map(AsRef::as_ref), out);
    if let [first, rest @ ..] = r.meshes.as_slice() {
        for extra in rest {
            out.push(error(
                extra,
                "",
                format!(
                    "only one Mesh is allowed; another is defined at {}",
                    first.origin.describe()
                ),
            ));
        }
    }
    duplicate_hosts(r, out);
    overlapping_addresses(r, out);
    duplicate_workload_ips(r, out);
    take(out, |f| &f.unselected);
    outbound_listeners(r, out);
    waypoints(r, out);
    reserved_identities(r, out);
}

/// No workload may take the control plane's or a node's identity.
fn reserved_identities(r: &Resources, out: &mut Vec<Diagnostic>) {
    let check = |ns: &str, sa: Option<&String>| {
        let sa = sa.map_or("default", String::as_str);
        weft_core::identity::is_reserved(ns, sa).then(|| {
            format!(
                "service account {sa:?} in namespace {ns} is reserved for weft itself (the control plane and node proxies); choose another"
            )
        })
    };
    for we in &r.workload_entries {
        if let Some(msg) = check(&we.name.namespace, we.spec.service_account.as_ref()) {
            out.push(error(we, "spec.serviceAccount", msg));
        }
    }
    for se in &r.service_entries {
        for (i, e) in se.spec.endpoints.iter().enumerate() {
            if let Some(msg) = check(&se.name.namespace, e.service_account.as_ref()) {
                out.push(error(
                    se,
                    &format!("spec.endpoints[{i}].serviceAccount"),
                    msg,
                ));
            }
        }
    }
}

/// `istio.io/use-waypoint` must name a waypoint workload; a waypoint needs
/// an IP address and a node.
fn waypoints(r: &Resources, out: &mut Vec<Diagnostic>) {
    use weft_core::model::{
        NODE_LABEL, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL, WAYPOINT_LABEL,
    };
    let is_waypoint = |we: &Resource<crate::kinds::WorkloadEntrySpec>| {
        we.spec
            .labels
            .get(WAYPOINT_LABEL)
            .is_some_and(|v| v == "true")
    };
    // Built only when some service names a waypoint.
    let referenced = r
        .service_entries
        .iter()
        .any(|se| se.labels.contains_key(USE_WAYPOINT_LABEL));
    let by_name: HashMap<&NamespacedName, &Resource<crate::kinds::WorkloadEntrySpec>> = r
        .workload_entries
        .iter()
        .filter(|_| referenced)
        .map(|we| (&we.name, we.as_ref()))
        .collect();
    for se in &r.service_entries {
        let Some(name) = se.labels.get(USE_WAYPOINT_LABEL) else {
            continue;
        };
        let ns = se
            .labels
            .get(USE_WAYPOINT_NAMESPACE_LABEL)
            .map_or(se.name.namespace.as_str(), String::as_str);
        let wanted = NamespacedName::new(ns, name);
        let field = format!("metadata.labels.{USE_WAYPOINT_LABEL}");
        match by_name.get(&wanted) {
            None => out.push(error(
                se,
                &field,
                format!("no WorkloadEntry {wanted} to be the waypoint; declare one labelled {WAYPOINT_LABEL}: \"true\""),
            )),
            Some(we) if !is_waypoint(we) => out.push(error(
                se,
                &field,
                format!("WorkloadEntry {wanted} is not a waypoint; label it {WAYPOINT_LABEL}: \"true\""),
            )),
            Some(_) if se.spec.addresses.is_empty() => out.push(error(
                se,
                "spec.addresses",
                "a service that uses a waypoint needs a virtual IP: node proxies send its traffic to the waypoint by that address".into(),
            )),
            Some(_) => {}
        }
    }
    for we in r.workload_entries.iter().filter(|we| is_waypoint(we)) {
        let ip = we
            .spec
            .address
            .as_deref()
            .unwrap_or_default()
            .parse::<IpAddr>();
        if ip.is_err() {
            out.push(error(
                we,
                "spec.address",
                "a waypoint needs an IP address".into(),
            ));
        }
        if !we.spec.labels.contains_key(NODE_LABEL) {
            out.push(error(
                we,
                &format!("spec.labels.{NODE_LABEL}"),
                "a waypoint runs on a node: name it (the waypoint uses that node's bootstrap token)".into(),
            ));
        }
    }
}

/// Ports weft's own listeners use; an outbound listener may not take them.
const RESERVED_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15080];

/// `weft.dev/outbound` must parse, name known service ports, and not reuse
/// a local port.
fn outbound_listeners(r: &Resources, out: &mut Vec<Diagnostic>) {
    use weft_core::model::{OUTBOUND_ANNOTATION, OutboundListener};
    let annotated: Vec<_> = r
        .workload_entries
        .iter()
        .filter_map(|we| Some((we, we.annotations.get(OUTBOUND_ANNOTATION)?)))
        .collect();
    if annotated.is_empty() {
        return;
    }
    let mut ports_of: HashMap<String, Vec<u16>> = HashMap::new();
    for se in &r.service_entries {
        for host in &se.spec.hosts {
            let ports = se
                .spec
                .ports
                .iter()
                .filter_map(|p| u16::try_from(p.number).ok());
            ports_of
                .entry(host.to_ascii_lowercase())
                .or_default()
                .extend(ports);
        }
    }
    for (we, value) in annotated {
        let field = format!("metadata.annotations.{OUTBOUND_ANNOTATION}");
        let mut seen = std::collections::HashSet::new();
        // Entry by entry, so every bad one is reported.
        for part in value.split(',') {
            let l = match OutboundListener::parse_list(part) {
                Ok(mut one) if one.len() == 1 => one.remove(0),
                Ok(_) => continue,
                Err(e) => {
                    out.push(error(we, &field, e));
                    continue;
                }
            };
            if RESERVED_PORTS.contains(&l.local_port) {
                out.push(error(
                    we,
                    &field,
                    format!(
                        "local port {} is reserved for weft's own listeners",
                        l.local_port
                    ),
                ));
            }
            if !seen.insert(l.local_port) {
                out.push(error(
                    we,
                    &field,
                    format!("local port {} is used twice", l.local_port),
                ));
            }
            match ports_of.get(&l.host) {
                None => out.push(error(
                    we,
                    &field,
                    format!("{} is not a host of any ServiceEntry", l.host),
                )),
                Some(ports) if !ports.contains(&l.port) => {
                    out.push(error(
                        we,
                        &field,
                        format!("{} has no port {}", l.host, l.port),
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

fn error<S: Spec>(res: &Resource<S>, field: &str, message: String) -> Diagnostic {
    Diagnostic::at(&res.origin, Some(res.object()), field, message)
}

fn duplicate_names<'a, S: Spec + 'a>(
    list: impl Iterator<Item = &'a Resource<S>>,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen: HashMap<&NamespacedName, &Origin> = HashMap::new();
    for res in list {
        if let Some(first) = seen.insert(&res.name, &res.origin) {
            out.push(error(
                res,
                "metadata.name",
                format!(
                    "{} is defined twice; first at {}",
                    res.object(),
                    first.describe()
                ),
            ));
            seen.insert(&res.name, first);
        }
    }
}

fn duplicate_hosts(r: &Resources, out: &mut Vec<Diagnostic>) {
    use std::borrow::Cow;
    let mut seen: HashMap<Cow<'_, str>, &Resource<_>> = HashMap::new();
    for se in &r.service_entries {
        for (i, host) in se.spec.hosts.iter().enumerate() {
            // Hosts compare case-insensitively; most are lowercase already.
            let key = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(host.to_ascii_lowercase())
            } else {
                Cow::Borrowed(host.as_str())
            };
            match seen.get(&key) {
                Some(owner) if owner.name != se.name => out.push(error(
                    se,
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "host {host:?} is already claimed by {} at {}",
                        owner.object(),
                        owner.origin.describe()
                    ),
                )),
                Some(_) => {}
                None => {
                    seen.insert(key, se);
                }
            }
        }
    }
}

/// Two services may not share an address: sort every address range by start
/// and report each one that begins inside an earlier one (O(n log n)).
fn overlapping_addresses(r: &Resources, out: &mut Vec<Diagnostic>) {
    struct Range {
        family: u8,
        start: u128,
        end: u128,
        service: usize,
        index: usize,
        net: IpNet,
    }
    let mut ranges = Vec::new();
    for (service, se) in r.service_entries.iter().enumerate() {
        for (index, address) in se.spec.addresses.iter().enumerate() {
            if let Some(net) = crate::kinds::service_entry::parse_net(address) {
                let (family, start, end) = span(&net);
                ranges.push(Range {
                    family,
                    start,
                    end,
                    service,
                    index,
                    net,
                });
            }
        }
    }
    ranges.sort_by_key(|r| (r.family, r.start, r.end));
    let mut widest: Option<&Range> = None;
    for range in &ranges {
        if let Some(w) = widest
            && w.family == range.family
            && range.start <= w.end
            && w.service != range.service
        {
            let other = &r.service_entries[w.service];
            out.push(error(
                &r.service_entries[range.service],
                &format!("spec.addresses[{}]", range.index),
                format!(
                    "address {} overlaps {} of {} at {}",
                    range.net,
                    w.net,
                    other.object(),
                    other.origin.describe()
                ),
            ));
        }
        if widest.is_none_or(|w| w.family != range.family || range.end > w.end) {
            widest = Some(range);
        }
    }
}

/// The address family and the inclusive range a network covers.
fn span(net: &IpNet) -> (u8, u128, u128) {
    match net {
        IpNet::V4(n) => (
            4,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (6, n.network().into(), n.broadcast().into()),
    }
}

/// Two workloads with the same IP on the same network make inbound identity
/// ambiguous.
fn duplicate_workload_ips(r: &Resources, out: &mut Vec<Diagnostic>) {
    use std::collections::hash_map::Entry;
    let mut seen: HashMap<(&str, IpAddr), &Resource<_>> =
        HashMap::with_capacity(r.workload_entries.len());
    for we in &r.workload_entries {
        let Some(ip) = we.spec.ip() else { continue };
        let network = we.spec.network.as_deref().unwrap_or_default();
        match seen.entry((network, ip)) {
            Entry::Occupied(first) => out.push(error(
                we,
                "spec.address",
                format!(
                    "address {ip} is already used by {} at {}",
                    first.get().object(),
                    first.get().origin.describe()
                ),
            )),
            Entry::Vacant(slot) => {
                slot.insert(we);
            }
        }
    }
}

/// A WorkloadEntry no ServiceEntry selects is usually a label typo.
/// Workloads that only make calls say so with `weft.dev/client-only: "true"`.
/// One namespace at a time: selectors only match there.
fn unselected_workloads(shard: &Shard<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let candidates: Vec<&Resource<_>> = shard
        .ses
        .iter()
        .filter(|se| se.spec.workload_selector.is_some())
        .map(|se| se.as_ref())
        .collect();
    let index = SelectorIndex::new(
        candidates
            .iter()
            .filter_map(|se| se.spec.workload_selector.as_ref())
            .collect(),
    );
    for we in &shard.wes {
        // Waypoints and gateways serve services; no service selects them.
        if [
            weft_core::model::WAYPOINT_LABEL,
            weft_core::model::GATEWAY_LABEL,
        ]
        .iter()
        .any(|label| we.spec.labels.get(*label).is_some_and(|v| v == "true"))
        {
            continue;
        }
        let client_only = we
            .annotations
            .get(CLIENT_ONLY_ANNOTATION)
            .map(String::as_str);
        match client_only {
            Some("true") => continue,
            Some("false") | None => {}
            Some(other) => {
                out.push(error(
                    we,
                    &format!("metadata.annotations.{CLIENT_ONLY_ANNOTATION}"),
                    format!("{other:?} must be \"true\" or \"false\""),
                ));
                continue;
            }
        }
        let selected: Vec<&Resource<_>> = index
            .matching(&we.spec.labels)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        if selected.is_empty() {
            out.push(error(
                we,
                "spec.labels",
                format!(
                    "no ServiceEntry in namespace {:?} selects these labels; fix the labels, or annotate {CLIENT_ONLY_ANNOTATION}: \"true\" if it only makes calls",
                    we.name.namespace
                ),
            ));
            continue;
        }
        // A valid address that is not an IP is a host name.
        let named = we.spec.address.as_deref().is_some_and(|a| {
            crate::kinds::workload_entry::check_address(a).is_ok() && we.spec.ip().is_none()
        });
        if named {
            let without_dns = selected
                .iter()
                .find(|se| !se.spec.resolution().resolves_names());
            if let Some(se) = without_dns {
                out.push(error(
                    we,
                    "spec.address",
                    format!(
                        "is a host name, but ServiceEntry {} selects this workload with resolution {}, which needs an IP address; give the workload an IP or set resolution: DNS there",
                        se.name,
                        se.spec.resolution().name()
                    ),
                ));
            }
        }
        for name in we.spec.ports.keys() {
            let known = selected.iter().any(|se| {
                se.spec
                    .ports
                    .iter()
                    .any(|p| p.name.as_deref() == Some(name))
            });
            if !known {
                out.push(error(
                    we,
                    &format!("spec.ports.{name}"),
                    "names no port of the ServiceEntries that select this workload".to_owned(),
                ));
            }
        }
    }
    out
}
