//! Beyond the seed: sharding does not save a hot user.
//!
//! Lesson (beyond stage 8, docs/stages.md): stage 8 shards the ledger by user, which helps only
//! while updates spread over many users. When a share `p` of the events hits one user, that user's
//! shard lock must pass `p × rate` events per second, each held for `hold`: throughput cannot pass
//! `1 / (hold × p)`, and with a single user it is the global lock's 1/hold again.
//!
//! Invariant: every scenario runs the same sharded engine, worker count and time scale; only
//! the users' popularity changes, so the differences are the skew's doing.

use std::time::{Duration, Instant};

use floodgate_core::config::EngineConfig;
use floodgate_load::Skew;
use serde::Serialize;

use super::sustain::{self, Sustain, Sustained};
use super::{Findings, HOT_KEYS, LabError, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec, Reference};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// One popularity scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    /// Distinct users.
    pub users: u64,
    /// Zipf exponent (0 = uniform).
    pub zipf_exponent: f64,
}

impl Scenario {
    fn skew(self) -> Skew {
        if self.zipf_exponent > 0.0 {
            Skew::Zipf {
                exponent: self.zipf_exponent,
            }
        } else {
            Skew::Uniform
        }
    }

    fn label(self) -> String {
        match (self.users, self.zipf_exponent) {
            (1, _) => "one user".to_owned(),
            (users, exponent) if exponent > 0.0 => format!("zipf {exponent} over {users} users"),
            (users, _) => format!("uniform over {users} users"),
        }
    }

    /// The share of events that go to the most popular user.
    pub fn top_share(self) -> f64 {
        let exponent = self.zipf_exponent.max(0.0);
        let total: f64 = (1..=self.users)
            .map(|rank| (rank as f64).powf(-exponent))
            .sum();
        if total > 0.0 { 1.0 / total } else { 1.0 }
    }
}

/// Parameters of the hot-key experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Workers (many, so the sharded engine's ideal is far above 1/hold).
    pub workers: usize,
    /// Multiplies the seed's 100 ms work and 10 ms hold.
    pub time_scale: f64,
    /// Length of each window.
    pub window_ms: u64,
    /// The scenarios, from spread to hot.
    pub scenarios: Vec<Scenario>,
}

