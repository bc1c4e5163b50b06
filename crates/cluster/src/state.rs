//! A partition's balances as a function of its events in stream order, applied exactly once.
//!
//! Invariant: `applied_sequence` is the stream sequence of the last event folded into
//! `balances`; an event at or below it is already in the balances and is skipped, so a
//! redelivery, a replay from an older snapshot, or a consumer restarted mid-batch never applies
//! an event twice. Sequences only grow (JetStream assigns them in stream order).

use std::collections::HashMap;

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
    pub fn skip(&mut self, sequence: u64) {
        self.applied_sequence = self.applied_sequence.max(sequence);
    }

    /// The balance of `user` (0 when the partition has never seen the user).
    pub fn balance(&self, user: &str) -> i64 {
        self.known_balance(user).unwrap_or(0)
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
