//! The HTTP engine: one request goes through named phases, in this order,
//! with one [`Ctx`] carrying what they learn:
//!
//! 1. `route` — choose the route ([`crate::route::select`]);
//! 2. `authenticate` — verify the request's JWT, if any ([`crate::jwt`]; 401),
//!    then `authorize` ([`crate::authz`]; 403);
//! 3. `rate limit` — the target's [`crate::ratelimit`] rules (429, `RL`);
//! 4. `fault` — injected delays and aborts (flags `DI`, `FI`);
//! 5. `redirect` — answered here when the route redirects;
//!    then the backend is chosen by weight, and its circuit breaker admits
//!    the request or fails it at once (`UO`);
//! 6. `rewrite` — path and host rewrites, request header changes;
//! 7. `buffer` — keep the request body for replay, up to a limit (beyond
//!    it the request is sent once, never retried or mirrored);
//! 8. `mirror` — a copy to the mirror service, answer ignored;
//! 9. `upstream` — tries within the overall timeout: each try bounded by
//!    the per-try timeout; a retryable outcome is retried after backoff (or
//!    `Retry-After`) only while the retry budgets allow;
//! 10. `response` — response header changes (and `x-ratelimit-*`);
//! 11. `log` — metrics and the access-log line, from the context.
//!
//! Errors become responses in one place ([`L7Error::response`]). The engine
//! knows nothing about listeners: a front (plain HTTP, HBONE) hands it
//! requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;

use crate::budget::{ConcurrencyBudget, RateBudget};
use crate::lb::{Balancer, Endpoint, Locality};
use crate::local_reply::status_response;
use crate::metrics::Metrics;
use crate::retry::{Outcome, RetryPolicy, retry_after};
use crate::route::{Redirect, Rewrite, Route, pick_backend, select};
use crate::upstream::Upstream;
use weft_core::l7::{AuthzAction, HashOn};

/// Request bodies up to this size are kept for replay (retries).
pub const DEFAULT_MAX_REPLAY: usize = 64 * 1024;
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

pub use crate::upstream::Body;

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
    /// What consistent hashing hashes (with [`crate::lb::Policy::Hash`]).
    pub hash_on: Option<HashOn>,
    /// Speak HTTP/2 to its endpoints (ports declared `HTTP2` or `GRPC`).
    pub http2: bool,
    /// A hash of what it was built from; equal means reusable.
    pub signature: u64,
}

/// The downstream peer's address, put in request extensions by the front.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The consistent-hash key of a request, if the attribute is present.
pub fn hash_key(on: &HashOn, parts: &http::request::Parts) -> Option<u64> {
    match on {
        HashOn::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| crate::lb::hash_key(v.as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| crate::lb::hash_key(v.as_bytes()))
            }),
        HashOn::SourceIp => parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| crate::lb::hash_key(p.0.ip().to_string().as_bytes())),
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
    async fn admit(&self) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
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
        }
    }
}

/// What the engine serves: an immutable snapshot, swapped whole.
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
    pub limits: HashMap<String, Arc<crate::ratelimit::RateLimiter>>,
    /// JWT authentication by target (`""`: requests that name no target).
    pub authn: HashMap<String, Arc<crate::jwt::Authenticator>>,
    /// Request-level authorization policies by target.
    pub authz: HashMap<String, Arc<Vec<weft_core::l7::L7Authz>>>,
    /// Endpoints as telemetry names them, by address (the workload a try
    /// went to is `destination_workload` in metrics).
    pub peers: Arc<HashMap<std::net::IpAddr, weft_telemetry::labels::Peer>>,
    /// TLS passthrough routes by listener target (gateways).
    pub passthrough: HashMap<String, Vec<crate::passthrough::PassRoute>>,
    /// Headers weft itself sets ([`crate::sanitize::INTERNAL_HEADERS`] and
    /// the ones this configuration names): removed from every request
    /// before any phase, unless a trusted proxy sent it.
    pub internal_headers: Vec<http::HeaderName>,
    /// Identities of weft's L7 proxies (ingress gateways) whose requests
    /// keep the internal headers they set.
    pub trusted_proxies: std::collections::HashSet<weft_core::Identity>,
}

