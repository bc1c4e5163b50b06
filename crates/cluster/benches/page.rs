//! A page of one partition's balances, before and after the ordered index, on a partition of
//! 1,000,000 users, in one run (`cargo bench -p floodgate-cluster --bench page`):
//!
//! - `page/sorted_scan`: the old way (balances in a `HashMap`; every page request filters the
//!   users after the cursor and sorts them), copied here as it was;
//! - `page/ordered_index`: [`PartitionState::page`] (balances in a `BTreeMap`: a seek and
//!   `limit` steps).
//!
//! And what the index costs the owner's apply (an event for an existing user, in random
//! order): `apply/hash_map` (the old apply, copied) against `apply/ordered_index`
//! ([`PartitionState::apply`]).
//! Compare ratios within one run; the machine is shared.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use floodgate_cluster::PartitionState;
use floodgate_core::Event;

const USERS: usize = 1_000_000;
/// What a node asks each partition for a default page: `limit + 1` (100 + 1).
const PAGE_ROWS: usize = 101;
/// Events per measured apply batch.
const APPLY_BATCH: usize = 4096;

fn user(number: usize) -> String {
    format!("user-{number:07}")
}

/// The old page: every user after the cursor, sorted, the first `limit`.
fn sorted_scan(
    balances: &HashMap<String, i64>,
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(String, i64)> {
    let mut rows: Vec<(&String, &i64)> = balances
        .iter()
        .filter(|(user, _)| after.is_none_or(|after| user.as_bytes() > after))
        .collect();
    rows.sort_unstable_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
    rows.into_iter()
        .take(limit)
        .map(|(user, balance)| (user.clone(), *balance))
        .collect()
}

fn partition() -> PartitionState {
    let mut state = PartitionState::default();
    for number in 0..USERS {
        state.apply(number as u64 + 1, &Event::new(user(number), 1));
    }
    state
}

fn page(criterion: &mut Criterion) {
    let state = partition();
    let hashed: HashMap<String, i64> = state
        .balances
        .iter()
        .map(|(user, balance)| (user.clone(), *balance))
        .collect();
    let cursor = user(USERS / 2);
    assert_eq!(
        sorted_scan(&hashed, Some(cursor.as_bytes()), PAGE_ROWS),
        state.page(Some(cursor.as_bytes()), PAGE_ROWS),
        "the same page both ways"
    );
    let mut group = criterion.benchmark_group("page_1m_users");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("sorted_scan", |bencher| {
        bencher.iter(|| black_box(sorted_scan(&hashed, Some(cursor.as_bytes()), PAGE_ROWS)));
    });
    group.bench_function("ordered_index", |bencher| {
        bencher.iter(|| black_box(state.page(Some(cursor.as_bytes()), PAGE_ROWS)));
    });
    group.finish();
}

/// Users of existing accounts in a scattered order (a multiplicative step).
fn scattered_users(offset: usize) -> Vec<Event> {
    (0..APPLY_BATCH)
        .map(|index| Event::new(user((offset + index * 7919) % USERS), 1))
        .collect()
}

fn apply(criterion: &mut Criterion) {
    let mut state = partition();
    let mut hashed: HashMap<String, i64> = state
        .balances
        .iter()
        .map(|(user, balance)| (user.clone(), *balance))
        .collect();
    let mut group = criterion.benchmark_group("apply_1m_users");
    group.throughput(Throughput::Elements(APPLY_BATCH as u64));
    group.sample_size(20);
    let mut offset = 0;
    group.bench_function("hash_map", |bencher| {
        bencher.iter_batched(
            || {
                offset += APPLY_BATCH;
                scattered_users(offset)
            },
            |events| {
                // The old apply, as it was: the entry API (a key clone per event).
                for event in &events {
                    let balance = hashed.entry(event.user.clone()).or_insert(0);
                    if let Some(sum) = balance.checked_add(event.amount) {
                        *balance = sum;
                    }
                }
            },
            BatchSize::LargeInput,
        );
    });
    let mut sequence = USERS as u64;
    group.bench_function("ordered_index", |bencher| {
        bencher.iter_batched(
            || {
                offset += APPLY_BATCH;
                scattered_users(offset)
            },
            |events| {
                for event in &events {
                    sequence += 1;
                    black_box(state.apply(sequence, event));
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, page, apply);
criterion_main!(benches);
