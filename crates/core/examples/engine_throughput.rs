//! Events per second through queue + workers + ledger, without HTTP (the engine alone).
//!
//! For each ledger strategy x {1 user, 100,000 users} x {1, cores, 16 workers}: start an
//! engine; one producer task per core builds its share of the events on a runtime thread (as
//! HTTP handlers allocate the user strings; not timed), then all offer them at once, retrying
//! after a yield on `QueueFull`; then shut down, which drains and joins the workers. The rate
//! is events applied / (first offer .. shutdown returned). `--trickle` makes producers yield
//! after every event, like HTTP handlers (one event per task turn; use with
//! `--producers 64`). `--batch N` offers the events in batches of N through
//! `Engine::submit_batch` (one reservation per lane, the batch path of `POST /events/batch`);
//! `--batch single,N` measures both paths as cells of the same run (round-robin), so their
//! ratio comes from one invocation. Both use the production queue bound; a batch producer
//! waits (a yield, counted as a retry) until the queue surely has room for its batch, so no
//! batch is refused and neither path gets a larger queue than the other. `--ids` gives every
//! event a fresh id (checked and kept by the dedup window, which fills from empty during the
//! run: what the cost of ids is while a window fills).
//!
//! ```text
//! cargo run --release -p floodgate-core --example engine_throughput -- [--json PATH]
//!     [--events N] [--repeat R] [--queue-kind mpmc|shared_receiver|all] [--strategy NAME]
//!     [--users N] [--workers N] [--producers N] [--trickle] [--batch single|N,...] [--ids]
//! ```
//! Add `--features mimalloc` to measure with mimalloc as the global allocator.
//!
//! Cells are measured round-robin, `--repeat` rounds (default 3), and the best and median run
//! of each are reported: the machine is shared and noisy, the best run is the one least
//! disturbed by others, and round-robin spreads bursts of outside load over every cell. The
//! median CPU time per event (every thread of the process, producers included) and the rate
//! it implies with every core to ourselves ("CPU-bound") are shown too: they move less than
//! wall-clock rates when other programs compete for the cores, though cache and memory
//! contention from those programs still inflates them.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use floodgate_core::{Engine, EngineConfig, Event, LedgerStrategy, QueueKind, Rejected};
use serde::Serialize;

/// Events per measured run (one million: ~0.2 s at the target rate, ~64 MiB pre-generated).
const EVENTS_DEFAULT: usize = 1_000_000;
/// Distinct users of the "many users" rows.
const MANY_USERS: usize = 100_000;

#[derive(Debug, Serialize)]
struct Row {
    strategy: LedgerStrategy,
    queue_kind: QueueKind,
    users: usize,
    workers: usize,
    /// Events per `submit_batch` call; `None`: one `submit` per event.
    batch: Option<usize>,
    events: usize,
    seconds: f64,
    /// Best run.
    events_per_second: f64,
    /// Median run.
    median_events_per_second: f64,
    full_retries: u64,
    /// CPU time of the whole process per event (all threads), ns: robust to a noisy machine
    /// where wall-clock rates swing with other load. `None` off Linux.
    cpu_ns_per_event: Option<f64>,
    /// `cores x 1e9 / cpu_ns_per_event`: the rate if this process had every core to itself and
    /// kept them all busy (an upper estimate, robust to outside load).
    cpu_bound_events_per_second: Option<f64>,
}

