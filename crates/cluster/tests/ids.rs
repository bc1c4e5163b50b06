//! Client ids beyond JetStream's duplicate window: the owner remembers the ids it applied (in
//! its snapshot too), so a resend JetStream stores again, after its window or after a takeover,
//! is not applied twice.

mod support;

use std::time::Duration;

use floodgate_cluster::{ClusterConfig, Layout, LocalCluster, Member, Publisher};
use floodgate_core::{Event, EventId};
use support::{READY_TIMEOUT, tick_until};

const LEASE_TTL: Duration = Duration::from_secs(1);
/// JetStream's duplicate window in this test: short, so a resend outlives it quickly.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(20);

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
    let cluster = LocalCluster::start(1).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(1, cluster.size());
    config.lease_ttl = LEASE_TTL;
    config.duplicate_window = DUPLICATE_WINDOW;
    config.snapshot_every_events = 1;
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
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