/// Why a request failed inside the proxy; each maps to one status and an
/// Envoy response flag.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// No route matched.
    #[error("no route matches {0}")]
    NoRoute(String),
    /// The route's backend has no endpoint.
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The overall or per-try timeout fired and no try answered.
    #[error("upstream request timeout")]
    Timeout,
    /// The upstream could not be reached.
    #[error("upstream connect error: {0}")]
    Connect(String),
    /// The upstream reset the request.
    #[error("upstream reset: {0}")]
    Reset(String),
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    Downstream(String),
    /// The circuit breaker's limits were reached.
    #[error("upstream overflow: {0} has too many requests in flight")]
    Overflow(String),
    /// The request itself is malformed (hosts that disagree, a bad host).
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl L7Error {
    /// The Envoy response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            L7Error::NoRoute(_) => "NR",
            L7Error::NoHealthyUpstream(_) => "UH",
            L7Error::Timeout => "UT",
            L7Error::Connect(_) => "UF",
            L7Error::Reset(_) => "UR",
            L7Error::Downstream(_) => "DC",
            L7Error::Overflow(_) => "UO",
            L7Error::Malformed(_) => "DPE",
        }
    }

    /// The one place errors become responses.
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            L7Error::NoRoute(_) => StatusCode::NOT_FOUND,
            L7Error::NoHealthyUpstream(_)
            | L7Error::Connect(_)
            | L7Error::Reset(_)
            | L7Error::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            L7Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
            L7Error::Downstream(_) | L7Error::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        status_response(status.as_u16(), &self.to_string())
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// What the phases learn about one request.
#[derive(Debug)]
pub struct Ctx {
    /// When it arrived.
    pub started: Instant,
    /// The route chosen.
    pub route: String,
    /// The service chosen.
    pub service: String,
    /// Tries made.
    pub tries: u32,
    /// Envoy response flags (`-` when none).
    pub flags: &'static str,
    /// The caller's proven identity (HBONE), if any.
    pub source: Option<weft_core::Identity>,
    /// `grpc` or `http`.
    pub protocol: &'static str,
    /// Who reports this request's metrics.
    pub reporter: weft_telemetry::labels::Reporter,
    /// The caller as telemetry names it.
    pub peer: weft_telemetry::labels::Peer,
    /// The endpoint the last try went to, as telemetry names it.
    pub destination: Option<weft_telemetry::labels::Peer>,
    /// The access-log line being filled in.
    pub access: crate::access::AccessEntry,
    /// This request's trace, when tracing is on.
    pub trace: Option<RequestTrace>,
}

/// A request's place in its trace: the server span this proxy opens for
/// it (whose id is the parent of every try's client span).
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The tracer it records into.
    pub tracer: Arc<weft_telemetry::trace::Tracer>,
    /// The server span's context (its id; the trace and sampling decision).
    pub context: weft_telemetry::trace::Context,
    /// The caller's span, if the request carried a context.
    pub parent: Option<[u8; 8]>,
    /// When the server span started.
    pub start: std::time::SystemTime,
}

impl RequestTrace {
    /// A span of this trace, ending now.
    fn span(
        &self,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: String,
        kind: weft_telemetry::trace::Kind,
        start: std::time::SystemTime,
    ) -> weft_telemetry::trace::Span {
        weft_telemetry::trace::Span {
            trace_id: self.context.trace_id,
            span_id,
            parent,
            name,
            kind,
            start,
            end: std::time::SystemTime::now(),
            attributes: Vec::new(),
            error: false,
            tracestate: self.context.tracestate.clone(),
        }
    }

    /// Records `span` when the trace is sampled.
    fn record(&self, span: weft_telemetry::trace::Span) {
        if self.context.sampled {
            self.tracer.record(span);
        }
    }
}

/// The caller's identity, put in request extensions by an mTLS front.
#[derive(Debug, Clone)]
pub struct SourceIdentity(pub weft_core::Identity);

/// The caller as its node described it (`baggage` on the tunnel), put in
/// request extensions by the waypoint's HBONE front.
#[derive(Debug, Clone)]
pub struct SourcePeer(pub weft_telemetry::labels::Peer);

/// A gateway client's certificate principal (its first URI SAN without
/// `spiffe://`, else its first DNS SAN, else its subject), put in request
/// extensions by a TLS front that checked the certificate.
#[derive(Debug, Clone)]
pub struct ClientPrincipal(pub String);