/// The 1-minute load average, to print beside the figures (Linux).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// CPU time used so far by every thread of this process, in ns (Linux schedstat).
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[derive(Debug)]
struct Options {
    json: Option<String>,
    events: usize,
    repeat: usize,
    queue_kinds: Vec<QueueKind>,
    strategies: Vec<LedgerStrategy>,
    users: Vec<usize>,
    workers: Option<Vec<usize>>,
    /// Producer tasks (default: one per core).
    producers: Option<usize>,
    /// Producers yield after every event, like HTTP handlers (one event per task turn).
    trickle: bool,
    /// How events are offered, one cell each: `None` one by one (`Engine::submit`),
    /// `Some(n)` in batches of n (`Engine::submit_batch`).
    batches: Vec<Option<usize>>,
    /// Every event carries a fresh id.
    ids: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        json: None,
        events: EVENTS_DEFAULT,
        repeat: 3,
        queue_kinds: vec![QueueKind::Mpmc],
        strategies: LedgerStrategy::ALL.to_vec(),
        users: vec![1, MANY_USERS],
        workers: None,
        producers: None,
        trickle: false,
        batches: vec![None],
        ids: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--json" => options.json = Some(value()?),
            "--events" => options.events = value()?.parse().map_err(|error| format!("{error}"))?,
            "--repeat" => options.repeat = value()?.parse().map_err(|error| format!("{error}"))?,
            "--queue-kind" => {
                let text = value()?;
                options.queue_kinds = if text == "all" {
                    vec![QueueKind::Mpmc, QueueKind::SharedReceiver]
                } else {
                    vec![text.parse().map_err(|error| format!("{error}"))?]
                };
            }
            "--strategy" => {
                options.strategies = vec![value()?.parse().map_err(|error| format!("{error}"))?];
            }
            "--users" => {
                options.users = vec![value()?.parse().map_err(|error| format!("{error}"))?];
            }
            "--trickle" => options.trickle = true,
            "--ids" => options.ids = true,
            "--batch" => options.batches = parse_batches(&value()?)?,
            "--producers" => {
                options.producers = Some(value()?.parse().map_err(|error| format!("{error}"))?);
            }
            "--workers" => {
                options.workers = Some(vec![value()?.parse().map_err(|error| format!("{error}"))?]);
            }
            "--bench" => {} // passed by `cargo bench`-style runners; ignored
            other => return Err(format!("unknown flag {other}")),
        }
    }
    options.repeat = options.repeat.max(1);
    Ok(options)
}

/// `single,1000` -> [None, Some(1000)]: `single` is one `submit` per event.
fn parse_batches(text: &str) -> Result<Vec<Option<usize>>, String> {
    text.split(',')
        .map(|part| match part.trim() {
            "single" => Ok(None),
            size => size
                .parse::<usize>()
                .map(|size| Some(size.max(1)))
                .map_err(|error| format!("--batch {part}: {error}")),
        })
        .collect()
}

/// Producer `producer`'s share of `events` events over `users` users, split in `producers`
/// chunks (user i*7919 % users, so consecutive events hit different users and shards); with
/// `ids`, event i carries the id `event-{i}` (UUID-sized).
fn chunk(events: usize, users: usize, producers: usize, producer: usize, ids: bool) -> Vec<Event> {
    let per_producer = events.div_ceil(producers);
    let start = producer * per_producer;
    let end = (start + per_producer).min(events);
    (start..end)
        .map(|index| {
            let event = Event::new(format!("user{}", (index * 7919) % users), 1);
            if !ids {
                return event;
            }
            let id = format!("0190b6b4-7c1e-7d2a-9f00-{index:012}");
            event.with_id(floodgate_core::EventId::parse(&id).expect("a valid id"))
        })
        .collect()
}

/// What one run offers.
#[derive(Clone, Copy)]
struct Workload {
    events: usize,
    users: usize,
    producers: usize,
    trickle: bool,
    batch: Option<usize>,
    ids: bool,
    /// Queue lanes (owned: one per worker), to know when a batch surely fits.
    lanes: usize,
}

