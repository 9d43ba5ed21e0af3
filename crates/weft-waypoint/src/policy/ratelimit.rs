//! Rate limits: ordered rules, first match wins; each rule counts per
//! descriptor (the values of chosen request attributes, e.g. the caller's
//! identity) with a token bucket of `requests` per `period` and a `burst`.
//!
//! The bucket is GCRA (the generic cell rate algorithm): one timestamp per
//! descriptor, the "theoretical arrival time", which makes it exact, cheap
//! and easy to keep atomically in Redis. `local` keeps the timestamps in
//! the proxy (each replica limits on its own); `global` keeps them in
//! Redis, updated by one Lua script per request with Redis's own clock, so
//! all replicas share one limit. When Redis cannot be reached within
//! [`REDIS_TIMEOUT`], the rule's failure mode decides: open (allow) or
//! closed (refuse).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Envoy's rate limit service API (the subset weft speaks, as a client).
pub mod rls {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

/// Longest wait for Redis before the failure mode applies.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// A request attribute a rule matches on or counts by.
pub use weft_core::l7::RateAttribute as Attribute;

/// What is known about a request, for rate limiting.
#[derive(Debug, Clone, Default)]
pub struct Attributes<'a> {
    /// The caller's identity.
    pub principal: Option<&'a str>,
    /// Request headers.
    pub headers: Option<&'a http::HeaderMap>,
    /// Verified JWT claims (string values).
    pub claims: Option<&'a HashMap<String, String>>,
    /// The path.
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
}

impl Attributes<'_> {
    fn get(&self, a: &Attribute) -> Option<String> {
        match a {
            Attribute::SourcePrincipal => self.principal.map(str::to_owned),
            Attribute::Header(h) => self
                .headers?
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Attribute::Claim(c) => self.claims?.get(c).cloned(),
            Attribute::Path => Some(self.path.to_owned()),
            Attribute::Method => Some(self.method.to_owned()),
        }
    }
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name, for metrics and keys.
    pub name: String,
    /// Any one must hold (attribute equals value); empty: every request.
    pub when: Vec<(Attribute, String)>,
    /// Counted per the values of these (empty: one counter for the rule).
    pub count_by: Vec<Attribute>,
    /// Requests per period.
    pub requests: u64,
    /// The period.
    pub period: Duration,
    /// Requests that may arrive at once (default: `requests`).
    pub burst: u64,
}

/// Local GCRA state: each descriptor's theoretical arrival time, in
/// milliseconds since `epoch`.
#[derive(Debug)]
pub struct LocalCounts {
    epoch: Instant,
    tats: Mutex<HashMap<String, u64>>,
}

impl Default for LocalCounts {
    fn default() -> Self {
        LocalCounts {
            epoch: Instant::now(),
            tats: Mutex::default(),
        }
    }
}

/// Where counts live.
pub enum Store {
    /// In this process.
    Local(LocalCounts),
    /// In Redis, shared by every replica.
    Global {
        /// The connection (reconnects by itself).
        redis: redis::aio::ConnectionManager,
        /// Allow requests when Redis is unreachable.
        fail_open: bool,
    },
    /// An external rate limit service (Envoy's RLS v3) decides; the
    /// rules only choose the descriptor sent.
    Service {
        /// The service's channel (connects lazily, reconnects by itself).
        client: rls::rate_limit_service_client::RateLimitServiceClient<tonic::transport::Channel>,
        /// `host:port`, for messages.
        address: String,
        /// The RLS domain.
        domain: String,
        /// Longest wait for a decision.
        timeout: Duration,
        /// Allow requests when the service fails or is slow.
        fail_open: bool,
    },
    /// Redis could not be reached when the limit was set up: the failure
    /// mode decides every request until it can.
    Unreachable {
        /// Why.
        reason: String,
        /// Allow requests meanwhile.
        fail_open: bool,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Local(_) => f.write_str("Local"),
            Store::Global { fail_open, .. } => write!(f, "Global(fail_open: {fail_open})"),
            Store::Service {
                address, domain, ..
            } => write!(f, "Service({address}, domain {domain})"),
            Store::Unreachable { reason, .. } => write!(f, "Unreachable({reason})"),
        }
    }
}

