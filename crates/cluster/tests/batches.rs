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

/// Forwards `events` through `node` until answered (a batch with any event `Unreachable` is
/// resent unchanged, as a client resends its body: the same ids, so the same message ids);
/// the answer per event, and whether the first try answered.
async fn forward_until_answered(node: &Node, events: &[Event]) -> (Vec<Forwarded>, bool) {
    for tries in 0..200 {
        let answers = node.forward_batch(events).await;
        if answers.contains(&Err(Rejected::Unreachable)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let answers = answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|error| panic!("batch refused: {error:?}")))
            .collect();
        return (answers, tries == 0);
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

/// Adds the events of an acknowledged batch whose id is new to `applied`; returns how many
/// had an id applied before and were stored again, so their owner must skip them: those of a
/// partition whose message differs from the one `earlier` (the batch they were first sent
/// in) made there. An identical message is a JetStream duplicate, stored once.
fn record(
    events: &[Event],
    earlier: &[Event],
    applied: &mut HashMap<String, (String, i64)>,
) -> u64 {
    let ids_on = |batch: &[Event], partition| -> Vec<String> {
        batch
            .iter()
            .filter(|event| partition_of(&event.user, PARTITIONS) == partition)
            .map(|event| event.id.as_ref().expect("an id").as_str().to_owned())
            .collect()
    };
    let mut resent = 0;
    for event in events {
        let id = event.id.as_ref().expect("an id").as_str().to_owned();
        let partition = partition_of(&event.user, PARTITIONS);
        let stored_again = ids_on(events, partition) != ids_on(earlier, partition);
        if applied.contains_key(&id) && stored_again {
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
// it again with new events (stored as new messages: the owner skips the resent half, and the
// node answers it `Duplicate`, the new half `Stored`); a third of the way in, "first" is
// killed (no last snapshot, no release) and the node takes its partitions over from their
// snapshots and replays. Every balance equals the sum of the unique events, and the owners
// skipped exactly the resent events stored again (those whose partition's message differs
// from the original batch's). Once
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
        let (answers, first_try) = forward_until_answered(&node, &batch).await;
        if first_try {
            assert!(
                answers.iter().all(|answer| *answer == Forwarded::Stored),
                "new ids are accepted: {answers:?}"
            );
        }
        skipped += record(&batch, &[], &mut applied);
        if number % 4 == 0 {
            let (again, _) = forward_until_answered(&node, &batch).await;
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
            let (answers, first_try) = forward_until_answered(&node, &mixed).await;
            let (resent, new) = answers.split_at(EVENTS_PER_BATCH / 2);
            assert!(
                resent.iter().all(|answer| *answer == Forwarded::Duplicate),
                "the resent half is answered duplicate: {answers:?}"
            );
            // A retried batch (its first try answered 503) is an identical resend: stored
            // by the first try (then all duplicate) or not at all (then all stored now).
            let all = |expected| new.iter().all(|answer| *answer == expected);
            assert!(
                all(Forwarded::Stored) || (!first_try && all(Forwarded::Duplicate)),
                "the new half is accepted: {answers:?}"
            );
            skipped += record(&mixed, &batch, &mut applied);
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
// across a takeover: a batch resent after the window is stored again (a new message) but its
// owner applies nothing of it, and the node, asking the owners, answers it `Duplicate`; after
// the node stops (last snapshot, lease released) a new node loads the ids from the snapshots,
// skips the next resend too and answers it `Duplicate` as well.
#[tokio::test]
async fn a_batch_resent_past_the_duplicate_window_is_skipped_by_its_owners() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(4, cluster.size());
    config.lease_ttl = Duration::from_secs(1);
    config.duplicate_window = Duration::from_millis(500);
    let batch = numbered_batch(1);
    let mut applied = HashMap::new();
    let node = start_node(&cluster, &config, "one").await;
    forward_until_answered(&node, &batch).await;
    record(&batch, &[], &mut applied);
    settle(&node, 4, &sums(&applied), 0).await;

    tokio::time::sleep(config.duplicate_window * 3).await;
    let (answers, _) = forward_until_answered(&node, &batch).await;
    assert!(
        answers.iter().all(|answer| *answer == Forwarded::Duplicate),
        "past the window JetStream stores it again, its owners skip it and say so: {answers:?}"
    );
    settle(&node, 4, &sums(&applied), batch.len() as u64).await;
    node.stop().await;

    let next = start_node(&cluster, &config, "two").await;
    tokio::time::sleep(config.duplicate_window * 3).await;
    let (answers, _) = forward_until_answered(&next, &batch).await;
    assert!(
        answers.iter().all(|answer| *answer == Forwarded::Duplicate),
        "the ids came with the snapshots: {answers:?}"
    );
    settle(&next, 4, &sums(&applied), 2 * batch.len() as u64).await;
    next.stop().await;
}

// Proves a full stream refuses a batch whole: with every lease held by the test (nothing is
// applied or purged) and room for one more message, a batch spanning two partitions (two
// messages) is refused `QueueFull` for every event and stores nothing, though one of its
// messages would fit; an identical resend of a stored batch is still a duplicate (and the same
// ids with another amount an `IdConflict` for that event, judged against the stored message);
// a batch on one partition (one message) fits. With no owner to say which of a stored batch's
// client ids repeat earlier ones, its events are `Unreachable` (503: stored, resend with the
// same ids), never a guessed `Stored`.
#[tokio::test]
async fn a_full_stream_refuses_the_whole_batch() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.capacity_events = 4;
    config.lease_ttl = Duration::from_secs(30);
    // How long a node waits for an owner to judge a stored batch (and for JetStream).
    config.request_timeout = Duration::from_secs(2);
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
    assert_eq!(
        answers,
        vec![Err(Rejected::Unreachable); 2],
        "stored, no owner"
    );
    let answers = node
        .forward_batch(&[with_id(&left, 1, "t1"), with_id(&left, 1, "t2")])
        .await;
    assert_eq!(
        answers,
        vec![Err(Rejected::Unreachable); 2],
        "stored, no owner"
    );
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
    assert_eq!(
        fits,
        vec![Err(Rejected::Unreachable); 2],
        "stored, no owner"
    );
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
    let (answers, _) = forward_until_answered(&door, &original).await;
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

/// The `nth` user name (`user-<k>`) whose partition is `partition`.
fn user_on(partition: Partition, partitions: u32, nth: usize) -> String {
    (0..10_000)
        .map(|number| format!("user-{number}"))
        .filter(|user| partition_of(user, partitions) == partition)
        .nth(nth)
        .expect("a user")
}

// Proves a mixed resend is answered per event, as standalone answers it: through node "one"
// a batch [a, b, x] over two partitions (b and x share one) is acknowledged; right after,
// through node "two", [b, c] (messages of another composition, which JetStream stores as new)
// answers b `Duplicate` and c `Stored`; then [c with another amount, d, b's id for another
// user of b's partition, y] answers `IdConflict(Amount)`, `Stored`, `IdConflict(User)`,
// `Stored`; a one-partition mixed resend (one plain publish) answers the same way. The answers
// come once the owners have applied the messages, so the balances read right after count
// every event once and no conflicting one.
#[tokio::test]
async fn a_mixed_resend_is_answered_per_event() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let partitions = 4;
    let mut config = ClusterConfig::new(partitions, cluster.size());
    config.lease_ttl = Duration::from_secs(2);
    let one = start_node(&cluster, &config, "one").await;
    let two = start_node(&cluster, &config, "two").await;
    let user = |partition, nth| user_on(partition, partitions, nth);
    let (a, a_neighbour) = (user(0, 0), user(0, 1));
    let (b, b_neighbour, x) = (user(1, 0), user(1, 1), user(1, 2));
    let c = user(2, 0);
    // Every partition owned by one of the two nodes before the first batch.
    let started = Instant::now();
    while one.view().owned().len() + two.view().owned().len() < partitions as usize {
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "partitions never owned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let first = [
        with_id(&a, 1, "a"),
        with_id(&b, 2, "b"),
        with_id(&x, 7, "x"),
    ];
    let (answers, _) = forward_until_answered(&one, &first).await;
    assert_eq!(answers, [Forwarded::Stored; 3]);
    let resend = [with_id(&b, 2, "b"), with_id(&c, 3, "c")];
    let (mixed, first_try) = forward_until_answered(&two, &resend).await;
    assert!(first_try, "answered at once");
    assert_eq!(
        mixed,
        [Forwarded::Duplicate, Forwarded::Stored],
        "b resent, c new"
    );
    let (identical, _) = forward_until_answered(&two, &resend).await;
    assert_eq!(identical, [Forwarded::Duplicate, Forwarded::Duplicate]);

    let reused = [
        with_id(&c, 4, "c"),
        with_id(&c, 5, "d"),
        with_id(&b_neighbour, 2, "b"),
        with_id(&x, 8, "y"),
    ];
    let answers = one.forward_batch(&reused).await;
    assert_eq!(
        answers,
        [
            Err(Rejected::IdConflict(ConflictField::Amount)),
            Ok(Forwarded::Stored),
            Err(Rejected::IdConflict(ConflictField::User)),
            Ok(Forwarded::Stored),
        ]
    );
    let one_partition = [with_id(&a, 1, "a"), with_id(&a_neighbour, 6, "e")];
    let (answers, _) = forward_until_answered(&two, &one_partition).await;
    assert_eq!(answers, [Forwarded::Duplicate, Forwarded::Stored]);

    let expected = [
        (&a, 1),
        (&a_neighbour, 6),
        (&b, 2),
        (&b_neighbour, 0),
        (&x, 7 + 8),
        (&c, 3 + 5),
    ];
    for (user, balance) in expected {
        for node in [&one, &two] {
            assert_eq!(
                node.view().balance(user).await,
                Ok(balance),
                "{user} read through {}",
                node.name()
            );
        }
    }
    one.stop().await;
    two.stop().await;
}
