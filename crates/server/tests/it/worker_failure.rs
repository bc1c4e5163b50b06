//! A worker that panics is never silent: the engine refuses every event (503 `worker_failed`)
//! and the server stops on its own with an error (the binary then exits
//! non-zero), its summary accounting for what the dead worker held as `lost`.

use std::time::Duration;

use floodgate_core::{Event, Failure, Rejected};
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
