//! The graceful stop as the accept loop, the connections and `/readyz` see it.
//!
//! Lesson: a graceful stop ("nothing lost", see docs/stages.md) starts with one signal that
//! every part of the front door observes: the accept loop stops accepting, each connection
//! finishes its request in flight and closes, `/readyz` answers 503.
//! Invariant: once raised the signal stays raised, and every waiter is woken exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio_util::sync::CancellationToken;

/// The graceful stop as connections see it: a token that wakes every waiter, and a flag
/// raised just before it. A connection polls the token once (to be woken) and then checks
/// only the flag on each wake-up: one atomic load, where polling the token again would take
/// its lock, shared by every connection, twice per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    raised: Arc<AtomicBool>,
    token: CancellationToken,
}

impl StopSignal {
    /// Starts the stop: every waiter wakes. Idempotent.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Whether the stop has been raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Completes once the stop is raised.
    pub async fn raised(&self) {
        self.token.cancelled().await;
    }

    /// Drives `connection` until it ends (`Some`) or the stop is raised first (`None`).
    pub(crate) async fn or_connection<F: Future + Unpin>(
        &self,
        mut connection: F,
    ) -> Option<F::Output> {
        let stop = self.token.cancelled();
        tokio::pin!(stop);
        let mut waiting_for_stop = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = Pin::new(&mut connection).poll(cx) {
                return Poll::Ready(Some(output));
            }
            // The first poll registers this task with the token; it stays registered.
            if !waiting_for_stop || self.is_raised() {
                waiting_for_stop = true;
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await
    }
}
