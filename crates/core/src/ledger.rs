//! Per-user balances behind the three locking strategies (seed stages 4–8).
//!
//! Lesson: one mutex around every balance serializes all workers (stage 7: "locks scale badly
//! if used blindly"); splitting the state into shards routed by hash(user) lets workers that
//! update different users run in parallel (stage 8); giving each worker its own shard, fed by
//! its own queue, removes lock contention altogether (the owned strategy).
//!
//! Invariants:
//! - Checked arithmetic: an amount that would overflow a balance is not applied
//!   ([`Overflow`]); a balance never wraps and applying never panics.
//! - Each shard's running `total` equals the sum of its balances, so the ledger total is the
//!   sum of the amounts of every applied event (the conservation check).
//! - A user always lives in shard [`shard_index`]`(user_hash(user), shards)`: the hash is
//!   computed once per event (at admission) and used both to pick the shard (or the owning
//!   worker's queue) and to probe the shard's table.
//! - Bounded users: `users in the tables + users pending <= max_users`, always. A new user is
//!   admitted only by [`Ledger::admit`], which (under the shard's `data` lock) finds the user
//!   known or pending, or else takes one slot of the [`UserBudget`] and records the user as
//!   pending; applying its first event moves it from pending to the table, keeping the slot.
//!   A pending user with no event left in flight (every one refused by the queue) gives its
//!   slot back ([`Ledger::cancel`]). So the limit is decided at admission, never in a worker,
//!   and two events for the same new user take one slot between them.
//! - Each table keeps an ordered index of its users (a `BTreeSet` of the same keys; a long
//!   name's bytes are shared, not copied), updated with the table under `data`: a page of
//!   `balances` is a range of each shard's index merged across shards, so it costs
//!   O(shards × log users + limit) and holds a lock for one chunk, never a walk of every user.
//!
//! Locks: every shard has a short `data` lock (parking_lot) around its table, taken only for
//! the map update (once per batch on the fast path), and an async `hold` lock (tokio) that
//! simulated work keeps across an `.await`, as the seed's `tokio::sync::Mutex` did, so stage
//! 7's "wait ≫ hold" shows. Every mutation happens under `data`, so readers (`balance`,
//! `balances`) never see a half-applied event and never wait for a simulated hold. Both locks
//! are private to this module: the engine and the workers call operations ([`Ledger::admit`],
//! [`Ledger::cancel`], [`Ledger::apply_batch`], [`Ledger::apply_held`], the reads), as
//! mini-redis keeps its `Db`'s mutex private.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::dedup::Claim;
use crate::queue::Job;

/// Hash of a user name: FxHash, fast on short keys. Computed once per event.
pub fn user_hash(user: &str) -> u64 {
    FxBuildHasher.hash_one(user)
}

/// Shard (or owning worker) of a hash among `shards`, by multiply-shift on bits 24..56, so
/// it is independent of the low bits (bucket index) and top 7 bits (tag) the table uses.
pub fn shard_index(hash: u64, shards: usize) -> usize {
    debug_assert!(shards > 0, "at least one shard");
    let middle = (hash >> 24) & 0xFFFF_FFFF;
    let index = ((middle * shards as u64) >> 32) as usize;
    debug_assert!(index < shards, "shard index in bounds");
    index
}

/// The amount was not applied: the balance would leave the i64 range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// The balance, unchanged.
    pub balance: i64,
    /// The user, handed back (for the log line; no allocation on this path).
    pub user: String,
}

/// Longest user stored inside its table entry: a lookup then compares bytes already in the
/// cache line it probed, instead of chasing a pointer to the heap (one cache miss less per
/// event with many users). 22 bytes keeps the key as small as a `Box<str>` plus its tag.
pub const INLINE_USER_BYTES: usize = 22;

/// A user name as stored in the table: inline when short, on the heap otherwise. A heap name
/// is shared (`Arc`) by the table entry and the ordered index, so its bytes are stored once.
/// Ordered and compared by bytes (UTF-8 byte order equals char order).
#[derive(Debug, Clone)]
enum UserKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_USER_BYTES],
    },
    Heap(Arc<str>),
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for UserKey {}

impl PartialOrd for UserKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UserKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Lets the index be searched by a cursor's bytes without building a key.
impl Borrow<[u8]> for UserKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl UserKey {
    fn new(user: String) -> Self {
        if user.len() <= INLINE_USER_BYTES {
            let mut bytes = [0; INLINE_USER_BYTES];
            bytes[..user.len()].copy_from_slice(user.as_bytes());
            Self::Inline {
                len: user.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(Arc::from(user))
        }
    }

    /// Whether this stored name, of hash `key_hash`, is `user` (of hash `hash`): the hashes
    /// first, so a probe rarely compares bytes.
    fn is(&self, key_hash: u64, hash: u64, user: &str) -> bool {
        key_hash == hash && self.as_bytes() == user.as_bytes()
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(user) => user.as_bytes(),
        }
    }

