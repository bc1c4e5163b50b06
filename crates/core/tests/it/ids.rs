//! Event ids and batches through the engine's doors: duplicates are not applied, conflicts
//! are refused, refused events leave their id free, concurrent copies of one id are applied
//! once, and a batch is admitted whole or not at all with an outcome per event.

use std::sync::Arc;

use floodgate_core::dedup::ConflictField;
use floodgate_core::{Engine, EngineConfig, Event, EventId, Ingested, LedgerStrategy, Rejected};

fn with_id(user: &str, amount: i64, id: &str) -> Event {
    Event::new(user, amount).with_id(EventId::parse(id).expect("a valid id"))
}

fn config() -> EngineConfig {
    EngineConfig {
        workers: 2,
        queue_capacity_events: 64,
        ..EngineConfig::production()
    }
}

async fn settled_balance(engine: &Engine, user: &str) -> Option<i64> {
    engine.shutdown().await;
    engine.balance(user)
}

#[tokio::test]
async fn a_resend_is_a_duplicate_and_a_reuse_is_a_conflict() {
    // Proves the single-event rules: the same id with the same user and amount is answered
    // Duplicate and applied once; the same id with another user or amount is refused
    // IdConflict naming the field; events without ids are applied every time.
    let engine = Engine::start(config()).expect("start");
    assert_eq!(
        engine.submit(with_id("alice", 5, "e-1")).await,
        Ok(Ingested::Queued)
    );
    assert_eq!(
        engine.submit(with_id("alice", 5, "e-1")).await,
        Ok(Ingested::Duplicate)
    );
    let conflict = engine
        .submit(with_id("bob", 5, "e-1"))
        .await
        .expect_err("conflict");
    assert_eq!(conflict.reason, Rejected::IdConflict(ConflictField::User));
    let conflict = engine
        .submit(with_id("alice", 6, "e-1"))
        .await
        .expect_err("conflict");
    assert_eq!(conflict.reason, Rejected::IdConflict(ConflictField::Amount));
    assert_eq!(conflict.reason.reason(), "id_conflict");
    for _ in 0..2 {
        assert_eq!(
            engine.submit(Event::new("alice", 1)).await,
            Ok(Ingested::Queued)
        );
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.accepted, stats.duplicate, stats.dedup.ids),
        (3, 1, 1)
    );
    assert_eq!(settled_balance(&engine, "alice").await, Some(7));
    assert_eq!(engine.balance("bob"), None);
}

#[tokio::test]
async fn a_refused_event_leaves_its_id_free() {
    // Proves a refusal (here: the ledger is full for a new user) does not remember the id:
    // the same id is fresh again and, once there is room, applied.
    let engine = Engine::start(EngineConfig {
        max_users: 1,
        ..config()
    })
    .expect("start");
    assert_eq!(
        engine.submit(Event::new("first", 1)).await,
        Ok(Ingested::Queued)
    );
    let refused = engine
        .submit(with_id("second", 3, "r-1"))
        .await
        .expect_err("full");
    assert_eq!(refused.reason, Rejected::LedgerFull);
    assert_eq!(engine.stats().dedup.ids, 0, "a refused id is not kept");
    // A known user's event with the same id is now fresh, not a conflict.
    assert_eq!(
        engine.submit(with_id("first", 3, "r-1")).await,
        Ok(Ingested::Queued)
    );
    assert_eq!(settled_balance(&engine, "first").await, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_id_are_applied_once() {
    // Proves the check is serialized: 8 tasks send the same 200 ids at once (single events
    // and batches mixed); every id is applied exactly once, whatever the interleaving.
    let engine = Engine::start(EngineConfig {
        queue_capacity_events: 100_000,
        ..config()
    })
    .expect("start");
    let mut tasks = Vec::new();
    for task in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut applied = 0_u64;
            if task % 2 == 0 {
                for n in 0..200 {
                    let answer = engine.submit(with_id("hot", 1, &format!("c-{n}"))).await;
                    applied += u64::from(answer == Ok(Ingested::Queued));
                }
            } else {
                let events: Vec<Event> = (0..200)
                    .map(|n| with_id("hot", 1, &format!("c-{n}")))
                    .collect();
                let outcomes = engine.submit_batch(events).await.expect("room");
                applied += outcomes
                    .iter()
                    .filter(|o| **o == Ok(Ingested::Queued))
                    .count() as u64;
            }
            applied
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.expect("no panic");
    }
    assert_eq!(applied, 200, "each id accepted by exactly one copy");
    assert_eq!(settled_balance(&engine, "hot").await, Some(200));
}

#[tokio::test]
async fn a_batch_reports_each_event_and_admits_all_or_nothing() {
    // Proves per-event outcomes (queued, duplicate of an earlier request, conflict, a repeat
    // inside the batch, ledger full) and capacity all-or-nothing: a batch that does not fit
    // is refused whole, nothing applied and its ids left free, so resending it later works.
    let engine = Engine::start(EngineConfig {
        workers: 1,
        queue_capacity_events: 4,
        strategy: LedgerStrategy::Global,
        work_ms: 60_000, // the worker holds its first job: the queue stays as filled
        max_users: 2,
        ..config()
    })
    .expect("start");
    assert_eq!(
        engine.submit(with_id("a", 1, "b-0")).await,
        Ok(Ingested::Queued)
    );
    let outcomes = engine
        .submit_batch(vec![
            with_id("a", 1, "b-0"), // duplicate of the request above
            with_id("a", 2, "b-1"), // queued
            with_id("b", 2, "b-1"), // conflict inside the batch
            with_id("a", 2, "b-1"), // the same event again: follows b-1's outcome
            Event::new("c", 1),     // queued (second user)
            with_id("d", 1, "b-2"), // a third user: ledger full, id left free
        ])
        .await
        .expect("fits");
    assert_eq!(
        outcomes,
        vec![
            Ok(Ingested::Duplicate),
            Ok(Ingested::Queued),
            Err(Rejected::IdConflict(ConflictField::User)),
            Ok(Ingested::Queued),
            Ok(Ingested::Queued),
            Err(Rejected::LedgerFull),
        ]
    );
    let depth = engine.queue_depth();
    let too_big = vec![
        with_id("a", 1, "x-1"),
        with_id("a", 1, "x-2"),
        with_id("a", 1, "x-3"),
    ];
    assert_eq!(engine.submit_batch(too_big).await, Err(Rejected::QueueFull));
    assert_eq!(
        engine.queue_depth(),
        depth,
        "nothing of a refused batch is queued"
    );
    assert_eq!(
        engine.stats().dedup.ids,
        2,
        "b-0 and b-1 only: x-* stay free"
    );
    assert_eq!(
        engine.submit_batch(vec![with_id("a", 1, "x-1")]).await,
        Ok(vec![Ok(Ingested::Queued)]),
        "the refused batch's ids were left free"
    );
}

#[tokio::test]
async fn a_drained_engine_refuses_a_batch_whole() {
    // Proves draining refuses a batch as a whole (503 draining), not event by event.
    let engine = Engine::start(config()).expect("start");
    let shared = Arc::new(engine);
    shared.shutdown().await;
    assert_eq!(
        shared.submit_batch(vec![with_id("a", 1, "d-1")]).await,
        Err(Rejected::Draining)
    );
}
