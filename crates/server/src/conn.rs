//! The accept loop and per-connection deadlines: the front door's defence against slow and
//! hostile clients.
//!
//! Lesson: stages 1 and 2 (docs/stages.md): one idle client froze the blocking server, and async
//! alone still lets thousands of idle clients hold sockets and memory forever. Every
//! connection here is bounded in number (a semaphore: over the cap, a new connection is closed
//! at once and nothing accepted is disturbed) and in time: a new connection must deliver a
//! complete request head within the header timeout, a keep-alive connection may sit idle only
//! for the idle timeout, and a request head started on an idle connection must complete within
//! the header timeout. The body timeout is enforced by the handler (it answers 408). A new
//! connection gets hyper's buffers only once its first bytes arrive, so a silent client costs
//! its socket and one small task, not a read buffer. A connection that may still have unread
//! input when it ends is closed lingering ([`crate::linger`]), so answers already written reach
//! the client instead of being destroyed by a reset.
//! Invariant: while a request is in flight the connection has no deadline of its own (slow
//! processing, e.g. stage 4's lock, is not the client's fault); otherwise exactly one deadline
//! is armed, and it closes the connection when it passes.
//!
//! Cost: a keep-alive connection changes phase twice per request, so the deadline is kept as
//! a plain `Instant` and the one timer behind it is lazy: it is moved only when a deadline
//! would otherwise come before it, and re-armed when it fires early. It is always due at or
//! before the armed deadline, so no deadline is missed, and a busy connection pays two clock
//! reads per request instead of two timer-wheel updates (a lock and a wheel slot each).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept_failure::AcceptFailures;
use crate::config::FrontDoorConfig;
use crate::metrics::ServerMetrics;
use crate::routes::Routes;
use crate::shutdown::StopSignal;

/// Listen backlog: connections the kernel completes before we accept them. std and mio use
/// 128, which a burst of a few hundred connects overflows (the kernel then drops SYNs and the
/// clients retry after a second); 4096 absorbs a burst of thousands. The kernel caps it at
/// `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] (call inside a tokio runtime).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// hyper's read buffer must hold a whole head; this much more leaves room for body bytes that
/// arrive with it. Bounds per-connection memory together with `max_header_bytes`.
pub const READ_BUFFER_SLACK_BYTES: usize = 8 * 1024;
/// hyper's smallest allowed read buffer.
const HYPER_MIN_BUFFER_BYTES: usize = 8 * 1024;

