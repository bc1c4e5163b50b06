//! The engine: admission, workers, ledger and metrics wired together (seed stages 3–8).
//!
//! Lesson: the whole story in one object. Stage 3 validates only; stage 4 applies in the
//! caller under one lock (async is not parallel); stages 5–8 admit into a bounded queue with
//! `try_send` (never waiting for room) and let workers apply; shutdown drains instead of
//! dropping work.
//!
//! Invariants:
//! - [`Engine::ingest`] never waits for queue room: a full queue is `Rejected::QueueFull` at once.
//! - Nothing accepted is lost: [`Engine::shutdown`] stops admitting, closes the queue, lets
//!   the workers drain it and joins them; its [`Summary`] then has
//!   `applied + overflowed == accepted`, and the ledger's total equals the sum of the amounts
//!   of the applied events.
//! - Bounded users, decided at admission: `users in the ledger <= users reserved <= max_users`
//!   at every instant. Before answering, every path that can apply an event (queued, inline)
//!   calls [`Ledger::admit`]: a known or pending user always passes (one hash-table probe
//!   under the shard's short lock); a new user takes a slot of the user budget (one atomic) or
//!   is refused `Rejected::LedgerFull`. So every accepted event is applied (or counted
//!   overflowed) with no check left for the workers; an admission the queue then refuses
//!   gives its slot back ([`Ledger::cancel`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, EngineConfig, LedgerStrategy, ProcessingMode};
use crate::event::Event;
use crate::ledger::{Admit, Ledger, user_hash};
use crate::metrics::Metrics;
use crate::queue::{self, Admission, Job, PushError};
pub use crate::stats::{LockSummary, LockTimings, Stats, Summary, WorkerStats};
use crate::worker::{self, WorkerContext};

/// How an event was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// Queued mode: admitted to the queue; a worker will apply it.
    Queued,
    /// Inline mode: applied; the user's new balance.
    Applied {
        /// Balance after applying the event.
        balance: i64,
    },
    /// Validate-only mode (stage 3): valid, no state kept.
    Validated,
}

/// Why an event was refused (nothing was applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The queue is at capacity (HTTP 503 + Retry-After).
    #[error("queue full")]
    QueueFull,
    /// The engine is shutting down (HTTP 503).
    #[error("draining: the engine is shutting down")]
    Draining,
    /// Inline mode: the balance would overflow i64 (HTTP 422).
    #[error("the balance would overflow i64")]
    Overflow,
    /// A new user while the ledger holds `max_users` users (HTTP 507): not transient, known
    /// users are still admitted.
    #[error("the ledger is full: no room for a new user")]
    LedgerFull,
}

impl Rejected {
    /// Machine-readable reason, as in the HTTP body: `queue_full`, `draining`,
    /// `balance_overflow`, `ledger_full`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Draining => "draining",
            Self::Overflow => "balance_overflow",
            Self::LedgerFull => "ledger_full",
        }
    }
}

/// A refused event, handed back by [`Engine::offer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why it was refused.
    pub reason: Rejected,
    /// The event, untouched.
    pub event: Event,
}

/// The engine. Cheap to clone (an `Arc` inside); every clone drives the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Concise on purpose: the ledger may hold millions of balances.
impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.inner.config;
        formatter
            .debug_struct("Engine")
            .field("mode", &config.mode)
            .field("strategy", &config.strategy)
            .field("workers", &config.workers)
            .field("queue_depth", &self.queue_depth())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    admission: Option<Admission>,
    draining: AtomicBool,
    inline_in_flight: AtomicU64,
    inline_idle: Notify,
    workers: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    summary: OnceCell<Summary>,
}

