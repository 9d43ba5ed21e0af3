//! Clusters and routes in the engine's terms, built from the registry and
//! the L7 policies: a cluster for every (service, subset, port) a route
//! sends to, its endpoints balanced from the proxy's locality with the
//! destination's traffic policy, reused from the previous configuration
//! when nothing it was built from changed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use weft_core::l7::{self, LoadBalancer};
use weft_state::{MeshView, NamespacedName, Reach, WorkloadInfo};

use crate::configure::Policies;
use crate::engine::budget::{ConcurrencyBudget, RateBudget};
use crate::engine::lb::{Balancer, Endpoint, OutlierDetection, Policy};
use crate::engine::retry::{RetryOn, RetryPolicy};
use crate::engine::route::{
    Backend, Fault, HeaderChanges, HeaderMatch, Mirror, PathMatch, Redirect, Rewrite, Route,
    RouteMatch, ValueMatch,
};
use crate::engine::{Breaker, Cluster, Config};

/// Builds the clusters and routes of one configuration.
pub(crate) struct Builder<'a> {
    pub(crate) view: &'a MeshView,
    pub(crate) me: &'a WorkloadInfo,
    pub(crate) policies: &'a Policies,
    pub(crate) http2: &'a std::collections::HashSet<String>,
    pub(crate) previous: Option<&'a Config>,
    pub(crate) clusters: HashMap<String, Arc<Cluster>>,
}