/// A service's rate limits.
#[derive(Debug)]
pub struct RateLimiter {
    /// Names keys in Redis (`namespace/name` of the policy).
    pub policy: String,
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Where counts live.
    pub store: Store,
    /// A hash of the policy it was built from; equal means reusable.
    pub signature: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rule that matched.
    pub rule: String,
    /// Allowed?
    pub allowed: bool,
    /// The rule's limit.
    pub limit: u64,
    /// Requests left in the bucket.
    pub remaining: u64,
    /// Until the next request would be allowed (when refused) or the
    /// bucket is full again (when allowed).
    pub reset: Duration,
    /// Set when the store failed and the failure mode decided.
    pub store_error: Option<String>,
}

/// GCRA on one timestamp: returns (allowed, new TAT, remaining, reset).
/// `tat` is the theoretical arrival time stored for the descriptor, in
/// the same unit as `now` (milliseconds).
pub fn gcra(
    now: u64,
    tat: Option<u64>,
    requests: u64,
    period_ms: u64,
    burst: u64,
) -> (bool, u64, u64, u64) {
    let interval = (period_ms / requests.max(1)).max(1);
    let capacity = burst.max(1) * interval;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    if new_tat > now + capacity {
        // Refused: the next one fits once `new_tat - capacity` has come.
        let retry = new_tat - capacity - now;
        let remaining = 0;
        return (false, tat, remaining, retry);
    }
    let remaining = (now + capacity - new_tat) / interval;
    (true, new_tat, remaining, new_tat - now)
}

/// The same algorithm in Lua, on Redis's clock: KEYS[1] the descriptor,
/// ARGV requests, period (ms), burst. Returns {allowed, remaining, reset}.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local requests = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local interval = math.max(1, math.floor(period / math.max(1, requests)))
local capacity = math.max(1, burst) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat > now + capacity then
  return {0, 0, new_tat - capacity - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return {1, math.floor((now + capacity - new_tat) / interval), new_tat - now}
";

/// The script, hashed once (Redis runs it by its SHA-1).
fn gcra_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(GCRA_LUA))
}

impl RateLimiter {
    /// The first rule whose conditions hold, with the request's counter key.
    pub fn rule_for(&self, a: &Attributes<'_>) -> Option<(&Rule, String)> {
        let rule = self.rules.iter().find(|r| {
            r.when.is_empty()
                || r.when
                    .iter()
                    .any(|(attr, v)| a.get(attr).as_deref() == Some(v))
        })?;
        let values: Vec<String> = rule
            .count_by
            .iter()
            .map(|k| a.get(k).unwrap_or_else(|| "-".into()))
            .collect();
        Some((
            rule,
            format!("weft:rl:{}:{}:{}", self.policy, rule.name, values.join("|")),
        ))
    }

    /// The RLS descriptor for `rule` and the request: `("rule", name)`,
    /// then each `countBy` as written with the request's value (`-` when
    /// it has none).
    pub fn descriptor(rule: &Rule, a: &Attributes<'_>) -> Vec<(String, String)> {
        let mut entries = vec![("rule".to_owned(), rule.name.clone())];
        for k in &rule.count_by {
            entries.push((k.to_string(), a.get(k).unwrap_or_else(|| "-".into())));
        }
        entries
    }

