//! What a running member shows the rest of its node (the HTTP front door, /stats, /metrics):
//! the partitions it owns, their balances, its counters and the apply lag, readable while the
//! member's own task keeps ticking.
//!
//! Invariants:
//! - The member alone changes the map of owned partitions (under a short lock, never held
//!   across an `.await`); readers clone the partition's state handle and read it after
//!   letting the map go.
//! - A partition counts as owned here only while its lease is valid (the deadline the keeper
//!   refreshes at each renewal): a node cut off from the brokers, or paused, stops answering
//!   reads from its state and stops listing the partition at 0.9 × TTL after its last
//!   renewal, even while its keeper is still waiting for the bucket to answer, so it never
//!   shows a balance after the moment another node could own the partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::RwLock as AsyncRwLock;
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::layout::Layout;
use crate::partition::{Partition, partition_of};
use crate::reads::{
    ReadError, kept_ids_once_applied, request_balance, request_id_lookup, request_id_lookups,
    request_kept_ids, request_page,
};
use crate::state::{IdLookup, KeptId, PartitionState};

/// Counters a member keeps (for /stats and /metrics).
#[derive(Debug, Default)]
pub struct MemberStats {
    /// Partitions taken over by this member since it started.
    pub takeovers: AtomicU64,
    /// Partitions this member gave up (lease lost or lapsed, fenced, failed, released).
    pub losses: AtomicU64,
    /// Events this member's owners folded into balances since it started, a takeover's replay
    /// included (an event skipped as already applied, duplicate or overflowing is not counted).
    pub applied_events: Arc<AtomicU64>,
}

/// A partition's client-id figures (they travel with its snapshot, so they count the
/// partition's whole history, whichever node applied it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdFigures {
    /// Client ids the owner remembers now (bounded by `IdBounds`).
    pub ids_kept: u64,
    /// Events skipped because their client id was applied before (a resend stored again).
    pub duplicate_events: u64,
    /// Events skipped because their client id was applied before with another user or
    /// amount (their sender had a 202: JetStream's window had passed).
    pub id_conflicts: u64,
}

/// [`IdFigures`] as the owner publishes them after each event, for readers that cannot wait
/// for the state's lock (a metrics scrape).
#[derive(Debug, Default)]
pub struct IdGauges {
    ids_kept: AtomicU64,
    duplicate_events: AtomicU64,
    id_conflicts: AtomicU64,
}

impl IdGauges {
    /// Publishes the figures of `state`.
    pub fn publish(&self, state: &PartitionState) {
        self.ids_kept
            .store(state.ids.len() as u64, Ordering::Relaxed);
        self.duplicate_events
            .store(state.duplicate_events, Ordering::Relaxed);
        self.id_conflicts
            .store(state.id_conflicts, Ordering::Relaxed);
    }

    /// The figures last published.
    pub fn load(&self) -> IdFigures {
        IdFigures {
            ids_kept: self.ids_kept.load(Ordering::Relaxed),
            duplicate_events: self.duplicate_events.load(Ordering::Relaxed),
            id_conflicts: self.id_conflicts.load(Ordering::Relaxed),
        }
    }
}

/// What readers can see of one owned partition.
#[derive(Clone, Debug)]
pub(crate) struct OwnedPartition {
    pub(crate) state: Arc<AsyncRwLock<PartitionState>>,
    /// The owner's last applied stream sequence (see `Owner::applied_sequence`).
    pub(crate) applied_sequence: watch::Receiver<u64>,
    pub(crate) lag_events: Arc<AtomicU64>,
    pub(crate) ids: Arc<IdGauges>,
    /// The lease's validity deadline (kept current by the member's keeper).
    pub(crate) valid_until: watch::Receiver<Instant>,
}

impl OwnedPartition {
    /// Whether the lease behind this partition is still valid now.
    fn is_valid(&self) -> bool {
        *self.valid_until.borrow() > Instant::now()
    }
}

/// The partitions a member owns now.
pub(crate) type OwnedStates = Arc<RwLock<BTreeMap<Partition, OwnedPartition>>>;

/// A cloneable, read-only window on a member.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub(crate) layout: Layout,
    pub(crate) config: ClusterConfig,
    pub(crate) owned: OwnedStates,
    pub(crate) stats: Arc<MemberStats>,
}

impl MemberView {
    /// The member's counters.
    pub fn stats(&self) -> &MemberStats {
        &self.stats
    }

    /// The partitions the member owns now (lease valid), in order.
    pub fn owned(&self) -> Vec<Partition> {
        self.owned_map()
            .iter()
            .filter(|(_, owned)| owned.is_valid())
            .map(|(&partition, _)| partition)
            .collect()
    }

    /// The balance of `user`: from the member's state when it owns the user's partition, else
    /// from the owner over a NATS request.
    pub async fn balance(&self, user: &str) -> Result<i64, ReadError> {
        Ok(self.find_balance(user).await?.unwrap_or(0))
    }

