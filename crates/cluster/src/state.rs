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
//! rather than applied twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use floodgate_core::Event;
use serde::{Deserialize, Serialize};

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
}

/// How long, and how many, client ids a partition remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdBounds {
    /// Ids stored longer ago than this (stream time) are forgotten.
    pub window: Duration,
    /// Most ids remembered per partition (the oldest are forgotten first); each costs about
    /// its length plus 30 bytes in every snapshot of the partition.
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

/// The client ids a partition applied, oldest first, with the stream time (unix ms) each was
/// stored at. Serialized as that list; the lookup set is rebuilt on load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedIds {
    order: VecDeque<(String, u64)>,
    known: HashSet<String>,
}

impl AppliedIds {
    /// Whether `id` was applied (and not forgotten yet).
    pub fn contains(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Remembers `id`, stored at `stored_at_ms`, then forgets what `bounds` no longer keep.
    fn remember(&mut self, id: &str, stored_at_ms: u64, bounds: IdBounds) {
        if self.known.insert(id.to_owned()) {
            self.order.push_back((id.to_owned(), stored_at_ms));
        }
        let window_ms = u64::try_from(bounds.window.as_millis()).unwrap_or(u64::MAX);
        while let Some((oldest, at)) = self.order.front() {
            let expired = at.saturating_add(window_ms) < stored_at_ms;
            if !expired && self.order.len() <= bounds.max_ids {
                break;
            }
            self.known.remove(oldest);
            self.order.pop_front();
        }
    }
}

impl Serialize for AppliedIds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.order.iter())
    }
}

impl<'de> Deserialize<'de> for AppliedIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let order: VecDeque<(String, u64)> = VecDeque::deserialize(deserializer)?;
        let known = order.iter().map(|(id, _)| id.clone()).collect();
        Ok(Self { order, known })
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
    /// Balance per user of the partition.
    pub balances: HashMap<String, i64>,
    /// Events whose amount would have overflowed the balance (not applied).
    pub overflowed_events: u64,
    /// Client ids applied recently (see [`IdBounds`]).
    #[serde(default)]
    pub ids: AppliedIds,
    /// Events skipped because their client id was applied before.
    #[serde(default)]
    pub duplicate_events: u64,
}

impl PartitionState {
    /// Folds the event stored at `sequence` into the balances, once.
    pub fn apply(&mut self, sequence: u64, event: &Event) -> Applied {
        if sequence <= self.applied_sequence {
            return Applied::AlreadyApplied;
        }
        self.applied_sequence = sequence;
        let balance = self.balances.entry(event.user.clone()).or_insert(0);
        if let Some(sum) = balance.checked_add(event.amount) {
            *balance = sum;
            Applied::Applied
        } else {
            self.overflowed_events += 1;
            Applied::Overflowed
        }
    }

    /// Moves past a stream sequence whose message is not an event of ours (undecodable):
    /// nothing to apply, but it must not stop the partition.
    /// [`Self::apply`] for an event that carries a client id: skipped (counted duplicate) when
    /// the id was applied before, else applied and the id remembered within `bounds`.
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
        if self.ids.contains(client_id.id) {
            self.applied_sequence = sequence;
            self.duplicate_events += 1;
            return Applied::Duplicate;
        }
        let applied = self.apply(sequence, event);
        self.ids
            .remember(client_id.id, client_id.stored_at_ms, bounds);
        applied
    }

    pub fn skip(&mut self, sequence: u64) {
        self.applied_sequence = self.applied_sequence.max(sequence);
    }

    /// The balance of `user` (0 when the partition has never seen the user).
    pub fn balance(&self, user: &str) -> i64 {
        self.known_balance(user).unwrap_or(0)
    }

    /// Up to `limit` balances of users after `after` (compared as bytes), sorted by user.
    /// Costs a scan of the partition's users (no ordered index here).
    pub fn page(&self, after: Option<&[u8]>, limit: usize) -> Vec<(String, i64)> {
        let mut rows: Vec<(&String, &i64)> = self
            .balances
            .iter()
            .filter(|(user, _)| after.is_none_or(|after| user.as_bytes() > after))
            .collect();
        rows.sort_unstable_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
        rows.into_iter()
            .take(limit)
            .map(|(user, balance)| (user.clone(), *balance))
            .collect()
    }

    /// The balance of `user`, `None` if no event of theirs was applied.
    pub fn known_balance(&self, user: &str) -> Option<i64> {
        self.balances.get(user).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves an event delivered again (same or lower sequence) is not applied again.
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
