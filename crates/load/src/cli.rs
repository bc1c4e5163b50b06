//! `floodgate load`: flags → [`LoadConfig`], run, print the table, write JSON, judge thresholds.
//!
//! Lesson (stages 2, 6, 7, docs/stages.md): the seed's client was edited and recompiled for every
//! experiment; here an experiment is a command line. Invariant: flags are checked (config
//! validation, loopback, thresholds) before any connection is opened; the exit code is 0 on
//! success, 1 on an error, [`THRESHOLD_FAILED_EXIT_CODE`] when a `--fail-if` threshold fails,
//! [`INTERRUPTED_EXIT_CODE`] when Ctrl-C stopped the run (its report is still printed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{
    DEFAULT_AMOUNT_MAX, DEFAULT_AMOUNT_MIN, DEFAULT_CONCURRENCY, DEFAULT_INVALID_RATIO,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_REQUESTS, DEFAULT_RETRY_MAX,
    DEFAULT_SEED, DEFAULT_SLOW_CLIENTS, DEFAULT_THREADS, DEFAULT_URL, DEFAULT_USERS, LoadConfig,
    Mode, RetryPolicy, Skew, SlowKind,
};
use crate::threshold::{breaches, parse_thresholds};
use crate::{LoadError, run_until};

/// Exit code when the run completed but a `--fail-if` threshold did not hold.
pub const THRESHOLD_FAILED_EXIT_CODE: u8 = 3;
/// Exit code when the run was stopped by Ctrl-C (the report is still printed and written).
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

/// Flags of `floodgate load`.
///
/// Closed loop: `floodgate load -c 200 -n 5000` or `-c 64 -d 10s`.
/// Open loop: `floodgate load --rate 2000 -d 10s --max-in-flight 500`.
#[derive(Debug, Clone, clap::Args)]
#[allow(clippy::struct_excessive_bools)] // each bool is one on/off command-line flag
pub struct LoadArgs {
    /// Target URL, loopback only (127.0.0.0/8, ::1, localhost); the path defaults to /events.
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// Requests to send (closed loop; with --rate and no --duration: the schedule's length).
    /// Default 1000 when neither --requests nor --duration is given.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Closed loop: connections, each with one request in flight.
    #[arg(short = 'c', long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// How long to run, e.g. `10s`, `500ms`, `2m`.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: requests per second on a fixed schedule (latency from the intended start).
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Open loop: requests due while this many are in flight are dropped (and counted).
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Slow clients held open alongside the load.
    #[arg(long, default_value_t = DEFAULT_SLOW_CLIENTS)]
    pub slow: usize,
    /// What slow clients do: `idle` (send nothing) or `trickle` (a partial request, 1 byte at a time).
    #[arg(long, default_value_t = SlowKind::default())]
    pub slow_kind: SlowKind,
    /// Share of malformed bodies (not JSON, wrong types, missing fields), 0..1.
    #[arg(long, default_value_t = DEFAULT_INVALID_RATIO)]
    pub invalid_ratio: f64,
    /// Distinct users.
    #[arg(long, default_value_t = DEFAULT_USERS)]
    pub users: u64,
    /// User popularity: `uniform` or `zipf:S` (e.g. `zipf:1.1`: hot keys).
    #[arg(long, default_value_t = Skew::default())]
    pub skew: Skew,
    /// Amounts, inclusive range `MIN..MAX` (e.g. `1..100`, `-50..50`).
    #[arg(long, default_value_t = AmountRange::DEFAULT, allow_hyphen_values = true)]
    pub amounts: AmountRange,
    /// Seed of the event streams (each worker's sequence of events is reproducible).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// A request without a full answer after this is an error.
    #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT.into())]
    pub timeout: humantime::Duration,
    /// Load threads (one runtime each); 0 = one per core.
    #[arg(long, default_value_t = DEFAULT_THREADS)]
    pub threads: usize,
    /// Open loop: pace with sub-millisecond precision by spinning (burns CPU while waiting:
    /// only when the generator does not share its cores with the server).
    #[arg(long)]
    pub precise_pacing: bool,
    /// Events per request: POST NDJSON batches of N events (to /events/batch unless the URL
    /// names a path); without it, one JSON event per request.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Give every event a fresh id (a UUIDv7), so a resend is never applied twice.
    #[arg(long)]
    pub ids: bool,
    /// Resend a request that timed out, lost its connection or was answered 503/429, with the
    /// same body and ids, backing off from 5 ms to 500 ms (exactly-once needs --ids too).
    #[arg(long)]
    pub retry: bool,
    /// With --retry: resends of one request at most; then its last outcome stands.
    #[arg(long, default_value_t = DEFAULT_RETRY_MAX)]
    pub retry_max: u32,
    /// Write the report as JSON (schema: crates/load/SCHEMA.md) to this path.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Thresholds that must hold, comma-separated, e.g. `p99<50ms,errors=0,accepted>100`;
    /// if one does not, exit with code 3.
    #[arg(long)]
    pub fail_if: Option<String>,
    /// Never draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// An inclusive amount range, written `MIN..MAX` or `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountRange {
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
}

impl AmountRange {
    /// The default range, as [`LoadConfig::new`] sets it.
    pub const DEFAULT: Self = Self {
        min: DEFAULT_AMOUNT_MIN,
        max: DEFAULT_AMOUNT_MAX,
    };
}

impl std::fmt::Display for AmountRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}..{}", self.min, self.max)
    }
}

impl FromStr for AmountRange {
    type Err = LoadError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || LoadError::InvalidConfig(format!("amounts `{text}`: expected MIN..MAX"));
        let (min, max) = text.split_once("..").ok_or_else(invalid)?;
        let max = max.strip_prefix('=').unwrap_or(max);
        let min = min.trim().parse().map_err(|_| invalid())?;
        let max = max.trim().parse().map_err(|_| invalid())?;
        Ok(Self { min, max })
    }
}

