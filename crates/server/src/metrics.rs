//! `GET /metrics`: the front door's own metrics plus the engine's, in Prometheus text format.
//!
//! Lesson: stage 7 (docs/stages.md: lock contention is invisible without measurement), and a
//! server nobody can observe cannot be run. Names follow Prometheus conventions: a
//! `floodgate_` prefix, base units in the name (`_seconds`, `_events`), `_total` on counters.
//! Invariant: the engine's counters are read from the engine at scrape time (one source of
//! truth, never double-counted); the front door's own series (connections, request latency)
//! live here. Every label has a bounded set of values (outcomes, reasons, phases).

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::engine::Engine;
use floodgate_core::metrics::StripedHistogram;
use hdrhistogram::Histogram as HdrHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::error::Outcome;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Request-latency buckets: 100 µs doubling 18 times (to about 13 s): covers a loopback 202
/// and stage 4's seconds-long inline waits.
const LATENCY_BUCKET_START_NANOS: u64 = 100_000;
const LATENCY_BUCKET_COUNT: u32 = 18;
/// Lock wait/hold bucket bounds, seconds: 10 µs (uncontended) to 10 s (the seed's hot lock).
const LOCK_BUCKETS_SECONDS: [f64; 16] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A label set with one bounded label.
type Labels = Vec<(&'static str, &'static str)>;
/// A token's name as a label (bounded by the tokens file; never the secret).
type TokenLabels = Vec<(&'static str, String)>;

/// The front door's metrics and the registry that exposes them with the engine's.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    /// Connections open right now.
    pub open_connections: Gauge,
    /// Connections closed at once because the cap was reached.
    pub connections_refused: Counter,
    connection_timeouts: Family<Labels, Counter>,
    connection_errors: Family<Labels, Counter>,
    access_refused: Family<Labels, Counter>,
    rate_limited: Family<TokenLabels, Counter>,
    /// One latency histogram per outcome, created up front (every series exists from the
    /// start). Striped, not prometheus-client's `Histogram`, which takes a mutex per
    /// observation shared by every connection: recording takes no lock or allocation.
    request_duration: RequestDurations,
}

impl ServerMetrics {
    /// Registers every series; the engine's are read from `engine` at each scrape.
    /// `max_connections` is exported so alerts can compare open connections with the cap.
    pub fn new(engine: Engine, max_connections: usize) -> Self {
        Self::with_cluster(engine, None, max_connections)
    }

    /// [`Self::new`], plus a cluster node's series (see [`crate::cluster`]) with `--nats`.
    pub fn with_cluster(
        engine: Engine,
        cluster: Option<Arc<floodgate_cluster::Node>>,
        max_connections: usize,
    ) -> Self {
        let mut registry = Registry::with_prefix("floodgate");
        let cap = Gauge::<i64>::default();
        cap.set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        registry.register(
            "http_max_connections",
            "The connection cap (max-connections)",
            cap,
        );
        let open_connections = Gauge::default();
        registry.register(
            "http_open_connections",
            "HTTP connections open right now",
            open_connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at once because max-connections was reached or the process was out \
             of file descriptors",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<Labels, Counter>::default();
        registry.register(
            "http_connection_timeouts",
            "Connections closed by a deadline, by phase (header, idle, write: answers not read)",
            connection_timeouts.clone(),
        );
        let connection_errors = Family::<Labels, Counter>::default();
        registry.register(
            "http_connection_errors",
            "Connections ended with an error, by kind (malformed, head_too_large, incomplete, tls, \
             deadline, io); `deadline` also counts the timeouts above",
            connection_errors.clone(),
        );
        let access_refused = Family::<Labels, Counter>::default();
        registry.register(
            "http_access_refused",
            "Requests refused at the gate, by reason (unauthorized, forbidden, rate_limited)",
            access_refused.clone(),
        );
        let rate_limited = Family::<TokenLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Ingest requests answered 429 rate_limited, by token name (from the tokens file)",
            rate_limited.clone(),
        );
        let request_duration = RequestDurations::new();
        registry.register_collector(Box::new(request_duration.clone()));
        registry.register_collector(Box::new(EngineCollector(engine)));
        registry.register_collector(Box::new(OutputCollector));
        if let Some(node) = cluster {
            registry.register_collector(Box::new(crate::cluster::ClusterCollector(node)));
        }
        Self {
            registry,
            open_connections,
            connections_refused,
            connection_timeouts,
            connection_errors,
            access_refused,
            rate_limited,
            request_duration,
        }
    }

    /// Records one `POST /events` answer.
    pub fn observe_request(&self, outcome: Outcome, elapsed: Duration) {
        self.request_duration.record(outcome, elapsed);
    }

    /// Counts a connection closed by its deadline (`phase`: header or idle).
    pub fn record_timeout(&self, phase: &'static str) {
        self.connection_timeouts
            .get_or_create(&vec![("phase", phase)])
            .inc();
    }

