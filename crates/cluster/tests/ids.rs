//! Client ids beyond JetStream's duplicate window: the owner remembers the ids it applied (in
//! its snapshot too), so a resend JetStream stores again, after its window or after a takeover,
//! is not applied twice.

mod support;

use std::time::Duration;

use floodgate_cluster::{ClusterConfig, Layout, Leases, LocalCluster, Member, Node, Publisher};
use floodgate_core::dedup::ConflictField;
use floodgate_core::forward::{Forward, Forwarded};
use floodgate_core::{Event, EventId, Rejected};
use support::{READY_TIMEOUT, tick_until};

const LEASE_TTL: Duration = Duration::from_secs(1);
/// JetStream's duplicate window in this test: short, so a resend outlives it quickly.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(20);

/// One nats-server, one partition, a 0.5 s duplicate window and a snapshot after every event:
/// the set-up of the tests of ids resent past JetStream's window.
async fn one_partition_past_a_short_window() -> (LocalCluster, ClusterConfig, Layout, Publisher) {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(1, cluster.size());
    config.lease_ttl = LEASE_TTL;
    config.duplicate_window = DUPLICATE_WINDOW;
    config.snapshot_every_events = 1;
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    (cluster, config, layout, publisher)
}

fn event(user: &str, amount: i64, id: &str) -> Event {
    Event::new(user, amount).with_id(EventId::parse(id).expect("id"))
}

/// Publishes `event` under its own id after JetStream's window has passed; asserts JetStream
/// stored it again (so only the owner can tell it is a resend).
async fn resend_past_the_window(publisher: &Publisher, event: &Event) {
    tokio::time::sleep(DUPLICATE_WINDOW * 3).await;
    let id = event.id.as_ref().expect("an id").as_str();
    let receipt = publisher.publish(event, id).await.expect("acknowledged");
    assert!(
        !receipt.duplicate,
        "stored again: JetStream's window has passed"
    );
}

/// Ticks `member` until it reads `balance` for `user` and has skipped `duplicates` events in
/// the user's partition.
async fn settle(
    member: &mut Member,
    config: &ClusterConfig,
    user: &str,
    balance: i64,
    duplicates: u64,
) {
    let (settled, _) = tick_until(member, config, DEADLINE, async |member| {
        let skipped = member
            .partition_state(0)
            .await
            .map(|state| state.duplicate_events);
        member.balance(user).await == Ok(balance) && skipped == Some(duplicates)
    })
    .await;
    let state = member.partition_state(0).await;
    assert!(
        settled,
        "expected {user}={balance} with {duplicates} skipped: {state:?}"
    );
}

// Proves a client id is applied once even when JetStream stores it again: a resend after the
// duplicate window is skipped by the owner, and after the owner hands the partition over (its
// last snapshot carries the ids; the events themselves were purged) the next owner skips a
// later resend too, while new ids are applied.
#[tokio::test]
async fn a_resend_past_the_duplicate_window_is_applied_once_across_a_takeover() {
    let (_cluster, config, layout, publisher) = one_partition_past_a_short_window().await;
    let paid = event("alice", 5, "order-1");

    let mut first = Member::new(layout.clone(), config.clone(), "first");
    first.tick().await;
    publisher
        .publish(&paid, "order-1")
        .await
        .expect("acknowledged");
    settle(&mut first, &config, "alice", 5, 0).await;
    resend_past_the_window(&publisher, &paid).await;
    settle(&mut first, &config, "alice", 5, 1).await;
    first.shutdown().await;

    let mut second = Member::new(layout.clone(), config.clone(), "second");
    second.tick().await;
    assert_eq!(
        second.owned(),
        vec![0],
        "the released partition is taken at once"
    );
    let mut stream = layout.stream.clone();
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.state.messages, 0,
        "the events were purged: only the snapshot knows"
    );
    resend_past_the_window(&publisher, &paid).await;
    let other = event("alice", 7, "order-2");
    publisher
        .publish(&other, "order-2")
        .await
        .expect("acknowledged");
    settle(&mut second, &config, "alice", 12, 2).await;
    second.shutdown().await;
}

/// Two users in different partitions of `partitions`.
fn users_in_two_partitions(partitions: u32) -> (String, String) {
    let first = "alice".to_owned();
    let home = floodgate_cluster::partition_of(&first, partitions);
    let other = (0..1_000)
        .map(|number| format!("bob-{number}"))
        .find(|user| floodgate_cluster::partition_of(user, partitions) != home)
        .expect("some user lands elsewhere");
    (first, other)
}

