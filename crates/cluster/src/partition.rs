//! Which partition a user's events go to, and the names derived from a partition.
//!
//! Invariant: a user's partition is `shard_index(user_hash(user), partitions)`, the same
//! function the standalone ledger uses to pick a shard, so one user's events always travel on
//! one subject (`floodgate.events.<p>`), are totally ordered there, and have one owner.

use floodgate_core::ledger::{shard_index, user_hash};

/// Prefix of the per-partition event subjects.
pub const SUBJECT_PREFIX: &str = "floodgate.events";

/// A partition number, `0..partitions`.
pub type Partition = u32;

/// The partition of `user` among `partitions`.
pub fn partition_of(user: &str, partitions: u32) -> Partition {
    shard_index(user_hash(user), partitions as usize) as Partition
}

/// The stream subject carrying partition `partition`'s events.
pub fn subject(partition: Partition) -> String {
    format!("{SUBJECT_PREFIX}.{partition}")
}

/// The key of partition `partition` in the lease and snapshot buckets.
pub fn key(partition: Partition) -> String {
    format!("p{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every user lands in range and a user's partition never changes.
    #[test]
    fn partition_is_stable_and_in_range() {
        for partitions in [1, 2, 7, 64] {
            for user in ["alice", "bob", "ünïcode", "x"] {
                let first = partition_of(user, partitions);
                assert!(first < partitions);
                assert_eq!(first, partition_of(user, partitions));
            }
        }
        assert_eq!(subject(3), "floodgate.events.3");
        assert_eq!(key(3), "p3");
    }
}
