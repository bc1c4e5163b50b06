//! A page of one partition's balances, before and after the ordered index, on a partition of
//! 1,000,000 users, in one run (`cargo bench -p floodgate-cluster --bench page`):
//!
//! - `sorted_scan`: the first way (balances in a `HashMap`; every page request filters the
//!   users after the cursor and sorts them), copied here as it was;
//! - `ordered_map`: the balances in a `BTreeMap` (commit 246b7e8), copied here;
//! - `hash_and_ordered_set`: [`PartitionState`] now (a `HashMap` for the balances and a
//!   `BTreeSet` of the users beside it, see `balances.rs`).
//!
//! And what each costs the owner's apply (an event for an existing user, in scattered order).
//! Compare ratios within one run; the machine is shared.

use std::collections::{BTreeMap, HashMap};
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

/// The `BTreeMap` page, as it was: a seek and `limit` steps.
fn ordered_map_page(
    balances: &BTreeMap<String, i64>,
    after: &str,
    limit: usize,
) -> Vec<(String, i64)> {
    use std::ops::Bound;
    balances
        .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
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
        .map(|(user, balance)| (user.to_owned(), balance))
        .collect();
    let ordered: BTreeMap<String, i64> = hashed.clone().into_iter().collect();
    let cursor = user(USERS / 2);
    let page = state.page(Some(cursor.as_bytes()), PAGE_ROWS);
    assert_eq!(
        sorted_scan(&hashed, Some(cursor.as_bytes()), PAGE_ROWS),
        page
    );
    assert_eq!(
        ordered_map_page(&ordered, &cursor, PAGE_ROWS),
        page,
        "the same page every way"
    );
    let mut group = criterion.benchmark_group("page_1m_users");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("sorted_scan", |bencher| {
        bencher.iter(|| black_box(sorted_scan(&hashed, Some(cursor.as_bytes()), PAGE_ROWS)));
    });
    group.bench_function("ordered_map", |bencher| {
        bencher.iter(|| black_box(ordered_map_page(&ordered, &cursor, PAGE_ROWS)));
    });
    group.bench_function("hash_and_ordered_set", |bencher| {
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
        .map(|(user, balance)| (user.to_owned(), balance))
        .collect();
    let mut ordered: BTreeMap<String, i64> = hashed.clone().into_iter().collect();
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
    group.bench_function("ordered_map", |bencher| {
        bencher.iter_batched(
            || {
                offset += APPLY_BATCH;
                scattered_users(offset)
            },
            |events| {
                for event in &events {
                    if let Some(balance) = ordered.get_mut(event.user.as_str())
                        && let Some(sum) = balance.checked_add(event.amount)
                    {
                        *balance = sum;
                    }
                }
            },
            BatchSize::LargeInput,
        );
    });
    let mut sequence = USERS as u64;
    group.bench_function("hash_and_ordered_set", |bencher| {
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
