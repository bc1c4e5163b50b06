//! Durable acceptance: the log between admission and the workers.
//!
//! Lesson: a 202 is a promise, and a promise kept only in memory is broken by the first
//! restart. With a data directory the engine writes every admitted event to the log
//! (`floodgate-store`, group commit); once its group is written (`write`) or synced (`fsync`)
//! the writer hands the group to the workers in log order, and a single event is answered when
//! a worker applied it (so an overflow is a 422, never a 202; a batch is answered once
//! durable). Balances are derived state: a snapshot at a log position plus the log after it
//! rebuilds them exactly.
//!
//! Invariants:
//! - an event is applied by a worker only after its record is in the log, so every balance a
//!   client can read is recoverable;
//! - the queue bound still holds: events admitted but not yet applied (in the log writer or in
//!   the queue) never exceed the queue capacity, and the excess is refused at once;
//! - a snapshot at position P holds exactly the effect of the events at positions 1..=P: it is
//!   taken with the writer's dispatch paused and every dispatched event applied;
//! - after a failed write or sync nothing more is accepted (`storage_failed`) until restart.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_store::{AppendError, Commit, FsStorage, Log, Recovery, RecoveryReport, Storage};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::dedup::{IdKey, Window};
use crate::engine::Rejected;
use crate::event::EventId;
use crate::latch::Latch;
use crate::ledger::{Admit, Ledger, user_hash};
use crate::metrics::Metrics;
use crate::queue::{Admission, Job, release_claims};

/// Default snapshot interval in events: a restart then replays at most about a million events
/// (well under a second, see the README's recovery figure).
pub const DEFAULT_SNAPSHOT_EVERY_EVENTS: u64 = 1_000_000;
/// Default snapshot interval in log bytes.
pub const DEFAULT_SNAPSHOT_EVERY_BYTES: u64 = 64 * 1024 * 1024;
/// Default size of a log segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Name of the lock file that keeps a second live process out of a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Longest a snapshot waits, with dispatch paused, for the workers to apply what they have.
const CUT_WAIT: Duration = Duration::from_secs(10);

/// Entry kind byte of an event record: amount (i64 LE) then user bytes.
const ENTRY_EVENT: u8 = 1;
/// Entry kind byte of an events record (a batch, or events with ids): see `encode_events`.
const ENTRY_EVENTS: u8 = 2;
/// Snapshot payload format: version byte, then (user length u32, user, balance i64) per user.
const SNAPSHOT_BALANCES_V1: u8 = 1;
/// Snapshot payload format with the dedup window: version byte, the window's hash key (16
/// bytes), the number of users (u64), the users as in v1, then per id kept: key (u128), user
/// hash (u64), amount (i64), first seen (u64 ms), oldest first.
const SNAPSHOT_WITH_IDS_V2: u8 = 2;

/// What a 202 waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// The event's group is synced (`fdatasync`): survives kill -9 and power loss.
    #[default]
    Fsync,
    /// The event's group is written to the kernel: survives kill -9, not power loss.
    Write,
    /// The event is in this process's memory only: lost on any restart.
    Memory,
}

impl DurabilityMode {
    /// What a 202 promises in this mode (start-up log, `/stats`, README).
    pub fn promise(self) -> &'static str {
        match self {
            Self::Fsync => {
                "202 after the event is synced to disk and applied: survives kill -9 and power loss"
            }
            Self::Write => {
                "202 after the event is written to the kernel and applied: survives kill -9, not \
                 power loss"
            }
            Self::Memory => "202 after the event is queued in memory: lost on any restart",
        }
    }

    fn store_durability(self) -> floodgate_store::Durability {
        match self {
            Self::Write => floodgate_store::Durability::Write,
            Self::Fsync | Self::Memory => floodgate_store::Durability::Fsync,
        }
    }
}

impl fmt::Display for DurabilityMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Fsync => "fsync",
            Self::Write => "write",
            Self::Memory => "memory",
        })
    }
}

impl FromStr for DurabilityMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "fsync" => Ok(Self::Fsync),
            "write" => Ok(Self::Write),
            "memory" => Ok(Self::Memory),
            other => Err(format!(
                "unknown durability `{other}` (fsync, write, memory)"
            )),
        }
    }
}

/// Where and how the engine keeps its log.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// The data directory (created if missing, locked while in use).
    pub data_dir: PathBuf,
    /// `Fsync` or `Write` (`Memory` keeps no log and is never given here).
    pub mode: DurabilityMode,
    /// Snapshot after this many events since the last one.
    pub snapshot_every_events: u64,
    /// Snapshot after this many log bytes since the last one.
    pub snapshot_every_bytes: u64,
    /// A new log segment starts once the current one would pass this size.
    pub segment_bytes: u64,
    /// The files the log and snapshots go to: `None` for `data_dir` itself (always, outside
    /// tests); tests give a storage double that fails on command (the directory is still
    /// locked).
    pub storage: Option<Arc<dyn Storage>>,
}

