//! Stage 5: a bounded queue turns a burst beyond capacity into fast rejections, while the one
//! worker keeps its fixed pace.
//!
//! Lesson (stage 5, docs/stages.md): the queue's capacity is a hard limit, `try_send` refuses at
//! once when it is full ("backpressure is honesty"), and a queue smooths bursts but creates no
//! capacity: the worker drains at 1/work whatever the load did.
//!
//! Invariant: the engine's counters are sampled from before the burst until the drain ends, so
//! the plot shows the whole life of the queue; the server is stopped (drained) before `run`
//! returns.

use std::time::{Duration, Instant};

use floodgate_core::engine::Engine;
use floodgate_load::{LoadConfig, Mode, Report};
use floodgate_server::ServerConfig;
use serde::Serialize;
use tokio::sync::watch;

use super::servers::{start_http, stop_http_in_background};
use super::{Findings, LabError, STAGE5, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotKind, PlotSpec, Reference, Series, XScale};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// "Fast" rejection: its p99 must stay under this share of the time a queued event waits
/// (capacity × work / workers), the delay a blocking `send().await` would have imposed.
const REJECTION_SHARE_OF_QUEUE_WAIT: f64 = 0.1;
/// How often the queue is sampled for the plot.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Most samples kept (bounds memory whatever the run length: 10 minutes at 50 ms).
const MAX_SAMPLES: usize = 12_000;

/// Parameters of the stage-5 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Requests in the burst.
    pub requests: u64,
    /// Concurrent connections sending it.
    pub concurrency: usize,
    /// Multiplies the seed's 500 ms of work.
    pub time_scale: f64,
}

impl Params {
    /// The seed's stage 5: queue 100, one worker, 500 ms; a 2000-request burst from 200 clients.
    pub fn full() -> Self {
        Self {
            quick: false,
            requests: 2_000,
            concurrency: 200,
            time_scale: 1.0,
        }
    }

    /// The same at 1/20 of the time (25 ms of work), a 1000-request burst from 50 clients.
    pub fn quick() -> Self {
        Self {
            quick: true,
            requests: 1_000,
            concurrency: 50,
            time_scale: 0.05,
        }
    }
}

/// One reading of the queue: seconds since the start, queue depth, accepted, applied.
type Reading = (f64, f64, f64, f64);

/// Samples `engine` until `done` flips, returning the readings.
async fn sample_until(
    engine: Engine,
    started: Instant,
    mut done: watch::Receiver<bool>,
) -> Vec<Reading> {
    let mut readings = Vec::new();
    loop {
        let stats = engine.stats();
        if readings.len() < MAX_SAMPLES {
            readings.push((
                started.elapsed().as_secs_f64(),
                stats.queue_depth as f64,
                stats.accepted as f64,
                stats.applied as f64,
            ));
        }
        if *done.borrow() {
            return readings;
        }
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = done.changed() => {}
        }
    }
}

/// What the run measured.
struct Measured {
    report: Report,
    readings: Vec<Reading>,
    drain_seconds: f64,
    drained: u64,
    capacity: usize,
    workers: usize,
    work: Duration,
}

async fn measure(params: &Params) -> Result<Measured, LabError> {
    let mut config = ServerConfig::for_stage(5).ok_or(LabError::Unavailable("stage 5 preset"))?;
    config.engine.time_scale = params.time_scale;
    let (capacity, workers, work) = (
        config.engine.queue_capacity_events,
        config.engine.workers,
        config.engine.work_duration(),
    );
    let server = start_http(config).await?;
    let started = Instant::now();
    let (done, done_seen) = watch::channel(false);
    let sampler = tokio::spawn(sample_until(server.engine().clone(), started, done_seen));
    let mut load = LoadConfig::new(server.url());
    load.mode = Mode::Closed {
        concurrency: params.concurrency,
        requests: Some(params.requests),
        duration: None,
    };
    load.users = 1_000;
    let report = floodgate_load::run(load).await;
    let (engine, stopping) = stop_http_in_background(server);
    let drain_start = (Instant::now(), engine.stats().applied);
    let summary = stopping
        .await
        .map_err(|error| LabError::Server(format!("stop task: {error}")))?;
    let drain_seconds = drain_start.0.elapsed().as_secs_f64();
    let _ = done.send(true);
    let readings = sampler
        .await
        .map_err(|error| LabError::Server(format!("sampler: {error}")))?;
    let summary = summary?;
    let report = report.map_err(|error| LabError::Load(error.to_string()))?;
    Ok(Measured {
        report,
        readings,
        drain_seconds,
        drained: summary.applied.saturating_sub(drain_start.1),
        capacity,
        workers,
        work,
    })
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let measured = measure(params).await?;
    Ok(finish(
        &STAGE5,
        params.quick,
        params,
        started,
        findings(&measured),
    ))
}

/// Figures derived from a run: what the claim predicts and what was seen.
struct Derived {
    work_ms: f64,
    pace_expected: f64,
    pace: f64,
    expected_accepted: f64,
    queue_wait_ms: f64,
}

