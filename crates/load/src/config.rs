//! What a load run does: the mode (closed or open loop), the event mix, the slow clients.
//!
//! Lesson (stages 2, 6, 7, docs/stages.md): the seed's client fixed "200 concurrent, 5000 requests"
//! in code; here every knob is a field with a sane default, so the lab and the CLI drive the same
//! runs. Invariant: a config that passes [`LoadConfig::validate`] is bounded (connections,
//! in-flight requests, duration, users) and targets loopback only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::LoadError;
use crate::target::Target;

/// Default target: the server's default listen address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Default number of requests of a closed-loop run when neither a count nor a duration is given.
pub const DEFAULT_REQUESTS: u64 = 1_000;
/// Default closed-loop concurrency (connections, each with one request in flight).
pub const DEFAULT_CONCURRENCY: usize = 50;
/// Default cap on requests in flight in the open loop: high enough for 10k/s at 100 ms latency.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1_000;
/// Default request timeout: far above any healthy answer, short enough to end a frozen run.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of distinct users.
pub const DEFAULT_USERS: u64 = 100;
/// Default seed of the event streams.
pub const DEFAULT_SEED: u64 = 0x5EED;
/// Default smallest amount of an event.
pub const DEFAULT_AMOUNT_MIN: i64 = 1;
/// Default largest amount of an event.
pub const DEFAULT_AMOUNT_MAX: i64 = 100;
/// Default number of slow clients: none.
pub const DEFAULT_SLOW_CLIENTS: usize = 0;
/// Default share of malformed bodies: none.
pub const DEFAULT_INVALID_RATIO: f64 = 0.0;
/// Default number of load threads: 0 means one per core.
pub const DEFAULT_THREADS: usize = 0;
/// Upper bound on connections (load + slow) of one run: stays under the usual 20k fd limit.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Upper bound on a run's duration, so a typo cannot start a week-long run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Upper bound on distinct users: the Zipf sampler is O(1) memory, user names stay short.
pub const MAX_USERS: u64 = 1_000_000_000;
/// Upper bound on load threads (one current-thread runtime each).
pub const MAX_THREADS: usize = 256;
/// Upper bound on events per batch: 8x the server's default `--batch-max-events`, so a
/// too-large batch can still be sent on purpose (the server answers 413).
pub const MAX_BATCH_EVENTS: usize = 65_536;
/// Default number of resends of one request with `--retry`: with the backoff capped at
/// [`RETRY_BACKOFF_MAX`] that is about 50 s of trying, longer than a restart takes.
pub const DEFAULT_RETRY_MAX: u32 = 100;
/// First pause before a resend; it doubles at each resend of the same request.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between two resends of the same request.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// When and how often a request whose outcome is unknown or refused for now is resent (the
/// client side of exactly-once: with ids, a resend is never applied twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Resends of one request at most (attempts = 1 + this); then its last outcome stands.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_RETRY_MAX,
        }
    }
}

impl RetryPolicy {
    /// The pause before resend number `retry` (1-based): doubling from [`RETRY_BACKOFF_MIN`],
    /// capped at [`RETRY_BACKOFF_MAX`].
    pub fn backoff(retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        RETRY_BACKOFF_MIN
            .saturating_mul(1 << doublings)
            .min(RETRY_BACKOFF_MAX)
    }
}

/// Closed loop (the seed's: each connection sends its next request when the last answer
/// arrives) or open loop (a fixed schedule of request starts, whatever the answers do).
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// `concurrency` connections; stop after `requests` requests or after `duration`,
    /// whichever comes first (at least one must be set).
    Closed {
        /// Connections, each with at most one request in flight.
        concurrency: usize,
        /// Total requests to send.
        requests: Option<u64>,
        /// Stop starting requests after this long.
        duration: Option<Duration>,
    },
    /// Request `n` is due at `t0 + n / rate_per_second`; latency counts from that instant.
    Open {
        /// Offered rate.
        rate_per_second: f64,
        /// Length of the schedule: `ceil(rate * duration)` requests are scheduled.
        duration: Duration,
        /// A request due while this many are in flight is dropped (and counted).
        max_in_flight: usize,
    },
}

/// How a slow client misbehaves (the seed's stage-1 `nc` experiment, built in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowKind {
    /// Connect and send nothing.
    #[default]
    Idle,
    /// Send a request's head and body one byte at a time, never the last byte.
    Trickle,
}

impl FromStr for SlowKind {
    type Err = LoadError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "idle" => Ok(Self::Idle),
            "trickle" => Ok(Self::Trickle),
            _ => Err(LoadError::InvalidConfig(format!(
                "slow kind `{text}`: expected idle or trickle"
            ))),
        }
    }
}

impl fmt::Display for SlowKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Idle => "idle",
            Self::Trickle => "trickle",
        })
    }
}

