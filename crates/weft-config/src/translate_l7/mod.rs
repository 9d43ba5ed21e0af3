//! `VirtualService` and `DestinationRule` → each service's [`L7Policy`];
//! gateways (Gateway API's and Istio's) → their listeners and routes.
//! Names are resolved here: hosts to services (short names in the
//! resource's namespace), subsets to workloads. What cannot be resolved is
//! reported with the resource and field.

mod clusters;
mod common;
mod extensions;
mod gateways;
mod istio_gateways;
mod policies;
mod routes;

use std::collections::BTreeMap;

use weft_core::l7::L7Policy;
use weft_core::model::{NamespacedName, Snapshot};

use crate::diag::Diagnostic;
use crate::kinds::{DestinationRuleSpec, Resources, VirtualServiceSpec};
use crate::resource::Resource;
use clusters::traffic_policy;
use common::report;
use gateways::translate_http_routes;
use gateways::{translate_gateways, translate_tls_routes};
use policies::{
    translate_rate_limits, translate_request_authentications, translate_waypoint_policies,
};
use routes::{http_route, per_matched_prefix};

pub use common::{DEFAULT_RETRY_ON, resolve_host, service_key};

/// Adds every service's L7 policy to the snapshot.
pub(crate) fn translate(r: &Resources, snapshot: &mut Snapshot, out: &mut Vec<Diagnostic>) {
    let mut policies: BTreeMap<NamespacedName, L7Policy> = BTreeMap::new();
    let mut rules: Vec<&Resource<DestinationRuleSpec>> =
        r.destination_rules.iter().map(|d| d.as_ref()).collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    for dr in rules {
        let Some(service) = resolve_host(snapshot, &dr.name.namespace, &dr.spec.host) else {
            report(
                out,
                dr,
                "spec.host",
                format!("{:?} is not a service in the registry", dr.spec.host),
            );
            continue;
        };
        let policy = policies.entry(service.name.clone()).or_default();
        policy.traffic = traffic_policy(dr, out);
        if let Some(keys) = dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|t| t.load_balancer.as_ref())
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .map(|l| &l.failover_priority)
            .filter(|k| !k.is_empty())
        {
            // Ranked against the waypoint that calls the endpoints.
            match service
                .waypoint
                .as_ref()
                .and_then(|w| snapshot.workloads.get(w))
            {
                Some(caller) => {
                    for w in snapshot.endpoints(service) {
                        let rank = weft_core::failover::rank(keys, caller, w);
                        policy
                            .traffic
                            .locality
                            .priority
                            .insert(w.name.to_string(), rank);
                    }
                }
                None => report(
                    out,
                    dr,
                    "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
                    format!(
                        "{} has no waypoint to rank its endpoints against",
                        service.name
                    ),
                ),
            }
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let members: Vec<String> = snapshot
                .endpoints(service)
                .filter(|w| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .map(|w| w.name.to_string())
                .collect();
            if members.is_empty() {
                // Istio accepts it (the endpoints may come later); routes
                // to it answer 503 until then.
                common::warn(
                    out,
                    dr,
                    &format!("spec.subsets[{i}].labels"),
                    format!(
                        "subset {:?} selects none of {}'s endpoints (yet): requests routed to it fail with 503 until one has these labels",
                        subset.name, service.name
                    ),
                );
            }
            policy.subsets.insert(subset.name.clone(), members);
        }
    }
    let mut services: Vec<&Resource<VirtualServiceSpec>> =
        r.virtual_services.iter().map(|v| v.as_ref()).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    // Routes for the mesh; those for Istio Gateways are bound below.
    for vs in services.into_iter().filter(|v| v.spec.binds_mesh()) {
        let mut routes = Vec::new();
        for (i, spec) in vs.spec.http.iter().enumerate() {
            if let Some(route) = http_route(snapshot, &policies, vs, i, spec, out) {
                routes.extend(per_matched_prefix(route));
            }
        }
        for (h, host) in vs.spec.hosts.iter().enumerate() {
            match resolve_host(snapshot, &vs.name.namespace, host) {
                Some(service) => policies
                    .entry(service.name.clone())
                    .or_default()
                    .routes
                    .extend(routes.iter().cloned()),
                None => report(
                    out,
                    vs,
                    &format!("spec.hosts[{h}]"),
                    format!("{host:?} is not a service in the registry"),
                ),
            }
        }
    }
    for se in &r.service_entries {
        if se
            .labels
            .get(weft_core::model::INGRESS_USE_WAYPOINT_LABEL)
            .is_some_and(|v| v == "true")
        {
            policies
                .entry(se.name.clone())
                .or_default()
                .ingress_use_waypoint = true;
        }
    }
    snapshot.l7 = policies;
    translate_gateways(r, snapshot, out);
    let bindings = istio_gateways::translate_istio_gateways(r, snapshot, out);
    istio_gateways::bind_virtual_services(r, snapshot, &bindings, out);
    translate_http_routes(r, snapshot, out);
    translate_tls_routes(r, snapshot, out);
    translate_rate_limits(r, snapshot, out);
    translate_request_authentications(r, snapshot, out);
    translate_waypoint_policies(r, snapshot, out);
    extensions::translate_wasm_plugins(r, snapshot, out);
    extensions::translate_ext_procs(r, snapshot, out);
}
