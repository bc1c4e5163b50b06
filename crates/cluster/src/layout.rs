//! The JetStream objects a cluster node uses, created (or found) on connect: the events
//! stream, the lease bucket and the snapshot bucket.
//!
//! Invariants:
//! - The stream keeps events until an owner purges them (limits retention), refuses new ones
//!   past `max_msgs` (`discard: new`, the count limit, not bytes: nats-server#4771), and drops a
//!   repeated `Nats-Msg-Id` within the duplicate window.
//! - The lease bucket's `max_age` is the lease TTL: JetStream's own clock expires a lease that
//!   was not renewed, so node clocks never decide ownership.
//! - The membership bucket's `max_age` is the lease TTL too: a member that stops refreshing its
//!   key stops counting towards the share of partitions each member takes.
//! - The snapshot bucket keeps one revision per partition; every write is compare-and-set on
//!   the revision the writer last saw, which is what fences a stale owner.
//! - No drift: a node whose buckets would differ from the existing ones (another
//!   `--lease-ttl-ms`, another replica count) refuses to start at once, naming the bucket,
//!   the setting and both values ([`LayoutError::Drift`]). It never updates them: a shorter
//!   lease TTL in the bucket would let JetStream expire the leases of nodes that still count
//!   them valid for their own, longer TTL (two owners acting at once), and a longer one would
//!   leave the cluster with mixed TTLs that the next restart of an older node refuses.
//! - One partition count: the stream records the `--partitions` it was created for (its
//!   metadata, [`PARTITIONS_METADATA`]), and a node started with another count refuses to start
//!   ([`LayoutError::PartitionDrift`]). A user's events go to `hash(user) mod partitions`: two
//!   counts would put one user's events on two subjects, with two owners and two balances. A
//!   stream created before the count was recorded gets this node's count written in.
//! - One lookup of the events stream per try: the bucket checks come first (they change
//!   nothing), then `get_or_create_stream`'s answer feeds the partition-count check and the
//!   reconciliation, so a node's start-up does not ask JetStream the same question thrice.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, kv, stream};

use crate::config::ClusterConfig;
use crate::partition::SUBJECT_PREFIX;

/// Name of the events stream.
pub const STREAM_NAME: &str = "FLOODGATE_EVENTS";
/// Name of the lease bucket.
pub const LEASE_BUCKET: &str = "floodgate_leases";
/// Name of the snapshot bucket.
pub const SNAPSHOT_BUCKET: &str = "floodgate_snapshots";
/// Name of the membership bucket (one key per live member, expiring like a lease).
pub const MEMBER_BUCKET: &str = "floodgate_members";
/// The events stream's metadata key holding the partition count it was created for.
pub const PARTITIONS_METADATA: &str = "floodgate_partitions";

/// The connection and the JetStream objects, shared by a node's parts.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The NATS connection (also used for requests between nodes).
    pub client: async_nats::Client,
    /// The JetStream context (publishes, stream operations).
    pub context: jetstream::Context,
    /// The events stream.
    pub stream: stream::Stream,
    /// Partition leases.
    pub leases: kv::Store,
    /// Partition snapshots.
    pub snapshots: kv::Store,
    /// Live members (each refreshes its key every tick; `max_age` = the lease TTL).
    pub members: kv::Store,
    /// The stream behind the membership bucket, whose message count is the live members.
    pub members_stream: stream::Stream,
}

/// Connecting or creating the JetStream objects failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// No server of the list could be reached.
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    /// A bucket exists with a configuration this node would not create: start it with the
    /// cluster's settings (or, with every node stopped, delete the bucket; the lease and
    /// membership buckets hold no data).
    #[error(
        "the JetStream bucket {bucket} has {field} = {existing}, this node would create it \
         with {ours}: start every node with the same {setting}, or stop every node and delete \
         the bucket (`nats kv del {bucket}`){data}"
    )]
    Drift {
        bucket: &'static str,
        field: &'static str,
        existing: String,
        ours: String,
        setting: &'static str,
        data: &'static str,
    },
    /// The events stream was created for another partition count than this node's.
    #[error(
        "the JetStream stream {STREAM_NAME} was created for {existing} partitions, this node \
         was started with --partitions {ours}: every node of a cluster must use the same \
         count (a user's events go to hash(user) mod partitions, so two counts would split a \
         user's balance between two owners); start this node with --partitions {existing}"
    )]
    PartitionDrift { existing: String, ours: u32 },
    /// JetStream did not let us create or find the stream and buckets in time.
    #[error("JetStream not ready after {waited_ms} ms: {last_error}")]
    NotReady { waited_ms: u64, last_error: String },
}

