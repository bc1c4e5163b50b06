//! A partition's balances as a function of its events in stream order, applied exactly once.
//!
//! Invariant: `applied_sequence` is the stream sequence of the last event folded into
//! `balances`; an event at or below it is already in the balances and is skipped, so a
//! redelivery, a replay from an older snapshot, or a consumer restarted mid-batch never applies
//! an event twice. Sequences only grow (JetStream assigns them in stream order).
//!
//! Second invariant, for client ids: JetStream drops a repeated `Nats-Msg-Id` only within its
//! duplicate window (2 min); the owner remembers the client ids it applied for longer
//! ([`IdBounds`], by the stream's own timestamps, so every owner expires the same ids) and
//! in the snapshot, so a resend stored again after that window, or after a takeover, is skipped
//! rather than applied twice. With each id it keeps the event's digest (user hash and amount)
//! and stream sequence: a later event with that id and another user or amount is an id
//! conflict, skipped and counted (its sender already had its 202), and a front door can ask
//! whether a sequence JetStream called a duplicate was this id's event (see `conflict`).
//!
//! Third invariant, for pages: `balances` keeps its users in byte order beside the hash map
//! (see `balances`), so a page costs a seek and `limit` steps, not a scan and a sort of the
//! partition, and an event of a known user still one hash lookup.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use floodgate_core::dedup::ConflictField;
use floodgate_core::{Event, ledger::user_hash};
use serde::{Deserialize, Serialize};

use crate::balances::Balances;

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Added to the user's balance.
    Applied,
    /// At or below `applied_sequence`: already in the balances, skipped.
    AlreadyApplied,
    /// Not added: the balance would leave the i64 range (counted, like the standalone ledger).
    Overflowed,
    /// Not added: its client id was applied before (a resend JetStream stored again).
    Duplicate,
    /// Not added: its client id was applied before with another user or amount (counted).
    IdConflict(ConflictField),
}

/// What applying one batch message did, event by event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchApplied {
    /// The message's sequence was applied before: nothing done.
    pub already_applied: bool,
    /// Events added to their balances.
    pub applied: u64,
    /// Events skipped: their client id was applied before.
    pub duplicates: u64,
    /// Events skipped: their client id was applied before with another user or amount.
    pub id_conflicts: u64,
    /// Events not added: the balance would leave the i64 range.
    pub overflowed: u64,
}

/// How long, and how many, client ids a partition remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdBounds {
    /// Ids stored longer ago than this (stream time) are forgotten.
    pub window: Duration,
    /// Most ids remembered per partition (the oldest are forgotten first); each costs about
    /// its length plus 70 bytes in every snapshot of the partition.
    pub max_ids: usize,
}

impl Default for IdBounds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_ids: 5_000,
        }
    }
}

/// What an event with a client id was: enough to tell a resend from a conflicting reuse of
/// the id, without keeping the user's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDigest {
    /// `floodgate_core::ledger::user_hash` of the user (stable across processes).
    pub user_hash: u64,
    /// The amount.
    pub amount: i64,
}

impl EventDigest {
    /// The digest of `event`.
    pub fn of(event: &Event) -> Self {
        Self {
            user_hash: user_hash(&event.user),
            amount: event.amount,
        }
    }

    /// The field in which `event` differs from the event this digest was made of (`None`:
    /// the same user and amount, a resend). The user is compared first, as standalone does.
    pub fn conflict_with(&self, event: &Event) -> Option<ConflictField> {
        if self.user_hash != user_hash(&event.user) {
            Some(ConflictField::User)
        } else if self.amount != event.amount {
            Some(ConflictField::Amount)
        } else {
            None
        }
    }
}

/// What a partition keeps of one applied client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRecord {
    /// JetStream's timestamp of the message, unix ms.
    pub stored_at_ms: u64,
    /// Its stream sequence (0 in snapshots written before sequences were kept).
    pub sequence: u64,
    /// Its event's digest (`None` in snapshots written before digests were kept).
    pub digest: Option<EventDigest>,
}

/// What a partition keeps of an applied client id, as a front door reads it: the sequence of
/// the message that applied it and its event's digest (see [`PartitionState::kept_ids`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptId {
    /// The stream sequence of the message whose event with this id was applied (0: kept by
    /// a snapshot written before sequences were).
    pub sequence: u64,
    /// Its event's digest (`None`: kept before digests were).
    pub digest: Option<EventDigest>,
}