/// One measured run.
async fn run_once(config: EngineConfig, workload: Workload) -> Run {
    let engine = Engine::start(config).expect("valid benchmark config");
    // Each producer builds its events on a runtime thread (as HTTP handlers allocate the user
    // strings), then all start together; building is not timed.
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(workload.producers + 1));
    let trickle = workload.trickle;
    let producers: Vec<_> = (0..workload.producers)
        .map(|producer| {
            let engine = engine.clone();
            let ready = std::sync::Arc::clone(&ready);
            tokio::spawn(async move {
                let chunk = chunk(
                    workload.events,
                    workload.users,
                    workload.producers,
                    producer,
                    workload.ids,
                );
                ready.wait().await;
                if let Some(size) = workload.batch {
                    return offer_batches(&engine, chunk, size, workload).await;
                }
                let mut retries = 0_u64;
                for event in chunk {
                    let mut event = event;
                    loop {
                        match engine.submit(event).await {
                            Ok(_) if trickle => {
                                // Like an HTTP handler: one event, then other tasks run.
                                tokio::task::yield_now().await;
                                break;
                            }
                            Ok(_) => break,
                            Err(refused) if refused.reason == Rejected::QueueFull => {
                                retries += 1;
                                event = refused.event;
                                tokio::task::yield_now().await;
                            }
                            Err(refused) => panic!("unexpected refusal {:?}", refused.reason),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    ready.wait().await;
    let cpu_before = process_cpu_ns();
    let started = Instant::now();
    let mut retries = 0;
    for producer in producers {
        retries += producer.await.expect("producer");
    }
    let summary = engine.shutdown().await;
    let elapsed = started.elapsed();
    let cpu_ns = cpu_before
        .zip(process_cpu_ns())
        .map(|(before, after)| after - before);
    Run {
        elapsed,
        retries,
        applied: summary.applied,
        cpu_ns,
    }
}

/// Offers `events` in batches of `size`, each once the queue surely has room for it (see
/// [`surely_fits`]): never refused. Returns how many times it waited.
async fn offer_batches(
    engine: &Engine,
    events: Vec<Event>,
    size: usize,
    workload: Workload,
) -> u64 {
    let mut events = events.into_iter();
    let mut waits = 0;
    loop {
        let batch: Vec<Event> = events.by_ref().take(size).collect();
        if batch.is_empty() {
            return waits;
        }
        while !surely_fits(engine, size, workload) {
            waits += 1;
            tokio::task::yield_now().await;
        }
        if let Err(reason) = engine.submit_batch(batch).await {
            panic!("a batch refused: {reason:?}");
        }
    }
}

/// Whether a batch of `size` fits the queue even if every other producer pushes one too
/// before it: all waiting events plus one batch per producer within one lane's bound (only
/// producers add to the queue, so the check cannot be invalidated by anyone else).
fn surely_fits(engine: &Engine, size: usize, workload: Workload) -> bool {
    let lane_capacity = engine.queue_capacity_events() / workload.lanes;
    engine.queue_depth() + size * workload.producers <= lane_capacity
}

/// One measured run.
struct Run {
    elapsed: Duration,
    retries: u64,
    applied: u64,
    cpu_ns: Option<u64>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// One cell of the table: a configuration and its runs.
struct Cell {
    strategy: LedgerStrategy,
    queue_kind: QueueKind,
    users: usize,
    workers: usize,
    batch: Option<usize>,
    runs: Vec<Run>,
}

impl Cell {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            strategy: self.strategy,
            workers: self.workers,
            queue_kind: self.queue_kind,
            ..EngineConfig::production()
        }
    }

    fn row(&self, options: &Options) -> Row {
        let events = options.events as f64;
        let mut rates: Vec<f64> = self
            .runs
            .iter()
            .map(|run| events / run.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut cpu: Vec<u64> = self.runs.iter().filter_map(|run| run.cpu_ns).collect();
        cpu.sort_unstable();
        let best = self
            .runs
            .iter()
            .min_by_key(|run| run.elapsed)
            .expect("at least one run");
        Row {
            strategy: self.strategy,
            queue_kind: self.queue_kind,
            users: self.users,
            workers: self.workers,
            batch: self.batch,
            events: options.events,
            seconds: best.elapsed.as_secs_f64(),
            events_per_second: rates[rates.len() - 1],
            median_events_per_second: rates[rates.len() / 2],
            full_retries: best.retries,
            cpu_ns_per_event: cpu.get(cpu.len() / 2).map(|&ns| ns as f64 / events),
            cpu_bound_events_per_second: cpu
                .get(cpu.len() / 2)
                .map(|&ns| cores() as f64 * 1e9 * events / ns as f64),
        }
    }
}

/// Every cell, measured round-robin `repeat` times: a burst of load from other programs then
/// hits all cells alike instead of one cell's every run.
fn measure_all(runtime: &tokio::runtime::Runtime, options: &Options, cells: &mut [Cell]) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    for round in 0..options.repeat {
        for cell in cells.iter_mut() {
            let workload = Workload {
                events: options.events,
                users: cell.users,
                producers: options.producers.unwrap_or(cores).max(1),
                trickle: options.trickle,
                batch: cell.batch,
                ids: options.ids,
                lanes: if cell.strategy == LedgerStrategy::Owned {
                    cell.workers
                } else {
                    1
                },
            };
            let run = runtime.block_on(run_once(cell.config(), workload));
            assert_eq!(run.applied, options.events as u64, "every event applied");
            eprintln!(
                "round {round}: {:>8} users={:>6} workers={:>2} {}: {:.2} M events/s",
                cell.strategy,
                cell.users,
                cell.workers,
                batch_label(cell.batch),
                options.events as f64 / run.elapsed.as_secs_f64() / 1e6
            );
            cell.runs.push(run);
        }
    }
}

/// `single` or `batch of N`.
fn batch_label(batch: Option<usize>) -> String {
    batch.map_or_else(|| "single".to_owned(), |size| format!("batch of {size}"))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| strategy | queue | users | workers | offered | best events/s | median events/s | CPU ns/event (median) | CPU-bound events/s | QueueFull retries / waits (best run) |\n\
         |---|---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} M | {:.2} M | {} | {} | {} |",
            row.strategy,
            row.queue_kind,
            row.users,
            row.workers,
            batch_label(row.batch),
            row.events_per_second / 1e6,
            row.median_events_per_second / 1e6,
            row.cpu_ns_per_event
                .map_or_else(|| "-".to_owned(), |ns| format!("{ns:.0}")),
            row.cpu_bound_events_per_second
                .map_or_else(|| "-".to_owned(), |rate| format!("{:.2} M", rate / 1e6)),
            row.full_retries
        );
    }
    out
}

/// For each configuration measured both ways: batch CPU per event / single CPU per event
/// (below 1: a batch is cheaper per event), from the same invocation.
fn batch_ratios(rows: &[Row]) -> String {
    let mut out = String::new();
    for single in rows.iter().filter(|row| row.batch.is_none()) {
        let same_cell = |row: &&Row| {
            row.strategy == single.strategy
                && row.queue_kind == single.queue_kind
                && row.users == single.users
                && row.workers == single.workers
        };
        for batched in rows.iter().filter(same_cell) {
            let (Some(size), Some(batch_ns), Some(single_ns)) = (
                batched.batch,
                batched.cpu_ns_per_event,
                single.cpu_ns_per_event,
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{} {} users={} workers={}: batch of {size} / single CPU per event = \
                 {batch_ns:.0} / {single_ns:.0} ns = {:.2}",
                single.strategy,
                single.queue_kind,
                single.users,
                single.workers,
                batch_ns / single_ns
            );
        }
    }
    out
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("engine_throughput: {error}");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut worker_counts = options
        .workers
        .clone()
        .unwrap_or_else(|| vec![1, cores, 16]);
    worker_counts.dedup();
    let mut cells = Vec::new();
    for &queue_kind in &options.queue_kinds {
        for &strategy in &options.strategies {
            for &users in &options.users {
                for &workers in &worker_counts {
                    for &batch in &options.batches {
                        let runs = Vec::with_capacity(options.repeat);
                        cells.push(Cell {
                            strategy,
                            queue_kind,
                            users,
                            workers,
                            batch,
                            runs,
                        });
                    }
                }
            }
        }
    }
    let load_before = load_average();
    measure_all(&runtime, &options, &mut cells);
    let rows: Vec<Row> = cells.iter().map(|cell| cell.row(&options)).collect();
    println!(
        "Engine alone (no HTTP), {} events per run, {} rounds, {cores} cores, allocator {}, \
         load average {load_before} before / {} after:\n",
        options.events,
        options.repeat,
        if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "system"
        },
        load_average()
    );
    println!("{}", table(&rows));
    print!("{}", batch_ratios(&rows));
    if let Some(path) = options.json {
        let json = serde_json::to_string_pretty(&rows).expect("rows serialize");
        if let Err(error) = std::fs::write(&path, json) {
            eprintln!("engine_throughput: cannot write {path}: {error}");
            std::process::exit(1);
        }
    }
}
