//! Starting the real binary, signalling it, and reading what it printed.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// How long a test waits for an answer, a log line or an exit before failing.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The log of a started server, read line by line from its stderr pipe.
pub type Log = Lines<BufReader<ChildStderr>>;

pub fn event_json(user: &str, amount: i64) -> String {
    serde_json::json!({"user": user, "amount": amount}).to_string()
}

/// A reqwest client that does not keep connections around between tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_WAIT)
        .build()
        .expect("client")
}

/// A `floodgate serve` process, its bound address, and its log not yet read past the
/// start-up line (the caller drains it, keeps it, or closes it).
pub struct Launched {
    pub child: Child,
    pub addr: String,
    pub log: Log,
}

/// Starts the server binary with `args` (and env vars, `RUST_LOG=info` unless given) and
/// returns it with the bound address, read from its start-up log line. Balances stay in
/// memory unless `args` name a `--data-dir` (a test never writes into the repository).
pub async fn launch(args: &[&str], env: &[(&str, &str)]) -> Launched {
    launch_command(Command::new(env!("CARGO_BIN_EXE_floodgate")), args, env).await
}

/// Like [`launch`], with the process's open-file limit lowered to `open_files` (by the shell's
/// `ulimit -n`, so no unsafe code sets it).
pub async fn launch_with_open_files(
    open_files: u32,
    args: &[&str],
    env: &[(&str, &str)],
) -> Launched {
    launch_in_shell(&format!("ulimit -n {open_files}"), args, env).await
}

/// Like [`launch`], with the process's largest file lowered to `blocks` shell blocks (`ulimit
/// -f`) and SIGXFSZ ignored, so a write past it fails with EFBIG instead of killing the
/// process: a real storage failure the kernel reports to the log writer.
pub async fn launch_with_file_size_limit(
    blocks: u32,
    args: &[&str],
    env: &[(&str, &str)],
) -> Launched {
    launch_in_shell(&format!("ulimit -f {blocks} && trap '' XFSZ"), args, env).await
}

/// Starts the binary through `sh -c '<setup> && exec binary ...'`: the limits and ignored
/// signals the shell sets are inherited by the binary (no unsafe code sets them).
async fn launch_in_shell(setup: &str, args: &[&str], env: &[(&str, &str)]) -> Launched {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!("{setup} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_floodgate"),
    ]);
    launch_command(command, args, env).await
}

/// Starts `command` (the binary, or a shell that execs it) with `serve` and `args`.
async fn launch_command(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Launched {
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("FLOODGATE_DURABILITY", durability_for(args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn floodgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut log = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(ANSWER_WAIT, async {
        while let Some(line) = log.next_line().await.expect("read log") {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("start-up log in time")
    .expect("an addr= in the start-up log");
    Launched { child, addr, log }
}

/// `memory` unless `args` name a data directory (then the production default, `fsync`).
pub fn durability_for(args: &[&str]) -> &'static str {
    if args.iter().any(|arg| arg.starts_with("--data-dir")) {
        "fsync"
    } else {
        "memory"
    }
}

/// Starts the server (see [`launch`]) and keeps draining its log so it never blocks on a
/// full pipe.
pub async fn start(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let Launched { child, addr, log } = launch(args, env).await;
    drop(collect_log(log));
    (child, addr)
}

/// Reads the rest of the log until the process closes it; the lines read.
pub fn collect_log(mut log: Log) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = log.next_line().await {
            lines.push(line);
        }
        lines
    })
}

/// Sends signal `name` (`TERM`, `HUP`, ...) to the child.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits for the exit (bounded) and returns the status with everything printed on stdout.
pub async fn wait_with_stdout(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    let status = tokio::time::timeout(ANSWER_WAIT, child.wait())
        .await
        .expect("the process exits in time")
        .expect("wait");
    let mut text = String::new();
    stdout.read_to_string(&mut text).await.expect("stdout");
    (status, text)
}

/// Waits for the exit (bounded); stdout is not read.
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    tokio::time::timeout(ANSWER_WAIT, child.wait())
        .await
        .expect("the process exits in time")
        .expect("wait")
}

/// `key=value` from the final summary line.
pub fn summary_field(stdout: &str, key: &str) -> u64 {
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

/// Posts `count` events of `amount` for `user` one after another; the number answered 202.
pub async fn post_events(addr: &str, user: &str, count: usize, amount: i64) -> usize {
    let http = client();
    let mut accepted = 0;
    for _ in 0..count {
        let response = http
            .post(format!("http://{addr}/events"))
            .body(event_json(user, amount))
            .send()
            .await
            .expect("send");
        if response.status() == reqwest::StatusCode::ACCEPTED {
            accepted += 1;
        }
    }
    accepted
}

/// The balance the server reports for `user` (`None` for 404).
pub async fn balance(addr: &str, user: &str) -> Option<i64> {
    let response = client()
        .get(format!("http://{addr}/balances/{user}"))
        .send()
        .await
        .expect("send");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    let body: serde_json::Value = response.json().await.expect("json");
    body["balance"].as_i64()
}

/// Polls `user`'s balance until it equals `expected` (events are applied after their 202) or
/// [`ANSWER_WAIT`] passes; the last balance seen.
pub async fn settled_balance(addr: &str, user: &str, expected: i64) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        let seen = balance(addr, user).await;
        if seen == Some(expected) || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /stats` of a server (`None` if it does not answer).
pub async fn stats(addr: &str) -> Option<serde_json::Value> {
    let response = client()
        .get(format!("http://{addr}/stats"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// A pseudo-random delay in `shortest`..`shortest` + 500 ms, different on every call: when a
/// kill test strikes.
pub fn random_delay(shortest: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    shortest + Duration::from_millis(u64::from(nanos % 500))
}
