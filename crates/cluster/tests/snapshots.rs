//! Snapshots larger than one bucket value (the server's 1 MiB `max_payload`): written as
//! chunks plus a manifest under the partition's key, read back whole, kept by a claim, fenced
//! like any snapshot, and cleaned up when replaced.

mod support;

use std::collections::BTreeMap;

use floodgate_cluster::snapshot::{self, CHUNK_BYTES};
use floodgate_cluster::{
    ClusterConfig, Layout, LocalCluster, PartitionState, SnapshotError, SnapshotSlot,
};
use futures_util::StreamExt;
use support::READY_TIMEOUT;

/// A partition state of `users` users with 40-byte names: about 50 bytes each in JSON.
fn state_of(users: usize, sequence: u64) -> PartitionState {
    let balances: BTreeMap<String, i64> = (0..users)
        .map(|number| (format!("user-with-a-forty-byte-long-name-{number:06}"), 7))
        .collect();
    PartitionState {
        applied_sequence: sequence,
        balances,
        ..PartitionState::default()
    }
    .loaded()
}

/// The keys of the snapshot bucket that start with `prefix`.
async fn keys_with(layout: &Layout, prefix: &str) -> Vec<String> {
    let mut keys = layout.snapshots.keys().await.expect("keys");
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.expect("a key");
        if key.starts_with(prefix) {
            found.push(key);
        }
    }
    found
}

// Proves a 1.6 MB snapshot (past the 1 MiB value limit) is written and read back whole; a new
// owner's claim keeps it; the old owner, fenced, can write neither a small nor a chunked
// snapshot and leaves no chunks behind; the new owner's next (small) snapshot replaces the
// chunked one and removes its chunks.
#[tokio::test]
async fn a_snapshot_larger_than_a_bucket_value_is_chunked_and_fenced() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let config = ClusterConfig::new(1, cluster.size());
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let store = layout.snapshots.clone();
    let big = state_of(32_000, 100);
    let size = serde_json::to_vec(&big).expect("json").len();
    assert!(
        size > 1024 * 1024,
        "the state is past one value: {size} bytes"
    );

    let (mut old, _) = SnapshotSlot::claim(store.clone(), 0, "old", 1)
        .await
        .expect("claim");
    old.write(&big).await.expect("a chunked write");
    let chunks = keys_with(&layout, "p0.").await;
    assert_eq!(chunks.len(), size.div_ceil(CHUNK_BYTES), "{chunks:?}");

    let (mut new, loaded) = SnapshotSlot::claim(store.clone(), 0, "new", 2)
        .await
        .expect("claim");
    assert_eq!(loaded, big, "read back whole through the claim");
    let fenced = old.write(&state_of(10, 101)).await;
    assert!(
        matches!(fenced, Err(SnapshotError::Fenced(0))),
        "{fenced:?}"
    );
    let fenced = old.write(&state_of(33_000, 102)).await;
    assert!(
        matches!(fenced, Err(SnapshotError::Fenced(0))),
        "{fenced:?}"
    );
    assert_eq!(
        keys_with(&layout, "p0.").await,
        chunks,
        "the fenced write left no chunks"
    );
    assert_eq!(snapshot::load(&store, 0).await.expect("load").0, big);

    let small = state_of(10, 150);
    new.write(&small).await.expect("a small write");
    assert!(
        keys_with(&layout, "p0.").await.is_empty(),
        "replaced chunks removed"
    );
    assert_eq!(snapshot::load(&store, 0).await.expect("load").0, small);
}
