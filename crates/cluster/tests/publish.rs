//! Publishing against a real three-server JetStream cluster: acknowledged, deduplicated by
//! message id, refused when full, and an unreachable cluster named as such.

use std::time::Duration;

use floodgate_cluster::layout::STREAM_BYTES_PER_EVENT;
use floodgate_cluster::wire::{Payload, decode_payload};
use floodgate_cluster::{
    ClusterConfig, Layout, LocalCluster, PublishError, Publisher, partition_of,
};
use floodgate_core::{Event, EventId};

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

// Proves the events stream bounds bytes as well as messages, so batch messages (up to 1,000
// events each) cannot fill it with 1,000 x its capacity in events: with a capacity of 40
// (`max_bytes` 40 x 512), a single event of the largest kind (a 128-byte user of quotes,
// whose JSON doubles it, and a 64-byte client id) stores under 512 bytes, so single events
// stay bounded by the message count; one-partition batch messages of 100 events are refused
// `QueueFull` when the next one would pass `max_bytes`, long before 40 messages, nothing of
// the refused one stored.
#[tokio::test]
async fn batch_messages_are_bounded_by_bytes() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(1, cluster.size());
    config.capacity_events = 40;
    let layout = connect(&cluster, &config).await;
    let mut stream = layout.stream.clone();
    let max_bytes = stream.info().await.expect("info").config.max_bytes;
    assert_eq!(max_bytes, 40 * STREAM_BYTES_PER_EVENT);
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");

    let largest = Event::new("\"".repeat(128), i64::MIN);
    publisher
        .publish(&largest, &"i".repeat(64))
        .await
        .expect("stored");
    let single_bytes = stream.info().await.expect("info").state.bytes;
    assert!(
        single_bytes <= STREAM_BYTES_PER_EVENT as u64,
        "the largest single event takes {single_bytes} bytes"
    );

    let mut stored_events = 0;
    for number in 0.. {
        let batch: Vec<Event> = (0..100)
            .map(|k| with_id("user-1", 1, &format!("{number:012}-{k:011}")))
            .collect();
        let message = publisher.batch_messages(&batch).remove(0);
        let before = stream.info().await.expect("info").state.clone();
        match publisher.publish_message(&message).await {
            Ok(_) => stored_events += batch.len(),
            Err(PublishError::QueueFull) => {
                let after = stream.info().await.expect("info").state.clone();
                assert_eq!(after.messages, before.messages, "nothing of it stored");
                assert!(after.bytes <= max_bytes as u64);
                let message_bytes = after.bytes.saturating_sub(single_bytes) / (number as u64);
                assert!(
                    after.bytes + message_bytes > max_bytes as u64,
                    "refused by the byte bound: {} + {message_bytes} > {max_bytes}",
                    after.bytes
                );
                assert!(
                    after.messages < 40,
                    "long before the message bound: {}",
                    after.messages
                );
                println!(
                    "{stored_events} batch events in {} messages, {} bytes ({message_bytes} a \
                     message) against max_bytes {max_bytes}",
                    after.messages, after.bytes
                );
                break;
            }
            Err(error) => panic!("unexpected: {error}"),
        }
        assert!(number < 40, "never refused");
    }
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

/// Two users on different partitions of `partitions`.
fn users_on_two_partitions(partitions: u32) -> (String, String) {
    let first = "user-0".to_owned();
    let other = (1..1_000)
        .map(|number| format!("user-{number}"))
        .find(|user| partition_of(user, partitions) != partition_of(&first, partitions))
        .expect("another partition");
    (first, other)
}

fn with_id(user: &str, amount: i64, id: &str) -> Event {
    Event::new(user, amount).with_id(EventId::parse(id).expect("id"))
}