impl Builder<'_> {
    /// The cluster for (service, subset, port), built on first use; its key.
    pub(crate) fn cluster(
        &mut self,
        service: &NamespacedName,
        subset: Option<&str>,
        port: u16,
    ) -> String {
        let key = match subset {
            Some(s) => format!("{service}:{port}#{s}"),
            None => format!("{service}:{port}"),
        };
        if self.clusters.contains_key(&key) {
            return key;
        }
        let policy = self.policies.get(service);
        let members = subset.and_then(|s| policy?.subsets.get(s));
        let rank = |w: &WorkloadInfo| {
            policy.and_then(|p| {
                p.traffic
                    .locality
                    .priority
                    .get(&w.name.to_string())
                    .copied()
            })
        };
        let elsewhere = |w: &WorkloadInfo| {
            !self.me.cluster.is_empty() && !w.cluster.is_empty() && w.cluster != self.me.cluster
        };
        let mut endpoints: Vec<Endpoint> = Vec::new();
        // Endpoints of another network, by the gateway they are behind.
        let mut behind: BTreeMap<SocketAddr, Vec<&WorkloadInfo>> = BTreeMap::new();
        for w in self
            .view
            .endpoints_of(service)
            .filter(|w| members.is_none_or(|m| m.contains(&w.name.to_string())))
        {
            let Some(target) = w.target_port(service, port) else {
                continue;
            };
            match w.reached_from(&self.me.network) {
                Reach::Direct => {
                    let mut e = Endpoint::new(SocketAddr::new(w.ip, target), w.locality.clone());
                    e.priority = rank(w);
                    e.elsewhere = elsewhere(w);
                    endpoints.push(e);
                }
                Reach::Gateway(gateway) if self.view.workload_at(gateway.ip()).is_some() => {
                    behind.entry(gateway).or_default().push(w);
                }
                Reach::Gateway(_) | Reach::Unreachable => {}
            }
        }
        // The gateway picks among the endpoints behind it: one endpoint
        // each, as close and as preferred as the best of them.
        for (gateway, members) in behind {
            let closest = members
                .iter()
                .min_by_key(|w| self.me.locality.distance(&w.locality))
                .copied();
            let Some(closest) = closest else { continue };
            let mut e = Endpoint::new(
                super::remote::handle(gateway, service, port),
                closest.locality.clone(),
            );
            e.priority = members.iter().filter_map(|w| rank(w)).min();
            e.elsewhere = members.iter().all(|w| elsewhere(w));
            endpoints.push(e);
        }
        let traffic = policy.map(|p| p.traffic.clone()).unwrap_or_default();
        let http2 = self.http2.contains(&format!("{service}:{port}"));
        let signature = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for e in &endpoints {
                (
                    e.addr,
                    &e.locality.region,
                    &e.locality.zone,
                    &e.locality.subzone,
                    e.priority,
                    e.elsewhere,
                )
                    .hash(&mut h);
            }
            format!("{traffic:?}/{http2}/{:?}", self.me.locality).hash(&mut h);
            h.finish()
        };
        if let Some(kept) = self
            .previous
            .and_then(|p| p.clusters.get(&key))
            .filter(|c| c.signature == signature)
        {
            self.clusters.insert(key.clone(), kept.clone());
            return key;
        }
        let lb_policy = match &traffic.load_balancer {
            LoadBalancer::LeastRequest => Policy::LeastRequest,
            LoadBalancer::RoundRobin => Policy::RoundRobin,
            LoadBalancer::Random => Policy::Random,
            LoadBalancer::ConsistentHash(_) => Policy::Hash,
        };
        let outlier = traffic.outlier.as_ref().map(|o| OutlierDetection {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            base_ejection_time: o.base_ejection_time,
            max_ejection_percent: o.max_ejection_percent,
        });
        let balancer = Balancer::new(endpoints, self.me.locality.clone(), outlier)
            .with_policy(lb_policy)
            .with_locality(traffic.locality.clone());
        let mut cluster = Cluster::with_balancer(&key, balancer);
        cluster.label = service.name.clone();
        cluster.http2 = http2;
        cluster.signature = signature;
        let b = &traffic.retry_budget;
        cluster.rate_budget = Some(RateBudget::new(b.ratio, b.min_per_second, b.window));
        // Istio's retryBudget, else the maxRetries breaker (a fixed cap on
        // retries in flight).
        cluster.concurrency_budget = match (b.concurrent_percent, traffic.max_retries) {
            (Some(p), _) => Some(ConcurrencyBudget::new(p, u64::from(b.min_concurrency))),
            (None, Some(max)) => Some(ConcurrencyBudget::new(0.0, u64::from(max))),
            (None, None) => None,
        };
        if let Some(max) = traffic.max_requests {
            cluster.breaker = Breaker::new(max as usize, traffic.max_pending.unwrap_or(0) as usize);
        }
        if let LoadBalancer::ConsistentHash(on) = &traffic.load_balancer {
            cluster.hash_on = Some(on.clone());
        }
        self.clusters.insert(key.clone(), Arc::new(cluster));
        key
    }

    /// A cluster whose one endpoint is service `service`'s VIP and port
    /// (reached through its waypoint); its key.
    pub(crate) fn via_waypoint(
        &mut self,
        service: &NamespacedName,
        vip: std::net::IpAddr,
        port: u16,
    ) -> String {
        let key = format!("{service}:{port}@waypoint");
        if !self.clusters.contains_key(&key) {
            let addr = SocketAddr::new(vip, port);
            let kept = self
                .previous
                .and_then(|p| p.clusters.get(&key))
                .filter(|c| c.balancer.endpoints().iter().map(|e| e.addr).eq([addr]));
            let cluster = kept.cloned().unwrap_or_else(|| {
                let mut c = Cluster::new(&key, vec![addr]);
                c.label = service.name.clone();
                c.http2 = self.http2.contains(&format!("{service}:{port}"));
                Arc::new(c)
            });
            self.clusters.insert(key.clone(), cluster);
        }
        key
    }

    pub(crate) fn backend(&mut self, d: &l7::Destination, port: u16) -> Backend {
        Backend {
            service: self.cluster(
                &NamespacedName::from_key(&d.service),
                d.subset.as_deref(),
                d.port.unwrap_or(port),
            ),
            weight: d.weight,
        }
    }

    /// The engine route for `r` on service port `port`; `None` (logged)
    /// when a regular expression does not compile.
    pub(crate) fn route(&mut self, r: &l7::HttpRoute, port: u16) -> Option<Route> {
        let regex = |s: &str| match regex::Regex::new(s) {
            Ok(re) => Some(re),
            Err(e) => {
                tracing::warn!(route = %r.name, error = %e, "route skipped: bad regular expression");
                None
            }
        };
        let mut matches = Vec::new();
        for m in &r.matches {
            let path = match &m.path {
                Some(l7::StringMatch::Exact(p)) => Some(PathMatch::Exact(p.clone())),
                Some(l7::StringMatch::Prefix(p)) => Some(PathMatch::StringPrefix(p.clone())),
                Some(l7::StringMatch::SegmentPrefix(p)) => Some(PathMatch::Prefix(p.clone())),
                Some(l7::StringMatch::Regex(p)) => Some(PathMatch::Regex(regex(p)?)),
                None => None,
            };
            let mut headers = Vec::new();
            for (name, v) in &m.headers {
                let value = match v {
                    l7::StringMatch::Exact(x) => ValueMatch::Exact(x.clone()),
                    l7::StringMatch::Prefix(x) | l7::StringMatch::SegmentPrefix(x) => {
                        ValueMatch::Prefix(x.clone())
                    }
                    l7::StringMatch::Regex(x) => ValueMatch::Regex(regex(x)?),
                };
                headers.push(HeaderMatch {
                    name: name.clone(),
                    value,
                });
            }
            let mut query = Vec::new();
            for (name, v) in &m.query {
                let value = match v {
                    l7::StringMatch::Regex(x) => ValueMatch::Regex(regex(x)?),
                    l7::StringMatch::Prefix(x) | l7::StringMatch::SegmentPrefix(x) => {
                        ValueMatch::Prefix(x.clone())
                    }
                    l7::StringMatch::Exact(x) => ValueMatch::Exact(x.clone()),
                };
                query.push((name.clone(), value));
            }
            matches.push(RouteMatch {
                path,
                method: m.method.as_deref().and_then(|x| x.parse().ok()),
                headers,
                query,
            });
        }
        let backends = r
            .destinations
            .iter()
            .map(|d| self.backend(d, port))
            .collect();
        let mirror = r.mirror.as_ref().map(|m| Mirror {
            service: self.backend(&m.destination, port).service,
            percent: m.percent,
        });
        let headers = |h: &l7::Headers| HeaderChanges {
            set: pairs(&h.set),
            add: pairs(&h.add),
            remove: h.remove.clone(),
        };
        Some(Route {
            name: r.name.clone(),
            hosts: r.hosts.clone(),
            matches,
            backends,
            timeout: r.timeout,
            retry: Some(match &r.retries {
                Some(x) => RetryPolicy {
                    attempts: x.attempts,
                    per_try_timeout: x.per_try_timeout,
                    // Validated by the control plane; gRPC names and the
                    // rest parse.
                    retry_on: RetryOn {
                        statuses: x.statuses.clone(),
                        ..RetryOn::parse(&x.retry_on).unwrap_or_default()
                    },
                    ..RetryPolicy::default()
                },
                None => RetryPolicy::default(),
            }),
            fault: r.fault.as_ref().map(|f| Fault {
                delay: f.delay,
                abort: f.abort,
            }),
            redirect: r.redirect.as_ref().map(|x| Redirect {
                scheme: x.scheme.clone(),
                host: x.host.clone(),
                port: x.port,
                path: x.path.clone(),
                status: x.status,
            }),
            rewrite: r.rewrite.as_ref().map(|x| Rewrite {
                prefix: x.prefix.clone(),
                full_path: x.full_path.clone(),
                host: x.host.clone(),
            }),
            request_headers: headers(&r.request_headers),
            response_headers: headers(&r.response_headers),
            mirror,
        })
    }
}

fn pairs(m: &BTreeMap<String, String>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
