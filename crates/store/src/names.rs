//! File names in the data directory: segments and snapshots are named by log position, zero
//! padded so that names sort in position order.

/// The segment whose first entry is at `first_position`.
pub fn segment(first_position: u64) -> String {
    format!("log-{first_position:020}.seg")
}

/// The snapshot that covers entries up to `position`.
pub fn snapshot(position: u64) -> String {
    format!("snapshot-{position:020}.snap")
}

/// The temporary name a snapshot is written under before it is renamed.
pub fn snapshot_temporary(position: u64) -> String {
    format!("snapshot-{position:020}.tmp")
}

/// The first position of a segment file, if `name` is one.
pub fn parse_segment(name: &str) -> Option<u64> {
    parse(name, "log-", ".seg")
}

/// The position of a snapshot file, if `name` is one.
pub fn parse_snapshot(name: &str) -> Option<u64> {
    parse(name, "snapshot-", ".snap")
}

/// Whether `name` is a snapshot that was never completed (left by a crash while writing one).
pub fn is_snapshot_temporary(name: &str) -> bool {
    parse(name, "snapshot-", ".tmp").is_some()
}

fn parse(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves names round-trip and that anything else in the directory is ignored.
    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_segment(&segment(42)), Some(42));
        assert_eq!(parse_snapshot(&snapshot(7)), Some(7));
        assert!(is_snapshot_temporary(&snapshot_temporary(7)));
        assert_eq!(parse_segment("log-42.seg"), None);
        assert_eq!(parse_segment("LOCK"), None);
        assert!(segment(9) < segment(10));
    }
}
