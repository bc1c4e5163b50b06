//! The log writer: leader-style group commit on one dedicated thread.
//!
//! Lesson: a sync costs the same for one entry as for a thousand, and on this kind of disk it is
//! bimodal (~0.2 ms or ~4 ms), so a fixed timer is always wrong. One writer takes everything
//! waiting, writes it as ONE record, syncs once, then acknowledges every entry in it; whatever
//! arrives during the sync forms the next group. The busier the log, the larger the groups.
//! The writer is an OS thread so a slow `fdatasync` never blocks an async runtime.
//!
//! Invariants:
//! - an entry is acknowledged only after its record was written (and, in `Fsync` mode, synced);
//!   acknowledgements come in log order;
//! - a failed write or sync latches the log failed: that group and every later one is refused
//!   (never retry a failed fsync and carry on, the post-"fsyncgate" rule);
//! - a full disk refuses only its group, whether it strikes an append (the partial write is cut
//!   away) or the creation of a new segment (nothing was created): later groups succeed when
//!   space returns;
//! - the submission queue is bounded: `try_submit` refuses at once when it is full.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{AppendError, SubmitError};
use crate::names;
use crate::record::RecordBuilder;
use crate::recovery::Replayed;
use crate::snapshot;
use crate::storage::{Storage, StorageFile};

/// What a 2xx after an append promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after `fdatasync`: the entry survives a power cut.
    Fsync,
    /// Acknowledge after the bytes are handed to the kernel: survives kill -9, not a power cut.
    Write,
}

/// How the log is run.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Sync each group, or only hand it to the kernel.
    pub durability: Durability,
    /// A new segment starts once the current one would pass this size.
    pub segment_bytes: u64,
    /// Submissions waiting for the writer, at most (backpressure beyond it).
    pub submission_capacity: usize,
    /// A group stops taking entries once its record reaches this size.
    pub max_group_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            segment_bytes: 64 * 1024 * 1024,
            submission_capacity: 65_536,
            max_group_bytes: 1024 * 1024,
        }
    }
}

/// Something the log can store: it writes its own bytes.
pub trait Entry: Send + 'static {
    /// Appends this entry's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

impl Entry for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

/// One group made durable: what the acknowledger learns besides the entries.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    /// Position of the group's first entry; the i-th entry is at `first_position + i`.
    pub first_position: u64,
    /// Entries in the group.
    pub entries: usize,
    /// Bytes of the group's record.
    pub record_bytes: usize,
    /// How long the sync took (`None` in `Write` mode).
    pub sync_duration: Option<Duration>,
}

/// Told the outcome of every group, in log order, on the writer thread. Keep it short: the
/// next group waits for it.
pub trait Acknowledge<T>: Send + 'static {
    /// `entries` are the group's submissions in position order.
    fn acknowledge(
        &mut self,
        outcome: Result<Commit, AppendError>,
        entries: std::vec::Drain<'_, T>,
    );
}

impl<T, F> Acknowledge<T> for F
where
    F: FnMut(Result<Commit, AppendError>, std::vec::Drain<'_, T>) + Send + 'static,
{
    fn acknowledge(
        &mut self,
        outcome: Result<Commit, AppendError>,
        entries: std::vec::Drain<'_, T>,
    ) {
        self(outcome, entries);
    }
}

/// Totals since the log was opened.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Record bytes written.
    pub bytes: AtomicU64,
    /// Records (groups) written.
    pub records: AtomicU64,
    /// Entries acknowledged.
    pub entries: AtomicU64,
    /// The last acknowledged position.
    pub durable_position: AtomicU64,
}

enum Message<T> {
    Entry(T),
    Stop,
}

/// State shared by the writer and the submitters.
#[derive(Debug)]
struct Shared {
    failed: AtomicBool,
    counters: LogCounters,
}

/// The open log: submit entries, write snapshots, close.
#[derive(Debug)]
pub struct Log<T> {
    sender: SyncSender<Message<T>>,
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<T> std::fmt::Debug for Message<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Entry(_) => "Entry",
            Self::Stop => "Stop",
        })
    }
}