    /// The name as text (it was a `String`, so the bytes are valid UTF-8).
    fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// One user's balance. The hash is kept so the table can grow without hashing again.
#[derive(Debug)]
struct Entry {
    user: UserKey,
    hash: u64,
    balance: i64,
}

impl Entry {
    fn is(&self, hash: u64, user: &str) -> bool {
        self.user.is(self.hash, hash, user)
    }
}

/// A user admitted but not yet applied: it holds one slot of the [`UserBudget`].
#[derive(Debug)]
struct Pending {
    user: UserKey,
    hash: u64,
    /// Admitted events of this user not yet applied nor refused by the queue.
    events: u64,
}

impl Pending {
    fn is(&self, hash: u64, user: &str) -> bool {
        self.user.is(self.hash, hash, user)
    }
}

/// How [`Ledger::admit`] let an event in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The user is in the table: nothing to undo if the event is refused later.
    Known,
    /// The user is pending (new, or admitted earlier and not yet applied): if the event is
    /// refused after all (queue full, draining), call [`Ledger::cancel`].
    Pending,
}

/// The ledger holds `max_users` users already (known + pending): a new user is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the ledger is full: no room for a new user")]
pub struct LedgerFull;

/// Bytes a user of a `name_length`-byte name is counted for against the ledger's byte budget:
/// [`USER_BASE_BYTES`] for every user, plus the name and [`HEAP_NAME_OVERHEAD_BYTES`] when the
/// name is too long to be stored inline (over [`INLINE_USER_BYTES`]).
pub fn user_cost_bytes(name_length: usize) -> u64 {
    let heap = if name_length > INLINE_USER_BYTES {
        HEAP_NAME_OVERHEAD_BYTES + name_length as u64
    } else {
        0
    };
    USER_BASE_BYTES + heap
}

/// What every user costs, whatever its name: its 40-byte table entry and control byte at the
/// hash table's load (7/16 to 7/8), its key in the ordered index (about 44 bytes), and the
/// allocator's slack. Measured (`examples/ledger_cost.rs`, resident-set growth for 1 M users,
/// `bench/results/engine.md`): 189 bytes a user with 8-byte names; rounded up.
pub const USER_BASE_BYTES: u64 = 192;
/// What a name over [`INLINE_USER_BYTES`] costs beside its bytes: its shared allocation's
/// header (reference counts) and the allocator's rounding. Measured: 254 and 331 bytes a user
/// with 32- and 128-byte names, against 256 and 352 counted.
pub const HEAP_NAME_OVERHEAD_BYTES: u64 = 32;

/// Slots for distinct users and the bytes they cost: taken at admission by a new user (one
/// slot and [`user_cost_bytes`] of its name), never by a known one.
#[derive(Debug)]
pub struct UserBudget {
    max_users: usize,
    max_bytes: u64,
    used: AtomicUsize,
    used_bytes: AtomicU64,
}

impl UserBudget {
    /// A budget of `max_users` slots and `max_bytes` bytes, none used.
    pub fn new(max_users: usize, max_bytes: u64) -> Self {
        Self {
            max_users,
            max_bytes,
            used: AtomicUsize::new(0),
            used_bytes: AtomicU64::new(0),
        }
    }

    /// Take one slot and `bytes`, unless either runs out (then take nothing). Only new users
    /// get here (rare on the hot path).
    fn try_reserve(&self, bytes: u64) -> bool {
        let slot = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max_users).then_some(used + 1)
            });
        if slot.is_err() {
            return false;
        }
        let room = self
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.max_bytes)
            });
        if room.is_err() {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Give one slot and `bytes` back (a pending user whose every event was refused).
    fn release(&self, bytes: u64) {
        self.used.fetch_sub(1, Ordering::AcqRel);
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Slots taken: users in the tables plus users pending.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes taken by those users ([`user_cost_bytes`] of each name).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }
}

/// One shard's balances.
#[derive(Default)]
struct Table {
    entries: HashTable<Entry>,
    /// Every user of `entries`, in byte order: a page of balances is a range of it.
    order: BTreeSet<UserKey>,
    /// Users admitted but not yet applied (see [`Ledger::admit`]); usually empty.
    pending: HashTable<Pending>,
    total: i128,
}

