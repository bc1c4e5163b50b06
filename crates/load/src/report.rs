//! The report of a run: the seed's summary table, latency per outcome, and the JSON document
//! (schema in `crates/load/SCHEMA.md`, version [`SCHEMA_VERSION`]).
//!
//! Lesson (stage 7, docs/stages.md): "12,937 requests/sec" was mostly fast 503s; the accepted rate
//! and the accepted latency are the numbers that matter, so they are printed next to the total.
//! Invariant: `accepted + rejected + invalid + errors == sent`, and every latency summary is
//! computed from its own histogram (never mixed across outcomes).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{LoadConfig, Mode};
use crate::stats::{ErrorKind, Outcome, ThreadStats};

/// Version of the JSON document; bumped on any incompatible change (see SCHEMA.md).
pub const SCHEMA_VERSION: u32 = 2;

/// Latency percentiles of one outcome class, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Requests in this class.
    pub count: u64,
    /// Mean latency.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest latency seen.
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a microsecond histogram (all zeros when it is empty).
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Latency kept separately per outcome; `all` merges the four.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyBreakdown {
    /// 2xx answers.
    pub accepted: LatencySummary,
    /// 503 / 429 / 507 answers.
    pub rejected: LatencySummary,
    /// Other 4xx answers.
    pub invalid: LatencySummary,
    /// Transport errors, timeouts, 5xx other than 503.
    pub errors: LatencySummary,
    /// Every request with an outcome.
    pub all: LatencySummary,
}

/// Errors by cause; they add up to [`Report::errors`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorsByKind {
    /// Connection refused or handshake failed.
    pub connect: u64,
    /// No full answer within the request timeout.
    pub timeout: u64,
    /// The connection broke mid-request.
    pub transport: u64,
    /// Answered with a status that is not 2xx, 4xx or 503 (e.g. 500).
    pub status: u64,
}

/// Which loop a run used, as the report names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopKind {
    /// A fixed number of connections, each with one request in flight.
    Closed,
    /// Requests on a fixed schedule, latency from the intended start.
    Open,
}

impl std::fmt::Display for LoopKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
        })
    }
}

/// Everything a run measured. Serialized as the `--json` document (see SCHEMA.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // each bool is a documented field of the JSON schema
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `"closed"` or `"open"`.
    pub mode: LoopKind,
    /// The target URL.
    pub url: String,
    /// Closed loop: connections. Open loop: the in-flight cap.
    pub concurrency: usize,
    /// Load threads used.
    pub threads: usize,
    /// Requests that got an outcome (the four classes below add up to it).
    pub sent: u64,
    /// 2xx answers (the server's 202).
    pub accepted: u64,
    /// 503 / 429 / 507 answers: refused on purpose (the table lists 507, ledger full, apart).
    pub rejected: u64,
    /// Other 4xx answers (validation).
    pub invalid: u64,
    /// Transport errors, timeouts, and 5xx other than 503.
    pub errors: u64,
    /// Errors by cause.
    pub errors_by_kind: ErrorsByKind,
    /// Answers per status code (only codes seen), e.g. `{"202": 950, "503": 50}`.
    pub status_counts: BTreeMap<String, u64>,
    /// Wall time from the first request's start to the last answer.
    pub duration_seconds: f64,
    /// The run was stopped before its planned end (Ctrl-C): the figures cover what was done.
    pub stopped_early: bool,
    /// `sent / duration_seconds`.
    pub throughput_per_second: f64,
    /// `accepted / duration_seconds` (goodput).
    pub accepted_per_second: f64,
    /// Open loop: the configured rate. Closed loop: `null`.
    pub offered_per_second: Option<f64>,
    /// Open loop: requests on the schedule. Closed loop: `null`.
    pub scheduled: Option<u64>,
    /// Open loop paced by spinning to each due time (`--precise-pacing`) rather than on
    /// tokio's millisecond timer.
    pub precise_pacing: bool,
    /// Sum of the amounts of the events acknowledged (accepted, or answered as a duplicate of
    /// one applied before), each event once however often it was sent.
    pub accepted_amount_sum: i128,
    /// Malformed bodies (or batch lines) sent on purpose (`--invalid-ratio`).
    pub invalid_bodies_sent: u64,
    /// Events per request: `null` for one JSON event per request, else the batch size.
    pub batch_events: Option<usize>,
    /// Every valid event carried a fresh id (`--ids`).
    pub ids: bool,
    /// Requests were resent on timeout, connection errors, 503 and 429 (`--retry`).
    pub retry: bool,
    /// Resends: requests sent again with the same body (counted in `sent` too).
    pub retries: u64,
    /// Events sent, each once however often it was resent.
    pub events_sent: u64,
    /// Events taken and applied.
    pub events_accepted: u64,
    /// Events answered as duplicates (applied earlier: by a lost attempt, or another sender).
    pub events_duplicate: u64,
    /// Events refused (validation, conflict, or refused with no resend left): not applied.
    pub events_rejected: u64,
    /// Events whose request never got an answer: applied or not, unknown.
    pub events_unanswered: u64,
    /// `events_accepted / duration_seconds`.
    pub events_per_second: f64,
    /// Open loop: requests that started later than the late threshold after their due time.
    pub late_starts: u64,
    /// Open loop: requests not sent because the in-flight cap was reached.
    pub dropped: u64,
    /// TCP connections opened for the load.
    pub connections_opened: u64,
    /// Of those, replacements for connections lost, closed or timed out.
    pub reconnects: u64,
    /// Slow clients requested.
    pub slow_clients: usize,
    /// Slow clients' kind (`"idle"` or `"trickle"`).
    pub slow_kind: String,
    /// Slow clients still open when the load finished.
    pub slow_clients_held: usize,
    /// Latency per outcome, in milliseconds.
    pub latency_ms: LatencyBreakdown,
    /// Latency of every request measured from its actual send, in milliseconds. Closed loop:
    /// the same as `latency_ms.all`. Open loop: what a tool with coordinated omission would
    /// report; the gap to `latency_ms.all` is time requests waited behind the schedule.
    pub service_latency_ms: LatencySummary,
}

