//! Worker tasks: take jobs from the queue and apply them to the ledger (seed stages 5–8).
//!
//! Lesson: decoupling I/O from work (stage 5) and running several workers (stage 6) raises
//! throughput only as far as the ledger lock allows (stage 7): with simulated work the seed's
//! shape is kept exactly: `work` (async, before the lock), then take the async lock, `hold`
//! while holding it, apply, release; wait and hold are timed per worker.
//!
//! Invariants:
//! - Every job a worker receives is either applied or counted `overflowed` (and logged at
//!   warn); `received == applied + overflowed` per worker once its batch is done.
//! - A worker returns only once its queue lane is closed and empty, so joining the workers
//!   after closing the queue means every admitted event was processed.
//! - Fast path (no simulated work): a batch of up to [`BATCH_MAX`] jobs goes to
//!   [`Ledger::apply_batch`], which takes each shard's short lock once per run of consecutive
//!   jobs for that shard (once per batch with the global and owned strategies). This keeps
//!   every invariant of the slow path: each update still happens under the shard's lock, in
//!   queue order per worker, with checked arithmetic; it only stops paying a lock round-trip
//!   and an `.await` per event, and no lock is held across an `.await`. The async `hold` lock
//!   is not taken: every worker of an engine is on the same path (the durations are
//!   engine-wide), so the short lock alone serializes updates, and readers never wait longer
//!   than one batch (a few microseconds).
//! - A worker that panics (a bug: nothing in its path should) is never silent: [`supervised`]
//!   catches the panic, logs it and raises the engine's [`Supervision`] alarm; the engine then
//!   refuses every event (`worker_failed`) and the server stops and exits non-zero. Restarting
//!   the worker in place is not an option: its batch may be half applied, and in memory
//!   nothing can tell which half. With a log, a restart replays every acknowledged event.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::dedup::{Claim, Window};
use crate::latch::Latch;
use crate::ledger::{Applied, Ledger, Overflow};
use crate::metrics::{Metrics, WorkerMetrics, WorkerTimings, record_duration};
use crate::queue::{Consumer, Job};

/// Most jobs a worker takes per queue receive on the fast path: large enough to amortize the
/// lock and channel costs (a few ns per event), small enough (~10 KiB of jobs) to stay in L1
/// and keep per-batch latency in microseconds.
pub const BATCH_MAX: usize = 256;

/// Below this many jobs a batch counts as small: the worker yields once before receiving
/// again, so that trickling producers fill a bigger batch instead of waking it per event.
const SMALL_BATCH: usize = BATCH_MAX / 8;

/// What one worker needs.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// Worker index (its metrics slot; its shard with the owned strategy).
    pub id: usize,
    /// The shared ledger.
    pub ledger: Arc<Ledger>,
    /// The shared metrics.
    pub metrics: Arc<Metrics>,
    /// Simulated work before the lock (scaled).
    pub work: Duration,
    /// Simulated work while holding the lock (scaled).
    pub hold: Duration,
    /// The workers' alarm (see [`supervised`]).
    pub supervision: Arc<Supervision>,
    /// The dedup window: the worker settles the id claims of the jobs it applies.
    pub window: Arc<Window>,
}

impl WorkerContext {
    fn slot(&self) -> &WorkerMetrics {
        &self.metrics.workers[self.id]
    }

    fn is_simulated(&self) -> bool {
        !self.work.is_zero() || !self.hold.is_zero()
    }
}

/// The workers' alarm: raised by the first worker that panics.
#[derive(Debug, Default)]
pub struct Supervision {
    failed: Latch,
    /// Test hook: the next worker to receive a batch panics.
    #[cfg(feature = "fault-injection")]
    panic_next: std::sync::atomic::AtomicBool,
}

impl Supervision {
    /// Whether a worker failed.
    pub fn has_failed(&self) -> bool {
        self.failed.is_raised()
    }

    /// Resolves once a worker failed.
    pub async fn failed(&self) {
        self.failed.raised().await;
    }

