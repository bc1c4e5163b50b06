//! Stage 9: durable acceptance. A 202 from the log survives SIGKILL; a 202 from memory does not.
//!
//! Lesson (stage 9, docs/stages.md): the seed's queue keeps accepted events in the process's
//! memory, so a kill -9 erases every event it answered 202 and had not yet applied, and every
//! balance. With a data directory the server answers only after the event's group is in the log
//! (`write`: handed to the kernel; `fsync`: synced), so a SIGKILL mid-load loses nothing it
//! acknowledged and the restart replays it. Group commit is what makes `fsync` affordable: the
//! more clients wait, the more events share one sync, while a sync costs about the same.
//!
//! Invariant: every mode gets the same load (clients, users, time before the kill) in the same
//! run, against the real binary in a child process of its own (a SIGKILL needs one); every
//! child is killed and reaped, and every data directory removed, before [`run`] returns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use floodgate_core::DurabilityMode;
use floodgate_load::{LoadConfig, Mode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::process::{
    FloodgateProcess, START_WAIT, floodgate_binary, fresh_dir, get_answer, remove_dir,
};
use super::{Findings, LabError, STAGE9, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotKind, PlotSpec, Series, XScale};
use crate::probe::{Answer, read_status};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Clients give up this long after the planned kill if the server is somehow still answering.
const CLIENT_GRACE: Duration = Duration::from_secs(10);
/// Users the sweep's load spreads over.
const SWEEP_USERS: u64 = 10_000;

/// Parameters of the stage-9 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// The `floodgate` binary to run (`None`: `$FLOODGATE_BIN`, else this process when it is
    /// `floodgate` itself).
    pub binary: Option<PathBuf>,
    /// The modes put under the same load and killed.
    pub modes: Vec<DurabilityMode>,
    /// The modes claimed to lose no acknowledged event (the others are expected to lose them).
    pub durable_modes: Vec<DurabilityMode>,
    /// Concurrent clients in each kill round, one user and one keep-alive connection each.
    pub clients: usize,
    /// Load before the SIGKILL.
    pub kill_after_ms: u64,
    /// Connection counts of the group-commit sweep (`fsync` only).
    pub sweep_connections: Vec<usize>,
    /// Length of each sweep window.
    pub sweep_window_ms: u64,
}

impl Params {
    /// 32 clients killed after 3 s; the sweep at 1 to 256 connections, 3 s each.
    pub fn full() -> Self {
        Self {
            quick: false,
            binary: None,
            modes: vec![
                DurabilityMode::Memory,
                DurabilityMode::Write,
                DurabilityMode::Fsync,
            ],
            durable_modes: vec![DurabilityMode::Write, DurabilityMode::Fsync],
            clients: 32,
            kill_after_ms: 3_000,
            sweep_connections: vec![1, 4, 16, 64, 256],
            sweep_window_ms: 3_000,
        }
    }

    /// 16 clients killed after 0.6 s; the sweep at 1, 8 and 64 connections, 0.6 s each.
    pub fn quick() -> Self {
        Self {
            quick: true,
            clients: 16,
            kill_after_ms: 600,
            sweep_connections: vec![1, 8, 64],
            sweep_window_ms: 600,
            ..Self::full()
        }
    }
}

/// What one kill round found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillRound {
    /// Events answered 202 before the kill.
    pub acknowledged: u64,
    /// Events sent whose answer the kill cut off (they may or may not be in the log).
    pub unanswered: u64,
    /// Other answers (e.g. 503 queue_full): not acknowledged, not expected back.
    pub refused: u64,
    /// Acknowledged events found in the balances after the restart.
    pub recovered: u64,
    /// Acknowledged events missing after the restart.
    pub lost: u64,
    /// Events found beyond the acknowledged ones (at most `unanswered` may be).
    pub beyond_acknowledged: u64,
    /// Acknowledged events per second of load.
    pub acknowledged_per_second: f64,
}

/// One point of the group-commit sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// Closed-loop connections.
    pub connections: usize,
    /// Events answered 202 per second.
    pub accepted_per_second: f64,
    /// Mean events per log group (one record, one sync).
    pub events_per_sync: f64,
    /// Mean and median sync time.
    pub sync_mean_ms: f64,
    pub sync_p50_ms: f64,
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let binary = floodgate_binary(params.binary.as_deref())?;
    let mut rounds = Vec::new();
    for &mode in &params.modes {
        rounds.push((mode, kill_round(&binary, mode, params).await?));
    }
    let mut sweep = Vec::new();
    for &connections in &params.sweep_connections {
        sweep.push(sweep_point(&binary, connections, params).await?);
    }
    let findings = findings(params, &rounds, &sweep);
    Ok(finish(&STAGE9, params.quick, params, started, findings))
}

