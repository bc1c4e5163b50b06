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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use floodgate_load::{LoadConfig, Mode, Report, RetryPolicy};
use serde::Serialize;

use super::process::{
    FloodgateProcess, floodgate_binary, free_port, fresh_dir, get_json, remove_dir,
};
use super::{EXACTLY_ONCE, Findings, LabError, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// How long the last server may take to apply what it acknowledged.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
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

/// One run on a fresh data directory: load with resends, kills on schedule, then the count.
async fn run_once(binary: &Path, params: &Params, ids: bool) -> Result<Run, LabError> {
    let directory = fresh_dir("exactly-once")?;
    let result = run_in(binary, params, ids, &directory).await;
    remove_dir(&directory);
    result
}

async fn run_in(
    binary: &Path,
    params: &Params,
    ids: bool,
    directory: &Path,
) -> Result<Run, LabError> {
    let port = free_port()?;
    let mut server = start_server(binary, directory, port).await?;
    let load = tokio::spawn(floodgate_load::run(load_config(params, port, ids)));
    let mut kills = 0;
    for _ in 0..params.kills {
        tokio::time::sleep(Duration::from_millis(params.kill_every_ms)).await;
        if load.is_finished() {
            break;
        }
        server.kill().await?;
        kills += 1;
        server = start_server(binary, directory, port).await?;
    }
    let report = match load.await {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => return Err(LabError::Load(error.to_string())),
        Err(error) => return Err(LabError::Load(error.to_string())),
    };
    let applied = settled_total(server.addr()).await;
    server.stop().await?;
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

/// Starts `floodgate serve` (fsync) on `directory` and `port` (the same after each kill, so
/// the load's resends find it again).
async fn start_server(
    binary: &Path,
    directory: &Path,
    port: u16,
) -> Result<FloodgateProcess, LabError> {
    let data_dir = directory.as_os_str().to_owned();
    let args = [
        "--data-dir".into(),
        data_dir,
        "--durability".into(),
        "fsync".into(),
    ];
    FloodgateProcess::start(binary, &format!("127.0.0.1:{port}"), args).await
}

/// The server's total balance once every event it acknowledged is applied (all amounts are
/// 1: the number of events applied).
async fn settled_total(addr: SocketAddr) -> Result<i128, LabError> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while Instant::now() < deadline {
        if let Some(stats) = get_json(addr, "/stats").await {
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
