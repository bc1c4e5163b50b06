//! Recovery: the newest snapshot, then every record after it, and a decision about damage.
//!
//! Lesson: a crash can only damage what was being written when it happened, which is the end
//! of the last segment (every older segment was synced before the next was created). So damage
//! there, with nothing valid after it, is a torn tail: it is cut, with a warning naming file,
//! offset and bytes. Damage anywhere else (an older segment, or a bad record followed by good
//! ones) is corruption of entries that may have been acknowledged: start-up stops with an error
//! naming file and offset. A server never starts on silently wrong state.
//!
//! Invariant: the entries handed to `apply` are exactly positions `snapshot + 1 ..= end`, each
//! once, in order; a gap is an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::RecoveryError;
use crate::names;
use crate::record::{self, Damage};
use crate::snapshot::{self, Snapshot};
use crate::storage::Storage;

/// The torn tail that recovery cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file.
    pub file: String,
    /// Where the first bad record started (the file's new length).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// What was wrong with the first bad record.
    pub damage: Damage,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The snapshot's position (0 without a snapshot).
    pub snapshot_position: u64,
    /// Records read after the snapshot.
    pub records: u64,
    /// Entries handed to `apply`.
    pub entries: u64,
    /// Log bytes read.
    pub bytes: u64,
    /// The last position recovered (the snapshot's if no entry follows it).
    pub last_position: u64,
    /// The torn tail cut, if any.
    pub cut: Option<TailCut>,
    /// Wall time of reading the snapshot and replaying the tail.
    pub elapsed: Duration,
}

/// Recovery in progress: the snapshot is loaded, the records are not yet replayed.
#[derive(Debug)]
pub struct Recovery {
    storage: Arc<dyn Storage>,
    snapshot: Option<Snapshot>,
    segments: Vec<(u64, String)>,
    started: Instant,
}

/// Where the log's end is after a replay: what the writer continues from.
#[derive(Debug)]
pub struct Replayed {
    pub(crate) storage: Arc<dyn Storage>,
    /// The last segment and its valid length, if any segment exists.
    pub(crate) tail: Option<(String, u64)>,
    /// What recovery found.
    pub report: RecoveryReport,
}

impl Recovery {
    /// Removes leftovers of an interrupted snapshot, loads the newest snapshot and lists the
    /// segments.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self, RecoveryError> {
        let started = Instant::now();
        for name in storage.list()? {
            if names::is_snapshot_temporary(&name) {
                storage.remove(&name)?;
            }
        }
        let snapshot = snapshot::load_newest(storage.as_ref())?;
        let mut segments: Vec<_> = storage
            .list()?
            .into_iter()
            .filter_map(|name| Some((names::parse_segment(&name)?, name)))
            .collect();
        segments.sort_unstable();
        Ok(Self {
            storage,
            snapshot,
            segments,
            started,
        })
    }

    /// The newest snapshot, to restore before replaying.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Hands every entry after the snapshot to `apply`, in order, and cuts a torn tail.
    pub fn replay(
        self,
        mut apply: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Replayed, RecoveryError> {
        let snapshot_position = self
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.position);
        let mut report = RecoveryReport {
            snapshot_position,
            last_position: snapshot_position,
            ..RecoveryReport::default()
        };
        // Segments wholly covered by the snapshot are skipped (they are removed later).
        let start = self
            .segments
            .iter()
            .rposition(|(first, _)| *first <= snapshot_position + 1)
            .unwrap_or(0);
        let relevant = &self.segments[start..];
        let mut tail = None;
        for (index, (_, name)) in relevant.iter().enumerate() {
            let is_last = index + 1 == relevant.len();
            let bytes = self.storage.read(name)?;
            let valid_bytes = replay_segment(name, &bytes, is_last, &mut report, &mut apply)?;
            tail = Some((name.clone(), valid_bytes));
        }
        if let Some(cut) = &report.cut {
            tracing::warn!(
                file = %cut.file, offset = cut.offset, bytes = cut.bytes, damage = %cut.damage,
                "cutting a torn tail off the log (bytes written but never acknowledged)"
            );
        }
        report.elapsed = self.started.elapsed();
        Ok(Replayed {
            storage: self.storage,
            tail,
            report,
        })
    }
}

/// Replays one segment; returns its valid length.
fn replay_segment(
    file: &str,
    bytes: &[u8],
    is_last: bool,
    report: &mut RecoveryReport,
    apply: &mut impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<u64, RecoveryError> {
    let mut offset = 0;
    while offset < bytes.len() {
        let expected = report.last_position + 1;
        let record = match record::decode(&bytes[offset..]) {
            Ok(record) => record,
            Err(damage) => {
                return judge_damage(file, bytes, offset, expected, is_last, damage, report);
            }
        };
        if record.first_position > expected {
            return Err(RecoveryError::Gap {
                file: file.to_owned(),
                offset: offset as u64,
                expected,
                found: record.first_position,
            });
        }
        for (position, entry) in record
            .entries()
            .filter(|(position, _)| *position >= expected)
        {
            apply(position, entry).map_err(|message| RecoveryError::Apply {
                file: file.to_owned(),
                position,
                message,
            })?;
            report.entries += 1;
            report.last_position = position;
        }
        report.records += 1;
        report.bytes += record.framed_bytes as u64;
        offset += record.framed_bytes;
    }
    Ok(offset as u64)
}

/// A bad record at `offset`: a torn tail (cut it) or corruption (stop).
fn judge_damage(
    file: &str,
    bytes: &[u8],
    offset: usize,
    expected: u64,
    is_last: bool,
    damage: Damage,
    report: &mut RecoveryReport,
) -> Result<u64, RecoveryError> {
    let corrupt = |why| RecoveryError::Corrupt {
        file: file.to_owned(),
        offset: offset as u64,
        damage: damage.clone(),
        why,
    };
    if !is_last {
        return Err(corrupt("it is in an older segment"));
    }
    if valid_record_after(bytes, offset, expected) {
        return Err(corrupt("valid records follow it"));
    }
    report.cut = Some(TailCut {
        file: file.to_owned(),
        offset: offset as u64,
        bytes: (bytes.len() - offset) as u64,
        damage,
    });
    Ok(offset as u64)
}

/// Whether any valid record at a position not yet seen starts after `offset`.
fn valid_record_after(bytes: &[u8], offset: usize, expected: u64) -> bool {
    (offset + 1..bytes.len()).any(|start| {
        record::decode(&bytes[start..]).is_ok_and(|record| record.first_position >= expected)
    })
}