impl DurableOptions {
    /// A log in `data_dir` with the default snapshot intervals.
    pub fn new(data_dir: impl Into<PathBuf>, mode: DurabilityMode) -> Self {
        Self {
            data_dir: data_dir.into(),
            mode,
            snapshot_every_events: DEFAULT_SNAPSHOT_EVERY_EVENTS,
            snapshot_every_bytes: DEFAULT_SNAPSHOT_EVERY_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            storage: None,
        }
    }
}

/// Why a durable engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The data directory cannot be created, written or locked.
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    /// The log or snapshot cannot be trusted (see the store's recovery rules).
    #[error(transparent)]
    Recovery(#[from] floodgate_store::RecoveryError),
    /// A storage error while starting the log.
    #[error("starting the log: {0}")]
    Io(#[from] std::io::Error),
}

/// The data directory, held locked (an advisory lock on `LOCK`) for the engine's lifetime.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if missing and takes its lock; refuses a directory that is not
    /// writable or is locked by another live process.
    pub fn open(path: &Path) -> Result<Self, DurableError> {
        let refuse = |reason: String| DurableError::DataDir {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(path)
            .map_err(|error| refuse(format!("cannot create it: {error}")))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(|error| refuse(format!("not writable: {error}")))?;
        lock.try_lock().map_err(|error| {
            refuse(format!(
                "locked by another live floodgate process ({error}); stop it or choose another --data-dir"
            ))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The answer the log writer gives a waiting submitter: `Ok` (durable and dispatched in log
/// order) or the refusal with the jobs handed back.
pub(crate) type Reply = Result<(), (Rejected, Vec<Job>)>;

/// An event id on its way through the log: what the log record keeps so a restart remembers
/// it. (Its claim travels in the event's job: freed if the group is refused, settled by the
/// worker once applied.)
#[derive(Debug)]
pub(crate) struct LoggedId {
    /// Index of the event in its ticket.
    pub(crate) index: usize,
    pub(crate) id: EventId,
    pub(crate) at_unix_ms: u64,
}

/// Admitted events on their way through the log, as ONE log entry: one event from
/// `POST /events`, a whole batch from `POST /events/batch`.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) jobs: Vec<Job>,
    pub(crate) admitted: Vec<Admit>,
    /// The ids among `jobs`, by index (empty: none).
    pub(crate) ids: Vec<LoggedId>,
    pub(crate) reply: oneshot::Sender<Reply>,
}

impl floodgate_store::Entry for Ticket {
    fn encode(&self, out: &mut Vec<u8>) {
        match self.jobs.as_slice() {
            [job] if self.ids.is_empty() => encode_event(&job.user, job.amount, out),
            jobs => encode_events(jobs, &self.ids, out),
        }
    }
}

/// Appends an events entry: kind byte, count (u32), then per event: amount (i64), id length
/// (u8, 0: none), id bytes and first-seen time (u64 ms, only with an id), user length (u8),
/// user bytes.
fn encode_events(jobs: &[Job], ids: &[LoggedId], out: &mut Vec<u8>) {
    out.push(ENTRY_EVENTS);
    out.extend_from_slice(&(jobs.len() as u32).to_le_bytes());
    let mut ids = ids.iter().peekable();
    for (index, job) in jobs.iter().enumerate() {
        out.extend_from_slice(&job.amount.to_le_bytes());
        match ids.next_if(|id| id.index == index) {
            Some(id) => {
                out.push(id.id.as_str().len() as u8);
                out.extend_from_slice(id.id.as_str().as_bytes());
                out.extend_from_slice(&id.at_unix_ms.to_le_bytes());
            }
            None => out.push(0),
        }
        out.push(job.user.len() as u8);
        out.extend_from_slice(job.user.as_bytes());
    }
}

/// One event read back from the log: user, amount, and its id with its first-seen time.
pub type LoggedEvent = (String, i64, Option<(String, u64)>);

/// Reads an entry back (either kind), handing each event to `visit` in order.
pub fn decode_entry(
    bytes: &[u8],
    mut visit: impl FnMut(LoggedEvent) -> Result<(), String>,
) -> Result<(), String> {
    if bytes.first() == Some(&ENTRY_EVENT) {
        let (user, amount) = decode_event(bytes)?;
        return visit((user, amount, None));
    }
    let (&kind, rest) = bytes.split_first().ok_or("empty entry")?;
    if kind != ENTRY_EVENTS {
        return Err(format!("unknown entry kind {kind}"));
    }
    let mut reader = Reader(rest);
    let count = u32::from_le_bytes(reader.take_array()?);
    for _ in 0..count {
        let amount = i64::from_le_bytes(reader.take_array()?);
        let id_length = usize::from(reader.take_array::<1>()?[0]);
        let id = if id_length == 0 {
            None
        } else {
            let text = reader.take_text(id_length)?;
            Some((text, u64::from_le_bytes(reader.take_array()?)))
        };
        let user_length = usize::from(reader.take_array::<1>()?[0]);
        let user = reader.take_text(user_length)?;
        visit((user, amount, id))?;
    }
    Ok(())
}

/// Reads fields off the front of an entry.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, length: usize) -> Result<&[u8], String> {
        if self.0.len() < length {
            return Err("entry cut short".to_owned());
        }
        let (head, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(head)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn take_text(&mut self, length: usize) -> Result<String, String> {
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|error| format!("text not UTF-8: {error}"))
    }
}

/// Appends one event entry: kind byte, amount, user bytes.
pub fn encode_event(user: &str, amount: i64, out: &mut Vec<u8>) {
    out.push(ENTRY_EVENT);
    out.extend_from_slice(&amount.to_le_bytes());
    out.extend_from_slice(user.as_bytes());
}

/// Reads one event entry back.
pub fn decode_event(bytes: &[u8]) -> Result<(String, i64), String> {
    let (&kind, rest) = bytes.split_first().ok_or("empty entry")?;
    if kind != ENTRY_EVENT {
        return Err(format!("unknown entry kind {kind}"));
    }
    let amount = rest
        .get(..8)
        .and_then(|field| field.try_into().ok())
        .map(i64::from_le_bytes)
        .ok_or("entry shorter than its amount")?;
    let user =
        std::str::from_utf8(&rest[8..]).map_err(|error| format!("user not UTF-8: {error}"))?;
    Ok((user.to_owned(), amount))
}

/// Encodes balances as a snapshot payload.
pub fn encode_balances(balances: &[(String, i64)]) -> Vec<u8> {
    let bytes: usize = balances.iter().map(|(user, _)| user.len() + 12).sum();
    let mut out = Vec::with_capacity(1 + bytes);
    out.push(SNAPSHOT_BALANCES_V1);
    for (user, balance) in balances {
        out.extend_from_slice(&(user.len() as u32).to_le_bytes());
        out.extend_from_slice(user.as_bytes());
        out.extend_from_slice(&balance.to_le_bytes());
    }
    out
}

/// Decodes a snapshot payload, handing each (user, balance) to `restore`.
pub fn decode_balances(
    payload: &[u8],
    mut restore: impl FnMut(String, i64) -> Result<(), String>,
) -> Result<(), String> {
    let (&version, mut rest) = payload.split_first().ok_or("empty snapshot payload")?;
    if version != SNAPSHOT_BALANCES_V1 {
        return Err(format!("unknown snapshot payload version {version}"));
    }
    while !rest.is_empty() {
        let length = rest
            .get(..4)
            .and_then(|field| field.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or("truncated user length")? as usize;
        let user = rest.get(4..4 + length).ok_or("truncated user")?;
        let balance = rest
            .get(4 + length..12 + length)
            .and_then(|field| field.try_into().ok())
            .map(i64::from_le_bytes)
            .ok_or("truncated balance")?;
        let user = std::str::from_utf8(user).map_err(|error| format!("user not UTF-8: {error}"))?;
        restore(user.to_owned(), balance)?;
        rest = &rest[12 + length..];
    }
    Ok(())
}

/// Bytes of one id in a snapshot: key (16), user hash, amount, first-seen time (8 each).
const SNAPSHOT_ID_BYTES: usize = 40;

/// Encodes balances and the dedup window (its hash key and settled ids) as a snapshot payload.
pub fn encode_snapshot(
    balances: &[(String, i64)],
    hash_key: [u8; 16],
    ids: &[(IdKey, u64, i64, u64)],
) -> Vec<u8> {
    let mut out = snapshot_head(balances, hash_key, ids.len());
    for &(key, user_hash, amount, at_unix_ms) in ids {
        encode_snapshot_id(&mut out, key, user_hash, amount, at_unix_ms);
    }
    out
}

/// The start of a snapshot payload (v2): the kind, the window's hash key and the balances,
/// with room for `ids` more ids ([`encode_snapshot_id`]), which run to the end.
fn snapshot_head(balances: &[(String, i64)], hash_key: [u8; 16], ids: usize) -> Vec<u8> {
    let users = encode_balances(balances);
    let mut out = Vec::with_capacity(25 + users.len() + ids * SNAPSHOT_ID_BYTES);
    out.push(SNAPSHOT_WITH_IDS_V2);
    out.extend_from_slice(&hash_key);
    out.extend_from_slice(&(balances.len() as u64).to_le_bytes());
    out.extend_from_slice(&users[1..]);
    out
}

/// Appends one id of the dedup window to a snapshot payload.
fn encode_snapshot_id(out: &mut Vec<u8>, key: IdKey, user_hash: u64, amount: i64, at_unix_ms: u64) {
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&user_hash.to_le_bytes());
    out.extend_from_slice(&amount.to_le_bytes());
    out.extend_from_slice(&at_unix_ms.to_le_bytes());
}

/// Decodes a snapshot payload (v1: balances; v2: balances and the dedup window): adopts the
/// window's hash key, hands each balance to `restore` and each id to `window`.
fn decode_snapshot(
    payload: &[u8],
    window: &Window,
    mut restore: impl FnMut(String, i64) -> Result<(), String>,
) -> Result<(), String> {
    if payload.first() == Some(&SNAPSHOT_BALANCES_V1) {
        return decode_balances(payload, restore);
    }
    let (&version, rest) = payload.split_first().ok_or("empty snapshot payload")?;
    if version != SNAPSHOT_WITH_IDS_V2 {
        return Err(format!("unknown snapshot payload version {version}"));
    }
    let mut reader = Reader(rest);
    window.adopt_hash_key(reader.take_array()?);
    let users = u64::from_le_bytes(reader.take_array()?);
    for _ in 0..users {
        let length = u32::from_le_bytes(reader.take_array()?) as usize;
        let user = reader.take_text(length)?;
        let balance = i64::from_le_bytes(reader.take_array()?);
        restore(user, balance)?;
    }
    while !reader.0.is_empty() {
        let key = u128::from_le_bytes(reader.take_array()?);
        let user_hash = u64::from_le_bytes(reader.take_array()?);
        let amount = i64::from_le_bytes(reader.take_array()?);
        let at_unix_ms = u64::from_le_bytes(reader.take_array()?);
        window.restore(key, user_hash, amount, at_unix_ms);
    }
    Ok(())
}

/// Applies a recovered amount (a snapshot balance or a replayed event) to the ledger, as a
/// worker would: admitted against the user budget, then applied. An overflow is skipped, as
/// it was the first time (the same events in the same order overflow again). `Ok(false)` for
/// a skipped overflow.
fn restore_into(ledger: &Ledger, user: String, amount: i64) -> Result<bool, String> {
    let hash = user_hash(&user);
    ledger.admit(hash, &user).map_err(|_| {
        format!(
            "more users than --max-users allows ({} slots used): raise it",
            ledger.budget().used()
        )
    })?;
    if let Err(overflow) = ledger.apply(user, amount) {
        tracing::warn!(user = %overflow.user, amount, "replayed event overflows, skipped as before");
        return Ok(false);
    }
    Ok(true)
}

/// Rebuilds `ledger` and the dedup `window` from the data directory: the newest snapshot,
/// then the log after it. Also returns the events replayed (a batch is one log entry).
pub(crate) fn recover(
    storage: Arc<dyn Storage>,
    ledger: &Ledger,
    window: &Window,
) -> Result<(floodgate_store::Replayed, u64), DurableError> {
    let recovery = Recovery::open(storage)?;
    if let Some(snapshot) = recovery.snapshot() {
        decode_snapshot(&snapshot.payload, window, |user, balance| {
            restore_into(ledger, user, balance).map(drop)
        })
        .map_err(|message| floodgate_store::RecoveryError::Apply {
            file: floodgate_store::names::snapshot(snapshot.position),
            position: snapshot.position,
            message,
        })?;
    }
    let mut events = 0;
    let replayed = recovery.replay(|_, bytes| {
        decode_entry(bytes, |(user, amount, id)| {
            events += 1;
            let hash = user_hash(&user);
            let applied = restore_into(ledger, user, amount)?;
            // As at run time, an id is kept only for an event that was applied.
            if let (true, Some((id, at_unix_ms))) = (applied, id) {
                let id = EventId::parse(&id).map_err(|error| error.to_string())?;
                window.restore(window.key(&id), hash, amount, at_unix_ms);
            }
            Ok(())
        })
    })?;
    Ok((replayed, events))
}

/// The writer's dispatch state; holding its lock pauses dispatch (how a snapshot gets a
/// consistent cut).
#[derive(Debug, Default)]
struct Dispatch {
    /// Last position handed to the workers.
    position: u64,
    /// Events handed to the workers since start.
    dispatched: u64,
    /// Events and log bytes since the last snapshot.
    events_since_snapshot: u64,
    bytes_since_snapshot: u64,
    snapshot_requested: bool,
}

/// Numbers for `/stats` and `/metrics`.
#[derive(Debug)]
pub(crate) struct DurableCells {
    /// Events per group (one record, one sync).
    pub(crate) events_per_group: Mutex<Histogram<u64>>,
    /// Sync latency in microseconds.
    pub(crate) sync_us: Mutex<Histogram<u64>>,
    pub(crate) snapshot_position: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) snapshot_failures: AtomicU64,
    pub(crate) snapshot_at: Mutex<Option<Instant>>,
    pub(crate) disk_full_groups: AtomicU64,
}

impl DurableCells {
    fn new(snapshot_position: u64) -> Self {
        let histogram = || {
            Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant bounds are valid"),
            )
        };
        Self {
            events_per_group: histogram(),
            sync_us: histogram(),
            snapshot_position: AtomicU64::new(snapshot_position),
            snapshots: AtomicU64::new(0),
            snapshot_failures: AtomicU64::new(0),
            snapshot_at: Mutex::new(None),
            disk_full_groups: AtomicU64::new(0),
        }
    }
}

/// What `/stats` reports about durability.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DurabilityStats {
    /// `fsync`, `write` or `memory`.
    pub mode: DurabilityMode,
    /// What a 202 promises in this mode.
    pub promise: String,
    /// The data directory (absent in `memory` mode).
    pub data_dir: Option<String>,
    /// Log record bytes written since start.
    pub log_bytes: u64,
    /// Log records (groups) written since start.
    pub log_records: u64,
    /// Last log position acknowledged.
    pub log_position: u64,
    /// Events per group: mean, p50, p99, max.
    pub events_per_group: GroupSummary,
    /// Sync latency in ms: mean, p50, p99, max (`fsync` mode).
    pub sync_ms: GroupSummary,
    /// Position of the newest snapshot (0: none).
    pub snapshot_position: u64,
    /// Seconds since the last snapshot this process wrote (absent: none yet).
    pub snapshot_age_seconds: Option<f64>,
    /// Snapshots written and failed since start.
    pub snapshots: u64,
    pub snapshot_failures: u64,
    /// Groups refused because the disk was full.
    pub disk_full_groups: u64,
    /// Start-up recovery: seconds, events replayed, snapshot position.
    pub recovery_seconds: f64,
    pub recovered_events: u64,
    /// `true` once a write or sync failed (nothing more is accepted).
    pub storage_failed: bool,
}

/// Copies of the log's histograms, for `/metrics`.
#[derive(Debug, Clone)]
pub struct LogHistograms {
    /// Events per group (per record, per sync).
    pub events_per_group: Histogram<u64>,
    /// Sync latency in microseconds.
    pub sync_us: Histogram<u64>,
}

/// Mean and percentiles of a histogram.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupSummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl GroupSummary {
    fn of(histogram: &Histogram<u64>, scale: f64) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            mean: histogram.mean() / scale,
            p50: histogram.value_at_quantile(0.5) as f64 / scale,
            p99: histogram.value_at_quantile(0.99) as f64 / scale,
            max: histogram.max() as f64 / scale,
        }
    }
}

