//! Raw HTTP probes over plain tokio `TcpStream`s: idle connections, partial and trickled
//! requests, and one-shot exchanges with a deadline.
//!
//! Lesson (stages 1–3, docs/stages.md): the attacks the seed describes (`nc` connections that send
//! nothing, a request cut short, bytes sent one at a time) are below what an HTTP client library
//! will do for you, so the lab speaks the bytes itself.
//!
//! Invariant: every probe is bounded: a deadline on the whole exchange and a cap on the bytes
//! read ([`MAX_RESPONSE_BYTES`]); a server that never answers yields [`Answer::TimedOut`],
//! never a hang.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most response bytes a probe reads: our servers answer with small JSON bodies.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The most headers a probe parses in a response.
const MAX_RESPONSE_HEADERS: usize = 32;

/// What a server did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A complete HTTP response.
    Response {
        /// The status code.
        status: u16,
        /// The body, as text (lossy).
        body: String,
        /// Time from the first byte sent to the full response read.
        latency: Duration,
    },
    /// The server closed the connection without a (complete) response.
    Closed {
        /// Time from the first byte sent to the close.
        after: Duration,
    },
    /// No complete answer before the deadline.
    TimedOut,
}

impl Answer {
    /// The status code, if a response came back.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `reason` field of a JSON body, if any.
    pub fn reason(&self) -> Option<String> {
        let Self::Response { body, .. } = self else {
            return None;
        };
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json.get("reason")?.as_str().map(str::to_owned)
    }

    /// The latency, if a response came back.
    pub fn latency(&self) -> Option<Duration> {
        match self {
            Self::Response { latency, .. } => Some(*latency),
            _ => None,
        }
    }

    /// A short description for tables: `202 accepted`, `400 invalid_json`, `closed`, `no answer`.
    pub fn describe(&self) -> String {
        match self {
            Self::Response { status, .. } => match self.reason() {
                Some(reason) => format!("{status} {reason}"),
                None => status.to_string(),
            },
            Self::Closed { .. } => "closed".to_owned(),
            Self::TimedOut => "no answer".to_owned(),
        }
    }
}

/// A `POST /events` request with `body`, closing the connection after the answer. `headers`
/// are added as given (so tests can send `content-length` in any case); when `headers` has no
/// length header, a `Content-Length` is added.
pub fn post_events(body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head =
        String::from("POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    let has_length = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !has_length {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// A valid event request: `{"user":"<user>","amount":<amount>}` as JSON.
pub fn valid_event(user: &str, amount: i64) -> Vec<u8> {
    let body = serde_json::json!({ "user": user, "amount": amount }).to_string();
    post_events(body.as_bytes(), &[("Content-Type", "application/json")])
}

/// Opens `count` connections to `addr` that send nothing (the seed's `nc` loop).
pub async fn open_idle(addr: SocketAddr, count: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(TcpStream::connect(addr).await?);
    }
    Ok(streams)
}

/// Sends `request` on a new connection and reads the answer, all within `deadline`.
pub async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    deadline: Duration,
) -> std::io::Result<Answer> {
    exchange_paced(addr, request, Duration::ZERO, deadline).await
}

/// Like [`exchange`], but sends `request` one byte at a time with `pause` between bytes (a
/// trickling client); `pause` zero sends it at once.
pub async fn exchange_paced(
    addr: SocketAddr,
    request: &[u8],
    pause: Duration,
    deadline: Duration,
) -> std::io::Result<Answer> {
    exchange_with(addr, deadline, async |stream| {
        send(stream, request, pause).await
    })
    .await
}

/// Connects, runs `sending` on the new connection, then reads the answer; sending and reading
/// both within `deadline` (past it the answer is [`Answer::TimedOut`]).
async fn exchange_with(
    addr: SocketAddr,
    deadline: Duration,
    sending: impl AsyncFnOnce(&mut TcpStream) -> std::io::Result<()>,
) -> std::io::Result<Answer> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let work = async {
        if let Err(error) = sending(&mut stream).await {
            // The server may answer and close before we finish sending (a 413 or a timeout):
            // what it answered is still the answer.
            if !is_disconnect(&error) {
                return Err(error);
            }
        }
        read_answer(&mut stream, started).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(answer) => answer,
        Err(_elapsed) => Ok(Answer::TimedOut),
    }
}

