//! Front-door limits and the whole server configuration.
//!
//! Lesson: stage 1 (docs/stages.md) ends with "real servers rely on threads, async I/O, or
//! timeouts"; stage 2 adds that async alone does not finish the job. Every way a client can
//! hold a resource (a connection, a header buffer, a body buffer, time) has a limit here.
//! Invariant: every limit is a named field with a documented default and reason, and
//! [`ServerConfig::validate`] refuses values that would disable a limit or break hyper (the
//! bounds are declared with each setting in [`crate::settings`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use floodgate_core::config::EngineConfig;
use floodgate_core::durable::{
    DEFAULT_SEGMENT_BYTES, DEFAULT_SNAPSHOT_EVERY_BYTES, DEFAULT_SNAPSHOT_EVERY_EVENTS,
    DurabilityMode, DurableOptions,
};
use serde::{Deserialize, Serialize};

/// Default time a client has to send a complete request head (and, on a new connection, to
/// start sending it). 10 s: a real client sends its head in one packet; ten seconds covers a
/// slow mobile link with retransmits, and a slowloris client is cut off quickly.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default time a request has to deliver its whole body. 10 s: 64 KiB arrives in that time
/// even at about 50 kbit/s.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 10_000;
/// Default time a keep-alive connection may sit idle between requests. 30 s: long enough for a
/// client pool to reuse connections, short enough that forgotten ones give their socket back.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Default cap on open connections. 10,000 fits well under the usual 20,000 file-descriptor
/// limit with room for the process itself. Measured cost: about 1.6 KiB per silent connection
/// and 17 KiB per connection stuck mid-head, so the cap bounds connection memory near 170 MB
/// even if every slot is held by a slowloris client.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default largest request body: 64 KiB. An event is under 200 bytes; 64 KiB leaves room for
/// clients that pad or pretty-print, while 10,000 concurrent bodies stay under 1 GiB.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;
/// Default largest request head (request line plus headers): 16 KiB, the limit many proxies
/// use; beyond it hyper answers 431 and closes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default most headers in one request: 64. Real clients send under 20; beyond it hyper
/// answers 431 and closes.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default time in-flight requests get to finish after a stop is asked for: 15 s, the body
/// timeout (10 s) plus [`SHUTDOWN_ANSWER_MARGIN_MS`] and room to spare, under the 30 s most
/// orchestrators wait between SIGTERM and SIGKILL, leaving time to drain the queue.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 15_000;
/// What a graceful stop adds to the body timeout, at the least, before it cuts connections:
/// time to parse, admit and write the answer of a body that arrived at its deadline. A request
/// whose head arrived before the stop therefore always gets its answer (202, or 408 if its
/// body never came), whatever `shutdown-timeout-ms` says.
pub const SHUTDOWN_ANSWER_MARGIN_MS: u64 = 1_000;
/// Default queue fill (percent of capacity) above which `/readyz` answers 503, so a load
/// balancer steers traffic away before clients see `queue_full`.
pub const DEFAULT_READY_HIGH_WATER_PERCENT: u8 = 90;
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "floodgate-data";

/// Most events in one `POST /events/batch` (TigerBeetle's 8,189-event batches are the model:
/// large enough that a batch costs one reservation and one log record for thousands of events,
/// small enough that a 503 costs the client little to resend).
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 8_192;
/// Largest `POST /events/batch` body, after decompression: 4 MiB holds 8,192 events of up to
/// 512 bytes each.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Hard upper bound for `batch_max_events`.
pub const MAX_BATCH_EVENTS_CEILING: usize = 1_000_000;

/// Hard upper bound for any timeout setting: one hour. Longer is a typo, not a policy.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Hard upper bound for the body limit: 64 MiB (the engine's events are tiny).
pub const MAX_BODY_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// Hard upper bound for the head size (hyper's read buffer must hold a whole head).
pub const MAX_HEADER_BYTES_CEILING: usize = 1024 * 1024;
/// Smallest allowed head size: a request line and a few headers must fit.
pub const MIN_HEADER_BYTES: usize = 1024;
/// Hard upper bound for the header count.
pub const MAX_HEADERS_CEILING: usize = 1024;
/// Hard upper bound for the connection cap.
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

