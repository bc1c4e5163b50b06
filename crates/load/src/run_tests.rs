//! End-to-end tests of [`crate::run`] against the deterministic test server.
//!
//! Lesson: a load generator's numbers are only worth what they agree with; each test compares
//! the report with what the server itself counted. Invariant under test: every request sent
//! has one outcome, and the outcomes match the server's answers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::test_server::{Behaviour, TestServer};
use crate::testing::{assert_outcomes_add_up, closed_config, open_config, timed_config};
use crate::{LoadConfig, SlowKind, run};

#[tokio::test]
async fn closed_loop_counts_match_what_the_server_saw() {
    // Proves the closed loop sends exactly N requests and that accepted, rejected, invalid
    // and the accepted amount sum equal the server's own tallies (even amount → 202, odd →
    // 503, malformed → 400), with malformed bodies mixed in at --invalid-ratio.
    let server = TestServer::spawn(Behaviour::Deterministic).await;
    let mut config = closed_config(&server.url(), 8, 600);
    config.invalid_ratio = 0.2;
    config.amount_min = -40;
    config.amount_max = 40;
    let report = run(config).await.unwrap();
    let seen = &server.seen;
    assert_eq!(report.sent, 600);
    assert_outcomes_add_up(&report);
    assert_eq!(report.errors, 0);
    assert_eq!(report.accepted, seen.accepted.load(Ordering::SeqCst));
    assert_eq!(report.rejected, seen.rejected.load(Ordering::SeqCst));
    assert_eq!(report.invalid, seen.invalid.load(Ordering::SeqCst));
    assert_eq!(report.invalid, report.invalid_bodies_sent);
    assert!(report.invalid > 60 && report.accepted > 100 && report.rejected > 100);
    assert_eq!(
        report.accepted_amount_sum,
        *seen.accepted_amount_sum.lock().unwrap()
    );
    assert_eq!(report.status_counts["202"], report.accepted);
    assert_eq!(report.latency_ms.accepted.count, report.accepted);
    assert_eq!(report.latency_ms.all.count, report.sent);
    assert!(report.connections_opened <= 8);
    server.stop().await;
}

#[tokio::test]
async fn closed_loop_by_duration_stops_after_the_deadline() {
    // Proves --duration ends the run: requests are sent, counts add up, and the run lasts at
    // least the duration (requests only stop being started once the deadline passed).
    let server = TestServer::spawn(Behaviour::Deterministic).await;
    let config = timed_config(&server.url(), 4, Duration::from_millis(300));
    let report = run(config).await.unwrap();
    assert!(report.sent > 0);
    assert_outcomes_add_up(&report);
    assert!(
        report.duration_seconds >= 0.3,
        "{}",
        report.duration_seconds
    );
    server.stop().await;
}

#[tokio::test]
async fn open_loop_sends_the_schedule_and_measures_from_the_intended_start() {
    // Proves the open loop sends every scheduled request (200/s for 1 s = 200), never ahead
    // of schedule (the last one is due at 0.995 s), and that latency includes the server's
    // 20 ms delay (it is measured from the intended start, so it cannot be smaller).
    let server = TestServer::spawn(Behaviour::Delay(Duration::from_millis(20))).await;
    let config = open_config(&server.url(), 200.0, Duration::from_secs(1), 1000);
    let report = run(config).await.unwrap();
    assert_eq!(report.scheduled, Some(200));
    assert_eq!(report.sent + report.dropped, 200);
    assert_eq!(report.dropped, 0);
    assert_outcomes_add_up(&report);
    assert!(
        report.duration_seconds >= 0.995,
        "{}",
        report.duration_seconds
    );
    assert!(
        report.latency_ms.all.p50 >= 20.0,
        "{:?}",
        report.latency_ms.all
    );
    assert_eq!(report.offered_per_second, Some(200.0));
    server.stop().await;
}

#[tokio::test]
async fn precise_pacing_sends_the_same_schedule() {
    // Proves --precise-pacing changes only how the pacer waits: the whole schedule (100/s for
    // 0.3 s = 30 requests) is sent, never ahead of it (the last is due at 0.29 s), and the
    // report says how it was paced.
    let server = TestServer::spawn(Behaviour::Deterministic).await;
    let mut config = open_config(&server.url(), 100.0, Duration::from_millis(300), 100);
    config.precise_pacing = true;
    let report = run(config).await.unwrap();
    assert_eq!((report.sent, report.dropped), (30, 0));
    assert!(
        report.duration_seconds >= 0.29,
        "{}",
        report.duration_seconds
    );
    assert!(report.precise_pacing);
    assert_outcomes_add_up(&report);
    server.stop().await;
}

