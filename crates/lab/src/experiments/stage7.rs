//! Stage 7: one global lock caps throughput near 1/hold, whatever the number of workers.
//!
//! Lesson (stage 7, docs/stages.md): 16 workers each do 100 ms of work, then hold the one ledger
//! mutex for 10 ms. However many workers wait, the mutex lets through one event per 10 ms: about
//! 100 events/s. Lock wait grows far beyond the hold ("wait ≫ hold = severe contention"), and the
//! seed's stress test (5000 requests from 200 clients, queue 100) is mostly rejected.
//!
//! Invariant: every sweep point is a sustained window with the queue non-empty; the wait and
//! hold figures come from the engine's own lock histograms (what `GET /stats` reports).

use std::time::{Duration, Instant};

use floodgate_core::config::EngineConfig;
use floodgate_load::{LoadConfig, Mode, Report};
use floodgate_server::ServerConfig;
use serde::Serialize;

use super::servers::{start_http, stop_http};
use super::sustain::{self, Sustained};
use super::{Findings, LabError, STAGE7, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotSpec, Series};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Distinct users in every load of this experiment.
pub const USERS: u64 = 1_000;

/// Parameters of the stage-7 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Requests of the stress test (the seed's 5000).
    pub stress_requests: u64,
    /// Concurrent clients of the stress test (the seed's 200).
    pub stress_concurrency: usize,
    /// Worker counts of the sweep.
    pub sweep_workers: Vec<usize>,
    /// Multiplies the seed's 100 ms work and 10 ms hold in the sweep.
    pub sweep_time_scale: f64,
    /// Length of each sweep window.
    pub window_ms: u64,
    /// Windows measured at each of the two largest worker counts (the sweep's own included),
    /// alternating between them, so "more workers are slower" is judged against the spread of
    /// repeated runs, not one pair of windows.
    pub repeats: usize,
}

impl Params {
    /// The seed's stress test, and the sweep 1, 4, 16, 64 workers with 5 s windows.
    pub fn full() -> Self {
        Self {
            quick: false,
            stress_requests: 5_000,
            stress_concurrency: 200,
            sweep_workers: vec![1, 4, 16, 64],
            sweep_time_scale: 1.0,
            window_ms: 5_000,
            repeats: 5,
        }
    }

    /// A 2000-request stress test; the sweep at half the time with 1.5 s windows.
    pub fn quick() -> Self {
        Self {
            quick: true,
            stress_requests: 2_000,
            sweep_time_scale: 0.5,
            window_ms: 1_500,
            repeats: 2,
            ..Self::full()
        }
    }
}

/// The stage-7 preset (16 workers, global lock, 100 ms work, 10 ms hold, queue 100).
pub fn preset() -> Result<EngineConfig, LabError> {
    EngineConfig::for_stage(7).ok_or(LabError::Unavailable("stage 7 preset"))
}

/// The seed's stress test against the stage-7 preset at full time scale.
async fn stress(params: &Params) -> Result<(Report, EngineConfig), LabError> {
    let mut config = ServerConfig::production();
    config.engine = preset()?;
    let engine = config.engine.clone();
    let server = start_http(config).await?;
    let mut load = LoadConfig::new(server.url());
    load.mode = Mode::Closed {
        concurrency: params.stress_concurrency,
        requests: Some(params.stress_requests),
        duration: None,
    };
    load.users = USERS;
    let report = floodgate_load::run(load).await;
    stop_http(server).await?;
    Ok((
        report.map_err(|error| LabError::Load(error.to_string()))?,
        engine,
    ))
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let (report, stress_engine) = stress(params).await?;
    let mut base = preset()?;
    base.time_scale = params.sweep_time_scale;
    let window = Duration::from_millis(params.window_ms);
    let points = sustain::sweep(&base, &params.sweep_workers, window, USERS).await?;
    let repeated = repeat_largest(&base, &points, window, params.repeats).await?;
    let findings = findings(&report, &stress_engine, &base, &points, &repeated);
    Ok(finish(&STAGE7, params.quick, params, started, findings))
}

/// Rates (events/s) of repeated windows at one worker count.
#[derive(Debug, Clone, Serialize)]
pub struct Repeated {
    /// Worker count.
    pub workers: usize,
    /// One rate per window, in the order measured.
    pub rates: Vec<f64>,
}

impl Repeated {
    /// Median of the rates.
    pub fn median(&self) -> f64 {
        let mut sorted = self.rates.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            length if length % 2 == 1 => sorted[length / 2],
            length => f64::midpoint(sorted[length / 2 - 1], sorted[length / 2]),
        }
    }

    /// Smallest and largest rate.
    pub fn range(&self) -> (f64, f64) {
        let low = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let high = self.rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }
}

