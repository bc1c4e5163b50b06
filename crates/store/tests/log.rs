//! The log's behaviour case by case: round trip, group commit, torn tails, corruption,
//! failed syncs, a full disk and snapshots, on the fault double and on a real directory.

mod support;

use std::sync::Arc;

use floodgate_store::fault::{Crash, FILE_COST_BYTES, FaultStorage, Faults};
use floodgate_store::{AppendError, Durability, FsStorage, Storage, SubmitError, names};
use support::{open, recover};

fn fault_storage() -> (FaultStorage, Arc<dyn Storage>) {
    let storage = FaultStorage::new();
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    (storage, shared)
}

fn positions(outcomes: &[support::Outcome]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|(_, result)| *result.as_ref().expect("acknowledged"))
        .collect()
}

// Proves acknowledged entries come back after a power cut, at their positions, in order, and
// that the log goes on from where it stopped.
#[test]
fn acknowledged_entries_survive_a_power_cut_and_the_log_continues() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 100).expect("open");
    let outcomes = harness.submit_all(&[10, 11, 12, 13, 14, 15]);
    assert_eq!(positions(&outcomes), vec![1, 2, 3, 4, 5, 6]);
    drop(harness);

    let restarted: Arc<dyn Storage> = Arc::new(storage.restart_after(Crash::PowerCut, 1));
    let harness = open(Arc::clone(&restarted), Durability::Fsync, 100).expect("reopen");
    let ids: Vec<u64> = harness.recovered.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, vec![10, 11, 12, 13, 14, 15]);
    assert_eq!(positions(&harness.submit_all(&[16])), vec![7]);
    let segments = restarted
        .list()
        .expect("list")
        .into_iter()
        .filter(|name| names::parse_segment(name).is_some())
        .count();
    assert!(segments > 1, "100-byte segments must rotate");
}

// Proves group commit: entries waiting together are written as one record with one sync.
#[test]
fn entries_waiting_together_share_one_record() {
    let (_, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("open");
    let ids: Vec<u64> = (0..200).collect();
    let outcomes = harness.submit_all(&ids);
    assert_eq!(positions(&outcomes), (1..=200).collect::<Vec<_>>());
    let groups: Vec<_> = harness.groups.try_iter().collect();
    assert!(
        groups.len() < 200,
        "{} groups for 200 entries",
        groups.len()
    );
    assert!(groups.iter().all(|group| group.sync_duration.is_some()));
    assert_eq!(groups.iter().map(|group| group.entries).sum::<usize>(), 200);
}

// Proves a torn last record is cut with a report naming the file, offset and bytes, and that
// everything before it is kept.
#[test]
fn a_torn_tail_is_cut_and_reported() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("open");
    harness.submit_all(&[1]);
    harness.submit_all(&[2]);
    drop(harness);
    let name = names::segment(1);
    let bytes = storage.bytes(&name).expect("segment");
    let whole = bytes.len() as u64;
    storage.overwrite(&name, bytes[..bytes.len() - 3].to_vec());

    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("a torn tail recovers");
    assert_eq!(harness.recovered, vec![(1, 1)]);
    let cut = harness.report.cut.clone().expect("the cut is reported");
    assert_eq!(cut.file, name);
    assert_eq!(cut.offset + cut.bytes, whole - 3);
    assert_eq!(positions(&harness.submit_all(&[3])), vec![2]);
}

// Proves a damaged record followed by valid ones is refused, naming file and offset.
#[test]
fn a_corrupt_record_before_the_tail_stops_recovery() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("open");
    for id in 0..3 {
        harness.submit_all(&[id]);
    }
    drop(harness);
    let name = names::segment(1);
    let mut bytes = storage.bytes(&name).expect("segment");
    bytes[20] ^= 0xFF;
    storage.overwrite(&name, bytes);
    let error = recover(Arc::new(storage))
        .expect_err("corruption is refused")
        .to_string();
    assert!(
        error.contains(&name) && error.contains("offset 0"),
        "{error}"
    );
}

// Proves damage in an older segment is refused even if it is that segment's last record.
#[test]
fn damage_in_an_older_segment_stops_recovery() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 60).expect("open");
    for id in 0..6 {
        harness.submit_all(&[id]);
    }
    drop(harness);
    let name = names::segment(1);
    let mut bytes = storage.bytes(&name).expect("segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    storage.overwrite(&name, bytes);
    let error = recover(Arc::new(storage))
        .expect_err("corruption is refused")
        .to_string();
    assert!(
        error.contains(&name) && error.contains("older segment"),
        "{error}"
    );
}

// Proves a failed sync latches the log: that group and every later submission are refused,
// nothing is acknowledged after it, and a restart recovers every acknowledged entry.
#[test]
fn a_failed_sync_latches_the_log() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("open");
    harness.submit_all(&[1]);
    storage.set_faults(Faults {
        fail_sync: Some(1),
        ..Faults::default()
    });
    let failed = harness.submit_all(&[2]);
    assert!(
        matches!(failed[0].1, Err(AppendError::Failed(_))),
        "{failed:?}"
    );
    assert!(harness.log.has_failed());
    let later = harness.log.try_submit(support::entry(3));
    assert!(matches!(later, Err((SubmitError::Failed, _))));
    drop(harness);
    let (entries, _) =
        recover(Arc::new(storage.restart_after(Crash::ProcessKill, 0))).expect("recover");
    assert_eq!(entries.first(), Some(&(1, 1)));
}

