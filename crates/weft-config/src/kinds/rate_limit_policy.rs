//! `weft.dev/v1alpha1` `RateLimitPolicy`: tiered rate limits for a
//! service, applied by its waypoint. Ordered rules, first match wins; each
//! counts per descriptor (`countBy`) with `requests` per `per` and a
//! `burst`. `mode: local` limits each waypoint replica on its own;
//! `mode: global` keeps one limit across replicas in Redis, or asks an
//! external rate limit service speaking Envoy's RLS API
//! (`rateLimitService`, whose own configuration holds the limits), with
//! `failureMode` deciding when the store is unreachable.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: b-tiers, namespace: shop}
//! spec:
//!   targetRef: {kind: Service, name: b}
//!   mode: global
//!   redis: {url: "redis://127.0.0.1:6379"}
//!   rules:
//!   - name: platinum
//!     match: [{header: {name: x-customer-tier, value: platinum}}, {claim: {name: tier, value: platinum}}]
//!     countBy: [sourcePrincipal]
//!     limit: {requests: 1000, per: 1h}
//!   - name: default
//!     countBy: [sourcePrincipal]
//!     limit: {requests: 100, per: 1h}
//! ```

use serde::Deserialize;
use weft_core::duration;
use weft_core::l7::RateAttribute;

use crate::diag::Ctx;
use crate::kinds::http_route::RefSpec;
use crate::resource::Spec;

/// `spec` of a `RateLimitPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// The service (ServiceEntry name; `kind: Service` or `ServiceEntry`).
    pub target_ref: Option<RefSpec>,
    /// `local` (default) or `global`.
    pub mode: Option<String>,
    /// Redis for `global`.
    pub redis: Option<RedisSpec>,
    /// Or an external rate limit service for `global`.
    pub rate_limit_service: Option<RateLimitServiceSpec>,
    /// `open` (default) or `closed`, when Redis is unreachable.
    pub failure_mode: Option<String>,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RateRuleSpec>,
}

/// `redis`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RedisSpec {
    /// `redis://host:port`, `rediss://…`, or `redis+unix:///path`.
    pub url: String,
}

/// `rateLimitService`: Envoy's RLS v3 over gRPC.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RateLimitServiceSpec {
    /// `host:port`.
    pub address: String,
    /// The RLS domain (default: the policy's namespace).
    pub domain: Option<String>,
    /// Longest wait for a decision (default `250ms`).
    pub timeout: Option<String>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateRuleSpec {
    /// Name (unique in the policy).
    pub name: String,
    /// Conditions, any one holds; omitted: every request.
    #[serde(rename = "match", default)]
    pub matches: Vec<ConditionSpec>,
    /// Descriptors: `sourcePrincipal`, `path`, `method`, `header:<name>`,
    /// `claim:<name>`.
    #[serde(default)]
    pub count_by: Vec<String>,
    /// The limit (not with `rateLimitService`, which holds its own).
    pub limit: Option<LimitSpec>,
}

/// `match[]`: exactly one attribute.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSpec {
    /// A header equals a value.
    pub header: Option<NamedValueSpec>,
    /// A JWT claim equals a value.
    pub claim: Option<NamedValueSpec>,
    /// The caller's identity equals a value.
    pub source_principal: Option<String>,
    /// The path equals a value.
    pub path: Option<String>,
    /// The method equals a value.
    pub method: Option<String>,
}

/// `{name, value}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct NamedValueSpec {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `limit`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct LimitSpec {
    /// Requests per period.
    pub requests: u64,
    /// The period: `1s`, `1m`, `1h`, or any duration.
    pub per: String,
    /// Requests allowed at once (default: `requests`).
    pub burst: Option<u64>,
}

/// Parses a `countBy` item.
pub fn attribute(s: &str) -> Option<RateAttribute> {
    match s {
        "sourcePrincipal" => Some(RateAttribute::SourcePrincipal),
        "path" => Some(RateAttribute::Path),
        "method" => Some(RateAttribute::Method),
        _ => match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => {
                Some(RateAttribute::Header(name.to_ascii_lowercase()))
            }
            Some(("claim", name)) if !name.is_empty() => Some(RateAttribute::Claim(name.into())),
            _ => None,
        },
    }
}