    /// Decides one request; `None` when no rule applies.
    pub async fn check(&self, a: &Attributes<'_>) -> Option<Decision> {
        let (rule, key) = self.rule_for(a)?;
        let period_ms = u64::try_from(rule.period.as_millis()).unwrap_or(u64::MAX);
        let decided = |allowed, remaining, reset_ms: u64, store_error| Decision {
            rule: rule.name.clone(),
            allowed,
            limit: rule.requests,
            remaining,
            reset: Duration::from_millis(reset_ms),
            store_error,
        };
        match &self.store {
            Store::Local(counts) => {
                let now = u64::try_from(counts.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let mut tats = counts.tats.lock().unwrap_or_else(|p| p.into_inner());
                let (allowed, new_tat, remaining, reset) = gcra(
                    now,
                    tats.get(&key).copied(),
                    rule.requests,
                    period_ms,
                    rule.burst,
                );
                if allowed {
                    tats.insert(key, new_tat);
                }
                Some(decided(allowed, remaining, reset, None))
            }
            Store::Unreachable { reason, fail_open } => {
                Some(decided(*fail_open, 0, 1000, Some(reason.clone())))
            }
            Store::Service {
                client,
                address,
                domain,
                timeout,
                fail_open,
            } => {
                let request = rls::RateLimitRequest {
                    domain: domain.clone(),
                    descriptors: vec![rls::RateLimitDescriptor {
                        entries: Self::descriptor(rule, a)
                            .into_iter()
                            .map(|(key, value)| rls::rate_limit_descriptor::Entry { key, value })
                            .collect(),
                    }],
                    hits_addend: 1,
                };
                let mut client = client.clone();
                let call = client.should_rate_limit(request);
                let failed = |why: String| {
                    Some(decided(
                        *fail_open,
                        0,
                        1000,
                        Some(format!("rate limit service at {address}: {why}")),
                    ))
                };
                match tokio::time::timeout(*timeout, call).await {
                    Ok(Ok(answer)) => match from_rls(&rule.name, &answer.into_inner()) {
                        Some(decision) => Some(decision),
                        None => failed("answered UNKNOWN".into()),
                    },
                    Ok(Err(status)) => failed(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => failed(format!("no answer within {timeout:?}")),
                }
            }
            Store::Global { redis, fail_open } => {
                let mut conn = redis.clone();
                let mut invocation = gcra_script().key(&key);
                invocation.arg(rule.requests).arg(period_ms).arg(rule.burst);
                let call = invocation.invoke_async::<(u64, u64, u64)>(&mut conn);
                match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                    Ok(Ok((allowed, remaining, reset))) => {
                        Some(decided(allowed == 1, remaining, reset, None))
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => format!("redis: {e}"),
                            _ => format!("redis did not answer within {REDIS_TIMEOUT:?}"),
                        };
                        Some(decided(*fail_open, 0, 1000, Some(why)))
                    }
                }
            }
        }
    }
}