#[tokio::test]
async fn open_loop_drops_requests_when_the_in_flight_cap_is_reached() {
    // Proves the cap: with 2 requests in flight at most and a server taking >= 200 ms, at
    // most ~8 of the 50 requests due in 0.5 s can be sent; the rest are dropped and counted,
    // not silently delayed.
    let server = TestServer::spawn(Behaviour::Delay(Duration::from_millis(200))).await;
    let config = open_config(&server.url(), 100.0, Duration::from_millis(500), 2);
    let report = run(config).await.unwrap();
    assert_eq!(report.sent + report.dropped, 50);
    assert!(report.dropped >= 30, "{report:?}");
    assert_outcomes_add_up(&report);
    server.stop().await;
}

#[tokio::test]
async fn slow_clients_are_held_open_during_the_load() {
    // Proves --slow opens real connections that the server sees and that stay open until the
    // load ends (this server has no header timeout), for both idle and trickling clients: the
    // server counts at least 6 open connections beyond the 2 load connections mid-run, and
    // the report says all 6 were still held at the end.
    for kind in [SlowKind::Idle, SlowKind::Trickle] {
        let server = TestServer::spawn(Behaviour::Delay(Duration::from_millis(5))).await;
        let mut config = timed_config(&server.url(), 2, Duration::from_secs(3600));
        config.slow_clients = 6;
        config.slow_kind = kind;
        let seen = std::sync::Arc::clone(&server.seen);
        let open_mid_run = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sample = std::sync::Arc::clone(&open_mid_run);
        let stop = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sample.store(
                seen.open_connections.load(Ordering::SeqCst),
                Ordering::SeqCst,
            );
        };
        let report = crate::run_until(config, stop).await.unwrap();
        assert!(open_mid_run.load(Ordering::SeqCst) >= 6 + 2, "{kind}");
        assert_eq!(report.slow_clients_held, 6, "{kind}");
        assert!(report.sent > 0);
        server.stop().await;
    }
}

#[tokio::test]
async fn slow_clients_closed_by_the_server_are_not_counted_as_held() {
    // Proves the held count is real: against a listener that accepts and immediately closes
    // every connection, no slow client is reported held.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let mut config = closed_config(&format!("http://{addr}"), 1, 3);
    config.slow_clients = 4;
    config.request_timeout = Duration::from_secs(2);
    let report = run(config).await.unwrap();
    assert_eq!(report.slow_clients_held, 0);
    assert_eq!(report.errors, 3);
    assert_outcomes_add_up(&report);
    closer.abort();
}

#[tokio::test]
async fn lost_connections_are_replaced_and_counted() {
    // Proves reconnects: a server that closes after every answer costs a new connection per
    // request, counted as reconnects, without any request counted as an error.
    let server = TestServer::spawn(Behaviour::CloseEach).await;
    let report = run(closed_config(&server.url(), 2, 40)).await.unwrap();
    assert_eq!(report.sent, 40);
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.reconnects >= 30, "{report:?}");
    assert_eq!(report.connections_opened, report.reconnects + 2);
    server.stop().await;
}

#[tokio::test]
async fn refused_connections_timeouts_and_5xx_are_errors_by_kind() {
    // Proves the error classes: a closed port gives connect errors, a server that never
    // answers gives timeouts, a 500 gives status errors; each request still has one outcome.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let report = run(closed_config(&closed_url, 1, 3)).await.unwrap();
    assert_eq!((report.errors, report.errors_by_kind.connect), (3, 3));

    let silent = TestServer::spawn(Behaviour::Delay(Duration::from_secs(3600))).await;
    let mut config = closed_config(&silent.url(), 2, 2);
    config.request_timeout = Duration::from_millis(100);
    let report = run(config).await.unwrap();
    assert_eq!((report.errors, report.errors_by_kind.timeout), (2, 2));
    silent.stop().await;

    let failing = TestServer::spawn(Behaviour::Status(500)).await;
    let report = run(closed_config(&failing.url(), 1, 5)).await.unwrap();
    assert_eq!((report.errors, report.errors_by_kind.status), (5, 5));
    assert_eq!(report.status_counts["500"], 5);
    failing.stop().await;
}

#[tokio::test]
async fn stop_ends_a_long_run_early_with_a_report() {
    // Proves run_until: a one-hour run asked to stop ends promptly, with what it did counted.
    let server = TestServer::spawn(Behaviour::Deterministic).await;
    let config = timed_config(&server.url(), 2, Duration::from_secs(3600));
    let stop = tokio::time::sleep(Duration::from_millis(200));
    let report = crate::run_until(config, stop).await.unwrap();
    assert!(report.sent > 0);
    assert_outcomes_add_up(&report);
    assert!(report.duration_seconds < 3600.0);
    server.stop().await;
}

