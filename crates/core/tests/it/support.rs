//! What the conservation and user-limit tests share: every queued configuration, and
//! concurrent submitters that tally what the engine answered, so a test can compare the
//! engine's books with what its clients were told.

use std::collections::{HashMap, HashSet};

use floodgate_core::{Engine, EngineConfig, Event, Ingested, LedgerStrategy, QueueKind, Rejected};

/// `template` once per ledger strategy x queue kind, labelled `strategy/queue_kind`.
pub fn queued_configs(template: &EngineConfig) -> Vec<(String, EngineConfig)> {
    let mut configs = Vec::new();
    for strategy in LedgerStrategy::ALL {
        for queue_kind in [QueueKind::Mpmc, QueueKind::SharedReceiver] {
            let config = EngineConfig {
                strategy,
                queue_kind,
                ..template.clone()
            };
            configs.push((format!("{strategy}/{queue_kind}"), config));
        }
    }
    configs
}

/// What the submitters were told, summed over all of them.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events answered `Queued`.
    pub accepted: u64,
    /// Events answered `QueueFull`.
    pub queue_full: u64,
    /// Accepted amount per user.
    pub per_user: HashMap<String, i64>,
    /// Users answered `LedgerFull` at least once.
    pub refused_users: HashSet<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.queue_full += other.queue_full;
        self.refused_users.extend(other.refused_users);
        for (user, sum) in other.per_user {
            *self.per_user.entry(user).or_insert(0) += sum;
        }
    }
}

/// Runs `submitters` tasks, each offering `events_each` events (`event(submitter, index)`
/// gives the user and amount) and yielding every `yield_every` events; panics on any answer
/// other than queued, queue full or ledger full.
pub async fn submit_concurrently(
    engine: &Engine,
    submitters: u64,
    events_each: u64,
    yield_every: u64,
    event: impl Fn(u64, u64) -> (String, i64) + Clone + Send + 'static,
) -> Tally {
    let mut tasks = Vec::new();
    for submitter in 0..submitters {
        let (engine, event) = (engine.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Tally::default();
            for index in 0..events_each {
                let (user, amount) = event(submitter, index);
                match ingest(&engine, Event::new(user.clone(), amount)).await {
                    Ok(Ingested::Queued) => {
                        seen.accepted += 1;
                        *seen.per_user.entry(user).or_insert(0) += amount;
                    }
                    Err(Rejected::QueueFull) => seen.queue_full += 1,
                    Err(Rejected::LedgerFull) => {
                        seen.refused_users.insert(user);
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
                if index % yield_every == 0 {
                    tokio::task::yield_now().await;
                }
            }
            seen
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("submitter panicked"));
    }
    total
}

/// Every user's balance is the sum of its accepted amounts, and the ledger's total is their
/// sum; returns that total.
pub fn check_balances(engine: &Engine, per_user: &HashMap<String, i64>, label: &str) -> i128 {
    let mut total = 0_i128;
    for (user, sum) in per_user {
        assert_eq!(
            engine.balance(user),
            Some(*sum),
            "{label}: balance of {user}"
        );
        total += i128::from(*sum);
    }
    assert_eq!(engine.stats().balance_total, total, "{label}: total");
    total
}

/// The engine's door with the refusal reduced to its reason (what most tests compare).
pub async fn ingest(engine: &Engine, event: Event) -> Result<Ingested, Rejected> {
    engine.submit(event).await.map_err(|refused| refused.reason)
}
