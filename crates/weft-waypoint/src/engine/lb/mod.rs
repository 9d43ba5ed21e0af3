//! Endpoint choice at L7: locality first (same zone, then same region,
//! then anywhere), outliers ejected, and power-of-two-choices least-request
//! within the chosen tier.
//!
//! Outlier detection follows `DestinationRule.outlierDetection`: an
//! endpoint with `consecutive5xxErrors` (any 5xx, resets, connect failures,
//! timeouts) or `consecutiveGatewayErrors` (502, 503, 504 and the same
//! transport failures) in a row is ejected for `baseEjectionTime` × the
//! number of times it has been ejected, as long as no more than
//! `maxEjectionPercent` of the endpoints are out. When every endpoint of
//! the caller's locality is out, traffic goes to the next locality, and
//! comes back once they return and answer.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::retry::Outcome;

/// Where something runs: [`weft_core::model::Locality`], one type for the
/// whole mesh.
pub use weft_core::model::Locality;

/// `DestinationRule.trafficPolicy.outlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Ejects after this many 5xx-class failures in a row.
    pub consecutive_5xx: Option<u32>,
    /// Ejects after this many gateway failures in a row.
    pub consecutive_gateway_errors: Option<u32>,
    /// Ejection time, multiplied by the times ejected.
    pub base_ejection_time: Duration,
    /// At most this share of endpoints ejected at once (percent).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    /// Envoy's defaults: 5 consecutive 5xx, 30 s, 10 %.
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// One endpoint and what the balancer tracks about it.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// Its locality.
    pub locality: Locality,
    /// Its `failoverPriority` rank (0 best), when one is configured.
    pub priority: Option<u8>,
    /// Whether it is in another cluster than the proxy: with locality
    /// preference on, after every endpoint of the proxy's own cluster.
    pub elsewhere: bool,
    /// `addr` as a URI authority, made once: requests to the endpoint
    /// name it without formatting the address each time.
    authority: http::uri::Authority,
    active: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// An endpoint in `locality`.
    pub fn new(addr: SocketAddr, locality: Locality) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .expect("an IP address and port is a valid authority");
        Endpoint {
            addr,
            locality,
            priority: None,
            elsewhere: false,
            authority,
            active: AtomicUsize::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    /// Its address as a URI authority.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    fn ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| now < t)
    }
}

/// Marks a request active on an endpoint until dropped.
#[derive(Debug)]
pub struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an endpoint is chosen within the closest healthy locality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// The less busy of two drawn at random (the default).
    #[default]
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// At random.
    Random,
    /// By a hash of a request attribute, on a hash ring (Envoy's ring
    /// hash: each endpoint at many points of a 64-bit ring, a key served
    /// by the first point at or after it whose endpoint is eligible), so a
    /// key keeps its endpoint and moves minimally when endpoints come and
    /// go. Maglev settings use the same ring.
    Hash,
}

/// Endpoint indices, on the stack for up to 8 endpoints (a choice is made
/// per request).
type Indices = smallvec::SmallVec<[usize; 8]>;

/// Points each endpoint has on the ring. Fixed, so that endpoints coming
/// and going never move the keys of the others.
pub const RING_POINTS: usize = 128;

/// Whether locality pattern `pattern` (`region/zone/subzone`, `*` for
/// the rest) covers `l`.
pub fn locality_matches(pattern: &str, l: &Locality) -> bool {
    let parts = [&l.region, &l.zone, &l.subzone];
    for (i, p) in pattern.split('/').enumerate() {
        if p == "*" {
            return true;
        }
        if parts.get(i).is_none_or(|x| x.as_str() != p) {
            return false;
        }
    }
    true
}

/// The endpoints of one service as a proxy in `local` balances them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Endpoint>,
    local: Locality,
    outlier: Option<OutlierDetection>,
    policy: Policy,
    turn: AtomicUsize,
    locality: weft_core::l7::LocalityLb,
    ring: std::sync::OnceLock<Vec<(u64, usize)>>,
    /// Whether every endpoint has the same rank (worked out once).
    one_tier: std::sync::OnceLock<bool>,
}

