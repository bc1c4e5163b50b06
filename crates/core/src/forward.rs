//! An engine that keeps no ledger of its own: it checks ids and counts like any engine, then
//! hands each accepted event to a [`Forward`] (the cluster's replicated stream), and answers
//! once that says the event is stored.
//!
//! Lesson: the HTTP routes talk to one door ([`crate::Engine::submit`] and
//! [`crate::Engine::submit_batch`]) whether the events are applied here or stored elsewhere;
//! only the engine's processor differs. The engine never knows what is behind the trait (the
//! cluster crate depends on this one, never the reverse).
//!
//! Invariant: a forwarded event is answered accepted only after [`Forward`] said `Stored` or
//! `Duplicate` (the store's acknowledgement); every refusal names its [`Rejected`] reason and
//! frees the event's id, so a retry with the same id is safe (the store deduplicates it).

use std::future::Future;
use std::pin::Pin;

use crate::engine::Rejected;
use crate::event::Event;

/// A forward in progress (boxed: the trait is used as an object).
pub type Forwarding<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the store answered for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Stored now (acknowledged by the store).
    Stored,
    /// The store already had this event's id: nothing new stored.
    Duplicate,
}

/// Where a forwarding engine sends the events it accepts.
pub trait Forward: Send + Sync + std::fmt::Debug {
    /// Stores one event (its id, when it has one, is the store's deduplication key) and waits
    /// for the acknowledgement. `Err` is [`Rejected::QueueFull`] (nothing stored) or
    /// [`Rejected::Unreachable`] (maybe stored; a retry with the same id is safe).
    fn forward<'a>(&'a self, event: &'a Event) -> Forwarding<'a, Result<Forwarded, Rejected>>;

    /// Stores every event of a batch, one answer per event in order; a store that can, stores
    /// all of them or none (then every answer is the same refusal).
    fn forward_batch<'a>(
        &'a self,
        events: &'a [Event],
    ) -> Forwarding<'a, Vec<Result<Forwarded, Rejected>>>;

    /// The most events [`Forward::forward_batch`] stores all-or-nothing (`None`: no bound).
    fn batch_max_events(&self) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::EngineConfig;
    use crate::engine::{Engine, Ingested};
    use crate::event::EventId;

    /// A store that answers from a script (then `Stored`), and records what it was sent.
    #[derive(Debug, Default)]
    struct ScriptedStore {
        answers: Mutex<Vec<Result<Forwarded, Rejected>>>,
        sent: Mutex<Vec<Event>>,
    }

    impl ScriptedStore {
        fn answer(&self, event: &Event) -> Result<Forwarded, Rejected> {
            self.sent.lock().expect("sent").push(event.clone());
            let mut answers = self.answers.lock().expect("answers");
            if answers.is_empty() {
                Ok(Forwarded::Stored)
            } else {
                answers.remove(0)
            }
        }
    }

    impl Forward for ScriptedStore {
        fn forward<'a>(&'a self, event: &'a Event) -> Forwarding<'a, Result<Forwarded, Rejected>> {
            Box::pin(async move { self.answer(event) })
        }

        fn forward_batch<'a>(
            &'a self,
            events: &'a [Event],
        ) -> Forwarding<'a, Vec<Result<Forwarded, Rejected>>> {
            Box::pin(async move { events.iter().map(|event| self.answer(event)).collect() })
        }
    }

    fn with_id(user: &str, amount: i64, id: &str) -> Event {
        Event::new(user, amount).with_id(EventId::parse(id).expect("id"))
    }

    fn start(answers: Vec<Result<Forwarded, Rejected>>) -> (Engine, std::sync::Arc<ScriptedStore>) {
        let store = std::sync::Arc::new(ScriptedStore {
            answers: Mutex::new(answers),
            ..ScriptedStore::default()
        });
        let engine =
            Engine::start_forwarding(EngineConfig::production(), store.clone()).expect("engine");
        (engine, store)
    }

    // Proves the forwarding door: accepted only on the store's answer; a refused event's id
    // stays free (its resend is forwarded again and accepted); an id the engine remembers is a
    // duplicate without a second forward, and with another amount a conflict; the store's
    // duplicate is the engine's duplicate; refusals are counted by reason.
    #[tokio::test]
    async fn events_are_accepted_on_the_store_answer_and_ids_follow_it() {
        let (engine, store) = start(vec![
            Err(Rejected::Unreachable),
            Ok(Forwarded::Stored),
            Ok(Forwarded::Duplicate),
        ]);
        let refused = engine
            .submit(with_id("a", 5, "e1"))
            .await
            .expect_err("refused");
        assert_eq!(refused.reason, Rejected::Unreachable);
        assert_eq!(
            engine.submit(with_id("a", 5, "e1")).await,
            Ok(Ingested::Queued)
        );
        assert_eq!(
            engine.submit(with_id("a", 5, "e1")).await,
            Ok(Ingested::Duplicate)
        );
        let conflict = engine
            .submit(with_id("a", 6, "e1"))
            .await
            .expect_err("conflict");
        assert!(matches!(conflict.reason, Rejected::IdConflict(_)));
        assert_eq!(
            engine.submit(with_id("b", 1, "e2")).await,
            Ok(Ingested::Duplicate)
        );
        assert_eq!(
            store.sent.lock().expect("sent").len(),
            3,
            "e1 twice, e2 once"
        );
        let stats = engine.stats();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.duplicate, 2);
        assert_eq!(
            stats.rejected_by_reason.get("cluster_unreachable"),
            Some(&1)
        );
        assert_eq!(
            engine.queue_capacity_events(),
            EngineConfig::production().queue_capacity_events
        );
        let summary = engine.shutdown().await;
        assert_eq!((summary.accepted, summary.applied), (1, 0));
    }

    // Proves a batch: one forward for the events with fresh ids (a repeat inside the batch is
    // sent once and follows its first copy); a batch the store refuses entirely for one reason
    // is refused whole, a partly refused one reports each event, and refused ids stay free.
    #[tokio::test]
    async fn batches_are_forwarded_once_and_refused_whole_only_when_nothing_was_stored() {
        let (engine, store) = start(vec![
            Err(Rejected::QueueFull),
            Err(Rejected::QueueFull),
            Ok(Forwarded::Stored),
            Err(Rejected::QueueFull),
        ]);
        let batch = || {
            vec![
                with_id("a", 1, "x"),
                with_id("a", 1, "x"),
                with_id("b", 2, "y"),
            ]
        };
        let refused = engine.submit_batch(vec![with_id("a", 1, "x"), with_id("b", 2, "y")]);
        assert_eq!(refused.await, Err(Rejected::QueueFull));
        let outcomes = engine.submit_batch(batch()).await.expect("partly stored");
        assert_eq!(
            outcomes,
            vec![
                Ok(Ingested::Queued),
                Ok(Ingested::Queued),
                Err(Rejected::QueueFull)
            ]
        );
        let again = engine.submit_batch(batch()).await.expect("y stored now");
        assert_eq!(
            again,
            vec![
                Ok(Ingested::Duplicate),
                Ok(Ingested::Duplicate),
                Ok(Ingested::Queued)
            ]
        );
        assert_eq!(
            store.sent.lock().expect("sent").len(),
            5,
            "2 + 2 + 1 forwards"
        );
    }
}
