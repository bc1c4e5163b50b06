//! Strictness where leniency helps request smuggling or hides errors: the Host header rule of
//! RFC 9112, and every error answered with the contract's JSON body.

use floodgate_server::ServerHandle;

use crate::support::{event_json, post_event_raw, raw_exchange, read_response, test_config};

/// A raw `POST /events` with the given request-line version and extra header lines.
fn post_with(version: &str, header_lines: &str) -> Vec<u8> {
    let body = event_json("host-rule", 1);
    format!(
        "POST /events {version}\r\n{header_lines}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// Proves RFC 9112's Host rule: an HTTP/1.1 request without Host, or any request with two Host
// headers, is answered 400 `invalid_host` (JSON) and the connection is closed; one Host (or
// HTTP/1.0 without one) is accepted. Only the two accepted events are applied.
#[tokio::test]
async fn host_header_is_required_once() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let refused = [
        ("HTTP/1.1", ""),
        ("HTTP/1.1", "Host: a\r\nHost: b\r\n"),
        ("HTTP/1.1", "Host: a\r\nHost: a\r\n"),
        ("HTTP/1.0", "Host: a\r\nHost: b\r\n"),
    ];
    for (version, headers) in refused {
        let response = raw_exchange(server.addr(), &post_with(version, headers))
            .await
            .expect("a response");
        assert_eq!(response.status, 400, "{version} {headers:?}");
        assert_eq!(response.json()["reason"], "invalid_host");
        assert_eq!(response.header("connection"), Some("close"));
    }
    for (version, headers) in [("HTTP/1.1", "Host: a\r\n"), ("HTTP/1.0", "")] {
        let response = raw_exchange(server.addr(), &post_with(version, headers))
            .await
            .expect("a response");
        assert_eq!(response.status, 202, "{version} {headers:?}");
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.accepted, 2);
}

// Proves a path that does not decode (`%ff` is not UTF-8) gets the contract's JSON error body,
// not the router's plain-text rejection.
#[tokio::test]
async fn undecodable_path_is_a_json_400() {
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let response = raw_exchange(
        server.addr(),
        b"GET /balances/%ff HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .expect("a response");
    assert_eq!(response.status, 400);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["reason"], "invalid_path");
    server.stop().await.expect("stop");
}

// Proves a request with both Content-Length and Transfer-Encoding (the classic smuggling
// shape: a proxy that frames by one and a server that frames by the other see different
// requests) is framed by Transfer-Encoding alone and the connection is closed after the answer
// (RFC 9112 §6.1, done by hyper): a request pipelined behind it is never read, so whatever
// a proxy thought the body held cannot become a second request.
#[tokio::test]
async fn content_length_with_transfer_encoding_closes_after_the_answer() {
    use tokio::io::AsyncWriteExt;
    let server = ServerHandle::spawn(test_config()).await.expect("spawn");
    let body = event_json("framed", 1);
    let mut request = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(post_event_raw("Content-Length", &event_json("smuggled", 1)));
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    stream.write_all(&request).await.expect("write");
    let mut pending = Vec::new();
    let first = read_response(&mut stream, &mut pending).await;
    assert_eq!(first.map(|response| response.status), Some(202));
    assert!(
        read_response(&mut stream, &mut pending).await.is_none(),
        "the connection is closed after the first answer"
    );
    drop(stream);
    let engine = server.engine().clone();
    server.stop().await.expect("stop");
    assert_eq!(engine.balance("framed"), Some(1));
    assert_eq!(engine.balance("smuggled"), None);
}
