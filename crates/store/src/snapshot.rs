//! Snapshots: opaque bytes that stand for every log entry up to a position.
//!
//! Lesson: a snapshot is only worth having if a crash can never leave a half-written one where
//! a whole one is expected. So it is written to a temporary name, synced, renamed over, and the
//! directory synced: after a crash there is either the old snapshot or the new one, never a mix.
//! Only then may the log segments it covers be removed.
//!
//! Invariant: a file named `snapshot-<position>.snap` was complete and synced before it got that
//! name; one that fails its checksum anyway is corruption and stops start-up.
//!
//! ```text
//! ┌─────────────┬────────────┬────────────┬──────────────┬─────────────┐
//! │ length u64  │ crc32c u32 │ version u8 │ position u64 │ payload ... │   little-endian
//! └─────────────┴────────────┴────────────┴──────────────┴─────────────┘
//!   length = bytes after the crc; the crc covers exactly those bytes.
//! ```

use std::io;

use crate::error::RecoveryError;
use crate::names;
use crate::storage::Storage;

/// The snapshot format written today.
pub const SNAPSHOT_VERSION: u8 = 1;

const HEADER_BYTES: usize = 8 + 4;

/// A snapshot read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every entry up to and including this position is reflected in the payload.
    pub position: u64,
    /// The caller's bytes.
    pub payload: Vec<u8>,
}

/// Writes `payload` as the snapshot at `position` (temp file, sync, rename, sync directory),
/// then removes older snapshots. A temp file that could not be completed (a full disk) is
/// removed again, so a failed snapshot does not keep the space the log needs.
pub fn write(storage: &dyn Storage, position: u64, payload: &[u8]) -> io::Result<()> {
    let temporary = names::snapshot_temporary(position);
    let mut file = storage.create(&temporary)?;
    let written = file
        .append(&frame(position, payload))
        .and_then(|()| file.sync_data());
    drop(file);
    if let Err(error) = written {
        // Best effort: recovery ignores (and removes) a leftover temp file anyway.
        let _ = storage.remove(&temporary);
        return Err(error);
    }
    storage.rename(&temporary, &names::snapshot(position))?;
    storage.sync_directory()?;
    for (older, name) in list(storage)? {
        if older < position {
            storage.remove(&name)?;
        }
    }
    Ok(())
}

/// Loads the newest snapshot, if any. A damaged one is an error naming the file.
pub fn load_newest(storage: &dyn Storage) -> Result<Option<Snapshot>, RecoveryError> {
    let Some((_, name)) = list(storage)?.pop() else {
        return Ok(None);
    };
    let bytes = storage.read(&name)?;
    decode(&bytes)
        .map(Some)
        .ok_or(RecoveryError::CorruptSnapshot { file: name })
}

/// The snapshots in the directory, oldest first.
fn list(storage: &dyn Storage) -> io::Result<Vec<(u64, String)>> {
    let mut snapshots: Vec<_> = storage
        .list()?
        .into_iter()
        .filter_map(|name| Some((names::parse_snapshot(&name)?, name)))
        .collect();
    snapshots.sort_unstable();
    Ok(snapshots)
}

fn frame(position: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 8 + payload.len());
    body.push(SNAPSHOT_VERSION);
    body.extend_from_slice(&position.to_le_bytes());
    body.extend_from_slice(payload);
    let mut framed = Vec::with_capacity(HEADER_BYTES + body.len());
    framed.extend_from_slice(&(body.len() as u64).to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn decode(bytes: &[u8]) -> Option<Snapshot> {
    let length = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let checksum = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let body = bytes.get(HEADER_BYTES..)?;
    if body.len() as u64 != length || body.len() < 9 || crc32c::crc32c(body) != checksum {
        return None;
    }
    if body[0] != SNAPSHOT_VERSION {
        return None;
    }
    let position = u64::from_le_bytes(body[1..9].try_into().ok()?);
    Some(Snapshot {
        position,
        payload: body[9..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultStorage;

    // Proves a snapshot round-trips, the newest wins and older ones are removed.
    #[test]
    fn the_newest_snapshot_is_loaded_and_older_ones_removed() {
        let storage = FaultStorage::new();
        write(&storage, 5, b"five").expect("write");
        write(&storage, 9, b"nine").expect("write");
        let loaded = load_newest(&storage).expect("load").expect("a snapshot");
        assert_eq!(loaded.position, 9);
        assert_eq!(loaded.payload, b"nine");
        assert_eq!(storage.list().expect("list"), vec![names::snapshot(9)]);
    }

    // Proves a snapshot that does not fit on the disk leaves no temp file holding space, and
    // the older snapshot stays the one loaded.
    #[test]
    fn a_snapshot_on_a_full_disk_leaves_no_temp_file() {
        let storage = FaultStorage::new();
        write(&storage, 5, b"five").expect("write");
        storage.set_faults(crate::fault::Faults {
            space_bytes: Some(200),
            ..crate::fault::Faults::default()
        });
        let error = write(&storage, 9, &[7; 300]).expect_err("no room");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(storage.list().expect("list"), vec![names::snapshot(5)]);
        let loaded = load_newest(&storage).expect("load").expect("a snapshot");
        assert_eq!(loaded.position, 5);
    }

    // Proves a damaged snapshot stops recovery with the file's name instead of being ignored.
    #[test]
    fn a_damaged_snapshot_is_an_error_naming_the_file() {
        let storage = FaultStorage::new();
        write(&storage, 3, b"payload").expect("write");
        let name = names::snapshot(3);
        let mut bytes = storage.bytes(&name).expect("file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        storage.overwrite(&name, bytes);
        let error = load_newest(&storage).expect_err("damage must be refused");
        assert!(error.to_string().contains(&name), "{error}");
    }
}