/// Starts `floodgate serve` on 127.0.0.1:0 with `data_dir` in `mode`.
async fn start_server(
    binary: &Path,
    data_dir: &Path,
    mode: DurabilityMode,
) -> Result<FloodgateProcess, LabError> {
    let args = [
        "--data-dir".into(),
        data_dir.as_os_str().to_owned(),
        "--durability".into(),
        mode.to_string().into(),
    ];
    FloodgateProcess::start(binary, "127.0.0.1:0", args).await
}

/// Loads a fresh server in `mode`, SIGKILLs it mid-load, restarts it on the same directory and
/// compares each user's balance with what the clients were answered.
async fn kill_round(
    binary: &Path,
    mode: DurabilityMode,
    params: &Params,
) -> Result<KillRound, LabError> {
    let directory = fresh_dir(&format!("stage9-{mode}"))?;
    let result = kill_round_in(binary, mode, params, &directory).await;
    remove_dir(&directory);
    result
}

async fn kill_round_in(
    binary: &Path,
    mode: DurabilityMode,
    params: &Params,
    directory: &Path,
) -> Result<KillRound, LabError> {
    let kill_after = Duration::from_millis(params.kill_after_ms);
    let server = start_server(binary, directory, mode).await?;
    let addr = server.addr();
    let clients: Vec<_> = (0..params.clients)
        .map(|index| {
            tokio::spawn(post_until_gone(
                addr,
                user(index),
                kill_after + CLIENT_GRACE,
            ))
        })
        .collect();
    tokio::time::sleep(kill_after).await;
    server.kill().await?;
    let mut tallies = Vec::new();
    for client in clients {
        tallies.push(
            client
                .await
                .map_err(|error| LabError::Load(format!("client task: {error}")))?,
        );
    }
    let restarted = start_server(binary, directory, mode).await?;
    let balances = read_balances(restarted.addr(), params.clients).await;
    restarted.kill().await?;
    let balances = balances?;
    Ok(compare(&tallies, &balances, kill_after))
}

fn user(index: usize) -> String {
    format!("stage9-{index}")
}

/// What one client was answered.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    acknowledged: u64,
    unanswered: u64,
    refused: u64,
}

/// Posts `{"user": user, "amount": 1}` on one keep-alive connection until the server goes
/// away (or `limit` passes); counts the answers.
async fn post_until_gone(addr: SocketAddr, user: String, limit: Duration) -> Tally {
    let mut tally = Tally::default();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return tally;
    };
    let body = serde_json::json!({ "user": user, "amount": 1 }).to_string();
    let request = format!(
        "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = Vec::with_capacity(1024);
    while tokio::time::Instant::now() < deadline {
        if stream.write_all(request.as_bytes()).await.is_err() {
            tally.unanswered += 1;
            break;
        }
        match tokio::time::timeout_at(deadline, read_status(&mut stream, &mut buffer)).await {
            Ok(Some(202)) => tally.acknowledged += 1,
            Ok(Some(_)) => tally.refused += 1,
            Ok(None) | Err(_) => {
                tally.unanswered += 1;
                break;
            }
        }
    }
    tally
}

/// Each client's user's balance after the restart (0 for a user the server does not know).
async fn read_balances(addr: SocketAddr, clients: usize) -> Result<Vec<i64>, LabError> {
    let mut balances = Vec::with_capacity(clients);
    for index in 0..clients {
        let answer = get_answer(addr, &format!("/balances/{}", user(index)), START_WAIT).await?;
        let balance = match &answer {
            Answer::Response { status: 404, .. } => 0,
            Answer::Response {
                status: 200, body, ..
            } => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|json| json["balance"].as_i64())
                .ok_or_else(|| LabError::Server(format!("balance body {body:?}")))?,
            other => {
                return Err(LabError::Server(format!(
                    "GET /balances: {}",
                    other.describe()
                )));
            }
        };
        balances.push(balance);
    }
    Ok(balances)
}