/// The sweep's two largest worker counts measured `repeats` times each in all (the sweep's
/// window counts as the first), alternating between them so slow drift hits both alike.
async fn repeat_largest(
    base: &EngineConfig,
    points: &[(EngineConfig, Sustained)],
    window: Duration,
    repeats: usize,
) -> Result<Vec<Repeated>, LabError> {
    let mut largest: Vec<Repeated> = points
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(|(engine, point)| Repeated {
            workers: engine.workers,
            rates: vec![point.window.rate_per_second],
        })
        .collect();
    let counts: Vec<usize> = largest.iter().map(|repeated| repeated.workers).collect();
    for _ in 1..repeats {
        let again = sustain::sweep(base, &counts, window, USERS).await?;
        for (repeated, (_, point)) in largest.iter_mut().zip(&again) {
            repeated.rates.push(point.window.rate_per_second);
        }
    }
    Ok(largest)
}

/// Lock wait p50 over hold p50 at one sweep point (the contention ratio).
pub fn wait_over_hold(point: &Sustained) -> f64 {
    let hold = point.stats.lock_hold.p50_ms;
    if hold > 0.0 {
        point.stats.lock_wait.p50_ms / hold
    } else {
        f64::NAN
    }
}

/// The stress-test rows and checks.
fn stress_part(report: &Report, engine: &EngineConfig, table: &mut Table) -> Vec<Check> {
    let capacity = engine.queue_capacity_events as f64;
    let expected = capacity
        + engine.workers as f64
        + report.duration_seconds
            * sustain::lock_limit(engine).min(sustain::theoretical_rate(engine));
    let rejected_share = report.rejected as f64 / report.sent.max(1) as f64;
    table.push([
        format!(
            "stress: {} requests, {} clients",
            report.sent, report.concurrency
        ),
        format!(
            "{} accepted / {} rejected",
            report.accepted, report.rejected
        ),
        format!(
            "{:.1} % rejected in {} s",
            rejected_share * 100.0,
            format_figure(report.duration_seconds)
        ),
        format!(
            "client rate {} req/s",
            format_figure(report.throughput_per_second)
        ),
        format!("expected accepted ≈ {}", format_figure(expected)),
    ]);
    vec![
        Check::new(
            "stress: accepted events (queue + in flight + drained during the burst)",
            report.accepted as f64,
            Expectation::Between {
                min: capacity,
                max: expected * 1.3 + 10.0,
            },
        ),
        Check::new(
            "stress: rejected share",
            rejected_share,
            Expectation::AtLeast { min: 0.8 },
        ),
        Check::new(
            "stress: errors",
            report.errors as f64,
            Expectation::AtMost { max: 0.0 },
        ),
    ]
}

fn sweep_rows(points: &[(EngineConfig, Sustained)], table: &mut Table) {
    for (engine, point) in points {
        table.push([
            format!("sweep: {} workers", engine.workers),
            format!("{} events/s", format_figure(point.window.rate_per_second)),
            format!(
                "ideal {} events/s, lock limit {}",
                format_figure(sustain::theoretical_rate(engine)),
                format_figure(sustain::lock_limit(engine))
            ),
            format!(
                "lock wait p50 {} ms vs hold p50 {} ms",
                format_figure(point.stats.lock_wait.p50_ms),
                format_figure(point.stats.lock_hold.p50_ms)
            ),
            format!(
                "queue never empty: {}",
                if point.window.queue_stayed_busy {
                    "yes"
                } else {
                    "NO"
                }
            ),
        ]);
    }
}

fn sweep_checks(base: &EngineConfig, points: &[(EngineConfig, Sustained)]) -> Vec<Check> {
    let limit = sustain::lock_limit(base);
    let rate_at = |index: usize| {
        points
            .get(index)
            .map_or(f64::NAN, |(_, point)| point.window.rate_per_second)
    };
    let (Some((first_engine, _)), Some((_, last))) = (points.first(), points.last()) else {
        return vec![Check::flag("sweep measured", false)];
    };
    let last_rate = last.window.rate_per_second;
    let plateau = points
        .iter()
        .filter(|(engine, _)| sustain::theoretical_rate(engine) > limit)
        .map(|(_, point)| point.window.rate_per_second)
        .fold(0.0, f64::max);
    vec![
        Check::new(
            format!(
                "{} worker(s): measured / ideal (no contention yet)",
                first_engine.workers
            ),
            rate_at(0) / sustain::theoretical_rate(first_engine),
            Expectation::Between { min: 0.7, max: 1.1 },
        ),
        Check::new(
            "best rate past the lock limit / (1/hold) (the plateau)",
            plateau / limit,
            Expectation::AtMost { max: 1.15 },
        ),
        Check::new(
            "rate at the most workers / (1/hold) (reaches it)",
            last_rate / limit,
            Expectation::AtLeast { min: 0.6 },
        ),
        Check::new(
            "lock busy share at the most workers: rate × measured hold p50",
            last_rate * last.stats.lock_hold.p50_ms / 1e3,
            Expectation::Between { min: 0.8, max: 1.1 },
        ),
        Check::new(
            "lock wait p50 / hold p50 at the most workers (wait ≫ hold)",
            wait_over_hold(last),
            Expectation::AtLeast { min: 3.0 },
        ),
        Check::flag(
            "queue never empty in any window",
            points
                .iter()
                .all(|(_, point)| point.window.queue_stayed_busy),
        ),
    ]
}

