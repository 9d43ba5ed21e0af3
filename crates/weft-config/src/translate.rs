//! Validated resources → the internal model ([`Snapshot`]).
//!
//! Runs only on a configuration without problems, so it can assume fields
//! parse; anything that still fails is reported, never unwrapped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use weft_core::model::{
    CLIENT_ONLY_ANNOTATION, Locality, MeshSettings, MtlsMode, NODE_LABEL, NamespacedName,
    OutboundPolicy, Protocol, RUN_ANNOTATION, Resolution, Service, ServiceLocation, ServicePort,
    Snapshot, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL, WAYPOINT_LABEL, Workload,
    WorkloadAddress,
};
use weft_core::{Identity, duration, failover};

use crate::diag::{Diagnostic, Origin};
use crate::kinds::mesh::{MtlsModeSpec, OutboundModeSpec};
use crate::kinds::service_entry::{LocationSpec, ResolutionSpec, parse_net};
use crate::kinds::workload_entry::DEFAULT_SERVICE_ACCOUNT;
use crate::kinds::{
    MeshSpec, PeerAuthenticationSpec, Resources, ServiceEntrySpec, WorkloadEntrySpec,
};
use crate::memo::{Kept, Shard};
use crate::resource::Resource;

/// One namespace's share of the snapshot: its workloads (before peer
/// authentication modes apply) and its services, with what could not be
/// translated.
#[derive(Debug, Default)]
pub(crate) struct Part {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    problems: Vec<Diagnostic>,
}

/// What a namespace's translation reads besides its own resources.
pub(crate) type PartKey = (String, MtlsMode, String, String);

/// Builds the snapshot, reporting anything that cannot be translated.
/// Namespaces whose ServiceEntries and WorkloadEntries are unchanged
/// since the previous load take their part from `kept`.
pub(crate) fn translate(
    r: &Resources,
    shards: &BTreeMap<&str, Shard<'_>>,
    topology: &crate::Topology,
    kept: &mut Kept<PartKey, Part>,
    out: &mut Vec<Diagnostic>,
) -> Snapshot {
    let mut mesh = r
        .meshes
        .first()
        .map(|m| mesh_settings(m))
        .unwrap_or_default();
    if mesh.cluster.is_empty() {
        mesh.cluster.clone_from(&topology.cluster);
    }
    if mesh.network.is_empty() {
        mesh.network.clone_from(&topology.network);
    }
    let mut snapshot = Snapshot {
        mesh,
        ..Snapshot::default()
    };
    let key = (
        snapshot.mesh.trust_domain.clone(),
        snapshot.mesh.mtls_mode,
        snapshot.mesh.cluster.clone(),
        snapshot.mesh.network.clone(),
    );
    let mesh = &snapshot.mesh;
    let parts = kept.pass(shards, key, |_, shard| namespace_part(shard, mesh));
    for part in parts {
        for w in &part.workloads {
            snapshot.workloads.insert(w.name.clone(), w.clone());
        }
        for s in &part.services {
            snapshot.services.insert(s.name.clone(), s.clone());
        }
        out.extend(part.problems.iter().cloned());
    }
    // Policies attached to services are enforced by their waypoints
    // (translate_l7); the rest by node proxies, the way Istio ambient's
    // ztunnel does (`node_authz`), unless their selector picks gateways
    // or waypoints only (translate_l7 attaches them there).
    for ap in r
        .authorization_policies
        .iter()
        .filter(|p| !p.spec.attached())
    {
        node_policy(ap, &mut snapshot, out);
    }
    for w in snapshot.workloads.values_mut() {
        if let Some(mode) = peer_mode(&r.peer_authentications, w)
            && mode != w.mtls_mode
        {
            Arc::make_mut(w).mtls_mode = mode;
        }
    }
    remote_clusters(r, &mut snapshot, out);
    crate::translate_l7::translate(r, &mut snapshot, out);
    snapshot
}

