//! Stage 6: more workers multiply throughput while the work is independent.
//!
//! Lesson (stage 6, docs/stages.md): with 500 ms of work per event and nothing shared for long, a
//! pool of N workers pulling from one queue applies N times as many events per second: the seed's 2
//! → 8 jobs/s for 1 → 4 workers.
//!
//! Invariant: each point is a sustained window with the queue never empty (the workers' pace,
//! not the client's), and the sweep's servers are all stopped before `run` returns.

use std::time::{Duration, Instant};

use floodgate_core::config::EngineConfig;
use floodgate_load::Skew;
use serde::Serialize;

use super::sustain::{self, Sustain, Sustained};
use super::{Findings, LabError, STAGE6, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotSpec, Series};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Parameters of the stage-6 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Worker counts to measure.
    pub workers: Vec<usize>,
    /// Multiplies the seed's 500 ms of work.
    pub time_scale: f64,
    /// Length of each counting window.
    pub window_ms: u64,
}

impl Params {
    /// 1, 2, 4, 8 workers at the seed's 500 ms; 10 s windows.
    pub fn full() -> Self {
        Self {
            quick: false,
            workers: vec![1, 2, 4, 8],
            time_scale: 1.0,
            window_ms: 10_000,
        }
    }

    /// The same at a tenth of the time (50 ms of work); 2 s windows.
    pub fn quick() -> Self {
        Self {
            quick: true,
            time_scale: 0.1,
            window_ms: 2_000,
            ..Self::full()
        }
    }
}

/// The engine for `workers` workers: the stage-6 preset, with a queue of 4 events per worker
/// (enough to never run dry, small enough that stopping drains in two seconds, not fifty).
fn engine(workers: usize, params: &Params) -> Result<EngineConfig, LabError> {
    let mut engine = EngineConfig::for_stage(6).ok_or(LabError::Unavailable("stage 6 preset"))?;
    engine.workers = workers;
    engine.queue_capacity_events = (workers * 4).max(8);
    engine.time_scale = params.time_scale;
    Ok(engine)
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let mut points = Vec::new();
    for workers in &params.workers {
        let sustain = Sustain {
            engine: engine(*workers, params)?,
            window: Duration::from_millis(params.window_ms),
            warmup_limit: Duration::from_secs(5),
            users: 1_000,
            skew: Skew::Uniform,
        };
        points.push((sustain.engine.clone(), sustain::measure(&sustain).await?));
    }
    Ok(finish(
        &STAGE6,
        params.quick,
        params,
        started,
        findings(&points),
    ))
}

/// The speedup from the first to the last worker count, as a check against the worker ratio.
fn speedup(points: &[(EngineConfig, Sustained)]) -> Option<(Check, String)> {
    let ((first_engine, first), (last_engine, last)) = (points.first()?, points.last()?);
    if first.window.rate_per_second <= 0.0 {
        return None;
    }
    let speedup = last.window.rate_per_second / first.window.rate_per_second;
    let workers_ratio = last_engine.workers as f64 / first_engine.workers as f64;
    let check = Check::new(
        format!(
            "speedup {}→{} workers / worker ratio",
            first_engine.workers, last_engine.workers
        ),
        speedup / workers_ratio,
        Expectation::AtLeast { min: 0.75 },
    );
    let text = format!(
        "{}→{} workers: {}× the throughput",
        first_engine.workers,
        last_engine.workers,
        format_figure(speedup)
    );
    Some((check, text))
}

fn findings(points: &[(EngineConfig, Sustained)]) -> Findings {
    let mut table = Table::new([
        "workers",
        "throughput (events/s)",
        "ideal workers/work (events/s)",
        "measured / ideal",
        "queue never empty",
    ]);
    let mut checks = Vec::new();
    for (engine, point) in points {
        let theory = sustain::theoretical_rate(engine);
        let rate = point.window.rate_per_second;
        let busy = point.window.queue_stayed_busy;
        table.push([
            engine.workers.to_string(),
            format_figure(rate),
            format_figure(theory),
            format_figure(rate / theory),
            if busy { "yes" } else { "NO" }.to_owned(),
        ]);
        let workers = engine.workers;
        checks.push(Check::new(
            format!("{workers} workers: measured / ideal"),
            rate / theory,
            Expectation::Between {
                min: 0.75,
                max: 1.1,
            },
        ));
        checks.push(Check::flag(
            format!("{workers} workers: queue never empty during the window"),
            busy,
        ));
    }
    let speedup_text = match speedup(points) {
        Some((check, text)) => {
            checks.push(check);
            text
        }
        None => "no throughput measured".to_owned(),
    };
    let rates: Vec<String> = points
        .iter()
        .map(|(engine, point)| {
            let rate = format_figure(point.window.rate_per_second);
            format!("{} workers {rate} events/s", engine.workers)
        })
        .collect();
    Findings {
        measured: format!("{}; {speedup_text}", rates.join(", ")),
        table,
        checks,
        plot: plot(points),
        notes: vec![
            "The queue is 4 events per worker instead of the seed's 100 so that each stop \
             drains in seconds; capacity does not change the workers' pace."
                .to_owned(),
        ],
    }
}

fn plot(points: &[(EngineConfig, Sustained)]) -> PlotSpec {
    let work_ms = points.first().map_or(0.0, |(engine, _)| {
        engine.work_duration().as_secs_f64() * 1e3
    });
    let title = format!(
        "Stage 6: workers multiply throughput ({} ms of independent work)",
        format_figure(work_ms)
    );
    let series = vec![
        Series::measured("measured", sustain::measured_line(points)),
        Series::theory("ideal: workers / work", sustain::ideal_line(points)),
    ];
    sustain::workers_plot(title, series, Vec::new())
}
