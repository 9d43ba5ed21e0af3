//! `DestinationRule` → a service's traffic policy: load balancer,
//! locality, outlier detection, connection pool, retry budget.

use weft_core::l7::{HashOn, LoadBalancer, Outlier, RetryBudget, TrafficPolicy};

use super::common::{parse_duration, report};
use crate::diag::Diagnostic;
use crate::kinds::DestinationRuleSpec;
use crate::kinds::destination_rule::{BUDGET_MIN_ANNOTATION, BUDGET_RATIO_ANNOTATION};
use crate::resource::Resource;

pub(crate) fn traffic_policy(
    dr: &Resource<DestinationRuleSpec>,
    out: &mut Vec<Diagnostic>,
) -> TrafficPolicy {
    let mut policy = TrafficPolicy::default();
    let mut budget = RetryBudget::default();
    for (annotation, slot) in [
        (BUDGET_RATIO_ANNOTATION, &mut budget.ratio),
        (BUDGET_MIN_ANNOTATION, &mut budget.min_per_second),
    ] {
        if let Some(v) = dr.annotations.get(annotation) {
            match v.parse::<f64>() {
                Ok(x) if x >= 0.0 && x.is_finite() => *slot = x,
                _ => report(
                    out,
                    dr,
                    &format!("metadata.annotations.{annotation}"),
                    format!("{v:?} is not a non-negative number"),
                ),
            }
        }
    }
    let Some(tp) = &dr.spec.traffic_policy else {
        policy.retry_budget = budget;
        return policy;
    };
    if let Some(lb) = &tp.load_balancer {
        policy.load_balancer = match (lb.simple.as_deref(), &lb.consistent_hash) {
            (Some("ROUND_ROBIN"), _) => LoadBalancer::RoundRobin,
            (Some("RANDOM"), _) => LoadBalancer::Random,
            (_, Some(h)) => {
                LoadBalancer::ConsistentHash(match (&h.http_header_name, &h.http_cookie) {
                    (Some(name), _) => HashOn::Header(name.to_ascii_lowercase()),
                    (None, Some(c)) => HashOn::Cookie(c.name.clone()),
                    (None, None) => HashOn::SourceIp,
                })
            }
            _ => LoadBalancer::LeastRequest,
        };
    }
    if let Some(l) = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
    {
        policy.locality = weft_core::l7::LocalityLb {
            enabled: l.enabled.unwrap_or(true),
            failover: l
                .failover
                .iter()
                .map(|f| (f.from.clone(), f.to.clone()))
                .collect(),
            distribute: l
                .distribute
                .iter()
                .map(|d| {
                    (
                        d.from.clone(),
                        d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    )
                })
                .collect(),
            priority: std::collections::BTreeMap::new(),
        };
    }
    if let Some(pool) = &tp.connection_pool {
        let http = pool.http.clone().unwrap_or_default();
        policy.max_requests = http
            .http2_max_requests
            .or(pool.tcp.as_ref().and_then(|t| t.max_connections));
        policy.max_pending = http.http1_max_pending_requests;
        policy.max_retries = http.max_retries;
    }
    if let Some(od) = &tp.outlier_detection {
        policy.outlier = Some(Outlier {
            // The deprecated consecutiveErrors counts gateway failures
            // only, as in Istio.
            consecutive_5xx: match od.consecutive_errors {
                Some(_) => od.consecutive_5xx_errors,
                None => Some(od.consecutive_5xx_errors.unwrap_or(5)),
            },
            consecutive_gateway_errors: od.consecutive_gateway_errors.or(od.consecutive_errors),
            base_ejection_time: parse_duration(od.base_ejection_time.as_deref())
                .unwrap_or(std::time::Duration::from_secs(30)),
            max_ejection_percent: od.max_ejection_percent.unwrap_or(10),
        });
    }
    if let Some(b) = &tp.retry_budget {
        budget.concurrent_percent = Some(b.percent.as_ref().map_or(20.0, |p| p.value));
        budget.min_concurrency = b.min_retry_concurrency.unwrap_or(3);
    }
    policy.retry_budget = budget;
    policy
}
