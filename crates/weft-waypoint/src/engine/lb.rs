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

/// Endpoint indices, on the stack for up to 16 endpoints (a choice is made
/// per request).
type Indices = smallvec::SmallVec<[usize; 16]>;

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
        }
    }

    /// The same balancer with `localityLbSetting` applied.
    pub fn with_locality(mut self, setting: weft_core::l7::LocalityLb) -> Self {
        self.locality = setting;
        self
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
        let all = || (0..self.endpoints.len()).collect::<Indices>();
        // Without outlier detection nothing is ever ejected: no clock read
        // and no lock per endpoint.
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
        match (self.policy, key) {
            (Policy::RoundRobin, _) => {
                Some(tier[self.turn.fetch_add(1, Ordering::Relaxed) % tier.len()])
            }
            (Policy::Random, _) => Some(tier[a % tier.len()]),
            (Policy::Hash, Some(key)) => {
                let ring = self.ring.get_or_init(|| ring(&self.endpoints));
                let start = ring.partition_point(|(point, _)| *point < key);
                ring.iter()
                    .cycle()
                    .skip(start)
                    .take(ring.len())
                    .map(|(_, i)| *i)
                    .find(|i| tier.contains(i))
            }
            (Policy::LeastRequest | Policy::Hash, _) => {
                let (x, y) = (tier[a % tier.len()], tier[b % tier.len()]);
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
mod tests {
    use super::*;

    fn balancer(outlier: Option<OutlierDetection>) -> Balancer {
        let ep = |port: u16, loc: &str| {
            Endpoint::new(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Locality::parse(loc).expect("locality"),
            )
        };
        Balancer::new(
            vec![ep(1, "eu/a"), ep(2, "eu/a"), ep(3, "eu/b"), ep(4, "us/c")],
            Locality::parse("eu/a").expect("locality"),
            outlier,
        )
    }

    fn fail() -> Outcome {
        Outcome::Response {
            status: 503,
            grpc_status: None,
        }
    }

    #[test]
    fn distances() {
        let here = Locality::parse("eu/a/1").expect("locality");
        let cases = [
            ("eu/a/1", 0),
            ("eu/a/2", 1),
            ("eu/b", 2),
            ("us/a/1", 3),
            ("", 3),
        ];
        for (other, want) in cases {
            assert_eq!(
                here.distance(&Locality::parse(other).expect("locality")),
                want,
                "{other}"
            );
        }
    }

    #[test]
    fn least_request_of_two_in_the_closest_tier() {
        let b = balancer(None);
        // Only endpoints 0 and 1 (zone a) are ever chosen.
        for a in 0..10 {
            assert!(b.pick(a, a + 1, None).is_some_and(|i| i < 2));
        }
        let _busy = b.start(0);
        assert_eq!(b.pick(0, 1, None), Some(1), "the less busy of the two");
        assert_eq!(b.pick(1, 0, None), Some(1));
    }

    #[test]
    fn policies_within_the_tier() {
        let rr = balancer(None).with_policy(Policy::RoundRobin);
        let picks: Vec<Option<usize>> = (0..4).map(|_| rr.pick(0, 0, None)).collect();
        assert_eq!(picks, [Some(0), Some(1), Some(0), Some(1)]);
        let random = balancer(None).with_policy(Policy::Random);
        assert_eq!(random.pick(3, 0, None), Some(1));
        // The same key always lands on the same endpoint; keys spread.
        let hashed = balancer(None).with_policy(Policy::Hash);
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..50u64 {
            let key = hash_key(&user.to_be_bytes());
            let first = hashed.pick(0, 1, Some(key));
            assert_eq!(hashed.pick(1, 0, Some(key)), first);
            seen.extend(first);
        }
        assert_eq!(seen.len(), 2, "both zone-a endpoints get keys");
        // An endpoint that leaves moves only its own keys (ring hash).
        let same_zone = |ports: &[u16]| {
            let eps = ports
                .iter()
                .map(|p| {
                    Endpoint::new(
                        SocketAddr::from(([127, 0, 0, 1], *p)),
                        Locality::parse("eu/a").expect("locality"),
                    )
                })
                .collect();
            Balancer::new(eps, Locality::parse("eu/a").expect("locality"), None)
                .with_policy(Policy::Hash)
        };
        let (four, three) = (same_zone(&[1, 2, 3, 4]), same_zone(&[1, 2, 3]));
        let addr_of = |b: &Balancer, k: u64| {
            b.pick(0, 0, Some(hash_key(&k.to_be_bytes())))
                .map(|i| b.endpoints()[i].addr.port())
        };
        let mut moved = 0;
        for k in 0..400u64 {
            let (was, now) = (addr_of(&four, k), addr_of(&three, k));
            if was != Some(4) {
                assert_eq!(was, now, "key {k} moved though its endpoint stayed");
            } else {
                moved += 1;
            }
        }
        assert!(
            (50..150).contains(&moved),
            "{moved} of 400 keys were on the 4th endpoint"
        );
    }

    #[test]
    fn failover_distribute_and_off() {
        use weft_core::l7::LocalityLb;
        let ep = |port: u16, loc: &str| {
            Endpoint::new(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Locality::parse(loc).expect("locality"),
            )
        };
        // Only other regions have endpoints: failover names the one to use.
        let b = Balancer::new(
            vec![ep(1, "us/x"), ep(2, "ap/y")],
            Locality::parse("eu/a").expect("locality"),
            None,
        );
        let b = b.with_locality(LocalityLb {
            failover: vec![("eu".into(), "ap".into())],
            ..LocalityLb::default()
        });
        for a in 0..6 {
            assert_eq!(b.pick(a, a + 1, None), Some(1), "eu fails over to ap");
        }
        // distribute: 80 % stays in zone a, 20 % goes to zone b.
        let d = balancer(None).with_locality(LocalityLb {
            distribute: vec![(
                "eu/a/*".into(),
                vec![("eu/a/*".into(), 80), ("eu/b/*".into(), 20)],
            )],
            ..LocalityLb::default()
        });
        let to_b = (0..100).filter(|a| d.pick(*a, 0, None) == Some(2)).count();
        assert_eq!(to_b, 20);
        // Off: every endpoint is a candidate.
        let off = balancer(None).with_locality(LocalityLb {
            enabled: false,
            ..LocalityLb::default()
        });
        let seen: std::collections::BTreeSet<usize> =
            (0..8).filter_map(|a| off.pick(a, a, None)).collect();
        assert_eq!(seen.len(), 4);
        // failoverPriority ranks replace locality: rank 0 first, then 1.
        let mut far = ep(7, "us/x");
        far.priority = Some(0);
        let mut near = ep(8, "eu/a");
        near.priority = Some(1);
        let ranked = Balancer::new(
            vec![far, near],
            Locality::parse("eu/a").expect("locality"),
            None,
        );
        assert_eq!(ranked.pick(0, 1, None), Some(0));
        // Another cluster comes after this one, however close its zone.
        let mut there = ep(9, "eu/a");
        there.elsewhere = true;
        let home = ep(10, "us/x");
        let clusters = Balancer::new(
            vec![there, home],
            Locality::parse("eu/a").expect("locality"),
            None,
        );
        for a in 0..4 {
            assert_eq!(clusters.pick(a, a + 1, None), Some(1), "own cluster first");
        }
        assert!(locality_matches(
            "eu/*",
            &Locality::parse("eu/a/1").expect("locality")
        ));
        assert!(!locality_matches(
            "eu/b/*",
            &Locality::parse("eu/a/1").expect("locality")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_fails_over_and_recovers_with_growing_times() {
        let od = OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 100,
        };
        let b = balancer(Some(od));
        for i in [0, 1] {
            b.report(i, fail());
            b.report(i, fail());
            assert!(!b.is_ejected(i), "two failures are not enough");
            b.report(i, fail());
            assert!(b.is_ejected(i));
        }
        // Zone a is out: zone b serves.
        assert_eq!(b.pick(0, 1, None), Some(2));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            b.pick(0, 1, None).is_some_and(|i| i < 2),
            "back after the ejection time"
        );
        // A second ejection lasts twice as long.
        for _ in 0..3 {
            b.report(0, fail());
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(b.is_ejected(0));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!b.is_ejected(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_max_percent_holds() {
        let od = OutlierDetection {
            consecutive_5xx: Some(2),
            max_ejection_percent: 25,
            ..OutlierDetection::default()
        };
        let b = balancer(Some(od));
        b.report(0, fail());
        b.report(
            0,
            Outcome::Response {
                status: 200,
                grpc_status: None,
            },
        );
        b.report(0, fail());
        assert!(!b.is_ejected(0));
        b.report(0, fail());
        assert!(b.is_ejected(0));
        // 25 % of 4 is one endpoint: the second stays in.
        b.report(1, fail());
        b.report(1, fail());
        assert!(!b.is_ejected(1));
    }
}