/// Acknowledged against recovered, per user (every event adds 1 to its client's user).
fn compare(tallies: &[Tally], balances: &[i64], loaded: Duration) -> KillRound {
    let mut round = KillRound::default();
    for (tally, &balance) in tallies.iter().zip(balances) {
        let found = u64::try_from(balance).unwrap_or(0);
        round.acknowledged += tally.acknowledged;
        round.unanswered += tally.unanswered;
        round.refused += tally.refused;
        round.recovered += found.min(tally.acknowledged);
        round.lost += tally.acknowledged.saturating_sub(found);
        round.beyond_acknowledged += found.saturating_sub(tally.acknowledged);
    }
    round.acknowledged_per_second = round.acknowledged as f64 / loaded.as_secs_f64();
    round
}

/// Loads a fresh `fsync` server with `connections` closed-loop connections for one window,
/// then reads its log's group and sync figures from `/stats`.
async fn sweep_point(
    binary: &Path,
    connections: usize,
    params: &Params,
) -> Result<SweepPoint, LabError> {
    let directory = fresh_dir(&format!("stage9-sweep-{connections}"))?;
    let result = sweep_point_in(binary, connections, params, &directory).await;
    remove_dir(&directory);
    result
}

async fn sweep_point_in(
    binary: &Path,
    connections: usize,
    params: &Params,
    directory: &Path,
) -> Result<SweepPoint, LabError> {
    let server = start_server(binary, directory, DurabilityMode::Fsync).await?;
    let mut load = LoadConfig::new(format!("http://{}", server.addr()));
    load.mode = Mode::Closed {
        concurrency: connections,
        requests: None,
        duration: Some(Duration::from_millis(params.sweep_window_ms)),
    };
    load.users = SWEEP_USERS;
    let report = floodgate_load::run(load).await;
    let stats = get_answer(server.addr(), "/stats", START_WAIT).await;
    server.kill().await?;
    let report = report.map_err(|error| LabError::Load(error.to_string()))?;
    let stats = match stats? {
        Answer::Response {
            status: 200, body, ..
        } => serde_json::from_str::<serde_json::Value>(&body)
            .map_err(|error| LabError::Server(format!("/stats: {error}")))?,
        other => return Err(LabError::Server(format!("/stats: {}", other.describe()))),
    };
    let durability = &stats["durability"];
    let figure = |group: &str, field: &str| durability[group][field].as_f64().unwrap_or(f64::NAN);
    Ok(SweepPoint {
        connections,
        accepted_per_second: report.accepted_per_second,
        events_per_sync: figure("events_per_group", "mean"),
        sync_mean_ms: figure("sync_ms", "mean"),
        sync_p50_ms: figure("sync_ms", "p50"),
    })
}

type Rounds = [(DurabilityMode, KillRound)];

fn table(rounds: &Rounds) -> Table {
    let mut table = Table::new([
        "mode",
        "acknowledged (202)",
        "recovered after SIGKILL",
        "lost",
        "sent, no answer",
        "found beyond acknowledged",
        "acknowledged/s",
    ]);
    for (mode, round) in rounds {
        table.push([
            mode.to_string(),
            round.acknowledged.to_string(),
            round.recovered.to_string(),
            round.lost.to_string(),
            round.unanswered.to_string(),
            round.beyond_acknowledged.to_string(),
            format_figure(round.acknowledged_per_second),
        ]);
    }
    table
}

fn checks(params: &Params, rounds: &Rounds, sweep: &[SweepPoint]) -> Vec<Check> {
    let mut checks = Vec::new();
    for (mode, round) in rounds {
        checks.push(Check::new(
            format!("{mode}: events acknowledged before the kill"),
            round.acknowledged as f64,
            Expectation::AtLeast { min: 1.0 },
        ));
        if params.durable_modes.contains(mode) {
            checks.push(Check::new(
                format!("{mode}: acknowledged events lost to SIGKILL"),
                round.lost as f64,
                Expectation::AtMost { max: 0.0 },
            ));
        } else {
            checks.push(Check::new(
                format!("{mode}: share of acknowledged events lost to SIGKILL"),
                round.lost as f64 / round.acknowledged.max(1) as f64,
                Expectation::AtLeast { min: 0.9 },
            ));
        }
        checks.push(Check::flag(
            format!("{mode}: nothing found that was not sent (beyond <= sent, no answer)"),
            round.beyond_acknowledged <= round.unanswered,
        ));
    }
    if let (Some(fewest), Some(most)) = (sweep.first(), sweep.last())
        && most.connections > fewest.connections
    {
        checks.push(Check::new(
            format!(
                "fsync: events per sync at {} connections / at {}",
                most.connections, fewest.connections
            ),
            most.events_per_sync / fewest.events_per_sync,
            Expectation::AtLeast { min: 4.0 },
        ));
    }
    checks
}

