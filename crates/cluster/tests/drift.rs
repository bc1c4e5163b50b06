//! Configuration drift: a node whose buckets would differ from the ones the cluster created
//! refuses to start at once and says why, instead of retrying until its ready timeout or
//! changing what the running nodes rely on; and the check costs one lookup of the events
//! stream, shared with the start-up that follows.

mod support;

use std::time::Duration;

use floodgate_cluster::layout::STREAM_NAME;
use floodgate_cluster::{ClusterConfig, Layout, LayoutError, LocalCluster};
use futures_util::StreamExt;
use support::READY_TIMEOUT;

// Proves a node started with another lease TTL than the buckets were created with gets
// `LayoutError::Drift` naming the lease bucket, both TTLs and the setting (not `NotReady`
// after the ready timeout), that the buckets keep their TTL, and that a node with the
// cluster's TTL still connects.
#[tokio::test]
async fn another_lease_ttl_than_the_buckets_is_refused_with_both_values() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.lease_ttl = Duration::from_secs(2);
    let first = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");

    let mut drifted = config.clone();
    drifted.lease_ttl = Duration::from_secs(3);
    let refused = Layout::connect(&cluster.urls(), &drifted, READY_TIMEOUT).await;
    let Err(error @ LayoutError::Drift { .. }) = refused else {
        panic!("expected a drift refusal, got {refused:?}");
    };
    let message = error.to_string();
    for part in ["floodgate_leases", "2000 ms", "3000 ms", "--lease-ttl-ms"] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let status = first.leases.status().await.expect("status");
    assert_eq!(status.max_age(), Duration::from_secs(2), "unchanged");

    let same = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT).await;
    assert!(same.is_ok(), "the cluster's own settings connect: {same:?}");
}

// Proves a node started with another partition count than the events stream was created for
// is refused at once with both counts and the setting (a second count would route one user's
// events to two partitions), that the stream keeps its count, and that an old stream without
// a recorded count gets the connecting node's count written in.
#[tokio::test]
async fn another_partition_count_than_the_stream_is_refused() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let config = ClusterConfig::new(8, cluster.size());
    let first = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");

    let drifted = ClusterConfig::new(16, cluster.size());
    let refused = Layout::connect(&cluster.urls(), &drifted, READY_TIMEOUT).await;
    let Err(error @ LayoutError::PartitionDrift { .. }) = refused else {
        panic!("expected a partition-count refusal, got {refused:?}");
    };
    let message = error.to_string();
    for part in ["FLOODGATE_EVENTS", "8 partitions", "--partitions 16"] {
        assert!(message.contains(part), "{part} in {message}");
    }

    // An older stream, created before the count was recorded: its metadata removed.
    let mut stream = first.stream.clone();
    let mut old = stream.info().await.expect("info").config.clone();
    old.metadata.clear();
    first.context.update_stream(old).await.expect("update");
    let adopted = Layout::connect(&cluster.urls(), &drifted, READY_TIMEOUT)
        .await
        .expect("an unrecorded stream is adopted");
    let mut stream = adopted.stream.clone();
    let recorded = stream.info().await.expect("info").config.metadata.clone();
    assert_eq!(
        recorded.get(floodgate_cluster::PARTITIONS_METADATA),
        Some(&"16".to_owned())
    );
    let refused = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT).await;
    assert!(
        matches!(refused, Err(LayoutError::PartitionDrift { .. })),
        "{refused:?}"
    );
}

// Proves a node joining an existing cluster asks JetStream about the events stream once (the
// partition-count check, the find-or-create and the reconciliation share that answer): a
// second client counts the `STREAM.INFO` requests for the stream while the node connects.
#[tokio::test]
async fn connecting_looks_the_events_stream_up_once() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let config = ClusterConfig::new(4, cluster.size());
    let first = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");

    let mut lookups = first
        .client
        .subscribe(format!("$JS.API.STREAM.INFO.{STREAM_NAME}"))
        .await
        .expect("subscribe");
    first.client.flush().await.expect("flush");
    let second = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT).await;
    assert!(second.is_ok(), "the same settings connect: {second:?}");
    first.client.flush().await.expect("flush");
    let mut counted = 0;
    while tokio::time::timeout(Duration::from_millis(300), lookups.next())
        .await
        .is_ok_and(|lookup| lookup.is_some())
    {
        counted += 1;
    }
    assert_eq!(counted, 1, "STREAM.INFO requests for {STREAM_NAME}");
}
