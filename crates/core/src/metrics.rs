//! Counters and lock-timing histograms (seed stage 7: "contention is invisible without
//! measurement").
//!
//! Lesson: the seed only saw its hot lock once it timed lock wait and lock hold per worker;
//! every outcome of every event is counted so overload and loss are visible, not guessed.
//!
//! Invariants:
//! - Every counter is an atomic (hot ones striped over cache lines so two cores never fight
//!   over one), mostly relaxed: reads are monotone snapshots, exact once the engine is drained
//!   and its workers joined (join is a happens-before edge).
//! - Snapshots never show more outcomes than admissions: `accepted` is counted before the
//!   push, the queue orders push before pop, workers add `applied`/`overflowed` with release
//!   and [`Metrics::sum_workers`] loads with acquire before `accepted` is read, so
//!   `applied + overflowed <= accepted` in every [`crate::Stats`].
//! - Histograms are bounded: [`LOCK_MICROS_MAX`] range, [`LOCK_SIGNIFICANT_DIGITS`] digits,
//!   a fixed ~25 KiB each; values above the range are clamped, never dropped or panicking.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest lock wait/hold recorded, in microseconds (one hour): far above any simulated
/// duration ([`crate::config::SIMULATED_MS_MAX`] is one minute) times a deep queue of waiters.
pub const LOCK_MICROS_MAX: u64 = 3_600_000_000;
/// Significant digits of lock histograms: 2 gives 1% precision in ~25 KiB per histogram.
pub const LOCK_SIGNIFICANT_DIGITS: u8 = 2;
/// Stripes of a [`StripedCounter`]: enough that the threads of a small machine rarely share.
const STRIPES: usize = 16;

/// An empty lock-timing histogram with the engine's bounds.
///
/// # Panics
/// Never: the bounds are constants that hdrhistogram accepts (checked by a unit test).
pub fn lock_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LOCK_MICROS_MAX, LOCK_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Record a duration in microseconds, clamped to the histogram's range.
pub fn record_duration(histogram: &mut Histogram<u64>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, LOCK_MICROS_MAX));
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter split over cache-line-padded stripes, one picked per thread, so that threads on
/// different cores incrementing it do not bounce one cache line.
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Padded; STRIPES],
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl StripedCounter {
    /// Add `amount`.
    pub fn add(&self, amount: u64) {
        let stripe = STRIPE.with(|stripe| *stripe);
        self.stripes[stripe].0.fetch_add(amount, Ordering::Relaxed);
    }

    /// Take back `amount` added before, from any thread: one stripe may wrap below zero, but
    /// [`Self::get`] sums with wrapping arithmetic, so the total stays exact.
    pub fn sub(&self, amount: u64) {
        let stripe = STRIPE.with(|stripe| *stripe);
        self.stripes[stripe].0.fetch_sub(amount, Ordering::Relaxed);
    }

    /// Add one.
    pub fn increment(&self) {
        self.add(1);
    }

    /// Current total.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Most bucket bounds a [`StripedHistogram`] takes (its stripes have a fixed size).
pub const STRIPED_HISTOGRAM_BOUNDS_MAX: usize = 30;

/// The cell of a [`HistogramStripe`] that holds the sum of recorded nanoseconds.
const SUM_CELL: usize = STRIPED_HISTOGRAM_BOUNDS_MAX + 1;

/// One thread's cells of a [`StripedHistogram`]: a count per bound, then the overflow count
/// (above the last bound); [`SUM_CELL`] holds the sum of recorded nanoseconds.
#[derive(Debug, Default)]
#[repr(align(128))]
struct HistogramStripe([AtomicU64; SUM_CELL + 1]);

/// A histogram of durations over fixed bucket bounds, recorded without a lock: each thread adds
/// to its own cache-line-aligned stripe (as [`StripedCounter`] does), and a reader sums them.
/// Meant for a per-request latency on a hot path, where a mutex-guarded histogram shared by
/// every connection makes the cores take turns.
#[derive(Debug)]
pub struct StripedHistogram {
    bounds_nanos: Box<[u64]>,
    stripes: Box<[HistogramStripe]>,
}

/// What a [`StripedHistogram`] holds at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds (inclusive) of the buckets, ascending, in nanoseconds.
    pub bounds_nanos: Vec<u64>,
    /// Values per bucket (not cumulative); one more than the bounds: the last counts values
    /// above every bound.
    pub counts: Vec<u64>,
    /// Sum of every recorded value, in nanoseconds (wrapping past `u64::MAX`, ~584 years).
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl StripedHistogram {
    /// A histogram with these inclusive upper bounds in nanoseconds.
    ///
    /// # Panics
    /// When the bounds are empty, not strictly ascending, or more than
    /// [`STRIPED_HISTOGRAM_BOUNDS_MAX`] (a programmer error: bounds are constants).
    pub fn new(bounds_nanos: &[u64]) -> Self {
        assert!(
            !bounds_nanos.is_empty() && bounds_nanos.len() <= STRIPED_HISTOGRAM_BOUNDS_MAX,
            "1..={STRIPED_HISTOGRAM_BOUNDS_MAX} bounds"
        );
        assert!(
            bounds_nanos.windows(2).all(|pair| pair[0] < pair[1]),
            "ascending bounds"
        );
        Self {
            bounds_nanos: bounds_nanos.into(),
            stripes: (0..STRIPES).map(|_| HistogramStripe::default()).collect(),
        }
    }

    /// Record one duration (saturating at `u64::MAX` nanoseconds).
    pub fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_nanos
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds_nanos.len());
        let stripe = &self.stripes[STRIPE.with(|stripe| *stripe)].0;
        stripe[bucket].fetch_add(1, Ordering::Relaxed);
        stripe[SUM_CELL].fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts and sum so far, summed over the stripes.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self.bounds_nanos.len() + 1;
        let mut counts = vec![0_u64; buckets];
        let mut sum_nanos = 0_u64;
        for stripe in &*self.stripes {
            for (count, cell) in counts.iter_mut().zip(&stripe.0[..buckets]) {
                *count += cell.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.0[SUM_CELL].load(Ordering::Relaxed));
        }
        HistogramSnapshot {
            bounds_nanos: self.bounds_nanos.to_vec(),
            counts,
            sum_nanos,
        }
    }
}

