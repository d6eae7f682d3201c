//! A tenant's circuit breaker: a plugin that keeps trapping or missing its deadline is
//! not called for a while, so its tenant's clients get a quick refusal instead of each
//! burning a deadline, and other tenants keep their share of the workers.
//!
//! After `threshold` failures in a row (trap, deadline, malformed output) it opens for
//! `open`; then calls are let through again, and one more failure before a success
//! reopens it for twice as long (up to [`MAX_OPEN`]). A success closes it. Lock-free: a
//! closed breaker costs one atomic load per call.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The longest a breaker stays open at once.
pub const MAX_OPEN: Duration = Duration::from_secs(30);

/// One tenant's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open: Duration,
    started: Instant,
    /// Failures in a row since the last success or trip.
    failures: AtomicU32,
    /// Trips in a row without a success in between (the backoff's exponent).
    trips: AtomicU32,
    /// Open until this many ms after `started`; 0 when closed.
    open_until: AtomicU64,
}

impl Breaker {
    /// Opening after `threshold` failures in a row (0: never) for `open`, doubling.
    pub fn new(threshold: u32, open: Duration) -> Self {
        Breaker {
            threshold,
            open,
            started: Instant::now(),
            failures: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// `Ok` to call the plugin, or how long the breaker stays open.
    pub fn admit(&self) -> Result<(), Duration> {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        match now < until {
            true => Err(Duration::from_millis(until - now)),
            false => Ok(()),
        }
    }

    /// A call succeeded (or the plugin reported an error of its own: it ran fine).
    pub fn success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.trips.load(Relaxed) != 0 {
            self.trips.store(0, Relaxed);
            self.open_until.store(0, Relaxed);
        }
    }

    /// A call failed; `Some(open_for)` when this failure opened the breaker.
    pub fn failure(&self) -> Option<Duration> {
        if self.threshold == 0 {
            return None;
        }
        let now = self.now_ms();
        let until = self.open_until.load(Relaxed);
        if until != 0 && now < until {
            return None; // open already (a call admitted just before it opened)
        }
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        let half_open = self.trips.load(Relaxed) > 0;
        if n < self.threshold && !half_open {
            return None;
        }
        // Open it, once: the caller that moves `open_until` wins.
        let trips = self.trips.load(Relaxed);
        let open_for = self
            .open
            .saturating_mul(1 << trips.min(16))
            .min(MAX_OPEN)
            .max(Duration::from_millis(1));
        let next = now + open_for.as_millis() as u64;
        if self
            .open_until
            .compare_exchange(until, next, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        self.trips.fetch_add(1, Relaxed);
        self.failures.store(0, Relaxed);
        Some(open_for)
    }

    /// Whether it is open now.
    pub fn is_open(&self) -> bool {
        self.admit().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_backs_off_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(40));
        assert!(b.admit().is_ok());
        assert_eq!(b.failure(), None);
        b.success();
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(
            b.failure(),
            Some(Duration::from_millis(40)),
            "third in a row"
        );
        assert!(b.is_open());
        assert_eq!(b.failure(), None, "already open");
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_ok(), "half open after the period");
        assert_eq!(
            b.failure(),
            Some(Duration::from_millis(80)),
            "one failure reopens, twice as long"
        );
        std::thread::sleep(Duration::from_millis(90));
        b.success();
        assert!(b.admit().is_ok());
        assert_eq!(b.failure(), None, "closed: the threshold counts again");
        let never = Breaker::new(0, Duration::from_millis(1));
        assert!((0..100).all(|_| never.failure().is_none()));
    }
}
