//! What the ledger costs: a page of balances against the ledger's size, and memory per user.
//!
//! ```text
//! cargo run --release -p floodgate-core --example ledger_cost --features mimalloc
//! ```
//!
//! Paging: fills ledgers of 100,000 and 1,000,000 users (2 shards, the production default on
//! 2 cores, and 64), then times `balances(cursor, 1001)` (what `GET /balances?limit=1000`
//! asks for) at random cursors and `users()` (one lock and one read per shard, the cheapest
//! whole-ledger question); prints medians and the ratios. A page costs O(page) when its time
//! does not grow with the ledger (page at 1M / page at 100k ≈ 1).
//!
//! Memory: for names of 8, 32 and 128 bytes, a child process fills a ledger with 1,000,000
//! users and reports its resident-set growth per user (entry, hash-table slack, ordered index
//! and name bytes), and, apart, what the ordered index alone costs (a `BTreeSet` of the same
//! 24-byte keys). Each case runs in its own process so freed memory cannot hide a cost.
//!
//! Add `--features mimalloc` to measure with mimalloc as the global allocator, as the
//! `floodgate` binary runs.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use floodgate_core::ledger::{Ledger, user_hash};

/// Users of the memory cases.
const MEMORY_USERS: usize = 1_000_000;
/// Timed pages per paging case.
const PAGES: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|flag| flag == "--memory-child") {
        let length = args.get(1).and_then(|text| text.parse().ok()).unwrap_or(8);
        let index_only = args.get(2).is_some_and(|flag| flag == "index");
        memory_child(length, index_only);
    } else {
        paging();
        memory();
    }
}

/// A unique name of `length` bytes (at least 7) for user `index`.
fn name(index: usize, length: usize) -> String {
    format!("{index:0length$}")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn paging() {
    println!("Paging: median of {PAGES} calls, 16-byte names");
    println!();
    println!(
        "| shards | users | page of 1001 (µs) | users() (µs) | page / users() | page / page at 100k |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for shards in [2, 64] {
        let mut page_at_small = None;
        for users in [100_000, 1_000_000] {
            let ledger = Ledger::new(shards);
            for index in 0..users {
                ledger.apply(name(index, 16), 1).expect("no overflow");
            }
            let page = median(
                (0..PAGES)
                    .map(|round| {
                        // Spread cursors over the whole ledger (a multiplicative walk).
                        let cursor = name((round * 7919 * 127) % users, 16);
                        let started = Instant::now();
                        black_box(ledger.balances(Some(cursor.as_bytes()), 1001));
                        started.elapsed()
                    })
                    .collect(),
            );
            let count = median(
                (0..PAGES)
                    .map(|_| {
                        let started = Instant::now();
                        black_box(ledger.users());
                        started.elapsed()
                    })
                    .collect(),
            );
            let small = *page_at_small.get_or_insert(page);
            println!(
                "| {shards} | {users} | {:.1} | {:.2} | {:.0} | {:.2} |",
                page.as_secs_f64() * 1e6,
                count.as_secs_f64() * 1e6,
                page.as_secs_f64() / count.as_secs_f64(),
                page.as_secs_f64() / small.as_secs_f64(),
            );
        }
    }
    println!();
}

fn memory() {
    println!("Memory: resident-set growth for {MEMORY_USERS} users (2 shards), one process each");
    println!();
    println!("| name bytes | bytes a user (ledger) | of which the ordered index (alone) |");
    println!("|---:|---:|---:|");
    let exe = std::env::current_exe().expect("own path");
    let run = |length: usize, mode: &str| -> f64 {
        let output = std::process::Command::new(&exe)
            .args(["--memory-child", &length.to_string(), mode])
            .output()
            .expect("child runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("child prints bytes a user")
    };
    for length in [8, 32, 128] {
        let ledger = run(length, "ledger");
        let index = run(length, "index");
        println!("| {length} | {ledger:.0} | {index:.0} |");
    }
}

/// Resident set size of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Prints the resident growth per user of a ledger of [`MEMORY_USERS`] names of `length`
/// bytes, or of an index of their 24-byte keys alone.
fn memory_child(length: usize, index_only: bool) {
    // Each name is built as it is applied, as a request would hand it over: what stays
    // resident afterwards is what the ledger keeps.
    let before = resident_bytes();
    let kept: Box<dyn std::any::Any> = if index_only {
        let mut index = std::collections::BTreeSet::new();
        for user in (0..MEMORY_USERS).map(|index| name(index, length)) {
            let mut key = [0_u8; 24];
            key[..8].copy_from_slice(&user_hash(&user).to_le_bytes());
            index.insert(key);
        }
        Box::new(index)
    } else {
        let ledger = Ledger::new(2);
        for user in (0..MEMORY_USERS).map(|index| name(index, length)) {
            ledger.apply(user, 1).expect("no overflow");
        }
        Box::new(ledger)
    };
    let after = resident_bytes();
    black_box(&kept);
    let per_user = after.saturating_sub(before) as f64 / MEMORY_USERS as f64;
    println!("{per_user:.1}");
}
