//! Stage 8: sharding the ledger lifts the 1/hold plateau.
//!
//! Lesson (stage 8, docs/stages.md): workers updating different users need not wait for each other.
//! With one lock per shard (hash(user) mod shards), the 10 ms holds of different shards overlap,
//! and throughput follows workers / (work + hold) instead of stopping at 1/hold.
//!
//! Invariant: both strategies are measured in the same run with the same worker counts, users
//! and time scale, so the two lines are comparable; the strategy under test is a parameter so
//! a test can show the verdict fails when it is the global lock.

use std::time::{Duration, Instant};

use floodgate_core::config::{EngineConfig, LedgerStrategy};
use serde::Serialize;

use super::stage7::{self, USERS, wait_over_hold};
use super::sustain::{self, Sustained};
use super::{Findings, LabError, STAGE8, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotSpec, Series};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Parameters of the stage-8 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Worker counts of the sweep.
    pub workers: Vec<usize>,
    /// Multiplies the seed's 100 ms work and 10 ms hold.
    pub time_scale: f64,
    /// Length of each window.
    pub window_ms: u64,
    /// The strategy claimed to lift the plateau (the seed's: sharded).
    pub strategy: LedgerStrategy,
}

impl Params {
    /// 1, 4, 16, 64 workers at the seed's times, 5 s windows.
    pub fn full() -> Self {
        Self {
            quick: false,
            workers: vec![1, 4, 16, 64],
            time_scale: 1.0,
            window_ms: 5_000,
            strategy: LedgerStrategy::Sharded,
        }
    }

    /// The same at half the time, 1.5 s windows.
    pub fn quick() -> Self {
        Self {
            quick: true,
            time_scale: 0.5,
            window_ms: 1_500,
            ..Self::full()
        }
    }
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let window = Duration::from_millis(params.window_ms);
    let mut global = stage7::preset()?;
    global.time_scale = params.time_scale;
    let mut tested = EngineConfig::for_stage(8).ok_or(LabError::Unavailable("stage 8 preset"))?;
    tested.time_scale = params.time_scale;
    tested.strategy = params.strategy;
    let global_points = sustain::sweep(&global, &params.workers, window, USERS).await?;
    let tested_points = sustain::sweep(&tested, &params.workers, window, USERS).await?;
    let findings = findings(&tested, &global_points, &tested_points);
    Ok(finish(&STAGE8, params.quick, params, started, findings))
}

type Points = [(EngineConfig, Sustained)];

fn rate(points: &Points, index: usize) -> f64 {
    points
        .get(index)
        .map_or(f64::NAN, |(_, point)| point.window.rate_per_second)
}

fn table(global: &Points, tested: &Points, strategy: &str) -> Table {
    let mut table = Table::new([
        "workers",
        "global lock (events/s)",
        &format!("{strategy} (events/s)"),
        "workers/(work+hold)",
        "1/hold",
        &format!("{strategy} lock wait p50 / hold p50"),
    ]);
    for (index, (engine, point)) in tested.iter().enumerate() {
        table.push([
            engine.workers.to_string(),
            format_figure(rate(global, index)),
            format_figure(point.window.rate_per_second),
            format_figure(sustain::theoretical_rate(engine)),
            format_figure(sustain::lock_limit(engine)),
            format_figure(wait_over_hold(point)),
        ]);
    }
    table
}

fn checks(tested_engine: &EngineConfig, global: &Points, tested: &Points) -> Vec<Check> {
    let last = tested.len().saturating_sub(1);
    let Some((last_engine, last_point)) = tested.last() else {
        return vec![Check::flag("sweep measured", false)];
    };
    let strategy = tested_engine.strategy.as_str();
    let workers = last_engine.workers;
    vec![
        Check::new(
            format!("{strategy}, {workers} workers: measured / (workers/(work+hold))"),
            rate(tested, last) / sustain::theoretical_rate(last_engine),
            Expectation::AtLeast { min: 0.5 },
        ),
        Check::new(
            format!("{strategy} / global at {workers} workers"),
            rate(tested, last) / rate(global, last),
            Expectation::AtLeast { min: 2.0 },
        ),
        Check::new(
            format!("{strategy}, {workers} workers: lock wait p50 / hold p50 (no contention)"),
            wait_over_hold(last_point),
            Expectation::AtMost { max: 1.0 },
        ),
        Check::flag(
            "queue never empty in any window",
            global
                .iter()
                .chain(tested)
                .all(|(_, point)| point.window.queue_stayed_busy),
        ),
    ]
}

fn findings(tested_engine: &EngineConfig, global: &Points, tested: &Points) -> Findings {
    let strategy = tested_engine.strategy.as_str();
    let last = tested.len().saturating_sub(1);
    let workers = tested.last().map_or(0, |(engine, _)| engine.workers);
    let theory = tested
        .last()
        .map_or(f64::NAN, |(engine, _)| sustain::theoretical_rate(engine));
    Findings {
        measured: format!(
            "{workers} workers: {strategy} {} events/s vs global {} events/s (ideal {}, 1/hold {})",
            format_figure(rate(tested, last)),
            format_figure(rate(global, last)),
            format_figure(theory),
            format_figure(sustain::lock_limit(tested_engine)),
        ),
        table: table(global, tested, strategy),
        checks: checks(tested_engine, global, tested),
        plot: plot(tested_engine, global, tested),
        notes: vec![format!(
            "Shards: {} (hash(user) mod shards); {USERS} users, uniform.",
            tested_engine.shard_count()
        )],
    }
}

fn plot(tested_engine: &EngineConfig, global: &Points, tested: &Points) -> PlotSpec {
    let title = "Stage 8: sharding the ledger lifts the one-lock plateau".to_owned();
    let series = vec![
        Series::measured("global lock (stage 7)", sustain::measured_line(global)),
        Series::measured(
            format!("{} ledger (stage 8)", tested_engine.strategy.as_str()),
            sustain::measured_line(tested),
        ),
        Series::theory(
            "theoretical limit: workers / (work + hold)",
            sustain::ideal_line(tested),
        ),
    ];
    let one_lock = sustain::lock_limit_reference("one lock:", tested_engine);
    sustain::workers_plot(title, series, vec![one_lock])
}
