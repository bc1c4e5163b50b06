//! Batches through a node's front door on real nats-servers: one message per partition the
//! batch spans, stored all together or not at all, unpacked by the owners whole and once.
//! An identical resend is a JetStream duplicate; an event resent in a message of another
//! composition is stored again and skipped by its owner (its client id was applied); a batch
//! that does not fit the stream is refused whole. A resend whose original was purged is judged
//! from its owner's id digests, all of a message's ids in one request.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_cluster::reads::{read_subject, request_id_lookups};
use floodgate_cluster::{
    ClusterConfig, IdLookup, Layout, Leases, LocalCluster, Node, Partition, partition_of,
};
use floodgate_core::dedup::ConflictField;
use floodgate_core::forward::{Forward, Forwarded};
use floodgate_core::{Event, EventId, Rejected};
use futures_util::StreamExt;
use support::{READY_TIMEOUT, RemoteMember};

const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

fn with_id(user: &str, amount: i64, id: &str) -> Event {
    Event::new(user, amount).with_id(EventId::parse(id).expect("id"))
}

async fn start_node(cluster: &LocalCluster, config: &ClusterConfig, name: &str) -> Arc<Node> {
    Node::start(&cluster.urls(), config.clone(), name, READY_TIMEOUT)
        .await
        .expect("node started")
}

/// Forwards `events` through `node` until answered (an `Unreachable` batch, refused whole,
/// is resent unchanged: the same ids, so the same message ids); the answer per event.
async fn forward_until_answered(node: &Node, events: &[Event]) -> Vec<Forwarded> {
    for _ in 0..200 {
        let answers = node.forward_batch(events).await;
        if answers
            .iter()
            .all(|answer| *answer == Err(Rejected::Unreachable))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|error| panic!("batch refused: {error:?}")))
            .collect();
    }
    panic!("batch never answered");
}

/// The balances and skipped events a node's owners hold now, over every partition it owns.
async fn node_state(node: &Node, partitions: u32) -> (usize, HashMap<String, i64>, u64) {
    let mut balances = HashMap::new();
    let mut skipped = 0;
    let mut owned = 0;
    for partition in 0..partitions {
        if let Some(state) = node.view().partition_state(partition).await {
            owned += 1;
            skipped += state.duplicate_events;
            balances.extend(state.balances);
        }
    }
    (owned, balances, skipped)
}