impl ConditionSpec {
    /// The condition as (attribute, value), if exactly one is set.
    pub fn condition(&self) -> Option<(RateAttribute, String)> {
        let all = [
            self.header.as_ref().map(|h| {
                (
                    RateAttribute::Header(h.name.to_ascii_lowercase()),
                    h.value.clone(),
                )
            }),
            self.claim
                .as_ref()
                .map(|c| (RateAttribute::Claim(c.name.clone()), c.value.clone())),
            self.source_principal
                .clone()
                .map(|v| (RateAttribute::SourcePrincipal, v)),
            self.path.clone().map(|v| (RateAttribute::Path, v)),
            self.method.clone().map(|v| (RateAttribute::Method, v)),
        ];
        let mut set = all.into_iter().flatten();
        let first = set.next()?;
        set.next().is_none().then_some(first)
    }
}

impl Spec for RateLimitPolicySpec {
    const KIND: &'static str = "RateLimitPolicy";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.target_ref.is_none() {
            ctx.error(
                "spec.targetRef",
                "name the service to limit (kind: Service, name: …)",
            );
        }
        let global = match self.mode.as_deref().unwrap_or("local") {
            "local" => false,
            "global" => true,
            other => {
                ctx.error("spec.mode", format!("{other:?}: use local or global"));
                false
            }
        };
        if let Some(service) = &self.rate_limit_service {
            if !global {
                ctx.error(
                    "spec.rateLimitService",
                    "a rate limit service is used only with mode: global",
                );
            }
            if self.redis.is_some() {
                ctx.error("spec.redis", "set redis or rateLimitService, not both");
            }
            let port = service
                .address
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then_some(port));
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                ctx.error(
                    "spec.rateLimitService.address",
                    format!("{:?}: use host:port", service.address),
                );
            }
            if let Some(t) = &service.timeout
                && let Err(e) = duration::parse(t)
            {
                ctx.error("spec.rateLimitService.timeout", e);
            }
        }
        let service = self.rate_limit_service.is_some();
        match (&self.redis, global) {
            (None, true) if !service => ctx.error(
                "spec.redis.url",
                "a global limit needs Redis (redis.url) or a rate limit service (rateLimitService)",
            ),
            (Some(_), false) => ctx.error("spec.redis", "Redis is used only with mode: global"),
            (Some(r), true) if redis_url(&r.url).is_err() => ctx.error(
                "spec.redis.url",
                format!(
                    "{:?}: use redis://host:port, rediss://host:port or redis+unix:///path",
                    r.url
                ),
            ),
            _ => {}
        }
        if let Some(f) = &self.failure_mode
            && f != "open"
            && f != "closed"
        {
            ctx.error("spec.failureMode", format!("{f:?}: use open or closed"));
        }
        if self.rules.is_empty() {
            ctx.error("spec.rules", "add at least one rule");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let base = format!("spec.rules[{i}]");
            if rule.name.is_empty() {
                ctx.error(&format!("{base}.name"), "required");
            } else if !names.insert(&rule.name) {
                ctx.error(
                    &format!("{base}.name"),
                    format!("rule {:?} is defined twice", rule.name),
                );
            }
            for (m, cond) in rule.matches.iter().enumerate() {
                if cond.condition().is_none() {
                    ctx.error(
                        &format!("{base}.match[{m}]"),
                        "set exactly one of header, claim, sourcePrincipal, path, method",
                    );
                }
            }
            for (c, item) in rule.count_by.iter().enumerate() {
                if attribute(item).is_none() {
                    ctx.error(
                        &format!("{base}.countBy[{c}]"),
                        format!("{item:?}: use sourcePrincipal, path, method, header:<name> or claim:<name>"),
                    );
                }
            }
            let Some(limit) = &rule.limit else {
                if !service {
                    ctx.error(&format!("{base}.limit"), "required: {requests, per}");
                }
                continue;
            };
            if service {
                ctx.error(
                    &format!("{base}.limit"),
                    "the rate limit service's own configuration holds the limits; remove limit",
                );
                continue;
            }
            if limit.requests == 0 {
                ctx.error(&format!("{base}.limit.requests"), "must be at least 1");
            }
            match duration::parse(&limit.per) {
                Ok(d) if d.is_zero() => {
                    ctx.error(&format!("{base}.limit.per"), "must be greater than zero")
                }
                Ok(_) => {}
                Err(e) => ctx.error(&format!("{base}.limit.per"), e),
            }
        }
    }
}

fn redis_url(url: &str) -> Result<(), ()> {
    ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
        .then_some(())
        .ok_or(())
}
