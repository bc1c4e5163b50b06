//! The engine with a log: balances rebuilt after a restart and after a simulated crash,
//! snapshots taken and used, the data directory locked, storage failures and a full disk
//! answered with their own refusals.

use std::collections::BTreeMap;
use std::sync::Arc;

use floodgate_core::{
    DurabilityMode, DurableOptions, Engine, EngineConfig, Event, Ingested, LedgerStrategy, Rejected,
};
use floodgate_store::Storage;
use floodgate_store::fault::{Crash, FaultStorage, Faults};

fn config(strategy: LedgerStrategy) -> EngineConfig {
    EngineConfig {
        workers: 2,
        strategy,
        queue_capacity_events: 10_000,
        ..EngineConfig::production()
    }
}

fn options(directory: &std::path::Path) -> DurableOptions {
    DurableOptions {
        snapshot_every_events: 150,
        ..DurableOptions::new(directory, DurabilityMode::Fsync)
    }
}

/// Submits `count` events from 8 concurrent tasks over 10 users; returns the acknowledged
/// sum per user.
async fn drive(engine: &Engine, count: u64) -> BTreeMap<String, i64> {
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = BTreeMap::new();
            for index in (task..count).step_by(8) {
                let user = format!("user-{}", index % 10);
                let amount = i64::try_from(index % 7).expect("small") + 1;
                if let Ok(Ingested::Queued) = engine.submit(Event::new(user.clone(), amount)).await
                {
                    *acknowledged.entry(user).or_insert(0) += amount;
                }
            }
            acknowledged
        }));
    }
    let mut total = BTreeMap::new();
    for task in tasks {
        for (user, sum) in task.await.expect("submitter") {
            *total.entry(user).or_insert(0) += sum;
        }
    }
    total
}