/// How users are picked for each event.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Skew {
    /// Every user equally likely.
    #[default]
    Uniform,
    /// User of rank k picked with probability proportional to 1 / k^exponent (hot keys).
    Zipf {
        /// 0 is uniform; 1 is the classic Zipf; larger is hotter.
        exponent: f64,
    },
}

impl FromStr for Skew {
    type Err = LoadError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "uniform" {
            return Ok(Self::Uniform);
        }
        let exponent = text
            .strip_prefix("zipf:")
            .and_then(|value| value.parse::<f64>().ok())
            .ok_or_else(|| {
                LoadError::InvalidConfig(format!("skew `{text}`: expected uniform or zipf:S"))
            })?;
        Ok(Self::Zipf { exponent })
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => formatter.write_str("uniform"),
            Self::Zipf { exponent } => write!(formatter, "zipf:{exponent}"),
        }
    }
}

/// Everything a load run needs. Build with [`LoadConfig::new`] and change fields.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Target, e.g. `http://127.0.0.1:8080` (path defaults to `/events`); loopback only.
    pub url: String,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections held open alongside the load that never finish a request.
    pub slow_clients: usize,
    /// What the slow clients do.
    pub slow_kind: SlowKind,
    /// Share (0.0..=1.0) of malformed bodies (not JSON, wrong types, missing fields).
    pub invalid_ratio: f64,
    /// Distinct users (`user0` .. `user{users-1}`).
    pub users: u64,
    /// User popularity.
    pub skew: Skew,
    /// Smallest amount (inclusive).
    pub amount_min: i64,
    /// Largest amount (inclusive).
    pub amount_max: i64,
    /// Seed of every random choice (each thread derives its own stream from it).
    pub seed: u64,
    /// A request not answered within this is an error (timeout) and its connection is dropped.
    pub request_timeout: Duration,
    /// Show a progress bar (only drawn when stderr is a terminal and the run lasts > 1 s).
    pub progress: bool,
    /// Load threads, each with its own current-thread runtime; 0 = one per core.
    pub threads: usize,
    /// Open loop: wake up to 1 ms early and yield-spin to each due time, instead of trusting
    /// tokio's millisecond timer (which starts requests up to ~1 ms late). Costs up to a core
    /// per load thread while waiting, so use it only when the generator has cores to spare.
    pub precise_pacing: bool,
    /// Events per request: `None` posts one JSON event per request (to `/events` by default);
    /// `Some(n)` posts NDJSON batches of `n` events (to `/events/batch` by default).
    pub batch_events: Option<usize>,
    /// Every valid event carries a fresh `id` (a UUIDv7), so the server can tell a resend
    /// from a new event.
    pub ids: bool,
    /// Resend a request that timed out, lost its connection or was answered 503/429, with the
    /// same body (so the same ids); `None`: every outcome is final.
    pub retry: Option<RetryPolicy>,
}

