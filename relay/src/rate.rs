//! Rate limits: a token bucket, a connection's inbound limits built on two of them, and
//! a per-address table for handshakes.
//!
//! Limits are per node: in a cluster each node applies its own (a client or a backend
//! reaching several nodes gets each node's allowance).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// `rate` tokens a second, holding at most `burst`; starts full.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take `n` tokens, or say how long until there would be enough.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        let wait = (n.min(self.burst) - self.tokens) / self.rate;
        Err(Duration::from_secs_f64(wait.max(0.0)))
    }

    /// Take `n` tokens whatever is there (down to minus one burst): usage that cannot be
    /// refused, paid for by what comes next.
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n).max(-self.burst);
    }

    /// Whether the bucket has refilled completely (an idle entry that can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits.
    Pass,
    /// Over a limit: drop it (counted).
    Drop,
    /// Over a limit for `close_after` seconds in a row: close the connection (1008).
    Close,
}

/// One connection's inbound limits: messages and bytes a second (each optional), and how
/// many consecutive seconds with dropped messages end it.
#[derive(Debug)]
pub struct ConnRate {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    close_after: u32,
    window: Instant,
    dropped_in_window: bool,
    strikes: u32,
}

impl ConnRate {
    /// Limits of `messages`/s and `bytes`/s (0: none), with bursts of two seconds' worth
    /// (and at least `max_message` bytes); closing after `close_after` seconds over (0:
    /// never).
    pub fn new(messages: u32, bytes: u64, max_message: usize, close_after: u32) -> Self {
        let now = Instant::now();
        let bucket = |rate: f64, min_burst: f64| {
            (rate > 0.0).then(|| Bucket::new(rate, (2.0 * rate).max(min_burst), now))
        };
        ConnRate {
            messages: bucket(f64::from(messages), 1.0),
            bytes: bucket(bytes as f64, max_message as f64),
            close_after,
            window: now,
            dropped_in_window: false,
            strikes: 0,
        }
    }

    /// Whether nothing is limited (the common check can be skipped).
    pub fn unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    /// Judge a message of `len` bytes arriving now.
    pub fn check(&mut self, len: usize) -> Verdict {
        self.check_at(len, Instant::now())
    }

    /// Count `len` bytes that are not refused on their own (a Socket.IO attachment: its
    /// packet was judged already); the next messages pay for them.
    pub fn charge(&mut self, len: usize) {
        if let Some(b) = self.bytes.as_mut() {
            b.charge(len as f64, Instant::now());
        }
    }

    fn check_at(&mut self, len: usize, now: Instant) -> Verdict {
        let since = now.saturating_duration_since(self.window);
        if since >= Duration::from_secs(1) {
            // A window with drops is a strike; a quiet gap of a whole window clears them.
            self.strikes = match (self.dropped_in_window, since < Duration::from_secs(2)) {
                (true, true) => self.strikes + 1,
                (true, false) => 1,
                (false, _) => 0,
            };
            self.window = now;
            self.dropped_in_window = false;
        }
        let ok_messages = self
            .messages
            .as_mut()
            .is_none_or(|b| b.take(1.0, now).is_ok());
        let ok_bytes = ok_messages
            && self
                .bytes
                .as_mut()
                .is_none_or(|b| b.take(len as f64, now).is_ok());
        if ok_messages && ok_bytes {
            return Verdict::Pass;
        }
        self.dropped_in_window = true;
        match self.close_after > 0 && self.strikes >= self.close_after {
            true => Verdict::Close,
            false => Verdict::Drop,
        }
    }
}

/// A shared bucket (a tenant's pushes).
#[derive(Debug)]
pub struct SharedBucket(Mutex<Bucket>);

impl SharedBucket {
    /// `rate`/s with a burst of one second's worth.
    pub fn per_second(rate: u32) -> Self {
        let r = f64::from(rate);
        SharedBucket(Mutex::new(Bucket::new(r, r.max(1.0), Instant::now())))
    }

    /// Take one token, or say how long until there is one.
    pub fn take(&self) -> Result<(), Duration> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.take(1.0, Instant::now())
    }
}

