//! Criterion micro-benchmarks of the engine's parts: ledger apply per strategy,
//! queue push + pop per queue kind, and event parsing. Kept short (about 1.5 s per case) so
//! `cargo bench -p floodgate-core` finishes in a couple of minutes on a 2-core machine.
//! End-to-end throughput (queue + workers + ledger) is `examples/engine_throughput.rs`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use floodgate_core::config::{LedgerStrategy, QueueKind};
use floodgate_core::event::parse_event;
use floodgate_core::ledger::{Ledger, user_hash};
use floodgate_core::queue::{self, Job};

/// Events per measured batch (amortizes criterion's per-iteration overhead).
const BATCH: usize = 4096;
/// Distinct users already in the ledger (the "many users" case).
const USERS: usize = 100_000;

fn users(count: usize, offset: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("user{}", (offset + index * 7919) % USERS))
        .collect()
}

fn ledger_apply(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ledger_apply_100k_users");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (strategy, shards) in [
        (LedgerStrategy::Global, 1),
        (LedgerStrategy::Sharded, 64),
        (LedgerStrategy::Owned, 2),
    ] {
        let ledger = Ledger::new(shards);
        for user in users(USERS, 0) {
            ledger.apply(user, 1).expect("no overflow");
        }
        let mut offset = 0;
        group.bench_function(strategy.as_str(), |bencher| {
            bencher.iter_batched(
                || {
                    offset += BATCH;
                    users(BATCH, offset)
                        .into_iter()
                        .map(job)
                        .collect::<Vec<_>>()
                },
                |batch| {
                    // One lock per run of same-shard events, as the workers' fast path does.
                    let mut jobs = batch.into_iter();
                    while jobs.len() > 0 {
                        black_box(ledger.apply_batch(jobs.by_ref().take(256), |_, _| {}));
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// Two threads applying at once, one lock acquisition per run of same-shard jobs (at most 256)
/// like the workers: what the lock strategy costs under contention (global: one lock for both
/// threads; sharded: 64 locks; owned: each thread only touches its own shard). Each thread
/// builds its own jobs before a barrier, so the timing holds no cross-thread frees.
fn ledger_apply_contended(criterion: &mut Criterion) {
    const THREADS: usize = 2;
    // Enough events per iteration that spawning the two threads (~50 µs) is small beside them.
    const EVENTS: usize = 4 * BATCH;
    let mut group = criterion.benchmark_group("ledger_apply_2_threads_100k_users");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (strategy, shards) in [
        (LedgerStrategy::Global, 1),
        (LedgerStrategy::Sharded, 64),
        (LedgerStrategy::Owned, THREADS),
    ] {
        let ledger = Ledger::new(shards);
        for user in users(USERS, 0) {
            ledger.apply(user, 1).expect("no overflow");
        }
        let owned = strategy == LedgerStrategy::Owned;
        group.bench_function(strategy.as_str(), |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for iteration in 0..iterations {
                    let offset = iteration as usize * EVENTS;
                    total += contended_round(&ledger, THREADS, offset, EVENTS, owned);
                }
                total
            });
        });
    }
    group.finish();
}

/// One timed round: `threads` threads each build their share of `events` jobs, meet at a
/// barrier, then apply; returns the time from the barrier to the last thread's end.
fn contended_round(
    ledger: &Ledger,
    threads: usize,
    offset: usize,
    events: usize,
    owned: bool,
) -> Duration {
    let barrier = std::sync::Barrier::new(threads + 1);
    let mut started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let jobs: Vec<(u64, String)> = users(events, offset)
                    .into_iter()
                    .enumerate()
                    .map(|(index, user)| (index, user_hash(&user), user))
                    .filter(|(index, hash, _)| {
                        let part = if owned {
                            ledger.shard_for(*hash)
                        } else {
                            index % threads
                        };
                        part == thread
                    })
                    .map(|(_, hash, user)| (hash, user))
                    .collect();
                barrier.wait();
                apply_in_batches(ledger, jobs);
            });
        }
        barrier.wait();
        started = std::time::Instant::now();
    });
    started.elapsed()
}

/// The workers' fast path: per batch of 256, one lock per run of same-shard jobs.
fn apply_in_batches(ledger: &Ledger, jobs: Vec<(u64, String)>) {
    let mut jobs = jobs.into_iter().map(|(hash, user)| Job::new(user, 1, hash));
    while jobs.len() > 0 {
        black_box(ledger.apply_batch(jobs.by_ref().take(256), |_, _| {}));
    }
}

/// A job of one unit for `user`.
fn job(user: String) -> Job {
    let hash = user_hash(&user);
    Job::new(user, 1, hash)
}

fn queue_push_pop(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = criterion.benchmark_group("queue_push_pop");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, kind, owned) in [
        ("mpmc_async_channel", QueueKind::Mpmc, false),
        ("shared_receiver_mutex", QueueKind::SharedReceiver, false),
        ("owned_lane_tokio_mpsc", QueueKind::Mpmc, true),
    ] {
        let (admission, mut consumers) = queue::build(kind, BATCH, 1, owned);
        let mut consumer = consumers.pop().expect("one consumer");
        let mut batch = Vec::with_capacity(256);
        group.bench_function(name, |bencher| {
            bencher.iter_batched(
                || users(BATCH, 0).into_iter().map(job).collect::<Vec<_>>(),
                |jobs| {
                    for job in jobs {
                        assert!(admission.try_push(job).is_ok(), "capacity is BATCH");
                    }
                    runtime.block_on(async {
                        let mut received = 0;
                        while received < BATCH {
                            received += consumer.recv_batch(&mut batch, 256).await;
                            batch.clear();
                        }
                    });
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn event_parse(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("event_parse");
    group.throughput(Throughput::Elements(1));
    let cases: [(&str, &[u8]); 4] = [
        ("valid", br#"{"user":"user12345","amount":250}"#),
        (
            "valid_escaped",
            br#"{"user":"us\u00e9r12345","amount":-250}"#,
        ),
        ("invalid_amount", br#"{"user":"user12345","amount":2.5}"#),
        ("truncated", br#"{"user":"user12345","amou"#),
    ];
    for (name, body) in cases {
        group.bench_function(name, |bencher| {
            bencher.iter(|| black_box(parse_event(black_box(body))));
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = short();
    targets = ledger_apply, ledger_apply_contended, queue_push_pop, event_parse
}
criterion_main!(benches);