fn findings(
    report: &Report,
    stress_engine: &EngineConfig,
    base: &EngineConfig,
    points: &[(EngineConfig, Sustained)],
    repeated: &[Repeated],
) -> Findings {
    let mut table = Table::new([
        "run",
        "result",
        "detail",
        "lock / client figures",
        "validity",
    ]);
    let mut checks = stress_part(report, stress_engine, &mut table);
    sweep_rows(points, &mut table);
    checks.extend(sweep_checks(base, points));
    let sweep_text: Vec<String> = points
        .iter()
        .map(|(engine, point)| {
            format!(
                "{}w {}/s",
                engine.workers,
                format_figure(point.window.rate_per_second)
            )
        })
        .collect();
    let wait_text = points.last().map_or_else(String::new, |(engine, point)| {
        format!(
            "; at {} workers lock wait p50 {} ms vs hold {} ms",
            engine.workers,
            format_figure(point.stats.lock_wait.p50_ms),
            format_figure(point.stats.lock_hold.p50_ms)
        )
    });
    Findings {
        measured: format!(
            "stress: {} accepted / {} rejected ({:.1} %); sweep: {} (1/hold = {}){wait_text}",
            report.accepted,
            report.rejected,
            report.rejected as f64 * 100.0 / report.sent.max(1) as f64,
            sweep_text.join(", "),
            format_figure(sustain::lock_limit(base)),
        ),
        table,
        checks,
        plot: plot(base, points),
        notes: notes(repeated),
    }
}

fn notes(repeated: &[Repeated]) -> Vec<String> {
    let mut notes = vec![
        "The seed's stress test measured the client's sending rate (12,937 req/s, mostly \
         rejections); the sweep counts applied events with the queue kept full, which is the \
         capacity."
            .to_owned(),
    ];
    if let [fewer, more] = repeated {
        notes.push(more_workers_note(fewer, more));
    }
    notes
}

/// Whether the most workers are slower than the next count, judged by the spread of
/// repeated windows: only ranges that do not overlap are called a difference.
fn more_workers_note(fewer: &Repeated, more: &Repeated) -> String {
    let describe = |repeated: &Repeated| {
        let (low, high) = repeated.range();
        format!(
            "{} workers median {} events/s (range {}–{})",
            repeated.workers,
            format_figure(repeated.median()),
            format_figure(low),
            format_figure(high)
        )
    };
    let (fewer_low, fewer_high) = fewer.range();
    let (more_low, more_high) = more.range();
    let verdict = if more_high < fewer_low {
        format!(
            "{} workers were slower in every window: the seed's \"actually slower\" holds here",
            more.workers
        )
    } else if more_low > fewer_high {
        format!(
            "{} workers were faster in every window: the seed's \"actually slower\" does not \
             hold here",
            more.workers
        )
    } else {
        "the ranges overlap: at this spread the runs neither confirm nor refute the seed's \
         \"actually slower\""
            .to_owned()
    };
    format!(
        "The seed expected {} workers to be \"actually slower\" than {}; over {} windows each, \
         alternating: {} vs {}; {verdict}.",
        more.workers,
        fewer.workers,
        more.rates.len().min(fewer.rates.len()),
        describe(more),
        describe(fewer),
    )
}

fn plot(base: &EngineConfig, points: &[(EngineConfig, Sustained)]) -> PlotSpec {
    let title = format!(
        "Stage 7: one lock held {} ms caps throughput near 1/hold",
        format_figure(base.hold_duration().as_secs_f64() * 1e3)
    );
    let series = vec![
        Series::measured("global lock (measured)", sustain::measured_line(points)),
        Series::theory(
            "no contention: workers / (work + hold)",
            sustain::ideal_line(points),
        ),
    ];
    let lock_limit = sustain::lock_limit_reference("lock limit", base);
    sustain::workers_plot(title, series, vec![lock_limit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeated(workers: usize, rates: &[f64]) -> Repeated {
        Repeated {
            workers,
            rates: rates.to_vec(),
        }
    }

    // Proves the "more workers are slower" note calls a difference only when the ranges of
    // the repeated windows do not overlap, and reports the median and the range.
    #[test]
    fn a_difference_needs_ranges_that_do_not_overlap() {
        let sixteen = repeated(16, &[88.5, 90.0, 89.7]);
        let overlapping = more_workers_note(&sixteen, &repeated(64, &[80.8, 90.2, 89.9]));
        assert!(overlapping.contains("ranges overlap"), "{overlapping}");
        assert!(overlapping.contains("median 89.9"), "{overlapping}");
        let slower = more_workers_note(&sixteen, &repeated(64, &[80.8, 81.0, 82.5]));
        assert!(slower.contains("slower in every window"), "{slower}");
        let faster = more_workers_note(&sixteen, &repeated(64, &[95.0, 96.0]));
        assert!(faster.contains("faster in every window"), "{faster}");
        assert!((repeated(4, &[1.0, 3.0, 2.0, 10.0]).median() - 2.5).abs() < 1e-9);
    }
}
