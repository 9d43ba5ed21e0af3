//! Istio `DestinationRule` (`networking.istio.io/v1`): how a waypoint
//! treats a service as a destination — load balancing, circuit-breaker
//! limits, outlier detection, retry budget — and its named subsets.
//! TLS settings are rejected by name (the mesh's mTLS is automatic).

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_core::duration;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `DestinationRule`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service hostname (short names resolve in the namespace).
    pub host: String,
    /// The policy.
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Limits.
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Concurrent retry budget (Istio's shape).
    pub retry_budget: Option<RetryBudgetSpec>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// `LEAST_REQUEST` (default), `ROUND_ROBIN`, `RANDOM`.
    pub simple: Option<String>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashSpec>,
    /// Locality-aware balancing.
    pub locality_lb_setting: Option<LocalityLbSpec>,
}

/// `loadBalancer.localityLbSetting`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct LocalityLbSpec {
    /// On unless `false`.
    pub enabled: Option<bool>,
    /// Region to region.
    #[serde(default)]
    pub failover: Vec<FailoverSpec>,
    /// Weighted split by locality.
    #[serde(default)]
    pub distribute: Vec<DistributeSpec>,
    /// Label keys ranking endpoints by how many (in order) equal the
    /// caller's.
    #[serde(default, rename = "failoverPriority")]
    pub failover_priority: Vec<String>,
}

/// `failover[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FailoverSpec {
    /// From this region.
    pub from: String,
    /// To this region.
    pub to: String,
}

/// `distribute[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DistributeSpec {
    /// Source locality pattern (`region/zone/*`).
    pub from: String,
    /// Target locality patterns and weights (summing to 100).
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// `loadBalancer.consistentHash`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashSpec {
    /// Hash a header.
    pub http_header_name: Option<String>,
    /// Hash a cookie.
    pub http_cookie: Option<CookieSpec>,
    /// Hash the caller's address.
    pub use_source_ip: Option<bool>,
    /// Ring hash (the default).
    pub ring_hash: Option<serde_json::Value>,
    /// Maglev.
    pub maglev: Option<serde_json::Value>,
}

/// `httpCookie`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CookieSpec {
    /// Cookie name.
    pub name: String,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ConnectionPoolSpec {
    /// TCP limits.
    pub tcp: Option<TcpPoolSpec>,
    /// HTTP limits.
    pub http: Option<HttpPoolSpec>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpPoolSpec {
    /// Connections to the destination: with HTTP/1.1 one per request in
    /// flight, so weft applies it as the request limit when
    /// `http2MaxRequests` is not set.
    pub max_connections: Option<u32>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpPoolSpec {
    /// Requests waiting for a slot.
    pub http1_max_pending_requests: Option<u32>,
    /// Requests in flight.
    pub http2_max_requests: Option<u32>,
    /// Retries in flight (Envoy's `max_retries` circuit breaker).
    pub max_retries: Option<u32>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// 5xx-class failures in a row that eject.
    pub consecutive_5xx_errors: Option<u32>,
    /// Gateway failures in a row that eject.
    pub consecutive_gateway_errors: Option<u32>,
    /// Deprecated in Istio; read as Istio reads it — gateway failures
    /// (502, 503, 504) in a row, with 5xx ejection off — with a warning.
    pub consecutive_errors: Option<u32>,
    /// Accepted for compatibility (ejection is checked on every response).
    pub interval: Option<String>,
    /// Base ejection time (default 30s).
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once (default 10).
    pub max_ejection_percent: Option<u32>,
}

/// `retryBudget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Concurrent retries as a percent of active requests.
    pub percent: Option<PercentValue>,
    /// Floor of concurrent retries.
    pub min_retry_concurrency: Option<u32>,
}

/// `{value: …}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PercentValue {
    /// 0–100.
    pub value: f64,
}

/// `subsets[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SubsetSpec {
    /// Name.
    pub name: String,
    /// Endpoint labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

const NOT_YET: &str = "is not supported by weft's waypoint yet";
/// Annotation overriding the rate retry budget's ratio (`0.2` = 20 %).
pub const BUDGET_RATIO_ANNOTATION: &str = "weft.dev/retry-budget-ratio";
/// Annotation overriding the rate retry budget's floor (retries/second).
pub const BUDGET_MIN_ANNOTATION: &str = "weft.dev/retry-budget-min-per-second";