/// The client ids a partition applied, oldest first. Serialized as a list of
/// `[id, stored_at_ms, sequence, user_hash, amount]` (older snapshots: `[id, stored_at_ms]`);
/// the lookup map is rebuilt on load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedIds {
    order: VecDeque<String>,
    known: HashMap<String, IdRecord>,
}

impl AppliedIds {
    /// Whether `id` was applied (and not forgotten yet).
    pub fn contains(&self, id: &str) -> bool {
        self.known.contains_key(id)
    }

    /// What is kept of `id`, if it was applied and not forgotten yet.
    pub fn get(&self, id: &str) -> Option<&IdRecord> {
        self.known.get(id)
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Remembers `id` as `record`, then forgets what `bounds` no longer keep; returns the
    /// highest stream sequence among the ids forgotten now (0: none).
    fn remember(&mut self, id: &str, record: IdRecord, bounds: IdBounds) -> u64 {
        if !self.known.contains_key(id) {
            self.known.insert(id.to_owned(), record);
            self.order.push_back(id.to_owned());
        }
        let window_ms = u64::try_from(bounds.window.as_millis()).unwrap_or(u64::MAX);
        let mut forgotten_through = 0;
        while let Some(oldest) = self.order.front() {
            let at = self
                .known
                .get(oldest)
                .map_or(0, |record| record.stored_at_ms);
            let expired = at.saturating_add(window_ms) < record.stored_at_ms;
            if !expired && self.order.len() <= bounds.max_ids {
                break;
            }
            if let Some(gone) = self.known.remove(oldest) {
                forgotten_through = forgotten_through.max(gone.sequence);
            }
            self.order.pop_front();
        }
        forgotten_through
    }
}

/// One remembered id as serialized: the current form, or the form before digests.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredId {
    Full(String, u64, u64, u64, i64),
    Bare(String, u64),
}

/// One remembered id as written.
#[derive(Serialize)]
#[serde(untagged)]
enum StoredIdRef<'a> {
    Full(&'a str, u64, u64, u64, i64),
    Bare(&'a str, u64),
}

impl Serialize for AppliedIds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.order.iter().filter_map(|id| {
            let record = self.known.get(id)?;
            Some(match record.digest {
                Some(digest) => StoredIdRef::Full(
                    id,
                    record.stored_at_ms,
                    record.sequence,
                    digest.user_hash,
                    digest.amount,
                ),
                None => StoredIdRef::Bare(id, record.stored_at_ms),
            })
        }))
    }
}

impl<'de> Deserialize<'de> for AppliedIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored: Vec<StoredId> = Vec::deserialize(deserializer)?;
        let mut ids = Self::default();
        for entry in stored {
            let (id, record) = match entry {
                StoredId::Full(id, stored_at_ms, sequence, user_hash, amount) => {
                    let digest = Some(EventDigest { user_hash, amount });
                    (
                        id,
                        IdRecord {
                            stored_at_ms,
                            sequence,
                            digest,
                        },
                    )
                }
                StoredId::Bare(id, stored_at_ms) => {
                    let record = IdRecord {
                        stored_at_ms,
                        sequence: 0,
                        digest: None,
                    };
                    (id, record)
                }
            };
            if ids.known.insert(id.clone(), record).is_none() {
                ids.order.push_back(id);
            }
        }
        Ok(ids)
    }
}

/// A client id as it arrived with its event: the id and the stream time it was stored at.
#[derive(Clone, Copy, Debug)]
pub struct ClientId<'a> {
    /// The client's event id (its `Nats-Msg-Id`).
    pub id: &'a str,
    /// JetStream's timestamp of the message, unix ms.
    pub stored_at_ms: u64,
}

