//! A one-way alarm: raised once, never lowered, and awaited by whoever must react.
//!
//! Invariant: once [`Latch::raise`] returned, [`Latch::is_raised`] is `true` everywhere and
//! every [`Latch::raised`] future resolves (also those created before the raise and polled
//! after it: a `Notified` future sees `notify_waiters` calls from its creation on).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A one-way alarm (a worker died, the log's storage failed).
#[derive(Debug, Default)]
pub struct Latch {
    raised: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Raises the alarm; `true` the first time.
    pub fn raise(&self) -> bool {
        let first = !self.raised.swap(true, Ordering::AcqRel);
        self.notify.notify_waiters();
        first
    }

    /// Whether the alarm was raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once the alarm is raised (at once if it already was).
    pub async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Latch;

    #[tokio::test]
    async fn a_waiter_created_before_the_raise_wakes_and_the_raise_counts_once() {
        let latch = Arc::new(Latch::default());
        let waiter = tokio::spawn({
            let latch = Arc::clone(&latch);
            async move { latch.raised().await }
        });
        tokio::task::yield_now().await;
        assert!(!latch.is_raised());
        assert!(latch.raise(), "the first raise is the first");
        assert!(!latch.raise(), "a second raise is not");
        waiter.await.expect("the waiter wakes");
        latch.raised().await; // already raised: resolves at once
    }
}