async fn send(stream: &mut TcpStream, request: &[u8], pause: Duration) -> std::io::Result<()> {
    if pause.is_zero() {
        return stream.write_all(request).await;
    }
    for byte in request {
        stream.write_all(std::slice::from_ref(byte)).await?;
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

fn is_disconnect(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

/// Reads until a full response (by `Content-Length`, or to EOF without one), or EOF.
async fn read_answer(stream: &mut TcpStream, started: Instant) -> std::io::Result<Answer> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 4096];
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(read) => read,
            Err(error) if is_disconnect(&error) => 0,
            Err(error) => return Err(error),
        };
        if read > 0 {
            buffer.extend_from_slice(&chunk[..read]);
        }
        let at_eof = read == 0 || buffer.len() >= MAX_RESPONSE_BYTES;
        if let Some(answer) = parse_response(&buffer, at_eof, started.elapsed()) {
            return Ok(answer);
        }
        if at_eof {
            return Ok(Answer::Closed {
                after: started.elapsed(),
            });
        }
    }
}

/// A complete response from `buffer`, if there is one yet.
fn parse_response(buffer: &[u8], at_eof: bool, latency: Duration) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(buffer).ok()? else {
        return None;
    };
    let status = response.code?;
    let length = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .and_then(|header| {
            std::str::from_utf8(header.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &buffer[head_len..];
    let complete = match length {
        Some(length) => body.len() >= length,
        None => at_eof,
    };
    complete.then(|| Answer::Response {
        status,
        body: String::from_utf8_lossy(&body[..length.unwrap_or(body.len()).min(body.len())])
            .into_owned(),
        latency,
    })
}

/// Reads one response from a keep-alive connection; its status, or `None` if the connection
/// ended first. Bytes past the response stay in `buffer`.
pub async fn read_status(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(buffer) {
            let status = response.code?;
            let length: usize = response
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                .and_then(|header| std::str::from_utf8(header.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= head + length {
                buffer.drain(..head + length);
                return Some(status);
            }
        }
        if buffer.len() > MAX_RESPONSE_BYTES {
            return None;
        }
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a response is complete only once its declared body has arrived, and that a
    // response without a length is complete at EOF.
    #[test]
    fn responses_are_complete_by_length_or_eof() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 27\r\n\r\n";
        let body = br#"{"reason":"invalid_json"}  "#;
        let mut full = head.to_vec();
        full.extend_from_slice(body);
        assert!(parse_response(head, false, Duration::ZERO).is_none());
        let answer = parse_response(&full, false, Duration::ZERO).expect("complete");
        assert_eq!(answer.status(), Some(400));
        assert_eq!(answer.reason().as_deref(), Some("invalid_json"));
        assert_eq!(answer.describe(), "400 invalid_json");
        let no_length = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert!(parse_response(no_length, false, Duration::ZERO).is_none());
        let answer = parse_response(no_length, true, Duration::ZERO).expect("complete at eof");
        assert_eq!(
            answer,
            Answer::Response {
                status: 200,
                body: "hello".to_owned(),
                latency: Duration::ZERO
            }
        );
    }

    // Proves built requests carry a correct Content-Length unless the caller supplies one
    // (in whatever letter case), so header-case tests send exactly what they mean.
    #[test]
    fn requests_carry_one_length_header() {
        let request = String::from_utf8(post_events(b"{}", &[])).expect("ascii");
        assert!(request.starts_with("POST /events HTTP/1.1\r\n"));
        assert!(request.ends_with("Content-Length: 2\r\n\r\n{}"));
        let custom =
            String::from_utf8(post_events(b"{}", &[("CONTENT-LENGTH", "2")])).expect("ascii");
        assert_eq!(custom.to_lowercase().matches("content-length").count(), 1);
        assert!(custom.contains("CONTENT-LENGTH: 2\r\n"));
    }

    // Proves a probe against a listener that accepts and never answers comes back as
    // `TimedOut` instead of hanging, and a listener that closes at once yields `Closed`.
    #[tokio::test]
    async fn silent_and_closing_servers_are_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (silent, _) = listener.accept().await.expect("accept silent");
            let (closing, _) = listener.accept().await.expect("accept closing");
            drop(closing);
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(silent);
        });
        let request = valid_event("alice", 5);
        let silent = exchange(addr, &request, Duration::from_millis(100))
            .await
            .expect("connect");
        assert_eq!(silent, Answer::TimedOut);
        let closing = exchange(addr, &request, Duration::from_secs(5))
            .await
            .expect("connect");
        assert!(matches!(closing, Answer::Closed { .. }), "{closing:?}");
        server.await.expect("server task");
    }
}
