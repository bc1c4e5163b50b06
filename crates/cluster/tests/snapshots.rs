//! Snapshots larger than one bucket value (the server's 1 MiB `max_payload`): written as
//! chunks plus a manifest under the partition's key, read back whole, kept by a claim, fenced
//! like any snapshot, and cleaned up when replaced.

mod support;

use floodgate_cluster::snapshot::{self, CHUNK_BYTES};
use floodgate_cluster::{
    ClusterConfig, Layout, LocalCluster, PartitionState, SnapshotError, SnapshotSlot,
};
use futures_util::StreamExt;
use support::READY_TIMEOUT;

/// A partition state of `users` users with 40-byte names: about 50 bytes each in JSON.
fn state_of(users: usize, sequence: u64) -> PartitionState {
    let balances: floodgate_cluster::Balances = (0..users)
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

// Proves chunks left by a writer that crashed between its chunks and its manifest (put here
// by hand under a generation no manifest names) are removed by the next owner's claim, while
// the chunks the manifest names stay (the snapshot still loads whole) and another
// partition's keys are untouched.
#[tokio::test]
async fn a_claim_removes_chunks_no_manifest_names() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let config = ClusterConfig::new(2, cluster.size());
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let store = layout.snapshots.clone();
    let big = state_of(32_000, 100);
    let (mut first, _) = SnapshotSlot::claim(store.clone(), 0, "first", 1)
        .await
        .expect("claim");
    first.write(&big).await.expect("a chunked write");
    let named = keys_with(&layout, "p0.").await;
    assert!(named.len() > 1, "{named:?}");
    // A second writer that died after two of its chunks, before its manifest.
    for key in [
        "p0.crashed-7-1.0",
        "p0.crashed-7-1.1",
        "p1.other-partition-1.0",
    ] {
        store
            .put(key, bytes::Bytes::from_static(b"chunk bytes"))
            .await
            .expect("put");
    }
    assert_eq!(keys_with(&layout, "p0.").await.len(), named.len() + 2);

    let (_next, loaded) = SnapshotSlot::claim(store.clone(), 0, "next", 3)
        .await
        .expect("claim");
    assert_eq!(loaded, big, "the named chunks stay");
    let mut left = keys_with(&layout, "p0.").await;
    left.sort();
    let mut expected = named.clone();
    expected.sort();
    assert_eq!(left, expected, "only the orphans removed");
    assert_eq!(
        keys_with(&layout, "p1.").await,
        vec!["p1.other-partition-1.0".to_owned()],
        "another partition's keys are not this claim's"
    );
}
