//! The engine: admission, workers, ledger and metrics wired together (seed stages 3–8).
//!
//! Lesson: the whole story in one object. Stage 3 validates only; stage 4 applies in the
//! caller under one lock (async is not parallel); stages 5–8 admit into a bounded queue with
//! `try_send` (never waiting for room) and let workers apply; shutdown drains instead of
//! dropping work.
//!
//! Invariants:
//! - One door: every event enters through [`Engine::submit`]; the processing mode is decided
//!   once, at start (a `Processor`), and both applying modes admit through one private
//!   path (`Engine::admit`).
//! - [`Engine::submit`] never waits for queue room: a full queue is `Rejected::QueueFull` at
//!   once, and the refused event is handed back.
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use crate::batch::{self, IdCheck};
use crate::config::{ConfigError, EngineConfig, LedgerStrategy, ProcessingMode};
use crate::dedup::{Bounds, Claim, ClaimGuard, ConflictField, IdKey, Verdict, Window};
use crate::durable::LoggedId;
use crate::durable::{self, DurabilityMode, Durable, DurableError, DurableOptions};
use crate::event::{Event, EventId};
use crate::forward::{Forward, Forwarded};
use crate::ledger::{Admit, Ledger, LedgerFull, user_hash};
use crate::metrics::Metrics;
use crate::queue::{self, Admission, Job, PushError, release_claims};
pub use crate::stats::{DedupStats, LockSummary, LockTimings, Stats, Summary, WorkerStats};
use crate::worker::{self, Supervision, WorkerContext};

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
    /// A resend of an event already accepted (same id, user and amount, within the dedup
    /// window): nothing applied.
    Duplicate,
}

/// What became of one event of a batch (see [`Engine::submit_batch`]).
pub type EventOutcome = Result<Ingested, Rejected>;

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
    /// A new user while the ledger holds `max_users` users, or while its users cost
    /// `max_ledger_bytes` (HTTP 507): not transient, known
    /// users are still admitted.
    #[error("the ledger is full: no room for a new user")]
    LedgerFull,
    /// A log write or sync failed: nothing more is accepted until restart (HTTP 503).
    #[error("storage failed: the log cannot be written")]
    StorageFailed,
    /// The disk is full: this event's group was refused, nothing was applied (HTTP 507).
    #[error("disk full: the log cannot grow")]
    DiskFull,
    /// The event's id was already used, within the dedup window, for another user or amount
    /// (HTTP 422): nothing applied.
    #[error("the id was already used with a different `{}`", .0.name())]
    IdConflict(ConflictField),
    /// A worker panicked: nothing more is accepted and the server stops (HTTP 503).
    #[error("a worker failed: the engine is stopping")]
    WorkerFailed,
    /// A forwarding engine's store (the cluster) did not answer: the event may or may not be
    /// stored; a retry with the same id is safe (HTTP 503).
    #[error("the cluster did not answer")]
    Unreachable,
}

impl Rejected {
    /// Machine-readable reason, as in the HTTP body: `queue_full`, `draining`,
    /// `balance_overflow`, `ledger_full`, `storage_failed`, `disk_full`, `id_conflict`,
    /// `worker_failed`, `cluster_unreachable`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Draining => "draining",
            Self::Overflow => "balance_overflow",
            Self::LedgerFull => "ledger_full",
            Self::StorageFailed => "storage_failed",
            Self::DiskFull => "disk_full",
            Self::IdConflict(_) => "id_conflict",
            Self::WorkerFailed => "worker_failed",
            Self::Unreachable => "cluster_unreachable",
        }
    }
}

/// A refused event, handed back by [`Engine::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why it was refused.
    pub reason: Rejected,
    /// The event, untouched.
    pub event: Event,
}

impl Refused {
    fn new(reason: Rejected, event: Event) -> Self {
        Self { reason, event }
    }
}

/// A failure after which the engine refuses every event until the process restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A worker panicked (HTTP 503 `worker_failed`): its lane is dead, and what it had
    /// received is lost unless a log replays it at the next start.
    Worker,
    /// A log write or sync failed (HTTP 503 `storage_failed`).
    Storage,
}

impl Failure {
    /// The reason, as in the HTTP body and `/readyz`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Worker => Rejected::WorkerFailed.reason(),
            Self::Storage => Rejected::StorageFailed.reason(),
        }
    }

    /// What the operator reads when the server stops because of it.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Worker => {
                "a worker panicked: stopped after answering the requests in flight; events it \
                 had not applied are lost in memory mode and replayed from the log at the next \
                 start otherwise"
            }
            Self::Storage => {
                "the log's storage failed: stopped after answering the requests in flight; \
                 restart to recover every acknowledged event from the data directory"
            }
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory or its log cannot be used.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// A log needs the queued mode (stages 3 and 4 keep no log).
    #[error("a data directory needs the queued mode (stages 5-8 or the production default)")]
    NotQueued,
}

/// The answer of [`Engine::submit`], to be awaited. Ready at once except in inline mode, so
/// the hot (queued) path carries no large future: an inline apply is boxed instead.
#[must_use = "an event is taken only when its submission is awaited"]
pub enum Submission<'a> {
    /// Decided already (queued and validate-only modes); `None` once taken.
    Ready(Option<Result<Ingested, Refused>>),
    /// Inline mode: the apply in progress.
    Inline(Pin<Box<dyn Future<Output = Result<Ingested, Refused>> + Send + 'a>>),
    /// Queued with a log: waiting for the event's group to be written (and synced).
    Logged(Pin<Box<dyn Future<Output = Result<Ingested, Refused>> + Send + 'a>>),
    /// Another copy of the event's id is in flight: waiting for its outcome.
    Waiting(Pin<Box<dyn Future<Output = Result<Ingested, Refused>> + Send + 'a>>),
}

impl std::fmt::Debug for Submission<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(answer) => formatter.debug_tuple("Ready").field(answer).finish(),
            Self::Inline(_) => formatter.write_str("Inline"),
            Self::Logged(_) => formatter.write_str("Logged"),
            Self::Waiting(_) => formatter.write_str("Waiting"),
        }
    }
}

