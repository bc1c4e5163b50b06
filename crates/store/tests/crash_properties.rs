//! Property tests: random workloads, random crash points, random faults, several restarts.
//!
//! What must hold after every recovery:
//! - recovery succeeds (a crash only ever damages the tail) and never accepts a corrupt middle;
//! - positions run 1..=n with no gap, each entry exactly once, in submission order;
//! - every acknowledged entry is at its acknowledged position (in `fsync` mode after a power
//!   cut, in both modes after a kill), and anything else recovered was submitted but not
//!   acknowledged;
//! - snapshot + tail gives the same history as the log alone would have;
//! - nothing is acknowledged after the log latched failed, and only a failed sync or a power cut
//!   latches it: a full disk (at an append or at a new segment) refuses groups and passes.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use floodgate_store::fault::{Crash, FaultStorage, Faults};
use floodgate_store::{AppendError, Durability, Storage};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Submit this many entries at once (they may share a group).
    Burst(usize),
    /// Snapshot everything acknowledged so far.
    Snapshot,
    /// Space returns after a full disk.
    FreeSpace,
}

#[derive(Debug, Clone)]
struct Epoch {
    steps: Vec<Step>,
    crash_at_operation: Option<u64>,
    fail_sync: Option<u64>,
    space_bytes: Option<u64>,
    tear_seed: u64,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1usize..40).prop_map(Step::Burst),
        1 => Just(Step::Snapshot),
        1 => Just(Step::FreeSpace),
    ]
}

fn epoch() -> impl Strategy<Value = Epoch> {
    (
        prop::collection::vec(step(), 1..12),
        prop::option::weighted(0.8, 1u64..120),
        prop::option::weighted(0.2, 1u64..20),
        prop::option::weighted(0.2, 100u64..3000),
        any::<u64>(),
    )
        .prop_map(
            |(steps, crash_at_operation, fail_sync, space_bytes, tear_seed)| Epoch {
                steps,
                crash_at_operation,
                fail_sync,
                space_bytes,
                tear_seed,
            },
        )
}

/// The truth the test keeps: position → identifier of every entry that must survive.
#[derive(Debug, Default)]
struct Model {
    must_survive: BTreeMap<u64, u64>,
    next_identifier: u64,
}

/// Runs one epoch: open, submit, crash. Returns the storage a restart sees.
fn run_epoch(
    storage: &FaultStorage,
    epoch: &Epoch,
    durability: Durability,
    crash: Crash,
    model: &mut Model,
) -> Result<FaultStorage, TestCaseError> {
    storage.set_faults(Faults {
        crash_at_operation: epoch.crash_at_operation,
        fail_sync: epoch.fail_sync,
        space_bytes: epoch.space_bytes,
    });
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    // The crash may come during start-up itself; then nothing new was acknowledged.
    if let Ok(harness) = support::open(shared, durability, 300) {
        check_recovered(&harness.recovered, model)?;
        adopt_recovered(&harness.recovered, model);
        let mut acknowledged: Vec<(u64, u64)> = harness.recovered.clone();
        let mut latched = false;
        for step in &epoch.steps {
            match step {
                Step::Burst(count) => {
                    let ids: Vec<u64> = (model.next_identifier..).take(*count).collect();
                    model.next_identifier += *count as u64;
                    for (id, result) in harness.submit_all(&ids) {
                        match result {
                            Ok(position) => {
                                prop_assert!(!latched, "acknowledged after the log failed");
                                acknowledged.push((position, id));
                                if durability == Durability::Fsync || crash == Crash::ProcessKill {
                                    model.must_survive.insert(position, id);
                                }
                            }
                            Err(AppendError::Failed(error)) => {
                                prop_assert!(
                                    epoch.fail_sync.is_some() || storage.is_cut(),
                                    "a full disk alone latched the log: {}",
                                    error
                                );
                                latched = true;
                            }
                            Err(_) => {}
                        }
                    }
                }
                Step::Snapshot => {
                    acknowledged.sort_unstable();
                    let payload = support::snapshot_payload(&acknowledged);
                    // A snapshot that fails (crash, full disk) must not break recovery.
                    let _ = harness
                        .log
                        .write_snapshot(acknowledged.len() as u64, &payload);
                }
                Step::FreeSpace => storage.free_space(),
            }
        }
    }
    Ok(storage.restart_after(crash, epoch.tear_seed))
}

