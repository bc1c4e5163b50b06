//! Per-thread tallies: one HDR histogram per outcome plus counters, merged once at the end.
//!
//! Lesson (stages 5 and 7, docs/stages.md): a fast 503 is not a served request; the seed's
//! "throughput" counted both. Accepted, rejected, invalid and failed requests keep separate
//! latencies.
//! Invariant: memory is constant however long the run (fixed-size histograms and arrays, no
//! per-request storage), and nothing crosses threads per request: each load thread owns its
//! [`ThreadStats`] and hands it over once when it finishes.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram tracks exactly; longer ones saturate at it. An hour is far
/// beyond any request timeout plus the open loop's lateness.
pub const HISTOGRAM_MAX_MICROSECONDS: u64 = 3_600_000_000;
/// Significant figures kept by the histograms (0.1% resolution).
pub const HISTOGRAM_SIGNIFICANT_FIGURES: u8 = 3;
/// Status codes are counted in a fixed array indexed by code; anything above is clamped here.
pub const STATUS_CODE_LIMIT: usize = 600;

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx (the server's 202): the event was taken.
    Accepted,
    /// 503, 429 or 507: the event was refused on purpose (backpressure, draining, ledger full).
    Rejected,
    /// Any other 4xx: the server judged the request malformed.
    Invalid,
    /// No usable answer.
    Error(ErrorKind),
}

/// Why a request counts as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection (or the HTTP handshake) could not be established.
    Connect,
    /// No full answer within the request timeout.
    Timeout,
    /// The connection broke while sending or receiving.
    Transport,
    /// An answer that is neither 2xx, 4xx, 503 nor 507 (other 5xx, or 1xx/3xx).
    Status,
}

impl Outcome {
    /// Classifies an HTTP status code.
    pub fn from_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Accepted,
            429 | 503 | 507 => Self::Rejected,
            400..=499 => Self::Invalid,
            _ => Self::Error(ErrorKind::Status),
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Accepted => 0,
            Self::Rejected => 1,
            Self::Invalid => 2,
            Self::Error(_) => 3,
        }
    }
}

/// Outcome classes, in histogram order.
pub const OUTCOME_CLASSES: usize = 4;

/// One thread's tallies.
#[derive(Debug)]
pub struct ThreadStats {
    /// Latency in microseconds per outcome class (accepted, rejected, invalid, errors).
    pub latency_us: [Histogram<u64>; OUTCOME_CLASSES],
    /// Latency in microseconds of every request measured from its actual send (in the open
    /// loop, `latency_us` counts from the intended start instead).
    pub service_us: Histogram<u64>,
    /// Answers per status code (index = code).
    pub status_counts: Box<[u64; STATUS_CODE_LIMIT]>,
    /// Errors per kind: connect, timeout, transport, status.
    pub errors_by_kind: [u64; 4],
    /// Sum of the amounts of the events answered 2xx.
    pub accepted_amount_sum: i128,
    /// Malformed bodies sent on purpose.
    pub invalid_bodies_sent: u64,
    /// Open loop: requests that started more than the late threshold after their due time.
    pub late_starts: u64,
    /// Open loop: requests never sent because the in-flight cap was reached.
    pub dropped: u64,
    /// TCP connections opened (first connects and reconnects).
    pub connections_opened: u64,
    /// Connections opened to replace one that was lost or closed.
    pub reconnects: u64,
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadStats {
    /// Empty tallies.
    pub fn new() -> Self {
        let histogram = || {
            // Bounds are constants that hdrhistogram accepts (low 1, high > 2, sigfig <= 5).
            Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROSECONDS, HISTOGRAM_SIGNIFICANT_FIGURES)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
        };
        Self {
            latency_us: [histogram(), histogram(), histogram(), histogram()],
            service_us: histogram(),
            status_counts: Box::new([0; STATUS_CODE_LIMIT]),
            errors_by_kind: [0; 4],
            accepted_amount_sum: 0,
            invalid_bodies_sent: 0,
            late_starts: 0,
            dropped: 0,
            connections_opened: 0,
            reconnects: 0,
        }
    }

