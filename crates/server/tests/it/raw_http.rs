//! The front door over raw TCP: header casing, chunked and trickled bodies, keep-alive,
//! pipelining, and hostile input that must never crash the server.

use std::time::Duration;

use floodgate_server::ServerHandle;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{event_json, post_event_raw, raw_exchange, read_response, test_config};

// Proves header names are case-insensitive (the seed's stage-6 bug): every spelling of
// Content-Length delivers the whole body, so the event is accepted, not `invalid_json`.
#[tokio::test]
async fn content_length_in_any_case_is_read() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    for name in [
        "Content-Length",
        "content-length",
        "CONTENT-LENGTH",
        "cOnTeNt-LeNgTh",
    ] {
        let response = raw_exchange(server.addr(), &post_event_raw(name, &event_json("a", 1)))
            .await
            .expect("a response");
        assert_eq!(response.status, 202, "{name}: {:?}", response.json());
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, 4);
}

// Proves a chunked body (no Content-Length) is reassembled and accepted.
#[tokio::test]
async fn chunked_body_is_accepted() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let body = event_json("chunky", 3);
    let (first, second) = body.split_at(7);
    let request = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let response = raw_exchange(server.addr(), request.as_bytes())
        .await
        .expect("a response");
    assert_eq!(response.status, 202);
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("chunky"), Some(3));
}

// Proves a request arriving one byte at a time (head and body) is read to the end.
#[tokio::test]
async fn byte_at_a_time_request_is_accepted() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    for byte in post_event_raw("content-length", &event_json("slow", 9)) {
        stream.write_all(&[byte]).await.expect("write");
        stream.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let response = read_response(&mut stream, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 202);
    server.stop().await.expect("stop");
}

// Proves keep-alive: many requests on one connection are all answered on it.
#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut pending = Vec::new();
    for amount in 0..200 {
        stream
            .write_all(&post_event_raw("Content-Length", &event_json("ka", amount)))
            .await
            .expect("write");
        let response = read_response(&mut stream, &mut pending)
            .await
            .expect("a response");
        assert_eq!(response.status, 202, "request {amount}");
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, 200);
}

// Proves pipelining: 50 requests written at once get 50 answers, in order, on one connection.
#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut batch = Vec::new();
    for amount in 0..50 {
        batch.extend(post_event_raw(
            "content-length",
            &event_json("pipe", amount),
        ));
    }
    batch.extend(b"GET /balances/nobody HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(&batch).await.expect("write");
    let mut pending = Vec::new();
    for index in 0..50 {
        let response = read_response(&mut stream, &mut pending)
            .await
            .expect("a response");
        assert_eq!(response.status, 202, "request {index}");
    }
    let last = read_response(&mut stream, &mut pending)
        .await
        .expect("a response");
    assert_eq!(last.status, 404, "answers come back in request order");
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("pipe"), Some((0..50).sum()));
}

/// The hostile inputs the contract covers, each as raw bytes.
fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let mut many_headers = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for index in 0..5000 {
        many_headers += "x-h";
        many_headers += &index.to_string();
        many_headers += ": v\r\n";
    }
    many_headers += "\r\n";
    let with_length = |length: &str, body: &[u8]| {
        let mut request =
            format!("POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n")
                .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let deep_array = format!(
        r#"{{"user": {}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_object = r#"{"a": "#.repeat(10_000) + &"}".repeat(10_000);
    let top_array = "[".repeat(10_000) + &"]".repeat(10_000);
    let body = |text: &str| with_length(&text.len().to_string(), text.as_bytes());
    vec![
        ("garbage", b"\x00\xff\x13garbage\r\n\r\n\r\n".to_vec()),
        ("1 MiB request line", long_line.into_bytes()),
        ("5000 headers", many_headers.into_bytes()),
        ("negative length", with_length("-5", b"{}")),
        ("huge length", with_length("99999999999999999999999", b"{}")),
        ("non-numeric length", with_length("abc", b"{}")),
        (
            "two lengths",
            b"POST /events HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        ),
        (
            "invalid UTF-8",
            with_length("30", b"{\"user\": \"\xff\xfe\", \"amount\": 1}\0\0\0\0\0"),
        ),
        ("nested array 10k", body(&deep_array)),
        ("nested object 10k", body(&deep_object)),
        ("top-level array 10k", body(&top_array)),
        ("1e400", body(r#"{"user": "a", "amount": 1e400}"#)),
        (
            "2^63",
            body(r#"{"user": "a", "amount": 9223372036854775808}"#),
        ),
        (
            "-2^63-1",
            body(r#"{"user": "a", "amount": -9223372036854775809}"#),
        ),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\n\r\n".to_vec()),
    ]
}

// Proves no input crashes the server: each hostile request gets a 4xx or a closed connection,
// and a valid request on a fresh connection is still accepted after each one; hyper's refusals
// are visible in /metrics by kind.
#[tokio::test]
async fn hostile_input_gets_4xx_or_close_and_server_keeps_serving() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    for (name, request) in hostile_inputs() {
        if let Some(response) = raw_exchange(server.addr(), &request).await {
            assert!(
                (400..500).contains(&response.status),
                "{name}: answered {}",
                response.status
            );
        }
        let valid = raw_exchange(
            server.addr(),
            &post_event_raw("Content-Length", &event_json("ok", 1)),
        )
        .await
        .unwrap_or_else(|| panic!("after {name}: no answer to a valid request"));
        assert_eq!(valid.status, 202, "after {name}");
    }
    let errors =
        crate::support::counters(&server, "floodgate_http_connection_errors_total", "kind").await;
    assert!(
        errors.get("malformed").is_some_and(|count| *count >= 1),
        "{errors:?}"
    );
    assert!(
        errors
            .get("head_too_large")
            .is_some_and(|count| *count >= 1),
        "{errors:?}"
    );
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, hostile_inputs().len() as u64);
}

// Proves a body cut short (the client sends half and leaves) does not disturb the server.
#[tokio::test]
async fn body_cut_short_then_closed_is_harmless() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        stream
            .write_all(b"POST /events HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"user\"")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let valid = raw_exchange(
        server.addr(),
        &post_event_raw("Content-Length", &event_json("ok", 1)),
    )
    .await
    .expect("a response");
    assert_eq!(valid.status, 202);
    server.stop().await.expect("stop");
}

// Proves an announced Content-Length over the limit is refused with 413 before any of the
// body is sent (the server does not wait for, or buffer, a body it will refuse).
#[tokio::test]
async fn announced_oversized_body_is_refused_before_reading() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let head = b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n";
    let response = raw_exchange(server.addr(), head)
        .await
        .expect("an answer without a body");
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["reason"], "body_too_large");
    server.stop().await.expect("stop");
}