    /// [`Self::balance`], `None` for a user the partition's owner never saw.
    pub async fn find_balance(&self, user: &str) -> Result<Option<i64>, ReadError> {
        let partition = partition_of(user, self.config.partitions);
        if let Some(state) = self.state_handle(partition) {
            return Ok(state.read().await.known_balance(user));
        }
        request_balance(
            &self.layout.client,
            self.config.partitions,
            user,
            self.config.request_timeout,
        )
        .await
    }

    /// Up to `limit` balances of users after `after` (compared as bytes), sorted by user,
    /// across every partition: each partition's page from its state here or from its owner
    /// (asked all at once), merged. A partition without an owner makes the page
    /// [`ReadError::Moving`].
    pub async fn page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, ReadError> {
        let pages = (0..self.config.partitions).map(|partition| async move {
            if let Some(state) = self.state_handle(partition) {
                return Ok(state.read().await.page(after, limit));
            }
            request_page(
                &self.layout.client,
                partition,
                after,
                limit,
                self.config.request_timeout,
            )
            .await
        });
        let mut rows = Vec::new();
        for page in futures_util::future::join_all(pages).await {
            rows.extend(page?);
        }
        rows.sort_unstable_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
        rows.truncate(limit);
        Ok(rows)
    }

    /// What `partition`'s owner knows of client id `id`: from the state here when the member
    /// owns it, else asked over NATS.
    pub async fn lookup_id(&self, partition: Partition, id: &str) -> Result<IdLookup, ReadError> {
        if let Some(state) = self.state_handle(partition) {
            return Ok(state.read().await.lookup_id(id));
        }
        request_id_lookup(
            &self.layout.client,
            partition,
            id,
            self.config.request_timeout,
        )
        .await
    }

    /// What `partition`'s owner knows of each of `ids` (in their order): from the state here
    /// when the member owns it, else in one request over NATS.
    pub async fn lookup_ids(
        &self,
        partition: Partition,
        ids: &[&str],
    ) -> Result<Vec<IdLookup>, ReadError> {
        if let Some(state) = self.state_handle(partition) {
            let state = state.read().await;
            return Ok(ids.iter().map(|id| state.lookup_id(id)).collect());
        }
        request_id_lookups(
            &self.layout.client,
            partition,
            ids,
            self.config.request_timeout,
        )
        .await
    }

    /// What `partition`'s owner keeps of `ids` once it has applied the message stored at
    /// `sequence` (see [`PartitionState::kept_ids`]): from the state here when the member owns
    /// the partition, else from the owner (one NATS request for all the ids). An owner that
    /// has not applied that far within `request_timeout` is [`ReadError::Unreachable`].
    pub async fn kept_ids(
        &self,
        partition: Partition,
        sequence: u64,
        ids: &[&str],
    ) -> Result<Vec<Option<KeptId>>, ReadError> {
        let timeout = self.config.request_timeout;
        if let Some(owned) = self.owned_partition(partition) {
            return kept_ids_once_applied(
                &owned.state,
                owned.applied_sequence,
                sequence,
                ids,
                timeout,
            )
            .await
            .ok_or_else(|| ReadError::Unreachable {
                partition,
                reason: format!("sequence {sequence} not applied in {timeout:?}"),
            });
        }
        request_kept_ids(&self.layout.client, partition, sequence, ids, timeout).await
    }

    /// The client-id figures of the partitions the member owns now, by partition (as of
    /// each owner's last applied event).
    pub fn id_figures(&self) -> BTreeMap<Partition, IdFigures> {
        self.owned_map()
            .iter()
            .filter(|(_, owned)| owned.is_valid())
            .map(|(&partition, owned)| (partition, owned.ids.load()))
            .collect()
    }

    /// A copy of the state of `partition` if the member owns it.
    pub async fn partition_state(&self, partition: Partition) -> Option<PartitionState> {
        let state = self.state_handle(partition)?;
        Some(state.read().await.clone())
    }

    /// Apply lag of each owned partition: its events in the stream not yet delivered to the
    /// owner (JetStream's pending count as of the owner's last delivery; 0 when caught up).
    pub fn apply_lag(&self) -> BTreeMap<Partition, u64> {
        self.owned_map()
            .iter()
            .filter(|(_, owned)| owned.is_valid())
            .map(|(&partition, owned)| (partition, owned.lag_events.load(Ordering::Relaxed)))
            .collect()
    }

    /// What readers see of `partition` if this member owns it now (its lease still valid).
    fn owned_partition(&self, partition: Partition) -> Option<OwnedPartition> {
        self.owned_map()
            .get(&partition)
            .filter(|owned| owned.is_valid())
            .cloned()
    }

    fn state_handle(&self, partition: Partition) -> Option<Arc<AsyncRwLock<PartitionState>>> {
        self.owned_partition(partition).map(|owned| owned.state)
    }

    fn owned_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Partition, OwnedPartition>> {
        // A poisoned lock only means a panic elsewhere mid-update of a map of handles; the map
        // itself is still consistent (insert and remove are single operations).
        self.owned
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
