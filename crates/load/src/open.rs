//! The open loop: request `n` is due at `t0 + n / rate`, whatever the server does.
//!
//! Lesson (stages 5 and 7, wrk2, docs/stages.md): a closed loop waits for slow answers and so sends
//! less exactly when the server struggles, hiding the latency users would see (coordinated
//! omission). Here the schedule is fixed; latency is measured from the intended start, a
//! request started more than [`LATE_START_THRESHOLD`] after its due time counts as late, and
//! one due while the in-flight cap is reached is dropped and counted, never silently delayed.
//! Invariant: in-flight requests on a thread never exceed its cap, and every scheduled request
//! is either sent (one outcome) or counted as dropped.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::{Connection, ThreadContext, request_once};
use crate::events::EventSource;

/// A request starting later than this after its due time counts as a late start. tokio's
/// timer has millisecond granularity, so up to ~1 ms of lateness is the timer, not overload.
pub const LATE_START_THRESHOLD: Duration = Duration::from_millis(2);

/// With precise pacing, the timer wakes the pacer this long before a due time and the rest
/// is spent yielding in a loop: tokio's timer has millisecond granularity.
pub const PRECISE_SPIN_WINDOW: Duration = Duration::from_millis(1);

/// Waits until `due`: on tokio's timer (at most ~1 ms late), or precisely by sleeping until
/// [`PRECISE_SPIN_WINDOW`] before it and then yielding until it has come.
async fn wait_until(due: Instant, precise: bool) {
    let now = Instant::now();
    if due <= now {
        // Catching up: no timer needed, but let the requests just spawned run now and then
        // (otherwise a long catch-up would fill the in-flight cap and drop the rest).
        tokio::task::consume_budget().await;
        return;
    }
    if !precise {
        tokio::time::sleep_until(due.into()).await;
        return;
    }
    if let Some(wake) = due.checked_sub(PRECISE_SPIN_WINDOW)
        && wake > now
    {
        tokio::time::sleep_until(wake.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// One thread's slice of the schedule: the requests `n` with `n % stride == offset`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// When request 0 is due.
    pub t0: Instant,
    /// Requests per second over all threads.
    pub rate_per_second: f64,
    /// Requests scheduled over all threads.
    pub total: u64,
    /// This thread's first request number.
    pub offset: u64,
    /// Number of threads sharing the schedule.
    pub stride: u64,
    /// This thread's cap on requests in flight.
    pub max_in_flight: usize,
}

impl Schedule {
    /// Requests scheduled by an open loop of `rate_per_second` over `duration`: those due
    /// strictly before the end.
    pub fn total_for(rate_per_second: f64, duration: Duration) -> u64 {
        let product = rate_per_second * duration.as_secs_f64();
        let nearest = product.round();
        // A whole product (400.0000000001 from `--requests 400 --rate 200`) is that many.
        let total = if (product - nearest).abs() <= 1e-9 * nearest.max(1.0) {
            nearest
        } else {
            product.ceil()
        };
        total.max(0.0) as u64
    }

    fn due(&self, request_number: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(request_number as f64 / self.rate_per_second)
    }
}

/// Idle connections and the in-flight count of one thread.
#[derive(Debug, Default)]
struct Pool {
    idle: RefCell<Vec<Connection>>,
    in_flight: Cell<usize>,
    all_done: Notify,
}

/// Runs this thread's slice of the schedule, then waits for its requests in flight.
pub async fn run_thread(context: Rc<ThreadContext>, schedule: Schedule) {
    let pool = Rc::new(Pool::default());
    let stream = u64::MAX - context.thread_index as u64;
    let mut events = EventSource::new(&context.shared.config, stream);
    let mut request_number = schedule.offset;
    while request_number < schedule.total && !context.shared.stopping() {
        let due = schedule.due(request_number);
        request_number += schedule.stride;
        wait_until(due, context.shared.config.precise_pacing).await;
        if due.elapsed() > LATE_START_THRESHOLD {
            context.stats.borrow_mut().late_starts += 1;
        }
        if pool.in_flight.get() >= schedule.max_in_flight {
            context.stats.borrow_mut().dropped += 1;
            context.tick();
            continue;
        }
        pool.in_flight.set(pool.in_flight.get() + 1);
        let body = events.next_body();
        let connection = pool.idle.borrow_mut().pop().unwrap_or_default();
        let context = Rc::clone(&context);
        let pool = Rc::clone(&pool);
        tokio::task::spawn_local(async move {
            let mut connection = connection;
            request_once(&context, &mut connection, body, due).await;
            pool.idle.borrow_mut().push(connection);
            pool.in_flight.set(pool.in_flight.get() - 1);
            if pool.in_flight.get() == 0 {
                pool.all_done.notify_one();
            }
        });
    }
    while pool.in_flight.get() > 0 {
        pool.all_done.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_holds_every_request_due_before_the_end() {
        // Proves the request count of an open loop: 200/s for 2 s is 400 requests, a
        // fractional product rounds up (requests due at 0, 1/3, 2/3, 1, 4/3 within 1.5 s).
        assert_eq!(Schedule::total_for(200.0, Duration::from_secs(2)), 400);
        assert_eq!(Schedule::total_for(3.0, Duration::from_millis(1500)), 5);
        assert_eq!(Schedule::total_for(0.5, Duration::from_secs(1)), 1);
        let requests = 987_654_321_u64;
        let duration = Duration::from_secs_f64(requests as f64 / 3_000.0);
        assert_eq!(Schedule::total_for(3_000.0, duration), requests);
        let schedule = Schedule {
            t0: Instant::now(),
            rate_per_second: 4.0,
            total: 8,
            offset: 1,
            stride: 2,
            max_in_flight: 1,
        };
        assert_eq!(schedule.due(2) - schedule.t0, Duration::from_millis(500));
    }
}
