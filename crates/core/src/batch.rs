//! Checking the ids of a batch against the dedup window, all or none claimed at a time.
//!
//! Lesson: a batch holds many ids, and two batches may share some. Waiting for an id in
//! flight while holding claims of our own could deadlock two batches waiting on each other,
//! so a batch never waits holding a claim: when it meets an id in flight it frees what it
//! claimed, waits for that id to settle, and starts over. Each pass is one window lock for
//! the whole batch ([`Window::check_batch`]); the ids are hashed before it, outside the lock.
//!
//! Invariant: [`claim_all`] returns one [`IdCheck`] per event, in order; every
//! [`IdCheck::Claimed`] is a live claim the caller must settle; an id repeated inside the
//! batch is claimed once, and its later copies follow the first copy's outcome.

use crate::dedup::{BatchVerdict, Claim, IdRequest, Verdict, Window};
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

/// Checks and claims every id of `events` (one window lock per pass: see
/// [`Window::check_batch`]), waiting (holding no claim) for ids in flight elsewhere.
pub async fn claim_all(window: &Window, events: &[Event]) -> Vec<IdCheck> {
    if events.iter().all(|event| event.id.is_none()) {
        return events.iter().map(|_| IdCheck::Anonymous).collect();
    }
    // Hashed once, outside the lock: the event index and the request of each id.
    let (indices, requests): (Vec<usize>, Vec<IdRequest>) = events
        .iter()
        .enumerate()
        .filter_map(|(index, event)| {
            let id = event.id.as_ref()?;
            let request = IdRequest {
                key: window.key(id),
                user_hash: user_hash(&event.user),
                amount: event.amount,
            };
            Some((index, request))
        })
        .unzip();
    loop {
        match window.check_batch(&requests) {
            Ok(verdicts) => return checks_by_event(events.len(), &indices, verdicts),
            Err(in_flight) => {
                let request = requests[in_flight];
                let verdict = window
                    .settled(request.key, request.user_hash, request.amount)
                    .await;
                if let Verdict::Fresh(claim) = verdict {
                    // Free now: the next pass claims it again, in batch order.
                    window.release(claim);
                }
            }
        }
    }
}

/// Spreads the verdicts of the ids over the batch's events (`indices[n]`: the event of
/// verdict `n`); events without an id are [`IdCheck::Anonymous`].
fn checks_by_event(events: usize, indices: &[usize], verdicts: Vec<BatchVerdict>) -> Vec<IdCheck> {
    let mut checks: Vec<IdCheck> = (0..events).map(|_| IdCheck::Anonymous).collect();
    for (&index, verdict) in indices.iter().zip(verdicts) {
        checks[index] = match verdict {
            BatchVerdict::Fresh(claim) => IdCheck::Claimed(claim),
            BatchVerdict::Duplicate => IdCheck::Decided(Ok(Ingested::Duplicate)),
            BatchVerdict::Conflict(field) => IdCheck::Decided(Err(Rejected::IdConflict(field))),
            BatchVerdict::SameAs(first) => IdCheck::SameAs(indices[first]),
        };
    }
    checks
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::dedup::Bounds;
    use crate::event::EventId;

    fn with_id(user: &str, amount: i64, id: &str) -> Event {
        Event::new(user, amount).with_id(EventId::parse(id).expect("a valid id"))
    }

    #[tokio::test]
    async fn a_batch_waits_for_an_id_in_flight_elsewhere_holding_no_claim() {
        // Proves claim_all's waiting: a batch whose id is in flight in another request waits
        // (its other ids stay free meanwhile, so no two batches can wait on each other),
        // then answers that id by the other request's outcome: a duplicate when it was
        // kept; two equal ids inside the batch are claimed once.
        let window = Arc::new(Window::new(Bounds {
            age: Duration::from_secs(60),
            max_ids: 100,
        }));
        let busy = window.key(&EventId::parse("busy").expect("valid"));
        let Verdict::Fresh(claim) = window.check(busy, user_hash("u"), 1) else {
            panic!("fresh");
        };
        let events = vec![
            with_id("u", 1, "mine"),
            with_id("u", 1, "busy"),
            with_id("u", 1, "mine"),
            Event::new("u", 1),
        ];
        let batch = {
            let window = Arc::clone(&window);
            tokio::spawn(async move { claim_all(&window, &events).await })
        };
        tokio::task::yield_now().await;
        assert!(!batch.is_finished(), "waits for the id in flight");
        assert_eq!(window.len(), 1, "holding no claim while it waits");
        window.commit(claim);
        let checks = batch.await.expect("no panic");
        assert!(matches!(checks[0], IdCheck::Claimed(_)));
        assert!(matches!(
            checks[1],
            IdCheck::Decided(Ok(Ingested::Duplicate))
        ));
        assert!(matches!(checks[2], IdCheck::SameAs(0)));
        assert!(matches!(checks[3], IdCheck::Anonymous));
        assert_eq!(window.len(), 2);
    }
}