impl LoadArgs {
    /// The run these flags describe (validated by [`crate::run`]).
    pub fn into_config(self) -> Result<LoadConfig, LoadError> {
        let mode = match self.rate {
            Some(rate_per_second) => {
                let duration = match (self.duration, self.requests) {
                    (Some(duration), _) => duration,
                    (None, Some(requests)) if rate_per_second > 0.0 => {
                        Duration::from_secs_f64(requests as f64 / rate_per_second)
                    }
                    _ => {
                        return Err(LoadError::InvalidConfig(
                            "--rate needs --duration (or --requests)".into(),
                        ));
                    }
                };
                Mode::Open {
                    rate_per_second,
                    duration,
                    max_in_flight: self.max_in_flight,
                }
            }
            None => Mode::Closed {
                concurrency: self.concurrency,
                requests: self
                    .requests
                    .or(self.duration.is_none().then_some(DEFAULT_REQUESTS)),
                duration: self.duration,
            },
        };
        let mut config = LoadConfig::new(self.url);
        config.mode = mode;
        config.slow_clients = self.slow;
        config.slow_kind = self.slow_kind;
        config.invalid_ratio = self.invalid_ratio;
        config.users = self.users;
        config.skew = self.skew;
        config.amount_min = self.amounts.min;
        config.amount_max = self.amounts.max;
        config.seed = self.seed;
        config.request_timeout = self.timeout.into();
        config.progress = !self.no_progress;
        config.threads = self.threads;
        config.precise_pacing = self.precise_pacing;
        config.batch_events = self.batch;
        config.ids = self.ids;
        config.retry = self.retry.then_some(RetryPolicy {
            max_retries: self.retry_max,
        });
        config.validate()?;
        Ok(config)
    }
}

/// Entry point of `floodgate load`: runs the load (Ctrl-C ends it early, still reporting),
/// prints the table, writes `--json`, applies `--fail-if`.
pub fn load_main(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let thresholds = args
        .fail_if
        .as_deref()
        .map(parse_thresholds)
        .transpose()?
        .unwrap_or_default();
    let json_path = args.json.clone();
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the coordinator runtime")?;
    let report = runtime.block_on(run_until(config, interrupted()))?;
    print!("{}", report.render_table());
    if let Some(path) = &json_path {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    let failed = breaches(&thresholds, &report);
    for breach in &failed {
        eprintln!("threshold failed: {breach}");
    }
    if report.stopped_early {
        return Ok(ExitCode::from(INTERRUPTED_EXIT_CODE));
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(THRESHOLD_FAILED_EXIT_CODE))
    }
}

/// Resolves on the first Ctrl-C (the run then stops and reports); a second Ctrl-C exits at
/// once. Never resolves if the signal handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
    eprintln!("interrupted: finishing requests in flight (Ctrl-C again to quit at once)");
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(i32::from(INTERRUPTED_EXIT_CODE));
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn config(args: &[&str]) -> Result<LoadConfig, LoadError> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map_err(|error| LoadError::InvalidConfig(error.to_string()))?;
        cli.load.into_config()
    }

    // Proves the flags' defaults are LoadConfig::new's: no flag given, the same run.
    #[test]
    fn no_flags_is_the_library_default() {
        let mut parsed = config(&[]).expect("defaults parse");
        parsed.progress = false;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", LoadConfig::new(DEFAULT_URL))
        );
    }

    #[test]
    fn flags_build_closed_and_open_loop_configs() {
        // Proves the README's command lines map onto the modes: the default is 1000 requests
        // at concurrency 50; --duration alone runs by time; --rate makes an open loop.
        let default = config(&[]).unwrap();
        assert_eq!(
            default.mode,
            Mode::Closed {
                concurrency: 50,
                requests: Some(1000),
                duration: None
            }
        );
        let timed = config(&["-c", "8", "-d", "500ms"]).unwrap();
        assert_eq!(
            timed.mode,
            Mode::Closed {
                concurrency: 8,
                requests: None,
                duration: Some(Duration::from_millis(500))
            }
        );
        let open = config(&["--rate", "200", "--requests", "400", "--max-in-flight", "9"]).unwrap();
        assert_eq!(
            open.mode,
            Mode::Open {
                rate_per_second: 200.0,
                duration: Duration::from_secs(2),
                max_in_flight: 9
            }
        );
        let mixed =
            config(&["--amounts", "-50..=50", "--skew", "zipf:1.1", "--slow", "3"]).unwrap();
        assert_eq!((mixed.amount_min, mixed.amount_max), (-50, 50));
        assert_eq!(mixed.skew, Skew::Zipf { exponent: 1.1 });
        assert_eq!(mixed.slow_clients, 3);
        let exact = config(&["--batch", "500", "--ids", "--retry", "--retry-max", "7"]).unwrap();
        assert_eq!(exact.batch_events, Some(500));
        assert!(exact.ids);
        assert_eq!(exact.retry, Some(RetryPolicy { max_retries: 7 }));
        assert_eq!(exact.target().unwrap().path, "/events/batch");
        assert!(config(&["--batch", "0"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused_before_any_connection() {
        // Proves non-loopback URLs, a rate without an end and nonsense values fail at parse
        // or validation time.
        assert!(config(&["--rate", "10"]).is_err());
        assert!(config(&["--invalid-ratio", "2"]).is_err());
        assert!(config(&["--amounts", "5"]).is_err());
        assert!(config(&["--skew", "hot"]).is_err());
        assert!(matches!(
            config(&["--url", "http://8.8.8.8"]),
            Err(LoadError::NotLoopback { .. })
        ));
    }
}