/// Limits of the HTTP front door: timeouts, sizes and the connection cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrontDoorConfig {
    /// A request head must be complete this long after its first byte (or, on a new
    /// connection, after accept); otherwise the connection is closed.
    pub header_timeout_ms: u64,
    /// A request body must be complete this long after its head; otherwise 408 and close.
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request in flight and no bytes arriving is closed after
    /// this long.
    pub idle_timeout_ms: u64,
    /// Most connections open at once; a new connection over the cap is closed at once.
    pub max_connections: usize,
    /// Largest request body; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// Largest request head (request line plus headers); larger gets 431 and close.
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets 431 and close.
    pub max_headers: usize,
    /// How long a graceful stop waits for in-flight requests before closing connections.
    pub shutdown_timeout_ms: u64,
    /// `/readyz` answers 503 when the queue is fuller than this percent of its capacity.
    pub ready_high_water_percent: u8,
    /// Most events in one `POST /events/batch`; more is 413 `batch_too_large`.
    pub batch_max_events: usize,
    /// Largest `POST /events/batch` body after decompression; larger is 413.
    pub batch_max_bytes: usize,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        Self {
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            body_timeout_ms: DEFAULT_BODY_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            ready_high_water_percent: DEFAULT_READY_HIGH_WATER_PERCENT,
        }
    }
}

impl FrontDoorConfig {
    /// [`Self::header_timeout_ms`] as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    /// [`Self::body_timeout_ms`] as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
    /// [`Self::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// How long a graceful stop waits for in-flight requests: `shutdown_timeout_ms`, but never
    /// less than the body timeout plus [`SHUTDOWN_ANSWER_MARGIN_MS`], so a body still arriving
    /// when the stop begins is read (or refused with 408) and answered before its connection
    /// is cut. Each deadline keeps its own sense: the body timeout bounds one client's body,
    /// the shutdown timeout bounds the whole stop.
    pub fn shutdown_grace(&self) -> Duration {
        let body_and_answer_ms = self.body_timeout_ms + SHUTDOWN_ANSWER_MARGIN_MS;
        Duration::from_millis(self.shutdown_timeout_ms.max(body_and_answer_ms))
    }
}

/// Default most connections the admin listener (`admin-addr`) holds at once: 16. Its clients
/// are a Prometheus scraper or two, health probes and an operator's `curl`; a small budget of
/// its own keeps it answering while the main port is full, and bounds what a client that
/// reaches it can hold.
pub const ADMIN_MAX_CONNECTIONS: usize = 16;
/// Default burst of the per-token rate limit, in events: a client may send this many at once
/// after a quiet spell, then `rate-limit-per-second` on average.
pub const DEFAULT_RATE_LIMIT_BURST_EVENTS: u64 = 100;
/// Hard upper bound of the per-token rate (events/s): beyond it the limit is no limit.
pub const MAX_RATE_LIMIT_PER_SECOND: f64 = 1e9;
/// Hard upper bound of the per-token burst.
pub const MAX_RATE_LIMIT_BURST_EVENTS: u64 = 1_000_000_000;

/// Who may reach the server and how: tokens, TLS, the admin listener and rate limits. Every
/// part is off by default (the server is open, in clear text, on one port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessConfig {
    /// A file of scoped bearer tokens (see [`crate::auth`]); `None`: no token is asked for.
    pub auth_tokens_file: Option<PathBuf>,
    /// PEM certificate chain; with [`Self::tls_key`], the listeners speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of [`Self::tls_cert`].
    pub tls_key: Option<PathBuf>,
    /// A second listener for `/metrics`, `/stats`, `/healthz` and `/readyz` only, with its own
    /// connection budget ([`ADMIN_MAX_CONNECTIONS`]).
    pub admin_addr: Option<SocketAddr>,
    /// Events per second each token may post on average; 0: no limit. Needs tokens.
    pub rate_limit_per_second: f64,
    /// Events a token may post at once above its average rate.
    pub rate_limit_burst_events: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            auth_tokens_file: None,
            tls_cert: None,
            tls_key: None,
            admin_addr: None,
            rate_limit_per_second: 0.0,
            rate_limit_burst_events: DEFAULT_RATE_LIMIT_BURST_EVENTS,
        }
    }
}

impl AccessConfig {
    /// Refuses combinations that cannot work: half a TLS pair, a rate limit without tokens
    /// (the limit is per token), a rate that is not a finite number.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let refuse = |why: &str| Err(InvalidConfig::Setting(why.to_owned()));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return refuse("`tls-cert` and `tls-key` go together: give both or neither");
        }
        if !self.rate_limit_per_second.is_finite()
            || !(0.0..=MAX_RATE_LIMIT_PER_SECOND).contains(&self.rate_limit_per_second)
        {
            return refuse("invalid `rate-limit-per-second`: must be 0 (off) to 1e9 events/s");
        }
        if self.rate_limit_per_second > 0.0 && self.auth_tokens_file.is_none() {
            return refuse(
                "`rate-limit-per-second` limits each token: it needs `auth-tokens-file`",
            );
        }
        Ok(())
    }
}