impl Layout {
    /// Connects to any of `urls` and creates the stream and buckets unless they exist,
    /// retrying until `ready_timeout` (a fresh cluster needs a few seconds to elect its
    /// JetStream meta leader).
    pub async fn connect(
        urls: &[String],
        config: &ClusterConfig,
        ready_timeout: Duration,
    ) -> Result<Self, LayoutError> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .map_err(|source| LayoutError::Connect {
                urls: urls.join(","),
                source,
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .ack_timeout(config.request_timeout)
            .build(client.clone());
        let outcome = Self::until_ready(&client, &context, config, ready_timeout).await;
        // Once per connect, after the retries: by now the server has answered (its INFO, with
        // the cluster's client URLs, has arrived; the connect itself returns at once).
        warn_if_fewer_urls_than_servers(&client, urls, config);
        outcome
    }

    /// Tries until every object is found or created, one differs (final), or `ready_timeout`.
    async fn until_ready(
        client: &async_nats::Client,
        context: &jetstream::Context,
        config: &ClusterConfig,
        ready_timeout: Duration,
    ) -> Result<Self, LayoutError> {
        let started = Instant::now();
        loop {
            // Boxed: the JetStream round trips and their answers make a large future.
            match Box::pin(Self::attempt(client, context, config)).await {
                Ok(Attempt::Ready(layout)) => return Ok(*layout),
                Ok(Attempt::Refused(drift)) => return Err(drift),
                Err(error) if started.elapsed() < ready_timeout => {
                    tracing::debug!(%error, "JetStream not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    return Err(LayoutError::NotReady {
                        waited_ms: started.elapsed().as_millis() as u64,
                        last_error: error.to_string(),
                    });
                }
            }
        }
    }

