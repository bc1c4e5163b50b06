//! The engine's read side and bookkeeping: stats, invalid counts, offer, lock timings,
//! pagination, config refusal.

use crate::support;
use floodgate_core::{
    ConfigError, Engine, EngineConfig, Event, Ingested, LedgerStrategy, Rejected,
};

#[tokio::test]
async fn start_refuses_an_invalid_config() {
    // Proves Engine::start validates before spawning anything.
    let config = EngineConfig {
        workers: 0,
        ..EngineConfig::production()
    };
    assert_eq!(
        Engine::start(config).map(|_| ()),
        Err(ConfigError::Workers(0))
    );
}

#[tokio::test(start_paused = true)]
async fn stats_count_every_outcome() {
    // Proves stats and summary: accepted, rejected by reason, invalid by reason, queue depth
    // and capacity, users, balance total, and the balances pagination, with one worker held
    // up by simulated work so the queue visibly fills.
    let engine = Engine::start(EngineConfig {
        workers: 1,
        queue_capacity_events: 4,
        work_ms: 100,
        strategy: LedgerStrategy::Sharded,
        ..EngineConfig::production()
    })
    .expect("start");
    let mut answers = Vec::new();
    for index in 0..6 {
        answers.push(support::ingest(&engine, Event::new(format!("u{index}"), 10)).await);
    }
    assert_eq!(answers.iter().filter(|answer| answer.is_ok()).count(), 4);
    assert_eq!(answers[5], Err(Rejected::QueueFull));
    engine.record_invalid("invalid_json");
    engine.record_invalid("missing_field");
    engine.record_invalid("invalid_json");
    let stats = engine.stats();
    assert_eq!((stats.accepted, stats.rejected, stats.invalid), (4, 2, 3));
    assert_eq!(stats.rejected_by_reason.get("queue_full"), Some(&2));
    assert_eq!(stats.invalid_by_reason.get("invalid_json"), Some(&2));
    assert_eq!((stats.queue_depth, stats.queue_capacity_events), (4, 4));
    let summary = engine.shutdown().await;
    assert_eq!(
        (
            summary.accepted,
            summary.applied,
            summary.rejected,
            summary.invalid
        ),
        (4, 4, 2, 3)
    );
    let stats = engine.stats();
    assert_eq!(
        (stats.users, stats.balance_total, stats.queue_depth),
        (4, 40, 0)
    );
    assert!(stats.draining && engine.is_draining());
    let page = engine.balances(Some(b"u1"), 2);
    assert_eq!(page, vec![("u2".to_owned(), 10), ("u3".to_owned(), 10)]);
    let json = serde_json::to_value(&stats).expect("stats serialize");
    for field in [
        "accepted",
        "per_worker",
        "lock_wait",
        "strategy",
        "worker_busy_seconds",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["strategy"], "sharded");
}

#[tokio::test]
async fn offer_hands_refused_events_back() {
    // Proves offer returns the untouched event on refusal (so callers can retry) and that
    // lock timings are recorded once events are applied.
    let engine = Engine::start(EngineConfig {
        workers: 1,
        queue_capacity_events: 1,
        ..EngineConfig::production()
    })
    .expect("start");
    // Fill the queue before the worker task can run (current-thread runtime, no await yet).
    assert_eq!(
        engine.submit(Event::new("a", 1)).await,
        Ok(Ingested::Queued)
    );
    let refused = engine
        .submit(Event::new("b", 2))
        .await
        .expect_err("queue full");
    assert_eq!(
        (refused.reason, refused.event),
        (Rejected::QueueFull, Event::new("b", 2))
    );
    engine.shutdown().await;
    let refused = engine
        .submit(Event::new("c", 3))
        .await
        .expect_err("draining");
    assert_eq!(refused.reason, Rejected::Draining);
    let timings = engine.lock_timings();
    assert_eq!(timings.hold_us.len(), 1, "one batch applied");
    assert_eq!(engine.balance("a"), Some(1));
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    // Proves Engine::start reports a missing tokio runtime instead of panicking in spawn.
    let started = Engine::start(EngineConfig::production()).map(|_| ());
    assert_eq!(started, Err(ConfigError::NoRuntime));
}

#[tokio::test]
async fn debug_output_stays_short_with_many_users() {
    // Proves `{:?}` of an engine (e.g. inside a server handle) never dumps the ledger.
    let engine = Engine::start(EngineConfig::production()).expect("start");
    for user in 0..2_000 {
        support::ingest(&engine, Event::new(format!("user{user}"), 1))
            .await
            .expect("queued");
    }
    engine.shutdown().await;
    let debug = format!("{engine:?}");
    assert!(debug.len() < 200, "{debug}");
    assert!(
        debug.contains("Owned") && debug.contains("draining: true"),
        "{debug}"
    );
}

#[tokio::test]
async fn try_ingest_in_inline_mode_applies_at_once() {
    // Proves the non-async path in inline mode answers like `ingest` (applied balance,
    // overflow refused and counted) instead of misbehaving.
    let engine = Engine::start(EngineConfig {
        mode: floodgate_core::ProcessingMode::Inline,
        ..EngineConfig::production()
    })
    .expect("start");
    assert_eq!(
        support::ingest(&engine, Event::new("a", 5)).await,
        Ok(Ingested::Applied { balance: 5 })
    );
    assert_eq!(
        support::ingest(&engine, Event::new("a", 2)).await,
        Ok(Ingested::Applied { balance: 7 })
    );
    let refused = engine
        .submit(Event::new("a", i64::MAX))
        .await
        .expect_err("overflow");
    assert_eq!(
        (refused.reason, refused.event.amount),
        (Rejected::Overflow, i64::MAX)
    );
    let summary = engine.shutdown().await;
    assert_eq!(
        (summary.accepted, summary.applied, summary.rejected),
        (2, 2, 1)
    );
    assert_eq!(
        support::ingest(&engine, Event::new("a", 1)).await,
        Err(Rejected::Draining)
    );
}