/// What node `door` answers for `event`, as the engine would get it.
async fn forward(door: &Node, event: &Event) -> Result<Forwarded, Rejected> {
    door.forward(event).await
}

/// Asserts the answers of `door` to the id's original, to the same id with another amount,
/// and with another user (in another partition).
async fn assert_resend_and_conflicts(door: &Node, original: &Event, other_user: &str) {
    let id = original.id.clone().expect("an id");
    assert_eq!(forward(door, original).await, Ok(Forwarded::Duplicate));
    let more = Event::new(original.user.clone(), original.amount + 1).with_id(id.clone());
    assert_eq!(
        forward(door, &more).await,
        Err(Rejected::IdConflict(ConflictField::Amount))
    );
    let elsewhere = Event::new(other_user, original.amount).with_id(id);
    assert_eq!(
        forward(door, &elsewhere).await,
        Err(Rejected::IdConflict(ConflictField::User))
    );
}

// Proves a cross-node id conflict within JetStream's duplicate window: an id stored through
// one node and sent to another with another amount, or another user (another partition), is
// `IdConflict` naming the field, and the same event is a duplicate: first while the original
// is still in the stream (every lease held by the test, nothing applied), then once it was
// applied and purged (only the owners' digests know it, asked over NATS from the node that
// does not own the partition). A new id is stored meanwhile (nothing else is refused).
#[tokio::test]
async fn a_reused_id_sent_to_another_node_is_an_id_conflict() {
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(2, cluster.size());
    config.lease_ttl = Duration::from_secs(3);
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let holder = Leases::new(layout.leases.clone(), "test-holder", config.lease_ttl);
    let mut held = Vec::new();
    for partition in 0..config.partitions {
        held.push(
            holder
                .try_acquire(partition)
                .await
                .expect("bucket")
                .expect("free"),
        );
    }
    let first = Node::start(&cluster.urls(), config.clone(), "first", READY_TIMEOUT)
        .await
        .expect("first node");
    let second = Node::start(&cluster.urls(), config.clone(), "second", READY_TIMEOUT)
        .await
        .expect("second node");
    let (alice, bob) = users_in_two_partitions(config.partitions);
    let paid = event(&alice, 5, "order-1");
    assert_eq!(forward(&first, &paid).await, Ok(Forwarded::Stored));
    assert_resend_and_conflicts(&second, &paid, &bob).await;
    let mut stream = layout.stream.clone();
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        1,
        "unapplied"
    );

    for lease in &held {
        holder.release(lease).await.expect("released");
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let owned = first.view().owned().len() + second.view().owned().len();
        let purged = stream.info().await.expect("info").state.messages == 0;
        if owned == config.partitions as usize && purged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not applied and purged in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let home = floodgate_cluster::partition_of(&alice, config.partitions);
    let (owner, other) = if first.view().owned().contains(&home) {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_resend_and_conflicts(other, &paid, &bob).await;
    assert_resend_and_conflicts(owner, &paid, &bob).await;
    assert_eq!(
        forward(other, &event(&bob, 2, "order-2")).await,
        Ok(Forwarded::Stored)
    );
    assert_eq!(owner.view().balance(&alice).await, Ok(5), "applied once");
    first.stop().await;
    second.stop().await;
}

// Proves the owner's side past JetStream's window: the same id with another amount is
// stored again (its sender had a 202: nothing else could answer it), but the owner skips it
// and counts it in `id_conflicts`; a resend of the original is a counted duplicate.
#[tokio::test]
async fn past_the_window_a_reused_id_is_skipped_and_counted_by_the_owner() {
    let (_cluster, config, layout, publisher) = one_partition_past_a_short_window().await;
    let mut member = Member::new(layout.clone(), config.clone(), "owner");
    member.tick().await;
    let paid = event("alice", 5, "order-1");
    publisher
        .publish(&paid, "order-1")
        .await
        .expect("acknowledged");
    settle(&mut member, &config, "alice", 5, 0).await;
    resend_past_the_window(&publisher, &event("alice", 6, "order-1")).await;
    resend_past_the_window(&publisher, &paid).await;
    settle(&mut member, &config, "alice", 5, 1).await;
    let state = member.partition_state(0).await.expect("owned");
    assert_eq!(state.id_conflicts, 1, "{state:?}");
    let figures = member.view().id_figures();
    assert_eq!(
        figures
            .get(&0)
            .map(|figures| (figures.ids_kept, figures.id_conflicts)),
        Some((1, 1))
    );
    member.shutdown().await;
}