    /// One try at finding (or creating) every object, refusing before it changes anything a
    /// running cluster relies on. The events stream is looked up once: the answer of
    /// `get_or_create_stream` (the existing stream's info, or the one just created) is what
    /// the partition-count check and the reconciliation read.
    async fn attempt(
        client: &async_nats::Client,
        context: &jetstream::Context,
        config: &ClusterConfig,
    ) -> Result<Attempt, async_nats::Error> {
        if let Some(drift) = check_buckets(context, config).await? {
            return Ok(Attempt::Refused(drift));
        }
        let mut stream = context.get_or_create_stream(stream_config(config)).await?;
        if let Some(drift) = partition_drift(&stream.cached_info().config, config) {
            return Ok(Attempt::Refused(drift));
        }
        reconcile_stream(context, &mut stream, config).await?;
        let leases = context
            .create_key_value(kv::Config {
                bucket: LEASE_BUCKET.to_owned(),
                history: 1,
                max_age: config.lease_ttl,
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let snapshots = context
            .create_key_value(kv::Config {
                bucket: SNAPSHOT_BUCKET.to_owned(),
                history: 1,
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let members = context
            .create_key_value(kv::Config {
                bucket: MEMBER_BUCKET.to_owned(),
                history: 1,
                max_age: config.lease_ttl,
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        // The bucket's cached status never refreshes; its stream answers afresh.
        let members_stream = context.get_stream(format!("KV_{MEMBER_BUCKET}")).await?;
        Ok(Attempt::Ready(Box::new(Self {
            client: client.clone(),
            context: context.clone(),
            stream,
            leases,
            snapshots,
            members,
            members_stream,
        })))
    }
}

/// What JetStream's answers decided (transient failures are the `Err` of
/// [`Layout::attempt`], retried until the ready timeout).
enum Attempt {
    /// Every object exists and matches this node's settings (boxed: the streams' cached
    /// infos make a layout several kilobytes).
    Ready(Box<Layout>),
    /// An existing object differs from this node's settings: final, nothing was changed.
    Refused(LayoutError),
}

/// The replica count comes from the number of `--nats` URLs; a node given one seed URL of a
/// larger cluster would create unreplicated objects (or be refused by the cluster's replicated
/// ones). The server's INFO lists the cluster's client URLs it knows of (gossip may still be
/// incomplete at start, so this only warns). Called once per connect, not per retry.
fn warn_if_fewer_urls_than_servers(
    client: &async_nats::Client,
    urls: &[String],
    config: &ClusterConfig,
) {
    let known = client.server_info().connect_urls.len();
    if known > urls.len() && config.replicas < 3 {
        tracing::warn!(
            given = urls.len(),
            servers_known = known,
            replicas = config.replicas,
            "the NATS cluster has more servers than --nats names: replicas = min(3, URLs \
             given); give every server's URL so the stream and buckets are replicated"
        );
    }
}

/// The partition count the events stream records, if it records one other than this node's.
fn partition_drift(existing: &stream::Config, config: &ClusterConfig) -> Option<LayoutError> {
    existing
        .metadata
        .get(PARTITIONS_METADATA)
        .filter(|recorded| **recorded != config.partitions.to_string())
        .map(|recorded| LayoutError::PartitionDrift {
            existing: recorded.clone(),
            ours: config.partitions,
        })
}

/// Whether a stream lookup failed because the stream does not exist.
fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(inner)
        if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The first difference between an existing bucket and the one this node would create
/// (`None`: none exists yet, or each matches).
async fn check_buckets(
    context: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<Option<LayoutError>, async_nats::Error> {
    const TTL_SETTING: &str = "--lease-ttl-ms";
    const REPLICAS_SETTING: &str = "number of --nats URLs (replicas = min(3, URLs))";
    let no_data = " (it holds no data: leases and live members only)";
    let buckets = [
        (LEASE_BUCKET, config.lease_ttl, no_data),
        (MEMBER_BUCKET, config.lease_ttl, no_data),
        (
            SNAPSHOT_BUCKET,
            Duration::ZERO,
            " (it holds the snapshots: only with the stream purged too)",
        ),
    ];
    for (bucket, max_age, data) in buckets {
        let existing = match context.get_stream(format!("KV_{bucket}")).await {
            Ok(stream) => stream.cached_info().config.clone(),
            Err(error) if is_not_found(&error) => continue,
            Err(error) => return Err(error.into()),
        };
        let drift = |field, existing: String, ours: String, setting| LayoutError::Drift {
            bucket,
            field,
            existing,
            ours,
            setting,
            data,
        };
        if existing.max_age != max_age {
            let existing = format!("{} ms", existing.max_age.as_millis());
            let ours = format!("{} ms", max_age.as_millis());
            return Ok(Some(drift("max_age", existing, ours, TTL_SETTING)));
        }
        if existing.num_replicas != config.replicas {
            let (existing, ours) = (existing.num_replicas, config.replicas);
            return Ok(Some(drift(
                "replicas",
                existing.to_string(),
                ours.to_string(),
                REPLICAS_SETTING,
            )));
        }
    }
    Ok(None)
}

/// An events stream created before atomic batches gets them turned on (an update JetStream
/// allows in place), one created before the partition count was recorded gets this node's
/// count, and one created before the byte bound gets [`stream_max_bytes`] of *its own*
/// capacity; all read from `stream`'s cached info (the connect's one lookup). A capacity (or
/// byte bound) other than this node's is kept (the cluster has one stream and one bound) and
/// logged, since nodes started with different bounds would otherwise undo each other.
async fn reconcile_stream(
    context: &jetstream::Context,
    stream: &mut stream::Stream,
    config: &ClusterConfig,
) -> Result<(), async_nats::Error> {
    let existing = stream.cached_info().config.clone();
    let bounded_by_bytes = existing.max_bytes > 0;
    if existing.max_messages != config.capacity_events
        || (bounded_by_bytes && existing.max_bytes != stream_max_bytes(config.capacity_events))
    {
        tracing::warn!(
            stream_capacity_events = existing.max_messages,
            stream_max_bytes = existing.max_bytes,
            this_node = config.capacity_events,
            this_node_max_bytes = stream_max_bytes(config.capacity_events),
            "the events stream keeps the bounds it was created with; update them with the nats \
             CLI to change them for the whole cluster"
        );
    }
    if !bounded_by_bytes {
        tracing::info!(
            max_bytes = stream_max_bytes(existing.max_messages),
            "bounding the events stream's bytes (its capacity x {STREAM_BYTES_PER_EVENT})"
        );
    }
    let recorded = existing.metadata.contains_key(PARTITIONS_METADATA);
    if !recorded {
        tracing::warn!(
            partitions = config.partitions,
            "the events stream does not record its partition count; recording this node's"
        );
    }
    if !existing.allow_atomic_publish {
        tracing::info!("turning atomic batch publish on for the events stream");
    }
    if !recorded || !existing.allow_atomic_publish || !bounded_by_bytes {
        let max_bytes = if bounded_by_bytes {
            existing.max_bytes
        } else {
            stream_max_bytes(existing.max_messages)
        };
        let mut updated = stream::Config {
            allow_atomic_publish: true,
            max_bytes,
            ..existing
        };
        updated
            .metadata
            .entry(PARTITIONS_METADATA.to_owned())
            .or_insert_with(|| config.partitions.to_string());
        context.update_stream(updated).await?;
        stream.info().await?;
    }
    Ok(())
}

/// Stored bytes the events stream allows per event of its capacity (`max_bytes` = capacity x
/// this). Why: `max_msgs` counts messages, and a batch message carries up to 1,000 events, so
/// alone it let the stream hold 1,000 x its capacity in events (and their bytes). A single
/// event of the largest kind (a 128-byte user whose JSON escapes double it, a 64-byte client
/// id, its headers, subject and the store's per-message overhead) takes under this (tested),
/// so single events stay bounded by `max_msgs` exactly; batch events take 4-210 bytes each
/// (`wire`), so the stream holds between 2.4x and ~128x its capacity in batch events (12.8x for
/// a 10-byte user and a 24-byte id) instead of up to 1,000x, and its bytes never pass
/// capacity x 512.
pub const STREAM_BYTES_PER_EVENT: i64 = 512;

/// The events stream's `max_bytes` for `capacity_events`.
pub fn stream_max_bytes(capacity_events: i64) -> i64 {
    capacity_events.saturating_mul(STREAM_BYTES_PER_EVENT)
}

/// The events stream: one subject per partition, bounded in messages and bytes, refusing when
/// full, taking atomic batches (nats-server 2.12+).
fn stream_config(config: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_owned(),
        subjects: vec![format!("{SUBJECT_PREFIX}.*")],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_messages: config.capacity_events,
        max_bytes: stream_max_bytes(config.capacity_events),
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        allow_atomic_publish: true,
        metadata: [(
            PARTITIONS_METADATA.to_owned(),
            config.partitions.to_string(),
        )]
        .into(),
        ..Default::default()
    }
}
