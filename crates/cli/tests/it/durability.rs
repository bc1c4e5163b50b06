//! The real binary with a data directory, killed for real: every 202 survives SIGKILL and
//! SIGTERM, a torn last segment is cut with a warning, a corrupted older segment stops start-up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::{
    ANSWER_WAIT, balance, client, collect_log, event_json, launch, random_delay, signal, wait_exit,
};

/// Users the kill test spreads its events over.
const USERS: usize = 12;
/// Concurrent clients in the kill test.
const CLIENTS: usize = 8;

/// What the clients learned: per user, the sum of amounts answered 202 and the sum of amounts
/// sent without an answer (the kill cut them off: they may or may not be in the log).
#[derive(Debug, Default, Clone)]
struct Books {
    acknowledged: BTreeMap<String, i64>,
    unanswered: BTreeMap<String, i64>,
}

impl Books {
    fn merge(&mut self, other: &Books) {
        for (user, sum) in &other.acknowledged {
            *self.acknowledged.entry(user.clone()).or_insert(0) += sum;
        }
        for (user, sum) in &other.unanswered {
            *self.unanswered.entry(user.clone()).or_insert(0) += sum;
        }
    }
}

fn data_dir_args(directory: &Path) -> Vec<String> {
    vec![
        "--data-dir".to_owned(),
        directory.display().to_string(),
        "--log-segment-bytes".to_owned(),
        "4096".to_owned(),
    ]
}

/// Starts `floodgate serve` on `directory`; its address, process and log.
async fn serve(directory: &Path, extra: &[&str]) -> crate::support::Launched {
    let mut args = data_dir_args(directory);
    args.extend(extra.iter().map(|&arg| arg.to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    launch(&args, &[]).await
}

/// One client: posts events until the server stops answering; records what it was told.
async fn client_loop(addr: String, client_index: usize) -> Books {
    let http = client();
    let mut books = Books::default();
    for index in 0.. {
        let user = format!("user-{}", (client_index + index * CLIENTS) % USERS);
        let amount = i64::try_from(index % 5 + 1).expect("small");
        let sent = http
            .post(format!("http://{addr}/events"))
            .body(event_json(&user, amount))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                *books.acknowledged.entry(user).or_insert(0) += amount;
            }
            Ok(response) => panic!("unexpected answer {}", response.status()),
            Err(_) => {
                // Killed mid-request: the event may or may not have been logged.
                *books.unanswered.entry(user).or_insert(0) += amount;
                return books;
            }
        }
    }
    books
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    // Proves, on the real binary killed with SIGKILL mid-load four times, that after each
    // restart every user's balance is at least the sum of the amounts answered 202 and at most
    // that plus the amounts sent without an answer.
    let directory = tempfile::tempdir().expect("temp dir");
    let mut books = Books::default();
    for round in 0..4 {
        let launched = serve(directory.path(), &[]).await;
        check_balances(&launched.addr, &books, round).await;
        let addr = launched.addr.clone();
        let mut child = launched.child;
        drop(collect_log(launched.log));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|index| tokio::spawn(client_loop(addr.clone(), index)))
            .collect();
        let delay = random_delay(Duration::from_millis(150));
        tokio::time::sleep(delay).await;
        signal(&child, "KILL");
        wait_exit(&mut child).await;
        let mut round_books = Books::default();
        for handle in clients {
            round_books.merge(&handle.await.expect("client"));
        }
        let acknowledged: i64 = round_books.acknowledged.values().sum();
        assert!(
            acknowledged > 0,
            "round {round}: no event answered in {delay:?}"
        );
        books.merge(&round_books);
    }
    let launched = serve(directory.path(), &[]).await;
    check_balances(&launched.addr, &books, 4).await;
    let mut child = launched.child;
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
}

/// After a restart: acknowledged <= balance <= acknowledged + unanswered, per user.
async fn check_balances(addr: &str, books: &Books, round: usize) {
    for user in (0..USERS).map(|index| format!("user-{index}")) {
        let acknowledged = books.acknowledged.get(&user).copied().unwrap_or(0);
        let unanswered = books.unanswered.get(&user).copied().unwrap_or(0);
        let seen = balance(addr, &user).await.unwrap_or(0);
        assert!(
            (acknowledged..=acknowledged + unanswered).contains(&seen),
            "round {round}, {user}: balance {seen}, acknowledged {acknowledged}, unanswered {unanswered}"
        );
    }
}

