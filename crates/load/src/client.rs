//! One load thread's shared state and the connection each worker owns.
//!
//! Lesson (stages 6 and 7, docs/stages.md, and other load generators): the generator must not be
//! the bottleneck. Each worker owns one HTTP/1 connection (`hyper::client::conn::http1`, no pool,
//! no lock), the request head is built from pre-parsed parts, tallies go into the thread's own
//! [`ThreadStats`] with no message per request.
//! Invariant: every request that is started ends in exactly one recorded outcome, and a
//! connection that timed out or broke is dropped and replaced (and the replacement counted).

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::config::LoadConfig;
use crate::events::Body;
use crate::stats::{ErrorKind, Outcome, ThreadStats};
use crate::target::Target;

/// A response body longer than this is not read further and its connection is dropped: the
/// server's answers are tiny JSON documents, so anything bigger is a misbehaving target.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Pause after a failed connect, so a dead target does not turn the run into a busy loop.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// What every load thread shares with the coordinator (read-mostly, `Sync`).
#[derive(Debug)]
pub struct Shared {
    /// The run's configuration.
    pub config: LoadConfig,
    /// Where to send.
    pub target: Target,
    /// Set when the run must end early (Ctrl-C): workers stop starting requests.
    pub stop: AtomicBool,
    /// Finished requests (plus dropped ones) per thread, for the progress bar; each thread
    /// writes only its own counter, so there is no contention.
    pub progress: Vec<AtomicU64>,
    /// Closed loop: requests started so far over all threads. One shared count (an uncontended
    /// cache line most of the time, one relaxed add per request) keeps every connection busy to
    /// the end, where a per-thread split would idle the thread that finished its share first.
    pub requests_started: AtomicU64,
}

impl Shared {
    /// True once the run was asked to stop early.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One load thread's context, shared by its workers through `Rc` (single-threaded).
#[derive(Debug)]
pub struct ThreadContext {
    /// The run-wide state.
    pub shared: Arc<Shared>,
    /// This thread's index (selects its progress counter).
    pub thread_index: usize,
    /// This thread's tallies.
    pub stats: RefCell<ThreadStats>,
    /// The `Host` header value, built once (cloning it is a reference-count increment).
    host: Option<HeaderValue>,
}

impl ThreadContext {
    /// A context for thread `thread_index`.
    pub fn new(shared: Arc<Shared>, thread_index: usize) -> Self {
        // The host part of a parsed URI is always a valid header value.
        let host = HeaderValue::from_str(&shared.target.host_header).ok();
        Self {
            shared,
            thread_index,
            stats: RefCell::new(ThreadStats::new()),
            host,
        }
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        request.uri_mut().clone_from(&self.shared.target.path);
        // Two inserts into a fresh map are cheaper than cloning a prepared `HeaderMap`.
        let headers = request.headers_mut();
        headers.reserve(2);
        if let Some(host) = &self.host {
            headers.insert(HOST, host.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request
    }

    /// Records a finished request and advances the progress counter.
    pub fn finish(&self, outcome: Outcome, latency: Duration, body: &Body) {
        self.stats
            .borrow_mut()
            .record(outcome, latency, body.amount);
        self.tick();
    }

    /// Advances this thread's progress counter by one.
    pub fn tick(&self) {
        if let Some(counter) = self.shared.progress.get(self.thread_index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A worker's connection: opened lazily, reused while healthy, replaced when lost.
#[derive(Debug, Default)]
pub struct Connection {
    link: Link,
    /// Reused request timer: pushing a registered tokio timer's deadline later is one atomic
    /// update (the wheel only sees it when the old deadline comes), unlike a fresh
    /// `tokio::time::timeout` per request, which registers and removes a wheel entry each time.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The HTTP/1 sender of a [`Connection`] (a separate field from the timer, so both can be
/// borrowed at once).
#[derive(Debug, Default)]
struct Link {
    sender: Option<SendRequest<Full<Bytes>>>,
    ever_connected: bool,
}

impl Connection {
    /// Sends one request (connecting first if needed) and reads the whole answer, within the
    /// request timeout. Returns the outcome; a failed connection is dropped.
    pub async fn send(&mut self, context: &ThreadContext, body: Bytes) -> Outcome {
        let deadline = tokio::time::Instant::now() + context.shared.config.request_timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let result = tokio::select! {
            biased;
            result = self.link.exchange(context, body) => result,
            () = timer.as_mut() => Err(ErrorKind::Timeout),
        };
        match result {
            Ok(status) => {
                context.stats.borrow_mut().count_status(status);
                Outcome::from_status(status)
            }
            Err(kind) => {
                // Broken, or dropped mid-flight on timeout (hyper then closes it): replace it.
                self.link.sender = None;
                Outcome::Error(kind)
            }
        }
    }
}

impl Link {
    async fn exchange(&mut self, context: &ThreadContext, body: Bytes) -> Result<u16, ErrorKind> {
        let sender = self.ready(context).await?;
        let response = sender
            .send_request(context.request(body))
            .await
            .map_err(|_| ErrorKind::Transport)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut received_bytes = 0_usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ErrorKind::Transport)?;
            if let Some(data) = frame.data_ref() {
                received_bytes += data.len();
                if received_bytes > MAX_RESPONSE_BYTES {
                    return Err(ErrorKind::Transport);
                }
            }
        }
        Ok(status)
    }

    async fn ready(
        &mut self,
        context: &ThreadContext,
    ) -> Result<&mut SendRequest<Full<Bytes>>, ErrorKind> {
        if let Some(mut sender) = self.sender.take()
            && sender.ready().await.is_ok()
        {
            return Ok(self.sender.insert(sender));
        }
        let sender = connect(&context.shared.target).await?;
        let mut stats = context.stats.borrow_mut();
        stats.connections_opened += 1;
        if self.ever_connected {
            stats.reconnects += 1;
        }
        drop(stats);
        self.ever_connected = true;
        Ok(self.sender.insert(sender))
    }
}

async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, ErrorKind> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    stream.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ErrorKind::Connect)?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Runs one request on `connection`, records it with latency measured from `started` (and
/// from the actual send, for the service-time histogram), and backs off after a failed
/// connect. Returns the outcome.
pub async fn request_once(
    context: &ThreadContext,
    connection: &mut Connection,
    body: Body,
    started: Instant,
) -> Outcome {
    let sent_at = Instant::now();
    let outcome = connection.send(context, body.bytes.clone()).await;
    context.stats.borrow_mut().record_service(sent_at.elapsed());
    context.finish(outcome, started.elapsed(), &body);
    if outcome == Outcome::Error(ErrorKind::Connect) {
        tokio::time::sleep(CONNECT_BACKOFF).await;
    }
    outcome
}
