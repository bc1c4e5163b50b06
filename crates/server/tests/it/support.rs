//! Raw-TCP helpers shared by the tests: send bytes, read one response, with bounded waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest any test waits for an answer that must come: generous for a noisy 2-core machine.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Sends `request` on a new blocking connection and reads until the peer closes or
/// `wait` passes; returns what was read (possibly empty).
pub fn exchange_blocking(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(request)?;
    read_to_close(&mut stream)
}

/// Reads until the peer closes; a read timeout ends the read with what was received.
pub fn read_to_close(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(received),
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(received);
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(received);
            }
            Err(error) => return Err(error),
        }
    }
}

/// A POST with a Content-Length header spelled `header_name`.
pub fn post_with_length_header(path: &str, header_name: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{header_name}: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status code of a raw HTTP/1.1 response, if it has one.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The body of a raw response (after the blank line).
pub fn body_of(response: &[u8]) -> &[u8] {
    response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(&[][..], |index| &response[index + 4..])
}

/// Reads exactly one HTTP/1.1 response (head + Content-Length or chunked body) from a kept-
/// alive async stream; `None` if the peer closed (or `ANSWER_WAIT` passed) before a full one.
pub async fn read_response(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<RawResponse> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some((response, used)) = parse_response(pending) {
            pending.drain(..used);
            return Some(response);
        }
        let mut chunk = [0_u8; 8192];
        let read = tokio::time::timeout(ANSWER_WAIT, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..read]);
    }
}

/// One parsed raw response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON (panics in the test if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// A header's value, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Parses one complete response at the start of `buffer` (Content-Length bodies only, which
/// is what the server sends), with the number of bytes it took.
fn parse_response(buffer: &[u8]) -> Option<(RawResponse, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(buffer).ok()? else {
        return None;
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|header| {
            (
                header.name.to_owned(),
                String::from_utf8_lossy(header.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let end = head_len + length;
    if buffer.len() < end {
        return None;
    }
    Some((
        RawResponse {
            status: response.code?,
            headers,
            body: buffer[head_len..end].to_vec(),
        },
        end,
    ))
}

/// Opens a connection, sends `request` and reads one response (`None`: closed without one).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    // A server may close before reading everything we send: a failed write is an answer too.
    if stream.write_all(request).await.is_err() {
        return None;
    }
    read_response(&mut stream, &mut Vec::new()).await
}

/// A complete `POST /events` with a JSON body and a `Content-Length` header spelled `name`.
pub fn post_event_raw(name: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{name}: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A test server: the production front door with small, fast settings.
pub fn test_config() -> floodgate_server::ServerConfig {
    let mut config = floodgate_server::ServerConfig::production();
    config.engine.workers = 2;
    config.engine.queue_capacity_events = 10_000;
    config
}

/// An event body.
pub fn event_json(user: &str, amount: i64) -> String {
    serde_json::json!({"user": user, "amount": amount}).to_string()
}

/// A reqwest client that does not keep connections around between tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_WAIT)
        .build()
        .expect("client")
}

/// A counter's values by one label, parsed from the server's /metrics with a real parser.
pub async fn counters(
    server: &floodgate_server::ServerHandle,
    metric: &str,
    label: &str,
) -> std::collections::HashMap<String, u64> {
    let text = client()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("parses");
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Counter(count) => {
                Some((sample.labels.get(label)?.to_owned(), count as u64))
            }
            _ => None,
        })
        .collect()
}
