//! What the engine serves: the [`Config`] snapshot (routes by target,
//! clusters, policies), swapped whole on every change, and its
//! [`Cluster`]s with their circuit [`Breaker`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use weft_core::l7::HashOn;
use weft_telemetry::labels::Service;

use crate::engine::budget::{ConcurrencyBudget, RateBudget};
use crate::engine::ctx::PeerAddr;
use crate::engine::lb::{Balancer, Endpoint, Locality};
use crate::engine::route::{PassRoute, Route};

/// An upstream service: its endpoints and its retry budgets.
#[derive(Debug)]
pub struct Cluster {
    /// Its key: `namespace/hostname:port`, `#subset` appended for a subset.
    pub name: String,
    /// The service as metrics name it (`destination_service`): its
    /// hostname.
    pub label: String,
    /// Its endpoints: locality, outliers, least request.
    pub balancer: Balancer,
    /// Retries as a share of the request rate.
    pub rate_budget: Option<RateBudget>,
    /// Retries as a share of requests in flight.
    pub concurrency_budget: Option<ConcurrencyBudget>,
    /// Circuit breaker (`DestinationRule` `connectionPool`).
    pub breaker: Breaker,
    /// What consistent hashing hashes (with [`crate::engine::lb::Policy::Hash`]).
    pub hash_on: Option<HashOn>,
    /// Speak HTTP/2 to its endpoints (ports declared `HTTP2` or `GRPC`).
    pub http2: bool,
    /// A hash of what it was built from; equal means reusable.
    pub signature: u64,
    /// `label` as telemetry's service labels, made on first use (requests
    /// share it instead of splitting the hostname each time).
    service: std::sync::OnceLock<Arc<Service>>,
}

impl Cluster {
    /// A cluster of endpoints without locality, outlier detection,
    /// budgets or limits.
    pub fn new(name: impl Into<String>, endpoints: Vec<SocketAddr>) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|a| Endpoint::new(a, Locality::default()))
            .collect();
        Cluster::with_balancer(name, Balancer::new(endpoints, Locality::default(), None))
    }

    /// A cluster balanced by `balancer`.
    pub fn with_balancer(name: impl Into<String>, balancer: Balancer) -> Self {
        let name = name.into();
        Cluster {
            label: name.clone(),
            name,
            balancer,
            rate_budget: None,
            concurrency_budget: None,
            breaker: Breaker::unlimited(),
            hash_on: None,
            http2: false,
            signature: 0,
            service: std::sync::OnceLock::new(),
        }
    }

    /// The service as telemetry labels it, from `label` (which is set
    /// while the cluster is built, before any request sees it).
    pub fn service(&self) -> &Arc<Service> {
        self.service.get_or_init(|| {
            if self.label.is_empty() {
                Service::shared_unknown().clone()
            } else {
                Arc::new(Service::from_host(&self.label, None))
            }
        })
    }
}

/// The consistent-hash key of a request, if the attribute is present.
pub fn hash_key(on: &HashOn, parts: &http::request::Parts) -> Option<u64> {
    match on {
        HashOn::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| crate::engine::lb::hash_key(v.as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| crate::engine::lb::hash_key(v.as_bytes()))
            }),
        HashOn::SourceIp => parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| crate::engine::lb::hash_key(p.0.ip().to_string().as_bytes())),
    }
}

/// Circuit-breaker limits (`DestinationRule.trafficPolicy.connectionPool`):
/// overflow fails at once with 503 and response flag `UO`.
#[derive(Debug)]
pub struct Breaker {
    /// Requests in flight (`http.http2MaxRequests`).
    requests: Option<Arc<tokio::sync::Semaphore>>,
    /// Requests allowed to wait for a slot (`http.http1MaxPendingRequests`).
    pending: Option<Arc<tokio::sync::Semaphore>>,
}

impl Breaker {
    /// No limits.
    pub fn unlimited() -> Self {
        Breaker {
            requests: None,
            pending: None,
        }
    }

    /// At most `max_requests` in flight, and `max_pending` more waiting.
    pub fn new(max_requests: usize, max_pending: usize) -> Self {
        Breaker {
            requests: Some(Arc::new(tokio::sync::Semaphore::new(max_requests))),
            pending: Some(Arc::new(tokio::sync::Semaphore::new(max_pending))),
        }
    }

    /// Requests in flight now, when a limit is set.
    pub fn in_flight(&self, max_requests: usize) -> usize {
        self.requests
            .as_ref()
            .map_or(0, |s| max_requests.saturating_sub(s.available_permits()))
    }

    /// A slot for one request, waiting in the pending queue if there is
    /// room there; `None` when both are full (overflow).
    pub(crate) async fn admit(&self) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        let Some(requests) = &self.requests else {
            return Some(None);
        };
        if let Ok(slot) = requests.clone().try_acquire_owned() {
            return Some(Some(slot));
        }
        let _waiting = self.pending.as_ref()?.clone().try_acquire_owned().ok()?;
        requests.clone().acquire_owned().await.ok().map(Some)
    }
}

/// What the engine serves: an immutable snapshot, swapped whole. A
/// request loads it once and keeps it to its end.
#[derive(Debug, Default)]
pub struct Config {
    /// Routes, in order, for requests that do not name a target (a plain
    /// HTTP front).
    pub routes: Vec<Route>,
    /// Routes by target (`namespace/hostname:port`, the service a waypoint
    /// received the request for).
    pub targets: HashMap<String, Vec<Route>>,
    /// Upstream services by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Rate limits by target (`""`: requests that name no target).
    pub limits: HashMap<String, Arc<crate::policy::ratelimit::RateLimiter>>,
    /// JWT authentication by target (`""`: requests that name no target).
    pub authn: HashMap<String, Arc<crate::policy::jwt::Authenticator>>,
    /// Request-level authorization policies by target.
    pub authz: HashMap<String, Arc<Vec<weft_core::l7::L7Authz>>>,
    /// Endpoints as telemetry names them, by address (the workload a try
    /// went to is `destination_workload` in metrics).
    pub peers: Arc<HashMap<std::net::IpAddr, Arc<weft_telemetry::labels::Peer>>>,
    /// TLS passthrough routes by listener target (gateways).
    pub passthrough: HashMap<String, Vec<PassRoute>>,
    /// Headers weft itself sets ([`crate::engine::sanitize::INTERNAL_HEADERS`] and
    /// the ones this configuration names): removed from every request
    /// before any phase, unless a trusted proxy sent it.
    pub internal_headers: Vec<http::HeaderName>,
    /// Identities of weft's L7 proxies (ingress gateways) whose requests
    /// keep the internal headers they set.
    pub trusted_proxies: std::collections::HashSet<weft_core::Identity>,
    /// How request paths are normalized before routing and policy.
    pub path_normalization: crate::engine::path::PathNormalization,
    /// Proxy-Wasm plugins by target, in running order.
    pub plugins: HashMap<String, Arc<crate::extension::Chain>>,
    /// External processors by target, in order.
    pub processors: HashMap<String, Arc<Vec<Arc<crate::extension::ext_proc::Processor>>>>,
}
