//! Partition ownership against a real three-server JetStream cluster: leases taken over when
//! their owner stops renewing, a stale owner fenced, and a partition's state rebuilt from its
//! snapshot plus the events after it, exactly once, whatever moment its owner died at.

mod support;

use std::time::Duration;

use floodgate_cluster::{Leases, Member, Owner, Publisher, SnapshotError, snapshot};
use support::{
    Expected, RemoteMember, difference, holds_all_and_matches, publish_events, publish_with_retry,
    start, tick_until,
};

const LEASE_TTL: Duration = Duration::from_secs(2);
/// Liveness deadline for a takeover (not a speed target): far above the stated bound of
/// TTL + one renew interval + JetStream's expiry latency.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(30);

// Proves a member that stops renewing loses its partitions to a live member (the bound is
// TTL + one tick + expiry latency; the measured figure is printed), and that its own renewals
// fail afterwards so it drops them too.
#[tokio::test]
async fn leases_move_to_a_live_member_when_the_owner_stops_renewing() {
    let (_cluster, config, layout) = start(4, LEASE_TTL).await;
    let mut first = Member::new(layout.clone(), config.clone(), "first");
    let mut second = Member::new(layout.clone(), config.clone(), "second");
    first.tick().await;
    second.tick().await;
    assert_eq!(first.owned(), vec![0, 1, 2, 3]);
    assert!(second.owned().is_empty());

    // `first` stops renewing (as a paused or partitioned node would).
    let (taken, elapsed) = tick_until(&mut second, &config, TAKEOVER_DEADLINE, async |member| {
        member.owned().len() == 4
    })
    .await;
    println!(
        "takeover of 4 partitions after the owner stopped renewing: {} ms (lease TTL {} ms)",
        elapsed.as_millis(),
        LEASE_TTL.as_millis()
    );
    assert!(taken, "second took over within {TAKEOVER_DEADLINE:?}");
    assert_eq!(
        second
            .stats()
            .takeovers
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );

    first.tick().await;
    assert!(
        first.owned().is_empty(),
        "the stale owner's renewals must fail"
    );
    second.shutdown().await;
}

// Proves partitions are shared out: a member alone takes all of them; when a second member
// joins, the first gives partitions up one per tick until each holds its share (2 of 4), the
// second takes them over from the snapshots, and every balance still reads exactly.
#[tokio::test]
async fn a_joining_member_gets_its_share_of_the_partitions() {
    let (_cluster, config, layout) = start(4, LEASE_TTL).await;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "share", 120, 12, &mut expected).await;
    let mut first = Member::new(layout.clone(), config.clone(), "first");
    let mut second = Member::new(layout.clone(), config.clone(), "second");
    first.tick().await;
    assert_eq!(first.owned(), vec![0, 1, 2, 3]);

    let started = std::time::Instant::now();
    while first.owned().len() != 2 || second.owned().len() != 2 {
        assert!(started.elapsed() < TAKEOVER_DEADLINE, "shares reached");
        second.tick().await;
        first.tick().await;
        tokio::time::sleep(config.renew_interval() / 4).await;
    }
    println!(
        "two members at 2 partitions each after {} ms",
        started.elapsed().as_millis()
    );
    let mut all: Vec<u32> = first.owned().into_iter().chain(second.owned()).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        vec![0, 1, 2, 3],
        "each partition has exactly one owner"
    );

    let (caught_up, _) = tick_until(&mut second, &config, TAKEOVER_DEADLINE, async |member| {
        let mut exact = true;
        for (user, balance) in &expected.balances {
            exact &= member.balance(user).await == Ok(*balance);
        }
        exact
    })
    .await;
    assert!(caught_up, "every balance reads exactly from either member");
    first.shutdown().await;
    second.shutdown().await;
}