/// What the accept loop needs, shared by every connection.
#[derive(Debug, Clone)]
pub(crate) struct Acceptor {
    pub routes: Arc<Routes>,
    pub front_door: FrontDoorConfig,
    pub metrics: Arc<ServerMetrics>,
    /// Raised when a graceful stop starts: stop accepting, finish in-flight requests.
    pub graceful: StopSignal,
    /// Cancelled when the graceful stop has waited long enough: drop every connection.
    pub hard_stop: CancellationToken,
    pub tracker: TaskTracker,
    /// TLS on this listener, when `tls-cert` and `tls-key` are set.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Acceptor {
    /// Accepts until a graceful stop starts; each connection runs on its own tracked task.
    pub async fn run(self, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(self.front_door.max_connections));
        let mut failures = AcceptFailures::new();
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.graceful.raised() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => self.admit(stream, &permits),
                Err(error) => failures.handle(&error, &listener, &self.metrics).await,
            }
        }
    }

    /// Starts serving `stream`, or closes it at once when the connection cap is reached.
    fn admit(&self, stream: TcpStream, permits: &Arc<Semaphore>) {
        let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
            self.metrics.connections_refused.inc();
            drop(stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = self.clone();
        self.tracker
            .spawn(async move { acceptor.handle_connection(stream, permit).await });
    }

    /// Serves one connection until it closes, a deadline passes, or the server stops.
    async fn handle_connection(self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let _open = OpenConnection::new(&self.metrics, permit);
        let header_deadline = Instant::now() + self.front_door.header_timeout();
        if !self.first_bytes(&stream, header_deadline).await {
            return;
        }
        // Boxed: the HTTP state machine is large; a task still waiting above stays small.
        match &self.tls {
            None => Box::pin(self.run_hyper(stream, header_deadline)).await,
            Some(tls) => {
                let acceptor = tls.acceptor();
                if let Some(stream) = self.handshake(&acceptor, stream, header_deadline).await {
                    Box::pin(self.run_hyper(stream, header_deadline)).await;
                }
            }
        }
    }

    /// The TLS handshake, bounded by the header deadline like a request head (a client that
    /// never finishes its hello is cut there); `None`: it failed (plain HTTP to the TLS port,
    /// a bad hello), timed out, or the server is stopping hard.
    async fn handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        header_deadline: Instant,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let handshake = tokio::time::timeout_at(header_deadline, acceptor.accept(stream));
        let outcome = tokio::select! {
            outcome = handshake => outcome,
            () = self.hard_stop.cancelled() => return None,
        };
        match outcome {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                self.metrics.record_connection_error("tls");
                None
            }
            Err(_elapsed) => {
                self.metrics.record_timeout("header");
                self.metrics.record_connection_error("deadline");
                None
            }
        }
    }

    /// Runs hyper on a connection whose first bytes have arrived, then closes it lingering
    /// (see [`crate::linger`]) unless a deadline or the hard stop ended it.
    async fn run_hyper<S: Transport>(&self, stream: S, header_deadline: Instant) {
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(
            stream,
            &self.front_door,
            header_deadline,
            &activity,
            &self.metrics,
        );
        let routes = Arc::clone(&self.routes);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::enter(&activity);
            let routes = Arc::clone(&routes);
            async move {
                let response = routes.handle(request).await;
                in_flight.0.note_answer(&response);
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        // hyper borrows the stream, so it is still ours once hyper is done with it.
        let connection = self
            .http1()
            .serve_connection(TokioIo::new(&mut io), service);
        if self.drive(connection).await.lingers(&io) {
            tokio::select! {
                () = crate::linger::close_lingering(&mut io.stream) => {}
                () = self.hard_stop.cancelled() => {}
            }
        }
    }

    /// Drives hyper until the connection ends, finishing gracefully when the server stops;
    /// says how the close should go.
    async fn drive<F>(&self, connection: F) -> Ending
    where
        F: Future<Output = hyper::Result<()>> + GracefulConnection,
    {
        tokio::pin!(connection);
        match self.graceful.or_connection(connection.as_mut()).await {
            None => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = connection.as_mut() => Ending::Close,
                    () = self.hard_stop.cancelled() => Ending::Abort,
                }
            }
            Some(Ok(())) => Ending::Close,
            Some(Err(error)) => {
                tracing::debug!(%error, "connection ended with an error");
                let kind = connection_error_kind(&error);
                self.metrics.record_connection_error(kind);
                // A malformed or oversized head may have more input behind it; a deadline or
                // a broken socket has nothing worth protecting.
                if matches!(kind, "malformed" | "head_too_large") {
                    Ending::Linger
                } else {
                    Ending::Abort
                }
            }
        }
    }

    /// Waits for the client's first bytes before hyper allocates its buffers (about 8 KiB), so
    /// a silent client costs only its socket and this task. `false`: drop the connection (the
    /// header deadline passed, the server is stopping, or the socket failed).
    async fn first_bytes(&self, stream: &TcpStream, header_deadline: Instant) -> bool {
        // `peek` waits for real data without consuming it (`readable()` may wake spuriously).
        let mut first = [0_u8; 1];
        tokio::select! {
            peeked = tokio::time::timeout_at(header_deadline, stream.peek(&mut first)) => {
                match peeked {
                    Ok(Ok(bytes)) => bytes > 0, // 0: the client left without a word
                    Ok(Err(_)) => false,
                    Err(_elapsed) => {
                        self.metrics.record_timeout("header");
                        self.metrics.record_connection_error("deadline");
                        false
                    }
                }
            }
            () = self.graceful.raised() => false,
        }
    }

    /// hyper's HTTP/1 settings: head limits from the config, no timer of its own, flat writes.
    fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None) // DeadlineIo owns every connection deadline
            // One flat buffer per response: head and body are a few hundred bytes, and one
            // contiguous send measured 9 % more requests/s under wrk than a 2-segment writev
            // (0.83 → 0.91 of bare hyper, 9 paired rounds; bare hyper itself gained nothing).
            .writev(false)
            .max_headers(self.front_door.max_headers)
            .max_header_size(self.front_door.max_header_bytes)
            .max_buf_size(
                (self.front_door.max_header_bytes + READ_BUFFER_SLACK_BYTES)
                    .max(HYPER_MIN_BUFFER_BYTES),
            );
        builder
    }
}

