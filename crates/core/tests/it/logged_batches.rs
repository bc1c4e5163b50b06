//! Batches through the log: room for a whole batch is taken at once or not at all, also when
//! many batches race for the last room, and every batch answered is applied in full.

use std::io;
use std::sync::{Arc, Condvar, Mutex};

use floodgate_core::{
    DurabilityMode, DurableOptions, Engine, EngineConfig, Event, Ingested, LedgerStrategy, Rejected,
};
use floodgate_store::fault::FaultStorage;
use floodgate_store::{Storage, StorageFile};

/// Queue bound of the engine under test, in events.
const CAPACITY_EVENTS: usize = 64;
/// Batches racing for the room.
const BATCHES: usize = 24;
/// Events per batch: 64 is not a multiple, so the last room is always contested.
const BATCH_EVENTS: usize = 10;

/// A closed gate holds every append to the log until it opens, so the log writer keeps the
/// events it took (they stay counted against the queue bound) while submitters race.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate") = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let closed = self.closed.lock().expect("gate");
        drop(
            self.opened
                .wait_while(closed, |closed| *closed)
                .expect("gate"),
        );
    }
}

/// The in-memory storage double, with its appends held by a [`Gate`].
#[derive(Debug)]
struct GatedStorage {
    inner: FaultStorage,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.create(name)?;
        let gate = Arc::clone(&self.gate);
        Ok(Box::new(GatedFile { inner, gate }))
    }
    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.open_append(name)?;
        let gate = Arc::clone(&self.gate);
        Ok(Box::new(GatedFile { inner, gate }))
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }
}

impl StorageFile for GatedFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.gate.pass();
        self.inner.append(bytes)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        self.inner.truncate(length_bytes)
    }
    fn length_bytes(&self) -> u64 {
        self.inner.length_bytes()
    }
}

/// Rounds of the race: the window a racing pair must hit is a few instructions wide.
const ROUNDS: usize = 100;

/// Batch `number` of `round`: [`BATCH_EVENTS`] events of its own user, amounts 1..=10 (sum
/// 55).
fn batch(round: usize, number: usize) -> Vec<Event> {
    (1..=i64::try_from(BATCH_EVENTS).expect("small"))
        .map(|amount| Event::new(user(round, number), amount))
        .collect()
}

fn user(round: usize, number: usize) -> String {
    format!("r{round}-b{number}")
}

/// Polls the engine's counters until `events` events were decided in all; the counters.
async fn decided(engine: &Engine, events: u64) -> floodgate_core::Stats {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = engine.stats();
        if stats.accepted + stats.rejected >= events {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// One round: the log held, [`BATCHES`] batches race for the room; the numbers answered.
async fn race(engine: &Engine, gate: &Gate, round: usize) -> Vec<usize> {
    let before = engine.stats();
    gate.set_closed(true);
    let barrier = Arc::new(tokio::sync::Barrier::new(BATCHES));
    let tasks: Vec<_> = (0..BATCHES)
        .map(|number| {
            let (engine, barrier) = (engine.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                engine.submit_batch(batch(round, number)).await
            })
        })
        .collect();
    let total = before.accepted + before.rejected + (BATCHES * BATCH_EVENTS) as u64;
    let stats = decided(engine, total).await;
    let admitted = stats.accepted - before.accepted;
    assert!(
        admitted <= CAPACITY_EVENTS as u64,
        "round {round}: {admitted} events admitted past a bound of {CAPACITY_EVENTS}"
    );
    assert_eq!(
        admitted % BATCH_EVENTS as u64,
        0,
        "round {round}: a batch split"
    );
    gate.set_closed(false);
    let mut answered = Vec::new();
    for (number, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(outcomes) => {
                assert!(
                    outcomes
                        .iter()
                        .all(|outcome| *outcome == Ok(Ingested::Queued))
                );
                answered.push(number);
            }
            Err(reason) => assert_eq!(reason, Rejected::QueueFull),
        }
    }
    assert!(!answered.is_empty() && answered.len() < BATCHES);
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_batches_take_all_their_room_or_none_and_every_answered_one_is_applied() {
    // Proves, with the log writer held (so nothing leaves the bound while they race), that 24
    // concurrent batches of 10 against a bound of 64 events admit at most 64 events, each
    // batch whole or not at all (503 queue_full with nothing applied), 100 rounds over; and,
    // once the log moves again, that every batch answered is applied in full through the
    // per-lane hand-over to two owned lanes: nothing answered is lost, nothing refused is
    // applied.
    let gate = Arc::new(Gate::default());
    let storage = GatedStorage {
        inner: FaultStorage::new(),
        gate: Arc::clone(&gate),
    };
    let directory = tempfile::tempdir().expect("temp dir");
    let options = DurableOptions {
        storage: Some(Arc::new(storage)),
        ..DurableOptions::new(directory.path(), DurabilityMode::Fsync)
    };
    let config = EngineConfig {
        workers: 2,
        strategy: LedgerStrategy::Owned,
        queue_capacity_events: CAPACITY_EVENTS,
        ..EngineConfig::production()
    };
    let engine = Engine::start_durable(config, &options).expect("start");
    let mut answered = Vec::new();
    for round in 0..ROUNDS {
        answered.push(race(&engine, &gate, round).await);
        // Let the round drain, so the next one starts from an empty bound.
        while engine.stats().applied < engine.stats().accepted {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    engine.shutdown().await;
    for (round, answered) in answered.iter().enumerate() {
        for number in 0..BATCHES {
            let expected = answered.contains(&number).then_some(55);
            assert_eq!(engine.balance(&user(round, number)), expected);
        }
    }
}
