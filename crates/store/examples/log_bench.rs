//! Micro-benchmark of the log on the real disk (run in release):
//!
//! ```text
//! cargo run --release -p floodgate-store --example log_bench -- [seconds_per_run]
//! ```
//!
//! For N concurrent submitters (each waits for its acknowledgement before submitting again, like
//! an HTTP client waiting for its 202) under `fsync` and `write`: acknowledged entries per second,
//! entries per group (= per sync in `fsync` mode) and mean sync latency. Then the recovery time
//! of a log of one million 16-byte entries. Figures vary with the disk and the machine's load:
//! compare rows of one run, not runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

use floodgate_store::{
    AppendError, Commit, Durability, Entry, FsStorage, LogOptions, Recovery, Storage,
};

/// A 16-byte entry and where to tell its submitter it is acknowledged.
struct Submission {
    payload: [u8; 16],
    done: Option<SyncSender<()>>,
}

impl Entry for Submission {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.payload);
    }
}

#[derive(Default)]
struct Totals {
    groups: AtomicU64,
    entries: AtomicU64,
    sync_nanos: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(Ok(2.0), |text| text.parse())?;
    println!("seconds per run: {seconds}\n");
    println!("| mode | submitters | entries/s | entries per group | mean sync (ms) |");
    println!("|---|---|---|---|---|");
    for durability in [Durability::Fsync, Durability::Write] {
        for submitters in [1, 8, 64, 256] {
            closed_loop(durability, submitters, Duration::from_secs_f64(seconds))?;
        }
    }
    println!();
    for max_group_bytes in [1024 * 1024, 1024] {
        recovery_per_million(max_group_bytes)?;
    }
    Ok(())
}

/// Runs `submitters` closed-loop threads against a fresh log for `duration`.
fn closed_loop(
    durability: Durability,
    submitters: usize,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let directory = tempfile::tempdir()?;
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(directory.path())?);
    let totals = Arc::new(Totals::default());
    let counting = Arc::clone(&totals);
    let acknowledger = move |outcome: Result<Commit, AppendError>,
                             entries: std::vec::Drain<'_, Submission>| {
        if let Ok(commit) = &outcome {
            counting.groups.fetch_add(1, Ordering::Relaxed);
            counting
                .entries
                .fetch_add(commit.entries as u64, Ordering::Relaxed);
            let nanos = commit.sync_duration.unwrap_or_default().as_nanos() as u64;
            counting.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        for entry in entries {
            if let Some(done) = entry.done {
                let _ = done.send(());
            }
        }
    };
    let options = LogOptions {
        durability,
        ..LogOptions::default()
    };
    let log = Arc::new(
        Recovery::open(storage)?
            .replay(|_, _| Ok(()))?
            .start(options, acknowledger)?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..submitters)
        .map(|index| {
            let log = Arc::clone(&log);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (done, answered) = mpsc::sync_channel(1);
                while !stop.load(Ordering::Relaxed) {
                    let payload = [index as u8; 16];
                    let submission = Submission {
                        payload,
                        done: Some(done.clone()),
                    };
                    if log.submit(submission).is_err() || answered.recv().is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    log.close();
    let groups = totals.groups.load(Ordering::Relaxed).max(1);
    let entries = totals.entries.load(Ordering::Relaxed);
    let mean_sync_ms = totals.sync_nanos.load(Ordering::Relaxed) as f64 / groups as f64 / 1e6;
    println!(
        "| {durability:?} | {submitters} | {:.0} | {:.1} | {mean_sync_ms:.3} |",
        entries as f64 / elapsed,
        entries as f64 / groups as f64,
    );
    Ok(())
}

/// Writes one million entries (in `write` mode, groups up to `max_group_bytes`), then times
/// recovery.
fn recovery_per_million(max_group_bytes: usize) -> Result<(), Box<dyn std::error::Error>> {
    const ENTRIES: u64 = 1_000_000;
    let directory = tempfile::tempdir()?;
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(directory.path())?);
    let options = LogOptions {
        durability: Durability::Write,
        max_group_bytes,
        ..LogOptions::default()
    };
    let log = Recovery::open(Arc::clone(&storage))?
        .replay(|_, _| Ok(()))?
        .start(
            options,
            |_: Result<Commit, AppendError>, _: std::vec::Drain<'_, Submission>| {},
        )?;
    for index in 0..ENTRIES {
        let payload = index.to_le_bytes().repeat(2).try_into().unwrap_or([0; 16]);
        if log
            .submit(Submission {
                payload,
                done: None,
            })
            .is_err()
        {
            return Err("the log refused an entry".into());
        }
    }
    log.close();
    drop(log);
    let started = Instant::now();
    let mut checksum = 0u64;
    let replayed = Recovery::open(storage)?.replay(|position, bytes| {
        checksum = checksum.wrapping_add(position ^ u64::from(bytes[0]));
        Ok(())
    })?;
    let elapsed = started.elapsed();
    println!(
        "recovery: {} entries in {} records ({} MB) replayed in {:.3} s (checksum {checksum})",
        replayed.report.entries,
        replayed.report.records,
        replayed.report.bytes / 1_000_000,
        elapsed.as_secs_f64()
    );
    Ok(())
}
