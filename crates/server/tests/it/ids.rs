//! Event ids over HTTP: the `id` field and its `Idempotency-Key` alias, duplicates (202,
//! `Idempotent-Replayed: true`), conflicts (422 `id_conflict`), mismatches (400
//! `id_mismatch`) and invalid ids (422 `invalid_id`).

use floodgate_server::ServerHandle;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{client, test_config};

async fn post(
    server: &ServerHandle,
    body: &Value,
    key: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = client()
        .post(format!("{}/events", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    (status, replayed, response.json().await.expect("JSON body"))
}

// Proves the id rows: a resend is a 202 duplicate with Idempotent-Replayed and is applied
// once; the header is an alias of the field; another amount is 422 id_conflict naming the
// field; body and header differing is 400 id_mismatch; a bad id is 422 invalid_id.
#[tokio::test]
async fn duplicates_conflicts_and_the_header_alias() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let event = json!({"user": "alice", "amount": 5, "id": "01J0-a"});
    let (status, replayed, body) = post(&server, &event, None).await;
    assert_eq!(
        (status, replayed, body),
        (StatusCode::ACCEPTED, None, json!({"status": "accepted"}))
    );
    let (status, replayed, body) = post(&server, &event, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(body, json!({"status": "duplicate"}));
    // The header alone names the same event.
    let bare = json!({"user": "alice", "amount": 5});
    let (status, replayed, _) = post(&server, &bare, Some("01J0-a")).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::ACCEPTED, Some("true"))
    );
    let (status, _, body) = post(
        &server,
        &json!({"user": "alice", "amount": 6}),
        Some("01J0-a"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["reason"], "id_conflict");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("amount")),
        "{body}"
    );
    let (status, _, body) = post(&server, &event, Some("01J0-b")).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::BAD_REQUEST, json!("id_mismatch"))
    );
    let (status, _, body) = post(&server, &json!({"user": "a", "amount": 1, "id": ""}), None).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_id"))
    );
    let long = "k".repeat(65);
    let (status, _, body) = post(&server, &bare, Some(&long)).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_id"))
    );
    let metrics = client()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    for line in [
        "floodgate_dedup_window_seconds ",
        "floodgate_dedup_ids 1",
        "floodgate_events_duplicate_total 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("alice"), Some(5), "applied once");
    assert_eq!(
        engine.stats().invalid_by_reason.get("id_conflict"),
        Some(&1)
    );
}

// Proves a refused event leaves its id free over HTTP: a 507 (ledger full) for an id, then
// the same id for a known user is accepted, not a conflict.
#[tokio::test]
async fn a_refused_id_stays_free() {
    let mut config = test_config();
    config.engine.max_users = 1;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let (status, _, _) = post(&server, &json!({"user": "known", "amount": 1}), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = post(
        &server,
        &json!({"user": "new", "amount": 2, "id": "r"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    let (status, replayed, _) = post(
        &server,
        &json!({"user": "known", "amount": 2, "id": "r"}),
        None,
    )
    .await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, None));
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("known"), Some(3));
}
