//! Stage 1: idle connections freeze the blocking, single-threaded server.
//!
//! Lesson (stage 1, docs/stages.md): a server that reads each connection to the end with blocking
//! I/O on one thread is held hostage by any client that sends nothing; the fix is concurrency (a
//! task per client) and, later, timeouts. The experiment repeats the seed's `nc` loop (20 idle
//! connections) and then sends a valid request from another client.
//!
//! Invariant: the idle sockets are closed and every server is stopped before `run` returns,
//! frozen or not; the valid request is bounded by `answer_timeout_ms`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::servers::Target;
use super::{Findings, LabError, STAGE1, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec, Reference};
use crate::probe::{self, Answer};
use crate::table::Table;
use crate::verdict::{Check, Expectation};

/// Time the servers get to accept the idle connections before the valid request is sent.
const SETTLE: Duration = Duration::from_millis(100);

/// Parameters of the stage-1 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Connections opened that send nothing (the seed's `for i in {1..20}; do nc ...`).
    pub idle_connections: usize,
    /// How long the valid request may wait for its answer.
    pub answer_timeout_ms: u64,
    /// The server expected to freeze (the blocking one; anything else should fail the claim).
    pub suspect: Target,
    /// Servers expected to keep answering under the same attack.
    pub controls: Vec<Target>,
}

impl Params {
    /// The seed's parameters: 20 idle connections, a 2 s patience.
    pub fn full() -> Self {
        Self {
            quick: false,
            idle_connections: 20,
            answer_timeout_ms: 2_000,
            suspect: Target::Blocking,
            controls: vec![Target::Echo, Target::Default],
        }
    }

    /// The test suite's form: same attack, 1 s patience.
    pub fn quick() -> Self {
        Self {
            quick: true,
            answer_timeout_ms: 1_000,
            ..Self::full()
        }
    }
}

/// What one server did.
#[derive(Debug, Clone)]
struct Trial {
    target: Target,
    before: Answer,
    under_attack: Answer,
}

/// Sends a valid request before and during the idle-connection attack.
async fn trial(target: Target, params: &Params) -> Result<Trial, LabError> {
    let timeout = Duration::from_millis(params.answer_timeout_ms);
    let server = target.start().await?;
    let addr = server.addr();
    let request = probe::valid_event("alice", 5);
    let result = async {
        let before = probe::exchange(addr, &request, timeout).await?;
        let idle = probe::open_idle(addr, params.idle_connections).await?;
        tokio::time::sleep(SETTLE).await;
        let under_attack = probe::exchange(addr, &request, timeout).await?;
        drop(idle);
        Ok::<_, LabError>((before, under_attack))
    }
    .await;
    server.stop().await?;
    let (before, under_attack) = result?;
    Ok(Trial {
        target,
        before,
        under_attack,
    })
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let mut trials = vec![trial(params.suspect, params).await?];
    for control in &params.controls {
        trials.push(trial(*control, params).await?);
    }
    Ok(finish(
        &STAGE1,
        params.quick,
        params,
        started,
        findings(&trials, params),
    ))
}

fn latency_cell(answer: &Answer) -> String {
    answer.latency().map_or_else(
        || "—".to_owned(),
        |latency| format!("{:.1}", latency.as_secs_f64() * 1e3),
    )
}

/// The checks for one trial: the first (the suspect) must freeze, the others must answer.
fn trial_checks(index: usize, trial: &Trial, timeout_ms: f64) -> [Check; 2] {
    let label = trial.target.label();
    let answered_before = matches!(trial.before.status(), Some(200 | 202));
    let first = Check::flag(
        format!("{label} answers with no idle clients"),
        answered_before,
    );
    if index == 0 {
        return [
            first,
            Check::flag(
                format!("{label} gives no answer within {timeout_ms:.0} ms under attack (frozen)"),
                trial.under_attack.status().is_none(),
            ),
        ];
    }
    let latency_ms = trial
        .under_attack
        .latency()
        .map_or(f64::INFINITY, |latency| latency.as_secs_f64() * 1e3);
    [
        first,
        Check::new(
            format!("{label} answer latency under attack (ms)"),
            latency_ms,
            Expectation::AtMost {
                max: timeout_ms / 4.0,
            },
        ),
    ]
}

fn findings(trials: &[Trial], params: &Params) -> Findings {
    let timeout_ms = params.answer_timeout_ms as f64;
    let mut table = Table::new([
        "server",
        "valid request, no attack",
        "valid request, 20 idle clients",
        "latency under attack (ms)",
    ]);
    let mut checks = Vec::new();
    let mut bars = Vec::new();
    for (index, trial) in trials.iter().enumerate() {
        table.push([
            trial.target.label().to_owned(),
            trial.before.describe(),
            trial.under_attack.describe(),
            latency_cell(&trial.under_attack),
        ]);
        checks.extend(trial_checks(index, trial, timeout_ms));
        let label = trial.target.label();
        bars.push(match trial.under_attack.latency() {
            Some(latency) => Bar::new(label, latency.as_secs_f64() * 1e3),
            None => Bar::with_note(
                label,
                timeout_ms,
                format!("no answer in {timeout_ms:.0} ms"),
            ),
        });
    }
    Findings {
        measured: measured(trials, params),
        table,
        checks,
        plot: PlotSpec {
            title: format!(
                "Stage 1: {} idle clients freeze the blocking server, not the async ones",
                params.idle_connections
            ),
            x_label: "server (valid request sent while clients sit idle)".to_owned(),
            y_label: "time to answer (ms)".to_owned(),
            kind: PlotKind::Bars { bars },
            y_max: None,
            references: vec![Reference {
                label: format!("patience (timeout) {timeout_ms:.0} ms"),
                y: timeout_ms,
            }],
        },
        notes: Vec::new(),
    }
}

fn measured(trials: &[Trial], params: &Params) -> String {
    let Some((suspect, controls)) = trials.split_first() else {
        return String::new();
    };
    let controls: Vec<String> = controls
        .iter()
        .map(|trial| {
            format!(
                "{}: {} in {} ms",
                trial.target.label(),
                trial.under_attack.describe(),
                latency_cell(&trial.under_attack)
            )
        })
        .collect();
    format!(
        "{} under {} idle clients: {}; {}",
        suspect.target.label(),
        params.idle_connections,
        suspect.under_attack.describe(),
        controls.join("; "),
    )
}
