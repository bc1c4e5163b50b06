//! Graceful and forced stops of a real process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{client, event_json, signal, start, summary_field, wait_with_stdout};

// Proves the graceful shutdown on a real process: under load from 16 clients, SIGTERM stops it
// gracefully, it exits 0, and the printed summary's applied count equals the 202s clients got.
// Also proves env configuration reaches the process (FLOODGATE_WORKERS, a small queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_summary_matches_202s() {
    let (child, addr) = start(
        &["--work-ms", "1"],
        &[
            ("FLOODGATE_WORKERS", "1"),
            ("FLOODGATE_QUEUE_CAPACITY", "64"),
        ],
    )
    .await;
    let url = format!("http://{addr}/events");
    let accepted = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let http = client();
    let mut tasks = Vec::new();
    for index in 0..16 {
        let (http, url, accepted, running) = (
            http.clone(),
            url.clone(),
            Arc::clone(&accepted),
            Arc::clone(&running),
        );
        tasks.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                match http
                    .post(&url)
                    .body(event_json(&format!("u{index}"), 1))
                    .send()
                    .await
                {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&child, "TERM");
    let (status, stdout) = wait_with_stdout(child).await;
    running.store(false, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client");
    }
    assert!(status.success(), "exit status {status:?}");
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(accepted > 0);
    assert_eq!(summary_field(&stdout, "applied"), accepted, "{stdout}");
    assert_eq!(summary_field(&stdout, "accepted"), accepted, "{stdout}");
}

// Proves a second signal exits at once: with a slow drain pending (stage 5, 500 ms per
// event), SIGTERM then SIGINT ends the process with the forced exit code 130, not a drain's 0.
#[tokio::test]
async fn second_signal_exits_at_once() {
    let (child, addr) = start(&["--stage", "5"], &[]).await;
    let http = client();
    for amount in 0..10 {
        let response = http
            .post(format!("http://{addr}/events"))
            .body(event_json("slow", amount))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child, "INT");
    let (status, stdout) = wait_with_stdout(child).await;
    assert_eq!(status.code(), Some(130), "{stdout}");
    assert!(
        !stdout.contains("final summary"),
        "it drained instead: {stdout}"
    );
}