impl Balancer {
    /// A balancer for a proxy in `local`.
    pub fn new(
        endpoints: Vec<Endpoint>,
        local: Locality,
        outlier: Option<OutlierDetection>,
    ) -> Self {
        Balancer {
            endpoints,
            local,
            outlier,
            policy: Policy::default(),
            turn: AtomicUsize::new(0),
            locality: weft_core::l7::LocalityLb::default(),
            ring: std::sync::OnceLock::new(),
            one_tier: std::sync::OnceLock::new(),
        }
    }

    /// The same balancer with `localityLbSetting` applied.
    pub fn with_locality(mut self, setting: weft_core::l7::LocalityLb) -> Self {
        self.locality = setting;
        self.one_tier = std::sync::OnceLock::new();
        self
    }

    /// Whether every endpoint has the same rank: no locality or priority
    /// sets one before another.
    fn one_tier(&self) -> bool {
        *self.one_tier.get_or_init(|| {
            let mut ranks = (0..self.endpoints.len()).map(|i| self.rank(i));
            let first = ranks.next();
            ranks.all(|r| Some(r) == first)
        })
    }

    /// How far endpoint `i` is, with locality preference and `failover`
    /// applied (lower is closer; 0 when preference is off).
    fn rank(&self, i: usize) -> u8 {
        if !self.locality.enabled {
            return 0;
        }
        if let Some(p) = self.endpoints[i].priority {
            return p;
        }
        let there = &self.endpoints[i].locality;
        let d = self.local.distance(there);
        let preferred_region = self
            .locality
            .failover
            .iter()
            .any(|(from, to)| *from == self.local.region && *to == there.region);
        let d = match d {
            3 if !self.locality.failover.is_empty() && !preferred_region => 4,
            d => d,
        };
        if self.endpoints[i].elsewhere {
            d + 5
        } else {
            d
        }
    }

    /// The same balancer choosing by `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Its policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Chooses an endpoint: the closest locality with an endpoint not
    /// ejected (all of them if every one is ejected), then by the policy —
    /// `a` and `b` are random draws (any integers), `key` the request's
    /// hash key (consistent hashing; without one, least request).
    pub fn pick(&self, a: usize, b: usize, key: Option<u64>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if self.outlier.is_none() && self.locality.distribute.is_empty() && self.one_tier() {
            // Nothing is ever ejected and every endpoint ranks the same: one
            // tier of all, chosen from without listing it (or reading the
            // clock, or locking each endpoint).
            return self.choose(n, |k| k, |_| true, (a, b), key);
        }
        let all = || (0..n).collect::<Indices>();
        let pool = match self.outlier {
            None => all(),
            Some(_) => {
                let now = Instant::now();
                let healthy: Indices = (0..self.endpoints.len())
                    .filter(|&i| !self.endpoints[i].ejected(now))
                    .collect();
                if healthy.is_empty() { all() } else { healthy }
            }
        };
        // `distribute`: traffic from this locality is split by weight
        // across target localities (when the drawn one has endpoints).
        if let Some((_, targets)) = self
            .locality
            .distribute
            .iter()
            .find(|(from, _)| locality_matches(from, &self.local))
        {
            let total: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
            if total > 0 {
                let mut point = (a as u64) % total;
                let target = targets.iter().find(|(_, w)| {
                    let hit = point < u64::from(*w);
                    point = point.saturating_sub(u64::from(*w));
                    hit
                });
                if let Some((pattern, _)) = target {
                    let chosen: Indices = pool
                        .iter()
                        .copied()
                        .filter(|&i| locality_matches(pattern, &self.endpoints[i].locality))
                        .collect();
                    if !chosen.is_empty() {
                        return Some(chosen[b % chosen.len()]);
                    }
                }
            }
        }
        let best = pool.iter().map(|&i| self.rank(i)).min()?;
        let tier: Indices = pool.into_iter().filter(|&i| self.rank(i) == best).collect();
        self.choose(tier.len(), |k| tier[k], |i| tier.contains(&i), (a, b), key)
    }

