//! Slow and hostile clients. Timeouts are shortened by config; connections are held
//! open for real.

use std::time::Duration;

use floodgate_server::{ServerConfig, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    ANSWER_WAIT, client, event_json, post_event_raw, raw_exchange, read_response, test_config,
};

/// A server whose connection deadlines are short enough for a test.
fn short_deadlines(header_ms: u64, idle_ms: u64, body_ms: u64) -> ServerConfig {
    let mut config = test_config();
    config.front_door.header_timeout_ms = header_ms;
    config.front_door.idle_timeout_ms = idle_ms;
    config.front_door.body_timeout_ms = body_ms;
    config
}

/// Waits until the server closes `stream` (read returns 0 or an error); `false` if it is still
/// open after `ANSWER_WAIT`. Any bytes the server sends first are returned in `received`.
async fn closed_by_server(stream: &mut TcpStream, received: &mut Vec<u8>) -> bool {
    let mut chunk = [0_u8; 1024];
    loop {
        match tokio::time::timeout(ANSWER_WAIT, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
        }
    }
}

// Proves the header timeout: a connection that sends nothing, and one that trickles a head
// that never ends, are both closed once the (shortened) header timeout passes.
#[tokio::test]
async fn header_timeout_closes_silent_and_trickling_clients() {
    let server = ServerHandle::spawn(short_deadlines(300, 60_000, 60_000))
        .await
        .expect("spawn");
    let mut silent = TcpStream::connect(server.addr()).await.expect("connect");
    let mut trickle = TcpStream::connect(server.addr()).await.expect("connect");
    let trickler = tokio::spawn(async move {
        for byte in
            b"POST /events HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if trickle.write_all(&[*byte]).await.is_err() {
                return (trickle, true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (trickle, false)
    });
    assert!(
        closed_by_server(&mut silent, &mut Vec::new()).await,
        "silent client kept open"
    );
    let (mut trickle, write_failed) = trickler.await.expect("trickler");
    assert!(
        write_failed || closed_by_server(&mut trickle, &mut Vec::new()).await,
        "trickling client kept open"
    );
    let timeouts =
        crate::support::counters(&server, "floodgate_http_connection_timeouts_total", "phase")
            .await;
    assert_eq!(timeouts.get("header"), Some(&2), "{timeouts:?}");
    server.stop().await.expect("stop");
}

// Proves the idle timeout: a kept-alive connection is closed after it sits idle, while the
// header timeout is much longer (so it is the idle deadline that closed it).
#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let server = ServerHandle::spawn(short_deadlines(60_000, 300, 60_000))
        .await
        .expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(&post_event_raw("Content-Length", &event_json("a", 1)))
        .await
        .expect("write");
    let response = read_response(&mut stream, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 202);
    assert!(
        closed_by_server(&mut stream, &mut Vec::new()).await,
        "idle connection kept open"
    );
    server.stop().await.expect("stop");
}

// Proves the header deadline applies to every head of a kept-alive connection, with the
// connection timer moved lazily: requests spread over longer than the header timeout are all
// answered (a timer that fires early is re-armed, not obeyed), then a head that stalls is
// closed by the header deadline although the idle timeout is far longer.
#[tokio::test]
async fn each_head_on_a_kept_alive_connection_has_the_header_deadline() {
    let server = ServerHandle::spawn(short_deadlines(300, 60_000, 60_000))
        .await
        .expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut pending = Vec::new();
    for _ in 0..8 {
        stream
            .write_all(&post_event_raw("Content-Length", &event_json("a", 1)))
            .await
            .expect("write");
        let response = read_response(&mut stream, &mut pending)
            .await
            .expect("an answer on a connection busy for longer than the header timeout");
        assert_eq!(response.status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stream
        .write_all(b"POST /events HTTP/1.1\r\nHost: stalled\r\n")
        .await
        .expect("write the start of a head");
    assert!(
        closed_by_server(&mut stream, &mut pending).await,
        "stalled head kept open"
    );
    let timeouts =
        crate::support::counters(&server, "floodgate_http_connection_timeouts_total", "phase")
            .await;
    assert_eq!(timeouts.get("header"), Some(&1), "{timeouts:?}");
    assert_eq!(timeouts.get("idle"), None, "{timeouts:?}");
    server.stop().await.expect("stop");
}

// Proves a connection in the middle of a slow request is not cut by the idle or header
// deadline: stage-4 style processing longer than both still gets its answer.
#[tokio::test]
async fn slow_processing_is_not_cut_by_connection_deadlines() {
    let mut config = short_deadlines(200, 200, 60_000);
    config.engine = floodgate_core::config::EngineConfig::for_stage(4).expect("stage 4");
    config.engine.hold_ms = 600;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let response = raw_exchange(
        server.addr(),
        &post_event_raw("Content-Length", &event_json("a", 1)),
    )
    .await
    .expect("an answer despite processing longer than the deadlines");
    assert_eq!(response.status, 202);
    server.stop().await.expect("stop");
}

// Proves the body timeout: a head with Content-Length 100 followed by 10 bytes is answered
// 408 body_timeout once the body timeout passes, and the connection is closed.
#[tokio::test]
async fn slow_body_gets_408_and_close() {
    let server = ServerHandle::spawn(short_deadlines(60_000, 60_000, 300))
        .await
        .expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"user\": ")
        .await
        .expect("write");
    let response = read_response(&mut stream, &mut Vec::new())
        .await
        .expect("a response");
    assert_eq!(response.status, 408);
    assert_eq!(response.json()["reason"], "body_timeout");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closed_by_server(&mut stream, &mut Vec::new()).await);
    drop(stream); // the server lingers until the client closes too
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.invalid, 1);
}

