//! Slow clients: connections that never finish a request, held open alongside the load.
//!
//! Lesson (stage 1, docs/stages.md): `for i in {1..20}; do nc 127.0.0.1 8080 & done` froze the
//! blocking server; one silent client must not stall anyone else. This is that experiment built in:
//! idle connections send nothing, trickling ones send a request one byte at a time and never the
//! last byte. A server with header/body timeouts closes them; one without holds them.
//! Invariant: each slow connection is owned by one task that ends when the run ends or the
//! server closes it; the count reported is of connections still open when the load finished.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::SlowKind;
use crate::target::Target;

/// Pause between two trickled bytes: slow enough to hold a request open for a minute with a
/// short body, fast enough to look alive to a server that only checks for progress.
pub const TRICKLE_INTERVAL: Duration = Duration::from_millis(250);
/// A slow client's connect attempt gives up after this (a frozen server's backlog fills up).
pub const SLOW_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The announced body length of a trickled request (never completed).
const TRICKLE_BODY_BYTES: usize = 4096;

/// The running slow clients.
#[derive(Debug)]
pub struct SlowClients {
    tasks: JoinSet<bool>,
    stop: watch::Sender<bool>,
}

impl SlowClients {
    /// Opens `count` slow connections to `target` (concurrently) and starts holding them.
    /// Returns once every connect attempt has succeeded or failed.
    pub async fn start(target: &Target, kind: SlowKind, count: usize) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut connects = JoinSet::new();
        for _ in 0..count {
            let addr = target.addr;
            connects.spawn(async move {
                tokio::time::timeout(SLOW_CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            });
        }
        let head = trickle_request(target);
        let mut tasks = JoinSet::new();
        while let Some(connected) = connects.join_next().await {
            if let Ok(Ok(Ok(stream))) = connected {
                tasks.spawn(hold(stream, kind, head.clone(), stopped.clone()));
            }
        }
        Self { tasks, stop }
    }

    /// Ends the slow clients and returns how many were still open (not closed by the server).
    pub async fn finish(mut self) -> usize {
        let _ = self.stop.send(true);
        let mut held = 0;
        while let Some(result) = self.tasks.join_next().await {
            if matches!(result, Ok(true)) {
                held += 1;
            }
        }
        held
    }
}

fn trickle_request(target: &Target) -> Vec<u8> {
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {TRICKLE_BODY_BYTES}\r\n\r\n",
        target.path, target.host_header
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b' ', TRICKLE_BODY_BYTES));
    request
}

/// Holds one connection until `stopped` fires (returns true: still open) or the server closes
/// it, answers, or the socket fails (returns false).
async fn hold(
    mut stream: TcpStream,
    kind: SlowKind,
    request: Vec<u8>,
    mut stopped: watch::Receiver<bool>,
) -> bool {
    let mut trickle = tokio::time::interval(TRICKLE_INTERVAL);
    // Never send the last byte: the request stays incomplete forever.
    let last_sendable = request.len().saturating_sub(1);
    let mut sent = 0;
    let mut scratch = [0_u8; 512];
    loop {
        tokio::select! {
            _ = stopped.changed() => return true,
            // Any answer (a 408, or EOF) means the server gave up on us: not held.
            _ = stream.read(&mut scratch) => return false,
            _ = trickle.tick(), if kind == SlowKind::Trickle && sent < last_sendable => {
                if stream.write_all(&request[sent..=sent]).await.is_err() {
                    return false;
                }
                sent += 1;
            }
        }
    }
}
