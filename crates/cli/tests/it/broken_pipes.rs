//! A process whose stderr or stdout reader goes away must keep serving, drain and exit 0: a
//! failed log or summary write is never allowed to panic the writer.

use crate::support::{
    client, collect_log, launch, post_events, settled_balance, signal, summary_field, wait_exit,
    wait_with_stdout,
};

// Proves a dead log reader kills nothing: with stderr's read end closed and every event logged
// (RUST_LOG=debug, so the worker writes a line per event), all 20 events are answered 202 and
// applied, the lost lines are counted in /metrics, and SIGTERM drains them: exit 0 and a
// summary with applied=20.
#[tokio::test]
async fn closed_stderr_neither_kills_workers_nor_the_drain() {
    let launched = launch(
        &["--work-ms", "5"],
        &[("RUST_LOG", "debug"), ("FLOODGATE_WORKERS", "1")],
    )
    .await;
    drop(launched.log); // the log reader goes away: every later write to stderr fails
    let accepted = post_events(&launched.addr, "broken-log", 20, 1).await;
    assert_eq!(accepted, 20, "every event answered 202");
    let metrics = client()
        .get(format!("http://{}/metrics", launched.addr))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("metrics");
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("floodgate_log_write_errors_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no log write counter in {metrics}"));
    assert!(dropped > 0, "the lost log lines are counted");
    signal(&launched.child, "TERM");
    let (status, stdout) = wait_with_stdout(launched.child).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert_eq!(summary_field(&stdout, "accepted"), 20, "{stdout}");
    assert_eq!(summary_field(&stdout, "applied"), 20, "{stdout}");
}

// Proves a dead stdout reader does not turn the final summary into a crash: the events are
// applied (read back before stopping), SIGTERM exits 0, and the log still says what was applied.
#[tokio::test]
async fn closed_stdout_does_not_crash_the_summary() {
    let mut launched = launch(&[], &[]).await;
    drop(launched.child.stdout.take()); // the summary's reader goes away
    let log = collect_log(launched.log);
    assert_eq!(post_events(&launched.addr, "broken-out", 5, 2).await, 5);
    assert_eq!(
        settled_balance(&launched.addr, "broken-out", 10).await,
        Some(10)
    );
    signal(&launched.child, "TERM");
    let status = wait_exit(&mut launched.child).await;
    let log = log.await.expect("log reader").join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("applied=5"), "{log}");
}
