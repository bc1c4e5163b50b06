//! The load generator against the real Floodgate server, in-process on 127.0.0.1:0.
//!
//! Lesson: the generator's numbers must agree with the server's own books: every
//! request has one outcome, the accepted count is the server's, and the sum of accepted amounts
//! is the ledger's total once drained (the design's conservation invariant, seen from outside).
//! No timing assertions beyond what the schedule guarantees; generous bounds elsewhere.

use std::time::Duration;

use floodgate_load::testing::{assert_outcomes_add_up, closed_config, open_config, timed_config};
use floodgate_load::{SlowKind, run};
use floodgate_server::{ServerConfig, ServerHandle};

/// `GET /stats` over HTTP, as an operator would read it.
async fn http_stats(server: &ServerHandle) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(server.addr()).await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/stats")
        .header(http::header::HOST, server.addr().to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /stats: {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_the_servers_stats_and_amounts_match_its_balances() {
    // Proves, against the production server: counts add up, accepted and invalid equal the
    // server's /stats counters (malformed bodies mixed in), and after a graceful stop the sum
    // of the ledger's balances equals the generator's sum of accepted amounts.
    let server = ServerHandle::spawn(ServerConfig::production())
        .await
        .unwrap();
    let mut config = closed_config(&server.url(), 16, 3_000);
    config.invalid_ratio = 0.1;
    config.users = 50;
    config.amount_min = -1_000;
    config.amount_max = 1_000;
    let report = run(config).await.unwrap();
    assert_eq!(report.sent, 3_000);
    assert_outcomes_add_up(&report);
    assert_eq!(report.errors, 0, "{report:#?}");
    let stats = server.engine().stats();
    assert_eq!(
        http_stats(&server).await.unwrap()["accepted"],
        report.accepted
    );
    assert_eq!(report.accepted, stats.accepted);
    assert_eq!(report.rejected, stats.rejected);
    assert_eq!(report.invalid, stats.invalid);
    assert_eq!(report.invalid, report.invalid_bodies_sent);
    let engine = server.engine().clone();
    let summary = server.stop().await.unwrap();
    assert_eq!(summary.accepted, report.accepted);
    assert_eq!(engine.stats().balance_total, report.accepted_amount_sum);
    let ledger_sum: i128 = engine
        .balances(None, 1_000)
        .iter()
        .map(|(_, b)| i128::from(*b))
        .sum();
    assert_eq!(ledger_sum, report.accepted_amount_sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_is_counted_as_rejected_not_accepted() {
    // Proves the accepted/rejected split under overload: stage 5 (queue of 100, one slow
    // worker) must turn most of a burst into 503s; the generator's rejected count equals the
    // server's, and only accepted events reach the ledger.
    let mut server_config = ServerConfig::for_stage(5).unwrap();
    server_config.engine.time_scale = 0.01; // 500 ms of work becomes 5 ms
    let server = ServerHandle::spawn(server_config).await.unwrap();
    let report = run(closed_config(&server.url(), 32, 2_000)).await.unwrap();
    assert_outcomes_add_up(&report);
    assert!(report.rejected > 0, "{report:#?}");
    assert_eq!(report.rejected, server.engine().stats().rejected);
    assert_eq!(report.status_counts.get("503"), Some(&report.rejected));
    let engine = server.engine().clone();
    server.stop().await.unwrap();
    assert_eq!(engine.stats().balance_total, report.accepted_amount_sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_holds_a_modest_rate() {
    // Proves the open loop offers 200/s for 2 s: all 400 scheduled requests are sent (none
    // dropped), never ahead of schedule (the last is due at 1.995 s) and, generously, at no
    // less than 75% of the rate.
    let server = ServerHandle::spawn(ServerConfig::production())
        .await
        .unwrap();
    let config = open_config(&server.url(), 200.0, Duration::from_secs(2), 1_000);
    let report = run(config).await.unwrap();
    assert_eq!(report.scheduled, Some(400));
    assert_eq!((report.sent, report.dropped), (400, 0), "{report:#?}");
    assert_outcomes_add_up(&report);
    assert!(
        report.throughput_per_second <= 200.6,
        "{}",
        report.throughput_per_second
    );
    assert!(
        report.throughput_per_second >= 150.0,
        "{}",
        report.throughput_per_second
    );
    assert_eq!(report.accepted, server.engine().stats().accepted);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_held_until_the_servers_header_timeout_closes_them() {
    // Proves slow clients really hold connections: with the default 10 s header timeout all
    // are still open after a short load, and the load itself is served meanwhile; with a
    // 100 ms header timeout the server closes every one of them before a 0.5 s load ends.
    for (header_timeout_ms, expected_held) in [(10_000, 8), (100, 0)] {
        let mut server_config = ServerConfig::production();
        server_config.front_door.header_timeout_ms = header_timeout_ms;
        let server = ServerHandle::spawn(server_config).await.unwrap();
        for kind in [SlowKind::Idle, SlowKind::Trickle] {
            let mut config = timed_config(&server.url(), 2, Duration::from_millis(500));
            config.slow_clients = 8;
            config.slow_kind = kind;
            let report = run(config).await.unwrap();
            assert_eq!(
                report.slow_clients_held, expected_held,
                "{kind}, {header_timeout_ms} ms"
            );
            assert!(report.accepted > 0);
            assert_eq!(report.errors, 0);
        }
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idle_slow_client_freezes_the_stage_1_blocking_server() {
    // Proves the seed's stage-1 experiment with the generator's own slow clients: with one
    // idle connection held, the blocking one-connection-at-a-time server answers nothing, so
    // every load request times out (an error, never a success) and the slow client is still
    // held at the end; without it, the same load is answered.
    let server = floodgate_server::BlockingServerHandle::spawn().unwrap();
    let url = format!("http://{}", server.addr());
    let mut frozen = closed_config(&url, 1, 2);
    frozen.slow_clients = 1;
    frozen.request_timeout = Duration::from_millis(300);
    let report = run(frozen).await.unwrap();
    assert_eq!(
        (report.errors, report.errors_by_kind.timeout),
        (2, 2),
        "{report:#?}"
    );
    assert_eq!(report.slow_clients_held, 1);
    let answered = run(closed_config(&url, 1, 2)).await.unwrap();
    assert_eq!(answered.errors, 0, "{answered:#?}");
    assert_eq!(answered.sent, 2);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_with_ids_are_counted_per_event_and_match_the_ledger() {
    // Proves --batch --ids against the real server: 50 NDJSON batches of 100 events (5% of
    // lines malformed) are 50 requests answered 200 whose events settle one by one (the
    // malformed lines rejected, the rest accepted) exactly as the server counted them, and
    // the acknowledged sum is the ledger's total.
    let server = ServerHandle::spawn(ServerConfig::production())
        .await
        .unwrap();
    let mut config = closed_config(&server.url(), 4, 50);
    config.batch_events = Some(100);
    config.ids = true;
    config.invalid_ratio = 0.05;
    config.amount_min = -100;
    config.amount_max = 100;
    let report = run(config).await.unwrap();
    assert_eq!(report.sent, 50, "{report:#?}");
    assert_eq!(report.status_counts.get("200"), Some(&50));
    assert_eq!(report.events_sent, 5_000);
    assert_eq!(report.events_rejected, report.invalid_bodies_sent);
    assert!(report.events_rejected > 0);
    assert_eq!(report.events_accepted + report.events_rejected, 5_000);
    assert_eq!(report.events_accepted, server.engine().stats().accepted);
    let engine = server.engine().clone();
    server.stop().await.unwrap();
    assert_eq!(engine.stats().balance_total, report.accepted_amount_sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_resent_until_every_event_is_taken() {
    // Proves --retry with batches: stage 5's queue of 100 and one slow worker refuses most
    // batches of 50 (503, nothing admitted); each is resent with the same ids until taken,
    // so every event ends accepted exactly once, the resends equal the 503s, and the ledger
    // holds exactly the acknowledged sum.
    let mut server_config = ServerConfig::for_stage(5).unwrap();
    server_config.engine.time_scale = 0.001; // 500 ms of work becomes 0.5 ms
    let server = ServerHandle::spawn(server_config).await.unwrap();
    let mut config = closed_config(&server.url(), 8, 20);
    config.batch_events = Some(50);
    config.ids = true;
    config.retry = Some(floodgate_load::RetryPolicy::default());
    let report = run(config).await.unwrap();
    assert_eq!(report.events_accepted, 1_000, "{report:#?}");
    assert!(report.retries > 0);
    assert_eq!(report.status_counts.get("503"), Some(&report.retries));
    assert_eq!(report.sent, 20 + report.retries);
    let engine = server.engine().clone();
    server.stop().await.unwrap();
    assert_eq!(engine.stats().balance_total, report.accepted_amount_sum);
    assert_eq!(engine.stats().accepted, 1_000);
}
