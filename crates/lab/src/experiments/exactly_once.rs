//! Beyond the seed: exactly once through kill -9.
//!
//! Lesson (issue 13): durability makes a 202 keep its promise, but a client whose request got
//! no answer cannot know whether it was applied, so it must send again, and without an
//! identity the resend is applied again. Here the real `floodgate serve` (fsync) is SIGKILLed
//! several times under a closed-loop load whose clients resend every unanswered request; with
//! event ids the balances end exactly equal to the acknowledged events, without them they
//! drift by every event whose answer was lost after it was logged.
//!
//! Invariant: both runs (ids on, ids off) use the same load, kill schedule and server flags;
//! every event carries amount 1, so the server's total balance is the count of events applied,
//! compared with the events the generator saw acknowledged (each counted once). Every process
//! started is killed or stopped before the experiment returns.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use floodgate_load::{LoadConfig, Mode, Report, RetryPolicy};
use serde::Serialize;
use tokio::process::{Child, Command};

use super::{EXACTLY_ONCE, Findings, LabError, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec};
use crate::probe::{Answer, exchange};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// How long a started server may take to answer `/healthz`.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long the last server may take to apply what it acknowledged.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of one request to `/healthz` or `/stats`.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// A load request unanswered for this long is resent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Room left after the kill schedule before the load stops starting requests: a restart
/// (start-up plus log replay) takes well under it.
const RESTART_ALLOWANCE_MS: u64 = 600;

/// Parameters of the exactly-once experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// The `floodgate` binary to run as the server; `None`: this very program if it is
    /// `floodgate`, else `$FLOODGATE_BIN`.
    pub binary: Option<PathBuf>,
    /// Load connections (closed loop).
    pub connections: usize,
    /// Distinct users.
    pub users: u64,
    /// SIGKILLs per run.
    pub kills: usize,
    /// Time between a (re)start and the next kill.
    pub kill_every_ms: u64,
}

impl Params {
    /// 64 connections, 6 kills 500 ms apart.
    pub fn full() -> Self {
        Self {
            quick: false,
            binary: None,
            connections: 64,
            users: 1_000,
            kills: 6,
            kill_every_ms: 500,
        }
    }

    /// 16 connections, 3 kills 250 ms apart.
    pub fn quick() -> Self {
        Self {
            quick: true,
            connections: 16,
            users: 100,
            kills: 3,
            kill_every_ms: 250,
            ..Self::full()
        }
    }
}

/// One run: what the generator saw and what the server applied.
#[derive(Debug, Clone)]
struct Run {
    ids: bool,
    kills: usize,
    report: Report,
    applied: i128,
}

impl Run {
    fn acknowledged(&self) -> i128 {
        i128::from(self.report.events_accepted + self.report.events_duplicate)
    }

    /// Events applied more often than acknowledged (never negative: see `lost`).
    fn double_counted(&self) -> i128 {
        (self.applied - self.acknowledged()).max(0)
    }

    /// Acknowledged events missing from the balances.
    fn lost(&self) -> i128 {
        (self.acknowledged() - self.applied).max(0)
    }
}

/// Runs the experiment: the same load and kills with ids, then without.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let binary = floodgate_binary(params.binary.as_deref())?;
    let with_ids = run_once(&binary, params, true).await?;
    let without_ids = run_once(&binary, params, false).await?;
    let findings = findings(params, &with_ids, &without_ids);
    Ok(finish(
        &EXACTLY_ONCE,
        params.quick,
        params,
        started,
        findings,
    ))
}

/// The server binary: given, `$FLOODGATE_BIN`, or this program when it is `floodgate`.
fn floodgate_binary(given: Option<&Path>) -> Result<PathBuf, LabError> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("FLOODGATE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let program = std::env::current_exe()?;
    if program.file_stem().is_some_and(|stem| stem == "floodgate") {
        Ok(program)
    } else {
        Err(LabError::Unavailable(
            "the floodgate binary: run `floodgate lab exactly-once` or set FLOODGATE_BIN",
        ))
    }
}