/// The decision in an RLS answer (`None` for UNKNOWN): the limit,
/// remaining and reset from the first descriptor's status.
pub fn from_rls(rule: &str, answer: &rls::RateLimitResponse) -> Option<Decision> {
    use rls::rate_limit_response::Code;
    use rls::rate_limit_response::rate_limit::Unit;
    let allowed = match Code::try_from(answer.overall_code).ok()? {
        Code::Ok => true,
        Code::OverLimit => false,
        Code::Unknown => return None,
    };
    let status = answer.statuses.first();
    let current = status.and_then(|s| s.current_limit.as_ref());
    let unit_seconds = match current.and_then(|c| Unit::try_from(c.unit).ok()) {
        Some(Unit::Second) => 1,
        Some(Unit::Minute) => 60,
        Some(Unit::Hour) => 3600,
        Some(Unit::Day) => 86_400,
        Some(Unit::Week) => 7 * 86_400,
        Some(Unit::Month) => 30 * 86_400,
        Some(Unit::Year) => 365 * 86_400,
        Some(Unit::Unknown) | None => 1,
    };
    let reset = status.and_then(|s| s.duration_until_reset.as_ref()).map_or(
        Duration::from_secs(unit_seconds),
        |d| {
            Duration::new(
                u64::try_from(d.seconds).unwrap_or(0),
                u32::try_from(d.nanos).unwrap_or(0),
            )
        },
    );
    Some(Decision {
        rule: rule.to_owned(),
        allowed,
        limit: current.map_or(0, |c| u64::from(c.requests_per_unit)),
        remaining: status.map_or(0, |s| u64::from(s.limit_remaining)),
        reset,
        store_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        // 10 per second (one per 100 ms), burst 10.
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..15 {
            let (ok, next, _, _) = gcra(0, tat, 10, 1000, 10);
            if ok {
                allowed += 1;
                tat = Some(next);
            }
        }
        assert_eq!(allowed, 10, "the burst, at once");
        let (ok, _, _, retry) = gcra(50, tat, 10, 1000, 10);
        assert!(!ok);
        assert_eq!(retry, 50, "the next fits at 100 ms");
        let (ok, next, remaining, _) = gcra(100, tat, 10, 1000, 10);
        assert!(ok);
        assert_eq!(remaining, 0);
        // A long idle period refills the bucket (and no more).
        let (ok, _, remaining, _) = gcra(100_000, Some(next), 10, 1000, 10);
        assert!(ok);
        assert_eq!(remaining, 9);
    }

    #[test]
    fn rls_answers_become_decisions() {
        use rls::rate_limit_response::rate_limit::Unit;
        use rls::rate_limit_response::{Code, DescriptorStatus, RateLimit};
        let answer = |code: Code, reset: Option<i64>| rls::RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    requests_per_unit: 10,
                    unit: Unit::Minute as i32,
                    name: String::new(),
                }),
                limit_remaining: 3,
                duration_until_reset: reset.map(|seconds| rls::Duration { seconds, nanos: 0 }),
            }],
            response_headers_to_add: Vec::new(),
        };
        let ok = from_rls("r", &answer(Code::Ok, Some(12))).expect("decision");
        assert!(ok.allowed);
        assert_eq!(
            (ok.limit, ok.remaining, ok.reset),
            (10, 3, Duration::from_secs(12))
        );
        let over = from_rls("r", &answer(Code::OverLimit, None)).expect("decision");
        assert!(!over.allowed);
        assert_eq!(
            over.reset,
            Duration::from_secs(60),
            "the unit, without a reset"
        );
        assert_eq!(from_rls("r", &answer(Code::Unknown, None)), None);
        // No statuses at all: the code alone decides.
        let bare = rls::RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            ..Default::default()
        };
        let d = from_rls("r", &bare).expect("decision");
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (0, 0));
    }

    #[test]
    fn descriptors_name_the_rule_then_each_count_by() {
        let rule = Rule {
            name: "per-user".into(),
            when: Vec::new(),
            count_by: vec![
                Attribute::Header("x-user".into()),
                Attribute::SourcePrincipal,
                Attribute::Claim("tier".into()),
            ],
            requests: 0,
            period: Duration::ZERO,
            burst: 0,
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        let a = Attributes {
            principal: Some("spiffe://cluster.local/ns/shop/sa/a"),
            headers: Some(&headers),
            ..Attributes::default()
        };
        let pairs = RateLimiter::descriptor(&rule, &a);
        let want = [
            ("rule", "per-user"),
            ("header:x-user", "alice"),
            ("sourcePrincipal", "spiffe://cluster.local/ns/shop/sa/a"),
            ("claim:tier", "-"),
        ];
        assert_eq!(
            pairs,
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
    }

    fn limiter(rules: Vec<Rule>) -> RateLimiter {
        RateLimiter {
            policy: "shop/b".into(),
            rules,
            store: Store::Local(LocalCounts::default()),
            signature: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_by_header_first_match_wins_counted_per_caller() {
        let rule = |name: &str, when: Vec<(Attribute, String)>, requests| Rule {
            name: name.into(),
            when,
            count_by: vec![Attribute::SourcePrincipal],
            requests,
            period: Duration::from_secs(3600),
            burst: requests,
        };
        let l = limiter(vec![
            rule(
                "platinum",
                vec![
                    (
                        Attribute::Header("x-customer-tier".into()),
                        "platinum".into(),
                    ),
                    (Attribute::Claim("tier".into()), "platinum".into()),
                ],
                1000,
            ),
            rule("default", vec![], 100),
        ]);
        let mut platinum = http::HeaderMap::new();
        platinum.insert("x-customer-tier", "platinum".parse().expect("value"));
        let plain = http::HeaderMap::new();
        let attrs = |principal, headers| Attributes {
            principal: Some(principal),
            headers: Some(headers),
            claims: None,
            path: "/",
            method: "GET",
        };
        let a = "spiffe://cluster.local/ns/shop/sa/a";
        let c = "spiffe://cluster.local/ns/shop/sa/c";
        let mut ok = 0;
        for _ in 0..150 {
            ok += usize::from(l.check(&attrs(a, &plain)).await.is_some_and(|d| d.allowed));
        }
        assert_eq!(ok, 100, "default tier");
        let mut ok = 0;
        for _ in 0..1100 {
            ok += usize::from(
                l.check(&attrs(a, &platinum))
                    .await
                    .is_some_and(|d| d.allowed),
            );
        }
        assert_eq!(ok, 1000, "platinum tier, its own counter");
        // Another caller has its own counters.
        let d = l.check(&attrs(c, &plain)).await.expect("decision");
        assert!(d.allowed);
        assert_eq!(
            (d.rule.as_str(), d.limit, d.remaining),
            ("default", 100, 99)
        );
        // An hour later the bucket is full again.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(l.check(&attrs(a, &plain)).await.is_some_and(|d| d.allowed));
    }
}
