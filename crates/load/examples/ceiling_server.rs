//! A bare hyper server answering every request `202 {"status":"accepted"}` after reading the
//! body: a stand-in target for `bench/loadgen-vs-oha.sh` when the real server is not usable,
//! and a ceiling (no parsing, no engine) to see how fast the load generator itself can go.
//!
//! Usage: `cargo run --release -p floodgate-load --example ceiling_server [ADDR]`
//! (default `127.0.0.1:0`); prints `listening on ADDR` once bound. Loopback only.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Bodies above this are answered 400 (the server's default body limit).
const BODY_LIMIT_BYTES: usize = 64 * 1024;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(request.into_body(), BODY_LIMIT_BYTES)
        .collect()
        .await
    {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"status":"accepted"}"#)));
    *response.status_mut() = status;
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    if !listener.local_addr()?.ip().is_loopback() {
        return Err(std::io::Error::other("ceiling_server binds loopback only"));
    }
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer));
            // A client resetting its connection at the end of a run is normal.
            let _ = connection.await;
        });
    }
}
