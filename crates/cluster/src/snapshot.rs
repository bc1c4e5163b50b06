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
//! - Size: a snapshot larger than [`CHUNK_BYTES`] is written as chunks under keys of a
//!   generation unique to that write, then the partition's key gets, compare-and-set, a
//!   manifest naming them. The fence is unchanged (only the key's value is compare-and-set and
//!   followed); a stale owner's chunks are never named by the key, and each write removes the
//!   chunks of the generation it replaced.
//! - Orphans: chunks whose writer died between them and its manifest are named by no manifest.
//!   The claim removes every chunk of the partition that the claimed manifest does not name:
//!   after the claim no earlier owner can make a manifest name them (fenced), so they can only
//!   be garbage.

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::partition::{Partition, key};
use crate::state::PartitionState;
use crate::wire::Snapshot;

/// How many times a claim rereads when a previous owner's write slips in between.
const CLAIM_ATTEMPTS: usize = 16;
/// Largest snapshot written as one bucket value; larger ones are split into chunks of this
/// size (the server's `max_payload`, 1 MiB by default, bounds one value with its headers).
pub const CHUNK_BYTES: usize = 256 * 1024;

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

/// The value under the partition's key when the snapshot is split: where its chunks are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Chunked {
    /// The chunks' key infix: unique to one write.
    generation: String,
    /// Number of chunks.
    count: usize,
    /// The snapshot's length in bytes.
    bytes: usize,
}

/// The partition key's value when chunked (a snapshot's own value has no `chunked` field).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    chunked: Chunked,
    writer: String,
    lease_revision: u64,
}

/// The key of chunk `index` of `generation` of `partition`'s snapshot.
fn chunk_key(partition: Partition, generation: &str, index: usize) -> String {
    format!("{}.{generation}.{index}", key(partition))
}

/// The owner's handle on a partition's snapshot: the revision it last wrote.
#[derive(Debug)]
pub struct SnapshotSlot {
    store: kv::Store,
    partition: Partition,
    revision: u64,
    writer: String,
    lease_revision: u64,
    /// The chunks the partition's key points at now (`None`: the snapshot is the value).
    current: Option<Chunked>,
    /// Chunked writes made by this slot (part of each generation's name).
    writes: u64,
}

