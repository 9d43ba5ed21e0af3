//! Istio `Gateway` → listeners on the gateway workloads its selector
//! picks, and the `VirtualService`s that name it in `gateways` → routes
//! on those listeners. The result is the same gateway model Gateway API's
//! `Gateway` and `HTTPRoute`s produce (`gateways`), so one engine serves
//! both.
//!
//! Servers on the same port of a workload become one listener,
//! `istio-<port>` (a socket serves one port): their certificates are
//! pooled and picked by SNI; they must agree on the protocol and on
//! client certificate checking. A VirtualService's routes answer, per
//! server, the host names its `hosts` and the server's `hosts` have in
//! common ([`bound_hosts`]).

use std::collections::BTreeMap;

use weft_core::l7::{
    CertificateKey, Destination, GatewayConfig, GatewayListener, HttpRoute, ListenerTls,
    Passthrough, Redirect, TlsRoute,
};
use weft_core::model::{NamespacedName, Snapshot};

use super::common::{report, service_key};
use super::routes::{destination, http_route, per_matched_prefix};
use crate::diag::Diagnostic;
use crate::kinds::istio_gateway::{ClientCerts, ServerKind, split_host};
use crate::kinds::virtual_service::L4DestinationSpec;
use crate::kinds::{IstioGatewaySpec, Resources, VirtualServiceSpec};
use crate::resource::Resource;

/// One server of an Istio Gateway as served by one gateway workload.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    /// The gateway workload.
    proxy: NamespacedName,
    /// Its listener (`istio-<port>`).
    listener: String,
    /// The port.
    port: u16,
    /// How connections are treated.
    kind: ServerKind,
    /// `[namespace/]host` entries, as written.
    hosts: Vec<String>,
}

/// Per Istio Gateway (`namespace/name`), its servers as bound.
pub(crate) type Bindings = BTreeMap<NamespacedName, Vec<Bound>>;

/// The listener name of port `port`.
fn listener_name(port: u16) -> String {
    format!("istio-{port}")
}

