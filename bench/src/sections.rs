//! The suite's four measurements. Each returns a [`Table`] with its rows and its verdicts
//! against the suite's targets; every figure is measured in this run, ratios within one run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::{Binaries, ServerProcess, free_loopback_addr};
use crate::tools::{self, FloodgateLoad, LoadFigures};
use crate::{SuiteOptions, Table};

/// Connection counts of the ingest comparison (16, 64, 256).
const INGEST_CONCURRENCIES: [usize; 3] = [16, 64, 256];
/// Ratio of the bare hyper ceiling Floodgate must reach at 64 connections.
const INGEST_TARGET_RATIO: f64 = 0.85;
/// Workers of the overload server: with [`OVERLOAD_WORK_MS`] they give a known capacity
/// (8 / 8 ms = 1,000 events/s nominal), measured again in the run.
const OVERLOAD_WORKERS: usize = 8;
/// Simulated work per event of the overload server.
const OVERLOAD_WORK_MS: u64 = 8;
/// Queue of the overload server: a second of work at capacity.
const OVERLOAD_QUEUE_EVENTS: usize = 1_000;
/// Work and hold of the seed's stage 7/8 presets, in seconds.
const PRESET_WORK_PLUS_HOLD_SECONDS: f64 = 0.110;

fn start_floodgate(binaries: &Binaries, extra: &[&str]) -> Result<ServerProcess> {
    let addr = free_loopback_addr()?;
    // Balances in memory: these sections measure the front door and the engine against the
    // bare hyper ceiling (and write no data directory into the working tree).
    let mut args = vec![
        "serve".to_owned(),
        "--addr".to_owned(),
        addr.to_string(),
        "--durability".to_owned(),
        "memory".to_owned(),
    ];
    args.extend(extra.iter().map(|&flag| flag.to_owned()));
    ServerProcess::start(&binaries.floodgate, &args, addr)
}

fn start_bare(binaries: &Binaries) -> Result<ServerProcess> {
    let addr = free_loopback_addr()?;
    ServerProcess::start(&binaries.bare_hyper, &[addr.to_string()], addr)
}

fn closed_loop(concurrency: usize, seconds: u64) -> FloodgateLoad {
    FloodgateLoad {
        flags: vec![
            "--concurrency".into(),
            concurrency.to_string(),
            "--duration".into(),
            format!("{seconds}s"),
            "--users".into(),
            "10000".into(),
        ],
    }
}

/// An open loop over 1,000 users. `precise` paces starts to well under a millisecond (one load
/// thread spinning its last millisecond) so latency measured from the intended start is the
/// server's, not tokio's 1 ms timer's; the overload section needs that for its 2 ms target.
fn open_loop(rate_per_second: f64, seconds: u64, precise: bool) -> FloodgateLoad {
    let mut load = FloodgateLoad {
        flags: vec![
            "--rate".into(),
            format!("{rate_per_second:.0}"),
            "--duration".into(),
            format!("{seconds}s"),
            "--users".into(),
            "1000".into(),
        ],
    };
    if precise {
        load.flags
            .extend(["--precise-pacing".into(), "--threads".into(), "1".into()]);
    }
    load
}

