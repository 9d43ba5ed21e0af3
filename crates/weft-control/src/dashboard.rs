//! The dashboard and the graph API, served on the monitoring port
//! (15014): plain HTML, CSS and JavaScript compiled into the binary (no
//! CDN), drawing the live service graph from `/api/graph` and a page per
//! service from `/api/service`.
//!
//! - `GET /` — the dashboard;
//! - `GET /api/graph?window=5m` — [`crate::observe::Report`] as JSON, with
//!   the kind of every node (service, waypoint, gateway, caller);
//! - `GET /api/service?name=<host>&window=5m` — callers, callees,
//!   policies in force and what they decided, certificates and their
//!   expiry, endpoints and their health.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use weft_admin::{Reply, Routes};
use weft_core::model::{Snapshot, WorkloadAddress};

use crate::config::LiveConfig;
use crate::crossings::{Crossings, GatewayRef};
use crate::observe::{Aggregator, Report, parse_window};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// The default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// A node of the graph.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    /// Its id: a service hostname, or a caller's canonical name.
    pub id: String,
    /// `service`, `waypoint`, `gateway` or `client` (a caller that is not
    /// a service).
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
}

#[derive(Serialize)]
struct GraphBody<'a> {
    #[serde(flatten)]
    report: &'a Report,
    nodes: Vec<Node>,
    links: Vec<Link<'a>>,
}

/// An edge between two graph nodes (a caller that is a service's
/// workload is drawn as that service), with the east-west gateway it
/// passes when it crosses networks.
#[derive(Serialize)]
struct Link<'a> {
    from: String,
    to: &'a str,
    gateway: Option<GatewayRef>,
    #[serde(flatten)]
    edge: &'a weft_telemetry::graph::Edge,
}

fn links<'a>(snapshot: &Snapshot, crossings: &Crossings, report: &'a Report) -> Vec<Link<'a>> {
    report
        .edges
        .iter()
        .map(|e| Link {
            from: service_of(snapshot, &e.source, &e.source_namespace)
                .unwrap_or_else(|| e.source.clone()),
            to: &e.destination,
            gateway: crossings
                .via(&e.source_cluster, &e.destination_cluster)
                .cloned(),
            edge: e,
        })
        .collect()
}

/// The graph's nodes: every service and every caller seen, with its kind.
pub fn nodes(snapshot: &Snapshot, report: &Report) -> Vec<Node> {
    let mut out = BTreeSet::new();
    let kind_of = |name: &str, namespace: &str| {
        snapshot
            .workloads
            .values()
            .find(|w| w.canonical_name() == name && w.name.namespace == namespace)
            .map_or("client", |w| {
                if w.waypoint {
                    "waypoint"
                } else if w.gateway {
                    "gateway"
                } else {
                    "client"
                }
            })
    };
    for s in snapshot.services.values() {
        if let Some(host) = s.hosts.first() {
            out.insert(Node {
                id: host.clone(),
                kind: "service",
                namespace: s.name.namespace.clone(),
            });
        }
    }
    for e in &report.edges {
        if !out.iter().any(|n| n.id == e.destination) {
            out.insert(Node {
                id: e.destination.clone(),
                kind: "service",
                namespace: "unknown".into(),
            });
        }
        // A caller that is a service's workload is drawn as that service.
        if service_of(snapshot, &e.source, &e.source_namespace).is_none() {
            out.insert(Node {
                id: e.source.clone(),
                kind: kind_of(&e.source, &e.source_namespace),
                namespace: e.source_namespace.clone(),
            });
        }
    }
    out.into_iter().collect()
}

/// The service (first hostname) whose workloads have canonical name
/// `name` in `namespace`.
pub fn service_of(snapshot: &Snapshot, name: &str, namespace: &str) -> Option<String> {
    snapshot.services.values().find_map(|s| {
        snapshot
            .endpoints(s)
            .any(|w| w.canonical_name() == name && w.name.namespace == namespace)
            .then(|| s.hosts.first().cloned())
            .flatten()
    })
}

