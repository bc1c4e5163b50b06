//! Sustained throughput of one server configuration: offered load above capacity, the queue
//! kept non-empty, applied events counted over a window from the engine's own counters.
//!
//! Lesson (stages 6–8, docs/stages.md): capacity is the pace of the workers when they never run out
//! of work; the client's "requests/s" (mostly fast 503s under overload) is not it. An open-loop
//! load at 1.5 × the theoretical capacity keeps the queue full without flooding the machine.
//!
//! Invariant: the load and the server are both stopped before [`measure`] returns, and the
//! offered rate never exceeds [`MAX_OFFERED_RATE_PER_SECOND`].

use std::time::Duration;

use floodgate_core::config::EngineConfig;
use floodgate_core::stats::Stats;
use floodgate_load::{LoadConfig, Mode, Report, Skew};
use floodgate_server::ServerConfig;
use serde::Serialize;
use tokio::sync::oneshot;

use super::LabError;
use super::servers::{start_http, stop_http};
use crate::measure::{self, Sample, Window};
use crate::plot::{PlotKind, PlotSpec, Reference, Series, XScale};
use crate::verdict::format_figure;

/// Offered load relative to the theoretical capacity: enough to keep the queue full.
pub const OVERLOAD_FACTOR: f64 = 1.5;
/// Ceiling on the offered rate: a debug build on two cores answers a few thousand requests per
/// second; above that the client, not the server, would be measured.
pub const MAX_OFFERED_RATE_PER_SECOND: f64 = 3_000.0;
/// Floor on the offered rate, so slow configurations still fill their queue quickly.
pub const MIN_OFFERED_RATE_PER_SECOND: f64 = 20.0;
/// Most requests in flight from the open-loop load.
const MAX_IN_FLIGHT: usize = 512;

/// One sustained measurement's knobs.
#[derive(Debug, Clone, Serialize)]
pub struct Sustain {
    /// The engine under test.
    pub engine: EngineConfig,
    /// How long applied events are counted.
    pub window: Duration,
    /// Most time allowed for the queue to fill before the window starts.
    pub warmup_limit: Duration,
    /// Distinct users in the load.
    pub users: u64,
    /// User popularity.
    #[serde(skip)]
    pub skew: Skew,
}

/// What one sustained measurement found.
#[derive(Debug, Clone)]
pub struct Sustained {
    /// Applied events over the window.
    pub window: Window,
    /// The engine's stats right after the window (lock wait and hold summaries).
    pub stats: Stats,
    /// The load generator's report.
    pub report: Report,
    /// The offered rate used.
    pub offered_per_second: f64,
}

/// `workers / (work + hold)`: the pace if workers never waited for each other (events/s).
pub fn theoretical_rate(engine: &EngineConfig) -> f64 {
    let per_event = (engine.work_duration() + engine.hold_duration()).as_secs_f64();
    if per_event > 0.0 {
        engine.workers as f64 / per_event
    } else {
        f64::INFINITY
    }
}

/// `1 / hold`: the most events per second one lock can let through (events/s).
pub fn lock_limit(engine: &EngineConfig) -> f64 {
    let hold = engine.hold_duration().as_secs_f64();
    if hold > 0.0 {
        1.0 / hold
    } else {
        f64::INFINITY
    }
}

fn offered_rate(engine: &EngineConfig) -> f64 {
    (theoretical_rate(engine) * OVERLOAD_FACTOR)
        .clamp(MIN_OFFERED_RATE_PER_SECOND, MAX_OFFERED_RATE_PER_SECOND)
}

fn load_config(url: String, sustain: &Sustain, rate: f64) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.mode = Mode::Open {
        rate_per_second: rate,
        duration: sustain.warmup_limit + sustain.window * 4 + Duration::from_secs(5),
        max_in_flight: MAX_IN_FLIGHT,
    };
    load.users = sustain.users;
    load.skew = sustain.skew;
    load.threads = 1;
    load.request_timeout = Duration::from_secs(5);
    load
}

/// Starts a server with `sustain.engine`, overloads it, and counts applied events over the
/// window once the queue is busy.
pub async fn measure(sustain: &Sustain) -> Result<Sustained, LabError> {
    let mut config = ServerConfig::production();
    config.engine = sustain.engine.clone();
    let server = start_http(config).await?;
    let rate = offered_rate(&sustain.engine);
    let (stop_load, load_stopped) = oneshot::channel::<()>();
    let load = tokio::spawn(floodgate_load::run_until(
        load_config(server.url(), sustain, rate),
        async move {
            let _ = load_stopped.await;
        },
    ));
    let engine = server.engine().clone();
    let sample = || {
        let stats = engine.stats();
        Sample {
            applied: stats.applied,
            queue_depth: stats.queue_depth,
        }
    };
    let busy_depth = (sustain.engine.queue_capacity_events / 2).clamp(1, 10);
    measure::wait_until_busy(sample, busy_depth, sustain.warmup_limit).await;
    let window = measure::watch(sample, sustain.window, 1).await;
    let stats = engine.stats();
    let _ = stop_load.send(());
    let report = load.await;
    stop_http(server).await?;
    let report = report
        .map_err(|error| LabError::Load(format!("load task: {error}")))?
        .map_err(|error| LabError::Load(error.to_string()))?;
    Ok(Sustained {
        window,
        stats,
        report,
        offered_per_second: rate,
    })
}

