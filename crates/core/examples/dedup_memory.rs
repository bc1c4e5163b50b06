//! Bytes per event id kept by the dedup window: fills a window with N settled ids and reads
//! the process's resident memory before and after (Linux `/proc/self/statm`).
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
    for n in 0..ids {
        // A UUID-shaped id: the recommended kind (its text is not kept, only its hash).
        let id = EventId::parse(&format!("0190b6b4-7c1e-7d2a-9f00-{n:012}")).expect("valid");
        let key = window.key(&id);
        if let Verdict::Fresh(claim) = window.check(key, n as u64, 1) {
            window.commit(claim);
        }
    }
    let after = resident_bytes();
    let per_id = (after - before) as f64 / ids as f64;
    println!("ids kept: {}", window.len());
    println!("resident bytes: {before} -> {after}");
    println!("bytes per id kept: {per_id:.1}");
}
