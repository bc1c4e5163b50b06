//! Floodgate's durable log. It knows bytes and positions, never balances or HTTP.
//!
//! ```text
//! submitters ──try_submit──▶ bounded queue ──▶ writer thread ──▶ segment files
//!                                               (one record + one sync per group,
//!                                                then acknowledge the group in order)
//! snapshot(position, bytes) ──▶ temp file, sync, rename, sync dir ──▶ remove covered segments
//! start-up: Recovery::open ──▶ snapshot ──▶ replay(records after it) ──▶ start(writer)
//! ```
//!
//! Modules, one job each:
//! - [`storage`] holds the file operations, real (`std::fs`); [`fault`] a double that cuts the power
//! - [`record`] frames records (length + CRC32C, version byte, positions)
//! - [`log`] runs group commit, the failure latch and the disk-full refusal
//! - [`snapshot`] writes and reads atomic snapshot files
//! - [`recovery`] replays snapshot + tail, cuts a torn tail, refuses corruption

pub mod error;
pub mod fault;
pub mod log;
pub mod names;
pub mod record;
pub mod recovery;
pub mod snapshot;
pub mod storage;

pub use error::{AppendError, RecoveryError, SubmitError};
pub use log::{Acknowledge, Commit, Durability, Entry, Log, LogCounters, LogOptions};
pub use recovery::{Recovery, RecoveryReport, Replayed, TailCut};
pub use snapshot::Snapshot;
pub use storage::{FsStorage, Storage, StorageFile};