/// What the runner measured besides the per-thread tallies.
#[derive(Clone, Copy, Debug)]
pub struct RunFacts {
    /// Load threads used.
    pub threads: usize,
    /// Wall time of the load.
    pub duration_seconds: f64,
    /// Slow clients still open at the end.
    pub slow_clients_held: usize,
    /// The run was asked to stop before its end (Ctrl-C).
    pub stopped_early: bool,
}

impl Report {
    /// Builds the report from the merged tallies.
    pub fn new(config: &LoadConfig, stats: &ThreadStats, facts: RunFacts) -> Self {
        let (mode, concurrency, offered, scheduled) = match &config.mode {
            Mode::Closed { concurrency, .. } => (LoopKind::Closed, *concurrency, None, None),
            Mode::Open {
                rate_per_second,
                duration,
                max_in_flight,
            } => (
                LoopKind::Open,
                *max_in_flight,
                Some(*rate_per_second),
                Some(crate::open::Schedule::total_for(
                    *rate_per_second,
                    *duration,
                )),
            ),
        };
        let sent = stats.sent();
        let accepted = stats.count(Outcome::Accepted);
        let per_second = |count: u64| {
            if facts.duration_seconds > 0.0 {
                count as f64 / facts.duration_seconds
            } else {
                0.0
            }
        };
        Self {
            schema_version: SCHEMA_VERSION,
            mode,
            url: config.url.clone(),
            concurrency,
            threads: facts.threads,
            sent,
            accepted,
            rejected: stats.count(Outcome::Rejected),
            invalid: stats.count(Outcome::Invalid),
            errors: stats.count(Outcome::Error(ErrorKind::Transport)),
            errors_by_kind: errors_by_kind(stats),
            status_counts: status_counts(stats),
            duration_seconds: facts.duration_seconds,
            stopped_early: facts.stopped_early,
            throughput_per_second: per_second(sent),
            accepted_per_second: per_second(accepted),
            offered_per_second: offered,
            scheduled,
            precise_pacing: config.precise_pacing,
            accepted_amount_sum: stats.accepted_amount_sum,
            invalid_bodies_sent: stats.invalid_bodies_sent,
            batch_events: config.batch_events,
            ids: config.ids,
            retry: config.retry.is_some(),
            retries: stats.retries,
            events_sent: stats.events.sent,
            events_accepted: stats.events.accepted,
            events_duplicate: stats.events.duplicate,
            events_rejected: stats.events.rejected,
            events_unanswered: stats.events.unanswered,
            events_per_second: per_second(stats.events.accepted),
            late_starts: stats.late_starts,
            dropped: stats.dropped,
            connections_opened: stats.connections_opened,
            reconnects: stats.reconnects,
            slow_clients: config.slow_clients,
            slow_kind: config.slow_kind.to_string(),
            slow_clients_held: facts.slow_clients_held,
            latency_ms: latency_breakdown(stats),
            service_latency_ms: LatencySummary::from_histogram(&stats.service_us),
        }
    }
}

