//! Conservation: nothing accepted is lost or double-counted, whatever the strategy, queue
//! kind, concurrency or overload.

use std::collections::HashMap;

use floodgate_core::{Engine, EngineConfig, Event, Ingested, LedgerStrategy, Rejected, Summary};

use crate::support;

/// Submitter tasks per test (the brief asks for at least 64).
const SUBMITTERS: u64 = 64;
const USERS: u64 = 50;

/// Deterministic pseudo-random amounts (xorshift), negative and positive.
fn amount(seed: u64) -> i64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    i64::try_from(x % 2001).unwrap_or(0) - 1000
}

/// What the submitters saw: accepted count, queue-full refusals, accepted amount per user.
#[derive(Default)]
struct Expected {
    accepted: u64,
    rejected: u64,
    per_user: HashMap<String, i64>,
}

async fn submit_concurrently(engine: &Engine, events_each: u64) -> Expected {
    let tally =
        support::submit_concurrently(engine, SUBMITTERS, events_each, 16, |submitter, index| {
            let user = format!("user{}", (submitter * 7 + index) % USERS);
            (user, amount(submitter * 1_000_003 + index))
        })
        .await;
    assert!(tally.refused_users.is_empty(), "no user limit here");
    Expected {
        accepted: tally.accepted,
        rejected: tally.queue_full,
        per_user: tally.per_user,
    }
}

fn check_conserved(engine: &Engine, summary: Summary, expected: &Expected, label: &str) {
    assert_eq!(summary.accepted, expected.accepted, "{label}: accepted");
    assert_eq!(
        summary.applied + summary.overflowed,
        summary.accepted,
        "{label}"
    );
    assert_eq!(summary.overflowed, 0, "{label}: amounts are small");
    assert_eq!(summary.rejected, expected.rejected, "{label}: rejected");
    support::check_balances(engine, &expected.per_user, label);
    let stats = engine.stats();
    assert_eq!(stats.users, expected.per_user.len(), "{label}: users");
    assert_eq!(
        (stats.applied, stats.queue_depth),
        (summary.applied, 0),
        "{label}"
    );
}

/// Poll stats until the engine drains, checking every snapshot never shows more outcomes than
/// admissions; returns how many snapshots it took.
fn spawn_monitor(engine: Engine) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut snapshots = 0;
        while !engine.is_draining() {
            let stats = engine.stats();
            assert!(
                stats.applied + stats.overflowed <= stats.accepted,
                "{stats:?}"
            );
            snapshots += 1;
            tokio::task::yield_now().await;
        }
        snapshots
    })
}

fn configs() -> Vec<(String, EngineConfig)> {
    support::queued_configs(&EngineConfig {
        workers: 4,
        shards: 8,
        ..EngineConfig::production()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_with_64_submitters_every_strategy_and_queue_kind() {
    // Proves: with 64 concurrent submitters, after shutdown every accepted event is applied
    // exactly once, per user and in total, for all 3 strategies x 2 queue kinds; and while
    // they run, no stats snapshot shows more applied than accepted.
    for (label, config) in configs() {
        let engine = Engine::start(config).expect("valid config");
        let monitor = spawn_monitor(engine.clone());
        let expected = submit_concurrently(&engine, 200).await;
        let summary = engine.shutdown().await;
        let snapshots = monitor.await.expect("monitor");
        assert!(snapshots > 0, "{label}: the monitor took snapshots");
        assert!(expected.accepted > 0, "{label}");
        check_conserved(&engine, summary, &expected, &label);
    }
}

#[tokio::test(start_paused = true)]
async fn conservation_under_overload() {
    // Proves conservation when most events are refused: a tiny queue and 1 ms of simulated
    // work per event make the 64 submitters overrun the workers (many QueueFull), for every
    // strategy and queue kind. Paused time makes the overload certain: submitting takes no
    // simulated time while each event takes 1 ms to apply.
    for (label, config) in configs() {
        let config = EngineConfig {
            queue_capacity_events: 8,
            work_ms: 1,
            ..config
        };
        let engine = Engine::start(config).expect("valid config");
        let expected = submit_concurrently(&engine, 40).await;
        let summary = engine.shutdown().await;
        assert!(expected.rejected > 0, "{label}: the queue must overflow");
        assert!(expected.accepted > 0, "{label}");
        check_conserved(&engine, summary, &expected, &label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_submitting_loses_nothing() {
    // Proves shutdown racing with 64 submitters: every event answered Queued is applied,
    // later ones get Draining, and shutdown is idempotent (same summary twice, concurrently).
    for (label, config) in configs() {
        let engine = Engine::start(EngineConfig {
            queue_capacity_events: 64,
            ..config
        })
        .expect("valid config");
        let mut tasks = Vec::new();
        for submitter in 0..SUBMITTERS {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut accepted: HashMap<String, i64> = HashMap::new();
                for index in 0_u64.. {
                    let user = format!("u{}", (submitter + index) % USERS);
                    match support::ingest(&engine, Event::new(user.clone(), 3)).await {
                        Ok(_) => *accepted.entry(user).or_insert(0) += 3,
                        Err(Rejected::Draining) => break,
                        Err(_) => tokio::task::yield_now().await,
                    }
                }
                accepted
            }));
        }
        tokio::task::yield_now().await;
        let (first, second) = tokio::join!(engine.shutdown(), engine.shutdown());
        assert_eq!(first, second, "{label}: idempotent");
        let mut expected = Expected::default();
        for task in tasks {
            for (user, sum) in task.await.expect("submitter") {
                expected.accepted += (sum / 3) as u64;
                *expected.per_user.entry(user).or_insert(0) += sum;
            }
        }
        expected.rejected = first.rejected;
        check_conserved(&engine, first, &expected, &label);
        assert_eq!(
            support::ingest(&engine, Event::new("late", 1)).await,
            Err(Rejected::Draining)
        );
        assert!(engine.is_draining());
        assert_eq!(
            engine.shutdown().await,
            first,
            "{label}: idempotent after the fact"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_counted_not_applied() {
    // Proves checked arithmetic end to end: with per-user FIFO (owned strategy, one
    // submitter), events that would overflow i64 are counted `overflowed`, not applied, and
    // the balances equal a checked replay of the accepted events.
    for strategy in [LedgerStrategy::Owned, LedgerStrategy::Global] {
        let workers = if strategy == LedgerStrategy::Owned {
            2
        } else {
            1
        };
        let engine = Engine::start(EngineConfig {
            strategy,
            workers,
            queue_capacity_events: 10_000,
            ..EngineConfig::production()
        })
        .expect("valid config");
        let mut replay: HashMap<String, i64> = HashMap::new();
        let mut overflows = 0;
        for index in 0..400_u64 {
            let user = format!("big{}", index % 4);
            let amount = if index % 3 == 0 {
                i64::MIN
            } else {
                i64::MAX / 2
            };
            assert_eq!(
                support::ingest(&engine, Event::new(user.clone(), amount)).await,
                Ok(Ingested::Queued)
            );
            let balance = replay.entry(user).or_insert(0);
            match balance.checked_add(amount) {
                Some(next) => *balance = next,
                None => overflows += 1,
            }
        }
        let summary = engine.shutdown().await;
        assert_eq!(summary.accepted, 400);
        assert_eq!(
            (summary.applied, summary.overflowed),
            (400 - overflows, overflows)
        );
        assert!(overflows > 0);
        for (user, balance) in &replay {
            assert_eq!(engine.balance(user), Some(*balance), "{strategy}: {user}");
        }
    }
}
