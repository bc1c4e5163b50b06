//! The lingering close: how the server closes a connection that may still have unread input.
//!
//! Lesson: when a socket is closed with bytes still unread in its receive buffer, or bytes
//! arrive after the close, the kernel answers with a reset, and a reset makes the client's
//! kernel discard whatever the client had not read yet: 100 pipelined events followed by a bad
//! request got 34 × 202 and a reset (all 100 were applied, so a retrying client counted 66
//! twice), and a client that writes its whole 10 MB body before reading (Python's `urllib`)
//! got "Broken pipe" instead of the 413. nginx's `lingering_close` is the cure used here:
//! flush, shut the write side (the client sees the end of the answers), read and discard what
//! the client still sends for a bounded time and size, then close.
//! Invariant: a lingering close never waits longer than [`LINGER_TIMEOUT`] nor reads more than
//! [`LINGER_MAX_BYTES`], so a hostile client cannot hold a socket open with it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Longest a closing connection keeps reading: nginx's `lingering_timeout` default. A client
/// that is writing a large body on loopback or a LAN finishes within it; one that stalls has
/// stopped caring about the answer.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read and discarded while lingering: room for a client that writes a whole
/// oversized body before reading (10 MB measured with `urllib`), 256 × the default body limit;
/// past it the client is streaming, not posting an event, and the reset is its own doing.
pub const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Read size while lingering: a few syscalls per megabyte, allocated only when closing.
const LINGER_READ_BYTES: usize = 8 * 1024;

/// Shuts the write side of `stream` (the answers already written are flushed and followed by
/// an end of stream), then reads and discards input until the client closes, or
/// [`LINGER_TIMEOUT`] passes, or [`LINGER_MAX_BYTES`] were read. Dropping `stream` afterwards
/// closes it without a reset (unless the client went past the bounds).
pub async fn close_lingering<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.flush().await;
    if stream.shutdown().await.is_err() {
        return; // the peer is gone already: nothing to protect
    }
    let drain = async {
        let mut buffer = vec![0_u8; LINGER_READ_BYTES];
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}