#[test]
fn run_futures_are_send_so_callers_can_spawn_them() {
    // Proves (at compile time) that `run` and `run_until` can be passed to `tokio::spawn`, as
    // the lab does; a non-Send value held across an await would break this.
    fn assert_send<T: Send>(_: &T) {}
    let config = LoadConfig::new("http://127.0.0.1:1");
    let running = run(config.clone());
    assert_send(&running);
    let stoppable = crate::run_until(config, async {});
    assert_send(&stoppable);
}

#[tokio::test]
async fn open_loop_latency_from_the_intended_start_bounds_the_service_time() {
    // Proves both open-loop latencies are kept: every request's latency from its intended
    // start is at least its latency from the actual send, so each percentile of
    // `latency_ms.all` is >= the same percentile of `service_latency_ms` (both histograms map
    // values to buckets monotonically); the service time includes the server's 5 ms delay.
    let server = TestServer::spawn(Behaviour::Delay(Duration::from_millis(5))).await;
    let config = open_config(&server.url(), 200.0, Duration::from_millis(500), 1000);
    let report = run(config).await.unwrap();
    let (intended, service) = (&report.latency_ms.all, &report.service_latency_ms);
    assert_eq!(service.count, report.sent);
    assert!(service.p50 >= 5.0, "{service:?}");
    assert!(
        intended.p50 >= service.p50 && intended.p99 >= service.p99,
        "{intended:?} {service:?}"
    );
    assert!(intended.max >= service.max);
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_run_stops_its_load_threads() {
    // Proves cancellation is clean: a one-hour run whose future is dropped (here by a
    // timeout) stops sending soon after; the server sees its request count stop growing.
    let server = TestServer::spawn(Behaviour::Deterministic).await;
    let config = timed_config(&server.url(), 2, Duration::from_secs(3600));
    let cancelled = tokio::time::timeout(Duration::from_millis(100), run(config)).await;
    assert!(cancelled.is_err());
    let seen = || {
        let seen = &server.seen;
        seen.accepted.load(Ordering::SeqCst) + seen.rejected.load(Ordering::SeqCst)
    };
    // Requests in flight at the drop finish; after a pause, nothing new arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = seen();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(), settled);
    server.stop().await;
}

#[tokio::test]
async fn retries_with_ids_settle_every_event_exactly_once() {
    // Proves --retry --ids against a server that refuses every fifth request (503) and loses
    // the answer of another fifth after applying it: every event ends acknowledged (none
    // unanswered), the answers lost come back as duplicates, each refused or lost request is
    // resent once, and the acknowledged sum equals what the server applied.
    let server = TestServer::spawn(Behaviour::Flaky).await;
    let mut config = closed_config(&server.url(), 4, 300);
    config.ids = true;
    config.retry = Some(crate::RetryPolicy::default());
    let report = run(config).await.unwrap();
    let seen = &server.seen;
    assert_eq!(report.events_sent, 300, "{report:#?}");
    assert_eq!(report.events_unanswered + report.events_rejected, 0);
    assert_eq!(report.events_accepted + report.events_duplicate, 300);
    assert_eq!(
        report.events_duplicate,
        seen.replayed.load(Ordering::SeqCst)
    );
    assert!(report.events_duplicate > 0);
    let refused_or_cut = seen.rejected.load(Ordering::SeqCst) + seen.cut.load(Ordering::SeqCst);
    assert_eq!(report.retries, refused_or_cut);
    assert_eq!(report.sent, 300 + report.retries);
    assert_outcomes_add_up(&report);
    assert_eq!(
        report.accepted_amount_sum,
        *seen.accepted_amount_sum.lock().unwrap()
    );
    server.stop().await;
}

#[tokio::test]
async fn retries_without_ids_apply_lost_answers_twice() {
    // Proves why --retry needs --ids: against the same flaky server without ids, every
    // resend of a lost answer is applied again, so the server's sum exceeds the generator's
    // acknowledged sum; without --retry the lost answers stay unanswered instead.
    let server = TestServer::spawn(Behaviour::Flaky).await;
    let mut config = closed_config(&server.url(), 4, 300);
    config.retry = Some(crate::RetryPolicy::default());
    let report = run(config.clone()).await.unwrap();
    let applied = *server.seen.accepted_amount_sum.lock().unwrap();
    assert_eq!(report.events_duplicate, 0);
    assert_eq!(report.events_accepted, 300);
    assert!(
        applied > report.accepted_amount_sum,
        "{applied} vs {report:#?}"
    );
    server.stop().await;

    let server = TestServer::spawn(Behaviour::Flaky).await;
    config.url = server.url();
    config.retry = None;
    let report = run(config).await.unwrap();
    assert_eq!(report.retries, 0);
    assert_eq!(
        report.events_unanswered,
        server.seen.cut.load(Ordering::SeqCst)
    );
    assert_eq!(
        report.events_rejected,
        server.seen.rejected.load(Ordering::SeqCst)
    );
    assert!(report.events_unanswered > 0);
    server.stop().await;
}
