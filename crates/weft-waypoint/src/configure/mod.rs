//! From what the config stream says to what the engine serves, as one pure
//! function: for each service that uses this waypoint, and each of its
//! ports, the routes of its L7 policy (or a default route to itself), and
//! a cluster for every (service, subset, port) a route sends to — its
//! endpoints from the registry, balanced from the waypoint's locality with
//! the destination's traffic policy.

use std::collections::HashMap;
use std::sync::Arc;

use weft_core::l7::{self, L7Policy};
use weft_state::{MeshView, NamespacedName, WorkloadInfo};

use crate::engine::Config;
use crate::engine::retry::RetryPolicy;
use crate::engine::route::{Backend, Route};

mod checks;
mod clusters;
mod extensions;
pub mod remote;

use checks::{Checks, limiter};
use clusters::Builder;

/// L7 policies by service (namespace and host name).
pub type Policies = HashMap<NamespacedName, L7Policy>;

/// What the config stream says about the services, beyond the registry.
#[derive(Clone, Default)]
pub struct Services {
    /// L7 policies by service.
    pub policies: Policies,
    /// Service ports that speak HTTP/2 (`HTTP2`, `GRPC`), as
    /// `namespace/hostname:port`.
    pub http2: std::collections::HashSet<String>,
    /// Redis connections by URL, for global rate limits (opened by the
    /// waypoint; a missing one means Redis was unreachable).
    pub redis: HashMap<String, redis::aio::ConnectionManager>,
    /// Keys fetched from issuers' `jwksUri`, shared across configurations.
    pub jwks: crate::policy::jwks::Fetcher,
    /// How request paths are normalized (the `Mesh`'s setting).
    pub path_normalization: crate::engine::path::PathNormalization,
    /// Proxy-Wasm plugins as loaded, by `WasmPlugin` name.
    pub plugins: HashMap<String, crate::extension::Entry>,
    /// Where external processors count their failures.
    pub extension_metrics: crate::telemetry::extensions::ExtensionMetrics,
}

/// The engine's configuration for the services that use waypoint `me`.
/// Clusters whose endpoints and policy did not change are carried over
/// from `previous`, so a change elsewhere does not reset their retry
/// budgets, ejections or breaker counts.
pub fn config_for(
    view: &MeshView,
    me: &WorkloadInfo,
    services: &Services,
    previous: Option<&Config>,
) -> Config {
    let policies = &services.policies;
    let mut builder = Builder {
        view,
        me,
        policies,
        http2: &services.http2,
        previous,
        clusters: HashMap::new(),
    };
    let mut config = Config::default();
    for (service, info) in &view.services {
        if info.waypoint != Some(me.ip) {
            continue;
        }
        let checks = Checks::of(policies.get(service), &services.jwks);
        for port in service_ports(view, service) {
            let routes = match policies.get(service).filter(|p| !p.routes.is_empty()) {
                Some(p) => p
                    .routes
                    .iter()
                    .filter_map(|r| builder.route(r, port))
                    .collect(),
                None => vec![Route {
                    name: format!("{service}:{port} default"),
                    backends: vec![Backend {
                        service: builder.cluster(service, None, port),
                        weight: 1,
                    }],
                    retry: Some(RetryPolicy::default()),
                    ..Route::default()
                }],
            };
            let target = format!("{service}:{port}");
            checks.attach(&mut config, &target);
            if let Some(chain) =
                extensions::chain(policies.get(service), Some(port), &services.plugins)
            {
                config.plugins.insert(target.clone(), chain);
            }
            if let Some(p) = extensions::processors(
                policies.get(service),
                None,
                previous,
                &services.extension_metrics,
            ) {
                config.processors.insert(target.clone(), p);
            }
            if let Some(limit) = policies.get(service).and_then(|p| p.rate_limit.as_ref()) {
                let previous = previous.and_then(|p| p.limits.get(&target));
                config
                    .limits
                    .insert(target.clone(), limiter(limit, &services.redis, previous));
            }
            config.targets.insert(target, routes);
        }
    }
    if !config.plugins.is_empty() {
        call_targets(&mut builder, view);
    }
    config.clusters = builder.clusters;
    config.path_normalization = services.path_normalization;
    config.peers = peers(view, previous);
    // Every service's names, not only this waypoint's: a workload must not
    // pass off a header another service's policy sets.
    config.internal_headers = internal_headers(policies.values());
    config.trusted_proxies = gateway_identities(view);
    config
}