/// Waits until `node` owns every partition with exactly `balances` and `skipped` skipped
/// events; panics with what it holds otherwise.
async fn settle(node: &Node, partitions: u32, balances: &HashMap<String, i64>, skipped: u64) {
    let started = Instant::now();
    loop {
        let state = node_state(node, partitions).await;
        if state == (partitions as usize, balances.clone(), skipped) {
            return;
        }
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "expected {} users summing to {} with {skipped} skipped; holds {} partitions, {} \
             users summing to {}, {} skipped",
            balances.len(),
            balances.values().sum::<i64>(),
            state.0,
            state.1.len(),
            state.1.values().sum::<i64>(),
            state.2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PARTITIONS: u32 = 8;
const USERS: usize = 40;
const EVENTS_PER_BATCH: usize = 16;
const BATCHES: usize = 90;

/// Batch `number`: `EVENTS_PER_BATCH` events with ids `b<number>-<k>`, over many partitions.
fn numbered_batch(number: usize) -> Vec<Event> {
    (0..EVENTS_PER_BATCH)
        .map(|k| {
            let serial = number * EVENTS_PER_BATCH + k;
            let amount = i64::try_from(serial % 9 + 1).expect("small");
            with_id(
                &format!("user-{}", serial % USERS),
                amount,
                &format!("b{number}-{k}"),
            )
        })
        .collect()
}

/// Adds the events of `events` answered `Stored` whose id is new to `applied`; returns how
/// many answered `Stored` had an id applied before (their owner must skip them).
fn record(
    events: &[Event],
    answers: &[Forwarded],
    applied: &mut HashMap<String, (String, i64)>,
) -> u64 {
    let mut resent = 0;
    for (event, answer) in events.iter().zip(answers) {
        let id = event.id.as_ref().expect("an id").as_str().to_owned();
        let known = applied.contains_key(&id);
        if *answer == Forwarded::Stored && known {
            resent += 1;
        }
        applied
            .entry(id)
            .or_insert_with(|| (event.user.clone(), event.amount));
    }
    resent
}

fn sums(applied: &HashMap<String, (String, i64)>) -> HashMap<String, i64> {
    let mut sums = HashMap::new();
    for (user, amount) in applied.values() {
        *sums.entry(user.clone()).or_insert(0) += amount;
    }
    sums
}

/// Waits until the owners have snapshotted and purged every message of the stream.
async fn wait_stream_empty(layout: &Layout) {
    let started = Instant::now();
    loop {
        let mut stream = layout.stream.clone();
        if stream
            .info()
            .await
            .is_ok_and(|info| info.state.messages == 0)
        {
            return;
        }
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "the stream was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the lease of some partition is held by `node`.
async fn wait_holds_some(layout: &Layout, config: &ClusterConfig, node: &str) {
    let leases = Leases::new(layout.leases.clone(), "observer", config.lease_ttl);
    let started = Instant::now();
    loop {
        for partition in 0..config.partitions {
            if leases.holder(partition).await.ok().flatten().as_deref() == Some(node) {
                return;
            }
        }
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "{node} never took a partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Proves batches across partitions are applied exactly once across a takeover mid-load: on
// three nats-servers a member ("first") and a node share 8 partitions; batches of 16 events
// spanning them go through the node; every 4th batch is resent identically (answered
// duplicate event by event, nothing stored), every 5th is followed by a batch holding half of
// it again with new events (stored as new messages: the owner skips the resent half); a third
// of the way in, "first" is killed (no last snapshot, no release) and the node takes its
// partitions over from their snapshots and replays. Every balance equals the sum of the
// unique events, and the owners skipped exactly the resent events answered `Stored`. Once
// everything is purged, the first batch resent with one amount changed is a duplicate but
// for that event, an `IdConflict` (judged from the owners' id digests).
#[tokio::test]
async fn batches_across_partitions_are_applied_once_across_a_takeover_mid_load() {
    let (cluster, mut config, layout) = support::start(PARTITIONS, Duration::from_secs(1)).await;
    config.snapshot_every_events = 40;
    let mut first = RemoteMember::start(cluster.urls(), config.clone(), "first");
    wait_holds_some(&layout, &config, "first").await;
    let node = start_node(&cluster, &config, "front").await;
    let mut applied = HashMap::new();
    let mut skipped = 0;

    for number in 0..BATCHES {
        if number == BATCHES / 3 {
            first.kill();
        }
        let batch = numbered_batch(number);
        let answers = forward_until_answered(&node, &batch).await;
        skipped += record(&batch, &answers, &mut applied);
        if number % 4 == 0 {
            let again = forward_until_answered(&node, &batch).await;
            assert!(
                again.iter().all(|answer| *answer == Forwarded::Duplicate),
                "an identical resend is a duplicate: {again:?}"
            );
        }
        if number % 5 == 0 {
            let mut mixed: Vec<Event> = batch[..EVENTS_PER_BATCH / 2].to_vec();
            mixed.extend((0..EVENTS_PER_BATCH / 2).map(|k| {
                with_id(
                    &format!("user-{}", (number + k) % USERS),
                    1,
                    &format!("m{number}-{k}"),
                )
            }));
            let answers = forward_until_answered(&node, &mixed).await;
            skipped += record(&mixed, &answers, &mut applied);
        }
    }
    assert!(skipped > 0, "some resent events were stored again");
    settle(&node, PARTITIONS, &sums(&applied), skipped).await;
    println!(
        "{} unique events in {BATCHES} batches; {skipped} resent events skipped by the owners",
        applied.len()
    );
    wait_stream_empty(&layout).await;
    let mut reused = numbered_batch(0);
    reused[3].amount += 1;
    let answers = node.forward_batch(&reused).await;
    let conflicts: Vec<usize> = (0..answers.len())
        .filter(|&index| answers[index] == Err(Rejected::IdConflict(ConflictField::Amount)))
        .collect();
    assert_eq!(
        conflicts,
        [3],
        "after the purge the owners' digests judge each event: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .enumerate()
            .all(|(index, answer)| index == 3 || *answer == Ok(Forwarded::Duplicate)),
        "{answers:?}"
    );
    node.stop().await;
}

// Proves client ids are kept inside batch messages beyond JetStream's duplicate window and
// across a takeover: a batch resent after the window is stored again (new message, answered
// `Stored`) but its owner applies nothing of it; after the node stops (last snapshot, lease
// released) a new node loads the ids from the snapshots and skips the next resend too.
#[tokio::test]
async fn a_batch_resent_past_the_duplicate_window_is_skipped_by_its_owners() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(4, cluster.size());
    config.lease_ttl = Duration::from_secs(1);
    config.duplicate_window = Duration::from_millis(500);
    let batch = numbered_batch(1);
    let mut applied = HashMap::new();
    let node = start_node(&cluster, &config, "one").await;
    let answers = forward_until_answered(&node, &batch).await;
    record(&batch, &answers, &mut applied);
    settle(&node, 4, &sums(&applied), 0).await;

    tokio::time::sleep(config.duplicate_window * 3).await;
    let answers = forward_until_answered(&node, &batch).await;
    assert!(
        answers.iter().all(|answer| *answer == Forwarded::Stored),
        "past the window JetStream stores it again: {answers:?}"
    );
    settle(&node, 4, &sums(&applied), batch.len() as u64).await;
    node.stop().await;

    let next = start_node(&cluster, &config, "two").await;
    tokio::time::sleep(config.duplicate_window * 3).await;
    forward_until_answered(&next, &batch).await;
    settle(&next, 4, &sums(&applied), 2 * batch.len() as u64).await;
    next.stop().await;
}

// Proves a full stream refuses a batch whole: with every lease held by the test (nothing is
// applied or purged) and room for one more message, a batch spanning two partitions (two
// messages) is refused `QueueFull` for every event and stores nothing, though one of its
// messages would fit; an identical resend of a stored batch is still a duplicate (and the same
// ids with another amount an `IdConflict` for that event, judged against the stored message);
// a batch on one partition (one message) fits.
#[tokio::test]
async fn a_full_stream_refuses_the_whole_batch() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.capacity_events = 4;
    config.lease_ttl = Duration::from_secs(30);
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let leases = Leases::new(layout.leases.clone(), "holder", config.lease_ttl);
    let mut held = Vec::new();
    for partition in 0..config.partitions {
        held.push(
            leases
                .try_acquire(partition)
                .await
                .expect("bucket")
                .expect("free"),
        );
    }
    let on = |partition: Partition| {
        (0..1_000)
            .map(|number| format!("user-{number}"))
            .find(|user| partition_of(user, config.partitions) == partition)
            .expect("a user")
    };
    let (left, right) = (on(0), on(1));
    let node = start_node(&cluster, &config, "front").await;
    let messages = || {
        let mut stream = layout.stream.clone();
        async move { stream.info().await.expect("info").state.messages }
    };

    let spanning = [with_id(&left, 1, "s1"), with_id(&right, 2, "s2")];
    let answers = node.forward_batch(&spanning).await;
    assert_eq!(answers, vec![Ok(Forwarded::Stored); 2]);
    let answers = node
        .forward_batch(&[with_id(&left, 1, "t1"), with_id(&left, 1, "t2")])
        .await;
    assert_eq!(answers, vec![Ok(Forwarded::Stored); 2]);
    assert_eq!(messages().await, 3, "two batches, three messages");

    let refused = node
        .forward_batch(&[with_id(&left, 5, "f1"), with_id(&right, 5, "f2")])
        .await;
    assert_eq!(refused, vec![Err(Rejected::QueueFull); 2], "refused whole");
    assert_eq!(messages().await, 3, "nothing of it stored");
    let again = node.forward_batch(&spanning).await;
    assert_eq!(
        again,
        vec![Ok(Forwarded::Duplicate); 2],
        "a stored batch is still a duplicate when full"
    );
    let other_amount = [with_id(&left, 1, "s1"), with_id(&right, 3, "s2")];
    assert_eq!(
        node.forward_batch(&other_amount).await,
        vec![
            Ok(Forwarded::Duplicate),
            Err(Rejected::IdConflict(ConflictField::Amount))
        ],
        "the same ids with another amount: judged against the stored message"
    );
    let fits = node
        .forward_batch(&[with_id(&left, 5, "f1"), with_id(&left, 5, "f3")])
        .await;
    assert_eq!(fits, vec![Ok(Forwarded::Stored); 2]);
    assert_eq!(messages().await, 4, "one message fitted");
    node.stop().await;
    for lease in &held {
        leases.release(lease).await.expect("released");
    }
}

/// The `Floodgate-Read` header of each request `requests` receives until none comes for
/// 300 ms.
async fn read_kinds(requests: &mut async_nats::Subscriber) -> Vec<String> {
    let mut kinds = Vec::new();
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(300), requests.next()).await
    {
        kinds.push(request_kind(&request));
    }
    kinds
}

/// A read request's `Floodgate-Read` header (empty for a balance read).
fn request_kind(request: &async_nats::Message) -> String {
    request
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Floodgate-Read"))
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default()
}

// Proves a batch resent after its owner applied and purged it is judged id by id from the
// owner's digests, in one request: through a node that owns no partition, the same ids in the
// same order (so the same message, a JetStream duplicate) with one event as before, one with
// another amount, one with another user and one as before answer `Duplicate`,
// `IdConflict(amount)`, `IdConflict(user)`, `Duplicate`, and the owner's read subject sees one
// `ids` request, not one request per id.
#[tokio::test]
async fn a_purged_batch_resent_to_another_node_is_judged_per_id_in_one_request() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(1, cluster.size());
    config.lease_ttl = Duration::from_secs(3);
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let owner = start_node(&cluster, &config, "owner").await;
    wait_holds_some(&layout, &config, "owner").await;
    let door = start_node(&cluster, &config, "door").await;
    let original = [
        with_id("alice", 5, "k1"),
        with_id("alice", 7, "k2"),
        with_id("carol", 3, "k3"),
        with_id("dave", 2, "k4"),
    ];
    let answers = forward_until_answered(&door, &original).await;
    assert_eq!(answers, vec![Forwarded::Stored; 4]);
    wait_stream_empty(&layout).await;

    let mut requests = layout
        .client
        .subscribe(read_subject(0))
        .await
        .expect("subscribe");
    layout.client.flush().await.expect("flush");
    let resent = [
        with_id("alice", 5, "k1"),
        with_id("alice", 8, "k2"),
        with_id("erin", 3, "k3"),
        with_id("dave", 2, "k4"),
    ];
    let answers = door.forward_batch(&resent).await;
    assert_eq!(
        answers,
        vec![
            Ok(Forwarded::Duplicate),
            Err(Rejected::IdConflict(ConflictField::Amount)),
            Err(Rejected::IdConflict(ConflictField::User)),
            Ok(Forwarded::Duplicate),
        ]
    );
    assert!(door.view().owned().is_empty(), "the door asked the owner");
    assert_eq!(read_kinds(&mut requests).await, ["ids"]);
    assert_eq!(owner.view().balance("alice").await, Ok(12), "applied once");
    door.stop().await;
    owner.stop().await;
}

// Proves the `ids` request stays compatible with an owner of the version before it (which
// reads it as a page request it cannot parse and answers an empty payload): the asker then
// asks one id at a time and gets each id's answer, in order.
#[tokio::test]
async fn an_owner_that_predates_the_ids_request_is_asked_id_by_id() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let client = async_nats::connect(&cluster.urls()[0])
        .await
        .expect("connect");
    let mut requests = client.subscribe(read_subject(0)).await.expect("subscribe");
    client.flush().await.expect("flush");
    let kept = IdLookup::Known(None);
    let unknown = IdLookup::Unknown {
        applied_sequence: 9,
        forgotten_through: 0,
    };
    let older_owner = client.clone();
    let owner = tokio::spawn(async move {
        let mut kinds = Vec::new();
        while kinds.len() < 3 {
            let request = requests.next().await.expect("a request");
            let kind = request_kind(&request);
            let answer = match (kind.as_str(), &request.payload[..]) {
                ("id", b"kept") => serde_json::to_vec(&kept).expect("json"),
                ("id", _) => serde_json::to_vec(&unknown).expect("json"),
                _ => Vec::new(),
            };
            let reply = request.reply.expect("a request has a reply subject");
            older_owner
                .publish(reply, answer.into())
                .await
                .expect("answered");
            kinds.push(kind);
        }
        kinds
    });

    let lookups = request_id_lookups(&client, 0, &["kept", "other"], READY_TIMEOUT).await;
    assert_eq!(lookups, Ok(vec![kept, unknown]));
    assert_eq!(owner.await.expect("owner task"), ["ids", "id", "id"]);
}