/// `RemoteCluster`s → the clusters this control plane peers with; a
/// cluster named twice, or this cluster itself, is an error.
fn remote_clusters(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    use crate::kinds::remote_cluster::DEFAULT_STALE_AFTER;
    for rc in &r.remote_clusters {
        let spec = &rc.spec;
        let id = spec
            .cluster_id
            .clone()
            .unwrap_or_else(|| rc.name.name.clone());
        let object = Some(format!("RemoteCluster {}", rc.name.name));
        let field = if spec.cluster_id.is_some() {
            "spec.clusterId"
        } else {
            "metadata.name"
        };
        if snapshot.mesh.cluster.is_empty() {
            out.push(Diagnostic::at(
                &rc.origin,
                object,
                "metadata.name",
                "this cluster has no ID to introduce itself to its peers; set the Mesh's spec.cluster (or weft control --cluster-id)",
            ));
            continue;
        }
        if id == snapshot.mesh.cluster {
            out.push(Diagnostic::at(
                &rc.origin,
                object,
                field,
                format!("{id:?} is this cluster's own ID (Mesh spec.cluster or --cluster-id); a RemoteCluster names another cluster"),
            ));
            continue;
        }
        if snapshot.remotes.contains_key(&id) {
            out.push(Diagnostic::at(
                &rc.origin,
                object,
                field,
                format!("cluster {id:?} is named by another RemoteCluster too"),
            ));
            continue;
        }
        let trust_domain = spec
            .trust_domain
            .as_deref()
            .unwrap_or(&snapshot.mesh.trust_domain);
        // Checked in validation; a bad trust domain cannot get here.
        let Ok(identity) = Identity::new(
            trust_domain,
            weft_core::identity::SYSTEM_NAMESPACE,
            weft_core::identity::CONTROL_SA,
        ) else {
            continue;
        };
        snapshot.remotes.insert(
            id.clone(),
            weft_core::model::RemoteCluster {
                name: id,
                address: spec.address.clone(),
                identity,
                network: spec.network.clone().unwrap_or_default(),
                exported_namespaces: spec.exported_namespaces.clone(),
                stale_after: spec
                    .stale_after
                    .as_deref()
                    .and_then(|t| duration::parse(t).ok())
                    .unwrap_or(DEFAULT_STALE_AFTER),
            },
        );
    }
}

/// Translates one namespace's WorkloadEntries and ServiceEntries.
fn namespace_part(shard: &Shard<'_>, mesh: &MeshSettings) -> Part {
    let mut part = Part::default();
    for we in &shard.wes {
        let annotations = Annotations::of(we);
        let w = workload(
            we.name.clone(),
            &we.spec,
            annotations,
            mesh,
            &we.origin,
            &mut part.problems,
        );
        part.workloads.extend(w.map(Arc::new));
    }
    for (se, chosen) in shard.ses.iter().zip(selected_workloads(shard)) {
        let endpoints = endpoints(se, chosen, mesh, &mut part);
        part.services.push(Arc::new(service(se, endpoints)));
    }
    part
}

/// The `PeerAuthentication` mode in force for `w`, most specific first:
/// selector in its namespace, its namespace, the root namespace. Among
/// equals, the first by name decides. `UNSET` inherits.
fn peer_mode(
    policies: &[std::sync::Arc<Resource<PeerAuthenticationSpec>>],
    w: &Workload,
) -> Option<MtlsMode> {
    use crate::kinds::peer_authentication::{PeerModeSpec, ROOT_NAMESPACES};
    let mode = |p: &Resource<PeerAuthenticationSpec>| match p.spec.mtls.as_ref()?.mode? {
        PeerModeSpec::Strict => Some(MtlsMode::Strict),
        PeerModeSpec::Permissive => Some(MtlsMode::Permissive),
        PeerModeSpec::Unset | PeerModeSpec::Disable => None,
    };
    let mut sorted: Vec<&Resource<PeerAuthenticationSpec>> =
        policies.iter().map(|p| p.as_ref()).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let selects = |p: &Resource<PeerAuthenticationSpec>| {
        p.spec.selector.as_ref().is_some_and(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
        })
    };
    let ns = w.name.namespace.as_str();
    // 0: selector in its namespace, 1: its namespace, 2: root namespace.
    let tier = |p: &Resource<PeerAuthenticationSpec>| {
        let root = ROOT_NAMESPACES.contains(&p.name.namespace.as_str());
        match (p.name.namespace == ns, p.spec.selector.is_some()) {
            (true, true) if selects(p) => Some(0),
            (true, false) => Some(1),
            (false, false) if root => Some(2),
            _ => None,
        }
    };
    (0..3).find_map(|t| {
        sorted
            .iter()
            .filter(|p| tier(p) == Some(t))
            .find_map(|p| mode(p))
    })
}

/// The node's share of a policy without `targetRef`: its L4 rules (with
/// a warning for each rule the node reads differently), or an error when
/// only a proxy could enforce it.
fn node_policy(
    ap: &Resource<crate::kinds::AuthorizationPolicySpec>,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use crate::kinds::authorization_policy::ActionSpec;
    let reach = crate::node_authz::reach(
        snapshot,
        &ap.name.namespace,
        ap.spec.selector.as_ref().map(|s| &s.match_labels),
    );
    let object = Some(ap.object());
    let at =
        |field: &str, message: String| Diagnostic::at(&ap.origin, object.clone(), field, message);
    let action = match ap.spec.action {
        Some(ActionSpec::Custom) => "CUSTOM",
        Some(ActionSpec::Audit) => "AUDIT",
        _ => {
            if reach.nodes {
                let (policy, warnings) = crate::node_authz::node_policy(ap);
                for (field, message) in warnings {
                    out.push(at(&field, message).warning());
                }
                snapshot.policies.insert(ap.name.clone(), policy);
            }
            return;
        }
    };
    // CUSTOM and AUDIT need a proxy.
    if reach.proxies.is_empty() {
        out.push(at(
            "spec.action",
            format!("{action} is enforced by waypoints and gateways: attach the policy with targetRef, or select a gateway or waypoint workload"),
        ));
    } else if !reach.workloads.is_empty() {
        let names: Vec<String> = reach.workloads.iter().map(ToString::to_string).collect();
        out.push(at(
            "spec.selector",
            format!(
                "{action} is enforced by gateways and waypoints, but this selector also picks {}, which only a node serves; narrow the selector or attach with targetRef",
                names.join(", ")
            ),
        ));
    }
}

