//! Who owns a partition: a lease in the lease bucket, one key per partition, taken with
//! create-if-absent and renewed with compare-and-set on the revision the holder last wrote.
//!
//! Invariants:
//! - At most one holder per revision: `create` succeeds only when the key is absent (never
//!   written, expired, or released) and `renew` only when the key still has the holder's
//!   revision, so after another node takes the key every renewal of the old holder fails.
//! - Expiry is JetStream's: the bucket's `max_age` removes a lease not renewed for the TTL,
//!   measured by the server that stores it, so skewed node clocks cannot extend a lease.
//! - The holder's own view is conservative: it counts its lease valid only until the TTL has
//!   passed since it *sent* its last successful write (the server stamped it later), minus a
//!   margin, so it stops acting as owner before the server lets anyone else in. Monotonic time
//!   only; the remaining risk is a process paused longer than that margin between the check
//!   and a write, which the snapshot bucket's compare-and-set fences (see `owner`).

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

use crate::partition::{Partition, key};

/// A lease this node holds.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The partition it covers.
    pub partition: Partition,
    /// The bucket revision of the holder's last write: renewals are compare-and-set on it.
    pub revision: u64,
    /// Until when (local monotonic clock) the holder may act as the owner.
    pub valid_until: Instant,
}

impl Lease {
    /// Whether the holder may still act as the owner now.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// A lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds the lease now (the key has a revision that is not ours).
    #[error("the lease of partition {0} is held by another node")]
    Lost(Partition),
    /// The bucket did not answer; the lease may or may not still be ours.
    #[error("lease bucket: {0}")]
    Bucket(String),
}

/// This node's access to the lease bucket.
#[derive(Clone, Debug)]
pub struct Leases {
    store: kv::Store,
    node: String,
    ttl: Duration,
}

impl Leases {
    /// Leases of node `node` in `store` (whose `max_age` is `ttl`).
    pub fn new(store: kv::Store, node: impl Into<String>, ttl: Duration) -> Self {
        Self {
            store,
            node: node.into(),
            ttl,
        }
    }

    /// The node name written into the leases it takes.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes the lease of `partition` if no one holds it; `None` when someone does.
    pub async fn try_acquire(&self, partition: Partition) -> Result<Option<Lease>, LeaseError> {
        let sent_at = Instant::now();
        match self.store.create(key(partition), self.value()).await {
            Ok(revision) => Ok(Some(self.lease(partition, revision, sent_at))),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(LeaseError::Bucket(error.to_string())),
        }
    }

    /// Renews `lease` (compare-and-set on its revision), moving its validity on.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        let sent_at = Instant::now();
        match self
            .store
            .update(key(lease.partition), self.value(), lease.revision)
            .await
        {
            Ok(revision) => {
                *lease = self.lease(lease.partition, revision, sent_at);
                Ok(())
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::Lost(lease.partition))
            }
            Err(error) => Err(LeaseError::Bucket(error.to_string())),
        }
    }

    /// Gives `lease` up at once (delete if still ours), so another node need not wait for
    /// the TTL. Losing the race to an expiry is fine: either way the lease is free or taken.
    pub async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.store
            .delete_expect_revision(key(lease.partition), Some(lease.revision))
            .await
            .map_err(|error| LeaseError::Bucket(error.to_string()))
    }

    /// The node holding `partition`'s lease, if any.
    pub async fn holder(&self, partition: Partition) -> Result<Option<String>, LeaseError> {
        let entry = self
            .store
            .entry(key(partition))
            .await
            .map_err(|error| LeaseError::Bucket(error.to_string()))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| String::from_utf8_lossy(&entry.value).into_owned()))
    }

    fn value(&self) -> bytes::Bytes {
        bytes::Bytes::from(self.node.clone())
    }

    /// The lease written at `revision` by a request sent at `sent_at`: valid for the TTL
    /// from the send, less a tenth as margin for a pause between a check and a write.
    fn lease(&self, partition: Partition, revision: u64, sent_at: Instant) -> Lease {
        Lease {
            partition,
            revision,
            valid_until: sent_at + self.ttl * 9 / 10,
        }
    }
}
