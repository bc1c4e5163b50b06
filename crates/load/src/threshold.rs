//! `--fail-if` thresholds: conditions on the report that turn a run into a CI verdict.
//!
//! Lesson (stage 5, "a system that fails predictably is a system you can trust", docs/stages.md): a
//! load run is a test; `p99<50ms,errors=0` makes it one. Each condition is a threshold that must
//! hold (as in k6): the run fails (`--fail-if` sets a non-zero exit code) when any condition does
//! NOT hold on the report.
//! Invariant: an unknown metric, operator or value is a parse error, never silently ignored.
//!
//! Syntax: comma-separated `METRIC OP VALUE`, OP one of `< <= > >= = == !=`.
//! - Latency: `p50 p90 p99 p999 p99.9 max mean`, optionally prefixed by the outcome
//!   (`accepted. rejected. invalid. errors. all.`; default `accepted`). VALUE is a duration
//!   (`50ms`, `1.5s`, `250us`) or a bare number of milliseconds.
//! - Counts: `sent accepted rejected invalid errors dropped late_starts reconnects
//!   slow_clients_held`.
//! - Rates (per second): `throughput accepted_per_second`.
//! - Ratios of `sent` (0..1, or a percentage like `1%`): `error_ratio rejected_ratio
//!   invalid_ratio accepted_ratio`.

use std::fmt;

use crate::LoadError;
use crate::report::{LatencySummary, Report};

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
    NotEqual,
}

/// Spellings, longest first so `<=` is not read as `<`.
const OPERATORS: [(&str, Operator); 7] = [
    ("<=", Operator::LessOrEqual),
    (">=", Operator::GreaterOrEqual),
    ("==", Operator::Equal),
    ("!=", Operator::NotEqual),
    ("<", Operator::Less),
    (">", Operator::Greater),
    ("=", Operator::Equal),
];

impl Operator {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Self::Less => left < right,
            Self::LessOrEqual => left <= right,
            Self::Greater => left > right,
            Self::GreaterOrEqual => left >= right,
            Self::Equal => (left - right).abs() < 1e-9,
            Self::NotEqual => (left - right).abs() >= 1e-9,
        }
    }
}

/// One parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    text: String,
    metric: String,
    operator: Operator,
    value: f64,
}

impl fmt::Display for Threshold {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// Parses `p99<50ms,errors=0`.
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, LoadError> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(text: &str) -> Result<Threshold, LoadError> {
    let invalid = |why: &str| LoadError::InvalidThreshold(format!("`{text}`: {why}"));
    let (position, symbol, operator) = OPERATORS
        .iter()
        .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, *symbol, *op)))
        .min_by_key(|(at, symbol, _)| (*at, usize::MAX - symbol.len()))
        .ok_or_else(|| invalid("no operator (< <= > >= = !=)"))?;
    let metric = text[..position].trim().to_owned();
    let raw_value = text[position + symbol.len()..].trim();
    let kind = metric_kind(&metric).ok_or_else(|| invalid("unknown metric"))?;
    let value = match kind {
        MetricKind::Latency => parse_milliseconds(raw_value),
        MetricKind::Ratio => parse_ratio(raw_value),
        MetricKind::Plain => raw_value.parse::<f64>().ok(),
    }
    .filter(|value| value.is_finite())
    .ok_or_else(|| invalid("bad value"))?;
    Ok(Threshold {
        text: text.to_owned(),
        metric,
        operator,
        value,
    })
}

enum MetricKind {
    Latency,
    Ratio,
    Plain,
}

fn metric_kind(metric: &str) -> Option<MetricKind> {
    if latency_field(metric).is_some() {
        return Some(MetricKind::Latency);
    }
    match metric {
        "error_ratio" | "rejected_ratio" | "invalid_ratio" | "accepted_ratio" => {
            Some(MetricKind::Ratio)
        }
        "sent"
        | "accepted"
        | "rejected"
        | "invalid"
        | "errors"
        | "dropped"
        | "late_starts"
        | "reconnects"
        | "slow_clients_held"
        | "retries"
        | "events_accepted"
        | "events_duplicate"
        | "events_rejected"
        | "events_unanswered"
        | "events_per_second"
        | "throughput"
        | "accepted_per_second" => Some(MetricKind::Plain),
        _ => None,
    }
}

/// Splits `errors.p99` into (outcome, percentile); a bare percentile means `accepted`.
fn latency_field(metric: &str) -> Option<(&str, &str)> {
    let (outcome, field) = metric
        .split_once('.')
        .filter(|(o, _)| !o.starts_with('p'))
        .unwrap_or(("accepted", metric));
    let known_outcome = matches!(
        outcome,
        "accepted" | "rejected" | "invalid" | "errors" | "all"
    );
    let known_field = matches!(
        field,
        "p50" | "p90" | "p99" | "p999" | "p99.9" | "max" | "mean"
    );
    (known_outcome && known_field).then_some((outcome, field))
}