/// Balances of one partition up to a stream sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The last stream sequence applied (0: none).
    pub applied_sequence: u64,
    /// Balance per user of the partition, with the users in byte order (the page index).
    pub balances: Balances,
    /// Events whose amount would have overflowed the balance (not applied).
    pub overflowed_events: u64,
    /// Client ids applied recently (see [`IdBounds`]).
    #[serde(default)]
    pub ids: AppliedIds,
    /// Events skipped because their client id was applied before.
    #[serde(default)]
    pub duplicate_events: u64,
    /// Events skipped because their client id was applied before with another user or amount.
    #[serde(default)]
    pub id_conflicts: u64,
    /// The highest stream sequence among the ids forgotten (by [`IdBounds`]); every client id
    /// applied after it is still in `ids`. `None` in a snapshot written before it was kept:
    /// [`Self::loaded`] then takes `applied_sequence` (nothing earlier is known for sure).
    #[serde(default)]
    pub ids_forgotten_through: Option<u64>,
}

/// What a partition can say about a client id (see `conflict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdLookup {
    /// The id was applied here, with this digest (`None`: kept before digests were).
    Known(Option<EventDigest>),
    /// Not remembered here: the partition applied every sequence up to `applied_sequence`,
    /// and remembers every client id applied after `forgotten_through`.
    Unknown {
        applied_sequence: u64,
        forgotten_through: u64,
    },
}

impl PartitionState {
    /// This state as loaded from a snapshot: a snapshot written before
    /// `ids_forgotten_through` was kept may have forgotten ids up to its last sequence.
    #[must_use]
    pub fn loaded(mut self) -> Self {
        if self.ids_forgotten_through.is_none() {
            self.ids_forgotten_through = Some(self.applied_sequence);
        }
        self
    }

    /// Folds the event stored at `sequence` into the balances, once.
    pub fn apply(&mut self, sequence: u64, event: &Event) -> Applied {
        if sequence <= self.applied_sequence {
            return Applied::AlreadyApplied;
        }
        self.applied_sequence = sequence;
        self.add(event)
    }

    /// Adds `event`'s amount to its user's balance, unless it would overflow (then counted).
    fn add(&mut self, event: &Event) -> Applied {
        if self.balances.add(&event.user, event.amount) {
            Applied::Applied
        } else {
            self.overflowed_events += 1;
            Applied::Overflowed
        }
    }

    /// [`Self::apply`] for an event that carries a client id: skipped when the id was applied
    /// before (counted duplicate, or id conflict when the user or amount differ), else applied
    /// and the id remembered within `bounds`.
    pub fn apply_identified(
        &mut self,
        sequence: u64,
        event: &Event,
        client_id: Option<ClientId<'_>>,
        bounds: IdBounds,
    ) -> Applied {
        let Some(client_id) = client_id else {
            return self.apply(sequence, event);
        };
        if sequence <= self.applied_sequence {
            return Applied::AlreadyApplied;
        }
        if let Some(skipped) = self.skip_known_id(event, client_id.id) {
            self.applied_sequence = sequence;
            return skipped;
        }
        let applied = self.apply(sequence, event);
        self.remember_id(sequence, event, client_id, bounds);
        applied
    }

    /// Skips `event` if its client id was applied before (counted duplicate, or id conflict
    /// when the user or amount differ): `Some` with what it was; `None` if the id is new.
    fn skip_known_id(&mut self, event: &Event, id: &str) -> Option<Applied> {
        let record = self.ids.get(id)?;
        let conflict = record.digest.and_then(|digest| digest.conflict_with(event));
        if let Some(field) = conflict {
            self.id_conflicts += 1;
            return Some(Applied::IdConflict(field));
        }
        self.duplicate_events += 1;
        Some(Applied::Duplicate)
    }

    /// Remembers `event`'s client id, applied in the message at `sequence`, within `bounds`.
    fn remember_id(
        &mut self,
        sequence: u64,
        event: &Event,
        client_id: ClientId<'_>,
        bounds: IdBounds,
    ) {
        let record = IdRecord {
            stored_at_ms: client_id.stored_at_ms,
            sequence,
            digest: Some(EventDigest::of(event)),
        };
        let forgotten = self.ids.remember(client_id.id, record, bounds);
        let through = self.ids_forgotten_through.unwrap_or(0).max(forgotten);
        self.ids_forgotten_through = Some(through);
    }

