//! A worker that panics is never silent: the engine refuses every event (503 `worker_failed`)
//! and the server stops on its own with an error (the binary then exits
//! non-zero), its summary accounting for what the dead worker held as `lost`.

use std::collections::BTreeMap;
use std::time::Duration;

use floodgate_core::{
    DurabilityMode, DurableOptions, Engine, EngineConfig, Event, Failure, Ingested, Rejected,
};
use floodgate_server::ServerHandle;
use reqwest::StatusCode;

use crate::support::{client, event_json, test_config};

// Proves issue 10's rule: a panicked worker does not leave a lane that silently refuses with
// `draining` while the health checks stay green.
#[tokio::test]
async fn a_panicked_worker_stops_the_server_loudly_and_counts_what_it_lost() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let engine = server.engine().clone();
    let http = client();
    let events = format!("{}/events", server.url());
    let mut answered_202 = 0_u64;
    for amount in 1..=20 {
        let response = http
            .post(&events)
            .body(event_json(&format!("before-{amount}"), amount))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        answered_202 += 1;
    }

    engine.inject_worker_panic();
    // The next worker to receive a batch panics; keep posting (to every lane) until the
    // server refuses (503 worker_failed) or, having stopped on its own, stops answering.
    for attempt in 0..2_000 {
        let sent = http
            .post(&events)
            .body(event_json(&format!("after-{attempt}"), 1))
            .send()
            .await;
        let Ok(response) = sent else {
            break;
        };
        if response.status() == StatusCode::ACCEPTED {
            answered_202 += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["reason"], "worker_failed", "{body}");
        break;
    }
    assert_eq!(engine.failure(), Some(Failure::Worker));
    let refused = engine
        .submit(Event::new("late", 1))
        .await
        .map_err(|refused| refused.reason);
    assert_eq!(
        refused,
        Err(Rejected::WorkerFailed),
        "every event is refused"
    );

    // The server stops by itself; stop() reports the failure instead of a clean summary.
    let error = tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the server stops on its own")
        .expect_err("a failed worker is an error, not a clean stop");
    assert!(
        error.to_string().contains("a worker panicked"),
        "the error says why: {error}"
    );
    let summary = engine.shutdown().await;
    assert_eq!(
        summary.accepted, answered_202,
        "every 202 is counted accepted"
    );
    assert!(
        summary.lost >= 1,
        "the batch the worker held is counted lost: {summary:?}"
    );
    assert_eq!(
        summary.applied + summary.overflowed + summary.lost,
        summary.accepted,
        "{summary:?}"
    );
}

// Proves the log's half of the rule: with a data directory, every event answered durable
// before or after a worker panicked is applied at the next start, though the dead worker never
// applied some of them (no snapshot covers them: a snapshot's cut waits for the workers to
// apply everything dispatched). An engine test kept here because this test binary is the one
// built with the fault-injection hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_replays_what_a_panicked_worker_never_applied() {
    let directory = tempfile::tempdir().expect("temp dir");
    let config = EngineConfig {
        workers: 2,
        queue_capacity_events: 10_000,
        ..EngineConfig::production()
    };
    let options = DurableOptions::new(directory.path(), DurabilityMode::Write);
    let engine = Engine::start_durable(config.clone(), &options).expect("start");
    let mut acknowledged: BTreeMap<String, i64> = BTreeMap::new();
    let mut submit = async |index: i64| {
        let user = format!("user-{}", index % 10);
        let outcome = engine.submit(Event::new(user.clone(), index)).await;
        if outcome.is_ok() {
            *acknowledged.entry(user).or_insert(0) += index;
        }
        outcome.map_err(|refused| refused.reason)
    };
    for index in 1..=100 {
        assert_eq!(submit(index).await, Ok(Ingested::Queued));
    }
    engine.inject_worker_panic();
    let mut refused = None;
    for index in 101..=20_000 {
        if let Err(reason) = submit(index).await {
            refused = Some(reason);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(refused, Some(Rejected::WorkerFailed));
    let summary = engine.shutdown().await;
    assert!(summary.lost >= 1, "{summary:?}");
    let applied_before_restart: i64 = engine.balances(None, 1000).iter().map(|(_, b)| b).sum();
    assert!(
        applied_before_restart < acknowledged.values().sum::<i64>(),
        "the dead worker left acknowledged events unapplied in memory"
    );
    drop(engine);

    let restarted = Engine::start_durable(config, &options).expect("restart");
    let recovered: BTreeMap<String, i64> = restarted.balances(None, 1000).into_iter().collect();
    assert_eq!(recovered, acknowledged, "every durable event, applied once");
    restarted.shutdown().await;
}