impl Engine {
    /// Validate `config`, build the ledger and queue, spawn the workers (queued mode).
    /// Must be called inside a tokio runtime.
    pub fn start(config: EngineConfig) -> Result<Engine, ConfigError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        let queued = config.mode == ProcessingMode::Queued;
        let ledger = Arc::new(Ledger::with_max_users(
            config.strategy,
            config.shard_count(),
            config.max_users,
        ));
        let metrics = Arc::new(Metrics::new(if queued { config.workers } else { 1 }));
        let mut handles = Vec::new();
        let admission = queued.then(|| {
            let owned = config.strategy == LedgerStrategy::Owned;
            let (admission, consumers) = queue::build(
                config.queue_kind,
                config.queue_capacity_events,
                config.workers,
                owned,
            );
            for (id, consumer) in consumers.into_iter().enumerate() {
                let context = WorkerContext {
                    id,
                    ledger: Arc::clone(&ledger),
                    metrics: Arc::clone(&metrics),
                    work: config.work_duration(),
                    hold: config.hold_duration(),
                };
                handles.push(tokio::spawn(worker::run(context, consumer)));
            }
            admission
        });
        tracing::info!(
            mode = %config.mode, strategy = %config.strategy, workers = config.workers,
            queue_capacity_events = config.queue_capacity_events, queue_kind = %config.queue_kind,
            work_ms = config.work_ms, hold_ms = config.hold_ms, time_scale = config.time_scale,
            "engine started"
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                ledger,
                metrics,
                admission,
                draining: AtomicBool::new(false),
                inline_in_flight: AtomicU64::new(0),
                inline_idle: Notify::new(),
                workers: parking_lot::Mutex::new(handles),
                summary: OnceCell::new(),
            }),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Take one valid event. Queued: `try_send`, never waits for room. Inline: applies it
    /// (simulated work, lock, hold, apply) and answers the balance. Validate-only: counts it.
    pub async fn ingest(&self, event: Event) -> Result<Ingested, Rejected> {
        match self.inner.config.mode {
            ProcessingMode::Queued | ProcessingMode::ValidateOnly => self.try_ingest(event),
            ProcessingMode::Inline => self.ingest_inline(event).await,
        }
    }

    /// [`Engine::ingest`] without `async`: exactly the same for queued and validate-only
    /// modes. In inline mode it applies at once under the shard's data lock, skipping the
    /// simulated work and the async hold lock (it cannot sleep): the answer and the counts are
    /// the same as `ingest`'s, only the stage-4 timing is not simulated.
    pub fn try_ingest(&self, event: Event) -> Result<Ingested, Rejected> {
        self.offer(event).map_err(|refused| refused.reason)
    }

    /// [`Engine::try_ingest`] that hands a refused event back, so a caller (a benchmark, a
    /// retrying producer) can offer it again without cloning. Refusals are counted as usual.
    pub fn offer(&self, event: Event) -> Result<Ingested, Refused> {
        let inner = &*self.inner;
        if self.refuses_as_draining(Ordering::Acquire) {
            let reason = Rejected::Draining;
            return Err(Refused { reason, event });
        }
        let Some(admission) = &inner.admission else {
            if inner.config.mode == ProcessingMode::Inline {
                return self.offer_inline(event);
            }
            inner.metrics.validated.increment();
            return Ok(Ingested::Validated);
        };
        let hash = user_hash(&event.user);
        let Ok(admitted) = inner.ledger.admit(hash, &event.user) else {
            return Err(self.refuse_ledger_full(event));
        };
        let job = Job {
            user: event.user,
            amount: event.amount,
            hash,
        };
        // Count before pushing (and take it back on refusal), so that a stats snapshot never
        // shows a worker applying an event not yet counted as accepted.
        inner.metrics.accepted.increment();
        let Err((error, job)) = admission.try_push(job) else {
            return Ok(Ingested::Queued);
        };
        inner.metrics.accepted.sub(1);
        if admitted == Admit::Pending {
            inner.ledger.cancel(hash, &job.user);
        }
        let reason = match error {
            PushError::Full => {
                inner.metrics.rejected_queue_full.increment();
                Rejected::QueueFull
            }
            PushError::Closed => {
                inner
                    .metrics
                    .rejected_draining
                    .fetch_add(1, Ordering::Relaxed);
                Rejected::Draining
            }
        };
        let event = Event {
            user: job.user,
            amount: job.amount,
        };
        Err(Refused { reason, event })
    }

    /// Count a `LedgerFull` refusal and hand the event back.
    fn refuse_ledger_full(&self, event: Event) -> Refused {
        self.inner
            .metrics
            .rejected_ledger_full
            .fetch_add(1, Ordering::Relaxed);
        Refused {
            reason: Rejected::LedgerFull,
            event,
        }
    }

    /// True (and the refusal counted) once a stop has begun: admission is closed. `ordering`
    /// is `SeqCst` on the inline paths, which must pair with shutdown's in-flight count.
    fn refuses_as_draining(&self, ordering: Ordering) -> bool {
        let draining = self.inner.draining.load(ordering);
        if draining {
            self.inner
                .metrics
                .rejected_draining
                .fetch_add(1, Ordering::Relaxed);
        }
        draining
    }

    /// Inline apply without awaiting (see [`Engine::try_ingest`]).
    fn offer_inline(&self, event: Event) -> Result<Ingested, Refused> {
        let inner = &*self.inner;
        inner.inline_in_flight.fetch_add(1, Ordering::SeqCst);
        let _leave = InlineGuard(inner);
        if self.refuses_as_draining(Ordering::SeqCst) {
            let reason = Rejected::Draining;
            return Err(Refused { reason, event });
        }
        let (hash, amount) = (user_hash(&event.user), event.amount);
        let shard = inner.ledger.shard(inner.ledger.shard_for(hash));
        // Accepted first (taken back on overflow): snapshots keep applied <= accepted.
        let mut table = shard.data.lock();
        if table
            .admit(hash, &event.user, inner.ledger.budget())
            .is_err()
        {
            drop(table);
            return Err(self.refuse_ledger_full(event));
        }
        inner.metrics.accepted.increment();
        // A new user's first event cannot overflow, so an overflow leaves nothing pending.
        let outcome = table.apply(hash, event.user, amount);
        drop(table);
        match outcome {
            Ok(balance) => {
                inner.metrics.workers[0]
                    .applied
                    .fetch_add(1, Ordering::Release);
                Ok(Ingested::Applied { balance })
            }
            Err(overflow) => {
                inner.metrics.accepted.sub(1);
                inner
                    .metrics
                    .rejected_overflow
                    .fetch_add(1, Ordering::Relaxed);
                let event = Event {
                    user: overflow.user,
                    amount,
                };
                Err(Refused {
                    reason: Rejected::Overflow,
                    event,
                })
            }
        }
    }

    async fn ingest_inline(&self, event: Event) -> Result<Ingested, Rejected> {
        let inner = &*self.inner;
        // Enter before checking `draining`, so shutdown either sees us in flight or we see it.
        inner.inline_in_flight.fetch_add(1, Ordering::SeqCst);
        let _leave = InlineGuard(inner);
        if self.refuses_as_draining(Ordering::SeqCst) {
            return Err(Rejected::Draining);
        }
        let hash = user_hash(&event.user);
        let admitted = inner.ledger.admit(hash, &event.user);
        if admitted.is_err() {
            return Err(self.refuse_ledger_full(event).reason);
        }
        let job = Job {
            user: event.user,
            amount: event.amount,
            hash,
        };
        let config = &inner.config;
        // Accepted first (taken back on overflow): snapshots keep applied <= accepted.
        inner.metrics.accepted.increment();
        let outcome = worker::apply_simulated(
            &inner.ledger,
            &inner.metrics.workers[0],
            0,
            job,
            config.work_duration(),
            config.hold_duration(),
        )
        .await;
        // Inline overflow is answered 422, so it is a rejection, not an accepted event.
        if let Ok(balance) = outcome {
            Ok(Ingested::Applied { balance })
        } else {
            inner.metrics.accepted.sub(1);
            inner
                .metrics
                .rejected_overflow
                .fetch_add(1, Ordering::Relaxed);
            Err(Rejected::Overflow)
        }
    }

    /// Count one invalid input (the front door calls this with [`crate::EventError::reason`]
    /// or its own reasons such as `body_too_large`).
    pub fn record_invalid(&self, reason: &'static str) {
        self.inner.metrics.record_invalid(reason);
    }

    /// Balance of `user`, if seen.
    pub fn balance(&self, user: &str) -> Option<i64> {
        self.inner.ledger.balance(user)
    }

    /// Up to `limit` balances with user > `after`, sorted by user.
    pub fn balances(&self, after: Option<&str>, limit: usize) -> Vec<(String, i64)> {
        self.inner.ledger.balances(after, limit)
    }

    /// Events waiting in the queue (0 when not queued).
    pub fn queue_depth(&self) -> usize {
        self.inner.admission.as_ref().map_or(0, Admission::len)
    }

    /// Queue bound in events (0 when not queued).
    pub fn queue_capacity_events(&self) -> usize {
        self.inner
            .admission
            .as_ref()
            .map_or(0, Admission::capacity_events)
    }

    /// `true` once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Everything `GET /stats` reports.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let metrics = &*inner.metrics;
        let queued = inner.admission.is_some();
        let per_worker: Vec<WorkerStats> = metrics
            .workers
            .iter()
            .enumerate()
            .map(|(worker, slot)| {
                // Summarize under the lock (a few µs) rather than copy two histograms.
                let (lock_wait, lock_hold) = {
                    let timings = slot.timings.lock();
                    (
                        LockSummary::from_histogram(&timings.wait_us),
                        LockSummary::from_histogram(&timings.hold_us),
                    )
                };
                WorkerStats {
                    worker,
                    applied: slot.applied.load(Ordering::Relaxed),
                    overflowed: slot.overflowed.load(Ordering::Relaxed),
                    busy_seconds: slot.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    lock_wait,
                    lock_hold,
                }
            })
            .collect();
        let merged = metrics.merged_timings();
        let summary = self.summary_now();
        Stats {
            accepted: summary.accepted,
            rejected: summary.rejected,
            rejected_by_reason: metrics.rejected_by_reason(),
            invalid: summary.invalid,
            invalid_by_reason: metrics.invalid_by_reason(),
            validated: metrics.validated.get(),
            applied: summary.applied,
            overflowed: summary.overflowed,
            queue_depth: self.queue_depth(),
            queue_capacity_events: self.queue_capacity_events(),
            workers: if queued { inner.config.workers } else { 0 },
            strategy: inner.config.strategy,
            shards: inner.ledger.shard_count(),
            mode: inner.config.mode,
            queue_kind: inner.config.queue_kind,
            users: inner.ledger.users(),
            users_reserved: inner.ledger.budget().used(),
            max_users: inner.config.max_users,
            balance_total: inner.ledger.balance_total(),
            draining: self.is_draining(),
            worker_busy_seconds: per_worker.iter().map(|worker| worker.busy_seconds).sum(),
            lock_wait: LockSummary::from_histogram(&merged.wait_us),
            lock_hold: LockSummary::from_histogram(&merged.hold_us),
            per_worker,
        }
    }

    /// Merged lock wait/hold histograms of every worker (µs).
    pub fn lock_timings(&self) -> LockTimings {
        let merged = self.inner.metrics.merged_timings();
        LockTimings {
            wait_us: merged.wait_us,
            hold_us: merged.hold_us,
        }
    }

    /// Stop admitting (ingest answers `Rejected::Draining`), close the queue, let the workers
    /// apply everything accepted, join them and return the final count. Idempotent: every
    /// call (also concurrent ones) returns the same summary.
    pub async fn shutdown(&self) -> Summary {
        *self.inner.summary.get_or_init(|| self.drain()).await
    }

    async fn drain(&self) -> Summary {
        let inner = &*self.inner;
        inner.draining.store(true, Ordering::SeqCst);
        if let Some(admission) = &inner.admission {
            admission.close();
        }
        loop {
            let idle = inner.inline_idle.notified();
            if inner.inline_in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            idle.await;
        }
        let handles = std::mem::take(&mut *inner.workers.lock());
        for handle in handles {
            if let Err(error) = handle.await {
                tracing::error!(%error, "worker task failed");
            }
        }
        let summary = self.summary(true);
        tracing::info!(?summary, "engine drained");
        summary
    }

    /// The counts right now (exact once drained).
    pub fn summary_now(&self) -> Summary {
        self.summary(self.inner.summary.initialized())
    }

    /// Once drained, a queued engine counts accepted as the jobs its workers received: every
    /// successful push was received, even if its `accepted` increment is still in flight.
    fn summary(&self, drained: bool) -> Summary {
        let metrics = &*self.inner.metrics;
        // Outcomes first, admissions second: an event is counted accepted before it is pushed,
        // so reading in this order keeps `applied + overflowed <= accepted` in every snapshot.
        let applied = metrics.sum_workers(|worker| &worker.applied);
        let overflowed = metrics.sum_workers(|worker| &worker.overflowed);
        let accepted = if self.inner.admission.is_some() && drained {
            metrics.sum_workers(|worker| &worker.received)
        } else {
            metrics.accepted.get()
        };
        Summary {
            accepted,
            applied,
            overflowed,
            rejected: metrics.rejected(),
            invalid: metrics.invalid.load(Ordering::Relaxed),
        }
    }
}

struct InlineGuard<'a>(&'a Inner);

impl Drop for InlineGuard<'_> {
    fn drop(&mut self) {
        if self.0.inline_in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.inline_idle.notify_waiters();
        }
    }
}
