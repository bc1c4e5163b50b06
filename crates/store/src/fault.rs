//! A storage double that can cut the power: the fault model the log's proofs run against.
//!
//! Lesson: "the bytes were written" and "the bytes survive" are different facts. This double keeps
//! them apart. Each file has its *live* bytes (what a reader sees now) and its *synced* bytes
//! (what `sync_data` made durable); the directory has live names and durable names (made durable
//! by `sync_directory`). A crash image is what a restart would find:
//! - after a **power cut**, the durable names, each file's synced bytes, plus (the torn write) a
//!   random prefix of the bytes written after the last sync;
//! - after a **process crash** (kill -9), everything written, since the kernel keeps it.
//!
//! Faults: cut the power at the N-th operation (that operation and every later one fail, as if
//! the machine were gone), fail the N-th sync (the bytes stay unsynced, as on Linux after a failed
//! fsync), or run out of space (an append writes what fits, then fails with `StorageFull`; a new
//! file needs room for its inode and directory entry, [`FILE_COST_BYTES`], or its creation fails
//! with `StorageFull` and nothing is created).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

/// Space a file takes beyond its bytes (its inode and directory entry), as the double counts it.
pub const FILE_COST_BYTES: u64 = 32;

/// What kind of crash a restart follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The machine lost power: only synced bytes and synced names survive (plus a torn prefix).
    PowerCut,
    /// The process was killed: everything handed to the kernel survives.
    ProcessKill,
}

/// The faults to inject, counted from the moment they are set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Cut the power at this operation (1 = the next one): it and every later one fail.
    pub crash_at_operation: Option<u64>,
    /// Fail this `sync_data` call (1 = the next one); the bytes stay unsynced.
    pub fail_sync: Option<u64>,
    /// Total space: the files' bytes plus [`FILE_COST_BYTES`] per file. An append past it writes
    /// what fits and fails; a create without room for one more file fails.
    pub space_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Image {
    inodes: Vec<Inode>,
    live_names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
}

#[derive(Debug, Default)]
struct State {
    image: Image,
    faults: Faults,
    operations: u64,
    syncs: u64,
    /// The image at the moment the power was cut; once set, every operation fails.
    cut: Option<Image>,
}

/// The fault-injecting double. Clones share one simulated disk.
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
}

impl FaultStorage {
    /// An empty disk with no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the faults to inject; operation and sync counts start again from zero.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.faults = faults;
        state.operations = 0;
        state.syncs = 0;
    }

    /// Lifts the space limit (space "returns").
    pub fn free_space(&self) {
        self.lock().faults.space_bytes = None;
    }

    /// Whether the power was cut by `crash_at_operation`.
    pub fn is_cut(&self) -> bool {
        self.lock().cut.is_some()
    }

    /// What a restart after `crash` would find: a new disk with no faults. If the power was cut
    /// by `crash_at_operation`, the image is the one from that moment. `seed` chooses how much of
    /// each unsynced write survives a power cut.
    #[must_use]
    pub fn restart_after(&self, crash: Crash, seed: u64) -> FaultStorage {
        let state = self.lock();
        let image = state.cut.clone().unwrap_or_else(|| state.image.clone());
        drop(state);
        let mut random = SplitMix(seed);
        let restarted = match crash {
            Crash::ProcessKill => survivors_of_kill(&image),
            Crash::PowerCut => survivors_of_power_cut(&image, &mut random),
        };
        FaultStorage {
            state: Arc::new(Mutex::new(State {
                image: restarted,
                ..State::default()
            })),
        }
    }

    /// The live bytes of a file (for tests that damage or inspect files).
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = *state.image.live_names.get(name)?;
        Some(state.image.inodes[inode].live.clone())
    }

    /// Replaces the live and synced bytes of a file (for tests that damage files).
    pub fn overwrite(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.lock();
        if let Some(&inode) = state.image.live_names.get(name) {
            state.image.inodes[inode].synced.clone_from(&bytes);
            state.image.inodes[inode].live = bytes;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent image (every change is one step).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one operation and fails it if the power is (or is now) cut.
    fn operate(&self) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        if state.cut.is_some() {
            return Err(power_is_cut());
        }
        state.operations += 1;
        if state.faults.crash_at_operation == Some(state.operations) {
            state.cut = Some(state.image.clone());
            return Err(power_is_cut());
        }
        Ok(state)
    }

    fn inode(state: &State, name: &str) -> io::Result<usize> {
        state
            .image
            .live_names
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }
}