impl SnapshotSlot {
    /// Claims `partition`'s snapshot for `writer` (holding lease revision `lease_revision`):
    /// loads the latest snapshot and rewrites its value as it is (a chunked one keeps its
    /// chunks), so that writes of any previous owner fail.
    pub async fn claim(
        store: kv::Store,
        partition: Partition,
        writer: &str,
        lease_revision: u64,
    ) -> Result<(Self, PartitionState), SnapshotError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let loaded = load_value(&store, partition).await?;
            let mut slot = Self {
                store: store.clone(),
                partition,
                revision: loaded.revision,
                writer: writer.to_owned(),
                lease_revision,
                current: loaded.chunked.clone(),
                writes: 0,
            };
            let value = match loaded.value {
                Some(value) => value,
                None => slot.encode(&loaded.state)?,
            };
            match slot.put_value(value).await {
                Ok(()) => {
                    slot.remove_orphan_chunks().await;
                    return Ok((slot, loaded.state));
                }
                // Someone wrote between our read and our write: read again.
                Err(SnapshotError::Fenced(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Err(SnapshotError::Bucket(format!(
            "partition {partition}: claim kept losing to other writers"
        )))
    }

    /// Writes `state` as the partition's snapshot, compare-and-set on our last revision: as
    /// the key's value when it fits [`CHUNK_BYTES`], else as chunks under a new generation
    /// first and then, compare-and-set, a manifest naming them. The previous generation's
    /// chunks are removed once the new value is in; a fenced write removes its own.
    pub async fn write(&mut self, state: &PartitionState) -> Result<(), SnapshotError> {
        let value = self.encode(state)?;
        let previous = self.current.take();
        if value.len() <= CHUNK_BYTES {
            if let Err(error) = self.put_value(value).await {
                self.current = previous;
                return Err(error);
            }
            self.remove_chunks(previous.as_ref()).await;
            return Ok(());
        }
        let chunked = self.write_chunks(&value).await?;
        let manifest = Manifest {
            chunked: chunked.clone(),
            writer: self.writer.clone(),
            lease_revision: self.lease_revision,
        };
        let manifest = serde_json::to_vec(&manifest).map_err(|error| self.corrupt(&error))?;
        if let Err(error) = self.put_value(manifest.into()).await {
            self.remove_chunks(Some(&chunked)).await;
            self.current = previous;
            return Err(error);
        }
        self.remove_chunks(previous.as_ref()).await;
        self.current = Some(chunked);
        Ok(())
    }

    /// The bucket revision of our last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn corrupt(&self, error: &dyn std::fmt::Display) -> SnapshotError {
        SnapshotError::Corrupt {
            partition: self.partition,
            reason: error.to_string(),
        }
    }

    /// The snapshot value of `state`, signed by this writer.
    fn encode(&self, state: &PartitionState) -> Result<bytes::Bytes, SnapshotError> {
        let snapshot = Snapshot {
            state: state.clone(),
            writer: self.writer.clone(),
            lease_revision: self.lease_revision,
        };
        snapshot.encode().map_err(|error| self.corrupt(&error))
    }

    /// Puts `value`'s chunks under a generation of their own (plain puts: nobody reads them
    /// until a manifest naming them is in).
    async fn write_chunks(&mut self, value: &[u8]) -> Result<Chunked, SnapshotError> {
        self.writes += 1;
        let writer: String = self
            .writer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let generation = format!("{writer}-{}-{}", self.lease_revision, self.writes);
        let chunks: Vec<&[u8]> = value.chunks(CHUNK_BYTES).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let chunk_key = chunk_key(self.partition, &generation, index);
            self.store
                .put(chunk_key, bytes::Bytes::copy_from_slice(chunk))
                .await
                .map_err(|error| SnapshotError::Bucket(error.to_string()))?;
        }
        Ok(Chunked {
            generation,
            count: chunks.len(),
            bytes: value.len(),
        })
    }

    /// Removes the chunks of `chunked` (best effort: a leftover costs space, never
    /// correctness, since only the manifest under the partition's key is ever followed).
    async fn remove_chunks(&self, chunked: Option<&Chunked>) {
        let Some(chunked) = chunked else {
            return;
        };
        for index in 0..chunked.count {
            let chunk_key = chunk_key(self.partition, &chunked.generation, index);
            if let Err(error) = self.store.purge(&chunk_key).await {
                tracing::debug!(chunk_key, %error, "old snapshot chunk not removed");
            }
        }
    }

    /// Removes the partition's chunks that the current manifest does not name (best effort,
    /// like [`Self::remove_chunks`]). Only after a claim: from then on no earlier owner can
    /// write a manifest naming them.
    async fn remove_orphan_chunks(&self) {
        let prefix = format!("{}.", key(self.partition));
        let named = self
            .current
            .as_ref()
            .map(|chunked| format!("{prefix}{}.", chunked.generation));
        let mut keys = match self.store.keys().await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::debug!(partition = self.partition, %error, "orphan chunks not listed");
                return;
            }
        };
        let mut orphans = Vec::new();
        while let Some(Ok(chunk_key)) = keys.next().await {
            let named_now = named
                .as_ref()
                .is_some_and(|named| chunk_key.starts_with(named));
            if chunk_key.starts_with(&prefix) && !named_now {
                orphans.push(chunk_key);
            }
        }
        for chunk_key in orphans {
            tracing::info!(chunk_key, "removing a snapshot chunk no manifest names");
            if let Err(error) = self.store.purge(&chunk_key).await {
                tracing::debug!(chunk_key, %error, "orphan snapshot chunk not removed");
            }
        }
    }

    /// Puts `value` under the partition's key, compare-and-set on our last revision.
    async fn put_value(&mut self, value: bytes::Bytes) -> Result<(), SnapshotError> {
        let partition = self.partition;
        let written = if self.revision == 0 {
            self.store
                .create(key(partition), value)
                .await
                .map_err(|error| match error.kind() {
                    kv::CreateErrorKind::AlreadyExists => SnapshotError::Fenced(partition),
                    _ => SnapshotError::Bucket(error.to_string()),
                })
        } else {
            self.store
                .update(key(partition), value, self.revision)
                .await
                .map_err(|error| match error.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => SnapshotError::Fenced(partition),
                    _ => SnapshotError::Bucket(error.to_string()),
                })
        };
        self.revision = written?;
        Ok(())
    }
}