// Proves fencing: once a new owner has claimed a partition, the old owner (whose lease lapsed
// while it was paused) can neither write a snapshot nor purge events; the new owner's state
// includes everything.
#[tokio::test]
async fn a_stale_owner_cannot_write_a_snapshot_or_purge() {
    let (_cluster, config, layout) = start(1, LEASE_TTL).await;
    let publisher = Publisher::new(layout.context.clone(), 1, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "fence", 30, 3, &mut expected).await;

    let old_leases = Leases::new(layout.leases.clone(), "old", LEASE_TTL);
    let old_lease = old_leases
        .try_acquire(0)
        .await
        .expect("bucket")
        .expect("free");
    let mut old = Owner::take_over(layout.clone(), 0, "old", old_lease.revision, 1_000)
        .await
        .expect("claim");
    for sequence in 1..=10 {
        let message = layout
            .stream
            .get_raw_message(sequence)
            .await
            .expect("stored");
        old.apply(sequence, &message.payload).await;
    }

    // The old owner pauses past its TTL; a new one takes the lease and claims the snapshot.
    tokio::time::sleep(LEASE_TTL + config.renew_interval()).await;
    let new_leases = Leases::new(layout.leases.clone(), "new", LEASE_TTL);
    let new_lease = loop {
        if let Some(lease) = new_leases.try_acquire(0).await.expect("bucket") {
            break lease;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _new = Owner::take_over(layout.clone(), 0, "new", new_lease.revision, 1_000)
        .await
        .expect("claim");

    let refused = old.snapshot_and_purge().await;
    assert!(
        matches!(refused, Err(SnapshotError::Fenced(0))),
        "expected Fenced, got {refused:?}"
    );
    let mut stream = layout.stream.clone();
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        30,
        "nothing purged"
    );
    let (stored, _) = snapshot::load(&layout.snapshots, 0).await.expect("load");
    assert_eq!(
        stored.applied_sequence, 0,
        "the stale state was not written"
    );
}

// Proves snapshot + replay equals the full history: a member applies and snapshots (purging
// what each snapshot covers), dies without a last snapshot, more events arrive, and a new
// member rebuilds every balance from the snapshots and the events left in the stream.
#[tokio::test]
async fn snapshot_then_replay_equals_the_full_history() {
    let (cluster, mut config, layout) = start(4, LEASE_TTL).await;
    config.snapshot_every_events = 7;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "before", 300, 16, &mut expected).await;

    let mut first = RemoteMember::start(cluster.urls(), config.clone(), "first");
    wait_for_snapshots(&layout, config.partitions, 250).await;
    first.kill();
    publish_events(&publisher, "after", 100, 16, &mut expected).await;

    let mut second = Member::new(layout.clone(), config.clone(), "second");
    let (rebuilt, elapsed) = tick_until(&mut second, &config, TAKEOVER_DEADLINE, async |member| {
        holds_all_and_matches(member, config.partitions, &expected).await
    })
    .await;
    println!(
        "takeover and replay after a kill: {} ms",
        elapsed.as_millis()
    );
    assert!(
        rebuilt,
        "the new owner's balances equal the acknowledged history"
    );
    assert_eq!(expected.events, 400);
    second.shutdown().await;
    let mut stream = layout.stream.clone();
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        0,
        "the last snapshots cover every event, so all are purged"
    );
}

// Proves a crash between a snapshot write and its purge applies nothing twice: the events the
// snapshot covers are still in the stream, and the next owner skips them.
#[tokio::test]
async fn a_crash_between_snapshot_and_purge_applies_nothing_twice() {
    let (_cluster, config, layout) = start(1, LEASE_TTL).await;
    let publisher = Publisher::new(layout.context.clone(), 1, "test");
    let mut expected = Expected::default();
    publish_events(&publisher, "crash", 40, 4, &mut expected).await;

    let leases = Leases::new(layout.leases.clone(), "old", LEASE_TTL);
    let lease = leases.try_acquire(0).await.expect("bucket").expect("free");
    let mut old = Owner::take_over(layout.clone(), 0, "old", lease.revision, 1_000)
        .await
        .expect("claim");
    for sequence in 1..=25 {
        let message = layout
            .stream
            .get_raw_message(sequence)
            .await
            .expect("stored");
        old.apply(sequence, &message.payload).await;
    }
    assert_eq!(old.write_snapshot().await.expect("written"), 25);
    drop(old); // dies before purging: all 40 events are still in the stream

    let mut member = Member::new(layout.clone(), config.clone(), "new");
    let (rebuilt, _) = tick_until(&mut member, &config, TAKEOVER_DEADLINE, async |member| {
        holds_all_and_matches(member, 1, &expected).await
    })
    .await;
    assert!(
        rebuilt,
        "balances equal the history, the 25 snapshotted events counted once"
    );
    member.shutdown().await;
}

