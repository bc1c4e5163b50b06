//! Integration tests of the `floodgate` binary itself: a real `floodgate serve` process
//! receiving real signals (issue 5's shutdown claim can only be proven on a real process).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a test waits for an answer, a log line or an exit before failing.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

fn event_json(user: &str, amount: i64) -> String {
    serde_json::json!({"user": user, "amount": amount}).to_string()
}

/// A reqwest client that does not keep connections around between tests.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_WAIT)
        .build()
        .expect("client")
}

/// Starts the server binary with `args` (and env vars) and returns it with the bound address,
/// read from its start-up log line.
async fn start(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn floodgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(ANSWER_WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("start-up log in time")
    .expect("an addr= in the start-up log");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn wait_with_stdout(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    let status = tokio::time::timeout(ANSWER_WAIT, child.wait())
        .await
        .expect("the process exits in time")
        .expect("wait");
    let mut text = String::new();
    stdout.read_to_string(&mut text).await.expect("stdout");
    (status, text)
}

/// `key=value` from the final summary line.
fn summary_field(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find(|line| line.starts_with("final summary:"))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        })
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stdout:?}"))
}

// Proves issue 5's shutdown on a real process: under load from 16 clients, SIGTERM stops it
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
