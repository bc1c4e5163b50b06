//! Floodgate on a NATS JetStream cluster: front doors publish events to a replicated stream,
//! one subject per partition; each partition has one owner at a time (a lease in a JetStream
//! key-value bucket), which applies its events in stream order, snapshots the balances with the
//! last applied sequence, and purges what the snapshot covers.
//!
//! The lesson: a 202 that must survive any one machine comes from a replicated log, and the
//! state behind it is a function of that log (snapshot + replay), so an owner can die at any
//! point without losing or double-applying an event. The engine never imports this crate.
//!
//! Modules, in the order an event travels: [`partition`] (which subject), [`publish`] (the
//! front door's acknowledged publish), [`conflict`] (a duplicate id: resend or reuse), [`lease`] (who owns a partition), [`state`] (applying
//! in order, exactly once), [`snapshot`] (the fenced snapshot slot), [`owner`] (replay, apply,
//! snapshot, purge), [`member`] (a node's leases and owners), [`reads`] (balances from any node), [`view`] (what a running member shows its node), [`node`] (the front door's side: the
//! engine's `Forward`, the member's task). [`layout`]
//! creates the stream and buckets; [`local_cluster`] starts real servers for tests, their
//! route links optionally behind [`route_proxy`]s a test can cut.

pub mod balances;
pub mod config;
pub mod conflict;
pub mod fault;
pub mod layout;
pub mod lease;
pub mod local_cluster;
pub mod member;
pub mod node;
pub mod owner;
pub mod partition;
pub mod publish;
pub mod reads;
pub mod route_proxy;
pub mod snapshot;
pub mod state;
pub mod view;
pub mod wire;

pub use balances::Balances;
pub use config::{ClusterConfig, replicas_for};
pub use layout::{Layout, LayoutError, PARTITIONS_METADATA};
pub use lease::{Lease, LeaseError, Leases};
pub use local_cluster::{LocalCluster, LocalClusterError};
pub use member::Member;
pub use node::{Node, unique_node_name};
pub use owner::{Owner, OwnerExit};
pub use partition::{Partition, partition_of};
pub use publish::{BatchMessage, PublishError, Published, Publisher};
pub use reads::{ReadError, request_balance};
pub use snapshot::{SnapshotError, SnapshotSlot};
pub use state::{
    Applied, AppliedIds, BatchApplied, ClientId, EventDigest, IdBounds, IdLookup, IdRecord,
    PartitionState,
};
pub use view::{IdFigures, IdGauges, MemberStats, MemberView};
pub use wire::Snapshot;
