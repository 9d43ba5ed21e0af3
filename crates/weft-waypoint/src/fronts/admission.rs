//! Who may hold a connection to a public listener, and for how long.
//!
//! Every accepted connection asks [`Admission::admit`] for a [`Ticket`]
//! before anything is read from it. A source address holds at most
//! [`ConnLimits::max_per_source`] connections. When the listener is full,
//! the newest idle connection (no request in flight: still in its TLS
//! handshake, before its first request, or between requests) is told to
//! close and the new one takes its place; established callers with
//! requests in flight are never shed. Only when nothing is idle is the
//! new connection refused.
//!
//! Each connection also has deadlines ([`ConnLimits`]): its first request
//! head within `header_timeout`, no more than `idle_timeout` without a
//! request in flight, and at most `max_duration` in all (then it is asked
//! to finish gracefully). A flood of connections that open and then say
//! nothing — TCP, TLS or an HTTP/2 preface alone — is bounded in count
//! per source, in time, and so in memory.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

/// Longest a client may take to finish the TLS handshake (or, on a
/// passthrough listener, to send its ClientHello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of one public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// From accept to the end of the first request head (TLS handshake
    /// included), and for each later HTTP/1 request head once it starts
    /// (Envoy's `request_headers_timeout`).
    pub header_timeout: Duration,
    /// Longest stretch with no request in flight (Envoy's `idle_timeout`).
    pub idle_timeout: Duration,
    /// Longest a connection lives before it is asked to finish (Envoy's
    /// `max_connection_duration`); `None`: no limit.
    pub max_duration: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 16 * 1024,
            max_per_source: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_duration: None,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source already holds [`ConnLimits::max_per_source`].
    PerSource,
    /// The listener is full and no connection is idle.
    Full,
}

impl Refused {
    /// The `reason` label of `weft_gateway_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::PerSource => "per_source_limit",
            Refused::Full => "limit",
        }
    }
}

/// One connection's admission, held while it is open.
#[derive(Debug)]
struct Held {
    source: IpAddr,
    activity: Arc<Activity>,
}

/// What a connection's task shares with the admission: requests in
/// flight, when it last changed, and the signal to close.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `started` when the last request ended.
    changed_ms: AtomicU64,
    /// Times it was parked (HTTP/1.1, [`crate::fronts::downstream`]).
    parked: AtomicU64,
    /// Told to close (shed for a newer connection).
    pub close: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// A connection's, as it is accepted.
    pub fn new() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            changed_ms: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            close: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.changed_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started; the guard marks its end.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // No clock read here: `changed_ms` only counts once the connection
        // is idle again, and the request's end sets it (`InFlight`).
        InFlight(self.clone())
    }

    /// No request is in flight.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Requests started on this connection so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Times this connection was parked so far.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Counts a parking.
    pub(crate) fn park(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }

    /// When this connection must close if nothing changes, and why.
    pub fn deadline(&self, limits: &ConnLimits) -> (Instant, &'static str) {
        let by_duration = limits
            .max_duration
            .map(|d| (self.started + d, "max_duration"));
        let by_idle = self.idle().then(|| {
            let since =
                self.started + Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
            if self.requests.load(Ordering::Relaxed) == 0 {
                (self.started + limits.header_timeout, "header_timeout")
            } else {
                (since + limits.idle_timeout, "idle_timeout")
            }
        });
        [by_duration, by_idle]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
            // Far enough to mean "never"; rechecked when a request ends.
            .unwrap_or_else(|| (Instant::now() + Duration::from_secs(3600), ""))
    }
}

/// Marks a request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request in flight until the body ends,
/// so a long download is never taken for an idle connection.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// Wraps `inner`, holding `in_flight` until it is dropped.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Admission {
    limits: ConnLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    open: BTreeMap<u64, Held>,
    per_source: HashMap<IpAddr, usize>,
}

impl State {
    fn release(&mut self, id: u64) {
        if let Some(held) = self.open.remove(&id)
            && let Some(n) = self.per_source.get_mut(&held.source)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&held.source);
            }
        }
    }
}

/// A connection's place in its listener; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    /// The connection's activity (requests in flight, the close signal).
    pub activity: Arc<Activity>,
    /// Whether admitting it shed an idle connection.
    pub shed_another: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().release(self.id);
    }
}

