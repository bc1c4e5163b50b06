//! The dedup window: which event ids were applied recently, so a resend is not applied twice.
//!
//! Lesson: a client that never heard back (a timeout, a broken connection, a 503) must send
//! again, and without an identity the resend is counted twice. With an id per event the server
//! remembers what it applied, for a bounded time and a bounded count, and tells a duplicate
//! (same id, same user and amount: nothing applied, answered as a success) from a conflict
//! (same id, another user or amount: refused, nothing applied).
//!
//! Invariants:
//! - Check and claim are one step under the table's lock: of two copies of an id arriving at
//!   once, exactly one is [`Verdict::Fresh`]; the other sees the claim [`Verdict::InFlight`]
//!   and waits (see [`Window::settled`]) for the first copy's outcome. A batch checks and
//!   claims all its ids under ONE lock ([`Window::check_batch`]): all claimed, or (an id in
//!   flight elsewhere) none.
//! - A claim is settled exactly once: [`Window::commit`] (the event was applied: its id is
//!   remembered) or [`Window::release`] (it was refused: the id is free again, so the
//!   intended retry goes through); a worker settles a whole batch under one lock
//!   ([`Window::settle_all`]).
//! - Fresh memory is the cost of a window that fills: the kernel zeroes every page on first
//!   touch (profiled: half the server's CPU while a window fills, most of it in the hash
//!   table's growth). So the ids live in a ring in claim order (48 bytes each, appended: its
//!   pages are touched one after the other; reserved for `max_ids` at the first id, up to
//!   [`PREALLOCATED_IDS_MAX`], so it never copies), and the hash table placed at random holds
//!   only 8-byte sequence numbers into the ring (it grows by doubling: preallocated for
//!   `max_ids` it would touch all its pages within the first thousands of ids, with the lock
//!   held). Settling a claim finds its entry by sequence, without a probe.
//! - The ring is contiguous in sequence: a released claim stays as a tombstone until it
//!   reaches the front, so tombstones pile up only behind a claim in flight, for as long as
//!   that claim is in flight.
//! - Bounded: a remembered id is forgotten once it is older than the window's age or when more
//!   than `max_ids` are kept (oldest first); claims still in flight are never forgotten, so
//!   the table may exceed `max_ids` by at most the events in flight. Past the window a
//!   resend is applied again: [`Window::oldest_age`] is the effective window operators watch.
//! - Memory: an id is kept as a 128-bit keyed SipHash-1-3 of its text (the key is secret and
//!   random per data directory), not as its text: a collision between two different ids has
//!   probability ~n²/2¹²⁹ (about 10⁻²⁵ for 4 M ids) and cannot be provoked without the key.

use std::collections::VecDeque;
use std::hash::Hasher as _;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::event::EventId;

/// A remembered id: the 128-bit keyed hash of its text.
pub type IdKey = u128;

/// The age ring is reserved for at most this many ids at the first id (address space only:
/// its pages are touched as ids arrive); a larger `max_ids` grows from there.
pub const PREALLOCATED_IDS_MAX: usize = 4 << 20;

/// Which field makes a reused id a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictField {
    /// The id was first used for another user.
    User,
    /// The id was first used with another amount (same user).
    Amount,
}

impl ConflictField {
    /// The field's name, as in the event body.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Amount => "amount",
        }
    }
}

/// What the window says about an event carrying an id.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen (or forgotten): claimed for this copy, which must be settled.
    Fresh(Claim),
    /// Seen and accepted with the same user and amount: do not apply again.
    Duplicate,
    /// Seen with another user or amount: refuse, apply nothing.
    Conflict(ConflictField),
    /// Another copy is being admitted right now: wait for it to settle, then ask again.
    InFlight,
}

/// A claimed id, to be settled with [`Window::commit`] or [`Window::release`]. 24 bytes
/// (`Option<Claim>` too): it travels inside every queued job.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a claim must be committed or released"]
pub struct Claim {
    /// The key's low and high halves (no 16-byte alignment inside a job).
    key: [u64; 2],
    sequence: NonZeroU64,
}

