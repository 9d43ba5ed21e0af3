//! Gateway API `Gateway` → a gateway's listeners; routes attached to
//! their parents: `HTTPRoute`/`GRPCRoute` to gateway listeners or to
//! services (the mesh), `TLSRoute`/`TCPRoute` to passthrough listeners.

use weft_core::l7::{Destination, HttpRoute, L7Policy};
use weft_core::model::{NamespacedName, Snapshot};

use super::common::{report, service_key};
use super::routes::{as_http_route, gateway_rule, per_matched_prefix, service_ref};
use crate::diag::Diagnostic;
use crate::kinds::Resources;
use crate::resource::{Resource, Spec};

/// Adds a route's rules to the Gateway `parent` names: with the route's
/// host names and listener (`sectionName`), each backend given a port
/// (the service's only port when the route leaves it out).
pub(crate) fn attach_to_gateway(
    snapshot: &mut Snapshot,
    hr: &Resource<crate::kinds::HttpRouteSpec>,
    field: &str,
    parent: &crate::kinds::http_route::RefSpec,
    converted: &[HttpRoute],
    out: &mut Vec<Diagnostic>,
) {
    let ns = parent.namespace.as_deref().unwrap_or(&hr.name.namespace);
    let wanted = NamespacedName::new(ns, &parent.name);
    let Some(gateway) = snapshot.gateways.get(&wanted) else {
        report(
            out,
            hr,
            &format!("{field}.name"),
            format!("no Gateway {wanted} in the configuration"),
        );
        return;
    };
    if let Some(section) = &parent.section_name
        && !gateway.listeners.iter().any(|l| &l.name == section)
    {
        report(
            out,
            hr,
            &format!("{field}.sectionName"),
            format!("Gateway {wanted} has no listener {section:?}"),
        );
        return;
    }
    if let Some(section) = &parent.section_name
        && gateway
            .listeners
            .iter()
            .any(|l| &l.name == section && l.passthrough.is_some())
    {
        report(
            out,
            hr,
            &format!("{field}.sectionName"),
            format!(
                "listener {section:?} passes connections through unopened; attach TLSRoutes or TCPRoutes to it"
            ),
        );
        return;
    }
    let mut routes = converted.to_vec();
    for (r, route) in routes.iter_mut().enumerate() {
        route.hosts = hr.spec.hostnames.clone();
        route.listeners = parent.section_name.iter().cloned().collect();
        for (b, d) in route.destinations.iter_mut().enumerate() {
            if d.port.is_some() {
                continue;
            }
            let only = snapshot
                .services
                .values()
                .find(|s| service_key(s) == d.service)
                .and_then(|s| match s.ports.as_slice() {
                    [one] => Some(one.number),
                    _ => None,
                });
            match only {
                Some(port) => d.port = Some(port),
                None => {
                    report(
                        out,
                        hr,
                        &format!("spec.rules[{r}].backendRefs[{b}].port"),
                        format!(
                            "{} has several ports; name one for routes at a Gateway",
                            d.service
                        ),
                    );
                    return;
                }
            }
        }
    }
    if let Some(g) = snapshot.gateways.get_mut(&wanted) {
        g.policy.routes.extend(routes);
    }
}

