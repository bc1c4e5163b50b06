//! Engine knobs and the stage presets (stages 3–8 as named sets of knobs).
//!
//! Lesson (stages 3–8, docs/stages.md): each stage is one configuration of the same pipeline
//! (validate only, inline under one lock, a bounded queue with 1/4/16 workers, one lock vs shards),
//! so the lab can reproduce every stage and sweep every knob alone.
//!
//! Invariant: an [`EngineConfig`] that passes [`EngineConfig::validate`] has every limit
//! bounded (queue capacity, workers, shards, simulated durations), so the engine built from it
//! cannot grow without bound.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most workers an engine may run. Workers are tokio tasks (cheap), but each owns two lock
/// histograms (~25 KiB each) and, with the owned strategy, a queue; 1024 bounds that memory.
pub const WORKERS_MAX: usize = 1024;
/// Most shards for the sharded strategy: each shard is a map plus two locks; beyond 4096 the
/// per-shard overhead buys nothing on any machine we run on.
pub const SHARDS_MAX: usize = 4096;
/// Largest queue, in events (~40 bytes each plus the user string): 16 Mi events is about 1 GiB
/// at the worst, a hard ceiling so a typo cannot make the queue unbounded in practice.
pub const QUEUE_CAPACITY_EVENTS_MAX: usize = 16 * 1024 * 1024;
/// Production queue capacity: deep enough to absorb bursts of a few milliseconds at millions
/// of events per second, small enough (~3 MiB of jobs) that the queue never hides overload.
pub const PRODUCTION_QUEUE_CAPACITY_EVENTS: usize = 65_536;
/// Production shard count for [`LedgerStrategy::Sharded`] (and stage 8): a power of two well
/// above any worker count we run, so two workers rarely want the same shard.
pub const DEFAULT_SHARDS: usize = 64;
/// Longest simulated duration (work or hold), in milliseconds: one minute; the seed uses 500.
pub const SIMULATED_MS_MAX: u64 = 60_000;
/// Production (and stage preset) limit on distinct users: 10 M users. What they cost in
/// memory depends on their names: see [`crate::ledger::user_cost_bytes`] (measured 189–331
/// bytes a user for 8- to 128-byte names); memory is bounded by [`DEFAULT_MAX_LEDGER_BYTES`].
pub const DEFAULT_MAX_USERS: usize = 10_000_000;
/// Default age bound of the dedup window: ten minutes covers a client's retries through a
/// restart of the server (the window survives it) with room to spare.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 600_000;
/// Longest dedup window accepted: one day.
pub const DEDUP_WINDOW_MS_MAX: u64 = 86_400_000;
/// Default count bound of the dedup window: 1 M ids. Measured at 67 bytes per id kept
/// (README, "Event ids"), so about 67 MB; at 100,000 events/s with ids that is a 10-second
/// window, at 10,000/s the full ten minutes.
pub const DEFAULT_DEDUP_MAX_IDS: usize = 1_000_000;
/// Largest count bound accepted: 100 M ids is about 6.7 GB.
pub const DEDUP_MAX_IDS_MAX: usize = 100_000_000;
/// Largest `max_users` accepted (1 Gi users); a ceiling so a typo cannot make the ledger
/// unbounded in practice.
pub const MAX_USERS_MAX: usize = 1 << 30;
/// Production (and stage preset) bound of the ledger's memory, in bytes: 4 GiB, counted per
/// user by [`crate::ledger::user_cost_bytes`] (entry, hash-table slack, ordered index, name).
/// 10 M users of names up to 22 bytes (1.9 GiB counted) or of 128-byte names (3.5 GiB
/// counted) fit; longer names reach this bound before [`DEFAULT_MAX_USERS`].
pub const DEFAULT_MAX_LEDGER_BYTES: u64 = 4 << 30;
/// Largest `max_ledger_bytes` accepted (1 TiB); a ceiling so a typo cannot make the ledger
/// unbounded in practice.
pub const MAX_LEDGER_BYTES_MAX: u64 = 1 << 40;
/// The seed's queue capacity for stages 5–8.
pub const SEED_QUEUE_CAPACITY_EVENTS: usize = 100;

