//! One load thread's shared state and the connection each worker owns.
//!
//! Lesson (stages 6 and 7, docs/stages.md, and other load generators): the generator must not be
//! the bottleneck. Each worker owns one HTTP/1 connection (`hyper::client::conn::http1`, no pool,
//! no lock), the request head is built from pre-parsed parts, tallies go into the thread's own
//! [`ThreadStats`] with no message per request.
//! Invariant: every request that is started ends in exactly one recorded outcome, and a
//! connection that timed out or broke is dropped and replaced (and the replacement counted).
//! With `--retry`, a resend carries the very same bytes (so the same ids) and each of a body's
//! events is settled once, from the last attempt's answer.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::config::LoadConfig;
use crate::config::RetryPolicy;
use crate::events::Body;
use crate::stats::{ErrorKind, Outcome, ThreadStats};
use crate::target::Target;

/// A response body longer than this is not read further and its connection is dropped: the
/// server's answers are tiny JSON documents, so anything bigger is a misbehaving target.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Pause after a failed connect, so a dead target does not turn the run into a busy loop.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// The header the server sets on the answer to a resend of an event it already has.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The per-event part of a 200 answer to a batch: only the events not accepted are listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct BatchAnswer {
    /// The events not accepted, by index.
    #[serde(default)]
    pub results: Vec<BatchResult>,
}

/// One event of a batch that was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct BatchResult {
    /// Its position in the batch (0-based).
    pub index: usize,
    /// `rejected` or `duplicate`.
    pub status: String,
}

/// What one attempt of a request came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The request's class.
    pub outcome: Outcome,
    /// The HTTP status (0 when there was no answer).
    pub status: u16,
    /// The answer said the event was a resend of one already applied (`Idempotent-Replayed`).
    pub replayed: bool,
    /// A batch's 2xx answer, when its body parsed as one.
    pub batch: Option<BatchAnswer>,
}

impl Attempt {
    fn failed(kind: ErrorKind) -> Self {
        Self {
            outcome: Outcome::Error(kind),
            status: 0,
            replayed: false,
            batch: None,
        }
    }

    /// Whether the same body should be sent again: no answer came (timeout, connect or
    /// transport error: the events may or may not have been applied), or the server refused
    /// it for now (503, 429: nothing applied).
    pub fn is_retryable(&self) -> bool {
        match self.outcome {
            Outcome::Error(kind) => kind != ErrorKind::Status,
            Outcome::Rejected => self.status == 503 || self.status == 429,
            Outcome::Accepted | Outcome::Invalid => false,
        }
    }
}

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
        let content_type = if self.shared.config.batch_events.is_some() {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        request
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
    /// request timeout. Returns what came back; a failed connection is dropped.
    pub async fn send(&mut self, context: &ThreadContext, body: Bytes) -> Attempt {
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
            Ok(attempt) => {
                context.stats.borrow_mut().count_status(attempt.status);
                attempt
            }
            Err(kind) => {
                // Broken, or dropped mid-flight on timeout (hyper then closes it): replace it.
                self.link.sender = None;
                Attempt::failed(kind)
            }
        }
    }
}

impl Link {
    async fn exchange(
        &mut self,
        context: &ThreadContext,
        body: Bytes,
    ) -> Result<Attempt, ErrorKind> {
        let sender = self.ready(context).await?;
        let response = sender
            .send_request(context.request(body))
            .await
            .map_err(|_| ErrorKind::Transport)?;
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        let keep = context.shared.config.batch_events.is_some() && (200..300).contains(&status);
        let mut body = response.into_body();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ErrorKind::Transport)?;
            if let Some(data) = frame.data_ref() {
                if received.len() + data.len() > MAX_RESPONSE_BYTES {
                    return Err(ErrorKind::Transport);
                }
                if keep {
                    received.extend_from_slice(data);
                }
            }
        }
        Ok(Attempt {
            outcome: Outcome::from_status(status),
            status,
            replayed,
            batch: keep
                .then(|| serde_json::from_slice(&received).ok())
                .flatten(),
        })
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

/// Runs one request on `connection` (resending it under the retry policy), records each
/// attempt (the first timed from `started`, resends from their own send, all of them also
/// from the actual send for the service-time histogram), settles the body's events from the
/// last attempt and advances the progress counter. Returns the last attempt's outcome.
pub async fn request_once(
    context: &ThreadContext,
    connection: &mut Connection,
    body: Body,
    started: Instant,
) -> Outcome {
    let mut attempt_started = started;
    let mut retries = 0_u32;
    let attempt = loop {
        let sent_at = Instant::now();
        let attempt = connection.send(context, body.bytes.clone()).await;
        {
            let mut stats = context.stats.borrow_mut();
            stats.record_service(sent_at.elapsed());
            stats.record(attempt.outcome, attempt_started.elapsed());
        }
        if attempt.outcome == Outcome::Error(ErrorKind::Connect) {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
        let may_retry = context
            .shared
            .config
            .retry
            .is_some_and(|policy| retries < policy.max_retries);
        if !(may_retry && attempt.is_retryable()) || context.shared.stopping() {
            break attempt;
        }
        retries += 1;
        tokio::time::sleep(RetryPolicy::backoff(retries)).await;
        context.stats.borrow_mut().retries += 1;
        attempt_started = Instant::now();
    };
    context.stats.borrow_mut().settle(&body, &attempt);
    context.tick();
    attempt.outcome
}