fn derive(m: &Measured) -> Derived {
    let work_s = m.work.as_secs_f64();
    let pace_expected = m.workers as f64 / work_s;
    let pace = if m.drain_seconds > 0.0 {
        m.drained as f64 / m.drain_seconds
    } else {
        0.0
    };
    let floor = (m.capacity + m.workers) as f64;
    Derived {
        work_ms: work_s * 1e3,
        pace_expected,
        pace,
        expected_accepted: floor + m.report.duration_seconds * pace_expected,
        queue_wait_ms: m.capacity as f64 * work_s * 1e3 / m.workers as f64,
    }
}

fn table(m: &Measured, d: &Derived) -> Table {
    let report = &m.report;
    let rejection_p99 = report.latency_ms.rejected.p99;
    let mut table = Table::new(["metric", "value", "meaning"]);
    let rows = [
        (
            "sent",
            format_figure(report.sent as f64),
            format!("a burst from {} connections", report.concurrency),
        ),
        (
            "burst duration (s)",
            format_figure(report.duration_seconds),
            "time to send them all".to_owned(),
        ),
        (
            "accepted (202)",
            format_figure(report.accepted as f64),
            format!(
                "queue {} + in flight {} + drained during the burst ≈ {}",
                m.capacity,
                m.workers,
                format_figure(d.expected_accepted)
            ),
        ),
        (
            "rejected (503 queue_full)",
            format_figure(report.rejected as f64),
            format!(
                "{:.1} % of the burst",
                report.rejected as f64 * 100.0 / report.sent.max(1) as f64
            ),
        ),
        (
            "errors",
            format_figure(report.errors as f64),
            "timeouts or broken connections".to_owned(),
        ),
        (
            "rejection latency p50 / p99 (ms)",
            format!(
                "{} / {}",
                format_figure(report.latency_ms.rejected.p50),
                format_figure(rejection_p99)
            ),
            format!(
                "an accepted event waits up to {} ms in the queue",
                format_figure(d.queue_wait_ms)
            ),
        ),
        (
            "drain pace (events/s)",
            format_figure(d.pace),
            format!(
                "fixed by the worker: {} worker / {} ms = {}",
                m.workers,
                format_figure(d.work_ms),
                format_figure(d.pace_expected)
            ),
        ),
    ];
    for (metric, value, meaning) in rows {
        table.push([metric.to_owned(), value, meaning]);
    }
    table
}

fn checks(m: &Measured, d: &Derived) -> Vec<Check> {
    let report = &m.report;
    vec![
        Check::new(
            "accepted events",
            report.accepted as f64,
            Expectation::Between {
                min: m.capacity as f64,
                max: d.expected_accepted * 1.25 + 5.0,
            },
        ),
        Check::new(
            "rejected share of the burst",
            report.rejected as f64 / report.sent.max(1) as f64,
            Expectation::AtLeast { min: 0.5 },
        ),
        Check::new(
            "errors",
            report.errors as f64,
            Expectation::AtMost { max: 0.0 },
        ),
        Check::new(
            "p99 rejection latency (ms), vs the queue wait",
            report.latency_ms.rejected.p99,
            Expectation::AtMost {
                max: d.queue_wait_ms * REJECTION_SHARE_OF_QUEUE_WAIT,
            },
        ),
        Check::new(
            "drain pace / (workers / work)",
            d.pace / d.pace_expected,
            Expectation::Between { min: 0.8, max: 1.1 },
        ),
    ]
}

fn findings(m: &Measured) -> Findings {
    let report = &m.report;
    let d = derive(m);
    Findings {
        measured: format!(
            "{} of {} accepted (queue {} + {} in flight + drained), {} rejected in p99 {} ms; the worker drained at {} events/s (1/work = {})",
            report.accepted,
            report.sent,
            m.capacity,
            m.workers,
            report.rejected,
            format_figure(report.latency_ms.rejected.p99),
            format_figure(d.pace),
            format_figure(d.pace_expected)
        ),
        table: table(m, &d),
        checks: checks(m, &d),
        plot: plot(m),
        notes: Vec::new(),
    }
}

fn plot(m: &Measured) -> PlotSpec {
    let series = |index: usize| -> Vec<(f64, f64)> {
        m.readings
            .iter()
            .map(|reading| (reading.0, [reading.1, reading.2, reading.3][index]))
            .collect()
    };
    PlotSpec {
        title: format!(
            "Stage 5: a burst fills the queue ({}), the worker drains it at its own pace",
            m.capacity
        ),
        x_label: "time since the burst began (s)".to_owned(),
        y_label: "events".to_owned(),
        kind: PlotKind::Lines {
            x_scale: XScale::Linear,
            series: vec![
                Series::measured("queue depth", series(0)),
                Series::measured("accepted (cumulative)", series(1)),
                Series::measured("applied (cumulative)", series(2)),
            ],
        },
        // Room above the accepted line for the legend.
        y_max: Some(m.report.accepted.max(m.capacity as u64) as f64 * 1.7),
        references: vec![Reference {
            label: format!("queue capacity {}", m.capacity),
            y: m.capacity as f64,
        }],
    }
}
