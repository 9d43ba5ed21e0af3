//! The L7 policy of one service, as waypoints apply it: ordered HTTP
//! routes (from Istio `VirtualService`, later Gateway API `HTTPRoute`) and
//! the traffic policy of its destinations (from `DestinationRule`).
//!
//! The control plane resolves names before this point: destinations are
//! services by `namespace/hostname`, subsets are lists of workload uids.
//! The types serialize (serde) because they travel inside the config
//! stream's `L7Service` resource.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::extension::{BodyMode, ExtProc, PluginPhase, WasmPlugin};

/// Everything a waypoint applies to one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct L7Policy {
    /// Routes, first match wins; empty: everything to the service itself.
    pub routes: Vec<HttpRoute>,
    /// Traffic policy for requests to this service (as a destination).
    pub traffic: TrafficPolicy,
    /// Named subsets of this service's endpoints: workload uids.
    pub subsets: BTreeMap<String, Vec<String>>,
    /// Rate limits on requests to this service.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// JWT issuers whose tokens it accepts (`RequestAuthentication`).
    #[serde(default)]
    pub jwt: Vec<JwtIssuer>,
    /// Request-level authorization policies (`AuthorizationPolicy`
    /// attached to the service).
    #[serde(default)]
    pub authz: Vec<L7Authz>,
    /// Ingress gateways send this service's traffic through its waypoint
    /// (Istio's `istio.io/ingress-use-waypoint: "true"` label).
    #[serde(default)]
    pub ingress_use_waypoint: bool,
    /// Proxy-Wasm plugins run on its requests (`WasmPlugin`), in no
    /// particular order (the proxy orders them by phase and priority).
    #[serde(default)]
    pub wasm: Vec<WasmPlugin>,
    /// External processors asked about its requests (`ExtProcPolicy`), in
    /// order.
    #[serde(default)]
    pub ext_proc: Vec<ExtProc>,
}

/// What an authorization policy does when it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthzAction {
    /// Only matching requests pass (when any ALLOW policy applies).
    #[default]
    Allow,
    /// Matching requests are refused.
    Deny,
    /// Matching requests are logged.
    Audit,
    /// Matching requests are decided by an external authorizer (the
    /// policy's `provider`), before DENY and ALLOW policies.
    Custom,
}

/// An authorizer for CUSTOM policies (Istio's mesh `extensionProviders`),
/// resolved by the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzProvider {
    /// Its name in the mesh configuration.
    pub name: String,
    /// How it is asked.
    pub kind: ProviderKind,
    /// How long one check may take.
    pub timeout: Duration,
    /// Allow requests when the authorizer cannot be asked (error,
    /// timeout, 5xx); otherwise refuse them with `status_on_error`.
    pub fail_open: bool,
    /// The status sent when failing closed (default 403).
    pub status_on_error: u16,
}

/// The protocol of an authorizer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderKind {
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC.
    Grpc {
        /// `host:port`.
        address: String,
    },
    /// Envoy's HTTP ext_authz: the request's method and path (after
    /// `path_prefix`) with selected headers; 2xx allows.
    Http {
        /// `host:port`.
        address: String,
        /// Prepended to the request path.
        path_prefix: String,
        /// Request headers sent in the check (lowercase), besides
        /// `authorization`, `host`, `cookie`… (see the waypoint).
        include_headers: Vec<String>,
        /// Authorizer response headers copied to the upstream request on
        /// allow (lowercase).
        headers_to_upstream: Vec<String>,
        /// Authorizer response headers copied to the client on deny.
        headers_to_downstream: Vec<String>,
    },
    /// weft's built-in API-key check: the key in `header` (or `query`
    /// parameter) must hash (SHA-256) to one of `keys`.
    ApiKey {
        /// Header carrying the key (lowercase).
        header: String,
        /// Query parameter carrying it, if any.
        query: Option<String>,
        /// Hex SHA-256 of each key → the client it belongs to.
        keys: BTreeMap<String, String>,
        /// Header the client's name is sent upstream in (lowercase).
        client_header: String,
    },
}

/// A request-level authorization policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Authz {
    /// `namespace/name`.
    pub policy: String,
    /// Its action.
    pub action: AuthzAction,
    /// Evaluated and logged, never enforced (`istio.io/dry-run`).
    pub dry_run: bool,
    /// Rules, any one matches.
    pub rules: Vec<L7AuthzRule>,
    /// The authorizer of a CUSTOM policy.
    #[serde(default)]
    pub provider: Option<AuthzProvider>,
}

