//! Per-token rate limits: a small GCRA token bucket, one atomic word per token.
//!
//! Lesson: a bounded queue (stage 5) protects the server, not its clients: one client posting
//! as fast as it can fills the queue and everyone else gets `503 queue_full`. A rate per token
//! turns that client's excess into its own `429 rate_limited` before it reaches the queue.
//! Invariant: a bucket admits at most `burst` events at once and `per_second` on average after
//! that; a refusal says how long until the next event would be admitted (never less than one
//! whole second in `Retry-After`), and refusals do not use up the allowance.
//!
//! Why our own and not `governor`: the bucket is the generic cell rate algorithm governor uses
//! (a "theoretical arrival time" moved forward by compare-and-swap), about twenty lines; kept
//! here it takes the clock as an argument, so its tests drive time without sleeping, and the
//! buckets live in the token table that a SIGHUP swaps whole, where governor's keyed limiter
//! would be a second map to keep in step with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NANOS_PER_SECOND: f64 = 1e9;

/// A rate and a burst, as the bucket needs them: nanoseconds between events at the average
/// rate, and how far ahead of the clock a bucket may run (the burst less one event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    interval_nanos: u64,
    tolerance_nanos: u64,
}

impl RateLimit {
    /// `per_second` events on average (must be > 0), `burst_events` (at least 1) at once.
    pub fn new(per_second: f64, burst_events: u64) -> Self {
        let interval_nanos = (NANOS_PER_SECOND / per_second).ceil().max(1.0) as u64;
        let tolerance_nanos = interval_nanos.saturating_mul(burst_events.max(1) - 1);
        Self {
            interval_nanos,
            tolerance_nanos,
        }
    }
}

/// One token's bucket: the time (ns on [`Clock`]) at which it is empty again if nothing more
/// arrives. Shared by every connection using the token.
#[derive(Debug, Default)]
pub struct Bucket {
    theoretical_arrival_nanos: AtomicU64,
}

impl Bucket {
    /// Takes one event's room at `now_nanos`, or says how long until there is room.
    pub fn take(&self, limit: RateLimit, now_nanos: u64) -> Result<(), Duration> {
        let mut arrival = self.theoretical_arrival_nanos.load(Ordering::Relaxed);
        loop {
            let start = arrival.max(now_nanos);
            let ahead = start - now_nanos;
            if ahead > limit.tolerance_nanos {
                return Err(Duration::from_nanos(ahead - limit.tolerance_nanos));
            }
            match self.theoretical_arrival_nanos.compare_exchange_weak(
                arrival,
                start.saturating_add(limit.interval_nanos),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => arrival = current,
            }
        }
    }
}

/// The buckets' clock: nanoseconds since the server started (monotonic).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now_nanos(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    // Proves the burst is admitted at once, the next event waits one interval, and the
    // allowance comes back at the average rate (time passed in, no sleeping).
    #[test]
    fn burst_then_average_rate() {
        let limit = RateLimit::new(2.0, 3); // 2 events/s, 3 at once
        let bucket = Bucket::default();
        let now = 10 * SECOND;
        for _ in 0..3 {
            assert_eq!(bucket.take(limit, now), Ok(()));
        }
        let wait = bucket.take(limit, now).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(
            bucket.take(limit, now + SECOND / 2),
            Ok(()),
            "one interval later"
        );
        assert!(bucket.take(limit, now + SECOND / 2).is_err());
        // After a long quiet spell the full burst is back, not more.
        let later = now + 60 * SECOND;
        for _ in 0..3 {
            assert_eq!(bucket.take(limit, later), Ok(()));
        }
        assert!(bucket.take(limit, later).is_err());
    }

    // Proves refusals do not use up the allowance: a client hammering while limited gets in
    // again as soon as the wait it was told has passed.
    #[test]
    fn refusals_are_free() {
        let limit = RateLimit::new(1.0, 1);
        let bucket = Bucket::default();
        assert_eq!(bucket.take(limit, SECOND), Ok(()));
        for _ in 0..100 {
            assert!(bucket.take(limit, SECOND).is_err());
        }
        assert_eq!(bucket.take(limit, 2 * SECOND), Ok(()));
    }

    // Proves Retry-After rounds up to whole seconds and is never 0.
    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
        let slow = RateLimit::new(0.1, 1); // one event per 10 s
        let bucket = Bucket::default();
        assert_eq!(bucket.take(slow, 0), Ok(()));
        let wait = bucket.take(slow, SECOND).expect_err("limited");
        assert_eq!(retry_after_seconds(wait), 9);
    }
}