/// One run on a fresh data directory: load with resends, kills on schedule, then the count.
async fn run_once(binary: &Path, params: &Params, ids: bool) -> Result<Run, LabError> {
    let directory = tempfile_dir()?;
    let port = free_port()?;
    let mut server = start_server(binary, &directory, port).await?;
    let load = tokio::spawn(floodgate_load::run(load_config(params, port, ids)));
    let mut kills = 0;
    for _ in 0..params.kills {
        tokio::time::sleep(Duration::from_millis(params.kill_every_ms)).await;
        if load.is_finished() {
            break;
        }
        kill(&mut server).await?;
        kills += 1;
        server = start_server(binary, &directory, port).await?;
    }
    let report = match load.await {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => return Err(LabError::Load(error.to_string())),
        Err(error) => return Err(LabError::Load(error.to_string())),
    };
    let applied = settled_total(port).await;
    stop(&mut server).await?;
    let _ = std::fs::remove_dir_all(&directory);
    Ok(Run {
        ids,
        kills,
        report,
        applied: applied?,
    })
}

/// The load: a closed loop resending every unanswered or refused request (with or without
/// ids), all amounts 1, long enough for the whole kill schedule.
fn load_config(params: &Params, port: u16, ids: bool) -> LoadConfig {
    let mut config = LoadConfig::new(format!("http://127.0.0.1:{port}"));
    let schedule_ms = params.kills as u64 * (params.kill_every_ms + RESTART_ALLOWANCE_MS);
    config.mode = Mode::Closed {
        concurrency: params.connections,
        requests: None,
        duration: Some(Duration::from_millis(schedule_ms + params.kill_every_ms)),
    };
    config.users = params.users;
    config.amount_min = 1;
    config.amount_max = 1;
    config.ids = ids;
    config.retry = Some(RetryPolicy::default());
    config.request_timeout = REQUEST_TIMEOUT;
    config.threads = 1;
    config
}

