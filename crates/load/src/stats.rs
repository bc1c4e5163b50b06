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

use crate::client::Attempt;
use crate::events::Body;

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

/// What became of the events (not the requests): each event sent is settled once, from the
/// last answer to the request that carried it, so the four outcomes add up to `sent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventTally {
    /// Events sent (resends of the same event not counted again).
    pub sent: u64,
    /// Taken and applied by this run's request.
    pub accepted: u64,
    /// Answered as a duplicate: an earlier attempt (or an earlier sender) had it applied.
    pub duplicate: u64,
    /// Refused (invalid, conflict, 503/429/507 with no resend left): not applied.
    pub rejected: u64,
    /// No answer ever came back: applied or not, the client cannot know.
    pub unanswered: u64,
}

impl EventTally {
    fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
        self.unanswered += other.unanswered;
    }
}

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
    /// Sum of the amounts of the events acknowledged (accepted, or a duplicate of one applied
    /// before), each event once however often it was sent.
    pub accepted_amount_sum: i128,
    /// Malformed bodies (or batch lines) sent on purpose, each once.
    pub invalid_bodies_sent: u64,
    /// What became of the events, each counted once.
    pub events: EventTally,
    /// Resends (attempts after a request's first).
    pub retries: u64,
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
            events: EventTally::default(),
            retries: 0,
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

    /// Records one finished request (one attempt).
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us[outcome.index()].saturating_record(micros);
        if let Outcome::Error(kind) = outcome {
            self.errors_by_kind[kind as usize] += 1;
        }
    }

    /// Settles the events of `body` from the last attempt that carried it: a 2xx takes them
    /// all but those a batch answer lists (as rejected or duplicate), a refusal rejects them
    /// all, no answer leaves them unanswered. The amounts of the acknowledged ones (accepted
    /// or duplicate: applied exactly once either way) go into the sum.
    pub fn settle(&mut self, body: &Body, last: &Attempt) {
        let amounts = body.amounts();
        let count = amounts.len() as u64;
        self.events.sent += count;
        self.invalid_bodies_sent += amounts.iter().filter(|a| a.is_none()).count() as u64;
        match last.outcome {
            Outcome::Accepted => self.settle_taken(amounts, last),
            Outcome::Rejected | Outcome::Invalid => self.events.rejected += count,
            Outcome::Error(_) => self.events.unanswered += count,
        }
    }

    fn settle_taken(&mut self, amounts: &[Option<i64>], last: &Attempt) {
        let acknowledged: i128 = amounts.iter().flatten().copied().map(i128::from).sum();
        let Some(answer) = &last.batch else {
            // A single event, or a batch answered 2xx without per-event results: all taken.
            let count = amounts.len() as u64;
            if last.replayed {
                self.events.duplicate += count;
            } else {
                self.events.accepted += count;
            }
            self.accepted_amount_sum += acknowledged;
            return;
        };
        let mut refused_sum = 0_i128;
        let (mut duplicate, mut rejected) = (0_u64, 0_u64);
        for result in &answer.results {
            if result.status == "duplicate" {
                duplicate += 1;
            } else {
                rejected += 1;
                let amount = amounts.get(result.index).copied().flatten();
                refused_sum += amount.map_or(0, i128::from);
            }
        }
        let listed = (duplicate + rejected).min(amounts.len() as u64);
        self.events.accepted += amounts.len() as u64 - listed;
        self.events.duplicate += duplicate.min(listed);
        self.events.rejected += listed - duplicate.min(listed);
        self.accepted_amount_sum += acknowledged - refused_sum;
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
        self.events.add(&other.events);
        self.retries += other.retries;
        self.late_starts += other.late_starts;
        self.dropped += other.dropped;
        self.connections_opened += other.connections_opened;
        self.reconnects += other.reconnects;
    }
}