impl Future for Submission<'_> {
    type Output = Result<Ingested, Refused>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready(answer) => Poll::Ready(
                answer
                    .take()
                    .expect("a submission is polled after it answered"),
            ),
            Self::Inline(pending) | Self::Logged(pending) | Self::Waiting(pending) => {
                pending.as_mut().poll(context)
            }
        }
    }
}

/// A batch after its ids were checked and its users admitted.
struct PreparedBatch {
    /// One per event, in order (`Queued` for the events in `jobs`).
    outcomes: Vec<EventOutcome>,
    jobs: Vec<Job>,
    admitted: Vec<Admit>,
    /// With a log: the ids among `jobs` (their claims travel in the jobs), by index in
    /// `jobs`.
    ids: Vec<LoggedId>,
    /// Without a log: the claims of the ids among `jobs`, kept once the batch is queued.
    claims: Vec<Claim>,
}

impl PreparedBatch {
    fn with_capacity(events: usize) -> Self {
        Self {
            outcomes: Vec::with_capacity(events),
            jobs: Vec::with_capacity(events),
            admitted: Vec::with_capacity(events),
            ids: Vec::new(),
            claims: Vec::new(),
        }
    }
}

/// An id on its way with its event into the log, first seen at `at_unix_ms`.
fn logged_id(index: usize, id: EventId, at_unix_ms: u64) -> LoggedId {
    LoggedId {
        index,
        id,
        at_unix_ms,
    }
}