/// A fresh directory under the system's temporary folder.
fn tempfile_dir() -> Result<PathBuf, LabError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let path = std::env::temp_dir().join(format!(
        "floodgate-lab-exactly-once-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// A port nothing listens on right now (the server restarts on it after each kill, so the
/// load's resends find it again).
fn free_port() -> Result<u16, LabError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `floodgate serve` (fsync) on `directory` and `port`; returns once it answers.
async fn start_server(binary: &Path, directory: &Path, port: u16) -> Result<Child, LabError> {
    let mut child = Command::new(binary)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(directory)
        .args(["--durability", "fsync"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if get(port, "/healthz")
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            return Ok(child);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(LabError::Server(format!(
        "{} serve on port {port} did not start",
        binary.display()
    )))
}

/// SIGKILL, then wait for the exit.
async fn kill(child: &mut Child) -> Result<(), LabError> {
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

/// SIGTERM (a graceful stop), then wait for the exit; SIGKILL if it does not come.
async fn stop(child: &mut Child) -> Result<(), LabError> {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(START_DEADLINE, child.wait())
        .await
        .is_err()
    {
        kill(child).await?;
    }
    Ok(())
}

/// `GET path` on the server: status and body, or `None` when it does not answer.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    match exchange(addr, request.as_bytes(), PROBE_DEADLINE).await {
        Ok(Answer::Response { status, body, .. }) => Some((status, body)),
        _ => None,
    }
}

/// The server's total balance once every event it acknowledged is applied (all amounts are
/// 1: the number of events applied).
async fn settled_total(port: u16) -> Result<i128, LabError> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/stats").await
            && let Ok(stats) = serde_json::from_str::<serde_json::Value>(&body)
        {
            let settled = stats["queue_depth"] == 0
                && stats["applied"].as_u64() >= stats["accepted"].as_u64();
            if let (true, Some(total)) = (settled, stats["balance_total"].as_i64()) {
                return Ok(i128::from(total));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(LabError::Server(
        "the last server did not settle its balances".to_owned(),
    ))
}

fn label(run: &Run) -> &'static str {
    if run.ids { "with ids" } else { "without ids" }
}

fn table(runs: [&Run; 2]) -> Table {
    let mut table = Table::new([
        "clients",
        "kills",
        "requests (resends)",
        "events sent",
        "acknowledged (as duplicate)",
        "unanswered",
        "applied",
        "double-counted",
        "lost",
    ]);
    for run in runs {
        let report = &run.report;
        table.push([
            label(run).to_owned(),
            run.kills.to_string(),
            format!("{} ({})", report.sent, report.retries),
            report.events_sent.to_string(),
            format!("{} ({})", run.acknowledged(), report.events_duplicate),
            report.events_unanswered.to_string(),
            run.applied.to_string(),
            run.double_counted().to_string(),
            run.lost().to_string(),
        ]);
    }
    table
}

fn checks(params: &Params, with_ids: &Run, without_ids: &Run) -> Vec<Check> {
    vec![
        Check::new(
            "with ids: applied − acknowledged (events)",
            (with_ids.applied - with_ids.acknowledged()) as f64,
            Expectation::Between { min: 0.0, max: 0.0 },
        ),
        Check::new(
            "with ids: events left unanswered",
            with_ids.report.events_unanswered as f64,
            Expectation::AtMost { max: 0.0 },
        ),
        Check::flag(
            "both runs: every planned kill happened and requests were resent",
            [with_ids, without_ids]
                .iter()
                .all(|run| run.kills == params.kills && run.report.retries > 0),
        ),
        Check::new(
            "without ids: events double-counted",
            without_ids.double_counted() as f64,
            Expectation::AtLeast { min: 1.0 },
        ),
        Check::new(
            "without ids: acknowledged events lost",
            without_ids.lost() as f64,
            Expectation::AtMost { max: 0.0 },
        ),
    ]
}

fn findings(params: &Params, with_ids: &Run, without_ids: &Run) -> Findings {
    Findings {
        measured: format!(
            "{} kills -9 each: with ids {} acknowledged = {} applied ({} answered as \
             duplicates); without ids {} applied for {} acknowledged ({} double-counted)",
            params.kills,
            with_ids.acknowledged(),
            with_ids.applied,
            with_ids.report.events_duplicate,
            without_ids.applied,
            without_ids.acknowledged(),
            without_ids.double_counted(),
        ),
        table: table([with_ids, without_ids]),
        checks: checks(params, with_ids, without_ids),
        plot: plot(with_ids, without_ids),
        notes: vec![format!(
            "The server is the real binary with --durability fsync, SIGKILLed every {} ms and \
             restarted on the same data directory and port; {} connections resend every \
             unanswered or 503 request with the same bytes (backoff 5 ms to 500 ms). Every \
             amount is 1, so the total balance counts the events applied. A kill -9 keeps \
             what was written, so an event logged whose answer was lost is applied, and its \
             resend is either answered as a duplicate (ids) or applied again (no ids).",
            params.kill_every_ms, params.connections
        )],
    }
}

fn plot(with_ids: &Run, without_ids: &Run) -> PlotSpec {
    let bars = vec![
        Bar::new("with ids: double-counted", with_ids.double_counted() as f64),
        Bar::new(
            "with ids: answered as duplicates",
            with_ids.report.events_duplicate as f64,
        ),
        Bar::new(
            "without ids: double-counted",
            without_ids.double_counted() as f64,
        ),
        Bar::new(
            "without ids: answered as duplicates",
            without_ids.report.events_duplicate as f64,
        ),
    ];
    PlotSpec {
        title: format!(
            "Exactly once through kill -9: resends without ids drift by {} events",
            format_figure(without_ids.double_counted() as f64)
        ),
        x_label: "clients resending every unanswered request".to_owned(),
        y_label: "events".to_owned(),
        kind: PlotKind::Bars { bars },
        y_max: None,
        references: Vec::new(),
    }
}