/// How balances are stored and protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerStrategy {
    /// One lock around every balance (stages 4–7).
    Global,
    /// `shards` locks, user routed by hash (stage 8).
    Sharded,
    /// Each worker owns one shard and is fed by its own queue routed by hash(user): no two
    /// workers ever touch the same shard, so their locks are never contended.
    Owned,
}

impl LedgerStrategy {
    /// Every strategy, for sweeps.
    pub const ALL: [Self; 3] = [Self::Global, Self::Sharded, Self::Owned];

    /// Lowercase name, as accepted by `FromStr` and serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Sharded => "sharded",
            Self::Owned => "owned",
        }
    }
}

impl fmt::Display for LedgerStrategy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for LedgerStrategy {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "global" => Ok(Self::Global),
            "sharded" => Ok(Self::Sharded),
            "owned" => Ok(Self::Owned),
            _ => Err(ConfigError::UnknownStrategy(text.to_owned())),
        }
    }
}

/// Where an event is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingMode {
    /// Stage 3: parse and validate, keep no state.
    ValidateOnly,
    /// Stage 4: apply in the request handler under the ledger lock.
    Inline,
    /// Stages 5–8 and production: admit into a bounded queue, workers apply.
    Queued,
}

impl ProcessingMode {
    /// snake_case name, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidateOnly => "validate_only",
            Self::Inline => "inline",
            Self::Queued => "queued",
        }
    }
}

impl fmt::Display for ProcessingMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for ProcessingMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().replace('-', "_").as_str() {
            "validate_only" => Ok(Self::ValidateOnly),
            "inline" => Ok(Self::Inline),
            "queued" => Ok(Self::Queued),
            _ => Err(ConfigError::UnknownMode(text.to_owned())),
        }
    }
}

/// How workers share the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// A true multi-consumer channel (async-channel): every worker receives directly.
    Mpmc,
    /// The seed's `Arc<Mutex<Receiver>>`: workers take turns holding the receiver.
    #[serde(alias = "shared-receiver")]
    SharedReceiver,
}

impl QueueKind {
    /// snake_case name, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mpmc => "mpmc",
            Self::SharedReceiver => "shared_receiver",
        }
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for QueueKind {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().replace('-', "_").as_str() {
            "mpmc" => Ok(Self::Mpmc),
            "shared_receiver" | "shared" => Ok(Self::SharedReceiver),
            _ => Err(ConfigError::UnknownQueueKind(text.to_owned())),
        }
    }
}

/// A configuration the engine refuses to start with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `workers` outside 1..=[`WORKERS_MAX`] (queued mode).
    #[error("`workers` must be between 1 and {WORKERS_MAX}, got {0}")]
    Workers(usize),
    /// `queue_capacity_events` outside 1..=[`QUEUE_CAPACITY_EVENTS_MAX`] (queued mode).
    #[error("`queue_capacity_events` must be between 1 and {QUEUE_CAPACITY_EVENTS_MAX}, got {0}")]
    QueueCapacity(usize),
    /// With the owned strategy each worker gets its own queue of at least one slot.
    #[error(
        "the owned strategy needs `queue_capacity_events` ({capacity}) >= `workers` ({workers})"
    )]
    OwnedQueueTooSmall {
        /// Configured queue capacity.
        capacity: usize,
        /// Configured worker count.
        workers: usize,
    },
    /// `shards` outside 1..=[`SHARDS_MAX`].
    #[error("`shards` must be between 1 and {SHARDS_MAX}, got {0}")]
    Shards(usize),
    /// A simulated duration above [`SIMULATED_MS_MAX`].
    #[error("`{name}` must be at most {SIMULATED_MS_MAX} ms, got {value}")]
    SimulatedTooLong {
        /// Which knob.
        name: &'static str,
        /// Its value in ms.
        value: u64,
    },
    /// `max_ledger_bytes` outside 1..=[`MAX_LEDGER_BYTES_MAX`].
    #[error("`max_ledger_bytes` must be between 1 and {MAX_LEDGER_BYTES_MAX}, got {0}")]
    MaxLedgerBytes(u64),
    /// `max_users` outside 1..=[`MAX_USERS_MAX`].
    #[error("`max_users` must be between 1 and {MAX_USERS_MAX}, got {0}")]
    MaxUsers(usize),
    /// `dedup_window_ms` above [`DEDUP_WINDOW_MS_MAX`].
    #[error("`dedup_window_ms` must be at most {DEDUP_WINDOW_MS_MAX}, got {0}")]
    DedupWindow(u64),
    /// `dedup_max_ids` above [`DEDUP_MAX_IDS_MAX`].
    #[error("`dedup_max_ids` must be at most {DEDUP_MAX_IDS_MAX}, got {0}")]
    DedupMaxIds(usize),
    /// `time_scale` negative, NaN or infinite.
    #[error("`time_scale` must be a finite number >= 0, got {0}")]
    TimeScale(f64),
    /// Unknown `strategy` name.
    #[error("unknown ledger strategy `{0}` (expected global, sharded or owned)")]
    UnknownStrategy(String),
    /// Unknown `mode` name.
    #[error("unknown processing mode `{0}` (expected queued, inline or validate_only)")]
    UnknownMode(String),
    /// Unknown queue kind name.
    #[error("unknown queue kind `{0}` (expected mpmc or shared_receiver)")]
    UnknownQueueKind(String),
    /// `Engine::start` was called outside a tokio runtime (it spawns the workers there).
    #[error("the engine must be started inside a tokio runtime")]
    NoRuntime,
}

