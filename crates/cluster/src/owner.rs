//! The owner of one partition: takes it over (claim the snapshot, load it), applies the
//! partition's events in stream order, snapshots them, then purges what the snapshot covers.
//!
//! Invariants:
//! - Nothing acknowledged is lost: an event leaves the stream only by a purge, and a purge
//!   only removes sequences at or below a snapshot this owner has just written (compare-and-set,
//!   so it is the partition's latest snapshot or was superseded by a later one).
//! - Nothing is applied twice: events are read from `applied_sequence + 1` in stream order and
//!   [`PartitionState::apply`] skips anything at or below it; the snapshot stores that sequence
//!   with the balances, so a new owner resumes exactly where the last snapshot stopped.
//! - A stale owner does no harm: its snapshot writes are fenced by the claim (see `snapshot`),
//!   and it checks its lease before each write and stops when the lease is no longer valid.
//!   Its purge, if it ever runs, follows its own successful write, so it covers only events
//!   that write contains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::StreamExt;
use tokio::sync::{RwLock, watch};

use crate::fault::{PausePoint, pause_point};
use crate::layout::Layout;
use crate::partition::{Partition, subject};
use crate::publish::CLIENT_ID_HEADER;
use crate::snapshot::{SnapshotError, SnapshotSlot};
use crate::state::{Applied, ClientId, IdBounds, PartitionState};
use crate::view::IdGauges;
use crate::wire::{Payload, decode_payload};

/// How long the owner waits for an event before snapshotting what it applied (if anything).
const IDLE_SNAPSHOT: Duration = Duration::from_millis(500);
/// Pause before recreating a consumer that failed (a server died, a leader moved).
const CONSUMER_RETRY: Duration = Duration::from_millis(200);
/// Idle periods after which the owner asks the stream whether it is behind: a consumer whose
/// server died can stay silent without an error, so silence with events waiting means
/// "recreate the consumer".
const STALL_CHECK_IDLE_PERIODS: u32 = 4;

/// Why an owner stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnerExit {
    /// Asked to stop; the last snapshot was written if the lease was still valid.
    Stopped,
    /// The lease's validity ran out before it was renewed: stopped without writing.
    LeaseExpired,
    /// Another owner claimed the partition: stopped without writing.
    Fenced,
    /// The snapshot could not be written or read (the lease holder should give the lease up).
    Failed(String),
}

/// An owner could not take its partition over.
#[derive(Debug, thiserror::Error)]
#[error("taking over partition {partition}: {source}")]
pub struct TakeOverError {
    partition: Partition,
    source: SnapshotError,
}

/// The owner of one partition.
#[derive(Debug)]
pub struct Owner {
    layout: Layout,
    partition: Partition,
    slot: SnapshotSlot,
    state: Arc<RwLock<PartitionState>>,
    snapshot_every_events: u64,
    unsnapshotted_events: u64,
    /// How long and how many client ids the partition remembers.
    id_bounds: IdBounds,
    /// Events of the partition in the stream not yet delivered to this owner (JetStream's
    /// pending count for the consumer, as of the last delivery).
    lag_events: Arc<AtomicU64>,
    /// The partition's client-id figures, published after each event for /stats.
    id_gauges: Arc<IdGauges>,
    /// Events folded into the balances by this owner (shared with the member's counters).
    applied_events: Arc<AtomicU64>,
    /// `applied_sequence`, published after each message: a read waiting for a sequence to be
    /// applied (a stored batch's `kept` ids) wakes when it is, not on a timer.
    applied_sequence: watch::Sender<u64>,
}

impl Owner {
    /// Takes `partition` over for `node`, holding lease revision `lease_revision`: claims the
    /// snapshot (fencing any previous owner) and loads it. Replay happens in [`Owner::run`].
    pub async fn take_over(
        layout: Layout,
        partition: Partition,
        node: &str,
        lease_revision: u64,
        snapshot_every_events: u64,
    ) -> Result<Self, TakeOverError> {
        // Boxed: the claim's bucket round trips make a large future.
        let claim = SnapshotSlot::claim(layout.snapshots.clone(), partition, node, lease_revision);
        let (slot, state) = Box::pin(claim)
            .await
            .map_err(|source| TakeOverError { partition, source })?;
        let id_gauges = Arc::new(IdGauges::default());
        id_gauges.publish(&state);
        let applied_sequence = watch::Sender::new(state.applied_sequence);
        Ok(Self {
            layout,
            partition,
            slot,
            state: Arc::new(RwLock::new(state)),
            snapshot_every_events: snapshot_every_events.max(1),
            unsnapshotted_events: 0,
            id_bounds: IdBounds::default(),
            lag_events: Arc::new(AtomicU64::new(0)),
            id_gauges,
            applied_events: Arc::new(AtomicU64::new(0)),
            applied_sequence,
        })
    }