/// Build the queue and spawn one worker per consumer (queued mode).
fn start_workers(
    config: &EngineConfig,
    ledger: &Arc<Ledger>,
    metrics: &Arc<Metrics>,
    supervision: &Arc<Supervision>,
    window: &Arc<Window>,
) -> (Admission, Vec<JoinHandle<()>>) {
    let owned = config.strategy == LedgerStrategy::Owned;
    let (admission, consumers) = queue::build(
        config.queue_kind,
        config.queue_capacity_events,
        config.workers,
        owned,
    );
    let handles = consumers
        .into_iter()
        .enumerate()
        .map(|(id, consumer)| {
            let context = WorkerContext {
                id,
                ledger: Arc::clone(ledger),
                metrics: Arc::clone(metrics),
                work: config.work_duration(),
                hold: config.hold_duration(),
                supervision: Arc::clone(supervision),
                window: Arc::clone(window),
            };
            tokio::spawn(worker::supervised(
                id,
                Arc::clone(supervision),
                Arc::clone(window),
                worker::run(context, consumer),
            ))
        })
        .collect();
    (admission, handles)
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

/// Where an event goes once admitted: decided once, at start, from the processing mode.
#[derive(Debug)]
enum Processor {
    /// Stage 3: validate only, keep no state.
    ValidateOnly,
    /// Stage 4: apply in the caller, on the seed's locking path.
    Inline {
        /// Simulated work before the lock (scaled).
        work: Duration,
        /// Simulated work holding the lock (scaled).
        hold: Duration,
    },
    /// Stages 5–8 and production: into the bounded queue; workers apply.
    Queued(Admission),
    /// Production with a data directory: into the log first; its writer hands each durable
    /// group to the queue in log order.
    Logged {
        /// The queue the log writer feeds.
        admission: Arc<Admission>,
        /// The log, its writer and snapshots.
        durable: Box<Durable>,
    },
    /// A cluster node: ids checked here, events stored (and applied) elsewhere; see
    /// [`crate::forward`].
    Forwarded(Arc<dyn Forward>),
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    processor: Processor,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// The ids accepted recently (see [`crate::dedup`]); the log writer settles the claims
    /// of logged events.
    window: Arc<Window>,
    /// Raised when a worker panics: every event is then refused (`worker_failed`).
    supervision: Arc<Supervision>,
    draining: AtomicBool,
    inline_in_flight: AtomicU64,
    inline_idle: Notify,
    workers: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    summary: OnceCell<Summary>,
}

impl Engine {
    /// Validate `config`, build the ledger and queue, spawn the workers (queued mode).
    /// Must be called inside a tokio runtime. Balances live in memory only.
    pub fn start(config: EngineConfig) -> Result<Engine, ConfigError> {
        Self::start_with(config, None, None).map_err(|error| match error {
            StartError::Config(error) => error,
            StartError::Durable(_) | StartError::NotQueued => {
                unreachable!("no log was asked for")
            }
        })
    }

    /// [`Engine::start`] with a log in `options.data_dir`: recovers the balances from it
    /// (snapshot + the log after it), then answers each event only once it is durable.
    /// Blocks while recovering (call before serving). Needs the queued mode.
    pub fn start_durable(
        config: EngineConfig,
        options: &DurableOptions,
    ) -> Result<Engine, StartError> {
        if config.mode != ProcessingMode::Queued {
            return Err(StartError::NotQueued);
        }
        Self::start_with(config, Some(options), None)
    }

    /// An engine that applies nothing itself: it checks ids against its window, counts, and
    /// hands every accepted event to `forward` (a cluster's replicated stream), answering once
    /// `forward` acknowledged it. The balances live with the cluster; this engine's ledger
    /// stays empty and `queue_capacity_events` is the store's capacity as configured.
    pub fn start_forwarding(
        config: EngineConfig,
        forward: Arc<dyn Forward>,
    ) -> Result<Engine, ConfigError> {
        Self::start_with(config, None, Some(forward)).map_err(|error| match error {
            StartError::Config(error) => error,
            StartError::Durable(_) | StartError::NotQueued => {
                unreachable!("no log was asked for")
            }
        })
    }

    fn start_with(
        config: EngineConfig,
        log: Option<&DurableOptions>,
        forward: Option<Arc<dyn Forward>>,
    ) -> Result<Engine, StartError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime.into());
        }
        let ledger = Arc::new(Ledger::with_limits(
            config.shard_count(),
            config.max_users,
            config.max_ledger_bytes,
        ));
        let window = Arc::new(Window::new(Bounds {
            age: Duration::from_millis(config.dedup_window_ms),
            max_ids: config.dedup_max_ids,
        }));
        let queued = config.mode == ProcessingMode::Queued;
        let metrics = Arc::new(Metrics::new(if queued { config.workers } else { 1 }));
        let supervision = Arc::new(Supervision::default());
        let mut handles = Vec::new();
        let processor = match (config.mode, forward) {
            (_, Some(forward)) => Processor::Forwarded(forward),
            (ProcessingMode::ValidateOnly, None) => Processor::ValidateOnly,
            (ProcessingMode::Inline, None) => Processor::Inline {
                work: config.work_duration(),
                hold: config.hold_duration(),
            },
            (ProcessingMode::Queued, None) => {
                let (admission, worker_handles) =
                    start_workers(&config, &ledger, &metrics, &supervision, &window);
                handles = worker_handles;
                match log {
                    None => Processor::Queued(admission),
                    Some(options) => {
                        let admission = Arc::new(admission);
                        let durable = Box::new(Durable::start(
                            options, &ledger, &metrics, &admission, &window,
                        )?);
                        Processor::Logged { admission, durable }
                    }
                }
            }
        };
        tracing::info!(
            mode = %config.mode, strategy = %config.strategy, workers = config.workers,
            queue_capacity_events = config.queue_capacity_events, queue_kind = %config.queue_kind,
            work_ms = config.work_ms, hold_ms = config.hold_ms, time_scale = config.time_scale,
            durability = %log.map_or(DurabilityMode::Memory, |options| options.mode),
            promise = log.map_or(DurabilityMode::Memory, |options| options.mode).promise(),
            "engine started"
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                processor,
                ledger,
                metrics,
                window,
                supervision,
                draining: AtomicBool::new(false),
                inline_in_flight: AtomicU64::new(0),
                inline_idle: Notify::new(),
                workers: parking_lot::Mutex::new(handles),
                summary: OnceCell::new(),
            }),
        })
    }

    /// The one door for an event. Queued: admitted into the bounded queue without waiting for
    /// room (a full queue is `QueueFull` at once) and the answer is ready before the first
    /// poll. Inline: applied on the seed's locking path (simulated work, async lock, hold)
    /// and the new balance answered. Validate-only: counted. A refused event is handed back
    /// untouched (a retrying caller offers it again without cloning); every refusal is
    /// counted.
    ///
    /// An event with an id is first checked against the dedup window (both applying modes):
    /// a duplicate is answered [`Ingested::Duplicate`] and a conflict refused
    /// [`Rejected::IdConflict`], nothing applied; a fresh id is claimed, the event admitted as
    /// any other, and the claim kept if it was accepted or freed if it was refused. A copy
    /// whose id is in flight waits for the other copy's outcome.
    pub fn submit(&self, event: Event) -> Submission<'_> {
        if event.id.is_some() && self.remembers_ids() {
            return self.submit_identified(event);
        }
        self.submit_claimed(event, None)
    }

    /// Both applying modes remember ids; validate-only keeps no state at all.
    fn remembers_ids(&self) -> bool {
        !matches!(self.inner.processor, Processor::ValidateOnly)
    }

    /// The window's key for the event's id and the user's hash (`None` without an id).
    fn identify(&self, event: &Event) -> Option<(IdKey, u64)> {
        let id = event.id.as_ref()?;
        Some((self.inner.window.key(id), user_hash(&event.user)))
    }

    /// An event with an id: one check-and-claim in the window, then [`Self::decide`]; in
    /// flight, the check is repeated once the other copy settled.
    fn submit_identified(&self, event: Event) -> Submission<'_> {
        let Some((key, hash)) = self.identify(&event) else {
            return self.submit_claimed(event, None);
        };
        match self.inner.window.check(key, hash, event.amount) {
            Verdict::InFlight => Submission::Waiting(Box::pin(async move {
                let verdict = self.inner.window.settled(key, hash, event.amount).await;
                self.decide(verdict, event).await
            })),
            verdict => self.decide(verdict, event),
        }
    }

    /// Acts on the window's verdict for one event.
    fn decide(&self, verdict: Verdict, event: Event) -> Submission<'_> {
        match verdict {
            Verdict::Duplicate => {
                self.inner.metrics.duplicate.fetch_add(1, Ordering::Relaxed);
                Submission::Ready(Some(Ok(Ingested::Duplicate)))
            }
            Verdict::Conflict(field) => {
                Submission::Ready(Some(Err(Refused::new(Rejected::IdConflict(field), event))))
            }
            Verdict::Fresh(claim) => self.submit_claimed(event, Some(claim)),
            // `check` answers in flight only to `submit_identified`, which waits instead.
            Verdict::InFlight => self.submit_identified(event),
        }
    }

    /// Admits (and in inline mode applies) an event; its id's claim, if any, is kept when the
    /// event is accepted and freed when it is refused.
    fn submit_claimed(&self, event: Event, claim: Option<Claim>) -> Submission<'_> {
        let claim = ClaimGuard::new(&self.inner.window, claim);
        match &self.inner.processor {
            Processor::Queued(admission) => {
                let result = self.enqueue(admission, event);
                claim.settle(result.is_ok());
                Submission::Ready(Some(result))
            }
            Processor::Logged { admission, durable } => {
                self.enqueue_logged(admission, durable, event, claim.into_inner())
            }
            Processor::Inline { work, hold } => {
                let (work, hold) = (*work, *hold);
                Submission::Inline(Box::pin(async move {
                    let result = self.apply_inline(event, work, hold).await;
                    claim.settle(result.is_ok());
                    result
                }))
            }
            Processor::ValidateOnly => Submission::Ready(Some(self.validate(event))),
            Processor::Forwarded(forward) => self.forward_one(forward.as_ref(), event, claim),
        }
    }

    /// Forwarded: store the event elsewhere; accepted once the store acknowledged it (a
    /// duplicate there is a duplicate here). The id's claim is kept on success, freed on a
    /// refusal.
    fn forward_one<'a>(
        &'a self,
        forward: &'a dyn Forward,
        event: Event,
        claim: ClaimGuard<'a>,
    ) -> Submission<'a> {
        if let Some(reason) = self.closed(Ordering::Acquire) {
            return Submission::Ready(Some(Err(Refused::new(reason, event))));
        }
        Submission::Logged(Box::pin(async move {
            let result = forward.forward(&event).await;
            claim.settle(result.is_ok());
            match self.count_forwarded(result) {
                Ok(ingested) => Ok(ingested),
                Err(reason) => Err(Refused::new(reason, event)),
            }
        }))
    }

    /// Counts what the store answered for one event and turns it into the engine's outcome.
    fn count_forwarded(&self, result: Result<Forwarded, Rejected>) -> EventOutcome {
        let metrics = &self.inner.metrics;
        match result {
            Ok(Forwarded::Stored) => {
                metrics.accepted.increment();
                Ok(Ingested::Queued)
            }
            Ok(Forwarded::Duplicate) => {
                metrics.duplicate.fetch_add(1, Ordering::Relaxed);
                Ok(Ingested::Duplicate)
            }
            Err(reason) => {
                self.count_refusal(reason);
                Err(reason)
            }
        }
    }

    /// Forwarded batch: ids checked (all claimed at once), then every event with a fresh id or
    /// none stored by the store in one go; an outcome per event. When the store refused every
    /// event for the same reason (full, unreachable) the batch is refused whole with it.
    /// Not all-or-nothing otherwise: a store that fills mid-batch refuses the rest (each such
    /// event reported `queue_full`).
    async fn forward_batch(
        &self,
        forward: &dyn Forward,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, Rejected> {
        /// An event of the batch not decided by the window alone.
        enum Pending {
            /// Sent to the store (with its id's claim, if it has an id).
            Sent(usize, Option<Claim>),
            /// A repeat, inside the batch, of the event at this earlier index.
            SameAs(usize, usize),
        }
        let window = &*self.inner.window;
        let checks = batch::claim_all(window, &events).await;
        let mut outcomes: Vec<EventOutcome> = Vec::with_capacity(events.len());
        let mut pending = Vec::new();
        let mut sending = Vec::new();
        for (index, (event, check)) in events.into_iter().zip(checks).enumerate() {
            // A placeholder until the store answers (or the first copy is known).
            outcomes.push(Err(Rejected::Unreachable));
            match check {
                IdCheck::Decided(outcome) => outcomes[index] = outcome,
                IdCheck::SameAs(first) => pending.push(Pending::SameAs(index, first)),
                IdCheck::Claimed(claim) => {
                    pending.push(Pending::Sent(index, Some(claim)));
                    sending.push(event);
                }
                IdCheck::Anonymous => {
                    pending.push(Pending::Sent(index, None));
                    sending.push(event);
                }
            }
        }
        let mut results = forward.forward_batch(&sending).await.into_iter();
        for entry in pending {
            match entry {
                Pending::SameAs(index, first) => outcomes[index] = outcomes[first],
                Pending::Sent(index, claim) => {
                    let result = results.next().unwrap_or(Err(Rejected::Unreachable));
                    if let Some(claim) = claim {
                        if result.is_ok() {
                            window.commit(claim);
                        } else {
                            window.release(claim);
                        }
                    }
                    outcomes[index] = self.count_forwarded(result);
                }
            }
        }
        Ok(outcomes)
    }

    /// The door for a batch: every event is checked (ids) and admitted (user budget) on its
    /// own, then the admitted events enter the queue together or not at all. `Err` refuses
    /// the whole batch (`QueueFull`: the admitted events do not all fit; `Draining`), with
    /// nothing applied and every id left free; `Ok` holds one outcome per event, in order.
    /// Queued: one reservation and one push per lane for the whole batch. The lesson modes
    /// (inline, validate-only) take the events one by one through [`Self::submit`].
    pub async fn submit_batch(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, Rejected> {
        if let Some(reason) = self.closed(Ordering::Acquire) {
            return Err(reason);
        }
        match &self.inner.processor {
            Processor::Queued(admission) => self.enqueue_batch(admission, events).await,
            Processor::Logged { admission, durable } => {
                self.enqueue_logged_batch(admission, durable, events).await
            }
            Processor::Forwarded(forward) => {
                let outcomes = self.forward_batch(forward.as_ref(), events).await?;
                whole_batch_refusal(&outcomes).map_or(Ok(outcomes), Err)
            }
            Processor::Inline { .. } | Processor::ValidateOnly => {
                let mut outcomes = Vec::with_capacity(events.len());
                for event in events {
                    outcomes.push(self.submit(event).await.map_err(|refused| refused.reason));
                }
                Ok(outcomes)
            }
        }
    }

    /// Checks every event's id and admits every user, in order: the events to queue, with
    /// the outcome of those decided already. `logged`: the ids go into the log and their
    /// claims into the jobs (the workers settle them); otherwise the claims are set aside,
    /// to be kept once the batch is queued. The users are admitted together (one ledger lock
    /// per shard, see [`Ledger::admit_all`]), not one lock per event.
    async fn prepare_batch(&self, events: Vec<Event>, logged: bool) -> PreparedBatch {
        let inner = &*self.inner;
        let checks = batch::claim_all(&inner.window, &events).await;
        let mut admissions = self.admit_checked(&events, &checks).into_iter();
        let mut prepared = PreparedBatch::with_capacity(events.len());
        // One clock read per batch: every id of a batch is first seen at the same instant.
        let now_unix_ms = crate::dedup::now_unix_ms();
        for (mut event, check) in events.into_iter().zip(checks) {
            let claim = match check {
                IdCheck::Decided(outcome) => {
                    prepared.outcomes.push(outcome);
                    continue;
                }
                IdCheck::SameAs(first) => {
                    let outcome = prepared.outcomes.get(first).copied();
                    prepared
                        .outcomes
                        .push(outcome.unwrap_or(Ok(Ingested::Duplicate)));
                    continue;
                }
                IdCheck::Claimed(claim) => Some(claim),
                IdCheck::Anonymous => None,
            };
            let (hash, admitted) = admissions
                .next()
                .expect("one admission per event the window let through");
            let Ok(admitted) = admitted else {
                inner
                    .metrics
                    .rejected_ledger_full
                    .fetch_add(1, Ordering::Relaxed);
                prepared.outcomes.push(Err(Rejected::LedgerFull));
                if let Some(claim) = claim {
                    inner.window.release(claim);
                }
                continue;
            };
            let id = event.id.take();
            let mut job = Job::new(event.user, event.amount, hash);
            prepared.outcomes.push(Ok(Ingested::Queued));
            match (claim, id) {
                (Some(claim), Some(id)) if logged => {
                    prepared
                        .ids
                        .push(logged_id(prepared.jobs.len(), id, now_unix_ms));
                    job.claim = Some(claim);
                }
                (Some(claim), _) => prepared.claims.push(claim),
                (None, _) => {}
            }
            prepared.jobs.push(job);
            prepared.admitted.push(admitted);
        }
        prepared
    }

    /// Admits the users of the events the window let through (`checks`: claimed or
    /// anonymous), in order, all at once: each such event's user hash and admission.
    fn admit_checked(
        &self,
        events: &[Event],
        checks: &[IdCheck],
    ) -> Vec<(u64, Result<Admit, LedgerFull>)> {
        let users: Vec<(u64, &str)> = events
            .iter()
            .zip(checks)
            .filter(|(_, check)| matches!(check, IdCheck::Claimed(_) | IdCheck::Anonymous))
            .map(|(event, _)| (user_hash(&event.user), event.user.as_str()))
            .collect();
        let admitted = self.inner.ledger.admit_all(&users);
        users.iter().map(|&(hash, _)| hash).zip(admitted).collect()
    }

    /// Queued batch: one all-or-nothing push (one reservation per lane); the ids are kept
    /// once queued (memory mode's promise: a 202 means queued), all under one window lock.
    async fn enqueue_batch(
        &self,
        admission: &Admission,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, Rejected> {
        let inner = &*self.inner;
        let prepared = self.prepare_batch(events, false).await;
        let count = prepared.jobs.len() as u64;
        inner.metrics.accepted.add(count);
        let pushed = admission.try_push_batch(prepared.jobs);
        let kept = pushed.is_ok();
        inner
            .window
            .settle_all(prepared.claims.into_iter().map(|claim| (claim, kept)));
        match pushed {
            Ok(()) => Ok(self.count_duplicates(prepared.outcomes)),
            Err((error, mut jobs)) => {
                inner.metrics.accepted.sub(count);
                self.undo_batch(&mut jobs, &prepared.admitted);
                Err(self.count_push_refusal(error, count))
            }
        }
    }

    /// Queued batch with a log: room for all reserved at once or none (events in the log
    /// writer count against the queue bound), then ONE log entry for the batch; answered once
    /// it is durable; the log writer hands it to the workers with one reservation per lane.
    async fn enqueue_logged_batch(
        &self,
        admission: &Admission,
        durable: &Durable,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, Rejected> {
        let inner = &*self.inner;
        if durable.has_failed() {
            return Err(Rejected::StorageFailed);
        }
        let mut prepared = self.prepare_batch(events, true).await;
        let count = prepared.jobs.len();
        if count == 0 {
            return Ok(self.count_duplicates(prepared.outcomes));
        }
        if !durable.reserve_room(count, admission) {
            inner.metrics.rejected_queue_full.add(count as u64);
            self.undo_batch(&mut prepared.jobs, &prepared.admitted);
            return Err(Rejected::QueueFull);
        }
        inner.metrics.accepted.add(count as u64);
        let admitted = prepared.admitted;
        let answer = durable.submit(prepared.jobs, admitted.clone(), prepared.ids, &inner.window);
        let refused = match answer {
            Ok(answer) => match answer.await {
                Ok(Ok(())) => return Ok(self.count_duplicates(prepared.outcomes)),
                Ok(Err(refused)) => refused,
                Err(_) => (Rejected::StorageFailed, Vec::new()),
            },
            Err(refused) => refused,
        };
        inner.metrics.accepted.sub(count as u64);
        let (reason, mut jobs) = refused;
        self.undo_batch(&mut jobs, &admitted);
        Err(reason)
    }

    /// Gives back what a refused batch took: new users' slots and ids' claims (one window
    /// lock).
    fn undo_batch(&self, jobs: &mut [Job], admitted: &[Admit]) {
        for (job, &admitted) in jobs.iter().zip(admitted) {
            if admitted == Admit::Pending {
                self.inner.ledger.cancel(job.hash, &job.user);
            }
        }
        release_claims(&self.inner.window, jobs);
    }

    /// Counts the duplicates among a batch's outcomes; hands the outcomes on.
    fn count_duplicates(&self, outcomes: Vec<EventOutcome>) -> Vec<EventOutcome> {
        let duplicates = outcomes
            .iter()
            .filter(|outcome| **outcome == Ok(Ingested::Duplicate))
            .count();
        self.inner
            .metrics
            .duplicate
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        outcomes
    }

    /// Counts `events` refused by the queue and names the refusal.
    fn count_push_refusal(&self, error: PushError, events: u64) -> Rejected {
        let metrics = &self.inner.metrics;
        match error {
            PushError::Full => {
                metrics.rejected_queue_full.add(events);
                Rejected::QueueFull
            }
            // A lane closes when a stop begins or when its worker died.
            PushError::Closed if self.inner.supervision.has_failed() => {
                metrics
                    .rejected_worker_failed
                    .fetch_add(events, Ordering::Relaxed);
                Rejected::WorkerFailed
            }
            PushError::Closed => {
                metrics
                    .rejected_draining
                    .fetch_add(events, Ordering::Relaxed);
                Rejected::Draining
            }
        }
    }

    /// Validate-only mode (stage 3): count the event, keep nothing.
    fn validate(&self, event: Event) -> Result<Ingested, Refused> {
        if let Some(reason) = self.closed(Ordering::Acquire) {
            return Err(Refused::new(reason, event));
        }
        self.inner.metrics.validated.increment();
        Ok(Ingested::Validated)
    }

    /// Admit `event` against the user budget (see [`Ledger::admit`]): the one admission of
    /// both applying modes. A ledger-full refusal is counted and the event handed back.
    fn admit(&self, event: Event) -> Result<(Job, Admit), Refused> {
        let hash = user_hash(&event.user);
        let Ok(admitted) = self.inner.ledger.admit(hash, &event.user) else {
            self.inner
                .metrics
                .rejected_ledger_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused::new(Rejected::LedgerFull, event));
        };
        Ok((Job::new(event.user, event.amount, hash), admitted))
    }

    /// Queued mode: admit, then push without waiting for room.
    fn enqueue(&self, admission: &Admission, event: Event) -> Result<Ingested, Refused> {
        let inner = &*self.inner;
        if let Some(reason) = self.closed(Ordering::Acquire) {
            return Err(Refused::new(reason, event));
        }
        let (job, admitted) = self.admit(event)?;
        // Count before pushing (and take it back on refusal), so that a stats snapshot never
        // shows a worker applying an event not yet counted as accepted.
        inner.metrics.accepted.increment();
        let Err((error, job)) = admission.try_push(job) else {
            return Ok(Ingested::Queued);
        };
        inner.metrics.accepted.sub(1);
        if admitted == Admit::Pending {
            inner.ledger.cancel(job.hash, &job.user);
        }
        let reason = self.count_push_refusal(error, 1);
        Err(Refused::new(reason, job.into_event()))
    }

    /// Queued with a log: admit, reserve room (events in the log writer count against the
    /// queue bound) and submit to the log before answering; the answer then waits until the
    /// event's group is durable and a worker applied it (an overflow is answered 422
    /// `balance_overflow`: logged, skipped alike on replay, counted `overflowed`, never a
    /// 202). The id's claim travels in the job: the log writer frees it if the group is
    /// refused, the worker keeps it once applied (frees it on overflow), even if nobody waits
    /// for the answer any more.
    fn enqueue_logged(
        &self,
        admission: &Admission,
        durable: &Durable,
        mut event: Event,
        claim: Option<Claim>,
    ) -> Submission<'_> {
        let window = &self.inner.window;
        let refuse = |refused: Refused, claim: Option<Claim>| {
            if let Some(claim) = claim {
                window.release(claim);
            }
            Submission::Ready(Some(Err(refused)))
        };
        if let Some(reason) = self.closed(Ordering::Acquire) {
            return refuse(Refused::new(reason, event), claim);
        }
        if durable.has_failed() {
            self.count_refusal(Rejected::StorageFailed);
            return refuse(Refused::new(Rejected::StorageFailed, event), claim);
        }
        let id = event.id.take();
        let (mut job, admitted) = match self.admit(event) {
            Ok(admitted) => admitted,
            Err(refused) => return refuse(refused, claim),
        };
        // The answer waits for the apply too: an event that would overflow its balance is
        // answered 422, never 202 (see the README, "What a 202 waits for").
        let (reply, applied) = tokio::sync::oneshot::channel();
        job.reply = Some(reply);
        if !durable.reserve_room(1, admission) {
            return refuse(
                self.refuse_admitted(Rejected::QueueFull, job, admitted),
                claim,
            );
        }
        let ids = match (claim, id) {
            (Some(claim), Some(id)) => {
                job.claim = Some(claim);
                vec![logged_id(0, id, crate::dedup::now_unix_ms())]
            }
            (claim, _) => {
                if let Some(claim) = claim {
                    window.release(claim);
                }
                Vec::new()
            }
        };
        let metrics = &self.inner.metrics;
        metrics.accepted.increment();
        let answer = match durable.submit(vec![job], vec![admitted], ids, window) {
            Ok(answer) => answer,
            Err((reason, jobs)) => {
                metrics.accepted.sub(1);
                return Submission::Ready(Some(Err(self.refuse_jobs(reason, jobs, &[admitted]))));
            }
        };
        Submission::Logged(Box::pin(async move {
            match answer.await {
                Ok(Ok(())) => match applied.await {
                    Ok(Ok(_balance)) => Ok(Ingested::Queued),
                    // Logged but not applied (replay skips it the same way): counted
                    // `overflowed` by the worker, answered 422.
                    Ok(Err(())) => Err(Refused::new(Rejected::Overflow, Event::new("", 0))),
                    // The queue closed before a worker took it: it is in the log and is applied
                    // at the next start.
                    Err(_) => Ok(Ingested::Queued),
                },
                Ok(Err((reason, jobs))) => {
                    metrics.accepted.sub(1);
                    Err(self.refuse_jobs(reason, jobs, &[admitted]))
                }
                // The writer answers every submission; only a panicked writer drops one.
                Err(_) => {
                    metrics.accepted.sub(1);
                    self.count_refusal(Rejected::StorageFailed);
                    Err(Refused::new(Rejected::StorageFailed, Event::new("", 0)))
                }
            }
        }))
    }

    /// Refuse admitted jobs: give new users' slots back, count each refusal; the first job
    /// is handed back as the refused event.
    fn refuse_jobs(&self, reason: Rejected, jobs: Vec<Job>, admitted: &[Admit]) -> Refused {
        let mut first = None;
        for (job, &admitted) in jobs.into_iter().zip(admitted) {
            let refused = self.refuse_admitted(reason, job, admitted);
            first.get_or_insert(refused);
        }
        first.unwrap_or_else(|| Refused::new(reason, Event::new("", 0)))
    }

    /// Refuse an admitted event: give a new user's slot back, count the refusal, hand the
    /// event back.
    fn refuse_admitted(&self, reason: Rejected, mut job: Job, admitted: Admit) -> Refused {
        release_claims(&self.inner.window, [&mut job]);
        if admitted == Admit::Pending {
            self.inner.ledger.cancel(job.hash, &job.user);
        }
        self.count_refusal(reason);
        Refused::new(reason, job.into_event())
    }

    /// Count one refusal under its reason.
    fn count_refusal(&self, reason: Rejected) {
        let metrics = &self.inner.metrics;
        let counter = match reason {
            Rejected::QueueFull => {
                metrics.rejected_queue_full.increment();
                return;
            }
            Rejected::Draining => &metrics.rejected_draining,
            Rejected::Overflow => &metrics.rejected_overflow,
            Rejected::LedgerFull => &metrics.rejected_ledger_full,
            Rejected::StorageFailed => &metrics.rejected_storage_failed,
            Rejected::DiskFull => &metrics.rejected_disk_full,
            Rejected::WorkerFailed => &metrics.rejected_worker_failed,
            Rejected::Unreachable => &metrics.rejected_unreachable,
            // A conflict is bad input: the front door counts it as invalid.
            Rejected::IdConflict(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Why admission is closed, if it is (the refusal then counted): a worker failed, or a
    /// stop has begun. `ordering` is `SeqCst` on the inline path, which must pair with
    /// shutdown's in-flight count.
    fn closed(&self, ordering: Ordering) -> Option<Rejected> {
        let reason = if self.inner.supervision.has_failed() {
            Rejected::WorkerFailed
        } else if self.inner.draining.load(ordering) {
            Rejected::Draining
        } else {
            return None;
        };
        self.count_refusal(reason);
        Some(reason)
    }

    /// Inline mode (stage 4): admit, then apply in the caller on the seed's locking path.
    async fn apply_inline(
        &self,
        event: Event,
        work: Duration,
        hold: Duration,
    ) -> Result<Ingested, Refused> {
        let inner = &*self.inner;
        // Enter before checking `draining`, so shutdown either sees us in flight or we see it.
        inner.inline_in_flight.fetch_add(1, Ordering::SeqCst);
        let _leave = InlineGuard(inner);
        if let Some(reason) = self.closed(Ordering::SeqCst) {
            return Err(Refused::new(reason, event));
        }
        let (job, _) = self.admit(event)?;
        let amount = job.amount;
        // Accepted first (taken back on overflow): snapshots keep applied <= accepted. A new
        // user's first event cannot overflow, so an overflow leaves nothing pending.
        inner.metrics.accepted.increment();
        let slot = &inner.metrics.workers[0];
        match worker::apply_simulated(&inner.ledger, &inner.window, slot, 0, job, work, hold).await
        {
            Ok(balance) => Ok(Ingested::Applied { balance }),
            Err(overflow) => {
                // Inline overflow is answered 422: a rejection, not an accepted event.
                inner.metrics.accepted.sub(1);
                inner
                    .metrics
                    .rejected_overflow
                    .fetch_add(1, Ordering::Relaxed);
                let event = Event::new(overflow.user, amount);
                Err(Refused::new(Rejected::Overflow, event))
            }
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

    /// Up to `limit` balances with user > `after` (compared as bytes), sorted by user.
    pub fn balances(&self, after: Option<&[u8]>, limit: usize) -> Vec<(String, i64)> {
        self.inner.ledger.balances(after, limit)
    }

    /// Events waiting in the queue (0 when not queued).
    pub fn queue_depth(&self) -> usize {
        self.admission().map_or(0, Admission::depth)
    }

    /// Queue bound in events (0 when not queued; forwarded: the store's capacity as
    /// configured).
    pub fn queue_capacity_events(&self) -> usize {
        if self.forwards() {
            return self.inner.config.queue_capacity_events;
        }
        self.admission().map_or(0, Admission::capacity_events)
    }

    /// The most events one batch may hold and still be admitted all-or-nothing: the queue's
    /// capacity, and a forwarding engine's store's atomic bound.
    pub fn batch_capacity_events(&self) -> usize {
        let forward_bound = match &self.inner.processor {
            Processor::Forwarded(forward) => forward.batch_max_events(),
            _ => None,
        };
        let capacity = self.queue_capacity_events();
        forward_bound.map_or(capacity, |bound| bound.min(capacity))
    }

    /// `true` for a cluster node's engine (see [`Engine::start_forwarding`]).
    pub fn forwards(&self) -> bool {
        matches!(self.inner.processor, Processor::Forwarded(_))
    }

    /// The queue, in queued mode.
    fn admission(&self) -> Option<&Admission> {
        match &self.inner.processor {
            Processor::Queued(admission) => Some(admission),
            Processor::Logged { admission, .. } => Some(admission),
            Processor::ValidateOnly | Processor::Inline { .. } | Processor::Forwarded(_) => None,
        }
    }

    /// The log, with a data directory.
    fn durable(&self) -> Option<&Durable> {
        match &self.inner.processor {
            Processor::Logged { durable, .. } => Some(durable),
            Processor::Queued(_)
            | Processor::ValidateOnly
            | Processor::Inline { .. }
            | Processor::Forwarded(_) => None,
        }
    }

    /// The durability mode in force.
    pub fn durability(&self) -> DurabilityMode {
        self.durable().map_or(DurabilityMode::Memory, Durable::mode)
    }

    /// The log's histograms (events per group, sync latency); `None` without a log.
    pub fn log_histograms(&self) -> Option<durable::LogHistograms> {
        self.durable().map(Durable::histograms)
    }

    /// `true` once a log write or sync failed: nothing more is accepted until restart.
    pub fn has_storage_failed(&self) -> bool {
        self.durable().is_some_and(Durable::has_failed)
    }

    /// Resolves once a log write or sync failed (never without a log).
    async fn storage_failed(&self) {
        match self.durable() {
            Some(durable) => durable.failed().await,
            None => std::future::pending().await,
        }
    }

    /// Why the engine refuses every event for good, if it does: a worker panicked, or the
    /// log's storage failed. Either way the server must stop (and exit non-zero).
    pub fn failure(&self) -> Option<Failure> {
        if self.inner.supervision.has_failed() {
            Some(Failure::Worker)
        } else if self.has_storage_failed() {
            Some(Failure::Storage)
        } else {
            None
        }
    }

    /// Resolves with the first failure (see [`Self::failure`]); never if none happens.
    pub async fn failed(&self) -> Failure {
        tokio::select! {
            () = self.inner.supervision.failed() => Failure::Worker,
            () = self.storage_failed() => Failure::Storage,
        }
    }

    /// Makes the next worker that receives a batch panic, to test supervision
    /// (fault-injection builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_worker_panic(&self) {
        self.inner.supervision.inject_panic();
    }

    /// `true` once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Everything `GET /stats` reports.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let metrics = &*inner.metrics;
        let queued = self.admission().is_some();
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
            duplicate: metrics.duplicate.load(Ordering::Relaxed),
            dedup: self.dedup_stats(),
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
            ledger_bytes_reserved: inner.ledger.budget().used_bytes(),
            max_ledger_bytes: inner.config.max_ledger_bytes,
            balance_total: inner.ledger.balance_total(),
            draining: self.is_draining(),
            worker_busy_seconds: per_worker.iter().map(|worker| worker.busy_seconds).sum(),
            lock_wait: LockSummary::from_histogram(&merged.wait_us),
            lock_hold: LockSummary::from_histogram(&merged.hold_us),
            per_worker,
            durability: self
                .durable()
                .map_or_else(durable::memory_stats, Durable::stats),
        }
    }

    /// The dedup window: ids kept, bounds, and the effective window (age of the oldest id).
    pub fn dedup_stats(&self) -> DedupStats {
        let window = &self.inner.window;
        let bounds = window.bounds();
        DedupStats {
            ids: window.len(),
            max_ids: bounds.max_ids,
            window_seconds: bounds.age.as_secs_f64(),
            effective_window_seconds: window.oldest_age().map(|age| age.as_secs_f64()),
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

    /// Stop admitting (`submit` answers `Rejected::Draining`), close the queue, let the workers
    /// apply everything accepted, join them and return the final count. Idempotent: every
    /// call (also concurrent ones) returns the same summary.
    pub async fn shutdown(&self) -> Summary {
        *self.inner.summary.get_or_init(|| self.drain()).await
    }

    async fn drain(&self) -> Summary {
        let inner = &*self.inner;
        inner.draining.store(true, Ordering::SeqCst);
        if self.durable().is_some() {
            // Answer everything in the log writer and hand it to the workers (still running),
            // then write a last snapshot: blocking file work, off the runtime.
            let engine = self.clone();
            // After a worker failed no cut can be consistent (its events will never be
            // applied, and the snapshot's cut refuses to cover them): skip the last snapshot
            // rather than wait for workers that will never catch up. The next start replays
            // those events from the log.
            let snapshot = !inner.supervision.has_failed();
            let closed = tokio::task::spawn_blocking(move || {
                if let Some(durable) = engine.durable() {
                    durable.close(snapshot);
                }
            });
            if let Err(error) = closed.await {
                tracing::error!(%error, "closing the log failed");
            }
        }
        if let Some(admission) = self.admission() {
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
        if self.forwards() {
            return summary; // applied by the partitions' owners, not here
        }
        assert_eq!(
            summary.applied + summary.overflowed + summary.lost,
            summary.accepted,
            "drained: every accepted event was applied, counted overflowed, or lost with a \
             failed worker"
        );
        let users = inner.ledger.users();
        assert!(
            users <= inner.config.max_users,
            "the ledger holds {users} users, above max_users"
        );
        summary
    }

    /// The counts right now (exact once drained).
    fn summary_now(&self) -> Summary {
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
        let worker_failed = self.inner.supervision.has_failed();
        // A dead lane's jobs were pushed (accepted) but never received: count pushes then.
        let accepted = if self.admission().is_some() && drained && !worker_failed {
            metrics.sum_workers(|worker| &worker.received)
        } else {
            metrics.accepted.get()
        };
        let lost = if drained && worker_failed {
            accepted.saturating_sub(applied + overflowed)
        } else {
            0
        };
        Summary {
            accepted,
            applied,
            overflowed,
            rejected: metrics.rejected(),
            invalid: metrics.invalid.load(Ordering::Relaxed),
            lost,
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

/// The reason a forwarded batch is refused whole: every event was refused, and for the same
/// backpressure or reachability reason (nothing of it stored, or nothing known stored).
fn whole_batch_refusal(outcomes: &[EventOutcome]) -> Option<Rejected> {
    let first = match outcomes.first()? {
        Err(reason @ (Rejected::QueueFull | Rejected::Unreachable | Rejected::Draining)) => *reason,
        _ => return None,
    };
    outcomes
        .iter()
        .all(|outcome| *outcome == Err(first))
        .then_some(first)
}