    fn worker_panicked(&self, worker: usize, panic: &(dyn Any + Send)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not a string)".to_owned());
        self.failed.raise();
        tracing::error!(
            worker, panic = %message,
            "a worker panicked: its lane is dead and the engine now refuses every event \
             (503 worker_failed); stopping"
        );
    }

    /// Makes the next worker that receives a batch panic (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self) {
        self.panic_next.store(true, Ordering::Release);
    }

    #[cfg(feature = "fault-injection")]
    fn take_injected_panic(&self) -> bool {
        self.panic_next.swap(false, Ordering::AcqRel)
    }

    #[cfg(not(feature = "fault-injection"))]
    #[allow(clippy::unused_self)] // the fault-injection build reads a flag here
    fn take_injected_panic(&self) -> bool {
        false
    }
}

/// Runs a worker's future; a panic in it is caught, logged and raised in `supervision`
/// instead of vanishing with the task. The ids in flight are then freed in `window`: the
/// dead worker's jobs will never settle them, and the engine refuses every event from then
/// on, so a resend waiting for one of them gets its answer (`worker_failed`) instead of
/// waiting forever.
pub async fn supervised(
    worker: usize,
    supervision: Arc<Supervision>,
    window: Arc<Window>,
    work: impl Future<Output = ()>,
) {
    if let Err(panic) = AssertUnwindSafe(work).catch_unwind().await {
        supervision.worker_panicked(worker, &*panic);
        window.release_pending();
    }
}

/// Run one worker until its queue lane is closed and drained.
///
/// # Panics
/// Only when a fault-injection build was told to ([`Supervision::inject_panic`]); run it
/// under [`supervised`].
pub async fn run(context: WorkerContext, mut consumer: Consumer) {
    let simulated = context.is_simulated();
    // With simulated work, take one job at a time so idle workers get the rest (the seed).
    let batch_max = if simulated { 1 } else { BATCH_MAX };
    let mut batch = Vec::with_capacity(batch_max);
    let mut claims = Vec::new();
    loop {
        let taken = consumer.recv_batch(&mut batch, batch_max).await;
        if taken == 0 {
            break;
        }
        assert!(
            !context.supervision.take_injected_panic(),
            "injected worker panic (fault-injection build)"
        );
        let slot = context.slot();
        slot.received.fetch_add(taken as u64, Ordering::Relaxed);
        if simulated {
            let started = tokio::time::Instant::now();
            for job in batch.drain(..) {
                let outcome = apply_simulated(
                    &context.ledger,
                    &context.window,
                    slot,
                    context.id,
                    job,
                    context.work,
                    context.hold,
                )
                .await;
                if outcome.is_err() {
                    slot.overflowed.fetch_add(1, Ordering::Release);
                }
            }
            add_busy(slot, started.elapsed());
        } else {
            let started = std::time::Instant::now();
            apply_batch(&context, &mut batch, &mut claims);
            add_busy(slot, started.elapsed());
            if taken < SMALL_BATCH {
                // A small batch means producers trickle in (HTTP handlers: one event per
                // task turn). Let them run once before receiving again, so the next batch is
                // bigger and this task is not woken once per event.
                tokio::task::yield_now().await;
            } else {
                // async-channel does not take part in tokio's cooperative budget: give other
                // tasks on this thread a turn between batches.
                tokio::task::consume_budget().await;
            }
        }
    }
    tracing::debug!(worker = context.id, "worker drained its queue and stopped");
}

fn add_busy(slot: &WorkerMetrics, busy: Duration) {
    let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
    slot.busy_ns.fetch_add(nanos, Ordering::Relaxed);
}

/// The fast path: apply a batch through [`Ledger::apply_batch`] (one lock per run of jobs for
/// the same shard).
///
/// Timing is per batch, not per acquisition, to keep clock reads off the per-event path: one
/// wait sample (total time spent waiting for shard locks in the batch, measured only when a
/// lock is contended) and one hold sample (the rest of the batch's time, during which a shard
/// lock is held). With the global and owned strategies a batch is one acquisition anyway.
///
/// The batch's id claims are settled under one window lock, after the balances changed and
/// before the batch is counted applied (a snapshot waits for that count: its window then
/// holds every id of the events it holds). `claims` is a reused buffer.
fn apply_batch(context: &WorkerContext, batch: &mut Vec<Job>, claims: &mut Vec<(Claim, bool)>) {
    let slot = context.slot();
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    let batch_start = std::time::Instant::now();
    let report = context
        .ledger
        .apply_batch(batch.drain(..), |applied, lock_wait| match applied {
            Applied::Balance {
                user,
                balance,
                claim,
            } => {
                if let Some(claim) = claim {
                    claims.push((claim, true));
                }
                if debug {
                    let held = batch_start.elapsed().saturating_sub(lock_wait);
                    let user = String::from_utf8_lossy(user);
                    log_applied(context.id, &user, balance, lock_wait, held);
                }
            }
            Applied::Overflowed {
                overflow,
                amount,
                claim,
            } => {
                if let Some(claim) = claim {
                    claims.push((claim, false));
                }
                log_overflow(context.id, overflow, amount);
            }
        });
    context.window.settle_all(claims.drain(..));
    let held = batch_start.elapsed().saturating_sub(report.lock_wait);
    record_timings(&slot.timings, report.lock_wait, held);
    slot.applied.fetch_add(report.applied, Ordering::Release);
    slot.overflowed
        .fetch_add(report.overflowed, Ordering::Release);
}