    /// Folds a batch message stored at `sequence` (at `stored_at_ms`, stream time) into the
    /// balances, whole and once: nothing if the sequence is applied already; otherwise every
    /// event in order, an event whose client id (`Event::id`) was applied before skipped
    /// (counted duplicate, or id conflict), the others' ids remembered within `bounds` (with
    /// the message's sequence); then the sequence moves to the message's. There is no point
    /// inside a message at which the state is kept, so a snapshot (taken between messages)
    /// never holds part of one.
    pub fn apply_batch(
        &mut self,
        sequence: u64,
        events: &[Event],
        stored_at_ms: u64,
        bounds: IdBounds,
    ) -> BatchApplied {
        let mut outcome = BatchApplied::default();
        if sequence <= self.applied_sequence {
            outcome.already_applied = true;
            return outcome;
        }
        for event in events {
            let client_id = event.id.as_ref().map(|id| ClientId {
                id: id.as_str(),
                stored_at_ms,
            });
            let skipped = client_id.and_then(|id| self.skip_known_id(event, id.id));
            match skipped.unwrap_or_else(|| self.add(event)) {
                Applied::Duplicate => outcome.duplicates += 1,
                Applied::IdConflict(_) => outcome.id_conflicts += 1,
                Applied::Overflowed => outcome.overflowed += 1,
                Applied::Applied | Applied::AlreadyApplied => outcome.applied += 1,
            }
            if let (None, Some(client_id)) = (skipped, client_id) {
                self.remember_id(sequence, event, client_id, bounds);
            }
        }
        self.applied_sequence = sequence;
        outcome
    }

    /// What this partition knows of client id `id`.
    pub fn lookup_id(&self, id: &str) -> IdLookup {
        match self.ids.get(id) {
            Some(record) => IdLookup::Known(record.digest),
            None => IdLookup::Unknown {
                applied_sequence: self.applied_sequence,
                forgotten_through: self.ids_forgotten_through.unwrap_or(0),
            },
        }
    }

    /// What this partition keeps of each of `ids` (`None`: not applied, or forgotten): with
    /// `applied_sequence` at or past a message's sequence, enough to tell, for each client-id
    /// event of that message, whether it was applied from it or skipped as a repeat.
    pub fn kept_ids(&self, ids: &[impl AsRef<str>]) -> Vec<Option<KeptId>> {
        ids.iter()
            .map(|id| {
                self.ids.get(id.as_ref()).map(|record| KeptId {
                    sequence: record.sequence,
                    digest: record.digest,
                })
            })
            .collect()
    }

    /// Moves past a stream sequence whose message is not an event of ours (undecodable):
    /// nothing to apply, but it must not stop the partition.
    pub fn skip(&mut self, sequence: u64) {
        self.applied_sequence = self.applied_sequence.max(sequence);
    }

    /// The balance of `user` (0 when the partition has never seen the user).
    pub fn balance(&self, user: &str) -> i64 {
        self.known_balance(user).unwrap_or(0)
    }

    /// Up to `limit` balances of users after `after` (compared as bytes), sorted by user: a
    /// seek in the users' order and `limit` steps (see [`Balances::page`]).
    pub fn page(&self, after: Option<&[u8]>, limit: usize) -> Vec<(String, i64)> {
        self.balances.page(after, limit)
    }

