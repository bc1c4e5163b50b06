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

// Proves a running member (driven by its own task) is readable through its view: the owned
// partitions, the balances, the takeover and applied-event counters, and an apply lag per owned partition that is
// zero once every event is applied (whether a non-zero lag is seen first depends on timing: it
// is printed, not asserted). A stopped member owns nothing.
#[tokio::test]
async fn a_running_member_shows_ownership_balances_and_apply_lag() {
    let (_cluster, config, layout) = start(4, LEASE_TTL).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "lag", 80, 8, &mut expected).await;

    let member = Member::new(layout.clone(), config.clone(), "member");
    let view = member.view();
    assert!(view.owned().is_empty());
    let (stop, stop_receiver) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(member.run(stop_receiver));

    let started = Instant::now();
    let mut saw_lag = false;
    loop {
        let lag = view.apply_lag();
        saw_lag |= lag.values().any(|&events| events > 0);
        let mut all_match = view.owned().len() == 4;
        for (user, balance) in &expected.balances {
            all_match &= view.balance(user).await == Ok(*balance);
        }
        if all_match && lag.len() == 4 && lag.values().all(|&events| events == 0) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "caught up: lag {lag:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(view.owned(), vec![0, 1, 2, 3]);
    assert_eq!(
        view.stats()
            .takeovers
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(
        view.stats()
            .applied_events
            .load(std::sync::atomic::Ordering::Relaxed),
        80,
        "every published event counted as applied once"
    );
    println!("lag observed before catching up: {saw_lag}");

    stop.send(true).expect("member running");
    running.await.expect("member stopped cleanly");
    assert!(view.owned().is_empty(), "a stopped member owns nothing");
}
