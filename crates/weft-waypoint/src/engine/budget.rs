//! Retry budgets: retries may add only a bounded share of load, so a
//! failing service is not hammered into the ground.
//!
//! Two budgets, usable together (a retry needs both):
//! - [`RateBudget`] (Linkerd's model): over a sliding window, retries may
//!   not exceed `ratio` × requests plus a floor of `min_per_second` ×
//!   window seconds.
//! - [`ConcurrencyBudget`] (Envoy's and Istio's `retryBudget`): retries in
//!   flight may not exceed `percent` of active requests, with a floor of
//!   `min_concurrency`.
//!
//! Time is `tokio::time::Instant`, so tests run with paused time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets the window is divided into.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    /// Start of bucket 0 of the ring's current lap.
    epoch: Instant,
    /// Index of the newest bucket, counted from `epoch` (never wraps back).
    newest: u64,
    ring: [Bucket; BUCKETS],
}

/// Retries bounded by a share of the request rate over a sliding window.
#[derive(Debug)]
pub struct RateBudget {
    ratio: f64,
    min_per_second: f64,
    window: Duration,
    state: Mutex<Window>,
}

impl RateBudget {
    /// A budget of `ratio` (0.2 = 20 % extra load) plus `min_per_second`,
    /// measured over `window` (Linkerd uses 10 s).
    pub fn new(ratio: f64, min_per_second: f64, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        RateBudget {
            ratio: ratio.max(0.0),
            min_per_second: min_per_second.max(0.0),
            window,
            state: Mutex::new(Window {
                epoch: Instant::now(),
                newest: 0,
                ring: [Bucket::default(); BUCKETS],
            }),
        }
    }

    fn bucket_len(&self) -> Duration {
        self.window / BUCKETS as u32
    }

    /// Runs `f` on the window advanced to now.
    fn with<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now_index = (Instant::now().duration_since(w.epoch).as_nanos()
            / self.bucket_len().as_nanos().max(1)) as u64;
        // Clear every bucket that slid out of the window since the last call.
        let stale = now_index.saturating_sub(w.newest).min(BUCKETS as u64);
        for i in 1..=stale {
            let slot = ((w.newest + i) % BUCKETS as u64) as usize;
            w.ring[slot] = Bucket::default();
        }
        w.newest = w.newest.max(now_index);
        f(&mut w)
    }

    fn current(w: &mut Window) -> &mut Bucket {
        &mut w.ring[(w.newest % BUCKETS as u64) as usize]
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&self) {
        self.with(|w| Self::current(w).requests += 1);
    }

    /// Takes one retry from the budget if there is room; `false` means the
    /// budget is exhausted and the original failure must be returned.
    pub fn try_withdraw(&self) -> bool {
        let floor = self.min_per_second * self.window.as_secs_f64();
        self.with(|w| {
            let (requests, retries) = w
                .ring
                .iter()
                .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
            let allowed = self.ratio * requests as f64 + floor;
            if (retries + 1) as f64 <= allowed {
                Self::current(w).retries += 1;
                true
            } else {
                false
            }
        })
    }

    /// (requests, retries) in the window now.
    pub fn totals(&self) -> (u64, u64) {
        self.with(|w| {
            w.ring
                .iter()
                .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
        })
    }
}

/// Retries in flight bounded by a share of the requests in flight.
#[derive(Debug)]
pub struct ConcurrencyBudget {
    percent: f64,
    min_concurrency: u64,
    active_requests: AtomicU64,
    active_retries: AtomicU64,
}

/// Holds one active request or retry; released on drop.
#[derive(Debug)]
pub struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConcurrencyBudget {
    /// Retries in flight may reach `percent` (20.0 = 20 %) of requests in
    /// flight, and at least `min_concurrency` (Envoy's defaults: 20 %, 3).
    pub fn new(percent: f64, min_concurrency: u64) -> Self {
        ConcurrencyBudget {
            percent: percent.max(0.0),
            min_concurrency,
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
        }
    }

    /// Marks a request active for the life of the guard.
    pub fn request(&self) -> Active<'_> {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        Active(&self.active_requests)
    }

    /// A retry slot if there is room.
    pub fn try_retry(&self) -> Option<Active<'_>> {
        let requests = self.active_requests.load(Ordering::Relaxed) as f64;
        let limit = ((self.percent / 100.0) * requests).max(self.min_concurrency as f64);
        let now = self.active_retries.fetch_add(1, Ordering::Relaxed);
        if (now + 1) as f64 <= limit {
            Some(Active(&self.active_retries))
        } else {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_plus_floor_over_the_window() {
        // 20 % of requests plus 1 retry per second over 10 s.
        let budget = RateBudget::new(0.2, 1.0, Duration::from_secs(10));
        // Floor alone: 10 retries with no traffic.
        let granted = (0..50).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10);
        // 100 requests buy 20 more.
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..50).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 20);
        assert_eq!(budget.totals(), (100, 30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RateBudget::new(0.2, 0.0, Duration::from_secs(10));
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 20);
        // Half a window later the old requests still count; no new room.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw());
        // After a whole window they and the retries have slid out.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(budget.totals(), (0, 0));
        assert!(!budget.try_withdraw(), "no requests, no floor: no retries");
        budget.deposit();
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(budget.try_withdraw(), "5 requests × 0.2 = 1 retry");
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_idle_gap_clears_everything() {
        let budget = RateBudget::new(0.5, 0.0, Duration::from_secs(1));
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(budget.totals(), (0, 0));
    }

    #[test]
    fn concurrency_budget_has_a_floor_and_a_share() {
        let budget = ConcurrencyBudget::new(20.0, 3);
        let requests: Vec<Active<'_>> = (0..10).map(|_| budget.request()).collect();
        // 20 % of 10 is 2, the floor 3 wins.
        let retries: Vec<Active<'_>> = (0..10).filter_map(|_| budget.try_retry()).collect();
        assert_eq!(retries.len(), 3);
        drop(retries);
        let more: Vec<Active<'_>> = (0..40).map(|_| budget.request()).collect();
        // 50 active: 20 % is 10.
        let retries: Vec<Active<'_>> = (0..20).filter_map(|_| budget.try_retry()).collect();
        assert_eq!(retries.len(), 10);
        drop((requests, more, retries));
    }
}