/// How a connection's close goes once hyper is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// hyper refused the input: shut the write side and drain the rest ([`crate::linger`]).
    Linger,
    /// An orderly end: linger only if input may still be unread (an answer closed the
    /// connection before its body was read, or bytes are waiting), else close at once, so an
    /// idle keep-alive client does not hold up a graceful stop.
    Close,
    /// Close at once (deadline passed, socket broken, hard stop).
    Abort,
}

impl Ending {
    /// Whether the close should linger, given what happened on the connection.
    fn lingers<S: Transport>(self, io: &DeadlineIo<S>) -> bool {
        match self {
            Self::Linger => true,
            Self::Close => {
                io.activity.closed_before_body.load(Ordering::Relaxed)
                    || input_pending(io.stream.tcp())
            }
            Self::Abort => false,
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Whether the client has sent bytes nobody read (one byte is taken: it would be discarded).
fn input_pending(stream: &TcpStream) -> bool {
    let mut probe = [0_u8; 1];
    matches!(stream.try_read(&mut probe), Ok(read) if read > 0)
}

/// hyper's HTTP/1 connection, as far as [`Acceptor::drive`] needs it.
trait GracefulConnection {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

/// A bounded label for why hyper ended a connection with an error.
fn connection_error_kind(error: &hyper::Error) -> &'static str {
    if error.is_parse_too_large() {
        "head_too_large"
    } else if error.is_parse() || error.is_parse_status() {
        "malformed"
    } else if error.is_incomplete_message() {
        "incomplete"
    } else if error.is_timeout() || ended_by_deadline(error) {
        "deadline"
    } else {
        "io"
    }
}

/// Whether the error is a [`DeadlineIo`] deadline passing (an I/O error of kind `TimedOut`).
fn ended_by_deadline(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .is_some_and(|io_error| io_error.kind() == io::ErrorKind::TimedOut)
}

/// Keeps the open-connections gauge and the cap's permit for one connection's lifetime.
struct OpenConnection {
    metrics: Arc<ServerMetrics>,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(metrics: &Arc<ServerMetrics>, permit: OwnedSemaphorePermit) -> Self {
        metrics.open_connections.inc();
        Self {
            metrics: Arc::clone(metrics),
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// Requests started and in flight on one connection, shared by its service and its I/O.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicU64,
    /// An answer closed the connection before its request body was read (413, 408, 400
    /// `invalid_body`): the rest of that body may still be arriving.
    closed_before_body: AtomicBool,
}

impl Activity {
    /// Notes an answer that closes the connection (error answers only, so a 202 pays one
    /// comparison).
    fn note_answer(&self, response: &axum::response::Response) {
        let closes = || {
            response
                .headers()
                .get(hyper::header::CONNECTION)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
        };
        if !response.status().is_success() && closes() {
            self.closed_before_body.store(true, Ordering::Relaxed);
        }
    }
}

/// Marks one request in flight from the moment hyper hands it over until its handler ends.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::SeqCst);
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a connection stands, and so which deadline is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, first head not complete yet: header deadline from accept.
    Fresh,
    /// Between requests, nothing received: idle deadline.
    Idle,
    /// A new head has started arriving on a kept-alive connection: header deadline.
    Head,
    /// A request is being handled: no connection deadline.
    InFlight,
}

/// A stream that fails its reads and writes with `TimedOut` once the armed deadline passes.
struct DeadlineIo<S> {
    stream: S,
    activity: Arc<Activity>,
    metrics: Arc<ServerMetrics>,
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    /// When the current phase's deadline passes (meaningless while in flight).
    deadline: Instant,
    seen_started: u64,
    /// The last write could not go out (the client does not read its answers): a deadline
    /// that passes now is counted under `phase="write"`, whichever phase armed it.
    write_blocked: bool,
    /// Due at or before `deadline` whenever a deadline is armed.
    timer: Pin<Box<Sleep>>,
}

impl<S> DeadlineIo<S> {
    /// `header_deadline`: when the first request head must be complete (accept + timeout).
    fn new(
        stream: S,
        front_door: &FrontDoorConfig,
        header_deadline: Instant,
        activity: &Arc<Activity>,
        metrics: &Arc<ServerMetrics>,
    ) -> Self {
        Self {
            stream,
            activity: Arc::clone(activity),
            metrics: Arc::clone(metrics),
            header_timeout: front_door.header_timeout(),
            idle_timeout: front_door.idle_timeout(),
            phase: Phase::Fresh,
            deadline: header_deadline,
            seen_started: 0,
            write_blocked: false,
            timer: Box::pin(tokio::time::sleep_until(header_deadline)),
        }
    }

    /// Moves the phase on from what the service reports, re-arming the deadline on change.
    fn refresh(&mut self) {
        let started = self.activity.started.load(Ordering::SeqCst);
        let busy = self.activity.in_flight.load(Ordering::SeqCst) > 0;
        if busy {
            self.phase = Phase::InFlight;
        } else if started != self.seen_started || self.phase == Phase::InFlight {
            self.arm(Phase::Idle, self.idle_timeout);
        }
        self.seen_started = started;
    }

    /// Bytes arrived: on an idle connection, a new head has started.
    fn on_bytes_read(&mut self) {
        if self.phase == Phase::Idle {
            self.arm(Phase::Head, self.header_timeout);
        }
    }

    /// Enters `phase` with a deadline `timeout` from now. The timer moves only when it would
    /// be due after the new deadline (in steady keep-alive traffic it is not: it stays at an
    /// earlier deadline, fires there once, and is re-armed by [`Self::check_deadline`]).
    fn arm(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        self.deadline = Instant::now() + timeout;
        if self.timer.deadline() > self.deadline {
            self.timer.as_mut().reset(self.deadline);
        }
    }

    /// `Err(TimedOut)` once the armed deadline has passed (never while a request is in flight).
    /// A timer that fired early is re-armed: to the deadline, or while in flight (no deadline)
    /// to one idle timeout ahead, which [`Self::arm`] pulls in if a shorter deadline comes.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = if self.phase == Phase::InFlight {
                now + self.idle_timeout
            } else if now >= self.deadline {
                return Err(self.deadline_passed());
            } else {
                self.deadline
            };
            self.timer.as_mut().reset(next);
        }
        Ok(())
    }

    fn deadline_passed(&self) -> io::Error {
        let phase = if self.write_blocked {
            "write"
        } else if self.phase == Phase::Idle {
            "idle"
        } else {
            "header"
        };
        self.metrics.record_timeout(phase);
        io::Error::new(io::ErrorKind::TimedOut, format!("{phase} timeout passed"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.refresh();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.check_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.refresh();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.write_blocked = written.is_pending();
        match written {
            Poll::Pending => match this.check_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
            ready @ Poll::Ready(_) => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