/// The engine's durable side: the log, its dispatch gate, the snapshotter, the numbers.
#[derive(Debug)]
pub(crate) struct Durable {
    mode: DurabilityMode,
    /// Held locked until the log is closed.
    data_dir: Mutex<Option<DataDir>>,
    data_dir_path: PathBuf,
    log: Arc<Log<Ticket>>,
    /// Events submitted to the log and not yet dispatched to the workers.
    in_flight: Arc<AtomicUsize>,
    /// Raised once a write or sync failed.
    failed: Arc<Latch>,
    pub(crate) cells: Arc<DurableCells>,
    recovery: RecoveryReport,
    /// Events replayed at start-up (a batch's entry counts each of its events).
    recovered_events: u64,
    snapshotter: Snapshotter,
}

/// Everything the writer thread and the snapshotter share with the engine.
struct Wiring {
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    window: Arc<Window>,
    gate: Arc<Mutex<Dispatch>>,
}

impl Durable {
    /// Opens the data directory, rebuilds `ledger` from it, and starts the log writer, which
    /// hands committed events to `admission`.
    pub(crate) fn start(
        options: &DurableOptions,
        ledger: &Arc<Ledger>,
        metrics: &Arc<Metrics>,
        admission: &Arc<Admission>,
        window: &Arc<Window>,
    ) -> Result<Self, DurableError> {
        let data_dir = DataDir::open(&options.data_dir)?;
        let storage: Arc<dyn Storage> = match &options.storage {
            Some(storage) => Arc::clone(storage),
            None => Arc::new(FsStorage::open(data_dir.path())?),
        };
        let (replayed, recovered_events) = recover(storage, ledger, window)?;
        let recovery = replayed.report.clone();
        log_recovery(&recovery, recovered_events, data_dir.path());
        let wiring = Wiring {
            ledger: Arc::clone(ledger),
            metrics: Arc::clone(metrics),
            window: Arc::clone(window),
            gate: Arc::new(Mutex::new(Dispatch {
                position: recovery.last_position,
                ..Dispatch::default()
            })),
        };
        let cells = Arc::new(DurableCells::new(recovery.snapshot_position));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Latch::default());
        let (trigger, triggers) = std_mpsc::channel();
        let acknowledger = Acknowledger {
            ledger: Arc::clone(ledger),
            admission: Arc::clone(admission),
            window: Arc::clone(window),
            gate: Arc::clone(&wiring.gate),
            cells: Arc::clone(&cells),
            in_flight: Arc::clone(&in_flight),
            failed: Arc::clone(&failed),
            trigger: trigger.clone(),
            options: options.clone(),
            jobs: Vec::new(),
            lanes: Vec::new(),
        };
        let log_options = floodgate_store::LogOptions {
            durability: options.mode.store_durability(),
            submission_capacity: admission.capacity_events().max(1),
            segment_bytes: options.segment_bytes,
            ..floodgate_store::LogOptions::default()
        };
        let log = Arc::new(replayed.start(log_options, acknowledger)?);
        let snapshotter = Snapshotter::start(
            wiring,
            Arc::clone(&log),
            Arc::clone(&cells),
            trigger,
            triggers,
        )?;
        Ok(Self {
            mode: options.mode,
            data_dir_path: data_dir.path().to_path_buf(),
            data_dir: Mutex::new(Some(data_dir)),
            log,
            in_flight,
            failed,
            cells,
            recovery,
            recovered_events,
            snapshotter,
        })
    }

    /// `fsync` or `write`.
    pub(crate) fn mode(&self) -> DurabilityMode {
        self.mode
    }

    /// Whether a write or sync failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_raised()
    }

    /// Resolves once a write or sync failed.
    pub(crate) async fn failed(&self) {
        self.failed.raised().await;
    }

    /// Reserves room for `events` under the queue bound, where the events in the log writer
    /// count with those queued: all of them or none, in one compare-and-swap on the in-flight
    /// count, so two submitters can never both take the last room. The writer pushes a
    /// group into the queue before it takes it off the in-flight count, and the count is read
    /// here before the queue's depth (the swap fails if it moved), so an event moving from
    /// one to the other is counted twice at worst, never missed. [`Self::submit`] uses the
    /// room (or gives it back when the log refuses).
    pub(crate) fn reserve_room(&self, events: usize, admission: &Admission) -> bool {
        let capacity = admission.capacity_events();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_flight| {
                let fits = admission.depth() + in_flight + events <= capacity;
                fits.then_some(in_flight + events)
            })
            .is_ok()
    }

    /// Submits admitted events, whose room [`Self::reserve_room`] took, as one log entry; the
    /// returned receiver answers once its group is durable (or refused). Refused at once when the log's queue is full, failed or
    /// closed: the ids' claims are then freed here and the jobs handed back. Once submitted,
    /// the claims are settled by the log writer (freed when refused) or, once durable, by the
    /// worker that applies the event (kept if applied, freed if it overflowed),
    /// whether or not anyone still waits for the answer.
    pub(crate) fn submit(
        &self,
        jobs: Vec<Job>,
        admitted: Vec<Admit>,
        ids: Vec<LoggedId>,
        window: &Window,
    ) -> Result<oneshot::Receiver<Reply>, (Rejected, Vec<Job>)> {
        let (reply, answer) = oneshot::channel();
        let events = jobs.len();
        let ticket = Ticket {
            jobs,
            admitted,
            ids,
            reply,
        };
        match self.log.try_submit(ticket) {
            Ok(()) => Ok(answer),
            Err((error, mut ticket)) => {
                self.in_flight.fetch_sub(events, Ordering::AcqRel);
                release_claims(window, &mut ticket.jobs);
                let reason = match error {
                    floodgate_store::SubmitError::Full => Rejected::QueueFull,
                    floodgate_store::SubmitError::Failed => Rejected::StorageFailed,
                    floodgate_store::SubmitError::Closed => Rejected::Draining,
                };
                Err((reason, ticket.jobs))
            }
        }
    }

    /// Answers everything submitted, stops the writer, then (if `snapshot` and the log did not
    /// fail) writes a last snapshot so the next start replays nothing. Blocking: call from a
    /// blocking context.
    pub(crate) fn close(&self, snapshot: bool) {
        self.log.close();
        if snapshot && !self.has_failed() {
            self.snapshotter.snapshot_now();
        }
        self.snapshotter.stop();
        // Nothing touches the directory any more: another process may take it.
        lock(&self.data_dir).take();
    }

    /// Copies of the histograms.
    pub(crate) fn histograms(&self) -> LogHistograms {
        LogHistograms {
            events_per_group: lock(&self.cells.events_per_group).clone(),
            sync_us: lock(&self.cells.sync_us).clone(),
        }
    }

    /// Numbers for `/stats`.
    pub(crate) fn stats(&self) -> DurabilityStats {
        let counters = self.log.counters();
        let cells = &self.cells;
        let events_per_group = GroupSummary::of(&lock(&cells.events_per_group), 1.0);
        let sync_ms = GroupSummary::of(&lock(&cells.sync_us), 1000.0);
        DurabilityStats {
            mode: self.mode,
            promise: self.mode.promise().to_owned(),
            data_dir: Some(self.data_dir_path.display().to_string()),
            log_bytes: counters.bytes.load(Ordering::Relaxed),
            log_records: counters.records.load(Ordering::Relaxed),
            log_position: counters.durable_position.load(Ordering::Relaxed),
            events_per_group,
            sync_ms,
            snapshot_position: cells.snapshot_position.load(Ordering::Relaxed),
            snapshot_age_seconds: lock(&cells.snapshot_at).map(|at| at.elapsed().as_secs_f64()),
            snapshots: cells.snapshots.load(Ordering::Relaxed),
            snapshot_failures: cells.snapshot_failures.load(Ordering::Relaxed),
            disk_full_groups: cells.disk_full_groups.load(Ordering::Relaxed),
            recovery_seconds: self.recovery.elapsed.as_secs_f64(),
            recovered_events: self.recovered_events,
            storage_failed: self.has_failed(),
        }
    }
}