/// The headers weft sets for `policies` (JWT claims copied to headers,
/// API-key client names, an HTTP authorizer's upstream headers) and the
/// fixed ones: what no client may send.
fn internal_headers<'a>(policies: impl Iterator<Item = &'a L7Policy>) -> Vec<http::HeaderName> {
    let mut names: Vec<String> = crate::engine::sanitize::INTERNAL_HEADERS
        .iter()
        .map(|&h| h.to_owned())
        .collect();
    for p in policies {
        names.extend(
            p.jwt
                .iter()
                .flat_map(|j| j.claim_to_headers.iter().map(|(h, _)| h.clone())),
        );
        for provider in p.authz.iter().filter_map(|a| a.provider.as_ref()) {
            match &provider.kind {
                l7::ProviderKind::ApiKey { client_header, .. } => names.push(client_header.clone()),
                l7::ProviderKind::Http {
                    headers_to_upstream,
                    ..
                } => names.extend(headers_to_upstream.iter().cloned()),
                l7::ProviderKind::Grpc { .. } => {}
            }
        }
    }
    let mut out: Vec<http::HeaderName> = names
        .iter()
        .filter_map(|n| http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out.dedup();
    out
}

/// The identities of the mesh's ingress gateways: a waypoint keeps the
/// internal headers a gateway set on the requests it forwards.
fn gateway_identities(view: &MeshView) -> std::collections::HashSet<weft_core::Identity> {
    view.workloads
        .values()
        .filter(|w| w.gateway)
        .map(|w| w.identity.clone())
        .collect()
}

/// `what` of every workload of the registry, by address. Addresses of
/// this network win over those of workloads behind another network's
/// gateway (the same address may be in use in both).
pub(crate) fn by_address<T>(
    view: &MeshView,
    what: impl Fn(&WorkloadInfo) -> T,
) -> HashMap<std::net::IpAddr, T> {
    let mut out: HashMap<_, _> = view
        .workloads
        .values()
        .filter(|w| w.network_gateway.is_none())
        .map(|w| (w.ip, what(w)))
        .collect();
    for w in view
        .workloads
        .values()
        .filter(|w| w.network_gateway.is_some())
    {
        out.entry(w.ip).or_insert_with(|| what(w));
    }
    out
}

/// Every workload of the registry as telemetry names it, by address
/// (shared with `previous` when nothing changed).
fn peers(
    view: &MeshView,
    previous: Option<&Config>,
) -> Arc<HashMap<std::net::IpAddr, Arc<weft_telemetry::labels::Peer>>> {
    let mut peers: HashMap<_, _> = by_address(view, WorkloadInfo::peer)
        .into_iter()
        .map(|(ip, peer)| (ip, Arc::new(peer)))
        .collect();
    peers.extend(
        remote::peers(view)
            .into_iter()
            .map(|(ip, peer)| (ip, Arc::new(peer))),
    );
    match previous {
        Some(p) if *p.peers == peers => p.peers.clone(),
        _ => Arc::new(peers),
    }
}

/// The engine target of a gateway listener.
pub fn listener_target(listener: &str) -> String {
    format!("gateway/{listener}")
}

/// The engine's configuration for ingress gateway `gateway` (running as
/// workload `me`): per listener, the routes attached to it (a route
/// without host names takes the listener's), and the gateway's JWT
/// issuers, authorization policies and rate limit; clusters as for a
/// waypoint, reused from `previous` when unchanged.
pub fn gateway_config_for(
    view: &MeshView,
    me: &WorkloadInfo,
    gateway: &l7::GatewayConfig,
    services: &Services,
    previous: Option<&Config>,
) -> Config {
    let mut builder = Builder {
        view,
        me,
        policies: &services.policies,
        http2: &services.http2,
        previous,
        clusters: HashMap::new(),
    };
    let policy = &gateway.policy;
    let mut config = Config::default();
    let checks = Checks::of(Some(policy), &services.jwks);
    // One limiter for every listener: a client's requests count once.
    let limit = policy.rate_limit.as_ref().map(|l| {
        let previous = previous.and_then(|p| p.limits.values().next());
        limiter(l, &services.redis, previous)
    });
    for listener in &gateway.listeners {
        let target = listener_target(&listener.name);
        if listener.passthrough.is_some() {
            let routes = gateway
                .tls_routes
                .iter()
                .filter(|r| r.listeners.is_empty() || r.listeners.contains(&listener.name))
                .map(|r| crate::engine::route::PassRoute {
                    name: r.name.clone(),
                    hosts: r.hosts.clone(),
                    backends: r
                        .destinations
                        .iter()
                        .map(|d| builder.backend(d, d.port.unwrap_or_default()))
                        .collect(),
                })
                .collect();
            config.passthrough.insert(target, routes);
            continue;
        }
        let routes = policy
            .routes
            .iter()
            .filter(|r| r.listeners.is_empty() || r.listeners.contains(&listener.name))
            .filter_map(|r| {
                let mut route = builder.route(r, 0)?;
                // Services that ask for it get their ingress traffic
                // through their waypoint: one "endpoint", the VIP, which
                // the HBONE connector sends to the waypoint.
                for (backend, d) in route.backends.iter_mut().zip(&r.destinations) {
                    let service = NamespacedName::from_key(&d.service);
                    let info = view.services.get(&service);
                    let through_waypoint = services
                        .policies
                        .get(&service)
                        .is_some_and(|p| p.ingress_use_waypoint);
                    if let (true, Some(vip), Some(_), Some(port)) = (
                        through_waypoint,
                        info.and_then(|i| i.vip),
                        info.and_then(|i| i.waypoint),
                        d.port,
                    ) {
                        backend.service = builder.via_waypoint(&service, vip, port);
                    }
                }
                if route.hosts.is_empty() {
                    route.hosts = listener.hostname.iter().cloned().collect();
                }
                Some(route)
            })
            .collect();
        config.targets.insert(target.clone(), routes);
        checks.attach(&mut config, &target);
        if let Some(chain) = extensions::chain(Some(policy), Some(listener.port), &services.plugins)
        {
            config.plugins.insert(target.clone(), chain);
        }
        if let Some(p) = extensions::processors(
            Some(policy),
            Some(&listener.name),
            previous,
            &services.extension_metrics,
        ) {
            config.processors.insert(target.clone(), p);
        }
        if let Some(l) = &limit {
            config.limits.insert(target, l.clone());
        }
    }
    if !config.plugins.is_empty() {
        call_targets(&mut builder, view);
    }
    config.clusters = builder.clusters;
    config.path_normalization = services.path_normalization;
    config.peers = peers(view, previous);
    // Requests reach a gateway from outside: nobody is trusted to set
    // weft's headers.
    config.internal_headers = internal_headers(std::iter::once(policy));
    config
}

/// A cluster for every port of every service: when any target has
/// plugins, whose HTTP calls name services by host name and port.
fn call_targets(builder: &mut Builder<'_>, view: &MeshView) {
    for service in view.services.keys() {
        for port in service_ports(view, service) {
            builder.cluster(service, None, port);
        }
    }
}

/// The service ports of `service`, from its endpoints.
fn service_ports(view: &MeshView, service: &NamespacedName) -> Vec<u16> {
    let mut ports: Vec<u16> = view
        .endpoints_of(service)
        .filter_map(|w| w.services.get(service))
        .flat_map(|m| m.keys().copied())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use weft_core::Identity;
    use weft_core::l7::LoadBalancer;
    use weft_state::ServiceInfo;

    use crate::engine::lb::Policy;

    use super::*;

    fn workload(name: &str, ip: [u8; 4], zone: &str) -> WorkloadInfo {
        WorkloadInfo {
            uid: format!("weft/{name}"),
            name: name.into(),
            ip: ip.into(),
            identity: Identity::new("cluster.local", "shop", "x").expect("id"),
            node: "node-1".into(),
            locality: weft_state::Locality {
                region: "eu".into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            cluster: String::new(),
            network: String::new(),
            network_gateway: None,
            services: HashMap::from([("shop/reviews".into(), HashMap::from([(80, 8080)]))]),
            policies: vec![],
            permissive: false,
            waypoint: false,
            gateway: false,
            enforced: false,
            canonical_service: String::new(),
            canonical_revision: String::new(),
        }
    }

    fn view(me: &WorkloadInfo, endpoints: &[WorkloadInfo]) -> MeshView {
        let mut v = MeshView::default();
        v.services.insert(
            "shop/reviews".into(),
            ServiceInfo {
                vip: Some([240, 0, 0, 1].into()),
                waypoint: Some(me.ip),
            },
        );
        for e in endpoints {
            v.endpoints
                .entry("shop/reviews".into())
                .or_default()
                .push(e.uid.clone());
            v.workloads.insert(e.uid.clone(), Arc::new(e.clone()));
        }
        v
    }

    #[test]
    fn without_a_policy_a_default_route_to_the_service() {
        let me = workload("shop/waypoint", [127, 0, 1, 40], "a");
        let v1 = workload("shop/reviews-v1", [127, 0, 1, 12], "a");
        let config = config_for(&view(&me, &[v1]), &me, &Services::default(), None);
        let routes = &config.targets["shop/reviews:80"];
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].backends[0].service, "shop/reviews:80");
        let cluster = &config.clusters["shop/reviews:80"];
        assert_eq!(
            cluster.balancer.endpoints()[0].addr.to_string(),
            "127.0.1.12:8080"
        );
        assert!(
            cluster.rate_budget.is_some(),
            "retries are budgeted by default"
        );
    }

    #[test]
    fn endpoints_of_another_network_are_reached_through_their_gateway() {
        let mut me = workload("shop/waypoint", [127, 0, 1, 40], "a");
        (me.network, me.cluster) = ("net-east".into(), "east".into());
        let mut home = workload("shop/reviews-east", [127, 0, 1, 12], "a");
        (home.network, home.cluster) = ("net-east".into(), "east".into());
        let mut flat = workload("shop/reviews-flat", [127, 0, 1, 13], "a");
        flat.cluster = "west".into();
        // Another network may use this network's addresses.
        let gateway: SocketAddr = "192.0.2.2:15008".parse().expect("addr");
        let mut far = workload("shop/reviews-far", [127, 0, 1, 12], "a");
        (far.network, far.cluster) = ("net-west".into(), "west".into());
        far.network_gateway = Some(gateway);
        let mut lost = workload("shop/reviews-lost", [127, 0, 1, 15], "a");
        lost.network = "net-south".into();
        let mut v = view(&me, &[home, flat, far.clone(), lost]);
        let mut gw = workload("weft-system/east-west", [192, 0, 2, 2], "a");
        gw.identity = Identity::new("cluster.local", "weft-system", "east-west").expect("id");
        gw.services.clear();
        v.by_ip.insert(gw.ip, gw.uid.clone());
        v.workloads.insert(gw.uid.clone(), Arc::new(gw.clone()));
        let config = config_for(&v, &me, &Services::default(), None);
        let reviews = NamespacedName::from("shop/reviews");
        let handle = remote::handle(gateway, &reviews, 80);
        let endpoints: Vec<(String, bool)> = config.clusters["shop/reviews:80"]
            .balancer
            .endpoints()
            .iter()
            .map(|e| (e.addr.to_string(), e.elsewhere))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("127.0.1.12:8080".to_owned(), false),
                ("127.0.1.13:8080".to_owned(), true),
                (handle.to_string(), true),
            ],
            "home, flat across clusters, the gateway's handle; never the lost one"
        );
        assert!(remote::is_handle(handle.ip()) && !remote::is_handle(far.ip));
        assert_ne!(handle, remote::handle(gateway, &reviews, 81));
        assert_eq!(
            remote::routes(&v).get(&handle),
            Some(&remote::RemoteRoute {
                gateway,
                gateway_identity: gw.identity.clone(),
                authority: "reviews:80".into(),
                identities: vec![far.identity.clone()],
            })
        );
        assert_eq!(
            config.peers[&std::net::IpAddr::from([127, 0, 1, 12])].workload,
            "reviews-east",
            "an address of this network names its own workload"
        );
        assert_eq!(config.peers[&handle.ip()].workload, "reviews-far");
    }

    #[test]
    fn subsets_split_endpoints_and_policies_shape_clusters() {
        let me = workload("shop/waypoint", [127, 0, 1, 40], "a");
        let v1 = workload("shop/reviews-v1", [127, 0, 1, 12], "a");
        let v2 = workload("shop/reviews-v2", [127, 0, 2, 12], "b");
        let dest = |subset: &str, weight| l7::Destination {
            service: "shop/reviews".into(),
            subset: Some(subset.into()),
            port: None,
            weight,
        };
        let policy = L7Policy {
            routes: vec![l7::HttpRoute {
                name: "split".into(),
                destinations: vec![dest("v1", 90), dest("v2", 10)],
                ..l7::HttpRoute::default()
            }],
            traffic: l7::TrafficPolicy {
                load_balancer: LoadBalancer::RoundRobin,
                max_requests: Some(5),
                ..l7::TrafficPolicy::default()
            },
            subsets: [
                ("v1".to_owned(), vec!["shop/reviews-v1".to_owned()]),
                ("v2".to_owned(), vec!["shop/reviews-v2".to_owned()]),
            ]
            .into(),
            rate_limit: Some(l7::RateLimit {
                policy: "shop/tiers".into(),
                redis: None,
                service: None,
                fail_open: true,
                rules: vec![l7::RateRule {
                    name: "default".into(),
                    when: vec![],
                    count_by: vec![l7::RateAttribute::SourcePrincipal],
                    requests: 100,
                    period: std::time::Duration::from_secs(3600),
                    burst: 100,
                }],
            }),
            jwt: vec![],
            authz: vec![],
            ingress_use_waypoint: false,
            wasm: vec![],
            ext_proc: vec![],
        };
        let services = Services {
            policies: Policies::from([("shop/reviews".into(), policy)]),
            http2: ["shop/reviews:80".to_owned()].into(),
            ..Services::default()
        };
        let endpoints = [v1, v2];
        let config = config_for(&view(&me, &endpoints), &me, &services, None);
        let route = &config.targets["shop/reviews:80"][0];
        let backends: Vec<(&str, u32)> = route
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect();
        assert_eq!(
            backends,
            [("shop/reviews:80#v1", 90), ("shop/reviews:80#v2", 10)]
        );
        let canary = &config.clusters["shop/reviews:80#v2"];
        assert_eq!(canary.balancer.endpoints().len(), 1);
        assert_eq!(
            canary.balancer.endpoints()[0].addr.to_string(),
            "127.0.2.12:8080"
        );
        assert_eq!(canary.balancer.policy(), Policy::RoundRobin);
        assert!(canary.http2, "an HTTP2 port is spoken to in HTTP/2");
        assert_eq!(canary.breaker.in_flight(5), 0);
        // Rebuilt from the same inputs, clusters (and their budgets and
        // ejections) are the same objects; a changed policy makes new ones.
        let key = "shop/reviews:80#v1";
        let again = config_for(&view(&me, &endpoints), &me, &services, Some(&config));
        assert!(Arc::ptr_eq(&config.clusters[key], &again.clusters[key]));
        // So are rate limiters (local counts survive).
        let target = "shop/reviews:80";
        assert_eq!(config.limits[target].rules[0].requests, 100);
        assert!(Arc::ptr_eq(&config.limits[target], &again.limits[target]));
        let mut changed = services.clone();
        if let Some(p) = changed.policies.get_mut(&"shop/reviews".into()) {
            p.traffic.max_requests = Some(6);
        }
        let fresh = config_for(&view(&me, &endpoints), &me, &changed, Some(&again));
        assert!(!Arc::ptr_eq(&again.clusters[key], &fresh.clusters[key]));
    }
}
