//! Checking the ids of a batch against the dedup window, all or none claimed at a time.
//!
//! Lesson: a batch holds many ids, and two batches may share some. Waiting for an id in
//! flight while holding claims of our own could deadlock two batches waiting on each other,
//! so a batch never waits holding a claim: when it meets an id in flight it frees what it
//! claimed, waits for that id to settle, and starts over.
//!
//! Invariant: [`claim_all`] returns one [`IdCheck`] per event, in order; every
//! [`IdCheck::Claimed`] is a live claim the caller must settle; an id repeated inside the
//! batch is claimed once, and its later copies follow the first copy's outcome.

use crate::dedup::{Claim, IdKey, Verdict, Window};
use crate::engine::{EventOutcome, Ingested, Rejected};
use crate::event::Event;
use crate::ledger::user_hash;

/// What the window said about one event of a batch.
#[derive(Debug)]
pub enum IdCheck {
    /// No id: admitted as any event.
    Anonymous,
    /// A fresh id, claimed for this event.
    Claimed(Claim),
    /// Decided without admitting: a duplicate or a conflict.
    Decided(EventOutcome),
    /// The same id (same user and amount) as the event at this earlier index of the batch:
    /// its outcome is that event's.
    SameAs(usize),
}

/// Checks and claims every id of `events`, waiting (holding no claim) for ids in flight.
pub async fn claim_all(window: &Window, events: &[Event]) -> Vec<IdCheck> {
    if events.iter().all(|event| event.id.is_none()) {
        return events.iter().map(|_| IdCheck::Anonymous).collect();
    }
    loop {
        match try_claim_all(window, events) {
            Ok(checks) => return checks,
            Err((key, hash, amount)) => {
                if let Verdict::Fresh(claim) = window.settled(key, hash, amount).await {
                    // Free now: the next pass claims it again, in batch order.
                    window.release(claim);
                }
            }
        }
    }
}

/// One pass: `Err` names an id in flight elsewhere (every claim of this pass freed).
fn try_claim_all(window: &Window, events: &[Event]) -> Result<Vec<IdCheck>, (IdKey, u64, i64)> {
    let mut first_of: rustc_hash::FxHashMap<IdKey, (usize, u64, i64)> =
        rustc_hash::FxHashMap::default();
    let mut checks = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let Some(id) = &event.id else {
            checks.push(IdCheck::Anonymous);
            continue;
        };
        let key = window.key(id);
        let hash = user_hash(&event.user);
        if let Some(&(first, first_hash, first_amount)) = first_of.get(&key) {
            checks.push(repeated(
                first,
                (first_hash, first_amount),
                (hash, event.amount),
            ));
            continue;
        }
        match window.check(key, hash, event.amount) {
            Verdict::Fresh(claim) => {
                first_of.insert(key, (index, hash, event.amount));
                checks.push(IdCheck::Claimed(claim));
            }
            Verdict::Duplicate => checks.push(IdCheck::Decided(Ok(Ingested::Duplicate))),
            Verdict::Conflict(field) => {
                checks.push(IdCheck::Decided(Err(Rejected::IdConflict(field))));
            }
            Verdict::InFlight => {
                for check in checks {
                    if let IdCheck::Claimed(claim) = check {
                        window.release(claim);
                    }
                }
                return Err((key, hash, event.amount));
            }
        }
    }
    Ok(checks)
}

/// A later copy of an id already met in this batch.
fn repeated(
    first: usize,
    (first_hash, first_amount): (u64, i64),
    (hash, amount): (u64, i64),
) -> IdCheck {
    use crate::dedup::ConflictField;
    if hash != first_hash {
        IdCheck::Decided(Err(Rejected::IdConflict(ConflictField::User)))
    } else if amount != first_amount {
        IdCheck::Decided(Err(Rejected::IdConflict(ConflictField::Amount)))
    } else {
        IdCheck::SameAs(first)
    }
}
