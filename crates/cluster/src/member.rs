//! A node as a ledger member: keeps its leases (renew every third of the TTL), takes free
//! partitions over, runs one [`Owner`] per partition it holds, and stops an owner the moment
//! its lease is lost or lapses; answers balance reads for what it owns and asks the owner for
//! the rest.
//!
//! Invariants:
//! - A partition runs an owner here only while this node holds its lease; the owner's validity
//!   deadline is the lease's, refreshed on each renewal, so an owner whose renewals stall stops
//!   by itself even if this keeper is stuck.
//! - Takeover bound: a lease not renewed is removed by JetStream after the TTL; every live
//!   member tries the free partitions each tick (a third of the TTL), so a dead owner's
//!   partitions are taken within TTL + one tick + JetStream's expiry latency.
//! - Balance: each member refreshes its key in the membership bucket every tick and takes at
//!   most `ceil(partitions / live members)`; a member over its share gives one partition up per
//!   tick (last snapshot, lease released), and a member under it takes free ones. A dead
//!   member's key expires with its leases, so the survivors' share grows as they need it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::layout::Layout;
use crate::lease::{Lease, LeaseError, Leases};
use crate::owner::{Owner, OwnerExit};
use crate::partition::Partition;
use crate::reads::{ReadError, serve_balances};
use crate::state::PartitionState;
use crate::view::{MemberStats, MemberView, OwnedPartition, OwnedStates};

/// How a partition leaves this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handoff {
    /// The lease was lost or lapsed: stop without writing.
    Lost,
    /// Given up while still held (over its share): last snapshot, then release.
    GiveUp,
}

/// A partition this member holds and runs.
#[derive(Debug)]
struct Held {
    lease: Lease,
    valid_until: watch::Sender<Instant>,
    stop: watch::Sender<bool>,
    task: JoinHandle<OwnerExit>,
    /// Answers other nodes' balance reads for this partition; aborted when it is given up.
    responder: JoinHandle<Result<(), async_nats::SubscribeError>>,
}

/// A node's part in the ledger: leases and owners.
#[derive(Debug)]
pub struct Member {
    layout: Layout,
    config: ClusterConfig,
    leases: Leases,
    held: HashMap<Partition, Held>,
    view: MemberView,
}

impl Member {
    /// A member named `node` (unique among live nodes) on `layout`.
    pub fn new(layout: Layout, config: ClusterConfig, node: impl Into<String>) -> Self {
        let leases = Leases::new(layout.leases.clone(), node, config.lease_ttl);
        let view = MemberView {
            layout: layout.clone(),
            config: config.clone(),
            owned: OwnedStates::default(),
            stats: Arc::new(MemberStats::default()),
        };
        Self {
            layout,
            config,
            leases,
            held: HashMap::new(),
            view,
        }
    }

    /// A read-only window on this member, usable while [`Member::run`] drives it.
    pub fn view(&self) -> MemberView {
        self.view.clone()
    }

    /// The counters of this member.
    pub fn stats(&self) -> &MemberStats {
        self.view.stats()
    }

    /// The partitions this member runs now, in order.
    pub fn owned(&self) -> Vec<Partition> {
        self.view.owned()
    }

    /// The balance of `user` (see [`MemberView::balance`]).
    pub async fn balance(&self, user: &str) -> Result<i64, ReadError> {
        self.view.balance(user).await
    }

    /// A copy of the state of `partition` if this member runs it.
    pub async fn partition_state(&self, partition: Partition) -> Option<PartitionState> {
        self.view.partition_state(partition).await
    }

    /// One keeper round: renew held leases (dropping the lost ones and the owners that
    /// stopped), then try to take every free partition.
    pub async fn tick(&mut self) {
        self.renew_all().await;
        let share = self.share().await;
        if self.held.len() > share {
            // One at a time, so a member joining does not make everyone drop everything.
            if let Some(&partition) = self.held.keys().max() {
                self.drop_partition(partition, Handoff::GiveUp).await;
            }
            return;
        }
        for partition in 0..self.config.partitions {
            if self.held.len() >= share {
                break;
            }
            if self.held.contains_key(&partition) {
                continue;
            }
            // Boxed: taking over holds a claim and a consumer set-up in its future.
            if let Err(error) = Box::pin(self.try_take(partition)).await {
                tracing::debug!(partition, %error, "partition not taken");
            }
        }
    }

    /// Refreshes this member's key in the membership bucket and returns its share of the
    /// partitions: `ceil(partitions / live members)` (all of them when the bucket cannot be
    /// read, so partitions are never left unowned for want of a count).
    async fn share(&self) -> usize {
        let partitions = self.config.partitions as usize;
        let node = self.leases.node().to_owned();
        if let Err(error) = self.layout.members.put(node, bytes::Bytes::new()).await {
            tracing::debug!(%error, "membership not refreshed");
            return partitions;
        }
        match self.layout.members_stream.get_info().await {
            Ok(info) => partitions.div_ceil((info.state.messages as usize).max(1)),
            Err(error) => {
                tracing::debug!(%error, "membership not read");
                partitions
            }
        }
    }