/// One rule: any source, any operation, every condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7AuthzRule {
    /// Sources (empty: any).
    pub from: Vec<L7Source>,
    /// Operations (empty: any).
    pub to: Vec<L7Operation>,
    /// Conditions.
    pub when: Vec<L7Condition>,
}

/// `from[].source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Source {
    /// Peer identities (`td/ns/<ns>/sa/<sa>`, wildcards).
    pub principals: Vec<String>,
    /// Not these.
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    pub namespaces: Vec<String>,
    /// Not these.
    pub not_namespaces: Vec<String>,
    /// JWT `iss/sub` values.
    pub request_principals: Vec<String>,
    /// Not these.
    pub not_request_principals: Vec<String>,
    /// Peer addresses or CIDRs.
    pub ip_blocks: Vec<String>,
    /// Not these.
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses or CIDRs.
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Not these.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to[].operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Operation {
    /// Hosts.
    pub hosts: Vec<String>,
    /// Not these.
    pub not_hosts: Vec<String>,
    /// Ports (as strings, as in Istio).
    pub ports: Vec<String>,
    /// Not these.
    pub not_ports: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Not these.
    pub not_methods: Vec<String>,
    /// Paths (wildcards).
    pub paths: Vec<String>,
    /// Not these.
    pub not_paths: Vec<String>,
}

/// `when[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Condition {
    /// The attribute, e.g. `request.auth.claims[group]`.
    pub key: String,
    /// Values, any one.
    pub values: Vec<String>,
    /// Values that must not match.
    pub not_values: Vec<String>,
}

/// How long one JWKS fetch may take unless a rule says otherwise.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

fn default_fetch_timeout() -> Duration {
    JWKS_FETCH_TIMEOUT
}

/// One accepted JWT issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtIssuer {
    /// `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: any).
    pub audiences: Vec<String>,
    /// The JWKS, as JSON (empty when fetched from `jwks_uri`).
    pub jwks: String,
    /// Where waypoints fetch the JWKS (empty: inline `jwks`).
    #[serde(default)]
    pub jwks_uri: String,
    /// How long one fetch of `jwks_uri` may take.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Duration,
    /// Headers (name, prefix) carrying the token; all empty: the default
    /// `Authorization: Bearer`.
    pub from_headers: Vec<(String, String)>,
    /// Query parameters carrying it.
    pub from_params: Vec<String>,
    /// Cookies carrying it.
    pub from_cookies: Vec<String>,
    /// Keep the token on the forwarded request.
    pub forward_original_token: bool,
    /// (header, claim) copies.
    pub claim_to_headers: Vec<(String, String)>,
}

/// A request attribute rate limits match on or count by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateAttribute {
    /// The caller's SPIFFE identity.
    SourcePrincipal,
    /// A request header (lowercase).
    Header(String),
    /// A JWT claim.
    Claim(String),
    /// The path.
    Path,
    /// The method.
    Method,
}

impl std::fmt::Display for RateAttribute {
    /// As written in `countBy`: `sourcePrincipal`, `header:<name>`, ….
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateAttribute::SourcePrincipal => f.write_str("sourcePrincipal"),
            RateAttribute::Header(h) => write!(f, "header:{h}"),
            RateAttribute::Claim(c) => write!(f, "claim:{c}"),
            RateAttribute::Path => f.write_str("path"),
            RateAttribute::Method => f.write_str("method"),
        }
    }
}

/// One rate-limit rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    /// Name.
    pub name: String,
    /// Any one holds (attribute equals value); empty: every request.
    pub when: Vec<(RateAttribute, String)>,
    /// Counted per the values of these.
    pub count_by: Vec<RateAttribute>,
    /// Requests per period.
    pub requests: u64,
    /// The period.
    pub period: Duration,
    /// Requests allowed at once.
    pub burst: u64,
}

/// A service's rate limits (`RateLimitPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Redis URL for a global limit; `None`: local (per replica).
    pub redis: Option<String>,
    /// An external rate limit service (Envoy's RLS) that decides instead.
    #[serde(default)]
    pub service: Option<RateLimitService>,
    /// Allow requests when Redis or the service is unreachable.
    pub fail_open: bool,
    /// Rules, first match wins.
    pub rules: Vec<RateRule>,
}

/// An external rate limit service speaking Envoy's RLS v3 API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitService {
    /// `host:port` (gRPC without TLS).
    pub address: String,
    /// The RLS domain the descriptors are sent under.
    pub domain: String,
    /// How long a decision may take before the failure mode applies.
    pub timeout: Duration,
}