// Proves a batch is one message per partition, stored all together or not at all: split by
// partition (events in batch order, decodable back with their ids); an atomic batch of those
// messages is stored whole; an identical resend has the same message ids and is refused whole
// (StoredIdInBatch), each of its messages then a duplicate on its own; a batch that does not
// fit the stream's bound (counted in messages) is refused whole as QueueFull, though one of
// its messages would fit.
#[tokio::test]
async fn a_batch_is_one_message_per_partition_stored_whole_or_not_at_all() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.capacity_events = 3;
    let layout = connect(&cluster, &config).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let (left, right) = users_on_two_partitions(config.partitions);
    let messages = |stream: &async_nats::jetstream::stream::Stream| {
        let mut stream = stream.clone();
        async move { stream.info().await.expect("info").state.messages }
    };
    let batch = [
        with_id(&left, 1, "a1"),
        with_id(&right, 2, "b1"),
        with_id(&left, 3, "a2"),
    ];

    let split = publisher.batch_messages(&batch);
    assert_eq!(split.len(), 2, "one message per partition");
    let left_message = split
        .iter()
        .find(|message| message.partition == partition_of(&left, 2))
        .expect("left's message");
    assert_eq!(left_message.events, [0, 2]);
    assert_eq!(
        decode_payload(&left_message.payload).expect("decodes"),
        Payload::Batch(vec![batch[0].clone(), batch[2].clone()])
    );
    let sequences = publisher
        .publish_atomic("batch-1", &split)
        .await
        .expect("stored whole");
    assert_eq!(messages(&layout.stream).await, 2);
    assert_stored_at(&layout.stream, &split, &sequences).await;

    let resend = publisher.batch_messages(&batch);
    let ids = |split: &[floodgate_cluster::BatchMessage]| {
        split
            .iter()
            .map(|message| message.message_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&resend),
        ids(&split),
        "the same ids, the same message ids"
    );
    let again = publisher.publish_atomic("batch-2", &resend).await;
    assert!(
        matches!(again, Err(PublishError::StoredIdInBatch)),
        "{again:?}"
    );
    for message in &resend {
        let receipt = publisher.publish_message(message).await.expect("answered");
        assert!(receipt.duplicate, "each message alone is a duplicate");
    }
    assert_eq!(messages(&layout.stream).await, 2, "nothing stored twice");

    let two_more = publisher.batch_messages(&[with_id(&left, 1, "a3"), with_id(&right, 1, "b3")]);
    let too_many = publisher.publish_atomic("batch-3", &two_more).await;
    assert!(
        matches!(too_many, Err(PublishError::QueueFull)),
        "{too_many:?}"
    );
    assert_eq!(
        messages(&layout.stream).await,
        2,
        "nothing of a batch past the bound"
    );
    let one_more = publisher.batch_messages(&[with_id(&left, 1, "a3"), with_id(&left, 1, "a4")]);
    assert_eq!(one_more.len(), 1);
    let sequences = publisher
        .publish_atomic("batch-4", &one_more)
        .await
        .expect("what fits is stored");
    assert_eq!(messages(&layout.stream).await, 3);
    assert_eq!(sequences, [3], "the third message stored");
}

/// The commit names each message's sequence (consecutive, in batch order): a front door asks
/// the owners about exactly the message it stored.
async fn assert_stored_at(
    stream: &async_nats::jetstream::stream::Stream,
    messages: &[floodgate_cluster::BatchMessage],
    sequences: &[u64],
) {
    assert_eq!(sequences.len(), messages.len());
    for (message, sequence) in messages.iter().zip(sequences) {
        let stored = stream
            .get_raw_message(*sequence)
            .await
            .expect("stored at the sequence named");
        let stored_id = stored.headers.get("Nats-Msg-Id").map(ToString::to_string);
        assert_eq!(stored_id.as_deref(), Some(message.message_id.as_str()));
    }
}

// Proves an events stream created before atomic batches (no `allow_atomic`) and before the
// byte bound gets both when a node connects (the bound from the stream's own capacity, which it
// keeps), so batches are atomic and bounded after an upgrade.
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
    assert_eq!(
        info.config.max_bytes,
        7 * STREAM_BYTES_PER_EVENT,
        "a byte bound written in, from the stream's own capacity"
    );
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let (left, right) = users_on_two_partitions(config.partitions);
    let split = publisher.batch_messages(&[Event::new(left, 1), Event::new(right, 1)]);
    publisher
        .publish_atomic("batch-1", &split)
        .await
        .expect("an atomic batch");
}