/// Concise on purpose: a table may hold millions of balances.
impl std::fmt::Debug for Table {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Table")
            .field("users", &self.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Add `amount` to `user`'s balance (created at 0 when new); `hash` must be
    /// `user_hash(&user)`. Takes the `String` so a new user costs no extra allocation.
    fn apply(&mut self, hash: u64, user: String, amount: i64) -> Result<i64, Overflow> {
        self.apply_entry(hash, user, amount)
            .map(|entry| entry.balance)
    }

    /// [`Table::apply`], answering the user's entry as updated (one probe either way).
    fn apply_entry(&mut self, hash: u64, user: String, amount: i64) -> Result<&Entry, Overflow> {
        debug_assert_eq!(hash, user_hash(&user), "hash must be user_hash(user)");
        // `find_entry`, not `entry`: a known user (the hot path) costs one plain probe, and
        // a new user reuses the table borrow the probe gave back.
        let entry = match self.entries.find_entry(hash, |entry| entry.is(hash, &user)) {
            Ok(occupied) => {
                let entry = occupied.into_mut();
                let Some(balance) = entry.balance.checked_add(amount) else {
                    return Err(Overflow {
                        balance: entry.balance,
                        user,
                    });
                };
                entry.balance = balance;
                entry
            }
            Err(absent) => {
                // Its slot, taken at admission, now counts a user in the table.
                if !self.pending.is_empty()
                    && let Ok(pending) = self
                        .pending
                        .find_entry(hash, |pending| pending.is(hash, &user))
                {
                    pending.remove();
                }
                let user = UserKey::new(user);
                self.order.insert(user.clone());
                let entry = Entry {
                    user,
                    hash,
                    balance: amount,
                };
                let table = absent.into_table();
                table
                    .insert_unique(hash, entry, |entry| entry.hash)
                    .into_mut()
            }
        };
        self.total += i128::from(amount);
        Ok(entry)
    }

    /// Let an event for `user` in: known and pending users always; a new user only if
    /// `budget` has a slot, which it keeps (pending until its first event is applied).
    fn admit(&mut self, hash: u64, user: &str, budget: &UserBudget) -> Result<Admit, LedgerFull> {
        if self
            .entries
            .find(hash, |entry| entry.is(hash, user))
            .is_some()
        {
            return Ok(Admit::Known);
        }
        if let Some(pending) = self
            .pending
            .find_mut(hash, |pending| pending.is(hash, user))
        {
            pending.events += 1;
            return Ok(Admit::Pending);
        }
        if !budget.try_reserve(user_cost_bytes(user.len())) {
            return Err(LedgerFull);
        }
        let pending = Pending {
            user: UserKey::new(user.to_owned()),
            hash,
            events: 1,
        };
        self.pending
            .insert_unique(hash, pending, |pending| pending.hash);
        Ok(Admit::Pending)
    }

    /// Undo an [`Admit::Pending`] admission whose event was refused after all: the user's
    /// last event in flight gives its slot back. A no-op once the user is in the table.
    fn cancel(&mut self, hash: u64, user: &str, budget: &UserBudget) {
        let Ok(mut pending) = self
            .pending
            .find_entry(hash, |pending| pending.is(hash, user))
        else {
            return;
        };
        let entry = pending.get_mut();
        entry.events -= 1;
        if entry.events == 0 {
            pending.remove();
            budget.release(user_cost_bytes(user.len()));
        }
    }

    /// Users admitted but not yet applied.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Balance of `user`, if seen.
    fn get(&self, hash: u64, user: &str) -> Option<i64> {
        self.entries
            .find(hash, |entry| entry.is(hash, user))
            .map(|entry| entry.balance)
    }

    /// Up to `count` balances with user > `after`, in user order: O(log users + count).
    fn page(&self, after: Option<&[u8]>, count: usize) -> Vec<(String, i64)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .range::<[u8], _>((start, Bound::Unbounded))
            .take(count)
            .map(|key| {
                let user = key.to_text();
                let hash = user_hash(&user);
                let balance = self.get(hash, &user);
                (user, balance.expect("every indexed user is in the table"))
            })
            .collect()
    }

    /// Users in this table.
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sum of balances (i128: the sum of many i64 can exceed i64).
    fn total(&self) -> i128 {
        self.total
    }
}

/// The indices of a batch grouped by shard (a counting sort: O(events + shards)), each
/// group in batch order.
struct ShardGroups {
    /// `starts[shard]..starts[shard + 1]` is the shard's range of `members`.
    starts: Vec<usize>,
    members: Vec<usize>,
}

impl ShardGroups {
    fn new(shards_of_items: impl ExactSizeIterator<Item = usize>, shards: usize) -> Self {
        let shard_of: Vec<usize> = shards_of_items.collect();
        let mut starts = vec![0; shards + 1];
        for &shard in &shard_of {
            starts[shard + 1] += 1;
        }
        for shard in 0..shards {
            starts[shard + 1] += starts[shard];
        }
        let mut next = starts.clone();
        let mut members = vec![0; shard_of.len()];
        for (index, &shard) in shard_of.iter().enumerate() {
            members[next[shard]] = index;
            next[shard] += 1;
        }
        Self { starts, members }
    }