/// How a string is matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// A path prefix on segment boundaries (Gateway API `PathPrefix`:
    /// `/api` matches `/api` and `/api/x`, not `/apix`).
    SegmentPrefix(String),
    /// Matches the whole string (RE2 syntax).
    Regex(String),
}

/// One set of request conditions; all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpMatch {
    /// Path condition.
    pub path: Option<StringMatch>,
    /// Method (exact).
    pub method: Option<String>,
    /// Header conditions, by lowercase name.
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameter conditions, by name.
    #[serde(default)]
    pub query: BTreeMap<String, StringMatch>,
}

/// Where a share of a route's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The service, `namespace/hostname`.
    pub service: String,
    /// A subset of its endpoints.
    pub subset: Option<String>,
    /// Its port; `None`: the port the request arrived on.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
}

/// Header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// Set (replace).
    pub set: BTreeMap<String, String>,
    /// Add (append).
    pub add: BTreeMap<String, String>,
    /// Remove.
    pub remove: Vec<String>,
}

/// Retries of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Limit per try.
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` list, comma separated.
    pub retry_on: String,
    /// HTTP statuses also retried (Gateway API `retry.codes`).
    #[serde(default)]
    pub statuses: Vec<u16>,
}

/// Injected faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// (percent, delay).
    pub delay: Option<(f64, Duration)>,
    /// (percent, status).
    pub abort: Option<(f64, u16)>,
}

/// A redirect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<String>,
    /// Status (301 by default).
    pub status: u16,
}

/// A rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replace the matched prefix (from, to).
    pub prefix: Option<(String, String)>,
    /// Replace the whole path.
    pub full_path: Option<String>,
    /// Replace the authority.
    pub host: Option<String>,
}

/// Mirroring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    /// Where copies go.
    pub destination: Destination,
    /// Share copied, percent.
    pub percent: f64,
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Name, for logs and metrics.
    pub name: String,
    /// Any one holds; empty: all requests.
    pub matches: Vec<HttpMatch>,
    /// Destinations by weight; empty with a redirect.
    pub destinations: Vec<Destination>,
    /// Overall timeout.
    pub timeout: Option<Duration>,
    /// Retries; `None`: the mesh default.
    pub retries: Option<Retries>,
    /// Faults.
    pub fault: Option<Fault>,
    /// Redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Request header changes.
    pub request_headers: Headers,
    /// Response header changes.
    pub response_headers: Headers,
    /// Mirroring.
    pub mirror: Option<Mirror>,
    /// Host names the route answers (gateways; `*.` wildcards); empty:
    /// any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateway listeners the route is attached to (`sectionName`);
    /// empty: all.
    #[serde(default)]
    pub listeners: Vec<String>,
}

/// Load-balancing policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancer {
    /// Power of two choices, least requests (the default).
    #[default]
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// At random.
    Random,
    /// Consistent hashing on a request attribute.
    ConsistentHash(HashOn),
}

/// What consistent hashing hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashOn {
    /// A header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The caller's address.
    SourceIp,
}

/// Outlier detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outlier {
    /// Consecutive 5xx-class failures that eject.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway failures that eject.
    pub consecutive_gateway_errors: Option<u32>,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
}

/// Retry budget: a share of the request rate with a floor, and/or a share
/// of requests in flight with a floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryBudget {
    /// Retries per request over the window (0.2 = 20 %).
    pub ratio: f64,
    /// Retries per second always allowed.
    pub min_per_second: f64,
    /// The window.
    pub window: Duration,
    /// Concurrent retries as a percent of active requests (Istio
    /// `retryBudget.percent`), if set.
    pub concurrent_percent: Option<f64>,
    /// Floor of concurrent retries (`minRetryConcurrency`).
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    /// Linkerd's default: 20 % plus 10 per second over 10 s.
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10.0,
            window: Duration::from_secs(10),
            concurrent_percent: None,
            min_concurrency: 3,
        }
    }
}

/// A destination's traffic policy (`DestinationRule.trafficPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// How endpoints are chosen.
    pub load_balancer: LoadBalancer,
    /// Requests in flight (`http2MaxRequests`).
    pub max_requests: Option<u32>,
    /// Requests waiting (`http1MaxPendingRequests`).
    pub max_pending: Option<u32>,
    /// Retries in flight (`maxRetries`).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Outlier detection.
    pub outlier: Option<Outlier>,
    /// Retry budget.
    pub retry_budget: RetryBudget,
    /// Locality-aware balancing settings.
    #[serde(default)]
    pub locality: LocalityLb,
}