fn power_is_cut() -> io::Error {
    io::Error::other("simulated power cut")
}

fn survivors_of_kill(image: &Image) -> Image {
    let inodes = image
        .inodes
        .iter()
        .map(|inode| Inode {
            live: inode.live.clone(),
            synced: inode.live.clone(),
        })
        .collect();
    Image {
        inodes,
        live_names: image.live_names.clone(),
        durable_names: image.live_names.clone(),
    }
}

fn survivors_of_power_cut(image: &Image, random: &mut SplitMix) -> Image {
    let inodes = image
        .inodes
        .iter()
        .map(|inode| {
            let mut bytes = inode.synced.clone();
            if inode.live.len() > bytes.len() && inode.live.starts_with(&bytes) {
                let unsynced = &inode.live[bytes.len()..];
                let kept = random.below(unsynced.len() as u64 + 1) as usize;
                bytes.extend_from_slice(&unsynced[..kept]);
            }
            Inode {
                live: bytes.clone(),
                synced: bytes,
            }
        })
        .collect();
    Image {
        inodes,
        live_names: image.durable_names.clone(),
        durable_names: image.durable_names.clone(),
    }
}

fn used_bytes(image: &Image) -> u64 {
    image
        .live_names
        .values()
        .map(|&inode| image.inodes[inode].live.len() as u64 + FILE_COST_BYTES)
        .sum()
}

/// Bytes still free under the space limit (`u64::MAX` without one).
fn free_bytes(state: &State) -> u64 {
    match state.faults.space_bytes {
        Some(space) => space.saturating_sub(used_bytes(&state.image)),
        None => u64::MAX,
    }
}

fn disk_full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "simulated disk full")
}

impl Storage for FaultStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.operate()?;
        let replaced = state.image.live_names.contains_key(name);
        if !replaced && free_bytes(&state) < FILE_COST_BYTES {
            return Err(disk_full());
        }
        let inode = state.image.inodes.len();
        state.image.inodes.push(Inode::default());
        state.image.live_names.insert(name.to_owned(), inode);
        Ok(Box::new(FaultFile {
            storage: self.clone(),
            inode,
        }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let state = self.operate()?;
        let inode = Self::inode(&state, name)?;
        Ok(Box::new(FaultFile {
            storage: self.clone(),
            inode,
        }))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let state = self.operate()?;
        let inode = Self::inode(&state, name)?;
        Ok(state.image.inodes[inode].live.clone())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.operate()?;
        Ok(state.image.live_names.keys().cloned().collect())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.operate()?;
        let inode = Self::inode(&state, from)?;
        state.image.live_names.remove(from);
        state.image.live_names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.operate()?;
        Self::inode(&state, name)?;
        state.image.live_names.remove(name);
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        let mut state = self.operate()?;
        state.image.durable_names = state.image.live_names.clone();
        Ok(())
    }
}

/// One open file of the double.
#[derive(Debug)]
struct FaultFile {
    storage: FaultStorage,
    inode: usize,
}

impl StorageFile for FaultFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.storage.operate()?;
        let room = free_bytes(&state);
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        state.image.inodes[self.inode]
            .live
            .extend_from_slice(&bytes[..fits]);
        if fits < bytes.len() {
            return Err(disk_full());
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.storage.operate()?;
        state.syncs += 1;
        if state.faults.fail_sync == Some(state.syncs) {
            return Err(io::Error::other("simulated sync failure"));
        }
        let inode = &mut state.image.inodes[self.inode];
        inode.synced.clone_from(&inode.live);
        Ok(())
    }

    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        let mut state = self.storage.operate()?;
        let length = usize::try_from(length_bytes).unwrap_or(usize::MAX);
        state.image.inodes[self.inode].live.truncate(length);
        Ok(())
    }

    fn length_bytes(&self) -> u64 {
        let state = self.storage.lock();
        state.image.inodes[self.inode].live.len() as u64
    }
}

/// A tiny deterministic generator (SplitMix64), so the double needs no random-number crate.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}