impl Spec for DestinationRuleSpec {
    const KIND: &'static str = "DestinationRule";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        (
            "spec.trafficPolicy.tls",
            "the mesh's mutual TLS is automatic; TLS origination is not supported",
        ),
        ("spec.trafficPolicy.portLevelSettings", NOT_YET),
        ("spec.trafficPolicy.tunnel", NOT_YET),
        ("spec.trafficPolicy.proxyProtocol", NOT_YET),
        (
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "set the Mesh connectTimeout",
        ),
        (
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
            NOT_YET,
        ),
        ("spec.trafficPolicy.connectionPool.tcp.idleTimeout", NOT_YET),
        (
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
            NOT_YET,
        ),
        ("spec.trafficPolicy.loadBalancer.warmup", NOT_YET),
        (
            "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
            NOT_YET,
        ),
        (
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
            NOT_YET,
        ),
        (
            "spec.subsets.trafficPolicy",
            "per-subset policies are not supported yet; set the policy on the rule",
        ),
        (
            "spec.exportTo",
            "exportTo is not supported: every rule is visible mesh-wide",
        ),
        ("spec.workloadSelector", NOT_YET),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.host.is_empty() {
            ctx.error("spec.host", "required");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.is_empty() {
                ctx.error(&format!("spec.subsets[{i}].name"), "required");
            } else if !seen.insert(&s.name) {
                ctx.error(
                    &format!("spec.subsets[{i}].name"),
                    format!("subset {:?} is defined twice", s.name),
                );
            }
        }
        let Some(tp) = &self.traffic_policy else {
            return;
        };
        if let Some(lb) = &tp.load_balancer {
            match (lb.simple.as_deref(), &lb.consistent_hash) {
                (Some(_), Some(_)) => ctx.error(
                    "spec.trafficPolicy.loadBalancer",
                    "set simple or consistentHash, not both",
                ),
                (
                    Some("LEAST_REQUEST" | "ROUND_ROBIN" | "RANDOM" | "UNSPECIFIED" | "LEAST_CONN"),
                    _,
                )
                | (None, _) => {}
                (Some(other), _) => ctx.error(
                    "spec.trafficPolicy.loadBalancer.simple",
                    format!("{other:?} is not supported; use LEAST_REQUEST, ROUND_ROBIN or RANDOM"),
                ),
            }
            if let Some(l) = &lb.locality_lb_setting {
                if !l.failover.is_empty() && !l.distribute.is_empty() {
                    ctx.error(
                        "spec.trafficPolicy.loadBalancer.localityLbSetting",
                        "set failover or distribute, not both (as in Istio)",
                    );
                }
                for (i, d) in l.distribute.iter().enumerate() {
                    let sum: u32 = d.to.values().sum();
                    if sum != 100 {
                        ctx.error(
                            &format!("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[{i}].to"),
                            format!("weights sum to {sum}, not 100"),
                        );
                    }
                }
            }
            if let Some(h) = &lb.consistent_hash {
                let set = [
                    h.http_header_name.is_some(),
                    h.http_cookie.is_some(),
                    h.use_source_ip == Some(true),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if set != 1 {
                    ctx.error(
                        "spec.trafficPolicy.loadBalancer.consistentHash",
                        "hash on exactly one of httpHeaderName, httpCookie, useSourceIp",
                    );
                }
            }
        }
        if let Some(od) = &tp.outlier_detection {
            for (field, v) in [
                ("interval", &od.interval),
                ("baseEjectionTime", &od.base_ejection_time),
            ] {
                if let Some(v) = v
                    && let Err(e) = duration::parse(v)
                {
                    ctx.error(&format!("spec.trafficPolicy.outlierDetection.{field}"), e);
                }
            }
            if let Some(n) = od.consecutive_errors {
                let field = "spec.trafficPolicy.outlierDetection.consecutiveErrors";
                if od.consecutive_5xx_errors.is_some() || od.consecutive_gateway_errors.is_some() {
                    ctx.error(
                        field,
                        "deprecated and set beside consecutive5xxErrors or consecutiveGatewayErrors; keep only those",
                    );
                } else {
                    ctx.warn(
                        field,
                        format!("deprecated; read as Istio reads it, consecutiveGatewayErrors: {n} with 5xx ejection off — write that (or consecutive5xxErrors) instead"),
                    );
                }
            }
            if od.max_ejection_percent.is_some_and(|p| p > 100) {
                ctx.error(
                    "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                    "a percentage (0-100)",
                );
            }
        }
        if let Some(b) = &tp.retry_budget
            && b.percent
                .as_ref()
                .is_some_and(|p| !(0.0..=100.0).contains(&p.value))
        {
            ctx.error(
                "spec.trafficPolicy.retryBudget.percent.value",
                "a percentage (0-100)",
            );
        }
    }
}