    /// Every shard with at least one member, and its members in order.
    fn iter(&self) -> impl Iterator<Item = (usize, &[usize])> {
        self.starts
            .windows(2)
            .enumerate()
            .filter(|(_, range)| range[0] < range[1])
            .map(|(shard, range)| (shard, &self.members[range[0]..range[1]]))
    }
}

/// One shard: the table under a short lock, plus the async lock simulated work holds.
#[derive(Debug, Default)]
struct Shard {
    /// Guards the map; held only for updates and reads, never across an `.await`.
    data: parking_lot::Mutex<Table>,
    /// The seed's `tokio::sync::Mutex`: held across the simulated `hold` sleep and the update.
    hold: tokio::sync::Mutex<()>,
}

/// What happened to one job of [`Ledger::apply_batch`], reported while its shard is locked.
#[derive(Debug)]
pub enum Applied<'a> {
    /// The amount was added.
    Balance {
        /// The user, as stored (valid UTF-8; read only when a log line wants it).
        user: &'a [u8],
        /// The balance after the event.
        balance: i64,
        /// The job's id claim, to be kept (the caller settles it).
        claim: Option<Claim>,
    },
    /// The amount was not applied: it would overflow the balance.
    Overflowed {
        /// The unchanged balance and the user.
        overflow: &'a Overflow,
        /// The refused amount.
        amount: i64,
        /// The job's id claim, to be freed (the caller settles it).
        claim: Option<Claim>,
    },
}

/// The counts and lock wait of one [`Ledger::apply_batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Jobs applied.
    pub applied: u64,
    /// Jobs refused for overflow.
    pub overflowed: u64,
    /// Time spent waiting for shard locks (measured only when a lock was contended).
    pub lock_wait: Duration,
}

/// The outcome of [`Ledger::apply_held`] and how long its lock was waited for and held.
#[derive(Debug)]
pub struct HeldReport {
    /// The new balance, or the overflow that left it unchanged.
    pub outcome: Result<i64, Overflow>,
    /// From asking for the shard's async lock to getting it.
    pub lock_wait: Duration,
    /// From getting the async lock to releasing it (the simulated hold and the update).
    pub lock_held: Duration,
}

/// Every balance, split into shards according to the strategy.
#[derive(Debug)]
pub struct Ledger {
    shards: Box<[Shard]>,
    budget: UserBudget,
}

impl Ledger {
    /// A ledger of `shard_count` empty shards (1 for global; `shards` or workers otherwise).
    ///
    /// # Panics
    /// When `shard_count` is 0 (a programmer error: `EngineConfig::validate` refuses it).
    pub fn new(shard_count: usize) -> Self {
        Self::with_max_users(shard_count, usize::MAX)
    }

    /// A ledger that admits at most `max_users` distinct users (see [`Ledger::admit`]).
    ///
    /// # Panics
    /// When `shard_count` is 0 (a programmer error: `EngineConfig::validate` refuses it).
    pub fn with_max_users(shard_count: usize, max_users: usize) -> Self {
        Self::with_limits(shard_count, max_users, u64::MAX)
    }

    /// A ledger that admits at most `max_users` distinct users costing at most `max_bytes`
    /// ([`user_cost_bytes`] of each name; see [`Ledger::admit`]).
    ///
    /// # Panics
    /// When `shard_count` is 0 (a programmer error: `EngineConfig::validate` refuses it).
    pub fn with_limits(shard_count: usize, max_users: usize, max_bytes: u64) -> Self {
        assert!(shard_count > 0, "a ledger needs at least one shard");
        let shards = (0..shard_count).map(|_| Shard::default()).collect();
        let budget = UserBudget::new(max_users, max_bytes);
        Self { shards, budget }
    }

    /// The user budget (slots used: users in the tables + users pending).
    pub fn budget(&self) -> &UserBudget {
        &self.budget
    }

    /// The shard of the user with this hash.
    fn shard_of(&self, hash: u64) -> &Shard {
        &self.shards[self.shard_for(hash)]
    }

    /// Admit an event for `user` (`hash` = `user_hash(user)`) against the user budget, under
    /// its shard's `data` lock: see `Table::admit`. Every event that is then applied must
    /// have been admitted here, or the budget does not count its user.
    pub fn admit(&self, hash: u64, user: &str) -> Result<Admit, LedgerFull> {
        self.shard_of(hash)
            .data
            .lock()
            .admit(hash, user, &self.budget)
    }