fn mesh_settings(mesh: &Resource<MeshSpec>) -> MeshSettings {
    let spec = &mesh.spec;
    let defaults = MeshSettings::default();
    MeshSettings {
        trust_domain: spec.trust_domain.clone().unwrap_or(defaults.trust_domain),
        mtls_mode: match spec.mtls.as_ref().and_then(|m| m.mode) {
            Some(MtlsModeSpec::Permissive) => MtlsMode::Permissive,
            Some(MtlsModeSpec::Strict) => MtlsMode::Strict,
            None => defaults.mtls_mode,
        },
        outbound_policy: match spec.outbound_traffic_policy.as_ref().and_then(|o| o.mode) {
            Some(OutboundModeSpec::RegistryOnly) => OutboundPolicy::RegistryOnly,
            Some(OutboundModeSpec::AllowAny) => OutboundPolicy::AllowAny,
            None => defaults.outbound_policy,
        },
        connect_timeout: spec
            .connect_timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .unwrap_or(defaults.connect_timeout),
        tracing: tracing(spec),
        path_normalization: spec
            .path_normalization
            .as_ref()
            .and_then(|p| p.normalization.as_deref())
            .and_then(weft_core::model::PathNormalization::parse)
            .unwrap_or(defaults.path_normalization),
        cluster: spec.cluster.clone().unwrap_or_default(),
        network: spec.network.clone().unwrap_or_default(),
    }
}

/// The default tracing provider, resolved (validation guarantees it is an
/// `opentelemetry` one).
fn tracing(spec: &MeshSpec) -> Option<weft_core::model::Tracing> {
    let name = spec.default_providers.as_ref()?.tracing.first()?;
    let provider = spec
        .extension_providers
        .iter()
        .find(|p| &p.name == name)?
        .opentelemetry
        .as_ref()?;
    let host = if provider.service.contains(':') {
        format!("[{}]", provider.service)
    } else {
        provider.service.clone()
    };
    let percent = spec
        .tracing
        .as_ref()
        .and_then(|t| t.random_sampling_percentage)
        .unwrap_or(1.0);
    Some(weft_core::model::Tracing {
        endpoint: format!("http://{host}:{}", provider.port),
        http_path: provider
            .http
            .as_ref()
            .map(|h| h.path.clone().unwrap_or_else(|| "/v1/traces".into())),
        sampling_ppm: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
    })
}

/// The annotations that shape a workload.
#[derive(Default)]
struct Annotations {
    run: Option<String>,
    client_only: bool,
    outbound: Vec<weft_core::model::OutboundListener>,
}

impl Annotations {
    fn of(we: &Resource<WorkloadEntrySpec>) -> Self {
        Annotations {
            run: we.annotations.get(RUN_ANNOTATION).cloned(),
            client_only: we
                .annotations
                .get(CLIENT_ONLY_ANNOTATION)
                .is_some_and(|v| v == "true"),
            // Checked by `cross`; nothing invalid reaches translation.
            outbound: we
                .annotations
                .get(weft_core::model::OUTBOUND_ANNOTATION)
                .and_then(|v| weft_core::model::OutboundListener::parse_list(v).ok())
                .unwrap_or_default(),
        }
    }
}