/// Lock wait and hold histograms of one worker, in microseconds.
#[derive(Debug, Clone)]
pub struct WorkerTimings {
    /// Time from asking for the ledger lock to getting it.
    pub wait_us: Histogram<u64>,
    /// Time the ledger lock was held.
    pub hold_us: Histogram<u64>,
}

impl Default for WorkerTimings {
    fn default() -> Self {
        Self {
            wait_us: lock_histogram(),
            hold_us: lock_histogram(),
        }
    }
}

/// What one worker did. Written only by that worker (so plain atomics, padded apart).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Jobs taken from the queue (after a drain: exactly the jobs admitted to its lane).
    pub received: AtomicU64,
    /// Jobs applied to the ledger.
    pub applied: AtomicU64,
    /// Jobs refused because the balance would overflow.
    pub overflowed: AtomicU64,
    /// Nanoseconds spent processing batches (not waiting for the queue).
    pub busy_ns: AtomicU64,
    /// Lock wait/hold histograms; locked once per batch by the worker, briefly by readers.
    pub timings: parking_lot::Mutex<WorkerTimings>,
}

/// Every counter of one engine.
#[derive(Debug)]
pub struct Metrics {
    /// Events admitted (queued, or applied inline). Striped: incremented on every ingest.
    pub accepted: StripedCounter,
    /// Events validated in validate-only mode (stage 3; no state, not "accepted").
    pub validated: StripedCounter,
    /// Refused because the queue was full.
    pub rejected_queue_full: StripedCounter,
    /// Refused because the engine was draining.
    pub rejected_draining: AtomicU64,
    /// Inline events refused because the balance would overflow.
    pub rejected_overflow: AtomicU64,
    /// New users refused because the ledger holds `max_users` users.
    pub rejected_ledger_full: AtomicU64,
    /// Refusals because a log write or sync failed.
    pub rejected_storage_failed: AtomicU64,
    /// Refusals because the disk was full.
    pub rejected_disk_full: AtomicU64,
    /// Refusals because a worker failed.
    pub rejected_worker_failed: AtomicU64,
    /// Forwarded events refused because the cluster did not answer.
    pub rejected_unreachable: AtomicU64,
    /// Resends recognised by their id and not applied again.
    pub duplicate: AtomicU64,
    /// Invalid inputs reported by the front door.
    pub invalid: AtomicU64,
    invalid_by_reason: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
    /// One slot per worker (slot 0 also serves inline mode).
    pub workers: Box<[WorkerMetrics]>,
}

impl Metrics {
    /// Metrics with `worker_slots` worker slots (at least one).
    pub fn new(worker_slots: usize) -> Self {
        Self {
            accepted: StripedCounter::default(),
            validated: StripedCounter::default(),
            rejected_queue_full: StripedCounter::default(),
            rejected_draining: AtomicU64::new(0),
            rejected_overflow: AtomicU64::new(0),
            rejected_ledger_full: AtomicU64::new(0),
            rejected_storage_failed: AtomicU64::new(0),
            rejected_disk_full: AtomicU64::new(0),
            rejected_worker_failed: AtomicU64::new(0),
            rejected_unreachable: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            invalid_by_reason: parking_lot::Mutex::new(BTreeMap::new()),
            workers: (0..worker_slots.max(1))
                .map(|_| WorkerMetrics::default())
                .collect(),
        }
    }

    /// Count one invalid input under `reason` (the map holds at most one entry per distinct
    /// `&'static str` in the program, so it is bounded).
    pub fn record_invalid(&self, reason: &'static str) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
        *self.invalid_by_reason.lock().entry(reason).or_insert(0) += 1;
    }

