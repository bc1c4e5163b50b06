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
//!   and waits (see [`Window::settled`]) for the first copy's outcome.
//! - A claim is settled exactly once: [`Window::commit`] (the event was accepted: its id is
//!   remembered) or [`Window::release`] (it was refused: the id is free again, so the
//!   intended retry goes through).
//! - Bounded: a remembered id is forgotten once it is older than the window's age or when more
//!   than `max_ids` are kept (oldest first); claims still in flight are never forgotten, so
//!   the table may exceed `max_ids` by at most the events in flight. Past the window a
//!   resend is applied again: [`Window::oldest_age`] is the effective window operators watch.
//! - Memory: an id is kept as a 128-bit keyed SipHash-1-3 of its text (the key is secret and
//!   random per data directory), not as its text: a collision between two different ids has
//!   probability ~n²/2¹²⁹ (about 10⁻²⁵ for 4 M ids) and cannot be provoked without the key.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::event::EventId;

/// A remembered id: the 128-bit keyed hash of its text.
pub type IdKey = u128;

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

/// A claimed id, to be settled with [`Window::commit`] or [`Window::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a claim must be committed or released"]
pub struct Claim {
    key: IdKey,
    sequence: u64,
}

impl Claim {
    /// The claimed id's key (what the log and snapshot keep).
    pub fn key(&self) -> IdKey {
        self.key
    }
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

/// What one remembered id holds besides its key.
#[derive(Clone, Copy, Debug)]
struct Slot {
    user_hash: u64,
    amount: i64,
    /// Claim order: matches the ring entry that owns this slot.
    sequence: u64,
    /// Claimed, not yet settled.
    pending: bool,
    /// Someone waits for this claim to settle.
    waited: bool,
}

/// A remembered id in claim order, for forgetting by age and count.
#[derive(Clone, Copy, Debug)]
struct Aged {
    key: IdKey,
    sequence: u64,
    /// When first claimed, in ms since the Unix epoch (so the age survives a restart).
    at_unix_ms: u64,
}

/// Hashes an [`IdKey`] (already a keyed hash) by folding it: no second hash per probe.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = (value as u64) ^ ((value >> 64) as u64);
    }
}

type Table = hashbrown::HashMap<IdKey, Slot, BuildHasherDefault<FoldHasher>>;

#[derive(Debug, Default)]
struct State {
    slots: Table,
    ring: VecDeque<Aged>,
    next_sequence: u64,
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
            state: parking_lot::Mutex::new(State::default()),
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
        self.forget(&mut state, now);
        if let Some(slot) = state.slots.get_mut(&key) {
            if slot.user_hash != user_hash {
                return Verdict::Conflict(ConflictField::User);
            }
            if slot.amount != amount {
                return Verdict::Conflict(ConflictField::Amount);
            }
            if slot.pending {
                slot.waited = true;
                return Verdict::InFlight;
            }
            return Verdict::Duplicate;
        }
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        state.slots.insert(
            key,
            Slot {
                user_hash,
                amount,
                sequence,
                pending: true,
                waited: false,
            },
        );
        state.ring.push_back(Aged {
            key,
            sequence,
            at_unix_ms: now,
        });
        Verdict::Fresh(Claim { key, sequence })
    }

    /// The claimed event was accepted: remember its id.
    #[allow(clippy::needless_pass_by_value)] // taking the claim is the point: settled once
    pub fn commit(&self, claim: Claim) {
        let Claim { key, sequence } = claim;
        let waited = {
            let mut state = self.state.lock();
            match state.slots.get_mut(&key) {
                Some(slot) if slot.sequence == sequence => {
                    slot.pending = false;
                    slot.waited
                }
                _ => false,
            }
        };
        if waited {
            self.settled.notify_waiters();
        }
    }

    /// The claimed event was refused: forget the claim, the id is free again.
    #[allow(clippy::needless_pass_by_value)] // taking the claim is the point: settled once
    pub fn release(&self, claim: Claim) {
        let Claim { key, sequence } = claim;
        let waited = {
            let mut state = self.state.lock();
            match state.slots.get(&key) {
                Some(slot) if slot.sequence == sequence => {
                    let waited = slot.waited;
                    state.slots.remove(&key);
                    waited
                }
                _ => false,
            }
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
        if state.slots.contains_key(&key) {
            return;
        }
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        state.slots.insert(
            key,
            Slot {
                user_hash,
                amount,
                sequence,
                pending: false,
                waited: false,
            },
        );
        state.ring.push_back(Aged {
            key,
            sequence,
            at_unix_ms,
        });
        self.forget(&mut state, now);
    }

    /// Every settled id as (key, user hash, amount, first claimed at), oldest first: what a
    /// snapshot keeps.
    pub fn settled_ids(&self) -> Vec<(IdKey, u64, i64, u64)> {
        let state = self.state.lock();
        state
            .ring
            .iter()
            .filter_map(|aged| {
                let slot = state.slots.get(&aged.key)?;
                (slot.sequence == aged.sequence && !slot.pending).then_some((
                    aged.key,
                    slot.user_hash,
                    slot.amount,
                    aged.at_unix_ms,
                ))
            })
            .collect()
    }

    /// Ids kept (settled and in flight).
    pub fn len(&self) -> usize {
        self.state.lock().slots.len()
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
    /// claim in flight. Drops ring entries whose claim was released on the way.
    fn forget(&self, state: &mut State, now_unix_ms: u64) {
        let max_age_ms = self.bounds.age.as_millis() as u64;
        while let Some(&oldest) = state.ring.front() {
            let live = state
                .slots
                .get(&oldest.key)
                .filter(|slot| slot.sequence == oldest.sequence)
                .copied();
            match live {
                None => {} // released: its ring entry is stale
                Some(slot) if slot.pending => break,
                Some(_) => {
                    let too_old = now_unix_ms.saturating_sub(oldest.at_unix_ms) > max_age_ms;
                    if !too_old && state.slots.len() <= self.bounds.max_ids {
                        break;
                    }
                    state.slots.remove(&oldest.key);
                }
            }
            state.ring.pop_front();
        }
        // Released claims leave stale ring entries behind newer live ones: compact when they
        // would double the ring, so the ring stays O(ids kept).
        if state.ring.len() > 2 * state.slots.len() + 1024 {
            let slots = &state.slots;
            state.ring.retain(|aged| {
                slots
                    .get(&aged.key)
                    .is_some_and(|slot| slot.sequence == aged.sequence)
            });
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
}