/// Istio `Gateway`s → listeners of the gateway workloads they select.
pub(crate) fn translate_istio_gateways(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) -> Bindings {
    let mut bindings = Bindings::new();
    let mut gateways: Vec<&Resource<IstioGatewaySpec>> =
        r.istio_gateways.iter().map(|g| g.as_ref()).collect();
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    for gw in gateways {
        let proxies: Vec<NamespacedName> = snapshot
            .workloads
            .values()
            .filter(|w| {
                w.gateway
                    && gw
                        .spec
                        .selector
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .map(|w| w.name.clone())
            .collect();
        if proxies.is_empty() {
            report(
                out,
                gw,
                "spec.selector",
                "selects no gateway workload: give a WorkloadEntry these labels and weft.dev/gateway: \"true\"".into(),
            );
            continue;
        }
        let mut bound = Vec::new();
        for proxy in &proxies {
            for (i, server) in gw.spec.servers.iter().enumerate() {
                let base = format!("spec.servers[{i}]");
                let Ok(kind) = server.kind() else { continue };
                let port = u16::try_from(server.port.number).unwrap_or_default();
                let tls = match kind {
                    ServerKind::Https(certs) => match server_tls(r, proxy, server, certs) {
                        Ok(tls) => Some(tls),
                        Err(e) => {
                            report(out, gw, &format!("{base}.tls.credentialName"), e);
                            continue;
                        }
                    },
                    _ => None,
                };
                let wanted = GatewayListener {
                    name: listener_name(port),
                    port,
                    hostname: None,
                    tls,
                    passthrough: match kind {
                        ServerKind::Passthrough => Some(Passthrough::Tls),
                        ServerKind::Tcp => Some(Passthrough::Tcp),
                        _ => None,
                    },
                };
                let config =
                    snapshot
                        .gateways
                        .entry(proxy.clone())
                        .or_insert_with(|| GatewayConfig {
                            name: proxy.to_string(),
                            ..GatewayConfig::default()
                        });
                if let Err(e) = merge_listener(&mut config.listeners, wanted) {
                    report(out, gw, &format!("{base}.port"), format!("{proxy}: {e}"));
                    continue;
                }
                if server.tls.as_ref().is_some_and(|t| t.https_redirect) {
                    config.policy.routes.push(HttpRoute {
                        name: format!("{}/servers[{i}]: httpsRedirect", gw.name),
                        hosts: server_hosts(&server.hosts),
                        listeners: vec![listener_name(port)],
                        redirect: Some(Redirect {
                            scheme: Some("https".into()),
                            host: None,
                            port: None,
                            path: None,
                            status: 301,
                        }),
                        ..HttpRoute::default()
                    });
                }
                bound.push(Bound {
                    proxy: proxy.clone(),
                    listener: listener_name(port),
                    port,
                    kind,
                    hosts: server.hosts.clone(),
                });
            }
        }
        bindings.insert(gw.name.clone(), bound);
    }
    bindings
}

/// The host names of server entries, namespaces dropped; `*` (any) as
/// no names.
fn server_hosts(entries: &[String]) -> Vec<String> {
    let hosts: Vec<String> = entries.iter().map(|e| split_host(e).1.to_owned()).collect();
    if hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        hosts
    }
}

/// An HTTPS server's TLS: the certificate from `credentialName` (a
/// Secret in the gateway workload's namespace) and, for client checks,
/// `ca.crt` from it or from `<credentialName>-cacert`.
fn server_tls(
    r: &Resources,
    proxy: &NamespacedName,
    server: &crate::kinds::istio_gateway::ServerSpec,
    certs: ClientCerts,
) -> Result<ListenerTls, String> {
    let name = server
        .tls
        .as_ref()
        .and_then(|t| t.credential_name.as_deref())
        .unwrap_or_default();
    let ns = &proxy.namespace;
    let secret = r.secret(ns, name).ok_or_else(|| {
        format!("no Secret {ns}/{name} (Istio reads the credential from the gateway workload's namespace)")
    })?;
    let (Some(chain_pem), Some(key_pem)) =
        (secret.spec.text("tls.crt"), secret.spec.text("tls.key"))
    else {
        return Err(format!("Secret {ns}/{name} has no tls.crt and tls.key"));
    };
    let client_ca = match certs {
        ClientCerts::None => None,
        ClientCerts::Required | ClientCerts::Optional => Some(
            secret
                .spec
                .text("ca.crt")
                .or_else(|| r.secret(ns, &format!("{name}-cacert"))?.spec.text("ca.crt"))
                .ok_or_else(|| {
                    format!("client certificates are checked, but neither Secret {ns}/{name} nor {ns}/{name}-cacert has ca.crt")
                })?,
        ),
    };
    Ok(ListenerTls {
        certificates: vec![CertificateKey {
            secret: format!("{ns}/{name}"),
            chain_pem,
            key_pem,
        }],
        client_ca,
        client_certificate_optional: certs == ClientCerts::Optional,
    })
}

/// Adds `wanted` to a workload's listeners, pooling it with the listener
/// of the same name (same port) when they agree.
fn merge_listener(
    listeners: &mut Vec<GatewayListener>,
    wanted: GatewayListener,
) -> Result<(), String> {
    if let Some(other) = listeners
        .iter()
        .find(|l| l.port == wanted.port && l.name != wanted.name)
    {
        return Err(format!(
            "port {} is already listener {:?} of a Gateway API Gateway",
            wanted.port, other.name
        ));
    }
    let Some(held) = listeners.iter_mut().find(|l| l.name == wanted.name) else {
        listeners.push(wanted);
        return Ok(());
    };
    let class = |l: &GatewayListener| (l.passthrough, l.tls.is_some());
    if class(held) != class(&wanted) {
        return Err(format!(
            "port {} already serves another protocol; one port serves one",
            wanted.port
        ));
    }
    if let (Some(have), Some(add)) = (held.tls.as_mut(), wanted.tls) {
        if (&have.client_ca, have.client_certificate_optional)
            != (&add.client_ca, add.client_certificate_optional)
        {
            return Err(format!(
                "servers on port {} check client certificates differently (tls.mode, or the CA); weft checks one way per port",
                wanted.port
            ));
        }
        for c in add.certificates {
            if !have.certificates.iter().any(|h| h.secret == c.secret) {
                have.certificates.push(c);
            }
        }
    }
    Ok(())
}

/// The host names a VirtualService's routes answer on a server: those
/// of `vs_hosts` the server's entries admit (the entry's namespace part,
/// if any, must admit `vs_ns`; `.` is the Gateway's own, `gw_ns`), each
/// the narrower of the two names. `None`: no host in common; `Some` of
/// an empty list: any host.
pub(crate) fn bound_hosts(
    vs_hosts: &[String],
    vs_ns: &str,
    entries: &[String],
    gw_ns: &str,
) -> Option<Vec<String>> {
    let mut found: Vec<String> = Vec::new();
    for entry in entries {
        let (scope, server) = split_host(entry);
        let admitted = match scope {
            None | Some("*") => true,
            Some(".") => vs_ns == gw_ns,
            Some(ns) => ns == vs_ns,
        };
        if !admitted {
            continue;
        }
        for host in vs_hosts {
            if let Some(h) = narrower(host, server)
                && !found.contains(&h)
            {
                found.push(h);
            }
        }
    }
    if found.is_empty() {
        None
    } else if found.iter().any(|h| h == "*") {
        Some(Vec::new())
    } else {
        Some(found)
    }
}

/// The narrower of two host patterns when they overlap (`*`, `*.suffix`
/// or a name), lowercased.
fn narrower(a: &str, b: &str) -> Option<String> {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    // Whether `pattern` covers every name `inner` covers.
    let covers = |pattern: &str, inner: &str| match pattern.strip_prefix('*') {
        _ if pattern == "*" => true,
        Some(suffix) => inner.len() > suffix.len() && inner.ends_with(suffix),
        None => pattern == inner,
    };
    if covers(&a, &b) {
        Some(b)
    } else if covers(&b, &a) {
        Some(a)
    } else {
        None
    }
}

/// VirtualServices naming Istio Gateways → routes on their listeners:
/// `http` on HTTP/HTTPS servers, `tls` on passthrough ones by SNI, `tcp`
/// on TCP ones.
pub(crate) fn bind_virtual_services(
    r: &Resources,
    snapshot: &mut Snapshot,
    bindings: &Bindings,
    out: &mut Vec<Diagnostic>,
) {
    let mut services: Vec<&Resource<VirtualServiceSpec>> =
        r.virtual_services.iter().map(|v| v.as_ref()).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for vs in services {
        let named: Vec<(usize, &str, &str)> = vs.spec.bound_gateways(&vs.name.namespace).collect();
        if named.is_empty() {
            continue;
        }
        // Routes bound to the mesh too were converted (and their problems
        // reported) already: convert again quietly.
        let mut quiet = Vec::new();
        let sink = if vs.spec.binds_mesh() {
            &mut quiet
        } else {
            &mut *out
        };
        let mut http = Vec::new();
        for (i, spec) in vs.spec.http.iter().enumerate() {
            if let Some(route) = http_route(snapshot, &snapshot.l7, vs, i, spec, sink) {
                http.extend(per_matched_prefix(route));
            }
        }
        let mut ports_ok = true;
        for (r_i, route) in http.iter_mut().enumerate() {
            for d in &mut route.destinations {
                if let Err(e) = fill_port(snapshot, d) {
                    report(out, vs, &format!("spec.http[{r_i}].route"), e);
                    ports_ok = false;
                }
            }
        }
        let tls = l4_routes(
            snapshot,
            vs,
            "spec.tls",
            vs.spec.tls.iter().map(|t| &t.route[..]),
            out,
        );
        let tcp = l4_routes(
            snapshot,
            vs,
            "spec.tcp",
            vs.spec.tcp.iter().map(|t| &t.route[..]),
            out,
        );
        if !ports_ok {
            continue;
        }
        for (g, ns, name) in named {
            let key = NamespacedName::new(ns, name);
            let field = format!("spec.gateways[{g}]");
            let Some(bound) = bindings.get(&key) else {
                let why = if r.istio_gateways.iter().any(|gw| gw.name == key) {
                    format!("Gateway {key} serves nothing (its problems are reported with it)")
                } else {
                    format!("no Istio Gateway (networking.istio.io) {key} in the configuration")
                };
                report(out, vs, &field, why);
                continue;
            };
            let mut matched = false;
            for b in bound {
                let Some(hosts) = bound_hosts(&vs.spec.hosts, &vs.name.namespace, &b.hosts, ns)
                else {
                    continue;
                };
                matched = true;
                let Some(config) = snapshot.gateways.get_mut(&b.proxy) else {
                    continue;
                };
                match b.kind {
                    ServerKind::Http | ServerKind::Https(_) => {
                        for route in &http {
                            let mut route = route.clone();
                            route.hosts = hosts.clone();
                            route.listeners = vec![b.listener.clone()];
                            config.policy.routes.push(route);
                        }
                    }
                    ServerKind::Passthrough => {
                        for (t, spec) in vs.spec.tls.iter().enumerate() {
                            let sni: Vec<String> = spec
                                .matches
                                .iter()
                                .filter(|m| m.port.is_none_or(|p| p == u32::from(b.port)))
                                .flat_map(|m| m.sni_hosts.iter().cloned())
                                .collect();
                            if let (false, Some(destinations)) =
                                (sni.is_empty(), tls.get(t).cloned().flatten())
                            {
                                config.tls_routes.push(TlsRoute {
                                    name: format!("{}/tls[{t}]", vs.name),
                                    listeners: vec![b.listener.clone()],
                                    hosts: sni,
                                    destinations,
                                });
                            }
                        }
                    }
                    ServerKind::Tcp => {
                        for (t, spec) in vs.spec.tcp.iter().enumerate() {
                            let here = spec.matches.is_empty()
                                || spec
                                    .matches
                                    .iter()
                                    .any(|m| m.port.is_none_or(|p| p == u32::from(b.port)));
                            if let (true, Some(destinations)) =
                                (here, tcp.get(t).cloned().flatten())
                            {
                                config.tls_routes.push(TlsRoute {
                                    name: format!("{}/tcp[{t}]", vs.name),
                                    listeners: vec![b.listener.clone()],
                                    hosts: Vec::new(),
                                    destinations,
                                });
                            }
                        }
                    }
                }
            }
            if !matched {
                let served: Vec<&str> = bound
                    .iter()
                    .flat_map(|b| b.hosts.iter().map(String::as_str))
                    .collect();
                report(
                    out,
                    vs,
                    &field,
                    format!(
                        "none of spec.hosts {:?} is served by Gateway {key} to namespace {} (its servers' hosts: {served:?})",
                        vs.spec.hosts, vs.name.namespace
                    ),
                );
            }
        }
    }
}

/// A destination at a gateway needs a port: the service's only one when
/// the route leaves it out.
fn fill_port(snapshot: &Snapshot, d: &mut Destination) -> Result<(), String> {
    if d.port.is_some() {
        return Ok(());
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
        Some(p) => {
            d.port = Some(p);
            Ok(())
        }
        None => Err(format!(
            "{} has several ports; name one (destination.port.number) for routes at a gateway",
            d.service
        )),
    }
}

/// The destinations of each TLS or TCP route (`None` where one did not
/// resolve; reported).
fn l4_routes<'a>(
    snapshot: &Snapshot,
    vs: &Resource<VirtualServiceSpec>,
    base: &str,
    routes: impl Iterator<Item = &'a [L4DestinationSpec]>,
    out: &mut Vec<Diagnostic>,
) -> Vec<Option<Vec<Destination>>> {
    routes
        .enumerate()
        .map(|(r, route)| {
            let mut all = Vec::new();
            for (d, spec) in route.iter().enumerate() {
                let field = format!("{base}[{r}].route[{d}].destination");
                let mut dest = destination(
                    snapshot,
                    &snapshot.l7,
                    vs,
                    &field,
                    &spec.destination,
                    spec.weight.unwrap_or(1),
                    out,
                )?;
                if let Err(e) = fill_port(snapshot, &mut dest) {
                    report(out, vs, &field, e);
                    return None;
                }
                all.push(dest);
            }
            Some(all)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bound_hosts_are_the_narrower_names_the_server_admits() {
        // (VirtualService hosts, its namespace, server hosts, want)
        type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], Option<&'a [&'a str]>);
        let cases: &[Case<'_>] = &[
            (&["*"], "bookinfo", &["*"], Some(&[])),
            (
                &["*"],
                "bookinfo",
                &["bookinfo.example.com"],
                Some(&["bookinfo.example.com"]),
            ),
            (
                &["bookinfo.example.com"],
                "bookinfo",
                &["*"],
                Some(&["bookinfo.example.com"]),
            ),
            (
                &["a.example.com"],
                "bookinfo",
                &["*.example.com"],
                Some(&["a.example.com"]),
            ),
            (
                &["*.example.com"],
                "bookinfo",
                &["a.example.com"],
                Some(&["a.example.com"]),
            ),
            (
                &["*.example.com"],
                "bookinfo",
                &["*.a.example.com"],
                Some(&["*.a.example.com"]),
            ),
            (&["a.example.com"], "bookinfo", &["b.example.com"], None),
            (
                &["A.Example.com"],
                "bookinfo",
                &["a.example.com"],
                Some(&["a.example.com"]),
            ),
            // Namespace parts: which VirtualServices may bind.
            (&["*"], "bookinfo", &["bookinfo/*"], Some(&[])),
            (&["*"], "other", &["bookinfo/*"], None),
            (&["x.com"], "gw-ns", &["./x.com"], Some(&["x.com"])),
            (&["x.com"], "bookinfo", &["./x.com"], None),
            (&["x.com"], "bookinfo", &["*/x.com"], Some(&["x.com"])),
            // Several servers' names, in order, once.
            (
                &["a.com", "b.com"],
                "bookinfo",
                &["b.com", "a.com", "*/a.com"],
                Some(&["a.com", "b.com"]),
            ),
            // `example.com` is not under `*.example.com`.
            (&["example.com"], "bookinfo", &["*.example.com"], None),
        ];
        for (vs, ns, server, want) in cases {
            let got = bound_hosts(&v(vs), ns, &v(server), "gw-ns");
            let want = want.map(v);
            // Order within a server follows the VirtualService's hosts.
            let sorted = |x: Option<Vec<String>>| {
                x.map(|mut l| {
                    l.sort();
                    l
                })
            };
            assert_eq!(sorted(got), sorted(want), "{vs:?} in {ns} on {server:?}");
        }
    }
}
