//! Stage 2: the async echo server, one tokio task per connection.
//!
//! Lesson: stage 2 (docs/stages.md). The same echo as stage 1, but each client gets its own task,
//! so a client that sends nothing waits alone and everyone else is served.
//! Invariant: no timeouts (as in the seed), bounded buffers (`raw::request`), and every task it
//! starts is tracked: [`EchoServerHandle::stop`] stops accepting, ends every connection task
//! (idle clients included) and waits for them, so nothing outlives the handle.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::request::{self, Progress, READ_CHUNK_BYTES};

/// A running stage-2 server (in-process, for tests, the lab and `serve`).
#[derive(Debug)]
pub struct EchoServerHandle {
    addr: SocketAddr,
    cancel: CancellationToken,
    accept_task: JoinHandle<()>,
}

impl EchoServerHandle {
    /// Binds 127.0.0.1:0 and starts serving on the current tokio runtime.
    pub async fn spawn() -> io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and starts serving on the current tokio runtime.
    #[allow(clippy::unused_async)] // async by contract: it needs the caller's tokio runtime
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        // The backlog is not the stage-2 lesson: a burst of clients must not wait on SYN retries.
        let listener = crate::conn::bind_listener(addr)?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(listener, cancel.clone()));
        Ok(Self {
            addr,
            cancel,
            accept_task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every open connection (idle ones too) and waits for their tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.accept_task.await;
    }
}

/// Accepts connections and spawns one tracked task each until cancelled.
async fn accept_loop(listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        result = serve_connection(stream) => {
                            if let Err(error) = result {
                                tracing::debug!(%error, "stage 2 connection ended with an error");
                            }
                        }
                    }
                });
            }
            Err(error) => tracing::debug!(%error, "stage 2 accept failed"),
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Reads until one complete request is buffered (no timeout), then answers it.
async fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0_u8; READ_CHUNK_BYTES];
    loop {
        match request::progress(&buffer) {
            Ok(Progress::Complete { start, end }) => {
                return stream
                    .write_all(&request::echo_response(&buffer[start..end]))
                    .await;
            }
            Ok(Progress::NeedMore) => {}
            Err(error) => return stream.write_all(&request::error_response(&error)).await,
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}