/// The stats of an engine without a log.
pub(crate) fn memory_stats() -> DurabilityStats {
    DurabilityStats {
        mode: DurabilityMode::Memory,
        promise: DurabilityMode::Memory.promise().to_owned(),
        data_dir: None,
        log_bytes: 0,
        log_records: 0,
        log_position: 0,
        events_per_group: GroupSummary::default(),
        sync_ms: GroupSummary::default(),
        snapshot_position: 0,
        snapshot_age_seconds: None,
        snapshots: 0,
        snapshot_failures: 0,
        disk_full_groups: 0,
        recovery_seconds: 0.0,
        recovered_events: 0,
        storage_failed: false,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn log_recovery(report: &RecoveryReport, events: u64, path: &Path) {
    tracing::info!(
        data_dir = %path.display(),
        snapshot_position = report.snapshot_position,
        replayed_events = events,
        replayed_entries = report.entries,
        replayed_records = report.records,
        replayed_bytes = report.bytes,
        log_position = report.last_position,
        recovery_ms = report.elapsed.as_secs_f64() * 1000.0,
        "recovered balances from the data directory"
    );
}

/// Runs on the log writer thread after every group: answers the submitters, then hands the
/// events to the workers in log order.
struct Acknowledger {
    ledger: Arc<Ledger>,
    admission: Arc<Admission>,
    window: Arc<Window>,
    gate: Arc<Mutex<Dispatch>>,
    cells: Arc<DurableCells>,
    in_flight: Arc<AtomicUsize>,
    failed: Arc<Latch>,
    trigger: std_mpsc::Sender<SnapshotRequest>,
    options: DurableOptions,
    jobs: Vec<Job>,
    /// The group's jobs sorted by lane (reused buffers).
    lanes: Vec<Vec<Job>>,
}

impl floodgate_store::Acknowledge<Ticket> for Acknowledger {
    fn acknowledge(
        &mut self,
        outcome: Result<Commit, AppendError>,
        entries: std::vec::Drain<'_, Ticket>,
    ) {
        match outcome {
            Ok(commit) => self.committed(commit, entries),
            Err(error) => self.refused(&error, entries),
        }
    }
}

impl Acknowledger {
    fn committed(&mut self, commit: Commit, entries: std::vec::Drain<'_, Ticket>) {
        self.record(commit);
        // The 202s first: the group is durable; applying follows in log order.
        for ticket in entries {
            let _ = ticket.reply.send(Ok(()));
            // Each id's claim is in its job: the worker that applies the job settles it (kept
            // if applied, freed if it overflowed). A snapshot's cut waits for every dispatched
            // event to be applied, so its window holds exactly the ids at or before its
            // position.
            self.jobs.extend(ticket.jobs);
        }
        let mut gate = lock(&self.gate);
        let count = self.jobs.len();
        // One reservation per lane for the whole group, not one push per event.
        let mut dropped = self
            .admission
            .push_all_blocking(&mut self.jobs, &mut self.lanes);
        for job in &dropped {
            tracing::error!(user = %job.user, "queue closed before a logged event was dispatched; it is applied at the next start");
        }
        release_claims(&self.window, &mut dropped);
        self.in_flight.fetch_sub(count, Ordering::AcqRel);
        gate.position = commit.first_position + commit.entries as u64 - 1;
        gate.dispatched += count as u64;
        gate.events_since_snapshot += count as u64;
        gate.bytes_since_snapshot += commit.record_bytes as u64;
        let due = gate.events_since_snapshot >= self.options.snapshot_every_events
            || gate.bytes_since_snapshot >= self.options.snapshot_every_bytes;
        if due && !gate.snapshot_requested {
            gate.snapshot_requested = true;
            let _ = self.trigger.send(SnapshotRequest::Take);
        }
    }

    fn record(&self, commit: Commit) {
        let _ = lock(&self.cells.events_per_group).record(commit.entries as u64);
        if let Some(duration) = commit.sync_duration {
            let _ = lock(&self.cells.sync_us).record(duration.as_micros().max(1) as u64);
        }
    }

    fn refused(&mut self, error: &AppendError, entries: std::vec::Drain<'_, Ticket>) {
        let reason = match error {
            AppendError::DiskFull(_) => {
                self.cells.disk_full_groups.fetch_add(1, Ordering::Relaxed);
                Rejected::DiskFull
            }
            AppendError::Failed(_) => {
                self.failed.raise();
                Rejected::StorageFailed
            }
            AppendError::Closed => Rejected::Draining,
        };
        for ticket in entries {
            self.in_flight
                .fetch_sub(ticket.jobs.len(), Ordering::AcqRel);
            let mut ticket = ticket;
            release_claims(&self.window, &mut ticket.jobs);
            let admitted = ticket.admitted;
            if let Err(Err((_, jobs))) = ticket.reply.send(Err((reason, ticket.jobs))) {
                // Nobody waits for this answer any more: give the users' slots back here.
                for (job, admitted) in jobs.iter().zip(admitted) {
                    if admitted == Admit::Pending {
                        self.ledger.cancel(job.hash, &job.user);
                    }
                }
            }
        }
    }
}

enum SnapshotRequest {
    Take,
    Stop,
}

/// The snapshot thread: on request, pauses dispatch, waits until the workers applied every
/// dispatched event, copies the balances at that position, resumes, then writes the file.
#[derive(Debug)]
struct Snapshotter {
    trigger: std_mpsc::Sender<SnapshotRequest>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    taker: Arc<SnapshotTaker>,
}

struct SnapshotTaker {
    wiring: Wiring,
    log: Arc<Log<Ticket>>,
    cells: Arc<DurableCells>,
}

impl fmt::Debug for SnapshotTaker {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SnapshotTaker")
    }
}

impl Snapshotter {
    fn start(
        wiring: Wiring,
        log: Arc<Log<Ticket>>,
        cells: Arc<DurableCells>,
        trigger: std_mpsc::Sender<SnapshotRequest>,
        triggers: std_mpsc::Receiver<SnapshotRequest>,
    ) -> std::io::Result<Self> {
        let taker = Arc::new(SnapshotTaker { wiring, log, cells });
        let worker = Arc::clone(&taker);
        let thread = std::thread::Builder::new()
            .name("floodgate-snapshot".to_owned())
            .spawn(move || {
                while let Ok(SnapshotRequest::Take) = triggers.recv() {
                    worker.take();
                }
            })?;
        Ok(Self {
            trigger,
            thread: Mutex::new(Some(thread)),
            taker,
        })
    }

    fn snapshot_now(&self) {
        self.taker.take();
    }

    fn stop(&self) {
        let _ = self.trigger.send(SnapshotRequest::Stop);
        if let Some(thread) = lock(&self.thread).take()
            && thread.join().is_err()
        {
            tracing::error!("the snapshot thread panicked");
        }
    }
}

/// A consistent cut: the position, how many users, and the snapshot payload (the balances
/// and the dedup window's ids) at it.
type Cut = (u64, usize, Vec<u8>);

impl SnapshotTaker {
    fn take(&self) {
        let started = Instant::now();
        let Some((position, users, payload)) = self.consistent_cut() else {
            self.cells.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("snapshot skipped: the workers did not catch up within {CUT_WAIT:?}");
            return;
        };
        if position == self.cells.snapshot_position.load(Ordering::Acquire) {
            return;
        }
        match self.log.write_snapshot(position, &payload) {
            Ok(()) => {
                self.cells
                    .snapshot_position
                    .store(position, Ordering::Release);
                self.cells.snapshots.fetch_add(1, Ordering::Relaxed);
                *lock(&self.cells.snapshot_at) = Some(Instant::now());
                tracing::info!(
                    position,
                    users,
                    bytes = payload.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "snapshot written"
                );
            }
            Err(error) => {
                self.cells.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, position, "snapshot failed; the log still holds every event");
            }
        }
    }

    /// Pauses dispatch, waits for the workers to apply every dispatched event, encodes the
    /// balances and the window's ids: exactly the events at positions 1..=position. `None` if
    /// the workers do not catch up within [`CUT_WAIT`]. The ids go straight from the window
    /// into the payload, sized up front: with a million ids (40 MB) a copy of the window
    /// grown by doubling cost the snapshot thread more than the events it covered (profile
    /// of fsync batches with ids, 2026-12-03).
    fn consistent_cut(&self) -> Option<Cut> {
        let wiring = &self.wiring;
        let mut gate = lock(&wiring.gate);
        let done = |metrics: &Metrics| {
            metrics.sum_workers(|worker| &worker.applied)
                + metrics.sum_workers(|worker| &worker.overflowed)
        };
        let deadline = Instant::now() + CUT_WAIT;
        while done(&wiring.metrics) < gate.dispatched {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let balances = wiring.ledger.balances(None, wiring.ledger.users());
        let window = &wiring.window;
        let mut payload = snapshot_head(&balances, window.hash_key(), window.len());
        window.visit_settled_ids(|key, user_hash, amount, at_unix_ms| {
            encode_snapshot_id(&mut payload, key, user_hash, amount, at_unix_ms);
        });
        gate.events_since_snapshot = 0;
        gate.bytes_since_snapshot = 0;
        gate.snapshot_requested = false;
        Some((gate.position, balances.len(), payload))
    }
}
