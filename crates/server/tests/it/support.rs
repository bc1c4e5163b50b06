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