    /// Chooses by the policy within a tier of `len` endpoints (not empty):
    /// `at(k)` is the tier's `k`th endpoint, `has(i)` whether endpoint `i`
    /// is in it.
    fn choose(
        &self,
        len: usize,
        at: impl Fn(usize) -> usize,
        has: impl Fn(usize) -> bool,
        (a, b): (usize, usize),
        key: Option<u64>,
    ) -> Option<usize> {
        match (self.policy, key) {
            (Policy::RoundRobin, _) => Some(at(self.turn.fetch_add(1, Ordering::Relaxed) % len)),
            (Policy::Random, _) => Some(at(a % len)),
            (Policy::Hash, Some(key)) => {
                let ring = self.ring.get_or_init(|| ring(&self.endpoints));
                let start = ring.partition_point(|(point, _)| *point < key);
                ring.iter()
                    .cycle()
                    .skip(start)
                    .take(ring.len())
                    .map(|(_, i)| *i)
                    .find(|&i| has(i))
            }
            (Policy::LeastRequest | Policy::Hash, _) => {
                let (x, y) = (at(a % len), at(b % len));
                let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
                Some(if load(y) < load(x) { y } else { x })
            }
        }
    }

    /// Marks a request active on endpoint `i`.
    pub fn start(&self, i: usize) -> Active<'_> {
        let active = &self.endpoints[i].active;
        active.fetch_add(1, Ordering::Relaxed);
        Active(active)
    }

    /// Records how a try on endpoint `i` ended; may eject it.
    pub fn report(&self, i: usize, outcome: Outcome) {
        let Some(od) = &self.outlier else {
            return;
        };
        let e = &self.endpoints[i];
        let (five_xx, gateway) = match outcome {
            Outcome::Response { status, .. } => {
                ((500..600).contains(&status), matches!(status, 502..=504))
            }
            Outcome::Timeout
            | Outcome::ConnectFailure
            | Outcome::Reset
            | Outcome::RefusedStream => (true, true),
        };
        let bump = |counter: &AtomicU32, failed: bool| {
            if failed {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let n5 = bump(&e.consecutive_5xx, five_xx);
        let ng = bump(&e.consecutive_gateway, gateway);
        let tripped = od.consecutive_5xx.is_some_and(|t| t > 0 && n5 >= t)
            || od
                .consecutive_gateway_errors
                .is_some_and(|t| t > 0 && ng >= t);
        if tripped {
            self.eject(i, od);
        }
    }

    fn eject(&self, i: usize, od: &OutlierDetection) {
        let now = Instant::now();
        let e = &self.endpoints[i];
        if e.ejected(now) {
            return;
        }
        let out = self.endpoints.iter().filter(|x| x.ejected(now)).count();
        let limit = (self.endpoints.len() * od.max_ejection_percent as usize).div_ceil(100);
        if out + 1 > limit.max(1) {
            return;
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now + od.base_ejection_time.saturating_mul(times);
        *e.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        e.consecutive_5xx.store(0, Ordering::Relaxed);
        e.consecutive_gateway.store(0, Ordering::Relaxed);
        tracing::info!(endpoint = %e.addr, times, until = ?od.base_ejection_time.saturating_mul(times), "outlier ejected");
    }

    /// Whether endpoint `i` is ejected now.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.endpoints[i].ejected(Instant::now())
    }
}

/// The hash ring of `endpoints`: each at [`RING_POINTS`] points, sorted.
/// Hashes use fixed keys, so the ring is the same in every process and
/// after restarts.
fn ring(endpoints: &[Endpoint]) -> Vec<(u64, usize)> {
    use std::hash::{Hash, Hasher};
    let per = RING_POINTS;
    let mut points: Vec<(u64, usize)> = endpoints
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            (0..per).map(move |replica| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (e.addr, replica).hash(&mut h);
                (h.finish(), i)
            })
        })
        .collect();
    points.sort_unstable();
    points
}

/// A hash key for a string (a header or cookie value, an address).
pub fn hash_key(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
