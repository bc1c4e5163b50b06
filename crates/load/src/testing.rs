//! Shared helpers for the load generator's own tests (unit tests in `run_tests` and the
//! integration tests in `tests/it`); hidden from the docs, not part of the API.
//!
//! Lesson: every test checks the same invariant, so it is written once here:
//! each request sent has exactly one outcome (`accepted + rejected + invalid + errors == sent`).

use std::time::Duration;

use crate::{LoadConfig, Mode, Report};

/// A closed loop of `concurrency` connections that sends exactly `requests` requests.
#[must_use]
pub fn closed_config(url: &str, concurrency: usize, requests: u64) -> LoadConfig {
    with_mode(
        url,
        Mode::Closed {
            concurrency,
            requests: Some(requests),
            duration: None,
        },
    )
}

/// A closed loop of `concurrency` connections that runs for `duration`.
#[must_use]
pub fn timed_config(url: &str, concurrency: usize, duration: Duration) -> LoadConfig {
    with_mode(
        url,
        Mode::Closed {
            concurrency,
            requests: None,
            duration: Some(duration),
        },
    )
}

/// An open loop offering `rate_per_second` for `duration`, at most `max_in_flight` at once.
#[must_use]
pub fn open_config(
    url: &str,
    rate_per_second: f64,
    duration: Duration,
    max_in_flight: usize,
) -> LoadConfig {
    with_mode(
        url,
        Mode::Open {
            rate_per_second,
            duration,
            max_in_flight,
        },
    )
}

fn with_mode(url: &str, mode: Mode) -> LoadConfig {
    let mut config = LoadConfig::new(url);
    config.mode = mode;
    config
}

/// Asserts the report's invariants: every request sent has exactly one outcome, and every
/// event sent is settled exactly once.
///
/// # Panics
/// When `accepted + rejected + invalid + errors != sent`, or the event classes do not add
/// up to `events_sent`.
pub fn assert_outcomes_add_up(report: &Report) {
    let outcomes = report.accepted + report.rejected + report.invalid + report.errors;
    assert_eq!(outcomes, report.sent, "{report:#?}");
    let events = report.events_accepted
        + report.events_duplicate
        + report.events_rejected
        + report.events_unanswered;
    assert_eq!(events, report.events_sent, "{report:#?}");
}