// Proves a full disk refuses only its group, leaves no partial record, and the log accepts
// again once space returns; nothing acknowledged is lost.
#[test]
fn a_full_disk_refuses_the_group_and_recovers_when_space_returns() {
    let (storage, shared) = fault_storage();
    let harness = open(shared, Durability::Fsync, 1 << 20).expect("open");
    harness.submit_all(&[1]);
    let used = storage.bytes(&names::segment(1)).expect("segment").len() as u64;
    storage.set_faults(Faults {
        space_bytes: Some(used + FILE_COST_BYTES + 10),
        ..Faults::default()
    });
    let refused = harness.submit_all(&[2]);
    assert!(
        matches!(refused[0].1, Err(AppendError::DiskFull(_))),
        "{refused:?}"
    );
    assert!(!harness.log.has_failed());
    assert_eq!(
        storage.bytes(&names::segment(1)).expect("segment").len() as u64,
        used
    );
    storage.free_space();
    assert_eq!(positions(&harness.submit_all(&[3])), vec![2]);
    drop(harness);
    let (entries, _) =
        recover(Arc::new(storage.restart_after(Crash::PowerCut, 9))).expect("recover");
    assert_eq!(entries, vec![(1, 1), (2, 3)]);
}

// Proves a full disk when a new segment is due (no room for one more file) refuses only that
// group: the log is not latched, the old segment is untouched, and once space returns the log
// goes on in a new segment; nothing acknowledged is lost.
#[test]
fn a_full_disk_at_segment_creation_refuses_the_group_and_resumes() {
    let (storage, shared) = fault_storage();
    // One-byte segments: every record after the first one in a segment starts a new segment.
    let harness = open(shared, Durability::Fsync, 1).expect("open");
    assert_eq!(positions(&harness.submit_all(&[1])), vec![1]);
    let first = storage.bytes(&names::segment(1)).expect("segment");
    storage.set_faults(Faults {
        space_bytes: Some(first.len() as u64 + FILE_COST_BYTES + FILE_COST_BYTES - 1),
        ..Faults::default()
    });
    let refused = harness.submit_all(&[2]);
    assert!(
        matches!(refused[0].1, Err(AppendError::DiskFull(_))),
        "{refused:?}"
    );
    assert!(!harness.log.has_failed(), "a full disk latched the log");
    assert_eq!(storage.bytes(&names::segment(1)), Some(first));
    assert_eq!(storage.bytes(&names::segment(2)), None);
    let still_full = harness.submit_all(&[3]);
    assert!(matches!(still_full[0].1, Err(AppendError::DiskFull(_))));
    storage.free_space();
    assert_eq!(positions(&harness.submit_all(&[4, 5])), vec![2, 3]);
    assert!(storage.bytes(&names::segment(2)).is_some());
    drop(harness);
    let (entries, _) =
        recover(Arc::new(storage.restart_after(Crash::PowerCut, 3))).expect("recover");
    assert_eq!(entries, vec![(1, 1), (2, 4), (3, 5)]);
}

// Proves a snapshot plus the tail after it gives the full history, and that the segments the
// snapshot covers are removed.
#[test]
fn snapshot_plus_tail_equals_the_full_history() {
    let (storage, shared) = fault_storage();
    let harness = open(Arc::clone(&shared), Durability::Fsync, 40).expect("open");
    let ids: Vec<u64> = (100..110).collect();
    for id in &ids {
        harness.submit_all(&[*id]);
    }
    let history: Vec<(u64, u64)> = (1..=10).zip(ids.iter().copied()).collect();
    harness
        .log
        .write_snapshot(7, &support::snapshot_payload(&history[..7]))
        .expect("snapshot");
    let segments_left = shared
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|name| names::parse_segment(&name))
        .collect::<Vec<_>>();
    assert!(
        segments_left.iter().all(|first| *first >= 7),
        "{segments_left:?}"
    );
    drop(harness);
    let (entries, replayed) =
        recover(Arc::new(storage.restart_after(Crash::PowerCut, 3))).expect("recover");
    assert_eq!(entries, history);
    assert_eq!(replayed.report.snapshot_position, 7);
}

// Proves the real file system implementation round-trips through a restart in a temp dir.
#[test]
fn the_real_directory_round_trips() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(directory.path()).expect("open dir"));
    let harness = open(Arc::clone(&storage), Durability::Fsync, 200).expect("open");
    let ids: Vec<u64> = (0..50).collect();
    harness.submit_all(&ids);
    harness
        .log
        .write_snapshot(
            20,
            &support::snapshot_payload(&(1..=20).zip(0..20).collect::<Vec<_>>()),
        )
        .expect("snapshot");
    drop(harness);
    let harness = open(storage, Durability::Write, 200).expect("reopen");
    let recovered: Vec<u64> = harness.recovered.iter().map(|(_, id)| *id).collect();
    assert_eq!(recovered, ids);
    assert_eq!(harness.report.snapshot_position, 20);
}