    /// Runs [`Member::tick`] every renew interval until `stop` turns true, then stops every
    /// owner (each writes a last snapshot) and releases the leases.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.config.renew_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                // Boxed: a tick's future is large (renewals, take-overs).
                _ = interval.tick() => Box::pin(self.tick()).await,
            }
        }
        Box::pin(self.shutdown()).await;
    }

    /// Stops every owner (last snapshot while the lease is valid) and releases its lease.
    pub async fn shutdown(&mut self) {
        self.set_owned(BTreeMap::clear);
        for (partition, held) in self.held.drain() {
            self.view.stats.losses.fetch_add(1, Ordering::Relaxed);
            held.responder.abort();
            let _ = held.stop.send(true);
            let exit = held.task.await;
            tracing::info!(partition, ?exit, "owner stopped");
            if let Err(error) = self.leases.release(&held.lease).await {
                tracing::debug!(partition, %error, "lease not released; it will expire");
            }
        }
    }

    async fn renew_all(&mut self) {
        let partitions: Vec<Partition> = self.held.keys().copied().collect();
        for partition in partitions {
            let Some(held) = self.held.get_mut(&partition) else {
                continue;
            };
            let keep = if held.task.is_finished() {
                false
            } else {
                match self.leases.renew(&mut held.lease).await {
                    Ok(()) => {
                        let _ = held.valid_until.send(held.lease.valid_until);
                        true
                    }
                    Err(LeaseError::Lost(_)) => false,
                    // The bucket did not answer: keep trying while the lease is still valid.
                    Err(LeaseError::Bucket(_)) => held.lease.is_valid(),
                }
            };
            if !keep {
                self.drop_partition(partition, Handoff::Lost).await;
            }
        }
    }

    async fn drop_partition(&mut self, partition: Partition, handoff: Handoff) {
        let Some(held) = self.held.remove(&partition) else {
            return;
        };
        if handoff == Handoff::Lost {
            // Not ours any more: end the lease's validity so the owner stops without writing.
            let _ = held.valid_until.send(Instant::now());
        }
        self.set_owned(|owned| {
            owned.remove(&partition);
        });
        self.view.stats.losses.fetch_add(1, Ordering::Relaxed);
        held.responder.abort();
        let _ = held.stop.send(true);
        // A lost lease: the owner sees its validity over and writes nothing. A give-up: the
        // lease is still valid, so the owner writes a last snapshot (and purges) before the
        // release lets the next owner in. A finished task returns at once.
        let exit = held.task.await;
        tracing::info!(partition, ?exit, "partition given up");
        let _ = self.leases.release(&held.lease).await;
    }

    async fn try_take(&mut self, partition: Partition) -> Result<(), String> {
        let Some(lease) = self
            .leases
            .try_acquire(partition)
            .await
            .map_err(|error| error.to_string())?
        else {
            return Ok(());
        };
        let owner = match Owner::take_over(
            self.layout.clone(),
            partition,
            self.leases.node(),
            lease.revision,
            self.config.snapshot_every_events,
        )
        .await
        {
            Ok(owner) => owner
                .with_id_bounds(self.config.id_bounds)
                .counting_applied_into(Arc::clone(&self.view.stats.applied_events)),
            Err(error) => {
                let _ = self.leases.release(&lease).await;
                return Err(error.to_string());
            }
        };
        let (valid_until, valid_receiver) = watch::channel(lease.valid_until);
        let (stop, stop_receiver) = watch::channel(false);
        let state = owner.state();
        let applied_sequence = owner.applied_sequence();
        let lag_events = owner.lag_events();
        let ids = owner.id_gauges();
        let responder = tokio::spawn(serve_balances(
            self.layout.client.clone(),
            partition,
            Arc::clone(&state),
            applied_sequence.clone(),
            valid_receiver.clone(),
        ));
        let task = tokio::spawn(owner.run(valid_receiver.clone(), stop_receiver));
        self.set_owned(|owned| {
            let visible = OwnedPartition {
                state: Arc::clone(&state),
                applied_sequence,
                lag_events,
                ids,
                valid_until: valid_receiver,
            };
            owned.insert(partition, visible);
        });
        self.held.insert(
            partition,
            Held {
                lease,
                valid_until,
                stop,
                task,
                responder,
            },
        );
        self.view.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(partition, node = self.leases.node(), "partition taken over");
        Ok(())
    }

    /// Changes the owned-partition map readers see (a short lock, no `.await` under it).
    fn set_owned(&self, change: impl FnOnce(&mut BTreeMap<Partition, OwnedPartition>)) {
        let mut owned = self
            .view
            .owned
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut owned);
    }
}