#[cfg(test)]
impl ThreadStats {
    /// Records one single-event request of `amount` and settles it from its outcome.
    pub fn record_settled(&mut self, outcome: Outcome, latency: Duration, amount: Option<i64>) {
        self.record(outcome, latency);
        let body = Body {
            bytes: bytes::Bytes::new(),
            amounts: crate::events::Amounts::One(amount),
        };
        let attempt = Attempt {
            outcome,
            status: 0,
            replayed: false,
            batch: None,
        };
        self.settle(&body, &attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{BatchAnswer, BatchResult};
    use crate::events::Amounts;

    #[test]
    fn a_batch_answer_settles_each_event_once() {
        // Proves the per-event books of a batch: the listed events are rejected or
        // duplicate, the rest accepted; the amount sum counts accepted and duplicate events
        // (applied once either way) and leaves out the rejected ones; a malformed line counts
        // as sent on purpose.
        let mut stats = ThreadStats::new();
        let body = Body {
            bytes: bytes::Bytes::new(),
            amounts: Amounts::Many(vec![Some(1), Some(10), None, Some(100), Some(1000)]),
        };
        let result = |index: usize, status: &str| BatchResult {
            index,
            status: status.to_owned(),
        };
        let attempt = Attempt {
            outcome: Outcome::Accepted,
            status: 200,
            replayed: false,
            batch: Some(BatchAnswer {
                results: vec![
                    result(1, "duplicate"),
                    result(2, "rejected"),
                    result(3, "rejected"),
                ],
            }),
        };
        stats.settle(&body, &attempt);
        let events = stats.events;
        assert_eq!(events.sent, 5);
        assert_eq!(
            (events.accepted, events.duplicate, events.rejected),
            (2, 1, 2)
        );
        assert_eq!(stats.accepted_amount_sum, 1 + 10 + 1000);
        assert_eq!(stats.invalid_bodies_sent, 1);
        let refused = Attempt {
            outcome: Outcome::Rejected,
            status: 503,
            replayed: false,
            batch: None,
        };
        stats.settle(&body, &refused);
        assert_eq!(stats.events.rejected, 7);
        let lost = Attempt {
            outcome: Outcome::Error(ErrorKind::Timeout),
            ..refused
        };
        stats.settle(&body, &lost);
        assert_eq!(stats.events.unanswered, 5);
        assert_eq!(stats.accepted_amount_sum, 1011);
    }

    #[test]
    fn a_replayed_single_event_is_a_duplicate_and_counts_once() {
        // Proves a 202 with Idempotent-Replayed settles the event as a duplicate whose amount
        // is acknowledged (it was applied once, by an earlier attempt).
        let mut stats = ThreadStats::new();
        let body = Body {
            bytes: bytes::Bytes::new(),
            amounts: Amounts::One(Some(7)),
        };
        let attempt = Attempt {
            outcome: Outcome::Accepted,
            status: 202,
            replayed: true,
            batch: None,
        };
        stats.settle(&body, &attempt);
        assert_eq!((stats.events.accepted, stats.events.duplicate), (0, 1));
        assert_eq!(stats.accepted_amount_sum, 7);
    }

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
        first.record_settled(Outcome::Accepted, Duration::from_millis(2), Some(10));
        first.record_settled(Outcome::Rejected, Duration::from_micros(30), Some(5));
        let mut second = ThreadStats::new();
        second.record_settled(Outcome::Accepted, Duration::from_millis(4), Some(-3));
        second.record_settled(Outcome::Invalid, Duration::from_millis(1), None);
        second.record_settled(
            Outcome::Error(ErrorKind::Timeout),
            Duration::from_secs(1),
            Some(1),
        );
        second.count_status(202);
        second.retries = 2;
        first.merge(&second);
        assert_eq!(first.sent(), 5);
        assert_eq!(first.count(Outcome::Accepted), 2);
        assert_eq!(first.accepted_amount_sum, 7);
        assert_eq!(first.invalid_bodies_sent, 1);
        assert_eq!(first.retries, 2);
        let events = first.events;
        assert_eq!((events.sent, events.accepted, events.rejected), (5, 2, 2));
        assert_eq!(events.unanswered, 1);
        assert_eq!(first.errors_by_kind[ErrorKind::Timeout as usize], 1);
        assert_eq!(first.status_counts[202], 1);
        assert!(first.latency_us[0].max() >= 4_000);
    }
}
