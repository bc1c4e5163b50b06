//! Stage 1: the seed's blocking, single-threaded echo server.
//!
//! Lesson: stage 1 (docs/stages.md). One thread accepts one connection and reads it with blocking
//! I/O until the request is complete, then echoes the body. While it waits on a client that
//! sends nothing (or half a request), it accepts nobody else: one idle client freezes it.
//! Invariant: no timeouts on purpose (that is the lesson), but every buffer is bounded
//! (`raw::request`), and an operator can always stop it: [`BlockingServerHandle::stop`] shuts
//! the socket of the client it is stuck on, then wakes `accept` with a connection of its own.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::request::{self, Progress, READ_CHUNK_BYTES};

/// State shared between the server thread and its handle.
#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    /// A clone of the connection being served, so `stop` can unblock a read on it.
    current: Mutex<Option<TcpStream>>,
}

/// A running stage-1 server on its own thread (in-process, for tests, the lab and `serve`).
#[derive(Debug)]
pub struct BlockingServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BlockingServerHandle {
    /// Binds 127.0.0.1:0 and starts serving on one thread.
    pub fn spawn() -> io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Binds `addr` and starts serving on one thread.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("stage1-blocking".into())
            .spawn(move || accept_loop(&listener, &thread_shared))?;
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and joins its thread. Returns promptly even while a client holds the
    /// server: the connection being served is shut down (its client sees the socket close),
    /// then a wake-up connection unblocks `accept`. Clients still waiting in the backlog are
    /// dropped unanswered.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(stream) = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept; failure means it is not blocked there.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BlockingServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown_and_join();
        }
    }
}

/// Accepts one connection at a time and serves it to the end before accepting the next.
fn accept_loop(listener: &TcpListener, shared: &Shared) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        *shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stream.try_clone().ok();
        if let Err(error) = serve_connection(stream) {
            tracing::debug!(%error, "stage 1 connection ended with an error");
        }
        *shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Reads until one complete request is buffered (blocking, no timeout), then answers it.
fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0_u8; READ_CHUNK_BYTES];
    loop {
        match request::progress(&buffer) {
            Ok(Progress::Complete { start, end }) => {
                return stream.write_all(&request::echo_response(&buffer[start..end]));
            }
            Ok(Progress::NeedMore) => {}
            Err(error) => return stream.write_all(&request::error_response(&error)),
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(()); // the client left before finishing its request
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}