/// `Gateway`s → their listeners (certificates and CA bundles read from
/// Secrets), each checked to have its WorkloadEntry.
pub(crate) fn translate_gateways(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use crate::kinds::gateway::{CLIENT_CERTIFICATE_OPTION, SecretRefSpec};
    use weft_core::l7::{CertificateKey, GatewayConfig, GatewayListener, ListenerTls};
    let mut gateways: Vec<&Resource<crate::kinds::GatewaySpec>> = r
        .gateways
        .iter()
        .map(|g| g.as_ref())
        .filter(|g| !g.spec.is_waypoint())
        .collect();
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    for gw in gateways {
        let runs_as = snapshot.workloads.get(&gw.name).is_some_and(|w| w.gateway);
        if !runs_as {
            report(
                out,
                gw,
                "metadata.name",
                format!(
                    "no WorkloadEntry {} labelled weft.dev/gateway: \"true\" to run this gateway as",
                    gw.name
                ),
            );
            continue;
        }
        let secret = |field: &str, reference: &SecretRefSpec, out: &mut Vec<Diagnostic>| {
            let ns = reference.namespace.as_deref().unwrap_or(&gw.name.namespace);
            let found = r.secret(ns, &reference.name);
            if found.is_none() {
                report(
                    out,
                    gw,
                    field,
                    format!("no Secret {ns}/{} in the configuration", reference.name),
                );
            }
            found.map(|s| (format!("{ns}/{}", reference.name), s))
        };
        let mut listeners = Vec::new();
        let mut ok = true;
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let base = format!("spec.listeners[{i}].tls");
            let passthrough = match l.protocol.as_str() {
                "TLS" => Some(weft_core::l7::Passthrough::Tls),
                "TCP" => Some(weft_core::l7::Passthrough::Tcp),
                "HBONE" => Some(weft_core::l7::Passthrough::EastWest),
                _ => None,
            };
            let tls = match &l.tls {
                None => None,
                Some(_) if passthrough.is_some() => None,
                Some(t) => {
                    let mut certificates = Vec::new();
                    for (c, reference) in t.certificate_refs.iter().enumerate() {
                        let field = format!("{base}.certificateRefs[{c}]");
                        let Some((name, s)) = secret(&field, reference, out) else {
                            ok = false;
                            continue;
                        };
                        match (s.spec.text("tls.crt"), s.spec.text("tls.key")) {
                            (Some(chain_pem), Some(key_pem)) => certificates.push(CertificateKey {
                                secret: name,
                                chain_pem,
                                key_pem,
                            }),
                            _ => {
                                ok = false;
                                report(
                                    out,
                                    gw,
                                    &field,
                                    format!("Secret {name} has no tls.crt and tls.key"),
                                );
                            }
                        }
                    }
                    let mut client_ca = None;
                    if let Some(v) = &t.frontend_validation {
                        let mut bundle = String::new();
                        for (c, reference) in v.ca_certificate_refs.iter().enumerate() {
                            let field = format!("{base}.frontendValidation.caCertificateRefs[{c}]");
                            let Some((name, s)) = secret(&field, reference, out) else {
                                ok = false;
                                continue;
                            };
                            match s.spec.text("ca.crt") {
                                Some(pem) => bundle.push_str(&pem),
                                None => {
                                    ok = false;
                                    report(out, gw, &field, format!("Secret {name} has no ca.crt"));
                                }
                            }
                        }
                        client_ca = Some(bundle);
                    }
                    Some(ListenerTls {
                        certificates,
                        client_ca,
                        client_certificate_optional: t
                            .options
                            .get(CLIENT_CERTIFICATE_OPTION)
                            .is_some_and(|v| v == "optional"),
                    })
                }
            };
            listeners.push(GatewayListener {
                name: l.name.clone(),
                port: u16::try_from(l.port).unwrap_or_default(),
                hostname: l.hostname.clone(),
                tls,
                passthrough,
            });
        }
        if ok && gw.spec.is_east_west() {
            east_west(gw, snapshot, out);
        }
        if ok {
            snapshot.gateways.insert(
                gw.name.clone(),
                GatewayConfig {
                    name: gw.name.to_string(),
                    listeners,
                    policy: L7Policy::default(),
                    tls_routes: Vec::new(),
                },
            );
        }
    }
}

/// An east-west Gateway → its network's gateway (one per network): where
/// other networks' tunnels enter it.
fn east_west(
    gw: &Resource<crate::kinds::GatewaySpec>,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use weft_core::failover::NETWORK_LABEL;
    // Validated to exist, with an IP, before (`runs_as`).
    let Some(workload) = snapshot.workloads.get(&gw.name) else {
        return;
    };
    // The address other networks dial: the Gateway's own (a load
    // balancer's), else its workload's.
    let address = match (gw.spec.address(), &workload.address) {
        (Some(ip), _) | (None, &weft_core::model::WorkloadAddress::Ip(ip)) => ip,
        (None, weft_core::model::WorkloadAddress::Hostname(_)) => {
            report(
                out,
                gw,
                "spec.addresses",
                format!(
                    "WorkloadEntry {} has no IP address; give the IP other networks dial here",
                    gw.name
                ),
            );
            return;
        }
    };
    let network = gw
        .labels
        .get(NETWORK_LABEL)
        .cloned()
        .unwrap_or_else(|| workload.network.clone());
    if network.is_empty() {
        report(
            out,
            gw,
            "metadata.labels",
            format!(
                "an east-west gateway serves one network: label it {NETWORK_LABEL}: <network> (or give its WorkloadEntry a network)"
            ),
        );
        return;
    }
    if let Some(other) = snapshot.network_gateways.get(&network) {
        report(
            out,
            gw,
            "metadata.labels",
            format!(
                "network {network:?} already has the east-west gateway {}",
                other.name
            ),
        );
        return;
    }
    let gateway = weft_core::model::NetworkGateway {
        name: gw.name.clone(),
        address,
        port: u16::try_from(crate::kinds::gateway::HBONE_PORT).unwrap_or(15008),
        identity: workload.identity.clone(),
    };
    snapshot.network_gateways.insert(network, gateway);
}

/// `TLSRoute`s and `TCPRoute`s → the passthrough routes of their Gateways.
pub(crate) fn translate_tls_routes(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use weft_core::l7::Passthrough;
    let mut tls: Vec<&Resource<crate::kinds::TlsRouteSpec>> =
        r.tls_routes.iter().map(|t| t.as_ref()).collect();
    tls.sort_by(|a, b| a.name.cmp(&b.name));
    for tr in tls {
        let s = &tr.spec;
        let route = (&s.parent_refs[..], &s.hostnames[..], &s.rules[..]);
        stream_route(snapshot, tr, route, Passthrough::Tls, out);
    }
    let mut tcp: Vec<&Resource<crate::kinds::TcpRouteSpec>> =
        r.tcp_routes.iter().map(|t| t.as_ref()).collect();
    tcp.sort_by(|a, b| a.name.cmp(&b.name));
    for tr in tcp {
        let s = &tr.spec;
        let route = (&s.parent_refs[..], &[][..], &s.rules[..]);
        stream_route(snapshot, tr, route, Passthrough::Tcp, out);
    }
}