impl Replayed {
    /// Starts the writer where recovery left the log: cuts the torn tail (synced), opens or
    /// creates the last segment, and removes segments a snapshot already covers.
    pub fn start<T: Entry>(
        self,
        options: LogOptions,
        acknowledger: impl Acknowledge<T>,
    ) -> io::Result<Log<T>> {
        let next_position = self.report.last_position + 1;
        let storage = self.storage;
        let segment = match self.tail {
            Some((name, valid_bytes))
                if valid_bytes > 0 || names::parse_segment(&name) == Some(next_position) =>
            {
                let mut file = storage.open_append(&name)?;
                if file.length_bytes() != valid_bytes {
                    file.truncate(valid_bytes)?;
                    file.sync_data()?;
                }
                file
            }
            stale => {
                // An empty last segment named for another position is left by a crash right
                // after it was created: replace it with one named for where the log goes on.
                if let Some((name, _)) = stale {
                    storage.remove(&name)?;
                }
                create_segment(storage.as_ref(), next_position)?
            }
        };
        compact(storage.as_ref(), self.report.snapshot_position)?;
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            counters: LogCounters::default(),
        });
        shared
            .counters
            .durable_position
            .store(self.report.last_position, Ordering::Relaxed);
        let (sender, receiver) = mpsc::sync_channel(options.submission_capacity.max(1));
        let writer = Writer {
            storage: Arc::clone(&storage),
            segment,
            next_position,
            options,
            shared: Arc::clone(&shared),
            builder: RecordBuilder::default(),
            failure: None,
        };
        let thread = std::thread::Builder::new()
            .name("floodgate-log".to_owned())
            .spawn(move || writer.run(&receiver, acknowledger))?;
        Ok(Log {
            sender,
            shared,
            storage,
            writer: Mutex::new(Some(thread)),
        })
    }
}

impl<T: Entry> Log<T> {
    /// Queues `entry` for the next group, or refuses at once (full, failed or closed), giving
    /// the entry back.
    pub fn try_submit(&self, entry: T) -> Result<(), (SubmitError, T)> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err((SubmitError::Failed, entry));
        }
        self.sender
            .try_send(Message::Entry(entry))
            .map_err(|error| match error {
                TrySendError::Full(Message::Entry(entry)) => (SubmitError::Full, entry),
                TrySendError::Disconnected(Message::Entry(entry)) => (SubmitError::Closed, entry),
                TrySendError::Full(Message::Stop) | TrySendError::Disconnected(Message::Stop) => {
                    unreachable!("only entries are submitted here")
                }
            })
    }

    /// Queues `entry`, waiting for room.
    pub fn submit(&self, entry: T) -> Result<(), (SubmitError, T)> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err((SubmitError::Failed, entry));
        }
        self.sender
            .send(Message::Entry(entry))
            .map_err(|error| match error.0 {
                Message::Entry(entry) => (SubmitError::Closed, entry),
                Message::Stop => unreachable!("only entries are submitted here"),
            })
    }

    /// Whether a write or sync failed (the log then refuses everything until restarted).
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Totals since the log was opened.
    pub fn counters(&self) -> &LogCounters {
        &self.shared.counters
    }

    /// Writes `payload` as the snapshot at `position` (which must be acknowledged already) and
    /// removes the segments it covers. Safe to call while entries are being appended.
    pub fn write_snapshot(&self, position: u64, payload: &[u8]) -> io::Result<()> {
        snapshot::write(self.storage.as_ref(), position, payload)?;
        compact(self.storage.as_ref(), position)?;
        Ok(())
    }

    /// Acknowledges or refuses everything submitted so far, then stops the writer.
    pub fn close(&self) {
        let Some(thread) = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // Fails only if the writer already exited (it then answered everything it received).
        let _ = self.sender.send(Message::Stop);
        if thread.join().is_err() {
            tracing::error!("the log writer thread panicked");
        }
    }
}

impl<T> Drop for Log<T> {
    fn drop(&mut self) {
        if let Some(thread) = self
            .writer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = self.sender.send(Message::Stop);
            let _ = thread.join();
        }
    }
}

/// Removes every segment whose entries are all at or below `position` (never the last one).
fn compact(storage: &dyn Storage, position: u64) -> io::Result<usize> {
    let mut segments: Vec<_> = storage
        .list()?
        .into_iter()
        .filter_map(|name| Some((names::parse_segment(&name)?, name)))
        .collect();
    segments.sort_unstable();
    let mut removed = 0;
    for pair in segments.windows(2) {
        let next_first = pair[1].0;
        if next_first <= position + 1 {
            storage.remove(&pair[0].1)?;
            removed += 1;
        }
    }
    if removed > 0 {
        storage.sync_directory()?;
    }
    Ok(removed)
}

fn create_segment(storage: &dyn Storage, first_position: u64) -> io::Result<Box<dyn StorageFile>> {
    let file = storage.create(&names::segment(first_position))?;
    storage.sync_directory()?;
    Ok(file)
}

/// The writer thread's state.
struct Writer {
    storage: Arc<dyn Storage>,
    segment: Box<dyn StorageFile>,
    next_position: u64,
    options: LogOptions,
    shared: Arc<Shared>,
    builder: RecordBuilder,
    /// Set once a write or sync failed; every later group gets it.
    failure: Option<AppendError>,
}