    /// Records a request's latency from its actual send (all outcomes together).
    pub fn record_service(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.service_us.saturating_record(micros);
    }

    /// Records one finished request.
    pub fn record(&mut self, outcome: Outcome, latency: Duration, amount: Option<i64>) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us[outcome.index()].saturating_record(micros);
        match outcome {
            Outcome::Accepted => {
                if let Some(amount) = amount {
                    self.accepted_amount_sum += i128::from(amount);
                }
            }
            Outcome::Error(kind) => self.errors_by_kind[kind as usize] += 1,
            Outcome::Rejected | Outcome::Invalid => {}
        }
        if amount.is_none() {
            self.invalid_bodies_sent += 1;
        }
    }

    /// Counts one answer's status code.
    pub fn count_status(&mut self, status: u16) {
        let index = usize::from(status).min(STATUS_CODE_LIMIT - 1);
        self.status_counts[index] += 1;
    }

    /// Requests with an outcome (every request sent).
    pub fn sent(&self) -> u64 {
        self.latency_us.iter().map(Histogram::len).sum()
    }

    /// Requests in one class.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.latency_us[outcome.index()].len()
    }

    /// Adds another thread's tallies into these.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.latency_us.iter_mut().zip(&other.latency_us) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
        let _ = self.service_us.add(&other.service_us);
        for (mine, theirs) in self
            .status_counts
            .iter_mut()
            .zip(other.status_counts.iter())
        {
            *mine += theirs;
        }
        for (mine, theirs) in self.errors_by_kind.iter_mut().zip(other.errors_by_kind) {
            *mine += theirs;
        }
        self.accepted_amount_sum += other.accepted_amount_sum;
        self.invalid_bodies_sent += other.invalid_bodies_sent;
        self.late_starts += other.late_starts;
        self.dropped += other.dropped;
        self.connections_opened += other.connections_opened;
        self.reconnects += other.reconnects;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_four_outcome_classes() {
        // Proves the classification the report relies on: 2xx accepted, 503/429 rejected,
        // other 4xx invalid, 5xx and the rest errors.
        assert_eq!(Outcome::from_status(202), Outcome::Accepted);
        assert_eq!(Outcome::from_status(503), Outcome::Rejected);
        assert_eq!(Outcome::from_status(429), Outcome::Rejected);
        assert_eq!(Outcome::from_status(507), Outcome::Rejected);
        for status in [400, 413, 415, 422] {
            assert_eq!(Outcome::from_status(status), Outcome::Invalid);
        }
        for status in [500, 502, 504, 301, 101] {
            assert_eq!(
                Outcome::from_status(status),
                Outcome::Error(ErrorKind::Status)
            );
        }
    }

    #[test]
    fn merge_adds_counts_latencies_and_amounts() {
        // Proves merging two threads' tallies loses nothing: counts, per-class histograms,
        // amount sums and error kinds add up.
        let mut first = ThreadStats::new();
        first.record(Outcome::Accepted, Duration::from_millis(2), Some(10));
        first.record(Outcome::Rejected, Duration::from_micros(30), Some(5));
        let mut second = ThreadStats::new();
        second.record(Outcome::Accepted, Duration::from_millis(4), Some(-3));
        second.record(Outcome::Invalid, Duration::from_millis(1), None);
        second.record(
            Outcome::Error(ErrorKind::Timeout),
            Duration::from_secs(1),
            Some(1),
        );
        second.count_status(202);
        first.merge(&second);
        assert_eq!(first.sent(), 5);
        assert_eq!(first.count(Outcome::Accepted), 2);
        assert_eq!(first.accepted_amount_sum, 7);
        assert_eq!(first.invalid_bodies_sent, 1);
        assert_eq!(first.errors_by_kind[ErrorKind::Timeout as usize], 1);
        assert_eq!(first.status_counts[202], 1);
        assert!(first.latency_us[0].max() >= 4_000);
    }
}