impl LoadConfig {
    /// A closed-loop run of [`DEFAULT_REQUESTS`] at [`DEFAULT_CONCURRENCY`], valid events only.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mode: Mode::Closed {
                concurrency: DEFAULT_CONCURRENCY,
                requests: Some(DEFAULT_REQUESTS),
                duration: None,
            },
            slow_clients: DEFAULT_SLOW_CLIENTS,
            slow_kind: SlowKind::default(),
            invalid_ratio: DEFAULT_INVALID_RATIO,
            users: DEFAULT_USERS,
            skew: Skew::default(),
            amount_min: DEFAULT_AMOUNT_MIN,
            amount_max: DEFAULT_AMOUNT_MAX,
            seed: DEFAULT_SEED,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            progress: false,
            threads: DEFAULT_THREADS,
            precise_pacing: false,
            batch_events: None,
            ids: false,
            retry: None,
        }
    }

    /// The parsed target; with batches, a URL without a path means `/events/batch`.
    pub fn target(&self) -> Result<Target, LoadError> {
        let default_path = if self.batch_events.is_some() {
            crate::target::DEFAULT_BATCH_PATH
        } else {
            crate::target::DEFAULT_PATH
        };
        Target::parse_with_default(&self.url, default_path)
    }

    /// Checks every bound; [`crate::run`] calls it first.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.target()?;
        let invalid = |reason: String| Err(LoadError::InvalidConfig(reason));
        let connections = match &self.mode {
            Mode::Closed {
                concurrency,
                requests,
                duration,
            } => {
                if requests.is_none() && duration.is_none() {
                    return invalid("closed loop needs a request count or a duration".into());
                }
                if let Some(duration) = duration {
                    check_duration(*duration)?;
                }
                *concurrency
            }
            Mode::Open {
                rate_per_second,
                duration,
                max_in_flight,
            } => {
                if !rate_per_second.is_finite() || *rate_per_second <= 0.0 {
                    return invalid(format!("rate {rate_per_second}: must be > 0"));
                }
                check_duration(*duration)?;
                *max_in_flight
            }
        };
        if connections == 0 || connections + self.slow_clients > MAX_CONNECTIONS {
            return invalid(format!(
                "{connections} connections + {} slow: must be 1..={MAX_CONNECTIONS} in all",
                self.slow_clients
            ));
        }
        if !(0.0..=1.0).contains(&self.invalid_ratio) {
            return invalid(format!(
                "invalid ratio {}: must be in 0..=1",
                self.invalid_ratio
            ));
        }
        if self.users == 0 || self.users > MAX_USERS {
            return invalid(format!("users {}: must be 1..={MAX_USERS}", self.users));
        }
        if let Skew::Zipf { exponent } = self.skew
            && !(exponent.is_finite() && exponent >= 0.0)
        {
            return invalid(format!("zipf exponent {exponent}: must be >= 0"));
        }
        if self.amount_min > self.amount_max {
            return invalid(format!(
                "amounts {}..{}: min > max",
                self.amount_min, self.amount_max
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > MAX_DURATION {
            return invalid("request timeout must be > 0 and at most a day".into());
        }
        if self
            .batch_events
            .is_some_and(|events| events == 0 || events > MAX_BATCH_EVENTS)
        {
            return invalid(format!("batch: 1..={MAX_BATCH_EVENTS} events per request"));
        }
        if self.threads > MAX_THREADS {
            return invalid(format!("threads {}: at most {MAX_THREADS}", self.threads));
        }
        Ok(())
    }
}

fn check_duration(duration: Duration) -> Result<(), LoadError> {
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(LoadError::InvalidConfig(format!(
            "duration {duration:?}: must be > 0 and at most a day"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_and_slow_kind_parse_and_print_round_trip() {
        // Proves the CLI spellings `uniform`, `zipf:1.2`, `idle`, `trickle` parse, print back,
        // and that nonsense is refused rather than silently defaulted.
        assert_eq!("uniform".parse::<Skew>().unwrap(), Skew::Uniform);
        assert_eq!(
            "zipf:1.2".parse::<Skew>().unwrap(),
            Skew::Zipf { exponent: 1.2 }
        );
        assert_eq!(Skew::Zipf { exponent: 1.2 }.to_string(), "zipf:1.2");
        assert!("zipf".parse::<Skew>().is_err());
        assert!("zipf:x".parse::<Skew>().is_err());
        assert_eq!("trickle".parse::<SlowKind>().unwrap(), SlowKind::Trickle);
        assert_eq!(SlowKind::Idle.to_string(), "idle");
        assert!("slow".parse::<SlowKind>().is_err());
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        // Proves the resend pauses: 5, 10, 20 ms ... then never above the cap, even for a
        // retry count that would overflow a shift.
        assert_eq!(RetryPolicy::backoff(1), RETRY_BACKOFF_MIN);
        assert_eq!(RetryPolicy::backoff(2), RETRY_BACKOFF_MIN * 2);
        assert_eq!(RetryPolicy::backoff(3), RETRY_BACKOFF_MIN * 4);
        assert_eq!(RetryPolicy::backoff(8), RETRY_BACKOFF_MAX);
        assert_eq!(RetryPolicy::backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }

    #[test]
    fn validate_refuses_unbounded_or_nonsense_configs() {
        // Proves the defaults are valid and each bound is enforced.
        let config = LoadConfig::new(DEFAULT_URL);
        assert!(config.validate().is_ok());
        let mut no_stop = config.clone();
        no_stop.mode = Mode::Closed {
            concurrency: 1,
            requests: None,
            duration: None,
        };
        assert!(no_stop.validate().is_err());
        let mut too_many = config.clone();
        too_many.slow_clients = MAX_CONNECTIONS;
        assert!(too_many.validate().is_err());
        let mut zero_rate = config.clone();
        zero_rate.mode = Mode::Open {
            rate_per_second: 0.0,
            duration: Duration::from_secs(1),
            max_in_flight: 10,
        };
        assert!(zero_rate.validate().is_err());
        let mut bad_ratio = config.clone();
        bad_ratio.invalid_ratio = 1.5;
        assert!(bad_ratio.validate().is_err());
        let mut bad_amounts = config.clone();
        bad_amounts.amount_min = 5;
        bad_amounts.amount_max = 1;
        assert!(bad_amounts.validate().is_err());
        let mut empty_batch = config.clone();
        empty_batch.batch_events = Some(0);
        assert!(empty_batch.validate().is_err());
        let mut huge_batch = config;
        huge_batch.batch_events = Some(MAX_BATCH_EVENTS + 1);
        assert!(huge_batch.validate().is_err());
    }
}