    /// The balance of `user`, `None` if no event of theirs was applied.
    pub fn known_balance(&self, user: &str) -> Option<i64> {
        self.balances.get(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves an event delivered again (same or lower sequence) is not applied again.
    // Proves a batch message is applied whole and once: its events in order (an id applied
    // before, in an earlier message or earlier in this one, skipped and counted, as a conflict
    // when its amount differs; an overflow counted), the sequence moved once, the ids kept
    // with the message's sequence, and a redelivery of the message changes nothing.
    #[test]
    fn a_batch_message_is_applied_whole_and_once() {
        let id = |user: &str, amount, id: &str| {
            Event::new(user, amount).with_id(floodgate_core::EventId::parse(id).expect("id"))
        };
        let bounds = IdBounds::default();
        let mut state = PartitionState::default();
        state.apply_identified(
            1,
            &id("a", 1, "x"),
            Some(ClientId {
                id: "x",
                stored_at_ms: 0,
            }),
            bounds,
        );
        let batch = [
            id("a", 1, "x"),
            id("b", 2, "y"),
            Event::new("a", 3),
            id("b", 2, "y"),
            id("c", i64::MAX, "z"),
            id("c", 1, "w"),
            id("a", 9, "x"),
        ];
        let outcome = state.apply_batch(2, &batch, 5, bounds);
        assert_eq!(
            outcome,
            BatchApplied {
                already_applied: false,
                applied: 3,
                duplicates: 2,
                id_conflicts: 1,
                overflowed: 1,
            }
        );
        assert_eq!(
            (state.balance("a"), state.balance("b"), state.balance("c")),
            (4, 2, i64::MAX)
        );
        assert_eq!(
            (
                state.applied_sequence,
                state.duplicate_events,
                state.id_conflicts
            ),
            (2, 2, 1)
        );
        assert_eq!(state.ids.get("y").map(|record| record.sequence), Some(2));
        assert!(state.ids.contains("w"));
        let before = state.clone();
        assert!(state.apply_batch(2, &batch, 5, bounds).already_applied);
        assert!(state.apply_batch(1, &batch, 5, bounds).already_applied);
        assert_eq!(state, before, "a redelivered message changes nothing");
    }

    #[test]
    fn redelivery_is_not_applied_twice() {
        let mut state = PartitionState::default();
        assert_eq!(state.apply(1, &Event::new("a", 5)), Applied::Applied);
        assert_eq!(state.apply(2, &Event::new("a", 7)), Applied::Applied);
        assert_eq!(state.apply(2, &Event::new("a", 7)), Applied::AlreadyApplied);
        assert_eq!(state.apply(1, &Event::new("a", 5)), Applied::AlreadyApplied);
        assert_eq!(state.balance("a"), 12);
        assert_eq!(state.applied_sequence, 2);
    }

    // Proves an overflowing amount leaves the balance unchanged, is counted, and still moves
    // the sequence on (it will not be retried on replay).
    // Proves a client id is applied once however often the stream holds it, and that the
    // bounds forget ids by stream time and by count (the oldest first).
    #[test]
    fn a_client_id_is_applied_once_within_its_bounds() {
        let bounds = IdBounds {
            window: Duration::from_secs(10),
            max_ids: 2,
        };
        let id = |id, stored_at_ms| Some(ClientId { id, stored_at_ms });
        let mut state = PartitionState::default();
        let event = Event::new("a", 5);
        assert_eq!(
            state.apply_identified(1, &event, id("x", 0), bounds),
            Applied::Applied
        );
        assert_eq!(
            state.apply_identified(2, &event, id("x", 1_000), bounds),
            Applied::Duplicate
        );
        assert_eq!(state.balance("a"), 5);
        assert_eq!((state.applied_sequence, state.duplicate_events), (2, 1));
        // 11 s later (stream time) "x" is forgotten: a resend then is applied.
        state.apply_identified(3, &event, id("y", 11_001), bounds);
        assert!(!state.ids.contains("x") && state.ids.contains("y"));
        state.apply_identified(4, &event, id("z", 11_002), bounds);
        state.apply_identified(5, &event, id("w", 11_003), bounds);
        assert!(
            !state.ids.contains("y"),
            "count bound: the oldest goes first"
        );
        assert_eq!(state.ids.len(), 2);
        let json = serde_json::to_string(&state).expect("serializes");
        let back: PartitionState = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, state, "ids survive the snapshot");
        let old: PartitionState =
            serde_json::from_str(r#"{"applied_sequence":1,"balances":{},"overflowed_events":0}"#)
                .expect("a snapshot written before ids");
        assert!(old.ids.is_empty());
    }

    // Proves the owner tells a resend from a reuse of its id: the same user and amount is a
    // duplicate, another amount or user an id conflict (counted, not applied, sequence moved
    // on), and the lookup a front door asks for says which, or what the partition applied
    // and has forgotten when it does not know the id.
    #[test]
    fn a_reused_id_with_another_user_or_amount_is_a_counted_conflict() {
        let bounds = IdBounds {
            window: Duration::from_secs(10),
            max_ids: 2,
        };
        let id = |id, stored_at_ms| Some(ClientId { id, stored_at_ms });
        let mut state = PartitionState::default().loaded();
        state.apply_identified(1, &Event::new("a", 5), id("x", 0), bounds);
        assert_eq!(
            state.apply_identified(2, &Event::new("a", 6), id("x", 1), bounds),
            Applied::IdConflict(ConflictField::Amount)
        );
        assert_eq!(
            state.apply_identified(3, &Event::new("b", 5), id("x", 2), bounds),
            Applied::IdConflict(ConflictField::User)
        );
        assert_eq!(
            state.apply_identified(4, &Event::new("a", 5), id("x", 3), bounds),
            Applied::Duplicate
        );
        assert_eq!((state.balance("a"), state.balance("b")), (5, 0));
        assert_eq!((state.id_conflicts, state.duplicate_events), (2, 1));
        assert_eq!(state.applied_sequence, 4);
        assert_eq!(
            state.lookup_id("x"),
            IdLookup::Known(Some(EventDigest::of(&Event::new("a", 5))))
        );
        assert_eq!(
            state.lookup_id("y"),
            IdLookup::Unknown {
                applied_sequence: 4,
                forgotten_through: 0
            }
        );
        // Two more ids push "x" (sequence 1) out: the lookup says ids up to 1 are forgotten.
        state.apply_identified(5, &Event::new("a", 1), id("y", 4), bounds);
        state.apply_identified(6, &Event::new("a", 1), id("z", 5), bounds);
        assert_eq!(
            state.lookup_id("x"),
            IdLookup::Unknown {
                applied_sequence: 6,
                forgotten_through: 1
            }
        );
        let json = serde_json::to_string(&state).expect("serializes");
        let back: PartitionState = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(
            back.loaded(),
            state,
            "digests and the horizon survive the snapshot"
        );
    }

    // Proves a snapshot written before digests loads: its ids are known without a digest
    // (a resend is a duplicate, never a conflict), and everything up to its last sequence
    // counts as possibly forgotten.
    #[test]
    fn a_snapshot_without_digests_loads_conservatively() {
        let old: PartitionState = serde_json::from_str(
            r#"{"applied_sequence":9,"balances":{"a":5},"overflowed_events":0,"ids":[["x",0]]}"#,
        )
        .expect("an older snapshot");
        let state = old.loaded();
        assert_eq!(state.lookup_id("x"), IdLookup::Known(None));
        assert_eq!(
            state.lookup_id("y"),
            IdLookup::Unknown {
                applied_sequence: 9,
                forgotten_through: 9
            }
        );
        let mut state = state;
        let resend = Some(ClientId {
            id: "x",
            stored_at_ms: 1,
        });
        assert_eq!(
            state.apply_identified(10, &Event::new("b", 7), resend, IdBounds::default()),
            Applied::Duplicate
        );
        let json = serde_json::to_string(&state).expect("serializes");
        let back: PartitionState = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.lookup_id("x"), IdLookup::Known(None), "still bare");
    }

    // Proves a page: users after the cursor (bytes), sorted, at most `limit`.
    #[test]
    fn a_page_is_sorted_after_the_cursor() {
        let mut state = PartitionState::default();
        for (sequence, user) in ["d", "a", "c", "b"].into_iter().enumerate() {
            state.apply(sequence as u64 + 1, &Event::new(user, 1));
        }
        let users =
            |rows: Vec<(String, i64)>| rows.into_iter().map(|(user, _)| user).collect::<Vec<_>>();
        assert_eq!(users(state.page(None, 3)), ["a", "b", "c"]);
        assert_eq!(users(state.page(Some(b"b"), 10)), ["c", "d"]);
        assert!(state.page(Some(b"d"), 10).is_empty());
        // A cursor that is not UTF-8 ("b" then a lone continuation byte) sits after "b".
        assert_eq!(users(state.page(Some(b"b\x80"), 10)), ["c", "d"]);
        assert_eq!(users(state.page(Some(b"\xff"), 10)), Vec::<String>::new());
    }

    #[test]
    fn overflow_is_counted_not_applied() {
        let mut state = PartitionState::default();
        state.apply(1, &Event::new("a", i64::MAX));
        assert_eq!(state.apply(2, &Event::new("a", 1)), Applied::Overflowed);
        assert_eq!(state.balance("a"), i64::MAX);
        assert_eq!(state.overflowed_events, 1);
        assert_eq!(state.applied_sequence, 2);
    }
}