fn parse_milliseconds(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

fn parse_ratio(text: &str) -> Option<f64> {
    match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok().map(|p| p / 100.0),
        None => text.parse().ok(),
    }
}

impl Threshold {
    /// The metric's value in `report` (milliseconds for latencies).
    pub fn actual(&self, report: &Report) -> f64 {
        if let Some((outcome, field)) = latency_field(&self.metric) {
            return latency_value(report, outcome, field);
        }
        let ratio = |count: u64| {
            if report.sent == 0 {
                0.0
            } else {
                count as f64 / report.sent as f64
            }
        };
        match self.metric.as_str() {
            "sent" => report.sent as f64,
            "accepted" => report.accepted as f64,
            "rejected" => report.rejected as f64,
            "invalid" => report.invalid as f64,
            "errors" => report.errors as f64,
            "dropped" => report.dropped as f64,
            "late_starts" => report.late_starts as f64,
            "reconnects" => report.reconnects as f64,
            "slow_clients_held" => report.slow_clients_held as f64,
            "retries" => report.retries as f64,
            "events_accepted" => report.events_accepted as f64,
            "events_duplicate" => report.events_duplicate as f64,
            "events_rejected" => report.events_rejected as f64,
            "events_unanswered" => report.events_unanswered as f64,
            "events_per_second" => report.events_per_second,
            "throughput" => report.throughput_per_second,
            "accepted_per_second" => report.accepted_per_second,
            "error_ratio" => ratio(report.errors),
            "rejected_ratio" => ratio(report.rejected),
            "invalid_ratio" => ratio(report.invalid),
            "accepted_ratio" => ratio(report.accepted),
            _ => f64::NAN,
        }
    }

    /// True when the condition does not hold on `report`, i.e. the run fails on it.
    pub fn is_breached(&self, report: &Report) -> bool {
        !self.operator.holds(self.actual(report), self.value)
    }
}

fn latency_value(report: &Report, outcome: &str, field: &str) -> f64 {
    let latency = &report.latency_ms;
    let summary: &LatencySummary = match outcome {
        "rejected" => &latency.rejected,
        "invalid" => &latency.invalid,
        "errors" => &latency.errors,
        "all" => &latency.all,
        _ => &latency.accepted,
    };
    match field {
        "p50" => summary.p50,
        "p90" => summary.p90,
        "p99" => summary.p99,
        "p999" | "p99.9" => summary.p999,
        "max" => summary.max,
        _ => summary.mean,
    }
}

/// The conditions that do not hold on `report` (empty = pass), each rendered with its actual value.
pub fn breaches(thresholds: &[Threshold], report: &Report) -> Vec<String> {
    thresholds
        .iter()
        .filter(|threshold| threshold.is_breached(report))
        .map(|threshold| format!("{threshold} (actual {:.3})", threshold.actual(report)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::LoadConfig;
    use crate::report::RunFacts;
    use crate::stats::{ErrorKind, Outcome, ThreadStats};

    fn report() -> Report {
        let mut stats = ThreadStats::new();
        for _ in 0..99 {
            stats.record_settled(Outcome::Accepted, Duration::from_millis(10), Some(1));
        }
        stats.record_settled(Outcome::Accepted, Duration::from_millis(80), Some(1));
        stats.record_settled(Outcome::Rejected, Duration::from_micros(100), Some(1));
        stats.record_settled(
            Outcome::Error(ErrorKind::Timeout),
            Duration::from_secs(1),
            Some(1),
        );
        let facts = RunFacts {
            threads: 1,
            duration_seconds: 1.0,
            slow_clients_held: 0,
            stopped_early: false,
        };
        Report::new(&LoadConfig::new("http://127.0.0.1:1"), &stats, facts)
    }

    fn failures(text: &str) -> Vec<String> {
        breaches(&parse_thresholds(text).unwrap(), &report())
    }

    #[test]
    fn thresholds_pass_when_they_hold_and_fail_when_they_do_not() {
        // Proves the k6-style semantics on a known report (100 accepted: p99 10 ms, max 80 ms;
        // 1 rejected; 1 timeout): conditions that hold pass, the others are reported with the
        // actual value.
        assert!(failures("p99<50ms,accepted>=100,rejected=1,max<=0.09s,rejected.p99<1").is_empty());
        assert!(failures("accepted_ratio>95%,throughput>100,errors.max>=999ms").is_empty());
        let failed = failures("errors=0,p999<50ms,accepted>100");
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed[0].starts_with("errors=0 (actual 1"), "{failed:?}");
    }

    #[test]
    fn malformed_thresholds_are_refused() {
        // Proves unknown metrics, missing operators and bad values are errors, not no-ops.
        for bad in [
            "p98<5ms",
            "latency<5",
            "errors",
            "p99<fast",
            "accepted>lots",
            "error_ratio<x%",
        ] {
            assert!(parse_thresholds(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_thresholds(" p99 <= 5ms , errors != 0 ")
                .unwrap()
                .len(),
            2
        );
    }
}
