//! Reading one HTTP/1.1 request the raw way, shared by the stage-1 and stage-2 servers.
//!
//! Lesson: stage 1 and stage 6 (docs/stages.md). A server must read until the request is complete
//! (partial reads are normal), and header names are case-insensitive: `Content-Length`,
//! `content-length` and `CONTENT-LENGTH` are the same header. `httparse` parses the head; we
//! never match header lines by hand.
//! Invariant: the head and the body are bounded ([`MAX_HEAD_BYTES`], [`MAX_BODY_BYTES`]);
//! anything malformed is answered with an error status and the connection is closed.

/// Largest request head (request line + headers) the raw servers accept. 16 KiB is far more
/// than any real client sends for an echo request and keeps a hostile head from growing memory.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest body the raw servers echo: the same 64 KiB limit as the production front door.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most headers parsed in one request; more is answered with 431. 64 is what browsers and
/// tools stay well under.
pub const MAX_HEADERS: usize = 64;
/// Size of one read from the socket.
pub const READ_CHUNK_BYTES: usize = 4096;

/// Why a raw request could not be read; each maps to one answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawRequestError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// The head is larger than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// `Content-Length` is missing a number, negative, or repeated with different values.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body too large")]
    BodyTooLarge,
    /// `Transfer-Encoding` bodies are not supported by the lesson servers.
    #[error("transfer-encoding not supported")]
    TransferEncodingUnsupported,
}

impl RawRequestError {
    /// The status line answered for this error.
    pub fn status_line(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::InvalidContentLength => "400 Bad Request",
            Self::HeadTooLarge => "431 Request Header Fields Too Large",
            Self::BodyTooLarge => "413 Payload Too Large",
            Self::TransferEncodingUnsupported => "501 Not Implemented",
        }
    }
}

/// A parsed head: how many bytes it took and how long the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHead {
    /// Bytes of the request line and headers, including the blank line.
    pub head_len_bytes: usize,
    /// The body length announced by `Content-Length` (0 when absent).
    pub content_length_bytes: usize,
}

/// Parses the head at the start of `buffer`. `Ok(None)`: not complete yet, read more.
pub fn parse_head(buffer: &[u8]) -> Result<Option<RawHead>, RawRequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len_bytes = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD_BYTES => {
            return Err(RawRequestError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RawRequestError::HeadTooLarge),
        Err(error) => return Err(RawRequestError::Malformed(error.to_string())),
    };
    if head_len_bytes > MAX_HEAD_BYTES {
        return Err(RawRequestError::HeadTooLarge);
    }
    let content_length_bytes = content_length(request.headers)?;
    if content_length_bytes > MAX_BODY_BYTES {
        return Err(RawRequestError::BodyTooLarge);
    }
    Ok(Some(RawHead {
        head_len_bytes,
        content_length_bytes,
    }))
}

/// The `Content-Length` value, matched case-insensitively; repeated values must agree.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, RawRequestError> {
    let mut length = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RawRequestError::TransferEncodingUnsupported);
        }
        if !header.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = std::str::from_utf8(header.value)
            .ok()
            .map(str::trim)
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .ok_or(RawRequestError::InvalidContentLength)?;
        // Digits only, but possibly huge: anything that does not fit is over the limit anyway.
        let parsed = value.parse::<usize>().unwrap_or(usize::MAX);
        if length.is_some_and(|previous| previous != parsed) {
            return Err(RawRequestError::InvalidContentLength);
        }
        length = Some(parsed);
    }
    Ok(length.unwrap_or(0))
}

/// Where reading a request stands after the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    NeedMore,
    /// The whole request is in the buffer; the body is `buffer[start..end]`.
    Complete {
        /// First byte of the body.
        start: usize,
        /// One past the last byte of the body.
        end: usize,
    },
}

/// Decides whether `buffer` holds a complete request (head and `Content-Length` body).
pub fn progress(buffer: &[u8]) -> Result<Progress, RawRequestError> {
    let Some(head) = parse_head(buffer)? else {
        return Ok(Progress::NeedMore);
    };
    let end = head.head_len_bytes + head.content_length_bytes;
    if buffer.len() < end {
        return Ok(Progress::NeedMore);
    }
    Ok(Progress::Complete {
        start: head.head_len_bytes,
        end,
    })
}

/// The full response for an echoed body (`Connection: close`: one request per connection).
pub fn echo_response(body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

/// The full response for a request that could not be read.
pub fn error_response(error: &RawRequestError) -> Vec<u8> {
    format!(
        "HTTP/1.1 {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        error.status_line()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves header names are matched case-insensitively (the seed's stage-6 bug): all three
    // spellings of Content-Length find the body.
    #[test]
    fn content_length_is_case_insensitive() {
        for name in ["Content-Length", "content-length", "CONTENT-LENGTH"] {
            let request = format!("POST / HTTP/1.1\r\n{name}: 5\r\n\r\nhello");
            assert_eq!(
                progress(request.as_bytes()),
                Ok(Progress::Complete {
                    start: request.len() - 5,
                    end: request.len()
                }),
                "{name}"
            );
        }
    }

    // Proves partial reads are handled: a head or body cut short asks for more bytes.
    #[test]
    fn partial_requests_need_more() {
        assert_eq!(
            progress(b"POST / HTTP/1.1\r\nContent-Le"),
            Ok(Progress::NeedMore)
        );
        assert_eq!(
            progress(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"),
            Ok(Progress::NeedMore)
        );
    }

    // Proves hostile Content-Length values are refused, never trusted.
    #[test]
    fn bad_content_lengths_are_refused() {
        for value in ["-1", "abc", "", "1 2"] {
            let request = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                progress(request.as_bytes()),
                Err(RawRequestError::InvalidContentLength),
                "{value}"
            );
        }
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(
            progress(huge.as_bytes()),
            Err(RawRequestError::BodyTooLarge)
        );
    }

    // Proves the head is bounded: a head that never ends and too many headers are refused.
    #[test]
    fn oversized_heads_are_refused() {
        let endless = vec![b'a'; MAX_HEAD_BYTES + 1];
        let mut long_line = b"GET /".to_vec();
        long_line.extend(endless);
        assert_eq!(progress(&long_line), Err(RawRequestError::HeadTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for index in 0..=MAX_HEADERS {
            many += "x-";
            many += &index.to_string();
            many += ": 1\r\n";
        }
        many.push_str("\r\n");
        assert_eq!(
            progress(many.as_bytes()),
            Err(RawRequestError::HeadTooLarge)
        );
    }

    // Proves garbage is refused as malformed rather than waited on.
    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            progress(b"\x00\x01\x02 garbage\r\n\r\n"),
            Err(RawRequestError::Malformed(_))
        ));
    }
}