impl Claim {
    fn new(key: IdKey, sequence: NonZeroU64) -> Self {
        Self {
            key: [key as u64, (key >> 64) as u64],
            sequence,
        }
    }

    /// The claimed id's key (what the log and snapshot keep).
    pub fn key(&self) -> IdKey {
        u128::from(self.key[0]) | (u128::from(self.key[1]) << 64)
    }
}

/// One id of a batch, as [`Window::check_batch`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRequest {
    /// The id's key ([`Window::key`]).
    pub key: IdKey,
    /// `user_hash` of the event's user.
    pub user_hash: u64,
    /// The event's amount.
    pub amount: i64,
}

/// What [`Window::check_batch`] says about one id of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Claimed for this event.
    Fresh(Claim),
    /// Accepted before: do not apply again.
    Duplicate,
    /// Used before (or earlier in this batch) with another user or amount.
    Conflict(ConflictField),
    /// The same id, user and amount as the request at this earlier index of the batch: its
    /// outcome is that one's.
    SameAs(usize),
}

/// A claim that is released if dropped unsettled (a refused or abandoned event frees its id).
#[derive(Debug)]
pub struct ClaimGuard<'a> {
    window: &'a Window,
    claim: Option<Claim>,
}

impl<'a> ClaimGuard<'a> {
    /// Guards `claim` (nothing to guard when `None`).
    pub fn new(window: &'a Window, claim: Option<Claim>) -> Self {
        Self { window, claim }
    }

    /// The claim, no longer guarded: whoever takes it must settle it.
    pub fn into_inner(mut self) -> Option<Claim> {
        self.claim.take()
    }

    /// Keeps the id when the event was accepted, frees it otherwise.
    pub fn settle(mut self, accepted: bool) {
        if let Some(claim) = self.claim.take() {
            if accepted {
                self.window.commit(claim);
            } else {
                self.window.release(claim);
            }
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.window.release(claim);
        }
    }
}

/// Where an entry of the ring is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Claimed, not yet settled.
    Pending,
    /// Claimed, not yet settled, and someone waits for it.
    Waited,
    /// Settled as applied: the id is remembered.
    Kept,
    /// Released (or forgotten): a tombstone, dropped when it reaches the front.
    Freed,
}

/// One claimed id, in claim order. 48 bytes, appended in order: the ring's pages are touched
/// one after the other as ids arrive.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: [u64; 2],
    user_hash: u64,
    amount: i64,
    /// When first claimed, in ms since the Unix epoch (so the age survives a restart).
    at_unix_ms: u64,
    status: Status,
}

impl Entry {
    fn key(&self) -> IdKey {
        u128::from(self.key[0]) | (u128::from(self.key[1]) << 64)
    }
}

/// The probe hash of a key (already a keyed hash): its halves folded, no second hash.
fn fold(key: IdKey) -> u64 {
    (key as u64) ^ ((key >> 64) as u64)
}

/// The window's storage: every claimed id in claim order (`ring`, `ring[i]` has sequence
/// `front + i`), and an index from key to sequence holding only the live ones (pending or
/// kept). The index is 8 bytes a bucket: the part of the window placed at random (whose pages
/// are all touched almost at once) stays small.
#[derive(Debug)]
struct State {
    index: hashbrown::HashTable<u64>,
    ring: VecDeque<Entry>,
    /// Sequence of `ring[0]`.
    front: u64,
}

impl State {
    fn new() -> Self {
        Self {
            index: hashbrown::HashTable::new(),
            ring: VecDeque::new(),
            front: 1,
        }
    }

    /// Reserves the ring for `max_ids` (bounded) before the first id: see the module's
    /// invariants. Free once done (a capacity check).
    fn preallocate(&mut self, max_ids: usize) {
        if self.ring.capacity() == 0 {
            self.ring.reserve(max_ids.clamp(1, PREALLOCATED_IDS_MAX));
        }
    }

    /// The sequence the next claim gets.
    fn next_sequence(&self) -> u64 {
        self.front + self.ring.len() as u64
    }