/// Marks a request that arrived over TLS (a gateway's HTTPS listener).
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// A body that was partly read: the part read, then the rest.
struct Prefixed {
    head: Option<Bytes>,
    rest: Incoming,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// The request body, for replay or not.
enum Payload {
    /// Buffered: can be sent again.
    Replayable(Bytes),
    /// Too large to keep: sent once.
    Once(Option<Body>),
}

/// The L7 engine.
pub struct Engine {
    config: ArcSwap<Config>,
    tracer: ArcSwap<weft_telemetry::trace::Tracer>,
    client: Upstream,
    authorizers: crate::extauthz::Authorizers,
    reporter: weft_telemetry::labels::Reporter,
    me: Option<weft_telemetry::labels::Peer>,
    metrics: Metrics,
    max_replay: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine serving `config`, counting into `metrics`.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Engine {
            config: ArcSwap::from_pointee(config),
            tracer: ArcSwap::from_pointee(weft_telemetry::trace::Tracer::disabled()),
            client: Upstream::plain(connector),
            authorizers: crate::extauthz::Authorizers::default(),
            reporter: weft_telemetry::labels::Reporter::Waypoint,
            me: None,
            metrics,
            max_replay: DEFAULT_MAX_REPLAY,
        }
    }

    /// An engine that reaches endpoints over HBONE (a waypoint).
    pub fn with_hbone(
        config: Config,
        metrics: Metrics,
        connector: crate::hbone::HboneConnector,
    ) -> Self {
        Engine {
            config: ArcSwap::from_pointee(config),
            tracer: ArcSwap::from_pointee(weft_telemetry::trace::Tracer::disabled()),
            client: Upstream::hbone(connector),
            authorizers: crate::extauthz::Authorizers::default(),
            reporter: weft_telemetry::labels::Reporter::Waypoint,
            me: None,
            metrics,
            max_replay: DEFAULT_MAX_REPLAY,
        }
    }

    /// Reports metrics as the caller's side (an ingress gateway, which is
    /// the source of the calls it forwards), naming itself `me`.
    pub fn reporting_as_source(mut self, me: weft_telemetry::labels::Peer) -> Self {
        self.reporter = weft_telemetry::labels::Reporter::Source;
        self.me = Some(me);
        self
    }

    /// Records spans into `tracer` from now on.
    pub fn set_tracer(&self, tracer: weft_telemetry::trace::Tracer) {
        self.tracer.store(Arc::new(tracer));
    }