/// The seed's path for one job: `work` (async), then [`Ledger::apply_held`] (the shard's
/// async lock kept across the `hold` sleep). Times it and counts it as applied in `slot`; an
/// overflow is logged and returned, and the caller counts it (a worker: `overflowed`; inline
/// mode: a rejection, since the client is told). The job's id claim, if any, is settled in
/// `window` before it counts. Used by workers with simulated work and by inline mode
/// (stage 4).
#[allow(clippy::too_many_arguments)] // the seed's knobs, each its own
pub async fn apply_simulated(
    ledger: &Ledger,
    window: &Window,
    slot: &WorkerMetrics,
    worker: usize,
    mut job: Job,
    work: Duration,
    hold: Duration,
) -> Result<i64, Overflow> {
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    let user_for_log = tracing::enabled!(tracing::Level::DEBUG).then(|| job.user.clone());
    let amount = job.amount;
    let claim = job.take_claim();
    let report = ledger.apply_held(job, hold).await;
    if let Some(claim) = claim {
        window.settle_all([(claim, report.outcome.is_ok())]);
    }
    record_timings(&slot.timings, report.lock_wait, report.lock_held);
    match &report.outcome {
        Ok(balance) => {
            slot.applied.fetch_add(1, Ordering::Release);
            if let Some(user) = user_for_log {
                log_applied(worker, &user, *balance, report.lock_wait, report.lock_held);
            }
        }
        Err(overflow) => log_overflow(worker, overflow, amount),
    }
    report.outcome
}

fn record_timings(timings: &parking_lot::Mutex<WorkerTimings>, wait: Duration, hold: Duration) {
    let mut timings = timings.lock();
    record_duration(&mut timings.wait_us, wait);
    record_duration(&mut timings.hold_us, hold);
}

/// The seed's stage-7 line: `[Worker  5] user=user3, balance=30, wait=45.23ms, hold=10.12ms`.
fn log_applied(worker: usize, user: &str, balance: i64, wait: Duration, hold: Duration) {
    tracing::debug!("{}", applied_line(worker, user, balance, wait, hold));
}

/// Format the seed's stage-7 line.
pub fn applied_line(
    worker: usize,
    user: &str,
    balance: i64,
    wait: Duration,
    hold: Duration,
) -> String {
    format!(
        "[Worker {worker:>2}] user={user}, balance={balance}, wait={:.2}ms, hold={:.2}ms",
        wait.as_secs_f64() * 1000.0,
        hold.as_secs_f64() * 1000.0,
    )
}

fn log_overflow(worker: usize, overflow: &Overflow, amount: i64) {
    tracing::warn!(
        worker,
        user = %overflow.user,
        balance = overflow.balance,
        amount,
        "balance would overflow i64: event not applied (counted as overflowed)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_line_matches_the_seed() {
        // Proves the debug line has the seed's exact shape (aligned worker, two decimals).
        let line = applied_line(
            5,
            "user3",
            30,
            Duration::from_micros(45_230),
            Duration::from_micros(10_120),
        );
        assert_eq!(
            line,
            "[Worker  5] user=user3, balance=30, wait=45.23ms, hold=10.12ms"
        );
        let line = applied_line(12, "u", -1, Duration::ZERO, Duration::ZERO);
        assert_eq!(
            line,
            "[Worker 12] user=u, balance=-1, wait=0.00ms, hold=0.00ms"
        );
    }
}