/// Every knob of the engine. Missing fields deserialize to [`EngineConfig::production`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Where events are applied (stage 3 / stage 4 / stages 5–8).
    pub mode: ProcessingMode,
    /// Worker tasks (queued mode).
    pub workers: usize,
    /// Bound of the admission queue, in events (split evenly per worker with `Owned`).
    pub queue_capacity_events: usize,
    /// How balances are locked.
    pub strategy: LedgerStrategy,
    /// Shard count for [`LedgerStrategy::Sharded`] (ignored otherwise).
    pub shards: usize,
    /// How workers share the queue.
    pub queue_kind: QueueKind,
    /// Simulated async work per event BEFORE taking the ledger lock, in ms.
    pub work_ms: u64,
    /// Simulated work per event WHILE holding the ledger lock, in ms.
    pub hold_ms: u64,
    /// Multiplies every simulated duration (0.1 runs the seed ten times faster).
    pub time_scale: f64,
    /// Most distinct users the ledger holds; an event for a new user beyond it is refused
    /// at admission (`Rejected::LedgerFull`).
    pub max_users: usize,
    /// The dedup window forgets an event id this long after it was first seen, in ms.
    pub dedup_window_ms: u64,
    /// The dedup window keeps at most this many ids (the oldest are forgotten first).
    pub dedup_max_ids: usize,
    /// Most bytes the ledger's users may cost, counted per user by
    /// [`crate::ledger::user_cost_bytes`] at admission; a new user beyond it is refused
    /// (`Rejected::LedgerFull`), so random or long user names cannot grow memory without
    /// limit.
    pub max_ledger_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::production()
    }
}

