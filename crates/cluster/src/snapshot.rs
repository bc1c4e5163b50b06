//! A partition's snapshot slot: loading it when taking a partition over, and writing it so that
//! only the current owner can.
//!
//! Invariants (fencing):
//! - Every write is compare-and-set on the bucket revision this owner last wrote or claimed.
//! - Taking over starts with a *claim*: the new owner rewrites the latest snapshot as it is
//!   (compare-and-set on the revision it read), which moves the revision on. From then on every
//!   write of a previous owner fails ([`SnapshotError::Fenced`]), however long it was paused.
//! - A previous owner's write that lands before the claim is not lost: the claim reads and
//!   keeps it (the claim's compare-and-set fails if a write slips between its read and its
//!   write, and the claim reads again), and it is a correct state because every snapshot is a
//!   prefix of the one stream.

use async_nats::jetstream::kv;

use crate::partition::{Partition, key};
use crate::state::PartitionState;
use crate::wire::Snapshot;

/// How many times a claim rereads when a previous owner's write slips in between.
const CLAIM_ATTEMPTS: usize = 16;

/// A snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Another owner claimed the partition since our last write: we must stop.
    #[error("partition {0}: fenced, another owner has claimed the snapshot")]
    Fenced(Partition),
    /// The stored snapshot is not one we can read.
    #[error("partition {partition}: unreadable snapshot: {reason}")]
    Corrupt {
        partition: Partition,
        reason: String,
    },
    /// The bucket did not answer or refused for another reason.
    #[error("snapshot bucket: {0}")]
    Bucket(String),
}

/// The owner's handle on a partition's snapshot: the revision it last wrote.
#[derive(Debug)]
pub struct SnapshotSlot {
    store: kv::Store,
    partition: Partition,
    revision: u64,
    writer: String,
    lease_revision: u64,
}

impl SnapshotSlot {
    /// Claims `partition`'s snapshot for `writer` (holding lease revision `lease_revision`):
    /// loads the latest snapshot and rewrites it, so that writes of any previous owner fail.
    pub async fn claim(
        store: kv::Store,
        partition: Partition,
        writer: &str,
        lease_revision: u64,
    ) -> Result<(Self, PartitionState), SnapshotError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let (state, read_revision) = load(&store, partition).await?;
            let mut slot = Self {
                store: store.clone(),
                partition,
                revision: read_revision,
                writer: writer.to_owned(),
                lease_revision,
            };
            match slot.write(&state).await {
                Ok(()) => return Ok((slot, state)),
                // Someone wrote between our read and our write: read again.
                Err(SnapshotError::Fenced(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Err(SnapshotError::Bucket(format!(
            "partition {partition}: claim kept losing to other writers"
        )))
    }

    /// Writes `state` as the partition's snapshot, compare-and-set on our last revision.
    pub async fn write(&mut self, state: &PartitionState) -> Result<(), SnapshotError> {
        let snapshot = Snapshot {
            state: state.clone(),
            writer: self.writer.clone(),
            lease_revision: self.lease_revision,
        };
        let value = snapshot.encode().map_err(|error| SnapshotError::Corrupt {
            partition: self.partition,
            reason: error.to_string(),
        })?;
        let written = if self.revision == 0 {
            self.store
                .create(key(self.partition), value)
                .await
                .map_err(|error| match error.kind() {
                    kv::CreateErrorKind::AlreadyExists => SnapshotError::Fenced(self.partition),
                    _ => SnapshotError::Bucket(error.to_string()),
                })
        } else {
            self.store
                .update(key(self.partition), value, self.revision)
                .await
                .map_err(|error| match error.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => SnapshotError::Fenced(self.partition),
                    _ => SnapshotError::Bucket(error.to_string()),
                })
        };
        self.revision = written?;
        Ok(())
    }

    /// The bucket revision of our last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// The latest snapshot of `partition` and its bucket revision (an empty state and 0 when there
/// is none yet).
pub async fn load(
    store: &kv::Store,
    partition: Partition,
) -> Result<(PartitionState, u64), SnapshotError> {
    let entry = store
        .entry(key(partition))
        .await
        .map_err(|error| SnapshotError::Bucket(error.to_string()))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let snapshot =
                Snapshot::decode(&entry.value).map_err(|error| SnapshotError::Corrupt {
                    partition,
                    reason: error.to_string(),
                })?;
            Ok((snapshot.state, entry.revision))
        }
        // Never written (or deleted by an operator): start from nothing, at the revision the
        // marker has, so the claim's compare-and-set still fences.
        Some(entry) => Ok((PartitionState::default(), entry.revision)),
        None => Ok((PartitionState::default(), 0)),
    }
}
