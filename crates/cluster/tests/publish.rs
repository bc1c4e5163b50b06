//! Publishing against a real three-server JetStream cluster: acknowledged, deduplicated by
//! message id, refused when full, and an unreachable cluster named as such.

use std::time::Duration;

use floodgate_cluster::{ClusterConfig, Layout, LocalCluster, PublishError, Publisher};
use floodgate_core::Event;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(cluster: &LocalCluster, config: &ClusterConfig) -> Layout {
    Layout::connect(&cluster.urls(), config, READY_TIMEOUT)
        .await
        .expect("JetStream ready")
}

// Proves an acknowledged publish is stored once: a second publish with the same Nats-Msg-Id is
// answered as a duplicate with the first one's sequence, and the stream holds one message; a
// new id is stored at the next sequence.
#[tokio::test]
async fn publish_is_acknowledged_and_deduplicated_by_message_id() {
    let cluster = LocalCluster::start(3).unwrap_or_else(|error| panic!("{error}"));
    let config = ClusterConfig::new(4, cluster.size());
    let layout = connect(&cluster, &config).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let event = Event::new("alice", 5);

    let first = publisher.publish(&event, "event-1").await.expect("acked");
    let again = publisher.publish(&event, "event-1").await.expect("acked");
    let other = publisher.publish(&event, "event-2").await.expect("acked");

    assert!(!first.duplicate);
    assert!(again.duplicate, "same id must be a duplicate");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(other.sequence, first.sequence + 1);
    let mut stream = layout.stream.clone();
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 2);
    assert_eq!(info.config.num_replicas, 3);
}

// Proves a full stream refuses a new event as QueueFull with nothing stored, while a retry of
// an already stored id is still answered (deduplication is checked before the limit).
#[tokio::test]
async fn full_stream_refuses_new_events_as_queue_full() {
    let cluster = LocalCluster::start(3).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.capacity_events = 3;
    let layout = connect(&cluster, &config).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");

    for number in 0..3 {
        let event = Event::new(format!("user-{number}"), 1);
        publisher
            .publish(&event, &format!("id-{number}"))
            .await
            .expect("within capacity");
    }
    let refused = publisher.publish(&Event::new("user-9", 1), "id-9").await;
    assert!(
        matches!(refused, Err(PublishError::QueueFull)),
        "expected QueueFull, got {refused:?}"
    );
    let retry = publisher
        .publish(&Event::new("user-0", 1), "id-0")
        .await
        .expect("a stored id is answered even when full");
    assert!(retry.duplicate);
    let mut stream = layout.stream.clone();
    assert_eq!(stream.info().await.expect("info").state.messages, 3);
}

// Proves a publish with every server gone is Unreachable (its own reason), not QueueFull.
#[tokio::test]
async fn publish_without_servers_is_unreachable() {
    let mut cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.request_timeout = Duration::from_millis(500);
    let layout = connect(&cluster, &config).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    cluster.kill(0).expect("kill");

    let outcome = publisher.publish(&Event::new("bob", 1), "id-1").await;
    assert!(
        matches!(outcome, Err(PublishError::Unreachable(_))),
        "expected Unreachable, got {outcome:?}"
    );
}

// Proves an atomic batch is all or nothing on nats-server: a batch is stored whole; a batch
// holding one id already stored is refused whole (StoredIdInBatch, its new events not
// stored); a batch that would pass the stream's bound is refused whole as QueueFull, though
// part of it would fit.
#[tokio::test]
async fn an_atomic_batch_is_stored_whole_or_not_at_all() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.capacity_events = 5;
    let layout = connect(&cluster, &config).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let (alice, bob) = (Event::new("alice", 1), Event::new("bob", 2));
    let messages = |stream: &mut async_nats::jetstream::stream::Stream| {
        let mut stream = stream.clone();
        async move { stream.info().await.expect("info").state.messages }
    };
    let mut stream = layout.stream.clone();

    publisher
        .publish_atomic("batch-1", &[(&alice, "a1"), (&bob, "b1"), (&alice, "a2")])
        .await
        .expect("stored whole");
    assert_eq!(messages(&mut stream).await, 3);
    let with_stored_id = publisher
        .publish_atomic("batch-2", &[(&bob, "b2"), (&alice, "a1")])
        .await;
    assert!(
        matches!(with_stored_id, Err(PublishError::StoredIdInBatch)),
        "{with_stored_id:?}"
    );
    assert_eq!(messages(&mut stream).await, 3, "b2 not stored either");
    let too_many = publisher
        .publish_atomic("batch-3", &[(&bob, "b3"), (&bob, "b4"), (&bob, "b5")])
        .await;
    assert!(
        matches!(too_many, Err(PublishError::QueueFull)),
        "{too_many:?}"
    );
    assert_eq!(
        messages(&mut stream).await,
        3,
        "nothing of a batch past the bound"
    );
    publisher
        .publish_atomic("batch-4", &[(&bob, "b3"), (&bob, "b4")])
        .await
        .expect("what fits is stored");
    assert_eq!(messages(&mut stream).await, 5);
}

// Proves an events stream created before atomic batches (no `allow_atomic`) gets them turned
// on when a node connects, keeping its own capacity, so batches are atomic after an upgrade.
#[tokio::test]
async fn an_older_stream_gets_atomic_batches_on_connect() {
    use async_nats::jetstream::{self, stream};
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let client = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .expect("connect");
    let context = jetstream::new(client);
    let older = stream::Config {
        name: floodgate_cluster::layout::STREAM_NAME.to_owned(),
        subjects: vec![format!(
            "{}.*",
            floodgate_cluster::partition::SUBJECT_PREFIX
        )],
        discard: stream::DiscardPolicy::New,
        max_messages: 7,
        ..Default::default()
    };
    let created = loop {
        match context.create_stream(older.clone()).await {
            Ok(stream) => break stream,
            Err(error) => {
                eprintln!("JetStream not ready yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(!created.cached_info().config.allow_atomic_publish);

    let config = ClusterConfig::new(2, cluster.size());
    let layout = connect(&cluster, &config).await;
    let mut stream = layout.stream.clone();
    let info = stream.info().await.expect("info");
    assert!(info.config.allow_atomic_publish, "turned on");
    assert_eq!(
        info.config.max_messages, 7,
        "the stream's own capacity kept"
    );
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let event = Event::new("alice", 1);
    publisher
        .publish_atomic("batch-1", &[(&event, "a1"), (&event, "a2")])
        .await
        .expect("an atomic batch");
}
