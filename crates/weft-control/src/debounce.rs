//! Coalescing bursts of file events into one reload: wait for a quiet
//! period, but never longer than a maximum delay after the first event, so
//! a `git pull` touching 500 files yields one push and a steady trickle of
//! writes still gets applied. A source that never sends half a change
//! (the Kubernetes API) may also take an event that ends a quiet spell
//! at once (`idle_at_once`): one change on an idle control plane is
//! applied without waiting, and what follows is coalesced as usual.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// Debounce settings.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Reload once no event arrived for this long.
    pub quiet: Duration,
    /// ... or once this long has passed since the first event of a burst.
    pub max_delay: Duration,
    /// An event that arrives after at least `quiet` without any (nothing
    /// pending when the wait began) is taken at once.
    pub idle_at_once: bool,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            idle_at_once: false,
        }
    }
}

impl Debounce {
    /// Waits for the next burst of `events` to settle. Returns `false` when
    /// the sender is gone and no burst is pending.
    pub async fn next(&self, events: &mut mpsc::Receiver<()>) -> bool {
        let waiting_since = Instant::now();
        match events.try_recv() {
            Ok(()) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
            Err(mpsc::error::TryRecvError::Empty) => {
                if events.recv().await.is_none() {
                    return false;
                }
                if self.idle_at_once && waiting_since.elapsed() >= self.quiet {
                    return true;
                }
            }
        }
        let first = Instant::now();
        let deadline = first + self.max_delay;
        let mut quiet_until = first + self.quiet;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(()) => quiet_until = Instant::now() + self.quiet,
                    None => return true,
                },
                () = sleep_until(quiet_until.min(deadline)) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_reload_after_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(1024);
        let d = Debounce::default();
        let start = Instant::now();
        for _ in 0..500 {
            tx.send(()).await.expect("send");
        }
        assert!(d.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // Nothing pending: the next wait ends only with a new event.
        drop(tx);
        assert!(!d.next(&mut rx).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_applied_after_the_maximum_delay() {
        let (tx, mut rx) = mpsc::channel(16);
        let d = Debounce::default();
        let start = Instant::now();
        tokio::spawn(async move {
            // An event every 50 ms for 3 s: never quiet for 100 ms.
            for _ in 0..60 {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert!(d.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn when_idle_one_event_is_taken_at_once_and_a_burst_still_waits() {
        let (tx, mut rx) = mpsc::channel(16);
        let d = Debounce {
            idle_at_once: true,
            ..Debounce::default()
        };
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = sender.send(()).await;
        });
        let start = Instant::now();
        assert!(d.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_millis(500), "at once");
        // Pending when the wait begins (it came during the last load):
        // part of a burst, so the quiet period applies.
        tx.send(()).await.expect("send");
        let start = Instant::now();
        assert!(d.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // Soon after the last one: also a burst.
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = sender.send(()).await;
        });
        let start = Instant::now();
        assert!(d.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_millis(110));
        // Without idle_at_once, never at once.
        let plain = Debounce::default();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = sender.send(()).await;
        });
        let start = Instant::now();
        assert!(plain.next(&mut rx).await);
        assert_eq!(start.elapsed(), Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn events_spread_out_wait_for_quiet() {
        let (tx, mut rx) = mpsc::channel(16);
        let d = Debounce::default();
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..3 {
                let _ = tx.send(()).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            // keep the channel open
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        assert!(d.next(&mut rx).await);
        // Events at 0, 60, 120 ms; quiet 100 ms after the last.
        assert_eq!(start.elapsed(), Duration::from_millis(220));
    }
}