/// Section 1: single-event ingest against the bare hyper ceiling, per tool and concurrency.
pub fn ingest(binaries: &Binaries, options: &SuiteOptions) -> Result<Table> {
    let mut table = Table::new(
        "Single-event ingest vs the bare hyper ceiling",
        &format!(
            "Closed loop, keep-alive, `POST /events`, {}s per run, {} pairs of runs back to back \
             (alternating which server goes first). Floodgate runs its production default; the \
             ceiling is `bare-hyper` (reads the body, answers 202, parses nothing). Both are \
             loaded by the same tool seconds apart. req/s are medians over the runs; ratio is the \
             median of the per-pair ratios Floodgate / ceiling, and spread their range.",
            options.seconds, options.repeat
        ),
        &[
            "tool",
            "connections",
            "Floodgate req/s",
            "Floodgate non-2xx",
            "ceiling req/s",
            "ratio",
            "spread",
        ],
    );
    let floodgate = start_floodgate(binaries, &[])?;
    let bare = start_bare(binaries)?;
    let script_dir = std::env::temp_dir();
    let mut tools_used = vec!["floodgate load"];
    if options.use_wrk {
        tools_used.push("wrk");
    }
    for concurrency in INGEST_CONCURRENCIES {
        for &tool in &tools_used {
            let measure = |url: &str| -> Result<LoadFigures> {
                if tool == "wrk" {
                    tools::wrk(url, concurrency, options.seconds, &script_dir)
                } else {
                    closed_loop(concurrency, options.seconds).run(binaries, url)
                }
            };
            let pairs = paired_runs(
                options.repeat,
                || measure(&floodgate.url()),
                || measure(&bare.url()),
            )?;
            let ratios = pair_ratios(&pairs);
            let ratio = median(&ratios);
            let ours: Vec<f64> = pairs
                .iter()
                .map(|(ours, _)| ours.requests_per_second)
                .collect();
            let ceiling: Vec<f64> = pairs
                .iter()
                .map(|(_, ceiling)| ceiling.requests_per_second)
                .collect();
            let non_success: u64 = pairs.iter().map(|(ours, _)| ours.non_success).sum();
            table.row(vec![
                tool.to_owned(),
                concurrency.to_string(),
                format!("{:.0}", median(&ours)),
                non_success.to_string(),
                format!("{:.0}", median(&ceiling)),
                format!("{ratio:.2}"),
                format!("{:.2}–{:.2}", ratios[0], ratios[ratios.len() - 1]),
            ]);
            if concurrency == 64 {
                table.target(
                    &format!("{tool}, 64 connections: ≥ {INGEST_TARGET_RATIO} of the ceiling"),
                    format!("{ratio:.2}"),
                    ratio >= INGEST_TARGET_RATIO && non_success == 0,
                );
            }
        }
    }
    Ok(table)
}

