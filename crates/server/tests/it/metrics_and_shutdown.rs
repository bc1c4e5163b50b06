//! /metrics parsed by a real Prometheus parser; conservation and graceful shutdown under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::config::LedgerStrategy;
use floodgate_server::{ServerConfig, ServerHandle};
use prometheus_parse::{Sample, Scrape, Value};
use reqwest::StatusCode;

use crate::support::{client, event_json, test_config};

fn find<'a>(scrape: &'a Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<&'a Sample> {
    scrape.samples.iter().find(|sample| {
        sample.metric == metric
            && label.is_none_or(|(name, value)| sample.labels.get(name) == Some(value))
    })
}

/// A counter or gauge value; every series checked here counts whole things.
fn scalar(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> u64 {
    match find(scrape, metric, label).map(|sample| &sample.value) {
        Some(Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value)) => *value as u64,
        other => panic!("{metric} {label:?}: {other:?}"),
    }
}

// Proves /metrics is valid Prometheus text with the operator series: counters by reason, queue
// gauges, open connections, the latency histogram by outcome and the lock histograms.
#[tokio::test]
async fn metrics_parse_and_count_what_happened() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let http = client();
    let url = format!("{}/events", server.url());
    for amount in 0..3 {
        http.post(&url)
            .body(event_json("m", amount))
            .send()
            .await
            .expect("send");
    }
    http.post(&url).body("nope").send().await.expect("send");
    http.post(&url)
        .body(r#"{"user": "m"}"#)
        .send()
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await; // let the workers apply
    let response = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|value| value.starts_with("text/plain")),
    );
    let text = response.text().await.expect("text");
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parses");
    assert_eq!(scalar(&scrape, "floodgate_events_accepted_total", None), 3);
    assert_eq!(scalar(&scrape, "floodgate_events_applied_total", None), 3);
    assert_eq!(
        scalar(
            &scrape,
            "floodgate_events_invalid_total",
            Some(("reason", "invalid_json"))
        ),
        1
    );
    assert_eq!(
        scalar(
            &scrape,
            "floodgate_events_invalid_total",
            Some(("reason", "missing_field"))
        ),
        1
    );
    assert_eq!(
        scalar(&scrape, "floodgate_queue_capacity_events", None),
        10_000
    );
    assert_eq!(scalar(&scrape, "floodgate_queue_depth_events", None), 0);
    assert!(scalar(&scrape, "floodgate_http_open_connections", None) >= 1);
    assert_eq!(
        scalar(&scrape, "floodgate_http_max_connections", None),
        floodgate_server::config::DEFAULT_MAX_CONNECTIONS as u64
    );
    check_histograms(&scrape);
    server.stop().await.expect("stop");
}

/// The latency histogram by outcome, and the lock histograms, are present and count right.
fn check_histograms(scrape: &Scrape) {
    let latency = find(
        scrape,
        "floodgate_http_request_duration_seconds",
        Some(("outcome", "accepted")),
    )
    .expect("latency histogram");
    let Value::Histogram(buckets) = &latency.value else {
        panic!("not a histogram: {:?}", latency.value)
    };
    assert_eq!(
        buckets.last().map(|bucket| bucket.count),
        Some(3.0),
        "{buckets:?}"
    );
    // Finite bounds up to ~13 s, then exactly one +Inf bucket (not a huge finite bound).
    assert_eq!(
        buckets
            .iter()
            .filter(|bucket| bucket.less_than.is_infinite())
            .count(),
        1,
        "{buckets:?}"
    );
    assert!(
        buckets
            .iter()
            .all(|bucket| bucket.less_than.is_infinite() || bucket.less_than < 14.0),
        "{buckets:?}"
    );
    assert_eq!(
        scalar(
            scrape,
            "floodgate_http_request_duration_seconds_count",
            Some(("outcome", "invalid"))
        ),
        2
    );
    for lock in [
        "floodgate_ledger_lock_wait_seconds",
        "floodgate_ledger_lock_hold_seconds",
    ] {
        assert!(
            matches!(
                find(scrape, lock, None).map(|s| &s.value),
                Some(Value::Histogram(_))
            ),
            "{lock} missing"
        );
    }
    assert!(find(scrape, "floodgate_worker_busy_seconds_total", None).is_some());
}

/// A deterministic amount for client `client`, request `request` (mixed signs).
fn amount_for(client: i64, request: i64) -> i64 {
    (client * 7919 + request * 104_729) % 1000 - 300
}

/// A queued server that overloads easily: a small queue and simulated work.
fn overloadable() -> ServerConfig {
    let mut config = test_config();
    config.engine.workers = 2;
    config.engine.queue_capacity_events = 32;
    config.engine.work_ms = 1;
    config
}

