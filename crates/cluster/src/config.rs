//! The knobs of a cluster node, each with its unit in its name.

use std::time::Duration;

use crate::state::IdBounds;

/// How a node uses the JetStream cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of partitions (subjects, leases, snapshots); fixed for the life of the stream.
    pub partitions: u32,
    /// The stream's `max_msgs`: events accepted but not yet covered by a snapshot. A publish
    /// past it is refused (`queue_full`); this is the cluster's backpressure.
    pub capacity_events: i64,
    /// Replicas of the stream and buckets: `min(3, servers)`.
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
    pub duplicate_window: Duration,
    /// A lease not renewed for this long expires (the lease bucket's `max_age`).
    pub lease_ttl: Duration,
    /// The owner snapshots its partition (then purges what the snapshot covers) after this many
    /// applied events, and when it has been idle with unsnapshotted events.
    pub snapshot_every_events: u64,
    /// How long a publish (or a bucket write) waits for JetStream's answer.
    pub request_timeout: Duration,
    /// How long and how many client ids each partition's owner remembers (in its snapshot),
    /// beyond JetStream's `duplicate_window`.
    pub id_bounds: IdBounds,
}

impl ClusterConfig {
    /// A configuration for `partitions` partitions on `servers` servers, with defaults for
    /// the rest.
    pub fn new(partitions: u32, servers: usize) -> Self {
        Self {
            partitions,
            capacity_events: 1_000_000,
            replicas: replicas_for(servers),
            duplicate_window: Duration::from_secs(120),
            lease_ttl: Duration::from_secs(6),
            snapshot_every_events: 10_000,
            request_timeout: Duration::from_secs(5),
            id_bounds: IdBounds::default(),
        }
    }

    /// How often an owner renews its leases: a third of the TTL, so two renewals can be lost
    /// before the lease expires.
    pub fn renew_interval(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// Replicas for a cluster of `servers` servers: `min(3, servers)`, at least 1.
pub fn replicas_for(servers: usize) -> usize {
    servers.clamp(1, 3)
}
