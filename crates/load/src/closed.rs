//! The closed loop: each connection sends its next request when the last answer arrives.
//!
//! Lesson (stages 2, 6, 7, docs/stages.md): this is the seed's client. Its throughput is bounded by
//! concurrency / latency, so a slow server slows the client down (coordinated omission):
//! use it to find the maximum throughput, and the open loop to measure latency honestly.
//! Invariant: a request is taken from the run's budget before it starts and the budget is
//! never exceeded, and no request starts after the deadline or a stop request.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::client::{Connection, ThreadContext, request_once};
use crate::events::EventSource;

/// The run's limits as one thread sees them: the total request count (drawn from the count
/// shared by all threads) and the deadline.
#[derive(Debug)]
pub struct Budget {
    requests: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// `requests` in all (None = unlimited) until `deadline` (None = no deadline).
    pub fn new(requests: Option<u64>, deadline: Option<Instant>) -> Self {
        Self { requests, deadline }
    }

    /// Takes one request from the budget; false when it is spent, time is up or the run stops.
    fn take(&self, context: &ThreadContext) -> bool {
        if context.shared.stopping() {
            return false;
        }
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return false;
        }
        // Overshoot past the total is harmless: each worker stops at its first refusal.
        self.requests.is_none_or(|total| {
            let started = &context.shared.requests_started;
            started.fetch_add(1, Ordering::Relaxed) < total
        })
    }
}

/// Runs `connections` closed-loop workers on the current thread's `LocalSet` until the budget
/// is spent, then returns (all workers joined).
pub async fn run_thread(context: Rc<ThreadContext>, budget: Rc<Budget>, connections: usize) {
    let mut workers = Vec::with_capacity(connections);
    for worker_index in 0..connections {
        let stream = (context.thread_index as u64) << 32 | worker_index as u64;
        let mut events = EventSource::new(&context.shared.config, stream);
        let context = Rc::clone(&context);
        let budget = Rc::clone(&budget);
        workers.push(tokio::task::spawn_local(async move {
            let mut connection = Connection::default();
            while budget.take(&context) {
                let body = events.next_body();
                request_once(&context, &mut connection, body, Instant::now()).await;
            }
        }));
    }
    for worker in workers {
        // A worker only ends by returning; a panic would be a bug we want to surface.
        if let Err(error) = worker.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}