/// Posts 25 events from each of 64 concurrent clients; returns the amounts of the 202-answered
/// events summed per user, and the number of 503 answers.
async fn post_from_64_clients(url: &str) -> (HashMap<String, i64>, u64) {
    let http = client();
    let mut tasks = Vec::new();
    for client_index in 0..64_i64 {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut accepted: HashMap<String, i64> = HashMap::new();
            let mut rejected = 0_u64;
            for request in 0..25 {
                let user = format!("user{}", (client_index + request) % 16);
                let amount = amount_for(client_index, request);
                let response = http.post(&url).body(event_json(&user, amount)).send().await;
                match response.map(|response| response.status()) {
                    Ok(StatusCode::ACCEPTED) => *accepted.entry(user).or_default() += amount,
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => rejected += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            (accepted, rejected)
        }));
    }
    let mut expected: HashMap<String, i64> = HashMap::new();
    let mut rejected = 0;
    for task in tasks {
        let (accepted, task_rejected) = task.await.expect("client");
        rejected += task_rejected;
        for (user, amount) in accepted {
            *expected.entry(user).or_default() += amount;
        }
    }
    (expected, rejected)
}

// Proves conservation through HTTP under overload, for every ledger strategy: 64 concurrent
// clients, many 503s, and after stop() each user's balance equals the sum of the amounts of
// that user's 202-answered events (and so do the totals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_with_64_clients_under_overload() {
    for strategy in LedgerStrategy::ALL {
        let mut config = overloadable();
        config.engine.strategy = strategy;
        let server = ServerHandle::spawn(config).await.expect("spawn");
        let (expected, rejected) = post_from_64_clients(&format!("{}/events", server.url())).await;
        let engine = server.engine().clone();
        let summary = server.stop().await.expect("stop");
        assert!(
            rejected > 0,
            "{strategy}: the test must overload the server (no 503 seen)"
        );
        assert_eq!(summary.rejected, rejected, "{strategy}");
        for (user, amount) in &expected {
            assert_eq!(
                engine.balance(user).unwrap_or(0),
                *amount,
                "{strategy} {user}"
            );
        }
        let total: i64 = engine
            .balances(None, 1000)
            .iter()
            .map(|(_, balance)| balance)
            .sum();
        assert_eq!(total, expected.values().sum::<i64>(), "{strategy}");
    }
}

// Proves graceful shutdown under load: clients keep posting while stop() runs; every event
// answered 202 is applied (202 count == applied in the final summary), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_applies_every_202() {
    let mut config = overloadable();
    config.engine.queue_capacity_events = 256;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let url = format!("{}/events", server.url());
    let http = client();
    let accepted = Arc::new(AtomicU64::new(0));
    let accepted_amount = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for client_index in 0..64_u64 {
        let (http, url) = (http.clone(), url.clone());
        let (accepted, accepted_amount, running) = (
            Arc::clone(&accepted),
            Arc::clone(&accepted_amount),
            Arc::clone(&running),
        );
        tasks.push(tokio::spawn(async move {
            let mut request = 0;
            while running.load(Ordering::SeqCst) {
                let amount = client_index + 1;
                let signed = i64::try_from(amount).expect("small");
                let body = event_json(&format!("user{}", client_index % 8), signed);
                match http.post(&url).body(body).send().await.map(|r| r.status()) {
                    Ok(StatusCode::ACCEPTED) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        accepted_amount.fetch_add(amount, Ordering::SeqCst);
                    }
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => {}
                    Ok(other) => panic!("unexpected status {other}"),
                    Err(_) => break, // the server stopped accepting: expected during stop
                }
                request += 1;
            }
            request
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let engine = server.engine().clone();
    let summary = server.stop().await.expect("stop");
    running.store(false, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client");
    }
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(accepted > 0);
    assert_eq!(summary.applied, accepted, "{summary:?}");
    assert_eq!(summary.accepted, accepted);
    let total: i64 = engine
        .balances(None, 1000)
        .iter()
        .map(|(_, balance)| balance)
        .sum();
    assert_eq!(total as u64, accepted_amount.load(Ordering::SeqCst));
}

// Proves a client holding an in-flight request (a body that never finishes) cannot keep
// stop() from returning: the stop waits for its body deadline (longer than the shutdown
// timeout here), answers it 408, closes the connection, and the queue is still drained.
#[tokio::test]
async fn shutdown_timeout_bounds_a_stop_held_by_a_slow_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.front_door.body_timeout_ms = 1_500;
    config.front_door.shutdown_timeout_ms = 300;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let response = client()
        .post(format!("{}/events", server.url()))
        .body(event_json("before", 5))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut holder = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    holder
        .write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n{")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await; // the request is now in flight
    let engine = server.engine().clone();
    let summary = tokio::time::timeout(crate::support::ANSWER_WAIT, server.stop())
        .await
        .expect("stop returns despite the held request")
        .expect("stop");
    assert_eq!((summary.accepted, summary.applied), (1, 1));
    assert_eq!(engine.balance("before"), Some(5));
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(crate::support::ANSWER_WAIT, holder.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the held connection was closed");
    assert_eq!(
        crate::support::status_of(&rest),
        Some(408),
        "answered, not cut"
    );
}