/// Where balances are kept and what a 202 waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// The data directory (log, snapshots, lock). `None`: balances in memory only (the stage
    /// presets, unless a directory is named).
    pub data_dir: Option<PathBuf>,
    /// `fsync`, `write` or `memory` (see [`DurabilityMode::promise`]).
    pub durability: DurabilityMode,
    /// Snapshot the balances after this many events since the last snapshot.
    pub snapshot_every_events: u64,
    /// Snapshot the balances after this many log bytes since the last snapshot.
    pub snapshot_every_bytes: u64,
    /// A new log segment file starts once the current one would pass this size.
    pub log_segment_bytes: u64,
}

impl StorageConfig {
    /// The production default: `floodgate-data` in the working directory, `fsync`.
    pub fn production() -> Self {
        Self {
            data_dir: Some(PathBuf::from(DEFAULT_DATA_DIR)),
            ..Self::in_memory()
        }
    }

    /// No data directory: what the stage presets start from.
    pub fn in_memory() -> Self {
        Self {
            data_dir: None,
            durability: DurabilityMode::Fsync,
            snapshot_every_events: DEFAULT_SNAPSHOT_EVERY_EVENTS,
            snapshot_every_bytes: DEFAULT_SNAPSHOT_EVERY_BYTES,
            log_segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }

    /// The mode in force: `memory` without a data directory.
    pub fn effective_durability(&self) -> DurabilityMode {
        match self.data_dir {
            Some(_) => self.durability,
            None => DurabilityMode::Memory,
        }
    }

    /// The log's options, unless balances are kept in memory only.
    pub fn durable_options(&self) -> Option<DurableOptions> {
        let data_dir = self.data_dir.as_ref()?;
        if self.durability == DurabilityMode::Memory {
            return None;
        }
        Some(DurableOptions {
            snapshot_every_events: self.snapshot_every_events,
            snapshot_every_bytes: self.snapshot_every_bytes,
            segment_bytes: self.log_segment_bytes,
            ..DurableOptions::new(data_dir, self.durability)
        })
    }
}

/// Default number of partitions of a cluster (`--partitions`): 16 spreads the load over up to
/// 16 nodes, and keeps each partition's snapshot (one KV value, at most 1 MiB) small.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Hard upper bound for `partitions`: each partition costs a lease, a snapshot key, a
/// subject and, on its owner, a consumer.
pub const MAX_PARTITIONS: u32 = 4096;
/// Default lease TTL of a cluster's partitions: 6 s, so a dead node's partitions move within
/// about 8 s (TTL + a renew interval + JetStream's expiry).
pub const DEFAULT_LEASE_TTL_MS: u64 = 6_000;
/// Shortest lease TTL allowed: renewals go every third of it, and each is a JetStream round
/// trip on a quorum.
pub const MIN_LEASE_TTL_MS: u64 = 300;
/// Longest lease TTL allowed: ten minutes of a dead node's partitions unread is a typo.
pub const MAX_LEASE_TTL_MS: u64 = 600_000;
/// How long a cluster node waits at start for JetStream to be ready (a fresh cluster elects
/// its meta leader in a few seconds).
pub const CLUSTER_READY_TIMEOUT_MS: u64 = 30_000;

/// Most client ids a cluster partition's owner remembers beyond JetStream's duplicate window:
/// about 100 bytes each in every snapshot of the partition (written at least four times per
/// partition's share of the stream), so the ids never dwarf the balances.
pub const MAX_IDS_PER_PARTITION: usize = 5_000;

/// The NATS servers of `--nats`: one or more `nats://host:port` URLs, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsUrls(pub Vec<String>);

impl std::str::FromStr for NatsUrls {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let urls: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err("expected one or more NATS URLs, comma-separated".to_owned());
        }
        Ok(Self(urls))
    }
}

impl std::fmt::Display for NatsUrls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0.join(","))
    }
}

/// A cluster node's settings: standalone (no NATS) unless `nats` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// The NATS servers; `None`: standalone (the default).
    pub nats: Option<NatsUrls>,
    /// Partitions of the events stream (fixed for the life of the stream).
    pub partitions: u32,
    /// Lease TTL of a partition's owner.
    pub lease_ttl_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            nats: None,
            partitions: DEFAULT_PARTITIONS,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
        }
    }
}

