//! Out of file descriptors: the server must refuse new connections at once (not leave them
//! hanging in the backlog), say so without flooding the log, and recover when descriptors free.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ANSWER_WAIT, collect_log, launch_with_open_files, signal, wait_exit};

/// What became of one connection: served (200), or closed by the server without an answer.
#[derive(Debug, PartialEq)]
enum Fate {
    Served,
    Closed,
}

/// Connects, asks `GET /healthz`, and waits (bounded) for an answer or a close. `Err` if
/// neither came: the connection hangs.
async fn try_healthz(addr: &str) -> Result<(Fate, TcpStream), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0_u8; 512];
    match tokio::time::timeout(ANSWER_WAIT, stream.read(&mut buffer)).await {
        Err(_) => Err("no answer and no close: the connection hangs".to_owned()),
        Ok(Ok(0) | Err(_)) => Ok((Fate::Closed, stream)),
        Ok(Ok(read)) if buffer[..read].starts_with(b"HTTP/1.1 200") => Ok((Fate::Served, stream)),
        Ok(Ok(read)) => Err(format!("unexpected answer {:?}", &buffer[..read])),
    }
}

// Proves the spare-descriptor defence with a real process limited to 48 open files: once
// every descriptor is in use, each new connection is closed at once instead of hanging; the
// "accept failed" warning is logged once (per 10 s), not every 50 ms; and once the held connections
// close, new clients are served again.
#[tokio::test]
async fn out_of_descriptors_refuses_at_once_and_recovers() {
    let mut launched = launch_with_open_files(48, &[], &[]).await;
    let log = collect_log(launched.log);
    let mut held = Vec::new();
    let mut refused = 0;
    while refused < 5 {
        assert!(held.len() < 200, "the descriptor limit was never reached");
        let (fate, stream) = try_healthz(&launched.addr)
            .await
            .expect("an answer or a close");
        match fate {
            Fate::Served => held.push(stream),
            Fate::Closed => refused += 1,
        }
    }
    // A second's worth of refusals: the warning must not repeat every 50 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let (fate, _stream) = try_healthz(&launched.addr)
            .await
            .expect("an answer or a close");
        assert_eq!(fate, Fate::Closed, "still out of descriptors");
    }
    drop(held);
    let mut served_again = false;
    for _ in 0..50 {
        let (fate, _stream) = try_healthz(&launched.addr)
            .await
            .expect("an answer or a close");
        if fate == Fate::Served {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_again, "served again once descriptors were freed");
    signal(&launched.child, "TERM");
    let status = wait_exit(&mut launched.child).await;
    let log = log.await.expect("log");
    let warnings = log
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    // One warning per 10 s: 1, or 2 if this machine was slow enough to cross the interval.
    assert!((1..=2).contains(&warnings), "{log:#?}");
}