/// A service's page.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Its hostname.
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Its waypoint, if any.
    pub waypoint: Option<String>,
    /// Edges into it.
    pub callers: Vec<weft_telemetry::graph::Edge>,
    /// Edges out of its workloads.
    pub callees: Vec<weft_telemetry::graph::Edge>,
    /// Policies in force and what they decided in the window.
    pub policies: Vec<PolicyView>,
    /// Certificates of its workloads' identities.
    pub certificates: Vec<CertificateView>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// One policy on a service's page.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    /// `namespace/name`.
    pub name: String,
    /// `L4` (node proxies) or `L7` (its waypoint).
    pub layer: &'static str,
    /// ALLOW, DENY, AUDIT, CUSTOM.
    pub action: String,
    /// Requests it allowed in the window (L7 only).
    pub allowed: f64,
    /// Requests it denied in the window (L7 only).
    pub denied: f64,
}

/// One certificate.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    /// The SPIFFE identity.
    pub identity: String,
    /// Seconds until it expires, as its holder last reported.
    pub expires_in_seconds: f64,
}

/// One endpoint.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// Workload name.
    pub workload: String,
    /// Address.
    pub address: String,
    /// Its node.
    pub node: String,
    /// Its locality.
    pub locality: String,
    /// `healthy` (its node proxy reports) or `unreported` (its node is
    /// not scraped, or stale).
    pub health: &'static str,
}

/// The page of service `host`.
pub fn service_view(snapshot: &Snapshot, report: &Report, host: &str) -> Option<ServiceView> {
    let service = snapshot.service_for_host(host)?;
    let workloads: Vec<&weft_core::model::Workload> = snapshot.endpoints(service).collect();
    let names: BTreeSet<&str> = workloads.iter().map(|w| w.canonical_name()).collect();
    let callers = report
        .edges
        .iter()
        .filter(|e| service.hosts.contains(&e.destination))
        .cloned()
        .collect();
    let callees = report
        .edges
        .iter()
        .filter(|e| {
            names.contains(e.source.as_str()) && e.source_namespace == service.name.namespace
        })
        .cloned()
        .collect();
    let decided = |policy: &str, decision: &str| -> f64 {
        report
            .decisions
            .iter()
            .filter(|s| s.label("policy") == policy && s.label("decision") == decision)
            .map(|s| s.value)
            .sum()
    };
    let mut policies: Vec<PolicyView> = snapshot
        .policies
        .values()
        .filter(|p| workloads.iter().any(|w| p.applies_to(w)))
        .map(|p| PolicyView {
            name: p.name.to_string(),
            layer: "L4",
            action: format!("{:?}", p.action).to_uppercase(),
            allowed: 0.0,
            denied: 0.0,
        })
        .collect();
    if let Some(l7) = snapshot.l7.get(&service.name) {
        policies.extend(l7.authz.iter().map(|p| PolicyView {
            name: p.policy.clone(),
            layer: "L7",
            action: format!("{:?}", p.action).to_uppercase(),
            allowed: decided(&p.policy, "allowed"),
            denied: decided(&p.policy, "denied"),
        }));
    }
    let identities: BTreeSet<String> = workloads.iter().map(|w| w.identity.to_string()).collect();
    let mut certificates: BTreeMap<String, f64> = BTreeMap::new();
    for s in report
        .latest
        .iter()
        .filter(|s| s.name == weft_telemetry::names::CERT_EXPIRY_SECONDS)
    {
        let id = s.label("identity");
        if identities.contains(id) {
            let e = certificates.entry(id.to_owned()).or_insert(s.value);
            *e = e.min(s.value);
        }
    }
    let stale_nodes: BTreeSet<&str> = report
        .targets
        .iter()
        .filter(|t| t.stale)
        .map(|t| t.name.as_str())
        .collect();
    let scraped: BTreeSet<&str> = report.targets.iter().map(|t| t.name.as_str()).collect();
    let endpoints = workloads
        .iter()
        .map(|w| {
            let node = w.node.clone().unwrap_or_default();
            EndpointView {
                workload: w.name.to_string(),
                address: match &w.address {
                    WorkloadAddress::Ip(ip) => ip.to_string(),
                    other => format!("{other:?}"),
                },
                locality: w.locality.to_string(),
                health: if !scraped.contains(node.as_str()) || stale_nodes.contains(node.as_str()) {
                    "unreported"
                } else {
                    "healthy"
                },
                node,
            }
        })
        .collect();
    Some(ServiceView {
        service: host.to_owned(),
        namespace: service.name.namespace.clone(),
        waypoint: service.waypoint.as_ref().map(ToString::to_string),
        callers,
        callees,
        policies,
        certificates: certificates
            .into_iter()
            .map(|(identity, expires_in_seconds)| CertificateView {
                identity,
                expires_in_seconds,
            })
            .collect(),
        endpoints,
    })
}

