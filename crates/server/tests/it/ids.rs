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
    // HTTP strips the spaces and tabs around a header's value: they are not part of the key
    // (the OpenAPI document's pattern says so too), so this names the same event as well.
    let (status, replayed, _) = post(&server, &event, Some(" \t01J0-a\t ")).await;
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
        "floodgate_events_duplicate_total 3",
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

async fn post_batch(
    server: &ServerHandle,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> (StatusCode, Option<String>, Value) {
    let mut request = client()
        .post(format!("{}/events/batch", server.url()))
        .header("content-type", content_type);
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.body(body).send().await.expect("send");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.expect("JSON body"),
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

// Proves the batch contract: NDJSON with a malformed line, a bad event, a conflict and a
// duplicate answers 200 with counts and sparse per-event results; a resend of the whole batch
// applies nothing twice; a JSON array works too and malformed JSON is 400 for the whole
// request; gzip is accepted.
#[tokio::test]
async fn a_batch_answers_per_event() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let ndjson = concat!(
        "{\"user\":\"ann\",\"amount\":1,\"id\":\"n-1\"}\n",
        "{\"user\":\"ann\",\"amount\":2,\"id\":\"n-2\"}\n",
        "{\"user\":\"ann\",\"amo\n",
        "{\"user\":\"ann\",\"amount\":1.5}\n",
        "{\"user\":\"bob\",\"amount\":3,\"id\":\"n-1\"}\n",
        "{\"user\":\"ann\",\"amount\":4}\n",
    );
    let (status, _, body) = post_batch(
        &server,
        "application/x-ndjson",
        ndjson.as_bytes().to_vec(),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["accepted"].clone(),
            body["duplicate"].clone(),
            body["rejected"].clone()
        ),
        (json!(3), json!(0), json!(3))
    );
    let results = body["results"].as_array().expect("results");
    let reasons: Vec<(u64, &str)> = results
        .iter()
        .map(|result| {
            (
                result["index"].as_u64().expect("index"),
                result["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (2, "invalid_json"),
            (3, "invalid_amount"),
            (4, "id_conflict")
        ]
    );
    // The same batch again: the ids are duplicates, the event without an id is applied again.
    let (status, _, body) = post_batch(
        &server,
        "application/x-ndjson",
        gzip(ndjson.as_bytes()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["duplicate"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        body["results"][0],
        json!({"index": 0, "status": "duplicate"})
    );
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("ann"), Some(1 + 2 + 4 + 4));
    assert_eq!(engine.balance("bob"), None);
}

// Proves the JSON-array framing: an array of events is accepted per event, and malformed
// JSON is 400 invalid_json for the whole request, nothing admitted.
#[tokio::test]
async fn a_json_array_batch_is_all_or_400() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let array = json!([{"user": "cy", "amount": 5, "id": "a-1"}, {"user": "cy", "amount": 6}]);
    let (status, _, body) = post_batch(
        &server,
        "application/json",
        array.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, json!(2))
    );
    assert_eq!(body["results"], json!([]));
    let (status, _, body) = post_batch(
        &server,
        "application/json",
        b"[{\"user\":\"cy\"".to_vec(),
        false,
    )
    .await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_json"))
    );
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("cy"), Some(11));
}

// Proves the limits: more events than batch_max_events or than the queue can hold is 413
// batch_too_large; a gzip body past batch_max_bytes once decompressed (a zip bomb) is 413;
// a batch whose events do not all fit the free room is 503 queue_full with Retry-After and
// nothing of it admitted; a content type other than JSON or NDJSON is 415.
#[tokio::test]
async fn batch_limits_and_all_or_nothing_capacity() {
    let mut config = test_config();
    config.engine.workers = 1;
    config.engine.queue_capacity_events = 8;
    config.engine.work_ms = 60_000; // the worker holds its first job: room stays as taken
    config.front_door.batch_max_events = 6;
    config.front_door.batch_max_bytes = 64 * 1024;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let lines = |count: usize, user: &str| -> Vec<u8> {
        let mut body = String::new();
        for n in 0..count {
            let line = json!({"user": user, "amount": 1, "id": format!("{user}-{n}")});
            body.push_str(&line.to_string());
            body.push('\n');
        }
        body.into_bytes()
    };
    let (status, _, body) = post_batch(&server, "application/x-ndjson", lines(7, "x"), false).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("batch_too_large"))
    );
    let bomb = gzip(&vec![b' '; 1_000_000]);
    let (status, _, body) = post_batch(&server, "application/x-ndjson", bomb, true).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("body_too_large"))
    );
    let (status, _, body) = post_batch(&server, "application/x-ndjson", lines(5, "a"), false).await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, json!(5))
    );
    let before = server.engine().stats();
    let (status, retry_after, body) =
        post_batch(&server, "application/x-ndjson", lines(5, "b"), false).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("queue_full"))
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    let after = server.engine().stats();
    assert_eq!(
        (after.accepted, after.queue_depth, after.dedup.ids),
        (before.accepted, before.queue_depth, before.dedup.ids)
    );
    let (status, _, body) = post_batch(&server, "text/csv", lines(1, "c"), false).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!("unsupported_media_type")
        )
    );
    drop(server);
}