/// `localityLbSetting`: locality preference is on by default (closest
/// healthy locality first); `failover` says which region to fail over to
/// from a region; `distribute` splits traffic from a locality by weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalityLb {
    /// Off: every endpoint is equally close.
    pub enabled: bool,
    /// (from region, to region).
    pub failover: Vec<(String, String)>,
    /// (from locality pattern, [(to locality pattern, weight)]); patterns
    /// are `region/zone/subzone` with `*` for the rest.
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `failoverPriority` resolved against the service's waypoint: each
    /// endpoint's rank (0 best: all the listed labels equal the
    /// waypoint's), by workload `namespace/name`. Empty: by locality.
    #[serde(default)]
    pub priority: BTreeMap<String, u8>,
}

impl Default for LocalityLb {
    fn default() -> Self {
        LocalityLb {
            enabled: true,
            failover: Vec::new(),
            distribute: Vec::new(),
            priority: BTreeMap::new(),
        }
    }
}

/// The `when` keys waypoints evaluate, as operators read them.
pub const WHEN_KEYS: &str = "request.auth.claims[<name>], request.headers[<name>], request.auth.principal, source.principal, source.namespace, source.ip, remote.ip, destination.port";

/// Whether `key` is a `when` key waypoints evaluate.
pub fn is_when_key(key: &str) -> bool {
    (key.starts_with("request.auth.claims[") || key.starts_with("request.headers["))
        && key.ends_with(']')
        || matches!(
            key,
            "request.auth.principal"
                | "source.principal"
                | "source.namespace"
                | "source.ip"
                | "remote.ip"
                | "destination.port"
        )
}

/// An ingress gateway (Gateway API `Gateway`), as the gateway proxy runs
/// it: listeners, and the routes and policies attached to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// `namespace/name` of the Gateway (and of the WorkloadEntry it runs
    /// as).
    pub name: String,
    /// Its listeners.
    pub listeners: Vec<GatewayListener>,
    /// Routes (`HTTPRoute`s with this Gateway as parent), JWT issuers,
    /// request-level authorization and rate limits attached to it.
    pub policy: L7Policy,
    /// `TLSRoute`s (by SNI) and `TCPRoute`s (no host names): connections
    /// passed through unopened.
    #[serde(default)]
    pub tls_routes: Vec<TlsRoute>,
}

/// A `TLSRoute` (or `TCPRoute`) at a Gateway: connections whose SNI
/// matches `hosts` (a TCPRoute has none: every connection) go, unopened,
/// to one of `destinations`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRoute {
    /// `namespace/name` of the route.
    pub name: String,
    /// Listeners it attaches to (`sectionName`); empty: every passthrough
    /// listener.
    pub listeners: Vec<String>,
    /// SNI host names (`*.` wildcard); empty: any, including none.
    pub hosts: Vec<String>,
    /// Backends by weight (each with its port).
    pub destinations: Vec<Destination>,
}

/// One listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayListener {
    /// Its name (`sectionName` in routes).
    pub name: String,
    /// Port on the gateway's address.
    pub port: u16,
    /// Host name it accepts (`*.` wildcard); `None`: any.
    pub hostname: Option<String>,
    /// TLS termination (HTTPS); `None`: plain HTTP (or passthrough).
    pub tls: Option<ListenerTls>,
    /// Connections passed through unopened to `TlsRoute` backends instead
    /// of served as HTTP: TLS by its SNI, or plain TCP whole.
    #[serde(default)]
    pub passthrough: Option<Passthrough>,
}

/// How a listener passes connections through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Passthrough {
    /// TLS, routed by the SNI of its ClientHello (`TLSRoute`).
    Tls,
    /// Plain TCP (`TCPRoute`).
    Tcp,
    /// HBONE from other networks (an east-west gateway): the outer
    /// tunnel terminated, the end-to-end one inside forwarded unopened to
    /// an endpoint of the service it names.
    EastWest,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTls {
    /// Certificate chains with their keys (PEM), picked by SNI.
    pub certificates: Vec<CertificateKey>,
    /// CA bundle (PEM) client certificates are checked against; `None`:
    /// no client certificates asked for.
    pub client_ca: Option<String>,
    /// Accept clients without a certificate (their requests carry no
    /// principal; policy decides).
    pub client_certificate_optional: bool,
}

/// One certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateKey {
    /// `namespace/name` of the Secret it came from.
    pub secret: String,
    /// The chain.
    pub chain_pem: String,
    /// The key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertificateKey({}, key redacted)", self.secret)
    }
}

/// Whether `host` matches a Gateway API host name pattern (exact, or
/// `*.suffix` for one or more labels), case-insensitively.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}