/// The queue used by sweeps: 4 events per worker, at least 16. Enough that the workers never
/// run dry under overload; small enough that stopping (which drains the queue) takes seconds
/// even for one slow worker. Capacity does not change the workers' pace.
pub fn sweep_queue_capacity_events(workers: usize) -> usize {
    (workers * 4).max(16)
}

/// Measures `base` with each worker count in `workers`, one after another.
pub async fn sweep(
    base: &EngineConfig,
    workers: &[usize],
    window: Duration,
    users: u64,
) -> Result<Vec<(EngineConfig, Sustained)>, LabError> {
    let mut points = Vec::with_capacity(workers.len());
    for count in workers {
        let mut engine = base.clone();
        engine.workers = *count;
        engine.queue_capacity_events = sweep_queue_capacity_events(*count);
        let sustain = Sustain {
            engine: engine.clone(),
            window,
            warmup_limit: Duration::from_secs(5),
            users,
            skew: Skew::Uniform,
        };
        points.push((engine, measure(&sustain).await?));
    }
    Ok(points)
}

/// A sweep's measured throughput (applied events/s) by worker count, as plot points.
pub fn measured_line(points: &[(EngineConfig, Sustained)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|(engine, point)| (engine.workers as f64, point.window.rate_per_second))
        .collect()
}

/// `workers / (work + hold)` at each worker count the sweep measured, as plot points. Drawn
/// at the same counts as the measured lines, so each segment of theory and measurement joins
/// the same two counts and the lines compare point for point (a curve sampled elsewhere would
/// cross a straight measured segment between two distant counts and mislead the eye).
pub fn ideal_line(points: &[(EngineConfig, Sustained)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|(engine, _)| (engine.workers as f64, theoretical_rate(engine)))
        .collect()
}

/// The one-lock ceiling drawn across a sweep's chart: `{prefix} 1/hold = N events/s`.
pub fn lock_limit_reference(prefix: &str, engine: &EngineConfig) -> Reference {
    let limit = lock_limit(engine);
    Reference {
        label: format!("{prefix} 1/hold = {} events/s", format_figure(limit)),
        y: limit,
    }
}

/// The sweeps' chart (stages 6 to 8, shared receiver): applied throughput against workers on a
/// doubling axis.
pub fn workers_plot(title: String, series: Vec<Series>, references: Vec<Reference>) -> PlotSpec {
    PlotSpec {
        title,
        x_label: "workers".to_owned(),
        y_label: "throughput (events/s, applied)".to_owned(),
        kind: PlotKind::Lines {
            x_scale: XScale::Log2,
            series,
        },
        y_max: None,
        references,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage7() -> EngineConfig {
        EngineConfig::for_stage(7).expect("stage 7 preset")
    }

    // Proves the seed's own arithmetic: 16 workers / 110 ms ≈ 145 events/s, and one lock held
    // 10 ms lets through 100 events/s; time scale shrinks both durations alike.
    #[test]
    fn theory_matches_the_seeds_formula() {
        let engine = stage7();
        assert!((theoretical_rate(&engine) - 16.0 / 0.110).abs() < 1e-6);
        assert!((lock_limit(&engine) - 100.0).abs() < 1e-6);
        let fast = EngineConfig {
            time_scale: 0.5,
            ..stage7()
        };
        assert!((lock_limit(&fast) - 200.0).abs() < 1e-6);
        let free = EngineConfig {
            work_ms: 0,
            hold_ms: 0,
            ..stage7()
        };
        assert!(theoretical_rate(&free).is_infinite() && lock_limit(&free).is_infinite());
    }

    // Proves the offered load overloads a slow configuration yet never exceeds the ceiling.
    #[test]
    fn offered_rate_is_above_capacity_and_bounded() {
        let engine = stage7();
        let rate = offered_rate(&engine);
        assert!(rate > theoretical_rate(&engine) && rate <= MAX_OFFERED_RATE_PER_SECOND);
        let free = EngineConfig {
            work_ms: 0,
            hold_ms: 0,
            ..stage7()
        };
        assert!((offered_rate(&free) - MAX_OFFERED_RATE_PER_SECOND).abs() < f64::EPSILON);
    }

    // Proves the sweep queue grows with workers from a floor of 16 events, and the theory
    // rate is workers / (work + hold).
    #[test]
    fn sweep_queue_and_theory_rate() {
        let mut engine = stage7();
        engine.workers = 64;
        assert!((theoretical_rate(&engine) - 64.0 / 0.110).abs() < 1e-6);
        assert_eq!(sweep_queue_capacity_events(1), 16);
        assert_eq!(sweep_queue_capacity_events(64), 256);
    }
}