/// Gateway API `HTTPRoute`s with service parents (GAMMA) → routes of those
/// services. A service takes its routes from one API: a service that also
/// has `VirtualService` routes is reported.
pub(crate) fn translate_http_routes(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    use crate::kinds::HttpRouteSpec;
    let from_virtual_services: std::collections::BTreeSet<NamespacedName> = snapshot
        .l7
        .iter()
        .filter(|(_, p)| !p.routes.is_empty())
        .map(|(n, _)| n.clone())
        .collect();
    // GRPCRoutes are HTTPRoutes whose matches are paths `/<service>/<method>`.
    let grpc: Vec<Resource<HttpRouteSpec>> =
        r.grpc_routes.iter().map(|g| as_http_route(g)).collect();
    let mut routes: Vec<&Resource<HttpRouteSpec>> = r
        .http_routes
        .iter()
        .map(|h| h.as_ref())
        .chain(grpc.iter())
        .collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for hr in routes {
        let mut converted = Vec::new();
        for (i, rule) in hr.spec.rules.iter().enumerate() {
            if let Some(route) = gateway_rule(snapshot, hr, i, rule, out) {
                converted.extend(per_matched_prefix(route));
            }
        }
        for (i, parent) in hr.spec.parent_refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            if parent.is_gateway() {
                attach_to_gateway(snapshot, hr, &field, parent, &converted, out);
                continue;
            }
            let Some(service) = service_ref(snapshot, hr, &field, parent, out) else {
                continue;
            };
            let name = service.name.clone();
            if from_virtual_services.contains(&name) {
                report(
                    out,
                    hr,
                    &field,
                    format!(
                        "{name} already has VirtualService routes; route a service with one API"
                    ),
                );
                continue;
            }
            snapshot
                .l7
                .entry(name)
                .or_default()
                .routes
                .extend(converted.iter().cloned());
        }
    }
}

/// One TLSRoute or TCPRoute — its (parents, host names, rules) — attached
/// to the listeners of `kind` it names.
pub(crate) fn stream_route<S: Spec>(
    snapshot: &mut Snapshot,
    res: &Resource<S>,
    (parents, hosts, rules): (
        &[crate::kinds::http_route::RefSpec],
        &[String],
        &[crate::kinds::tls_route::TlsRuleSpec],
    ),
    kind: weft_core::l7::Passthrough,
    out: &mut Vec<Diagnostic>,
) {
    use weft_core::l7::{Passthrough, TlsRoute};
    let Some(rule) = rules.first() else {
        return;
    };
    let mut destinations = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let field = format!("spec.rules[0].backendRefs[{b}]");
        let Some(service) = service_ref(snapshot, res, &field, backend, out) else {
            continue;
        };
        destinations.push(Destination {
            service: service_key(service),
            subset: None,
            port: backend.port.and_then(|p| u16::try_from(p).ok()),
            weight: backend.weight.unwrap_or(1),
        });
    }
    if destinations.len() != rule.backend_refs.len() {
        return;
    }
    let listener_kind = match kind {
        Passthrough::Tls => "TLS passthrough",
        Passthrough::Tcp => "TCP",
        // Routes name TLS or TCP listeners only.
        Passthrough::EastWest => "east-west",
    };
    for (i, parent) in parents.iter().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        let ns = parent.namespace.as_deref().unwrap_or(&res.name.namespace);
        let wanted = NamespacedName::new(ns, &parent.name);
        let Some(gateway) = snapshot.gateways.get_mut(&wanted) else {
            report(
                out,
                res,
                &format!("{field}.name"),
                format!("no Gateway {wanted} in the configuration"),
            );
            continue;
        };
        let listeners: Vec<String> = gateway
            .listeners
            .iter()
            .filter(|l| l.passthrough == Some(kind))
            .filter(|l| parent.section_name.as_ref().is_none_or(|s| &l.name == s))
            .map(|l| l.name.clone())
            .collect();
        if listeners.is_empty() {
            let named = parent
                .section_name
                .as_ref()
                .map(|s| format!(" named {s:?}"))
                .unwrap_or_default();
            report(
                out,
                res,
                &field,
                format!("Gateway {wanted} has no {listener_kind} listener{named}"),
            );
            continue;
        }
        gateway.tls_routes.push(TlsRoute {
            name: res.name.to_string(),
            listeners,
            hosts: hosts.to_vec(),
            destinations: destinations.clone(),
        });
    }
}