fn workload(
    name: NamespacedName,
    spec: &WorkloadEntrySpec,
    annotations: Annotations,
    mesh: &MeshSettings,
    origin: &Origin,
    out: &mut Vec<Diagnostic>,
) -> Option<Workload> {
    let sa = spec
        .service_account
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    let identity = match Identity::new(&mesh.trust_domain, &name.namespace, sa) {
        Ok(id) => id,
        Err(e) => {
            out.push(Diagnostic::at(
                origin,
                Some(format!("workload {name}")),
                "spec.serviceAccount",
                e.to_string(),
            ));
            return None;
        }
    };
    let address = spec.address.as_deref().unwrap_or_default();
    Some(Workload {
        address: match address.parse::<IpAddr>() {
            Ok(ip) => WorkloadAddress::Ip(ip),
            Err(_) => WorkloadAddress::Hostname(address.to_ascii_lowercase()),
        },
        labels: spec.labels.clone(),
        ports: spec
            .ports
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?)))
            .collect(),
        identity,
        network: spec
            .network
            .clone()
            .or_else(|| spec.labels.get(failover::NETWORK_LABEL).cloned())
            .unwrap_or_else(|| mesh.network.clone()),
        cluster: spec
            .labels
            .get(failover::CLUSTER_LABEL)
            .cloned()
            .unwrap_or_else(|| mesh.cluster.clone()),
        locality: spec
            .locality
            .as_deref()
            .and_then(|l| Locality::parse(l).ok())
            .unwrap_or_default(),
        weight: spec.weight.filter(|w| *w > 0).unwrap_or(1),
        node: spec.labels.get(NODE_LABEL).cloned(),
        run: annotations.run,
        client_only: annotations.client_only,
        outbound: annotations.outbound,
        mtls_mode: mesh.mtls_mode,
        waypoint: spec.labels.get(WAYPOINT_LABEL).is_some_and(|v| v == "true"),
        gateway: spec
            .labels
            .get(weft_core::model::GATEWAY_LABEL)
            .is_some_and(|v| v == "true"),
        name,
    })
}

/// For each of a namespace's ServiceEntries (by position), the ready
/// WorkloadEntries its selector picks (those annotated
/// `weft.dev/not-ready: "true"` left out), found through an index.
fn selected_workloads(shard: &Shard<'_>) -> Vec<Vec<NamespacedName>> {
    let mut selected = vec![Vec::new(); shard.ses.len()];
    let positions: Vec<usize> = (0..shard.ses.len())
        .filter(|&i| shard.ses[i].spec.workload_selector.is_some())
        .collect();
    let index = crate::select::SelectorIndex::new(
        positions
            .iter()
            .filter_map(|&i| shard.ses[i].spec.workload_selector.as_ref())
            .collect(),
    );
    for we in &shard.wes {
        let ready = we
            .annotations
            .get(weft_core::model::NOT_READY_ANNOTATION)
            .is_none_or(|v| v != "true");
        if ready {
            for i in index.matching(&we.spec.labels) {
                selected[positions[i]].push(we.name.clone());
            }
        }
    }
    selected
}

/// The workloads behind a ServiceEntry: the selected WorkloadEntries
/// ([`selected_workloads`]), or its inline endpoints (added to the
/// snapshot as workloads named `<se>[i]`).
fn endpoints(
    se: &Resource<ServiceEntrySpec>,
    selected: Vec<NamespacedName>,
    mesh: &MeshSettings,
    part: &mut Part,
) -> Vec<NamespacedName> {
    let mut names = selected;
    for (i, endpoint) in se.spec.endpoints.iter().enumerate() {
        let name = NamespacedName::new(se.name.namespace.clone(), format!("{}[{i}]", se.name.name));
        let workload = workload(
            name.clone(),
            endpoint,
            Annotations::default(),
            mesh,
            &se.origin,
            &mut part.problems,
        );
        if let Some(w) = workload {
            part.workloads.push(Arc::new(w));
            names.push(name);
        }
    }
    names.sort();
    names
}

fn service(se: &Resource<ServiceEntrySpec>, endpoints: Vec<NamespacedName>) -> Service {
    let spec = &se.spec;
    Service {
        name: se.name.clone(),
        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        addresses: spec.addresses.iter().filter_map(|a| parse_net(a)).collect(),
        ports: spec
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                number: u16::try_from(p.number).unwrap_or_default(),
                protocol: p
                    .protocol
                    .as_deref()
                    .and_then(Protocol::parse)
                    .unwrap_or(Protocol::Tcp),
                target_port: p.target_port.and_then(|t| u16::try_from(t).ok()),
            })
            .collect(),
        location: match spec.location() {
            LocationSpec::MeshInternal => ServiceLocation::MeshInternal,
            LocationSpec::MeshExternal => ServiceLocation::MeshExternal,
        },
        resolution: match spec.resolution() {
            ResolutionSpec::None => Resolution::None,
            ResolutionSpec::Static => Resolution::Static,
            ResolutionSpec::Dns => Resolution::Dns,
            ResolutionSpec::DnsRoundRobin => Resolution::DnsRoundRobin,
        },
        endpoints,
        waypoint: se.labels.get(USE_WAYPOINT_LABEL).map(|name| {
            NamespacedName::new(
                se.labels
                    .get(USE_WAYPOINT_NAMESPACE_LABEL)
                    .map_or(se.name.namespace.as_str(), String::as_str),
                name,
            )
        }),
        cluster_local: se
            .labels
            .get(weft_core::model::CLUSTER_LOCAL_LABEL)
            .is_some_and(|v| v == "true"),
    }
}
