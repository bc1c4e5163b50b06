//! The ceiling of the HTTP path: a bare hyper 1 server that reads each request body whole and
//! answers `202 {"status":"accepted"}` without parsing or validating anything.
//!
//! The benchmark suite (`bench/run.sh`) loads it and the production Floodgate with the same tool
//! in the same run; their ratio says what Floodgate's parsing, validation, admission and metrics
//! cost on top of HTTP itself. It runs on the same multi-threaded tokio runtime Floodgate uses.
//!
//! Usage: `bare-hyper [ADDR]` (default `127.0.0.1:0`); prints `listening on ADDR` once bound.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The same body limit as Floodgate's default, so both servers do the same bounded read.
const BODY_LIMIT_BYTES: usize = 64 * 1024;

static ACCEPTED_BODY: &[u8] = br#"{"status":"accepted"}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(request.into_body(), BODY_LIMIT_BYTES)
        .collect()
        .await
    {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(ACCEPTED_BODY)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer));
            // A client that resets its connection is normal under load; nothing to report.
            let _ = connection.await;
        });
    }
}
