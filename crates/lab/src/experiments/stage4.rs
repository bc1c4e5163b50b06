//! Stage 4: slow work done inline while holding one lock serializes every request.
//!
//! Lesson (stage 4, docs/stages.md): "async does not equal parallel". The server accepts N clients
//! at once, but each handler sleeps 500 ms while holding the one ledger mutex, so the N answers
//! come one lock-hold apart: the last one after N × 500 ms.
//!
//! Invariant: the requests use distinct users, so only the lock (not the data) can serialize
//! them; run with a sharded ledger, the same requests overlap and the verdict fails.

use std::time::{Duration, Instant};

use floodgate_core::config::LedgerStrategy;
use floodgate_server::ServerConfig;
use serde::Serialize;

use super::servers::{start_http, stop_http};
use super::{Findings, LabError, STAGE4, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotKind, PlotSpec, Series, XScale};
use crate::probe;
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Parameters of the stage-4 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Concurrent request counts to try.
    pub concurrency: Vec<usize>,
    /// Multiplies the seed's 500 ms hold.
    pub time_scale: f64,
    /// Ledger strategy (the seed's: one global lock).
    pub strategy: LedgerStrategy,
}

impl Params {
    /// 1, 2, 4, 8 concurrent requests, 500 ms each under the lock.
    pub fn full() -> Self {
        Self {
            quick: false,
            concurrency: vec![1, 2, 4, 8],
            time_scale: 1.0,
            strategy: LedgerStrategy::Global,
        }
    }

    /// The same at a tenth of the time (50 ms under the lock).
    pub fn quick() -> Self {
        Self {
            quick: true,
            time_scale: 0.1,
            ..Self::full()
        }
    }
}

fn config(params: &Params) -> Result<ServerConfig, LabError> {
    let mut config = ServerConfig::for_stage(4).ok_or(LabError::Unavailable("stage 4 preset"))?;
    config.engine.time_scale = params.time_scale;
    config.engine.strategy = params.strategy;
    Ok(config)
}

/// Wall time for `count` concurrent requests (distinct users) and how many got 202.
async fn burst(
    addr: std::net::SocketAddr,
    count: usize,
    hold: Duration,
) -> Result<(Duration, usize), LabError> {
    let deadline = hold * (count as u32 * 3) + Duration::from_secs(2);
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|index| {
            let request = probe::valid_event(&format!("user{index}"), 1);
            tokio::spawn(async move { probe::exchange(addr, &request, deadline).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        let answer = task
            .await
            .map_err(|error| LabError::Server(format!("client task: {error}")))??;
        accepted += usize::from(answer.status() == Some(202));
    }
    Ok((started.elapsed(), accepted))
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let config = config(params)?;
    let hold = config.engine.hold_duration();
    let server = start_http(config).await?;
    let addr = server.addr();
    let mut rows = Vec::new();
    let mut failure = None;
    for count in &params.concurrency {
        match burst(addr, *count, hold).await {
            Ok((wall, accepted)) => rows.push((*count, wall, accepted)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    stop_http(server).await?;
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(finish(
        &STAGE4,
        params.quick,
        params,
        started,
        findings(&rows, hold, params),
    ))
}

fn findings(rows: &[(usize, Duration, usize)], hold: Duration, params: &Params) -> Findings {
    let hold_ms = hold.as_secs_f64() * 1e3;
    let mut table = Table::new([
        "concurrent requests",
        "answered 202",
        "wall time (ms)",
        "N × hold (ms)",
        "wall / (N × hold)",
    ]);
    let mut checks = Vec::new();
    let mut measured = Vec::new();
    for (count, wall, accepted) in rows {
        let wall_ms = wall.as_secs_f64() * 1e3;
        let serial_ms = *count as f64 * hold_ms;
        table.push([
            count.to_string(),
            format!("{accepted}/{count}"),
            format_figure(wall_ms),
            format_figure(serial_ms),
            format_figure(wall_ms / serial_ms),
        ]);
        checks.push(Check::new(
            format!("{count} requests: wall time / (N × hold)"),
            wall_ms / serial_ms,
            Expectation::Between {
                min: 0.85,
                max: 1.6,
            },
        ));
        checks.push(Check::flag(
            format!("{count} requests: all answered 202"),
            accepted == count,
        ));
        measured.push((*count as f64, wall_ms));
    }
    let summary = rows.last().map_or_else(String::new, |(count, wall, _)| {
        format!(
            "{count} concurrent requests took {} ms = {} × the {} ms hold",
            format_figure(wall.as_secs_f64() * 1e3),
            format_figure(wall.as_secs_f64() * 1e3 / hold_ms),
            format_figure(hold_ms)
        )
    });
    let serial: Vec<(f64, f64)> = rows
        .iter()
        .map(|(count, _, _)| (*count as f64, *count as f64 * hold_ms))
        .collect();
    let parallel: Vec<(f64, f64)> = rows
        .iter()
        .map(|(count, _, _)| (*count as f64, hold_ms))
        .collect();
    Findings {
        measured: summary,
        table,
        checks,
        plot: PlotSpec {
            title: format!(
                "Stage 4: {} ms of work under one lock serializes requests",
                format_figure(hold_ms)
            ),
            x_label: "concurrent requests".to_owned(),
            y_label: "wall time until all are answered (ms)".to_owned(),
            kind: PlotKind::Lines {
                x_scale: XScale::Linear,
                series: vec![
                    Series::measured(
                        format!("measured ({} ledger)", params.strategy.as_str()),
                        measured,
                    ),
                    Series::theory("serialized: N × hold", serial),
                    Series::theory("parallel: 1 × hold", parallel),
                ],
            },
            y_max: None,
            references: Vec::new(),
        },
        notes: Vec::new(),
    }
}