    /// This owner with client ids remembered within `bounds` (default: [`IdBounds::default`]).
    #[must_use]
    pub fn with_id_bounds(mut self, bounds: IdBounds) -> Self {
        self.id_bounds = bounds;
        self
    }

    /// This owner counting the events it applies into `counter` (the member's total).
    #[must_use]
    pub fn counting_applied_into(mut self, counter: Arc<AtomicU64>) -> Self {
        self.applied_events = counter;
        self
    }

    /// The partition's state, shared for reads while the owner runs.
    pub fn state(&self) -> Arc<RwLock<PartitionState>> {
        Arc::clone(&self.state)
    }

    /// The last stream sequence applied, published after each message (see
    /// `reads::kept_ids_once_applied`); closed when the owner stops.
    pub fn applied_sequence(&self) -> watch::Receiver<u64> {
        self.applied_sequence.subscribe()
    }

    /// The apply lag in events, shared for /stats while the owner runs.
    pub fn lag_events(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.lag_events)
    }

    /// The partition's client-id figures, shared for /stats while the owner runs.
    pub fn id_gauges(&self) -> Arc<IdGauges> {
        Arc::clone(&self.id_gauges)
    }

    /// Applies the partition's events in stream order until `stop` turns true or the lease
    /// (its validity deadline, kept current by the lease keeper in `valid_until`) runs out.
    pub async fn run(
        mut self,
        valid_until: watch::Receiver<Instant>,
        mut stop: watch::Receiver<bool>,
    ) -> OwnerExit {
        loop {
            let start = self.state.read().await.applied_sequence + 1;
            let mut messages = match self.consumer(start).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(partition = self.partition, %error, "consumer not created");
                    tokio::time::sleep(CONSUMER_RETRY).await;
                    if *stop.borrow() {
                        return self.finish(&valid_until).await;
                    }
                    continue;
                }
            };
            let mut idle_periods = 0;
            loop {
                if *valid_until.borrow() <= Instant::now() {
                    return OwnerExit::LeaseExpired;
                }
                tokio::select! {
                    _ = stop.changed() => return self.finish(&valid_until).await,
                    next = tokio::time::timeout(IDLE_SNAPSHOT, messages.next()) => match next {
                        Ok(Some(Ok(message))) => {
                            idle_periods = 0;
                            if let Err(exit) = self.on_message(&message, &valid_until).await {
                                return exit;
                            }
                        }
                        Ok(Some(Err(error))) => {
                            tracing::warn!(partition = self.partition, %error, "consumer failed");
                            break;
                        }
                        Ok(None) => break,
                        Err(_idle) => {
                            if let Err(exit) = self.snapshot_if_due(&valid_until, 1).await {
                                return exit;
                            }
                            idle_periods += 1;
                            if idle_periods >= STALL_CHECK_IDLE_PERIODS {
                                idle_periods = 0;
                                if self.is_behind().await {
                                    tracing::warn!(partition = self.partition, "consumer stalled");
                                    break;
                                }
                            }
                        }
                    },
                }
            }
            tokio::time::sleep(CONSUMER_RETRY).await;
        }
    }

    /// An ordered consumer of the partition's subject from stream sequence `start`.
    async fn consumer(
        &self,
        start: u64,
    ) -> Result<async_nats::jetstream::consumer::pull::Ordered, async_nats::Error> {
        let consumer = self
            .layout
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: subject(self.partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending;
        self.lag_events.store(pending, Ordering::Relaxed);
        Ok(consumer.messages().await?)
    }

    /// Whether the stream holds an event of the partition past the last applied one.
    async fn is_behind(&self) -> bool {
        let applied = self.state.read().await.applied_sequence;
        self.layout
            .stream
            .get_last_raw_message_by_subject(&subject(self.partition))
            .await
            .is_ok_and(|last| last.sequence > applied)
    }

    /// Applies one delivered message, then snapshots if enough events have gathered.
    async fn on_message(
        &mut self,
        message: &async_nats::jetstream::Message,
        valid_until: &watch::Receiver<Instant>,
    ) -> Result<(), OwnerExit> {
        let Ok(info) = message.info() else {
            return Ok(());
        };
        let stored_at_ms =
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let client_id = message
            .headers
            .as_ref()
            .filter(|headers| headers.get(CLIENT_ID_HEADER).is_some())
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .map(|id| ClientId {
                id: id.as_str(),
                stored_at_ms,
            });
        self.apply_message(
            info.stream_sequence,
            &message.payload,
            client_id,
            stored_at_ms,
        )
        .await;
        self.lag_events.store(info.pending, Ordering::Relaxed);
        self.snapshot_if_due(valid_until, self.snapshot_every_events)
            .await
    }

    /// Folds the event stored at `sequence` into the state (once; see [`PartitionState`]).
    pub async fn apply(&mut self, sequence: u64, payload: &[u8]) {
        self.apply_identified(sequence, payload, None).await;
    }

    /// [`Self::apply`] for an event that may carry a client id (skipped if already applied).
    pub async fn apply_identified(
        &mut self,
        sequence: u64,
        payload: &[u8],
        client_id: Option<ClientId<'_>>,
    ) {
        let stored_at_ms = client_id.map_or(0, |id| id.stored_at_ms);
        self.apply_message(sequence, payload, client_id, stored_at_ms)
            .await;
    }

    /// Folds the message stored at `sequence` into the state, whole and once: one event (its
    /// client id from the headers) or a batch message (its ids inside; see `wire`). A payload
    /// that does not decode is skipped whole (nothing of it applied), never half applied.
    pub async fn apply_message(
        &mut self,
        sequence: u64,
        payload: &[u8],
        client_id: Option<ClientId<'_>>,
        stored_at_ms: u64,
    ) {
        let decoded = decode_payload(payload);
        let mut state = self.state.write().await;
        let events = match decoded {
            Ok(Payload::One(event)) => {
                let applied = state.apply_identified(sequence, &event, client_id, self.id_bounds);
                if applied == Applied::Applied {
                    self.applied_events.fetch_add(1, Ordering::Relaxed);
                }
                if let Applied::IdConflict(field) = applied {
                    tracing::warn!(
                        partition = self.partition,
                        sequence,
                        id = client_id.map(|id| id.id),
                        field = field.name(),
                        "skipped: the id was applied before with another {}",
                        field.name()
                    );
                }
                1
            }
            Ok(Payload::Batch(events)) => {
                let applied = state.apply_batch(sequence, &events, stored_at_ms, self.id_bounds);
                self.applied_events
                    .fetch_add(applied.applied, Ordering::Relaxed);
                if applied.id_conflicts > 0 {
                    tracing::warn!(
                        partition = self.partition,
                        sequence,
                        id_conflicts = applied.id_conflicts,
                        "skipped events of a batch message: their ids were applied before with \
                         another user or amount"
                    );
                }
                events.len() as u64
            }
            Err(error) => {
                tracing::warn!(partition = self.partition, sequence, %error, "not an event");
                state.skip(sequence);
                1
            }
        };
        self.id_gauges.publish(&state);
        self.applied_sequence.send_replace(state.applied_sequence);
        drop(state);
        self.unsnapshotted_events += events;
    }

    /// Snapshots and purges when at least `threshold` events are not yet snapshotted and the
    /// lease is valid; maps a refusal to the owner's exit.
    async fn snapshot_if_due(
        &mut self,
        valid_until: &watch::Receiver<Instant>,
        threshold: u64,
    ) -> Result<(), OwnerExit> {
        if self.unsnapshotted_events < threshold {
            return Ok(());
        }
        if *valid_until.borrow() <= Instant::now() {
            return Err(OwnerExit::LeaseExpired);
        }
        match self.snapshot_and_purge().await {
            Ok(()) => Ok(()),
            Err(SnapshotError::Fenced(_)) => Err(OwnerExit::Fenced),
            Err(error) => Err(OwnerExit::Failed(error.to_string())),
        }
    }

    /// Writes the snapshot (fenced), then purges the events it covers.
    pub async fn snapshot_and_purge(&mut self) -> Result<(), SnapshotError> {
        pause_point(PausePoint::BeforeSnapshotWrite, self.partition);
        let covered = self.write_snapshot().await?;
        pause_point(PausePoint::BeforePurge, self.partition);
        self.purge_through(covered).await
    }

    /// Writes the current state as the partition's snapshot (compare-and-set on the claim);
    /// returns the last sequence it covers.
    pub async fn write_snapshot(&mut self) -> Result<u64, SnapshotError> {
        let state = self.state.read().await.clone();
        self.slot.write(&state).await?;
        self.unsnapshotted_events = 0;
        Ok(state.applied_sequence)
    }

    /// Removes the partition's events up to and including `sequence` from the stream (only
    /// ever called with the sequence of a snapshot this owner has just written).
    async fn purge_through(&self, sequence: u64) -> Result<(), SnapshotError> {
        if sequence == 0 {
            return Ok(());
        }
        self.layout
            .stream
            .purge()
            .filter(subject(self.partition))
            .sequence(sequence + 1)
            .await
            .map(|_| ())
            .map_err(|error| SnapshotError::Bucket(format!("purge: {error}")))
    }

    /// On a stop: a last snapshot (and purge) if the lease is still valid.
    async fn finish(&mut self, valid_until: &watch::Receiver<Instant>) -> OwnerExit {
        match self.snapshot_if_due(valid_until, 1).await {
            Ok(()) => OwnerExit::Stopped,
            Err(exit) => exit,
        }
    }
}
