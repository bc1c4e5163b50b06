//! Floodgate's engine, with no HTTP: event parsing and validation, bounded admission, worker
//! tasks, ledger strategies, metrics and the stage presets (stages 3–8 of docs/stages.md).
//!
//! An event travels through the modules in this order:
//! [`event`] (parse + validate) → [`engine`] (admission) → [`queue`] (bounded, `try_send`)
//! → [`worker`] (simulated work, lock, apply) → [`ledger`] (balances), counted by
//! [`metrics`] and reported as [`stats`]; [`config`] holds the knobs and stage presets.
//!
//! Performance: `cargo run --release -p floodgate-core --example engine_throughput`
//! prints events/s through queue + workers + ledger for every strategy, 1 and 100,000 users,
//! 1 / cores / 16 workers; `cargo bench -p floodgate-core` runs the criterion benchmarks
//! (ledger apply per strategy, queue push + pop per queue kind, event parsing). The figures
//! that chose the production strategy are in `bench/results/engine-strategies.md`.
//!
//! Invariant of the whole crate: once [`Engine::shutdown`] returns, every accepted event was
//! applied or counted as overflowed, and the sum of balances equals the sum of the amounts of
//! the applied events.

pub mod batch;
pub mod config;
pub mod dedup;
pub mod durable;
pub mod engine;
pub mod event;
pub mod forward;
pub mod latch;
pub mod ledger;
pub mod metrics;
pub mod queue;
pub mod stats;
pub mod worker;

pub use config::{ConfigError, EngineConfig, LedgerStrategy, ProcessingMode, QueueKind};
pub use durable::{DurabilityMode, DurabilityStats, DurableOptions};
pub use engine::{Engine, EventOutcome, Failure, Ingested, Refused, Rejected, Submission};
pub use event::{Event, EventError, EventId, ID_MAX_BYTES, USER_MAX_BYTES, parse_event};
pub use forward::{Forward, Forwarded};
pub use stats::{LockSummary, LockTimings, Stats, Summary, WorkerStats};
