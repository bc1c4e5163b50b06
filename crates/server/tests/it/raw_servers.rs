//! Stages 1 and 2: the raw echo servers (docs/stages.md).

use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use floodgate_server::{BlockingServerHandle, EchoServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ANSWER_WAIT, body_of, exchange_blocking, post_with_length_header, status_of};

/// How long the frozen stage-1 server is given to (wrongly) answer: the seed's claim is that it
/// never does while the idle client stays, so any answer in this window fails the test.
const FREEZE_WINDOW: Duration = Duration::from_millis(300);

// Proves the stage-1 server echoes the body for every spelling of Content-Length (the seed's
// stage-6 header-casing bug cannot come back through the raw servers).
#[test]
fn stage1_echoes_with_any_header_casing() {
    let server = BlockingServerHandle::spawn().expect("spawn stage 1");
    for name in ["Content-Length", "content-length", "CONTENT-LENGTH"] {
        let request = post_with_length_header("/", name, "hello stage one");
        let response = exchange_blocking(server.addr(), &request, ANSWER_WAIT).expect("exchange");
        assert_eq!(status_of(&response), Some(200), "{name}");
        assert_eq!(body_of(&response), b"hello stage one", "{name}");
    }
    server.stop();
}

// Proves the seed's stage-1 claim: while one client holds a connection and sends nothing, a
// valid request from another client gets no answer; once the idle client leaves, it does.
#[test]
fn stage1_freezes_behind_one_idle_client() {
    let server = BlockingServerHandle::spawn().expect("spawn stage 1");
    let idle = TcpStream::connect(server.addr()).expect("idle client connects");
    let mut valid = TcpStream::connect(server.addr()).expect("valid client connects");
    valid
        .set_read_timeout(Some(FREEZE_WINDOW))
        .expect("timeout");
    std::io::Write::write_all(
        &mut valid,
        &post_with_length_header("/", "Content-Length", "ping"),
    )
    .expect("send");
    let during_freeze = crate::support::read_to_close(&mut valid).expect("read");
    assert!(
        during_freeze.is_empty(),
        "the frozen server answered: {during_freeze:?}"
    );

    drop(idle);
    valid.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
    let after = crate::support::read_to_close(&mut valid).expect("read");
    assert_eq!(status_of(&after), Some(200));
    assert_eq!(body_of(&after), b"ping");
    server.stop();
}

// Proves stop() returns even while an idle client holds the blocking server (stop shuts the
// held connection and wakes accept), so tests and the lab never hang on stage 1.
#[test]
fn stage1_stop_returns_while_a_client_holds_it() {
    let server = BlockingServerHandle::spawn().expect("spawn stage 1");
    let idle = TcpStream::connect(server.addr()).expect("idle client connects");
    std::thread::sleep(Duration::from_millis(50)); // let the server accept it and block
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        server.stop();
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(ANSWER_WAIT).is_ok(),
        "stop() hung behind the idle client"
    );
    drop(idle);
}

// Proves malformed input gets an error status from stage 1 and the server keeps serving.
#[test]
fn stage1_answers_garbage_with_400_and_keeps_serving() {
    let server = BlockingServerHandle::spawn().expect("spawn stage 1");
    let garbage = exchange_blocking(server.addr(), b"\x00\x01garbage\r\n\r\n", ANSWER_WAIT)
        .expect("exchange");
    assert_eq!(status_of(&garbage), Some(400));
    let negative = exchange_blocking(
        server.addr(),
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        ANSWER_WAIT,
    )
    .expect("exchange");
    assert_eq!(status_of(&negative), Some(400));
    let fine = exchange_blocking(
        server.addr(),
        &post_with_length_header("/", "Content-Length", "ok"),
        ANSWER_WAIT,
    )
    .expect("exchange");
    assert_eq!(body_of(&fine), b"ok");
    server.stop();
}

/// Sends a request on a tokio stream and reads the whole answer (the server closes after it).
async fn exchange_async(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    response
}

// Proves the stage-2 claim: with idle clients holding connections (the seed's `nc` loop), a
// valid request is still answered, because each connection has its own task.
#[tokio::test]
async fn stage2_idle_clients_do_not_block_others() {
    let server = EchoServerHandle::spawn().await.expect("spawn stage 2");
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(server.addr())
                .await
                .expect("idle connects"),
        );
    }
    for name in ["Content-Length", "content-length", "CONTENT-LENGTH"] {
        let response =
            exchange_async(server.addr(), &post_with_length_header("/", name, "pong")).await;
        assert_eq!(status_of(&response), Some(200), "{name}");
        assert_eq!(body_of(&response), b"pong");
    }
    // stop() must end the idle connections' tasks too (it would hang otherwise).
    tokio::time::timeout(ANSWER_WAIT, server.stop())
        .await
        .expect("stop returns with idle clients connected");
    drop(idle);
}

// Proves a body arriving one byte at a time is read to the end (partial reads are normal).
#[tokio::test]
async fn stage2_reads_a_trickled_request() {
    let server = EchoServerHandle::spawn().await.expect("spawn stage 2");
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    for byte in post_with_length_header("/", "content-length", "slow body") {
        stream.write_all(&[byte]).await.expect("send a byte");
        stream.flush().await.expect("flush");
    }
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    assert_eq!(body_of(&response), b"slow body");
    server.stop().await;
}