    /// The tracer in use.
    pub fn tracer(&self) -> Arc<weft_telemetry::trace::Tracer> {
        self.tracer.load_full()
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    pub fn update(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Serves one request through every phase, with the routes for
    /// requests that name no target.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        self.handle_for(None, request).await
    }

    /// Serves one request received for `target` (a waypoint's service and
    /// port, `namespace/hostname:port`).
    pub async fn handle_for(
        &self,
        target: Option<&str>,
        request: Request<Incoming>,
    ) -> Response<Body> {
        // The configuration this request sees from start to end.
        let config = self.config.load_full();
        // Phase 0: normalize — one host, no hop-by-hop headers, none of
        // weft's own headers unless a trusted proxy set them.
        let (mut parts, body) = request.into_parts();
        let https = parts.extensions.get::<Tls>().is_some();
        let settled = crate::sanitize::settle_host(&mut parts, https);
        crate::sanitize::strip_hop_by_hop(&mut parts.headers);
        let trusted = parts
            .extensions
            .get::<SourceIdentity>()
            .is_some_and(|s| config.trusted_proxies.contains(&s.0));
        if !trusted {
            crate::sanitize::strip_internal(&mut parts.headers, &config.internal_headers);
        }
        let request = Request::from_parts(parts, body);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let grpc = header("content-type").is_some_and(|c| c.starts_with("application/grpc"));
        let peer = match (&self.me, request.extensions().get::<SourcePeer>()) {
            (Some(me), _) => me.clone(),
            (None, Some(p)) => p.0.clone(),
            (None, None) => request
                .extensions()
                .get::<SourceIdentity>()
                .map_or_else(weft_telemetry::labels::Peer::unknown, |s| {
                    weft_telemetry::labels::Peer::from_principal(&s.0.to_string())
                }),
        };
        let tracer = self.tracer.load_full();
        let trace = tracer.enabled().then(|| {
            use weft_telemetry::trace;
            let parent = trace::extract(request.headers());
            RequestTrace {
                context: trace::Context {
                    trace_id: parent.as_ref().map_or_else(trace::trace_id, |p| p.trace_id),
                    span_id: trace::span_id(),
                    sampled: tracer.sample(parent.as_ref()),
                    tracestate: parent.as_ref().and_then(|p| p.tracestate.clone()),
                    format: parent.as_ref().map_or(trace::Format::W3c, |p| p.format),
                },
                parent: parent.map(|p| p.span_id),
                start: std::time::SystemTime::now(),
                tracer: tracer.clone(),
            }
        });
        let mut ctx = Ctx {
            destination: None,
            trace,
            reporter: self.reporter,
            peer,
            started: Instant::now(),
            route: String::new(),
            service: String::new(),
            tries: 0,
            flags: "-",
            source: request
                .extensions()
                .get::<SourceIdentity>()
                .map(|s| s.0.clone()),
            protocol: if grpc { "grpc" } else { "http" },
            access: crate::access::AccessEntry {
                start: Some(std::time::SystemTime::now()),
                method: request.method().to_string(),
                path: request
                    .uri()
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str)
                    .to_owned(),
                protocol: if request.version() == http::Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                forwarded_for: header("x-forwarded-for"),
                user_agent: header("user-agent"),
                request_id: header("x-request-id"),
                authority: header("host")
                    .or_else(|| request.uri().authority().map(ToString::to_string)),
                downstream_remote: request
                    .extensions()
                    .get::<PeerAddr>()
                    .map(|p| p.0.to_string()),
                ..Default::default()
            },
        };
        let outcome = match settled {
            Ok(()) => self.phases(&mut ctx, &config, target, request).await,
            Err(why) => Err(L7Error::Malformed(why)),
        };
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                ctx.flags = e.flag();
                ctx.access.upstream_failure = Some(e.to_string());
                e.response()
            }
        };
        // Last phase: log.
        ctx.access.code = response.status().as_u16();
        ctx.access.flags = ctx.flags;
        ctx.access.duration = ctx.started.elapsed();
        ctx.access.bytes_sent = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        ctx.access.route = Some(ctx.route.clone()).filter(|r| !r.is_empty());
        self.metrics.request(&ctx, response.status());
        if let Some(t) = &ctx.trace {
            use weft_telemetry::trace::{Kind, Value};
            let status = response.status().as_u16();
            let mut attributes = vec![
                ("http.request.method", Value::Str(ctx.access.method.clone())),
                (
                    "url.path",
                    Value::Str(ctx.access.path.split('?').next().unwrap_or("/").to_owned()),
                ),
                ("http.response.status_code", Value::Int(i64::from(status))),
                (
                    "network.protocol.version",
                    Value::Str(ctx.access.protocol.trim_start_matches("HTTP/").to_owned()),
                ),
                ("weft.response_flags", Value::Str(ctx.flags.to_owned())),
            ];
            if let Some(host) = &ctx.access.authority {
                attributes.push(("server.address", Value::Str(host.clone())));
            }
            if let Some(ua) = &ctx.access.user_agent {
                attributes.push(("user_agent.original", Value::Str(ua.clone())));
            }
            if let Some(peer) = &ctx.access.downstream_remote {
                attributes.push(("client.address", Value::Str(peer.clone())));
            }
            if !ctx.route.is_empty() {
                attributes.push(("http.route", Value::Str(ctx.route.clone())));
            }
            if !ctx.service.is_empty() {
                attributes.push(("weft.destination_service", Value::Str(ctx.service.clone())));
            }
            let name = if ctx.route.is_empty() {
                ctx.access.method.clone()
            } else {
                format!("{} {}", ctx.access.method, ctx.route)
            };
            let mut span = t.span(t.context.span_id, t.parent, name, Kind::Server, t.start);
            span.attributes = attributes;
            span.error = status >= 500;
            t.record(span);
        }
        if grpc {
            crate::local_reply::for_grpc(response)
        } else {
            response
        }
    }

    async fn phases(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        target: Option<&str>,
        mut request: Request<Incoming>,
    ) -> Result<Response<Body>, L7Error> {
        // Phase 1: route.
        let routes = match target {
            Some(t) => config
                .targets
                .get(t)
                .ok_or_else(|| L7Error::NoRoute(format!("{t} (not a service of this waypoint)")))?,
            None => &config.routes,
        };
        // A request no route takes is refused as such only after
        // authentication and authorization (as Envoy's filters run before
        // its router): a caller policy refuses learns nothing of the routes.
        let route = select(routes, request.method(), request.uri(), request.headers());
        if let Some(route) = route {
            ctx.route = route.name.clone();
            // Requests refused before a backend is chosen (authentication,
            // authorization, rate limits) count against the route's service.
            if let Some(cluster) = route
                .backends
                .first()
                .and_then(|b| config.clusters.get(&b.service))
            {
                ctx.service = cluster.label.clone();
            }
        }
        // Phase 2: authentication (a JWT, when the request carries one).
        let mut claims = None;
        if let Some(authn) = config.authn.get(target.unwrap_or("")) {
            let query = request.uri().query().map(str::to_owned);
            match authn
                .authenticate(request.headers_mut(), query.as_deref())
                .await
            {
                Ok(Some(who)) => {
                    ctx.access.request_principal = Some(who.principal);
                    claims = Some(who.claims);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(route = %ctx.route, error = %e, "request refused: invalid token");
                    return Ok(status_response(401, &e.to_string()));
                }
            }
        }
        // Phase 2b: authorization (CUSTOM providers, then DENY, ALLOW).
        if let Some(policies) = config.authz.get(target.unwrap_or(""))
            && let Some(refused) = self
                .authorize(ctx, policies, target, &mut request, claims.as_ref())
                .await
        {
            return Ok(refused);
        }
        let route = route.ok_or_else(|| L7Error::NoRoute(request.uri().path().to_owned()))?;
        // Phase 3: rate limits.
        let mut limit_headers = None;
        if let Some(limiter) = config.limits.get(target.unwrap_or("")) {
            let principal = ctx.source.as_ref().map(ToString::to_string);
            let attributes = crate::ratelimit::Attributes {
                principal: principal.as_deref(),
                headers: Some(request.headers()),
                claims: claims.as_ref(),
                path: request.uri().path(),
                method: request.method().as_str(),
            };
            if let Some(decision) = limiter.check(&attributes).await {
                self.metrics.rate_limit(&limiter.policy, &decision);
                if let Some(why) = &decision.store_error {
                    tracing::warn!(policy = %limiter.policy, rule = %decision.rule, allowed = decision.allowed, "rate limit store failed ({why}); the failure mode decided");
                }
                if !decision.allowed {
                    ctx.flags = "RL";
                    let mut response = status_response(429, "rate limited");
                    rate_limit_headers(response.headers_mut(), &decision, true);
                    return Ok(response);
                }
                limit_headers = Some(decision);
            }
        }
        // Phase 4: fault injection.
        if let Some(fault) = &route.fault {
            if let Some((percent, delay)) = fault.delay
                && fastrand::f64() * 100.0 < percent
            {
                tokio::time::sleep(delay).await;
                ctx.flags = "DI";
            }
            if let Some((percent, status)) = fault.abort
                && fastrand::f64() * 100.0 < percent
            {
                ctx.flags = "FI";
                return Ok(status_response(status, "fault filter abort"));
            }
        }
        // Phase 5: redirect, answered here.
        if let Some(redirect) = &route.redirect {
            return Ok(redirect_response(redirect, &request));
        }
        let backend = pick_backend(route, fastrand::f64())
            .ok_or_else(|| L7Error::NoHealthyUpstream(route.name.clone()))?;
        let cluster = config
            .clusters
            .get(&backend.service)
            .cloned()
            .ok_or_else(|| L7Error::NoHealthyUpstream(backend.service.clone()))?;
        ctx.service = cluster.label.clone();
        // The circuit breaker admits the request or fails it at once.
        let _slot = cluster
            .breaker
            .admit()
            .await
            .ok_or_else(|| L7Error::Overflow(cluster.name.clone()))?;
        // Phase 6: rewrite and request headers.
        let (mut parts, body) = request.into_parts();
        if let Some(rewrite) = &route.rewrite {
            rewrite_request(rewrite, &mut parts)?;
        }
        route.request_headers.apply(&mut parts.headers);
        // Phase 7: buffer for replay.
        let payload = self.buffer(body).await?;
        if let Payload::Replayable(bytes) = &payload {
            ctx.access.bytes_received = bytes.len() as u64;
        }
        // Phase 8: mirror.
        if let (Some(mirror), Payload::Replayable(bytes)) = (&route.mirror, &payload)
            && fastrand::f64() * 100.0 < mirror.percent
            && let Some(target) = config.clusters.get(&mirror.service)
        {
            self.mirror(target, &parts, bytes.clone());
        }
        // Phase 9: upstream, within the overall timeout.
        let tries = self.upstream(ctx, config, route, &cluster, &parts, payload);
        let mut response = match route.timeout {
            Some(limit) => tokio::time::timeout(limit, tries)
                .await
                .unwrap_or(Err(L7Error::Timeout)),
            None => tries.await,
        }?;
        // Phase 10: response headers.
        crate::sanitize::strip_hop_by_hop(response.headers_mut());
        route.response_headers.apply(response.headers_mut());
        if let Some(d) = &limit_headers {
            rate_limit_headers(response.headers_mut(), d, false);
        }
        Ok(response)
    }

    /// Authorization: each matching CUSTOM policy's provider is asked
    /// (its denial answers the client; its changes to the request apply
    /// once every provider allowed), then DENY and ALLOW policies decide.
    /// `Some` is the refusal to send.
    async fn authorize(
        &self,
        ctx: &mut Ctx,
        policies: &[weft_core::l7::L7Authz],
        target: Option<&str>,
        request: &mut Request<Incoming>,
        claims: Option<&HashMap<String, String>>,
    ) -> Option<Response<Body>> {
        let principal = match (&ctx.source, request.extensions().get::<ClientPrincipal>()) {
            (Some(s), _) => {
                let s = s.to_string();
                Some(s.strip_prefix("spiffe://").unwrap_or(&s).to_owned())
            }
            (None, Some(c)) => Some(c.0.clone()),
            (None, None) => None,
        };
        let namespace = ctx.source.as_ref().map(|s| s.namespace().to_owned());
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_owned())
            .unwrap_or_default();
        let port = target
            .and_then(|t| t.rsplit(':').next()?.parse().ok())
            .unwrap_or(0);
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let attributes = crate::authz::Request {
            principal: principal.as_deref(),
            namespace: namespace.as_deref(),
            source_ip: peer.map(|p| p.ip()),
            request_principal: ctx.access.request_principal.as_deref(),
            claims,
            host: &host,
            port,
            method: request.method().as_str(),
            path: request.uri().path(),
            headers: Some(request.headers()),
        };
        let mut changes = Vec::new();
        for policy in crate::authz::custom(policies, &attributes) {
            let Some(provider) = &policy.provider else {
                continue;
            };
            let input = crate::extauthz::CheckInput {
                method: attributes.method,
                path: request
                    .uri()
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str),
                host: &host,
                scheme: if request.extensions().get::<Tls>().is_some() {
                    "https"
                } else {
                    "http"
                },
                protocol: ctx.access.protocol,
                headers: request.headers(),
                principal: principal.as_deref(),
                source: peer,
            };
            let asked =
                tokio::time::timeout(provider.timeout, self.authorizers.check(provider, &input))
                    .await;
            let verdict = match asked {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => self.provider_failed(policy, provider, &e.to_string()),
                Err(_) => self.provider_failed(
                    policy,
                    provider,
                    &format!("no answer within {:?}", provider.timeout),
                ),
            };
            match verdict {
                crate::extauthz::Verdict::Allow(allowed) => {
                    self.metrics.authz(Some(&policy.policy), true);
                    changes.push(allowed);
                }
                crate::extauthz::Verdict::Deny(denied) => {
                    self.metrics.authz(Some(&policy.policy), false);
                    tracing::info!(
                        policy = %policy.policy,
                        provider = %provider.name,
                        status = denied.status,
                        method = %attributes.method,
                        path = %attributes.path,
                        "request denied by external authorization"
                    );
                    ctx.flags = "UAEX";
                    let mut response = status_response(denied.status, denied.body.trim_end());
                    for (name, value) in denied.headers {
                        response.headers_mut().insert(name, value);
                    }
                    return Some(response);
                }
            }
        }
        let decision = crate::authz::decide(policies, &attributes);
        for shadow in &decision.shadow {
            tracing::info!(policy = %shadow, path = %attributes.path, "authorization policy matched (not enforced)");
        }
        let enforced = policies
            .iter()
            .any(|p| matches!(p.action, AuthzAction::Allow | AuthzAction::Deny) && !p.dry_run);
        if enforced {
            self.metrics
                .authz(decision.policy.as_deref(), decision.allowed);
        }
        if !decision.allowed {
            tracing::info!(
                policy = decision.policy.as_deref().unwrap_or("(no ALLOW policy matched)"),
                rule = ?decision.rule,
                method = %attributes.method,
                path = %attributes.path,
                "request denied: RBAC: access denied"
            );
            ctx.flags = "RBAC";
            return Some(status_response(403, "RBAC: access denied"));
        }
        for change in changes {
            change.apply(request.headers_mut());
        }
        None
    }

    /// A provider could not be asked: its failure mode decides.
    fn provider_failed(
        &self,
        policy: &weft_core::l7::L7Authz,
        provider: &weft_core::l7::AuthzProvider,
        why: &str,
    ) -> crate::extauthz::Verdict {
        self.metrics.authz_error(&provider.name, provider.fail_open);
        tracing::warn!(
            policy = %policy.policy,
            provider = %provider.name,
            error = %why,
            fail_open = provider.fail_open,
            "external authorization failed; the provider's failure mode decides"
        );
        if provider.fail_open {
            crate::extauthz::Verdict::Allow(crate::extauthz::Allowed::default())
        } else {
            crate::extauthz::Verdict::Deny(crate::extauthz::Denied {
                status: provider.status_on_error,
                headers: Vec::new(),
                body: "external authorization failed".into(),
            })
        }
    }

    /// Sends a copy to `target`; its answer is dropped.
    fn mirror(&self, target: &Arc<Cluster>, parts: &http::request::Parts, body: Bytes) {
        let Some(index) = target
            .balancer
            .pick(fastrand::usize(..), fastrand::usize(..), None)
        else {
            return;
        };
        let Ok(mut copy) =
            upstream_request(parts, target.balancer.endpoints()[index].addr, full(body))
        else {
            return;
        };
        // Envoy marks shadow traffic by suffixing the host.
        if let Some(host) = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow"))
        {
            copy.headers_mut().insert(http::header::HOST, v);
        }
        let client = self.client.clone();
        let (name, http2) = (target.name.clone(), target.http2);
        tokio::spawn(async move {
            if let Err(e) = client.request(copy, http2).await {
                tracing::debug!(service = %name, error = %e, "mirrored request failed");
            }
        });
    }

    /// Reads the body up to the replay limit. A body known to be larger,
    /// or found to be larger while reading, is sent once: what was read,
    /// then the rest, as it arrives.
    async fn buffer(&self, mut body: Incoming) -> Result<Payload, L7Error> {
        use http_body::Body as _;
        if body.size_hint().lower() > self.max_replay as u64 {
            return Ok(Payload::Once(Some(body.boxed())));
        }
        let mut kept = bytes::BytesMut::new();
        loop {
            match body.frame().await {
                None => return Ok(Payload::Replayable(kept.freeze())),
                Some(Err(e)) => return Err(L7Error::Downstream(e.to_string())),
                Some(Ok(frame)) => {
                    // Request trailers are rare; they are not forwarded.
                    if let Ok(data) = frame.into_data() {
                        kept.extend_from_slice(&data);
                    }
                    if kept.len() > self.max_replay {
                        let rest = Prefixed {
                            head: Some(kept.freeze()),
                            rest: body,
                        };
                        return Ok(Payload::Once(Some(rest.boxed())));
                    }
                }
            }
        }
    }

    async fn upstream(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        route: &Route,
        cluster: &Cluster,
        parts: &http::request::Parts,
        mut payload: Payload,
    ) -> Result<Response<Body>, L7Error> {
        let none = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        };
        let policy = route.retry.as_ref().unwrap_or(&none);
        if let Some(b) = &cluster.rate_budget {
            b.deposit();
        }
        let _active = cluster.concurrency_budget.as_ref().map(|b| b.request());
        let mut _retry_slot = None;
        let mut retries = 0;
        let key = cluster.hash_on.as_ref().and_then(|on| hash_key(on, parts));
        loop {
            let index = cluster
                .balancer
                .pick(fastrand::usize(..), fastrand::usize(..), key)
                .ok_or_else(|| L7Error::NoHealthyUpstream(cluster.name.clone()))?;
            let endpoint = cluster.balancer.endpoints()[index].addr;
            ctx.access.upstream_host = Some(endpoint.to_string());
            ctx.destination = config.peers.get(&endpoint.ip()).cloned();
            ctx.access.upstream_cluster = Some(cluster.name.clone());
            let active = cluster.balancer.start(index);
            let body = match &mut payload {
                Payload::Replayable(bytes) => full(bytes.clone()),
                Payload::Once(body) => body.take().unwrap_or_else(|| full(Bytes::new())),
            };
            let mut request = upstream_request(parts, endpoint, body)?;
            // Each try is a client span, child of this proxy's server span.
            let try_span = ctx.trace.as_ref().map(|t| {
                let context = weft_telemetry::trace::Context {
                    span_id: weft_telemetry::trace::span_id(),
                    ..t.context.clone()
                };
                weft_telemetry::trace::inject(request.headers_mut(), &context);
                (context.span_id, std::time::SystemTime::now())
            });
            ctx.tries += 1;
            let sent = self.client.request(request, cluster.http2);
            let result = match policy.per_try_timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            let (outcome, result) = match result {
                Err(()) => {
                    self.metrics.try_timeout(&cluster.name);
                    (Outcome::Timeout, Err(L7Error::Timeout))
                }
                Ok(Ok(response)) => {
                    let outcome = Outcome::Response {
                        status: response.status().as_u16(),
                        grpc_status: response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok()?.parse().ok()),
                    };
                    (outcome, Ok(response.map(BodyExt::boxed)))
                }
                Ok(Err(e)) if e.is_connect() => (
                    Outcome::ConnectFailure,
                    Err(L7Error::Connect(format!("{endpoint}: {e}"))),
                ),
                Ok(Err(e)) => (
                    Outcome::Reset,
                    Err(L7Error::Reset(format!("{endpoint}: {e}"))),
                ),
            };
            drop(active);
            if let (Some(t), Some((span_id, start))) = (&ctx.trace, try_span) {
                use weft_telemetry::trace::{Kind, Value};
                let mut attributes = vec![
                    ("http.request.method", Value::Str(parts.method.to_string())),
                    ("server.address", Value::Str(endpoint.ip().to_string())),
                    ("server.port", Value::Int(i64::from(endpoint.port()))),
                    ("weft.upstream_cluster", Value::Str(cluster.name.clone())),
                ];
                if retries > 0 {
                    attributes.push(("http.request.resend_count", Value::Int(i64::from(retries))));
                }
                let failed = match outcome {
                    Outcome::Response { status, .. } => {
                        attributes
                            .push(("http.response.status_code", Value::Int(i64::from(status))));
                        status >= 500
                    }
                    other => {
                        attributes.push(("error.type", Value::Str(format!("{other:?}"))));
                        true
                    }
                };
                let mut span = t.span(
                    span_id,
                    Some(t.context.span_id),
                    parts.method.to_string(),
                    Kind::Client,
                    start,
                );
                span.attributes = attributes;
                span.error = failed;
                t.record(span);
            }
            cluster.balancer.report(index, outcome);
            let wanted = retries < policy.attempts
                && matches!(payload, Payload::Replayable(_))
                && policy.retry_on.matches(outcome);
            if !wanted {
                return result;
            }
            let rate_ok = cluster
                .rate_budget
                .as_ref()
                .is_none_or(|b| b.try_withdraw());
            let slot = match (&cluster.concurrency_budget, rate_ok) {
                (_, false) => None,
                (Some(b), true) => b.try_retry().map(Some),
                (None, true) => Some(None),
            };
            let Some(slot) = slot else {
                self.metrics.budget_exhausted(&cluster.name);
                ctx.flags = "URX";
                return result;
            };
            _retry_slot = slot;
            let wait = match &result {
                Ok(r) => retry_after(r.headers(), MAX_RETRY_AFTER),
                Err(_) => None,
            }
            .unwrap_or_else(|| policy.backoff(retries, fastrand::f64()));
            drop(result);
            self.metrics.retry(&cluster.name);
            retries += 1;
            tokio::time::sleep(wait).await;
        }
    }
}

