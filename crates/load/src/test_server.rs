//! A tiny deterministic hyper server for the load generator's own tests (test builds only).
//!
//! Lesson: a load generator is checked against a server whose answers are known in advance.
//! Invariant: a valid event with an even amount is answered 202 and its amount summed, an odd
//! amount 503, anything else 400; every answer is counted, so the tests can compare the
//! generator's report with what the server saw. The `Flaky` behaviour instead takes every
//! valid event, applies an id once, and refuses or loses some answers on a fixed rhythm.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How the test server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Even amount 202, odd 503, malformed 400.
    Deterministic,
    /// As `Deterministic`, after sleeping this long.
    Delay(Duration),
    /// As `Deterministic`, closing the connection after each answer.
    CloseEach,
    /// Always this status.
    Status(u16),
    /// Every valid event is taken (an id only once: a repeat is 202 with
    /// `Idempotent-Replayed`), but request n with n % 5 == 1 is refused 503 and with
    /// n % 5 == 3 is applied and then its connection cut before the answer.
    Flaky,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub invalid: AtomicU64,
    pub open_connections: AtomicUsize,
    pub accepted_amount_sum: Mutex<i128>,
    /// Flaky: requests seen, answers cut, replays answered, ids applied.
    pub requests: AtomicU64,
    pub cut: AtomicU64,
    pub replayed: AtomicU64,
    pub ids: Mutex<HashSet<String>>,
}

/// A running test server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves until [`TestServer::stop`].
    pub async fn spawn(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, behaviour, Arc::clone(&seen), stopped));
        Self {
            addr,
            seen,
            stop,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    behaviour: Behaviour,
    seen: Arc<Seen>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let seen = Arc::clone(&seen);
        connections.spawn(async move {
            seen.open_connections.fetch_add(1, Ordering::SeqCst);
            let service_seen = Arc::clone(&seen);
            let service = hyper::service::service_fn(move |request| {
                answer(request, behaviour, Arc::clone(&service_seen))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(behaviour != Behaviour::CloseEach)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            seen.open_connections.fetch_sub(1, Ordering::SeqCst);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

async fn answer(
    request: Request<Incoming>,
    behaviour: Behaviour,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    if let Behaviour::Delay(delay) = behaviour {
        tokio::time::sleep(delay).await;
    }
    if behaviour == Behaviour::Flaky {
        return flaky(&body, &seen);
    }
    let status = match behaviour {
        Behaviour::Status(status) => status,
        _ => judge(&body, &seen),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}

fn judge(body: &[u8], seen: &Seen) -> u16 {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let amount = value.as_ref().and_then(|v| v["amount"].as_i64());
    let user_ok = value.as_ref().is_some_and(|v| v["user"].is_string());
    match amount {
        Some(amount) if user_ok && amount % 2 == 0 => {
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            *seen.accepted_amount_sum.lock().unwrap() += i128::from(amount);
            202
        }
        Some(_) if user_ok => {
            seen.rejected.fetch_add(1, Ordering::SeqCst);
            503
        }
        _ => {
            seen.invalid.fetch_add(1, Ordering::SeqCst);
            400
        }
    }
}

/// The `Flaky` answer: see [`Behaviour::Flaky`]. An `Err` makes hyper close the connection
/// without answering.
fn flaky(body: &[u8], seen: &Seen) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let number = seen.requests.fetch_add(1, Ordering::SeqCst);
    if number % 5 == 1 {
        seen.rejected.fetch_add(1, Ordering::SeqCst);
        return Ok(status_only(503));
    }
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let Some(amount) = value.as_ref().and_then(|value| value["amount"].as_i64()) else {
        seen.invalid.fetch_add(1, Ordering::SeqCst);
        return Ok(status_only(400));
    };
    let id = value.as_ref().and_then(|value| value["id"].as_str());
    let fresh = id.is_none_or(|id| seen.ids.lock().unwrap().insert(id.to_owned()));
    if fresh {
        seen.accepted.fetch_add(1, Ordering::SeqCst);
        *seen.accepted_amount_sum.lock().unwrap() += i128::from(amount);
    }
    if number % 5 == 3 {
        seen.cut.fetch_add(1, Ordering::SeqCst);
        return Err(std::io::Error::other("answer lost on purpose"));
    }
    let mut response = status_only(202);
    if !fresh {
        seen.replayed.fetch_add(1, Ordering::SeqCst);
        response.headers_mut().insert(
            "idempotent-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

fn status_only(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}