fn balances(engine: &Engine) -> BTreeMap<String, i64> {
    engine.balances(None, 1000).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_survive_a_restart_through_snapshots_and_the_log() {
    // Proves a graceful stop and a restart on the same directory keep every balance exactly,
    // for each ledger strategy, with snapshots taken (and used) along the way.
    for strategy in LedgerStrategy::ALL {
        let directory = tempfile::tempdir().expect("temp dir");
        let engine =
            Engine::start_durable(config(strategy), &options(directory.path())).expect("start");
        let acknowledged = drive(&engine, 1000).await;
        let stats = engine.stats().durability;
        assert_eq!(stats.mode, DurabilityMode::Fsync);
        assert!(
            stats.log_records > 0 && stats.events_per_group.count > 0,
            "{stats:?}"
        );
        engine.shutdown().await;
        assert_eq!(
            balances(&engine),
            acknowledged,
            "{strategy}: before restart"
        );

        let engine =
            Engine::start_durable(config(strategy), &options(directory.path())).expect("restart");
        assert_eq!(balances(&engine), acknowledged, "{strategy}: after restart");
        let stats = engine.stats().durability;
        assert!(
            stats.snapshot_position > 0,
            "{strategy}: a snapshot was used: {stats:?}"
        );
        let more = drive(&engine, 100).await;
        engine.shutdown().await;
        let engine =
            Engine::start_durable(config(strategy), &options(directory.path())).expect("restart");
        let mut expected = acknowledged.clone();
        for (user, sum) in more {
            *expected.entry(user).or_insert(0) += sum;
        }
        assert_eq!(
            balances(&engine),
            expected,
            "{strategy}: after a second restart"
        );
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_power_cut() {
    // Proves that without any shutdown, a restart from what a power cut leaves (synced bytes
    // only, a torn last write) still holds every acknowledged event.
    let storage = FaultStorage::new();
    let first_dir = tempfile::tempdir().expect("temp dir");
    let mut crashed_options = options(first_dir.path());
    crashed_options.storage = Some(Arc::new(storage.clone()));
    let engine =
        Engine::start_durable(config(LedgerStrategy::Owned), &crashed_options).expect("start");
    let acknowledged = drive(&engine, 600).await;
    let restarted: Arc<dyn Storage> = Arc::new(storage.restart_after(Crash::PowerCut, 7));
    // The crashed engine is stopped only now, writing to its own (discarded) disk.
    engine.shutdown().await;

    let second_dir = tempfile::tempdir().expect("temp dir");
    let mut options = options(second_dir.path());
    options.storage = Some(restarted);
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options).expect("recover");
    assert_eq!(balances(&engine), acknowledged);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_locked_data_directory_is_refused() {
    // Proves a second engine on a directory in use is refused with a message saying so.
    let directory = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options(directory.path()))
        .expect("start");
    let error = Engine::start_durable(config(LedgerStrategy::Owned), &options(directory.path()))
        .expect_err("the directory is locked");
    assert!(error.to_string().contains("locked by another"), "{error}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_refuses_everything_after_it() {
    // Proves a failed sync answers storage_failed, latches (later events refused at once),
    // and wakes whoever waits on failed().
    let storage = FaultStorage::new();
    let directory = tempfile::tempdir().expect("temp dir");
    let mut options = options(directory.path());
    options.storage = Some(Arc::new(storage.clone()));
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options).expect("start");
    assert_eq!(
        engine.submit(Event::new("a", 1)).await,
        Ok(Ingested::Queued)
    );
    storage.set_faults(Faults {
        fail_sync: Some(1),
        ..Faults::default()
    });
    let failed = engine
        .submit(Event::new("a", 2))
        .await
        .map_err(|refused| refused.reason);
    assert_eq!(failed, Err(Rejected::StorageFailed));
    assert_eq!(engine.failed().await, floodgate_core::Failure::Storage);
    assert!(engine.has_storage_failed());
    let later = engine
        .submit(Event::new("b", 3))
        .await
        .map_err(|refused| refused.reason);
    assert_eq!(later, Err(Rejected::StorageFailed));
    let stats = engine.stats();
    assert_eq!(stats.rejected_by_reason.get("storage_failed"), Some(&2));
    assert!(stats.durability.storage_failed);
    engine.shutdown().await;
    assert_eq!(engine.balance("a"), Some(1));
    assert_eq!(engine.balance("b"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_then_accepts_again() {
    // Proves a full disk answers disk_full without latching, a new user's slot is given back,
    // and events are accepted again once space returns.
    let storage = FaultStorage::new();
    let directory = tempfile::tempdir().expect("temp dir");
    let mut options = options(directory.path());
    options.storage = Some(Arc::new(storage.clone()));
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options).expect("start");
    assert_eq!(
        engine.submit(Event::new("a", 1)).await,
        Ok(Ingested::Queued)
    );
    storage.set_faults(Faults {
        space_bytes: Some(0),
        ..Faults::default()
    });
    let refused = engine
        .submit(Event::new("new-user", 2))
        .await
        .map_err(|refused| refused.reason);
    assert_eq!(refused, Err(Rejected::DiskFull));
    assert!(!engine.has_storage_failed());
    assert_eq!(
        engine.stats().users_reserved,
        1,
        "the new user's slot was given back"
    );
    storage.free_space();
    assert_eq!(
        engine.submit(Event::new("a", 5)).await,
        Ok(Ingested::Queued)
    );
    engine.shutdown().await;
    assert_eq!(engine.balance("a"), Some(6));
}

fn with_id(user: &str, amount: i64, id: &str) -> Event {
    Event::new(user, amount).with_id(floodgate_core::EventId::parse(id).expect("valid id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_survives_restarts_through_the_log_and_snapshots() {
    // Proves ids are in the log records and the window in the snapshot: after a graceful
    // restart (snapshot) and after a power cut (log replay, no snapshot of the last ids), a
    // resend of every acknowledged id is a duplicate and a reuse a conflict; balances count
    // each id once. Singles and batches (one log entry each) both.
    let storage = FaultStorage::new();
    let directory = tempfile::tempdir().expect("temp dir");
    let mut first = options(directory.path());
    first.storage = Some(Arc::new(storage.clone()));
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &first).expect("start");
    for n in 0..40 {
        let answer = engine.submit(with_id("ann", 1, &format!("s-{n}"))).await;
        assert_eq!(answer, Ok(Ingested::Queued));
    }
    let batch: Vec<Event> = (0..40)
        .map(|n| with_id("bob", 2, &format!("b-{n}")))
        .collect();
    let outcomes = engine.submit_batch(batch.clone()).await.expect("batch");
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == Ok(Ingested::Queued))
    );
    let crashed: Arc<dyn Storage> = Arc::new(storage.restart_after(Crash::PowerCut, 3));
    engine.shutdown().await;

    for (label, storage) in [
        ("graceful", Arc::new(storage) as Arc<dyn Storage>),
        ("power cut", crashed),
    ] {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut again = options(directory.path());
        again.storage = Some(storage);
        let engine = Engine::start_durable(config(LedgerStrategy::Owned), &again).expect("recover");
        assert_eq!(engine.stats().dedup.ids, 80, "{label}");
        for n in 0..40 {
            let answer = engine.submit(with_id("ann", 1, &format!("s-{n}"))).await;
            assert_eq!(answer, Ok(Ingested::Duplicate), "{label} s-{n}");
        }
        let resent = engine.submit_batch(batch.clone()).await.expect("batch");
        assert!(
            resent
                .iter()
                .all(|outcome| *outcome == Ok(Ingested::Duplicate)),
            "{label}"
        );
        let conflict = engine
            .submit(with_id("ann", 9, "b-0"))
            .await
            .expect_err("conflict");
        assert_eq!(conflict.reason.reason(), "id_conflict", "{label}");
        assert_eq!(engine.balance("ann"), Some(40), "{label}");
        assert_eq!(engine.balance("bob"), Some(80), "{label}");
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_log_an_overflow_is_answered_422_never_202() {
    // Proves the answer waits for the apply: an event that would overflow its balance is
    // refused `Overflow` (HTTP 422) instead of 202 then counted, the balance is untouched,
    // the next event is accepted, and a restart replays the log to the same balance (the
    // logged overflow is skipped again).
    let directory = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options(directory.path()))
        .expect("start");
    let near_max = i64::MAX - 10;
    assert_eq!(
        engine.submit(Event::new("big", near_max)).await,
        Ok(Ingested::Queued)
    );
    let refused = engine
        .submit(Event::new("big", 11))
        .await
        .map_err(|refused| refused.reason);
    assert_eq!(refused, Err(Rejected::Overflow));
    assert_eq!(engine.balance("big"), Some(near_max));
    assert_eq!(
        engine.submit(Event::new("big", 10)).await,
        Ok(Ingested::Queued)
    );
    assert_eq!(engine.balance("big"), Some(i64::MAX), "202 means applied");
    let summary = engine.shutdown().await;
    assert_eq!((summary.applied, summary.overflowed), (2, 1));

    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options(directory.path()))
        .expect("restart");
    assert_eq!(engine.balance("big"), Some(i64::MAX));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_log_an_overflowed_event_leaves_its_id_free() {
    // Proves a 422 is never followed by a 202 `duplicate`: an event with an id that overflows
    // is refused and its id is not remembered (at run time, in a snapshot, and on replay), so
    // its resend is decided again: refused while it still overflows, applied once it fits.
    // An applied event's id stays a duplicate across the restart.
    let directory = tempfile::tempdir().expect("temp dir");
    let start = || {
        Engine::start_durable(config(LedgerStrategy::Owned), &options(directory.path()))
            .expect("start")
    };
    let with_id = |amount: i64, id: &str| {
        Event::new("big", amount).with_id(floodgate_core::EventId::parse(id).expect("id"))
    };
    let reason = |outcome: Result<Ingested, floodgate_core::Refused>| outcome.map_err(|r| r.reason);
    let engine = start();
    let near_max = i64::MAX - 10;
    assert_eq!(
        reason(engine.submit(with_id(near_max, "first")).await),
        Ok(Ingested::Queued)
    );
    for _ in 0..2 {
        let resent = reason(engine.submit(with_id(11, "too-much")).await);
        assert_eq!(
            resent,
            Err(Rejected::Overflow),
            "refused again, never a duplicate"
        );
    }
    engine.shutdown().await;

    let engine = start();
    assert_eq!(
        reason(engine.submit(with_id(near_max, "first")).await),
        Ok(Ingested::Duplicate),
        "an applied id survives the restart"
    );
    assert_eq!(
        reason(engine.submit(with_id(11, "too-much")).await),
        Err(Rejected::Overflow),
        "an overflowed id is still free after the restart"
    );
    assert_eq!(
        reason(engine.submit(Event::new("big", -100)).await),
        Ok(Ingested::Queued)
    );
    assert_eq!(
        reason(engine.submit(with_id(11, "too-much")).await),
        Ok(Ingested::Queued),
        "once it fits, the resend is applied, once"
    );
    assert_eq!(
        reason(engine.submit(with_id(11, "too-much")).await),
        Ok(Ingested::Duplicate)
    );
    assert_eq!(engine.balance("big"), Some(near_max - 100 + 11));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_counts_the_events_of_a_batch_entry() {
    // Proves `recovered_events` counts events, not log entries: a batch of five is one entry
    // of the log but five events replayed after a kill.
    let storage = FaultStorage::new();
    let first_dir = tempfile::tempdir().expect("temp dir");
    let mut crashed_options = options(first_dir.path());
    crashed_options.storage = Some(Arc::new(storage.clone()));
    let engine =
        Engine::start_durable(config(LedgerStrategy::Owned), &crashed_options).expect("start");
    let batch = (1..=5)
        .map(|amount| Event::new("batched", amount))
        .collect();
    let outcomes = engine.submit_batch(batch).await.expect("batch taken");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(
        engine.submit(Event::new("single", 7)).await,
        Ok(Ingested::Queued)
    );
    let restarted: Arc<dyn Storage> = Arc::new(storage.restart_after(Crash::ProcessKill, 0));
    engine.shutdown().await;

    let second_dir = tempfile::tempdir().expect("temp dir");
    let mut options = options(second_dir.path());
    options.storage = Some(restarted);
    let engine = Engine::start_durable(config(LedgerStrategy::Owned), &options).expect("recover");
    assert_eq!(engine.balance("batched"), Some(15));
    assert_eq!(engine.stats().durability.recovered_events, 6);
    engine.shutdown().await;
}