fn findings(params: &Params, rounds: &Rounds, sweep: &[SweepPoint]) -> Findings {
    let losses: Vec<String> = rounds
        .iter()
        .map(|(mode, round)| format!("{mode} lost {} of {}", round.lost, round.acknowledged))
        .collect();
    let group_commit = sweep.last().map_or_else(String::new, |point| {
        format!(
            "; fsync at {} connections: {} events per sync, median sync {} ms",
            point.connections,
            format_figure(point.events_per_sync),
            format_figure(point.sync_p50_ms)
        )
    });
    let mut notes = vec![format!(
        "{} clients (one user and one keep-alive connection each, amount 1 per event), SIGKILL \
         after {} ms, restart on the same data directory; the same load for every mode.",
        params.clients, params.kill_after_ms
    )];
    notes.extend(sweep.iter().map(|point| {
        format!(
            "group commit, fsync, {} connections: {} events/s, {} events per sync, sync mean {} \
             ms (p50 {} ms)",
            point.connections,
            format_figure(point.accepted_per_second),
            format_figure(point.events_per_sync),
            format_figure(point.sync_mean_ms),
            format_figure(point.sync_p50_ms)
        )
    }));
    Findings {
        measured: format!("SIGKILL mid-load: {}{group_commit}", losses.join(", ")),
        table: table(rounds),
        checks: checks(params, rounds, sweep),
        plot: plot(sweep),
        notes,
    }
}

fn plot(sweep: &[SweepPoint]) -> PlotSpec {
    let mut by_latency: Vec<(f64, f64)> = sweep
        .iter()
        .map(|point| (point.sync_p50_ms, point.events_per_sync))
        .collect();
    by_latency.sort_by(|left, right| left.0.total_cmp(&right.0));
    let connections: Vec<String> = sweep
        .iter()
        .map(|point| point.connections.to_string())
        .collect();
    PlotSpec {
        title: "Stage 9: group commit, events per sync against sync latency (fsync)".to_owned(),
        x_label: "median sync latency (ms)".to_owned(),
        y_label: "events per sync (mean)".to_owned(),
        kind: PlotKind::Lines {
            x_scale: XScale::Linear,
            series: vec![Series::measured(
                format!(
                    "fsync, one point per load of {} connections",
                    connections.join(", ")
                ),
                by_latency,
            )],
        },
        y_max: None,
        references: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the comparison: lost counts acknowledged events missing after the restart, and
    // events beyond the acknowledged ones are counted apart (they must come from unanswered
    // requests).
    #[test]
    fn compare_counts_lost_and_beyond_per_user() {
        let tallies = [
            Tally {
                acknowledged: 10,
                unanswered: 1,
                refused: 0,
            },
            Tally {
                acknowledged: 5,
                unanswered: 1,
                refused: 2,
            },
        ];
        let round = compare(&tallies, &[7, 6], Duration::from_secs(1));
        assert_eq!(round.acknowledged, 15);
        assert_eq!(round.recovered, 12);
        assert_eq!(round.lost, 3);
        assert_eq!(round.beyond_acknowledged, 1);
        assert_eq!(round.refused, 2);
        assert!((round.acknowledged_per_second - 15.0).abs() < 1e-9);
    }

    // Proves the verdict's shape: a mode claimed durable fails on a single lost event, a mode
    // not claimed durable must lose most of what it acknowledged.
    #[test]
    fn a_durable_mode_that_loses_an_event_fails() {
        let params = Params::quick();
        let kept = KillRound {
            acknowledged: 100,
            recovered: 100,
            ..KillRound::default()
        };
        let one_lost = KillRound {
            acknowledged: 100,
            recovered: 99,
            lost: 1,
            ..KillRound::default()
        };
        let all_lost = KillRound {
            acknowledged: 100,
            lost: 100,
            ..KillRound::default()
        };
        let holds = |rounds: &Rounds| {
            crate::verdict::Verdict::from_checks(checks(&params, rounds, &[])).holds
        };
        assert!(holds(&[
            (DurabilityMode::Memory, all_lost.clone()),
            (DurabilityMode::Fsync, kept.clone())
        ]));
        assert!(!holds(&[(DurabilityMode::Fsync, one_lost)]));
        assert!(!holds(&[(DurabilityMode::Memory, kept)]));
    }
}