/// The monitoring routes: the dashboard, the graph and service APIs.
pub fn routes(routes: Routes, aggregator: Arc<Aggregator>, live: Arc<LiveConfig>) -> Routes {
    let graph_agg = aggregator.clone();
    let graph_live = live.clone();
    let snapshot = live.snapshot.clone();
    routes
        .get("/", || Reply::typed("text/html; charset=utf-8", INDEX))
        .get("/dashboard.js", || {
            Reply::typed("text/javascript; charset=utf-8", SCRIPT)
        })
        .get("/dashboard.css", || {
            Reply::typed("text/css; charset=utf-8", STYLE)
        })
        .get_async("/api/graph", move |q| {
            let (aggregator, live) = (graph_agg.clone(), graph_live.clone());
            Box::pin(async move {
                let window = match q.get("window").map(parse_window).transpose() {
                    Ok(w) => w.unwrap_or(DEFAULT_WINDOW),
                    Err(e) => return Reply::error(http::StatusCode::BAD_REQUEST, e),
                };
                match aggregator.report(window).await {
                    Ok(report) => {
                        let snapshot = live.snapshot.load();
                        let body = GraphBody {
                            nodes: nodes(&snapshot, &report),
                            links: links(&snapshot, &live.crossings(), &report),
                            report: &report,
                        };
                        Reply::json(serde_json::to_string(&body).unwrap_or_default())
                    }
                    Err(e) => Reply::error(
                        http::StatusCode::BAD_GATEWAY,
                        format!("cannot compute the graph: {e}\n"),
                    ),
                }
            })
        })
        .get_async("/api/service", move |q| {
            let (aggregator, snapshot) = (aggregator.clone(), snapshot.clone());
            Box::pin(async move {
                let Some(name) = q.get("name").map(str::to_owned) else {
                    return Reply::error(
                        http::StatusCode::BAD_REQUEST,
                        "name the service: /api/service?name=<hostname>\n",
                    );
                };
                let window = match q.get("window").map(parse_window).transpose() {
                    Ok(w) => w.unwrap_or(DEFAULT_WINDOW),
                    Err(e) => return Reply::error(http::StatusCode::BAD_REQUEST, e),
                };
                let report = match aggregator.report(window).await {
                    Ok(r) => r,
                    Err(e) => {
                        return Reply::error(
                            http::StatusCode::BAD_GATEWAY,
                            format!("cannot compute the graph: {e}\n"),
                        );
                    }
                };
                match service_view(&snapshot.load(), &report, &name) {
                    Some(view) => Reply::json(serde_json::to_string(&view).unwrap_or_default()),
                    None => Reply::error(
                        http::StatusCode::NOT_FOUND,
                        format!("no service {name:?} in the registry\n"),
                    ),
                }
            })
        })
}