/// Checks what a restart recovered against the model.
fn check_recovered(recovered: &[(u64, u64)], model: &Model) -> Result<(), TestCaseError> {
    for (index, (position, _)) in recovered.iter().enumerate() {
        prop_assert_eq!(
            *position,
            index as u64 + 1,
            "positions must run without gaps"
        );
    }
    for pair in recovered.windows(2) {
        prop_assert!(
            pair[0].1 < pair[1].1,
            "entries out of order or twice: {:?}",
            pair
        );
    }
    for (position, id) in &model.must_survive {
        let found = recovered.get(*position as usize - 1).map(|(_, id)| *id);
        prop_assert_eq!(
            found,
            Some(*id),
            "acknowledged entry at position {} lost",
            position
        );
    }
    Ok(())
}

/// What was recovered is now on disk: later epochs must keep it.
fn adopt_recovered(recovered: &[(u64, u64)], model: &mut Model) {
    model.must_survive = recovered.iter().copied().collect();
}

fn run(epochs: &[Epoch], durability: Durability, crash: Crash) -> Result<(), TestCaseError> {
    let mut storage = FaultStorage::new();
    let mut model = Model::default();
    for epoch in epochs {
        storage = run_epoch(&storage, epoch, durability, crash, &mut model)?;
        let shared: Arc<dyn Storage> = Arc::new(storage.clone());
        let (recovered, _) = support::recover(shared)
            .map_err(|error| TestCaseError::fail(format!("recovery refused: {error}")))?;
        check_recovered(&recovered, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    // Proves fsync mode keeps every acknowledged entry through power cuts and torn writes.
    #[test]
    fn fsync_mode_survives_power_cuts(epochs in prop::collection::vec(epoch(), 1..4)) {
        run(&epochs, Durability::Fsync, Crash::PowerCut)?;
    }

    // Proves write mode keeps every acknowledged entry through process kills.
    #[test]
    fn write_mode_survives_kills(epochs in prop::collection::vec(epoch(), 1..4)) {
        run(&epochs, Durability::Write, Crash::ProcessKill)?;
    }

    // Proves write mode after a power cut may lose acknowledged entries but always recovers a
    // consistent, gap-free prefix (never a corrupt middle).
    #[test]
    fn write_mode_recovers_a_consistent_prefix_after_power_cuts(
        epochs in prop::collection::vec(epoch(), 1..4)
    ) {
        run(&epochs, Durability::Write, Crash::PowerCut)?;
    }
}

/// Builds a log of `records` single-entry records in 120-byte segments; returns the storage and
/// the segment names, oldest first.
fn written_log(records: u64) -> (FaultStorage, Vec<String>) {
    let storage = FaultStorage::new();
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let harness = support::open(Arc::clone(&shared), Durability::Fsync, 120).expect("open");
    for id in 0..records {
        harness.submit_all(&[id]);
    }
    drop(harness);
    let mut segments: Vec<String> = shared
        .list()
        .expect("list")
        .into_iter()
        .filter(|name| floodgate_store::names::parse_segment(name).is_some())
        .collect();
    segments.sort();
    (storage, segments)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    // Proves a flipped byte is accepted only as a torn tail: inside the last record of the last
    // segment recovery cuts that record and keeps the rest; anywhere else it refuses to start.
    #[test]
    fn a_flipped_byte_is_cut_only_in_the_last_record(
        records in 2u64..30,
        segment_pick in any::<prop::sample::Index>(),
        offset_pick in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (storage, segments) = written_log(records);
        let name = &segments[segment_pick.index(segments.len())];
        let mut bytes = storage.bytes(name).expect("segment");
        prop_assume!(!bytes.is_empty());
        let offset = offset_pick.index(bytes.len());
        let last_record_start = last_record_offset(&bytes);
        bytes[offset] ^= flip;
        storage.overwrite(name, bytes);
        let in_tail = name == segments.last().expect("a segment") && offset >= last_record_start;
        match support::recover(Arc::new(storage)) {
            Ok((recovered, replayed)) => {
                prop_assert!(in_tail, "accepted damage at {name}:{offset}");
                prop_assert_eq!(recovered.len() as u64, records - 1);
                prop_assert!(replayed.report.cut.is_some());
            }
            Err(error) => {
                prop_assert!(!in_tail, "refused a torn tail: {error}");
                prop_assert!(error.to_string().contains(name.as_str()), "{}", error);
            }
        }
    }
}

fn last_record_offset(bytes: &[u8]) -> usize {
    let mut offset = 0;
    let mut last = 0;
    while let Ok(record) = floodgate_store::record::decode(&bytes[offset..]) {
        last = offset;
        offset += record.framed_bytes;
    }
    last
}