fn errors_by_kind(stats: &ThreadStats) -> ErrorsByKind {
    let count = |kind: ErrorKind| stats.errors_by_kind[kind as usize];
    ErrorsByKind {
        connect: count(ErrorKind::Connect),
        timeout: count(ErrorKind::Timeout),
        transport: count(ErrorKind::Transport),
        status: count(ErrorKind::Status),
    }
}

fn status_counts(stats: &ThreadStats) -> BTreeMap<String, u64> {
    stats
        .status_counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(status, count)| (status.to_string(), *count))
        .collect()
}

fn latency_breakdown(stats: &ThreadStats) -> LatencyBreakdown {
    let [accepted, rejected, invalid, errors] = &stats.latency_us;
    let mut all = accepted.clone();
    for other in [rejected, invalid, errors] {
        // Same bounds on every histogram, so adding cannot fail.
        let _ = all.add(other);
    }
    LatencyBreakdown {
        accepted: LatencySummary::from_histogram(accepted),
        rejected: LatencySummary::from_histogram(rejected),
        invalid: LatencySummary::from_histogram(invalid),
        errors: LatencySummary::from_histogram(errors),
        all: LatencySummary::from_histogram(&all),
    }
}

impl Report {
    /// The human summary: the seed's table, then latency per outcome.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = self.write_summary(&mut out);
        let _ = self.write_latency(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "=== Results ({} loop, {}) ===", self.mode, self.url)?;
        writeln!(out, "Total requests: {}", self.sent)?;
        let label = if self.mode == LoopKind::Open {
            "Max in flight:"
        } else {
            "Concurrency:"
        };
        writeln!(out, "{label:<16}{}", self.concurrency)?;
        let early = if self.stopped_early {
            " (stopped early)"
        } else {
            ""
        };
        writeln!(out, "Duration:       {:.2}s{early}", self.duration_seconds)?;
        writeln!(
            out,
            "Throughput:     {:.0} requests/sec",
            self.throughput_per_second
        )?;
        let offered = self
            .offered_per_second
            .map_or(String::new(), |rate| format!("; offered {rate:.0}/s"));
        writeln!(
            out,
            "Accepted:       {} ({:.0}/s{offered})",
            self.accepted, self.accepted_per_second
        )?;
        // A 507 is counted as `rejected` in the JSON, but it is not backpressure: the ledger is
        // full and stays full, so the table gives it its own line.
        let ledger_full = self.status_counts.get("507").copied().unwrap_or(0);
        writeln!(
            out,
            "Rejected:       {} (backpressure: 503/429, retry later)",
            self.rejected.saturating_sub(ledger_full)
        )?;
        if ledger_full > 0 {
            writeln!(
                out,
                "Ledger full:    {ledger_full} (507: not transient, retrying will not help)"
            )?;
        }
        writeln!(
            out,
            "Invalid:        {} (4xx; {} malformed sent)",
            self.invalid, self.invalid_bodies_sent
        )?;
        let kinds = &self.errors_by_kind;
        writeln!(
            out,
            "Errors:         {} (connect {}, timeout {}, transport {}, status {})",
            self.errors, kinds.connect, kinds.timeout, kinds.transport, kinds.status
        )?;
        if self.retry {
            writeln!(out, "Retries:        {} (resends)", self.retries)?;
        }
        self.write_events(out)?;
        writeln!(
            out,
            "Amount sum:     {} (acknowledged events)",
            self.accepted_amount_sum
        )?;
        if let Some(scheduled) = self.scheduled {
            writeln!(
                out,
                "Schedule:       {scheduled} due, {} late starts, {} dropped (in-flight cap)",
                self.late_starts, self.dropped
            )?;
        }
        if self.slow_clients > 0 {
            writeln!(
                out,
                "Slow clients:   {} {} opened, {} still held at the end",
                self.slow_clients, self.slow_kind, self.slow_clients_held
            )?;
        }
        writeln!(
            out,
            "Connections:    {} opened ({} reconnects)",
            self.connections_opened, self.reconnects
        )
    }

    fn write_events(&self, out: &mut String) -> std::fmt::Result {
        let framing = self.batch_events.map_or_else(
            || "one per request".to_owned(),
            |events| format!("batches of {events}"),
        );
        let ids = if self.ids { ", with ids" } else { "" };
        writeln!(
            out,
            "Events:         {} sent ({framing}{ids}): {} accepted ({:.0}/s), {} duplicate, {} \
             rejected, {} unanswered",
            self.events_sent,
            self.events_accepted,
            self.events_per_second,
            self.events_duplicate,
            self.events_rejected,
            self.events_unanswered
        )
    }

    fn write_latency(&self, out: &mut String) -> std::fmt::Result {
        let origin = if self.mode == LoopKind::Open {
            "from intended start"
        } else {
            "from send"
        };
        writeln!(out, "Latency (ms, {origin}):")?;
        writeln!(
            out,
            "  {:<9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "outcome", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        let mut rows = vec![
            ("accepted", &self.latency_ms.accepted),
            ("rejected", &self.latency_ms.rejected),
            ("invalid", &self.latency_ms.invalid),
            ("errors", &self.latency_ms.errors),
            ("all", &self.latency_ms.all),
        ];
        if self.mode == LoopKind::Open {
            // The same requests timed from their actual send: the number a tool with
            // coordinated omission would print.
            rows.push(("all/send", &self.service_latency_ms));
        }
        for (name, summary) in rows {
            writeln!(
                out,
                "  {name:<9}{:>10}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
                summary.count, summary.p50, summary.p90, summary.p99, summary.p999, summary.max
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report() -> Report {
        let mut stats = ThreadStats::new();
        stats.record_settled(Outcome::Accepted, Duration::from_millis(3), Some(i64::MAX));
        stats.record_settled(Outcome::Accepted, Duration::from_millis(5), Some(i64::MAX));
        stats.record_settled(Outcome::Rejected, Duration::from_micros(200), Some(1));
        stats.count_status(202);
        stats.count_status(202);
        stats.count_status(503);
        let mut config = LoadConfig::new("http://127.0.0.1:9");
        config.mode = Mode::Open {
            rate_per_second: 3.0,
            duration: Duration::from_secs(1),
            max_in_flight: 4,
        };
        let facts = RunFacts {
            threads: 1,
            duration_seconds: 1.0,
            slow_clients_held: 0,
            stopped_early: false,
        };
        Report::new(&config, &stats, facts)
    }

    #[test]
    fn the_json_document_round_trips_with_its_schema_version() {
        // Proves the documented JSON is what serde writes and reads back unchanged, including
        // an amount sum beyond i64 (two events of i64::MAX) and the per-status counts.
        let report = report();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schema_version"], SCHEMA_VERSION);
        assert_eq!(json["status_counts"]["202"], 2);
        assert_eq!(json["latency_ms"]["accepted"]["count"], 2);
        assert_eq!(json["offered_per_second"], 3.0);
        let text = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.accepted_amount_sum, 2 * i128::from(i64::MAX));
    }

    #[test]
    fn ledger_full_is_reported_apart_from_backpressure() {
        // Proves a 507 (the ledger is full: not transient, retrying will not help) is not
        // listed as backpressure: the table gives it its own line, and "Rejected" counts only
        // the 503/429 refusals.
        let mut stats = ThreadStats::new();
        for status in [503, 507, 507] {
            stats.record_settled(Outcome::Rejected, Duration::from_micros(200), Some(1));
            stats.count_status(status);
        }
        let config = LoadConfig::new("http://127.0.0.1:9");
        let facts = RunFacts {
            threads: 1,
            duration_seconds: 1.0,
            slow_clients_held: 0,
            stopped_early: false,
        };
        let table = Report::new(&config, &stats, facts).render_table();
        assert!(
            table.contains("Rejected:       1 (backpressure: 503/429, retry later)"),
            "{table}"
        );
        assert!(
            table.contains("Ledger full:    2 (507: not transient, retrying will not help)"),
            "{table}"
        );
    }

    #[test]
    fn the_table_puts_the_accepted_rate_next_to_the_offered_rate() {
        // Proves the seed-style table carries the totals, the accepted rate beside the offered
        // rate, the schedule line of an open loop and one latency row per outcome.
        let table = report().render_table();
        for needle in [
            "Total requests: 3",
            "Accepted:       2 (2/s; offered 3/s)",
            "Events:         3 sent (one per request): 2 accepted (2/s), 0 duplicate, 1 rejected, 0 unanswered",
            "Rejected:       1 (backpressure: 503/429, retry later)",
            "Schedule:       3 due",
            "accepted",
            "all/send",
        ] {
            assert!(table.contains(needle), "missing `{needle}` in\n{table}");
        }
    }
}