    /// Counts a connection hyper ended with an error (`kind`: a bounded label).
    pub fn record_connection_error(&self, kind: &'static str) {
        self.connection_errors
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    /// Counts a request refused at the gate (`reason`: unauthorized, forbidden, rate_limited).
    pub fn record_access_refused(&self, reason: &'static str) {
        self.access_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts a 429 for the token named `name`.
    pub fn record_rate_limited(&self, name: &str) {
        self.rate_limited
            .get_or_create(&vec![("token", name.to_owned())])
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `floodgate_http_request_duration_seconds`: one striped histogram per outcome.
/// Cloned into the registry as its collector: both clones share the histograms.
#[derive(Debug, Clone)]
struct RequestDurations(Arc<[StripedHistogram; Outcome::ALL.len()]>);

impl RequestDurations {
    fn new() -> Self {
        let bounds: Vec<u64> = (0..LATENCY_BUCKET_COUNT)
            .map(|doublings| LATENCY_BUCKET_START_NANOS << doublings)
            .collect();
        Self(Arc::new(
            Outcome::ALL.map(|_| StripedHistogram::new(&bounds)),
        ))
    }

    fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.0[outcome.index()].record(elapsed);
    }
}

impl Collector for RequestDurations {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "http_request_duration_seconds",
            "POST /events latency from handler start to answer, by outcome",
            None,
            MetricType::Histogram,
        )?;
        for (outcome, histogram) in Outcome::ALL.iter().zip(self.0.iter()) {
            let snapshot = histogram.snapshot();
            // Per-bucket counts, bounds in seconds; prometheus-client accumulates them, and
            // a bound of infinity is its `+Inf`.
            let buckets: Vec<(f64, u64)> = snapshot
                .bounds_nanos
                .iter()
                .map(|&nanos| nanos as f64 / 1e9)
                .chain([f64::INFINITY])
                .zip(snapshot.counts.iter().copied())
                .collect();
            let labels = vec![("outcome", outcome.as_str())];
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    snapshot.sum_nanos as f64 / 1e9,
                    snapshot.count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// Reads the count of dropped log and summary writes at scrape time.
#[derive(Debug)]
struct OutputCollector;

impl Collector for OutputCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        counter(
            &mut encoder,
            "log_write_errors",
            "Writes to stderr (the log) or stdout that failed and were dropped (e.g. the log \
             reader went away); the server keeps serving",
            crate::output::write_errors_total(),
        )
    }
}

/// Reads the engine's counters, gauges and lock histograms at scrape time.
#[derive(Debug)]
struct EngineCollector(Engine);

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        for (name, help, value) in [
            ("events_accepted", "Events admitted", stats.accepted),
            (
                "events_applied",
                "Events applied to the ledger",
                stats.applied,
            ),
            (
                "events_overflowed",
                "Accepted events not applied because the balance would overflow i64",
                stats.overflowed,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        by_reason(
            &mut encoder,
            "events_rejected",
            "Events refused (queue_full, draining, balance_overflow)",
            &stats.rejected_by_reason,
        )?;
        by_reason(
            &mut encoder,
            "events_invalid",
            "Invalid inputs, by reason",
            &stats.invalid_by_reason,
        )?;
        gauge(
            &mut encoder,
            "queue_depth_events",
            "Events waiting in the queue",
            stats.queue_depth,
        )?;
        gauge(
            &mut encoder,
            "queue_capacity_events",
            "Bound of the queue in events",
            stats.queue_capacity_events,
        )?;
        gauge(&mut encoder, "workers", "Worker tasks", stats.workers)?;
        gauge(
            &mut encoder,
            "ledger_users",
            "Users with a balance",
            stats.users,
        )?;
        gauge(
            &mut encoder,
            "draining",
            "1 once shutdown began",
            usize::from(stats.draining),
        )?;
        dedup(&mut encoder, &stats)?;
        let busy = ConstCounter::new(stats.worker_busy_seconds);
        busy.encode(encoder.encode_descriptor(
            "worker_busy_seconds",
            "Seconds workers spent processing events, summed over workers",
            None,
            MetricType::Counter,
        )?)?;
        durability(&mut encoder, &stats.durability)?;
        if let Some(histograms) = self.0.log_histograms() {
            log_histograms(&mut encoder, &histograms)?;
        }
        let timings = self.0.lock_timings();
        lock_histogram(
            &mut encoder,
            "ledger_lock_wait_seconds",
            "Time from asking for a ledger lock to getting it",
            &timings.wait_us,
        )?;
        lock_histogram(
            &mut encoder,
            "ledger_lock_hold_seconds",
            "Time a ledger lock was held",
            &timings.hold_us,
        )
    }
}

/// The dedup window: duplicates seen, ids kept, and the effective window.
fn dedup(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &floodgate_core::Stats,
) -> Result<(), std::fmt::Error> {
    counter(
        encoder,
        "events_duplicate",
        "Resends recognised by their id within the dedup window and not applied again",
        stats.duplicate,
    )?;
    gauge(
        encoder,
        "dedup_ids",
        "Event ids kept by the dedup window",
        stats.dedup.ids,
    )?;
    let window = ConstGauge::new(stats.dedup.effective_window_seconds.unwrap_or(0.0));
    window.encode(encoder.encode_descriptor(
        "dedup_window_seconds",
        "Age of the oldest event id kept: a resend older than this is applied again",
        None,
        MetricType::Gauge,
    )?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn by_reason(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    counts: &std::collections::BTreeMap<String, u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (reason, count) in counts {
        let labels = vec![("reason", reason.as_str())];
        ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Upper bounds of the events-per-group histogram.
const GROUP_BUCKETS_EVENTS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0,
];
/// Upper bounds of the sync-latency histogram, in seconds.
const SYNC_BUCKETS_SECONDS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Events per group and sync latency of the log.
fn log_histograms(
    encoder: &mut DescriptorEncoder<'_>,
    histograms: &floodgate_core::durable::LogHistograms,
) -> Result<(), std::fmt::Error> {
    scaled_histogram(
        encoder,
        "log_group_events",
        "Events per log group (one record, one sync)",
        &histograms.events_per_group,
        (&GROUP_BUCKETS_EVENTS, 1.0),
    )?;
    scaled_histogram(
        encoder,
        "log_sync_seconds",
        "Time of one fdatasync of the log (fsync mode)",
        &histograms.sync_us,
        (&SYNC_BUCKETS_SECONDS, 1_000_000.0),
    )
}

/// The durability mode (as a labelled 1), the log's counters, snapshot and recovery figures.
fn durability(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &floodgate_core::DurabilityStats,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "durability_mode",
        "1 for the mode in force: fsync (202 after sync), write (202 after write), memory",
        None,
        MetricType::Gauge,
    )?;
    let mode = stats.mode.to_string();
    ConstGauge::new(1).encode(family.encode_family(&vec![("mode", mode.as_str())])?)?;
    counter(
        encoder,
        "log_bytes",
        "Log record bytes written",
        stats.log_bytes,
    )?;
    counter(
        encoder,
        "log_records",
        "Log records (groups) written",
        stats.log_records,
    )?;
    counter(
        encoder,
        "log_disk_full_groups",
        "Log groups refused: disk full",
        stats.disk_full_groups,
    )?;
    counter(encoder, "snapshots", "Snapshots written", stats.snapshots)?;
    float_gauge(
        encoder,
        "log_position",
        "Last log position acknowledged",
        stats.log_position as f64,
    )?;
    float_gauge(
        encoder,
        "snapshot_position",
        "Log position of the newest snapshot",
        stats.snapshot_position as f64,
    )?;
    float_gauge(
        encoder,
        "snapshot_age_seconds",
        "Seconds since this process wrote a snapshot (-1: none yet)",
        stats.snapshot_age_seconds.unwrap_or(-1.0),
    )?;
    float_gauge(
        encoder,
        "recovery_seconds",
        "Start-up recovery time",
        stats.recovery_seconds,
    )?;
    float_gauge(
        encoder,
        "storage_failed",
        "1 once a log write or sync failed (nothing more is accepted)",
        f64::from(u8::from(stats.storage_failed)),
    )
}

fn float_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Exports an HDR histogram as a Prometheus histogram with `bounds`, its values divided by
/// `scale` (1e6 turns microseconds into seconds).
fn scaled_histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    histogram: &HdrHistogram<u64>,
    (bounds, scale): (&[f64], f64),
) -> Result<(), std::fmt::Error> {
    let mut buckets = Vec::with_capacity(bounds.len());
    let mut below = 0_u64;
    for bound in bounds {
        let raw_bound = (bound * scale) as u64;
        let cumulative = if histogram.is_empty() {
            0
        } else {
            histogram.count_between(0, raw_bound)
        };
        buckets.push((*bound, cumulative.saturating_sub(below)));
        below = below.max(cumulative);
    }
    let count = histogram.len();
    let sum = histogram.mean() * count as f64 / scale;
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

/// Exports an HDR histogram of microseconds as a Prometheus histogram in seconds.
fn lock_histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    micros: &HdrHistogram<u64>,
) -> Result<(), std::fmt::Error> {
    let mut buckets = Vec::with_capacity(LOCK_BUCKETS_SECONDS.len());
    let mut below = 0_u64;
    for bound_seconds in LOCK_BUCKETS_SECONDS {
        let bound_micros = (bound_seconds * 1_000_000.0) as u64;
        let cumulative = if micros.is_empty() {
            0
        } else {
            micros.count_between(0, bound_micros)
        };
        buckets.push((bound_seconds, cumulative.saturating_sub(below)));
        below = below.max(cumulative);
    }
    let count = micros.len();
    let sum_seconds = micros.mean() * count as f64 / 1_000_000.0;
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_seconds,
        count,
        &buckets,
        None,
    )
}
