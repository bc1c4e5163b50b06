//! The seed's stages 3–8, run in paused tokio time: simulated durations advance instantly
//! and exactly, so these check the seed's claims without any wall-clock assertion.

use std::time::Duration;

use crate::support;
use floodgate_core::{
    Engine, EngineConfig, Event, Ingested, LedgerStrategy, ProcessingMode, Rejected,
};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn stage3_validates_without_state() {
    // Proves validate-only mode answers Validated and keeps no balance.
    let engine = Engine::start(EngineConfig::for_stage(3).expect("stage 3")).expect("start");
    assert_eq!(
        support::ingest(&engine, Event::new("alice", 5)).await,
        Ok(Ingested::Validated)
    );
    assert_eq!(engine.balance("alice"), None);
    let stats = engine.stats();
    assert_eq!((stats.validated, stats.accepted, stats.users), (1, 0, 0));
    assert_eq!(stats.mode, ProcessingMode::ValidateOnly);
    engine.shutdown().await;
    assert_eq!(
        support::ingest(&engine, Event::new("alice", 5)).await,
        Err(Rejected::Draining)
    );
}

#[tokio::test(start_paused = true)]
async fn stage4_inline_serializes_on_one_lock() {
    // Proves stage 4: N concurrent inline events, each holding the one lock 500 ms, take
    // N x 500 ms in all (async is not parallel), and each answer carries the new balance.
    let engine = Engine::start(EngineConfig::for_stage(4).expect("stage 4")).expect("start");
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|index| {
            let engine = engine.clone();
            tokio::spawn(async move {
                support::ingest(&engine, Event::new(format!("u{index}"), 10)).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task"),
            Ok(Ingested::Applied { balance: 10 })
        );
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(3100), "{elapsed:?}");
    let stats = engine.stats();
    assert_eq!(
        (stats.accepted, stats.applied, stats.queue_depth),
        (6, 6, 0)
    );
    assert!(
        stats.lock_wait.max_ms >= 2000.0,
        "the last one waited for five holds"
    );
    let overflow = support::ingest(&engine, Event::new("u0", i64::MAX)).await;
    assert_eq!(overflow, Err(Rejected::Overflow));
    assert_eq!(engine.balance("u0"), Some(10));
    let summary = engine.shutdown().await;
    assert_eq!(
        (summary.accepted, summary.applied, summary.rejected),
        (6, 6, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn stage5_burst_fills_the_queue_and_rejects_at_once() {
    // Proves stage 5: a burst of 200 gets exactly the queue's 100 accepted and 100 refused
    // without waiting (no time passes), then one worker drains them at 500 ms each.
    let engine = Engine::start(EngineConfig::for_stage(5).expect("stage 5")).expect("start");
    let started = Instant::now();
    let mut accepted = 0;
    let mut rejected = 0;
    for index in 0..200 {
        match support::ingest(&engine, Event::new(format!("u{index}"), 1)).await {
            Ok(Ingested::Queued) => accepted += 1,
            Err(Rejected::QueueFull) => rejected += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((accepted, rejected), (100, 100));
    assert_eq!(started.elapsed(), Duration::ZERO, "try_send never waits");
    assert_eq!(engine.queue_depth(), 100);
    let summary = engine.shutdown().await;
    assert_eq!(
        (summary.accepted, summary.applied, summary.rejected),
        (100, 100, 100)
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(50),
        "one worker: 100 x 500 ms, {elapsed:?}"
    );
}

/// Feed `events` events over `users` users into a stage preset and return the simulated
/// time to drain them.
async fn drain_time(config: EngineConfig, events: usize, users: usize) -> (Duration, Engine) {
    let engine = Engine::start(EngineConfig {
        queue_capacity_events: events,
        ..config
    })
    .expect("start");
    let started = Instant::now();
    for index in 0..events {
        let answer =
            support::ingest(&engine, Event::new(format!("user{}", index % users), 1)).await;
        assert_eq!(answer, Ok(Ingested::Queued));
    }
    let summary = engine.shutdown().await;
    assert_eq!(summary.applied, events as u64);
    (started.elapsed(), engine)
}

#[tokio::test(start_paused = true)]
async fn stage6_four_workers_are_four_times_stage5() {
    // Proves stage 6: 4 workers drain the same 40 events 4x faster than stage 5's one.
    let (five, _) = drain_time(EngineConfig::for_stage(5).expect("5"), 40, 40).await;
    let (six, _) = drain_time(EngineConfig::for_stage(6).expect("6"), 40, 40).await;
    assert_eq!(five, Duration::from_secs(20));
    assert_eq!(six, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn stage7_one_lock_plateaus_and_wait_dominates_hold() {
    // Proves stage 7: 16 workers on one lock held 10 ms are capped near 1/hold = 100 jobs/s
    // (far below 16/110ms = 145/s), and lock wait is much larger than hold: in steady state
    // each worker cycles every 16 x 10 ms = 160 ms, of which 160 - 110 = 50 ms is waiting.
    let (elapsed, engine) = drain_time(EngineConfig::for_stage(7).expect("7"), 320, 1000).await;
    let rate = 320.0 / elapsed.as_secs_f64();
    assert!(rate <= 101.0 && rate > 90.0, "rate {rate}");
    let stats = engine.stats();
    assert!(
        stats.lock_wait.p50_ms > 4.0 * stats.lock_hold.p50_ms,
        "{stats:?}"
    );
    assert!(
        (stats.lock_hold.p50_ms - 10.0).abs() < 0.5,
        "hold ~10 ms: {stats:?}"
    );
    assert_eq!(stats.per_worker.len(), 16);
    assert!(stats.per_worker.iter().all(|worker| worker.applied > 0));
}

#[tokio::test(start_paused = true)]
async fn stage8_shards_lift_the_plateau() {
    // Proves stage 8: the same load over 1,000 users with sharded state approaches
    // workers / (work + hold) = 16 / 110 ms = 145 jobs/s, and waits shrink.
    let (elapsed, engine) = drain_time(EngineConfig::for_stage(8).expect("8"), 320, 1000).await;
    let rate = 320.0 / elapsed.as_secs_f64();
    let ceiling = 16.0 / 0.110;
    assert!(
        rate > 0.9 * ceiling && rate <= ceiling + 1.0,
        "rate {rate} vs {ceiling}"
    );
    let stats = engine.stats();
    assert_eq!(stats.strategy, LedgerStrategy::Sharded);
    assert!(stats.lock_wait.p50_ms < stats.lock_hold.p50_ms, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn stage8_holds_with_64_workers() {
    // Proves the target shape for stage 8 at 64 workers over 1,000 users: at least
    // 0.9 of workers / (work + hold) = 64 / 110 ms (in simulated time).
    let config = EngineConfig {
        workers: 64,
        ..EngineConfig::for_stage(8).expect("8")
    };
    let (elapsed, _) = drain_time(config, 1280, 1000).await;
    let rate = 1280.0 / elapsed.as_secs_f64();
    let ceiling = 64.0 / 0.110;
    assert!(
        rate > 0.9 * ceiling && rate <= ceiling + 1.0,
        "rate {rate} vs {ceiling}"
    );
}

#[tokio::test(start_paused = true)]
async fn time_scale_runs_the_seed_faster() {
    // Proves time_scale 0.1 makes stage 5's per-event work 50 ms instead of 500 ms.
    let config = EngineConfig {
        time_scale: 0.1,
        ..EngineConfig::for_stage(5).expect("5")
    };
    let (elapsed, _) = drain_time(config, 10, 10).await;
    assert_eq!(elapsed, Duration::from_millis(500));
}