impl EngineConfig {
    /// Production default: queued, one worker per core, a large bounded queue, the owned
    /// strategy, no simulated work.
    ///
    /// Why owned: no two workers ever share a lock or a queue lane, so it keeps scaling with
    /// cores by construction, it is the only strategy that applies each user's events in
    /// admission order with several workers, and it was the fastest in the engine benchmark
    /// (`examples/engine_throughput.rs`; figures and their conditions in
    /// `bench/results/engine-strategies.md`). Its costs: one user's events all go to one
    /// worker, and the queue is split per worker, so a single very hot user meets `QueueFull`
    /// sooner than with a shared queue, and a descheduled worker's lane fills while others idle.
    pub fn production() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            mode: ProcessingMode::Queued,
            workers: cores.min(WORKERS_MAX),
            queue_capacity_events: PRODUCTION_QUEUE_CAPACITY_EVENTS,
            strategy: LedgerStrategy::Owned,
            shards: DEFAULT_SHARDS,
            queue_kind: QueueKind::Mpmc,
            work_ms: 0,
            hold_ms: 0,
            time_scale: 1.0,
            max_users: DEFAULT_MAX_USERS,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            dedup_max_ids: DEFAULT_DEDUP_MAX_IDS,
            max_ledger_bytes: DEFAULT_MAX_LEDGER_BYTES,
        }
    }

    /// The seed's values for stages 3..=8 (`None` otherwise).
    ///
    /// | stage | mode | queue | workers | state | work | hold |
    /// |---|---|---|---|---|---|---|
    /// | 3 | validate only | – | – | – | – | – |
    /// | 4 | inline | – | – | global | – | 500 ms |
    /// | 5 | queued | 100 | 1 | global | 500 ms | – |
    /// | 6 | queued | 100 | 4 | global | 500 ms | – |
    /// | 7 | queued | 100 | 16 | global | 100 ms | 10 ms |
    /// | 8 | queued | 100 | 16 | sharded (64) | 100 ms | 10 ms |
    ///
    /// Stages 5–8 use the seed's shared receiver (`Arc<Mutex<Receiver>>`).
    pub fn for_stage(stage: u8) -> Option<Self> {
        let seed_queue = |workers, strategy, work_ms, hold_ms| Self {
            mode: ProcessingMode::Queued,
            workers,
            queue_capacity_events: SEED_QUEUE_CAPACITY_EVENTS,
            strategy,
            shards: DEFAULT_SHARDS,
            queue_kind: QueueKind::SharedReceiver,
            work_ms,
            hold_ms,
            time_scale: 1.0,
            max_users: DEFAULT_MAX_USERS,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            dedup_max_ids: DEFAULT_DEDUP_MAX_IDS,
            max_ledger_bytes: DEFAULT_MAX_LEDGER_BYTES,
        };
        let config = match stage {
            3 => Self {
                mode: ProcessingMode::ValidateOnly,
                ..Self::production()
            },
            4 => Self {
                mode: ProcessingMode::Inline,
                strategy: LedgerStrategy::Global,
                hold_ms: 500,
                ..Self::production()
            },
            5 => seed_queue(1, LedgerStrategy::Global, 500, 0),
            6 => seed_queue(4, LedgerStrategy::Global, 500, 0),
            7 => seed_queue(16, LedgerStrategy::Global, 100, 10),
            8 => seed_queue(16, LedgerStrategy::Sharded, 100, 10),
            _ => return None,
        };
        Some(config)
    }

    /// Check every limit; the engine refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == ProcessingMode::Queued {
            if !(1..=WORKERS_MAX).contains(&self.workers) {
                return Err(ConfigError::Workers(self.workers));
            }
            if !(1..=QUEUE_CAPACITY_EVENTS_MAX).contains(&self.queue_capacity_events) {
                return Err(ConfigError::QueueCapacity(self.queue_capacity_events));
            }
            if self.strategy == LedgerStrategy::Owned && self.queue_capacity_events < self.workers {
                return Err(ConfigError::OwnedQueueTooSmall {
                    capacity: self.queue_capacity_events,
                    workers: self.workers,
                });
            }
        }
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(ConfigError::Shards(self.shards));
        }
        for (name, value) in [("work_ms", self.work_ms), ("hold_ms", self.hold_ms)] {
            if value > SIMULATED_MS_MAX {
                return Err(ConfigError::SimulatedTooLong { name, value });
            }
        }
        if !(1..=MAX_USERS_MAX).contains(&self.max_users) {
            return Err(ConfigError::MaxUsers(self.max_users));
        }
        if self.dedup_window_ms > DEDUP_WINDOW_MS_MAX {
            return Err(ConfigError::DedupWindow(self.dedup_window_ms));
        }
        if self.dedup_max_ids > DEDUP_MAX_IDS_MAX {
            return Err(ConfigError::DedupMaxIds(self.dedup_max_ids));
        }
        if !(1..=MAX_LEDGER_BYTES_MAX).contains(&self.max_ledger_bytes) {
            return Err(ConfigError::MaxLedgerBytes(self.max_ledger_bytes));
        }
        if !self.time_scale.is_finite() || self.time_scale < 0.0 {
            return Err(ConfigError::TimeScale(self.time_scale));
        }
        Ok(())
    }

    /// Simulated work before the lock, scaled by `time_scale`.
    pub fn work_duration(&self) -> Duration {
        scaled(self.work_ms, self.time_scale)
    }

    /// Simulated work under the lock, scaled by `time_scale`.
    pub fn hold_duration(&self) -> Duration {
        scaled(self.hold_ms, self.time_scale)
    }

    /// Number of ledger shards this configuration builds: 1 (global), `shards` (sharded) or
    /// one per worker (owned).
    pub fn shard_count(&self) -> usize {
        match self.strategy {
            LedgerStrategy::Sharded => self.shards,
            LedgerStrategy::Owned if self.mode == ProcessingMode::Queued => self.workers,
            // Global, and owned without workers (inline mode: the caller is the only owner).
            LedgerStrategy::Global | LedgerStrategy::Owned => 1,
        }
    }
}