// Proves the connection cap: over the cap a new connection is closed at once, and the
// connections already accepted are undisturbed (one of them still gets its request served).
#[tokio::test]
async fn connections_over_the_cap_are_closed_and_others_undisturbed() {
    let mut config = test_config();
    config.front_door.max_connections = 4;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        // A full exchange proves the connection was accepted and holds a slot.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let response = read_response(&mut stream, &mut Vec::new())
            .await
            .expect("a response");
        assert_eq!(response.status, 200);
        held.push(stream);
    }
    let mut extra = TcpStream::connect(server.addr())
        .await
        .expect("the kernel accepts the SYN");
    let mut received = Vec::new();
    assert!(
        closed_by_server(&mut extra, &mut received).await,
        "over-cap connection kept"
    );
    assert!(
        received.is_empty(),
        "over-cap connection got bytes: {received:?}"
    );
    let first = &mut held[0];
    first
        .write_all(&post_event_raw("Content-Length", &event_json("a", 1)))
        .await
        .expect("write");
    let response = read_response(first, &mut Vec::new())
        .await
        .expect("held connection works");
    assert_eq!(response.status, 202);
    drop(held);
    server.stop().await.expect("stop");
}

// Proves the slowloris claim at test size: with 300 silent and 100 trickling
// connections held open, valid requests from another client are all answered, and the slow
// connections are closed once the (shortened) header timeout passes.
#[tokio::test]
async fn valid_requests_are_served_through_a_slowloris_crowd() {
    let server = ServerHandle::spawn(short_deadlines(1_000, 60_000, 60_000))
        .await
        .expect("spawn");
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server.addr()).await.expect("connect"));
    }
    let mut tricklers = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        tricklers.push(tokio::spawn(async move {
            for byte in b"POST /events HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaa" {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stream
        }));
    }
    let http = client();
    for amount in 0..50 {
        let response = http
            .post(format!("{}/events", server.url()))
            .body(event_json("valid", amount))
            .send()
            .await
            .expect("valid request answered through the crowd");
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }
    for stream in &mut silent {
        assert!(
            closed_by_server(stream, &mut Vec::new()).await,
            "silent client kept open"
        );
    }
    for trickler in tricklers {
        let mut stream = trickler.await.expect("trickler");
        assert!(
            closed_by_server(&mut stream, &mut Vec::new()).await,
            "trickler kept open"
        );
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, 50);
}

// Proves a reader too slow to take its answers is cut by the deadline and counted under its
// own phase: 2,000 pipelined `GET /metrics` on a connection that never reads fill the socket
// buffers, the server's writes block, and when the (short) idle deadline passes the close is
// counted as `phase="write"`, not as an idle connection.
#[tokio::test]
async fn blocked_answers_are_counted_as_write_timeouts() {
    let server = ServerHandle::spawn(short_deadlines(60_000, 300, 60_000))
        .await
        .expect("spawn");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket.connect(server.addr()).await.expect("connect");
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2000);
    // The server stops reading once its answers back up: this write may not finish.
    let _ = tokio::time::timeout(ANSWER_WAIT, stream.write_all(&request)).await;
    let timeouts = async {
        loop {
            let timeouts = crate::support::counters(
                &server,
                "floodgate_http_connection_timeouts_total",
                "phase",
            )
            .await;
            if !timeouts.is_empty() {
                return timeouts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let timeouts = tokio::time::timeout(ANSWER_WAIT, timeouts)
        .await
        .expect("the blocked connection is closed by its deadline");
    assert_eq!(timeouts.get("write"), Some(&1), "{timeouts:?}");
    assert_eq!(timeouts.get("idle"), None, "{timeouts:?}");
    drop(stream);
    server.stop().await.expect("stop");
}
