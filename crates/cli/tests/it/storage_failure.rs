//! A real storage failure in the real binary: the kernel refuses a log write.
//!
//! The fault is honest: the process runs with a file-size limit (`ulimit -f`, SIGXFSZ ignored),
//! so once the log segment reaches it the kernel answers the writer's `write` with EFBIG, on the
//! same code path a failing disk takes (a failed write and a failed sync latch the log alike; a
//! failed `fdatasync` itself cannot be provoked in an unprivileged process without a faulty
//! block device, and is proven on the storage double in `crates/store` and `crates/core`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::support::{
    ANSWER_WAIT, balance, client, collect_log, event_json, launch, launch_with_file_size_limit,
    signal, wait_exit,
};

/// Concurrent clients, and the users they spread their events over.
const CLIENTS: usize = 6;
/// Shell blocks (512 bytes for dash, 1 KiB for bash) a file may hold: a few hundred events.
const FILE_SIZE_LIMIT_BLOCKS: u32 = 8;
/// How long the clients keep posting if the log never fails (then the test fails).
const LOAD_LIMIT: Duration = Duration::from_secs(20);

/// What one client was answered.
#[derive(Debug, Default)]
struct Answers {
    /// Per user, the amounts answered 202.
    acknowledged: BTreeMap<String, i64>,
    /// Per user, amounts sent that got no answer (the connection failed mid-request).
    unanswered: BTreeMap<String, i64>,
    /// 503 `storage_failed` answers.
    storage_failed: usize,
    /// 202s this client got after it had been answered `storage_failed`.
    acknowledged_after_refusal: usize,
    /// Any other answer: status and body.
    unexpected: Vec<String>,
}

/// Posts events until the server stops answering; raises `refused` at the first
/// `storage_failed`.
async fn client_loop(addr: String, index: usize, refused: Arc<(AtomicBool, Notify)>) -> Answers {
    let http = client();
    let mut answers = Answers::default();
    let started = tokio::time::Instant::now();
    let user = format!("user-{index}");
    for amount in (1..=3).cycle() {
        if started.elapsed() > LOAD_LIMIT {
            break;
        }
        let sent = http
            .post(format!("http://{addr}/events"))
            .body(event_json(&user, amount))
            .send()
            .await;
        let Ok(response) = sent else {
            *answers.unanswered.entry(user.clone()).or_insert(0) += amount;
            break;
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match status {
            202 if answers.storage_failed > 0 => answers.acknowledged_after_refusal += 1,
            202 => *answers.acknowledged.entry(user.clone()).or_insert(0) += amount,
            503 if body.contains("\"storage_failed\"") => {
                answers.storage_failed += 1;
                refused.0.store(true, Ordering::SeqCst);
                refused.1.notify_waiters();
            }
            _ => {
                answers.unexpected.push(format!("{status} {body}"));
                break;
            }
        }
    }
    answers
}

/// Sends `GET /readyz` on a connection opened before the failure, its head completed only
/// after it: the answer a load balancer's probe gets while the server stops.
async fn readyz_after(addr: &str, refused: &(AtomicBool, Notify)) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: floodgate\r\n")
        .await
        .expect("head");
    tokio::time::timeout(LOAD_LIMIT, async {
        while !refused.0.load(Ordering::SeqCst) {
            let notified = refused.1.notified();
            if refused.0.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
    })
    .await
    .expect("a storage_failed answer in time");
    stream
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .expect("end of head");
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("readyz answered in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_refuses_stops_non_zero_and_loses_nothing_acknowledged() {
    // Proves, on the real binary whose log write the kernel refuses: every request in flight is
    // answered (202 before the failure, 503 storage_failed from it on, never a 202 after a
    // refusal), /readyz answers 503 storage_failed, the process exits non-zero, and a restart
    // on the same directory recovers every event answered 202 (the torn record is cut).
    let directory = tempfile::tempdir().expect("temp dir");
    let data_dir = directory.path().display().to_string();
    let args = [
        "--data-dir",
        data_dir.as_str(),
        "--log-segment-bytes",
        "1048576",
    ];
    let launched = launch_with_file_size_limit(FILE_SIZE_LIMIT_BLOCKS, &args, &[]).await;
    let log = collect_log(launched.log);
    let mut child = launched.child;
    let refused = Arc::new((AtomicBool::new(false), Notify::new()));
    let readyz = tokio::spawn({
        let (addr, refused) = (launched.addr.clone(), Arc::clone(&refused));
        async move { readyz_after(&addr, &refused).await }
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            tokio::spawn(client_loop(
                launched.addr.clone(),
                index,
                Arc::clone(&refused),
            ))
        })
        .collect();
    let mut all = Vec::new();
    for handle in clients {
        all.push(handle.await.expect("client"));
    }
    let readyz = readyz.await.expect("readyz probe");
    let status = wait_exit(&mut child).await;
    let lines = tokio::time::timeout(ANSWER_WAIT, log)
        .await
        .expect("log")
        .expect("lines");

    let storage_failed: usize = all.iter().map(|answers| answers.storage_failed).sum();
    let acknowledged: i64 = all
        .iter()
        .flat_map(|answers| answers.acknowledged.values())
        .sum();
    assert!(
        acknowledged > 0,
        "nothing was acknowledged before the failure"
    );
    assert!(storage_failed > 0, "no 503 storage_failed: {lines:#?}");
    for answers in &all {
        assert!(answers.unexpected.is_empty(), "{:?}", answers.unexpected);
        assert_eq!(
            answers.acknowledged_after_refusal, 0,
            "a 202 after a refusal"
        );
    }
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("storage_failed"),
        "{readyz}"
    );
    assert!(!status.success(), "exit {status:?} after a storage failure");
    assert!(
        lines.iter().any(|line| line.contains("storage failed")),
        "{lines:#?}"
    );

    let launched = launch(&args, &[]).await;
    for (index, answers) in all.iter().enumerate() {
        let user = format!("user-{index}");
        let expected = answers.acknowledged.get(&user).copied().unwrap_or(0);
        let unanswered = answers.unanswered.get(&user).copied().unwrap_or(0);
        let seen = balance(&launched.addr, &user).await.unwrap_or(0);
        assert!(
            (expected..=expected + unanswered).contains(&seen),
            "{user}: balance {seen}, acknowledged {expected}, unanswered {unanswered}"
        );
    }
    let mut child = launched.child;
    drop(collect_log(launched.log));
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
}