    fn entry_mut(&mut self, sequence: u64) -> Option<&mut Entry> {
        let offset = usize::try_from(sequence.checked_sub(self.front)?).ok()?;
        self.ring.get_mut(offset)
    }

    /// The live entry of `key`: its sequence.
    fn find(&self, key: IdKey) -> Option<u64> {
        let (ring, front) = (&self.ring, self.front);
        self.index
            .find(fold(key), |&sequence| {
                ring[(sequence - front) as usize].key() == key
            })
            .copied()
    }

    /// The live entry of `key`, with its sequence.
    fn find_mut(&mut self, key: IdKey) -> Option<(u64, &mut Entry)> {
        let sequence = self.find(key)?;
        Some((sequence, self.entry_mut(sequence)?))
    }

    /// Takes `sequence` out of the index (its entry stays in the ring).
    fn unindex(&mut self, key: IdKey, sequence: u64) {
        if let Ok(found) = self.index.find_entry(fold(key), |&live| live == sequence) {
            found.remove();
        }
    }

    /// Claims `key` for (`user_hash`, `amount`), first seen at `now_unix_ms`.
    fn claim(&mut self, key: IdKey, user_hash: u64, amount: i64, now_unix_ms: u64) -> Claim {
        let sequence = self.next_sequence();
        self.ring.push_back(Entry {
            key: [key as u64, (key >> 64) as u64],
            user_hash,
            amount,
            at_unix_ms: now_unix_ms,
            status: Status::Pending,
        });
        let (ring, front) = (&self.ring, self.front);
        self.index.insert_unique(fold(key), sequence, |&live| {
            fold(ring[(live - front) as usize].key())
        });
        Claim::new(key, NonZeroU64::new(sequence).unwrap_or(NonZeroU64::MIN))
    }

    /// Settles one claim; `true` when someone waits for it.
    fn settle(&mut self, claim: &Claim, applied: bool) -> bool {
        let key = claim.key();
        let sequence = claim.sequence.get();
        let Some(entry) = self.entry_mut(sequence) else {
            return false;
        };
        if entry.key() != key || !matches!(entry.status, Status::Pending | Status::Waited) {
            return false;
        }
        let waited = entry.status == Status::Waited;
        if applied {
            entry.status = Status::Kept;
        } else {
            entry.status = Status::Freed;
            self.unindex(key, sequence);
        }
        waited
    }

    /// Ids live (kept or pending).
    fn len(&self) -> usize {
        self.index.len()
    }
}

/// An entry's answer to another copy of its id (`None`: same user and amount).
fn conflict(entry: &Entry, user_hash: u64, amount: i64) -> Option<ConflictField> {
    if entry.user_hash != user_hash {
        Some(ConflictField::User)
    } else if entry.amount != amount {
        Some(ConflictField::Amount)
    } else {
        None
    }
}

/// The window's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Forget an id this long after it was first claimed.
    pub age: Duration,
    /// Keep at most this many settled ids.
    pub max_ids: usize,
}

/// The dedup window. Shared by the engine's doors; all methods take `&self`.
#[derive(Debug)]
pub struct Window {
    bounds: Bounds,
    /// The SipHash key: random per data directory, kept in the snapshot (two halves, so a
    /// recovery can adopt a snapshot's key through `&self`).
    hash_key: [AtomicU64; 2],
    state: parking_lot::Mutex<State>,
    settled: tokio::sync::Notify,
}

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn split_key(key: [u8; 16]) -> (u64, u64) {
    let mut low = [0; 8];
    let mut high = [0; 8];
    low.copy_from_slice(&key[..8]);
    high.copy_from_slice(&key[8..]);
    (u64::from_le_bytes(low), u64::from_le_bytes(high))
}

/// 16 random bytes from the standard library's per-process random hash keys.
fn random_key() -> [u8; 16] {
    use std::hash::BuildHasher as _;
    let low = std::hash::RandomState::new().hash_one(0x5eed_u64);
    let high = std::hash::RandomState::new().hash_one(now_unix_ms());
    let mut key = [0; 16];
    key[..8].copy_from_slice(&low.to_le_bytes());
    key[8..].copy_from_slice(&high.to_le_bytes());
    key
}