/// Posts `amounts` for `user` one at a time (one event per log record); all must be 202.
async fn post_each(addr: &str, user: &str, amounts: impl Iterator<Item = i64>) {
    let http = client();
    for amount in amounts {
        let response = http
            .post(format!("http://{addr}/events"))
            .body(event_json(user, amount))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn sigterm_then_restart_keeps_every_balance_exactly() {
    // Proves a graceful stop (which writes a last snapshot) and a restart keep each balance
    // exactly, and that /stats reports the mode and the snapshot.
    let directory = tempfile::tempdir().expect("temp dir");
    let launched = serve(directory.path(), &[]).await;
    post_each(&launched.addr, "kept", 1..=40).await;
    post_each(&launched.addr, "other", [7, -3].into_iter()).await;
    let mut child = launched.child;
    drop(collect_log(launched.log));
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());

    let launched = serve(directory.path(), &[]).await;
    assert_eq!(balance(&launched.addr, "kept").await, Some(820));
    assert_eq!(balance(&launched.addr, "other").await, Some(4));
    let stats: serde_json::Value = client()
        .get(format!("http://{}/stats", launched.addr))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["durability"]["mode"], "fsync", "{stats}");
    assert_eq!(stats["durability"]["snapshot_position"], 42, "{stats}");
    let mut child = launched.child;
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
}

/// The segment files in `directory`, oldest first.
fn segments(directory: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    files.sort();
    files
}

/// Posts 1..=count for `user` on a fresh server in `directory`, then kills it with SIGKILL
/// (no last snapshot: the log alone holds the events).
async fn write_then_kill(directory: &Path, user: &str, count: i64) {
    let launched = serve(directory, &[]).await;
    post_each(&launched.addr, user, 1..=count).await;
    let mut child = launched.child;
    drop(collect_log(launched.log));
    signal(&child, "KILL");
    wait_exit(&mut child).await;
}

#[tokio::test]
async fn a_torn_last_segment_is_cut_with_a_warning() {
    // Proves that cutting bytes off the end of the last segment (a torn write) is recovered:
    // the server starts, logs what it cut, and keeps every record before the damaged one.
    let directory = tempfile::tempdir().expect("temp dir");
    write_then_kill(directory.path(), "torn", 30).await;
    let last = segments(directory.path()).pop().expect("a segment");
    let bytes = std::fs::read(&last).expect("read");
    std::fs::write(&last, &bytes[..bytes.len() - 3]).expect("truncate");

    let launched = serve(directory.path(), &[]).await;
    assert_eq!(
        balance(&launched.addr, "torn").await,
        Some(30 * 31 / 2 - 30)
    );
    let mut child = launched.child;
    let log = collect_log(launched.log);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
    let lines = tokio::time::timeout(ANSWER_WAIT, log)
        .await
        .expect("log")
        .expect("lines");
    let file_name = last
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("torn tail") && line.contains(&file_name)),
        "no warning naming {file_name}: {lines:#?}"
    );
}

#[tokio::test]
async fn a_corrupted_older_segment_stops_start_up() {
    // Proves that a flipped byte in an older segment (acknowledged events behind it) makes
    // start-up fail with an error naming the file and offset, instead of serving wrong balances.
    let directory = tempfile::tempdir().expect("temp dir");
    write_then_kill(directory.path(), "corrupt", 300).await;
    let files = segments(directory.path());
    assert!(files.len() > 1, "4 KiB segments must rotate: {files:?}");
    let mut bytes = std::fs::read(&files[0]).expect("read");
    bytes[100] ^= 0x5A;
    std::fs::write(&files[0], &bytes).expect("write");

    let output = tokio::time::timeout(
        ANSWER_WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(data_dir_args(directory.path()))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    assert!(!output.status.success(), "must refuse to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file_name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains(&file_name) && stderr.contains("offset"),
        "{stderr}"
    );
}