    /// [`Ledger::admit`] for every `(hash, user)` of a batch, answered in order, with one
    /// `data` lock per shard touched instead of one per event. Same outcomes as admitting
    /// them one by one in order: a user's events all go to its shard, in order; and when the
    /// budget refuses any event, every admission of this pass is undone and the batch is
    /// admitted one by one instead, so which events of a batch the budget refuses does not
    /// depend on the shards' order.
    pub fn admit_all(&self, users: &[(u64, &str)]) -> Vec<Result<Admit, LedgerFull>> {
        let groups = ShardGroups::new(
            users.iter().map(|&(hash, _)| self.shard_for(hash)),
            self.shards.len(),
        );
        let mut outcomes = vec![Ok(Admit::Known); users.len()];
        let mut refused = false;
        for (shard, members) in groups.iter() {
            let mut table = self.shards[shard].data.lock();
            for &index in members {
                let (hash, user) = users[index];
                let outcome = table.admit(hash, user, &self.budget);
                refused |= outcome.is_err();
                outcomes[index] = outcome;
            }
        }
        if !refused {
            return outcomes;
        }
        for (shard, members) in groups.iter() {
            let mut table = self.shards[shard].data.lock();
            for &index in members {
                if outcomes[index] == Ok(Admit::Pending) {
                    let (hash, user) = users[index];
                    table.cancel(hash, user, &self.budget);
                }
            }
        }
        users
            .iter()
            .map(|&(hash, user)| self.admit(hash, user))
            .collect()
    }