/// Runs `ours` and `ceiling` back to back `repeat` times, alternating which goes first, and
/// returns the pairs. A pair's two runs share the machine's state of that moment (this
/// machine drifts by 20 % between minutes), so the ratio within a pair is the robust figure.
fn paired_runs(
    repeat: usize,
    ours: impl Fn() -> Result<LoadFigures>,
    ceiling: impl Fn() -> Result<LoadFigures>,
) -> Result<Vec<(LoadFigures, LoadFigures)>> {
    let mut pairs = Vec::new();
    for round in 0..repeat.max(1) {
        let pair = if round % 2 == 0 {
            let first = ours()?;
            (first, ceiling()?)
        } else {
            let first = ceiling()?;
            (ours()?, first)
        };
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Floodgate / ceiling per pair, ascending.
fn pair_ratios(pairs: &[(LoadFigures, LoadFigures)]) -> Vec<f64> {
    let mut ratios: Vec<f64> = pairs
        .iter()
        .map(|(ours, ceiling)| ours.requests_per_second / ceiling.requests_per_second)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The median (the upper one of an even count); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Section 2: the engine without HTTP, from the core's `engine_throughput` example.
pub fn engine(binaries: &Binaries) -> Result<Table> {
    let json_path = std::env::temp_dir().join("floodgate-engine-throughput.json");
    let status = std::process::Command::new(&binaries.engine_throughput)
        .arg("--json")
        .arg(&json_path)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running the engine_throughput example")?;
    anyhow::ensure!(status.success(), "engine_throughput exited with {status}");
    let rows: Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    let rows = rows
        .as_array()
        .or_else(|| rows.get("rows").and_then(Value::as_array))
        .context("engine_throughput JSON: expected an array of rows")?;
    let columns: Vec<String> = rows
        .first()
        .and_then(Value::as_object)
        .map(|row| row.keys().cloned().collect())
        .unwrap_or_default();
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut table = Table::new(
        "The engine without HTTP",
        "Events pre-generated, then pushed through queue + workers + ledger \
         (`cargo run --release -p floodgate-core --example engine_throughput --features mimalloc`: \
         mimalloc, as in the `floodgate` binary).",
        &column_refs,
    );
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u64;
    let production = rows.iter().find(|row| is_production_row(row, cores));
    for row in rows {
        table.row(columns.iter().map(|key| cell(&row[key])).collect());
    }
    let median = production
        .and_then(|row| row.get("median_events_per_second"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    table.target(
        "production default (owned, one worker per core), many users: ≥ 5,000,000 events/s (median)",
        format!("{median:.0} events/s"),
        median >= 5_000_000.0,
    );
    Ok(table)
}

/// The row of the production default: the owned strategy, many users, one worker per core.
fn is_production_row(row: &Value, cores: u64) -> bool {
    row.get("strategy").and_then(Value::as_str) == Some("owned")
        && row.get("users").and_then(Value::as_u64).unwrap_or(0) > 1
        && row.get("workers").and_then(Value::as_u64) == Some(cores)
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number
            .as_f64()
            .map_or_else(|| number.to_string(), |float| format!("{float:.0}")),
        other => other.to_string(),
    }
}

/// Samples the server's resident memory once a second while `work` runs.
fn with_memory_samples<T>(
    server: &ServerProcess,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, Vec<u64>)>
where
    T: Send,
{
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut rss_kib = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                rss_kib.push(server.rss_kib().unwrap_or(0));
                std::thread::sleep(Duration::from_secs(1));
            }
            rss_kib
        });
        let outcome = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let memory_kib = sampler.join().unwrap_or_default();
        outcome.map(|value| (value, memory_kib))
    })
}

/// Section 3: sustained overload at twice a known capacity.
pub fn overload(binaries: &Binaries, options: &SuiteOptions) -> Result<Table> {
    let workers = OVERLOAD_WORKERS.to_string();
    let work = OVERLOAD_WORK_MS.to_string();
    let queue = OVERLOAD_QUEUE_EVENTS.to_string();
    let flags = [
        "--workers",
        &workers,
        "--work-ms",
        &work,
        "--queue-capacity-events",
        &queue,
    ];
    let server = start_floodgate(binaries, &flags)?;
    let capacity = measured_pace(
        &server,
        &closed_loop(64, options.seconds + 2),
        binaries,
        2,
        options.seconds,
    )?;
    let at_capacity = open_loop(capacity, options.seconds, true).run(binaries, &server.url())?;
    let (overloaded, memory) = with_memory_samples(&server, || {
        open_loop(2.0 * capacity, options.overload_seconds, true).run(binaries, &server.url())
    })?;
    let mut table = Table::new(
        "Overload at 2x capacity",
        &format!(
            "Production front door with {OVERLOAD_WORKERS} workers x {OVERLOAD_WORK_MS} ms simulated \
             work, queue {OVERLOAD_QUEUE_EVENTS}. Capacity = applied/s under a saturating closed \
             loop; then an open loop at capacity ({}s) and at 2x capacity ({}s) with memory sampled \
             every second. Open loops pace with `--precise-pacing`.",
            options.seconds, options.overload_seconds
        ),
        &[
            "phase",
            "offered/s",
            "accepted/s",
            "accepted p99 ms",
            "rejected p99 ms",
        ],
    );
    table.row(vec![
        "at capacity".into(),
        format!("{capacity:.0}"),
        format!("{:.0}", at_capacity.accepted_per_second),
        format!("{:.2}", at_capacity.accepted_p99_ms),
        format!("{:.2}", at_capacity.rejected_p99_ms),
    ]);
    table.row(vec![
        "2x capacity".into(),
        format!("{:.0}", 2.0 * capacity),
        format!("{:.0}", overloaded.accepted_per_second),
        format!("{:.2}", overloaded.accepted_p99_ms),
        format!("{:.2}", overloaded.rejected_p99_ms),
    ]);
    let kept = overloaded.accepted_per_second / at_capacity.accepted_per_second;
    table.target(
        "accepted at 2x ≥ 0.95 of accepted at capacity",
        format!("{kept:.2}"),
        kept >= 0.95,
    );
    table.target(
        "rejection p99 < 2 ms",
        format!("{:.2} ms", overloaded.rejected_p99_ms),
        overloaded.rejected_p99_ms < 2.0,
    );
    let (flat, memory_text) = memory_is_flat(&memory);
    table.target("memory flat over the overload window", memory_text, flat);
    Ok(table)
}