    /// Invalid inputs by reason.
    pub fn invalid_by_reason(&self) -> BTreeMap<String, u64> {
        self.invalid_by_reason
            .lock()
            .iter()
            .map(|(reason, count)| ((*reason).to_owned(), *count))
            .collect()
    }

    /// Rejections by reason (`queue_full`, `draining`, `balance_overflow`, `ledger_full`).
    pub fn rejected_by_reason(&self) -> BTreeMap<String, u64> {
        [
            ("queue_full", self.rejected_queue_full.get()),
            ("draining", self.rejected_draining.load(Ordering::Relaxed)),
            (
                "balance_overflow",
                self.rejected_overflow.load(Ordering::Relaxed),
            ),
            (
                "ledger_full",
                self.rejected_ledger_full.load(Ordering::Relaxed),
            ),
            (
                "storage_failed",
                self.rejected_storage_failed.load(Ordering::Relaxed),
            ),
            ("disk_full", self.rejected_disk_full.load(Ordering::Relaxed)),
            (
                "worker_failed",
                self.rejected_worker_failed.load(Ordering::Relaxed),
            ),
            (
                "cluster_unreachable",
                self.rejected_unreachable.load(Ordering::Relaxed),
            ),
        ]
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect()
    }

    /// Total rejections.
    pub fn rejected(&self) -> u64 {
        self.rejected_queue_full.get()
            + self.rejected_draining.load(Ordering::Relaxed)
            + self.rejected_overflow.load(Ordering::Relaxed)
            + self.rejected_ledger_full.load(Ordering::Relaxed)
            + self.rejected_storage_failed.load(Ordering::Relaxed)
            + self.rejected_disk_full.load(Ordering::Relaxed)
            + self.rejected_worker_failed.load(Ordering::Relaxed)
            + self.rejected_unreachable.load(Ordering::Relaxed)
    }

    /// Sum of one per-worker counter (acquire loads: see the module invariants).
    pub fn sum_workers(&self, counter: impl Fn(&WorkerMetrics) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|worker| counter(worker).load(Ordering::Acquire))
            .sum()
    }

    /// Every worker's lock histograms merged into one pair.
    pub fn merged_timings(&self) -> WorkerTimings {
        let mut merged = WorkerTimings::default();
        for worker in &*self.workers {
            let timings = worker.timings.lock();
            // Same bounds on both sides, so `add` cannot fail; clamp-free merge.
            let _ = merged.wait_us.add(&timings.wait_us);
            let _ = merged.hold_us.add(&timings.hold_us);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_histogram_buckets_inclusive_bounds_and_sums_across_threads() {
        // Proves values land in the first bucket whose bound they do not exceed (bounds
        // inclusive, overflow last), and that no record is lost across threads.
        let histogram = std::sync::Arc::new(StripedHistogram::new(&[100, 1_000]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = std::sync::Arc::clone(&histogram);
                std::thread::spawn(move || {
                    for nanos in [0, 100, 101, 1_000, 1_001, 5_000] {
                        histogram.record(Duration::from_nanos(nanos));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recorder");
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![8, 8, 8]);
        assert_eq!(snapshot.count(), 24);
        assert_eq!(snapshot.sum_nanos, 4 * (100 + 101 + 1_000 + 1_001 + 5_000));
        assert_eq!(snapshot.bounds_nanos, vec![100, 1_000]);
    }

    #[test]
    fn striped_counter_sums_across_threads() {
        // Proves no increment is lost when many threads add to the striped counter.
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        counter.increment();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 80_000);
    }

    #[test]
    fn striped_counter_sub_from_another_thread_stays_exact() {
        // Proves taking back from a thread that never added (its stripe wraps) keeps the sum.
        let counter = StripedCounter::default();
        counter.add(5);
        std::thread::scope(|scope| {
            scope.spawn(|| counter.sub(2));
        });
        assert_eq!(counter.get(), 3);
    }

    #[test]
    fn histograms_clamp_instead_of_failing() {
        // Proves out-of-range durations are clamped into the bounded histogram.
        let mut histogram = lock_histogram();
        record_duration(&mut histogram, Duration::ZERO);
        record_duration(&mut histogram, Duration::from_secs(10 * 3600));
        assert_eq!(histogram.len(), 2);
        assert!(histogram.max() >= LOCK_MICROS_MAX / 100 * 99);
    }

    #[test]
    fn invalid_and_rejected_by_reason() {
        // Proves per-reason counts add up to the totals.
        let metrics = Metrics::new(2);
        metrics.record_invalid("invalid_json");
        metrics.record_invalid("invalid_json");
        metrics.record_invalid("missing_field");
        metrics.rejected_queue_full.add(3);
        assert_eq!(metrics.invalid.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.invalid_by_reason().get("invalid_json"), Some(&2));
        assert_eq!(metrics.rejected(), 3);
        assert_eq!(metrics.rejected_by_reason().get("queue_full"), Some(&3));
    }
}