impl Window {
    /// An empty window with a fresh random hash key.
    pub fn new(bounds: Bounds) -> Self {
        Self::with_hash_key(bounds, random_key())
    }

    /// An empty window hashing with `hash_key` (the one a snapshot was written with).
    pub fn with_hash_key(bounds: Bounds, hash_key: [u8; 16]) -> Self {
        let (low, high) = split_key(hash_key);
        Self {
            bounds,
            hash_key: [AtomicU64::new(low), AtomicU64::new(high)],
            state: parking_lot::Mutex::new(State::new()),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// The bounds it was built with.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The hash key (to be kept with a snapshot of the window).
    pub fn hash_key(&self) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&self.hash_key[0].load(Ordering::Relaxed).to_le_bytes());
        key[8..].copy_from_slice(&self.hash_key[1].load(Ordering::Relaxed).to_le_bytes());
        key
    }

    /// Hashes from now on with `hash_key` (a snapshot's): only while recovering, before any
    /// id is checked, so every key in the window is made with one hash key.
    pub fn adopt_hash_key(&self, hash_key: [u8; 16]) {
        let (low, high) = split_key(hash_key);
        self.hash_key[0].store(low, Ordering::Relaxed);
        self.hash_key[1].store(high, Ordering::Relaxed);
    }

    /// The key an id is remembered under.
    pub fn key(&self, id: &EventId) -> IdKey {
        let mut hasher = SipHasher13::new_with_key(&self.hash_key());
        hasher.write(id.as_str().as_bytes());
        hasher.finish128().as_u128()
    }

    /// Checks `key` for an event of (`user_hash`, `amount`) and, when fresh, claims it: one
    /// step under the lock. Forgets what is past the bounds first.
    pub fn check(&self, key: IdKey, user_hash: u64, amount: i64) -> Verdict {
        let now = now_unix_ms();
        let mut state = self.state.lock();
        state.preallocate(self.bounds.max_ids);
        self.forget(&mut state, now);
        if let Some((_, entry)) = state.find_mut(key) {
            if let Some(field) = conflict(entry, user_hash, amount) {
                return Verdict::Conflict(field);
            }
            if entry.status == Status::Kept {
                return Verdict::Duplicate;
            }
            entry.status = Status::Waited;
            return Verdict::InFlight;
        }
        Verdict::Fresh(state.claim(key, user_hash, amount, now))
    }

    /// Checks and claims every id of a batch under ONE lock: a verdict per request, in order.
    /// A repeat inside the batch follows its first copy ([`BatchVerdict::SameAs`], or a
    /// conflict when its user or amount differs). When an id is in flight in another request,
    /// nothing is claimed (the claims of this pass are undone before the lock is let go, so
    /// no one saw them) and `Err` names that request's index: wait for it
    /// ([`Self::settled`]) holding no claim, then check again.
    pub fn check_batch(&self, requests: &[IdRequest]) -> Result<Vec<BatchVerdict>, usize> {
        let now = now_unix_ms();
        let mut state = self.state.lock();
        state.preallocate(self.bounds.max_ids);
        self.forget(&mut state, now);
        let first_sequence = state.next_sequence();
        // Request index of each claim of this pass, by sequence - first_sequence.
        let mut claimed: Vec<usize> = Vec::new();
        let mut verdicts = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let Some((sequence, entry)) = state.find_mut(request.key) else {
                claimed.push(index);
                let claim = state.claim(request.key, request.user_hash, request.amount, now);
                verdicts.push(BatchVerdict::Fresh(claim));
                continue;
            };
            let verdict = if let Some(field) = conflict(entry, request.user_hash, request.amount) {
                BatchVerdict::Conflict(field)
            } else if sequence >= first_sequence {
                BatchVerdict::SameAs(claimed[(sequence - first_sequence) as usize])
            } else if entry.status == Status::Kept {
                BatchVerdict::Duplicate
            } else {
                entry.status = Status::Waited;
                Self::undo_claims(&mut state, requests, &claimed, first_sequence);
                return Err(index);
            };
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }

    /// Takes back the claims of one [`Self::check_batch`] pass (still under its lock): they
    /// are the ring's last entries.
    fn undo_claims(
        state: &mut State,
        requests: &[IdRequest],
        claimed: &[usize],
        first_sequence: u64,
    ) {
        for (offset, &index) in claimed.iter().enumerate() {
            state.unindex(requests[index].key, first_sequence + offset as u64);
        }
        let keep = state.ring.len() - claimed.len();
        state.ring.truncate(keep);
    }

    /// The claimed event was applied: remember its id.
    #[allow(clippy::needless_pass_by_value)] // taking the claim is the point: settled once
    pub fn commit(&self, claim: Claim) {
        let waited = self.state.lock().settle(&claim, true);
        if waited {
            self.settled.notify_waiters();
        }
    }

    /// The claimed event was refused: forget the claim, the id is free again.
    #[allow(clippy::needless_pass_by_value)] // taking the claim is the point: settled once
    pub fn release(&self, claim: Claim) {
        let waited = self.state.lock().settle(&claim, false);
        if waited {
            self.settled.notify_waiters();
        }
    }

    /// Settles every claim of `claims` (draining it) under one lock: kept when applied
    /// (`true`), freed otherwise. A worker's batch, or a refused batch's ids.
    pub fn settle_all(&self, claims: impl IntoIterator<Item = (Claim, bool)>) {
        let mut claims = claims.into_iter().peekable();
        if claims.peek().is_none() {
            return;
        }
        let mut waited = false;
        {
            let mut state = self.state.lock();
            for (claim, applied) in claims {
                waited |= state.settle(&claim, applied);
            }
        }
        if waited {
            self.settled.notify_waiters();
        }
    }

    /// Frees every claim still in flight: their events will never be applied (a worker
    /// died with them; the engine refuses everything from then on), and whoever waits for
    /// them must not wait forever.
    pub fn release_pending(&self) {
        let waited = {
            let mut state = self.state.lock();
            let mut waited = false;
            let mut freed = Vec::new();
            let front = state.front;
            for (offset, entry) in state.ring.iter_mut().enumerate() {
                if matches!(entry.status, Status::Pending | Status::Waited) {
                    waited |= entry.status == Status::Waited;
                    entry.status = Status::Freed;
                    freed.push((entry.key(), front + offset as u64));
                }
            }
            for (key, sequence) in freed {
                state.unindex(key, sequence);
            }
            waited
        };
        if waited {
            self.settled.notify_waiters();
        }
    }

    /// Checks like [`Self::check`], waiting while another copy of the id is in flight: the
    /// answer is then the first copy's outcome (`Duplicate` if it was accepted; `Fresh` if it
    /// was refused, since its id is then free).
    pub async fn settled(&self, key: IdKey, user_hash: u64, amount: i64) -> Verdict {
        loop {
            let notified = self.settled.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before checking: a settle between the check and the await wakes us.
            notified.as_mut().enable();
            match self.check(key, user_hash, amount) {
                Verdict::InFlight => notified.await,
                verdict => return verdict,
            }
        }
    }

    /// Puts back an id recovered from a snapshot or the log (already accepted), in claim
    /// order. Ignored when the id is already known or older than the window.
    pub fn restore(&self, key: IdKey, user_hash: u64, amount: i64, at_unix_ms: u64) {
        let now = now_unix_ms();
        let mut state = self.state.lock();
        state.preallocate(self.bounds.max_ids);
        if state.find(key).is_some() {
            return;
        }
        let claim = state.claim(key, user_hash, amount, at_unix_ms);
        state.settle(&claim, true);
        self.forget(&mut state, now);
    }

    /// Every settled id as (key, user hash, amount, first claimed at), oldest first: what a
    /// snapshot keeps.
    pub fn settled_ids(&self) -> Vec<(IdKey, u64, i64, u64)> {
        let mut ids = Vec::new();
        self.visit_settled_ids(|key, user_hash, amount, at_unix_ms| {
            ids.push((key, user_hash, amount, at_unix_ms));
        });
        ids
    }

