//! What a cluster node adds to `/stats` and `/metrics`: owned partitions, apply lag per
//! partition, the owners' client-id figures per partition (ids kept, duplicates skipped, id
//! conflicts skipped), publish latency, takeovers and losses, read from the running member at
//! request or scrape time.
//!
//! Invariant: every figure is read from the node's own counters ([`Node::view`],
//! [`Node::publish_latency`]); nothing here counts, so `/stats` and `/metrics` agree.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use floodgate_cluster::{IdFigures, Node};
use floodgate_core::metrics::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;

/// The `cluster` object of `GET /stats`.
pub fn stats(node: &Node) -> serde_json::Value {
    let view = node.view();
    let lag: serde_json::Map<String, serde_json::Value> = view
        .apply_lag()
        .into_iter()
        .map(|(partition, events)| (partition.to_string(), json!(events)))
        .collect();
    let ids = view.id_figures();
    let per_partition =
        |figure: fn(&IdFigures) -> u64| -> serde_json::Map<String, serde_json::Value> {
            ids.iter()
                .map(|(partition, figures)| (partition.to_string(), json!(figure(figures))))
                .collect()
        };
    let latency = node.publish_latency();
    json!({
        "node": node.name(),
        "connected": node.is_connected(),
        "partitions": node.config().partitions,
        "owned_partitions": view.owned(),
        "apply_lag_events": lag,
        "ids_kept": per_partition(|figures| figures.ids_kept),
        "duplicate_events": per_partition(|figures| figures.duplicate_events),
        "id_conflicts": per_partition(|figures| figures.id_conflicts),
        "takeovers": view.stats().takeovers.load(Ordering::Relaxed),
        "losses": view.stats().losses.load(Ordering::Relaxed),
        "applied_events": view.stats().applied_events.load(Ordering::Relaxed),
        "publish_latency": {
            "count": latency.count(),
            "p50_ms": quantile_ms(&latency, 0.5),
            "p99_ms": quantile_ms(&latency, 0.99),
        },
    })
}

/// The upper bound of the bucket holding quantile `q`, in ms (`None` when empty or above the
/// last bound).
fn quantile_ms(snapshot: &HistogramSnapshot, q: f64) -> Option<f64> {
    let total = snapshot.count();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in snapshot.counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return snapshot
                .bounds_nanos
                .get(index)
                .map(|&nanos| nanos as f64 / 1e6);
        }
    }
    None
}

/// Reads a cluster node's figures at scrape time.
#[derive(Debug)]
pub struct ClusterCollector(pub Arc<Node>);

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let node = &self.0;
        let view = node.view();
        let owned = ConstGauge::new(i64::try_from(view.owned().len()).unwrap_or(i64::MAX));
        owned.encode(encoder.encode_descriptor(
            "cluster_owned_partitions",
            "Partitions this node owns now (holds the lease, applies the events)",
            None,
            MetricType::Gauge,
        )?)?;
        let mut lag = encoder.encode_descriptor(
            "cluster_apply_lag_events",
            "Events of an owned partition in the stream not yet applied by this node",
            None,
            MetricType::Gauge,
        )?;
        for (partition, events) in view.apply_lag() {
            let labels = [("partition", partition.to_string())];
            ConstGauge::new(i64::try_from(events).unwrap_or(i64::MAX))
                .encode(lag.encode_family(&labels)?)?;
        }
        encode_id_gauges(&mut encoder, &view.id_figures())?;
        for (name, help, value) in [
            (
                "cluster_takeovers",
                "Partitions this node took over since it started",
                view.stats().takeovers.load(Ordering::Relaxed),
            ),
            (
                "cluster_losses",
                "Partitions this node gave up (lease lost, shared out, or stopping)",
                view.stats().losses.load(Ordering::Relaxed),
            ),
            (
                "cluster_applied_events",
                "Events this node's owners applied to balances (a takeover's replay included)",
                view.stats().applied_events.load(Ordering::Relaxed),
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let connected = ConstGauge::new(i64::from(node.is_connected()));
        connected.encode(encoder.encode_descriptor(
            "cluster_connected",
            "1 while the NATS connection is up",
            None,
            MetricType::Gauge,
        )?)?;
        let latency = node.publish_latency();
        let buckets: Vec<(f64, u64)> = latency
            .bounds_nanos
            .iter()
            .map(|&nanos| nanos as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(latency.counts.iter().copied())
            .collect();
        encoder
            .encode_descriptor(
                "cluster_publish_duration_seconds",
                "Time from an event's first publish to JetStream's acknowledgement (retries included)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                latency.sum_nanos as f64 / 1e9,
                latency.count(),
                &buckets,
                None,
            )
    }
}

/// One per-partition client-id gauge: its name, help and figure.
type IdGauge = (&'static str, &'static str, fn(&IdFigures) -> u64);

/// The owners' client-id figures, one gauge family each, labelled by partition.
const ID_GAUGES: [IdGauge; 3] = [
    (
        "cluster_ids_kept",
        "Client ids an owned partition remembers now (beyond JetStream's duplicate window)",
        |figures| figures.ids_kept,
    ),
    (
        "cluster_duplicate_events",
        "Events of an owned partition skipped because their client id was applied before (its whole history, carried by its snapshot)",
        |figures| figures.duplicate_events,
    ),
    (
        "cluster_id_conflicts",
        "Events of an owned partition skipped because their client id was applied before with another user or amount (answered 202 past JetStream's duplicate window)",
        |figures| figures.id_conflicts,
    ),
];

fn encode_id_gauges(
    encoder: &mut DescriptorEncoder<'_>,
    ids: &std::collections::BTreeMap<floodgate_cluster::Partition, IdFigures>,
) -> Result<(), std::fmt::Error> {
    for (name, help, figure) in ID_GAUGES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (partition, figures) in ids {
            let labels = [("partition", partition.to_string())];
            ConstGauge::new(i64::try_from(figure(figures)).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the quantile reads the bucket bound at the rank: 1 value in 1 ms, 99 in 2 ms.
    #[test]
    fn quantiles_are_bucket_bounds() {
        let snapshot = HistogramSnapshot {
            bounds_nanos: vec![1_000_000, 2_000_000],
            counts: vec![1, 99, 0],
            sum_nanos: 0,
        };
        assert_eq!(quantile_ms(&snapshot, 0.01), Some(1.0));
        assert_eq!(quantile_ms(&snapshot, 0.5), Some(2.0));
        let empty = HistogramSnapshot {
            bounds_nanos: vec![1],
            counts: vec![0, 0],
            sum_nanos: 0,
        };
        assert_eq!(quantile_ms(&empty, 0.5), None);
    }
}
