//! Closing a connection that still has unread input without destroying the answers already
//! written: a client that writes past an error (pipelined requests, a large body) still reads
//! every response, then a clean end of stream, never a reset.

use floodgate_server::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ANSWER_WAIT, event_json, post_event_raw, read_response, test_config};

/// Reads until the peer's end of stream; `Err` if the connection was reset (or stalled).
async fn read_until_end(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut total = 0;
    let mut chunk = [0_u8; 8192];
    loop {
        let read = tokio::time::timeout(ANSWER_WAIT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if read == 0 {
            return Ok(total);
        }
        total += read;
    }
}

// Proves the pipelined case of a lingering close: 100 events, a malformed request and 64 KiB
// written after it in one go get 100 × 202 (all applied), the 400, and a clean end of stream.
// Without the lingering close the unread bytes made the kernel reset the connection and the
// client lost most of the 202s already written.
#[tokio::test]
async fn pipelined_answers_survive_a_bad_request() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(post_event_raw("Content-Length", &event_json("linger", 1)));
    }
    batch.extend(b"NOT HTTP AT ALL\r\n\r\n");
    batch.extend(vec![b'x'; 64 * 1024]);
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream.write_all(&batch).await.expect("write");
    let mut pending = Vec::new();
    for index in 0..100 {
        let response = read_response(&mut stream, &mut pending).await;
        let status = response.map(|response| response.status);
        assert_eq!(status, Some(202), "answer {index}");
    }
    let bad = read_response(&mut stream, &mut pending).await;
    assert_eq!(bad.map(|response| response.status), Some(400));
    assert!(
        read_until_end(&mut stream).await.is_ok(),
        "a clean end of stream, not a reset"
    );
    drop(stream); // the server lingers until the client closes too
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("linger"), Some(100));
}

// Proves the large-body case (what Python's urllib does): a client that writes a whole 10 MB
// body against a 1 KiB limit before reading gets its write through and reads the documented
// 413 with its JSON reason, instead of "Broken pipe".
#[tokio::test]
async fn a_body_written_past_the_413_still_gets_the_413() {
    let mut config = test_config();
    config.front_door.body_limit_bytes = 1024;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let body_bytes = 10_000_000;
    let mut request = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {body_bytes}\r\n\r\n"
    )
    .into_bytes();
    request.extend(vec![b' '; body_bytes]);
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let written = tokio::time::timeout(ANSWER_WAIT, stream.write_all(&request)).await;
    assert!(
        matches!(written, Ok(Ok(()))),
        "the whole body is written: {written:?}"
    );
    let response = read_response(&mut stream, &mut Vec::new())
        .await
        .expect("the 413 is read");
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["reason"], "body_too_large");
    assert!(read_until_end(&mut stream).await.is_ok(), "no reset");
    drop(stream);
    server.stop().await.expect("stop");
}