    /// Hands every settled id to `visit` as (key, user hash, amount, first claimed at),
    /// oldest first, under one lock; returns how many. A snapshot encodes them straight into
    /// its payload this way: a window of a million ids would otherwise be copied whole first.
    pub fn visit_settled_ids(&self, mut visit: impl FnMut(IdKey, u64, i64, u64)) -> usize {
        let state = self.state.lock();
        let mut settled = 0;
        for entry in state
            .ring
            .iter()
            .filter(|entry| entry.status == Status::Kept)
        {
            visit(entry.key(), entry.user_hash, entry.amount, entry.at_unix_ms);
            settled += 1;
        }
        settled
    }

    /// Ids kept (settled and in flight).
    pub fn len(&self) -> usize {
        self.state.lock().len()
    }

    /// `true` when no id is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Age of the oldest id kept: how far back a resend is still recognised right now
    /// (`None` when empty).
    pub fn oldest_age(&self) -> Option<Duration> {
        let now = now_unix_ms();
        let mut state = self.state.lock();
        self.forget(&mut state, now);
        let oldest = state.ring.front()?;
        Some(Duration::from_millis(now.saturating_sub(oldest.at_unix_ms)))
    }

    /// Forgets, oldest first, ids past the age bound or beyond the count bound; stops at a
    /// claim in flight. Drops the tombstones of released claims on the way (the ring stays
    /// contiguous in sequence: a tombstone waits behind a claim in flight until it is at the
    /// front).
    fn forget(&self, state: &mut State, now_unix_ms: u64) {
        let max_age_ms = self.bounds.age.as_millis() as u64;
        while let Some(&oldest) = state.ring.front() {
            match oldest.status {
                Status::Pending | Status::Waited => break,
                Status::Freed => {}
                Status::Kept => {
                    let too_old = now_unix_ms.saturating_sub(oldest.at_unix_ms) > max_age_ms;
                    if !too_old && state.len() <= self.bounds.max_ids {
                        break;
                    }
                    let front = state.front;
                    state.unindex(oldest.key(), front);
                }
            }
            state.ring.pop_front();
            state.front += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(max_ids: usize) -> Window {
        Window::new(Bounds {
            age: Duration::from_secs(600),
            max_ids,
        })
    }

    fn id(text: &str) -> EventId {
        EventId::parse(text).expect("a valid id")
    }

    #[test]
    fn fresh_then_duplicate_then_conflicts() {
        // Proves the three answers: a committed id is a duplicate for the same user and
        // amount, and a conflict naming the field for another user or another amount.
        let window = window(10);
        let key = window.key(&id("a"));
        let Verdict::Fresh(claim) = window.check(key, 7, 5) else {
            panic!("first copy must be fresh");
        };
        window.commit(claim);
        assert_eq!(window.check(key, 7, 5), Verdict::Duplicate);
        assert_eq!(
            window.check(key, 8, 5),
            Verdict::Conflict(ConflictField::User)
        );
        assert_eq!(
            window.check(key, 7, 6),
            Verdict::Conflict(ConflictField::Amount)
        );
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn released_ids_are_free_again() {
        // Proves a refused event leaves its id free: after release the same id is fresh.
        let window = window(10);
        let key = window.key(&id("b"));
        let Verdict::Fresh(claim) = window.check(key, 1, 1) else {
            panic!("fresh");
        };
        assert_eq!(window.check(key, 1, 1), Verdict::InFlight);
        window.release(claim);
        assert!(matches!(window.check(key, 1, 1), Verdict::Fresh(_)));
    }

    #[tokio::test]
    async fn a_resend_in_flight_gets_the_first_copys_outcome() {
        // Proves the in-flight rule: a second copy waits while the first is unsettled, then
        // answers Duplicate once the first is committed (never a second claim).
        let window = std::sync::Arc::new(window(10));
        let key = window.key(&id("c"));
        let Verdict::Fresh(claim) = window.check(key, 1, 1) else {
            panic!("fresh");
        };
        let waiter = {
            let window = std::sync::Arc::clone(&window);
            tokio::spawn(async move { window.settled(key, 1, 1).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the resend must wait for the first copy"
        );
        window.commit(claim);
        assert_eq!(waiter.await.expect("no panic"), Verdict::Duplicate);
    }

    #[test]
    fn forgets_oldest_beyond_the_count_and_the_age() {
        // Proves both bounds: beyond max_ids the oldest settled ids go first, and an id older
        // than the age bound is forgotten (a resend of it is then fresh).
        let window = window(3);
        let keys: Vec<IdKey> = (0..5).map(|n| window.key(&id(&format!("k{n}")))).collect();
        for &key in &keys {
            let Verdict::Fresh(claim) = window.check(key, 1, 1) else {
                panic!("fresh");
            };
            window.commit(claim);
        }
        window.check(window.key(&id("probe")), 1, 1);
        // 5 settled + 1 pending: the two oldest settled ones are gone.
        assert!(matches!(window.check(keys[0], 1, 1), Verdict::Fresh(_)));
        assert_eq!(window.check(keys[4], 1, 1), Verdict::Duplicate);

        let aged = Window::new(Bounds {
            age: Duration::from_secs(60),
            max_ids: 100,
        });
        let old = aged.key(&id("old"));
        aged.restore(old, 1, 1, now_unix_ms() - 120_000);
        let recent = aged.key(&id("recent"));
        aged.restore(recent, 1, 1, now_unix_ms() - 1_000);
        assert!(matches!(aged.check(old, 1, 1), Verdict::Fresh(_)));
        assert_eq!(aged.check(recent, 1, 1), Verdict::Duplicate);
        let age = aged.oldest_age().expect("not empty");
        assert!(age < Duration::from_secs(60), "{age:?}");
    }

    #[test]
    fn the_same_hash_key_gives_the_same_keys() {
        // Proves a window rebuilt with a snapshot's hash key recognises the same ids.
        let first = window(10);
        let again = Window::with_hash_key(first.bounds(), first.hash_key());
        assert_eq!(first.key(&id("x")), again.key(&id("x")));
        assert_ne!(first.key(&id("x")), first.key(&id("y")));
    }

    fn request(window: &Window, id_text: &str, user_hash: u64, amount: i64) -> IdRequest {
        IdRequest {
            key: window.key(&id(id_text)),
            user_hash,
            amount,
        }
    }

    #[test]
    fn a_batch_claims_its_ids_in_one_pass_and_repeats_follow_the_first() {
        // Proves check_batch's verdicts: fresh ids are claimed, an id settled before is a
        // duplicate, a repeat inside the batch follows its first copy (SameAs, by request
        // index) or conflicts when its user or amount differs, and settle_all keeps or frees
        // each claim.
        let window = window(100);
        let Verdict::Fresh(old) = window.check(window.key(&id("old")), 1, 1) else {
            panic!("fresh");
        };
        window.commit(old);
        let requests = [
            request(&window, "n-1", 1, 5),
            request(&window, "old", 1, 1),
            request(&window, "n-1", 1, 5),
            request(&window, "n-1", 2, 5),
            request(&window, "n-1", 1, 6),
            request(&window, "n-2", 1, 5),
        ];
        let verdicts = window.check_batch(&requests).expect("nothing in flight");
        assert!(matches!(verdicts[0], BatchVerdict::Fresh(_)));
        assert_eq!(verdicts[1], BatchVerdict::Duplicate);
        assert_eq!(verdicts[2], BatchVerdict::SameAs(0));
        assert_eq!(verdicts[3], BatchVerdict::Conflict(ConflictField::User));
        assert_eq!(verdicts[4], BatchVerdict::Conflict(ConflictField::Amount));
        assert!(matches!(verdicts[5], BatchVerdict::Fresh(_)));
        assert_eq!(window.len(), 3, "old, n-1 and n-2: each claimed once");
        let mut claims = verdicts.into_iter().filter_map(|verdict| match verdict {
            BatchVerdict::Fresh(claim) => Some(claim),
            _ => None,
        });
        let (first, second) = (claims.next().expect("n-1"), claims.next().expect("n-2"));
        window.settle_all([(first, true), (second, false)]);
        assert_eq!(window.check(requests[0].key, 1, 5), Verdict::Duplicate);
        assert!(matches!(
            window.check(requests[5].key, 1, 5),
            Verdict::Fresh(_)
        ));
    }

    #[test]
    fn a_batch_meeting_an_id_in_flight_claims_nothing() {
        // Proves all-or-none: when one id of a batch is in flight in another request, the
        // pass names it and leaves every other id of the batch unclaimed (free for anyone),
        // and once the other request settled, the batch's next pass sees its outcome.
        let window = window(100);
        let busy = window.key(&id("busy"));
        let Verdict::Fresh(claim) = window.check(busy, 1, 1) else {
            panic!("fresh");
        };
        let requests = [
            request(&window, "a", 1, 1),
            request(&window, "busy", 1, 1),
            request(&window, "b", 1, 1),
        ];
        assert_eq!(window.check_batch(&requests), Err(1));
        assert_eq!(window.len(), 1, "only the other request's claim is kept");
        assert!(matches!(
            window.check(requests[0].key, 1, 1),
            Verdict::Fresh(_)
        ));
        window.commit(claim);
        let verdicts = window.check_batch(&requests[1..]).expect("settled");
        assert_eq!(verdicts[0], BatchVerdict::Duplicate);
    }

    #[tokio::test]
    async fn freeing_the_claims_in_flight_wakes_whoever_waits() {
        // Proves release_pending (a worker died with its jobs): claims in flight are freed,
        // settled ids stay, and a resend waiting for one gets a fresh claim instead of
        // waiting forever.
        let window = std::sync::Arc::new(window(10));
        let (kept, lost) = (window.key(&id("kept")), window.key(&id("lost")));
        let Verdict::Fresh(claim) = window.check(kept, 1, 1) else {
            panic!("fresh");
        };
        window.commit(claim);
        let Verdict::Fresh(_never_settled) = window.check(lost, 1, 1) else {
            panic!("fresh");
        };
        let waiter = {
            let window = std::sync::Arc::clone(&window);
            tokio::spawn(async move { window.settled(lost, 1, 1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the claim is in flight");
        window.release_pending();
        assert!(matches!(waiter.await.expect("no panic"), Verdict::Fresh(_)));
        assert_eq!(window.check(kept, 1, 1), Verdict::Duplicate);
    }

    #[test]
    fn a_released_claim_behind_one_in_flight_is_dropped_once_at_the_front() {
        // Proves the ring's tombstones: an id released behind a claim still in flight is free
        // at once (fresh again), later ids stay recognised, and once the claim in flight is
        // settled the count bound forgets oldest first, tombstones included.
        let window = window(2);
        let keys: Vec<IdKey> = ["p", "r", "k1", "k2"]
            .iter()
            .map(|text| window.key(&id(text)))
            .collect();
        let mut claims: Vec<Claim> = keys
            .iter()
            .map(|&key| match window.check(key, 1, 1) {
                Verdict::Fresh(claim) => claim,
                other => panic!("fresh expected, got {other:?}"),
            })
            .collect();
        let k2 = claims.pop().expect("k2");
        let k1 = claims.pop().expect("k1");
        let released = claims.pop().expect("r");
        let in_flight = claims.pop().expect("p");
        window.release(released);
        window.settle_all([(k1, true), (k2, true)]);
        assert_eq!(window.len(), 3, "p in flight, k1 and k2 kept");
        assert_eq!(window.check(keys[2], 1, 1), Verdict::Duplicate);
        let Verdict::Fresh(again) = window.check(keys[1], 1, 1) else {
            panic!("a released id is free");
        };
        window.release(again);
        window.commit(in_flight);
        // 3 kept > max_ids 2: p (oldest) goes, the tombstones with it; k1, k2 stay.
        assert_eq!(window.check(keys[3], 1, 1), Verdict::Duplicate);
        assert_eq!(window.settled_ids().len(), 2);
        assert!(matches!(window.check(keys[0], 1, 1), Verdict::Fresh(_)));
    }
}