impl Writer {
    fn run<T: Entry>(
        mut self,
        receiver: &Receiver<Message<T>>,
        mut acknowledger: impl Acknowledge<T>,
    ) {
        let mut group = Vec::new();
        let mut stopping = false;
        while !stopping {
            let Ok(first) = receiver.recv() else { break };
            stopping = self.gather(first, receiver, &mut group);
            if group.is_empty() {
                continue;
            }
            let outcome = self.commit(&group);
            acknowledger.acknowledge(outcome, group.drain(..));
        }
        // Whatever is still queued behind the stop is refused, so every submission is answered.
        while let Ok(message) = receiver.try_recv() {
            if let Message::Entry(entry) = message {
                group.push(entry);
            }
        }
        if !group.is_empty() {
            acknowledger.acknowledge(Err(AppendError::Closed), group.drain(..));
        }
    }

    /// Takes `first` and everything waiting behind it, up to the group size. Returns whether a
    /// stop was seen.
    fn gather<T: Entry>(
        &mut self,
        first: Message<T>,
        receiver: &Receiver<Message<T>>,
        group: &mut Vec<T>,
    ) -> bool {
        self.builder.start(self.next_position);
        let mut message = first;
        loop {
            match message {
                Message::Stop => return true,
                Message::Entry(entry) => {
                    self.builder.push(|out| entry.encode(out));
                    group.push(entry);
                }
            }
            if self.builder.length_bytes() >= self.options.max_group_bytes {
                return false;
            }
            match receiver.try_recv() {
                Ok(next) => message = next,
                Err(_) => return false,
            }
        }
    }

    /// Writes the gathered group as one record and syncs it.
    fn commit<T>(&mut self, group: &[T]) -> Result<Commit, AppendError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let record_bytes = self.builder.finish().len();
        self.rotate_if_full(record_bytes as u64)?;
        self.append().map_err(|error| self.refuse(error))?;
        let sync_duration = self.sync().map_err(|error| self.latch(error))?;
        let commit = Commit {
            first_position: self.next_position,
            entries: group.len(),
            record_bytes,
            sync_duration,
        };
        self.next_position += group.len() as u64;
        let counters = &self.shared.counters;
        counters
            .bytes
            .fetch_add(record_bytes as u64, Ordering::Relaxed);
        counters.records.fetch_add(1, Ordering::Relaxed);
        counters
            .entries
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        counters
            .durable_position
            .store(self.next_position - 1, Ordering::Release);
        Ok(commit)
    }

    /// Starts a new segment if this record would overflow the current one. The old segment is
    /// synced first (in both modes), so only the last segment can ever have a torn tail.
    ///
    /// A full disk while creating the new segment changed nothing on disk (the old segment is
    /// whole and synced, no new name exists): it refuses this group only, and the next group
    /// tries the rotation again. A failed sync of the old segment or of the directory latches.
    fn rotate_if_full(&mut self, record_bytes: u64) -> Result<(), AppendError> {
        let length_bytes = self.segment.length_bytes();
        if length_bytes == 0 || length_bytes + record_bytes <= self.options.segment_bytes {
            return Ok(());
        }
        self.segment
            .sync_data()
            .map_err(|error| self.latch(error))?;
        let file = self
            .storage
            .create(&names::segment(self.next_position))
            .map_err(|error| self.refuse(error))?;
        self.storage
            .sync_directory()
            .map_err(|error| self.latch(error))?;
        self.segment = file;
        Ok(())
    }

    /// Appends the record; on a full disk the partial write is cut away before the error
    /// returns, so the segment ends on a whole record.
    fn append(&mut self) -> io::Result<()> {
        let before = self.segment.length_bytes();
        let record = self.builder.finish();
        match self.segment.append(record) {
            Err(error) if error.kind() == io::ErrorKind::StorageFull => {
                // If the cut fails the segment may end in garbage: that must latch, so the
                // error must not look like a full disk.
                self.segment.truncate(before).map_err(|cut_error| {
                    io::Error::other(format!("cutting a partial write failed: {cut_error}"))
                })?;
                Err(error)
            }
            other => other,
        }
    }

    fn sync(&mut self) -> io::Result<Option<Duration>> {
        if self.options.durability == Durability::Write {
            return Ok(None);
        }
        let started = Instant::now();
        self.segment.sync_data()?;
        Ok(Some(started.elapsed()))
    }

    /// A write that failed for want of space refuses this group only; any other failure
    /// latches the log.
    fn refuse(&mut self, error: io::Error) -> AppendError {
        if error.kind() == io::ErrorKind::StorageFull {
            tracing::warn!(%error, "disk full: refused a group of log entries");
            return AppendError::DiskFull(Arc::new(error));
        }
        self.latch(error)
    }

    /// Latches the log failed: this group and every later one is refused until restart.
    fn latch(&mut self, error: io::Error) -> AppendError {
        tracing::error!(%error, "log storage failed: refusing every entry until restart");
        let failure = AppendError::Failed(Arc::new(error));
        self.failure = Some(failure.clone());
        self.shared.failed.store(true, Ordering::Release);
        failure
    }
}