// Proves a member killed mid-apply, while clients keep publishing, loses nothing and
// double-applies nothing: the survivor's balances equal exactly the acknowledged events.
#[tokio::test]
async fn a_member_killed_mid_apply_loses_nothing_and_applies_nothing_twice() {
    let (cluster, mut config, layout) = start(4, LEASE_TTL).await;
    config.snapshot_every_events = 13;
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut expected = Expected::default();
    let mut first = RemoteMember::start(cluster.urls(), config.clone(), "first");
    publish_events(&publisher, "early", 200, 32, &mut expected).await;
    wait_for_snapshots(&layout, config.partitions, 100).await;

    let mut second = Member::new(layout.clone(), config.clone(), "second");
    let publishing = async {
        publish_events(&publisher, "late", 400, 32, &mut expected).await;
    };
    let killing = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        first.kill();
    };
    tokio::join!(publishing, killing);

    let (rebuilt, elapsed) = tick_until(&mut second, &config, TAKEOVER_DEADLINE, async |member| {
        holds_all_and_matches(member, config.partitions, &expected).await
    })
    .await;
    println!(
        "takeover and replay after a kill under load: {} ms",
        elapsed.as_millis()
    );
    assert!(rebuilt, "balances equal exactly the acknowledged events");
    second.shutdown().await;
}

// Proves a NATS server killed with SIGKILL mid-load loses nothing acknowledged and applies
// nothing twice: publishes that found no answer are retried with the same id, the partitions'
// owner keeps running on the other servers, and its balances equal the acknowledged events.
#[tokio::test]
async fn a_broker_killed_mid_load_loses_nothing_acknowledged() {
    let (mut cluster, mut config, layout) = start(4, LEASE_TTL).await;
    config.snapshot_every_events = 11;
    config.request_timeout = Duration::from_secs(2);
    let publisher = Publisher::new(layout.context.clone(), config.partitions, "test");
    let mut member = Member::new(layout.clone(), config.clone(), "member");
    member.tick().await;
    let mut expected = Expected::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let publishing = async {
        publish_events(&publisher, "before", 100, 16, &mut expected).await;
        cluster.kill(0).expect("kill nats-server 0");
        let retries = publish_with_retry(&publisher, "after", 300, 16, &mut expected).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        retries
    };
    let ticking = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            member.tick().await;
            tokio::time::sleep(config.renew_interval()).await;
        }
    };
    let (retries, ()) = tokio::join!(publishing, ticking);
    println!("publishes retried after the broker kill: {retries}");

    let (rebuilt, elapsed) = tick_until(&mut member, &config, TAKEOVER_DEADLINE, async |member| {
        holds_all_and_matches(member, config.partitions, &expected).await
    })
    .await;
    println!(
        "balances complete {} ms after the load ended",
        elapsed.as_millis()
    );
    assert!(
        rebuilt,
        "balances equal exactly the acknowledged events: {}",
        difference(&member, config.partitions, &expected).await
    );
    assert_eq!(expected.events, 400);
    member.shutdown().await;
}

/// Waits until the snapshots of all partitions together cover at least `sequence_sum` stream
/// sequences (summed `applied_sequence`), i.e. the running owner has snapshotted and purged.
async fn wait_for_snapshots(
    layout: &floodgate_cluster::Layout,
    partitions: u32,
    sequence_sum: u64,
) {
    let started = std::time::Instant::now();
    loop {
        let mut sum = 0;
        for partition in 0..partitions {
            let (state, _) = snapshot::load(&layout.snapshots, partition)
                .await
                .expect("load");
            sum += state.applied_sequence;
        }
        if sum >= sequence_sum {
            return;
        }
        assert!(started.elapsed() < TAKEOVER_DEADLINE, "the owner snapshots");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