impl Params {
    /// 64 workers, the seed's times, 5 s windows.
    pub fn full() -> Self {
        let scenario = |users, zipf_exponent| Scenario {
            users,
            zipf_exponent,
        };
        Self {
            quick: false,
            workers: 64,
            time_scale: 1.0,
            window_ms: 5_000,
            scenarios: vec![
                scenario(1_000, 0.0),
                scenario(1_000, 1.0),
                scenario(1_000, 2.0),
                scenario(1, 0.0),
            ],
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

/// The sharded engine under test.
fn engine(params: &Params) -> Result<EngineConfig, LabError> {
    let mut engine = EngineConfig::for_stage(8).ok_or(LabError::Unavailable("stage 8 preset"))?;
    engine.workers = params.workers;
    engine.queue_capacity_events = sustain::sweep_queue_capacity_events(params.workers);
    engine.time_scale = params.time_scale;
    Ok(engine)
}

/// The ceiling for a scenario: the ideal pace, or the hot user's lock, whichever is lower.
fn bound(engine: &EngineConfig, scenario: Scenario) -> f64 {
    let hot = sustain::lock_limit(engine) / scenario.top_share();
    sustain::theoretical_rate(engine).min(hot)
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let engine = engine(params)?;
    let mut points = Vec::new();
    for scenario in &params.scenarios {
        let sustain = Sustain {
            engine: engine.clone(),
            window: Duration::from_millis(params.window_ms),
            warmup_limit: Duration::from_secs(5),
            users: scenario.users,
            skew: scenario.skew(),
        };
        points.push((*scenario, sustain::measure(&sustain).await?));
    }
    Ok(finish(
        &HOT_KEYS,
        params.quick,
        params,
        started,
        findings(&engine, &points),
    ))
}

fn checks(engine: &EngineConfig, points: &[(Scenario, Sustained)]) -> Vec<Check> {
    let rate = |index: usize| {
        points
            .get(index)
            .map_or(f64::NAN, |(_, point)| point.window.rate_per_second)
    };
    let limit = sustain::lock_limit(engine);
    let mut checks = vec![Check::new(
        "spread users: measured / (workers/(work+hold))",
        rate(0) / sustain::theoretical_rate(engine),
        Expectation::AtLeast { min: 0.5 },
    )];
    for (index, (scenario, _)) in points.iter().enumerate().skip(1) {
        let hot_bound = limit / scenario.top_share();
        if hot_bound < sustain::theoretical_rate(engine) {
            checks.push(Check::new(
                format!(
                    "{}: measured / hot-lock bound 1/(hold × top share)",
                    scenario.label()
                ),
                rate(index) / hot_bound,
                Expectation::AtMost { max: 1.15 },
            ));
        }
    }
    let last = points.len().saturating_sub(1);
    checks.push(Check::new(
        format!(
            "{} / spread users (sharding no longer helps)",
            points
                .get(last)
                .map_or_else(String::new, |(s, _)| s.label())
        ),
        rate(last) / rate(0),
        Expectation::AtMost { max: 0.5 },
    ));
    checks
}

fn findings(engine: &EngineConfig, points: &[(Scenario, Sustained)]) -> Findings {
    let mut table = Table::new([
        "users",
        "top user's share",
        "throughput (events/s)",
        "bound (events/s)",
        "lock wait p50 / hold p50",
    ]);
    for (scenario, point) in points {
        let hold = point.stats.lock_hold.p50_ms;
        table.push([
            scenario.label(),
            format!("{:.1} %", scenario.top_share() * 100.0),
            format_figure(point.window.rate_per_second),
            format_figure(bound(engine, *scenario)),
            format_figure(if hold > 0.0 {
                point.stats.lock_wait.p50_ms / hold
            } else {
                f64::NAN
            }),
        ]);
    }
    let bars = points
        .iter()
        .map(|(scenario, point)| Bar::new(scenario.label(), point.window.rate_per_second))
        .collect();
    let text: Vec<String> = points
        .iter()
        .map(|(scenario, point)| {
            format!(
                "{}: {} events/s",
                scenario.label(),
                format_figure(point.window.rate_per_second)
            )
        })
        .collect();
    Findings {
        measured: format!("sharded ledger, {} workers: {}", engine.workers, text.join("; ")),
        table,
        checks: checks(engine, points),
        plot: PlotSpec {
            title: format!("Beyond the seed: a hot user defeats sharding ({} workers, sharded)", engine.workers),
            x_label: "user popularity".to_owned(),
            y_label: "throughput (events/s, applied)".to_owned(),
            kind: PlotKind::Bars { bars },
            y_max: None,
            references: vec![
                Reference { label: format!("workers / (work + hold) = {}", format_figure(sustain::theoretical_rate(engine))), y: sustain::theoretical_rate(engine) },
                Reference { label: format!("one lock: 1/hold = {}", format_figure(sustain::lock_limit(engine))), y: sustain::lock_limit(engine) },
            ],
        },
        notes: vec!["The bound is min(workers/(work+hold), 1/(hold × top user's share)): the hot user's shard lock must pass its share of every event.".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the hot user's share: 1/N when uniform, 1 for a single user, and 1/H(N, s) for
    // Zipf (s = 2 over 1000 users: about 60.8 %), which sets the hot-lock bound.
    #[test]
    fn top_share_follows_the_popularity_law() {
        let uniform = Scenario {
            users: 1_000,
            zipf_exponent: 0.0,
        };
        assert!((uniform.top_share() - 0.001).abs() < 1e-12);
        let single = Scenario {
            users: 1,
            zipf_exponent: 0.0,
        };
        assert!((single.top_share() - 1.0).abs() < 1e-12);
        let zipf = Scenario {
            users: 1_000,
            zipf_exponent: 2.0,
        };
        assert!((zipf.top_share() - 0.608).abs() < 0.001);
        let engine = EngineConfig::for_stage(8).expect("stage 8 preset");
        // 16 workers / 110 ms ≈ 145 events/s is below 1/(10 ms × 60.8 %) ≈ 164: not hot-bound.
        assert!((bound(&engine, zipf) - sustain::theoretical_rate(&engine)).abs() < 1e-9);
        assert!((bound(&engine, single) - 100.0).abs() < 1e-9);
        assert_eq!(single.label(), "one user");
        assert_eq!(zipf.label(), "zipf 2 over 1000 users");
    }
}
