//! Balances read from any member of a real three-server cluster: the owner answers from its
//! state, other members ask it over NATS, and a partition without an owner reads as moving.

mod support;

use std::time::{Duration, Instant};

use floodgate_cluster::{Layout, Member, Publisher, ReadError, partition_of};
use support::{Expected, READY_TIMEOUT, holds_all_and_matches, publish_events, start, tick_until};

const LEASE_TTL: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(30);

// Proves a non-owner reads the same balances as the owner (over a NATS request), that a
// partition whose owner has left reads as Moving rather than as a guessed value, and that the
// member taking it over then answers the same balances.
#[tokio::test]
async fn balances_are_read_from_any_member_and_moving_while_unowned() {
    let (cluster, config, layout) = start(4, LEASE_TTL).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "read", 120, 12, &mut expected).await;

    let other_layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("second connection");
    let mut owner = Member::new(layout.clone(), config.clone(), "owner");
    let mut other = Member::new(other_layout, config.clone(), "other");
    let (caught_up, _) = tick_until(&mut owner, &config, DEADLINE, async |member| {
        holds_all_and_matches(member, config.partitions, &expected).await
    })
    .await;
    assert!(caught_up, "the owner applies every event");
    other.tick().await;
    assert!(other.owned().is_empty());

    for (user, balance) in &expected.balances {
        assert_eq!(owner.balance(user).await, Ok(*balance), "owner, {user}");
        assert_eq!(other.balance(user).await, Ok(*balance), "over NATS, {user}");
    }

    owner.shutdown().await; // last snapshots, leases released, responders gone
    let partition = partition_of("user-0", config.partitions);
    let started = Instant::now();
    let moving = loop {
        let read = other.balance("user-0").await;
        if read == Err(ReadError::Moving(partition)) || started.elapsed() > DEADLINE {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moving, Err(ReadError::Moving(partition)));

    let (taken, _) = tick_until(&mut other, &config, DEADLINE, async |member| {
        holds_all_and_matches(member, config.partitions, &expected).await
    })
    .await;
    assert!(taken, "the new owner rebuilds every balance");
    for (user, balance) in &expected.balances {
        assert_eq!(other.balance(user).await, Ok(*balance), "new owner, {user}");
    }
    other.shutdown().await;
}