impl Admission {
    /// An empty listener with `limits`.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Admits a connection from `source`, shedding the newest idle one
    /// when the listener is full.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refused> {
        let mut state = self.lock();
        if state.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source.max(1)
        {
            return Err(Refused::PerSource);
        }
        let mut shed_another = false;
        if state.open.len() >= self.limits.max_connections.max(1) {
            let newest_idle = state
                .open
                .iter()
                .rev()
                .find(|(_, h)| h.activity.idle())
                .map(|(id, _)| *id);
            let Some(victim) = newest_idle else {
                return Err(Refused::Full);
            };
            if let Some(held) = state.open.get(&victim) {
                held.activity.close.notify_one();
            }
            state.release(victim);
            shed_another = true;
        }
        let id = state.next;
        state.next += 1;
        let activity = Arc::new(Activity::new());
        state.open.insert(
            id,
            Held {
                source,
                activity: activity.clone(),
            },
        );
        *state.per_source.entry(source).or_default() += 1;
        drop(state);
        Ok(Ticket {
            admission: self.clone(),
            id,
            activity,
            shed_another,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 9, last])
    }

    fn limits(max: usize, per_source: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            max_per_source: per_source,
            ..ConnLimits::default()
        }
    }

    #[test]
    fn a_source_holds_at_most_its_share() {
        let a = Admission::new(limits(10, 2));
        let t1 = a.admit(ip(1)).expect("first");
        let _t2 = a.admit(ip(1)).expect("second");
        assert_eq!(a.admit(ip(1)).err(), Some(Refused::PerSource));
        let _other = a.admit(ip(2)).expect("another source");
        drop(t1);
        let _t3 = a.admit(ip(1)).expect("a place was freed");
        assert_eq!(a.open(), 3);
    }

    #[tokio::test]
    async fn a_full_listener_sheds_its_newest_idle_connection() {
        let a = Admission::new(limits(3, 10));
        let old_idle = a.admit(ip(1)).expect("old, idle");
        let busy = a.admit(ip(2)).expect("busy");
        let _request = busy.activity.request();
        let newest_idle = a.admit(ip(3)).expect("newest, idle");
        // Full: the newest idle one (not the busy one, not the older idle
        // one) is told to close and loses its place.
        let new = a.admit(ip(4)).expect("admitted by shedding");
        assert!(new.shed_another);
        tokio::time::timeout(
            Duration::from_secs(1),
            newest_idle.activity.close.notified(),
        )
        .await
        .expect("the newest idle connection was told to close");
        assert_eq!(a.open(), 3);
        // Dropping the shed one's ticket later frees nothing twice.
        drop(newest_idle);
        assert_eq!(a.open(), 3);
        // Now the newest idle one is `new`.
        let newer = a.admit(ip(5)).expect("shed again");
        assert!(newer.shed_another);
        drop(old_idle);
    }

    #[test]
    fn nothing_idle_means_refused() {
        let a = Admission::new(limits(2, 10));
        let t1 = a.admit(ip(1)).expect("1");
        let t2 = a.admit(ip(2)).expect("2");
        let _r1 = t1.activity.request();
        let _r2 = t2.activity.request();
        assert_eq!(a.admit(ip(3)).err(), Some(Refused::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let l = ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_duration: Some(Duration::from_secs(600)),
            ..ConnLimits::default()
        };
        let a = Admission::new(l);
        let t = a.admit(ip(1)).expect("admitted");
        let start = t.activity.started;
        // Before any request: the header timeout.
        assert_eq!(
            t.activity.deadline(&l),
            (start + Duration::from_secs(10), "header_timeout")
        );
        // In flight: only the connection's lifetime bounds it.
        let r = t.activity.request();
        assert_eq!(
            t.activity.deadline(&l),
            (start + Duration::from_secs(600), "max_duration")
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(r);
        // Idle after a request: the idle timeout from the request's end.
        let (at, why) = t.activity.deadline(&l);
        assert_eq!(why, "idle_timeout");
        assert!(at >= start + Duration::from_secs(65), "{:?}", at - start);
    }
}
