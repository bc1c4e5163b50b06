//! The store's errors: why start-up refused, and why an append was not acknowledged.

use std::io;
use std::sync::Arc;

use crate::record::Damage;

/// Why recovery refused to start: the log cannot be trusted as it is.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The storage itself failed.
    #[error("storage error during recovery: {0}")]
    Io(#[from] io::Error),
    /// A damaged record that is not a torn tail: valid records follow it, or it is in an older
    /// segment. Starting would silently lose acknowledged entries.
    #[error(
        "corrupt log record in {file} at offset {offset}: {damage}; it is not a torn tail \
         ({why}), so start-up stops rather than lose acknowledged entries"
    )]
    Corrupt {
        file: String,
        offset: u64,
        damage: Damage,
        why: &'static str,
    },
    /// Positions skip: entries between the snapshot (or a segment) and the next record are missing.
    #[error("log gap in {file} at offset {offset}: expected position {expected}, found {found}")]
    Gap {
        file: String,
        offset: u64,
        expected: u64,
        found: u64,
    },
    /// The newest snapshot fails its checksum.
    #[error("corrupt snapshot {file}: checksum or length mismatch")]
    CorruptSnapshot { file: String },
    /// The caller could not apply a replayed entry.
    #[error("entry at position {position} in {file} could not be applied: {message}")]
    Apply {
        file: String,
        position: u64,
        message: String,
    },
}

/// Why an entry was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// A write or sync failed. The log is latched: it acknowledges nothing more until restarted
    /// (a failed fsync is never retried; the page cache can no longer be trusted).
    #[error("storage failed: {0}")]
    Failed(Arc<io::Error>),
    /// The disk is full: this group was refused and its partial write removed. Later groups may
    /// succeed when space returns.
    #[error("disk full: {0}")]
    DiskFull(Arc<io::Error>),
    /// The log is closed.
    #[error("the log is closed")]
    Closed,
}

/// Why a submission was not even queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The submission queue is full (backpressure).
    #[error("the log's submission queue is full")]
    Full,
    /// The log is latched failed.
    #[error("the log has failed")]
    Failed,
    /// The log is closed.
    #[error("the log is closed")]
    Closed,
}