/// `x-ratelimit-limit/remaining/reset`, and `retry-after` on a refusal.
fn rate_limit_headers(
    headers: &mut http::HeaderMap,
    d: &crate::ratelimit::Decision,
    refused: bool,
) {
    let secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    for (name, value) in [
        ("x-ratelimit-limit", d.limit),
        ("x-ratelimit-remaining", d.remaining),
        ("x-ratelimit-reset", secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    if refused {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
}

/// The redirect for `request`: scheme, host, port and path replaced as
/// configured, the query kept.
fn redirect_response(r: &Redirect, request: &Request<Incoming>) -> Response<Body> {
    let host_header = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("localhost");
    let (req_host, req_port) = match host_header.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (host_header, None),
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.host, req_port) {
        (Some(p), _, _) => format!(":{p}"),
        (None, None, Some(p)) => format!(":{p}"),
        _ => String::new(),
    };
    let path = r.path.as_deref().unwrap_or(request.uri().path());
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut response = status_response(r.status, "redirect");
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{port}{path}{query}")) {
        response.headers_mut().insert(http::header::LOCATION, v);
    }
    crate::local_reply::not_local(response)
}

/// Applies a rewrite to the request's path and host.
fn rewrite_request(r: &Rewrite, parts: &mut http::request::Parts) -> Result<(), L7Error> {
    let path = r.path(parts.uri.path());
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = format!("{path}{query}")
        .parse()
        .map_err(|e| L7Error::Downstream(format!("rewritten path {path:?}: {e}")))?;
    if let Some(host) = &r.host
        && let Ok(v) = HeaderValue::from_str(host)
    {
        parts.headers.insert(http::header::HOST, v);
    }
    Ok(())
}

/// The request as sent to `endpoint`: same method, path, headers and
/// version-independent form (HTTP/1.1 upstream).
fn upstream_request(
    parts: &http::request::Parts,
    endpoint: SocketAddr,
    body: Body,
) -> Result<Request<Body>, L7Error> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let uri: Uri = format!("http://{endpoint}{path}")
        .parse()
        .map_err(|e| L7Error::Downstream(format!("request target {path:?}: {e}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
    Ok(request)
}