fn scaled(ms: u64, time_scale: f64) -> Duration {
    if ms == 0 || !time_scale.is_finite() || time_scale <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(ms as f64 * time_scale / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_seed() {
        // Proves each stage preset carries the seed's numbers and every preset validates.
        let seven = EngineConfig::for_stage(7).expect("stage 7");
        assert_eq!(
            (
                seven.workers,
                seven.queue_capacity_events,
                seven.work_ms,
                seven.hold_ms
            ),
            (16, 100, 100, 10)
        );
        assert_eq!(seven.strategy, LedgerStrategy::Global);
        let eight = EngineConfig::for_stage(8).expect("stage 8");
        assert_eq!(eight.strategy, LedgerStrategy::Sharded);
        assert_eq!((eight.workers, eight.work_ms, eight.hold_ms), (16, 100, 10));
        let four = EngineConfig::for_stage(4).expect("stage 4");
        assert_eq!((four.mode, four.hold_ms), (ProcessingMode::Inline, 500));
        assert_eq!(
            EngineConfig::for_stage(5).map(|c| (c.workers, c.work_ms)),
            Some((1, 500))
        );
        assert_eq!(
            EngineConfig::for_stage(6).map(|c| (c.workers, c.work_ms)),
            Some((4, 500))
        );
        assert_eq!(
            EngineConfig::for_stage(3).map(|c| c.mode),
            Some(ProcessingMode::ValidateOnly)
        );
        assert!(EngineConfig::for_stage(2).is_none() && EngineConfig::for_stage(9).is_none());
        for stage in 3..=8 {
            assert_eq!(
                EngineConfig::for_stage(stage).map(|c| c.validate()),
                Some(Ok(()))
            );
        }
        assert_eq!(EngineConfig::production().validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_unbounded_or_absurd_values() {
        // Proves each limit is enforced.
        let base = EngineConfig::production();
        let bad = [
            EngineConfig {
                workers: 0,
                ..base.clone()
            },
            EngineConfig {
                workers: WORKERS_MAX + 1,
                ..base.clone()
            },
            EngineConfig {
                queue_capacity_events: 0,
                ..base.clone()
            },
            EngineConfig {
                queue_capacity_events: QUEUE_CAPACITY_EVENTS_MAX + 1,
                ..base.clone()
            },
            EngineConfig {
                shards: 0,
                ..base.clone()
            },
            EngineConfig {
                hold_ms: SIMULATED_MS_MAX + 1,
                ..base.clone()
            },
            EngineConfig {
                max_users: 0,
                ..base.clone()
            },
            EngineConfig {
                max_users: MAX_USERS_MAX + 1,
                ..base.clone()
            },
            EngineConfig {
                time_scale: f64::NAN,
                ..base.clone()
            },
            EngineConfig {
                time_scale: -1.0,
                ..base.clone()
            },
            EngineConfig {
                workers: 8,
                queue_capacity_events: 4,
                ..base.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn names_round_trip_and_durations_scale() {
        // Proves FromStr/Display/serde agree and time_scale multiplies durations.
        for strategy in LedgerStrategy::ALL {
            assert_eq!(strategy.to_string().parse::<LedgerStrategy>(), Ok(strategy));
            let json = serde_json::to_string(&strategy).expect("serialize");
            assert_eq!(json, format!("\"{strategy}\""));
        }
        assert!("bogus".parse::<LedgerStrategy>().is_err());
        assert_eq!(
            "shared_receiver".parse::<QueueKind>(),
            Ok(QueueKind::SharedReceiver)
        );
        let config = EngineConfig {
            work_ms: 100,
            hold_ms: 10,
            time_scale: 0.1,
            ..Default::default()
        };
        assert_eq!(config.work_duration(), Duration::from_millis(10));
        assert_eq!(config.hold_duration(), Duration::from_millis(1));
        let partial: EngineConfig = serde_json::from_str(r#"{"workers":3}"#).expect("partial");
        assert_eq!(partial.workers, 3);
    }
}
