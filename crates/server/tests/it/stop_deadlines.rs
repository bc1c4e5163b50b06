//! The stop and the body deadline do not collide: a graceful stop waits for a body still
//! arriving (up to its own body deadline) before it cuts connections.

use floodgate_server::ServerHandle;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::{event_json, read_response, test_config};

// Proves a body still arriving when the stop begins gets its answer (202, and the event is in
// the final summary) even with a shutdown timeout of 0: the stop waits at least the body
// timeout plus a margin for a request whose head it has already received.
#[tokio::test]
async fn a_body_arriving_during_the_stop_is_answered() {
    let mut config = test_config();
    config.front_door.body_timeout_ms = 5_000;
    config.front_door.shutdown_timeout_ms = 0;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let body = event_json("late", 7);
    let (first, rest) = body.split_at(5);
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // Ordering, not timing: let the server take the head before the stop begins.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the stop waits for the body");
    stream.write_all(rest.as_bytes()).await.expect("rest");
    let response = read_response(&mut stream, &mut Vec::new())
        .await
        .expect("an answer, not a cut");
    assert_eq!(
        response.status,
        202,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    let summary = stopping.await.expect("join").expect("stop");
    assert_eq!(summary.applied, 1);
}
