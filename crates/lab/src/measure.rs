//! Sustained throughput: the pace of the workers, read from the engine's own `applied` counter
//! over a window, not the client's sending rate.
//!
//! Lesson (stages 5–8, docs/stages.md): a load generator's "requests/s" counts how fast it was
//! answered (rejections included: the seed's 12,937 requests/s in 0.39 s was mostly 503s); the
//! capacity of the system is the rate at which events are *applied* while the queue never runs dry.
//!
//! Invariant: a window is only trusted when the queue was non-empty at every sample
//! ([`Window::queue_stayed_busy`]); otherwise the figure measures the client, and the tables say
//! so.

use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

/// How often a window samples the counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// One reading of the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Events applied to the ledger so far.
    pub applied: u64,
    /// Events waiting in the queue now.
    pub queue_depth: usize,
}

/// The result of watching the counters over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Events applied during the window.
    pub applied: u64,
    /// The window's real length, in seconds.
    pub seconds: f64,
    /// `applied / seconds`.
    pub rate_per_second: f64,
    /// The smallest queue depth seen at any sample.
    pub min_queue_depth: usize,
    /// Whether the queue held at least `busy_depth` events at every sample.
    pub queue_stayed_busy: bool,
}

/// Waits until `sample().queue_depth >= busy_depth` (the workers are saturated) or `warmup_limit`
/// passes; returns whether the queue filled.
pub async fn wait_until_busy(
    sample: impl Fn() -> Sample,
    busy_depth: usize,
    warmup_limit: Duration,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < warmup_limit {
        if sample().queue_depth >= busy_depth {
            return true;
        }
        tokio::time::sleep(SAMPLE_INTERVAL / 5).await;
    }
    false
}

/// Watches `sample` for `length` and returns the applied rate over that window.
pub async fn watch(sample: impl Fn() -> Sample, length: Duration, busy_depth: usize) -> Window {
    let first = sample();
    let started = Instant::now();
    let mut min_queue_depth = first.queue_depth;
    loop {
        let remaining = length.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            break;
        }
        tokio::time::sleep(remaining.min(SAMPLE_INTERVAL)).await;
        min_queue_depth = min_queue_depth.min(sample().queue_depth);
    }
    let last = sample();
    let seconds = started.elapsed().as_secs_f64();
    window_from(first, last, seconds, min_queue_depth, busy_depth)
}

/// The window between two samples `seconds` apart.
pub fn window_from(
    first: Sample,
    last: Sample,
    seconds: f64,
    min_queue_depth: usize,
    busy_depth: usize,
) -> Window {
    let min_queue_depth = min_queue_depth.min(last.queue_depth);
    let applied = last.applied.saturating_sub(first.applied);
    let rate_per_second = if seconds > 0.0 {
        applied as f64 / seconds
    } else {
        0.0
    };
    Window {
        applied,
        seconds,
        rate_per_second,
        min_queue_depth,
        queue_stayed_busy: min_queue_depth >= busy_depth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    // Proves the rate is applied-events-per-second between the samples, and that a window in
    // which the queue ran dry is flagged as not trustworthy.
    #[test]
    fn window_rate_and_busy_flag() {
        let first = Sample {
            applied: 100,
            queue_depth: 50,
        };
        let last = Sample {
            applied: 300,
            queue_depth: 40,
        };
        let window = window_from(first, last, 2.0, 30, 1);
        assert_eq!(window.applied, 200);
        assert!((window.rate_per_second - 100.0).abs() < 1e-9);
        assert!(window.queue_stayed_busy);
        let dry = window_from(first, last, 2.0, 0, 1);
        assert!(!dry.queue_stayed_busy);
        let zero = window_from(first, first, 0.0, 5, 1);
        assert!(zero.rate_per_second.abs() < f64::EPSILON);
    }

    // Proves `watch` reads the counter at both ends of the window (a counter that grows while
    // watched is reflected in `applied`), with simulated time so no real waiting happens.
    #[tokio::test(start_paused = true)]
    async fn watch_counts_what_happened_in_the_window() {
        let counter = AtomicU64::new(0);
        let sample = || Sample {
            applied: counter.fetch_add(10, Ordering::SeqCst),
            queue_depth: 3,
        };
        let window = watch(sample, Duration::from_secs(1), 1).await;
        // One reading at the start, one per 50 ms tick (20), one at the end: each adds 10.
        assert_eq!(window.applied, 210);
        assert!(window.queue_stayed_busy);
        assert!(wait_until_busy(sample, 3, Duration::from_secs(1)).await);
        assert!(!wait_until_busy(sample, 4, Duration::from_secs(1)).await);
    }
}
