//! floodgate-load: the load generator, as a library the lab drives in-process and as
//! the `floodgate load` subcommand.
//!
//! Lesson (stages 2, 6 and 7, docs/stages.md): the original client printed one throughput that
//! mixed fast 503s with real work, and its closed loop slowed down with the server it measured.
//! This one keeps accepted, rejected, invalid and failed requests apart (each with its own HDR
//! latency histogram), offers a true open loop (latency from the intended start, late and dropped
//! requests counted), holds slow clients open alongside the load (stage 1's `nc` experiment) and
//! mixes malformed bodies in (stage 3).
//! Batches, ids and resends (`--batch`, `--ids`, `--retry`) are the client side of exactly-once:
//! a resend carries the same ids, and each event is counted once, from the last answer.
//! Invariant: `accepted + rejected + invalid + errors == sent` (requests),
//! `events_accepted + events_duplicate + events_rejected + events_unanswered == events_sent`
//! (events), memory is constant in the run's
//! length, and only loopback targets are accepted.
//!
//! Map: [`LoadConfig`] (what to run) → `runner` (slow clients, one current-thread runtime per
//! core) → `closed` / `open` loops over `client` connections (one hyper HTTP/1 connection per
//! worker) → per-thread `stats` merged once → [`Report`] (table + JSON, schema in
//! `crates/load/SCHEMA.md`) → `threshold` (`--fail-if`). `cli` is the `floodgate load` edge.
//!
//! ```no_run
//! # async fn example() -> Result<(), floodgate_load::LoadError> {
//! use floodgate_load::{LoadConfig, Mode};
//! let mut config = LoadConfig::new("http://127.0.0.1:8080");
//! config.mode = Mode::Closed { concurrency: 64, requests: Some(10_000), duration: None };
//! let report = floodgate_load::run(config).await?;
//! println!("{}", report.render_table());
//! # Ok(()) }
//! ```

mod cli;
mod client;
mod closed;
mod config;
mod events;
mod open;
mod progress;
mod report;
#[cfg(test)]
mod run_tests;
mod runner;
mod slow;
mod stats;
mod target;
#[cfg(test)]
mod test_server;
#[doc(hidden)]
pub mod testing;
mod threshold;

pub use cli::{
    AmountRange, INTERRUPTED_EXIT_CODE, LoadArgs, THRESHOLD_FAILED_EXIT_CODE, load_main,
};
pub use config::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_REQUESTS,
    DEFAULT_RETRY_MAX, DEFAULT_URL, DEFAULT_USERS, LoadConfig, MAX_BATCH_EVENTS, MAX_CONNECTIONS,
    Mode, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN, RetryPolicy, Skew, SlowKind,
};
pub use events::INVALID_BODIES;
pub use open::LATE_START_THRESHOLD;
pub use report::{ErrorsByKind, LatencyBreakdown, LatencySummary, Report, SCHEMA_VERSION};
pub use runner::{run, run_until};
pub use threshold::{Threshold, breaches, parse_thresholds};

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL does not parse or is not `http://host:port/path`.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host is not loopback: floodgate only loads the local machine.
    #[error("refusing to load `{host}`: only loopback targets (127.0.0.0/8, ::1, localhost)")]
    NotLoopback {
        /// The host given.
        host: String,
    },
    /// A config value is out of bounds.
    #[error("invalid load config: {0}")]
    InvalidConfig(String),
    /// A `--fail-if` condition does not parse.
    #[error("invalid threshold {0}")]
    InvalidThreshold(String),
    /// A load thread or its runtime could not be started.
    #[error("starting a load thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// A load thread died (a bug: its panic message went to stderr).
    #[error("a load thread failed")]
    ThreadFailed,
}
