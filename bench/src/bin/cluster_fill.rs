//! `cluster-fill`: puts N single-event messages on a cluster's events stream while no node
//! runs, so the node started next takes over partitions whose every event it must replay (no
//! snapshot covers them). `bench/takeover.sh` times that replay per million events.
//!
//! Usage: `cluster-fill URL[,URL...] PARTITIONS LEASE_TTL_MS CAPACITY EVENTS USERS`. The
//! stream and buckets are created with the node's settings (a node refuses buckets made with
//! another lease TTL). Publishes are pipelined (a window of acknowledgements in flight), each
//! acknowledged before the program exits; every amount is 1, so the balances sum to EVENTS.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use floodgate_cluster::wire::encode_event;
use floodgate_cluster::{ClusterConfig, Layout, partition::subject, partition_of};
use floodgate_core::Event;

/// Publishes sent before their acknowledgements are awaited.
const WINDOW: usize = 4_096;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [urls, partitions, lease_ttl_ms, capacity, events, users] = args.as_slice() else {
        bail!("usage: cluster-fill URLS PARTITIONS LEASE_TTL_MS CAPACITY EVENTS USERS");
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let partitions: u32 = partitions.parse().context("PARTITIONS")?;
    let events: u64 = events.parse().context("EVENTS")?;
    let users: u64 = users.parse().context("USERS")?;
    let mut config = ClusterConfig::new(partitions, urls.len());
    config.lease_ttl = std::time::Duration::from_millis(lease_ttl_ms.parse().context("TTL")?);
    config.capacity_events = capacity.parse().context("CAPACITY")?;
    let layout = Layout::connect(&urls, &config, std::time::Duration::from_secs(30)).await?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(WINDOW);
    for number in 0..events {
        let event = Event::new(format!("u{}", number % users.max(1)), 1);
        let subject = subject(partition_of(&event.user, partitions));
        pending.push(
            layout
                .context
                .publish(subject, encode_event(&event))
                .await?,
        );
        if pending.len() == WINDOW {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{events} events on the stream in {seconds:.1} s ({:.0} events/s)",
        events as f64 / seconds
    );
    Ok(())
}