/// Entries kept before idle ones are swept.
const SWEEP_AT: usize = 10_000;

/// Handshakes a second per address (IPv6: per /64), each address with its own bucket.
#[derive(Debug)]
pub struct PerAddress {
    rate: f64,
    buckets: DashMap<IpAddr, Bucket>,
    started: Instant,
    /// When the last sweep ran (ms after `started`): at most one a second, so that many
    /// busy addresses cannot make every handshake pay for a sweep.
    swept_ms: std::sync::atomic::AtomicU64,
}

impl PerAddress {
    /// `rate` a second per address, bursts of two seconds' worth.
    pub fn new(rate: u32) -> Self {
        PerAddress {
            rate: f64::from(rate),
            buckets: DashMap::new(),
            started: Instant::now(),
            swept_ms: Default::default(),
        }
    }

    /// One handshake from `ip`, or how long until it would be allowed.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        if self.buckets.len() >= SWEEP_AT {
            let ms = now.duration_since(self.started).as_millis() as u64 + 1000;
            let last = self.swept_ms.load(Relaxed);
            if ms >= last + 1000
                && self
                    .swept_ms
                    .compare_exchange(last, ms, Relaxed, Relaxed)
                    .is_ok()
            {
                // Bounded memory: forget addresses whose bucket has refilled (idle ones).
                self.buckets.retain(|_, b| !b.is_full(now));
            }
        }
        let (rate, burst) = (self.rate, (2.0 * self.rate).max(1.0));
        self.buckets
            .entry(ip)
            .or_insert_with(|| Bucket::new(rate, burst, now))
            .take(1.0, now)
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 20.0, t0);
        for _ in 0..20 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(b.take(1.0, t1).is_ok());
        }
        assert!(b.take(1.0, t1).is_err());
        assert!(b.is_full(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn a_connection_over_its_rate_drops_then_is_closed_after_strikes() {
        let t0 = Instant::now();
        let mut r = ConnRate::new(10, 0, 0, 3);
        let mut at = |ms: u64| r.check_at(1, t0 + Duration::from_millis(ms));
        // The burst (20) passes, then drops within the first second.
        assert!((0..20).all(|_| at(0) == Verdict::Pass));
        assert_eq!(at(0), Verdict::Drop);
        // Flooding on: each following second is a strike; the third one closes.
        let mut verdicts = Vec::new();
        for s in 1..=4u64 {
            for i in 0..50 {
                verdicts.push((s, at(s * 1000 + i)));
            }
        }
        let first_close = verdicts.iter().find(|(_, v)| *v == Verdict::Close);
        assert_eq!(first_close.map(|(s, _)| *s), Some(3), "{verdicts:?}");
        // Slow enough again: passes, and the strikes clear.
        let mut r = ConnRate::new(10, 0, 0, 3);
        for s in 0..10u64 {
            for i in 0..10 {
                assert_eq!(
                    r.check_at(1, t0 + Duration::from_millis(s * 1000 + i * 100)),
                    Verdict::Pass
                );
            }
        }
    }

    #[test]
    fn bytes_are_limited_too_and_a_maximal_message_fits_the_burst() {
        let t0 = Instant::now();
        let mut r = ConnRate::new(0, 1000, 64 * 1024, 0);
        assert_eq!(r.check_at(64 * 1024, t0), Verdict::Pass);
        assert_eq!(r.check_at(1, t0), Verdict::Drop);
        assert_eq!(
            r.check_at(500, t0 + Duration::from_millis(600)),
            Verdict::Pass
        );
        assert!(ConnRate::new(0, 0, 10, 5).unlimited());
    }

    #[test]
    fn per_address_buckets_are_separate_and_idle_ones_are_swept() {
        let p = PerAddress::new(1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.take(a).is_ok() && p.take(a).is_ok());
        assert!(p.take(a).is_err(), "burst of 2 spent");
        assert!(p.take(b).is_ok(), "another address has its own");
        assert_eq!(p.len(), 2);
    }
}
