//! Snapshots the engine reports: [`Stats`] (what `GET /stats` returns), [`Summary`] (the
//! final count printed at shutdown) and [`LockTimings`] (for Prometheus).
//!
//! Lesson (seed stage 7): per-worker lock wait and hold, side by side, is what reveals a hot
//! lock ("wait ≫ hold = severe contention"); stage 5: accepted vs rejected shows backpressure.
//!
//! Invariant: a snapshot is plain data built from the metrics; building one never blocks a
//! worker for more than one histogram copy, and once the engine is drained
//! `applied + overflowed == accepted` holds in it.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{LedgerStrategy, ProcessingMode, QueueKind};
use crate::durable::DurabilityStats;

/// Percentiles of one lock histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LockSummary {
    /// Samples recorded: one per lock acquisition with simulated work; one per batch of up to
    /// `worker::BATCH_MAX` events on the fast path (no simulated work).
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl LockSummary {
    /// Summarize a histogram of microseconds.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One worker's figures (slot 0 is the request handler in inline mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Worker index.
    pub worker: usize,
    /// Events it applied.
    pub applied: u64,
    /// Events it refused for overflow.
    pub overflowed: u64,
    /// Seconds it spent processing (not waiting for the queue).
    pub busy_seconds: f64,
    /// Time waiting for the ledger lock.
    pub lock_wait: LockSummary,
    /// Time holding the ledger lock.
    pub lock_hold: LockSummary,
}

/// The dedup window in `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DedupStats {
    /// Ids kept (settled and in flight).
    pub ids: usize,
    /// The count bound (`dedup_max_ids`).
    pub max_ids: usize,
    /// The age bound (`dedup_window_ms`), in seconds.
    pub window_seconds: f64,
    /// Age of the oldest id kept: a resend older than this is applied again (absent: none
    /// kept).
    pub effective_window_seconds: Option<f64>,
}

/// Everything `GET /stats` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Events admitted: queued (then applied or overflowed by a worker), or applied inline.
    /// An inline overflow is answered 422 and counted as rejected, not accepted.
    pub accepted: u64,
    /// Resends recognised by their id (within the dedup window) and not applied again.
    #[serde(default)]
    pub duplicate: u64,
    /// The dedup window.
    #[serde(default)]
    pub dedup: DedupStats,
    /// Events refused (queue full, draining, inline overflow, ledger full).
    pub rejected: u64,
    /// Refusals by reason: `queue_full`, `draining`, `balance_overflow`, `ledger_full`.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Invalid inputs reported by the front door.
    pub invalid: u64,
    /// Invalid inputs by reason (`invalid_json`, `missing_field`, ...).
    pub invalid_by_reason: BTreeMap<String, u64>,
    /// Events validated without state (stage 3 only).
    pub validated: u64,
    /// Events applied to the ledger.
    pub applied: u64,
    /// Accepted events not applied because the balance would overflow i64.
    pub overflowed: u64,
    /// Events waiting in the queue.
    pub queue_depth: usize,
    /// Queue bound, in events (0 when not queued).
    pub queue_capacity_events: usize,
    /// Worker tasks (0 when not queued).
    pub workers: usize,
    /// Ledger strategy.
    pub strategy: LedgerStrategy,
    /// Ledger shards in use.
    pub shards: usize,
    /// Processing mode.
    pub mode: ProcessingMode,
    /// How workers share the queue.
    pub queue_kind: QueueKind,
    /// Users in the ledger (applied at least once).
    pub users: usize,
    /// User slots taken: users in the ledger plus new users admitted, not yet applied.
    pub users_reserved: usize,
    /// Most distinct users the ledger admits (`EngineConfig::max_users`).
    pub max_users: usize,
    /// Bytes the reserved users are counted for (`ledger::user_cost_bytes` of each name).
    pub ledger_bytes_reserved: u64,
    /// Most bytes the ledger's users may cost (`EngineConfig::max_ledger_bytes`).
    pub max_ledger_bytes: u64,
    /// Sum of every balance (i128: many i64 balances can exceed i64).
    pub balance_total: i128,
    /// `true` once shutdown began.
    pub draining: bool,
    /// Seconds the workers spent processing, summed over workers.
    pub worker_busy_seconds: f64,
    /// All workers' lock waits merged.
    pub lock_wait: LockSummary,
    /// All workers' lock holds merged.
    pub lock_hold: LockSummary,
    /// Per-worker figures (the seed's stage-7 instrumentation).
    pub per_worker: Vec<WorkerStats>,
    /// The durability mode, what a 202 promises, and the log's figures.
    pub durability: DurabilityStats,
}

/// The final count, returned by `Engine::shutdown` once everything accepted was applied (or,
/// after a worker failed, counted `lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Events admitted.
    pub accepted: u64,
    /// Events applied.
    pub applied: u64,
    /// Admitted events refused for overflow (`applied + overflowed == accepted`).
    pub overflowed: u64,
    /// Events refused (queue full, draining, inline overflow, ledger full).
    pub rejected: u64,
    /// Invalid inputs reported by the front door.
    pub invalid: u64,
    /// Accepted events never applied because a worker failed (0 unless one did; then
    /// `applied + overflowed + lost == accepted`, and only a log can bring them back).
    #[serde(default)]
    pub lost: u64,
}

/// Merged lock wait and hold histograms of every worker, in microseconds.
#[derive(Clone, Debug)]
pub struct LockTimings {
    /// Time from asking for the ledger lock to getting it, µs.
    pub wait_us: Histogram<u64>,
    /// Time the ledger lock was held, µs.
    pub hold_us: Histogram<u64>,
}