/// Flat: the peak of the second half is within 10 % (or 2 MiB) of the peak of the first half.
fn memory_is_flat(samples_kib: &[u64]) -> (bool, String) {
    let half = samples_kib.len() / 2;
    let first = samples_kib[..half].iter().copied().max().unwrap_or(0);
    let second = samples_kib[half..].iter().copied().max().unwrap_or(0);
    let flat = second <= first + (first / 10).max(2048);
    (
        flat,
        format!(
            "peak {first} KiB in the first half, {second} KiB in the second ({} samples)",
            samples_kib.len()
        ),
    )
}

/// Runs `load` in the background and returns the server's applied events per second over a
/// window that starts `warmup_seconds` in and lasts `window_seconds` (the worker pace, not the
/// client's sending rate).
fn measured_pace(
    server: &ServerProcess,
    load: &FloodgateLoad,
    binaries: &Binaries,
    warmup_seconds: u64,
    window_seconds: u64,
) -> Result<f64> {
    let url = server.url();
    std::thread::scope(|scope| {
        let runner = scope.spawn(|| load.run(binaries, &url));
        std::thread::sleep(Duration::from_secs(warmup_seconds));
        let before = tools::stat(&tools::server_stats(&url)?, "applied");
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(window_seconds));
        let after = tools::stat(&tools::server_stats(&url)?, "applied");
        let pace = (after - before) / started.elapsed().as_secs_f64();
        runner
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        Ok(pace)
    })
}

/// Section 4: the seed's stage 7 and 8 presets against workers / (work + hold).
pub fn presets(binaries: &Binaries, options: &SuiteOptions) -> Result<Table> {
    let mut table = Table::new(
        "The seed's presets: stage 7 (one lock) and stage 8 (sharded)",
        "`floodgate serve --stage S --workers W`, 100 ms work + 10 ms held per event, queue 100, \
         open loop at 1.5x the theoretical limit over 1,000 users; jobs/s = applied events per \
         second over the window (from `/stats`).",
        &[
            "stage",
            "workers",
            "jobs/s",
            "limit workers/(work+hold)",
            "fraction",
        ],
    );
    for stage in [7_u8, 8] {
        for workers in [16_usize, 64] {
            let limit = workers as f64 / PRESET_WORK_PLUS_HOLD_SECONDS;
            let stage_text = stage.to_string();
            let workers_text = workers.to_string();
            let server = start_floodgate(
                binaries,
                &["--stage", &stage_text, "--workers", &workers_text],
            )?;
            let load = open_loop(1.5 * limit, options.seconds + 3, false);
            let pace = measured_pace(&server, &load, binaries, 2, options.seconds)?;
            let fraction = pace / limit;
            table.row(vec![
                stage_text,
                workers_text,
                format!("{pace:.0}"),
                format!("{limit:.0}"),
                format!("{fraction:.2}"),
            ]);
            if stage == 8 {
                table.target(
                    &format!("stage 8, {workers} workers: ≥ 0.9 of the limit"),
                    format!("{fraction:.2}"),
                    fraction >= 0.9,
                );
            }
        }
    }
    Ok(table)
}