    /// Undo an [`Admit::Pending`] admission whose event was refused: see `Table::cancel`.
    pub fn cancel(&self, hash: u64, user: &str) {
        self.shard_of(hash)
            .data
            .lock()
            .cancel(hash, user, &self.budget);
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Index of the shard holding the user with this hash.
    pub fn shard_for(&self, hash: u64) -> usize {
        shard_index(hash, self.shards.len())
    }

    /// Apply one event under its shard's data lock (convenience; workers batch instead).
    pub fn apply(&self, user: String, amount: i64) -> Result<i64, Overflow> {
        let hash = user_hash(&user);
        self.shard_of(hash).data.lock().apply(hash, user, amount)
    }

    /// Apply a batch of admitted jobs in order: each shard's `data` lock is
    /// taken once per run of consecutive jobs for that shard (once per batch with the global
    /// and owned strategies), and never across an `.await`. `observe` sees every job's
    /// outcome while its shard is locked (keep it short: a log line at most).
    pub fn apply_batch(
        &self,
        jobs: impl IntoIterator<Item = Job>,
        mut observe: impl FnMut(Applied<'_>, Duration),
    ) -> BatchReport {
        let mut report = BatchReport::default();
        let mut jobs = jobs.into_iter().peekable();
        while let Some(first) = jobs.next() {
            let shard_index = self.shard_for(first.hash);
            let shard = &self.shards[shard_index];
            // Uncontended (the usual case): no clock read at all.
            let mut table = if let Some(table) = shard.data.try_lock() {
                table
            } else {
                let asked = Instant::now();
                let table = shard.data.lock();
                report.lock_wait += asked.elapsed();
                table
            };
            let mut job = Some(first);
            while let Some(current) = job.take() {
                let amount = current.amount;
                let (reply, claim) = (current.reply, current.claim);
                match table.apply_entry(current.hash, current.user, amount) {
                    Ok(entry) => {
                        report.applied += 1;
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(entry.balance));
                        }
                        let applied = Applied::Balance {
                            user: entry.user.as_bytes(),
                            balance: entry.balance,
                            claim,
                        };
                        observe(applied, report.lock_wait);
                    }
                    Err(overflow) => {
                        report.overflowed += 1;
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(()));
                        }
                        let overflowed = Applied::Overflowed {
                            overflow: &overflow,
                            amount,
                            claim,
                        };
                        observe(overflowed, report.lock_wait);
                    }
                }
                job = jobs.next_if(|next| self.shard_for(next.hash) == shard_index);
            }
        }
        report
    }

    /// The seed's locking for one admitted job: take the shard's async lock, keep it across
    /// the simulated `hold` sleep, apply under the `data` lock, release. Readers never wait
    /// for the hold: they take `data` only.
    pub async fn apply_held(&self, job: Job, hold: Duration) -> HeldReport {
        let shard = self.shard_of(job.hash);
        let asked = tokio::time::Instant::now();
        let guard = shard.hold.lock().await;
        let got = tokio::time::Instant::now();
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        let outcome = shard.data.lock().apply(job.hash, job.user, job.amount);
        if let Some(reply) = job.reply {
            let _ = reply.send(outcome.as_ref().map(|&balance| balance).map_err(|_| ()));
        }
        drop(guard);
        let released = tokio::time::Instant::now();
        HeldReport {
            outcome,
            lock_wait: got - asked,
            lock_held: released - got,
        }
    }

    /// Balance of `user`, if seen.
    pub fn balance(&self, user: &str) -> Option<i64> {
        let hash = user_hash(user);
        self.shard_of(hash).data.lock().get(hash, user)
    }

    /// Up to `limit` balances with user > `after`, sorted by user (cursor pagination).
    ///
    /// Costs O(shards × log users + limit), never a walk of every user: each shard's ordered
    /// index gives its next users from the cursor, a chunk at a time (about `limit / shards`
    /// each), and a heap merges the shards' heads. A shard is locked only to copy one chunk,
    /// so a reader never holds a worker's lock for more than a page's work. A shard is asked
    /// for more only when its last row was just taken, from that row on, so the page stays
    /// sorted and disjoint from the previous one even while users are being added (a user
    /// added behind the cursor is seen by the next walk, not this one).
    /// The cursor is bytes: any byte string is a position in user order, so a client's cursor
    /// never has to be a name that exists, nor valid UTF-8.
    pub fn balances(&self, after: Option<&[u8]>, limit: usize) -> Vec<(String, i64)> {
        if limit == 0 {
            return Vec::new();
        }
        let chunk = (limit.div_ceil(self.shards.len()) + 1).min(limit);
        let fetch = |index: usize, after: Option<&[u8]>| {
            let rows = self.shards[index].data.lock().page(after, chunk);
            let exhausted = rows.len() < chunk;
            (VecDeque::from(rows), exhausted)
        };
        let mut shards: Vec<(VecDeque<(String, i64)>, bool)> = (0..self.shards.len())
            .map(|index| fetch(index, after))
            .collect();
        let mut heads = BinaryHeap::with_capacity(shards.len());
        for (index, (rows, _)) in shards.iter_mut().enumerate() {
            if let Some((user, balance)) = rows.pop_front() {
                heads.push(Reverse((user, balance, index)));
            }
        }
        let mut page = Vec::with_capacity(limit);
        while page.len() < limit {
            let Some(Reverse((user, balance, index))) = heads.pop() else {
                break;
            };
            let (rows, exhausted) = &mut shards[index];
            if rows.is_empty() && !*exhausted {
                (*rows, *exhausted) = fetch(index, Some(user.as_bytes()));
            }
            if let Some((next, next_balance)) = rows.pop_front() {
                heads.push(Reverse((next, next_balance, index)));
            }
            page.push((user, balance));
        }
        page
    }

    /// Users seen, over every shard.
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.data.lock().len())
            .sum()
    }

    /// Users seen, per shard (how evenly the hash spreads them).
    #[cfg(test)]
    fn users_per_shard(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|shard| shard.data.lock().len())
            .collect()
    }

    /// Users admitted but not yet applied, over every shard.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.data.lock().pending_len())
            .sum()
    }

    /// Sum of every balance.
    pub fn balance_total(&self) -> i128 {
        self.shards
            .iter()
            .map(|shard| shard.data.lock().total())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_adds_and_creates() {
        // Proves balances accumulate per user, new users start at 0, totals track the sum.
        for shards in [1, 16, 3] {
            let ledger = Ledger::new(shards);
            assert_eq!(ledger.apply("alice".into(), 10), Ok(10));
            assert_eq!(ledger.apply("bob".into(), -3), Ok(-3));
            assert_eq!(ledger.apply("alice".into(), 15), Ok(25));
            assert_eq!(ledger.balance("alice"), Some(25));
            assert_eq!(ledger.balance("carol"), None);
            assert_eq!((ledger.users(), ledger.balance_total()), (2, 22));
        }
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        // Proves checked arithmetic: an overflowing amount leaves the balance and total intact.
        let ledger = Ledger::new(4);
        assert_eq!(ledger.apply("max".into(), i64::MAX), Ok(i64::MAX));
        let overflow = |balance, user: &str| Overflow {
            balance,
            user: user.to_owned(),
        };
        assert_eq!(
            ledger.apply("max".into(), 1),
            Err(overflow(i64::MAX, "max"))
        );
        assert_eq!(ledger.apply("min".into(), i64::MIN), Ok(i64::MIN));
        assert_eq!(
            ledger.apply("min".into(), -1),
            Err(overflow(i64::MIN, "min"))
        );
        assert_eq!(ledger.apply("max".into(), -1), Ok(i64::MAX - 1));
        assert_eq!(ledger.balance("max"), Some(i64::MAX - 1));
        assert_eq!(
            ledger.balance_total(),
            i128::from(i64::MAX - 1) + i128::from(i64::MIN)
        );
    }

    #[test]
    fn many_users_spread_over_shards_and_survive_growth() {
        // Proves the table keeps every user across resizes and the shard routing is stable
        // and uses every shard.
        let ledger = Ledger::new(8);
        for round in 0..2 {
            for user in 0..20_000 {
                assert_eq!(ledger.apply(format!("user{user}"), 1), Ok(round + 1));
            }
        }
        assert_eq!(ledger.users(), 20_000);
        for (index, len) in ledger.users_per_shard().into_iter().enumerate() {
            assert!(len > 1_000, "shard {index} has only {len} users");
        }
        assert_eq!(ledger.balance_total(), 40_000);
    }

    #[test]
    fn balances_paginate_in_user_order() {
        // Proves cursor pagination: pages are sorted, disjoint and cover every user once.
        let ledger = Ledger::new(5);
        for user in 0..257 {
            ledger
                .apply(format!("u{user:04}"), user)
                .expect("no overflow");
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = ledger.balances(after.as_deref().map(str::as_bytes), 50);
            if page.is_empty() {
                break;
            }
            assert!(page.windows(2).all(|pair| pair[0].0 < pair[1].0));
            after = page.last().map(|(user, _)| user.clone());
            seen.extend(page);
        }
        assert_eq!(seen.len(), 257);
        assert_eq!(seen[0], ("u0000".to_owned(), 0));
        assert_eq!(seen[256], ("u0256".to_owned(), 256));
        assert!(ledger.balances(None, 0).is_empty());
    }

    /// Every user in one walk of pages of `limit` from the start, in the order the pages gave.
    fn walk(ledger: &Ledger, limit: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = ledger.balances(after.as_deref().map(str::as_bytes), limit);
            if page.is_empty() {
                return seen;
            }
            after = page.last().map(|(user, _)| user.clone());
            seen.extend(page.into_iter().map(|(user, _)| user));
        }
    }

    #[test]
    fn pages_stay_sorted_disjoint_and_complete_while_users_are_added() {
        // Proves the merge of the shards' ordered indexes under concurrent inserts, for one
        // and several shards and page sizes below, at and above the shard count: a walk is
        // strictly increasing (so sorted within pages and disjoint across them), and sees
        // every user that existed before it began exactly once; users added during the walk
        // never break the order.
        for shards in [1, 3, 16] {
            for limit in [1, 2, 7, 100] {
                let ledger = Ledger::new(shards);
                // Spread names so inserts land before and after any cursor.
                let name = |index: u64| format!("u{:016x}", user_hash(&index.to_string()));
                let before: Vec<String> = (0..500).map(name).collect();
                for user in &before {
                    ledger.apply(user.clone(), 1).expect("no overflow");
                }
                let walked = std::thread::scope(|scope| {
                    let adder = scope.spawn(|| {
                        for index in 500..3_000 {
                            ledger.apply(name(index), 1).expect("no overflow");
                        }
                    });
                    let walked = walk(&ledger, limit);
                    adder.join().expect("adder");
                    walked
                });
                let label = format!("{shards} shards, limit {limit}");
                assert!(
                    walked.windows(2).all(|pair| pair[0] < pair[1]),
                    "{label}: not strictly increasing"
                );
                let walked: std::collections::HashSet<&String> = walked.iter().collect();
                assert!(
                    before.iter().all(|user| walked.contains(user)),
                    "{label}: a user present before the walk was missed"
                );
                let mut all = walk(&ledger, limit);
                assert_eq!(all.len(), 3_000, "{label}: a quiet walk sees everyone");
                all.dedup();
                assert_eq!(all.len(), 3_000, "{label}: nobody twice");
            }
        }
    }

    #[test]
    fn long_and_short_users_are_distinct_keys() {
        // Proves inline (<= 22 bytes) and boxed keys both round-trip, never collide with each
        // other, and sort by bytes in `balances` (UTF-8 byte order equals char order).
        let ledger = Ledger::new(1);
        let exact = "x".repeat(INLINE_USER_BYTES);
        let longer = "x".repeat(INLINE_USER_BYTES + 1);
        let names = [exact.as_str(), longer.as_str(), "x", "\u{e9}t\u{e9}", ""];
        for (index, name) in (1_i64..).zip(names.iter()) {
            assert_eq!(ledger.apply((*name).to_owned(), index), Ok(index));
        }
        for (index, name) in (1_i64..).zip(names.iter()) {
            assert_eq!(ledger.balance(name), Some(index), "{name}");
        }
        let listed: Vec<String> = ledger
            .balances(None, 10)
            .into_iter()
            .map(|(user, _)| user)
            .collect();
        let mut sorted: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        sorted.sort();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn admit_all_answers_as_one_by_one_in_order() {
        // Proves the batch admission (one lock per shard, shards in index order) answers each
        // event as admitting the batch one by one in batch order would, known, pending and
        // new users mixed over 8 shards: when everything fits, and when the budget runs out
        // mid-batch (the later new users refused, not the ones on higher shards), with the
        // same budget used and the same users pending afterwards.
        let batch: Vec<String> = [3, 0, 9, 3, 12, 5, 0, 7, 14, 11, 9, 2, 13, 6]
            .iter()
            .map(|user| format!("user{user}"))
            .collect();
        let users: Vec<(u64, &str)> = batch
            .iter()
            .map(|user| (user_hash(user), user.as_str()))
            .collect();
        for max_users in [100, 5] {
            let one_by_one = Ledger::with_max_users(8, max_users);
            let all_at_once = Ledger::with_max_users(8, max_users);
            for ledger in [&one_by_one, &all_at_once] {
                for known in ["user0", "user5", "user6"] {
                    assert_eq!(ledger.apply(known.to_owned(), 1), Ok(1));
                }
                assert_eq!(
                    ledger.admit(user_hash("user7"), "user7"),
                    Ok(Admit::Pending)
                );
            }
            let expected: Vec<_> = users
                .iter()
                .map(|&(hash, user)| one_by_one.admit(hash, user))
                .collect();
            let refused = expected.iter().filter(|outcome| outcome.is_err()).count();
            assert_eq!(refused, if max_users == 5 { 3 } else { 0 }, "{expected:?}");
            assert_eq!(all_at_once.admit_all(&users), expected, "max {max_users}");
            assert_eq!(all_at_once.budget().used(), one_by_one.budget().used());
            assert_eq!(all_at_once.pending(), one_by_one.pending());
        }
    }

    #[test]
    fn shard_index_is_in_range_and_spread() {
        // Proves shard_index never leaves 0..shards and spreads hashes across all shards.
        for shards in [1, 2, 3, 7, 64, 4096] {
            let mut hits = vec![0_u32; shards];
            for user in 0..(shards * 50) {
                hits[shard_index(user_hash(&format!("user{user}")), shards)] += 1;
            }
            assert!(hits.iter().all(|&count| count > 0), "{shards}: {hits:?}");
        }
    }

    #[test]
    fn byte_budget_counts_name_length_and_refuses_past_it() {
        // Proves the memory bound: a new user is counted user_cost_bytes(its name) (the base
        // for a short name, base + overhead + length for a long one), a new user past the
        // byte budget is refused even with user slots left, a known user still passes, and a
        // cancelled pending user gives its bytes back.
        let short = user_cost_bytes(8);
        let long = user_cost_bytes(100);
        assert_eq!(short, USER_BASE_BYTES);
        assert_eq!(long, USER_BASE_BYTES + HEAP_NAME_OVERHEAD_BYTES + 100);
        let ledger = Ledger::with_limits(4, 1_000, short + long);
        let long_name = "l".repeat(100);
        let admit = |user: &str| ledger.admit(user_hash(user), user);
        assert_eq!(admit("shortie1"), Ok(Admit::Pending));
        assert_eq!(admit(&long_name), Ok(Admit::Pending));
        assert_eq!(ledger.budget().used_bytes(), short + long);
        assert_eq!(admit("shortie2"), Err(LedgerFull), "no bytes left");
        assert_eq!(ledger.budget().used(), 2, "a refused user takes no slot");
        assert_eq!(ledger.apply("shortie1".into(), 1), Ok(1));
        assert_eq!(admit("shortie1"), Ok(Admit::Known));
        ledger.cancel(user_hash(&long_name), &long_name);
        assert_eq!(ledger.budget().used_bytes(), short);
        assert_eq!(admit("shortie2"), Ok(Admit::Pending));
    }

    #[test]
    fn admit_reserves_one_slot_per_new_user_and_cancel_gives_it_back() {
        // Proves the budget: a new user takes one slot, a pending or known user none, a full
        // budget refuses only new users, applying keeps the slot, and cancelling the last
        // in-flight event of a pending user frees it (an earlier cancel does not).
        let ledger = Ledger::with_max_users(4, 2);
        let hash = |user: &str| user_hash(user);
        assert_eq!(ledger.admit(hash("a"), "a"), Ok(Admit::Pending));
        assert_eq!(ledger.admit(hash("a"), "a"), Ok(Admit::Pending));
        assert_eq!(ledger.admit(hash("b"), "b"), Ok(Admit::Pending));
        assert_eq!(ledger.budget().used(), 2);
        assert_eq!(ledger.admit(hash("c"), "c"), Err(LedgerFull));
        assert_eq!(ledger.apply("a".into(), 1), Ok(1));
        assert_eq!(ledger.admit(hash("a"), "a"), Ok(Admit::Known));
        assert_eq!((ledger.users(), ledger.budget().used()), (1, 2));
        ledger.cancel(hash("a"), "a");
        assert_eq!(
            ledger.budget().used(),
            2,
            "a is in the table: its slot stays"
        );
        ledger.cancel(hash("b"), "b");
        assert_eq!(ledger.budget().used(), 1);
        assert_eq!(ledger.admit(hash("c"), "c"), Ok(Admit::Pending));
        assert_eq!(ledger.admit(hash("d"), "d"), Err(LedgerFull));
        assert_eq!(ledger.apply("c".into(), 2), Ok(2));
        let pending = ledger.pending();
        assert_eq!((ledger.users(), ledger.budget().used(), pending), (2, 2, 0));
    }
}
