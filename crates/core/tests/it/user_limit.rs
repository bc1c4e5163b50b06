//! The user limit: `users in the ledger <= max_users` always, decided at admission, and every
//! admitted event is still applied (conservation), for every strategy, queue kind and mode.

use floodgate_core::{
    Engine, EngineConfig, Event, Ingested, LedgerStrategy, ProcessingMode, Rejected,
};

use crate::support::{self, Tally};

/// Every queued configuration (strategy x queue kind), with `max_users` and a queue capacity.
fn queued_configs(max_users: usize, queue_capacity_events: usize) -> Vec<(String, EngineConfig)> {
    support::queued_configs(&EngineConfig {
        workers: 2,
        shards: 8,
        queue_capacity_events,
        max_users,
        ..EngineConfig::production()
    })
}

#[tokio::test(flavor = "current_thread")]
async fn full_ledger_refuses_new_users_and_admits_known_and_pending_ones() {
    // Proves, for every strategy and queue kind: with max_users = 2, a third user is refused
    // LedgerFull while the first two are still only admitted (no worker ran yet: nothing
    // awaits before the checks), a user admitted but not yet applied is admitted again
    // without a second slot, known users stay admitted once applied, and every admitted event
    // is applied.
    for (label, config) in queued_configs(2, 64) {
        let engine = Engine::start(config).expect("start");
        for user in ["alice", "alice", "bob"] {
            assert_eq!(
                support::ingest(&engine, Event::new(user, 5)).await,
                Ok(Ingested::Queued),
                "{label}"
            );
        }
        assert_eq!(
            support::ingest(&engine, Event::new("carol", 1)).await,
            Err(Rejected::LedgerFull),
            "{label}"
        );
        assert_eq!(
            support::ingest(&engine, Event::new("bob", 1)).await,
            Ok(Ingested::Queued),
            "{label}"
        );
        let stats = engine.stats();
        assert_eq!(
            (stats.users, stats.users_reserved, stats.max_users),
            (0, 2, 2),
            "{label}"
        );
        tokio::task::yield_now().await;
        assert_eq!(
            support::ingest(&engine, Event::new("alice", 1)).await,
            Ok(Ingested::Queued),
            "{label}"
        );
        assert_eq!(
            support::ingest(&engine, Event::new("dave", 1)).await,
            Err(Rejected::LedgerFull),
            "{label}"
        );
        let summary = engine.shutdown().await;
        assert_eq!(
            (summary.accepted, summary.applied, summary.rejected),
            (5, 5, 2),
            "{label}"
        );
        assert_eq!(engine.balance("alice"), Some(11), "{label}");
        assert_eq!(engine.balance("bob"), Some(6), "{label}");
        assert_eq!(engine.balance("carol"), None, "{label}");
        let stats = engine.stats();
        assert_eq!((stats.users, stats.users_reserved), (2, 2), "{label}");
        assert_eq!(
            stats.rejected_by_reason.get("ledger_full"),
            Some(&2),
            "{label}"
        );
        assert_eq!(Rejected::LedgerFull.reason(), "ledger_full");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn inline_mode_checks_the_limit_before_applying() {
    // Proves the inline paths (async `ingest` with the simulated lock, and `try_ingest`) refuse
    // a new user beyond max_users without applying it, and still apply known users.
    let engine = Engine::start(EngineConfig {
        mode: ProcessingMode::Inline,
        strategy: LedgerStrategy::Global,
        max_users: 1,
        ..EngineConfig::production()
    })
    .expect("start");
    let applied = |balance| Ok(Ingested::Applied { balance });
    assert_eq!(
        support::ingest(&engine, Event::new("alice", 3)).await,
        applied(3)
    );
    assert_eq!(
        support::ingest(&engine, Event::new("bob", 3)).await,
        Err(Rejected::LedgerFull)
    );
    assert_eq!(
        support::ingest(&engine, Event::new("bob", 3)).await,
        Err(Rejected::LedgerFull)
    );
    assert_eq!(
        support::ingest(&engine, Event::new("alice", 4)).await,
        applied(7)
    );
    let summary = engine.shutdown().await;
    assert_eq!(
        (summary.accepted, summary.applied, summary.rejected),
        (2, 2, 2)
    );
    assert_eq!((engine.stats().users, engine.balance("bob")), (1, None));
}

/// 16 submitters offering 400 events each over `names` user names. They walk the name space
/// at different strides: the same new user is often offered by two submitters at once.
async fn submit_many_new_users(engine: &Engine, names: u64) -> Tally {
    support::submit_concurrently(engine, 16, 400, 8, move |submitter, index| {
        let user = format!("user{}", (submitter * 13 + index * (submitter + 1)) % names);
        (user, i64::try_from(index % 7).unwrap_or(0) - 3)
    })
    .await
}

/// Run submitters against `config` while a monitor checks `users <= users_reserved <=
/// max_users` in every snapshot; then check conservation and that no slot leaked.
async fn check_limit_under_concurrency(label: &str, config: EngineConfig, names: u64) -> Tally {
    let max_users = config.max_users;
    let engine = Engine::start(config).expect("start");
    let monitor = {
        let engine = engine.clone();
        tokio::spawn(async move {
            while !engine.is_draining() {
                let stats = engine.stats();
                assert!(stats.users <= stats.users_reserved, "{stats:?}");
                assert!(stats.users_reserved <= stats.max_users, "{stats:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    let seen = submit_many_new_users(&engine, names).await;
    let summary = engine.shutdown().await;
    monitor.await.expect("monitor saw the limit broken");
    assert_eq!(summary.accepted, seen.accepted, "{label}");
    assert_eq!(
        summary.applied, summary.accepted,
        "{label}: every admitted event applied"
    );
    let stats = engine.stats();
    assert_eq!(stats.users, seen.per_user.len(), "{label}");
    assert!(stats.users <= max_users, "{label}: {} users", stats.users);
    assert_eq!(stats.users_reserved, stats.users, "{label}: no slot leaked");
    support::check_balances(&engine, &seen.per_user, label);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_new_users_never_exceed_the_limit() {
    // Proves, for every strategy and queue kind, with 16 concurrent submitters offering 400
    // names to a ledger of 100: the ledger fills to exactly 100 users and never beyond (checked
    // in every stats snapshot), a refused user is never one that was admitted (known and
    // pending users always pass), and conservation holds.
    for (label, config) in queued_configs(100, 65_536) {
        let seen = check_limit_under_concurrency(&label, config, 400).await;
        assert_eq!(seen.per_user.len(), 100, "{label}: fills to the limit");
        assert!(!seen.refused_users.is_empty(), "{label}");
        assert_eq!(seen.queue_full, 0, "{label}");
        for user in &seen.refused_users {
            assert!(
                !seen.per_user.contains_key(user),
                "{label}: {user} refused after admitted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_refusals_give_user_slots_back() {
    // Proves that with a tiny queue (many QueueFull after the user was admitted) the slots of
    // users whose every event was refused are given back: after the drain the reserved count
    // equals the users in the ledger, which never exceed the limit, for every configuration.
    for (label, config) in queued_configs(50, 8) {
        let seen = check_limit_under_concurrency(&label, config, 200).await;
        assert!(seen.queue_full > 0, "{label}: the queue must overflow");
    }
}
