//! What the accept loop does when `accept` fails, above all when the process is out of file
//! descriptors.
//!
//! Lesson: at the open-file limit `accept` fails with EMFILE and leaves the connection in the
//! kernel's backlog; the loop retried every 50 ms, logged a warning each time, and the clients
//! waited in the backlog for an answer that never came. The classic defence (libev, nginx's
//! advice, Go's net/http backs off too) is a spare descriptor: hold one open file in reserve,
//! and when `accept` fails, close the spare, accept the waiting connection and close it at
//! once (the client learns at once), then take the spare back.
//! Invariant: a failed accept never spins (at most one pass per [`ACCEPT_ERROR_BACKOFF`] when
//! nothing can be refused), and the warning is written at most once per
//! [`ACCEPT_WARNING_INTERVAL`], with the count of failures it stands for.

use std::fs::File;
use std::io;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::metrics::ServerMetrics;

/// Pause after a failed `accept` that freed nothing (e.g. the spare could not be taken back),
/// so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Least time between two "accept failed" warnings: often enough to show the trouble goes on,
/// rarely enough that a flood of refused clients writes six lines a minute, not 1,200.
pub const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The spare descriptor and the warning's rate limit, owned by the accept loop.
#[derive(Debug)]
pub(crate) struct AcceptFailures {
    spare: Option<File>,
    last_warning: Option<Instant>,
    failures_since_warning: u64,
}

impl AcceptFailures {
    /// Opens the spare descriptor (`/dev/null`; where there is none, failures only back off).
    pub fn new() -> Self {
        Self {
            spare: open_spare(),
            last_warning: None,
            failures_since_warning: 0,
        }
    }

    /// Handles one failed accept: warns (rate-limited), then refuses one waiting connection
    /// with the spare descriptor, or backs off when that is not possible.
    pub async fn handle(
        &mut self,
        error: &io::Error,
        listener: &TcpListener,
        metrics: &ServerMetrics,
    ) {
        self.warn(error);
        if self.refuse_one(listener) {
            metrics.connections_refused.inc();
        } else {
            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
        }
    }

    /// Frees the spare, accepts a waiting connection if there is one and closes it, and takes
    /// the spare back; whether a connection was refused.
    fn refuse_one(&mut self, listener: &TcpListener) -> bool {
        if self.spare.take().is_none() {
            self.spare = open_spare();
            return false;
        }
        let mut refused = false;
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        if let Poll::Ready(Ok((stream, _peer))) = listener.poll_accept(&mut context) {
            drop(stream); // closed at once: the client sees the end instead of waiting
            refused = true;
        }
        self.spare = open_spare();
        refused
    }

    /// Logs the failure unless one was logged within [`ACCEPT_WARNING_INTERVAL`].
    fn warn(&mut self, error: &io::Error) {
        self.failures_since_warning += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < ACCEPT_WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            %error,
            failures = self.failures_since_warning,
            "accept failed: refusing new connections while it lasts (out of file descriptors? \
             raise `ulimit -n` or lower --max-connections)"
        );
        self.last_warning = Some(now);
        self.failures_since_warning = 0;
    }
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}