/// What the partition's key holds.
struct Loaded {
    state: PartitionState,
    revision: u64,
    /// The key's value as stored (`None`: never written).
    value: Option<bytes::Bytes>,
    /// The chunks it points at, when the snapshot is chunked.
    chunked: Option<Chunked>,
}

/// The latest snapshot of `partition` and its bucket revision (an empty state and 0 when there
/// is none yet).
pub async fn load(
    store: &kv::Store,
    partition: Partition,
) -> Result<(PartitionState, u64), SnapshotError> {
    let loaded = load_value(store, partition).await?;
    Ok((loaded.state, loaded.revision))
}

async fn load_value(store: &kv::Store, partition: Partition) -> Result<Loaded, SnapshotError> {
    let bucket = |error: &dyn std::fmt::Display| SnapshotError::Bucket(error.to_string());
    let corrupt = |reason: String| SnapshotError::Corrupt { partition, reason };
    let entry = store
        .entry(key(partition))
        .await
        .map_err(|error| bucket(&error))?;
    let entry = match entry {
        Some(entry) if entry.operation == kv::Operation::Put => entry,
        // Never written (or deleted by an operator): start from nothing, at the revision the
        // marker has, so the claim's compare-and-set still fences.
        Some(entry) => return Ok(empty(entry.revision)),
        None => return Ok(empty(0)),
    };
    let chunked = serde_json::from_slice::<Manifest>(&entry.value)
        .ok()
        .map(|manifest| manifest.chunked);
    let bytes = match &chunked {
        None => entry.value.clone(),
        Some(chunked) => read_chunks(store, partition, chunked).await?,
    };
    let snapshot = Snapshot::decode(&bytes).map_err(|error| corrupt(error.to_string()))?;
    Ok(Loaded {
        state: snapshot.state.loaded(),
        revision: entry.revision,
        value: Some(entry.value),
        chunked,
    })
}

fn empty(revision: u64) -> Loaded {
    Loaded {
        state: PartitionState::default(),
        revision,
        value: None,
        chunked: None,
    }
}

/// The snapshot bytes `chunked` names, checked for their length.
async fn read_chunks(
    store: &kv::Store,
    partition: Partition,
    chunked: &Chunked,
) -> Result<bytes::Bytes, SnapshotError> {
    let mut bytes = Vec::with_capacity(chunked.bytes);
    for index in 0..chunked.count {
        let chunk_key = chunk_key(partition, &chunked.generation, index);
        let chunk = store
            .get(chunk_key.clone())
            .await
            .map_err(|error| SnapshotError::Bucket(error.to_string()))?
            .ok_or_else(|| SnapshotError::Corrupt {
                partition,
                reason: format!("chunk {chunk_key} is missing"),
            })?;
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() != chunked.bytes {
        return Err(SnapshotError::Corrupt {
            partition,
            reason: format!("chunks hold {} bytes, not {}", bytes.len(), chunked.bytes),
        });
    }
    Ok(bytes.into())
}
