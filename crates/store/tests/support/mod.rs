//! Shared test harness: open a log on a storage, submit numbered entries, collect outcomes,
//! recover what a restart would see.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};

use floodgate_store::{
    AppendError, Commit, Durability, Log, LogOptions, Recovery, RecoveryError, RecoveryReport,
    Storage,
};

/// An entry's fate as the acknowledger saw it.
pub type Outcome = (u64, Result<u64, AppendError>);

/// A log whose acknowledger reports every entry's outcome on a channel.
pub struct Harness {
    pub log: Log<Vec<u8>>,
    pub outcomes: Receiver<Outcome>,
    pub groups: Receiver<Commit>,
    pub recovered: Vec<(u64, u64)>,
    pub report: RecoveryReport,
}

/// Entries are little-endian u64 identifiers.
pub fn entry(identifier: u64) -> Vec<u8> {
    identifier.to_le_bytes().to_vec()
}

pub fn identifier(bytes: &[u8]) -> Result<u64, String> {
    Ok(u64::from_le_bytes(
        bytes
            .try_into()
            .map_err(|_| format!("entry of {} bytes", bytes.len()))?,
    ))
}

/// A snapshot payload: the identifiers at positions 1..=n, in order.
pub fn snapshot_payload(entries: &[(u64, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(_, id)| id.to_le_bytes())
        .collect()
}

/// Recovers the entries (position, identifier) a restart on `storage` sees.
pub fn recover(
    storage: Arc<dyn Storage>,
) -> Result<(Vec<(u64, u64)>, floodgate_store::Replayed), RecoveryError> {
    let recovery = Recovery::open(storage)?;
    let mut entries = Vec::new();
    if let Some(snapshot) = recovery.snapshot() {
        for (index, chunk) in snapshot.payload.chunks(8).enumerate() {
            let id = identifier(chunk).map_err(|message| RecoveryError::Apply {
                file: "snapshot".to_owned(),
                position: index as u64 + 1,
                message,
            })?;
            entries.push((index as u64 + 1, id));
        }
        assert_eq!(
            entries.len() as u64,
            snapshot.position,
            "snapshot payload length"
        );
    }
    let replayed = recovery.replay(|position, bytes| {
        entries.push((position, identifier(bytes)?));
        Ok(())
    })?;
    Ok((entries, replayed))
}

/// Recovers and starts a log on `storage`.
pub fn open(
    storage: Arc<dyn Storage>,
    durability: Durability,
    segment_bytes: u64,
) -> Result<Harness, String> {
    let (recovered, replayed) = recover(storage).map_err(|error| error.to_string())?;
    let report = replayed.report.clone();
    let (outcome_sender, outcomes) = mpsc::channel();
    let (group_sender, groups) = mpsc::channel();
    let options = LogOptions {
        durability,
        segment_bytes,
        submission_capacity: 1024,
        max_group_bytes: 256,
    };
    let acknowledger = move |outcome: Result<Commit, AppendError>,
                             entries: std::vec::Drain<'_, Vec<u8>>| {
        if let Ok(commit) = &outcome {
            let _ = group_sender.send(*commit);
        }
        for (index, bytes) in entries.enumerate() {
            let id = identifier(&bytes).expect("test entries are 8 bytes");
            let result = match &outcome {
                Ok(commit) => Ok(commit.first_position + index as u64),
                Err(error) => Err(error.clone()),
            };
            let _ = outcome_sender.send((id, result));
        }
    };
    let log = replayed
        .start(options, acknowledger)
        .map_err(|error| error.to_string())?;
    Ok(Harness {
        log,
        outcomes,
        groups,
        recovered,
        report,
    })
}

impl Harness {
    /// Submits `ids` and waits for each one's outcome.
    pub fn submit_all(&self, ids: &[u64]) -> Vec<Outcome> {
        let mut submitted = 0;
        let mut outcomes = Vec::new();
        for &id in ids {
            match self.log.submit(entry(id)) {
                Ok(()) => submitted += 1,
                Err((error, _)) => outcomes.push((id, Err(closed_as_append_error(error)))),
            }
        }
        for _ in 0..submitted {
            outcomes.push(self.outcomes.recv().expect("every submission is answered"));
        }
        // Identifiers rise in submission order, so this is the order things happened in.
        outcomes.sort_unstable_by_key(|(id, _)| *id);
        outcomes
    }
}

fn closed_as_append_error(error: floodgate_store::SubmitError) -> AppendError {
    match error {
        floodgate_store::SubmitError::Failed => {
            AppendError::Failed(Arc::new(std::io::Error::other("refused at submission")))
        }
        _ => AppendError::Closed,
    }
}