impl ClusterSettings {
    /// The cluster crate's configuration for these settings: the stream's capacity is the
    /// engine's queue bound (the stream is the cluster's queue), an owner snapshots (and
    /// purges) at least four times before its partition's share of that capacity fills, and
    /// it remembers client ids for the engine's dedup window (`dedup_window_ms`), at most
    /// `dedup_max_ids / partitions` and [`MAX_IDS_PER_PARTITION`] a partition (the ids live in
    /// the partition's snapshot).
    pub fn cluster_config(
        &self,
        engine: &EngineConfig,
    ) -> Option<(Vec<String>, floodgate_cluster::ClusterConfig)> {
        let queue_capacity_events = engine.queue_capacity_events;
        let urls = self.nats.as_ref()?.0.clone();
        let mut config = floodgate_cluster::ClusterConfig::new(self.partitions, urls.len());
        config.capacity_events = i64::try_from(queue_capacity_events).unwrap_or(i64::MAX);
        config.lease_ttl = Duration::from_millis(self.lease_ttl_ms);
        let per_partition = queue_capacity_events as u64 / u64::from(self.partitions.max(1));
        config.snapshot_every_events = (per_partition / 4).clamp(1, config.snapshot_every_events);
        config.id_bounds = floodgate_cluster::IdBounds {
            window: Duration::from_millis(engine.dedup_window_ms),
            max_ids: (engine.dedup_max_ids / self.partitions.max(1) as usize)
                .min(MAX_IDS_PER_PARTITION),
        };
        Some((urls, config))
    }
}

/// Everything the HTTP server needs: the engine behind it and the front door's limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerConfig {
    /// The engine: processing mode, queue, workers, ledger strategy, simulated work.
    pub engine: EngineConfig,
    /// Timeouts, size limits and the connection cap.
    pub front_door: FrontDoorConfig,
    /// The data directory and the durability mode.
    pub storage: StorageConfig,
    /// Tokens, TLS, the admin listener and rate limits.
    #[serde(default)]
    pub access: AccessConfig,
    /// Standalone, or a node of a NATS JetStream cluster (`--nats`).
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// The seed stage this configuration started from (`None`: the production default).
    pub stage: Option<u8>,
}

impl ServerConfig {
    /// The production engine and the default limits, balances in memory (for in-process
    /// use: the lab, tests). `floodgate serve` adds the data directory
    /// ([`StorageConfig::production`]).
    pub fn production() -> Self {
        Self {
            engine: EngineConfig::production(),
            front_door: FrontDoorConfig::default(),
            storage: StorageConfig::in_memory(),
            access: AccessConfig::default(),
            cluster: ClusterSettings::default(),
            stage: None,
        }
    }

    /// Refuses a configuration the server must not start with: a setting out of its declared
    /// bounds (the error names it), or an engine the engine itself refuses.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        crate::settings::check_bounds(self).map_err(InvalidConfig::Setting)?;
        self.access.validate()?;
        self.engine.validate()?;
        Ok(())
    }

    /// The seed's stage `stage` (3..=8) with the default front-door limits.
    pub fn for_stage(stage: u8) -> Option<Self> {
        EngineConfig::for_stage(stage).map(|engine| Self {
            engine,
            front_door: FrontDoorConfig::default(),
            storage: StorageConfig::in_memory(),
            access: AccessConfig::default(),
            cluster: ClusterSettings::default(),
            stage: Some(stage),
        })
    }
}

/// Why [`ServerConfig::validate`] refused a configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidConfig {
    /// A setting outside its declared bounds; the message names it.
    #[error("{0}")]
    Setting(String),
    /// The engine refuses its part (e.g. the owned strategy with fewer queue slots than
    /// workers).
    #[error("invalid engine setting: {0}")]
    Engine(#[from] floodgate_core::config::ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the defaults are valid and that disabling a limit is refused with its name.
    #[test]
    fn defaults_validate_and_zero_limits_are_refused() {
        assert_eq!(ServerConfig::production().validate(), Ok(()));
        let with = |front_door| ServerConfig {
            front_door,
            ..ServerConfig::production()
        };
        let zero_timeout = with(FrontDoorConfig {
            header_timeout_ms: 0,
            ..FrontDoorConfig::default()
        });
        let error = zero_timeout.validate().expect_err("zero header timeout");
        assert!(error.to_string().contains("`header-timeout-ms`"), "{error}");
        let zero_cap = with(FrontDoorConfig {
            max_connections: 0,
            ..FrontDoorConfig::default()
        });
        assert!(
            zero_cap
                .validate()
                .expect_err("zero cap")
                .to_string()
                .contains("max-connections")
        );
    }
}
