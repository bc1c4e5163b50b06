//! Bytes per event id kept by the dedup window: fills a window with N settled ids and reads
//! the process's resident memory before and after (Linux `/proc/self/statm`). Also prints the
//! time per id of that first fill, one id at a time and in batches of 1,000 (a second window),
//! page faults included: what ids cost while a window fills.
//!
//! `cargo run --release -p floodgate-core --example dedup_memory -- 1000000`

use std::time::Duration;

use floodgate_core::dedup::{Bounds, Verdict, Window};
use floodgate_core::event::EventId;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let ids: usize = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let window = Window::new(Bounds {
        age: Duration::from_secs(3600),
        max_ids: ids,
    });
    let before = resident_bytes();
    let started = std::time::Instant::now();
    for n in 0..ids {
        // A UUID-shaped id: the recommended kind (its text is not kept, only its hash).
        let id = EventId::parse(&format!("0190b6b4-7c1e-7d2a-9f00-{n:012}")).expect("valid");
        let key = window.key(&id);
        if let Verdict::Fresh(claim) = window.check(key, n as u64, 1) {
            window.commit(claim);
        }
    }
    let single_ns = started.elapsed().as_nanos() as f64 / ids as f64;
    let after = resident_bytes();
    let per_id = (after - before) as f64 / ids as f64;
    println!("ids kept: {}", window.len());
    println!("resident bytes: {before} -> {after}");
    println!("bytes per id kept: {per_id:.1}");
    println!("first fill, one id at a time: {single_ns:.0} ns per id (hash, check, commit)");
    println!(
        "first fill, batches of 1,000: {:.0} ns per id",
        fill_in_batches(ids)
    );
}

/// Fills a fresh window in batches of 1,000 ids (one check and one settle per batch when the
/// window has them); ns per id.
fn fill_in_batches(ids: usize) -> f64 {
    let window = Window::new(Bounds {
        age: Duration::from_secs(3600),
        max_ids: ids,
    });
    let started = std::time::Instant::now();
    let mut next = 0;
    while next < ids {
        let end = (next + 1000).min(ids);
        let keys: Vec<_> = (next..end)
            .map(|n| {
                let id =
                    EventId::parse(&format!("0190b6b4-7c1e-7d2a-9f01-{n:012}")).expect("valid");
                (window.key(&id), n)
            })
            .collect();
        settle_batch(&window, &keys);
        next = end;
    }
    started.elapsed().as_nanos() as f64 / ids as f64
}

fn settle_batch(window: &Window, keys: &[(u128, usize)]) {
    use floodgate_core::dedup::{BatchVerdict, IdRequest};
    let requests: Vec<IdRequest> = keys
        .iter()
        .map(|&(key, n)| IdRequest {
            key,
            user_hash: n as u64,
            amount: 1,
        })
        .collect();
    let verdicts = window.check_batch(&requests).expect("nothing in flight");
    window.settle_all(verdicts.into_iter().filter_map(|verdict| match verdict {
        BatchVerdict::Fresh(claim) => Some((claim, true)),
        _ => None,
    }));
}
