//! Record framing: how one group of entries becomes bytes on disk, and how bytes are checked
//! before they are believed.
//!
//! ```text
//! ┌────────────┬───────────┬─────────┬────────────────┬──────────┬─────────────────────────────┐
//! │ length u32 │ crc32c u32│ version │ first_position │ count u32│ count × (len u32, bytes)    │
//! │            │           │   u8    │      u64       │          │                             │
//! └────────────┴───────────┴─────────┴────────────────┴──────────┴─────────────────────────────┘
//!   length = bytes after the crc; crc32c covers exactly those bytes; little-endian throughout.
//! ```
//!
//! Invariant: a record is accepted only if its length fits the bytes that follow, its checksum
//! matches, its version is known and its entries fill its body exactly. Each entry's log
//! position is `first_position + index`; positions start at 1 and never skip. The version byte
//! lets later formats (event ids, a dedup window) be read next to older records.

use std::fmt;

/// The record format written today.
pub const RECORD_VERSION: u8 = 1;

/// Bytes before the checksummed body: length and crc.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes of the body before the entries: version, first position, count.
const BODY_HEADER_BYTES: usize = 1 + 8 + 4;

/// Encodes records into a reusable buffer, one entry at a time.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    bytes: Vec<u8>,
    count: u32,
}

impl RecordBuilder {
    /// Starts a record whose first entry has `first_position`, reusing the buffer.
    pub fn start(&mut self, first_position: u64) {
        self.bytes.clear();
        self.bytes.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        self.bytes.push(RECORD_VERSION);
        self.bytes.extend_from_slice(&first_position.to_le_bytes());
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.count = 0;
    }

    /// Appends one entry written by `encode` into the buffer.
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let length_at = self.bytes.len();
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        encode(&mut self.bytes);
        let entry_bytes = (self.bytes.len() - length_at - 4) as u32;
        self.bytes[length_at..length_at + 4].copy_from_slice(&entry_bytes.to_le_bytes());
        self.count += 1;
    }

    /// Bytes encoded so far.
    pub fn length_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Fills in count, length and checksum; returns the framed record.
    pub fn finish(&mut self) -> &[u8] {
        let count_at = FRAME_HEADER_BYTES + 1 + 8;
        self.bytes[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        let body = &self.bytes[FRAME_HEADER_BYTES..];
        let length = body.len() as u32;
        let checksum = crc32c::crc32c(body);
        self.bytes[0..4].copy_from_slice(&length.to_le_bytes());
        self.bytes[4..8].copy_from_slice(&checksum.to_le_bytes());
        &self.bytes
    }
}

/// A record read back and checked.
#[derive(Debug)]
pub struct Record<'a> {
    /// Position of the first entry.
    pub first_position: u64,
    /// Number of entries.
    pub count: u32,
    /// Total framed size, for stepping to the next record.
    pub framed_bytes: usize,
    entries: &'a [u8],
}

impl<'a> Record<'a> {
    /// The entries with their positions, in order.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            rest: self.entries,
            position: self.first_position,
        }
    }

    /// Position of the last entry (or `first_position - 1` for an empty record).
    pub fn last_position(&self) -> u64 {
        self.first_position + u64::from(self.count) - 1
    }
}

/// Iterator over a checked record's entries.
#[derive(Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
    position: u64,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // Lengths were checked in `decode`, so the slicing cannot go out of bounds.
        let length = read_u32(self.rest, 0)? as usize;
        let entry = self.rest.get(4..4 + length)?;
        self.rest = &self.rest[4 + length..];
        let position = self.position;
        self.position += 1;
        Some((position, entry))
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes remain than the frame claims (or than a header needs).
    Short { needed: usize, available: usize },
    /// The checksum does not match the bytes.
    Checksum,
    /// A version this build does not know.
    Version(u8),
    /// The entries do not fill the body exactly, or the count is zero.
    Malformed,
}

impl fmt::Display for Damage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { needed, available } => {
                write!(formatter, "short record ({available} of {needed} bytes)")
            }
            Self::Checksum => write!(formatter, "checksum mismatch"),
            Self::Version(version) => write!(formatter, "unknown record version {version}"),
            Self::Malformed => write!(formatter, "entries do not fill the record"),
        }
    }
}

/// Decodes and checks the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, Damage> {
    let (Some(length), Some(checksum)) = (read_u32(bytes, 0), read_u32(bytes, 4)) else {
        return Err(Damage::Short {
            needed: FRAME_HEADER_BYTES,
            available: bytes.len(),
        });
    };
    let framed_bytes = FRAME_HEADER_BYTES + length as usize;
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..framed_bytes) else {
        return Err(Damage::Short {
            needed: framed_bytes,
            available: bytes.len(),
        });
    };
    if body.len() < BODY_HEADER_BYTES {
        return Err(Damage::Malformed);
    }
    if crc32c::crc32c(body) != checksum {
        return Err(Damage::Checksum);
    }
    if body[0] != RECORD_VERSION {
        return Err(Damage::Version(body[0]));
    }
    let first_position = u64::from_le_bytes(body[1..9].try_into().map_err(|_| Damage::Malformed)?);
    let count = read_u32(body, 9).ok_or(Damage::Malformed)?;
    let entries = &body[BODY_HEADER_BYTES..];
    if count == 0 || first_position == 0 || !entries_fill(entries, count) {
        return Err(Damage::Malformed);
    }
    Ok(Record {
        first_position,
        count,
        framed_bytes,
        entries,
    })
}

fn entries_fill(mut entries: &[u8], count: u32) -> bool {
    for _ in 0..count {
        let Some(length) = read_u32(entries, 0) else {
            return false;
        };
        let Some(rest) = entries.get(4 + length as usize..) else {
            return false;
        };
        entries = rest;
    }
    entries.is_empty()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(first_position: u64, entries: &[&[u8]]) -> Vec<u8> {
        let mut builder = RecordBuilder::default();
        builder.start(first_position);
        for entry in entries {
            builder.push(|out| out.extend_from_slice(entry));
        }
        builder.finish().to_vec()
    }

    // Proves a record round-trips: positions count up from the first, entries come back intact.
    #[test]
    fn a_record_round_trips_with_positions() {
        let bytes = record(7, &[b"a", b"", b"ccc"]);
        let decoded = decode(&bytes).expect("valid record");
        assert_eq!(decoded.framed_bytes, bytes.len());
        let entries: Vec<_> = decoded.entries().collect();
        assert_eq!(
            entries,
            vec![(7, &b"a"[..]), (8, &b""[..]), (9, &b"ccc"[..])]
        );
        assert_eq!(decoded.last_position(), 9);
    }

    // Proves every single flipped bit and every cut is detected, never decoded as a record.
    #[test]
    fn any_flipped_bit_or_cut_is_detected() {
        let bytes = record(1, &[b"hello", b"world"]);
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "flip at byte {at} bit {bit}");
            }
            assert!(decode(&bytes[..at]).is_err(), "cut at {at}");
        }
    }
}
